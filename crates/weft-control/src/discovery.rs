//! `Discovery.Watch`: each proxy's own view of the mesh, streamed on every change of it.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use weft_api::convert::{policy_to_wire, protocol_to_wire};
use weft_api::v1::discovery_server::Discovery;
use weft_api::{Endpoint, Service, Snapshot, WatchRequest};
use weft_ca::TrustBundle;
use weft_core::config::MeshConfig;
use weft_core::policy::{Decision, InboundPolicy as Policy};
use weft_core::{Identity, RegistrySnapshot};

use crate::State;
use crate::transport::PeerInfo;

/// The Discovery service.
#[derive(Debug, Clone)]
pub(crate) struct DiscoveryService(pub(crate) Arc<State>);

/// Computes what a proxy with `identity` sees: the services it may reach (those whose inbound
/// policy would admit it, and unmeshed ones), its own inbound policy and the trust bundle.
/// `version` is left at 0 for the caller to set.
pub fn view_for(
    identity: &Identity,
    registry: &RegistrySnapshot,
    cfg: &MeshConfig,
    bundle: &TrustBundle,
) -> Snapshot {
    let rules = &cfg.authorization_rules;
    let default = cfg.policy.default_inbound;
    let mut services = Vec::new();
    for (name, endpoints) in registry.services() {
        let policy = Policy::for_service(default, rules, Some(&name));
        let meshed = endpoints.iter().any(|e| e.identity.is_some());
        if meshed && policy.authorize(identity) == Decision::Deny {
            continue;
        }
        let protocol = registry
            .workloads()
            .find(|w| w.service.as_ref() == Some(&name))
            .map(|w| w.protocol)
            .unwrap_or_default();
        services.push(Service {
            name: name.name.clone(),
            namespace: name.namespace.clone(),
            protocol: protocol_to_wire(protocol) as i32,
            endpoints: endpoints
                .iter()
                .map(|e| Endpoint {
                    address: e.address.to_string(),
                    identity: e
                        .identity
                        .as_ref()
                        .map(|i| i.spiffe_id())
                        .unwrap_or_default(),
                    workload: e.workload.to_string(),
                })
                .collect(),
        });
    }

    // The proxy's own workloads: those certified under its identity.
    let own: Vec<_> = registry
        .workloads()
        .filter(|w| &w.identity == identity)
        .collect();
    let mut allow = Vec::new();
    for w in &own {
        let p = Policy::for_service(default, rules, w.service.as_ref());
        for m in p.allow {
            if !allow.contains(&m) {
                allow.push(m);
            }
        }
    }
    let protocol = own.first().map(|w| w.protocol).unwrap_or_default();
    let inbound = policy_to_wire(&Policy { default, allow }, protocol);
    Snapshot {
        version: 0,
        identity: identity.spiffe_id(),
        services,
        inbound: Some(inbound),
        trust_bundle: bundle.roots().iter().map(|r| r.to_vec()).collect(),
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(|| Status::internal("connection without peer information"))?;
        let remote = peer.remote;
        let identity = peer.identity.ok_or_else(|| {
            tracing::info!(%remote, "Watch without a mesh certificate refused");
            Status::unauthenticated("Watch needs the proxy's mesh certificate")
        })?;
        let state = self.0.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            state.metrics.watches.inc();
            tracing::info!(%identity, %remote, "proxy watching");
            stream_views(&state, &identity, tx).await;
            state.metrics.watches.dec();
            tracing::info!(%identity, %remote, "proxy stopped watching");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends a first view, then a new one each time the registry or config changes this proxy's
/// view, until the proxy goes away or the control plane stops.
async fn stream_views(
    state: &State,
    identity: &Identity,
    tx: mpsc::Sender<Result<Snapshot, Status>>,
) {
    let mut registry = state.registry.subscribe();
    let mut config = state.config.clone();
    let mut last: Option<Snapshot> = None;
    let mut generation = 0u64;
    loop {
        let view = {
            let reg = registry.borrow_and_update().clone();
            let cfg = config.borrow_and_update().clone();
            view_for(identity, &reg, &cfg, state.ca.trust_bundle())
        };
        if last.as_ref() != Some(&view) {
            generation += 1;
            let mut sent = view.clone();
            sent.version = generation;
            if tx.send(Ok(sent)).await.is_err() {
                return;
            }
            state.metrics.snapshots.inc();
            last = Some(view);
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tx.closed() => return,
            r = registry.changed() => if r.is_err() { return },
            r = config.changed() => if r.is_err() { return },
        }
    }
}
