//! `Telemetry.Report`: the proxies' traffic counters, kept for a short window per proxy so
//! that `weft stat`, `weft edges`, `weft routes` and the dashboard answer without Prometheus
//! ([`crate::stats`] computes what they show).
//!
//! Memory is bounded: at most [`MAX_PROXIES`] reporting proxies (and per identity as many
//! streams as `control.limits.proxy_streams_per_identity`), [`MAX_SAMPLES`] series per proxy
//! whose names and labels take at most [`MAX_SERIES_BYTES`] (more are left out), and per proxy the values of the last [`WINDOW`]'s reports, at most
//! [`MAX_SNAPSHOTS`] of them (the latest, and before it reports at least [`MIN_GAP`] apart).
//! A proxy's series (names and labels) are kept once, and each report adds only its values.
//! A proxy's window is dropped [`WINDOW`] after its stream ends.
//!
//! What a window costs: the strings of names and labels are shared by every series and proxy
//! that uses them (replicas of one workload report the same label values, every proxy the
//! same label names), so a series is a few pointers; a report's samples find their series by
//! a hash of name and labels, without building a key; each report kept is one `f64` per
//! series.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};
use weft_api::v1::telemetry_server::Telemetry;
use weft_api::{MetricSample, TelemetryAck, TelemetryReport};
use weft_core::Identity;

use crate::State;
use crate::transport::PeerInfo;

/// How far back the window reaches.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Reports kept per proxy at most.
pub const MAX_SNAPSHOTS: usize = 7;
/// The least time between two reports kept (besides the latest).
pub const MIN_GAP: Duration = Duration::from_secs(10);
/// Proxies reporting at once at most.
pub const MAX_PROXIES: usize = 100_000;
/// Series kept per proxy at most.
pub const MAX_SAMPLES: usize = 5_000;
/// Bytes of series names and labels kept per proxy at most: what a peer sends cannot grow
/// the control plane's memory past the bounds, however long its labels.
pub const MAX_SERIES_BYTES: usize = 256 * 1024;

/// One report's values, when it came: `values[i]` is series `i`'s (series that appeared
/// later have none).
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// When it came.
    pub at: Instant,
    /// Its values, by series.
    pub values: Arc<[f64]>,
}

/// A series: a sample's name and labels, their strings shared (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Series {
    name: Arc<str>,
    labels: Box<[(Arc<str>, Arc<str>)]>,
}

impl Series {
    /// The metric's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value of the label `name`, if the series has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| &**v)
    }

    /// Whether `s` is a sample of this series.
    fn is(&self, s: &MetricSample) -> bool {
        *self.name == s.name
            && self.labels.len() == s.labels.len()
            && self
                .labels
                .iter()
                .zip(&s.labels)
                .all(|((n, v), l)| **n == l.name && **v == l.value)
    }

    fn of(strings: &mut Strings, s: &MetricSample) -> Self {
        Self {
            name: strings.intern(&s.name),
            labels: s
                .labels
                .iter()
                .map(|l| (strings.intern(&l.name), strings.intern(&l.value)))
                .collect(),
        }
    }
}

/// What a new series counts against its proxy's [`MAX_SERIES_BYTES`]: its strings as if none
/// were shared, and the pointers that hold them.
fn series_cost(s: &MetricSample) -> usize {
    const POINTERS: usize = 2 * std::mem::size_of::<Arc<str>>();
    s.name.len()
        + POINTERS
        + s.labels
            .iter()
            .map(|l| l.name.len() + l.value.len() + POINTERS)
            .sum::<usize>()
}

/// The strings of every window's series, each held once.
#[derive(Debug, Default)]
struct Strings {
    set: HashSet<Arc<str>>,
    /// The size at which strings no series holds any more are swept (twice what was left at
    /// the last sweep), so that sweeping costs O(1) a string.
    sweep_at: usize,
}

impl Strings {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.set.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.set.insert(a.clone());
        a
    }

    /// Drops the strings only the set holds, once the set has doubled since the last sweep.
    fn sweep_if_grown(&mut self) {
        if self.set.len() > self.sweep_at {
            self.set.retain(|a| Arc::strong_count(a) > 1);
            self.sweep_at = (2 * self.set.len()).max(1024);
        }
    }
}

/// One proxy's window.
#[derive(Debug)]
struct Window {
    identity: Identity,
    workload: String,
    platform: String,
    tap_addr: Option<SocketAddr>,
    /// Every series the proxy reported, in the order they first came.
    series: Arc<Vec<Series>>,
    /// A series' index, by the hash of its name and labels ([`sample_hash`]).
    index: HashMap<u64, u32>,
    /// What the series count against [`MAX_SERIES_BYTES`] ([`series_cost`]).
    series_bytes: usize,
    snapshots: VecDeque<Snapshot>,
    ended: Option<Instant>,
}

/// What the stats see of one proxy.
#[derive(Clone, Debug)]
pub struct ProxyView {
    /// The identity its certificate proves.
    pub identity: Identity,
    /// Its workload, `namespace/name`.
    pub workload: String,
    /// Its platform.
    pub platform: String,
    /// Where it serves tap, if it does.
    pub tap_addr: Option<SocketAddr>,
    /// Its series.
    pub series: Arc<Vec<Series>>,
    /// Its oldest report in the window (none: only one report so far).
    pub first: Option<Snapshot>,
    /// Its latest report.
    pub last: Snapshot,
    /// Whether its stream is still open.
    pub live: bool,
}

/// Every proxy's window.
#[derive(Debug, Default)]
pub struct Store {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    windows: HashMap<u64, Window>,
    strings: Strings,
    /// Keyed per process, so that no peer can choose samples whose hashes collide.
    hasher: RandomState,
}

/// The hash of a sample's name and labels (a `str` hashes with its end marked, so no two
/// different lists of strings hash the same input).
fn sample_hash(hasher: &RandomState, s: &MetricSample) -> u64 {
    let mut h = hasher.build_hasher();
    s.name.hash(&mut h);
    for l in &s.labels {
        l.name.hash(&mut h);
        l.value.hash(&mut h);
    }
    h.finish()
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A window for a new stream of `identity`; none when [`MAX_PROXIES`] are reporting.
    fn open(&self, identity: Identity) -> Option<u64> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner
            .windows
            .retain(|_, w| w.ended.is_none_or(|e| now.duration_since(e) < WINDOW));
        if inner.windows.len() >= MAX_PROXIES {
            return None;
        }
        inner.next += 1;
        let id = inner.next;
        inner.windows.insert(
            id,
            Window {
                identity,
                workload: String::new(),
                platform: String::new(),
                tap_addr: None,
                series: Arc::default(),
                index: HashMap::new(),
                series_bytes: 0,
                snapshots: VecDeque::new(),
                ended: None,
            },
        );
        Some(id)
    }

    /// Records a report of stream `id`, whose connection came from `remote`.
    fn record(&self, id: u64, remote: SocketAddr, report: TelemetryReport) {
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(w) = inner.windows.get_mut(&id) else {
            return;
        };
        if w.workload != report.workload {
            w.workload = report.workload;
        }
        if w.platform != report.platform {
            w.platform = report.platform;
        }
        w.tap_addr = tap_addr(&report.tap_addr, remote);
        // Values by series; series new to this proxy get an index, up to the bound.
        let mut values = vec![0.0; w.series.len()];
        for sample in &report.samples {
            let hash = sample_hash(&inner.hasher, sample);
            let i = match w.index.get(&hash) {
                Some(&i) if w.series[i as usize].is(sample) => i as usize,
                // Another series with the same hash: left out (2^-64 odds, and the hasher is
                // keyed per process).
                Some(_) => continue,
                None if w.series.len() < MAX_SAMPLES
                    && w.series_bytes + series_cost(sample) <= MAX_SERIES_BYTES =>
                {
                    w.series_bytes += series_cost(sample);
                    let i = w.series.len();
                    w.index.insert(hash, i as u32);
                    Arc::make_mut(&mut w.series).push(Series::of(&mut inner.strings, sample));
                    values.push(0.0);
                    i
                }
                None => continue,
            };
            values[i] = sample.value;
        }
        let snapshot = Snapshot {
            at: now,
            values: Arc::from(values),
        };
        // The latest report always counts; the one before it stays only if it came at least
        // MIN_GAP after its own predecessor, so the reports kept are that far apart.
        let n = w.snapshots.len();
        if n >= 2 && w.snapshots[n - 1].at.duration_since(w.snapshots[n - 2].at) < MIN_GAP {
            w.snapshots.pop_back();
        }
        w.snapshots.push_back(snapshot);
        while w.snapshots.len() > MAX_SNAPSHOTS
            || w.snapshots.len() > 2
                && w.snapshots
                    .front()
                    .is_some_and(|s| now.duration_since(s.at) > WINDOW)
        {
            w.snapshots.pop_front();
        }
        inner.strings.sweep_if_grown();
    }

    fn close(&self, id: u64) {
        if let Some(w) = self.lock().windows.get_mut(&id) {
            w.ended = Some(Instant::now());
        }
    }

    /// Every proxy that has reported within the window.
    pub fn proxies(&self) -> Vec<ProxyView> {
        let now = Instant::now();
        let inner = self.lock();
        inner
            .windows
            .values()
            .filter(|w| w.ended.is_none_or(|e| now.duration_since(e) < WINDOW))
            .filter_map(|w| {
                let last = w.snapshots.back()?.clone();
                let first = (w.snapshots.len() > 1)
                    .then(|| w.snapshots.front().cloned())
                    .flatten();
                Some(ProxyView {
                    identity: w.identity.clone(),
                    workload: w.workload.clone(),
                    platform: w.platform.clone(),
                    tap_addr: w.tap_addr,
                    series: w.series.clone(),
                    first,
                    last,
                    live: w.ended.is_none(),
                })
            })
            .collect()
    }

    /// Series and values held, over every window.
    pub fn held(&self) -> (usize, usize) {
        let inner = self.lock();
        let series = inner.windows.values().map(|w| w.series.len()).sum();
        let values = inner
            .windows
            .values()
            .flat_map(|w| &w.snapshots)
            .map(|s| s.values.len())
            .sum();
        (series, values)
    }
}

/// Where the control plane dials a proxy's tap: the address it reports, which must be the one
/// it called from (a listener on every address is reached there). Any other is ignored: the
/// control plane never dials, on a proxy's word, an address that proxy does not hold.
fn tap_addr(reported: &str, remote: SocketAddr) -> Option<SocketAddr> {
    let a: SocketAddr = reported.parse().ok()?;
    let from = remote.ip().to_canonical();
    if a.ip().is_unspecified() {
        return Some(SocketAddr::new(from, a.port()));
    }
    if a.ip().to_canonical() != from {
        tracing::debug!(reported, %remote, "a proxy reported a tap address other than its own; ignored");
        return None;
    }
    Some(a)
}

/// The Telemetry service.
#[derive(Debug)]
pub(crate) struct TelemetryService(pub(crate) Arc<State>);

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    async fn report(
        &self,
        request: Request<Streaming<TelemetryReport>>,
    ) -> Result<Response<TelemetryAck>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(|| Status::internal("connection without peer information"))?;
        let identity = peer
            .identity
            .ok_or_else(|| Status::unauthenticated("Report needs the proxy's mesh certificate"))?;
        let _permit = self
            .0
            .limits
            .telemetry_streams
            .try_acquire(&identity)
            .ok_or_else(|| {
                tracing::info!(%identity, "Report stream refused: the identity holds its bound");
                Status::resource_exhausted(format!(
                    "{identity} holds as many Report streams as it may hold Proxy streams (control.limits)"
                ))
            })?;
        let store = &self.0.telemetry;
        let id = store
            .open(identity)
            .ok_or_else(|| Status::resource_exhausted("too many proxies are reporting"))?;
        let mut stream = request.into_inner();
        let result = loop {
            match stream.message().await {
                Ok(Some(report)) => store.record(id, peer.remote, report),
                Ok(None) => break Ok(Response::new(TelemetryAck {})),
                Err(e) => break Err(e),
            }
        };
        store.close(id);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(n: f64) -> TelemetryReport {
        TelemetryReport {
            workload: "shop/web-1".into(),
            platform: "local".into(),
            tap_addr: "0.0.0.0:7193".into(),
            samples: vec![MetricSample {
                name: "weft_requests_total".into(),
                labels: vec![],
                value: n,
            }],
        }
    }

    fn id() -> Identity {
        Identity::parse_spiffe("spiffe://weft.test/ns/shop/sa/web").unwrap()
    }

    #[test]
    fn a_tap_address_must_be_the_proxys_own() {
        let remote: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let own = tap_addr("10.1.2.3:7193", remote);
        assert_eq!(own, Some("10.1.2.3:7193".parse().unwrap()));
        assert_eq!(
            tap_addr("0.0.0.0:7193", remote),
            Some("10.1.2.3:7193".parse().unwrap())
        );
        assert_eq!(
            tap_addr("192.0.2.9:22", remote),
            None,
            "another host's port"
        );
        assert_eq!(tap_addr("", remote), None);
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:40000".parse().unwrap();
        assert_eq!(
            tap_addr("10.1.2.3:7193", mapped),
            Some("10.1.2.3:7193".parse().unwrap())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn long_labels_cannot_grow_a_window_past_its_budget() {
        let store = Store::default();
        let s = store.open(id()).unwrap();
        let remote: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let long = "x".repeat(10_000);
        let samples = (0..100)
            .map(|i| MetricSample {
                name: format!("weft_requests_total{i}"),
                labels: vec![weft_api::Label {
                    name: "peer".into(),
                    value: long.clone(),
                }],
                value: 1.0,
            })
            .collect();
        store.record(
            s,
            remote,
            TelemetryReport {
                samples,
                ..report(0.0)
            },
        );
        let (series, _) = store.held();
        assert!(
            series < 100 && series * 10_000 <= MAX_SERIES_BYTES,
            "{series}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_keeps_the_last_minute_at_a_bounded_size() {
        let store = Store::default();
        let s = store.open(id()).unwrap();
        let remote: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        store.record(s, remote, report(1.0));
        let only = &store.proxies()[0];
        assert!(only.first.is_none(), "one report gives no window yet");
        assert_eq!(only.tap_addr, Some("10.1.2.3:7193".parse().unwrap()));
        for n in 2..100 {
            tokio::time::advance(Duration::from_secs(1)).await;
            store.record(s, remote, report(f64::from(n)));
        }
        let v = &store.proxies()[0];
        assert_eq!(v.last.values[0], 99.0);
        assert_eq!(
            v.first.as_ref().unwrap().values[0],
            41.0,
            "reports ten seconds apart (1, 11, ... 91), the last {MAX_SNAPSHOTS} of them with the latest"
        );
        assert_eq!(store.held(), (1, MAX_SNAPSHOTS));
        // Reports too close together replace each other, the latest always counting.
        store.record(s, remote, report(100.0));
        store.record(s, remote, report(101.0));
        assert_eq!(store.held(), (1, MAX_SNAPSHOTS));
        assert_eq!(store.proxies()[0].last.values[0], 101.0);
        // An ended stream's window goes once it is a window old.
        store.close(s);
        assert_eq!(store.proxies().len(), 1);
        tokio::time::advance(WINDOW + Duration::from_secs(1)).await;
        assert!(store.proxies().is_empty());
        assert!(store.open(id()).is_some());
        assert_eq!(store.lock().windows.len(), 1, "the old window was swept");
    }
}
