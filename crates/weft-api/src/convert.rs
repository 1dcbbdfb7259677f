//! Conversions between the core's policy and model types and their wire form.
//!
//! Core to wire cannot fail. Wire to core is strict: whatever does not parse is an error, never a
//! default, because these messages carry security decisions and a policy that is silently
//! widened is worse than one that is refused.

use weft_core::Protocol as CoreProtocol;
use weft_core::policy::{Decision as CoreDecision, IdentityMatch, InboundPolicy as CorePolicy};

use crate::v1::identity_pattern::{Account, AnyIdentity, Pattern};
use crate::v1::{Decision, IdentityPattern, InboundPolicy, Protocol};

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
}

// === core -> wire ===

/// The wire form of a decision.
pub fn decision_to_wire(d: CoreDecision) -> Decision {
    match d {
        CoreDecision::Allow => Decision::Allow,
        CoreDecision::Deny => Decision::Deny,
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
    }
}

// === wire -> core ===

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
        Ok(Decision::Unspecified) | Err(_) => {
            return Err(PolicyError::UnknownDefault(p.default_decision));
        }
    };
    let mut allow = Vec::with_capacity(p.allow.len());
    for (index, entry) in p.allow.iter().enumerate() {
        let bad = |reason: String| PolicyError::BadPattern { index, reason };
        let m = match &entry.pattern {
            None => return Err(PolicyError::EmptyPattern(index)),
            Some(Pattern::Any(_)) => IdentityMatch::Any,
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
        allow.push(m);
    }
    Ok(CorePolicy { default, allow })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(default: i32, allow: Vec<IdentityPattern>) -> InboundPolicy {
        InboundPolicy {
            default_decision: default,
            allow,
            protocol: 0,
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
            ],
        };
        let back = policy_from_wire(&policy_to_wire(&core, CoreProtocol::Grpc)).unwrap();
        assert_eq!(back, core);
    }

    #[test]
    fn unknown_default_is_refused() {
        for d in [0, 3, 77, -1] {
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
    fn unknown_protocols_read_as_detection() {
        assert_eq!(protocol_from_wire(99), CoreProtocol::Auto);
        assert_eq!(
            protocol_from_wire(Protocol::Opaque as i32),
            CoreProtocol::Opaque
        );
    }
}
