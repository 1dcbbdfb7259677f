//! Following `Discovery.Watch`. The last snapshot stays in force while the control plane is
//! away; the stream is reopened with backoff.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_api::Snapshot;
use weft_api::v1::discovery_client::DiscoveryClient;
use weft_ca::{ALPN_H2, TrustBundle};
use weft_core::policy::{Decision, IdentityMatch, InboundPolicy};
use weft_core::{Identity, Protocol, ServiceName};

use crate::Shared;
use crate::control::{Backoff, channel};

/// The proxy's view of the mesh, from one snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DiscoveryState {
    /// The snapshot's version.
    pub version: u64,
    /// Reachable services.
    pub services: HashMap<ServiceName, ServiceView>,
    /// The inbound policy of this proxy's workload.
    pub inbound: InboundPolicy,
    /// The protocol of this workload's own port.
    pub inbound_protocol: Protocol,
    /// The roots the mesh trusts now (several while a root is rotated).
    pub trust_bundle: Option<TrustBundle>,
}

/// One reachable service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceView {
    /// Its port protocol.
    pub protocol: Protocol,
    /// Its endpoints.
    pub endpoints: Vec<EndpointView>,
}

/// One endpoint of a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointView {
    /// Where to connect.
    pub address: SocketAddr,
    /// What it must prove; `None` for an unmeshed endpoint (plaintext).
    pub identity: Option<Identity>,
}

/// Converts a snapshot from the network. Entries that do not parse are skipped with a warning:
/// one bad endpoint must not take down the rest of the view.
pub fn from_snapshot(s: Snapshot) -> DiscoveryState {
    let mut services = HashMap::new();
    for svc in s.services {
        let Ok(name) = ServiceName::new(&svc.namespace, &svc.name) else {
            tracing::warn!(name = %svc.name, namespace = %svc.namespace, "skipping a service with a bad name");
            continue;
        };
        let mut endpoints = Vec::new();
        for ep in svc.endpoints {
            let Ok(address) = ep.address.parse() else {
                tracing::warn!(service = %name, address = %ep.address, "skipping a bad endpoint address");
                continue;
            };
            let identity = if ep.identity.is_empty() {
                None
            } else {
                match Identity::parse_spiffe(&ep.identity) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        tracing::warn!(service = %name, error = %e, "skipping an endpoint");
                        continue;
                    }
                }
            };
            endpoints.push(EndpointView { address, identity });
        }
        services.insert(
            name,
            ServiceView {
                protocol: svc.protocol.parse().unwrap_or_default(),
                endpoints,
            },
        );
    }
    let (inbound, inbound_protocol) = match s.inbound {
        Some(p) => (
            InboundPolicy {
                default: if p.default_decision == "deny" {
                    Decision::Deny
                } else {
                    Decision::Allow
                },
                allow: p
                    .allow
                    .iter()
                    .filter_map(|a| a.parse::<IdentityMatch>().ok())
                    .collect(),
            },
            p.protocol.parse().unwrap_or_default(),
        ),
        // No policy in the snapshot: fail closed.
        None => (
            InboundPolicy {
                default: Decision::Deny,
                allow: Vec::new(),
            },
            Protocol::Auto,
        ),
    };
    let trust_bundle = (!s.trust_bundle.is_empty()).then(|| {
        TrustBundle::new(
            s.trust_bundle
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
        )
    });
    DiscoveryState {
        version: s.version,
        services,
        inbound,
        inbound_protocol,
        trust_bundle,
    }
}

/// Keeps `tx` holding the latest snapshot until `stop`.
pub async fn run(
    shared: Arc<Shared>,
    tx: watch::Sender<Option<Arc<DiscoveryState>>>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut creds_rx = shared.credentials.clone();
    loop {
        // Watch needs the proxy's mesh certificate.
        let creds = tokio::select! {
            _ = stop.cancelled() => return,
            r = creds_rx.wait_for(|c| c.is_some()) => match r {
                Ok(c) => c.clone(),
                Err(_) => return,
            },
        };
        let Some(creds) = creds else { continue };
        let control = Identity::control_plane(creds.identity().trust_domain());
        let tls = creds.client_config(&control, ALPN_H2);
        let result = async {
            let ch = channel(&shared.config, tls).await?;
            let mut stream = DiscoveryClient::new(ch)
                .watch(weft_api::WatchRequest {})
                .await?
                .into_inner();
            while let Some(snapshot) = stream.message().await? {
                backoff.reset();
                let state = from_snapshot(snapshot);
                tracing::debug!(
                    version = state.version,
                    services = state.services.len(),
                    "snapshot"
                );
                tx.send_replace(Some(Arc::new(state)));
            }
            Ok::<_, crate::control::ControlError>(())
        };
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            r = result => r,
        };
        let delay = backoff.next_delay();
        match outcome {
            Ok(()) => {
                tracing::info!(retry_in = ?delay, "discovery stream ended; keeping the last snapshot")
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "discovery unavailable; keeping the last snapshot")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
