//! What Weft adds to a Gateway API route on Kubernetes, where `HTTPRoute` and `GRPCRoute`
//! have no field for it: a `RoutePolicy` (`weft.dev/v1alpha1`) names a route (and one rule of
//! it by name, or all of them) and gives the rule keys the mesh file's routes have beside
//! Gateway API's: `timeouts` (which `GRPCRoute` lacks), `retry` (with Weft's gRPC
//! `conditions` and `idempotent`), `fault` and `limits`, read by the mesh file's own serde
//! types ([`super::route_spec`]). A key the policy gives replaces the rule's.

use serde::Deserialize;

use super::fault::FaultInjection;
use super::resilience::{ConcurrencyLimit, RetryPolicy, Timeouts};
use super::route::{GrpcRoute, GrpcRule, HttpRoute, HttpRule};
use super::route_spec::{
    FaultSpec, LimitsSpec, RetrySpec, RouteSpecError, TimeoutsSpec, err, limits,
};

/// The route a policy applies to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRefSpec {
    /// `gateway.networking.k8s.io` (the default).
    #[serde(default)]
    pub group: Option<String>,
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: String,
    /// The route's name, in the policy's namespace.
    pub name: String,
    /// One rule of it, by its `name`; absent: every rule.
    #[serde(default, alias = "sectionName")]
    pub section_name: Option<String>,
}

/// A `RoutePolicy`'s spec.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePolicySpec {
    /// The route (and rule).
    #[serde(alias = "targetRef")]
    pub target_ref: TargetRefSpec,
    /// The rule's timeouts.
    #[serde(default)]
    pub timeouts: Option<TimeoutsSpec>,
    /// The rule's retries.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Faults to inject.
    #[serde(default)]
    pub fault: Option<FaultSpec>,
    /// The rule's concurrency limit.
    #[serde(default)]
    pub limits: Option<LimitsSpec>,
}

/// Which kind of route a policy targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKindRef {
    /// `HTTPRoute`.
    Http,
    /// `GRPCRoute`.
    Grpc,
}

/// A checked `RoutePolicy`: its target and what it sets on the rules it targets.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutePolicy {
    /// The kind of route.
    pub kind: RouteKindRef,
    /// The route's name, in the policy's namespace.
    pub route: String,
    /// One rule, by name; none: every rule.
    pub rule: Option<String>,
    /// Timeouts to set.
    pub timeouts: Option<Timeouts>,
    /// Retries to set.
    pub retry: Option<RetryPolicy>,
    /// Faults to set.
    pub fault: Option<FaultInjection>,
    /// A concurrency limit to set.
    pub limit: Option<ConcurrencyLimit>,
}

impl RoutePolicySpec {
    /// Checks the spec and builds it; an error names the key (`fault.abort.http_status`).
    pub fn compile(&self) -> Result<RoutePolicy, RouteSpecError> {
        let t = &self.target_ref;
        if t.group
            .as_deref()
            .is_some_and(|g| g != "gateway.networking.k8s.io")
        {
            return err("target_ref.group", "routes are gateway.networking.k8s.io");
        }
        let kind = match t.kind.as_str() {
            "HTTPRoute" => RouteKindRef::Http,
            "GRPCRoute" => RouteKindRef::Grpc,
            other => {
                return err(
                    "target_ref.kind",
                    format!("{other:?}: HTTPRoute or GRPCRoute"),
                );
            }
        };
        if t.name.is_empty() {
            return err("target_ref.name", "name a route");
        }
        let grpc = kind == RouteKindRef::Grpc;
        let timeouts = self
            .timeouts
            .as_ref()
            .map(|s| s.compile("timeouts"))
            .transpose()?;
        let retry = self
            .retry
            .as_ref()
            .map(|s| s.compile("retry", grpc))
            .transpose()?;
        let fault = self
            .fault
            .as_ref()
            .map(|s| s.compile("fault", grpc))
            .transpose()?;
        let limit = limits("", self.limits.as_ref()).map_err(|e| RouteSpecError {
            key: e.key.trim_start_matches('.').to_string(),
            message: e.message,
        })?;
        if timeouts.is_none() && retry.is_none() && fault.is_none() && limit.is_none() {
            return err("", "sets nothing: give timeouts, retry, fault or limits");
        }
        Ok(RoutePolicy {
            kind,
            route: t.name.clone(),
            rule: t.section_name.clone(),
            timeouts,
            retry,
            fault,
            limit,
        })
    }
}

/// The rule keys a policy sets.
struct Guards<'a> {
    timeouts: &'a mut Timeouts,
    retry: &'a mut Option<RetryPolicy>,
    fault: &'a mut Option<FaultInjection>,
    limit: &'a mut Option<ConcurrencyLimit>,
}

impl RoutePolicy {
    fn set(&self, g: Guards<'_>) {
        if let Some(t) = self.timeouts {
            *g.timeouts = t;
        }
        if let Some(r) = &self.retry {
            *g.retry = Some(r.clone());
        }
        if let Some(f) = &self.fault {
            *g.fault = Some(f.clone());
        }
        if let Some(l) = self.limit {
            *g.limit = Some(l);
        }
    }

    fn targets(&self, rule: Option<&str>) -> bool {
        self.rule.as_deref().is_none_or(|want| rule == Some(want))
    }

    /// Sets what it gives on the rules of `route` it targets; false when it targets a rule
    /// the route does not have.
    pub fn apply_http(&self, route: &mut HttpRoute) -> bool {
        self.apply(&mut route.rules)
    }

    /// As [`RoutePolicy::apply_http`], for a gRPC route.
    pub fn apply_grpc(&self, route: &mut GrpcRoute) -> bool {
        self.apply(&mut route.rules)
    }

    fn apply<R: Guarded>(&self, rules: &mut [R]) -> bool {
        let mut hit = false;
        for r in rules.iter_mut().filter(|r| self.targets(r.name())) {
            hit = true;
            self.set(r.guards());
        }
        hit || self.rule.is_none()
    }
}

/// A rule whose guards a policy may set.
trait Guarded {
    fn name(&self) -> Option<&str>;
    fn guards(&mut self) -> Guards<'_>;
}

impl Guarded for HttpRule {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn guards(&mut self) -> Guards<'_> {
        Guards {
            timeouts: &mut self.timeouts,
            retry: &mut self.retry,
            fault: &mut self.fault,
            limit: &mut self.limit,
        }
    }
}

impl Guarded for GrpcRule {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn guards(&mut self) -> Guards<'_> {
        Guards {
            timeouts: &mut self.timeouts,
            retry: &mut self.retry,
            fault: &mut self.fault,
            limit: &mut self.limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::route::{RouteMeta, RouteSource};

    fn compile(json: serde_json::Value) -> Result<RoutePolicy, RouteSpecError> {
        serde_json::from_value::<RoutePolicySpec>(json)
            .unwrap()
            .compile()
    }

    #[test]
    fn a_policy_sets_the_keys_it_gives_on_the_rules_it_targets() {
        let p = compile(serde_json::json!({
            "targetRef": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web", "sectionName": "slow"},
            "fault": {"delay": {"fixed": "100ms", "percent": 50}, "sources": ["shop/*"]},
            "limits": {"maxInFlight": 4},
        }))
        .unwrap();
        let rule = |name: &str| HttpRule {
            name: Some(name.into()),
            timeouts: Timeouts {
                request: Some(std::time::Duration::from_secs(1)),
                backend_request: None,
            },
            ..HttpRule::default()
        };
        let mut route = HttpRoute {
            meta: RouteMeta {
                name: "shop/web".into(),
                source: RouteSource::ControlPlane,
            },
            rules: vec![rule("slow"), rule("fast")],
        };
        assert!(p.apply_http(&mut route));
        assert!(route.rules[0].fault.is_some());
        assert_eq!(route.rules[0].limit.map(|l| l.max_in_flight), Some(4));
        assert_eq!(
            route.rules[0].timeouts.request,
            Some(std::time::Duration::from_secs(1)),
            "kept: the policy gives no timeouts"
        );
        assert!(route.rules[1].fault.is_none(), "another rule");
        let missing = RoutePolicy {
            rule: Some("gone".into()),
            ..p.clone()
        };
        assert!(!missing.apply_http(&mut route));
    }

    #[test]
    fn errors_name_the_key() {
        for (json, key) in [
            (
                serde_json::json!({"targetRef": {"kind": "Gateway", "name": "x"}, "limits": {"maxInFlight": 1}}),
                "target_ref.kind",
            ),
            (
                serde_json::json!({"targetRef": {"kind": "HTTPRoute", "name": "x"}}),
                "",
            ),
            (
                serde_json::json!({"targetRef": {"kind": "HTTPRoute", "name": "x"}, "fault": {"abort": {"grpcStatus": "unavailable"}}}),
                "fault.abort",
            ),
            (
                serde_json::json!({"targetRef": {"kind": "GRPCRoute", "name": "x"}, "retry": {"conditions": ["nope"]}}),
                "retry.conditions[0]",
            ),
            (
                serde_json::json!({"targetRef": {"kind": "HTTPRoute", "name": "x"}, "limits": {"maxInFlight": 0}}),
                "limits.max_in_flight",
            ),
        ] {
            let e = compile(json.clone()).unwrap_err();
            assert_eq!(e.key, key, "{json}: {e}");
        }
    }
}
