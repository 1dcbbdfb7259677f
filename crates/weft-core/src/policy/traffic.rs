//! The routes a caller's proxy applies to one service port: the unit that travels to proxies.
//!
//! Routes come from several sources (the mesh file, platform objects); [`for_service`] picks
//! those bound to the service (to the port asked for, or to all its ports) and applies the
//! GAMMA rule of consumer and producer routes: a route in the service's own namespace is the
//! producer's and applies to every caller; a route in another namespace is a consumer's and
//! applies only to callers in that namespace, where it replaces the producer's routes.

use std::sync::Arc;

use super::route::{GrpcRoute, HttpRoute, Routed};
use super::route_spec::{Bound, Parent};
use crate::model::ServiceName;

/// The routes of one service port for one caller, in precedence order of their sources
/// (oldest first), and the service's backend policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrafficPolicy {
    /// HTTP routes.
    pub http: Arc<[HttpRoute]>,
    /// gRPC routes.
    pub grpc: Arc<[GrpcRoute]>,
    /// What the caller applies to every call to the service.
    pub backend: super::backend::BackendPolicy,
    /// The routes (by `namespace/name`) whose matching requests the caller starts traces for,
    /// with the share, in millionths, of those that carry no trace context.
    pub trace_starts: Vec<(String, u32)>,
}

impl TrafficPolicy {
    /// Whether it has no route: requests go to the service itself.
    pub fn is_empty(&self) -> bool {
        self.http.is_empty() && self.grpc.is_empty()
    }
}

/// The routes one source (a platform adapter) reports, each with the services it binds to,
/// oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceRoutes {
    /// HTTP routes.
    pub http: Vec<Bound<HttpRoute>>,
    /// gRPC routes.
    pub grpc: Vec<Bound<GrpcRoute>>,
}

/// The inbound policies one source (a platform adapter) reports, from its objects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourcePolicies {
    /// Authorization rules.
    pub authorizations: Vec<super::authz::AuthorizationRule>,
    /// Rate limits: at most one per service for every request, any number for routes.
    pub rate_limits: Vec<super::ratelimit::RateLimitRule>,
    /// Backend policies, at most one per service.
    pub backends: Vec<super::backend::BackendRule>,
}

impl SourcePolicies {
    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.authorizations.is_empty() && self.rate_limits.is_empty() && self.backends.is_empty()
    }

    /// Every service a policy names (with repeats).
    pub fn services(&self) -> impl Iterator<Item = &ServiceName> {
        self.authorizations
            .iter()
            .map(|r| &r.service)
            .chain(self.rate_limits.iter().map(|r| &r.service))
            .chain(self.backends.iter().map(|r| &r.service))
    }
}

impl SourceRoutes {
    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.http.is_empty() && self.grpc.is_empty()
    }

    /// Every service a route binds to (with repeats).
    pub fn parents(&self) -> impl Iterator<Item = &ServiceName> {
        let http = self.http.iter().flat_map(|b| b.parents.iter());
        let grpc = self.grpc.iter().flat_map(|b| b.parents.iter());
        http.chain(grpc).map(|p| &p.service)
    }
}

/// The namespace of a route named `namespace/name`.
fn namespace_of(name: &str) -> &str {
    name.split_once('/').map_or("", |(ns, _)| ns)
}

fn binds(parents: &[Parent], service: &ServiceName, port: u16) -> bool {
    parents
        .iter()
        .any(|p| &p.service == service && p.port.is_none_or(|p| p == port))
}

/// The routes of `routes` (each source's list, in order) that apply to a caller in
/// `caller_namespace` calling `service` on `port`.
fn select<'a, R: 'a>(
    routes: impl Iterator<Item = &'a Bound<R>> + Clone,
    name: impl Fn(&R) -> &str,
    service: &ServiceName,
    port: u16,
    caller_namespace: &str,
) -> Vec<&'a R> {
    let bound = routes.filter(|b| binds(&b.parents, service, port));
    let consumer: Vec<&R> = bound
        .clone()
        .map(|b| &b.route)
        .filter(|r| {
            let ns = namespace_of(name(r));
            ns != service.namespace && ns == caller_namespace
        })
        .collect();
    if !consumer.is_empty() {
        return consumer;
    }
    bound
        .map(|b| &b.route)
        .filter(|r| namespace_of(name(r)) == service.namespace)
        .collect()
}

/// The policy for a caller in `caller_namespace` calling `service` on `port`, from `http`
/// and `grpc` routes (every source's, oldest first). A backend that `exists` does not know is
/// marked missing: its share of the requests is answered with 500, the rest keep working.
pub fn for_service<'a>(
    http: impl Iterator<Item = &'a Bound<HttpRoute>> + Clone,
    grpc: impl Iterator<Item = &'a Bound<GrpcRoute>> + Clone,
    service: &ServiceName,
    port: u16,
    caller_namespace: &str,
    exists: impl Fn(&ServiceName) -> bool,
) -> TrafficPolicy {
    TrafficPolicy {
        http: picked(http, service, port, caller_namespace, &exists).into(),
        grpc: picked(grpc, service, port, caller_namespace, &exists).into(),
        backend: super::backend::BackendPolicy::default(),
        trace_starts: Vec::new(),
    }
}

/// The routes of `routes` that apply, with the backends `exists` does not know marked missing.
fn picked<'a, R: Routed + 'a>(
    routes: impl Iterator<Item = &'a Bound<R>> + Clone,
    service: &ServiceName,
    port: u16,
    caller_namespace: &str,
    exists: &impl Fn(&ServiceName) -> bool,
) -> Vec<R> {
    select(
        routes,
        |r: &R| &r.meta().name,
        service,
        port,
        caller_namespace,
    )
    .into_iter()
    .map(|r| {
        let mut r = r.clone();
        for b in r.backends_mut() {
            b.missing = !exists(&b.service);
        }
        r
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::route::{HttpRule, RouteMeta, RouteSource, WeightedBackend};

    fn svc(ns: &str, name: &str) -> ServiceName {
        ServiceName::new(ns, name).unwrap()
    }

    fn route(
        name: &str,
        parent: ServiceName,
        port: Option<u16>,
        backend: &str,
    ) -> Bound<HttpRoute> {
        let (ns, _) = name.split_once('/').unwrap();
        Bound {
            parents: vec![Parent {
                service: parent,
                port,
            }],
            route: HttpRoute {
                meta: RouteMeta {
                    name: name.into(),
                    source: RouteSource::Object {
                        kind: "HTTPRoute".into(),
                        namespace: ns.into(),
                        name: name.into(),
                    },
                },
                rules: vec![HttpRule {
                    backends: vec![WeightedBackend {
                        service: svc(ns, backend),
                        port: None,
                        weight: 1,
                        filters: vec![],
                        missing: false,
                    }],
                    ..HttpRule::default()
                }],
            },
        }
    }

    fn names(p: &TrafficPolicy) -> Vec<&str> {
        p.http.iter().map(|r| r.meta.name.as_str()).collect()
    }

    #[test]
    fn consumer_routes_replace_the_producers_for_their_namespace_only() {
        let web = svc("shop", "web");
        let routes = [
            route("shop/canary", web.clone(), None, "web-v2"),
            route("shop/admin-only", web.clone(), Some(9090), "web-admin"),
            route("tests/pinned", web.clone(), Some(80), "web-v1"),
            route("shop/other", svc("shop", "api"), None, "api-v2"),
        ];
        let exists = |s: &ServiceName| s.name != "web-v1";
        let policy =
            |port, caller| for_service(routes.iter(), [].iter(), &web, port, caller, exists);

        assert_eq!(names(&policy(80, "shop")), ["shop/canary"]);
        assert_eq!(
            names(&policy(9090, "shop")),
            ["shop/canary", "shop/admin-only"]
        );
        assert_eq!(names(&policy(80, "billing")), ["shop/canary"]);
        let pinned = policy(80, "tests");
        assert_eq!(
            names(&pinned),
            ["tests/pinned"],
            "the consumer's route wins"
        );
        assert!(
            pinned.http[0].rules[0].backends[0].missing,
            "web-v1 does not exist"
        );
        assert_eq!(
            names(&policy(9090, "tests")),
            ["shop/canary", "shop/admin-only"]
        );
        assert!(
            for_service(
                routes.iter(),
                [].iter(),
                &svc("shop", "db"),
                80,
                "shop",
                exists
            )
            .is_empty()
        );
    }
}
