//! One endpoint as a tower service. Meshed endpoints hold one HTTP/2 connection over mutual
//! TLS, opened in `poll_ready`: an endpoint that refuses connections is never ready, so the
//! balancer routes around it and no request is lost to it. Unmeshed endpoints use a
//! [`PlainPool`] of their own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Sleep;
use weft_ca::{ALPN_MESH_H2, ALPN_MESH_HTTP1, ALPN_OPAQUE};

use super::connect::{ConnectError, connect};
use crate::Shared;
use crate::discovery::EndpointView;
use crate::http::{
    Body, BoxError, ORIG_PROTO, PlainPool, PoolLimits, absolute_uri, boxed, forward_upgrade,
    is_upgrade,
};
use crate::io::PeerIo;
use crate::metrics::{Direction, RequestLabels, RequestMetrics};

/// After a failed connection, the endpoint rests this long before the next attempt, doubling
/// up to [`MAX_REST`].
const FIRST_REST: Duration = Duration::from_millis(100);
const MAX_REST: Duration = Duration::from_secs(5);

/// The outcome of the latest connection attempt made outside `poll_ready`, handed to the next
/// `poll_ready`: a failure starts a rest, a success resets the rest's length.
#[derive(Debug, Default)]
struct ConnectHealth(AtomicU8);

impl ConnectHealth {
    const UNSEEN: u8 = 0;
    const FAILED: u8 = 1;
    const OK: u8 = 2;

    fn record(&self, ok: bool) {
        let v = if ok { Self::OK } else { Self::FAILED };
        // A failure is not overwritten by a later success before poll_ready has seen it.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                (cur != Self::FAILED).then_some(v)
            });
    }

    fn take(&self) -> Option<bool> {
        match self.0.swap(Self::UNSEEN, Ordering::Relaxed) {
            Self::FAILED => Some(false),
            Self::OK => Some(true),
            _ => None,
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<SendRequest<Body>, BoxError>> + Send>>;

enum ConnState {
    Idle,
    Connecting(Connecting),
    Ready(SendRequest<Body>),
    Resting(Pin<Box<Sleep>>),
}

/// An HTTP endpoint.
pub struct HttpEndpoint {
    ep: EndpointView,
    shared: Arc<Shared>,
    state: ConnState,
    rest: Duration,
    plain: Option<PlainPool>,
    /// What the last plaintext request learnt of the endpoint; read by `poll_ready`.
    health: Arc<ConnectHealth>,
    metrics: RequestMetrics,
}

impl std::fmt::Debug for HttpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEndpoint")
            .field("address", &self.ep.address)
            .finish()
    }
}

impl HttpEndpoint {
    /// An endpoint of `service`.
    pub fn new(ep: EndpointView, shared: Arc<Shared>, service: String) -> Self {
        let plain = ep.identity.is_none().then(|| {
            PlainPool::new(
                ep.address,
                PoolLimits {
                    connect_timeout: shared.config.connect_timeout,
                    ..PoolLimits::default()
                },
            )
        });
        let labels = RequestLabels {
            direction: Direction::outbound,
            service,
            peer: ep
                .identity
                .as_ref()
                .map(|i| i.spiffe_id())
                .unwrap_or_else(|| "-".into()),
        };
        let metrics = RequestMetrics::new(&shared.metrics, labels);
        Self {
            ep,
            shared,
            state: ConnState::Idle,
            rest: FIRST_REST,
            plain,
            health: Arc::default(),
            metrics,
        }
    }
}

impl tower::Service<Request<Body>> for HttpEndpoint {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.plain.is_some() {
            // Pooled plaintext: always ready unless resting after a failed connection.
            match self.health.take() {
                Some(false) => {
                    tracing::info!(addr = %self.ep.address, rest = ?self.rest, "endpoint unavailable");
                    self.state = ConnState::Resting(Box::pin(tokio::time::sleep(self.rest)));
                    self.rest = (self.rest * 2).min(MAX_REST);
                }
                Some(true) => self.rest = FIRST_REST,
                None => {}
            }
            if let ConnState::Resting(sleep) = &mut self.state {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.state = ConnState::Idle;
            }
            return Poll::Ready(Ok(()));
        }
        loop {
            match &mut self.state {
                ConnState::Idle => {
                    let shared = self.shared.clone();
                    let ep = self.ep.clone();
                    self.state = ConnState::Connecting(Box::pin(async move {
                        let io = connect(&shared, &ep, ALPN_MESH_H2).await?;
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

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        tracing::trace!(addr = %self.ep.address, "request dispatched");
        let metrics = self.metrics.clone();
        let shared = self.shared.clone();
        let started = tokio::time::Instant::now();

        // Upgrades need an HTTP/1.1 connection of their own.
        if is_upgrade(&req) {
            let ep = self.ep.clone();
            return Box::pin(async move {
                metrics.request();
                let io: PeerIo = connect(&shared, &ep, ALPN_MESH_HTTP1).await?;
                record(&metrics, forward_upgrade(req, io, &shared).await, started)
            });
        }

        if let Some(pool) = &self.plain {
            let pool = pool.clone();
            let health = self.health.clone();
            return Box::pin(async move {
                metrics.request();
                let rsp = pool.send(req).await;
                match &rsp {
                    Ok(_) => health.record(true),
                    Err(e) if e.is_connect() => health.record(false),
                    Err(_) => {}
                }
                record(&metrics, rsp.map_err(BoxError::from), started)
            });
        }

        let ConnState::Ready(send) = &mut self.state else {
            return Box::pin(async { Err("endpoint called before it was ready".into()) });
        };
        // Carry HTTP/1 as HTTP/2 between proxies; the peer restores it.
        if req.version() != Version::HTTP_2 {
            let orig = if req.version() == Version::HTTP_10 {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            };
            req.headers_mut()
                .insert(ORIG_PROTO, http::HeaderValue::from_static(orig));
            if let Err(e) = absolute_uri(&mut req, &self.ep.address.to_string()) {
                return Box::pin(async move { Err(e.into()) });
            }
            req.headers_mut().remove(http::header::HOST);
            *req.version_mut() = Version::HTTP_2;
        }
        let fut = send.send_request(req);
        Box::pin(async move {
            metrics.request();
            let rsp = fut
                .await
                .map(|r| r.map(boxed))
                .map_err(|e| -> BoxError { Box::new(e) });
            record(&metrics, rsp, started)
        })
    }
}

fn record(
    metrics: &RequestMetrics,
    rsp: Result<Response<Body>, BoxError>,
    started: tokio::time::Instant,
) -> Result<Response<Body>, BoxError> {
    match rsp {
        Ok(r) => Ok(metrics.observe(r, started)),
        Err(e) => {
            metrics.no_response(started);
            Err(e)
        }
    }
}

/// An endpoint for opaque TCP: calling it opens a connection.
pub struct TcpEndpoint {
    ep: EndpointView,
    shared: Arc<Shared>,
    resting: Option<Pin<Box<Sleep>>>,
    rest: Duration,
    health: Arc<ConnectHealth>,
}

impl std::fmt::Debug for TcpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpEndpoint")
            .field("address", &self.ep.address)
            .finish()
    }
}

impl TcpEndpoint {
    /// A TCP endpoint.
    pub fn new(ep: EndpointView, shared: Arc<Shared>) -> Self {
        Self {
            ep,
            shared,
            resting: None,
            rest: FIRST_REST,
            health: Arc::default(),
        }
    }
}

impl tower::Service<()> for TcpEndpoint {
    type Response = (PeerIo, EndpointView);
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.health.take() {
            Some(false) => {
                self.resting = Some(Box::pin(tokio::time::sleep(self.rest)));
                self.rest = (self.rest * 2).min(MAX_REST);
            }
            Some(true) => self.rest = FIRST_REST,
            None => {}
        }
        if let Some(sleep) = &mut self.resting {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.resting = None;
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        let shared = self.shared.clone();
        let ep = self.ep.clone();
        let health = self.health.clone();
        Box::pin(async move {
            match connect(&shared, &ep, ALPN_OPAQUE).await {
                Ok(io) => {
                    health.record(true);
                    Ok((io, ep))
                }
                Err(e @ ConnectError::NoCertificate) => Err(e.into()),
                Err(e) => {
                    health.record(false);
                    Err(e.into())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectHealth;

    #[test]
    fn a_failure_is_not_hidden_by_a_later_success() {
        let h = ConnectHealth::default();
        assert_eq!(h.take(), None);
        h.record(false);
        h.record(true);
        assert_eq!(h.take(), Some(false));
        assert_eq!(h.take(), None);
        h.record(true);
        assert_eq!(h.take(), Some(true));
    }
}
