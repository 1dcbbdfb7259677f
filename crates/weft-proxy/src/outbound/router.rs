//! A destination's routes, compiled once per update from the control plane: the matchers in
//! precedence order (regular expressions compiled), each rule's backends with cumulative
//! weights, and a lease on each backend's destination, so that its balancer and connections
//! are shared by every route and kept across updates (a weight change takes the same leases
//! again and drops no connection). A request then costs one pointer load when the service has
//! no routes.
//!
//! A backend is reached through its own destination's balancer, never through its routes:
//! routes bind to the service a caller named, not to the services they send to.

use std::sync::Arc;

use weft_core::policy::route::{
    FaultInjection, GrpcRouteTable, HttpFilter, HttpRouteTable, Routed, RuleView,
};
use weft_core::policy::traffic::TrafficPolicy;
use weft_core::{ServiceName, Target};

use super::destination::Lease;
use crate::Runtime;
use crate::http::limit::Limiter;
use crate::http::retry::{self, RetryState};
use crate::metrics::{RequestMetrics, RouteLabels, RuleLabels, ServiceLabels};

/// Where a rule's share of requests goes.
#[derive(Debug)]
pub enum BackendTarget {
    /// The destination the caller named (a rule without backends, or a backend that is the
    /// destination's own service and port).
    Parent,
    /// Another service's destination.
    Service(Arc<Lease>),
    /// A backend that does not exist, or that this proxy could not take on: 500.
    Missing(String),
}

/// One backend of a rule.
#[derive(Debug)]
pub struct Backend {
    /// Where.
    pub target: BackendTarget,
    /// Its own filters.
    pub filters: Vec<HttpFilter>,
    /// The rule's metrics for this backend.
    pub metrics: Option<RequestMetrics>,
    /// Its name in spans and logs (`name.namespace`, with `:port` when the rule names one).
    pub label: Arc<str>,
}

/// A rule's backends and their cumulative weights.
#[derive(Debug, Default)]
pub struct Split {
    backends: Vec<Backend>,
    /// `cumulative[i]` is the sum of the weights of backends `0..=i`.
    cumulative: Vec<u64>,
    /// The rule's metrics for requests to the destination itself (a rule without backends).
    pub parent_metrics: Option<RequestMetrics>,
    /// The rule's metrics for what the proxy answers itself (redirects), backend `-`.
    pub local_metrics: Option<RequestMetrics>,
    /// The rule's retry policy, budget and counters, when it has a retry policy.
    pub retry: Option<Arc<RetryState>>,
    /// The rule's faults, when they apply to this proxy's workload.
    pub fault: Option<FaultInjection>,
    /// The rule's concurrency limit.
    pub limiter: Option<Limiter>,
    /// The route's name, `namespace/name`.
    pub route: Arc<str>,
    /// Of its matching requests without a trace context, the share the caller starts a trace
    /// for, in millionths, when the mesh says so for this route.
    pub trace_start: Option<u32>,
}

impl Backend {
    /// Whether failure accrual has ejected every endpoint of this backend (`parent`: whether
    /// it has for the destination itself).
    fn ejected(&self, parent: bool) -> bool {
        match &self.target {
            BackendTarget::Parent => parent,
            BackendTarget::Service(lease) => lease.health.all_ejected(),
            BackendTarget::Missing(_) => false,
        }
    }
}

impl Split {
    /// The backend for a draw, or `None` when every weight is 0 (nothing may be sent). A
    /// backend whose endpoints failure accrual has all ejected gets no share while another
    /// backend can take it (`parent_ejected` says so of the destination itself).
    pub fn pick(&self, parent_ejected: bool) -> Option<&Backend> {
        let total = *self.cumulative.last()?;
        if total == 0 {
            return None;
        }
        let weight =
            |i: usize| self.cumulative[i] - i.checked_sub(1).map_or(0, |j| self.cumulative[j]);
        let healthy = |i: &usize| !self.backends[*i].ejected(parent_ejected);
        let n = self.backends.len();
        let healthy_total: u64 = (0..n).filter(healthy).map(weight).sum();
        if healthy_total == 0 || healthy_total == total {
            return self.pick_at(fastrand::u64(0..total));
        }
        let mut at = fastrand::u64(0..healthy_total);
        for i in (0..n).filter(healthy) {
            let w = weight(i);
            if at < w {
                return self.backends.get(i);
            }
            at -= w;
        }
        None
    }

    /// The backend a draw of `at` (below the total weight) lands on.
    fn pick_at(&self, at: u64) -> Option<&Backend> {
        let i = self.cumulative.partition_point(|c| *c <= at);
        self.backends.get(i)
    }

    /// Whether the rule names no backend: requests go to the destination itself.
    pub fn is_parent_only(&self) -> bool {
        self.backends.is_empty()
    }
}

/// The compiled routes of one destination.
#[derive(Debug, Default)]
pub struct Routes {
    /// HTTP routes, in precedence order.
    pub http: HttpRouteTable,
    /// gRPC routes, in precedence order.
    pub grpc: GrpcRouteTable,
    /// Backends of each HTTP rule, by route and rule.
    http_splits: Vec<Vec<Split>>,
    /// Backends of each gRPC rule, by route and rule.
    grpc_splits: Vec<Vec<Split>>,
    /// The service's concurrency limit, over every call to it from this proxy.
    pub limiter: Option<Limiter>,
    /// Whether any route says to start traces (only then is a request matched twice).
    pub starts_traces: bool,
}

impl Routes {
    /// Whether there are no routes (requests go to the destination itself).
    pub fn is_empty(&self) -> bool {
        self.http_splits.is_empty() && self.grpc_splits.is_empty()
    }

    /// The backends of HTTP rule `rule` of route `route`.
    pub fn http_split(&self, route: usize, rule: usize) -> Option<&Split> {
        self.http_splits.get(route)?.get(rule)
    }

    /// The backends of gRPC rule `rule` of route `route`.
    pub fn grpc_split(&self, route: usize, rule: usize) -> Option<&Split> {
        self.grpc_splits.get(route)?.get(rule)
    }

    /// Compiles `policy` for the destination `own` (resolved to `service` on `port`), taking
    /// leases on the backends' destinations from `runtime`.
    pub fn build(
        policy: &TrafficPolicy,
        own: &Target,
        service: &ServiceName,
        port: u16,
        runtime: &Arc<Runtime>,
    ) -> Self {
        let metrics = &runtime.metrics;
        // One budget for every rule's retries to the service.
        let budget = retry::budget(&policy.backend.retry_budget);
        // Faults for some callers only apply where this proxy's workload is one of them.
        let me = runtime.config.identity().ok();
        let split = |route: &str, rule: String, view: RuleView<'_>| -> Split {
            let backends = view.backends;
            let labels = |backend: String| {
                RequestMetrics::for_route(
                    metrics,
                    RouteLabels {
                        route: route.to_string(),
                        rule: rule.clone(),
                        backend,
                    },
                )
            };
            let mut total = 0u64;
            let rule_labels = RuleLabels {
                route: route.to_string(),
                rule: rule.clone(),
            };
            let mut out = Split {
                route: Arc::from(route),
                trace_start: policy
                    .trace_starts
                    .iter()
                    .find(|(n, _)| n == route)
                    .map(|(_, m)| *m),
                parent_metrics: backends.is_empty().then(|| labels(service.to_string())),
                local_metrics: Some(labels("-".to_string())),
                fault: view
                    .fault
                    .filter(|f| {
                        f.sources.is_empty() || me.as_ref().is_some_and(|id| f.applies_to(id))
                    })
                    .cloned(),
                limiter: view.limit.map(|l| {
                    Limiter::new(
                        l,
                        metrics.route_limited.get_or_create(&rule_labels).clone(),
                        "route",
                    )
                }),
                retry: view.retry.map(|policy| {
                    RetryState::new(
                        policy.clone(),
                        budget.clone(),
                        metrics.route_retries.get_or_create(&rule_labels).clone(),
                        metrics
                            .route_retry_budget_exhausted
                            .get_or_create(&rule_labels)
                            .clone(),
                    )
                }),
                ..Split::default()
            };
            for b in backends {
                let target = if b.missing {
                    BackendTarget::Missing(format!("backend {} does not exist", b.service))
                } else if &b.service == service && b.port.is_none_or(|p| port_matches(own, p, port))
                {
                    BackendTarget::Parent
                } else {
                    // Without a port: the service's only (or lowest) port.
                    let t = Target::Service {
                        name: b.service.clone(),
                        port: b.port,
                    };
                    match runtime.destinations.get(runtime, &t) {
                        Ok(lease) => BackendTarget::Service(Arc::new(lease)),
                        Err(e) => BackendTarget::Missing(format!("backend {t}: {e}")),
                    }
                };
                total += u64::from(b.weight);
                let label = match b.port {
                    Some(p) => format!("{}:{p}", b.service),
                    None => b.service.to_string(),
                };
                out.backends.push(Backend {
                    target,
                    filters: b.filters.clone(),
                    metrics: Some(labels(label.clone())),
                    label: Arc::from(label),
                });
                out.cumulative.push(total);
            }
            out
        };
        let limiter = policy.backend.limit.map(|l| {
            let labels = ServiceLabels {
                service: service.to_string(),
            };
            Limiter::new(
                l,
                metrics.service_limited.get_or_create(&labels).clone(),
                "service",
            )
        });
        Self {
            http_splits: splits(&policy.http, &split),
            grpc_splits: splits(&policy.grpc, &split),
            http: HttpRouteTable::new(policy.http.to_vec()),
            grpc: GrpcRouteTable::new(policy.grpc.to_vec()),
            limiter,
            starts_traces: !policy.trace_starts.is_empty(),
        }
    }
}

/// The backends of every rule of `routes`, by route and rule; a rule is labelled by its name,
/// else its index.
fn splits<R: Routed>(
    routes: &[R],
    split: &impl Fn(&str, String, RuleView<'_>) -> Split,
) -> Vec<Vec<Split>> {
    routes
        .iter()
        .map(|r| {
            r.rule_backends()
                .into_iter()
                .enumerate()
                .map(|(i, view)| {
                    let name = view.name.map_or_else(|| i.to_string(), str::to_string);
                    split(&r.meta().name, name, view)
                })
                .collect()
        })
        .collect()
}

/// Whether a backend on `port` of the destination's own service is the destination `own`
/// itself, which resolved to `resolved_port`.
fn port_matches(own: &Target, port: u16, resolved_port: u16) -> bool {
    match own {
        Target::Service { port: p, .. } => p.unwrap_or(resolved_port) == port,
        Target::Address(_) => resolved_port == port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(weights: &[u64]) -> Split {
        let mut s = Split::default();
        let mut total = 0;
        for (i, w) in weights.iter().enumerate() {
            total += w;
            s.backends.push(Backend {
                target: BackendTarget::Missing(i.to_string()),
                filters: vec![],
                metrics: None,
                label: Arc::from(i.to_string()),
            });
            s.cumulative.push(total);
        }
        s
    }

    fn name(b: Option<&Backend>) -> String {
        match b.map(|b| &b.target) {
            Some(BackendTarget::Missing(n)) => n.clone(),
            _ => "none".into(),
        }
    }

    #[test]
    fn draws_land_on_backends_by_weight() {
        let s = split(&[90, 0, 10]);
        assert_eq!(name(s.pick_at(0)), "0");
        assert_eq!(name(s.pick_at(89)), "0");
        assert_eq!(name(s.pick_at(90)), "2", "a weight of 0 gets nothing");
        assert_eq!(name(s.pick_at(99)), "2");
        assert!(split(&[0, 0]).pick(false).is_none());
        assert!(split(&[]).pick(false).is_none());
    }

    /// A backend whose endpoints are all ejected gets no share while another can take it; if
    /// none can, the weights stand.
    #[test]
    fn an_all_ejected_backend_loses_its_share() {
        let mut s = split(&[50, 50]);
        s.backends[0].target = BackendTarget::Parent;
        for _ in 0..200 {
            assert_eq!(name(s.pick(true)), "1");
        }
        let (mut parent, mut other) = (0, 0);
        for _ in 0..200 {
            match name(s.pick(false)).as_str() {
                "1" => other += 1,
                _ => parent += 1,
            }
        }
        assert!(parent > 0 && other > 0);
        let mut lone = split(&[10]);
        lone.backends[0].target = BackendTarget::Parent;
        assert!(lone.pick(true).is_some(), "nowhere else to go");
    }
}
