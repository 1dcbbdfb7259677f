//! Routes as users write them: the fields of Gateway API `HTTPRoute` and `GRPCRoute`
//! (`gateway.networking.k8s.io/v1`), in snake_case in the mesh file and in camelCase in
//! Kubernetes objects. One set of serde types reads both, so the mesh file says the same
//! things as the objects, key for key. [`HttpRouteSpec::compile`] and
//! [`GrpcRouteSpec::compile`] check them and build the model of [`super::route`]; an error
//! names the key (`rules[0].matches[1].path.value`) for the caller to place in its file or
//! object.

use std::time::Duration;

use serde::Deserialize;

use super::fault::{AbortWith, FaultInjection, GRPC_STATUS_NAMES, Share};
use super::resilience::{
    DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_BACKOFF, GRPC_RETRY_CONDITIONS, MAX_RETRY_ATTEMPTS,
    format_duration, parse_duration,
};
use super::route::{
    ConcurrencyLimit, GrpcMatch, GrpcRoute, GrpcRule, HeaderMatch, HeaderModifier, HttpFilter,
    HttpMatch, HttpRoute, HttpRule, PathMatch, PathModifier, Pattern, QueryMatch, RequestRedirect,
    RetryPolicy, RouteMeta, Timeouts, UrlRewrite, ValueMatch, WeightedBackend,
};
use crate::model::ServiceName;

/// A key of a route and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct RouteSpecError {
    /// The key, from the route's spec down (`rules[0].backend_refs[1].weight`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

pub(super) fn err<T>(
    key: impl Into<String>,
    message: impl Into<String>,
) -> Result<T, RouteSpecError> {
    Err(RouteSpecError {
        key: key.into(),
        message: message.into(),
    })
}

/// The service a route attaches to (GAMMA: a `parentRef` of kind `Service`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentRef {
    /// `""` (the core group) or absent.
    #[serde(default)]
    pub group: Option<String>,
    /// `Service` or absent.
    #[serde(default)]
    pub kind: Option<String>,
    /// The service's namespace; absent: the route's.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The service's name.
    pub name: String,
    /// One port of the service; absent: every port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Not used by the mesh profile.
    #[serde(default, alias = "sectionName")]
    pub section_name: Option<String>,
}

/// `type` and `value` of a path match.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatchSpec {
    /// `Exact`, `PathPrefix` (the default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The path; absent: `/`.
    #[serde(default)]
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatchSpec {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The header's or parameter's name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// One match of an HTTP rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMatchSpec {
    /// The path.
    #[serde(default)]
    pub path: Option<PathMatchSpec>,
    /// Headers.
    #[serde(default)]
    pub headers: Vec<ValueMatchSpec>,
    /// Query parameters.
    #[serde(default, alias = "queryParams")]
    pub query_params: Vec<ValueMatchSpec>,
    /// The method.
    #[serde(default)]
    pub method: Option<String>,
}

/// A header to set or add.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueSpec {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// `RequestHeaderModifier` / `ResponseHeaderModifier`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifierSpec {
    /// Set, replacing.
    #[serde(default)]
    pub set: Vec<HeaderValueSpec>,
    /// Added.
    #[serde(default)]
    pub add: Vec<HeaderValueSpec>,
    /// Removed, by name.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A path change of a rewrite or redirect.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathModifierSpec {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: String,
    /// With `ReplaceFullPath`.
    #[serde(default, alias = "replaceFullPath")]
    pub replace_full_path: Option<String>,
    /// With `ReplacePrefixMatch`.
    #[serde(default, alias = "replacePrefixMatch")]
    pub replace_prefix_match: Option<String>,
}

/// `RequestRedirect`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectSpec {
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// The host.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The path.
    #[serde(default)]
    pub path: Option<PathModifierSpec>,
    /// The port.
    #[serde(default)]
    pub port: Option<u16>,
    /// 301, 302 (the default), 303, 307 or 308.
    #[serde(default, alias = "statusCode")]
    pub status_code: Option<u16>,
}

/// `URLRewrite`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteSpec {
    /// The host.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The path.
    #[serde(default)]
    pub path: Option<PathModifierSpec>,
}

/// A filter: its `type` and the field of that type.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestRedirect` or `URLRewrite`.
    #[serde(rename = "type")]
    pub kind: String,
    /// With `RequestHeaderModifier`.
    #[serde(default, alias = "requestHeaderModifier")]
    pub request_header_modifier: Option<HeaderModifierSpec>,
    /// With `ResponseHeaderModifier`.
    #[serde(default, alias = "responseHeaderModifier")]
    pub response_header_modifier: Option<HeaderModifierSpec>,
    /// With `RequestRedirect`.
    #[serde(default, alias = "requestRedirect")]
    pub request_redirect: Option<RedirectSpec>,
    /// With `URLRewrite`.
    #[serde(default, alias = "urlRewrite")]
    pub url_rewrite: Option<RewriteSpec>,
    /// `RequestMirror` (not supported; refused).
    #[serde(default, alias = "requestMirror")]
    pub request_mirror: Option<serde::de::IgnoredAny>,
    /// `ExtensionRef` (not supported; refused).
    #[serde(default, alias = "extensionRef")]
    pub extension_ref: Option<serde::de::IgnoredAny>,
}

/// A backend of a rule.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRefSpec {
    /// `""` (the core group) or absent.
    #[serde(default)]
    pub group: Option<String>,
    /// `Service` or absent.
    #[serde(default)]
    pub kind: Option<String>,
    /// The service's name.
    pub name: String,
    /// Its namespace; absent: the route's.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Its port; absent: the service's only (or lowest) port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Its share; absent: 1.
    #[serde(default)]
    pub weight: Option<u32>,
    /// Filters for this backend's requests only.
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
}

/// One rule of an HTTP route.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRuleSpec {
    /// Its name (the route's metric label carries it).
    #[serde(default)]
    pub name: Option<String>,
    /// Any of these; none: every request.
    #[serde(default)]
    pub matches: Vec<HttpMatchSpec>,
    /// Filters, in order.
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    /// Backends.
    #[serde(default, alias = "backendRefs")]
    pub backend_refs: Vec<BackendRefSpec>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Option<TimeoutsSpec>,
    /// Retries.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Faults to inject (Weft's; on Kubernetes not part of `HTTPRoute`).
    #[serde(default)]
    pub fault: Option<FaultSpec>,
    /// Calls in flight and waiting (Weft's too).
    #[serde(default)]
    pub limits: Option<LimitsSpec>,
}

/// `limits` of a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Calls in flight at once (at least 1).
    #[serde(alias = "maxInFlight")]
    pub max_in_flight: u32,
    /// Calls that may wait for a place (default 0: refused at once).
    #[serde(default, alias = "maxQueue")]
    pub max_queue: u32,
}

pub(super) fn limits(
    key: &str,
    spec: Option<&LimitsSpec>,
) -> Result<Option<ConcurrencyLimit>, RouteSpecError> {
    let Some(l) = spec else { return Ok(None) };
    if l.max_in_flight == 0 {
        return err(format!("{key}.limits.max_in_flight"), "at least 1");
    }
    Ok(Some(ConcurrencyLimit {
        max_in_flight: l.max_in_flight,
        max_queue: l.max_queue,
    }))
}

/// `fault` of a rule: a delay, an abort or both, each for a share of the attempts, for every
/// caller or only those `sources` names.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// A delay before sending.
    #[serde(default)]
    pub delay: Option<DelaySpec>,
    /// An answer in place of the backend's.
    #[serde(default)]
    pub abort: Option<AbortSpec>,
    /// The callers it applies to (`<ns>/*`, `<ns>/<name>`, a SPIFFE ID, `*`); none: all.
    #[serde(default)]
    pub sources: Vec<String>,
}

/// `fault.delay`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelaySpec {
    /// How long (a Gateway API duration, up to 10m).
    pub fixed: String,
    /// The share of attempts delayed, in percent (default 100).
    #[serde(default)]
    pub percent: Option<f64>,
}

/// `fault.abort`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortSpec {
    /// The HTTP status answered (400 to 599; HTTP rules).
    #[serde(default, alias = "httpStatus")]
    pub http_status: Option<u16>,
    /// The gRPC status answered, by name (`unavailable`, ...; gRPC rules).
    #[serde(default, alias = "grpcStatus")]
    pub grpc_status: Option<String>,
    /// The share of attempts aborted, in percent (default 100).
    #[serde(default)]
    pub percent: Option<f64>,
}

fn share(key: &str, percent: Option<f64>) -> Result<Share, RouteSpecError> {
    match percent {
        None => Ok(Share::ALL),
        Some(p) => Share::from_percent(p).map_or_else(
            || err(format!("{key}.percent"), format!("{p}: from 0 to 100")),
            Ok,
        ),
    }
}

impl FaultSpec {
    /// Checks it (`key` is its own key) for an HTTP rule, or a gRPC rule when `grpc`.
    pub fn compile(&self, key: &str, grpc: bool) -> Result<FaultInjection, RouteSpecError> {
        if self.delay.is_none() && self.abort.is_none() {
            return err(key, "name a delay, an abort or both");
        }
        let delay = match &self.delay {
            None => None,
            Some(d) => {
                let at = format!("{key}.delay");
                let fixed = match parse_duration(&d.fixed) {
                    Ok(f) if !f.is_zero() && f <= Duration::from_secs(600) => f,
                    Ok(_) => return err(format!("{at}.fixed"), "from 1ms to 10m"),
                    Err(e) => return err(format!("{at}.fixed"), e.to_string()),
                };
                Some((fixed, share(&at, d.percent)?))
            }
        };
        let abort = match &self.abort {
            None => None,
            Some(a) => {
                let at = format!("{key}.abort");
                let with = match (grpc, a.http_status, &a.grpc_status) {
                    (false, Some(s), None) if (400..=599).contains(&s) => AbortWith::Http(s),
                    (false, Some(s), None) => {
                        return err(format!("{at}.http_status"), format!("{s}: from 400 to 599"));
                    }
                    (true, None, Some(name)) => {
                        match GRPC_STATUS_NAMES.iter().find(|(n, _)| n == name) {
                            Some((_, code)) => AbortWith::Grpc(*code),
                            None => {
                                return err(
                                    format!("{at}.grpc_status"),
                                    format!(
                                        "{name:?}: a gRPC status name such as unavailable or internal"
                                    ),
                                );
                            }
                        }
                    }
                    (false, ..) => return err(at, "an HTTP rule aborts with http_status"),
                    (true, ..) => return err(at, "a gRPC rule aborts with grpc_status"),
                };
                Some((with, share(&at, a.percent)?))
            }
        };
        let mut sources = Vec::with_capacity(self.sources.len());
        for (i, s) in self.sources.iter().enumerate() {
            match s.parse() {
                Ok(m) => sources.push(m),
                Err(e) => return err(format!("{key}.sources[{i}]"), format!("{e}")),
            }
        }
        Ok(FaultInjection {
            delay,
            abort,
            sources,
        })
    }
}

fn fault(
    key: &str,
    spec: Option<&FaultSpec>,
    grpc: bool,
) -> Result<Option<FaultInjection>, RouteSpecError> {
    spec.map(|f| f.compile(&format!("{key}.fault"), grpc))
        .transpose()
}

/// `retry` of a rule: Gateway API's `codes`, `attempts` and `backoff` (GEP-1731), and Weft's
/// `conditions` (gRPC rules) and `idempotent`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// HTTP statuses to retry on (400 to 599; HTTP rules).
    #[serde(default)]
    pub codes: Vec<u16>,
    /// gRPC statuses to retry on: `cancelled`, `deadline-exceeded`, `internal`,
    /// `resource-exhausted`, `unavailable` (gRPC rules).
    #[serde(default)]
    pub conditions: Vec<String>,
    /// Retries after the first attempt (default 2, at most 10).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// The first backoff (default 25ms); later ones grow to ten times it.
    #[serde(default)]
    pub backoff: Option<String>,
    /// Every call of the rule is safe to send twice: retry all methods, not only idempotent
    /// ones (gRPC calls are `POST`s: a gRPC rule must say this to retry on a status).
    #[serde(default)]
    pub idempotent: bool,
}

impl RetrySpec {
    /// Checks it (`key` is its own key) for an HTTP rule, or a gRPC rule when `grpc`.
    pub fn compile(&self, key: &str, grpc: bool) -> Result<RetryPolicy, RouteSpecError> {
        let attempts = self.attempts.unwrap_or(DEFAULT_RETRY_ATTEMPTS);
        if attempts > MAX_RETRY_ATTEMPTS {
            return err(
                format!("{key}.attempts"),
                format!("{attempts}: at most {MAX_RETRY_ATTEMPTS}"),
            );
        }
        let backoff = match &self.backoff {
            None => DEFAULT_RETRY_BACKOFF,
            Some(text) => match parse_duration(text) {
                Ok(d) if d >= Duration::from_millis(1) && d <= Duration::from_secs(10) => d,
                Ok(_) => return err(format!("{key}.backoff"), format!("{text}: from 1ms to 10s")),
                Err(e) => return err(format!("{key}.backoff"), e.to_string()),
            },
        };
        if grpc && !self.codes.is_empty() {
            return err(
                format!("{key}.codes"),
                "a gRPC rule retries on gRPC statuses: name them in conditions",
            );
        }
        if !grpc && !self.conditions.is_empty() {
            return err(
                format!("{key}.conditions"),
                "an HTTP rule retries on HTTP statuses: list them in codes",
            );
        }
        for (i, c) in self.codes.iter().enumerate() {
            if !(400..=599).contains(c) {
                return err(format!("{key}.codes[{i}]"), format!("{c}: from 400 to 599"));
            }
        }
        let mut grpc_codes = Vec::new();
        for (i, c) in self.conditions.iter().enumerate() {
            match GRPC_RETRY_CONDITIONS.iter().find(|(name, _)| name == c) {
                Some((_, code)) => grpc_codes.push(*code),
                None => {
                    let names: Vec<&str> = GRPC_RETRY_CONDITIONS.iter().map(|(n, _)| *n).collect();
                    return err(
                        format!("{key}.conditions[{i}]"),
                        format!("{c:?}: expected one of {}", names.join(", ")),
                    );
                }
            }
        }
        if grpc && !grpc_codes.is_empty() && !self.idempotent {
            return err(
                format!("{key}.idempotent"),
                "gRPC calls are POSTs, never retried on a status unless the rule says its calls are safe to send twice (idempotent = true)",
            );
        }
        Ok(RetryPolicy {
            attempts,
            codes: self.codes.clone(),
            grpc_codes,
            backoff,
            idempotent: self.idempotent,
        })
    }
}

fn retry(
    key: &str,
    spec: Option<&RetrySpec>,
    grpc: bool,
) -> Result<Option<RetryPolicy>, RouteSpecError> {
    spec.map(|r| r.compile(&format!("{key}.retry"), grpc))
        .transpose()
}

/// `timeouts` of a rule: Gateway API durations (`10s`, `500ms`); `0s` turns one off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// The whole call, every attempt included.
    #[serde(default)]
    pub request: Option<String>,
    /// Each attempt; at most `request`.
    #[serde(default, alias = "backendRequest")]
    pub backend_request: Option<String>,
}

impl TimeoutsSpec {
    /// Checks the durations (`key` is the spec's own key) and builds the model.
    pub fn compile(&self, key: &str) -> Result<Timeouts, RouteSpecError> {
        let read = |what: &str, v: &Option<String>| -> Result<Option<Duration>, RouteSpecError> {
            match v {
                None => Ok(None),
                Some(text) => match parse_duration(text) {
                    Ok(d) if d.is_zero() => Ok(None),
                    Ok(d) => Ok(Some(d)),
                    Err(e) => err(format!("{key}.{what}"), e.to_string()),
                },
            }
        };
        let t = Timeouts {
            request: read("request", &self.request)?,
            backend_request: read("backend_request", &self.backend_request)?,
        };
        if let (Some(r), Some(b)) = (t.request, t.backend_request)
            && b > r
        {
            return err(
                format!("{key}.backend_request"),
                format!(
                    "{} is longer than the request timeout ({}): an attempt cannot outlast its call",
                    format_duration(b),
                    format_duration(r)
                ),
            );
        }
        Ok(t)
    }
}

fn timeouts(key: &str, spec: Option<&TimeoutsSpec>) -> Result<Timeouts, RouteSpecError> {
    spec.map_or(Ok(Timeouts::default()), |t| {
        t.compile(&format!("{key}.timeouts"))
    })
}

/// The `spec` of an `HTTPRoute`, or a route of the mesh file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRouteSpec {
    /// The services it attaches to.
    #[serde(default, alias = "parentRefs")]
    pub parent_refs: Vec<ParentRef>,
    /// Not used by the mesh profile (a route bound to a service applies to its traffic
    /// whatever host the caller names).
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Its rules.
    #[serde(default)]
    pub rules: Vec<HttpRuleSpec>,
}

/// The method part of a gRPC match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcMethodSpec {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The service (`pkg.Service`).
    #[serde(default)]
    pub service: Option<String>,
    /// The method.
    #[serde(default)]
    pub method: Option<String>,
}

/// One match of a gRPC rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcMatchSpec {
    /// Service and method.
    #[serde(default)]
    pub method: Option<GrpcMethodSpec>,
    /// Headers.
    #[serde(default)]
    pub headers: Vec<ValueMatchSpec>,
}

/// One rule of a gRPC route.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcRuleSpec {
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// Any of these; none: every request.
    #[serde(default)]
    pub matches: Vec<GrpcMatchSpec>,
    /// Filters (header modifiers only).
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    /// Backends.
    #[serde(default, alias = "backendRefs")]
    pub backend_refs: Vec<BackendRefSpec>,
    /// Timeouts, as an HTTP rule's (the mesh file's extension: `GRPCRoute` has none).
    #[serde(default)]
    pub timeouts: Option<TimeoutsSpec>,
    /// Retries on gRPC statuses (the mesh file's extension too).
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Faults to inject (the mesh file's extension too).
    #[serde(default)]
    pub fault: Option<FaultSpec>,
    /// Calls in flight and waiting (the mesh file's extension too).
    #[serde(default)]
    pub limits: Option<LimitsSpec>,
}

/// The `spec` of a `GRPCRoute`, or a gRPC route of the mesh file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcRouteSpec {
    /// The services it attaches to.
    #[serde(default, alias = "parentRefs")]
    pub parent_refs: Vec<ParentRef>,
    /// Not used by the mesh profile.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Its rules.
    #[serde(default)]
    pub rules: Vec<GrpcRuleSpec>,
}

/// A service a route attaches to, for one port or all.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Parent {
    /// The service.
    pub service: ServiceName,
    /// Its port; none: every port.
    pub port: Option<u16>,
}

/// A route and the services it attaches to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bound<R> {
    /// The services.
    pub parents: Vec<Parent>,
    /// The route.
    pub route: R,
}

fn parents(refs: &[ParentRef], namespace: &str) -> Result<Vec<Parent>, RouteSpecError> {
    if refs.is_empty() {
        return err("parent_refs", "a route attaches to at least one service");
    }
    refs.iter()
        .enumerate()
        .map(|(i, r)| {
            let key = format!("parent_refs[{i}]");
            check_core_service(&key, r.group.as_deref(), r.kind.as_deref())?;
            let ns = r.namespace.as_deref().unwrap_or(namespace);
            let service = ServiceName::new(ns, &r.name).map_err(|e| RouteSpecError {
                key: format!("{key}.name"),
                message: e.to_string(),
            })?;
            Ok(Parent {
                service,
                port: r.port,
            })
        })
        .collect()
}

/// The mesh profile attaches to, and sends to, Services of the core group only.
fn check_core_service(
    key: &str,
    group: Option<&str>,
    kind: Option<&str>,
) -> Result<(), RouteSpecError> {
    if group.is_some_and(|g| !g.is_empty()) {
        return err(
            format!("{key}.group"),
            "only services are supported (group \"\")",
        );
    }
    if kind.is_some_and(|k| k != "Service") {
        return err(
            format!("{key}.kind"),
            "only services are supported (kind Service)",
        );
    }
    Ok(())
}

fn pattern(key: &str, source: &str) -> Result<Pattern, RouteSpecError> {
    Pattern::new(source).map_err(|e| RouteSpecError {
        key: key.to_string(),
        message: format!("not a regular expression: {e}"),
    })
}

fn value_match(key: &str, kind: Option<&str>, value: &str) -> Result<ValueMatch, RouteSpecError> {
    match kind.unwrap_or("Exact") {
        "Exact" => Ok(ValueMatch::Exact(value.to_string())),
        "RegularExpression" => Ok(ValueMatch::Regex(pattern(&format!("{key}.value"), value)?)),
        other => err(
            format!("{key}.type"),
            format!("unknown match type {other:?}: expected Exact or RegularExpression"),
        ),
    }
}

fn header_name(key: &str, name: &str) -> Result<String, RouteSpecError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        return err(key, format!("{name:?} is not a header name"));
    }
    Ok(name.to_ascii_lowercase())
}

fn header_matches(key: &str, specs: &[ValueMatchSpec]) -> Result<Vec<HeaderMatch>, RouteSpecError> {
    specs
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let key = format!("{key}[{i}]");
            Ok(HeaderMatch {
                name: header_name(&format!("{key}.name"), &h.name)?,
                value: value_match(&key, h.kind.as_deref(), &h.value)?,
            })
        })
        .collect()
}

fn path_value(key: &str, value: &str) -> Result<String, RouteSpecError> {
    if !value.starts_with('/') {
        return err(key, format!("{value:?} does not start with /"));
    }
    Ok(value.to_string())
}

pub(super) fn http_match(key: &str, spec: &HttpMatchSpec) -> Result<HttpMatch, RouteSpecError> {
    let path = match &spec.path {
        None => None,
        Some(p) => {
            let value = p.value.as_deref().unwrap_or("/");
            let vkey = format!("{key}.path.value");
            Some(match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => PathMatch::Exact(path_value(&vkey, value)?),
                "PathPrefix" => PathMatch::prefix(&path_value(&vkey, value)?),
                "RegularExpression" => PathMatch::Regex(pattern(&vkey, value)?),
                other => {
                    return err(
                        format!("{key}.path.type"),
                        format!(
                            "unknown path match {other:?}: expected Exact, PathPrefix or RegularExpression"
                        ),
                    );
                }
            })
        }
    };
    let method = match &spec.method {
        None => None,
        Some(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => Some(m.clone()),
        Some(m) => return err(format!("{key}.method"), format!("{m:?} is not a method")),
    };
    let query = spec
        .query_params
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let key = format!("{key}.query_params[{i}]");
            if q.name.is_empty() {
                return err(format!("{key}.name"), "empty parameter name");
            }
            Ok(QueryMatch {
                name: q.name.clone(),
                value: value_match(&key, q.kind.as_deref(), &q.value)?,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(HttpMatch {
        path,
        method,
        headers: header_matches(&format!("{key}.headers"), &spec.headers)?,
        query,
    })
}

fn header_modifier(
    key: &str,
    spec: Option<&HeaderModifierSpec>,
) -> Result<HeaderModifier, RouteSpecError> {
    let Some(spec) = spec else {
        return err(key, "missing: a filter of this type needs its settings");
    };
    let pairs =
        |what: &str, list: &[HeaderValueSpec]| -> Result<Vec<(String, String)>, RouteSpecError> {
            list.iter()
                .enumerate()
                .map(|(i, h)| {
                    let k = format!("{key}.{what}[{i}]");
                    if h.value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                        return err(
                            format!("{k}.value"),
                            "a header value cannot hold CR, LF or NUL",
                        );
                    }
                    Ok((header_name(&format!("{k}.name"), &h.name)?, h.value.clone()))
                })
                .collect()
        };
    Ok(HeaderModifier {
        set: pairs("set", &spec.set)?,
        add: pairs("add", &spec.add)?,
        remove: spec
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| header_name(&format!("{key}.remove[{i}]"), n))
            .collect::<Result<_, _>>()?,
    })
}

fn path_modifier(key: &str, spec: &PathModifierSpec) -> Result<PathModifier, RouteSpecError> {
    match spec.kind.as_str() {
        "ReplaceFullPath" => match &spec.replace_full_path {
            Some(p) => Ok(PathModifier::ReplaceFullPath(path_value(
                &format!("{key}.replace_full_path"),
                p,
            )?)),
            None => err(format!("{key}.replace_full_path"), "missing"),
        },
        "ReplacePrefixMatch" => match &spec.replace_prefix_match {
            Some(p) => Ok(PathModifier::ReplacePrefixMatch(path_value(
                &format!("{key}.replace_prefix_match"),
                p,
            )?)),
            None => err(format!("{key}.replace_prefix_match"), "missing"),
        },
        other => err(
            format!("{key}.type"),
            format!(
                "unknown path modifier {other:?}: expected ReplaceFullPath or ReplacePrefixMatch"
            ),
        ),
    }
}

fn hostname(key: &str, host: &str) -> Result<String, RouteSpecError> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !ok {
        return err(key, format!("{host:?} is not a host name"));
    }
    Ok(host.to_ascii_lowercase())
}

/// Which filters a place accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Allowed {
    /// A rule of an HTTP route: all four.
    HttpRule,
    /// A backend, or a gRPC rule: the header modifiers.
    HeadersOnly,
}

fn filters(
    key: &str,
    specs: &[FilterSpec],
    allowed: Allowed,
) -> Result<Vec<HttpFilter>, RouteSpecError> {
    let mut out = Vec::new();
    for (i, f) in specs.iter().enumerate() {
        let key = format!("{key}[{i}]");
        let filter = match f.kind.as_str() {
            "RequestHeaderModifier" => HttpFilter::RequestHeaders(header_modifier(
                &format!("{key}.request_header_modifier"),
                f.request_header_modifier.as_ref(),
            )?),
            "ResponseHeaderModifier" => HttpFilter::ResponseHeaders(header_modifier(
                &format!("{key}.response_header_modifier"),
                f.response_header_modifier.as_ref(),
            )?),
            "RequestRedirect" if allowed == Allowed::HttpRule => {
                let Some(r) = &f.request_redirect else {
                    return err(format!("{key}.request_redirect"), "missing");
                };
                let status = r.status_code.unwrap_or(302);
                if ![301, 302, 303, 307, 308].contains(&status) {
                    return err(
                        format!("{key}.request_redirect.status_code"),
                        format!("{status}: expected 301, 302, 303, 307 or 308"),
                    );
                }
                let scheme = match r.scheme.as_deref() {
                    None => None,
                    Some(s @ ("http" | "https")) => Some(s.to_string()),
                    Some(s) => {
                        return err(
                            format!("{key}.request_redirect.scheme"),
                            format!("{s:?}: expected http or https"),
                        );
                    }
                };
                HttpFilter::Redirect(RequestRedirect {
                    scheme,
                    hostname: r
                        .hostname
                        .as_deref()
                        .map(|h| hostname(&format!("{key}.request_redirect.hostname"), h))
                        .transpose()?,
                    port: r.port,
                    path: r
                        .path
                        .as_ref()
                        .map(|p| path_modifier(&format!("{key}.request_redirect.path"), p))
                        .transpose()?,
                    status,
                })
            }
            "URLRewrite" if allowed == Allowed::HttpRule => {
                let Some(r) = &f.url_rewrite else {
                    return err(format!("{key}.url_rewrite"), "missing");
                };
                HttpFilter::Rewrite(UrlRewrite {
                    hostname: r
                        .hostname
                        .as_deref()
                        .map(|h| hostname(&format!("{key}.url_rewrite.hostname"), h))
                        .transpose()?,
                    path: r
                        .path
                        .as_ref()
                        .map(|p| path_modifier(&format!("{key}.url_rewrite.path"), p))
                        .transpose()?,
                })
            }
            "RequestRedirect" | "URLRewrite" => {
                return err(
                    format!("{key}.type"),
                    format!("{} is not supported here: only header modifiers", f.kind),
                );
            }
            "RequestMirror" | "ExtensionRef" => {
                return err(
                    format!("{key}.type"),
                    format!("{} is not supported", f.kind),
                );
            }
            other => {
                return err(
                    format!("{key}.type"),
                    format!(
                        "unknown filter {other:?}: expected RequestHeaderModifier, \
                         ResponseHeaderModifier, RequestRedirect or URLRewrite"
                    ),
                );
            }
        };
        out.push(filter);
    }
    let redirect = out.iter().any(|f| matches!(f, HttpFilter::Redirect(_)));
    let rewrite = out.iter().any(|f| matches!(f, HttpFilter::Rewrite(_)));
    if redirect && rewrite {
        return err(key, "a rule cannot both redirect and rewrite");
    }
    for kind in [
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestRedirect",
        "URLRewrite",
    ] {
        if specs.iter().filter(|f| f.kind == kind).count() > 1 {
            return err(key, format!("{kind} appears more than once"));
        }
    }
    Ok(out)
}

fn backends(
    key: &str,
    specs: &[BackendRefSpec],
    namespace: &str,
) -> Result<Vec<WeightedBackend>, RouteSpecError> {
    let out = specs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let key = format!("{key}[{i}]");
            check_core_service(&key, b.group.as_deref(), b.kind.as_deref())?;
            let service = ServiceName::new(b.namespace.as_deref().unwrap_or(namespace), &b.name)
                .map_err(|e| RouteSpecError {
                    key: format!("{key}.name"),
                    message: e.to_string(),
                })?;
            let weight = b.weight.unwrap_or(1);
            if weight > 1_000_000 {
                return err(format!("{key}.weight"), "at most 1000000");
            }
            Ok(WeightedBackend {
                service,
                port: b.port,
                weight,
                filters: filters(&format!("{key}.filters"), &b.filters, Allowed::HeadersOnly)?,
                missing: false,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !out.is_empty() && out.iter().all(|b| b.weight == 0) {
        return err(
            key,
            "every backend has weight 0: the rule could send nothing anywhere",
        );
    }
    Ok(out)
}

/// A rule's prefix replacement needs every match of the rule to be a path prefix.
fn check_prefix_replacement(
    key: &str,
    f: &[HttpFilter],
    matches: &[HttpMatch],
) -> Result<(), RouteSpecError> {
    let replaces_prefix = f.iter().any(|f| {
        let path = match f {
            HttpFilter::Rewrite(r) => r.path.as_ref(),
            HttpFilter::Redirect(r) => r.path.as_ref(),
            _ => None,
        };
        matches!(path, Some(PathModifier::ReplacePrefixMatch(_)))
    });
    let all_prefix = !matches.is_empty()
        && matches
            .iter()
            .all(|m| matches!(m.path, Some(PathMatch::Prefix(_))));
    if replaces_prefix && !all_prefix {
        return err(
            key,
            "ReplacePrefixMatch needs every match of the rule to be a PathPrefix",
        );
    }
    Ok(())
}

impl HttpRouteSpec {
    /// Checks the spec of the route `meta` in `namespace` and builds it, with the services it
    /// attaches to.
    pub fn compile(
        &self,
        meta: RouteMeta,
        namespace: &str,
    ) -> Result<(Vec<Parent>, HttpRoute), RouteSpecError> {
        let parents = parents(&self.parent_refs, namespace)?;
        let mut rules = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let key = format!("rules[{i}]");
            let matches = r
                .matches
                .iter()
                .enumerate()
                .map(|(j, m)| http_match(&format!("{key}.matches[{j}]"), m))
                .collect::<Result<Vec<_>, _>>()?;
            let filters = filters(&format!("{key}.filters"), &r.filters, Allowed::HttpRule)?;
            check_prefix_replacement(&format!("{key}.filters"), &filters, &matches)?;
            rules.push(HttpRule {
                name: r.name.clone(),
                matches,
                filters,
                backends: backends(&format!("{key}.backend_refs"), &r.backend_refs, namespace)?,
                timeouts: timeouts(&key, r.timeouts.as_ref())?,
                retry: retry(&key, r.retry.as_ref(), false)?,
                fault: fault(&key, r.fault.as_ref(), false)?,
                limit: limits(&key, r.limits.as_ref())?,
            });
        }
        Ok((parents, HttpRoute { meta, rules }))
    }
}

pub(super) fn grpc_match(key: &str, spec: &GrpcMatchSpec) -> Result<GrpcMatch, RouteSpecError> {
    let (service, method) = match &spec.method {
        None => (None, None),
        Some(m) => {
            if m.service.is_none() && m.method.is_none() {
                return err(format!("{key}.method"), "name a service, a method or both");
            }
            let kind = m.kind.as_deref();
            let one = |what: &str, v: &Option<String>| {
                v.as_deref()
                    .map(|v| value_match(&format!("{key}.method.{what}"), kind, v))
                    .transpose()
            };
            (one("service", &m.service)?, one("method", &m.method)?)
        }
    };
    Ok(GrpcMatch {
        service,
        method,
        headers: header_matches(&format!("{key}.headers"), &spec.headers)?,
    })
}

impl GrpcRouteSpec {
    /// Checks the spec of the gRPC route `meta` in `namespace` and builds it, with the
    /// services it attaches to.
    pub fn compile(
        &self,
        meta: RouteMeta,
        namespace: &str,
    ) -> Result<(Vec<Parent>, GrpcRoute), RouteSpecError> {
        let parents = parents(&self.parent_refs, namespace)?;
        let mut rules = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let key = format!("rules[{i}]");
            rules.push(GrpcRule {
                name: r.name.clone(),
                matches: r
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(j, m)| grpc_match(&format!("{key}.matches[{j}]"), m))
                    .collect::<Result<_, _>>()?,
                filters: filters(&format!("{key}.filters"), &r.filters, Allowed::HeadersOnly)?,
                backends: backends(&format!("{key}.backend_refs"), &r.backend_refs, namespace)?,
                timeouts: timeouts(&key, r.timeouts.as_ref())?,
                retry: retry(&key, r.retry.as_ref(), true)?,
                fault: fault(&key, r.fault.as_ref(), true)?,
                limit: limits(&key, r.limits.as_ref())?,
            });
        }
        Ok((parents, GrpcRoute { meta, rules }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::route::RouteSource;

    fn meta() -> RouteMeta {
        RouteMeta {
            name: "demo/web-canary".into(),
            source: RouteSource::Object {
                kind: "HTTPRoute".into(),
                namespace: "demo".into(),
                name: "web-canary".into(),
            },
        }
    }

    /// A Kubernetes `HTTPRoute` spec (camelCase) and the mesh file's (snake_case) read into
    /// the same types and build the same route.
    #[test]
    fn camel_case_objects_and_snake_case_files_say_the_same() {
        let object = serde_json::json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/v2/"},
                             "headers": [{"name": "X-Version", "value": "2"}],
                             "queryParams": [{"type": "RegularExpression", "name": "q", "value": "[0-9]+"}],
                             "method": "GET"}],
                "filters": [{"type": "URLRewrite",
                             "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}},
                            {"type": "RequestHeaderModifier",
                             "requestHeaderModifier": {"set": [{"name": "X-Canary", "value": "yes"}], "remove": ["x-debug"]}}],
                "backendRefs": [{"name": "web-v2", "port": 80, "weight": 90},
                                {"name": "web-v3", "namespace": "canary", "port": 80, "weight": 10,
                                 "filters": [{"type": "ResponseHeaderModifier",
                                              "responseHeaderModifier": {"add": [{"name": "x-served-by", "value": "v3"}]}}]}]
            }]
        });
        let file = serde_json::json!({
            "parent_refs": [{"name": "web", "port": 80}],
            "rules": [{
                "matches": [{"path": {"value": "/v2"},
                             "headers": [{"name": "x-version", "value": "2"}],
                             "query_params": [{"type": "RegularExpression", "name": "q", "value": "[0-9]+"}],
                             "method": "GET"}],
                "filters": [{"type": "URLRewrite",
                             "url_rewrite": {"path": {"type": "ReplacePrefixMatch", "replace_prefix_match": "/"}}},
                            {"type": "RequestHeaderModifier",
                             "request_header_modifier": {"set": [{"name": "x-canary", "value": "yes"}], "remove": ["X-Debug"]}}],
                "backend_refs": [{"name": "web-v2", "port": 80, "weight": 90},
                                 {"name": "web-v3", "namespace": "canary", "port": 80, "weight": 10,
                                  "filters": [{"type": "ResponseHeaderModifier",
                                               "response_header_modifier": {"add": [{"name": "X-Served-By", "value": "v3"}]}}]}]
            }]
        });
        let object: HttpRouteSpec = serde_json::from_value(object).unwrap();
        let file: HttpRouteSpec = serde_json::from_value(file).unwrap();
        let (parents, from_object) = object.compile(meta(), "demo").unwrap();
        let (_, from_file) = file.compile(meta(), "demo").unwrap();
        assert_eq!(from_object, from_file);
        assert_eq!(
            parents,
            [Parent {
                service: ServiceName::new("demo", "web").unwrap(),
                port: Some(80)
            }]
        );
        let rule = &from_file.rules[0];
        assert_eq!(
            rule.backends[1].service,
            ServiceName::new("canary", "web-v3").unwrap()
        );
        assert_eq!(rule.matches[0].headers[0].name, "x-version");
        assert_eq!(rule.matches[0].path, Some(PathMatch::Prefix("/v2".into())));
    }

    fn one_rule(rule: serde_json::Value) -> Result<HttpRoute, RouteSpecError> {
        let spec: HttpRouteSpec = serde_json::from_value(serde_json::json!({
            "parentRefs": [{"name": "web"}],
            "rules": [rule],
        }))
        .unwrap();
        spec.compile(meta(), "demo").map(|(_, r)| r)
    }

    /// Every refusal names the key at fault.
    #[test]
    fn bad_rules_are_refused_with_the_key_at_fault() {
        let cases = [
            (
                serde_json::json!({"matches": [{"path": {"type": "RegularExpression", "value": "/(x"}}]}),
                "rules[0].matches[0].path.value",
            ),
            (
                serde_json::json!({"backendRefs": [{"name": "a", "weight": 0}, {"name": "b", "weight": 0}]}),
                "rules[0].backend_refs",
            ),
            (
                serde_json::json!({"matches": [{"path": {"value": "/a"}}], "filters": [
                    {"type": "RequestRedirect", "requestRedirect": {"hostname": "x.demo"}},
                    {"type": "URLRewrite", "urlRewrite": {"hostname": "y.demo"}}]}),
                "rules[0].filters",
            ),
            (
                serde_json::json!({"matches": [{"path": {"type": "Exact", "value": "/a"}}], "filters": [
                    {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}]}),
                "rules[0].filters",
            ),
            (
                serde_json::json!({"filters": [{"type": "RequestMirror", "requestMirror": {}}]}),
                "rules[0].filters[0].type",
            ),
            (
                serde_json::json!({"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 404}}]}),
                "rules[0].filters[0].request_redirect.status_code",
            ),
            (
                serde_json::json!({"matches": [{"headers": [{"name": "bad name", "value": "1"}]}]}),
                "rules[0].matches[0].headers[0].name",
            ),
            (
                serde_json::json!({"matches": [{"path": {"value": "no-slash"}}]}),
                "rules[0].matches[0].path.value",
            ),
            (
                serde_json::json!({"backendRefs": [{"kind": "ServiceImport", "name": "a"}]}),
                "rules[0].backend_refs[0].kind",
            ),
            (
                serde_json::json!({"filters": [{"type": "RequestHeaderModifier",
                    "requestHeaderModifier": {"set": [{"name": "x", "value": "a\r\nb"}]}}]}),
                "rules[0].filters[0].request_header_modifier.set[0].value",
            ),
            (
                serde_json::json!({"timeouts": {"request": "1.5s"}}),
                "rules[0].timeouts.request",
            ),
            (
                serde_json::json!({"retry": {"codes": [503, 200]}}),
                "rules[0].retry.codes[1]",
            ),
            (
                serde_json::json!({"retry": {"attempts": 11}}),
                "rules[0].retry.attempts",
            ),
            (
                serde_json::json!({"retry": {"backoff": "0s"}}),
                "rules[0].retry.backoff",
            ),
            (
                serde_json::json!({"retry": {"conditions": ["unavailable"]}}),
                "rules[0].retry.conditions",
            ),
            (serde_json::json!({"fault": {}}), "rules[0].fault"),
            (
                serde_json::json!({"limits": {"maxInFlight": 0}}),
                "rules[0].limits.max_in_flight",
            ),
            (
                serde_json::json!({"fault": {"delay": {"fixed": "1s", "percent": 101}}}),
                "rules[0].fault.delay.percent",
            ),
            (
                serde_json::json!({"fault": {"abort": {"httpStatus": 200}}}),
                "rules[0].fault.abort.http_status",
            ),
            (
                serde_json::json!({"fault": {"abort": {"grpcStatus": "unavailable"}}}),
                "rules[0].fault.abort",
            ),
            (
                serde_json::json!({"fault": {"abort": {"httpStatus": 503}, "sources": ["bad pattern"]}}),
                "rules[0].fault.sources[0]",
            ),
            (
                serde_json::json!({"timeouts": {"request": "1s", "backendRequest": "2s"}}),
                "rules[0].timeouts.backend_request",
            ),
        ];
        for (rule, key) in cases {
            let e = one_rule(rule.clone()).unwrap_err();
            assert_eq!(e.key, key, "{rule}: {e}");
        }
        // Timeouts: 0s turns one off; an attempt may be as long as its call.
        let r =
            one_rule(serde_json::json!({"timeouts": {"request": "10s", "backendRequest": "0s"}}))
                .unwrap();
        assert_eq!(
            r.rules[0].timeouts,
            Timeouts {
                request: Some(Duration::from_secs(10)),
                backend_request: None
            }
        );
        let r =
            one_rule(serde_json::json!({"timeouts": {"request": "1s", "backendRequest": "1s"}}))
                .unwrap();
        assert_eq!(
            r.rules[0].timeouts.backend_request,
            Some(Duration::from_secs(1))
        );
        // A weight of 0 beside a weighted backend is fine: that backend gets nothing.
        one_rule(serde_json::json!({"backendRefs": [{"name": "a", "weight": 0}, {"name": "b"}]}))
            .unwrap();
        // Unknown keys are refused by serde, not ignored.
        assert!(serde_json::from_value::<HttpRouteSpec>(serde_json::json!({"rulez": []})).is_err());
    }

    /// A fault reads as the model says: a delay and an abort, each with its share, for the
    /// callers named.
    #[test]
    fn faults_are_read_with_their_shares_and_callers() {
        let r = one_rule(serde_json::json!({"fault": {
            "delay": {"fixed": "250ms", "percent": 50},
            "abort": {"httpStatus": 503, "percent": 12.5},
            "sources": ["shop/*"]}}))
        .unwrap();
        let f = r.rules[0].fault.clone().unwrap();
        assert_eq!(
            f.delay,
            Some((
                Duration::from_millis(250),
                Share::from_percent(50.0).unwrap()
            ))
        );
        assert_eq!(
            f.abort,
            Some((AbortWith::Http(503), Share::from_percent(12.5).unwrap()))
        );
        assert_eq!(f.sources, vec!["shop/*".parse().unwrap()]);
        let spec: GrpcRouteSpec = serde_json::from_value(serde_json::json!({
            "parentRefs": [{"name": "users"}],
            "rules": [{"fault": {"abort": {"grpc_status": "unavailable"}}}],
        }))
        .unwrap();
        let (_, g) = spec.compile(meta(), "demo").unwrap();
        let abort = g.rules[0].fault.as_ref().unwrap().abort;
        assert_eq!(abort, Some((AbortWith::Grpc(14), Share::ALL)));
    }

    /// gRPC rules retry on named gRPC statuses, and only when they say their calls are safe
    /// to send twice; HTTP rules take defaults.
    #[test]
    fn retries_are_checked_for_the_kind_of_rule() {
        let grpc = |retry: serde_json::Value| {
            let spec: GrpcRouteSpec = serde_json::from_value(serde_json::json!({
                "parentRefs": [{"name": "users"}], "rules": [{"retry": retry}],
            }))
            .unwrap();
            spec.compile(meta(), "demo").map(|(_, r)| r)
        };
        let e = grpc(serde_json::json!({"conditions": ["unavailable"]})).unwrap_err();
        assert_eq!(e.key, "rules[0].retry.idempotent");
        let e = grpc(serde_json::json!({"codes": [503], "idempotent": true})).unwrap_err();
        assert_eq!(e.key, "rules[0].retry.codes");
        let e =
            grpc(serde_json::json!({"conditions": ["unknown"], "idempotent": true})).unwrap_err();
        assert_eq!(e.key, "rules[0].retry.conditions[0]");
        let r = grpc(serde_json::json!({"conditions": ["unavailable", "internal"], "idempotent": true, "attempts": 3}))
            .unwrap();
        let p = r.rules[0].retry.clone().unwrap();
        assert_eq!((p.grpc_codes, p.attempts), (vec![14, 13], 3));
        let r = one_rule(serde_json::json!({"retry": {"codes": [503]}})).unwrap();
        assert_eq!(
            r.rules[0].retry,
            Some(RetryPolicy {
                attempts: DEFAULT_RETRY_ATTEMPTS,
                codes: vec![503],
                grpc_codes: vec![],
                backoff: DEFAULT_RETRY_BACKOFF,
                idempotent: false,
            })
        );
    }

    #[test]
    fn grpc_routes_match_services_and_methods() {
        let spec: GrpcRouteSpec = serde_json::from_value(serde_json::json!({
            "parentRefs": [{"name": "users", "port": 9090}],
            "rules": [{"matches": [{"method": {"service": "pkg.Users", "method": "Get"}}],
                       "backendRefs": [{"name": "users-v2"}]}]
        }))
        .unwrap();
        let (_, route) = spec.compile(meta(), "demo").unwrap();
        assert_eq!(
            route.rules[0].matches[0].service,
            Some(ValueMatch::Exact("pkg.Users".into()))
        );
        let bad: GrpcRouteSpec = serde_json::from_value(serde_json::json!({
            "parentRefs": [{"name": "users"}],
            "rules": [{"filters": [{"type": "URLRewrite", "urlRewrite": {}}]}]
        }))
        .unwrap();
        assert_eq!(
            bad.compile(meta(), "demo").unwrap_err().key,
            "rules[0].filters[0].type"
        );
    }
}
