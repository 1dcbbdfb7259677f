//! The control plane's HTTP listener: `/live`, `/ready`, `/metrics`, `/api/state`,
//! `/api/authz` (`POST` a question, get the authorization decision explained), `/api/stat`
//! (`?by=workload|service|route&from=&to=`) and `/api/edges` (`?from=&to=`), the golden
//! metrics of [`crate::stats`], `/api/routes` (`?service=&from=`, what a caller applies to a
//! service), `/api/tap` (live requests, [`crate::tap`]) and the dashboard under `/dashboard`
//! ([`crate::dashboard`]); and the
//! optional probe listener (`control.probe_addr`): `/live` and `/ready` alone, with connection
//! slots of its own, so the kubelet's probes (the Helm chart sends them there) get through
//! whatever other clients do to the HTTP listener.
//!
//! `/api/state` shows the whole topology, so the listener binds loopback by default; bound to
//! any other address, `/metrics`, `/api/*` and `/dashboard` require `Authorization: Bearer <token>` with
//! the token the control plane keeps in `<data_dir>/http-token` (0600). The probes stay open.
//! The optional `control.local_http_addr` serves the same without the token, on loopback only
//! (the config refuses anything else): on Kubernetes the pod's own network namespace, which
//! only its containers and the API server's port-forward reach (`weft stat --kubernetes`).
//!
//! Platforms probe them, so no client may take all of one. Like the proxy's admin listener each
//! has the bounds of [`weft_core::listener`]: at most [`MAX_CONNECTIONS`] connections, at most
//! [`MAX_PER_ADDRESS`] of them from one client address (more are closed on accept and counted
//! in `weft_control_http_connections_refused_total{listener, reason}`); a
//! connection without traffic and without a request being answered for [`IDLE_TIMEOUT`] is
//! closed, and one that has not sent a whole request head within [`HEADER_TIMEOUT`] once it
//! started one.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weft_core::listener::{Activity, ConnectionLimits};
use weft_core::policy::authz::{ExplainRequest, explain};
use weft_core::private_fs::{self, PrivateFsError};

pub use weft_core::listener::{IDLE_TIMEOUT, MAX_PER_ADDRESS};

use crate::State;

/// Connections the HTTP listener holds at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 128;

/// How long a client may take to send a request head once it has started one (before the
/// first byte, [`IDLE_TIMEOUT`] applies).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoints {
    /// Everything: `/live`, `/ready`, `/metrics`, `/api/*`, `/dashboard`.
    Http,
    /// Everything, as [`Endpoints::Http`], with no token asked: the loopback-only listener of
    /// `control.local_http_addr` (the config refuses any other address).
    LocalHttp,
    /// `/live` and `/ready` only.
    Probes,
}

/// Marks the requests of the [`Endpoints::LocalHttp`] listener, so that every handler's
/// [`authorized`] waives the token for them alone.
#[derive(Clone, Copy, Debug)]
struct Loopback;

impl Endpoints {
    /// The `listener` label of this listener's metrics.
    fn label(self) -> &'static str {
        match self {
            Endpoints::Http => "http",
            Endpoints::LocalHttp => "local_http",
            Endpoints::Probes => "probe",
        }
    }

    /// Whether it serves the API and the dashboard, not the probes alone.
    fn serves_api(self) -> bool {
        matches!(self, Endpoints::Http | Endpoints::LocalHttp)
    }
}

/// Serves `endpoints` on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    state: Arc<State>,
    shutdown: CancellationToken,
) {
    let limits = ConnectionLimits::new(MAX_CONNECTIONS, MAX_PER_ADDRESS);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let slot = match limits.try_admit(remote.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                tracing::debug!(%remote, listener = endpoints.label(), reason = refusal.as_str(), "HTTP connection over the listener's bounds; closed");
                state
                    .metrics
                    .http_refused
                    .get_or_create(&crate::metrics::HttpRefusedLabels {
                        listener: endpoints.label(),
                        reason: refusal.as_str(),
                    })
                    .inc();
                continue;
            }
        };
        let state = state.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let activity = Activity::new();
            let io = TokioIo::new(activity.track(tcp));
            let answers = activity.clone();
            // Every answer is computed at once; marking it keeps the idle clock honest all the same.
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let answering = answers.answering();
                let state = state.clone();
                if endpoints == Endpoints::LocalHttp {
                    req.extensions_mut().insert(Loopback);
                }
                async move {
                    if endpoints.serves_api() && req.uri().path() == "/api/tap" {
                        // The answer streams: the connection is busy until it ends.
                        return Ok::<_, Infallible>(api_tap(&state, &req, answering));
                    }
                    if endpoints.serves_api() && crate::dashboard::serves(req.uri().path()) {
                        // Live views stream too, and hold `answering` while they do.
                        return Ok::<_, Infallible>(crate::dashboard::respond(
                            &state, &req, answering,
                        ));
                    }
                    let _answering = answering;
                    Ok::<_, Infallible>(respond(&state, endpoints, req).await.map(BodyExt::boxed))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(io, svc);
            tokio::select! {
                _ = conn => {}
                _ = activity.idle(IDLE_TIMEOUT) => {
                    tracing::debug!(%remote, "idle HTTP connection closed");
                }
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Reads the HTTP API token in `path`, or writes a new random one there (0600).
pub(crate) fn ensure_http_token(path: &Path) -> Result<String, PrivateFsError> {
    if let Some(dir) = path.parent() {
        private_fs::create_private_dir(dir)?;
    }
    let token = private_fs::ensure_token(path)?;
    tracing::info!(file = %path.display(), "the HTTP listener is not on loopback: /metrics and /api/state require the token in this file");
    Ok(token)
}

/// `/api/tap`: the events of the proxies the query selects, as JSON lines ([`crate::tap`]).
fn api_tap<B>(
    state: &Arc<State>,
    req: &Request<B>,
    hold: impl Send + Sync + 'static,
) -> Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
    if !authorized(state, req) {
        return unauthorized().map(BodyExt::boxed);
    }
    let query = Query::of(req);
    let arg = |name: &str| query.get(name).map(str::to_string);
    let number = |name: &str| arg(name).map(|v| v.parse::<u64>());
    let (rate, max) = match (number("rate"), number("max")) {
        (Some(Err(_)), _) | (_, Some(Err(_))) => {
            return plain(
                StatusCode::BAD_REQUEST,
                "rate and max are whole numbers\n".into(),
            )
            .map(BodyExt::boxed);
        }
        (rate, max) => (
            rate.and_then(Result::ok)
                .map_or(0, |r| u32::try_from(r).unwrap_or(u32::MAX)),
            max.and_then(Result::ok),
        ),
    };
    crate::tap::relay(
        state,
        crate::tap::Query {
            to: arg("to"),
            from: arg("from"),
            method: arg("method"),
            path: arg("path"),
            authority: arg("authority"),
            rate,
            max,
        },
        hold,
    )
}

/// A request's query parameters, decoded.
struct Query(Vec<(String, String)>);

/// The decoded query parameters of `req`, in order.
pub(crate) fn query_pairs<B>(req: &Request<B>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

impl Query {
    fn of<B>(req: &Request<B>) -> Self {
        Self(query_pairs(req))
    }

    /// The first value of `name`, unless it is empty.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// Whether `req` carries the token, when one is required: on the HTTP listener off loopback,
/// never on the loopback-only `control.local_http_addr`.
pub(crate) fn authorized<B>(state: &State, req: &Request<B>) -> bool {
    if req.extensions().get::<Loopback>().is_some() {
        return true;
    }
    let Some(token) = &state.http_token else {
        return true;
    };
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Equal lengths are compared in full, so timing says nothing about the token's bytes.
    presented.len() == token.len()
        && presented
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The largest `/api/authz` question read.
const MAX_QUESTION: usize = 64 * 1024;

/// Answers `req`, reading the body of a `/api/authz` question first.
async fn respond(
    state: &State,
    endpoints: Endpoints,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if endpoints.serves_api() && req.uri().path() == "/api/authz" {
        if !authorized(state, &req) {
            return unauthorized();
        }
        if req.method() != http::Method::POST {
            return plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST a question as JSON\n".into(),
            );
        }
        let body = http_body_util::Limited::new(req.into_body(), MAX_QUESTION);
        let bytes = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!("unreadable question: {e}\n"),
                );
            }
        };
        return api_authz(state, &bytes);
    }
    handle(state, endpoints, req)
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn unauthorized() -> Response<Full<Bytes>> {
    plain(
        StatusCode::UNAUTHORIZED,
        "send Authorization: Bearer <token from <data_dir>/http-token>\n".into(),
    )
}

/// `/api/authz`: explains the decision the mesh's rules make on the question in `body` (a
/// JSON [`ExplainRequest`]), without sending traffic.
fn api_authz(state: &State, body: &[u8]) -> Response<Full<Bytes>> {
    let question: ExplainRequest = match serde_json::from_slice(body) {
        Ok(q) => q,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("bad question: {e}\n")),
    };
    let cfg = state.config.borrow().clone();
    let registry = state.registry.snapshot();
    match explain(
        cfg.policy.default_inbound,
        &crate::discovery::authorizations(&cfg, &registry),
        &cfg.mesh.trust_domain,
        &question,
    ) {
        Ok(answer) => Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(
                serde_json::to_string(&answer).unwrap_or_default(),
            )))
            .unwrap_or_default(),
        Err(e) => plain(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

fn handle(state: &State, endpoints: Endpoints, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, ctype: &'static str| {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    let path = req.uri().path();
    if endpoints == Endpoints::Probes && !matches!(path, "/live" | "/ready") {
        return text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain");
    }
    if (path == "/metrics" || path.starts_with("/api/")) && !authorized(state, &req) {
        return unauthorized();
    }
    let query = Query::of(&req);
    let arg = |name: &str| query.get(name);
    match path {
        "/live" => text(StatusCode::OK, "live\n".into(), "text/plain"),
        "/ready" => match state.not_ready_because() {
            None => text(StatusCode::OK, "ready\n".into(), "text/plain"),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                "text/plain",
            ),
        },
        "/metrics" => text(
            StatusCode::OK,
            {
                let (series, values) = state.telemetry.held();
                let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
                state.metrics.telemetry_series.set(gauge(series));
                state.metrics.telemetry_values.set(gauge(values));
                state.metrics.encode()
            },
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/api/state" => text(StatusCode::OK, api_state(state), "application/json"),
        "/api/stat" => {
            let by = match arg("by").unwrap_or("workload") {
                "workload" => crate::stats::By::Workload,
                "service" => crate::stats::By::Service,
                "route" => crate::stats::By::Route,
                other => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("by={other:?}: expected workload, service or route\n"),
                        "text/plain",
                    );
                }
            };
            let rows = crate::stats::stat(
                &state.telemetry.proxies(),
                &state.registry.snapshot(),
                by,
                arg("from"),
                arg("to"),
            );
            let body = serde_json::json!({
                "window_seconds": crate::telemetry::WINDOW.as_secs(),
                "rows": rows,
            });
            text(StatusCode::OK, body.to_string(), "application/json")
        }
        "/api/routes" => {
            let port = match arg("port").map(str::parse::<u16>) {
                Some(Err(_)) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "port: not a port\n".into(),
                        "text/plain",
                    );
                }
                p => p.and_then(Result::ok),
            };
            match crate::routes_view::answer(state, arg("service"), arg("from"), port) {
                Ok(v) => text(StatusCode::OK, v.to_string(), "application/json"),
                Err(e @ crate::routes_view::RoutesError::Unknown(_)) => {
                    text(StatusCode::NOT_FOUND, format!("{e}\n"), "text/plain")
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n"), "text/plain"),
            }
        }
        "/api/edges" => {
            let rows = crate::stats::edges(&state.telemetry.proxies(), arg("from"), arg("to"));
            let body = serde_json::json!({ "edges": rows });
            text(StatusCode::OK, body.to_string(), "application/json")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

fn api_state(state: &State) -> String {
    let snap = state.registry.snapshot();
    let sources: serde_json::Map<String, serde_json::Value> = snap
        .sources()
        .map(|source| {
            let services: Vec<_> = snap.source(source).map(|s| service_json(s)).collect();
            (
                source.to_string(),
                serde_json::json!({ "services": services }),
            )
        })
        .collect();
    let platforms: Vec<_> = state
        .platforms
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name(),
                "synced": state.registry.all_synced([p.name()]),
            })
        })
        .collect();
    serde_json::json!({
        "version": snap.version(),
        "ready": state.not_ready_because().is_none(),
        "platforms": platforms,
        "restart_required": state.restart_required(),
        "endpoints": snap.endpoint_count(),
        "sources": sources,
    })
    .to_string()
}

/// One service as `/api/state` shows it.
fn service_json(s: &weft_core::Service) -> serde_json::Value {
    let ports: Vec<_> = s
        .ports
        .iter()
        .map(|p| {
            let endpoints: Vec<_> = p
                .endpoints
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "address": e.address.to_string(),
                        "state": e.state,
                        "meshed": e.meshed,
                        "identity": e.identity.as_ref().map(|i| i.spiffe_id()),
                        "workload": e.workload.as_ref().map(|w| w.to_string()),
                    })
                })
                .collect();
            serde_json::json!({
                "port": p.port,
                "name": p.name,
                "protocol": p.protocol.as_str(),
                "endpoints": endpoints,
            })
        })
        .collect();
    serde_json::json!({
        "name": s.name.to_string(),
        "virtual_ips": s.virtual_ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
        "ports": ports,
    })
}
