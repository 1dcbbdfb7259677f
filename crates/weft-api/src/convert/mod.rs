//! Conversions between the core's policy and model types and their wire form.
//!
//! Core to wire cannot fail. Wire to core is strict: whatever does not parse is an error, never a
//! default, because these messages carry security decisions and a policy that is silently
//! widened is worse than one that is refused.

pub mod route;

use std::net::SocketAddr;

use weft_core::policy::ratelimit::{LocalRateLimit as CoreRateLimit, Rate as CoreRate};
use weft_core::policy::{Decision as CoreDecision, IdentityMatch, InboundPolicy as CorePolicy};
use weft_core::{
    Endpoint as CoreEndpoint, EndpointState as CoreState, Identity, Protocol as CoreProtocol,
    ServiceName, Target, WorkloadKey,
};

use crate::v1::identity_pattern::{Account, AnyIdentity, Pattern, Unauthenticated};
use crate::v1::resolve_request::Target as WireTarget;
use crate::v1::{
    Decision, Endpoint, EndpointState, IdentityPattern, InboundPolicy, LocalRateLimit, Protocol,
    Rate, RateOverride, ResolveRequest, ServiceTarget,
};

/// Why a policy from the control plane cannot be used.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The default decision is unset or a value this build does not know.
    #[error("unknown default decision {0}")]
    UnknownDefault(i32),
    /// An allow entry has no pattern set (a newer control plane may use a case this proxy does
    /// not know).
    #[error("allow[{0}] has no pattern this proxy understands")]
    EmptyPattern(usize),
    /// An allow entry names an invalid namespace, account or SPIFFE ID.
    #[error("allow[{index}]: {reason}")]
    BadPattern {
        /// Which entry.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The rate limit has no rate, a rate at or below zero, or no burst.
    #[error("a rate limit this proxy cannot read")]
    BadRateLimit,
}

/// Why an endpoint or a target from the network cannot be used.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// An address that is not `ip:port`.
    #[error("bad address {0:?}")]
    Address(String),
    /// An identity that is not a SPIFFE ID of the mesh's form.
    #[error("bad identity {0:?}")]
    Identity(String),
    /// A request without a target, or with a target of a kind this build does not know.
    #[error("no target")]
    NoTarget,
    /// A service name or port that cannot be.
    #[error("bad service {0}")]
    Service(String),
}

// === core -> wire ===

/// The wire form of a decision.
pub fn decision_to_wire(d: CoreDecision) -> Decision {
    match d {
        CoreDecision::Allow => Decision::Allow,
        CoreDecision::Deny => Decision::Deny,
        CoreDecision::AllowUnauthenticated => Decision::AllowUnauthenticated,
        CoreDecision::Audit => Decision::Audit,
    }
}

/// The wire form of a protocol.
pub fn protocol_to_wire(p: CoreProtocol) -> Protocol {
    match p {
        CoreProtocol::Auto => Protocol::Auto,
        CoreProtocol::Http1 => Protocol::Http1,
        CoreProtocol::Http2 => Protocol::Http2,
        CoreProtocol::Grpc => Protocol::Grpc,
        CoreProtocol::Opaque => Protocol::Opaque,
    }
}

/// The wire form of an identity pattern.
pub fn pattern_to_wire(m: &IdentityMatch) -> IdentityPattern {
    let pattern = match m {
        IdentityMatch::Unauthenticated => Pattern::Unauthenticated(Unauthenticated {}),
        IdentityMatch::Any => Pattern::Any(AnyIdentity {}),
        IdentityMatch::Namespace(ns) => Pattern::Namespace(ns.clone()),
        IdentityMatch::Account { namespace, name } => Pattern::Account(Account {
            namespace: namespace.clone(),
            name: name.clone(),
        }),
        IdentityMatch::Exact(id) => Pattern::SpiffeId(id.spiffe_id()),
    };
    IdentityPattern {
        pattern: Some(pattern),
    }
}

/// The wire form of an inbound policy for a port of `protocol`.
pub fn policy_to_wire(p: &CorePolicy, protocol: CoreProtocol) -> InboundPolicy {
    InboundPolicy {
        default_decision: decision_to_wire(p.default) as i32,
        allow: p.allow.iter().map(pattern_to_wire).collect(),
        protocol: protocol_to_wire(protocol) as i32,
        rate_limit: p.rate_limit.as_ref().map(rate_limit_to_wire),
    }
}

/// The wire form of an endpoint state. Discovery never sends an endpoint that is not ready;
/// should one slip through, it goes as terminating, which takes no new connections.
pub fn state_to_wire(s: CoreState) -> EndpointState {
    match s {
        CoreState::Ready => EndpointState::Ready,
        CoreState::Serving => EndpointState::Serving,
        CoreState::Terminating | CoreState::NotReady => EndpointState::Terminating,
    }
}

/// The wire form of an endpoint: the identity is sent only when clients must check it (the
/// endpoint is meshed), so an empty identity means plaintext.
pub fn endpoint_to_wire(e: &CoreEndpoint) -> Endpoint {
    Endpoint {
        address: e.address.to_string(),
        identity: e
            .tls_identity()
            .map(Identity::spiffe_id)
            .unwrap_or_default(),
        workload: e
            .workload
            .as_ref()
            .map(|w| w.to_string())
            .unwrap_or_default(),
        state: state_to_wire(e.state) as i32,
    }
}

/// The wire form of a discovery target, announcing what this build reads (the `policy`
/// update).
pub fn target_to_wire(t: &Target) -> ResolveRequest {
    let target = match t {
        Target::Service { name, port } => WireTarget::Service(ServiceTarget {
            name: name.name.clone(),
            namespace: name.namespace.clone(),
            port: port.map_or(0, u32::from),
        }),
        Target::Address(addr) => WireTarget::Address(addr.to_string()),
    };
    ResolveRequest {
        target: Some(target),
        capabilities: vec![crate::CAPABILITY_TRAFFIC_POLICY.to_string()],
    }
}

// === wire -> core ===

/// Reads an endpoint state. Unknown values read as terminating: an endpoint whose state this
/// proxy cannot read gets no new connections.
pub fn state_from_wire(s: i32) -> CoreState {
    match EndpointState::try_from(s) {
        Ok(EndpointState::Ready) => CoreState::Ready,
        Ok(EndpointState::Serving) => CoreState::Serving,
        Ok(EndpointState::Terminating | EndpointState::Unspecified) | Err(_) => {
            CoreState::Terminating
        }
    }
}

/// Reads an endpoint. An identity that does not parse is an error, never plaintext: the
/// endpoint is then unusable, which is safer than talking to it without checking who it is.
pub fn endpoint_from_wire(e: &Endpoint) -> Result<CoreEndpoint, WireError> {
    let address: SocketAddr = e
        .address
        .parse()
        .map_err(|_| WireError::Address(e.address.clone()))?;
    let identity = if e.identity.is_empty() {
        None
    } else {
        Some(
            Identity::parse_spiffe(&e.identity)
                .map_err(|_| WireError::Identity(e.identity.clone()))?,
        )
    };
    // The workload is informational; one that does not read is left out.
    let workload = e.workload.split_once('/').map(|(ns, name)| WorkloadKey {
        namespace: ns.to_string(),
        name: name.to_string(),
    });
    Ok(CoreEndpoint {
        address,
        meshed: identity.is_some(),
        identity,
        workload,
        state: state_from_wire(e.state),
    })
}

/// Reads a discovery target.
pub fn target_from_wire(r: &ResolveRequest) -> Result<Target, WireError> {
    match &r.target {
        None => Err(WireError::NoTarget),
        Some(WireTarget::Address(a)) => a
            .parse()
            .map(Target::Address)
            .map_err(|_| WireError::Address(a.clone())),
        Some(WireTarget::Service(s)) => {
            let name = ServiceName::new(&s.namespace, &s.name)
                .map_err(|_| WireError::Service(format!("{}.{}", s.name, s.namespace)))?;
            let port = match s.port {
                0 => None,
                p => Some(u16::try_from(p).map_err(|_| WireError::Service(format!("{name}:{p}")))?),
            };
            Ok(Target::Service { name, port })
        }
    }
}

/// Reads a protocol. Unknown values read as `Auto`: detection never bypasses TLS or
/// authorization, so this is safe, unlike a default for a policy.
pub fn protocol_from_wire(p: i32) -> CoreProtocol {
    match Protocol::try_from(p) {
        Ok(Protocol::Http1) => CoreProtocol::Http1,
        Ok(Protocol::Http2) => CoreProtocol::Http2,
        Ok(Protocol::Grpc) => CoreProtocol::Grpc,
        Ok(Protocol::Opaque) => CoreProtocol::Opaque,
        Ok(Protocol::Auto | Protocol::Unspecified) | Err(_) => CoreProtocol::Auto,
    }
}

/// Reads an inbound policy, refusing anything it cannot fully understand.
pub fn policy_from_wire(p: &InboundPolicy) -> Result<CorePolicy, PolicyError> {
    let default = match Decision::try_from(p.default_decision) {
        Ok(Decision::Allow) => CoreDecision::Allow,
        Ok(Decision::Deny) => CoreDecision::Deny,
        Ok(Decision::AllowUnauthenticated) => CoreDecision::AllowUnauthenticated,
        Ok(Decision::Audit) => CoreDecision::Audit,
        Ok(Decision::Unspecified) | Err(_) => {
            return Err(PolicyError::UnknownDefault(p.default_decision));
        }
    };
    let mut allow = Vec::with_capacity(p.allow.len());
    for (index, entry) in p.allow.iter().enumerate() {
        allow.push(pattern_from_wire(index, entry)?);
    }
    let rate_limit = p
        .rate_limit
        .as_ref()
        .map(rate_limit_from_wire)
        .transpose()?;
    Ok(CorePolicy {
        default,
        allow,
        rate_limit,
    })
}

fn rate_from_wire(r: Option<&Rate>) -> Result<CoreRate, PolicyError> {
    match r {
        Some(r) if r.per_second > 0.0 && r.per_second.is_finite() && r.burst > 0 => Ok(CoreRate {
            per_second: r.per_second,
            burst: r.burst,
        }),
        _ => Err(PolicyError::BadRateLimit),
    }
}

fn rate_limit_from_wire(l: &LocalRateLimit) -> Result<CoreRateLimit, PolicyError> {
    let mut overrides = Vec::with_capacity(l.overrides.len());
    for (index, o) in l.overrides.iter().enumerate() {
        let clients = o.clients.as_ref().ok_or(PolicyError::BadRateLimit)?;
        overrides.push((
            pattern_from_wire(index, clients)?,
            rate_from_wire(o.rate.as_ref())?,
        ));
    }
    Ok(CoreRateLimit {
        rate: rate_from_wire(l.rate.as_ref())?,
        per_identity: l.per_identity,
        overrides,
    })
}

fn rate_to_wire(r: CoreRate) -> Rate {
    Rate {
        per_second: r.per_second,
        burst: r.burst,
    }
}

fn rate_limit_to_wire(l: &CoreRateLimit) -> LocalRateLimit {
    LocalRateLimit {
        rate: Some(rate_to_wire(l.rate)),
        per_identity: l.per_identity,
        overrides: l
            .overrides
            .iter()
            .map(|(m, r)| RateOverride {
                clients: Some(pattern_to_wire(m)),
                rate: Some(rate_to_wire(*r)),
            })
            .collect(),
    }
}

/// Reads one identity pattern (entry `index` of its list).
fn pattern_from_wire(index: usize, entry: &IdentityPattern) -> Result<IdentityMatch, PolicyError> {
    let bad = |reason: String| PolicyError::BadPattern { index, reason };
    let m = match &entry.pattern {
        None => return Err(PolicyError::EmptyPattern(index)),
        Some(Pattern::Any(_)) => IdentityMatch::Any,
        Some(Pattern::Unauthenticated(_)) => IdentityMatch::Unauthenticated,
        Some(Pattern::Namespace(ns)) => {
            weft_core::model::check_name(ns).map_err(|e| bad(e.to_string()))?;
            IdentityMatch::Namespace(ns.clone())
        }
        Some(Pattern::Account(a)) => {
            weft_core::model::check_name(&a.namespace).map_err(|e| bad(e.to_string()))?;
            weft_core::model::check_name(&a.name).map_err(|e| bad(e.to_string()))?;
            IdentityMatch::Account {
                namespace: a.namespace.clone(),
                name: a.name.clone(),
            }
        }
        Some(Pattern::SpiffeId(id)) => weft_core::Identity::parse_spiffe(id)
            .map(IdentityMatch::Exact)
            .map_err(|e| bad(e.to_string()))?,
    };
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(default: i32, allow: Vec<IdentityPattern>) -> InboundPolicy {
        InboundPolicy {
            default_decision: default,
            allow,
            protocol: 0,
            rate_limit: None,
        }
    }

    #[test]
    fn round_trip() {
        let core = CorePolicy {
            default: CoreDecision::Deny,
            allow: vec![
                "*".parse().unwrap(),
                "demo/*".parse().unwrap(),
                "demo/web".parse().unwrap(),
                "spiffe://weft.test/ns/demo/sa/load".parse().unwrap(),
                "unauthenticated".parse().unwrap(),
            ],
            rate_limit: Some(CoreRateLimit {
                rate: CoreRate {
                    per_second: 0.5,
                    burst: 3,
                },
                per_identity: true,
                overrides: vec![(
                    "jobs/*".parse().unwrap(),
                    CoreRate {
                        per_second: 100.0,
                        burst: 200,
                    },
                )],
            }),
        };
        let back = policy_from_wire(&policy_to_wire(&core, CoreProtocol::Grpc)).unwrap();
        assert_eq!(back, core);
        // A rate a proxy cannot use denies, like any unreadable policy.
        let mut bad = policy_to_wire(&core, CoreProtocol::Grpc);
        if let Some(l) = bad.rate_limit.as_mut() {
            l.rate = Some(Rate {
                per_second: -1.0,
                burst: 1,
            });
        }
        assert_eq!(policy_from_wire(&bad), Err(PolicyError::BadRateLimit));
        for default in [
            CoreDecision::Allow,
            CoreDecision::Deny,
            CoreDecision::AllowUnauthenticated,
            CoreDecision::Audit,
        ] {
            let core = CorePolicy {
                default,
                allow: Vec::new(),
                rate_limit: None,
            };
            let back = policy_from_wire(&policy_to_wire(&core, CoreProtocol::Auto)).unwrap();
            assert_eq!(back, core);
        }
    }

    #[test]
    fn unknown_default_is_refused() {
        for d in [0, 5, 77, -1] {
            assert_eq!(
                policy_from_wire(&wire(d, vec![])),
                Err(PolicyError::UnknownDefault(d))
            );
        }
    }

    #[test]
    fn unreadable_patterns_are_refused() {
        let empty = IdentityPattern { pattern: None };
        assert_eq!(
            policy_from_wire(&wire(Decision::Allow as i32, vec![empty])),
            Err(PolicyError::EmptyPattern(0))
        );
        for bad in [
            Pattern::Namespace("Not-A-Name".into()),
            Pattern::Namespace(String::new()),
            Pattern::SpiffeId("spiffe://weft.test/ns/a".into()),
            Pattern::Account(Account {
                namespace: "demo".into(),
                name: "a/b".into(),
            }),
        ] {
            let p = wire(
                Decision::Allow as i32,
                vec![
                    pattern_to_wire(&IdentityMatch::Any),
                    IdentityPattern {
                        pattern: Some(bad.clone()),
                    },
                ],
            );
            assert!(
                matches!(
                    policy_from_wire(&p),
                    Err(PolicyError::BadPattern { index: 1, .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn endpoints_and_targets_round_trip() {
        let td = weft_core::TrustDomain::new("weft.test").unwrap();
        let e = CoreEndpoint {
            address: "[::1]:8080".parse().unwrap(),
            identity: Some(Identity::new(td, "demo", "api").unwrap()),
            meshed: true,
            workload: Some(WorkloadKey {
                namespace: "demo".into(),
                name: "api-1".into(),
            }),
            state: CoreState::Serving,
        };
        assert_eq!(endpoint_from_wire(&endpoint_to_wire(&e)).unwrap(), e);
        // An unmeshed endpoint's identity is not sent: clients must not expect TLS.
        let plain = CoreEndpoint {
            meshed: false,
            ..e.clone()
        };
        let back = endpoint_from_wire(&endpoint_to_wire(&plain)).unwrap();
        assert!(!back.meshed && back.identity.is_none());
        for t in [
            Target::parse("api.demo:8080", "x").unwrap(),
            Target::parse("api.demo", "x").unwrap(),
            Target::parse("10.0.0.1:80", "x").unwrap(),
        ] {
            assert_eq!(target_from_wire(&target_to_wire(&t)).unwrap(), t);
        }
    }

    #[test]
    fn bad_endpoints_and_targets_are_refused() {
        let mut e = endpoint_to_wire(&CoreEndpoint {
            address: "127.0.0.1:1".parse().unwrap(),
            identity: None,
            meshed: false,
            workload: None,
            state: CoreState::Ready,
        });
        e.identity = "spiffe://weft.test/ns/x".into();
        assert!(matches!(
            endpoint_from_wire(&e),
            Err(WireError::Identity(_))
        ));
        e.identity.clear();
        e.address = "nowhere".into();
        assert!(matches!(endpoint_from_wire(&e), Err(WireError::Address(_))));
        assert_eq!(state_from_wire(0), CoreState::Terminating);
        assert_eq!(state_from_wire(42), CoreState::Terminating);
        assert_eq!(
            target_from_wire(&ResolveRequest::default()),
            Err(WireError::NoTarget)
        );
        let big = ResolveRequest {
            target: Some(WireTarget::Service(ServiceTarget {
                name: "api".into(),
                namespace: "demo".into(),
                port: 70000,
            })),
            capabilities: vec![],
        };
        assert!(target_from_wire(&big).is_err());
    }

    #[test]
    fn unknown_protocols_read_as_detection() {
        assert_eq!(protocol_from_wire(99), CoreProtocol::Auto);
        assert_eq!(
            protocol_from_wire(Protocol::Opaque as i32),
            CoreProtocol::Opaque
        );
    }
}
