//! Routes: how requests to a service are matched, changed and split between backends. One
//! model for every way a route is written (the mesh file, Gateway API `HTTPRoute` and
//! `GRPCRoute` objects on Kubernetes); everything here is pure and already validated, so a
//! proxy compiles it once per update and matches requests without failing.
//!
//! Matching follows Gateway API:
//! - a rule without matches matches every request (a path prefix `/`);
//! - a path prefix matches whole segments (`/v2` matches `/v2`, `/v2/` and `/v2/x`, not
//!   `/v2x`; a trailing `/` in the prefix is ignored);
//! - header names are case-insensitive; every listed header and query parameter must match;
//! - among all matches of all routes bound to a service, the most specific wins: an exact path,
//!   then the longest prefix, then a regular expression (regular expressions match the whole
//!   path), then a method match, then the most header matches, then the most query-parameter
//!   matches; ties go to the route listed first (the caller orders routes: oldest first, then
//!   by namespace and name), then to the rule and match listed first.
//!
//! For gRPC the most specific service match wins, then method, then the most header matches.
//! A request that no rule matches gets no route: a service with routes answers it 404
//! (`UNIMPLEMENTED` for gRPC).

use std::cmp::Reverse;
use std::fmt;
use std::path::PathBuf;

pub use super::fault::FaultInjection;
pub use super::resilience::{ConcurrencyLimit, RetryPolicy, Timeouts};
use crate::model::ServiceName;

/// Where a route was written, for located errors and a bounded metric label.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RouteSource {
    /// A section of the mesh config file.
    MeshFile {
        /// The file.
        path: PathBuf,
        /// The line of the route's section, if known.
        line: Option<usize>,
    },
    /// Received from the control plane (in a proxy): only the name is known.
    ControlPlane,
    /// A platform object.
    Object {
        /// Its kind (`HTTPRoute`, `GRPCRoute`).
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl fmt::Display for RouteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MeshFile {
                path,
                line: Some(line),
            } => write!(f, "{}:{line}", path.display()),
            Self::MeshFile { path, line: None } => write!(f, "{}", path.display()),
            Self::ControlPlane => f.write_str("the control plane"),
            Self::Object {
                kind,
                namespace,
                name,
            } => write!(f, "{kind} {namespace}/{name}"),
        }
    }
}

/// A route's name (its metric label) and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteMeta {
    /// `namespace/name`, unique among the routes of a service.
    pub name: String,
    /// Where it was written.
    pub source: RouteSource,
}

/// A regular expression with the text it was written as; it matches whole values.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    re: regex::Regex,
}

impl Pattern {
    /// Compiles `source`, anchored at both ends.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let re = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            // Bounds what one pattern may cost the proxy that compiles it.
            .size_limit(1 << 20)
            .build()?;
        Ok(Self {
            source: source.to_string(),
            re,
        })
    }

    /// The text it was written as.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether it matches all of `value`.
    pub fn is_match(&self, value: &str) -> bool {
        self.re.is_match(value)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

/// How a request's path is matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path, exactly.
    Exact(String),
    /// Whole leading segments (stored without a trailing `/`, except `/` itself).
    Prefix(String),
    /// A regular expression over the whole path.
    Regex(Pattern),
}

impl PathMatch {
    /// A prefix match of `prefix`, normalised (a trailing `/` is ignored).
    pub fn prefix(prefix: &str) -> Self {
        let trimmed = prefix.trim_end_matches('/');
        Self::Prefix(if trimmed.is_empty() {
            "/".to_string()
        } else {
            trimmed.to_string()
        })
    }

    /// Whether `path` (without its query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == p,
            Self::Prefix(p) if p == "/" => true,
            Self::Prefix(p) => path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            Self::Regex(re) => re.is_match(path),
        }
    }
}

/// How a header's or a query parameter's value is matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueMatch {
    /// Exactly this value.
    Exact(String),
    /// A regular expression over the whole value.
    Regex(Pattern),
}

impl ValueMatch {
    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(v) => v == value,
            Self::Regex(re) => re.is_match(value),
        }
    }

    /// How specific it is, for gRPC precedence: the characters of an exact value.
    fn weight(&self) -> usize {
        match self {
            Self::Exact(v) => v.len(),
            Self::Regex(_) => 0,
        }
    }
}

/// One header that must be present with a matching value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    /// The header's name, lowercase.
    pub name: String,
    /// Its value.
    pub value: ValueMatch,
}

/// One query parameter that must be present with a matching value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryMatch {
    /// The parameter's name (case-sensitive).
    pub name: String,
    /// Its value.
    pub value: ValueMatch,
}

/// What an HTTP request must be for a rule to apply: every field given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpMatch {
    /// The path; none: any path.
    pub path: Option<PathMatch>,
    /// The method, uppercase; none: any method.
    pub method: Option<String>,
    /// Headers.
    pub headers: Vec<HeaderMatch>,
    /// Query parameters.
    pub query: Vec<QueryMatch>,
}

/// What a matcher needs to see of a request.
pub trait RequestView {
    /// The method, as sent (`GET`).
    fn method(&self) -> &str;
    /// The path, without the query.
    fn path(&self) -> &str;
    /// The query, without `?`, if there is one.
    fn query(&self) -> Option<&str>;
    /// The first value of the header `name` (lowercase) that is valid text, if any.
    fn header(&self, name: &str) -> Option<&str>;
}

impl HttpMatch {
    /// Whether `req` matches.
    pub fn matches(&self, req: &impl RequestView) -> bool {
        let path_ok = self.path.as_ref().is_none_or(|p| p.matches(req.path()));
        path_ok
            && self.method.as_deref().is_none_or(|m| m == req.method())
            && self
                .headers
                .iter()
                .all(|h| req.header(&h.name).is_some_and(|v| h.value.matches(v)))
            && self
                .query
                .iter()
                .all(|q| query_value(req.query(), &q.name).is_some_and(|v| q.value.matches(v)))
    }

    /// Gateway API precedence, smallest first.
    fn precedence(&self) -> (u8, Reverse<usize>, bool, Reverse<usize>, Reverse<usize>) {
        let (kind, len) = match &self.path {
            Some(PathMatch::Exact(p)) => (0, p.len()),
            Some(PathMatch::Prefix(p)) => (1, p.len()),
            None => (1, 1),
            Some(PathMatch::Regex(_)) => (2, 0),
        };
        (
            kind,
            Reverse(len),
            self.method.is_none(),
            Reverse(self.headers.len()),
            Reverse(self.query.len()),
        )
    }
}

/// The first value of the query parameter `name` in `query`.
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// Headers to set (replacing), add (appending) and remove, by lowercase name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    /// Set, replacing any value.
    pub set: Vec<(String, String)>,
    /// Added beside any value.
    pub add: Vec<(String, String)>,
    /// Removed.
    pub remove: Vec<String>,
}

/// How a rewrite or a redirect changes the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    /// The whole path becomes this.
    ReplaceFullPath(String),
    /// The part the rule's prefix matched becomes this (the rule must match a prefix).
    ReplacePrefixMatch(String),
}

impl PathModifier {
    /// The new path of `path` (no query), which `matched` matched.
    pub fn apply(&self, matched: Option<&PathMatch>, path: &str) -> String {
        match self {
            Self::ReplaceFullPath(p) => p.clone(),
            Self::ReplacePrefixMatch(replacement) => {
                let prefix = match matched {
                    Some(PathMatch::Prefix(p)) if p != "/" => p.as_str(),
                    _ => "",
                };
                let rest = path.strip_prefix(prefix).unwrap_or(path);
                let replacement = replacement.trim_end_matches('/');
                if replacement.is_empty() {
                    if rest.is_empty() {
                        "/".to_string()
                    } else if rest.starts_with('/') {
                        rest.to_string()
                    } else {
                        format!("/{rest}")
                    }
                } else if rest.is_empty() || rest.starts_with('/') {
                    format!("{replacement}{rest}")
                } else {
                    format!("{replacement}/{rest}")
                }
            }
        }
    }
}

/// A change to the request before it goes to the backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UrlRewrite {
    /// The new authority's host.
    pub hostname: Option<String>,
    /// The new path.
    pub path: Option<PathModifier>,
}

/// An answer sending the client elsewhere, instead of a backend's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRedirect {
    /// `http` or `https`; none: the request's.
    pub scheme: Option<String>,
    /// The host; none: the request's.
    pub hostname: Option<String>,
    /// The port; none: the request's, or the scheme's default when the scheme changes.
    pub port: Option<u16>,
    /// The path; none: the request's.
    pub path: Option<PathModifier>,
    /// 301, 302 (the default), 303, 307 or 308.
    pub status: u16,
}

/// What a redirect is computed from.
#[derive(Clone, Copy, Debug)]
pub struct RedirectFrom<'a> {
    /// The request's scheme.
    pub scheme: &'a str,
    /// The request's host, without a port.
    pub host: &'a str,
    /// The request's port, if it named one.
    pub port: Option<u16>,
    /// The request's path.
    pub path: &'a str,
    /// Its query, if any.
    pub query: Option<&'a str>,
}

impl RequestRedirect {
    /// The `Location` of the redirect of a request `from`, which `matched` matched.
    pub fn location(&self, matched: Option<&PathMatch>, from: RedirectFrom<'_>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(from.scheme);
        let host = self.hostname.as_deref().unwrap_or(from.host);
        let port = match (self.port, &self.scheme) {
            (Some(p), _) => Some(p),
            // A new scheme has its own default port, unless the redirect names one.
            (None, Some(s)) if s != from.scheme => None,
            (None, _) => from.port,
        };
        let port = port.filter(|p| Some(*p) != default_port(scheme));
        let path = match &self.path {
            Some(m) => m.apply(matched, from.path),
            None => from.path.to_string(),
        };
        let mut out = format!("{scheme}://{host}");
        if let Some(p) = port {
            out.push_str(&format!(":{p}"));
        }
        out.push_str(&path);
        if let Some(q) = from.query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// A change a rule or a backend makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpFilter {
    /// Changes the request's headers.
    RequestHeaders(HeaderModifier),
    /// Changes the response's headers.
    ResponseHeaders(HeaderModifier),
    /// Changes the request's host or path.
    Rewrite(UrlRewrite),
    /// Answers with a redirect instead.
    Redirect(RequestRedirect),
}

/// A backend of a rule and its share of the rule's requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedBackend {
    /// The service requests go to.
    pub service: ServiceName,
    /// Its port; none: the service's only (or lowest) port.
    pub port: Option<u16>,
    /// Its share, relative to the other backends' weights.
    pub weight: u32,
    /// Filters applied to the requests sent to this backend only.
    pub filters: Vec<HttpFilter>,
    /// Whether it is missing (no such service): its share is answered with 500.
    pub missing: bool,
}

/// One rule of an HTTP route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpRule {
    /// Its name, if it has one (the metric label is the route's name and this, or the index).
    pub name: Option<String>,
    /// Any of these; none: every request.
    pub matches: Vec<HttpMatch>,
    /// Filters, in order.
    pub filters: Vec<HttpFilter>,
    /// Where matching requests go; none: to the service the route is bound to.
    pub backends: Vec<WeightedBackend>,
    /// Its timeouts.
    pub timeouts: Timeouts,
    /// When failed calls go again.
    pub retry: Option<RetryPolicy>,
    /// Faults to inject.
    pub fault: Option<FaultInjection>,
    /// Calls in flight and waiting.
    pub limit: Option<ConcurrencyLimit>,
}

/// An HTTP route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRoute {
    /// Name and source.
    pub meta: RouteMeta,
    /// Its rules.
    pub rules: Vec<HttpRule>,
}

/// What a proxy builds for each rule of a route, whatever its kind.
#[derive(Clone, Copy, Debug)]
pub struct RuleView<'a> {
    /// Its name.
    pub name: Option<&'a str>,
    /// Its backends.
    pub backends: &'a [WeightedBackend],
    /// Its retry policy.
    pub retry: Option<&'a RetryPolicy>,
    /// Its faults.
    pub fault: Option<&'a FaultInjection>,
    /// Its concurrency limit.
    pub limit: Option<ConcurrencyLimit>,
}

/// What HTTP and gRPC routes share: a name and rules that send to backends.
pub trait Routed: Clone {
    /// Name and source.
    fn meta(&self) -> &RouteMeta;
    /// Each rule's name, backends, retries and faults, in order.
    fn rule_backends(&self) -> Vec<RuleView<'_>>;
    /// Every backend of every rule.
    fn backends_mut(&mut self) -> Vec<&mut WeightedBackend>;
}

impl Routed for HttpRoute {
    fn meta(&self) -> &RouteMeta {
        &self.meta
    }
    fn rule_backends(&self) -> Vec<RuleView<'_>> {
        self.rules
            .iter()
            .map(|r| RuleView {
                name: r.name.as_deref(),
                backends: &r.backends,
                retry: r.retry.as_ref(),
                fault: r.fault.as_ref(),
                limit: r.limit,
            })
            .collect()
    }
    fn backends_mut(&mut self) -> Vec<&mut WeightedBackend> {
        self.rules
            .iter_mut()
            .flat_map(|r| r.backends.iter_mut())
            .collect()
    }
}

impl Routed for GrpcRoute {
    fn meta(&self) -> &RouteMeta {
        &self.meta
    }
    fn rule_backends(&self) -> Vec<RuleView<'_>> {
        self.rules
            .iter()
            .map(|r| RuleView {
                name: r.name.as_deref(),
                backends: &r.backends,
                retry: r.retry.as_ref(),
                fault: r.fault.as_ref(),
                limit: r.limit,
            })
            .collect()
    }
    fn backends_mut(&mut self) -> Vec<&mut WeightedBackend> {
        self.rules
            .iter_mut()
            .flat_map(|r| r.backends.iter_mut())
            .collect()
    }
}

/// Which match of which rule of which route a request matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteMatch {
    /// The route's index in the list given.
    pub route: usize,
    /// The rule's index in the route.
    pub rule: usize,
    /// The match's index in the rule (0 for a rule without matches).
    pub matched: usize,
}

/// Every match of `rules` (route index, rule index, its matches), most specific first by
/// `precedence`; a rule without matches counts as `every`. The sort is stable: ties keep
/// route, rule and match order.
fn ordered<'a, M: Clone + 'a, K: Ord>(
    rules: impl Iterator<Item = (usize, usize, &'a [M])>,
    precedence: impl Fn(&M) -> K,
    every: &M,
) -> Vec<(RouteMatch, Option<M>)> {
    let mut order = Vec::new();
    for (route, rule, matches) in rules {
        if matches.is_empty() {
            let at = RouteMatch {
                route,
                rule,
                matched: 0,
            };
            order.push((at, None));
        }
        for (matched, m) in matches.iter().enumerate() {
            let at = RouteMatch {
                route,
                rule,
                matched,
            };
            order.push((at, Some(m.clone())));
        }
    }
    order.sort_by_cached_key(|(_, m)| precedence(m.as_ref().unwrap_or(every)));
    order
}

/// What a gRPC request must be for a rule to apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcMatch {
    /// The service (`pkg.Service`); none: any.
    pub service: Option<ValueMatch>,
    /// The method; none: any.
    pub method: Option<ValueMatch>,
    /// Headers.
    pub headers: Vec<HeaderMatch>,
}

impl GrpcMatch {
    /// Whether a request for `/service/method` with `req`'s headers matches.
    pub fn matches(&self, req: &impl RequestView) -> bool {
        let Some((service, method)) = req.path().strip_prefix('/').and_then(|p| p.split_once('/'))
        else {
            return self.service.is_none() && self.method.is_none() && self.headers.is_empty();
        };
        self.service.as_ref().is_none_or(|s| s.matches(service))
            && self.method.as_ref().is_none_or(|m| m.matches(method))
            && self
                .headers
                .iter()
                .all(|h| req.header(&h.name).is_some_and(|v| h.value.matches(v)))
    }

    fn precedence(&self) -> (Reverse<usize>, Reverse<usize>, Reverse<usize>) {
        let weight = |v: &Option<ValueMatch>| v.as_ref().map_or(0, |v| v.weight() + 1);
        (
            Reverse(weight(&self.service)),
            Reverse(weight(&self.method)),
            Reverse(self.headers.len()),
        )
    }
}

/// One rule of a gRPC route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcRule {
    /// Its name, if it has one.
    pub name: Option<String>,
    /// Any of these; none: every request.
    pub matches: Vec<GrpcMatch>,
    /// Filters (header modifiers), in order.
    pub filters: Vec<HttpFilter>,
    /// Where matching requests go; none: to the service the route is bound to.
    pub backends: Vec<WeightedBackend>,
    /// Its timeouts (a Weft extension: `GRPCRoute` has none).
    pub timeouts: Timeouts,
    /// When failed calls go again (a Weft extension too).
    pub retry: Option<RetryPolicy>,
    /// Faults to inject.
    pub fault: Option<FaultInjection>,
    /// Calls in flight and waiting.
    pub limit: Option<ConcurrencyLimit>,
}

/// A gRPC route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcRoute {
    /// Name and source.
    pub meta: RouteMeta,
    /// Its rules.
    pub rules: Vec<GrpcRule>,
}

/// A match of either kind, as a route table orders and applies it.
pub trait Matcher: Clone + Default + fmt::Debug {
    /// Gateway API precedence, smallest first.
    type Precedence: Ord;
    /// Whether `req` matches.
    fn is_match(&self, req: &impl RequestView) -> bool;
    /// Its precedence.
    fn rank(&self) -> Self::Precedence;
}

impl Matcher for HttpMatch {
    type Precedence = (u8, Reverse<usize>, bool, Reverse<usize>, Reverse<usize>);
    fn is_match(&self, req: &impl RequestView) -> bool {
        self.matches(req)
    }
    fn rank(&self) -> Self::Precedence {
        self.precedence()
    }
}

impl Matcher for GrpcMatch {
    type Precedence = (Reverse<usize>, Reverse<usize>, Reverse<usize>);
    fn is_match(&self, req: &impl RequestView) -> bool {
        self.matches(req)
    }
    fn rank(&self) -> Self::Precedence {
        self.precedence()
    }
}

/// A route of either kind, as a route table holds it.
pub trait TableRoute {
    /// Its rule type.
    type Rule;
    /// Its match type.
    type Match: Matcher;
    /// Its rules.
    fn rules(&self) -> &[Self::Rule];
    /// A rule's matches.
    fn matches_of(rule: &Self::Rule) -> &[Self::Match];
}

impl TableRoute for HttpRoute {
    type Rule = HttpRule;
    type Match = HttpMatch;
    fn rules(&self) -> &[HttpRule] {
        &self.rules
    }
    fn matches_of(rule: &HttpRule) -> &[HttpMatch] {
        &rule.matches
    }
}

impl TableRoute for GrpcRoute {
    type Rule = GrpcRule;
    type Match = GrpcMatch;
    fn rules(&self) -> &[GrpcRule] {
        &self.rules
    }
    fn matches_of(rule: &GrpcRule) -> &[GrpcMatch] {
        &rule.matches
    }
}

/// The routes of one service port, ordered once for matching.
#[derive(Clone, Debug)]
pub struct RouteTable<R: TableRoute> {
    routes: Vec<R>,
    /// Every match of every rule, most specific first.
    order: Vec<(RouteMatch, Option<R::Match>)>,
}

/// The HTTP routes of one service port.
pub type HttpRouteTable = RouteTable<HttpRoute>;
/// The gRPC routes of one service port.
pub type GrpcRouteTable = RouteTable<GrpcRoute>;

impl<R: TableRoute> Default for RouteTable<R> {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            order: Vec::new(),
        }
    }
}

impl<R: TableRoute> RouteTable<R> {
    /// Orders the matches of `routes` (given oldest first) by Gateway API precedence.
    pub fn new(routes: Vec<R>) -> Self {
        let rules = routes.iter().enumerate().flat_map(|(r, route)| {
            route
                .rules()
                .iter()
                .enumerate()
                .map(move |(i, rule)| (r, i, R::matches_of(rule)))
        });
        let order = ordered(rules, R::Match::rank, &R::Match::default());
        Self { routes, order }
    }

    /// The routes, as given.
    pub fn routes(&self) -> &[R] {
        &self.routes
    }

    /// Whether there is no route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The most specific match of `req`, if any.
    pub fn find(&self, req: &impl RequestView) -> Option<RouteMatch> {
        self.order
            .iter()
            .find(|(_, m)| m.as_ref().is_none_or(|m| m.is_match(req)))
            .map(|(at, _)| *at)
    }

    /// The rule a match names.
    pub fn rule(&self, at: RouteMatch) -> Option<&R::Rule> {
        self.routes.get(at.route)?.rules().get(at.rule)
    }
}

impl RouteTable<HttpRoute> {
    /// The match a match names (none for a rule without matches).
    pub fn matched(&self, at: RouteMatch) -> Option<&HttpMatch> {
        self.rule(at)?.matches.get(at.matched)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A request as the matchers see it.
    struct Req {
        method: &'static str,
        path: &'static str,
        query: Option<&'static str>,
        headers: HashMap<&'static str, &'static str>,
    }

    impl RequestView for Req {
        fn method(&self) -> &str {
            self.method
        }
        fn path(&self) -> &str {
            self.path
        }
        fn query(&self) -> Option<&str> {
            self.query
        }
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).copied()
        }
    }

    fn get(path: &'static str) -> Req {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        Req {
            method: "GET",
            path,
            query,
            headers: HashMap::new(),
        }
    }

    fn route(name: &str, rules: Vec<HttpRule>) -> HttpRoute {
        HttpRoute {
            meta: RouteMeta {
                name: name.into(),
                source: RouteSource::Object {
                    kind: "HTTPRoute".into(),
                    namespace: "demo".into(),
                    name: name.into(),
                },
            },
            rules,
        }
    }

    fn rule(matches: Vec<HttpMatch>) -> HttpRule {
        HttpRule {
            matches,
            ..HttpRule::default()
        }
    }

    fn path(p: PathMatch) -> HttpMatch {
        HttpMatch {
            path: Some(p),
            ..HttpMatch::default()
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let p = PathMatch::prefix("/v2/");
        for ok in ["/v2", "/v2/", "/v2/users"] {
            assert!(p.matches(ok), "{ok}");
        }
        for no in ["/v2x", "/v", "/", "/v3/v2"] {
            assert!(!p.matches(no), "{no}");
        }
        assert!(PathMatch::prefix("/").matches("/anything"));
        assert!(PathMatch::prefix("").matches("/"));
    }

    #[test]
    fn regular_expressions_match_whole_values() {
        let p = PathMatch::Regex(Pattern::new("/v[0-9]+/.*").unwrap());
        assert!(p.matches("/v12/x"));
        assert!(!p.matches("/api/v12/x"), "not anchored");
        assert!(Pattern::new("(unclosed").is_err());
    }

    /// Exact beats prefix, a longer prefix a shorter one, prefix beats regex, then method,
    /// then header count, then query count, and ties go to the route listed first.
    #[test]
    fn the_most_specific_match_wins_as_gateway_api_orders_them() {
        let with_header = HttpMatch {
            path: Some(PathMatch::prefix("/api")),
            headers: vec![HeaderMatch {
                name: "x-version".into(),
                value: ValueMatch::Exact("2".into()),
            }],
            ..HttpMatch::default()
        };
        let with_method = HttpMatch {
            path: Some(PathMatch::prefix("/api")),
            method: Some("POST".into()),
            ..HttpMatch::default()
        };
        let with_query = HttpMatch {
            path: Some(PathMatch::prefix("/api")),
            query: vec![QueryMatch {
                name: "debug".into(),
                value: ValueMatch::Exact("1".into()),
            }],
            ..HttpMatch::default()
        };
        let table = HttpRouteTable::new(vec![
            route(
                "older",
                vec![
                    rule(vec![]),
                    rule(vec![path(PathMatch::Regex(
                        Pattern::new("/api/.*").unwrap(),
                    ))]),
                    rule(vec![path(PathMatch::prefix("/api"))]),
                ],
            ),
            route(
                "newer",
                vec![
                    rule(vec![path(PathMatch::prefix("/api/users"))]),
                    rule(vec![path(PathMatch::Exact("/api/users".into()))]),
                    rule(vec![with_query, with_header, with_method]),
                    rule(vec![path(PathMatch::prefix("/api"))]),
                ],
            ),
        ]);
        let at = |route, rule, matched| RouteMatch {
            route,
            rule,
            matched,
        };
        assert_eq!(table.find(&get("/api/users")), Some(at(1, 1, 0)));
        assert_eq!(table.find(&get("/api/users/7")), Some(at(1, 0, 0)));
        // Prefix /api beats the regex; the older route's wins the tie with the newer's.
        assert_eq!(table.find(&get("/api/orders")), Some(at(0, 2, 0)));
        let mut post = get("/api/orders");
        post.method = "POST";
        post.headers.insert("x-version", "2");
        assert_eq!(
            table.find(&post),
            Some(at(1, 2, 2)),
            "method before headers"
        );
        let mut v2 = get("/api/orders?debug=1");
        v2.headers.insert("x-version", "2");
        assert_eq!(table.find(&v2), Some(at(1, 2, 1)), "headers before query");
        assert_eq!(table.find(&get("/api/orders?debug=1")), Some(at(1, 2, 0)));
        // Anything else: the rule without matches (a prefix `/`).
        assert_eq!(table.find(&get("/health")), Some(at(0, 0, 0)));

        let strict = HttpRouteTable::new(vec![route(
            "only",
            vec![rule(vec![path(PathMatch::Exact("/a".into()))])],
        )]);
        assert_eq!(strict.find(&get("/b")), None, "no rule matches: no route");
    }

    #[test]
    fn prefix_replacement_keeps_the_rest_of_the_path() {
        let prefix = PathMatch::prefix("/v1");
        let replace = |with: &str, path: &str| {
            PathModifier::ReplacePrefixMatch(with.into()).apply(Some(&prefix), path)
        };
        assert_eq!(replace("/v2", "/v1/users"), "/v2/users");
        assert_eq!(replace("/v2/", "/v1/users"), "/v2/users");
        assert_eq!(replace("/", "/v1/users"), "/users");
        assert_eq!(replace("/", "/v1"), "/");
        assert_eq!(replace("/v2", "/v1"), "/v2");
        assert_eq!(
            PathModifier::ReplaceFullPath("/new".into()).apply(Some(&prefix), "/v1/x"),
            "/new"
        );
    }

    #[test]
    fn redirects_name_the_whole_location() {
        let from = RedirectFrom {
            scheme: "http",
            host: "api.demo",
            port: Some(8080),
            path: "/v1/x",
            query: Some("a=b"),
        };
        let redirect = |scheme: Option<&str>, host: Option<&str>, port, path| RequestRedirect {
            scheme: scheme.map(Into::into),
            hostname: host.map(Into::into),
            port,
            path,
            status: 302,
        };
        let prefix = PathMatch::prefix("/v1");
        assert_eq!(
            redirect(None, None, None, None).location(None, from),
            "http://api.demo:8080/v1/x?a=b"
        );
        assert_eq!(
            redirect(Some("https"), None, None, None).location(None, from),
            "https://api.demo/v1/x?a=b",
            "a new scheme drops the old port"
        );
        assert_eq!(
            redirect(None, Some("new.demo"), Some(80), None).location(None, from),
            "http://new.demo/v1/x?a=b",
            "the scheme's default port is not written"
        );
        let to_v2 = Some(PathModifier::ReplacePrefixMatch("/v2".into()));
        assert_eq!(
            redirect(None, None, Some(9000), to_v2).location(Some(&prefix), from),
            "http://api.demo:9000/v2/x?a=b"
        );
    }

    #[test]
    fn grpc_matches_prefer_the_service_then_the_method() {
        let m = |service: Option<&str>, method: Option<&str>| GrpcMatch {
            service: service.map(|s| ValueMatch::Exact(s.into())),
            method: method.map(|s| ValueMatch::Exact(s.into())),
            headers: vec![],
        };
        let grpc_route = |rules| GrpcRoute {
            meta: RouteMeta {
                name: "demo/g".into(),
                source: RouteSource::Object {
                    kind: "GRPCRoute".into(),
                    namespace: "demo".into(),
                    name: "g".into(),
                },
            },
            rules,
        };
        let rule = |matches| GrpcRule {
            matches,
            ..GrpcRule::default()
        };
        let table = GrpcRouteTable::new(vec![grpc_route(vec![
            rule(vec![m(None, Some("Get"))]),
            rule(vec![m(Some("pkg.Users"), None)]),
            rule(vec![m(Some("pkg.Users"), Some("Get"))]),
        ])]);
        let call = |path| get(path);
        assert_eq!(table.find(&call("/pkg.Users/Get")).unwrap().rule, 2);
        assert_eq!(table.find(&call("/pkg.Users/List")).unwrap().rule, 1);
        assert_eq!(table.find(&call("/pkg.Orders/Get")).unwrap().rule, 0);
        assert_eq!(table.find(&call("/pkg.Orders/List")), None);
    }
}
