//! Routes on the wire: [`weft_core::policy::traffic::TrafficPolicy`] to and from
//! [`crate::v1::TrafficPolicy`]. Wire to core is strict, as for every message here: a route
//! that does not parse whole (an unset case, a regular expression that does not compile, a
//! status no redirect has) is an error, and the proxy keeps the routes it had.

use std::sync::Arc;

use weft_core::ServiceName;
use weft_core::policy::backend::BackendPolicy;
use weft_core::policy::fault::{AbortWith, FaultInjection, Share};
use weft_core::policy::resilience::ConcurrencyLimit;
use weft_core::policy::route::{
    GrpcMatch as CoreGrpcMatch, GrpcRoute as CoreGrpcRoute, GrpcRule as CoreGrpcRule, HeaderMatch,
    HeaderModifier as CoreHeaderModifier, HttpFilter, HttpMatch as CoreHttpMatch,
    HttpRoute as CoreHttpRoute, HttpRule as CoreHttpRule, PathMatch as CorePathMatch,
    PathModifier as CorePathModifier, Pattern, QueryMatch, RequestRedirect, RetryPolicy, RouteMeta,
    RouteSource, Timeouts, UrlRewrite as CoreUrlRewrite, ValueMatch, WeightedBackend,
};
use weft_core::policy::traffic::TrafficPolicy as CoreTrafficPolicy;

use crate::v1::BackendPolicy as WireBackendPolicy;
use crate::v1::{
    GrpcMatch, GrpcRoute, GrpcRule, Header, HeaderModifier, HttpMatch, HttpRoute, HttpRule,
    NamedMatch, PathMatch, PathModifier, Redirect, RouteBackend, RouteFault, RouteFilter,
    RouteLimits, RouteRetry, RouteTimeouts, ServiceTarget, StringMatch, TrafficPolicy, UrlRewrite,
    path_match, path_modifier, route_filter, string_match,
};

/// Why routes from the control plane cannot be used.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{at}: {reason}")]
pub struct RouteWireError {
    /// Where in the message (`http[0].rules[1].matches[0].path`).
    pub at: String,
    /// What is wrong.
    pub reason: String,
}

fn bad<T>(at: &str, reason: impl Into<String>) -> Result<T, RouteWireError> {
    Err(RouteWireError {
        at: at.to_string(),
        reason: reason.into(),
    })
}

// === core -> wire ===

fn string_match_to_wire(m: &ValueMatch) -> StringMatch {
    StringMatch {
        kind: Some(match m {
            ValueMatch::Exact(v) => string_match::Kind::Exact(v.clone()),
            ValueMatch::Regex(p) => string_match::Kind::Regex(p.as_str().to_string()),
        }),
    }
}

fn headers_to_wire(list: &[(String, String)]) -> Vec<Header> {
    list.iter()
        .map(|(name, value)| Header {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

fn modifier_to_wire(m: &CoreHeaderModifier) -> HeaderModifier {
    HeaderModifier {
        set: headers_to_wire(&m.set),
        add: headers_to_wire(&m.add),
        remove: m.remove.clone(),
    }
}

fn path_modifier_to_wire(p: &CorePathModifier) -> PathModifier {
    PathModifier {
        kind: Some(match p {
            CorePathModifier::ReplaceFullPath(v) => path_modifier::Kind::Full(v.clone()),
            CorePathModifier::ReplacePrefixMatch(v) => path_modifier::Kind::Prefix(v.clone()),
        }),
    }
}

fn filter_to_wire(f: &HttpFilter) -> RouteFilter {
    RouteFilter {
        filter: Some(match f {
            HttpFilter::RequestHeaders(m) => {
                route_filter::Filter::RequestHeaders(modifier_to_wire(m))
            }
            HttpFilter::ResponseHeaders(m) => {
                route_filter::Filter::ResponseHeaders(modifier_to_wire(m))
            }
            HttpFilter::Rewrite(r) => route_filter::Filter::Rewrite(UrlRewrite {
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(path_modifier_to_wire),
            }),
            HttpFilter::Redirect(r) => route_filter::Filter::Redirect(Redirect {
                scheme: r.scheme.clone().unwrap_or_default(),
                hostname: r.hostname.clone().unwrap_or_default(),
                port: r.port.map_or(0, u32::from),
                path: r.path.as_ref().map(path_modifier_to_wire),
                status: u32::from(r.status),
            }),
        }),
    }
}

fn backend_to_wire(b: &WeightedBackend) -> RouteBackend {
    RouteBackend {
        service: Some(ServiceTarget {
            name: b.service.name.clone(),
            namespace: b.service.namespace.clone(),
            port: b.port.map_or(0, u32::from),
        }),
        weight: b.weight,
        filters: b.filters.iter().map(filter_to_wire).collect(),
        missing: b.missing,
    }
}

fn named_to_wire(name: &str, m: &ValueMatch) -> NamedMatch {
    NamedMatch {
        name: name.to_string(),
        value: Some(string_match_to_wire(m)),
    }
}

pub(crate) fn http_match_to_wire(m: &CoreHttpMatch) -> HttpMatch {
    HttpMatch {
        path: m.path.as_ref().map(|p| PathMatch {
            kind: Some(match p {
                CorePathMatch::Exact(v) => path_match::Kind::Exact(v.clone()),
                CorePathMatch::Prefix(v) => path_match::Kind::Prefix(v.clone()),
                CorePathMatch::Regex(r) => path_match::Kind::Regex(r.as_str().to_string()),
            }),
        }),
        method: m.method.clone().unwrap_or_default(),
        headers: m
            .headers
            .iter()
            .map(|h| named_to_wire(&h.name, &h.value))
            .collect(),
        query: m
            .query
            .iter()
            .map(|q| named_to_wire(&q.name, &q.value))
            .collect(),
    }
}

pub(crate) fn grpc_match_to_wire(m: &CoreGrpcMatch) -> GrpcMatch {
    GrpcMatch {
        service: m.service.as_ref().map(string_match_to_wire),
        method: m.method.as_ref().map(string_match_to_wire),
        headers: m
            .headers
            .iter()
            .map(|h| named_to_wire(&h.name, &h.value))
            .collect(),
    }
}

fn timeouts_to_wire(t: &Timeouts) -> Option<RouteTimeouts> {
    let ms = |d: Option<std::time::Duration>| {
        d.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    (!t.is_empty()).then(|| RouteTimeouts {
        request_ms: ms(t.request),
        backend_request_ms: ms(t.backend_request),
    })
}

fn timeouts_from_wire(t: Option<&RouteTimeouts>) -> Timeouts {
    let d = |ms: u64| (ms > 0).then(|| std::time::Duration::from_millis(ms));
    t.map_or_else(Timeouts::default, |t| Timeouts {
        request: d(t.request_ms),
        backend_request: d(t.backend_request_ms),
    })
}

fn retry_to_wire(r: &RetryPolicy) -> RouteRetry {
    RouteRetry {
        attempts: r.attempts,
        codes: r.codes.iter().map(|c| u32::from(*c)).collect(),
        grpc_codes: r.grpc_codes.iter().map(|c| u32::from(*c)).collect(),
        backoff_ms: u64::try_from(r.backoff.as_millis()).unwrap_or(u64::MAX),
        idempotent: r.idempotent,
    }
}

fn retry_from_wire(at: &str, r: &RouteRetry) -> Result<RetryPolicy, RouteWireError> {
    let bad = |what: &str| RouteWireError {
        at: format!("{at}.{what}"),
        reason: "out of range".into(),
    };
    Ok(RetryPolicy {
        attempts: r
            .attempts
            .min(weft_core::policy::resilience::MAX_RETRY_ATTEMPTS),
        codes: r
            .codes
            .iter()
            .map(|c| u16::try_from(*c).map_err(|_| bad("codes")))
            .collect::<Result<_, _>>()?,
        grpc_codes: r
            .grpc_codes
            .iter()
            .map(|c| u8::try_from(*c).map_err(|_| bad("grpc_codes")))
            .collect::<Result<_, _>>()?,
        backoff: std::time::Duration::from_millis(r.backoff_ms.clamp(1, 10_000)),
        idempotent: r.idempotent,
    })
}

/// What HTTP and gRPC rules carry beyond matches, filters and backends.
struct Guards {
    timeouts: Timeouts,
    retry: Option<RetryPolicy>,
    fault: Option<FaultInjection>,
    limit: Option<ConcurrencyLimit>,
}

impl Guards {
    /// Reads them from the rule at `at`.
    fn from_wire(
        at: &str,
        timeouts: Option<&RouteTimeouts>,
        retry: Option<&RouteRetry>,
        fault: Option<&RouteFault>,
        limits: Option<&RouteLimits>,
    ) -> Result<Self, RouteWireError> {
        Ok(Self {
            timeouts: timeouts_from_wire(timeouts),
            retry: retry
                .map(|r| retry_from_wire(&format!("{at}.retry"), r))
                .transpose()?,
            fault: fault
                .map(|f| fault_from_wire(&format!("{at}.fault"), f))
                .transpose()?,
            limit: limit_from_wire(limits),
        })
    }
}

fn limit_to_wire(l: ConcurrencyLimit) -> RouteLimits {
    RouteLimits {
        max_in_flight: l.max_in_flight,
        max_queue: l.max_queue,
    }
}

fn limit_from_wire(l: Option<&RouteLimits>) -> Option<ConcurrencyLimit> {
    l.filter(|l| l.max_in_flight > 0).map(|l| ConcurrencyLimit {
        max_in_flight: l.max_in_flight,
        max_queue: l.max_queue,
    })
}

fn fault_to_wire(f: &FaultInjection) -> RouteFault {
    let mut out = RouteFault {
        sources: f.sources.iter().map(ToString::to_string).collect(),
        ..RouteFault::default()
    };
    if let Some((d, share)) = f.delay {
        out.delay_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        out.delay_millionths = share.millionths();
    }
    if let Some((with, share)) = f.abort {
        match with {
            AbortWith::Http(s) => out.abort_http_status = u32::from(s),
            AbortWith::Grpc(c) => out.abort_grpc_status = u32::from(c),
        }
        out.abort_millionths = share.millionths();
    }
    out
}

fn fault_from_wire(at: &str, f: &RouteFault) -> Result<FaultInjection, RouteWireError> {
    let share = |what: &str, m: u32| {
        Share::from_percent(f64::from(m) / 10_000.0).ok_or_else(|| RouteWireError {
            at: format!("{at}.{what}"),
            reason: "over 100 %".into(),
        })
    };
    let delay = (f.delay_millionths > 0)
        .then(|| {
            share("delay_millionths", f.delay_millionths)
                .map(|s| (std::time::Duration::from_millis(f.delay_ms), s))
        })
        .transpose()?;
    let with = match (f.abort_http_status, f.abort_grpc_status) {
        (0, 0) => None,
        (s, 0) => Some(AbortWith::Http(u16::try_from(s).unwrap_or(500))),
        (0, c) => Some(AbortWith::Grpc(u8::try_from(c).unwrap_or(13))),
        _ => {
            return bad(&format!("{at}.abort"), "both an HTTP and a gRPC status");
        }
    };
    let abort = match with {
        Some(w) if f.abort_millionths > 0 => {
            Some((w, share("abort_millionths", f.abort_millionths)?))
        }
        _ => None,
    };
    let sources = f
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse()
                .map_err(|e: weft_core::policy::authz::PatternError| RouteWireError {
                    at: format!("{at}.sources[{i}]"),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(FaultInjection {
        delay,
        abort,
        sources,
    })
}

/// The wire form of `p`.
pub fn traffic_to_wire(p: &CoreTrafficPolicy) -> TrafficPolicy {
    TrafficPolicy {
        http: p
            .http
            .iter()
            .map(|r| HttpRoute {
                name: r.meta.name.clone(),
                trace_start_millionths: trace_start(p, &r.meta.name),
                rules: r
                    .rules
                    .iter()
                    .map(|rule| HttpRule {
                        name: rule.name.clone().unwrap_or_default(),
                        matches: rule.matches.iter().map(http_match_to_wire).collect(),
                        filters: rule.filters.iter().map(filter_to_wire).collect(),
                        backends: rule.backends.iter().map(backend_to_wire).collect(),
                        timeouts: timeouts_to_wire(&rule.timeouts),
                        retry: rule.retry.as_ref().map(retry_to_wire),
                        fault: rule.fault.as_ref().map(fault_to_wire),
                        limits: rule.limit.map(limit_to_wire),
                    })
                    .collect(),
            })
            .collect(),
        grpc: p
            .grpc
            .iter()
            .map(|r| GrpcRoute {
                name: r.meta.name.clone(),
                trace_start_millionths: trace_start(p, &r.meta.name),
                rules: r
                    .rules
                    .iter()
                    .map(|rule| GrpcRule {
                        name: rule.name.clone().unwrap_or_default(),
                        matches: rule.matches.iter().map(grpc_match_to_wire).collect(),
                        filters: rule.filters.iter().map(filter_to_wire).collect(),
                        backends: rule.backends.iter().map(backend_to_wire).collect(),
                        timeouts: timeouts_to_wire(&rule.timeouts),
                        retry: rule.retry.as_ref().map(retry_to_wire),
                        fault: rule.fault.as_ref().map(fault_to_wire),
                        limits: rule.limit.map(limit_to_wire),
                    })
                    .collect(),
            })
            .collect(),
        backend: Some(backend_policy_to_wire(&p.backend)),
    }
}

/// The share of the route `name`'s requests that `p`'s caller starts traces for, if it has one.
fn trace_start(p: &CoreTrafficPolicy, name: &str) -> Option<u32> {
    p.trace_starts
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, m)| (*m).min(1_000_000))
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn backend_policy_to_wire(b: &BackendPolicy) -> WireBackendPolicy {
    WireBackendPolicy {
        retry_percent: b.retry_budget.percent,
        retry_min_per_second: b.retry_budget.min_per_second,
        retry_window_ms: millis(b.retry_budget.window),
        accrual_failures: b.failure_accrual.consecutive_failures,
        accrual_first_penalty_ms: millis(b.failure_accrual.first_penalty),
        accrual_max_penalty_ms: millis(b.failure_accrual.max_penalty),
        limits: b.limit.map(limit_to_wire),
    }
}

/// Reads a backend policy; a value out of range reads as its default.
fn backend_policy_from_wire(b: Option<&WireBackendPolicy>) -> BackendPolicy {
    use std::time::Duration;
    let mut out = BackendPolicy::default();
    let Some(b) = b else { return out };
    if b.retry_percent <= 100 {
        out.retry_budget.percent = b.retry_percent;
    }
    out.retry_budget.min_per_second = b.retry_min_per_second;
    if (1_000..=60_000).contains(&b.retry_window_ms) {
        out.retry_budget.window = Duration::from_millis(b.retry_window_ms);
    }
    out.failure_accrual.consecutive_failures = b.accrual_failures;
    let (first, max) = (b.accrual_first_penalty_ms, b.accrual_max_penalty_ms);
    if first >= 1 && first <= max && max <= 3_600_000 {
        out.failure_accrual.first_penalty = Duration::from_millis(first);
        out.failure_accrual.max_penalty = Duration::from_millis(max);
    }
    out.limit = limit_from_wire(b.limits.as_ref());
    out
}

// === wire -> core ===

fn pattern(at: &str, source: &str) -> Result<Pattern, RouteWireError> {
    Pattern::new(source).map_err(|e| RouteWireError {
        at: at.to_string(),
        reason: format!("regular expression: {e}"),
    })
}

fn string_match_from_wire(at: &str, m: Option<&StringMatch>) -> Result<ValueMatch, RouteWireError> {
    match m.and_then(|m| m.kind.as_ref()) {
        Some(string_match::Kind::Exact(v)) => Ok(ValueMatch::Exact(v.clone())),
        Some(string_match::Kind::Regex(r)) => Ok(ValueMatch::Regex(pattern(at, r)?)),
        None => bad(at, "no match this proxy understands"),
    }
}

fn header_name(at: &str, name: &str) -> Result<String, RouteWireError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        return bad(at, format!("{name:?} is not a header name"));
    }
    Ok(name.to_ascii_lowercase())
}

fn header_value(at: &str, value: &str) -> Result<String, RouteWireError> {
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return bad(at, "a header value cannot hold CR, LF or NUL");
    }
    Ok(value.to_string())
}

fn headers_from_wire(at: &str, list: &[Header]) -> Result<Vec<(String, String)>, RouteWireError> {
    list.iter()
        .enumerate()
        .map(|(i, h)| {
            let at = format!("{at}[{i}]");
            Ok((header_name(&at, &h.name)?, header_value(&at, &h.value)?))
        })
        .collect()
}

fn path_from_wire(at: &str, p: &str) -> Result<String, RouteWireError> {
    if !p.starts_with('/') {
        return bad(at, format!("{p:?} does not start with /"));
    }
    Ok(p.to_string())
}

fn path_modifier_from_wire(at: &str, p: &PathModifier) -> Result<CorePathModifier, RouteWireError> {
    match &p.kind {
        Some(path_modifier::Kind::Full(v)) => {
            Ok(CorePathModifier::ReplaceFullPath(path_from_wire(at, v)?))
        }
        Some(path_modifier::Kind::Prefix(v)) => {
            Ok(CorePathModifier::ReplacePrefixMatch(path_from_wire(at, v)?))
        }
        None => bad(at, "no path change this proxy understands"),
    }
}

fn host_from_wire(at: &str, h: &str) -> Result<Option<String>, RouteWireError> {
    if h.is_empty() {
        return Ok(None);
    }
    let ok = h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !ok {
        return bad(at, format!("{h:?} is not a host name"));
    }
    Ok(Some(h.to_string()))
}

fn filter_from_wire(at: &str, f: &RouteFilter) -> Result<HttpFilter, RouteWireError> {
    let modifier = |m: &HeaderModifier| -> Result<CoreHeaderModifier, RouteWireError> {
        Ok(CoreHeaderModifier {
            set: headers_from_wire(&format!("{at}.set"), &m.set)?,
            add: headers_from_wire(&format!("{at}.add"), &m.add)?,
            remove: m
                .remove
                .iter()
                .map(|n| header_name(&format!("{at}.remove"), n))
                .collect::<Result<_, _>>()?,
        })
    };
    match &f.filter {
        Some(route_filter::Filter::RequestHeaders(m)) => {
            Ok(HttpFilter::RequestHeaders(modifier(m)?))
        }
        Some(route_filter::Filter::ResponseHeaders(m)) => {
            Ok(HttpFilter::ResponseHeaders(modifier(m)?))
        }
        Some(route_filter::Filter::Rewrite(r)) => Ok(HttpFilter::Rewrite(CoreUrlRewrite {
            hostname: host_from_wire(&format!("{at}.hostname"), &r.hostname)?,
            path: r
                .path
                .as_ref()
                .map(|p| path_modifier_from_wire(&format!("{at}.path"), p))
                .transpose()?,
        })),
        Some(route_filter::Filter::Redirect(r)) => {
            let status = match r.status {
                s @ (301 | 302 | 303 | 307 | 308) => s as u16,
                s => {
                    return bad(
                        &format!("{at}.status"),
                        format!("{s} is no redirect status"),
                    );
                }
            };
            let scheme = match r.scheme.as_str() {
                "" => None,
                s @ ("http" | "https") => Some(s.to_string()),
                s => return bad(&format!("{at}.scheme"), format!("{s:?}")),
            };
            let port = match r.port {
                0 => None,
                p => Some(u16::try_from(p).map_err(|_| RouteWireError {
                    at: format!("{at}.port"),
                    reason: format!("{p} is no port"),
                })?),
            };
            Ok(HttpFilter::Redirect(RequestRedirect {
                scheme,
                hostname: host_from_wire(&format!("{at}.hostname"), &r.hostname)?,
                port,
                path: r
                    .path
                    .as_ref()
                    .map(|p| path_modifier_from_wire(&format!("{at}.path"), p))
                    .transpose()?,
                status,
            }))
        }
        None => bad(at, "no filter this proxy understands"),
    }
}

fn filters_from_wire(at: &str, list: &[RouteFilter]) -> Result<Vec<HttpFilter>, RouteWireError> {
    list.iter()
        .enumerate()
        .map(|(i, f)| filter_from_wire(&format!("{at}[{i}]"), f))
        .collect()
}

fn backends_from_wire(
    at: &str,
    list: &[RouteBackend],
) -> Result<Vec<WeightedBackend>, RouteWireError> {
    list.iter()
        .enumerate()
        .map(|(i, b)| {
            let at = format!("{at}[{i}]");
            let Some(s) = &b.service else {
                return bad(&at, "no service");
            };
            let service = ServiceName::new(&s.namespace, &s.name).map_err(|e| RouteWireError {
                at: format!("{at}.service"),
                reason: e.to_string(),
            })?;
            let port = match s.port {
                0 => None,
                p => Some(u16::try_from(p).map_err(|_| RouteWireError {
                    at: format!("{at}.service.port"),
                    reason: format!("{p} is no port"),
                })?),
            };
            Ok(WeightedBackend {
                service,
                port,
                weight: b.weight,
                filters: filters_from_wire(&format!("{at}.filters"), &b.filters)?,
                missing: b.missing,
            })
        })
        .collect()
}

fn named_from_wire(
    at: &str,
    list: &[NamedMatch],
) -> Result<Vec<(String, ValueMatch)>, RouteWireError> {
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("{at}[{i}]");
            Ok((
                m.name.clone(),
                string_match_from_wire(&at, m.value.as_ref())?,
            ))
        })
        .collect()
}

fn header_matches(at: &str, list: &[NamedMatch]) -> Result<Vec<HeaderMatch>, RouteWireError> {
    named_from_wire(at, list)?
        .into_iter()
        .map(|(name, value)| {
            Ok(HeaderMatch {
                name: header_name(at, &name)?,
                value,
            })
        })
        .collect()
}

pub(crate) fn http_match_from_wire(
    at: &str,
    m: &HttpMatch,
) -> Result<CoreHttpMatch, RouteWireError> {
    let path = match m.path.as_ref().map(|p| p.kind.as_ref()) {
        None => None,
        Some(Some(path_match::Kind::Exact(v))) => Some(CorePathMatch::Exact(path_from_wire(
            &format!("{at}.path"),
            v,
        )?)),
        Some(Some(path_match::Kind::Prefix(v))) => Some(CorePathMatch::prefix(&path_from_wire(
            &format!("{at}.path"),
            v,
        )?)),
        Some(Some(path_match::Kind::Regex(r))) => {
            Some(CorePathMatch::Regex(pattern(&format!("{at}.path"), r)?))
        }
        Some(None) => {
            return bad(
                &format!("{at}.path"),
                "no path match this proxy understands",
            );
        }
    };
    let method = match m.method.as_str() {
        "" => None,
        v if v.bytes().all(|b| b.is_ascii_uppercase()) => Some(v.to_string()),
        v => return bad(&format!("{at}.method"), format!("{v:?} is not a method")),
    };
    Ok(CoreHttpMatch {
        path,
        method,
        headers: header_matches(&format!("{at}.headers"), &m.headers)?,
        query: named_from_wire(&format!("{at}.query"), &m.query)?
            .into_iter()
            .map(|(name, value)| QueryMatch { name, value })
            .collect(),
    })
}

pub(crate) fn grpc_match_from_wire(
    at: &str,
    m: &GrpcMatch,
) -> Result<CoreGrpcMatch, RouteWireError> {
    Ok(CoreGrpcMatch {
        service: m
            .service
            .as_ref()
            .map(|s| string_match_from_wire(&format!("{at}.service"), Some(s)))
            .transpose()?,
        method: m
            .method
            .as_ref()
            .map(|s| string_match_from_wire(&format!("{at}.method"), Some(s)))
            .transpose()?,
        headers: header_matches(&format!("{at}.headers"), &m.headers)?,
    })
}

fn meta(name: &str) -> RouteMeta {
    RouteMeta {
        name: name.to_string(),
        source: RouteSource::ControlPlane,
    }
}

fn rule_name(n: &str) -> Option<String> {
    (!n.is_empty()).then(|| n.to_string())
}

/// The routes `p` carries, or why they cannot be used.
pub fn traffic_from_wire(p: &TrafficPolicy) -> Result<CoreTrafficPolicy, RouteWireError> {
    // A share above the whole reads as the whole.
    let trace_starts = p
        .http
        .iter()
        .map(|r| (&r.name, r.trace_start_millionths))
        .chain(p.grpc.iter().map(|r| (&r.name, r.trace_start_millionths)))
        .filter_map(|(n, m)| Some((n.clone(), m?.min(1_000_000))))
        .collect();
    let mut http = Vec::with_capacity(p.http.len());
    for (i, r) in p.http.iter().enumerate() {
        let mut rules = Vec::with_capacity(r.rules.len());
        for (j, rule) in r.rules.iter().enumerate() {
            let at = format!("http[{i}].rules[{j}]");
            let guards = Guards::from_wire(
                &at,
                rule.timeouts.as_ref(),
                rule.retry.as_ref(),
                rule.fault.as_ref(),
                rule.limits.as_ref(),
            )?;
            rules.push(CoreHttpRule {
                name: rule_name(&rule.name),
                matches: rule
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(k, m)| http_match_from_wire(&format!("{at}.matches[{k}]"), m))
                    .collect::<Result<_, _>>()?,
                filters: filters_from_wire(&format!("{at}.filters"), &rule.filters)?,
                backends: backends_from_wire(&format!("{at}.backends"), &rule.backends)?,
                timeouts: guards.timeouts,
                retry: guards.retry,
                fault: guards.fault,
                limit: guards.limit,
            });
        }
        http.push(CoreHttpRoute {
            meta: meta(&r.name),
            rules,
        });
    }
    let mut grpc = Vec::with_capacity(p.grpc.len());
    for (i, r) in p.grpc.iter().enumerate() {
        let mut rules = Vec::with_capacity(r.rules.len());
        for (j, rule) in r.rules.iter().enumerate() {
            let at = format!("grpc[{i}].rules[{j}]");
            let matches = rule
                .matches
                .iter()
                .enumerate()
                .map(|(k, m)| grpc_match_from_wire(&format!("{at}.matches[{k}]"), m))
                .collect::<Result<_, RouteWireError>>()?;
            let guards = Guards::from_wire(
                &at,
                rule.timeouts.as_ref(),
                rule.retry.as_ref(),
                rule.fault.as_ref(),
                rule.limits.as_ref(),
            )?;
            rules.push(CoreGrpcRule {
                name: rule_name(&rule.name),
                matches,
                filters: filters_from_wire(&format!("{at}.filters"), &rule.filters)?,
                backends: backends_from_wire(&format!("{at}.backends"), &rule.backends)?,
                timeouts: guards.timeouts,
                retry: guards.retry,
                fault: guards.fault,
                limit: guards.limit,
            });
        }
        grpc.push(CoreGrpcRoute {
            meta: meta(&r.name),
            rules,
        });
    }
    Ok(CoreTrafficPolicy {
        http: Arc::from(http),
        grpc: Arc::from(grpc),
        backend: backend_policy_from_wire(p.backend.as_ref()),
        trace_starts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy with every kind of match and filter survives the trip through the wire.
    #[test]
    fn routes_survive_the_wire() {
        let spec: weft_core::policy::route_spec::HttpRouteSpec = serde_json::from_value(serde_json::json!({
            "parentRefs": [{"name": "web"}],
            "rules": [
                {"name": "v2",
                 "matches": [{"path": {"type": "PathPrefix", "value": "/v2"}, "method": "GET",
                              "headers": [{"name": "x-a", "value": "1"}, {"type": "RegularExpression", "name": "x-b", "value": "[a-z]+"}],
                              "queryParams": [{"name": "q", "value": "1"}]}],
                 "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "web-v2.demo", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}},
                             {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-s", "value": "1"}], "add": [{"name": "x-a", "value": "2"}], "remove": ["x-r"]}},
                             {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["server"]}}],
                 "backendRefs": [{"name": "web-v2", "port": 8080, "weight": 9, "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-b", "value": "v2"}]}}]}, {"name": "web", "weight": 1}],
                 "timeouts": {"request": "10s", "backendRequest": "1500ms"},
                 "retry": {"codes": [502, 503], "attempts": 3, "backoff": "50ms", "idempotent": true},
                 "fault": {"delay": {"fixed": "1s", "percent": 2.5}, "abort": {"httpStatus": 503, "percent": 1}, "sources": ["shop/*", "spiffe://weft.test/ns/a/sa/b"]},
                 "limits": {"maxInFlight": 100, "maxQueue": 10}},
                {"matches": [{"path": {"type": "Exact", "value": "/old"}}, {"path": {"type": "RegularExpression", "value": "/o.d/.*"}}],
                 "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "hostname": "new.demo", "port": 8443, "statusCode": 301, "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}]}
            ]
        }))
        .unwrap();
        let (_, route) = spec
            .compile(
                RouteMeta {
                    name: "demo/web".into(),
                    source: RouteSource::ControlPlane,
                },
                "demo",
            )
            .unwrap();
        let grpc_spec: weft_core::policy::route_spec::GrpcRouteSpec = serde_json::from_value(serde_json::json!({
            "parentRefs": [{"name": "users"}],
            "rules": [{"matches": [{"method": {"type": "RegularExpression", "service": "pkg\\..*", "method": "Get"}, "headers": [{"name": "x-t", "value": "1"}]}],
                       "backendRefs": [{"name": "users-v2"}], "timeouts": {"request": "2s"},
                       "retry": {"conditions": ["unavailable"], "idempotent": true},
                       "fault": {"abort": {"grpcStatus": "unavailable", "percent": 50}}}]
        }))
        .unwrap();
        let (_, grpc) = grpc_spec
            .compile(
                RouteMeta {
                    name: "demo/users".into(),
                    source: RouteSource::ControlPlane,
                },
                "demo",
            )
            .unwrap();
        let mut policy = CoreTrafficPolicy {
            http: Arc::from(vec![route]),
            grpc: Arc::from(vec![grpc]),
            trace_starts: vec![("demo/users".into(), 250_000)],
            backend: BackendPolicy {
                retry_budget: weft_core::policy::backend::RetryBudget {
                    percent: 5,
                    min_per_second: 1,
                    window: std::time::Duration::from_secs(30),
                },
                failure_accrual: weft_core::policy::backend::FailureAccrual {
                    consecutive_failures: 0,
                    first_penalty: std::time::Duration::from_millis(10),
                    max_penalty: std::time::Duration::from_secs(2),
                },
                limit: Some(ConcurrencyLimit {
                    max_in_flight: 4,
                    max_queue: 1,
                }),
            },
        };
        let mut http = policy.http.to_vec();
        http[0].rules[0].backends[1].missing = true;
        policy.http = Arc::from(http);
        let back = traffic_from_wire(&traffic_to_wire(&policy)).unwrap();
        assert_eq!(back, policy);
    }

    /// Anything that does not parse whole is refused, naming where.
    #[test]
    fn what_does_not_parse_is_refused_where_it_stands() {
        let rule = |m: HttpMatch| TrafficPolicy {
            http: vec![HttpRoute {
                name: "demo/r".into(),
                trace_start_millionths: None,
                rules: vec![HttpRule {
                    matches: vec![m],
                    ..HttpRule::default()
                }],
            }],
            grpc: vec![],
            backend: None,
        };
        let regex = rule(HttpMatch {
            path: Some(PathMatch {
                kind: Some(path_match::Kind::Regex("(".into())),
            }),
            ..HttpMatch::default()
        });
        assert_eq!(
            traffic_from_wire(&regex).unwrap_err().at,
            "http[0].rules[0].matches[0].path"
        );
        let unset = rule(HttpMatch {
            path: Some(PathMatch { kind: None }),
            ..HttpMatch::default()
        });
        assert!(traffic_from_wire(&unset).is_err());
        let header = rule(HttpMatch {
            headers: vec![NamedMatch {
                name: "bad name".into(),
                value: Some(StringMatch {
                    kind: Some(string_match::Kind::Exact("1".into())),
                }),
            }],
            ..HttpMatch::default()
        });
        assert!(traffic_from_wire(&header).is_err());
        let redirect = TrafficPolicy {
            http: vec![HttpRoute {
                name: "demo/r".into(),
                trace_start_millionths: None,
                rules: vec![HttpRule {
                    filters: vec![RouteFilter {
                        filter: Some(route_filter::Filter::Redirect(Redirect {
                            status: 200,
                            ..Redirect::default()
                        })),
                    }],
                    ..HttpRule::default()
                }],
            }],
            grpc: vec![],
            backend: None,
        };
        assert_eq!(
            traffic_from_wire(&redirect).unwrap_err().at,
            "http[0].rules[0].filters[0].status"
        );
    }

    /// A backend policy out of range reads as the defaults, never as no protection.
    #[test]
    fn backend_values_out_of_range_read_as_defaults() {
        let wire = WireBackendPolicy {
            retry_percent: 500,
            retry_min_per_second: 3,
            retry_window_ms: 10,
            accrual_failures: 4,
            accrual_first_penalty_ms: 5_000,
            accrual_max_penalty_ms: 1_000,
            limits: Some(RouteLimits {
                max_in_flight: 0,
                max_queue: 9,
            }),
        };
        let b = backend_policy_from_wire(Some(&wire));
        let d = BackendPolicy::default();
        assert_eq!(b.retry_budget.percent, d.retry_budget.percent);
        assert_eq!(b.retry_budget.window, d.retry_budget.window);
        assert_eq!(b.retry_budget.min_per_second, 3);
        assert_eq!(b.failure_accrual.consecutive_failures, 4);
        assert_eq!(
            b.failure_accrual.first_penalty,
            d.failure_accrual.first_penalty
        );
        assert_eq!(b.limit, None);
        assert_eq!(backend_policy_from_wire(None), d);
    }
}
