//! The mutating admission webhook: an `admission.k8s.io/v1` AdmissionReview of a pod in, the
//! review's response out, with the injector's change as an RFC 6902 JSONPatch. Served over TLS
//! by the adapter when `[platforms.kubernetes.webhook]` names an address.
//!
//! A review that cannot be read at all gets HTTP 400 with a Status naming the problem (the API
//! server then applies the webhook's `failurePolicy`); a pod whose annotations cannot be used
//! is denied with the reason; anything else that is not a pod being created is allowed
//! unchanged.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::inject::{Injector, decide};

/// The largest review read (the API server's own request limit is 3 MiB).
pub const MAX_REVIEW: usize = 3 * 1024 * 1024;

/// How long a connection may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 128;

/// An HTTP answer: status and JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

fn bad_request(message: String) -> Answer {
    Answer {
        status: 400,
        body: json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {},
            "status": "Failure", "reason": "BadRequest", "code": 400, "message": message,
        }),
    }
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
    Answer {
        status: 500,
        body: json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {},
            "status": "Failure", "reason": "InternalError", "code": 500, "message": reason,
        }),
    }
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

/// What the server answers reviews with.
pub type Handler = Arc<dyn Fn(&[u8]) -> Answer + Send + Sync>;

/// Serves reviews on `listener` over TLS (`POST` any path) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: Handler,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        let (acceptor, handler, shutdown) = (acceptor.clone(), handler.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &handler).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

async fn handle(req: Request<Incoming>, handler: &Handler) -> Response<Full<Bytes>> {
    let answer = if req.method() != hyper::Method::POST {
        Answer {
            status: 405,
            body: json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 405, "message": "POST an AdmissionReview"}),
        }
    } else {
        match Limited::new(req.into_body(), MAX_REVIEW).collect().await {
            Ok(body) => handler(&body.to_bytes()),
            Err(e) => bad_request(format!("the body could not be read: {e}")),
        }
    };
    let mut rsp = Response::new(Full::new(Bytes::from(answer.body.to_string())));
    *rsp.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_REQUEST);
    rsp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    rsp
}

#[cfg(test)]
mod tests;
