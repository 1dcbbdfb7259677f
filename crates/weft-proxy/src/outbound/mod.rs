//! The outbound side: the application's calls, on explicit upstream listeners
//! (`--upstream api=127.0.0.1:9001`) and, in transparent mode, on the listener the nat table
//! redirects the application's connections to. There the target is the connection's original
//! destination, resolved by address: a mesh service is balanced over its endpoints exactly as an
//! explicit upstream is; an address outside the mesh is reached unchanged, in plaintext, with
//! the same metrics. A connection that reaches that listener without a redirect is refused
//! rather than looped back into the proxy.
//!
//! A connection takes a lease on its target's [`Destination`], which resolves the target on
//! first use and is shared by every connection to it.

pub mod balance;
pub mod connect;
pub mod destination;
pub mod endpoint;
pub mod failfast;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use weft_core::{Protocol, Target};

use crate::detect::{Detected, detect};
use crate::discovery::Resolution;
use crate::http::{Body, boxed, error_response, is_upgrade, strip_hop_by_hop};
use crate::io::{CountingIo, PrefixedIo};
use crate::metrics::{Direction, RejectLabels, RequestLabels, RequestMetrics, TcpLabels};
use crate::{Shared, Upstream, accept_loop};
use destination::Destination;

/// A connection attempt that fails this many times in a row (each on a fresh pick) fails the
/// TCP connection.
const TCP_CONNECT_ATTEMPTS: usize = 3;

/// Serves one upstream listener until the proxy drains.
pub async fn serve(listener: TcpListener, upstream: Upstream, shared: Arc<Shared>) {
    let target = match Target::parse(&upstream.service, &shared.config.namespace) {
        Ok(t @ Target::Service { .. }) => t,
        Ok(Target::Address(_)) | Err(_) => {
            tracing::error!(upstream = %upstream.service, "upstream not served: not a service name");
            return;
        }
    };
    let target = Arc::new(target);
    accept_loop(listener, shared.clone(), move |tcp, peer| {
        handle(tcp, peer, target.clone(), shared.clone())
    })
    .await;
}

/// Serves the transparent outbound listener until the proxy drains.
pub async fn serve_transparent(listener: TcpListener, shared: Arc<Shared>) {
    accept_loop(listener, shared.clone(), move |tcp, peer| {
        handle_redirected(tcp, peer, shared.clone())
    })
    .await;
}

/// Logs and counts an outbound connection refused before any destination was chosen.
fn refuse_connection(
    shared: &Shared,
    client: SocketAddr,
    reason: &str,
    detail: &dyn std::fmt::Display,
) {
    tracing::warn!(%client, reason, %detail, "outbound connection refused");
    shared
        .metrics
        .outbound_refused
        .get_or_create(&RejectLabels {
            reason: reason.to_string(),
        })
        .inc();
}

/// Carries one connection the nat table redirected here to its original destination.
async fn handle_redirected(tcp: TcpStream, client: SocketAddr, shared: Arc<Shared>) {
    match crate::transparent::original_dst(&tcp) {
        Ok(original) => handle(tcp, client, Arc::new(Target::Address(original)), shared).await,
        Err(e) => refuse_connection(&shared, client, "no_original_destination", &e),
    }
}

/// Carries one connection from the application to `target`.
pub async fn handle(
    mut tcp: TcpStream,
    client: SocketAddr,
    target: Arc<Target>,
    shared: Arc<Shared>,
) {
    let dest = match shared.destinations.get(&shared, &target) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            refuse_connection(&shared, client, "too_many_destinations", &e);
            return;
        }
    };
    let labels = TcpLabels {
        direction: Direction::outbound,
        peer: "-".into(),
    };
    let _open = shared.metrics.open_connection(labels.clone());
    // The declared protocol decides whether to detect: a server-speaks-first port must not
    // wait for the client's first bytes. Without an answer in time, detection is safe.
    // Every connection but the first finds the answer there: no timer, and the wait's state
    // is boxed so it does not enlarge every connection's task.
    let answer = match dest.answered() {
        Some(r) => r,
        None => Box::pin(dest.first_answer(shared.config.dispatch_timeout)).await,
    };
    let declared = match answer {
        Resolution::Resolved(r) => r.protocol,
        _ => Protocol::Auto,
    };
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
        Detected::Opaque => Box::pin(forward_tcp(io, &dest)).await,
        Detected::Http1 | Detected::Http2 => {
            let svc = {
                let dest = dest.clone();
                let shared = shared.clone();
                hyper::service::service_fn(move |req| {
                    let dest = dest.clone();
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(route(req, &dest, &shared).await) }
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

/// Sends one request to the best endpoint of `dest`.
async fn route(req: Request<Incoming>, dest: &Destination, shared: &Shared) -> Response<Body> {
    let mut req = req.map(boxed);
    if !is_upgrade(&req) {
        strip_hop_by_hop(req.headers_mut());
    }
    // The metric label is built only for the responses the proxy makes itself: a routed
    // request is counted by the endpoint that answers it.
    match unroutable(dest) {
        Some(Unroutable::Denied(reason)) => {
            return refused(shared, dest, StatusCode::FORBIDDEN, &reason);
        }
        Some(Unroutable::Unavailable(reason)) => {
            return refused(shared, dest, StatusCode::SERVICE_UNAVAILABLE, &reason);
        }
        None => {}
    }
    match dest.http.dispatch(req).await {
        Ok(mut rsp) => {
            if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
                strip_hop_by_hop(rsp.headers_mut());
            }
            rsp
        }
        Err(e) if failfast::is_unavailable(&*e) => {
            // The answer may have come while the request waited.
            if let Some(Unroutable::Denied(reason)) = unroutable(dest) {
                return refused(shared, dest, StatusCode::FORBIDDEN, &reason);
            }
            let reason = format!("{}: {e}", dest.target);
            refused(shared, dest, StatusCode::SERVICE_UNAVAILABLE, &reason)
        }
        Err(e) => {
            tracing::info!(target = %dest.target, error = %e, "request failed");
            error_response(StatusCode::BAD_GATEWAY, &format!("{}: {e}", dest.target))
        }
    }
}

/// A response made by the proxy (403, 503), counted like any response (with no peer: none
/// was chosen).
fn refused(
    shared: &Shared,
    dest: &Destination,
    status: StatusCode,
    reason: &str,
) -> Response<Body> {
    let metrics = RequestMetrics::new(
        &shared.metrics,
        RequestLabels {
            direction: Direction::outbound,
            service: dest.metric_label(),
            peer: "-".into(),
        },
    );
    metrics.request();
    metrics.observe(error_response(status, reason), tokio::time::Instant::now())
}

/// Why a destination cannot take a request now.
enum Unroutable {
    /// The mesh policy does not let this workload call it: 403.
    Denied(String),
    /// It is not in the mesh, or has no endpoint: 503.
    Unavailable(String),
}

/// Why `dest` cannot be routed to right now, if its resolution says so.
fn unroutable(dest: &Destination) -> Option<Unroutable> {
    let target = &dest.target;
    match &*dest.resolution.borrow() {
        // No answer yet: wait for one within the dispatch timeout.
        Resolution::Pending => None,
        Resolution::Denied(reason) => Some(Unroutable::Denied(format!(
            "{target}: denied by the mesh policy: {reason}"
        ))),
        // An address outside the mesh is reached as it is.
        Resolution::NotInMesh if matches!(target, Target::Address(_)) => None,
        Resolution::NotInMesh => Some(Unroutable::Unavailable(format!(
            "{target} is not a service of the mesh"
        ))),
        Resolution::Resolved(r) if !r.has_usable() => Some(Unroutable::Unavailable(format!(
            "{target} has no ready endpoint"
        ))),
        Resolution::Resolved(_) => None,
    }
}

/// Forwards an opaque TCP connection, over mutual TLS when the endpoint is meshed.
async fn forward_tcp<I>(mut io: I, dest: &Destination)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let target = &dest.target;
    match unroutable(dest) {
        Some(Unroutable::Denied(reason) | Unroutable::Unavailable(reason)) => {
            tracing::info!(%reason, "TCP connection refused");
            return;
        }
        None => {}
    }
    for attempt in 1..=TCP_CONNECT_ATTEMPTS {
        match dest.tcp.dispatch(()).await {
            Ok((mut peer, ep)) => {
                let peer_id = ep
                    .identity
                    .map(|i| i.spiffe_id())
                    .unwrap_or_else(|| "-".into());
                tracing::debug!(%target, addr = %ep.address, peer = %peer_id, "TCP forwarded");
                if let Err(e) = crate::splice::splice(&mut io, &mut peer).await {
                    tracing::debug!(error = %e, "TCP connection closed with an error");
                }
                return;
            }
            Err(e) => {
                tracing::info!(%target, attempt, error = %e, "TCP connect failed");
            }
        }
    }
}
