//! The client of a meshed endpoint: one HTTP/2 connection over mutual TLS, opened in
//! `poll_ready`. An endpoint that refuses connections is never ready, so the balancer routes
//! around it and no request is lost to it; after a failed attempt it rests, from
//! 100 ms doubling to 5 s.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Sleep;
use weft_ca::ALPN_MESH_H2;

use super::{FIRST_REST, MAX_REST};
use crate::discovery::EndpointView;
use crate::errors::{HttpError, Kind, RetrySafe, Who};
use crate::http::{Body, BoxError, boxed};
use crate::outbound::connect::Connector;

type Connecting = Pin<Box<dyn Future<Output = Result<SendRequest<Body>, BoxError>> + Send>>;

enum ConnState {
    Idle,
    Connecting(Connecting),
    Ready(SendRequest<Body>),
    Resting(Pin<Box<Sleep>>),
}

/// See the module docs.
pub struct H2Client {
    ep: EndpointView,
    connector: Connector,
    state: ConnState,
    rest: Duration,
}

impl std::fmt::Debug for H2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Client")
            .field("address", &self.ep.address)
            .finish()
    }
}

impl H2Client {
    /// The client of `ep`; it connects when first polled.
    pub fn new(ep: EndpointView, connector: Connector) -> Self {
        Self {
            ep,
            connector,
            state: ConnState::Idle,
            rest: FIRST_REST,
        }
    }
}

/// The future of one request on the connection.
pub type H2Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl tower::Service<Request<Body>> for H2Client {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = H2Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            match &mut self.state {
                ConnState::Idle => {
                    let connector = self.connector.clone();
                    let ep = self.ep.clone();
                    self.state = ConnState::Connecting(Box::pin(async move {
                        let io = connector.connect(&ep, ALPN_MESH_H2).await?;
                        let (send, conn) =
                            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                                .timer(TokioTimer::new())
                                .keep_alive_interval(Duration::from_secs(10))
                                .keep_alive_timeout(Duration::from_secs(5))
                                .handshake(TokioIo::new(io))
                                .await?;
                        let addr = ep.address;
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(%addr, error = %e, "connection to endpoint closed");
                            }
                        });
                        Ok(send)
                    }));
                }
                ConnState::Connecting(fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(send)) => {
                        self.rest = FIRST_REST;
                        self.state = ConnState::Ready(send);
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::info!(addr = %self.ep.address, error = %e, rest = ?self.rest, "endpoint unavailable");
                        self.state = ConnState::Resting(Box::pin(tokio::time::sleep(self.rest)));
                        self.rest = (self.rest * 2).min(MAX_REST);
                    }
                },
                ConnState::Ready(send) => match send.poll_ready(cx) {
                    Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => self.state = ConnState::Idle,
                },
                ConnState::Resting(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.state = ConnState::Idle;
                }
            }
        }
    }

    fn call(&mut self, req: Request<Body>) -> H2Future {
        let ConnState::Ready(send) = &mut self.state else {
            let e = HttpError::new(
                Kind::BadGateway,
                Who::Proxy,
                RetrySafe::NotSent,
                "endpoint called before it was ready",
            );
            return Box::pin(std::future::ready(Err(e.into())));
        };
        let sent = send.try_send_request(req);
        let addr = self.ep.address;
        Box::pin(async move {
            match sent.await {
                Ok(rsp) => Ok(rsp.map(boxed)),
                Err(mut e) => {
                    // Handed back: the connection closed before it took the request.
                    let unsent = e.take_message().is_some();
                    let e = e.into_error();
                    let retry = if unsent || refused(&e) {
                        RetrySafe::NotSent
                    } else {
                        RetrySafe::IfIdempotent
                    };
                    Err(
                        HttpError::new(Kind::BadGateway, Who::Peer, retry, format!("{addr}: {e}"))
                            .into(),
                    )
                }
            }
        })
    }
}

/// Whether the peer refused the stream unprocessed (RST_STREAM with REFUSED_STREAM).
fn refused(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .is_some_and(|h2| h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM))
}
