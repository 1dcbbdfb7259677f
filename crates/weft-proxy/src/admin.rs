//! The admin listener (`/live`, `/ready`, `/metrics`, `/shutdown`) and the optional probe
//! listener (`/live` and `/ready` only), so a pod can expose its probes without the rest. Both
//! also run the application's own probes at `/app-health/<name>` ([`crate::app_probe`]).
//! Injected pods send every kubelet probe to the probe listener: it has connection slots of its
//! own, so a flood of the admin listener (which serves `/metrics` to anyone who reaches the
//! pod) cannot make the kubelet restart the pod or take it out of its Services.
//!
//! Both are small HTTP/1.1 servers with hard bounds ([`weft_core::listener`]): at most
//! [`MAX_CONNECTIONS`] connections at once, at most [`MAX_PER_ADDRESS`] of them from one client
//! address (more are closed on accept and counted in
//! `weft_admin_connections_refused_total{listener, reason}`); a connection without traffic and
//! without a request being answered for [`IDLE_TIMEOUT`] is closed, so a client must keep
//! sending to keep its slot; and one that has not sent a whole request head within
//! [`HEADER_TIMEOUT`] is closed, so slowloris clients cannot pile up either.
//!
//! `/shutdown` is off unless `--admin-shutdown` is given; then it takes only a POST from a
//! loopback address carrying the header `weft-admin-action: shutdown`, which a browser cannot
//! send cross-site without a preflight.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weft_core::listener::{Activity, ConnectionLimits};

pub use weft_core::listener::{IDLE_TIMEOUT, MAX_PER_ADDRESS};

use crate::Runtime;

/// Connections each admin or probe listener holds at once.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send a request head once it has started one (before the
/// first byte, [`IDLE_TIMEOUT`] applies).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The header a `/shutdown` request must carry, with the value `shutdown`.
pub const ACTION_HEADER: &str = "weft-admin-action";

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// Everything: `/live`, `/ready`, `/metrics`, `/shutdown`.
    Admin,
    /// `/live` and `/ready` only.
    Probes,
}

impl Endpoints {
    /// The `listener` label of this listener's metrics.
    fn label(self) -> &'static str {
        match self {
            Endpoints::Admin => "admin",
            Endpoints::Probes => "probe",
        }
    }
}

/// Serves `endpoints` on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    shared: Arc<Runtime>,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    let limits = ConnectionLimits::new(MAX_CONNECTIONS, MAX_PER_ADDRESS);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let slot = match limits.try_admit(remote.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                tracing::debug!(%remote, listener = endpoints.label(), reason = refusal.as_str(), "connection over the listener's bounds; closed");
                shared
                    .metrics
                    .admin_refused
                    .get_or_create(&crate::metrics::AdminRefusedLabels {
                        listener: endpoints.label(),
                        reason: refusal.as_str(),
                    })
                    .inc();
                continue;
            }
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let activity = Activity::new();
            let io = TokioIo::new(activity.track(tcp));
            let answers = activity.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let answering = answers.answering();
                let probe = app_probe(&shared, &req);
                let rsp = match probe {
                    Some(_) => None,
                    None => Some(handle(&shared, endpoints, remote, &shutdown, req)),
                };
                async move {
                    let _answering = answering;
                    let rsp = match (rsp, probe) {
                        (Some(rsp), _) => rsp,
                        (None, Some(Ok(p))) => {
                            let (status, body) = crate::app_probe::run(&p).await;
                            plain(status, &body)
                        }
                        (None, Some(Err(status))) => plain(status, "no such probe\n"),
                        (None, None) => plain(StatusCode::NOT_FOUND, "not found\n"),
                    };
                    Ok::<_, Infallible>(rsp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(io, svc);
            tokio::select! {
                _ = conn => {}
                _ = activity.idle(IDLE_TIMEOUT) => {
                    tracing::debug!(%remote, "idle admin connection closed");
                }
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// The application probe a request asks for: `None` when it is not a `GET /app-health/...`,
/// else the probe, or the status to refuse it with.
fn app_probe<B>(
    shared: &Runtime,
    req: &Request<B>,
) -> Option<Result<crate::app_probe::AppProbe, StatusCode>> {
    let name = req.uri().path().strip_prefix(crate::app_probe::PREFIX)?;
    if req.method() != Method::GET {
        return Some(Err(StatusCode::METHOD_NOT_ALLOWED));
    }
    let probe = shared.config.app_probes.as_ref().and_then(|p| p.get(name));
    Some(probe.cloned().ok_or(StatusCode::NOT_FOUND))
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

/// Whether the proxy can serve: it holds an unexpired certificate and its settings.
pub fn is_ready(shared: &Runtime) -> bool {
    not_ready_because(shared).is_none()
}

fn not_ready_because(shared: &Runtime) -> Option<&'static str> {
    let creds = shared.credentials.borrow().clone();
    readiness(
        shared.drain.draining.is_cancelled(),
        creds.as_deref(),
        shared.settings.borrow().is_some(),
        SystemTime::now(),
    )
}

/// Why a proxy in this state is not ready, or `None` when it is.
fn readiness(
    draining: bool,
    creds: Option<&weft_ca::TlsCredentials>,
    has_settings: bool,
    now: SystemTime,
) -> Option<&'static str> {
    if draining {
        return Some("draining");
    }
    match creds {
        None => return Some("no certificate yet"),
        // Peers refuse an expired certificate, so a proxy holding one serves nothing.
        Some(c) if c.not_after() <= now => {
            return Some("certificate expired; renewal has not succeeded");
        }
        Some(_) => {}
    }
    if !has_settings {
        return Some("no settings from the control plane yet");
    }
    None
}

/// Whether a `/shutdown` request may stop the proxy, or the status and reason to refuse it.
fn may_shut_down<B>(
    enabled: bool,
    remote: SocketAddr,
    req: &Request<B>,
) -> Result<(), (StatusCode, &'static str)> {
    if !enabled {
        return Err((
            StatusCode::NOT_FOUND,
            "/shutdown is disabled; start the proxy with --admin-shutdown",
        ));
    }
    if req.method() != Method::POST {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "use POST"));
    }
    if !remote.ip().is_loopback() {
        return Err((StatusCode::FORBIDDEN, "only from a loopback address"));
    }
    if req.headers().get(ACTION_HEADER).map(|v| v.as_bytes()) != Some(b"shutdown") {
        return Err((
            StatusCode::FORBIDDEN,
            "send the header weft-admin-action: shutdown",
        ));
    }
    Ok(())
}

fn handle(
    shared: &Runtime,
    endpoints: Endpoints,
    remote: SocketAddr,
    shutdown: &CancellationToken,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: &str, ctype: &'static str| {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, ctype)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap_or_default()
    };
    let text = |status: StatusCode, body: &str| reply(status, body, "text/plain");
    match (endpoints, req.uri().path()) {
        (_, "/live") => text(StatusCode::OK, "live\n"),
        (_, "/ready") => match not_ready_because(shared) {
            None => text(StatusCode::OK, "ready\n"),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}\n"),
            ),
        },
        (Endpoints::Admin, "/metrics") => reply(
            StatusCode::OK,
            &shared.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        (Endpoints::Admin, "/shutdown") => {
            match may_shut_down(shared.config.admin_shutdown, remote, &req) {
                Ok(()) => {
                    tracing::info!(%remote, "shutdown requested on the admin listener");
                    shutdown.cancel();
                    text(StatusCode::OK, "shutting down\n")
                }
                Err((status, why)) => {
                    if status == StatusCode::FORBIDDEN {
                        tracing::warn!(%remote, why, "/shutdown refused");
                    }
                    text(status, &format!("{why}\n"))
                }
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, header: Option<&str>) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/shutdown");
        if let Some(v) = header {
            b = b.header(ACTION_HEADER, v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn an_expired_certificate_makes_the_proxy_unready() {
        use std::time::Duration;
        use weft_ca::tls::ClientAuth;
        use weft_ca::{ALPN_H2, CertificateAuthority, IssuedLeaf, LeafKey, TlsCredentials};
        use weft_core::{Identity, TrustDomain};

        let td = TrustDomain::new("weft.test").unwrap();
        let ca = CertificateAuthority::generate_ephemeral(&td, Duration::from_secs(3600)).unwrap();
        let id = Identity::new(td, "demo", "web").unwrap();
        let key = LeafKey::generate().unwrap();
        let leaf = ca.sign_csr(&key.csr(&id).unwrap(), &id).unwrap();
        let creds = |not_after| {
            let leaf = IssuedLeaf {
                not_after,
                ..leaf.clone()
            };
            TlsCredentials::new(
                id.clone(),
                &leaf,
                key.private_key_der(),
                ca.trust_bundle(),
                &[ALPN_H2],
                ClientAuth::Required,
            )
            .unwrap()
        };
        let now = SystemTime::now();
        let valid = creds(now + Duration::from_secs(60));
        let expired = creds(now - Duration::from_secs(1));
        assert_eq!(readiness(false, Some(&valid), true, now), None);
        assert_eq!(
            readiness(false, Some(&expired), true, now),
            Some("certificate expired; renewal has not succeeded")
        );
        // The same certificate turns unready the moment its time is up.
        assert!(readiness(false, Some(&valid), true, now + Duration::from_secs(60)).is_some());
        assert_eq!(
            readiness(false, None, true, now),
            Some("no certificate yet")
        );
        assert_eq!(
            readiness(false, Some(&valid), false, now),
            Some("no settings from the control plane yet")
        );
        assert_eq!(readiness(true, Some(&valid), true, now), Some("draining"));
    }

    #[test]
    fn shutdown_needs_the_flag_a_post_loopback_and_the_header() {
        let lo: SocketAddr = ([127, 0, 0, 1], 4000).into();
        let lo6: SocketAddr = "[::1]:4000".parse().unwrap();
        let far: SocketAddr = ([10, 1, 2, 3], 4000).into();
        let ok = req(Method::POST, Some("shutdown"));
        assert_eq!(may_shut_down(true, lo, &ok), Ok(()));
        assert_eq!(may_shut_down(true, lo6, &ok), Ok(()));
        let status = |r: Result<(), (StatusCode, &str)>| r.unwrap_err().0;
        assert_eq!(status(may_shut_down(false, lo, &ok)), StatusCode::NOT_FOUND);
        assert_eq!(status(may_shut_down(true, far, &ok)), StatusCode::FORBIDDEN);
        assert_eq!(
            status(may_shut_down(true, lo, &req(Method::GET, Some("shutdown")))),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(may_shut_down(true, lo, &req(Method::POST, None))),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(may_shut_down(true, lo, &req(Method::POST, Some("yes")))),
            StatusCode::FORBIDDEN
        );
    }
}
