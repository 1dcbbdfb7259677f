//! What each view of the dashboard shows, gathered from the control plane's state into plain
//! rows of text that the templates ([`super::pages`]) render (and escape).
//!
//! Every list a view shows is bounded: the overview pages its services ([`PAGE_SIZE`] a
//! page), the topology draws at most [`super::topology::MAX_NODES`] nodes, the certificates
//! view the [`SOONEST_LEAVES`] leaves that end soonest, and a service's endpoints, rules and
//! callers at most [`MAX_ROWS`] each.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use weft_api::TapEvent;
use weft_core::policy::authz::{Action, Decision};
use weft_core::{EndpointState, ServiceName};

use crate::State;
use crate::stats::{By, EdgeRow, Golden};

/// Services on one page of the overview.
pub const PAGE_SIZE: usize = 50;
/// Leaves the certificates view lists.
pub const SOONEST_LEAVES: usize = 20;
/// Rows of one table of the service view at most.
pub const MAX_ROWS: usize = 500;

/// How healthy a success rate is: the CSS class of its cell and of a graph's edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    /// At least 99 % of requests succeeded.
    Good,
    /// At least 95 %.
    Fair,
    /// Less.
    Poor,
    /// No requests to judge by.
    Unknown,
}

// === impl Health ===

impl Health {
    /// The health of `success_rate` (0 to 1).
    pub(crate) fn of(success_rate: Option<f64>) -> Self {
        match success_rate {
            None => Health::Unknown,
            Some(s) if s >= 0.99 => Health::Good,
            Some(s) if s >= 0.95 => Health::Fair,
            Some(_) => Health::Poor,
        }
    }

    /// The CSS class.
    pub(crate) fn class(self) -> &'static str {
        match self {
            Health::Good => "good",
            Health::Fair => "fair",
            Health::Poor => "poor",
            Health::Unknown => "unknown",
        }
    }

    /// In words, for those who do not see colours.
    pub(crate) fn words(self) -> &'static str {
        match self {
            Health::Good => "healthy",
            Health::Fair => "degraded",
            Health::Poor => "failing",
            Health::Unknown => "no data",
        }
    }
}

/// Golden metrics as the tables show them.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GoldenCells {
    /// Success rate, `99.50 %`, or `-`.
    pub(crate) success: String,
    /// Requests a second.
    pub(crate) rps: String,
    /// Latency percentiles, `1.2 ms`.
    pub(crate) p50: String,
    /// 95th percentile.
    pub(crate) p95: String,
    /// 99th percentile.
    pub(crate) p99: String,
    /// Requests in total.
    pub(crate) requests: u64,
    /// How healthy the success rate is.
    pub(crate) health: Health,
}

impl Default for GoldenCells {
    fn default() -> Self {
        Self::of(&Golden::default())
    }
}

// === impl GoldenCells ===

impl GoldenCells {
    /// The cells of `g`.
    pub(crate) fn of(g: &Golden) -> Self {
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} ms"));
        Self {
            success: percent(g.success_rate),
            rps: g.rps.map_or("-".into(), |r| format!("{r:.1}")),
            p50: ms(g.p50_ms),
            p95: ms(g.p95_ms),
            p99: ms(g.p99_ms),
            requests: g.requests,
            health: Health::of(g.success_rate),
        }
    }
}

/// `share` (0 to 1) as a percentage with two decimals, or `-`.
fn percent(share: Option<f64>) -> String {
    share.map_or("-".into(), |s| format!("{:.2} %", s * 100.0))
}

/// `part` of `whole` as a whole percentage, or `-` when there is no whole.
fn share(part: usize, whole: usize) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{} %", (part * 100 + whole / 2) / whole)
}

/// The dashboard's page of service `name` (`name.namespace`).
pub(crate) fn service_link(name: &str) -> String {
    format!("/dashboard/service?name={}", encode(name))
}

/// `s` percent-encoded for a query string.
pub(crate) fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// One page of a list that a search narrowed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Page<T> {
    /// The rows on this page.
    pub(crate) rows: Vec<T>,
    /// This page's number, from 1.
    pub(crate) number: usize,
    /// How many pages the matching rows fill (at least 1).
    pub(crate) pages: usize,
    /// Rows the search matched.
    pub(crate) matching: usize,
    /// Rows before the search.
    pub(crate) total: usize,
}

/// Page `page` (from 1; out of range: the nearest page) of `rows` whose `key` contains `q`,
/// ignoring case (an empty `q` matches all), [`PAGE_SIZE`] rows a page, in the order given.
pub(crate) fn paginate<T>(rows: Vec<T>, key: impl Fn(&T) -> &str, q: &str, page: usize) -> Page<T> {
    let total = rows.len();
    let needle = q.trim().to_lowercase();
    let matching: Vec<T> = rows
        .into_iter()
        .filter(|r| needle.is_empty() || key(r).to_lowercase().contains(&needle))
        .collect();
    let count = matching.len();
    let pages = count.div_ceil(PAGE_SIZE).max(1);
    let number = page.clamp(1, pages);
    let rows = matching
        .into_iter()
        .skip((number - 1) * PAGE_SIZE)
        .take(PAGE_SIZE)
        .collect();
    Page {
        rows,
        number,
        pages,
        matching: count,
        total,
    }
}

/// A platform (a registry source), as the overview shows it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PlatformRow {
    /// Its name.
    pub(crate) name: String,
    /// `synced`, `syncing`, or `-` for a source no adapter of this control plane runs.
    pub(crate) sync: &'static str,
    /// Services it reports.
    pub(crate) services: usize,
    /// Their endpoints.
    pub(crate) endpoints: usize,
    /// The share of those that are meshed.
    pub(crate) meshed: String,
}

/// A service, as the overview shows it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ServiceRow {
    /// `name.namespace`.
    pub(crate) name: String,
    /// Its page.
    pub(crate) link: String,
    /// The platforms that report it.
    pub(crate) platforms: Vec<String>,
    /// Its endpoints, over every port and platform.
    pub(crate) endpoints: usize,
    /// The share of them that are meshed.
    pub(crate) meshed: String,
    /// Its golden metrics.
    pub(crate) golden: GoldenCells,
}

/// The mesh at a glance.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Overview {
    /// The search.
    pub(crate) q: String,
    /// Each platform with its sync state.
    pub(crate) platforms: Vec<PlatformRow>,
    /// The page of services shown.
    pub(crate) services: Page<ServiceRow>,
    /// The previous and next pages' addresses, if there are such pages.
    pub(crate) previous: String,
    /// See `previous`.
    pub(crate) next: String,
    /// The seconds rates and percentiles are over.
    pub(crate) window_seconds: u64,
}

/// The overview's address for search `q` and page `page`.
pub(crate) fn overview_link(q: &str, page: usize) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if !q.is_empty() {
        query.append_pair("q", q);
    }
    if page > 1 {
        query.append_pair("page", &page.to_string());
    }
    let query = query.finish();
    if query.is_empty() {
        "/dashboard".into()
    } else {
        format!("/dashboard?{query}")
    }
}

/// Endpoints and how many of them are meshed.
#[derive(Clone, Copy, Debug, Default)]
struct Count {
    services: usize,
    endpoints: usize,
    meshed: usize,
}

/// The overview: platforms, then page `page` of the services whose name contains `q`.
pub(crate) fn overview(state: &State, q: &str, page: usize) -> Overview {
    let registry = state.registry.snapshot();
    let mut by_service: BTreeMap<String, (Vec<String>, Count)> = BTreeMap::new();
    let mut by_source: BTreeMap<String, Count> = BTreeMap::new();
    for source in registry.sources() {
        let counts = by_source.entry(source.to_string()).or_default();
        for service in registry.source(source) {
            counts.services += 1;
            let entry = by_service.entry(service.name.to_string()).or_default();
            entry.0.push(source.to_string());
            for e in service.ports.iter().flat_map(|p| &p.endpoints) {
                counts.endpoints += 1;
                entry.1.endpoints += 1;
                if e.meshed {
                    counts.meshed += 1;
                    entry.1.meshed += 1;
                }
            }
        }
    }
    let mut platforms: Vec<PlatformRow> = Vec::new();
    for p in &state.platforms {
        let counts = by_source.remove(p.name()).unwrap_or_default();
        let synced = state.registry.all_synced([p.name()]);
        platforms.push(PlatformRow {
            name: p.name().to_string(),
            sync: if synced { "synced" } else { "syncing" },
            services: counts.services,
            endpoints: counts.endpoints,
            meshed: share(counts.meshed, counts.endpoints),
        });
    }
    // Sources written by no adapter of this control plane's (none today, but the registry
    // does not forbid it).
    for (name, counts) in by_source {
        platforms.push(PlatformRow {
            name,
            sync: "-",
            services: counts.services,
            endpoints: counts.endpoints,
            meshed: share(counts.meshed, counts.endpoints),
        });
    }
    let rows: Vec<(String, Vec<String>, Count)> = by_service
        .into_iter()
        .map(|(name, (platforms, count))| (name, platforms, count))
        .collect();
    let page = paginate(rows, |r| r.0.as_str(), q, page);
    // Only the services on the page need their metrics.
    let stats: HashMap<String, Golden> = crate::stats::stat(
        &state.telemetry.proxies(),
        &registry,
        By::Service,
        None,
        None,
    )
    .into_iter()
    .map(|r| (r.name, r.golden))
    .collect();
    let services = Page {
        rows: page
            .rows
            .into_iter()
            .map(|(name, platforms, count)| ServiceRow {
                link: service_link(&name),
                golden: stats.get(&name).map(GoldenCells::of).unwrap_or_default(),
                platforms,
                endpoints: count.endpoints,
                meshed: share(count.meshed, count.endpoints),
                name,
            })
            .collect(),
        number: page.number,
        pages: page.pages,
        matching: page.matching,
        total: page.total,
    };
    Overview {
        q: q.to_string(),
        platforms,
        previous: if services.number > 1 {
            overview_link(q, services.number - 1)
        } else {
            String::new()
        },
        next: if services.number < services.pages {
            overview_link(q, services.number + 1)
        } else {
            String::new()
        },
        services,
        window_seconds: crate::telemetry::WINDOW.as_secs(),
    }
}

/// One endpoint of a service.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EndpointRow {
    /// The platform that reports it.
    pub(crate) platform: String,
    /// The service port.
    pub(crate) port: u16,
    /// `ip:port`.
    pub(crate) address: String,
    /// `ready`, `serving`, `terminating` or `not-ready`.
    pub(crate) state: &'static str,
    /// Whether a proxy fronts it.
    pub(crate) meshed: bool,
    /// Its identity, or `-`.
    pub(crate) identity: String,
    /// Its workload, or `-`.
    pub(crate) workload: String,
}

/// An authorization rule that names a service.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RuleRow {
    /// `namespace/name`.
    pub(crate) name: String,
    /// `allow` or `deny`.
    pub(crate) action: &'static str,
    /// Whether it is only audited.
    pub(crate) audit: bool,
    /// The client patterns.
    pub(crate) from: Vec<String>,
    /// The request conditions, or none for every request.
    pub(crate) requests: String,
    /// Where it was written.
    pub(crate) source: String,
}

/// A caller of a service, or an edge of the topology.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EdgeCells {
    /// The calling workloads, or the client identity if none reports.
    pub(crate) from: String,
    /// The client identity (`-`: none).
    pub(crate) from_identity: String,
    /// The destination workload or service.
    pub(crate) to: String,
    /// Whether the calls went over mutual TLS.
    pub(crate) mtls: bool,
    /// Golden metrics.
    pub(crate) golden: GoldenCells,
}

// === impl EdgeCells ===

impl EdgeCells {
    /// The cells of `e`.
    pub(crate) fn of(e: &EdgeRow) -> Self {
        Self {
            from: if e.from_workloads.is_empty() {
                e.from.clone()
            } else {
                e.from_workloads.join(", ")
            },
            from_identity: e.from.clone(),
            to: e.to.clone(),
            mtls: e.mtls,
            golden: GoldenCells::of(&e.golden),
        }
    }
}

/// A backend of a rule, with its weight.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub(crate) struct BackendCell {
    /// `name.namespace`, with `:port` where a port is named.
    pub(crate) service: String,
    /// Its weight.
    pub(crate) weight: u32,
    /// Whether no platform reports it.
    #[serde(default)]
    pub(crate) missing: bool,
}

/// A rule of a route.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub(crate) struct RouteRule {
    /// Its name, if it has one.
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// Its matches, in words.
    #[serde(default)]
    pub(crate) matches: Vec<String>,
    /// Its backends.
    #[serde(default)]
    pub(crate) backends: Vec<BackendCell>,
}

/// What [`crate::stats::StatRow`] says of a route's backend, as `/api/routes` sends it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
struct RouteStat {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    requests: u64,
    #[serde(default)]
    rps: Option<f64>,
    #[serde(default)]
    success_rate: Option<f64>,
    #[serde(default)]
    p50_ms: Option<f64>,
    #[serde(default)]
    p95_ms: Option<f64>,
    #[serde(default)]
    p99_ms: Option<f64>,
}

/// A route as `/api/routes` sends it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
struct RouteAnswer {
    kind: String,
    name: String,
    source: String,
    #[serde(default)]
    rules: Vec<RouteRule>,
    #[serde(default)]
    stats: Vec<RouteStat>,
}

/// `/api/routes`' answer, the parts the dashboard shows.
#[derive(Clone, Debug, PartialEq, Deserialize)]
struct RoutesAnswer {
    port: u16,
    caller_namespace: String,
    #[serde(default)]
    routes: Vec<RouteAnswer>,
}

/// A route of a service with its traffic by backend.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RouteView {
    /// `HTTP` or `GRPC`.
    pub(crate) kind: String,
    /// `namespace/name`.
    pub(crate) name: String,
    /// Where it was written.
    pub(crate) source: String,
    /// Its rules.
    pub(crate) rules: Vec<RouteRule>,
    /// Its traffic: each backend (`(rule)` for what is counted per rule) with its metrics.
    pub(crate) stats: Vec<(String, GoldenCells)>,
}

/// One service in detail.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ServiceDetail {
    /// `name.namespace`.
    pub(crate) name: String,
    /// The platforms that report it.
    pub(crate) platforms: Vec<String>,
    /// Its golden metrics, over the workloads that serve it.
    pub(crate) golden: GoldenCells,
    /// Proxies reporting for it.
    pub(crate) proxies: usize,
    /// The port the routes are shown for.
    pub(crate) port: u16,
    /// The namespace of the callers the routes are shown for.
    pub(crate) caller_namespace: String,
    /// Its routes.
    pub(crate) routes: Vec<RouteView>,
    /// Its endpoints (at most [`MAX_ROWS`]).
    pub(crate) endpoints: Vec<EndpointRow>,
    /// Endpoints not shown.
    pub(crate) endpoints_hidden: usize,
    /// What clients no rule decides get, and why.
    pub(crate) default_inbound: String,
    /// The authorization rules that name it.
    pub(crate) rules: Vec<RuleRow>,
    /// Who calls it (at most [`MAX_ROWS`]).
    pub(crate) callers: Vec<EdgeCells>,
}

/// The view of service `name`; none if no platform reports it.
pub(crate) fn service(state: &State, name: &str) -> Option<ServiceDetail> {
    let parsed = ServiceName::parse(name, "default").ok()?;
    let registry = state.registry.snapshot();
    let merged = registry.service(&parsed)?;
    let display = parsed.to_string();

    let mut platforms = Vec::new();
    let mut endpoints = Vec::new();
    let mut endpoint_count = 0;
    for source in registry.sources() {
        let Some(svc) = registry.source(source).find(|s| s.name == parsed) else {
            continue;
        };
        platforms.push(source.to_string());
        for port in &svc.ports {
            for e in &port.endpoints {
                endpoint_count += 1;
                if endpoints.len() >= MAX_ROWS {
                    continue;
                }
                endpoints.push(EndpointRow {
                    platform: source.to_string(),
                    port: port.port,
                    address: e.address.to_string(),
                    state: match e.state {
                        EndpointState::Ready => "ready",
                        EndpointState::Serving => "serving",
                        EndpointState::Terminating => "terminating",
                        EndpointState::NotReady => "not-ready",
                    },
                    meshed: e.meshed,
                    identity: e.identity.as_ref().map_or("-".into(), |i| i.spiffe_id()),
                    workload: e.workload.as_ref().map_or("-".into(), |w| w.to_string()),
                });
            }
        }
    }

    let proxies = state.telemetry.proxies();
    let stat = crate::stats::stat(&proxies, &registry, By::Service, None, Some(&display));
    let (golden, reporting) = stat.first().map_or((GoldenCells::default(), 0), |r| {
        (GoldenCells::of(&r.golden), r.proxies)
    });

    let routes: Option<RoutesAnswer> =
        crate::routes_view::answer(state, Some(&display), None, None)
            .ok()
            .and_then(|v| serde_json::from_value(v).ok());
    let (port, caller_namespace, routes) = match routes {
        Some(r) => (
            r.port,
            r.caller_namespace,
            r.routes.into_iter().map(route_view).collect(),
        ),
        None => (
            merged.ports.first().map_or(0, |p| p.port),
            parsed.namespace.clone(),
            Vec::new(),
        ),
    };

    let cfg = state.config.borrow().clone();
    let in_force = crate::discovery::authorizations(&cfg, &registry);
    let named: Vec<&weft_core::policy::AuthorizationRule> =
        in_force.iter().filter(|r| r.service == parsed).collect();
    // A service with enforced allow rules admits only what they name (weft_core's authz).
    let mesh_default = decision_name(cfg.policy.default_inbound);
    let default_inbound = if named.iter().any(|r| r.action == Action::Allow && !r.audit) {
        let own = if cfg.policy.default_inbound == Decision::Audit {
            "audit"
        } else {
            "deny"
        };
        format!("{own}, since allow rules name this service (the mesh default is {mesh_default})")
    } else {
        format!("{mesh_default}, the mesh default")
    };
    let rules = named
        .iter()
        .take(MAX_ROWS)
        .map(|r| RuleRow {
            name: r.name.clone(),
            action: match r.action {
                Action::Allow => "allow",
                Action::Deny => "deny",
            },
            audit: r.audit,
            from: r.from.iter().map(ToString::to_string).collect(),
            requests: match r.to.len() {
                0 => "every request".into(),
                1 => "1 condition".into(),
                n => format!("{n} conditions"),
            },
            source: r.source.to_string(),
        })
        .collect();

    // Its callers: calls to the workloads that serve it, and to the service itself where it
    // has no proxy (callers' outbound reports name it).
    let workloads: BTreeSet<String> = merged
        .ports
        .iter()
        .flat_map(|p| &p.endpoints)
        .filter_map(|e| e.workload.as_ref().map(ToString::to_string))
        .collect();
    let callers = crate::stats::edges(&proxies, None, None)
        .iter()
        .filter(|e| workloads.contains(&e.to) || e.to == display)
        .take(MAX_ROWS)
        .map(EdgeCells::of)
        .collect();

    Some(ServiceDetail {
        name: display,
        platforms,
        golden,
        proxies: reporting,
        port,
        caller_namespace,
        routes,
        endpoints_hidden: endpoint_count - endpoints.len(),
        endpoints,
        default_inbound,
        rules,
        callers,
    })
}

/// A decision as the mesh file names it.
fn decision_name(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
        Decision::AllowUnauthenticated => "allow-unauthenticated",
        Decision::Audit => "audit",
    }
}

fn route_view(r: RouteAnswer) -> RouteView {
    RouteView {
        kind: r.kind.to_uppercase(),
        name: r.name,
        source: r.source,
        rules: r.rules,
        stats: r
            .stats
            .into_iter()
            .map(|s| {
                (
                    s.backend.unwrap_or_else(|| "(rule)".into()),
                    GoldenCells::of(&Golden {
                        requests: s.requests,
                        rps: s.rps,
                        success_rate: s.success_rate,
                        p50_ms: s.p50_ms,
                        p95_ms: s.p95_ms,
                        p99_ms: s.p99_ms,
                    }),
                )
            })
            .collect(),
    }
}

/// A certificate's end, as the certificates view shows it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CertRow {
    /// Whose it is: a subject or an identity.
    pub(crate) subject: String,
    /// Its end, RFC 3339.
    pub(crate) not_after: String,
    /// The time left, to the minute, or `expired`.
    pub(crate) remaining: String,
    /// `good`, `fair` (ending soon) or `poor` (expired).
    pub(crate) health: &'static str,
}

// === impl CertRow ===

impl CertRow {
    /// A certificate of `subject` ending at `not_after`, `soon` meaning under `warn` left.
    fn new(subject: String, not_after: SystemTime, now: SystemTime, warn: Duration) -> Self {
        let (remaining, health) = match not_after.duration_since(now) {
            Ok(left) => (span(left), if left < warn { "fair" } else { "good" }),
            Err(_) => ("expired".into(), "poor"),
        };
        Self {
            subject,
            not_after: humantime::format_rfc3339_seconds(not_after).to_string(),
            remaining,
            health,
        }
    }
}

/// A span of time in days, or hours and minutes under two days: to the minute at most, so a
/// view changes once a minute, not at every refresh.
fn span(d: Duration) -> String {
    let minutes = d.as_secs() / 60;
    let (days, hours, minutes) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    match (days, hours, minutes) {
        (2.., _, _) => format!("{days} days"),
        (0, 0, 0) => "under a minute".into(),
        (0, 0, m) => format!("{m} min"),
        (d, h, m) => format!("{} h {m} min", d * 24 + h),
    }
}

/// The mesh's certificates.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Certificates {
    /// The roots of the trust bundle.
    pub(crate) roots: Vec<CertRow>,
    /// The intermediate that signs leaves.
    pub(crate) intermediate: CertRow,
    /// When the intermediate is due for renewal.
    pub(crate) renewal_due: String,
    /// Whether the control plane holds the root key to renew it.
    pub(crate) can_renew: bool,
    /// The control plane's own serving certificate.
    pub(crate) serving: CertRow,
    /// The leaves issued that end soonest.
    pub(crate) leaves: Vec<CertRow>,
    /// Identities whose latest leaf the control plane knows.
    pub(crate) tracked: usize,
    /// The lifetime of issued leaves.
    pub(crate) leaf_ttl: String,
}

/// The certificates view.
pub(crate) fn certificates(state: &State) -> Certificates {
    const MONTH: Duration = Duration::from_secs(30 * 86_400);
    let now = SystemTime::now();
    let ttl = state.ca.leaf_ttl();
    let roots = state
        .ca
        .trust_bundle()
        .roots()
        .iter()
        .map(
            |der| match x509_parser::parse_x509_certificate(der.as_ref()) {
                Ok((_, cert)) => {
                    let end = cert.validity().not_after.timestamp();
                    let not_after =
                        UNIX_EPOCH + Duration::from_secs(u64::try_from(end).unwrap_or_default());
                    CertRow::new(cert.subject().to_string(), not_after, now, MONTH)
                }
                Err(e) => CertRow {
                    subject: format!("unreadable certificate: {e}"),
                    not_after: "-".into(),
                    remaining: "-".into(),
                    health: "poor",
                },
            },
        )
        .collect();
    let serving = state.serving.borrow().clone();
    Certificates {
        roots,
        intermediate: CertRow::new(
            "intermediate (signs the leaves)".into(),
            state.ca.intermediate_not_after(),
            now,
            MONTH,
        ),
        renewal_due: humantime::format_rfc3339_seconds(state.ca.intermediate_renewal_due_at())
            .to_string(),
        can_renew: state.ca.can_renew_intermediate(),
        serving: CertRow::new(
            serving.identity().spiffe_id(),
            serving.not_after(),
            now,
            ttl / 4,
        ),
        leaves: state
            .leaves
            .soonest(SOONEST_LEAVES)
            .into_iter()
            .map(|l| CertRow::new(l.identity.spiffe_id(), l.not_after, now, ttl / 4))
            .collect(),
        tracked: state.leaves.len(),
        leaf_ttl: span(ttl),
    }
}

/// One request the tap saw, as a row of the tap view.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TapRow {
    /// When it arrived, RFC 3339 with milliseconds.
    pub(crate) at: String,
    /// The time of day of `at`.
    pub(crate) time: String,
    /// `inbound` or `outbound`.
    pub(crate) direction: String,
    /// Method.
    pub(crate) method: String,
    /// Authority.
    pub(crate) authority: String,
    /// Path.
    pub(crate) path: String,
    /// Status, with the gRPC status if any; `-` without a response.
    pub(crate) status: String,
    /// How healthy the answer was.
    pub(crate) health: Health,
    /// Latency to the response's end.
    pub(crate) latency: String,
    /// The client's identity, or `-`.
    pub(crate) source: String,
    /// The server's identity, or the destination.
    pub(crate) destination: String,
    /// Whether the hop was mutual TLS.
    pub(crate) mtls: bool,
    /// The route and backend, if routed.
    pub(crate) route: String,
    /// The headers the proxy reports.
    pub(crate) headers: Vec<(String, String)>,
}

// === impl TapRow ===

impl TapRow {
    /// The row of `e`.
    pub(crate) fn of(e: &TapEvent) -> Self {
        let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(e.at_unix_ms).unwrap_or(0));
        let at = humantime::format_rfc3339_millis(at).to_string();
        let failed = e.status == 0 || e.status >= 500 || e.grpc_status > 0;
        let status = match (e.status, e.grpc_status) {
            (0, _) => "-".to_string(),
            (s, g) if g >= 0 => format!("{s} (grpc {g})"),
            (s, _) => s.to_string(),
        };
        let route = match (e.route.is_empty(), e.backend.is_empty()) {
            (true, _) => String::new(),
            (false, true) => e.route.clone(),
            (false, false) => format!("{} -> {}", e.route, e.backend),
        };
        Self {
            time: at.get(11..23).unwrap_or(&at).to_string(),
            at,
            direction: e.direction.clone(),
            method: e.method.clone(),
            authority: e.authority.clone(),
            path: e.path.clone(),
            status,
            health: if failed { Health::Poor } else { Health::Good },
            latency: format!("{:.1} ms", e.latency_ms),
            source: if e.source_identity.is_empty() {
                "-".into()
            } else {
                e.source_identity.clone()
            },
            destination: if e.destination_identity.is_empty() {
                e.destination.clone()
            } else {
                e.destination_identity.clone()
            },
            mtls: e.mtls,
            route,
            headers: e
                .headers
                .iter()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_services_page_and_search_on_the_server() {
        let rows: Vec<String> = (0..1000).map(|i| format!("svc-{i:04}.shop")).collect();
        let first = paginate(rows.clone(), String::as_str, "", 1);
        assert_eq!(first.total, 1000);
        assert_eq!(first.matching, 1000);
        assert_eq!(first.pages, 20);
        assert_eq!(first.rows.len(), PAGE_SIZE);
        assert_eq!(first.rows[0], "svc-0000.shop");
        let last = paginate(rows.clone(), String::as_str, "", 20);
        assert_eq!(last.rows.first().map(String::as_str), Some("svc-0950.shop"));
        assert_eq!(last.rows.last().map(String::as_str), Some("svc-0999.shop"));
        // Beyond the last page: the last page; page 0: the first.
        assert_eq!(paginate(rows.clone(), String::as_str, "", 99).number, 20);
        assert_eq!(paginate(rows.clone(), String::as_str, "", 0).number, 1);
        // A substring, in any case, trimmed: svc-0100 to svc-0199.
        let found = paginate(rows.clone(), String::as_str, " SVC-01", 1);
        assert_eq!(found.matching, 100);
        assert_eq!(found.pages, 2);
        assert_eq!(found.rows[0], "svc-0100.shop");
        let second = paginate(rows.clone(), String::as_str, "svc-01", 2);
        assert_eq!(second.rows.len(), 50);
        assert_eq!(second.rows[0], "svc-0150.shop");
        let none = paginate(rows, String::as_str, "nothing", 3);
        assert_eq!((none.matching, none.pages, none.number), (0, 1, 1));
        assert!(none.rows.is_empty());
    }

    #[test]
    fn links_keep_the_search_and_encode_it() {
        assert_eq!(overview_link("", 1), "/dashboard");
        assert_eq!(overview_link("a b&c", 3), "/dashboard?q=a+b%26c&page=3");
        assert_eq!(service_link("web.shop"), "/dashboard/service?name=web.shop");
    }

    #[test]
    fn health_follows_the_success_rate() {
        assert_eq!(Health::of(Some(1.0)), Health::Good);
        assert_eq!(Health::of(Some(0.99)), Health::Good);
        assert_eq!(Health::of(Some(0.97)), Health::Fair);
        assert_eq!(Health::of(Some(0.5)), Health::Poor);
        assert_eq!(Health::of(None), Health::Unknown);
        assert_eq!(share(1, 3), "33 %");
        assert_eq!(share(0, 0), "-");
    }

    #[test]
    fn spans_are_days_or_hours_and_minutes() {
        let s = |secs: u64| span(Duration::from_secs(secs));
        assert_eq!(s(3652 * 86_400 + 5000), "3652 days");
        assert_eq!(s(2 * 86_400), "2 days");
        assert_eq!(s(86_400 + 3 * 3600 + 125), "27 h 2 min");
        assert_eq!(s(86_399), "23 h 59 min");
        assert_eq!(s(600), "10 min");
        assert_eq!(s(59), "under a minute");
    }
}
