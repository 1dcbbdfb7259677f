//! The mutating admission webhook: an `admission.k8s.io/v1` AdmissionReview of a pod in, the
//! review's response out, with the injector's change as an RFC 6902 JSONPatch. Served over TLS
//! by the adapter when `[platforms.kubernetes.webhook]` names an address.
//!
//! A review that cannot be read at all (not JSON, not a review, larger than [`MAX_REVIEW`])
//! gets HTTP 400 with a Status naming the problem, and an unreadable trust bundle HTTP 500 (the
//! API server then applies the webhook's `failurePolicy`); a pod whose annotations cannot be
//! used is denied with the reason; anything else that is not a pod being created is allowed
//! unchanged.
//!
//! Anything that reaches the port may call it, so the server bounds what a client can hold
//! ([`Limits`]): the TLS handshake, the first request head and each request body have
//! deadlines (a body that is not whole in time gets 408), idle connections are closed, an
//! HTTP/2 connection has a few streams at once, and the request bodies held across all
//! connections have a byte budget: a request that would pass it gets 503 at once rather than
//! waiting. Reviews are parsed on blocking threads, a few at a time, so that a burst of them
//! cannot starve the runtime that also serves the control plane's gRPC.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::inject::{Injector, decide};

/// An HTTP answer: status and JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

/// An answer that is not a review's: a Kubernetes Status with `code` and `reason`.
fn status(code: u16, reason: &str, message: String) -> Answer {
    Answer {
        status: code,
        body: json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {},
            "status": "Failure", "reason": reason, "code": code, "message": message,
        }),
    }
}

fn bad_request(message: String) -> Answer {
    status(400, "BadRequest", message)
}

fn respond(uid: &str, response: Value) -> Answer {
    let mut response = response;
    response["uid"] = json!(uid);
    Answer {
        status: 200,
        body: json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }),
    }
}

/// What the webhook knows of a pod's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespace {
    /// Not one of the namespaces the mesh watches: its pods are never injected (their proxies
    /// would be refused certificates).
    OutsideMesh,
    /// In the mesh, with its `weft.dev/inject` annotation if it is known and has one.
    InMesh(Option<String>),
}

/// Answers one AdmissionReview; `namespace` says what is known of a namespace.
pub fn review(
    injector: &Injector,
    namespace_of: &dyn Fn(&str) -> Namespace,
    body: &[u8],
) -> Answer {
    let review: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("the body is not JSON: {e}")),
    };
    if review["apiVersion"] != "admission.k8s.io/v1" || review["kind"] != "AdmissionReview" {
        return bad_request("expected an admission.k8s.io/v1 AdmissionReview".into());
    }
    let request = &review["request"];
    let Some(uid) = request["uid"]
        .as_str()
        .filter(|u| !u.is_empty() && u.len() <= 128)
    else {
        return bad_request("the review has no request uid".into());
    };
    let allow = json!({"allowed": true});
    let is_pod_create = request["kind"]["kind"] == "Pod"
        && request["resource"]["resource"] == "pods"
        && request["subResource"].as_str().is_none_or(str::is_empty)
        && request["operation"] == "CREATE";
    if !is_pod_create {
        return respond(uid, allow);
    }
    let pod = &request["object"];
    if !pod.is_object() || !pod["spec"].is_object() {
        return respond(
            uid,
            json!({"allowed": false, "status": {"code": 400, "message": "the review holds no pod"}}),
        );
    }
    let namespace = request["namespace"]
        .as_str()
        .or_else(|| pod["metadata"]["namespace"].as_str())
        .unwrap_or("default");
    let ns_inject = match namespace_of(namespace) {
        Namespace::OutsideMesh => {
            tracing::debug!(namespace, "not injected: the namespace is outside the mesh");
            return respond(uid, allow);
        }
        Namespace::InMesh(inject) => inject,
    };
    match decide(namespace, ns_inject.as_deref(), pod) {
        Ok(Some(skip)) => {
            tracing::debug!(namespace, %skip, "not injected");
            return respond(uid, allow);
        }
        Ok(None) => {}
        Err(e) => {
            tracing::info!(namespace, error = %e, "pod refused");
            return respond(
                uid,
                json!({"allowed": false, "status": {"code": 400, "message": format!("weft: {e}")}}),
            );
        }
    }
    let mut injected = pod.clone();
    if let Err(e) = injector.inject(&mut injected) {
        return respond(
            uid,
            json!({"allowed": false, "status": {"code": 400, "message": format!("weft: {e}")}}),
        );
    }
    let patch = json_patch::diff(pod, &injected);
    let patch = match serde_json::to_vec(&patch) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("the patch cannot be written: {e}")),
    };
    tracing::info!(
        namespace,
        pod = pod["metadata"]["name"]
            .as_str()
            .or(pod["metadata"]["generateName"].as_str())
            .unwrap_or(""),
        "injected"
    );
    respond(
        uid,
        json!({
            "allowed": true,
            "patchType": "JSONPatch",
            "patch": base64::engine::general_purpose::STANDARD.encode(patch),
        }),
    )
}

/// The answer when the webhook cannot inject at all (its trust bundle is unreadable): HTTP
/// 500, so the API server applies the `failurePolicy`.
pub fn unavailable(reason: String) -> Answer {
    status(500, "InternalError", reason)
}

/// The webhook's TLS settings from its certificate chain and key files (PEM).
pub fn tls_from_files(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("webhook certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "webhook certificate {}: no certificate",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("webhook key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("webhook certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What the server answers reviews with. It runs on a blocking thread (see [`Webhook`]).
pub type Handler = Arc<dyn Fn(&[u8]) -> Answer + Send + Sync>;

/// The largest review read. A pod's annotations alone may hold 256 KiB (the API server's
/// limit on them); the rest of a pod (containers, env, volumes, managed fields) and the
/// review around it rarely pass tens of KiB, so 512 KiB holds every pod the API server would
/// store, while a review of megabytes (the API server's request limit is 3 MiB) is no pod.
pub const MAX_REVIEW: usize = 512 * 1024;

/// Bounds of the webhook server: how long a client may take and how much it may hold. Every
/// bound is on what a peer can do before it is authenticated (the webhook does not
/// authenticate its clients: the API server calls it, but so may anything that reaches the
/// port).
#[derive(Clone, Debug)]
pub struct Limits {
    /// The TLS handshake, from the accepted TCP connection.
    pub handshake_timeout: Duration,
    /// From the handshake to the first request head (the HTTP/2 preface and a stream's
    /// headers, or an HTTP/1 request line and headers).
    pub head_timeout: Duration,
    /// Reading a whole request body, counted from its request head however often bytes
    /// arrive: a body that trickles in is cut, not kept alive by each byte.
    pub body_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2 with GOAWAY).
    pub idle_timeout: Duration,
    /// Connections held at once; more are closed on accept.
    pub max_connections: usize,
    /// Connections one client address may hold at once; more from it are closed on accept,
    /// so one pod cannot take the slots the API server needs.
    pub max_per_address: usize,
    /// Concurrent HTTP/2 streams per connection; streams beyond it are refused
    /// (REFUSED_STREAM).
    pub max_streams: u32,
    /// The largest request body; larger ones get 400.
    pub max_review: usize,
    /// Request-body bytes held at once across all connections, taken as they arrive and
    /// given back once the review is parsed; a request that would pass it gets 503 at once.
    pub max_body_bytes_in_flight: usize,
    /// Reviews parsed and injected at once, each on a blocking thread, so that parsing never
    /// runs on (or starves) the runtime's workers, which also serve the control plane's gRPC.
    pub max_parses: usize,
}

impl Default for Limits {
    /// The API server gives a webhook call `timeoutSeconds` (5 s in the chart, at most 30 s),
    /// so a client slower than these is not the API server waiting for an answer.
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            head_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 128,
            // The API server multiplexes its calls over a few HTTP/2 connections per
            // instance; 16 leaves it room and keeps a single pod to an eighth of the slots.
            max_per_address: 16,
            max_streams: 16,
            max_review: MAX_REVIEW,
            // 16 reviews of the largest size, hundreds of ordinary ones (a few KiB each).
            max_body_bytes_in_flight: 8 * 1024 * 1024,
            max_parses: 2,
        }
    }
}

/// HTTP/2 flow-control windows: how much a client may send before the server has read it.
/// Small, so that bytes a handler has not taken yet stay few per connection.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 256 * 1024;

/// The HTTP/1 read buffer (request heads beyond it are refused).
const HTTP1_BUFFER: usize = 64 * 1024;

/// How long in-flight requests may finish once an idle connection is being closed.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The webhook server: bounds, and the gauges tests and logs read.
pub struct Webhook {
    handler: Handler,
    limits: Limits,
    /// Body bytes not yet taken; a permit is a byte.
    body_bytes: Arc<Semaphore>,
    parses: Arc<Semaphore>,
    peak_body_bytes: AtomicUsize,
    refused_busy: AtomicU64,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

// === impl Webhook ===

impl Webhook {
    /// A server answering with `handler` within `limits`.
    pub fn new(handler: Handler, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            handler,
            body_bytes: Arc::new(Semaphore::new(limits.max_body_bytes_in_flight)),
            parses: Arc::new(Semaphore::new(limits.max_parses.max(1))),
            limits,
            peak_body_bytes: AtomicUsize::new(0),
            refused_busy: AtomicU64::new(0),
        })
    }

    /// Request-body bytes held now, across all connections.
    pub fn body_bytes_in_flight(&self) -> usize {
        self.limits.max_body_bytes_in_flight - self.body_bytes.available_permits()
    }

    /// The most request-body bytes held at once since the server started.
    pub fn peak_body_bytes_in_flight(&self) -> usize {
        self.peak_body_bytes.load(Ordering::Relaxed)
    }

    /// Requests answered 503 because the body bytes in flight were at their cap.
    pub fn refused_busy(&self) -> u64 {
        self.refused_busy.load(Ordering::Relaxed)
    }

    /// Serves reviews on `listener` over TLS (`POST` any path) until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: CancellationToken,
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let slots = weft_core::listener::ConnectionLimits::new(
            self.limits.max_connections,
            self.limits.max_per_address,
        );
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook accept failed");
                        continue;
                    }
                },
            };
            let permit = match slots.try_admit(peer.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    tracing::debug!(%peer, reason = why.as_str(), "webhook connection over its bounds; closed");
                    drop(tcp);
                    continue;
                }
            };
            let (this, acceptor, shutdown) = (self.clone(), acceptor.clone(), shutdown.clone());
            tokio::spawn(async move {
                let _permit = permit;
                tokio::select! {
                    _ = this.connection(acceptor, tcp, peer) => {}
                    _ = shutdown.cancelled() => {}
                }
            });
        }
    }

    /// One connection, from its handshake to its close.
    async fn connection(
        self: Arc<Self>,
        acceptor: tokio_rustls::TlsAcceptor,
        tcp: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
    ) {
        let limits = &self.limits;
        let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "webhook TLS handshake timed out");
                return;
            }
        };
        let (activity, watch) = tokio::sync::watch::channel(Activity {
            in_flight: 0,
            seen_request: false,
            idle_since: Instant::now(),
        });
        let activity = Arc::new(activity);
        let this = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let (this, busy) = (this.clone(), InFlight::start(activity.clone()));
            async move {
                let rsp = this.handle(req).await;
                drop(busy);
                Ok::<_, std::convert::Infallible>(rsp)
            }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.head_timeout)
            .max_buf_size(HTTP1_BUFFER);
        builder
            .http2()
            .max_concurrent_streams(limits.max_streams)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        let conn = builder.serve_connection(TokioIo::new(tls), service);
        tokio::pin!(conn);
        let seen = tokio::select! {
            _ = conn.as_mut() => return,
            seen = until_idle(watch, limits.head_timeout, limits.idle_timeout) => seen,
        };
        if !seen {
            tracing::debug!(%peer, "webhook connection sent no request in time; closed");
            return;
        }
        // Idle: HTTP/2 gets a GOAWAY, HTTP/1 is closed between requests.
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let answer = if req.method() != hyper::Method::POST {
            Answer {
                status: 405,
                body: json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 405, "message": "POST an AdmissionReview"}),
            }
        } else {
            match self.read_body(req.into_body()).await {
                Ok((body, permit)) => self.parse(body, permit).await,
                Err(answer) => answer,
            }
        };
        let mut rsp = Response::new(Full::new(Bytes::from(answer.body.to_string())));
        *rsp.status_mut() =
            StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        rsp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        rsp
    }

    /// Reads a request body within the deadline, taking its bytes from the shared budget as
    /// they arrive; the permit gives them back.
    async fn read_body(
        &self,
        mut body: Incoming,
    ) -> Result<(BytesMut, OwnedSemaphorePermit), Answer> {
        let max = self.limits.max_review;
        if hyper::body::Body::size_hint(&body)
            .exact()
            .is_some_and(|n| n > max as u64)
        {
            return Err(too_large(max));
        }
        let deadline = Instant::now() + self.limits.body_timeout;
        let mut held = self
            .body_bytes
            .clone()
            .try_acquire_many_owned(0)
            .map_err(|_| unavailable("the webhook is shutting down".into()))?;
        let mut buf = BytesMut::new();
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    return Err(status(
                        408,
                        "Timeout",
                        format!(
                            "the body was not received within {:?}",
                            self.limits.body_timeout
                        ),
                    ));
                }
                Ok(None) => return Ok((buf, held)),
                Ok(Some(Err(e))) => {
                    return Err(bad_request(format!("the body could not be read: {e}")));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buf.len() + data.len() > max {
                return Err(too_large(max));
            }
            let more = u32::try_from(data.len())
                .ok()
                .and_then(|n| self.body_bytes.clone().try_acquire_many_owned(n).ok());
            let Some(more) = more else {
                self.refused_busy.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    cap = self.limits.max_body_bytes_in_flight,
                    "webhook request bodies in flight at their cap; review refused with 503"
                );
                return Err(status(
                    503,
                    "ServiceUnavailable",
                    "the webhook is busy; retry".into(),
                ));
            };
            held.merge(more);
            self.peak_body_bytes
                .fetch_max(self.body_bytes_in_flight(), Ordering::Relaxed);
            buf.extend_from_slice(&data);
        }
    }

    /// Runs the handler on a blocking thread, at most `max_parses` at once; the body's bytes
    /// go back to the budget when it is done.
    async fn parse(&self, body: BytesMut, held: OwnedSemaphorePermit) -> Answer {
        // Waiting here is bounded: every waiter holds its body's bytes from the budget.
        let Ok(slot) = self.parses.clone().acquire_owned().await else {
            return unavailable("the webhook is shutting down".into());
        };
        let handler = self.handler.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            let answer = handler(&body);
            drop((body, held, slot));
            answer
        })
        .await;
        parsed.unwrap_or_else(|e| {
            tracing::error!(error = %e, "the webhook's review handler failed");
            unavailable("the review could not be handled".into())
        })
    }
}

fn too_large(max: usize) -> Answer {
    bad_request(format!("the body is larger than {} KiB", max / 1024))
}

/// What a connection is doing, for its idle deadline.
#[derive(Clone, Copy, Debug)]
struct Activity {
    in_flight: usize,
    seen_request: bool,
    /// When `in_flight` last fell to 0 (or the connection began).
    idle_since: Instant,
}

/// One request in flight on a connection, for as long as it lives.
struct InFlight(Arc<tokio::sync::watch::Sender<Activity>>);

impl InFlight {
    fn start(activity: Arc<tokio::sync::watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| {
            a.in_flight += 1;
            a.seen_request = true;
        });
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|a| {
            a.in_flight = a.in_flight.saturating_sub(1);
            if a.in_flight == 0 {
                a.idle_since = Instant::now();
            }
        });
    }
}

/// Resolves once the connection has had no request in flight for too long: `head` before its
/// first request, `idle` after. Says whether a request was ever seen.
async fn until_idle(
    mut activity: tokio::sync::watch::Receiver<Activity>,
    head: Duration,
    idle: Duration,
) -> bool {
    loop {
        let now = *activity.borrow_and_update();
        if now.in_flight > 0 {
            // The request's own deadlines bound it; wait for it to end.
            if activity.changed().await.is_err() {
                return now.seen_request;
            }
            continue;
        }
        let limit = if now.seen_request { idle } else { head };
        tokio::select! {
            _ = tokio::time::sleep_until(now.idle_since + limit) => return now.seen_request,
            changed = activity.changed() => {
                if changed.is_err() {
                    return now.seen_request;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
