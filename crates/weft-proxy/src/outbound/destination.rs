//! Destinations in use: one [`Destination`] per target, with its resolve stream and
//! balancers, shared by every connection to that target.
//!
//! A destination is made when a connection first needs it. Each connection holds a
//! [`Lease`]; once the last lease is gone and the destination has stayed unused for the idle
//! timeout, a sweep drops it, which closes its resolve stream and its connections to
//! endpoints. The next connection resolves afresh.
//!
//! Under transparent interception the application picks the destinations (every address it
//! dials is one), so their number is capped (`--max-destinations`): a new destination past
//! the cap replaces the one unused the longest, and when every one is in use, the connection
//! is refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use weft_core::Target;

use super::balance::{HttpBalancer, TcpBalancer, http_balancer, metric_label, tcp_balancer};
use super::breaker::Health;
use super::connect::Connector;
use super::endpoint::Params;
use super::router::Routes;
use crate::Runtime;
use crate::discovery::Resolution;
use crate::discovery::resolve;

/// One destination: what it resolves to, and its balancers.
#[derive(Debug)]
pub struct Destination {
    /// What connections asked for.
    pub target: Target,
    /// What it resolves to.
    pub resolution: watch::Receiver<Resolution>,
    /// Its routes, compiled (empty: requests go to the destination itself).
    pub routes: watch::Receiver<Arc<Routes>>,
    pub(crate) http: HttpBalancer,
    pub(crate) tcp: TcpBalancer,
    /// Its endpoints and how many failure accrual has ejected.
    pub health: Arc<Health>,
    /// Leases held now.
    active: AtomicUsize,
    /// When the last lease was returned.
    idle_since: Mutex<Instant>,
    /// Stops the resolve stream when the destination is dropped.
    _stream: DropGuard,
}

/// A connection's hold on a destination; the destination is not idle while one exists.
#[derive(Debug)]
pub struct Lease(Arc<Destination>);

/// Every destination in use, by target.
#[derive(Debug)]
pub struct Destinations {
    map: Mutex<HashMap<Target, Arc<Destination>>>,
    max: usize,
}

/// A new destination was needed while the cap was reached and every destination was in use.
#[derive(Debug, thiserror::Error)]
#[error("{0} destinations in use, the most this proxy keeps (--max-destinations)")]
pub struct TooManyDestinations(pub usize);

// === impl Destinations ===

impl Destinations {
    /// Keeps at most `max` destinations.
    pub fn new(max: usize) -> Self {
        Self {
            map: Mutex::default(),
            max: max.max(1),
        }
    }

    /// A lease on `target`'s destination, made (and its resolution started) if needed.
    pub fn get(
        &self,
        shared: &Arc<Runtime>,
        target: &Target,
    ) -> Result<Lease, TooManyDestinations> {
        let mut map = self.lock();
        let dest = match map.get(target) {
            Some(d) => d.clone(),
            None => {
                if map.len() >= self.max {
                    // Checked under the map's lock: `get` takes a lease under it too.
                    let unused = map
                        .iter()
                        .filter(|(_, d)| d.active.load(Ordering::Acquire) == 0)
                        .min_by_key(|(_, d)| d.idle_since())
                        .map(|(t, _)| t.clone());
                    match unused {
                        Some(t) => {
                            tracing::debug!(target = %t, "destination dropped to make room");
                            map.remove(&t);
                        }
                        None => return Err(TooManyDestinations(map.len())),
                    }
                }
                let d = Arc::new(Destination::new(shared, target.clone()));
                map.insert(target.clone(), d.clone());
                d
            }
        };
        dest.active.fetch_add(1, Ordering::AcqRel);
        Ok(Lease(dest))
    }

    /// How many destinations are held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the destinations unused for at least `idle`.
    pub fn sweep(&self, idle: Duration) {
        let now = Instant::now();
        self.lock().retain(|target, d| {
            // Checked under the map's lock: `get` takes a lease under it too.
            let keep = d.active.load(Ordering::Acquire) > 0 || now < d.idle_since() + idle;
            if !keep {
                tracing::debug!(%target, "destination idle; resolve stream closed");
            }
            keep
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Target, Arc<Destination>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sweeps `shared`'s destinations every quarter of the idle timeout until `stop`: a
/// destination is closed between one and one and a quarter idle timeouts after its last use.
pub async fn sweep_idle(shared: Arc<Runtime>, stop: CancellationToken) {
    let idle = shared.config.resolve_idle_timeout;
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => shared.destinations.sweep(idle),
        }
    }
}

// === impl Destination ===

impl Destination {
    fn new(shared: &Arc<Runtime>, target: Target) -> Self {
        let (tx, resolution) = watch::channel(Resolution::Pending);
        let (routes_tx, routes) = watch::channel(Arc::new(Routes::default()));
        let stop = CancellationToken::new();
        let health: Arc<Health> = Arc::default();
        tokio::spawn(resolve::follow(
            shared.clone(),
            target.clone(),
            tx,
            (routes_tx, health.clone()),
            stop.clone(),
        ));
        let params = Params {
            connector: Connector::new(
                shared.credentials.clone(),
                shared.metrics.clone(),
                shared.config.connect_timeout,
            ),
            drain: shared.drain.clone(),
            metrics: shared.metrics.clone(),
            health,
        };
        let wait = shared.config.dispatch_timeout;
        Self {
            health: params.health.clone(),
            http: http_balancer(&params, wait, &target, resolution.clone()),
            tcp: tcp_balancer(&params, wait, &target, resolution.clone()),
            resolution,
            routes,
            target,
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            _stream: stop.drop_guard(),
        }
    }

    fn idle_since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What metrics call this destination now (see [`metric_label`]).
    pub fn metric_label(&self) -> String {
        metric_label(&self.target, &self.resolution.borrow())
    }

    /// Whether connections to this destination go to the address the application dialed,
    /// unchanged: it is an address outside the mesh.
    pub fn passes_through(&self) -> bool {
        matches!(self.target, Target::Address(_))
            && *self.resolution.borrow() == Resolution::NotInMesh
    }

    /// What the destination resolves to, if the control plane has answered already.
    pub fn answered(&self) -> Option<Resolution> {
        let now = self.resolution.borrow();
        (*now != Resolution::Pending).then(|| now.clone())
    }

    /// What the destination resolves to once the control plane has answered, waiting at most
    /// `timeout` for a first answer (then [`Resolution::Pending`]).
    pub async fn first_answer(&self, timeout: Duration) -> Resolution {
        let mut rx = self.resolution.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|r| *r != Resolution::Pending)).await {
            Ok(Ok(r)) => r.clone(),
            _ => Resolution::Pending,
        }
    }
}

// === impl Lease ===

impl std::ops::Deref for Lease {
    type Target = Destination;
    fn deref(&self) -> &Destination {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Stamp the time before the count reaches zero, so a sweep never sees an unused
        // destination with an old stamp.
        *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}
