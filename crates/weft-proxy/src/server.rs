//! Accepting connections and serving HTTP on them, the same for both sides: a listener's
//! connections run on the drain's tracker, and an HTTP connection hands each request to a
//! tower stack ([`crate::outbound::stack`], [`crate::inbound::stack`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower::util::Oneshot;

use crate::detect::Detected;
use crate::http::{Body, boxed};
use crate::runtime::Drain;

/// Accepts connections until the proxy drains; each accepted connection runs on the tracker.
pub async fn accept_loop<F, Fut>(listener: TcpListener, drain: Drain, mut handle: F)
where
    F: FnMut(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, peer) = tokio::select! {
            _ = drain.draining.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        // Dropping the connection's future at the drain deadline closes its sockets.
        drain.spawn(handle(tcp, peer));
    }
}

/// A tower stack as hyper's service: each request boxes its body and goes through a clone of
/// the stack (readiness, then the call), without a boxed future.
#[derive(Clone, Debug)]
pub struct Hyper<S>(pub S);

impl<S> hyper::service::Service<Request<Incoming>> for Hyper<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Oneshot<S, Request<Body>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.0.clone().oneshot(req.map(boxed))
    }
}

/// Serves HTTP on a connection of known version with the stack `svc` until the connection
/// closes or the proxy drains (then in-flight requests finish and the connection closes
/// gracefully).
pub async fn serve_http<I, S>(io: I, version: Detected, svc: S, drain: &Drain)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let io = TokioIo::new(io);
    let svc = Hyper(svc);
    let result = if version == Detected::Http2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = drain.draining.cancelled() => {
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
            _ = drain.draining.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}
