//! Weft's own policy kinds (`weft.dev/v1alpha1`), for what Gateway API lacks:
//! `AuthorizationPolicy` (allow and deny rules per Service), `RateLimitPolicy` (a Service's
//! inbound rate limits) and `BackendPolicy` (what callers apply to every call to a Service:
//! retry budget, failure accrual, concurrency limit). (`RoutePolicy`, which adds rule keys to
//! a Gateway API route, is translated with the routes: [`crate::routes`].)
//!
//! The adapter watches both kinds when the API server serves the group (the chart installs
//! their CRDs). Their specs are read with the same serde types as the mesh file's
//! `[[policy.authorizations]]`, `[[policy.rate_limits]]` and `[[policy.backends]]` entries
//! ([`weft_core::policy::authz_spec`], [`weft_core::policy::ratelimit`],
//! [`weft_core::policy::backend`]), so they read the same, key for key; a Service without a namespace is in the object's. A rule is named after
//! its object (`namespace/name`), which is its label in the proxies' metrics.
//!
//! Each object's `status.conditions` holds one `Accepted` condition: `True`/`Accepted`, or
//! `False`/`Invalid` with the key at fault (the object's last good version stays in force),
//! or, for a second `RateLimitPolicy` of one Service for every request (without `to`) or a
//! second `BackendPolicy` of one Service, `False`/`Conflicted` naming the older object that
//! sets it. A status is written only when it changes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weft_core::policy::authz::AuthorizationRule;
use weft_core::policy::authz_spec::AuthorizationSpec;
use weft_core::policy::backend::{BackendPolicySpec, BackendRule};
use weft_core::policy::ratelimit::{RateLimitRule, RateLimitSpec};
use weft_core::policy::route::RouteSource;
use weft_core::policy::traffic::SourcePolicies;

use crate::cluster::Key;
use crate::routes::{RouteInfo, StatusOf, custom_object};

/// The API group of Weft's kinds.
pub const GROUP: &str = "weft.dev";
/// Their version.
pub const VERSION: &str = "v1alpha1";

custom_object!(
    AuthorizationPolicyObject,
    "AuthorizationPolicy",
    "authorizationpolicies",
    GROUP,
    VERSION,
    "weft.dev/v1alpha1"
);
custom_object!(
    BackendPolicyObject,
    "BackendPolicy",
    "backendpolicies",
    GROUP,
    VERSION,
    "weft.dev/v1alpha1"
);
custom_object!(
    RoutePolicyObject,
    "RoutePolicy",
    "routepolicies",
    GROUP,
    VERSION,
    "weft.dev/v1alpha1"
);
custom_object!(
    RateLimitPolicyObject,
    "RateLimitPolicy",
    "ratelimitpolicies",
    GROUP,
    VERSION,
    "weft.dev/v1alpha1"
);

/// Which policy kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum PolicyKind {
    Authorization,
    RateLimit,
    Backend,
}

impl PolicyKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Authorization => "AuthorizationPolicy",
            PolicyKind::RateLimit => "RateLimitPolicy",
            PolicyKind::Backend => "BackendPolicy",
        }
    }
}

/// A status to write on one policy object: `{"conditions": [...]}`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PolicyStatus {
    pub kind: PolicyKind,
    pub key: Key,
    pub status: Value,
}

/// Every policy object the adapter knows, the last good translation of each, and what was
/// last written to each one's status.
#[derive(Debug, Default)]
pub(crate) struct PolicyStore {
    objects: BTreeMap<(PolicyKind, Key), RouteInfo>,
    last_good_authz: HashMap<Key, AuthorizationRule>,
    last_good_limits: HashMap<Key, RateLimitRule>,
    last_good_backends: HashMap<Key, BackendRule>,
    written: HashMap<(PolicyKind, Key), Value>,
    /// Something changed since the last translation.
    pub dirty: bool,
}

impl PolicyStore {
    pub(crate) fn apply(&mut self, kind: PolicyKind, key: Key, info: RouteInfo) {
        if self.objects.get(&(kind, key.clone())) != Some(&info) {
            self.objects.insert((kind, key), info);
            self.dirty = true;
        }
    }

    pub(crate) fn delete(&mut self, kind: PolicyKind, key: &Key) {
        if self.objects.remove(&(kind, key.clone())).is_some() {
            self.dirty = true;
        }
        match kind {
            PolicyKind::Authorization => {
                self.last_good_authz.remove(key);
            }
            PolicyKind::RateLimit => {
                self.last_good_limits.remove(key);
            }
            PolicyKind::Backend => {
                self.last_good_backends.remove(key);
            }
        }
        self.written.remove(&(kind, key.clone()));
    }

    pub(crate) fn keys(&self, kind: PolicyKind) -> Vec<Key> {
        self.objects
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, key)| key.clone())
            .collect()
    }

    /// The policies to serve and the statuses to write.
    pub(crate) fn translate(&mut self) -> (SourcePolicies, Vec<PolicyStatus>) {
        self.dirty = false;
        let mut order: Vec<(&(PolicyKind, Key), &RouteInfo)> = self.objects.iter().collect();
        // Oldest first, then by namespace and name: the older of two rate limits wins.
        order.sort_by(|(a, ai), (b, bi)| (&ai.created, &a.1).cmp(&(&bi.created, &b.1)));
        let mut out = SourcePolicies::default();
        let mut statuses = Vec::new();
        let mut good_authz = HashMap::new();
        let mut good_limits = HashMap::new();
        let mut limited: HashMap<weft_core::ServiceName, String> = HashMap::new();
        let mut good_backends = HashMap::new();
        let mut backed: HashMap<weft_core::ServiceName, String> = HashMap::new();
        for ((kind, key), info) in order {
            let (ns, name) = key;
            let source = RouteSource::Object {
                kind: kind.as_str().to_string(),
                namespace: ns.clone(),
                name: name.clone(),
            };
            let label = format!("{ns}/{name}");
            let spec = || info.spec.clone();
            let located = |e: weft_core::policy::route_spec::RouteSpecError| format!("spec.{e}");
            let accepted = match kind {
                PolicyKind::Authorization => {
                    let compiled = parse::<AuthorizationSpec>(spec())
                        .and_then(|s| s.compile(label.clone(), source, ns).map_err(located));
                    let (serve, result) = or_last_good(compiled, &self.last_good_authz, key);
                    if let Some(rule) = serve {
                        good_authz.insert(key.clone(), rule.clone());
                        out.authorizations.push(rule);
                    }
                    result
                }
                PolicyKind::RateLimit => {
                    let compiled = parse::<RateLimitSpec>(spec())
                        .and_then(|s| s.compile(source, ns).map_err(located));
                    match or_last_good(compiled, &self.last_good_limits, key) {
                        (Some(rule), result) => {
                            // Limits of some requests (`to`) add up; one for every request is
                            // the Service's alone.
                            let whole = rule.limit.to.is_empty();
                            let claimed = if whole {
                                claim(
                                    &mut limited,
                                    &rule.service,
                                    &label,
                                    "rate limit",
                                    "RateLimitPolicy",
                                )
                            } else {
                                Ok(())
                            };
                            claimed.and_then(|()| {
                                good_limits.insert(key.clone(), rule.clone());
                                out.rate_limits.push(rule);
                                result
                            })
                        }
                        (None, result) => result,
                    }
                }
                PolicyKind::Backend => {
                    let compiled = parse::<BackendPolicySpec>(spec())
                        .and_then(|s| s.compile(source, ns).map_err(located));
                    match or_last_good(compiled, &self.last_good_backends, key) {
                        (Some(rule), result) => claim(
                            &mut backed,
                            &rule.service,
                            &label,
                            "backend policy",
                            "BackendPolicy",
                        )
                        .and_then(|()| {
                            good_backends.insert(key.clone(), rule.clone());
                            out.backends.push(rule);
                            result
                        }),
                        (None, result) => result,
                    }
                }
            };
            let status = accepted_status(info.generation, &accepted);
            if self.written.get(&(*kind, key.clone())) != Some(&status) {
                self.written.insert((*kind, key.clone()), status.clone());
                statuses.push(PolicyStatus {
                    kind: *kind,
                    key: key.clone(),
                    status,
                });
            }
        }
        self.last_good_authz = good_authz;
        self.last_good_limits = good_limits;
        self.last_good_backends = good_backends;
        (out, statuses)
    }
}

/// Why an object is not (wholly) in force: a reason and a message.
type Refusal = (&'static str, String);

/// Reads a spec.
fn parse<S: serde::de::DeserializeOwned>(spec: Value) -> Result<S, String> {
    serde_json::from_value(spec).map_err(|e| format!("spec: {e}"))
}

/// What to serve of an object: its translation, or, when it cannot be translated, its last
/// good one (with why the new one is refused).
fn or_last_good<R: Clone>(
    compiled: Result<R, String>,
    last_good: &HashMap<Key, R>,
    key: &Key,
) -> (Option<R>, Result<(), Refusal>) {
    match compiled {
        Ok(rule) => (Some(rule), Ok(())),
        Err(why) => (last_good.get(key).cloned(), Err(("Invalid", why))),
    }
}

/// Takes `service`'s one `what` for the object `label` of `kind`, unless an older object
/// holds it.
fn claim(
    claims: &mut HashMap<weft_core::ServiceName, String>,
    service: &weft_core::ServiceName,
    label: &str,
    what: &str,
    kind: &str,
) -> Result<(), Refusal> {
    if let Some(older) = claims.get(service) {
        return Err((
            "Conflicted",
            format!("the {what} of {service} is set by the older {kind} {older}"),
        ));
    }
    claims.insert(service.clone(), label.to_string());
    Ok(())
}

/// An object's `status`: its one `Accepted` condition (shared with `RoutePolicy`).
pub(crate) fn accepted_status(generation: i64, accepted: &Result<(), Refusal>) -> Value {
    let (ok, reason, message) = match accepted {
        Ok(()) => (true, "Accepted", "in force".to_string()),
        Err((reason, why)) => (false, *reason, why.clone()),
    };
    json!({
        "conditions": [{
            "type": "Accepted",
            "status": if ok { "True" } else { "False" },
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        ("shop".into(), name.into())
    }

    fn info(created: &str, generation: i64, spec: Value) -> RouteInfo {
        RouteInfo {
            created: created.into(),
            generation,
            spec,
        }
    }

    fn condition(statuses: &[PolicyStatus], name: &str) -> (String, String) {
        let s = statuses.iter().find(|s| s.key.1 == name).unwrap();
        let c = &s.status["conditions"][0];
        (
            c["status"].as_str().unwrap().to_string(),
            c["reason"].as_str().unwrap().to_string(),
        )
    }

    /// Specs read as the mesh file's entries, in the object's namespace; an invalid edit
    /// keeps the last good version in force and says why; the older of two rate limits of a
    /// Service wins.
    #[test]
    fn objects_become_policies_with_statuses() {
        let mut store = PolicyStore::default();
        store.apply(
            PolicyKind::Authorization,
            key("no-admin"),
            info(
                "2026-01-01T00:00:00Z",
                1,
                json!({"service": "api", "action": "deny",
                       "to": [{"path": {"type": "PathPrefix", "value": "/admin"}}]}),
            ),
        );
        store.apply(
            PolicyKind::RateLimit,
            key("api-limit"),
            info(
                "2026-01-01T00:00:00Z",
                1,
                json!({"service": "api", "requestsPerSecond": 5, "perIdentity": true}),
            ),
        );
        store.apply(
            PolicyKind::RateLimit,
            key("api-limit-2"),
            info(
                "2026-01-02T00:00:00Z",
                1,
                json!({"service": "api.shop", "requestsPerSecond": 9}),
            ),
        );
        let (out, statuses) = store.translate();
        assert_eq!(out.authorizations.len(), 1);
        let rule = &out.authorizations[0];
        assert_eq!(rule.name, "shop/no-admin");
        assert_eq!(rule.service.to_string(), "api.shop");
        assert_eq!(rule.source.to_string(), "AuthorizationPolicy shop/no-admin");
        assert_eq!(out.rate_limits.len(), 1);
        assert!(out.rate_limits[0].limit.per_identity);
        assert_eq!(
            condition(&statuses, "no-admin"),
            ("True".into(), "Accepted".into())
        );
        assert_eq!(
            condition(&statuses, "api-limit-2"),
            ("False".into(), "Conflicted".into())
        );

        // An invalid edit: the last good rule stays, the status says which key is wrong.
        store.apply(
            PolicyKind::Authorization,
            key("no-admin"),
            info(
                "2026-01-01T00:00:00Z",
                2,
                json!({"service": "api", "action": "maybe"}),
            ),
        );
        let (out, statuses) = store.translate();
        assert_eq!(out.authorizations.len(), 1, "the last good version stays");
        let s = statuses.iter().find(|s| s.key.1 == "no-admin").unwrap();
        let c = &s.status["conditions"][0];
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("False"), Some("Invalid"))
        );
        assert!(c["message"].as_str().unwrap().contains("spec"), "{c}");
        assert_eq!(c["observedGeneration"], 2);
        // Unchanged: nothing to write.
        store.dirty = true;
        let (_, statuses) = store.translate();
        assert!(statuses.is_empty());
        store.delete(PolicyKind::Authorization, &key("no-admin"));
        let (out, _) = store.translate();
        assert!(out.authorizations.is_empty());
    }
}
