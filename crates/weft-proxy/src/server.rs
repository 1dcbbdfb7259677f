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

/// Streams one HTTP/2 connection may have open at once (hyper's default, stated here because
/// the next limit follows it).
const MAX_CONCURRENT_STREAMS: u32 = 200;

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
    // An HTTP/2 peer may reset streams the server has not taken up yet; past a limit, h2 takes
    // that for the rapid-reset attack and ends the connection (GOAWAY), failing every other
    // stream on it. A proxy multiplexes many clients on one connection, and one client that
    // goes away cancels all of its requests at once, so the limit is the streams a connection
    // may have open (h2's default, 20, failed the other clients' requests when one client
    // dropped more than 20 in flight). Resets of streams the server has taken up are still
    // bounded by h2's own limit.
    let result = if version == Detected::Http2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_pending_accept_reset_streams(MAX_CONCURRENT_STREAMS as usize)
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use tokio::net::TcpStream;

    use super::*;

    async fn answer(_req: Request<Body>) -> Result<Response<Body>, Infallible> {
        let body = Empty::<Bytes>::new().map_err(|e| match e {});
        Ok(Response::new(body.boxed_unsync()))
    }

    #[tokio::test]
    async fn a_peer_cancelling_many_streams_at_once_keeps_its_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let drain = Drain::default();
            serve_http(tcp, Detected::Http2, tower::service_fn(answer), &drain).await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        // 100 requests opened and cancelled before the connection task runs again, so that
        // their HEADERS and RST_STREAM frames reach the server together, before it takes any
        // of them up.
        let mut client = client.ready().await.unwrap();
        for _ in 0..100 {
            let req = Request::get("http://api/").body(()).unwrap();
            let (response, _) = client.send_request(req, true).unwrap();
            drop(response);
        }
        // The connection still serves.
        let mut client = client.ready().await.unwrap();
        let req = Request::get("http://api/").body(()).unwrap();
        let (response, _) = client.send_request(req, true).unwrap();
        let response = response
            .await
            .expect("the connection outlived the cancellations");
        assert_eq!(response.status(), 200);
        drop(client);
        conn.abort();
    }
}
