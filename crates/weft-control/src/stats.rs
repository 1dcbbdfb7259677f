//! Golden metrics from the proxies' reports ([`crate::telemetry`]), as `weft stat`, `weft
//! edges`, `weft routes` and the dashboard show them.
//!
//! Totals are the proxies' own counters, summed (they agree with each proxy's `/metrics`).
//! Rates, success rates and latency quantiles are over the window the reports span (up to a
//! minute); before a proxy has sent two reports, success rate and latency are over its
//! totals and it adds no rate. Latency quantiles are read off the histogram buckets, with
//! linear interpolation inside a bucket (so they are estimates, as Prometheus's are).
//!
//! - By workload: the requests each proxy's workload received (inbound), its TCP connections
//!   and bytes, and what its policy refused.
//! - By service: the same, summed over the workloads that serve the service.
//! - By route: the requests callers sent through each route and backend (outbound), with
//!   retries and timeouts.
//! - Edges: who called whom. For each proxy, its inbound requests by the client identity
//!   that made them (mutual TLS), and its outbound requests to destinations without a proxy
//!   (plaintext).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use weft_core::RegistrySnapshot;

use crate::telemetry::{ProxyView, Series as TelemetrySeries};

/// What a stat row is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    /// Each reporting workload.
    Workload,
    /// Each service with a reporting workload.
    Service,
    /// Each route and backend.
    Route,
}

/// The golden metrics of a row.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Golden {
    /// Requests, in total.
    pub requests: u64,
    /// Requests a second over the window.
    pub rps: Option<f64>,
    /// Responses that were not failures (5xx, gRPC errors, none), 0 to 1.
    pub success_rate: Option<f64>,
    /// Latency to the response head, 50th percentile, milliseconds.
    pub p50_ms: Option<f64>,
    /// 95th percentile.
    pub p95_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
}

/// One row of `weft stat`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StatRow {
    /// The workload (`namespace/name`), service (`name.namespace`) or route (`namespace/name`).
    pub name: String,
    /// For routes: the backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The platform of the workloads.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub platform: String,
    /// Proxies reporting for the row.
    pub proxies: usize,
    /// Golden metrics.
    #[serde(flatten)]
    pub golden: Golden,
    /// Open TCP connections now (workloads and services).
    pub tcp_connections: f64,
    /// Bytes read, in total.
    pub read_bytes: f64,
    /// Bytes written, in total.
    pub write_bytes: f64,
    /// Retries, in total (routes).
    pub retries: f64,
    /// Responses with status 504, in total: deadlines that passed.
    pub timeouts: f64,
    /// Requests and connections the policy refused, in total (workloads and services).
    pub denied: f64,
}

/// One edge: a client calling a destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EdgeRow {
    /// The client's identity (`-`: none).
    pub from: String,
    /// The workloads that hold that identity and report, if any.
    pub from_workloads: Vec<String>,
    /// The destination: a workload (`namespace/name`) or a service without a proxy.
    pub to: String,
    /// The destination's identity, if it has a proxy.
    pub to_identity: String,
    /// Whether the calls went over mutual TLS.
    pub mtls: bool,
    /// Golden metrics.
    #[serde(flatten)]
    pub golden: Golden,
}

/// A proxy's series with, for each, its total and its increase over the window (none
/// without a window).
struct Series<'a> {
    view: &'a ProxyView,
}

impl<'a> Series<'a> {
    fn new(view: &'a ProxyView) -> Self {
        Self { view }
    }

    fn window_secs(&self) -> Option<f64> {
        let first = self.view.first.as_ref()?;
        let dt = self.view.last.at.duration_since(first.at).as_secs_f64();
        (dt > 0.0).then_some(dt)
    }

    /// Each series with its total and its increase (a counter that went back restarted).
    fn each(&self) -> impl Iterator<Item = (&'a TelemetrySeries, f64, Option<f64>)> + '_ {
        let last = &self.view.last.values;
        let first = self.view.first.as_ref().map(|f| &f.values);
        self.view.series.iter().enumerate().map(move |(i, s)| {
            let now = last.get(i).copied().unwrap_or(0.0);
            let delta = first.map(|f| {
                let before = f.get(i).copied().unwrap_or(0.0);
                if now >= before { now - before } else { now }
            });
            (s, now, delta)
        })
    }
}

/// Sums of one row's series.
#[derive(Debug, Default)]
struct Acc {
    proxies: usize,
    requests: f64,
    window_requests: f64,
    rps: Option<f64>,
    responses: (f64, f64),
    failures: (f64, f64),
    /// `le` -> (total, window).
    buckets: BTreeMap<String, (f64, f64)>,
    windowed: bool,
    tcp_open: f64,
    read: f64,
    write: f64,
    retries: f64,
    timeouts: f64,
    denied: f64,
}

impl Acc {
    fn add_requests(&mut self, total: f64, delta: Option<f64>, secs: Option<f64>) {
        self.requests += total;
        if let (Some(d), Some(secs)) = (delta, secs) {
            self.window_requests += d;
            *self.rps.get_or_insert(0.0) += d / secs;
        }
    }

    fn add_response(&mut self, failed: bool, total: f64, delta: Option<f64>) {
        let d = delta.unwrap_or(0.0);
        self.responses.0 += total;
        self.responses.1 += d;
        if failed {
            self.failures.0 += total;
            self.failures.1 += d;
        }
    }

    fn add_bucket(&mut self, le: &str, total: f64, delta: Option<f64>) {
        let b = self.buckets.entry(le.to_string()).or_default();
        b.0 += total;
        b.1 += delta.unwrap_or(0.0);
        self.windowed |= delta.is_some();
    }

    fn golden(&self) -> Golden {
        let use_window = self.responses.1 > 0.0;
        let (responses, failures) = if use_window {
            (self.responses.1, self.failures.1)
        } else {
            (self.responses.0, self.failures.0)
        };
        let success_rate = (responses > 0.0).then(|| 1.0 - failures / responses);
        let mut buckets: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .filter_map(|(le, (total, window))| {
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, if use_window { *window } else { *total }))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let q = |q: f64| quantile(q, &buckets).map(|s| (s * 1e6).round() / 1e3);
        Golden {
            requests: self.requests.max(0.0).round() as u64,
            rps: self.rps.map(|r| (r * 1e3).round() / 1e3),
            success_rate: success_rate.map(|s| (s * 1e4).round() / 1e4),
            p50_ms: q(0.5),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
        }
    }
}

/// The `q` quantile of cumulative `buckets` (upper bound, count), sorted by bound.
fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let inside = count - lower.1;
            let share = if inside > 0.0 {
                (rank - lower.1) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * share);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

/// Whether `pattern` names `identity` (a SPIFFE ID, or `namespace/account`) or one of
/// `names` (workload or service names), exactly.
fn names(pattern: &str, identity: Option<&str>, names: &[&str]) -> bool {
    names.contains(&pattern)
        || identity.is_some_and(|id| {
            id == pattern || id.ends_with(&format!("/ns/{}", pattern.replacen('/', "/sa/", 1)))
        })
}

/// Adds a proxy's inbound series to `acc`, counting only clients `from` names.
fn add_inbound(acc: &mut Acc, series: &Series<'_>, from: Option<&str>) {
    let secs = series.window_secs();
    let peer_ok = |s: &TelemetrySeries| {
        from.is_none_or(|f| {
            let peer = s.label("peer").unwrap_or("-");
            names(f, Some(peer), &[])
        })
    };
    acc.proxies += 1;
    for (s, total, delta) in series.each() {
        if s.label("direction") != Some("inbound") && !s.name().starts_with("weft_inbound_") {
            continue;
        }
        match s.name() {
            "weft_requests_total" if peer_ok(s) => acc.add_requests(total, delta, secs),
            "weft_responses_total" if peer_ok(s) => {
                let failed = s.label("classification") == Some("failure");
                acc.add_response(failed, total, delta);
                if s.label("status_code") == Some("504") {
                    acc.timeouts += total;
                }
            }
            "weft_response_latency_seconds_bucket" if peer_ok(s) => {
                if let Some(le) = s.label("le") {
                    acc.add_bucket(le, total, delta);
                }
            }
            "weft_tcp_open_connections" if peer_ok(s) => acc.tcp_open += total,
            "weft_tcp_read_bytes_total" if peer_ok(s) => acc.read += total,
            "weft_tcp_write_bytes_total" if peer_ok(s) => acc.write += total,
            "weft_inbound_authz_denied_total" | "weft_inbound_rate_limited_total" => {
                acc.denied += total;
            }
            _ => {}
        }
    }
}

/// Which services each workload (`namespace/name`) serves.
fn services_of(registry: &RegistrySnapshot) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for name in registry.service_names() {
        let Some(service) = registry.service(name) else {
            continue;
        };
        for port in &service.ports {
            for e in &port.endpoints {
                if let Some(w) = &e.workload {
                    let list = out
                        .entry(format!("{}/{}", w.namespace, w.name))
                        .or_default();
                    let s = name.to_string();
                    if !list.contains(&s) {
                        list.push(s);
                    }
                }
            }
        }
    }
    out
}

/// The rows of `weft stat`: by `by`, for clients `from` names (workloads and services) or
/// callers it names (routes), for rows `to` names; sorted by name.
pub fn stat(
    proxies: &[ProxyView],
    registry: &RegistrySnapshot,
    by: By,
    from: Option<&str>,
    to: Option<&str>,
) -> Vec<StatRow> {
    let mut rows: BTreeMap<(String, Option<String>), (Acc, String)> = BTreeMap::new();
    let served = services_of(registry);
    for p in proxies {
        let series = Series::new(p);
        match by {
            By::Workload => {
                let entry = rows
                    .entry((p.workload.clone(), None))
                    .or_insert_with(|| (Acc::default(), p.platform.clone()));
                add_inbound(&mut entry.0, &series, from);
            }
            By::Service => {
                for s in served.get(&p.workload).into_iter().flatten() {
                    let entry = rows
                        .entry((s.clone(), None))
                        .or_insert_with(|| (Acc::default(), p.platform.clone()));
                    add_inbound(&mut entry.0, &series, from);
                }
            }
            By::Route => {
                let caller = p.identity.spiffe_id();
                if from.is_some_and(|f| !names(f, Some(&caller), &[p.workload.as_str()])) {
                    continue;
                }
                add_routes(&mut rows, &series);
            }
        }
    }
    rows.into_iter()
        .filter(|((name, _), _)| to.is_none_or(|t| t == name))
        // A route's series exist before its first request (and redirects' before any).
        .filter(|(_, (acc, _))| by != By::Route || acc.requests > 0.0 || acc.retries > 0.0)
        .map(|((name, backend), (acc, platform))| StatRow {
            name,
            backend,
            platform,
            proxies: acc.proxies,
            golden: acc.golden(),
            tcp_connections: acc.tcp_open,
            read_bytes: acc.read,
            write_bytes: acc.write,
            retries: acc.retries,
            timeouts: acc.timeouts,
            denied: acc.denied,
        })
        .collect()
}

type RouteRows = BTreeMap<(String, Option<String>), (Acc, String)>;

fn add_routes(rows: &mut RouteRows, series: &Series<'_>) {
    let secs = series.window_secs();
    let mut seen: Vec<(String, Option<String>)> = Vec::new();
    for (s, total, delta) in series.each() {
        let Some(route) = s.label("route") else {
            continue;
        };
        let backend = s.label("backend").map(str::to_string);
        fn row<'r>(rows: &'r mut RouteRows, route: &str, backend: Option<String>) -> &'r mut Acc {
            &mut rows
                .entry((route.to_string(), backend))
                .or_insert_with(|| (Acc::default(), String::new()))
                .0
        }
        match s.name() {
            "weft_route_requests_total" => {
                let k = (route.to_string(), backend.clone());
                let acc = row(rows, route, backend);
                if !seen.contains(&k) {
                    acc.proxies += 1;
                    seen.push(k);
                }
                acc.add_requests(total, delta, secs);
            }
            "weft_route_responses_total" => {
                let failed = s.label("classification") == Some("failure");
                let timeout = s.label("status_code") == Some("504");
                let acc = row(rows, route, backend);
                acc.add_response(failed, total, delta);
                if timeout {
                    acc.timeouts += total;
                }
            }
            "weft_route_response_latency_seconds_bucket" => {
                if let Some(le) = s.label("le") {
                    row(rows, route, backend).add_bucket(le, total, delta);
                }
            }
            // Retries are counted per rule: they go on the route's row without a backend.
            "weft_route_retries_total" => row(rows, route, None).retries += total,
            _ => {}
        }
    }
}

/// Who calls whom, sorted by client then destination.
pub fn edges(proxies: &[ProxyView], from: Option<&str>, to: Option<&str>) -> Vec<EdgeRow> {
    let mut holders: HashMap<String, Vec<String>> = HashMap::new();
    for p in proxies {
        holders
            .entry(p.identity.spiffe_id())
            .or_default()
            .push(p.workload.clone());
    }
    // (from identity, to, to identity, mtls) -> sums.
    let mut rows: BTreeMap<(String, String, String, bool), Acc> = BTreeMap::new();
    for p in proxies {
        let series = Series::new(p);
        let secs = series.window_secs();
        let own = p.identity.spiffe_id();
        for (s, total, delta) in series.each() {
            let peer = s.label("peer").unwrap_or("-");
            let (k, inbound) = match s.label("direction") {
                Some("inbound") => (
                    (
                        peer.to_string(),
                        p.workload.clone(),
                        own.clone(),
                        peer != "-",
                    ),
                    true,
                ),
                // Calls to destinations without a proxy: no other report tells of them.
                Some("outbound") if peer == "-" => {
                    let service = s.label("service").unwrap_or("-").to_string();
                    ((own.clone(), service, String::new(), false), false)
                }
                _ => continue,
            };
            let _ = inbound;
            let acc = rows.entry(k).or_default();
            match s.name() {
                "weft_requests_total" => acc.add_requests(total, delta, secs),
                "weft_responses_total" => {
                    let failed = s.label("classification") == Some("failure");
                    acc.add_response(failed, total, delta);
                }
                "weft_response_latency_seconds_bucket" => {
                    if let Some(le) = s.label("le") {
                        acc.add_bucket(le, total, delta);
                    }
                }
                _ => {}
            }
        }
    }
    rows.into_iter()
        .filter(|(_, acc)| acc.requests > 0.0)
        .filter(|((f, _, _, _), _)| {
            from.is_none_or(|pat| {
                let workloads: Vec<&str> = holders
                    .get(f)
                    .map(|w| w.iter().map(String::as_str).collect())
                    .unwrap_or_default();
                names(pat, Some(f), &workloads)
            })
        })
        .filter(|((_, t, tid, _), _)| to.is_none_or(|pat| names(pat, Some(tid), &[t])))
        .map(|((from, to, to_identity, mtls), acc)| EdgeRow {
            from_workloads: holders.get(&from).cloned().unwrap_or_default(),
            from,
            to,
            to_identity,
            mtls,
            golden: acc.golden(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        // 10 under 1 ms, 90 between 1 and 5 ms, none slower.
        let b = [(0.001, 10.0), (0.005, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(0.1, &b), Some(0.001));
        let p50 = quantile(0.5, &b).unwrap();
        assert!((p50 - (0.001 + 0.004 * 40.0 / 90.0)).abs() < 1e-12);
        assert_eq!(quantile(0.99, &[(0.001, 0.0), (f64::INFINITY, 0.0)]), None);
        // Everything beyond the last bound: the last bound.
        assert_eq!(
            quantile(0.5, &[(0.001, 0.0), (f64::INFINITY, 4.0)]),
            Some(0.001)
        );
    }

    #[test]
    fn patterns_name_identities_workloads_and_services() {
        let id = Some("spiffe://weft.test/ns/shop/sa/web");
        assert!(names("shop/web", id, &[]));
        assert!(names("spiffe://weft.test/ns/shop/sa/web", id, &[]));
        assert!(!names("shop/we", id, &[]));
        assert!(names("web.shop", None, &["web.shop"]));
    }
}
