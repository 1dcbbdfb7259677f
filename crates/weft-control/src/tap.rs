//! `/api/tap`: the control plane taps the proxies a filter selects (over mutual TLS, as its
//! own identity, which every proxy allows) and streams their events to the HTTP client as
//! JSON lines, for `weft tap` and `weft top`; the dashboard takes the merged events of
//! [`start`] and sends them on as server-sent events.
//!
//! - `to`: a service (`name.namespace`) or workload (`namespace/name`): the proxies of those
//!   workloads, for the requests they receive. Otherwise every reporting proxy with a tap
//!   listener, at most [`MAX_PROXIES_TAPPED`], for the requests they carry either way.
//! - `from`: a client identity (`namespace/account`, a SPIFFE ID, or a prefix of one).
//! - `method`, `path` (a prefix), `authority`; `rate`: events a second per proxy (default
//!   100, at most 1,000); `max`: the stream ends after that many events.
//!
//! At most [`MAX_TAPS`] taps run at once. A tap ends when its client goes away, at `max`,
//! or when the control plane stops.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use weft_api::v1::tap_client::TapClient;
use weft_api::{TapEvent, TapRequest};
use weft_core::Identity;

use crate::State;
use crate::telemetry::ProxyView;

/// Proxies one tap follows at most.
pub const MAX_PROXIES_TAPPED: usize = 64;
/// Taps running at once at most.
pub const MAX_TAPS: usize = 16;

/// What the client asked for.
#[derive(Debug, Default, Clone)]
pub(crate) struct Query {
    pub(crate) to: Option<String>,
    pub(crate) from: Option<String>,
    pub(crate) method: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) authority: Option<String>,
    pub(crate) rate: u32,
    pub(crate) max: Option<u64>,
}

/// A source filter as the proxies read it: a SPIFFE ID prefix.
fn source_prefix(from: &str, trust_domain: &str) -> String {
    if from.starts_with("spiffe://") {
        return from.to_string();
    }
    match from.split_once('/') {
        Some((ns, name)) if !name.is_empty() => {
            format!("spiffe://{trust_domain}/ns/{ns}/sa/{name}")
        }
        _ => format!("spiffe://{trust_domain}/ns/{}/", from.trim_end_matches('/')),
    }
}

/// The proxies to tap, each with the destination its events must have.
fn chosen(state: &State, q: &Query) -> Vec<(ProxyView, String)> {
    let proxies: Vec<ProxyView> = state
        .telemetry
        .proxies()
        .into_iter()
        .filter(|p| p.live && p.tap_addr.is_some())
        .collect();
    let Some(to) = &q.to else {
        return proxies
            .into_iter()
            .take(MAX_PROXIES_TAPPED)
            .map(|p| (p, String::new()))
            .collect();
    };
    let registry = state.registry.snapshot();
    // The workloads serving the service `to` names, if it names one.
    let mut workloads: Vec<String> = Vec::new();
    if let Ok(name) = weft_core::ServiceName::parse(to, "default")
        && to.contains('.')
        && let Some(service) = registry.service(&name)
    {
        for port in &service.ports {
            for e in &port.endpoints {
                if let Some(w) = &e.workload {
                    workloads.push(format!("{}/{}", w.namespace, w.name));
                }
            }
        }
    } else {
        workloads.push(to.clone());
    }
    proxies
        .into_iter()
        .filter(|p| workloads.contains(&p.workload))
        .take(MAX_PROXIES_TAPPED)
        .map(|p| {
            let w = p.workload.clone();
            (p, w)
        })
        .collect()
}

/// Why a tap could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TapRefused {
    /// No live proxy with a tap listener matches the query.
    #[error("no reporting proxy with a tap listener matches")]
    NoProxy,
    /// [`MAX_TAPS`] taps are running already.
    #[error("{MAX_TAPS} taps are running already")]
    TooMany,
}

/// A running tap: the events of the proxies it follows, merged. It ends when every proxy's
/// tap has ended or the control plane stops; dropping it stops following the proxies.
#[derive(Debug)]
pub(crate) struct Tap {
    rx: mpsc::Receiver<TapEvent>,
    stop: tokio_util::sync::CancellationToken,
    _running: Running,
}

/// One of the [`MAX_TAPS`] taps, with the tasks following its proxies: aborted and counted
/// out when dropped.
#[derive(Debug)]
struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The control plane's count of taps running.
    count: Arc<AtomicUsize>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl Tap ===

impl Tap {
    /// The next event; none once the tap has ended.
    pub(crate) async fn next(&mut self) -> Option<TapEvent> {
        tokio::select! {
            e = self.rx.recv() => e,
            () = self.stop.cancelled() => None,
        }
    }
}

/// Starts tapping the proxies `q` selects, within [`MAX_TAPS`] and [`MAX_PROXIES_TAPPED`].
pub(crate) fn start(state: &Arc<State>, q: &Query) -> Result<Tap, TapRefused> {
    let proxies = chosen(state, q);
    if proxies.is_empty() {
        return Err(TapRefused::NoProxy);
    }
    let count = state.taps_running.clone();
    if count.fetch_add(1, Ordering::AcqRel) >= MAX_TAPS {
        count.fetch_sub(1, Ordering::AcqRel);
        return Err(TapRefused::TooMany);
    }
    let mut running = Running {
        tasks: Vec::new(),
        count,
    };
    let trust_domain = state.config.borrow().mesh.trust_domain.as_str().to_string();
    let (tx, rx) = mpsc::channel::<TapEvent>(256);
    let creds = state.serving.borrow().clone();
    for (proxy, destination) in proxies {
        let request = TapRequest {
            method: q.method.clone().unwrap_or_default(),
            path_prefix: q.path.clone().unwrap_or_default(),
            authority: q.authority.clone().unwrap_or_default(),
            source: q
                .from
                .as_deref()
                .map(|f| source_prefix(f, &trust_domain))
                .unwrap_or_default(),
            destination,
            max_per_second: q.rate,
        };
        let (tx, creds) = (tx.clone(), creds.clone());
        running.tasks.push(tokio::spawn(async move {
            let Some(addr) = proxy.tap_addr else {
                return;
            };
            if let Err(e) = follow(addr, &proxy.identity, &creds, request, &tx).await {
                tracing::info!(proxy = %proxy.workload, error = %e, "tap of a proxy ended");
            }
        }));
    }
    Ok(Tap {
        rx,
        stop: state.shutdown.clone(),
        _running: running,
    })
}

/// The streaming answer to `/api/tap`; `hold` is kept while it streams (it keeps the
/// connection from counting as idle).
pub(crate) fn relay(
    state: &Arc<State>,
    q: Query,
    hold: impl Send + Sync + 'static,
) -> Response<BoxBody<Bytes, Infallible>> {
    let error = |status: StatusCode, text: String| {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "text/plain")
            .body(http_body_util::Full::new(Bytes::from(text)).boxed())
            .unwrap_or_default()
    };
    let tap = match start(state, &q) {
        Ok(tap) => tap,
        Err(e @ TapRefused::NoProxy) => return error(StatusCode::NOT_FOUND, format!("{e}\n")),
        Err(e @ TapRefused::TooMany) => {
            return error(StatusCode::TOO_MANY_REQUESTS, format!("{e}\n"));
        }
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(json_lines(tap, q.max, hold))
        .unwrap_or_default()
}

/// The body: the events' lines until `max` or the end of the tap.
fn json_lines(
    tap: Tap,
    max: Option<u64>,
    hold: impl Send + Sync + 'static,
) -> BoxBody<Bytes, Infallible> {
    let stream =
        futures_util::stream::unfold((tap, 0u64, hold), move |(mut tap, n, hold)| async move {
            if max.is_some_and(|m| n >= m) {
                return None;
            }
            let event = tap.next().await?;
            let mut line = event_json(&event).to_string();
            line.push('\n');
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(line))),
                (tap, n + 1, hold),
            ))
        });
    BoxBody::new(http_body_util::StreamBody::new(stream))
}

/// Follows one proxy's tap, sending on each event.
async fn follow(
    addr: SocketAddr,
    identity: &Identity,
    creds: &weft_ca::TlsCredentials,
    request: TapRequest,
    tx: &mpsc::Sender<TapEvent>,
) -> Result<(), FollowError> {
    let tls =
        tokio_rustls::TlsConnector::from(creds.client_config(identity, weft_ca::ALPN_MESH_H2));
    let connector = tower::service_fn(move |_: http::Uri| {
        let tls = tls.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let io = tls.connect(weft_ca::tls::server_name(), tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(io))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://proxy-tap")
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect_with_connector(connector)
        .await
        .map_err(|e| FollowError(e.to_string()))?;
    let mut events = TapClient::new(channel)
        .watch(request)
        .await
        .map_err(|e| FollowError(e.message().to_string()))?
        .into_inner();
    while let Some(e) = events
        .message()
        .await
        .map_err(|e| FollowError(e.message().to_string()))?
    {
        if tx.send(e).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// A tap event as JSON.
pub fn event_json(e: &TapEvent) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> = e
        .headers
        .iter()
        .map(|h| (h.name.clone(), h.value.clone().into()))
        .collect();
    serde_json::json!({
        "at_unix_ms": e.at_unix_ms,
        "direction": e.direction,
        "method": e.method,
        "path": e.path,
        "authority": e.authority,
        "status": e.status,
        "grpc_status": e.grpc_status,
        "latency_ms": e.latency_ms,
        "source_identity": e.source_identity,
        "destination_identity": e.destination_identity,
        "destination": e.destination,
        "route": e.route,
        "backend": e.backend,
        "headers": headers,
        "mtls": e.mtls,
        "workload": e.workload,
        "dropped": e.dropped,
        "trace_id": e.trace_id,
    })
}

/// Why following a proxy's tap ended, in words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FollowError(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_become_identity_prefixes() {
        assert_eq!(
            source_prefix("shop/web", "weft.test"),
            "spiffe://weft.test/ns/shop/sa/web"
        );
        assert_eq!(
            source_prefix("shop", "weft.test"),
            "spiffe://weft.test/ns/shop/"
        );
        assert_eq!(
            source_prefix("spiffe://weft.test/ns/a/sa/b", "x"),
            "spiffe://weft.test/ns/a/sa/b"
        );
    }
}
