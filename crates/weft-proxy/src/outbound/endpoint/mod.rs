//! One endpoint as a tower service, the bottom of the outbound stack (outermost first):
//! - [`Metered`]: the endpoint's request metrics (peer label: its identity);
//! - [`Endpoint`], which sends upgrades (WebSocket, CONNECT) over an HTTP/1.1 connection of
//!   their own ([`crate::http::upgrade`]) and everything else to its client:
//!   - meshed: [`orig_proto::Upgrade`] (HTTP/1 carried as HTTP/2), then [`H2Client`], one
//!     HTTP/2 connection over mutual TLS;
//!   - outside the mesh: [`PlainClient`], a plaintext pool of its own.
//!
//! [`TcpEndpoint`] is the endpoint for opaque TCP: calling it opens a connection.

pub mod h2;
pub mod plain;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::{Request, Response};
use tokio::time::Sleep;
use weft_ca::{ALPN_MESH_HTTP1, ALPN_OPAQUE};

use super::breaker::{Breaker, Health};
use super::connect::{ConnectError, Connector};
use crate::discovery::EndpointView;
use crate::errors::{HttpError, Kind, RetrySafe, Who};
use crate::http::metered::Metered;
use crate::http::upgrade::forward_upgrade;
use crate::http::{Body, BoxError, is_upgrade, orig_proto};
use crate::io::PeerIo;
use crate::metrics::{Direction, Metrics, RequestLabels, RequestMetrics};
use crate::runtime::Drain;
pub use h2::H2Client;
pub use plain::PlainClient;

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

/// The rest of an endpoint whose connections are opened per request (plaintext pools, opaque
/// TCP): each failed connection reported to [`ConnectHealth`] starts a rest, from
/// [`FIRST_REST`] doubling to [`MAX_REST`]; a success resets its length.
#[derive(Debug)]
struct Rest {
    health: Arc<ConnectHealth>,
    resting: Option<Pin<Box<Sleep>>>,
    next: Duration,
}

impl Default for Rest {
    fn default() -> Self {
        Self {
            health: Arc::default(),
            resting: None,
            next: FIRST_REST,
        }
    }
}

impl Rest {
    /// Ready unless resting.
    fn poll_ready(&mut self, cx: &mut Context<'_>, addr: std::net::SocketAddr) -> Poll<()> {
        match self.health.take() {
            Some(false) => {
                tracing::info!(%addr, rest = ?self.next, "endpoint unavailable");
                self.resting = Some(Box::pin(tokio::time::sleep(self.next)));
                self.next = (self.next * 2).min(MAX_REST);
            }
            Some(true) => self.next = FIRST_REST,
            None => {}
        }
        if let Some(sleep) = &mut self.resting {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.resting = None;
        }
        Poll::Ready(())
    }
}

/// What endpoints are built from: the parts of the runtime they use.
#[derive(Clone, Debug)]
pub struct Params {
    /// Opens connections.
    pub connector: Connector,
    /// Spliced upgrades are connections of the proxy's.
    pub drain: Drain,
    /// The registry.
    pub metrics: Metrics,
    /// The destination's endpoints and ejections, which each endpoint's breaker counts in.
    pub health: Arc<Health>,
}

/// An HTTP endpoint: the whole per-endpoint stack.
pub type HttpEndpoint = Breaker<Metered<Endpoint>>;

/// Builds the stack of the endpoint `ep` of `service` (its metric label); `in_mesh` says
/// whether failure accrual guards it (not an address outside the mesh).
pub fn http_endpoint(
    ep: EndpointView,
    params: &Params,
    service: String,
    in_mesh: bool,
) -> HttpEndpoint {
    let labels = RequestLabels {
        direction: Direction::outbound,
        service,
        peer: ep
            .identity
            .as_ref()
            .map(|i| i.spiffe_id())
            .unwrap_or_else(|| "-".into()),
    };
    let metrics = RequestMetrics::new(&params.metrics, labels);
    let client = match ep.identity {
        Some(_) => Client::Meshed(orig_proto::Upgrade::new(
            H2Client::new(ep.clone(), params.connector.clone()),
            Arc::from(ep.address.to_string()),
        )),
        None => Client::Plain(PlainClient::new(&ep, params.connector.timeout())),
    };
    let metered = Metered::new(
        Endpoint {
            ep,
            connector: params.connector.clone(),
            drain: params.drain.clone(),
            client,
        },
        metrics,
    );
    Breaker::new(metered, params.health.clone(), in_mesh)
}

#[allow(
    clippy::large_enum_variant,
    reason = "one per endpoint, for its whole life; the meshed variant is the common one"
)]
enum Client {
    Meshed(orig_proto::Upgrade<H2Client>),
    Plain(PlainClient),
}

/// See the module docs.
pub struct Endpoint {
    ep: EndpointView,
    connector: Connector,
    drain: Drain,
    client: Client,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("address", &self.ep.address)
            .finish()
    }
}

type Boxed = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl tower::Service<Request<Body>> for Endpoint {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<
        Boxed,
        Either<<orig_proto::Upgrade<H2Client> as tower::Service<Request<Body>>>::Future, Boxed>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.client {
            Client::Meshed(c) => c.poll_ready(cx),
            Client::Plain(c) => c.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        tracing::trace!(addr = %self.ep.address, "request dispatched");
        // Upgrades need an HTTP/1.1 connection of their own.
        if is_upgrade(&req) {
            let (connector, ep, drain) =
                (self.connector.clone(), self.ep.clone(), self.drain.clone());
            return Either::Left(Box::pin(async move {
                let io = connector.connect(&ep, ALPN_MESH_HTTP1).await.map_err(|e| {
                    HttpError::new(
                        Kind::BadGateway,
                        connect_fault(&e),
                        RetrySafe::NotSent,
                        e.to_string(),
                    )
                })?;
                forward_upgrade(req, io, &drain).await.map_err(|e| {
                    HttpError::new(
                        Kind::BadGateway,
                        Who::Peer,
                        RetrySafe::IfIdempotent,
                        format!("{}: {e}", ep.address),
                    )
                    .into()
                })
            }));
        }
        Either::Right(match &mut self.client {
            Client::Meshed(c) => Either::Left(c.call(req)),
            Client::Plain(c) => Either::Right(c.call(req)),
        })
    }
}

/// Who a failed connection is on: this proxy when it has no certificate yet, else the peer.
fn connect_fault(e: &ConnectError) -> Who {
    match e {
        ConnectError::NoCertificate => Who::Proxy,
        _ => Who::Peer,
    }
}

/// An endpoint for opaque TCP: calling it opens a connection.
pub struct TcpEndpoint {
    ep: EndpointView,
    connector: Connector,
    rest: Rest,
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
    pub fn new(ep: EndpointView, connector: Connector) -> Self {
        Self {
            ep,
            connector,
            rest: Rest::default(),
        }
    }
}

impl tower::Service<()> for TcpEndpoint {
    type Response = (PeerIo, EndpointView);
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.rest.poll_ready(cx, self.ep.address).map(Ok)
    }

    fn call(&mut self, _: ()) -> Self::Future {
        let connector = self.connector.clone();
        let ep = self.ep.clone();
        let health = self.rest.health.clone();
        Box::pin(async move {
            match connector.connect(&ep, ALPN_OPAQUE).await {
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
