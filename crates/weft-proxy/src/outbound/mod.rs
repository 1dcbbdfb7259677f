//! The outbound side: the application's calls to mesh services, on explicit upstream
//! listeners (`--upstream api=127.0.0.1:9001`). Transparent interception will hand connections
//! to the same [`handle`] with the original destination's service.

pub mod balance;
pub mod connect;
pub mod endpoint;
pub mod failfast;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use weft_core::{Protocol, ServiceName};

use crate::detect::{Detected, detect};
use crate::http::{Body, boxed, error_response, is_upgrade, strip_hop_by_hop};
use crate::io::{CountingIo, PrefixedIo};
use crate::metrics::{Direction, RequestLabels, RequestMetrics, TcpLabels};
use crate::{Shared, Upstream, accept_loop};
use balance::{HttpBalancer, TcpBalancer, http_balancer, tcp_balancer};

/// A connection attempt that fails this many times in a row (each on a fresh pick) fails the
/// TCP connection.
const TCP_CONNECT_ATTEMPTS: usize = 3;

/// Where an outbound connection goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The service.
    pub service: ServiceName,
    http: HttpBalancer,
    tcp: TcpBalancer,
}

impl Target {
    /// The balancers of `service`.
    pub fn new(shared: &Arc<Shared>, service: ServiceName) -> Self {
        Self {
            http: http_balancer(shared, &service),
            tcp: tcp_balancer(shared, &service),
            service,
        }
    }
}

/// Serves one upstream listener until the proxy drains.
pub async fn serve(listener: TcpListener, upstream: Upstream, shared: Arc<Shared>) {
    let service = match ServiceName::parse(&upstream.service, &shared.config.namespace) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "upstream not served");
            return;
        }
    };
    let target = Arc::new(Target::new(&shared, service));
    accept_loop(listener, shared.clone(), move |tcp, peer| {
        handle(tcp, peer, target.clone(), shared.clone())
    })
    .await;
}

/// Carries one connection from the application to `target`.
pub async fn handle(
    mut tcp: TcpStream,
    _client: SocketAddr,
    target: Arc<Target>,
    shared: Arc<Shared>,
) {
    let labels = TcpLabels {
        direction: Direction::outbound,
        peer: "-".into(),
    };
    let _open = shared.metrics.open_connection(labels.clone());
    let declared = shared
        .discovery
        .borrow()
        .as_ref()
        .and_then(|d| d.services.get(&target.service).map(|s| s.protocol))
        .unwrap_or_default();
    let (detected, prefix) = match declared {
        Protocol::Opaque => (Detected::Opaque, bytes::Bytes::new()),
        Protocol::Http2 | Protocol::Grpc => (Detected::Http2, bytes::Bytes::new()),
        Protocol::Http1 => (Detected::Http1, bytes::Bytes::new()),
        Protocol::Auto => match Box::pin(detect(&mut tcp, shared.config.detect_timeout)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "client went away during detection");
                return;
            }
        },
    };
    let io = CountingIo::new(
        PrefixedIo::new(prefix, tcp),
        shared.metrics.tcp_read.get_or_create(&labels).clone(),
        shared.metrics.tcp_write.get_or_create(&labels).clone(),
    );
    match detected {
        // Boxed, so the connection's task holds only the state of the path it takes.
        Detected::Opaque => Box::pin(forward_tcp(io, &target, &shared)).await,
        Detected::Http1 | Detected::Http2 => {
            let svc = {
                let target = target.clone();
                let shared = shared.clone();
                hyper::service::service_fn(move |req| {
                    let target = target.clone();
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(route(req, &target, &shared).await) }
                })
            };
            Box::pin(serve_http(io, detected, svc, &shared)).await;
        }
    }
}

/// Serves HTTP on a connection of known version until it closes or the proxy drains (then
/// in-flight requests finish and the connection closes gracefully).
pub(crate) async fn serve_http<I, S>(io: I, version: Detected, svc: S, shared: &Shared)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let io = TokioIo::new(io);
    let result = if version == Detected::Http2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = shared.draining.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(io, svc)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = shared.draining.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Sends one request to the best endpoint of `target`.
async fn route(req: Request<Incoming>, target: &Target, shared: &Shared) -> Response<Body> {
    let mut req = req.map(boxed);
    if !is_upgrade(&req) {
        strip_hop_by_hop(req.headers_mut());
    }
    let service = target.service.to_string();
    if let Some(reason) = unroutable(target, shared) {
        return unavailable(shared, service, &reason);
    }
    match target.http.dispatch(req).await {
        Ok(mut rsp) => {
            if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
                strip_hop_by_hop(rsp.headers_mut());
            }
            rsp
        }
        Err(e) if failfast::is_unavailable(&*e) => {
            let reason = format!("{service}: {e}");
            unavailable(shared, service, &reason)
        }
        Err(e) => {
            tracing::info!(%service, error = %e, "request failed");
            error_response(StatusCode::BAD_GATEWAY, &format!("{service}: {e}"))
        }
    }
}

/// A 503 made by the proxy, counted like any response (with no peer: none was chosen).
fn unavailable(shared: &Shared, service: String, reason: &str) -> Response<Body> {
    let metrics = RequestMetrics::new(
        &shared.metrics,
        RequestLabels {
            direction: Direction::outbound,
            service,
            peer: "-".into(),
        },
    );
    metrics.request();
    metrics.observe(
        error_response(StatusCode::SERVICE_UNAVAILABLE, reason),
        tokio::time::Instant::now(),
    )
}

/// Why `target` cannot be routed to right now, if the current snapshot says so.
fn unroutable(target: &Target, shared: &Shared) -> Option<String> {
    let disc = shared.discovery.borrow();
    let Some(state) = disc.as_ref() else {
        return None; // No snapshot yet: wait for one within the dispatch timeout.
    };
    match state.services.get(&target.service) {
        None => Some(format!(
            "service {} is unknown or not reachable from this workload",
            target.service
        )),
        Some(s) if s.endpoints.is_empty() => {
            Some(format!("service {} has no endpoints", target.service))
        }
        Some(_) => None,
    }
}

/// Forwards an opaque TCP connection, over mutual TLS when the endpoint is meshed.
async fn forward_tcp<I>(mut io: I, target: &Target, shared: &Shared)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Some(reason) = unroutable(target, shared) {
        tracing::info!(%reason, "TCP connection refused");
        return;
    }
    for attempt in 1..=TCP_CONNECT_ATTEMPTS {
        match target.tcp.dispatch(()).await {
            Ok((mut peer, ep)) => {
                let peer_id = ep
                    .identity
                    .map(|i| i.spiffe_id())
                    .unwrap_or_else(|| "-".into());
                tracing::debug!(service = %target.service, addr = %ep.address, peer = %peer_id, "TCP forwarded");
                if let Err(e) = crate::splice::splice(&mut io, &mut peer).await {
                    tracing::debug!(error = %e, "TCP connection closed with an error");
                }
                return;
            }
            Err(e) => {
                tracing::info!(service = %target.service, attempt, error = %e, "TCP connect failed");
            }
        }
    }
}
