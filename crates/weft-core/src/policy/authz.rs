//! Inbound authorization: which clients may make which requests of a workload.
//!
//! A server (a workload's port) is governed by the rules of the services it backs, and by a
//! default. A request is decided in this order:
//!
//! 1. an enforced `deny` rule that matches refuses it (deny wins);
//! 2. an enforced `allow` rule that matches admits it;
//! 3. otherwise the server's default decides. A service with enforced allow rules admits only
//!    what they name, so its default is `deny` (or `audit` under the mesh default `audit`);
//!    a server backing a service no allow rule names falls back to the mesh default.
//!
//! An admitted request then meets the rules in audit mode, which try a tightening without
//! refusing anyone: an audit `deny` rule that matches, or, for a request only the default
//! admitted, audit `allow` rules none of which matches, turn the outcome into
//! [`Decision::Audit`] (admitted, logged and counted with the rule's name).
//!
//! Matching is pessimistic where the proxy cannot see what the application will: on opaque
//! TCP a rule's HTTP conditions cannot be checked, and a path the application may read two
//! ways (an encoded `/` or `\`, a bad escape) cannot be trusted. Such a condition counts as
//! met for a deny rule and unmet for an allow rule. A header condition of a deny rule is met
//! when any of the header's values matches, one of an allow rule when all of them do.
//! Paths are matched after dot segments are resolved, repeated slashes merged and encoded
//! unreserved characters decoded, as an application's router would read them.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::route::{GrpcMatch, HeaderMatch, HttpMatch, RouteSource};
use crate::model::{Identity, ServiceName, TrustDomain, check_name};

/// An authorization outcome, and what a server admits by default.
///
/// As a default, `allow` (also written `allow-authenticated`) admits every client with a
/// mesh identity and `allow-unauthenticated` also admits clients outside the mesh
/// (plaintext); `audit` admits what `allow` admits, but the clients a `deny` would refuse
/// come out as `audit`, to be logged and counted: a tightening can be tried without refusing
/// anyone. As an outcome only `allow`, `deny` and `audit` (admitted) occur.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Let the connection through (as a default: any client with a mesh identity).
    #[default]
    #[serde(alias = "allow-authenticated")]
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

/// Matches clients: `*` (any mesh identity), `<ns>/*`, `<ns>/<name>`, a full SPIFFE ID,
/// `spiffe://<trust-domain>/*` (any identity of that trust domain), or `unauthenticated`
/// (any client at all, including plaintext clients outside the mesh).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IdentityMatch {
    /// Any client, with or without a mesh identity.
    Unauthenticated,
    /// Any authenticated mesh identity.
    Any,
    /// Any identity of a trust domain.
    TrustDomain(TrustDomain),
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

/// What a rule does to the requests it matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Admit them.
    #[default]
    Allow,
    /// Refuse them, whatever allow rules say.
    Deny,
}

/// What a request must be for a rule to apply: every part given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestMatch {
    /// The server's port (the port the workload listens on); none: any.
    pub port: Option<u16>,
    /// Path, method and headers of an HTTP request.
    pub http: Option<HttpMatch>,
    /// Service and method (and headers) of a gRPC call.
    pub grpc: Option<GrpcMatch>,
}

/// One authorization rule, as written in the mesh file or a platform object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationRule {
    /// `namespace/name`: the rule's label in logs and metrics.
    pub name: String,
    /// Where it was written.
    pub source: RouteSource,
    /// The service the rule protects.
    pub service: ServiceName,
    /// Allow or deny.
    pub action: Action,
    /// Whether the rule is only tried: logged and counted, never enforced.
    pub audit: bool,
    /// The clients it applies to (any of them); never empty.
    pub from: Vec<IdentityMatch>,
    /// The requests it applies to (any of them); empty: every request.
    pub to: Vec<RequestMatch>,
}

/// The inbound policy of one server (a workload's port), as the proxy enforces it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InboundPolicy {
    /// What happens to a request no enforced rule decides.
    pub default: Decision,
    /// The rules of the services the server backs that apply to its port, the port
    /// conditions already taken out.
    pub rules: Vec<Arc<AuthorizationRule>>,
    /// The rates at which allowed clients' requests are admitted: the server's, and its
    /// routes'.
    pub rate_limits: Vec<super::ratelimit::LocalRateLimit>,
}

/// What is known of the request being decided.
#[derive(Debug)]
pub enum Request<'a, R> {
    /// A connection whose requests are still to come: could any of them be admitted?
    Connection,
    /// Opaque TCP: nothing beyond the client and the port.
    Opaque,
    /// An HTTP request (gRPC included).
    Http(&'a R),
}

impl<R> Clone for Request<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Request<'_, R> {}

/// What an authorization matcher needs to see of an HTTP request.
pub trait AuthzView {
    /// The method, as sent.
    fn method(&self) -> &str;
    /// The path as sent, without the query.
    fn path(&self) -> &str;
    /// Every value of the header `name` (lowercase), in order; `None` for one that is not
    /// valid text.
    fn header_values(&self, name: &str) -> Vec<Option<&str>>;
}

/// Which rule decided, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// An enforced deny rule matched.
    DenyRule,
    /// An enforced allow rule matched.
    AllowRule,
    /// No enforced rule matched: the server's default decided.
    Default,
    /// Admitted, but an audit deny rule matched.
    AuditDenyRule,
    /// Admitted by the default only, and no audit allow rule matched.
    AuditAllowMissed,
}

/// A decision and what made it.
#[derive(Clone, Debug)]
pub struct Verdict<'a> {
    /// The outcome.
    pub decision: Decision,
    /// How it was reached.
    pub step: Step,
    /// The rule that decided; none for the default.
    pub rule: Option<&'a AuthorizationRule>,
}

impl Verdict<'_> {
    /// The bounded label of what decided: the rule's name, or `default`.
    pub fn rule_label(&self) -> &str {
        self.rule.map_or("default", |r| r.name.as_str())
    }
}

/// The error for an identity pattern that cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid identity pattern {0:?}: expected *, <namespace>/*, <namespace>/<name>, a SPIFFE ID, spiffe://<trust-domain>/* or unauthenticated"
)]
pub struct PatternError(pub String);

// === impl IdentityMatch ===

impl IdentityMatch {
    /// Whether `id` matches.
    pub fn matches(&self, id: &Identity) -> bool {
        match self {
            IdentityMatch::Unauthenticated | IdentityMatch::Any => true,
            IdentityMatch::TrustDomain(td) => id.trust_domain() == td,
            IdentityMatch::Namespace(ns) => id.namespace() == ns,
            IdentityMatch::Account { namespace, name } => {
                id.namespace() == namespace && id.name() == name
            }
            IdentityMatch::Exact(exact) => exact == id,
        }
    }

    /// Whether a client with `id` (`None`: without a mesh identity) matches.
    pub fn matches_client(&self, id: Option<&Identity>) -> bool {
        match id {
            Some(id) => self.matches(id),
            None => *self == IdentityMatch::Unauthenticated,
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
        if let Some(rest) = s.strip_prefix("spiffe://") {
            if let Some(domain) = rest.strip_suffix("/*")
                && !domain.contains('/')
            {
                return TrustDomain::new(domain)
                    .map(IdentityMatch::TrustDomain)
                    .map_err(|_| err());
            }
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
            IdentityMatch::TrustDomain(td) => write!(f, "spiffe://{td}/*"),
            IdentityMatch::Namespace(ns) => write!(f, "{ns}/*"),
            IdentityMatch::Account { namespace, name } => write!(f, "{namespace}/{name}"),
            IdentityMatch::Exact(id) => write!(f, "{id}"),
        }
    }
}

// === impl AuthorizationRule ===

/// How a condition the proxy cannot check is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unknown {
    /// As met: deny rules on what is there, allow rules on a connection's possible requests.
    Met,
    /// As unmet.
    Unmet,
}

impl AuthorizationRule {
    /// An allow rule of `service` for the clients `from`, on every request, named after
    /// the service.
    pub fn allow(service: ServiceName, from: Vec<IdentityMatch>) -> Self {
        Self {
            name: format!("{}/{}", service.namespace, service.name),
            source: RouteSource::ControlPlane,
            service,
            action: Action::Allow,
            audit: false,
            from,
            to: Vec::new(),
        }
    }

    /// The rule as it applies on `port`, if it does: without the request matches of other
    /// ports, and without port conditions.
    fn on_port(&self, port: u16) -> Option<Self> {
        on_port(&self.to, port).map(|to| Self { to, ..self.clone() })
    }

    /// Whether the rule matches `client` (`None`: without a mesh identity) and `req`.
    fn matches<R: AuthzView>(&self, client: Option<&Identity>, req: Request<'_, R>) -> bool {
        if !self.from.iter().any(|m| m.matches_client(client)) {
            return false;
        }
        if self.to.is_empty() {
            return true;
        }
        let unknown = match (self.action, req) {
            (Action::Deny, Request::Connection) => Unknown::Unmet,
            (Action::Allow, Request::Connection) => Unknown::Met,
            (Action::Deny, _) => Unknown::Met,
            (Action::Allow, _) => Unknown::Unmet,
        };
        match req {
            Request::Connection | Request::Opaque => self
                .to
                .iter()
                .any(|m| (m.http.is_none() && m.grpc.is_none()) || unknown == Unknown::Met),
            Request::Http(view) => {
                let path = normalize_path(view.path());
                self.to
                    .iter()
                    .any(|m| request_matches(m, view, path.as_deref(), unknown))
            }
        }
    }
}

/// The request matches of a rule or limit that apply on `port`, without their port
/// conditions: every request (empty) when `to` is, `None` when none of its matches is for
/// this port.
pub(crate) fn on_port(to: &[RequestMatch], port: u16) -> Option<Vec<RequestMatch>> {
    if to.is_empty() {
        return Some(Vec::new());
    }
    let on: Vec<RequestMatch> = to
        .iter()
        .filter(|m| m.port.is_none_or(|p| p == port))
        .map(|m| RequestMatch {
            port: None,
            ..m.clone()
        })
        .collect();
    (!on.is_empty()).then_some(on)
}

impl RequestMatch {
    /// Whether `req` matches, a condition the proxy cannot check (a path that may be read
    /// two ways) counting as met.
    pub fn covers<R: AuthzView>(&self, req: &R) -> bool {
        let path = normalize_path(req.path());
        request_matches(self, req, path.as_deref(), Unknown::Met)
    }
}

/// Whether `m` matches the HTTP request `view` whose normalised path is `path` (`None`: the
/// path cannot be trusted).
fn request_matches<R: AuthzView>(
    m: &RequestMatch,
    view: &R,
    path: Option<&str>,
    unknown: Unknown,
) -> bool {
    let met = unknown == Unknown::Met;
    let headers_ok = |headers: &[HeaderMatch]| {
        headers.iter().all(|h| {
            let values = view.header_values(&h.name);
            let one = |v: &Option<&str>| v.map_or(met, |v| h.value.matches(v));
            if met {
                values.iter().any(one)
            } else {
                !values.is_empty() && values.iter().all(one)
            }
        })
    };
    if let Some(http) = &m.http {
        let path_ok = match (&http.path, path) {
            (None, _) => true,
            (Some(_), None) => met,
            (Some(p), Some(path)) => p.matches(path),
        };
        let ok = path_ok
            && http.method.as_deref().is_none_or(|x| x == view.method())
            && headers_ok(&http.headers);
        if !ok {
            return false;
        }
    }
    if let Some(grpc) = &m.grpc {
        let names = || {
            path.and_then(|p| p.strip_prefix('/'))
                .and_then(|p| p.split_once('/'))
        };
        let names_ok = match (grpc.service.is_some() || grpc.method.is_some(), names()) {
            (false, _) => true,
            (true, None) => met && path.is_none(),
            (true, Some((service, method))) => {
                grpc.service.as_ref().is_none_or(|s| s.matches(service))
                    && grpc.method.as_ref().is_none_or(|m| m.matches(method))
            }
        };
        if !(names_ok && headers_ok(&grpc.headers)) {
            return false;
        }
    }
    true
}

/// The path as an application's router reads it: `.` and `..` segments resolved, repeated
/// slashes merged, encoded unreserved characters decoded. `None` when it may be read two
/// ways: an encoded `/` or `\`, a raw `\`, or a bad escape.
pub fn normalize_path(raw: &str) -> Option<Cow<'_, str>> {
    let b = raw.as_bytes();
    if b.contains(&b'\\') {
        return None;
    }
    let plain =
        !b.contains(&b'%') && !raw.contains("//") && !raw.split('/').any(|s| s == "." || s == "..");
    if plain {
        return Some(Cow::Borrowed(raw));
    }
    // Decode what may be decoded; refuse what would change the segments.
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                decoded.push(char::from(v));
            } else if matches!(v, b'/' | b'\\') {
                return None;
            } else {
                decoded.push_str(&format!("%{v:02X}"));
            }
            i += 3;
        } else {
            // The rest of a UTF-8 sequence is copied whole.
            let len = raw[i..].chars().next().map_or(1, char::len_utf8);
            decoded.push_str(&raw[i..i + len]);
            i += len;
        }
    }
    let absolute = decoded.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "" => trailing = n == last && n > 0,
            "." => trailing = n == last,
            ".." => {
                out.pop();
                trailing = n == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut path = String::with_capacity(decoded.len());
    if absolute {
        path.push('/');
    }
    path.push_str(&out.join("/"));
    if trailing && !out.is_empty() {
        path.push('/');
    }
    Some(Cow::Owned(path))
}

// === impl InboundPolicy ===

impl InboundPolicy {
    /// The policy of the server on `port` that backs `services`, from the mesh-wide default
    /// and the rules.
    ///
    /// A service with enforced allow rules on the port admits only what they name; one
    /// without admits what the mesh default admits. A server backing several services takes
    /// the rules of all of them (so a deny rule of any applies) and the most permissive of
    /// their defaults: it cannot tell which service the client meant. A server that backs no
    /// known service gets the mesh default.
    pub fn for_server<'a>(
        default: Decision,
        rules: &[AuthorizationRule],
        services: impl IntoIterator<Item = &'a ServiceName>,
        port: u16,
    ) -> Self {
        let mut any = false;
        // Under audit, what an allow list does not name is audited, not refused.
        let floor = if default == Decision::Audit {
            Decision::Audit
        } else {
            Decision::Deny
        };
        let mut policy = Self {
            default: floor,
            rules: Vec::new(),
            rate_limits: Vec::new(),
        };
        for service in services {
            any = true;
            let mut restricted = false;
            for r in rules
                .iter()
                .filter(|r| &r.service == service)
                .filter_map(|r| r.on_port(port))
            {
                restricted |= r.action == Action::Allow && !r.audit;
                if !policy.rules.iter().any(|have| **have == r) {
                    policy.rules.push(Arc::new(r));
                }
            }
            if !restricted && default.rank() > policy.default.rank() {
                policy.default = default;
            }
        }
        if !any {
            policy.default = default;
        }
        policy
    }

    /// Decides on a request (or connection) of `client` (`None`: a client without a mesh
    /// identity). See the module docs for the order.
    pub fn decide<R: AuthzView>(
        &self,
        client: Option<&Identity>,
        req: Request<'_, R>,
    ) -> Verdict<'_> {
        let enforced = || self.rules.iter().filter(|r| !r.audit);
        if let Some(r) = enforced().find(|r| r.action == Action::Deny && r.matches(client, req)) {
            return Verdict {
                decision: Decision::Deny,
                step: Step::DenyRule,
                rule: Some(r),
            };
        }
        let allowed = enforced().find(|r| r.action == Action::Allow && r.matches(client, req));
        let mut verdict = match allowed {
            Some(r) => Verdict {
                decision: Decision::Allow,
                step: Step::AllowRule,
                rule: Some(r),
            },
            None => Verdict {
                decision: self.default_for(client),
                step: Step::Default,
                rule: None,
            },
        };
        // On a connection, audit rules wait for its requests.
        if !verdict.decision.admits() || matches!(req, Request::Connection) {
            return verdict;
        }
        let audited = || self.rules.iter().filter(|r| r.audit);
        if let Some(r) = audited().find(|r| r.action == Action::Deny && r.matches(client, req)) {
            verdict = Verdict {
                decision: Decision::Audit,
                step: Step::AuditDenyRule,
                rule: Some(r),
            };
        } else if verdict.step == Step::Default && verdict.decision == Decision::Allow {
            let mut tries = audited().filter(|r| r.action == Action::Allow).peekable();
            if let Some(first) = tries.peek().copied()
                && !tries.any(|r| r.matches(client, req))
            {
                verdict = Verdict {
                    decision: Decision::Audit,
                    step: Step::AuditAllowMissed,
                    rule: Some(first),
                };
            }
        }
        verdict
    }

    /// Whether a connection of `client` (`None`: without a mesh identity) is admitted, that
    /// is, whether any of its requests could be.
    pub fn on_connection(&self, client: Option<&Identity>) -> Decision {
        self.decide::<NoHttp>(client, Request::Connection).decision
    }

    /// What the default makes of `client`.
    fn default_for(&self, client: Option<&Identity>) -> Decision {
        match (self.default, client) {
            (Decision::AllowUnauthenticated, _) | (Decision::Allow, Some(_)) => Decision::Allow,
            (Decision::Audit, Some(_)) => Decision::Audit,
            _ => Decision::Deny,
        }
    }
}

/// A request without HTTP parts, for deciding connections and opaque TCP.
#[derive(Clone, Copy, Debug)]
pub enum NoHttp {}

impl AuthzView for NoHttp {
    fn method(&self) -> &str {
        match *self {}
    }
    fn path(&self) -> &str {
        match *self {}
    }
    fn header_values(&self, _: &str) -> Vec<Option<&str>> {
        match *self {}
    }
}

// === explanations ===

/// A decision to explain without sending traffic, as `weft authz` and the control plane's
/// `/api/authz` take it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// The client: `<namespace>/<name>` (in the mesh's trust domain), a SPIFFE ID, or
    /// `unauthenticated` (a client without a mesh identity).
    pub from: String,
    /// The service called: `name.namespace` (or `name` in namespace `default`).
    pub service: String,
    /// The port the workload serves on; none: rules with port conditions are left out.
    #[serde(default)]
    pub port: Option<u16>,
    /// The method (default `GET`, or `POST` for a gRPC call).
    #[serde(default)]
    pub method: Option<String>,
    /// The path (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// A gRPC call, `pkg.Service/Method`: the path and method follow.
    #[serde(default)]
    pub grpc: Option<String>,
    /// Request headers, name and value.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Decide opaque TCP instead of an HTTP request.
    #[serde(default)]
    pub tcp: bool,
}

/// What one rule made of the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleTrace {
    /// `namespace/name`.
    pub name: String,
    /// Where it was written: `file:line`, or the platform object.
    pub source: String,
    /// `allow` or `deny`.
    pub action: String,
    /// Whether it is in audit mode.
    pub audit: bool,
    /// `matches`, or why not.
    pub outcome: String,
}

/// A decision with what made it and what every rule of the server made of the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// `allow`, `deny` or `audit`.
    pub decision: Decision,
    /// The client, as a SPIFFE ID or `unauthenticated`.
    pub client: String,
    /// The service.
    pub service: String,
    /// The port, if given.
    pub port: Option<u16>,
    /// What was asked: `GET /path`, `grpc pkg.Service/Method` or `tcp`.
    pub request: String,
    /// The server's default, for what no enforced rule decides.
    pub default: Decision,
    /// The rule that decided; none for the default.
    pub decided_by: Option<String>,
    /// Why, in a sentence.
    pub reason: String,
    /// Each rule of the service, in the order they are tried within their kind.
    pub rules: Vec<RuleTrace>,
}

/// Why a request cannot be explained.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// The client is neither an account, a SPIFFE ID nor `unauthenticated`.
    #[error("from {0:?}: expected <namespace>/<name>, a SPIFFE ID or unauthenticated")]
    Client(String),
    /// The service does not parse.
    #[error("service {0:?}: {1}")]
    Service(String, String),
    /// The gRPC call is not `pkg.Service/Method`.
    #[error("grpc {0:?}: expected <package.Service>/<Method>")]
    Grpc(String),
}

/// The HTTP parts of an [`ExplainRequest`].
struct Asked<'a> {
    method: &'a str,
    path: String,
    headers: &'a [(String, String)],
}

impl AuthzView for Asked<'_> {
    fn method(&self) -> &str {
        self.method
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn header_values(&self, name: &str) -> Vec<Option<&str>> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| Some(v.as_str()))
            .collect()
    }
}

/// Explains what the servers of `req.service` decide on `req`, under the mesh default
/// `default` and `rules`, in the mesh's `trust_domain`.
pub fn explain(
    default: Decision,
    rules: &[AuthorizationRule],
    trust_domain: &TrustDomain,
    req: &ExplainRequest,
) -> Result<Explanation, ExplainError> {
    let client = match req.from.as_str() {
        "unauthenticated" => None,
        s if s.starts_with("spiffe://") => {
            Some(Identity::parse_spiffe(s).map_err(|_| ExplainError::Client(s.to_string()))?)
        }
        s => {
            let (ns, name) = s
                .split_once('/')
                .ok_or_else(|| ExplainError::Client(s.to_string()))?;
            Some(
                Identity::new(trust_domain.clone(), ns, name)
                    .map_err(|_| ExplainError::Client(s.to_string()))?,
            )
        }
    };
    let service = ServiceName::parse(&req.service, "default")
        .map_err(|e| ExplainError::Service(req.service.clone(), e.to_string()))?;
    let (method, path) = match &req.grpc {
        Some(call) => {
            let ok = call
                .split_once('/')
                .is_some_and(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'));
            if !ok {
                return Err(ExplainError::Grpc(call.clone()));
            }
            (req.method.as_deref().unwrap_or("POST"), format!("/{call}"))
        }
        None => (
            req.method.as_deref().unwrap_or("GET"),
            req.path.clone().unwrap_or_else(|| "/".into()),
        ),
    };
    let asked = Asked {
        method,
        path,
        headers: &req.headers,
    };
    let facts = if req.tcp {
        Request::Opaque
    } else {
        Request::Http(&asked)
    };
    let policy = InboundPolicy::for_server(default, rules, [&service], req.port.unwrap_or(0));
    let verdict = policy.decide(client.as_ref(), facts);
    let mut traces: Vec<RuleTrace> = rules
        .iter()
        .filter(|r| r.service == service)
        .map(|r| {
            let on_port = policy.rules.iter().find(|p| p.name == r.name);
            let outcome = match on_port {
                None => {
                    let ports: Vec<String> =
                        r.to.iter()
                            .filter_map(|m| m.port.map(|p| p.to_string()))
                            .collect();
                    format!("not on this port: only on port {}", ports.join(", "))
                }
                Some(p) if !p.from.iter().any(|m| m.matches_client(client.as_ref())) => {
                    let from: Vec<String> = p.from.iter().map(ToString::to_string).collect();
                    format!("the client is not in from [{}]", from.join(", "))
                }
                Some(p) if !p.matches(client.as_ref(), facts) => {
                    if req.tcp {
                        "its request conditions cannot be checked on TCP".to_string()
                    } else {
                        "the request matches none of its to entries".to_string()
                    }
                }
                Some(_) => "matches".to_string(),
            };
            RuleTrace {
                name: r.name.clone(),
                source: r.source.to_string(),
                action: match r.action {
                    Action::Allow => "allow",
                    Action::Deny => "deny",
                }
                .to_string(),
                audit: r.audit,
                outcome,
            }
        })
        .collect();
    traces.sort_by_key(|t| (t.audit, t.action != "deny"));
    let decided_by = verdict.rule.map(|r| r.name.clone());
    let reason = match (verdict.step, &decided_by) {
        (Step::DenyRule, Some(r)) => format!("the deny rule {r} matches; deny rules win"),
        (Step::AllowRule, Some(r)) => format!("the allow rule {r} matches and no deny rule does"),
        (Step::AuditDenyRule, Some(r)) => format!(
            "admitted, but the deny rule {r}, in audit mode, matches: enforced, it would refuse this"
        ),
        (Step::AuditAllowMissed, Some(r)) => format!(
            "admitted by the default, but no allow rule in audit mode ({r} first) matches: enforced, they would refuse this"
        ),
        _ => {
            let restricted = policy
                .rules
                .iter()
                .any(|r| r.action == Action::Allow && !r.audit);
            match (policy.default, restricted) {
                (Decision::Deny | Decision::Audit, true) => format!(
                    "no rule matches, and {service} has allow rules, so it admits only what they name"
                ),
                (d, _) => format!(
                    "no rule matches; the server's default is {}",
                    decision_name(d)
                ),
            }
        }
    };
    let request = if req.tcp {
        "tcp".to_string()
    } else if let Some(call) = &req.grpc {
        format!("grpc {call}")
    } else {
        format!("{} {}", asked.method, asked.path)
    };
    Ok(Explanation {
        decision: verdict.decision,
        client: client.map_or_else(|| "unauthenticated".to_string(), |c| c.spiffe_id()),
        service: service.to_string(),
        port: req.port,
        request,
        default: policy.default,
        decided_by,
        reason,
        rules: traces,
    })
}

/// A decision as the mesh file writes it.
pub fn decision_name(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
        Decision::AllowUnauthenticated => "allow-unauthenticated",
        Decision::Audit => "audit",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TrustDomain;
    use crate::policy::route::{PathMatch, ValueMatch};

    fn id(ns: &str, name: &str) -> Identity {
        Identity::new(TrustDomain::new("weft.test").unwrap(), ns, name).unwrap()
    }

    fn svc(s: &str) -> ServiceName {
        ServiceName::parse(s, "default").unwrap()
    }

    fn allow(service: &str, from: &[&str]) -> AuthorizationRule {
        AuthorizationRule::allow(
            svc(service),
            from.iter().map(|p| p.parse().unwrap()).collect(),
        )
    }

    fn rule(
        name: &str,
        service: &str,
        action: Action,
        from: &[&str],
        to: Vec<RequestMatch>,
    ) -> AuthorizationRule {
        AuthorizationRule {
            name: format!("test/{name}"),
            action,
            to,
            ..allow(service, from)
        }
    }

    fn path(prefix: &str) -> RequestMatch {
        RequestMatch {
            http: Some(HttpMatch {
                path: Some(PathMatch::prefix(prefix)),
                ..HttpMatch::default()
            }),
            ..RequestMatch::default()
        }
    }

    /// A request of the tests: method, path, headers.
    struct Req(
        &'static str,
        &'static str,
        Vec<(&'static str, &'static str)>,
    );

    impl AuthzView for Req {
        fn method(&self) -> &str {
            self.0
        }
        fn path(&self) -> &str {
            self.1
        }
        fn header_values(&self, name: &str) -> Vec<Option<&str>> {
            self.2
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| Some(*v))
                .collect()
        }
    }

    fn get(p: &'static str) -> Req {
        Req("GET", p, Vec::new())
    }

    /// The decision on a request of `client`, without HTTP parts.
    fn on_conn(p: &InboundPolicy, client: Option<&Identity>) -> Decision {
        p.on_connection(client)
    }

    fn on_http(p: &InboundPolicy, client: &Identity, req: &Req) -> (Decision, String) {
        let v = p.decide(Some(client), Request::Http(req));
        (v.decision, v.rule_label().to_string())
    }

    fn server(default: Decision, rules: &[AuthorizationRule], services: &[&str]) -> InboundPolicy {
        let names: Vec<ServiceName> = services.iter().map(|s| svc(s)).collect();
        InboundPolicy::for_server(default, rules, &names, 8080)
    }

    /// Audit admits what allow admits, and names those deny would refuse; plaintext clients
    /// stay out as under allow.
    #[test]
    fn audit_admits_and_names_what_deny_would_refuse() {
        let p = server(
            Decision::Audit,
            &[allow("web.shop", &["shop/*"])],
            &["web.shop"],
        );
        assert_eq!(on_conn(&p, Some(&id("shop", "web"))), Decision::Allow);
        assert_eq!(on_conn(&p, Some(&id("jobs", "batch"))), Decision::Audit);
        assert!(Decision::Audit.admits() && !Decision::Deny.admits());
        assert_eq!(on_conn(&p, None), Decision::Deny);
        let d: Decision = serde_json::from_value(serde_json::json!("audit")).unwrap();
        assert_eq!(d, Decision::Audit);
        let d: Decision = serde_json::from_value(serde_json::json!("allow-authenticated")).unwrap();
        assert_eq!(d, Decision::Allow);
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
        let domain: IdentityMatch = "spiffe://weft.test/*".parse().unwrap();
        assert!(domain.matches(&web));
        assert_eq!(domain.to_string(), "spiffe://weft.test/*");
        let other: IdentityMatch = "spiffe://other.test/*".parse().unwrap();
        assert!(!other.matches(&web));
        let anyone: IdentityMatch = "unauthenticated".parse().unwrap();
        assert!(anyone.matches(&web) && anyone.matches_client(None));
        assert!(!"*".parse::<IdentityMatch>().unwrap().matches_client(None));
        assert_eq!(anyone.to_string(), "unauthenticated");
        for bad in [
            "",
            "demo",
            "demo/",
            "/web",
            "spiffe://x",
            "spiffe://Bad/*",
            "spiffe://a/b/*",
            "Demo/web",
            "Unauthenticated",
        ] {
            assert!(bad.parse::<IdentityMatch>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rules_narrow_the_default() {
        let rules = [allow("api.demo", &["demo/web"])];
        let p = server(Decision::Allow, &rules, &["api.demo"]);
        assert_eq!(on_conn(&p, Some(&id("demo", "web"))), Decision::Allow);
        assert_eq!(on_conn(&p, Some(&id("demo", "load"))), Decision::Deny);
        let p = server(Decision::Allow, &rules, &["other.demo"]);
        assert_eq!(on_conn(&p, Some(&id("demo", "load"))), Decision::Allow);
        let p = server(Decision::Deny, &rules, &["other.demo"]);
        assert_eq!(on_conn(&p, Some(&id("demo", "web"))), Decision::Deny);
        // Under a deny default, the rule still admits whom it names.
        let p = server(Decision::Deny, &rules, &["api.demo"]);
        assert_eq!(on_conn(&p, Some(&id("demo", "web"))), Decision::Allow);
        // A server without a known service gets the mesh default.
        let p = server(Decision::Deny, &rules, &[]);
        assert_eq!(on_conn(&p, Some(&id("demo", "web"))), Decision::Deny);
    }

    #[test]
    fn a_server_backing_several_services_admits_what_any_of_them_admits() {
        let rules = [
            allow("api.demo", &["demo/web"]),
            allow("admin.demo", &["ops/*"]),
        ];
        let p = server(Decision::Allow, &rules, &["api.demo", "admin.demo"]);
        assert_eq!(on_conn(&p, Some(&id("demo", "web"))), Decision::Allow);
        assert_eq!(on_conn(&p, Some(&id("ops", "x"))), Decision::Allow);
        assert_eq!(on_conn(&p, Some(&id("demo", "load"))), Decision::Deny);
        // With a service that no rule restricts, the default applies to the rest.
        let p = server(Decision::Allow, &rules, &["api.demo", "open.demo"]);
        assert_eq!(on_conn(&p, Some(&id("demo", "load"))), Decision::Allow);
        let p = server(Decision::Deny, &rules, &["api.demo", "open.demo"]);
        assert_eq!(on_conn(&p, Some(&id("demo", "load"))), Decision::Deny);
        // But a deny rule of either service applies to the server.
        let no = rule("no", "open.demo", Action::Deny, &["demo/web"], Vec::new());
        let p = server(
            Decision::Allow,
            &[rules[0].clone(), no],
            &["api.demo", "open.demo"],
        );
        assert_eq!(on_conn(&p, Some(&id("demo", "web"))), Decision::Deny);
    }

    #[test]
    fn only_what_says_so_admits_clients_without_an_identity() {
        let rules = [
            allow("api.demo", &["demo/web"]),
            allow("open.demo", &["unauthenticated"]),
        ];
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
            let p = server(default, &rules, &["other.demo"]);
            assert_eq!(on_conn(&p, None), plaintext, "{default:?}");
            assert_eq!(on_conn(&p, Some(&id("demo", "x"))), mesh, "{default:?}");
        }
        // A rule narrows allow-unauthenticated like any default.
        let p = server(Decision::AllowUnauthenticated, &rules, &["api.demo"]);
        assert_eq!(on_conn(&p, None), Decision::Deny);
        assert_eq!(on_conn(&p, Some(&id("demo", "load"))), Decision::Deny);
        assert_eq!(on_conn(&p, Some(&id("demo", "web"))), Decision::Allow);
        // A rule that names `unauthenticated` opens its service under a deny default.
        let p = server(Decision::Deny, &rules, &["open.demo"]);
        assert_eq!(on_conn(&p, None), Decision::Allow);
        assert_eq!(on_conn(&p, Some(&id("prod", "x"))), Decision::Allow);
        // A server of both admits what either admits.
        let p = server(Decision::Deny, &rules, &["api.demo", "open.demo"]);
        assert_eq!(on_conn(&p, None), Decision::Allow);
    }

    /// Allow rules by path and method; a deny rule wins over them; the rule that decided is
    /// named.
    #[test]
    fn requests_are_decided_by_path_method_and_deny_wins() {
        let web = id("shop", "web");
        let reads = RequestMatch {
            http: Some(HttpMatch {
                method: Some("GET".into()),
                ..HttpMatch::default()
            }),
            ..RequestMatch::default()
        };
        let rules = [
            rule("reads", "api.shop", Action::Allow, &["shop/*"], vec![reads]),
            rule(
                "no-admin",
                "api.shop",
                Action::Deny,
                &["*"],
                vec![path("/admin")],
            ),
        ];
        let p = server(Decision::Allow, &rules, &["api.shop"]);
        assert_eq!(
            on_http(&p, &web, &get("/items")),
            (Decision::Allow, "test/reads".into())
        );
        assert_eq!(
            on_http(&p, &web, &Req("POST", "/items", Vec::new())),
            (Decision::Deny, "default".into())
        );
        assert_eq!(
            on_http(&p, &web, &get("/admin/users")),
            (Decision::Deny, "test/no-admin".into())
        );
        // Ways of writing /admin that a router reads as /admin.
        for sneaky in [
            "/admin",
            "//admin",
            "/x/../admin",
            "/./admin/",
            "/%61dmin",
            "/items/%2e%2e/admin",
        ] {
            assert_eq!(
                on_http(&p, &web, &get(sneaky)).0,
                Decision::Deny,
                "{sneaky}"
            );
        }
        // A path read two ways meets a deny rule's path and no allow rule's.
        assert_eq!(
            on_http(&p, &web, &get("/items%2f..%2fadmin")).0,
            Decision::Deny
        );
        assert_eq!(on_http(&p, &web, &get("/items\\x")).0, Decision::Deny);
        assert_eq!(on_http(&p, &web, &get("/bad%zz")).0, Decision::Deny);
        assert_eq!(on_http(&p, &web, &get("/adminx")).0, Decision::Allow);
        // A client the deny rule names is still admitted on a connection: its requests may
        // avoid /admin. One nothing admits is not.
        assert_eq!(on_conn(&p, Some(&web)), Decision::Allow);
        assert_eq!(on_conn(&p, Some(&id("jobs", "x"))), Decision::Deny);
        // On opaque TCP an allow rule with conditions admits nothing, and a deny rule with
        // conditions refuses everyone it names.
        assert_eq!(
            p.decide::<NoHttp>(Some(&web), Request::Opaque).decision,
            Decision::Deny
        );
        let open = [
            rule("all", "api.shop", Action::Allow, &["*"], Vec::new()),
            rules[1].clone(),
        ];
        let p = server(Decision::Deny, &open, &["api.shop"]);
        let v = p.decide::<NoHttp>(Some(&web), Request::Opaque);
        assert_eq!((v.decision, v.step), (Decision::Deny, Step::DenyRule));
    }

    #[test]
    fn grpc_methods_and_headers() {
        let web = id("shop", "web");
        let grpc = |service: &str, method: Option<&str>| RequestMatch {
            grpc: Some(GrpcMatch {
                service: Some(ValueMatch::Exact(service.into())),
                method: method.map(|m| ValueMatch::Exact(m.into())),
                headers: Vec::new(),
            }),
            ..RequestMatch::default()
        };
        let debug = RequestMatch {
            http: Some(HttpMatch {
                headers: vec![HeaderMatch {
                    name: "x-debug".into(),
                    value: ValueMatch::Exact("1".into()),
                }],
                ..HttpMatch::default()
            }),
            ..RequestMatch::default()
        };
        let rules = [
            rule(
                "catalog",
                "api.shop",
                Action::Allow,
                &["shop/web"],
                vec![grpc("shop.Catalog", None)],
            ),
            rule(
                "no-delete",
                "api.shop",
                Action::Deny,
                &["*"],
                vec![grpc("shop.Catalog", Some("Delete"))],
            ),
            rule("no-debug", "api.shop", Action::Deny, &["*"], vec![debug]),
        ];
        let p = server(Decision::Deny, &rules, &["api.shop"]);
        let call = |m: &'static str| Req("POST", m, Vec::new());
        assert_eq!(
            on_http(&p, &web, &call("/shop.Catalog/Get")).0,
            Decision::Allow
        );
        assert_eq!(
            on_http(&p, &web, &call("/shop.Catalog/Delete")),
            (Decision::Deny, "test/no-delete".into())
        );
        assert_eq!(
            on_http(&p, &web, &call("/shop.Orders/Get")).0,
            Decision::Deny
        );
        // A deny rule's header matches any of the header's values.
        let sneaky = Req(
            "POST",
            "/shop.Catalog/Get",
            vec![("x-debug", "0"), ("x-debug", "1")],
        );
        assert_eq!(
            on_http(&p, &web, &sneaky),
            (Decision::Deny, "test/no-debug".into())
        );
        // An allow rule's header must match all of them.
        let only_debug = rule(
            "dbg",
            "api.shop",
            Action::Allow,
            &["*"],
            vec![RequestMatch {
                http: Some(HttpMatch {
                    headers: vec![HeaderMatch {
                        name: "x-team".into(),
                        value: ValueMatch::Exact("ops".into()),
                    }],
                    ..HttpMatch::default()
                }),
                ..RequestMatch::default()
            }],
        );
        let p = server(Decision::Deny, &[only_debug], &["api.shop"]);
        assert_eq!(
            on_http(&p, &web, &Req("GET", "/", vec![("x-team", "ops")])).0,
            Decision::Allow
        );
        assert_eq!(
            on_http(
                &p,
                &web,
                &Req("GET", "/", vec![("x-team", "ops"), ("x-team", "dev")])
            )
            .0,
            Decision::Deny
        );
        assert_eq!(on_http(&p, &web, &get("/")).0, Decision::Deny);
    }

    /// A single rule in audit mode is tried, not enforced: a request it would refuse is
    /// admitted as `audit`, with its name.
    #[test]
    fn a_rule_in_audit_mode_counts_instead_of_refusing() {
        let web = id("shop", "web");
        let batch = id("jobs", "batch");
        let mut no_admin = rule(
            "no-admin",
            "api.shop",
            Action::Deny,
            &["*"],
            vec![path("/admin")],
        );
        no_admin.audit = true;
        let mut only_web = allow("api.shop", &["shop/web"]);
        only_web.name = "test/only-web".into();
        only_web.audit = true;
        let p = server(Decision::Allow, &[no_admin, only_web], &["api.shop"]);
        assert_eq!(
            on_http(&p, &web, &get("/admin")),
            (Decision::Audit, "test/no-admin".into())
        );
        assert_eq!(
            on_http(&p, &web, &get("/")),
            (Decision::Allow, "default".into())
        );
        let v = p.decide(Some(&batch), Request::Http(&get("/")));
        assert_eq!(
            (v.decision, v.step, v.rule_label()),
            (Decision::Audit, Step::AuditAllowMissed, "test/only-web")
        );
        // An audit allow rule does not make the service's allow list: the default still
        // admits batch on a connection.
        assert_eq!(on_conn(&p, Some(&batch)), Decision::Allow);
    }

    /// A rule's port conditions keep it to the servers on that port.
    #[test]
    fn port_conditions() {
        let admin_port = RequestMatch {
            port: Some(9090),
            ..RequestMatch::default()
        };
        let rules = [rule(
            "ops-only",
            "api.shop",
            Action::Allow,
            &["ops/*"],
            vec![admin_port],
        )];
        let names = [svc("api.shop")];
        let on_9090 = InboundPolicy::for_server(Decision::Allow, &rules, &names, 9090);
        let on_8080 = InboundPolicy::for_server(Decision::Allow, &rules, &names, 8080);
        assert_eq!(on_conn(&on_9090, Some(&id("shop", "web"))), Decision::Deny);
        assert_eq!(on_conn(&on_9090, Some(&id("ops", "me"))), Decision::Allow);
        assert_eq!(on_conn(&on_8080, Some(&id("shop", "web"))), Decision::Allow);
        assert!(on_8080.rules.is_empty());
        assert_eq!(on_9090.rules[0].to, vec![RequestMatch::default()]);
    }

    /// An explanation names the rule that decided, why, and what every rule of the service
    /// made of the request.
    #[test]
    fn explanations_name_the_deciding_rule() {
        let td = TrustDomain::new("weft.test").unwrap();
        let mut reads = rule("reads", "api.shop", Action::Allow, &["shop/*"], Vec::new());
        reads.to = vec![RequestMatch {
            http: Some(HttpMatch {
                method: Some("GET".into()),
                ..HttpMatch::default()
            }),
            ..RequestMatch::default()
        }];
        let mut ops = rule("ops", "api.shop", Action::Allow, &["ops/*"], Vec::new());
        ops.to = vec![RequestMatch {
            port: Some(9090),
            ..RequestMatch::default()
        }];
        let mut trial = rule(
            "trial",
            "api.shop",
            Action::Deny,
            &["*"],
            vec![path("/beta")],
        );
        trial.audit = true;
        let rules = [
            reads,
            rule(
                "no-admin",
                "api.shop",
                Action::Deny,
                &["*"],
                vec![path("/admin")],
            ),
            ops,
            trial,
            allow("other.shop", &["*"]),
        ];
        let ask = |from: &str, method: &str, path: &str| ExplainRequest {
            from: from.into(),
            service: "api.shop".into(),
            port: Some(8080),
            method: Some(method.into()),
            path: Some(path.into()),
            ..ExplainRequest::default()
        };
        let e = explain(
            Decision::Allow,
            &rules,
            &td,
            &ask("shop/web", "GET", "/admin"),
        )
        .unwrap();
        assert_eq!(e.decision, Decision::Deny);
        assert_eq!(e.decided_by.as_deref(), Some("test/no-admin"));
        assert!(e.reason.contains("deny rules win"), "{}", e.reason);
        assert_eq!(e.client, "spiffe://weft.test/ns/shop/sa/web");
        let outcome = |e: &Explanation, name: &str| {
            e.rules
                .iter()
                .find(|t| t.name == name)
                .unwrap()
                .outcome
                .clone()
        };
        assert_eq!(outcome(&e, "test/reads"), "matches");
        assert!(outcome(&e, "test/ops").starts_with("not on this port"));
        assert_eq!(e.rules.len(), 4, "only the service's rules");
        assert_eq!(e.rules[0].action, "deny", "deny rules first");

        let e = explain(Decision::Allow, &rules, &td, &ask("shop/web", "POST", "/x")).unwrap();
        assert_eq!(
            (e.decision, e.decided_by.as_deref()),
            (Decision::Deny, None)
        );
        assert!(
            e.reason.contains("admits only what they name"),
            "{}",
            e.reason
        );
        assert_eq!(
            outcome(&e, "test/reads"),
            "the request matches none of its to entries"
        );

        let e = explain(Decision::Allow, &rules, &td, &ask("jobs/x", "GET", "/")).unwrap();
        assert!(outcome(&e, "test/reads").starts_with("the client is not in from"));

        let e = explain(
            Decision::Allow,
            &rules,
            &td,
            &ask("shop/web", "GET", "/beta"),
        )
        .unwrap();
        assert_eq!(
            (e.decision, e.decided_by.as_deref()),
            (Decision::Audit, Some("test/trial"))
        );

        let grpc = ExplainRequest {
            grpc: Some("shop.Catalog/Get".into()),
            ..ask("unauthenticated", "", "")
        };
        let grpc = ExplainRequest {
            method: None,
            ..grpc
        };
        let e = explain(Decision::Allow, &rules, &td, &grpc).unwrap();
        assert_eq!(
            (e.decision, e.request.as_str()),
            (Decision::Deny, "grpc shop.Catalog/Get")
        );
        for bad in [
            ExplainRequest {
                from: "web".into(),
                ..ask("", "GET", "/")
            },
            ExplainRequest {
                service: "Bad".into(),
                ..ask("a/b", "GET", "/")
            },
            ExplainRequest {
                grpc: Some("nomethod".into()),
                ..ask("a/b", "GET", "/")
            },
        ] {
            assert!(
                explain(Decision::Allow, &rules, &td, &bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn paths_are_read_as_routers_read_them() {
        for (raw, want) in [
            ("/a/b", Some("/a/b")),
            ("/a//b", Some("/a/b")),
            ("/a/./b/", Some("/a/b/")),
            ("/a/../../b", Some("/b")),
            ("/a/..", Some("/")),
            ("/%7Euser/%41", Some("/~user/A")),
            ("/a%20b", Some("/a%20b")),
            ("/a%2fb", None),
            ("/a%5Cb", None),
            ("/a\\b", None),
            ("/a%2", None),
            ("/é/./x", Some("/é/x")),
            ("*", Some("*")),
        ] {
            assert_eq!(normalize_path(raw).as_deref(), want, "{raw}");
        }
    }
}
