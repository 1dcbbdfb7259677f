//! `/api/routes?service=name.namespace&from=namespace[&port=]`: the routes, backends and
//! policy a caller in `from` (default the service's own namespace) applies to the service
//! right now, as the control plane sends them to that caller's proxy, with each route's
//! traffic from the callers' reports ([`crate::stats`]), for `weft routes`.

use std::time::Duration;

use serde_json::{Value, json};
use weft_core::ServiceName;
use weft_core::policy::route::{HttpFilter, PathMatch, ValueMatch, WeightedBackend};
use weft_core::policy::traffic::TrafficPolicy;

use crate::State;
use crate::stats::{By, StatRow};

/// Why the question cannot be answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RoutesError {
    /// `service` is missing or not `name.namespace`.
    #[error("service: {0}")]
    Service(String),
    /// No platform reports it.
    #[error("no service {0} in the mesh")]
    Unknown(ServiceName),
}

fn millis(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| json!(d.as_millis() as u64))
}

fn value_match(m: &ValueMatch) -> String {
    match m {
        ValueMatch::Exact(v) => v.clone(),
        ValueMatch::Regex(p) => format!("~{}", p.as_str()),
    }
}

fn backends(list: &[WeightedBackend]) -> Value {
    list.iter()
        .map(|b| {
            json!({
                "service": match b.port {
                    Some(p) => format!("{}:{p}", b.service),
                    None => b.service.to_string(),
                },
                "weight": b.weight,
                "missing": b.missing,
            })
        })
        .collect()
}

fn filters(list: &[HttpFilter]) -> Value {
    list.iter()
        .map(|f| match f {
            HttpFilter::RequestHeaders(_) => "request headers",
            HttpFilter::ResponseHeaders(_) => "response headers",
            HttpFilter::Rewrite(_) => "rewrite",
            HttpFilter::Redirect(_) => "redirect",
        })
        .map(Value::from)
        .collect()
}

/// What a rule shows, whatever its kind.
struct Rule<'a> {
    name: &'a Option<String>,
    matches: Vec<String>,
    filters: &'a [HttpFilter],
    backends: &'a [WeightedBackend],
    timeouts: &'a weft_core::policy::resilience::Timeouts,
    retry: Option<&'a weft_core::policy::resilience::RetryPolicy>,
    fault: bool,
    limit: Option<&'a weft_core::policy::resilience::ConcurrencyLimit>,
}

/// A route as JSON: its kind, name, source, trace share, rules and traffic.
fn route_json(
    kind: &str,
    meta: &weft_core::policy::route::RouteMeta,
    rules: Vec<Value>,
    policy: &TrafficPolicy,
    stats: Value,
) -> Value {
    json!({
        "kind": kind,
        "name": meta.name,
        "source": meta.source.to_string(),
        "trace_start": trace_start(policy, &meta.name),
        "rules": rules,
        "stats": stats,
    })
}

fn rule_json(r: Rule<'_>) -> Value {
    json!({
        "name": r.name,
        "matches": r.matches,
        "filters": filters(r.filters),
        "backends": backends(r.backends),
        "timeout_ms": millis(r.timeouts.request),
        "per_try_timeout_ms": millis(r.timeouts.backend_request),
        "retry": r.retry.map(|r| json!({
            "attempts": r.attempts,
            "codes": r.codes,
            "grpc_codes": r.grpc_codes,
            "backoff_ms": r.backoff.as_millis() as u64,
            "idempotent": r.idempotent,
        })),
        "fault": r.fault,
        "limit": r.limit.map(|l| json!({"max_in_flight": l.max_in_flight, "max_queue": l.max_queue})),
    })
}

/// The routes as JSON, with `stats` (by route and backend) beside each.
fn routes_json(policy: &TrafficPolicy, stats: &[StatRow]) -> Value {
    let stats_of = |name: &str| -> Value {
        stats
            .iter()
            .filter(|r| r.name == name)
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .collect()
    };
    let mut out: Vec<Value> = Vec::new();
    for r in policy.http.iter() {
        let rules: Vec<Value> = r
            .rules
            .iter()
            .map(|rule| {
                let matches: Vec<String> = rule
                    .matches
                    .iter()
                    .map(|m| {
                        let mut parts = Vec::new();
                        if let Some(method) = &m.method {
                            parts.push(method.clone());
                        }
                        match &m.path {
                            Some(PathMatch::Exact(p)) => parts.push(format!("path = {p}")),
                            Some(PathMatch::Prefix(p)) => parts.push(format!("path {p}*")),
                            Some(PathMatch::Regex(p)) => {
                                parts.push(format!("path ~{}", p.as_str()))
                            }
                            None => {}
                        }
                        for h in &m.headers {
                            parts.push(format!("{}: {}", h.name, value_match(&h.value)));
                        }
                        if !m.query.is_empty() {
                            parts.push(format!("{} query conditions", m.query.len()));
                        }
                        if parts.is_empty() {
                            "any".into()
                        } else {
                            parts.join(", ")
                        }
                    })
                    .collect();
                rule_json(Rule {
                    name: &rule.name,
                    matches,
                    filters: &rule.filters,
                    backends: &rule.backends,
                    timeouts: &rule.timeouts,
                    retry: rule.retry.as_ref(),
                    fault: rule.fault.is_some(),
                    limit: rule.limit.as_ref(),
                })
            })
            .collect();
        out.push(route_json(
            "http",
            &r.meta,
            rules,
            policy,
            stats_of(&r.meta.name),
        ));
    }
    for r in policy.grpc.iter() {
        let rules: Vec<Value> = r
            .rules
            .iter()
            .map(|rule| {
                let matches: Vec<String> = rule
                    .matches
                    .iter()
                    .map(|m| {
                        let s = m.service.as_ref().map_or("*".into(), value_match);
                        let me = m.method.as_ref().map_or("*".into(), value_match);
                        format!("{s}/{me}")
                    })
                    .collect();
                rule_json(Rule {
                    name: &rule.name,
                    matches,
                    filters: &rule.filters,
                    backends: &rule.backends,
                    timeouts: &rule.timeouts,
                    retry: rule.retry.as_ref(),
                    fault: rule.fault.is_some(),
                    limit: rule.limit.as_ref(),
                })
            })
            .collect();
        out.push(route_json(
            "grpc",
            &r.meta,
            rules,
            policy,
            stats_of(&r.meta.name),
        ));
    }
    Value::Array(out)
}

fn trace_start(policy: &TrafficPolicy, name: &str) -> Value {
    policy
        .trace_starts
        .iter()
        .find(|(n, _)| n == name)
        .map_or(Value::Null, |(_, m)| json!(f64::from(*m) / 1e6))
}

/// The answer to `/api/routes`.
pub(crate) fn answer(
    state: &State,
    service: Option<&str>,
    from: Option<&str>,
    port: Option<u16>,
) -> Result<Value, RoutesError> {
    let service =
        service.ok_or_else(|| RoutesError::Service("give ?service=name.namespace".into()))?;
    let name =
        ServiceName::parse(service, "default").map_err(|e| RoutesError::Service(e.to_string()))?;
    let registry = state.registry.snapshot();
    let svc = registry
        .service(&name)
        .ok_or_else(|| RoutesError::Unknown(name.clone()))?;
    let port = port.unwrap_or_else(|| svc.ports.iter().map(|p| p.port).min().unwrap_or(0));
    let caller = from.unwrap_or(&name.namespace);
    let cfg = state.config.borrow().clone();
    let policy = crate::discovery::traffic_policy(&cfg, &registry, &name, port, caller);
    let stats = crate::stats::stat(&state.telemetry.proxies(), &registry, By::Route, None, None);
    let b = &policy.backend;
    Ok(json!({
        "service": name.to_string(),
        "port": port,
        "caller_namespace": caller,
        "routes": routes_json(&policy, &stats),
        "backend_policy": {
            "retry_budget": {
                "percent": b.retry_budget.percent,
                "min_per_second": b.retry_budget.min_per_second,
                "window_ms": b.retry_budget.window.as_millis() as u64,
            },
            "failure_accrual": {
                "consecutive_failures": b.failure_accrual.consecutive_failures,
                "first_penalty_ms": b.failure_accrual.first_penalty.as_millis() as u64,
                "max_penalty_ms": b.failure_accrual.max_penalty.as_millis() as u64,
            },
            "limit": b.limit.map(|l| json!({"max_in_flight": l.max_in_flight, "max_queue": l.max_queue})),
        },
    }))
}
