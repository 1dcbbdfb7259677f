//! Inbound authorization: which client identities may call a workload.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{Identity, ServiceName, check_name};

/// An authorization outcome, and what a server admits by default.
///
/// As a default, `allow` admits every client with a mesh identity and
/// `allow-unauthenticated` also admits clients outside the mesh (plaintext); `audit` admits
/// what `allow` admits, but the clients a `deny` would refuse come out as `audit`, to be
/// logged and counted: a tightening can be tried without refusing anyone. As an outcome only
/// `allow`, `deny` and `audit` (admitted) occur.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Let the connection through (as a default: any client with a mesh identity).
    #[default]
    Allow,
    /// Refuse it.
    Deny,
    /// As a default: any client, with or without a mesh identity.
    #[serde(rename = "allow-unauthenticated")]
    AllowUnauthenticated,
    /// As a default: what `allow` admits, noting those a `deny` would refuse. As an outcome:
    /// admitted, where `deny` would have refused.
    Audit,
}

impl Decision {
    /// How much a default admits: deny < audit < allow < allow-unauthenticated.
    fn rank(self) -> u8 {
        match self {
            Decision::Deny => 0,
            Decision::Audit => 1,
            Decision::Allow => 2,
            Decision::AllowUnauthenticated => 3,
        }
    }

    /// Whether the client is let through (`allow`, or `audit`).
    pub fn admits(self) -> bool {
        self != Decision::Deny
    }
}

/// Matches clients: `*` (any mesh identity), `<ns>/*`, `<ns>/<name>`, a full SPIFFE ID, or
/// `unauthenticated` (any client at all, including plaintext clients outside the mesh).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IdentityMatch {
    /// Any client, with or without a mesh identity.
    Unauthenticated,
    /// Any authenticated mesh identity.
    Any,
    /// Any identity in a namespace.
    Namespace(String),
    /// One account in a namespace, in any trust domain of the mesh.
    Account {
        /// Namespace.
        namespace: String,
        /// Account name.
        name: String,
    },
    /// Exactly this identity.
    Exact(Identity),
}

/// One rule: clients matching `from` are allowed to reach `service`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationRule {
    /// The service the rule protects.
    pub service: ServiceName,
    /// Who may call it.
    pub from: Vec<IdentityMatch>,
}

/// The inbound policy of one server (a workload's port), as the proxy enforces it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InboundPolicy {
    /// What happens to a client that `allow` does not name.
    pub default: Decision,
    /// Identities allowed whatever `default` says.
    pub allow: Vec<IdentityMatch>,
    /// The rate at which allowed clients' requests are admitted; none: no limit.
    pub rate_limit: Option<super::ratelimit::LocalRateLimit>,
}

/// The error for an identity pattern that cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid identity pattern {0:?}: expected *, <namespace>/*, <namespace>/<name>, a SPIFFE ID or unauthenticated"
)]
pub struct PatternError(pub String);

// === impl IdentityMatch ===

impl IdentityMatch {
    /// Whether `id` matches.
    pub fn matches(&self, id: &Identity) -> bool {
        match self {
            IdentityMatch::Unauthenticated | IdentityMatch::Any => true,
            IdentityMatch::Namespace(ns) => id.namespace() == ns,
            IdentityMatch::Account { namespace, name } => {
                id.namespace() == namespace && id.name() == name
            }
            IdentityMatch::Exact(exact) => exact == id,
        }
    }
}

impl FromStr for IdentityMatch {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PatternError(s.to_string());
        if s == "*" {
            return Ok(IdentityMatch::Any);
        }
        if s == "unauthenticated" {
            return Ok(IdentityMatch::Unauthenticated);
        }
        if s.starts_with("spiffe://") {
            return Identity::parse_spiffe(s)
                .map(IdentityMatch::Exact)
                .map_err(|_| err());
        }
        let (ns, name) = s.split_once('/').ok_or_else(err)?;
        check_name(ns).map_err(|_| err())?;
        if name == "*" {
            return Ok(IdentityMatch::Namespace(ns.to_string()));
        }
        check_name(name).map_err(|_| err())?;
        Ok(IdentityMatch::Account {
            namespace: ns.to_string(),
            name: name.to_string(),
        })
    }
}

impl fmt::Display for IdentityMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityMatch::Unauthenticated => f.write_str("unauthenticated"),
            IdentityMatch::Any => f.write_str("*"),
            IdentityMatch::Namespace(ns) => write!(f, "{ns}/*"),
            IdentityMatch::Account { namespace, name } => write!(f, "{namespace}/{name}"),
            IdentityMatch::Exact(id) => write!(f, "{id}"),
        }
    }
}

// === impl InboundPolicy ===

impl InboundPolicy {
    /// The policy of a server that backs `services`, from the mesh-wide default and the rules.
    ///
    /// A service that rules name admits only the clients they list; one that no rule names
    /// admits what the mesh default admits. A server backing several services admits a client
    /// that any of them admits: it cannot tell which service the client meant. A server that
    /// backs no known service gets the mesh default.
    pub fn for_server<'a>(
        default: Decision,
        rules: &[AuthorizationRule],
        services: impl IntoIterator<Item = &'a ServiceName>,
    ) -> Self {
        let mut any = false;
        // Under audit, what a rule's allow list does not name is audited, not refused.
        let floor = if default == Decision::Audit {
            Decision::Audit
        } else {
            Decision::Deny
        };
        let mut policy = Self {
            default: floor,
            allow: Vec::new(),
            rate_limit: None,
        };
        for service in services {
            any = true;
            let mut named = false;
            for m in rules
                .iter()
                .filter(|r| &r.service == service)
                .flat_map(|r| r.from.iter())
            {
                named = true;
                if !policy.allow.contains(m) {
                    policy.allow.push(m.clone());
                }
            }
            if !named && default.rank() > policy.default.rank() {
                policy.default = default;
            }
        }
        if !any {
            policy.default = default;
        }
        policy
    }

    /// The policy of a server that backs only `service`.
    pub fn for_service(
        default: Decision,
        rules: &[AuthorizationRule],
        service: &ServiceName,
    ) -> Self {
        Self::for_server(default, rules, [service])
    }

    /// Decides on a client that proved `client` over mutual TLS.
    pub fn authorize(&self, client: &Identity) -> Decision {
        let named = || self.allow.iter().any(|m| m.matches(client));
        match self.default {
            Decision::Deny if !named() => Decision::Deny,
            Decision::Audit if !named() => Decision::Audit,
            _ => Decision::Allow,
        }
    }

    /// Decides on a client without a mesh identity (plaintext, from outside the mesh).
    pub fn authorize_unauthenticated(&self) -> Decision {
        let open = self.default == Decision::AllowUnauthenticated
            || self.allow.contains(&IdentityMatch::Unauthenticated);
        if open {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TrustDomain;

    fn id(ns: &str, name: &str) -> Identity {
        Identity::new(TrustDomain::new("weft.test").unwrap(), ns, name).unwrap()
    }

    /// Audit admits what allow admits, and names those deny would refuse; plaintext clients
    /// stay out as under allow.
    #[test]
    fn audit_admits_and_names_what_deny_would_refuse() {
        let p = InboundPolicy {
            default: Decision::Audit,
            allow: vec!["shop/*".parse().unwrap()],
            rate_limit: None,
        };
        assert_eq!(p.authorize(&id("shop", "web")), Decision::Allow);
        assert_eq!(p.authorize(&id("jobs", "batch")), Decision::Audit);
        assert!(Decision::Audit.admits() && !Decision::Deny.admits());
        assert_eq!(p.authorize_unauthenticated(), Decision::Deny);
        let d: Decision = serde_json::from_value(serde_json::json!("audit")).unwrap();
        assert_eq!(d, Decision::Audit);
        // As the mesh's default, a service a rule names audits the rest of the clients.
        let web = ServiceName::new("shop", "web").unwrap();
        let rules = [AuthorizationRule {
            service: web.clone(),
            from: vec!["shop/*".parse().unwrap()],
        }];
        let p = InboundPolicy::for_service(Decision::Audit, &rules, &web);
        assert_eq!(p.authorize(&id("jobs", "batch")), Decision::Audit);
        assert_eq!(p.authorize(&id("shop", "api")), Decision::Allow);
    }

    #[test]
    fn patterns() {
        let web = id("demo", "web");
        assert!("*".parse::<IdentityMatch>().unwrap().matches(&web));
        assert!("demo/*".parse::<IdentityMatch>().unwrap().matches(&web));
        assert!(!"prod/*".parse::<IdentityMatch>().unwrap().matches(&web));
        assert!("demo/web".parse::<IdentityMatch>().unwrap().matches(&web));
        assert!(!"demo/api".parse::<IdentityMatch>().unwrap().matches(&web));
        let exact: IdentityMatch = "spiffe://weft.test/ns/demo/sa/web".parse().unwrap();
        assert!(exact.matches(&web));
        assert!(!exact.matches(&id("demo", "webx")));
        let anyone: IdentityMatch = "unauthenticated".parse().unwrap();
        assert!(anyone.matches(&web));
        assert_eq!(anyone.to_string(), "unauthenticated");
        for bad in [
            "",
            "demo",
            "demo/",
            "/web",
            "spiffe://x",
            "Demo/web",
            "Unauthenticated",
        ] {
            assert!(bad.parse::<IdentityMatch>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rules_narrow_the_default() {
        let api = ServiceName::new("demo", "api").unwrap();
        let other = ServiceName::new("demo", "other").unwrap();
        let rules = vec![AuthorizationRule {
            service: api.clone(),
            from: vec!["demo/web".parse().unwrap()],
        }];
        let p = InboundPolicy::for_service(Decision::Allow, &rules, &api);
        assert_eq!(p.authorize(&id("demo", "web")), Decision::Allow);
        assert_eq!(p.authorize(&id("demo", "load")), Decision::Deny);
        let p = InboundPolicy::for_service(Decision::Allow, &rules, &other);
        assert_eq!(p.authorize(&id("demo", "load")), Decision::Allow);
        let p = InboundPolicy::for_service(Decision::Deny, &rules, &other);
        assert_eq!(p.authorize(&id("demo", "web")), Decision::Deny);
        // Under a deny default, the rule still admits whom it names.
        let p = InboundPolicy::for_service(Decision::Deny, &rules, &api);
        assert_eq!(p.authorize(&id("demo", "web")), Decision::Allow);
        // A server without a known service gets the mesh default.
        let none: [&ServiceName; 0] = [];
        let p = InboundPolicy::for_server(Decision::Deny, &rules, none);
        assert_eq!(p.authorize(&id("demo", "web")), Decision::Deny);
    }

    #[test]
    fn a_server_backing_several_services_admits_what_any_of_them_admits() {
        let api = ServiceName::new("demo", "api").unwrap();
        let admin = ServiceName::new("demo", "admin").unwrap();
        let open = ServiceName::new("demo", "open").unwrap();
        let rules = vec![
            AuthorizationRule {
                service: api.clone(),
                from: vec!["demo/web".parse().unwrap()],
            },
            AuthorizationRule {
                service: admin.clone(),
                from: vec!["ops/*".parse().unwrap()],
            },
        ];
        let p = InboundPolicy::for_server(Decision::Allow, &rules, [&api, &admin]);
        assert_eq!(p.authorize(&id("demo", "web")), Decision::Allow);
        assert_eq!(p.authorize(&id("ops", "x")), Decision::Allow);
        assert_eq!(p.authorize(&id("demo", "load")), Decision::Deny);
        // With a service that no rule restricts, the default applies to the rest.
        let p = InboundPolicy::for_server(Decision::Allow, &rules, [&api, &open]);
        assert_eq!(p.authorize(&id("demo", "load")), Decision::Allow);
        let p = InboundPolicy::for_server(Decision::Deny, &rules, [&api, &open]);
        assert_eq!(p.authorize(&id("demo", "load")), Decision::Deny);
    }

    #[test]
    fn only_what_says_so_admits_clients_without_an_identity() {
        let api = ServiceName::new("demo", "api").unwrap();
        let open = ServiceName::new("demo", "open").unwrap();
        let rules = vec![
            AuthorizationRule {
                service: api.clone(),
                from: vec!["demo/web".parse().unwrap()],
            },
            AuthorizationRule {
                service: open.clone(),
                from: vec!["unauthenticated".parse().unwrap()],
            },
        ];
        let other = ServiceName::new("demo", "other").unwrap();
        // The defaults: only allow-unauthenticated admits plaintext, and it admits every
        // mesh identity too.
        for (default, plaintext, mesh) in [
            (Decision::Deny, Decision::Deny, Decision::Deny),
            (Decision::Allow, Decision::Deny, Decision::Allow),
            (
                Decision::AllowUnauthenticated,
                Decision::Allow,
                Decision::Allow,
            ),
        ] {
            let p = InboundPolicy::for_service(default, &rules, &other);
            assert_eq!(p.authorize_unauthenticated(), plaintext, "{default:?}");
            assert_eq!(p.authorize(&id("demo", "x")), mesh, "{default:?}");
        }
        // A rule narrows allow-unauthenticated like any default.
        let p = InboundPolicy::for_service(Decision::AllowUnauthenticated, &rules, &api);
        assert_eq!(p.authorize_unauthenticated(), Decision::Deny);
        assert_eq!(p.authorize(&id("demo", "load")), Decision::Deny);
        assert_eq!(p.authorize(&id("demo", "web")), Decision::Allow);
        // A rule that names `unauthenticated` opens its service under a deny default.
        let p = InboundPolicy::for_service(Decision::Deny, &rules, &open);
        assert_eq!(p.authorize_unauthenticated(), Decision::Allow);
        assert_eq!(p.authorize(&id("prod", "x")), Decision::Allow);
        // A server of both admits what either admits.
        let p = InboundPolicy::for_server(Decision::Deny, &rules, [&api, &open]);
        assert_eq!(p.authorize_unauthenticated(), Decision::Allow);
    }
}
