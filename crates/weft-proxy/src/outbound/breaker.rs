//! Failure accrual per endpoint: after so many consecutive failures (a connection error or a
//! 5xx answer; [`FAILURES`] by default) an endpoint is ejected: it takes no requests for a
//! penalty, drawn between half and all of a bound that starts at the first penalty
//! ([`FIRST_PENALTY`]) and doubles with each failed probe up to the largest
//! ([`MAX_PENALTY`]). When the penalty is over, one request probes it: a success brings it
//! back (and the bound back to its start), a failure ejects it again. The destination
//! service's backend policy may set the three, or turn accrual off (0 failures); its
//! endpoints read them from the destination's [`Health`], so an edit applies at once.
//!
//! An ejected endpoint tells the balancer it is not ready, so power-of-two-choices picks among
//! the others. Each destination counts its endpoints and how many are ejected ([`Health`]): a
//! route's split gives no share to a backend whose endpoints are all ejected while another
//! backend can take it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::{Instant, Sleep};

use weft_core::policy::backend::FailureAccrual;

use crate::http::{Body, BoxError};

/// Consecutive failures that eject an endpoint.
pub const FAILURES: u32 = 7;
/// The first penalty's bound.
pub const FIRST_PENALTY: Duration = Duration::from_secs(1);
/// The largest penalty's bound.
pub const MAX_PENALTY: Duration = Duration::from_secs(60);

/// A destination's endpoints, how many of them are ejected, and when they are.
#[derive(Debug)]
pub struct Health {
    endpoints: AtomicUsize,
    ejected: AtomicUsize,
    /// Consecutive failures that eject; 0: never.
    failures: AtomicU32,
    /// The first and the largest penalty's bounds, in nanoseconds.
    first_penalty: AtomicU64,
    max_penalty: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        let h = Self {
            endpoints: AtomicUsize::new(0),
            ejected: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            first_penalty: AtomicU64::new(0),
            max_penalty: AtomicU64::new(0),
        };
        h.set_accrual(&FailureAccrual::default());
        h
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Health {
    /// Sets when the destination's endpoints are ejected.
    pub fn set_accrual(&self, a: &FailureAccrual) {
        self.failures
            .store(a.consecutive_failures, Ordering::Relaxed);
        self.first_penalty
            .store(nanos(a.first_penalty), Ordering::Relaxed);
        self.max_penalty
            .store(nanos(a.max_penalty), Ordering::Relaxed);
    }

    /// Consecutive failures that eject; 0: never.
    fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    fn first_penalty(&self) -> Duration {
        Duration::from_nanos(self.first_penalty.load(Ordering::Relaxed))
    }

    fn max_penalty(&self) -> Duration {
        Duration::from_nanos(self.max_penalty.load(Ordering::Relaxed))
    }

    /// Whether it has endpoints and every one is ejected.
    pub fn all_ejected(&self) -> bool {
        let n = self.endpoints.load(Ordering::Relaxed);
        n > 0 && self.ejected.load(Ordering::Relaxed) >= n
    }

    /// Records how many endpoints the destination has now.
    pub fn set_endpoints(&self, n: usize) {
        self.endpoints.store(n, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Taking requests.
    Closed,
    /// Ejected until then.
    Open(Instant),
    /// The penalty is over: the next request probes.
    HalfOpen,
    /// The probe is in flight.
    Probing,
}

#[derive(Debug)]
struct State {
    failures: u32,
    phase: Phase,
    /// The bound of the next penalty.
    penalty: Duration,
    /// The balancer's task, waiting for the probe's outcome.
    waiting: Option<Waker>,
    health: Arc<Health>,
}

impl State {
    fn eject(&mut self) {
        if matches!(self.phase, Phase::Closed) {
            self.health.ejected.fetch_add(1, Ordering::Relaxed);
        }
        let bound = self.penalty;
        let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        let drawn = Duration::from_nanos(fastrand::u64(nanos / 2..=nanos));
        self.phase = Phase::Open(Instant::now() + drawn);
        self.penalty = (bound * 2).min(self.health.max_penalty());
    }

    /// Counts an outcome of a request sent in `phase`.
    fn record(&mut self, failed: bool, probe: bool) {
        if failed {
            self.failures = self.failures.saturating_add(1);
            let threshold = self.health.failures();
            let trips = threshold > 0 && self.failures >= threshold;
            if probe || (self.phase == Phase::Closed && trips) {
                self.eject();
            }
        } else {
            self.failures = 0;
            if probe {
                self.health.ejected.fetch_sub(1, Ordering::Relaxed);
                self.phase = Phase::Closed;
                self.penalty = self.health.first_penalty();
            }
        }
        if probe && let Some(w) = self.waiting.take() {
            w.wake();
        }
    }
}

impl Drop for State {
    /// An endpoint removed while ejected is no longer counted.
    fn drop(&mut self) {
        if self.phase != Phase::Closed {
            self.health.ejected.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The layer over one endpoint. See the module docs.
#[derive(Debug)]
pub struct Breaker<S> {
    inner: S,
    state: Arc<Mutex<State>>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether failures count: not for an address outside the mesh, whose answers the
    /// application gets as they are.
    accrue: bool,
}

impl<S> Breaker<S> {
    /// Guards `inner`, counting its ejections in `health`; with `accrue` false, only passes
    /// requests through.
    pub fn new(inner: S, health: Arc<Health>, accrue: bool) -> Self {
        Self {
            inner,
            state: Arc::new(Mutex::new(State {
                failures: 0,
                phase: Phase::Closed,
                penalty: health.first_penalty(),
                waiting: None,
                health,
            })),
            sleep: None,
            accrue,
        }
    }
}

impl<S> tower::Service<Request<Body>> for Breaker<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BreakerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if !self.accrue {
            return self.inner.poll_ready(cx);
        }
        loop {
            let mut st = lock(&self.state);
            match st.phase {
                Phase::Closed | Phase::HalfOpen => {
                    drop(st);
                    return self.inner.poll_ready(cx);
                }
                Phase::Probing => {
                    st.waiting = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Phase::Open(until) => {
                    if Instant::now() >= until {
                        st.phase = Phase::HalfOpen;
                        self.sleep = None;
                        continue;
                    }
                    drop(st);
                    let sleep = match &mut self.sleep {
                        Some(s) if s.deadline() == until => s,
                        slot => slot.insert(Box::pin(tokio::time::sleep_until(until))),
                    };
                    ready!(sleep.as_mut().poll(cx));
                }
            }
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if !self.accrue {
            return BreakerFuture {
                inner: self.inner.call(req),
                state: None,
                probe: false,
            };
        }
        let probe = {
            let mut st = lock(&self.state);
            let probe = st.phase == Phase::HalfOpen;
            if probe {
                st.phase = Phase::Probing;
            }
            probe
        };
        BreakerFuture {
            inner: self.inner.call(req),
            state: Some(self.state.clone()),
            probe,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Breaker`]'s future: records the outcome.
    pub struct BreakerFuture<F> {
        #[pin]
        inner: F,
        state: Option<Arc<Mutex<State>>>,
        probe: bool,
    }

    impl<F> PinnedDrop for BreakerFuture<F> {
        // A probe dropped before its outcome (the caller went away) proves nothing: the
        // endpoint may be probed again at once.
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(state) = this.state.take() && *this.probe {
                let mut st = lock(&state);
                if st.phase == Phase::Probing {
                    st.phase = Phase::HalfOpen;
                    if let Some(w) = st.waiting.take() {
                        w.wake();
                    }
                }
            }
        }
    }
}

impl<F> Future for BreakerFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        if let Some(state) = this.state.take() {
            let failed = match &out {
                Ok(rsp) => rsp.status().is_server_error(),
                Err(_) => true,
            };
            lock(&state).record(failed, *this.probe);
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU16;

    use tower::{Service, ServiceExt};

    use super::*;
    use crate::http::classify::empty_body;

    /// An endpoint answering with the status its switch holds.
    #[derive(Clone)]
    struct Switch(Arc<AtomicU16>);

    impl tower::Service<Request<Body>> for Switch {
        type Response = Response<Body>;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Response<Body>, BoxError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<Body>) -> Self::Future {
            let mut rsp = Response::new(empty_body());
            *rsp.status_mut() = http::StatusCode::from_u16(self.0.load(Ordering::SeqCst)).unwrap();
            std::future::ready(Ok(rsp))
        }
    }

    async fn send(b: &mut Breaker<Switch>) -> u16 {
        let rsp = b.ready().await.unwrap().call(Request::new(empty_body()));
        rsp.await.unwrap().status().as_u16()
    }

    fn ready_now(b: &mut Breaker<Switch>) -> bool {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        b.poll_ready(&mut cx).is_ready()
    }

    /// The destination's backend policy sets the threshold and the penalties, read at once by
    /// its endpoints; 0 failures turns accrual off.
    #[tokio::test(start_paused = true)]
    async fn the_backend_policy_sets_when_and_for_how_long() {
        let status = Arc::new(AtomicU16::new(500));
        let health = Arc::new(Health::default());
        health.set_endpoints(1);
        health.set_accrual(&FailureAccrual {
            consecutive_failures: 2,
            first_penalty: Duration::from_millis(100),
            max_penalty: Duration::from_millis(150),
        });
        let mut b = Breaker::new(Switch(status.clone()), health.clone(), true);
        for _ in 0..2 {
            assert_eq!(send(&mut b).await, 500);
        }
        assert!(!ready_now(&mut b), "ejected after two");
        tokio::time::advance(Duration::from_millis(101)).await;
        assert!(ready_now(&mut b), "the first penalty is at most 100 ms");
        // A failed probe: the bound doubles, but not past 150 ms.
        assert_eq!(send(&mut b).await, 500);
        tokio::time::advance(Duration::from_millis(151)).await;
        assert!(ready_now(&mut b), "the largest penalty is 150 ms");
        status.store(200, Ordering::SeqCst);
        assert_eq!(send(&mut b).await, 200);
        assert!(!health.all_ejected());

        // Off: no number of failures ejects.
        health.set_accrual(&FailureAccrual {
            consecutive_failures: 0,
            ..FailureAccrual::default()
        });
        status.store(503, Ordering::SeqCst);
        for _ in 0..FAILURES * 3 {
            assert_eq!(send(&mut b).await, 503);
        }
        assert!(ready_now(&mut b), "never ejected");
    }

    /// Seven 5xx in a row eject the endpoint; after the penalty one probe goes, and its
    /// success brings the endpoint back. A failed probe ejects it again for longer.
    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_and_a_probe_brings_back() {
        let status = Arc::new(AtomicU16::new(500));
        let health = Arc::new(Health::default());
        health.set_endpoints(1);
        let mut b = Breaker::new(Switch(status.clone()), health.clone(), true);
        for _ in 0..FAILURES {
            assert_eq!(send(&mut b).await, 500);
        }
        assert!(!ready_now(&mut b), "ejected");
        assert!(health.all_ejected());

        // The first penalty lies between 0.5 and 1 s.
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!ready_now(&mut b));
        tokio::time::advance(Duration::from_millis(502)).await;
        assert!(ready_now(&mut b), "the penalty is over: a probe may go");
        // The probe fails: ejected again, for 1 to 2 s this time.
        assert_eq!(send(&mut b).await, 500);
        assert!(!ready_now(&mut b));
        tokio::time::advance(Duration::from_millis(990)).await;
        assert!(!ready_now(&mut b));
        tokio::time::advance(Duration::from_millis(1020)).await;
        // The endpoint has recovered: the probe succeeds and it is back for good.
        status.store(200, Ordering::SeqCst);
        assert_eq!(send(&mut b).await, 200);
        assert!(ready_now(&mut b));
        assert!(!health.all_ejected());
        // Failures count from zero again: six are not enough.
        status.store(503, Ordering::SeqCst);
        for _ in 0..FAILURES - 1 {
            send(&mut b).await;
        }
        assert!(ready_now(&mut b));
    }

    /// Outside the mesh nothing is counted: the application gets every answer.
    #[tokio::test(start_paused = true)]
    async fn an_address_outside_the_mesh_is_never_ejected() {
        let status = Arc::new(AtomicU16::new(500));
        let mut b = Breaker::new(Switch(status), Arc::default(), false);
        for _ in 0..FAILURES * 3 {
            assert_eq!(send(&mut b).await, 500);
        }
        assert!(ready_now(&mut b));
    }

    /// A success between failures resets the count.
    #[tokio::test(start_paused = true)]
    async fn only_consecutive_failures_count() {
        let status = Arc::new(AtomicU16::new(502));
        let mut b = Breaker::new(Switch(status.clone()), Arc::default(), true);
        for round in 0..3 {
            for _ in 0..FAILURES - 1 {
                send(&mut b).await;
            }
            status.store(200, Ordering::SeqCst);
            send(&mut b).await;
            status.store(502, Ordering::SeqCst);
            assert!(ready_now(&mut b), "round {round}");
        }
    }

    /// While a probe is out no other request goes; an endpoint removed while ejected is no
    /// longer counted.
    #[tokio::test(start_paused = true)]
    async fn one_probe_at_a_time_and_removal_uncounts() {
        let status = Arc::new(AtomicU16::new(500));
        let health = Arc::new(Health::default());
        health.set_endpoints(2);
        let mut b = Breaker::new(Switch(status), health.clone(), true);
        for _ in 0..FAILURES {
            send(&mut b).await;
        }
        assert_eq!(health.ejected.load(Ordering::SeqCst), 1);
        assert!(!health.all_ejected(), "one of two");
        tokio::time::advance(MAX_PENALTY).await;
        assert!(ready_now(&mut b));
        let probe = b.call(Request::new(empty_body()));
        assert!(!ready_now(&mut b), "the probe is out");
        drop(probe);
        assert!(ready_now(&mut b), "a dropped probe proves nothing");
        drop(b);
        assert_eq!(health.ejected.load(Ordering::SeqCst), 0);
    }
}
