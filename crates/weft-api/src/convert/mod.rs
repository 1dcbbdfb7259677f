//! Conversions between the core's policy and model types and their wire form.
//!
//! Core to wire cannot fail. Wire to core is strict: whatever does not parse is an error, never a
//! default, because these messages carry security decisions and a policy that is silently
//! widened is worse than one that is refused.

pub mod route;

use std::net::SocketAddr;

use std::sync::Arc;
use weft_core::policy::ratelimit::{LocalRateLimit as CoreRateLimit, Rate as CoreRate};

use weft_core::policy::authz::{
    Action, AuthorizationRule as CoreRule, RequestMatch as CoreRequestMatch,
};
use weft_core::policy::route::RouteSource;
use weft_core::policy::{Decision as CoreDecision, IdentityMatch, InboundPolicy as CorePolicy};
use weft_core::{
    Endpoint as CoreEndpoint, EndpointState as CoreState, Identity, Protocol as CoreProtocol,
    ServiceName, Target, WorkloadKey,
};

use crate::v1::identity_pattern::{Account, AnyIdentity, Pattern, Unauthenticated};
use crate::v1::resolve_request::Target as WireTarget;
use crate::v1::{
    AuthorizationRule, Decision, Endpoint, EndpointState, IdentityPattern, InboundPolicy,
    LocalRateLimit, Protocol, Rate, RateOverride, RequestMatch, ResolveRequest, RuleAction,
    ServiceTarget,
};

/// Why a policy from the control plane cannot be used.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The default decision is unset or a value this build does not know.
    #[error("unknown default decision {0}")]
    UnknownDefault(i32),
    /// An identity pattern has no case set (a newer control plane may use a case this proxy
    /// does not know).
    #[error("{at} has no pattern this proxy understands")]
    EmptyPattern {
        /// Where: `rules[2].from[0]`.
        at: String,
    },
    /// An identity pattern names an invalid namespace, account or SPIFFE ID.
    #[error("{at}: {reason}")]
    BadPattern {
        /// Where.
        at: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A rule without a name, without clients, with an unknown action, or with a match this
    /// proxy cannot read.
    #[error("{at}: {reason}")]
    BadRule {
        /// Where.
        at: String,
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
        IdentityMatch::TrustDomain(td) => Pattern::TrustDomain(td.to_string()),
    };
    IdentityPattern {
        pattern: Some(pattern),
    }
}

/// The wire form of an inbound policy for a port of `protocol`.
pub fn policy_to_wire(p: &CorePolicy, protocol: CoreProtocol) -> InboundPolicy {
    InboundPolicy {
        default_decision: decision_to_wire(p.default) as i32,
        protocol: protocol_to_wire(protocol) as i32,
        rate_limits: p.rate_limits.iter().map(rate_limit_to_wire).collect(),
        rules: p.rules.iter().map(|r| rule_to_wire(r)).collect(),
    }
}

/// The wire form of an authorization rule.
pub fn rule_to_wire(r: &CoreRule) -> AuthorizationRule {
    AuthorizationRule {
        name: r.name.clone(),
        service_namespace: r.service.namespace.clone(),
        service_name: r.service.name.clone(),
        action: match r.action {
            Action::Allow => RuleAction::Allow,
            Action::Deny => RuleAction::Deny,
        } as i32,
        audit: r.audit,
        from: r.from.iter().map(pattern_to_wire).collect(),
        to: matches_to_wire(&r.to),
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
    let mut rules = Vec::with_capacity(p.rules.len());
    for (index, r) in p.rules.iter().enumerate() {
        rules.push(Arc::new(rule_from_wire(&format!("rules[{index}]"), r)?));
    }
    let mut rate_limits = Vec::with_capacity(p.rate_limits.len());
    for (index, l) in p.rate_limits.iter().enumerate() {
        rate_limits.push(rate_limit_from_wire(&format!("rate_limits[{index}]"), l)?);
    }
    Ok(CorePolicy {
        default,
        rules,
        rate_limits,
    })
}

/// Reads the request matches of a rule or a limit found `at`.
fn matches_from_wire(
    at: &str,
    list: &[RequestMatch],
) -> Result<Vec<CoreRequestMatch>, PolicyError> {
    let mut to = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = format!("{at}.to[{i}]");
        let wire = |e: route::RouteWireError| PolicyError::BadRule {
            at: at.clone(),
            reason: e.to_string(),
        };
        to.push(CoreRequestMatch {
            port: None,
            http: m
                .http
                .as_ref()
                .map(|h| route::http_match_from_wire(&at, h))
                .transpose()
                .map_err(wire)?,
            grpc: m
                .grpc
                .as_ref()
                .map(|g| route::grpc_match_from_wire(&at, g))
                .transpose()
                .map_err(wire)?,
        });
    }
    Ok(to)
}

fn matches_to_wire(list: &[CoreRequestMatch]) -> Vec<RequestMatch> {
    list.iter()
        .map(|m| RequestMatch {
            http: m.http.as_ref().map(route::http_match_to_wire),
            grpc: m.grpc.as_ref().map(route::grpc_match_to_wire),
        })
        .collect()
}

/// Reads one authorization rule found `at`.
fn rule_from_wire(at: &str, r: &AuthorizationRule) -> Result<CoreRule, PolicyError> {
    let bad = |reason: &str| PolicyError::BadRule {
        at: at.to_string(),
        reason: reason.to_string(),
    };
    let action = match RuleAction::try_from(r.action) {
        Ok(RuleAction::Allow) => Action::Allow,
        Ok(RuleAction::Deny) => Action::Deny,
        Ok(RuleAction::Unspecified) | Err(_) => {
            return Err(bad("an action this proxy does not know"));
        }
    };
    if r.name.is_empty() {
        return Err(bad("no name"));
    }
    if r.from.is_empty() {
        return Err(bad("no clients"));
    }
    let from = r
        .from
        .iter()
        .enumerate()
        .map(|(i, p)| pattern_from_wire(&format!("{at}.from[{i}]"), p))
        .collect::<Result<_, _>>()?;
    let to = matches_from_wire(at, &r.to)?;
    let service = weft_core::ServiceName::new(&r.service_namespace, &r.service_name)
        .map_err(|_| bad("no service"))?;
    Ok(CoreRule {
        name: r.name.clone(),
        source: RouteSource::ControlPlane,
        service,
        action,
        audit: r.audit,
        from,
        to,
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

fn rate_limit_from_wire(at: &str, l: &LocalRateLimit) -> Result<CoreRateLimit, PolicyError> {
    let mut overrides = Vec::with_capacity(l.overrides.len());
    for (index, o) in l.overrides.iter().enumerate() {
        let clients = o.clients.as_ref().ok_or(PolicyError::BadRateLimit)?;
        overrides.push((
            pattern_from_wire(&format!("{at}.overrides[{index}]"), clients)?,
            rate_from_wire(o.rate.as_ref())?,
        ));
    }
    Ok(CoreRateLimit {
        rate: rate_from_wire(l.rate.as_ref())?,
        per_identity: l.per_identity,
        overrides,
        to: matches_from_wire(at, &l.to)?,
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
        to: matches_to_wire(&l.to),
    }
}

/// Reads one identity pattern, found `at`.
fn pattern_from_wire(at: &str, entry: &IdentityPattern) -> Result<IdentityMatch, PolicyError> {
    let bad = |reason: String| PolicyError::BadPattern {
        at: at.to_string(),
        reason,
    };
    let m = match &entry.pattern {
        None => {
            return Err(PolicyError::EmptyPattern { at: at.to_string() });
        }
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
        Some(Pattern::TrustDomain(td)) => weft_core::TrustDomain::new(td.as_str())
            .map(IdentityMatch::TrustDomain)
            .map_err(|e| bad(e.to_string()))?,
    };
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy whose one allow rule names `from`.
    fn wire(default: i32, from: Vec<IdentityPattern>) -> InboundPolicy {
        let mut rule = rule_to_wire(&CoreRule::allow(
            ServiceName::new("demo", "api").unwrap(),
            vec![IdentityMatch::Any],
        ));
        rule.from = from;
        InboundPolicy {
            default_decision: default,
            protocol: 0,
            rate_limits: Vec::new(),
            rules: vec![rule],
        }
    }

    fn core_rules() -> Vec<Arc<CoreRule>> {
        use weft_core::policy::route::{GrpcMatch, HttpMatch, PathMatch, ValueMatch};
        let api = ServiceName::new("demo", "api").unwrap();
        let mut deny = CoreRule::allow(api.clone(), vec!["unauthenticated".parse().unwrap()]);
        deny.name = "demo/no-admin".into();
        deny.action = Action::Deny;
        deny.audit = true;
        deny.to = vec![
            CoreRequestMatch {
                http: Some(HttpMatch {
                    path: Some(PathMatch::prefix("/admin")),
                    method: Some("POST".into()),
                    ..HttpMatch::default()
                }),
                ..CoreRequestMatch::default()
            },
            CoreRequestMatch {
                grpc: Some(GrpcMatch {
                    service: Some(ValueMatch::Exact("demo.Admin".into())),
                    ..GrpcMatch::default()
                }),
                ..CoreRequestMatch::default()
            },
        ];
        vec![
            Arc::new(CoreRule::allow(
                api,
                vec![
                    "*".parse().unwrap(),
                    "demo/*".parse().unwrap(),
                    "demo/web".parse().unwrap(),
                    "spiffe://weft.test/ns/demo/sa/load".parse().unwrap(),
                    "spiffe://weft.test/*".parse().unwrap(),
                    "unauthenticated".parse().unwrap(),
                ],
            )),
            Arc::new(deny),
        ]
    }

    #[test]
    fn round_trip() {
        let core = CorePolicy {
            default: CoreDecision::Deny,
            rules: core_rules(),
            rate_limits: vec![CoreRateLimit {
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
                to: core_rules()[1].to.clone(),
            }],
        };
        let back = policy_from_wire(&policy_to_wire(&core, CoreProtocol::Grpc)).unwrap();
        assert_eq!(back, core);
        // A rate a proxy cannot use denies, like any unreadable policy.
        let mut bad = policy_to_wire(&core, CoreProtocol::Grpc);
        if let Some(l) = bad.rate_limits.first_mut() {
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
                rules: Vec::new(),
                rate_limits: Vec::new(),
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

    /// A rule the proxy cannot fully read makes the whole policy unusable.
    #[test]
    fn unreadable_rules_are_refused() {
        let good = || {
            policy_to_wire(
                &CorePolicy {
                    default: CoreDecision::Allow,
                    rules: core_rules(),
                    rate_limits: Vec::new(),
                },
                CoreProtocol::Auto,
            )
        };
        type Break = fn(&mut AuthorizationRule);
        let breaks: [(&str, Break); 6] = [
            ("unknown action", |r| r.action = 9),
            ("no action", |r| r.action = 0),
            ("no clients", |r| r.from.clear()),
            ("no name", |r| r.name.clear()),
            ("no service", |r| r.service_name.clear()),
            ("bad match", |r| {
                if let Some(h) = r.to[0].http.as_mut() {
                    h.method = "get".into();
                }
            }),
        ];
        for (what, f) in breaks {
            let mut p = good();
            f(&mut p.rules[1]);
            assert!(
                matches!(policy_from_wire(&p), Err(PolicyError::BadRule { .. })),
                "{what} accepted"
            );
        }
    }

    #[test]
    fn unreadable_patterns_are_refused() {
        let empty = IdentityPattern { pattern: None };
        assert_eq!(
            policy_from_wire(&wire(Decision::Allow as i32, vec![empty])),
            Err(PolicyError::EmptyPattern {
                at: "rules[0].from[0]".into()
            })
        );
        for bad in [
            Pattern::Namespace("Not-A-Name".into()),
            Pattern::Namespace(String::new()),
            Pattern::SpiffeId("spiffe://weft.test/ns/a".into()),
            Pattern::TrustDomain("Bad Domain".into()),
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
                    Err(PolicyError::BadPattern { ref at, .. }) if at == "rules[0].from[1]"
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
