//! Following `Discovery.Resolve` for one destination: the whole state first, then changes.
//!
//! The last state stays in force while the control plane is away; the stream is reopened with
//! backoff, and the first message after a reconnect replaces the state, so endpoints that still
//! exist are never dropped in between.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_api::convert::route::{RouteWireError, traffic_from_wire};
use weft_api::convert::{endpoint_from_wire, protocol_from_wire, target_to_wire};
use weft_api::v1::discovery_client::DiscoveryClient;
use weft_api::v1::resolve_update::Update;
use weft_core::policy::traffic::TrafficPolicy;
use weft_core::{EndpointState, Identity, Protocol, ServiceName, Target};

use crate::Runtime;
use crate::control::ControlError;
use crate::outbound::breaker::Health;
use crate::outbound::router::Routes;

/// What a destination resolves to, as far as this proxy knows.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Resolution {
    /// No answer yet.
    #[default]
    Pending,
    /// A service port of the mesh.
    Resolved(Arc<ResolvedService>),
    /// Nothing in the mesh answers to the destination.
    NotInMesh,
    /// This proxy's identity may not reach the destination; the reason is the control plane's.
    Denied(Arc<str>),
}

/// A service port and its endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedService {
    /// The service.
    pub service: ServiceName,
    /// The service port.
    pub port: u16,
    /// The port's protocol.
    pub protocol: Protocol,
    /// The endpoints, by address.
    pub endpoints: BTreeMap<SocketAddr, ResolvedEndpoint>,
}

/// One endpoint of a resolved service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedEndpoint {
    /// What it must prove; `None` for an unmeshed endpoint (plaintext).
    pub identity: Option<Identity>,
    /// Whether it takes new connections.
    pub state: EndpointState,
}

/// An endpoint as the balancer keys it: where to connect and whom to expect there.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointView {
    /// Where to connect.
    pub address: SocketAddr,
    /// What it must prove; `None` for an unmeshed endpoint (plaintext).
    pub identity: Option<Identity>,
}

// === impl Resolution ===

impl Resolution {
    /// The endpoints new connections may use, if resolved.
    pub fn usable(&self) -> Vec<EndpointView> {
        match self {
            Resolution::Resolved(r) => r.usable(),
            _ => Vec::new(),
        }
    }
}

// === impl ResolvedService ===

impl ResolvedService {
    /// Whether a new connection has an endpoint to use: what [`ResolvedService::usable`]
    /// returns is not empty. Checked per request, so it allocates nothing.
    pub fn has_usable(&self) -> bool {
        self.endpoints
            .values()
            .any(|e| matches!(e.state, EndpointState::Ready | EndpointState::Serving))
    }

    /// The endpoints new connections may use: the ready ones, or, while none is ready, those
    /// still serving. Terminating endpoints get none; their open connections drain.
    pub fn usable(&self) -> Vec<EndpointView> {
        let with = |state| {
            self.endpoints
                .iter()
                .filter(move |(_, e)| e.state == state)
                .map(|(address, e)| EndpointView {
                    address: *address,
                    identity: e.identity.clone(),
                })
        };
        let ready: Vec<_> = with(EndpointState::Ready).collect();
        if ready.is_empty() {
            with(EndpointState::Serving).collect()
        } else {
            ready
        }
    }
}

/// Why an update could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpdateError {
    /// An empty message, or one of a kind this build does not know.
    #[error("an update of unknown kind")]
    Unknown,
    /// A `resolved` without service metadata, or with a bad name or port.
    #[error("bad service metadata: {0}")]
    Meta(String),
    /// Endpoint changes with no resolved service to apply them to.
    #[error("endpoint changes before the service was resolved")]
    NoService,
}

/// Applies one update to `current`. Endpoints that do not parse are skipped with a warning:
/// one bad endpoint must not take the rest of the service down.
pub fn apply(current: &Resolution, u: weft_api::ResolveUpdate) -> Result<Resolution, UpdateError> {
    match u.update.ok_or(UpdateError::Unknown)? {
        // Routes change apart from endpoints (see `follow`).
        Update::Policy(_) => match current {
            Resolution::Resolved(_) => Ok(current.clone()),
            _ => Err(UpdateError::NoService),
        },
        Update::NotInMesh(_) => Ok(Resolution::NotInMesh),
        Update::Denied(d) => Ok(Resolution::Denied(Arc::from(d.reason))),
        Update::Resolved(r) => {
            let meta = r
                .service
                .ok_or_else(|| UpdateError::Meta("missing".into()))?;
            let service = ServiceName::new(&meta.namespace, &meta.name)
                .map_err(|e| UpdateError::Meta(e.to_string()))?;
            let port = u16::try_from(meta.port)
                .map_err(|_| UpdateError::Meta(format!("port {}", meta.port)))?;
            let mut resolved = ResolvedService {
                service,
                port,
                protocol: protocol_from_wire(meta.protocol),
                endpoints: BTreeMap::new(),
            };
            upsert(&mut resolved, &r.endpoints);
            Ok(Resolution::Resolved(Arc::new(resolved)))
        }
        Update::Changes(c) => {
            let Resolution::Resolved(current) = current else {
                return Err(UpdateError::NoService);
            };
            let mut next = (**current).clone();
            for addr in &c.removed {
                match addr.parse::<SocketAddr>() {
                    Ok(a) => {
                        next.endpoints.remove(&a);
                    }
                    Err(_) => {
                        tracing::warn!(service = %next.service, %addr, "skipping a bad removed address")
                    }
                }
            }
            upsert(&mut next, &c.upserted);
            Ok(Resolution::Resolved(Arc::new(next)))
        }
    }
}

fn upsert(into: &mut ResolvedService, endpoints: &[weft_api::Endpoint]) {
    for e in endpoints {
        match endpoint_from_wire(e) {
            Ok(e) => {
                into.endpoints.insert(
                    e.address,
                    ResolvedEndpoint {
                        identity: e.tls_identity().cloned(),
                        state: e.state,
                    },
                );
            }
            // An endpoint whose identity does not read cannot be checked: leave it out, and
            // drop what was known at that address, which may be stale.
            Err(err) => {
                tracing::warn!(service = %into.service, error = %err, "skipping an endpoint");
                if let Ok(a) = e.address.parse::<SocketAddr>() {
                    into.endpoints.remove(&a);
                }
            }
        }
    }
}

/// The routes an update carries, if it carries any: a `policy` update, or a `resolved` (whose
/// routes are empty when it names none).
fn routes_of(u: &weft_api::ResolveUpdate) -> Option<Result<TrafficPolicy, RouteWireError>> {
    match &u.update {
        Some(Update::Policy(p)) => Some(traffic_from_wire(p)),
        Some(Update::Resolved(r)) => Some(match &r.policy {
            Some(p) => traffic_from_wire(p),
            None => Ok(TrafficPolicy::default()),
        }),
        _ => None,
    }
}

/// The routes to compile after an update, with the service port they belong to: none when the
/// update carries none, or carries routes that cannot be read (logged and counted; the last
/// good routes stay in force).
fn routes_to_build(
    policy: Option<Result<TrafficPolicy, RouteWireError>>,
    next: &Resolution,
    target: &Target,
    metrics: &crate::metrics::Metrics,
) -> Option<(TrafficPolicy, ServiceName, u16)> {
    match (policy?, next) {
        (Ok(policy), Resolution::Resolved(r)) => Some((policy, r.service.clone(), r.port)),
        (Ok(_), _) => None,
        (Err(e), _) => {
            tracing::warn!(%target, error = %e, "routes not applied; the last good ones stay");
            metrics.outbound_policy_invalid.inc();
            None
        }
    }
}

/// Keeps `tx` holding what `target` resolves to, and `routes` its compiled routes (with the
/// service's failure accrual set on the destination's `health`), until `stop`. Routes that
/// cannot be read leave the last good ones in force, and are logged and counted; the stream
/// goes on.
pub async fn follow(
    shared: Arc<Runtime>,
    target: Target,
    tx: watch::Sender<Resolution>,
    (routes, health): (watch::Sender<Arc<Routes>>, Arc<Health>),
    stop: CancellationToken,
) {
    let request = target_to_wire(&target);
    let (runtime, routes, health) = (&shared, &routes, &health);
    let (shared, tx, request, target) = (&shared, &tx, &request, &target);
    super::follow_with_backoff(shared, &stop, target, false, |channel| async move {
        let mut heard = false;
        let result = async {
            let mut stream = DiscoveryClient::new(channel)
                .resolve(request.clone())
                .await?
                .into_inner();
            while let Some(update) = stream.message().await? {
                // The first message after a (re)connect replaces whatever was known.
                let base = if heard {
                    tx.borrow().clone()
                } else {
                    Resolution::Pending
                };
                heard = true;
                let policy = routes_of(&update);
                let next = apply(&base, update).map_err(|e| {
                    // Out of step with the control plane: start over with a fresh stream.
                    ControlError::Other(format!("resolving {target}: {e}"))
                })?;
                if let Some((policy, service, port)) =
                    routes_to_build(policy, &next, target, &runtime.metrics)
                {
                    tracing::debug!(%target, http = policy.http.len(), grpc = policy.grpc.len(), "routes compiled");
                    health.set_accrual(&policy.backend.failure_accrual);
                    let compiled = Routes::build(&policy, target, &service, port, runtime);
                    routes.send_replace(Arc::new(compiled));
                }
                tx.send_if_modified(|cur| {
                    if *cur == next {
                        false
                    } else {
                        *cur = next;
                        true
                    }
                });
            }
            Ok::<_, ControlError>(())
        }
        .await;
        super::StreamEnd { heard, result }
    })
    .await
}

#[cfg(test)]
mod tests;
