//! The gRPC listener: TLS with the control plane's own mesh certificate; client certificates
//! optional (a proxy has none before its first Certify) but verified when presented, and
//! handed to the handlers as [`PeerInfo`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
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
use crate::{ControlError, State};

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS handshakes in progress at once; connections beyond it are closed at once. Handshakes
/// come before any authentication, so this bounds what strangers can hold.
const MAX_HANDSHAKES: usize = 256;

/// The largest request message accepted. A CSR with a credential (a JWT or a ServiceAccount
/// token) fits many times over.
pub(crate) const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Requests in flight on one connection. A proxy holds one Resolve stream per destination in
/// use (at most `--max-destinations`, 1,000 by default, under transparent interception), its
/// settings stream, and a renewal now and then, all on one connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 1100;

/// Who is on the other end of a gRPC connection.
#[derive(Clone, Debug)]
pub(crate) struct PeerInfo {
    /// The mesh identity the client proved, if it presented a certificate.
    pub(crate) identity: Option<Identity>,
    /// The client's address.
    pub(crate) remote: SocketAddr,
}

/// A TLS connection with what its handshake proved.
pub(crate) struct PeerConn {
    io: TlsStream<TcpStream>,
    info: PeerInfo,
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
    shutdown: CancellationToken,
) {
    let (tx, rx) = mpsc::channel::<io::Result<PeerConn>>(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
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
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(io)) => {
                        let identity = peer_identity(io.get_ref().1.peer_certificates());
                        let info = PeerInfo { identity, remote };
                        let _ = tx.send(Ok(PeerConn { io, info })).await;
                    }
                    Ok(Err(e)) => {
                        let (reason, hint) = handshake_failure(&e);
                        state.metrics.count_tls_rejected(reason);
                        if reason == "handshake_failed" || reason == "not_tls" {
                            tracing::info!(%remote, error = %e, "TLS handshake refused");
                        } else {
                            tracing::warn!(%remote, reason, error = %e, "{hint} (this mesh's trust domain is {})", state.ca.trust_domain());
                        }
                    }
                    Err(_) => {
                        state.metrics.count_tls_rejected("handshake_timeout");
                        tracing::info!(%remote, "TLS handshake timed out");
                    }
                }
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
        .add_service(
            IdentityServer::new(IdentityService(state.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            DiscoveryServer::new(DiscoveryService(state))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
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
        Pin::new(&mut self.io).poll_read(cx, buf)
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
