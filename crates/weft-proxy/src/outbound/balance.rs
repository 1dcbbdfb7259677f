//! Balancing across a destination's endpoints: tower's power-of-two-choices over peak-EWMA
//! latency, fed by the destination's resolution. One balancer per destination and protocol,
//! shared by every connection to it.
//!
//! Sharing goes through an async mutex rather than tower's buffer: a request takes the lock,
//! waits for the balancer to be ready (bounded by the fail-fast dispatch timeout), dispatches,
//! and releases the lock before awaiting its response. Waiting requests queue fairly on the
//! mutex, so no readiness wake-up is lost, and a request costs no channel send and no hop
//! through a worker task.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::endpoint::{HttpEndpoint, TcpEndpoint};
use super::failfast::FailFast;
use crate::Shared;
use crate::discovery::{EndpointView, Resolution};
use crate::http::{Body, BoxError};
use crate::io::PeerIo;
use futures_util::Stream;
use http::{Request, Response};
use tokio_stream::wrappers::WatchStream;
use tower::balance::p2c::Balance;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::util::BoxService;
use tower::{Service, ServiceExt};

/// The latency a new endpoint is assumed to have before it is measured.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast old latency observations fade.
const DECAY: Duration = Duration::from_secs(10);
/// A shared handle to one service's balancer.
pub struct SharedBalancer<Req, Rsp> {
    inner: Arc<tokio::sync::Mutex<BoxService<Req, Rsp, BoxError>>>,
}

impl<Req, Rsp> Clone for SharedBalancer<Req, Rsp> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<Req, Rsp> std::fmt::Debug for SharedBalancer<Req, Rsp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedBalancer")
    }
}

impl<Req, Rsp> SharedBalancer<Req, Rsp> {
    fn new(svc: BoxService<Req, Rsp, BoxError>) -> Self {
        Self {
            inner: Arc::new(tokio::sync::Mutex::new(svc)),
        }
    }

    /// Sends `req` to the best ready endpoint.
    pub async fn dispatch(&self, req: Req) -> Result<Rsp, BoxError> {
        let response = {
            let mut svc = self.inner.lock().await;
            svc.ready().await?;
            svc.call(req)
        };
        response.await
    }
}

/// One service's HTTP balancer.
pub type HttpBalancer = SharedBalancer<Request<Body>, Response<Body>>;
/// One service's TCP balancer: calling it opens a connection.
pub type TcpBalancer = SharedBalancer<(), (PeerIo, EndpointView)>;

/// Turns resolution updates into endpoint insertions and removals. Only usable endpoints are
/// inserted: an endpoint that starts terminating is removed, so it gets no new requests, while
/// the connections already open to it finish what they carry.
struct EndpointDiscover<S, F> {
    updates: WatchStream<Resolution>,
    current: HashSet<EndpointView>,
    pending: VecDeque<Change<EndpointView, S>>,
    make: F,
}

impl<S, F: Fn(EndpointView) -> S + Unpin> Stream for EndpointDiscover<S, F>
where
    S: Unpin,
{
    type Item = Result<Change<EndpointView, S>, BoxError>;

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
            let next: HashSet<EndpointView> = resolution.usable().into_iter().collect();
            for gone in this.current.difference(&next) {
                tracing::debug!(addr = %gone.address, "endpoint removed");
                this.pending.push_back(Change::Remove(gone.clone()));
            }
            for new in next.difference(&this.current) {
                tracing::debug!(addr = %new.address, "endpoint added");
                this.pending
                    .push_back(Change::Insert(new.clone(), (this.make)(new.clone())));
            }
            this.current = next;
        }
    }
}

/// Builds the HTTP balancer of a destination; `label` names it in metrics.
pub fn http_balancer(
    shared: &Arc<Shared>,
    resolution: tokio::sync::watch::Receiver<Resolution>,
    label: String,
) -> HttpBalancer {
    let shared2 = shared.clone();
    balancer(shared, resolution, move |ep| {
        HttpEndpoint::new(ep, shared2.clone(), label.clone())
    })
}

/// Builds the TCP balancer of a destination: latency here is connection set-up time.
pub fn tcp_balancer(
    shared: &Arc<Shared>,
    resolution: tokio::sync::watch::Receiver<Resolution>,
) -> TcpBalancer {
    let shared2 = shared.clone();
    balancer(shared, resolution, move |ep| {
        TcpEndpoint::new(ep, shared2.clone())
    })
}

/// P2C over peak-EWMA over the endpoints `make` builds, behind fail-fast.
fn balancer<Req, S, F>(
    shared: &Arc<Shared>,
    resolution: tokio::sync::watch::Receiver<Resolution>,
    make: F,
) -> SharedBalancer<Req, S::Response>
where
    Req: Send + 'static,
    S: Service<Req, Error = BoxError> + Send + Unpin + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    F: Fn(EndpointView) -> S + Send + Unpin + 'static,
{
    let discover = EndpointDiscover {
        updates: WatchStream::new(resolution),
        current: HashSet::new(),
        pending: VecDeque::new(),
        make,
    };
    let balance = Balance::new(PeakEwmaDiscover::new(
        discover,
        DEFAULT_RTT,
        DECAY,
        CompleteOnResponse::default(),
    ));
    let timeout = shared.config.dispatch_timeout;
    SharedBalancer::new(BoxService::new(FailFast::new(balance, timeout)))
}
