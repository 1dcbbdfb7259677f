//! Balancing across a destination's endpoints: power-of-two-choices over peak-EWMA latency
//! ([`super::p2c`], which steers retries to another endpoint), fed by the destination's
//! resolution. One balancer per destination and protocol,
//! shared by every connection to it.
//!
//! Sharing goes through an async mutex rather than tower's buffer: a request takes the lock,
//! waits for the balancer to be ready (bounded by the fail-fast dispatch timeout), dispatches,
//! and releases the lock before awaiting its response. Waiting requests queue fairly on the
//! mutex, so no readiness wake-up is lost, and a request costs no channel send and no hop
//! through a worker task.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::breaker::Health;
use super::connect::Connector;
use super::endpoint::{HttpEndpoint, Params, TcpEndpoint, http_endpoint};
use super::failfast::FailFast;
use super::p2c::{Attempted, Balance};
use crate::discovery::{EndpointView, Resolution};
use crate::http::{Body, BoxError};
use futures_util::Stream;
use http::Request;
use tokio_stream::wrappers::WatchStream;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::{Service, ServiceExt};
use weft_core::Target;

/// The latency a new endpoint is assumed to have before it is measured.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast old latency observations fade.
const DECAY: Duration = Duration::from_secs(10);
/// A shared handle to one service's balancer.
pub struct SharedBalancer<S> {
    inner: Arc<tokio::sync::Mutex<S>>,
}

impl<S> Clone for SharedBalancer<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S> std::fmt::Debug for SharedBalancer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedBalancer")
    }
}

impl<S> SharedBalancer<S> {
    fn new(svc: S) -> Self {
        Self {
            inner: Arc::new(tokio::sync::Mutex::new(svc)),
        }
    }

    /// Sends `req` to the best ready endpoint; for an attempt of a call that may be retried
    /// (`attempts`), another than its previous attempt's where one is ready.
    ///
    /// A plain function returning an `async` block rather than an `async fn`: the block uses
    /// `req` where it was captured, where an `async fn` would keep a second copy of it.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn's future holds its arguments twice"
    )]
    pub fn dispatch<Req>(
        self,
        req: Req,
        attempts: Option<Attempted>,
    ) -> impl std::future::Future<Output = Result<S::Response, BoxError>>
    where
        S: Service<Req, Error = BoxError> + Avoid,
    {
        async move {
            let response = {
                let mut svc = self.inner.lock().await;
                svc.avoid(attempts.as_ref());
                svc.ready().await?;
                svc.call(req)
            };
            response.await
        }
    }
}

/// The balancer as the innermost service of a stack: always ready (waiting for an endpoint
/// happens under the lock, bounded by fail-fast), each call one dispatch.
impl<S, Req> tower::Service<Req> for SharedBalancer<S>
where
    S: Service<Req, Error = BoxError> + Avoid + Send + 'static,
    S::Future: Send,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        Box::pin(self.clone().dispatch(req, None))
    }
}

/// A balancer that can leave an endpoint out of its next pick.
pub trait Avoid {
    /// Readies the next pick for an attempt of `attempts` (see [`Balance::avoid`]).
    fn avoid(&mut self, attempts: Option<&Attempted>);
}

impl<D, Req> Avoid for FailFast<Balance<D, Req>>
where
    D: tower::discover::Discover + Unpin,
    D::Key: std::hash::Hash + Clone + super::p2c::Located,
    D::Error: Into<BoxError>,
    D::Service: Service<Req> + tower::load::Load,
    <D::Service as tower::load::Load>::Metric: PartialOrd,
    <D::Service as Service<Req>>::Error: Into<BoxError>,
{
    fn avoid(&mut self, attempts: Option<&Attempted>) {
        self.get_mut().avoid(attempts);
    }
}

/// The balancer's layers over the endpoints `M` makes: fail-fast, then P2C over peak-EWMA.
pub type Balancer<M, Req> = FailFast<Balance<PeakEwmaDiscover<EndpointDiscover<M>>, Req>>;

/// One service's HTTP balancer.
pub type HttpBalancer = SharedBalancer<Balancer<MakeHttp, Request<Body>>>;
/// One service's TCP balancer: calling it opens a connection.
pub type TcpBalancer = SharedBalancer<Balancer<MakeTcp, ()>>;

/// Builds the service of a new endpoint.
pub trait MakeEndpoint {
    /// The endpoint's service.
    type Endpoint;
    /// The service of `ep`, found in `resolution`.
    fn make(&self, ep: EndpointView, resolution: &Resolution) -> Self::Endpoint;
}

/// Makes HTTP endpoints, labelled by their destination.
#[derive(Debug)]
pub struct MakeHttp {
    params: Params,
    target: Target,
}

impl MakeEndpoint for MakeHttp {
    type Endpoint = HttpEndpoint;
    fn make(&self, ep: EndpointView, resolution: &Resolution) -> HttpEndpoint {
        let in_mesh = matches!(resolution, Resolution::Resolved(_));
        http_endpoint(
            ep,
            &self.params,
            metric_label(&self.target, resolution),
            in_mesh,
        )
    }
}

/// Makes TCP endpoints.
#[derive(Debug)]
pub struct MakeTcp {
    connector: Connector,
}

impl MakeEndpoint for MakeTcp {
    type Endpoint = TcpEndpoint;
    fn make(&self, ep: EndpointView, _: &Resolution) -> TcpEndpoint {
        TcpEndpoint::new(ep, self.connector.clone())
    }
}

/// Turns resolution updates into endpoint insertions and removals. Only usable endpoints are
/// inserted: an endpoint that starts terminating is removed, so it gets no new requests, while
/// the connections already open to it finish what they carry.
pub struct EndpointDiscover<M: MakeEndpoint> {
    updates: WatchStream<Resolution>,
    /// The original destination of a transparent connection, used as the one endpoint while
    /// it is not in the mesh.
    passthrough: Option<SocketAddr>,
    current: HashSet<EndpointView>,
    pending: VecDeque<Change<EndpointView, M::Endpoint>>,
    make: M,
    /// Where the count of endpoints goes (HTTP: failure accrual reads it).
    health: Option<Arc<Health>>,
}

impl<M: MakeEndpoint> std::fmt::Debug for EndpointDiscover<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointDiscover")
            .field("endpoints", &self.current.len())
            .finish()
    }
}

impl<M> Stream for EndpointDiscover<M>
where
    M: MakeEndpoint + Unpin,
    M::Endpoint: Unpin,
{
    type Item = Result<Change<EndpointView, M::Endpoint>, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            let resolution = match Pin::new(&mut this.updates).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                // The destination is being dropped; keep the last endpoints.
                Poll::Ready(None) => return Poll::Pending,
                Poll::Ready(Some(r)) => r,
            };
            // While the control plane is away, the resolution keeps its last answer; a
            // destination that stopped resolving (gone from the mesh, denied) has no endpoint.
            let next: HashSet<EndpointView> = endpoints_of(&resolution, this.passthrough)
                .into_iter()
                .collect();
            for gone in this.current.difference(&next) {
                tracing::debug!(addr = %gone.address, "endpoint removed");
                this.pending.push_back(Change::Remove(gone.clone()));
            }
            for new in next.difference(&this.current) {
                tracing::debug!(addr = %new.address, "endpoint added");
                this.pending.push_back(Change::Insert(
                    new.clone(),
                    this.make.make(new.clone(), &resolution),
                ));
            }
            this.current = next;
            if let Some(h) = &this.health {
                h.set_endpoints(this.current.len());
            }
        }
    }
}

/// The endpoints new connections to a destination may use: the usable ones of its service,
/// or its original destination (plaintext) while that is not in the mesh.
pub fn endpoints_of(resolution: &Resolution, passthrough: Option<SocketAddr>) -> Vec<EndpointView> {
    match (resolution, passthrough) {
        (Resolution::NotInMesh, Some(address)) => vec![EndpointView {
            address,
            identity: None,
        }],
        _ => resolution.usable(),
    }
}

/// Builds the HTTP balancer of `target`'s destination, waiting at most `dispatch_timeout`
/// for a ready endpoint.
pub fn http_balancer(
    params: &Params,
    dispatch_timeout: Duration,
    target: &Target,
    resolution: tokio::sync::watch::Receiver<Resolution>,
) -> HttpBalancer {
    let make = MakeHttp {
        params: params.clone(),
        target: target.clone(),
    };
    let health = Some(params.health.clone());
    balancer(dispatch_timeout, target, resolution, make, health)
}

/// Builds the TCP balancer of `target`'s destination: latency here is connection set-up time.
pub fn tcp_balancer(
    params: &Params,
    dispatch_timeout: Duration,
    target: &Target,
    resolution: tokio::sync::watch::Receiver<Resolution>,
) -> TcpBalancer {
    let make = MakeTcp {
        connector: params.connector.clone(),
    };
    balancer(dispatch_timeout, target, resolution, make, None)
}

/// What metrics call a destination. A service target is named as the proxy was told; an
/// address (from transparent interception, chosen by the application) by the service it
/// resolved to, or `outside-mesh`, so that labels come from a set the mesh bounds, not the
/// application.
pub fn metric_label(target: &Target, resolution: &Resolution) -> String {
    match (target, resolution) {
        (Target::Service { .. }, _) => target.to_string(),
        (Target::Address(_), Resolution::Resolved(r)) => format!("{}:{}", r.service, r.port),
        (Target::Address(_), _) => OUTSIDE_MESH.to_string(),
    }
}

/// The metric label of destinations that are not mesh services.
pub const OUTSIDE_MESH: &str = "outside-mesh";

/// P2C over peak-EWMA over the endpoints `make` builds, behind fail-fast.
fn balancer<M, Req>(
    timeout: Duration,
    target: &Target,
    resolution: tokio::sync::watch::Receiver<Resolution>,
    make: M,
    health: Option<Arc<Health>>,
) -> SharedBalancer<Balancer<M, Req>>
where
    M: MakeEndpoint + Unpin,
    M::Endpoint: Service<Req, Error = BoxError> + Unpin,
{
    let discover = EndpointDiscover {
        updates: WatchStream::new(resolution),
        passthrough: match target {
            Target::Address(a) => Some(*a),
            Target::Service { .. } => None,
        },
        current: HashSet::new(),
        pending: VecDeque::new(),
        make,
        health,
    };
    let balance = Balance::new(PeakEwmaDiscover::new(
        discover,
        DEFAULT_RTT,
        DECAY,
        CompleteOnResponse::default(),
    ));
    SharedBalancer::new(FailFast::new(balance, timeout))
}

#[cfg(test)]
mod label_tests {
    use std::collections::BTreeMap;

    use weft_core::{Protocol, ServiceName};

    use super::*;
    use crate::discovery::ResolvedService;

    #[test]
    fn address_targets_are_named_from_a_bounded_set() {
        let addr: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        let by_address = Target::Address(addr);
        let resolved = Resolution::Resolved(Arc::new(ResolvedService {
            service: ServiceName::new("demo", "api").unwrap(),
            port: 80,
            protocol: Protocol::Http1,
            endpoints: BTreeMap::new(),
        }));
        assert_eq!(metric_label(&by_address, &resolved), "api.demo:80");
        for r in [
            Resolution::NotInMesh,
            Resolution::Pending,
            Resolution::Denied("no".into()),
        ] {
            assert_eq!(metric_label(&by_address, &r), OUTSIDE_MESH);
        }
        let by_name = Target::parse("api.demo", "demo").unwrap();
        assert_eq!(metric_label(&by_name, &Resolution::NotInMesh), "api.demo");
    }

    #[test]
    fn only_an_address_outside_the_mesh_is_passed_through() {
        let addr: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        assert_eq!(
            endpoints_of(&Resolution::NotInMesh, Some(addr)),
            [EndpointView {
                address: addr,
                identity: None
            }]
        );
        assert!(endpoints_of(&Resolution::NotInMesh, None).is_empty());
        assert!(endpoints_of(&Resolution::Denied("no".into()), Some(addr)).is_empty());
        assert!(endpoints_of(&Resolution::Pending, Some(addr)).is_empty());
    }
}
