//! The gRPC listener: TLS with the control plane's own mesh certificate; client certificates
//! optional (a proxy has none before its first Certify) but verified when presented, and
//! handed to the handlers as [`PeerInfo`].
//!
//! Anything that reaches the port gets this far without proving anything, so what a stranger
//! can hold is bounded ([`GrpcLimits`]): handshakes in progress, then the HTTP/2 preface, which
//! every connection must send within a short time (it is read here, before the HTTP/2 server
//! sees the connection), then connections without a client certificate, which are counted,
//! capped, and closed once idle with no call in flight. Each close is counted in
//! `weft_control_connections_closed_total{reason}`. Connections with a client certificate
//! are bounded per identity (`control.limits.connections_per_identity`): one beyond it is
//! closed as soon as its handshake proves whose it is, and counted in
//! `weft_control_limited_total{reason="identity_connections"}`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use weft_api::v1::discovery_server::DiscoveryServer;
use weft_api::v1::identity_server::IdentityServer;
use weft_ca::tls::{ClientAuth, TlsCredentials, peer_identity};
use weft_ca::{ALPN_H2, CertificateAuthority, LeafKey};
use weft_core::Identity;

use crate::discovery::DiscoveryService;
use crate::identity::IdentityService;
use crate::limits::{KeyPermit, Limit};
use crate::{ControlError, State};

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS handshakes in progress at once, with the wait for the HTTP/2 preface that follows;
/// connections beyond it are closed at once. Handshakes come before any authentication, so
/// this bounds what strangers can hold.
const MAX_HANDSHAKES: usize = 256;

/// What an HTTP/2 client sends first (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The largest request message accepted. A CSR with a credential (a JWT or a ServiceAccount
/// token) fits many times over.
pub(crate) const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Requests in flight on one connection. A proxy holds one Resolve stream per destination in
/// use (at most `--max-destinations`, 1,000 by default, under transparent interception), its
/// settings stream, and a renewal now and then, all on one connection. It is not lower
/// because that would stall a proxy at its default `--max-destinations`; what one identity
/// holds over all its connections is bounded apart (`control.limits`).
const MAX_STREAMS_PER_CONNECTION: u32 = 1100;

/// Bounds of the gRPC listener on what a client holds before it proves an identity.
#[derive(Clone, Debug)]
pub struct GrpcLimits {
    /// How long after its TLS handshake any connection may take to send the HTTP/2 preface;
    /// then it is closed.
    pub preface_timeout: Duration,
    /// How long a connection without a client certificate may stay open with no call in
    /// flight. A proxy asks for its certificate on a connection of its own and drops it once
    /// answered, so only strangers hold such a connection idle.
    pub anonymous_idle_timeout: Duration,
    /// Connections without a client certificate held at once (from the end of their
    /// handshake); more are closed at once. Proxies with a certificate are not counted (they
    /// renew presenting it), so this is at most the proxies getting their first certificate
    /// at once.
    pub max_anonymous_connections: usize,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        Self {
            preface_timeout: Duration::from_secs(5),
            anonymous_idle_timeout: Duration::from_secs(10),
            max_anonymous_connections: 256,
        }
    }
}

/// Who is on the other end of a gRPC connection.
#[derive(Clone, Debug)]
pub(crate) struct PeerInfo {
    /// The mesh identity the client proved, if it presented a certificate.
    pub(crate) identity: Option<Identity>,
    /// The client's address.
    pub(crate) remote: SocketAddr,
    /// The calls in flight on a connection without a client certificate, which its idle
    /// deadline waits for.
    pub(crate) calls: Option<Arc<CallActivity>>,
}

/// A TLS connection with what its handshake proved.
pub(crate) struct PeerConn {
    io: TlsStream<TcpStream>,
    info: PeerInfo,
    /// What is left to hand to the HTTP/2 server of the preface read here to check it.
    replay: &'static [u8],
    /// The idle deadline of a connection without a client certificate.
    idle: Option<IdleClock>,
    /// The connection's share of its identity's bound, held as long as the connection.
    _identity_slot: Option<KeyPermit<Identity>>,
}

/// Calls in flight on one connection, and since when there have been none.
#[derive(Debug)]
pub(crate) struct CallActivity {
    /// Calls in flight, and when the count last fell to 0 (or the connection began).
    calls: std::sync::Mutex<(usize, Instant)>,
    /// The connection's reader, woken when the last call ends so that its deadline restarts.
    reader: AtomicWaker,
}

/// One call in flight, for as long as it lives.
struct CallGuard(Arc<CallActivity>);

/// The slot of a connection without a client certificate, and its share of the gauge.
struct AnonymousSlot {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

/// Closes a connection that has had no call in flight for `limit`.
struct IdleClock {
    calls: Arc<CallActivity>,
    limit: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    expired: bool,
    state: Arc<State>,
    remote: SocketAddr,
    _slot: AnonymousSlot,
}

/// Issues the control plane's serving certificate from its own CA.
pub(crate) fn server_credentials(
    ca: &CertificateAuthority,
    own: &Identity,
) -> Result<Arc<TlsCredentials>, ControlError> {
    let key = LeafKey::generate().map_err(|e| rustls::Error::General(e.to_string()))?;
    let leaf = ca.issue_control_plane(
        &["localhost".to_string(), "weft-control".to_string()],
        key.key_pair(),
    )?;
    Ok(Arc::new(TlsCredentials::new(
        own.clone(),
        &leaf,
        key.private_key_der(),
        ca.trust_bundle(),
        &[ALPN_H2],
        ClientAuth::Optional,
    )?))
}

/// Serves Identity and Discovery until `shutdown`, with the latest serving certificate.
pub(crate) async fn serve_grpc(
    listener: TcpListener,
    serving: tokio::sync::watch::Receiver<Arc<TlsCredentials>>,
    state: Arc<State>,
    limits: GrpcLimits,
    shutdown: CancellationToken,
) {
    let (tx, rx) = mpsc::channel::<io::Result<PeerConn>>(64);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let anonymous = Arc::new(Semaphore::new(limits.max_anonymous_connections));
    let stop = shutdown.clone();
    let accept_state = state.clone();
    tokio::spawn(async move {
        let state = accept_state;
        loop {
            let (tcp, remote) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::warn!(%remote, "too many TLS handshakes in progress; connection closed");
                continue;
            };
            // The serving certificate is re-issued while running; each handshake takes the
            // latest.
            let acceptor = TlsAcceptor::from(serving.borrow().server_config());
            let tx = tx.clone();
            let state = state.clone();
            // Handshakes run apart from the accept loop, so a slow client blocks nobody.
            let (anonymous, limits) = (anonymous.clone(), limits.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let io = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(io)) => io,
                    Ok(Err(e)) => {
                        let (reason, hint) = handshake_failure(&e);
                        state.metrics.count_tls_rejected(reason);
                        if reason == "handshake_failed" || reason == "not_tls" {
                            tracing::info!(%remote, error = %e, "TLS handshake refused");
                        } else {
                            tracing::warn!(%remote, reason, error = %e, "{hint} (this mesh's trust domain is {})", state.ca.trust_domain());
                        }
                        return;
                    }
                    Err(_) => {
                        state.metrics.count_tls_rejected("handshake_timeout");
                        tracing::info!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let identity = peer_identity(io.get_ref().1.peer_certificates());
                // A proven identity may hold only so many connections, whichever of its
                // proxies holds them.
                let identity_slot = match &identity {
                    None => None,
                    Some(id) => match state.limits.connections.try_acquire(id) {
                        Some(slot) => Some(slot),
                        None => {
                            state.metrics.count_limited(Limit::IdentityConnections);
                            tracing::warn!(%remote, identity = %id, max = state.limits.connections.max(), "connection closed: the identity holds the most connections one identity may (control.limits.connections_per_identity)");
                            return;
                        }
                    },
                };
                let slot = if identity.is_none() {
                    let Ok(permit) = anonymous.clone().try_acquire_owned() else {
                        state.metrics.count_connection_closed("anonymous_limit");
                        tracing::info!(%remote, max = limits.max_anonymous_connections, "too many connections without a client certificate; connection closed");
                        return;
                    };
                    Some(AnonymousSlot::new(
                        permit,
                        &state.metrics.anonymous_connections,
                    ))
                } else {
                    None
                };
                let Some(io) = read_preface(io, limits.preface_timeout, &state, remote).await
                else {
                    return;
                };
                drop(permit);
                let idle = slot.map(|slot| {
                    IdleClock::new(slot, limits.anonymous_idle_timeout, state.clone(), remote)
                });
                let calls = idle.as_ref().map(|i| i.calls.clone());
                let info = PeerInfo {
                    identity,
                    remote,
                    calls,
                };
                let _ = tx
                    .send(Ok(PeerConn {
                        io,
                        info,
                        replay: H2_PREFACE,
                        idle,
                        _identity_slot: identity_slot,
                    }))
                    .await;
            });
        }
    });
    state
        .grpc_serving
        .store(true, std::sync::atomic::Ordering::Release);
    let serving = state.clone();
    let result = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(tower::layer::layer_fn(TrackCalls))
        .add_service(
            IdentityServer::new(IdentityService(state.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            DiscoveryServer::new(DiscoveryService(state.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            weft_api::v1::telemetry_server::TelemetryServer::new(
                crate::telemetry::TelemetryService(state),
            )
            .max_decoding_message_size(MAX_TELEMETRY_BYTES),
        )
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown.cancelled())
        .await;
    serving
        .grpc_serving
        .store(false, std::sync::atomic::Ordering::Release);
    if let Err(e) = result {
        tracing::error!(error = %e, "gRPC server failed");
    }
}

/// The largest telemetry report read (a proxy's samples; a real one is tens of kilobytes).
const MAX_TELEMETRY_BYTES: usize = 2 * 1024 * 1024;

/// Reads the HTTP/2 preface within `timeout`; `None` (the connection dropped, and counted)
/// when it does not come or is something else.
async fn read_preface(
    mut io: TlsStream<TcpStream>,
    timeout: Duration,
    state: &State,
    remote: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    let mut preface = [0u8; H2_PREFACE.len()];
    match tokio::time::timeout(timeout, io.read_exact(&mut preface)).await {
        Ok(Ok(_)) if &preface == H2_PREFACE => Some(io),
        Ok(Ok(_)) => {
            state.metrics.count_connection_closed("not_http2");
            tracing::info!(%remote, "a connection sent something other than HTTP/2; closed");
            None
        }
        // The client left.
        Ok(Err(_)) => None,
        Err(_) => {
            state.metrics.count_connection_closed("preface_timeout");
            tracing::info!(%remote, ?timeout, "a connection sent no HTTP/2 preface in time; closed");
            None
        }
    }
}

/// A tower layer's service that counts each call in flight on the connection it came on.
/// The count ends when the call's answer is ready: calls on connections without a client
/// certificate (the only ones counted) are unary, so their answer is one short message.
#[derive(Clone, Debug)]
struct TrackCalls<S>(S);

impl<S, B> tower::Service<http::Request<B>> for TrackCalls<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.calls.as_ref())
            .map(CallActivity::start);
        let answer = self.0.call(req);
        Box::pin(async move {
            let answer = answer.await;
            drop(call);
            answer
        })
    }
}

// === impl CallActivity ===

impl CallActivity {
    fn new() -> Self {
        Self {
            calls: std::sync::Mutex::new((0, Instant::now())),
            reader: AtomicWaker::new(),
        }
    }

    fn start(this: &Arc<Self>) -> CallGuard {
        this.lock().0 += 1;
        CallGuard(this.clone())
    }

    /// Since when no call has been in flight; `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        let (calls, since) = *self.lock();
        (calls == 0).then_some(since)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Instant)> {
        // The count stays consistent whatever panicked while holding it.
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        {
            let mut calls = self.0.lock();
            calls.0 = calls.0.saturating_sub(1);
            if calls.0 == 0 {
                calls.1 = Instant::now();
            }
        }
        self.0.reader.wake();
    }
}

// === impl AnonymousSlot ===

impl AnonymousSlot {
    fn new(permit: OwnedSemaphorePermit, gauge: &Gauge) -> Self {
        gauge.inc();
        Self {
            _permit: permit,
            gauge: gauge.clone(),
        }
    }
}

impl Drop for AnonymousSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

// === impl IdleClock ===

impl IdleClock {
    fn new(slot: AnonymousSlot, limit: Duration, state: Arc<State>, remote: SocketAddr) -> Self {
        Self {
            calls: Arc::new(CallActivity::new()),
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
            expired: false,
            state,
            remote,
            _slot: slot,
        }
    }

    /// Whether the connection has been idle too long. Polled with every read, which the
    /// HTTP/2 server always has pending, so the clock's timer wakes the connection.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.expired {
            return true;
        }
        self.calls.reader.register(cx.waker());
        let Some(since) = self.calls.idle_since() else {
            return false;
        };
        let deadline = since + self.limit;
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.expired = true;
        self.state.metrics.count_connection_closed("anonymous_idle");
        tracing::debug!(remote = %self.remote, "connection without a client certificate idle; closed");
        true
    }
}

/// Names a failed handshake (a bounded label) and says what it usually means.
fn handshake_failure(e: &io::Error) -> (&'static str, &'static str) {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error};
    let Some(err) = e.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return ("handshake_failed", "");
    };
    match err {
        Error::InvalidMessage(_) => ("not_tls", ""),
        Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => (
            "client_unknown_ca",
            "a client presented a certificate from another CA: that proxy belongs to another mesh, or was certified before this mesh's root changed",
        ),
        Error::InvalidCertificate(_) => (
            "client_bad_certificate",
            "a client presented a certificate this mesh does not accept",
        ),
        Error::AlertReceived(Alert::UnknownCA | Alert::DecryptError) => (
            "peer_distrusts_control_plane",
            "a proxy refused the control plane's certificate as signed by an unknown CA: its trust bundle does not hold this mesh's root",
        ),
        Error::AlertReceived(Alert::CertificateUnknown | Alert::BadCertificate) => (
            "peer_rejected_control_identity",
            "a proxy refused the control plane's certificate: it expects another control-plane identity, usually because it was given another trust domain",
        ),
        _ => ("handshake_failed", ""),
    }
}

impl Connected for PeerConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(idle) = &mut this.idle
            && idle.poll_expired(cx)
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "idle connection without a client certificate",
            )));
        }
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay = &this.replay[n..];
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
