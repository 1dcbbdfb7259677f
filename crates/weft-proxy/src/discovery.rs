//! Following `Discovery.Watch`. The last snapshot stays in force while the control plane is
//! away; the stream is reopened with backoff.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_api::Snapshot;
use weft_api::convert::{policy_from_wire, protocol_from_wire};
use weft_api::v1::discovery_client::DiscoveryClient;
use weft_ca::{ALPN_H2, TrustBundle};
use weft_core::policy::{Decision, InboundPolicy};
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
    /// Why the snapshot's inbound policy could not be used, if it could not; `inbound` then
    /// denies every client.
    pub policy_error: Option<PolicyError>,
    /// The roots the mesh trusts now (several while a root is rotated).
    pub trust_bundle: Option<TrustBundle>,
}

/// Why the proxy runs with a deny-all inbound policy instead of the one it was sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The snapshot carried no inbound policy.
    #[error("the snapshot carries no inbound policy")]
    Missing,
    /// The policy did not parse.
    #[error(transparent)]
    Unreadable(#[from] weft_api::convert::PolicyError),
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
                protocol: protocol_from_wire(svc.protocol),
                endpoints,
            },
        );
    }
    let (inbound, inbound_protocol, policy_error) = match &s.inbound {
        Some(p) => match policy_from_wire(p) {
            Ok(policy) => (policy, protocol_from_wire(p.protocol), None),
            // A policy this proxy cannot read fully denies everyone: never widen access.
            Err(e) => (deny_all(), protocol_from_wire(p.protocol), Some(e.into())),
        },
        None => (deny_all(), Protocol::Auto, Some(PolicyError::Missing)),
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
        policy_error,
        trust_bundle,
    }
}

fn deny_all() -> InboundPolicy {
    InboundPolicy {
        default: Decision::Deny,
        allow: Vec::new(),
    }
}

/// Converts a snapshot, logging and counting an inbound policy that could not be used.
pub fn accept_snapshot(metrics: &crate::metrics::Metrics, s: Snapshot) -> DiscoveryState {
    let state = from_snapshot(s);
    if let Some(e) = &state.policy_error {
        tracing::error!(error = %e, version = state.version, "inbound policy unusable; denying every client until a usable one arrives");
        metrics.policy_invalid.inc();
    }
    state
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
                let state = accept_snapshot(&shared.metrics, snapshot);
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

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::convert::pattern_to_wire;
    use weft_api::{Decision as WireDecision, IdentityPattern};
    use weft_core::TrustDomain;
    use weft_core::policy::IdentityMatch;

    fn snapshot(default: i32, allow: Vec<IdentityPattern>) -> Snapshot {
        Snapshot {
            version: 1,
            identity: String::new(),
            services: Vec::new(),
            inbound: Some(weft_api::InboundPolicy {
                default_decision: default,
                allow,
                protocol: 0,
            }),
            trust_bundle: Vec::new(),
        }
    }

    fn client() -> Identity {
        Identity::new(TrustDomain::new("weft.test").unwrap(), "demo", "web").unwrap()
    }

    #[test]
    fn a_readable_policy_is_applied() {
        let m = crate::metrics::Metrics::default();
        let s = accept_snapshot(
            &m,
            snapshot(
                WireDecision::Deny as i32,
                vec![pattern_to_wire(&IdentityMatch::Namespace("demo".into()))],
            ),
        );
        assert_eq!(s.inbound.authorize(&client()), Decision::Allow);
        assert_eq!(s.policy_error, None);
        assert_eq!(m.policy_invalid.get(), 0);
    }

    #[test]
    fn an_unreadable_policy_denies_and_is_counted() {
        let m = crate::metrics::Metrics::default();
        // An unknown default with no allow list would have been read as "allow" by a parser
        // with defaults.
        let unknown_default = snapshot(42, Vec::new());
        // One pattern this proxy cannot read next to one that admits the client.
        let unknown_pattern = snapshot(
            WireDecision::Allow as i32,
            vec![
                pattern_to_wire(&IdentityMatch::Any),
                IdentityPattern { pattern: None },
            ],
        );
        let missing = Snapshot {
            inbound: None,
            ..snapshot(1, Vec::new())
        };
        for (n, snap) in [unknown_default, unknown_pattern, missing]
            .into_iter()
            .enumerate()
        {
            let s = accept_snapshot(&m, snap);
            assert_eq!(s.inbound.authorize(&client()), Decision::Deny, "case {n}");
            assert!(s.policy_error.is_some(), "case {n}");
            assert_eq!(m.policy_invalid.get(), n as u64 + 1);
        }
    }
}
