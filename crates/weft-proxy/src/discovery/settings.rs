//! Following `Discovery.Proxy`: this proxy's inbound policies and the mesh's trust bundle.

use std::collections::HashMap;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_api::convert::{policy_from_wire, protocol_from_wire};
use weft_api::v1::discovery_client::DiscoveryClient;
use weft_ca::TrustBundle;
use weft_core::Protocol;
use weft_core::policy::{Decision, InboundPolicy};

use crate::Runtime;
use crate::control::ControlError;

/// The proxy's own settings, from one message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxySettings {
    /// The policy of each server, by the port peers dial.
    pub servers: HashMap<u16, ServerSettings>,
    /// The policy of a port no server lists.
    pub default: InboundPolicy,
    /// Why a policy of the message could not be used, if one could not; the policy in
    /// question then denies every client.
    pub policy_error: Option<PolicyError>,
    /// The roots the mesh trusts now (several while a root is rotated).
    pub trust_bundle: Option<TrustBundle>,
    /// Where spans go, where traces start, the access log.
    pub observability: crate::observe::Settings,
}

/// One server's settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerSettings {
    /// Who may call it.
    pub policy: InboundPolicy,
    /// Its protocol.
    pub protocol: Protocol,
}

/// Why the proxy runs with a deny-all policy instead of the one it was sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The message carried no policy where one was due.
    #[error("the settings carry no policy for {0}")]
    Missing(String),
    /// A policy did not parse.
    #[error("the policy for {what}: {source}")]
    Unreadable {
        /// Which policy.
        what: String,
        /// Why.
        #[source]
        source: weft_api::convert::PolicyError,
    },
}

// === impl ProxySettings ===

impl ProxySettings {
    /// The policy for a connection to `port`.
    pub fn policy(&self, port: u16) -> &InboundPolicy {
        self.servers.get(&port).map_or(&self.default, |s| &s.policy)
    }

    /// The declared protocol of `port`, if a server lists it.
    pub fn protocol(&self, port: u16) -> Option<Protocol> {
        self.servers.get(&port).map(|s| s.protocol)
    }
}

/// Converts a settings message. A policy that does not read fully denies every client: never
/// widen access.
pub fn from_wire(s: weft_api::ProxySettings) -> ProxySettings {
    let mut error = None;
    let mut read = |what: String, p: Option<&weft_api::InboundPolicy>| match p {
        None => {
            error.get_or_insert(PolicyError::Missing(what));
            (deny_all(), Protocol::Auto)
        }
        Some(p) => match policy_from_wire(p) {
            Ok(policy) => (policy, protocol_from_wire(p.protocol)),
            Err(source) => {
                error.get_or_insert(PolicyError::Unreadable { what, source });
                (deny_all(), protocol_from_wire(p.protocol))
            }
        },
    };
    let (default, _) = read("other ports".into(), s.default_policy.as_ref());
    let mut servers = HashMap::new();
    for server in &s.servers {
        let Ok(port) = u16::try_from(server.port) else {
            // A port that cannot exist; no connection can arrive on it.
            continue;
        };
        let (policy, protocol) = read(format!("port {port}"), server.policy.as_ref());
        servers.insert(port, ServerSettings { policy, protocol });
    }
    let trust_bundle = (!s.trust_bundle.is_empty()).then(|| {
        TrustBundle::new(
            s.trust_bundle
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
        )
    });
    ProxySettings {
        servers,
        default,
        policy_error: error,
        trust_bundle,
        observability: observability_from_wire(s.observability.as_ref()),
    }
}

/// The observability settings of a message. A collector or identity that does not read turns
/// tracing off (and says so): spans are never sent anywhere but where the mesh said.
fn observability_from_wire(o: Option<&weft_api::Observability>) -> crate::observe::Settings {
    use weft_api::AccessLogFormat as Wire;
    use weft_core::observability::AccessLogFormat;
    let Some(o) = o else {
        return crate::observe::Settings::default();
    };
    let access_log = match Wire::try_from(o.access_log) {
        Ok(Wire::Common) => AccessLogFormat::Common,
        Ok(Wire::Json) => AccessLogFormat::Json,
        Ok(Wire::Off) | Err(_) => AccessLogFormat::Off,
    };
    let identity = if o.trace_collector_identity.is_empty() {
        Ok(None)
    } else {
        weft_core::Identity::parse_spiffe(&o.trace_collector_identity).map(Some)
    };
    let collector = match identity {
        _ if o.trace_collector.is_empty() => None,
        Ok(identity) => Some(crate::observe::export::Collector {
            address: o.trace_collector.clone(),
            identity,
            buffer: match o.trace_buffer {
                0 => 2048,
                n => (n as usize).min(weft_core::observability::MAX_TRACE_BUFFER),
            },
        }),
        Err(e) => {
            tracing::error!(error = %e, "the trace collector's identity does not read; no spans are exported");
            None
        }
    };
    crate::observe::Settings {
        collector,
        start_millionths: o.trace_start_millionths.min(1_000_000),
        access_log,
        service: o.service_name.clone(),
        tap_clients: o.tap_clients.clone(),
    }
}

fn deny_all() -> InboundPolicy {
    InboundPolicy {
        default: Decision::Deny,
        rules: Vec::new(),
        rate_limits: Vec::new(),
    }
}

/// Converts a settings message, logging and counting a policy that could not be used.
pub fn accept(metrics: &crate::metrics::Metrics, s: weft_api::ProxySettings) -> ProxySettings {
    let settings = from_wire(s);
    if let Some(e) = &settings.policy_error {
        tracing::error!(error = %e, "inbound policy unusable; denying those clients until a usable one arrives");
        metrics.policy_invalid.inc();
    }
    settings
}

/// Keeps `tx` holding the latest settings until `stop`.
pub async fn run(
    shared: Arc<Runtime>,
    tx: watch::Sender<Option<Arc<ProxySettings>>>,
    stop: CancellationToken,
) {
    let request = weft_api::ProxyRequest {
        workload: format!("{}/{}", shared.config.namespace, shared.config.workload),
        platform: shared.config.platform.clone(),
    };
    let (shared, tx, request) = (&shared, &tx, &request);
    super::follow_with_backoff(shared, &stop, &"settings", true, |channel| async move {
        let mut heard = false;
        let result = async {
            let mut stream = DiscoveryClient::new(channel)
                .proxy(request.clone())
                .await?
                .into_inner();
            while let Some(msg) = stream.message().await? {
                heard = true;
                let settings = accept(&shared.metrics, msg);
                tracing::debug!(servers = settings.servers.len(), "settings");
                shared.observer.configure(&settings.observability);
                tx.send_replace(Some(Arc::new(settings)));
            }
            Ok::<_, tonic::Status>(())
        }
        .await;
        if let Err(e) = &result
            && e.code() == tonic::Code::PermissionDenied
        {
            // The control plane says this proxy is not what it claims: whatever it had
            // before no longer holds. Deny every client until that is sorted out.
            tracing::error!(
                reason = e.message(),
                "settings refused; denying every client"
            );
            shared.metrics.policy_invalid.inc();
            let bundle = tx.borrow().as_ref().and_then(|s| s.trust_bundle.clone());
            tx.send_replace(Some(Arc::new(ProxySettings {
                servers: HashMap::new(),
                default: deny_all(),
                policy_error: Some(PolicyError::Missing(format!(
                    "this workload ({})",
                    e.message()
                ))),
                trust_bundle: bundle,
                observability: crate::observe::Settings::default(),
            })));
        }
        super::StreamEnd {
            heard,
            result: result.map_err(ControlError::from),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::convert::pattern_to_wire;
    use weft_api::{Decision as WireDecision, IdentityPattern};
    use weft_core::policy::{AuthorizationRule, IdentityMatch};
    use weft_core::{Identity, TrustDomain};

    /// A policy with one allow rule for `allow`, if it names anyone.
    fn wire(default: i32, allow: Vec<IdentityPattern>) -> weft_api::InboundPolicy {
        let rules = if allow.is_empty() {
            Vec::new()
        } else {
            let mut rule = weft_api::convert::rule_to_wire(&AuthorizationRule::allow(
                weft_core::ServiceName::new("demo", "api").unwrap(),
                vec![IdentityMatch::Any],
            ));
            rule.from = allow;
            vec![rule]
        };
        weft_api::InboundPolicy {
            default_decision: default,
            protocol: 0,
            rate_limits: Vec::new(),
            rules,
        }
    }

    fn settings(server: weft_api::InboundPolicy) -> weft_api::ProxySettings {
        weft_api::ProxySettings {
            identity: String::new(),
            servers: vec![weft_api::ServerPolicy {
                port: 7143,
                policy: Some(server),
            }],
            default_policy: Some(wire(WireDecision::Allow as i32, Vec::new())),
            trust_bundle: Vec::new(),
            observability: None,
        }
    }

    fn client() -> Identity {
        Identity::new(TrustDomain::new("weft.test").unwrap(), "demo", "web").unwrap()
    }

    #[test]
    fn a_readable_policy_is_applied_per_port() {
        let m = crate::metrics::Metrics::default();
        let s = accept(
            &m,
            settings(wire(
                WireDecision::Deny as i32,
                vec![pattern_to_wire(&IdentityMatch::Namespace("prod".into()))],
            )),
        );
        assert_eq!(
            s.policy(7143).on_connection(Some(&client())),
            Decision::Deny
        );
        // Another port gets the default.
        assert_eq!(
            s.policy(8080).on_connection(Some(&client())),
            Decision::Allow
        );
        assert_eq!(s.policy_error, None);
        assert_eq!(m.policy_invalid.get(), 0);
    }

    #[test]
    fn an_unreadable_policy_denies_and_is_counted() {
        let m = crate::metrics::Metrics::default();
        // An unknown default with no allow list would have been read as "allow" by a parser
        // with defaults.
        let unknown_default = settings(wire(42, Vec::new()));
        // One pattern this proxy cannot read next to one that admits the client.
        let unknown_pattern = settings(wire(
            WireDecision::Allow as i32,
            vec![
                pattern_to_wire(&IdentityMatch::Any),
                IdentityPattern { pattern: None },
            ],
        ));
        let mut missing = settings(wire(WireDecision::Allow as i32, Vec::new()));
        missing.servers[0].policy = None;
        for (n, msg) in [unknown_default, unknown_pattern, missing]
            .into_iter()
            .enumerate()
        {
            let s = accept(&m, msg);
            assert_eq!(
                s.policy(7143).on_connection(Some(&client())),
                Decision::Deny,
                "case {n}"
            );
            assert!(s.policy_error.is_some(), "case {n}");
            assert_eq!(m.policy_invalid.get(), n as u64 + 1);
        }
        let mut no_default = settings(wire(WireDecision::Allow as i32, Vec::new()));
        no_default.default_policy = None;
        let s = accept(&m, no_default);
        assert_eq!(s.policy(1).on_connection(Some(&client())), Decision::Deny);
    }
}
