//! Retries of a routed call, under the rule's policy and budget.
//!
//! - What goes again: a request the proxy never sent, whatever its method; a request the peer
//!   may have seen (the connection lost after sending, the attempt's own timeout, or an answer
//!   with one of the rule's statuses, or for gRPC a trailers-only answer with one of its gRPC
//!   statuses) only for an idempotent method (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`,
//!   `DELETE`) or a rule marked `idempotent`.
//! - The request body streams to the first attempt as it comes, and what it sent is kept, up
//!   to [`MAX_REPLAY_BYTES`], so that a later attempt can send it again (and go on reading
//!   the rest where the first stopped); a longer body is not kept and never retried.
//! - Between attempts: a backoff from the rule's first backoff growing to ten times it, each
//!   drawn at random below its bound (full jitter); a `Retry-After` of at most
//!   [`RETRY_AFTER_CAP`] is waited out, a longer one ends the retries. No retry starts past
//!   the call's deadline.
//! - A budget per destination service, which every rule of its routes draws on, bounds
//!   retries to a share of its requests plus a floor a second over a window (by default 20 %
//!   plus 10 a second over 10 s; the service's backend policy may say otherwise), so that
//!   retries cannot multiply an outage; each retry and each one the budget refused is counted
//!   under its rule.
//! - Each attempt draws its backend again, so a split's other backend can answer, and within
//!   a backend the balancer leaves out the endpoint the previous attempt went to while another
//!   is ready ([`crate::outbound::p2c`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, RETRY_AFTER};
use http::{Method, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};
use weft_core::policy::backend::RetryBudget;
use weft_core::policy::route::RetryPolicy;

use crate::errors::{HttpError, Kind, RetrySafe};
use crate::http::classify::GRPC_STATUS;
use crate::http::timeout;
use crate::http::{Body, BoxError};
use crate::outbound::p2c::Attempted;

/// The longest request body kept for sending again.
pub const MAX_REPLAY_BYTES: usize = 64 * 1024;
/// The longest `Retry-After` waited out; a longer one ends the retries.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(1);
/// A budget as `budget` says it.
pub fn budget(budget: &RetryBudget) -> Arc<TpsBudget> {
    #[allow(clippy::cast_precision_loss, reason = "at most 100")]
    let ratio = budget.percent.min(100) as f32 / 100.0;
    Arc::new(TpsBudget::new(budget.window, budget.min_per_second, ratio))
}

/// A rule's retry policy, its share of its destination's retry budget, and its counters.
#[derive(Debug)]
pub struct RetryState {
    policy: RetryPolicy,
    budget: Arc<TpsBudget>,
    retries: Counter,
    exhausted: Counter,
}

impl RetryState {
    /// Retries under `policy`, drawing on `budget`, counting into `retries` and `exhausted`.
    pub fn new(
        policy: RetryPolicy,
        budget: Arc<TpsBudget>,
        retries: Counter,
        exhausted: Counter,
    ) -> Arc<Self> {
        Arc::new(Self {
            policy,
            budget,
            retries,
            exhausted,
        })
    }
}

/// The caller's request body, shared by every attempt: the first attempt streams it as it
/// comes, and what it read (up to [`MAX_REPLAY_BYTES`]) is kept, so that a later attempt
/// replays that and goes on reading where the first stopped. Past the limit nothing is kept
/// and the request may not go again.
#[derive(Default)]
struct Shared {
    /// What has not been read from the caller yet.
    rest: Option<Body>,
    /// The data read so far, in order, until it would pass the limit.
    kept: Vec<Bytes>,
    kept_bytes: usize,
    trailers: Option<HeaderMap>,
    /// Read past the limit: `kept` no longer holds everything.
    overflow: bool,
}

/// One attempt's view of the shared body.
struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// The next kept chunk this attempt sends.
    at: usize,
    /// Whether this attempt has sent the trailers (the end).
    ended: bool,
    hint: SizeHint,
}

impl ReplayBody {
    fn new(shared: Arc<Mutex<Shared>>, hint: SizeHint) -> Self {
        Self {
            shared,
            at: 0,
            ended: false,
            hint,
        }
    }
}

impl http_body::Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let mut shared = this.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(chunk) = shared.kept.get(this.at) {
            this.at += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        let Some(rest) = shared.rest.as_mut() else {
            // The caller's body has ended: its trailers, if any, then the end.
            this.ended = true;
            return Poll::Ready(shared.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        };
        match Pin::new(rest).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.rest = None;
                this.ended = true;
                Poll::Ready(shared.trailers.clone().map(|t| Ok(Frame::trailers(t))))
            }
            Poll::Ready(Some(Err(e))) => {
                shared.rest = None;
                shared.overflow = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(chunk) => {
                    if !shared.overflow && shared.kept_bytes + chunk.len() <= MAX_REPLAY_BYTES {
                        shared.kept_bytes += chunk.len();
                        shared.kept.push(chunk.clone());
                        this.at += 1;
                    } else {
                        // Kept no further (what is kept stays within the limit); no other
                        // attempt will start.
                        shared.overflow = true;
                    }
                    Poll::Ready(Some(Ok(Frame::data(chunk))))
                }
                Err(frame) => {
                    shared.rest = None;
                    this.ended = true;
                    let trailers = frame.into_trailers().ok();
                    shared.trailers.clone_from(&trailers);
                    Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// What each attempt's request is made of.
struct Template {
    parts: http::request::Parts,
    /// The shared body; `None` for a request without one (most `GET`s), whose attempts are
    /// sent without a body too, so that each still goes as one frame with its end.
    body: Option<Arc<Mutex<Shared>>>,
    hint: SizeHint,
}

impl Template {
    fn new(req: Request<Body>) -> Self {
        let (parts, body) = req.into_parts();
        let hint = body.size_hint();
        if body.is_end_stream() {
            return Self {
                parts,
                body: None,
                hint,
            };
        }
        // A body known to be too long is not kept at all.
        let overflow = hint.lower() > MAX_REPLAY_BYTES as u64;
        Self {
            parts,
            body: Some(Arc::new(Mutex::new(Shared {
                rest: Some(body),
                overflow,
                ..Shared::default()
            }))),
            hint,
        }
    }

    /// Whether another attempt can send the whole body.
    fn replayable(&self) -> bool {
        self.body
            .as_ref()
            .is_none_or(|b| !b.lock().unwrap_or_else(PoisonError::into_inner).overflow)
    }

    fn request(&self) -> Request<Body> {
        let body = match &self.body {
            Some(shared) => Body::new(ReplayBody::new(shared.clone(), self.hint)),
            None => crate::http::classify::empty_body(),
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = self.parts.uri.clone();
        *req.version_mut() = self.parts.version;
        // Room for the headers the layers below add (a clone would be full, and the first
        // insert would reallocate it).
        let headers = req.headers_mut();
        headers.reserve(self.parts.headers.len() + 4);
        for (name, value) in &self.parts.headers {
            headers.append(name.clone(), value.clone());
        }
        if !self.parts.extensions.is_empty() {
            *req.extensions_mut() = self.parts.extensions.clone();
        }
        req
    }
}

/// Whether `method` may be sent twice by its definition (RFC 9110).
fn idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// Whether an attempt's outcome may go again, and how long its answer asked to wait.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Done,
    Retry(Option<Duration>),
}

fn verdict(
    policy: &RetryPolicy,
    outcome: &Result<Response<Body>, BoxError>,
    may_repeat: bool,
    own_timeout: bool,
) -> Verdict {
    match outcome {
        Ok(rsp) => {
            let status = rsp.status().as_u16();
            let listed = policy.codes.contains(&status)
                || (!policy.grpc_codes.is_empty()
                    && rsp
                        .headers()
                        .get(GRPC_STATUS)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u8>().ok())
                        .is_some_and(|c| policy.grpc_codes.contains(&c)));
            if !(listed && may_repeat) {
                return Verdict::Done;
            }
            let after = rsp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Verdict::Retry(after)
        }
        Err(e) => match e
            .downcast_ref::<HttpError>()
            .map(|e| (e.kind(), e.retry_safe()))
        {
            Some((_, RetrySafe::NotSent)) => Verdict::Retry(None),
            Some((_, RetrySafe::IfIdempotent)) if may_repeat => Verdict::Retry(None),
            // The attempt's own timeout (not the call's): the peer may have seen it.
            Some((Kind::Timeout, _)) if own_timeout && may_repeat => Verdict::Retry(None),
            _ => Verdict::Done,
        },
    }
}

/// The wait before retry `n` (from 1): a draw below the rule's backoff doubled `n - 1` times,
/// at most ten times the backoff; at least what the answer asked for.
fn backoff(policy: &RetryPolicy, n: u32, asked: Option<Duration>) -> Duration {
    let cap = policy.backoff * 10;
    let bound = policy
        .backoff
        .saturating_mul(1u32 << (n.saturating_sub(1)).min(16))
        .min(cap);
    let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
    let drawn = Duration::from_nanos(fastrand::u64(0..=nanos));
    asked.map_or(drawn, |a| a.max(drawn))
}

/// Sends `req` through `send` under `state`'s policy and budget (see the module docs).
/// `deadline` bounds the whole call and `per_try` each attempt; `grpc` says the call is gRPC.
///
/// The budget deposit and the request's template are made at once; the returned future owns
/// what it uses and holds the template and one attempt at a time (an `async` block with the
/// attempt written inline: an `async fn`, or an async closure per attempt, would hold copies
/// of both).
pub fn run<F, Fut>(
    state: Arc<RetryState>,
    req: Request<Body>,
    grpc: bool,
    deadline: Option<Instant>,
    per_try: Option<Duration>,
    send: F,
) -> impl Future<Output = Result<Response<Body>, BoxError>>
where
    F: Fn(Request<Body>, &Attempted) -> Fut,
    Fut: Future<Output = Result<Response<Body>, BoxError>> + Send,
{
    use futures_util::future::Either;
    state.budget.deposit();
    // Every attempt shares one record of where the last went, so a retry goes to another
    // endpoint where one is ready.
    let attempts = Attempted::default();
    let template = Template::new(req);
    let may_repeat = state.policy.idempotent || idempotent(&template.parts.method);
    // A traced call gets a span per attempt, its children.
    let traced = template
        .parts
        .extensions
        .get::<crate::observe::Current>()
        .cloned();
    async move {
        let policy = &state.policy;
        let mut n = 0;
        loop {
            let at = match (deadline, per_try.map(|d| Instant::now() + d)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let mut req = template.request();
            let span = traced.as_ref().map(|t| t.attempt(&mut req, n));
            let outcome = match at {
                Some(at) => Either::Left(timeout::within(at, grpc, req, |r| send(r, &attempts))),
                None => Either::Right(send(req, &attempts)),
            }
            .await;
            if let Some(span) = span {
                span.end(&outcome);
            }
            let own_timeout = at.is_some() && at != deadline;
            if n >= policy.attempts || !template.replayable() {
                return outcome;
            }
            let Verdict::Retry(asked) = verdict(policy, &outcome, may_repeat, own_timeout) else {
                return outcome;
            };
            if asked.is_some_and(|a| a > RETRY_AFTER_CAP) {
                return outcome;
            }
            n += 1;
            let wait = backoff(policy, n, asked);
            if deadline.is_some_and(|d| Instant::now() + wait >= d) {
                return outcome;
            }
            if !state.budget.withdraw() {
                state.exhausted.inc();
                return outcome;
            }
            state.retries.inc();
            // The failed answer is dropped before the wait: its connection is free again.
            drop(outcome);
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::StatusCode;
    use http_body_util::BodyExt;

    use super::*;
    use crate::errors::Who;
    use crate::http::classify::empty_body;

    fn policy(codes: &[u16], attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            codes: codes.to_vec(),
            grpc_codes: vec![14],
            backoff: Duration::from_millis(25),
            idempotent: false,
        }
    }

    fn state(p: &RetryPolicy) -> Arc<RetryState> {
        RetryState::new(
            p.clone(),
            budget(&RetryBudget::default()),
            Counter::default(),
            Counter::default(),
        )
    }

    fn answer(status: u16) -> Result<Response<Body>, BoxError> {
        let mut rsp = Response::new(empty_body());
        *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
        Ok(rsp)
    }

    type Answer = std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;
    type Bodies = Arc<std::sync::Mutex<Vec<Bytes>>>;

    /// A backend that fails the first `fail` attempts with `status`, then answers 200; it
    /// records each attempt's body.
    fn flaky(
        fail: usize,
        status: u16,
    ) -> (Arc<AtomicUsize>, Bodies, impl Fn(Request<Body>) -> Answer) {
        let calls = Arc::new(AtomicUsize::new(0));
        let bodies = Bodies::default();
        let (c, b) = (calls.clone(), bodies.clone());
        let send = move |req: Request<Body>| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            let b = b.clone();
            Box::pin(async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                b.lock().unwrap().push(body);
                if n < fail {
                    answer(status)
                } else {
                    answer(200)
                }
            }) as Answer
        };
        (calls, bodies, send)
    }

    /// [`run`] with a fresh budget and no deadline.
    async fn once<F, Fut>(p: &RetryPolicy, req: Request<Body>, send: F) -> Response<Body>
    where
        F: Fn(Request<Body>) -> Fut,
        Fut: Future<Output = Result<Response<Body>, BoxError>> + Send,
    {
        run(state(p), req, false, None, None, move |r, _: &Attempted| {
            send(r)
        })
        .await
        .unwrap()
    }

    fn get(body: &'static str) -> Request<Body> {
        let full = http_body_util::Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|e: std::convert::Infallible| match e {});
        let mut req = Request::new(Body::new(full));
        *req.method_mut() = Method::GET;
        req
    }

    #[tokio::test(start_paused = true)]
    async fn listed_statuses_are_retried_with_the_same_body() {
        let (calls, bodies, send) = flaky(2, 503);
        let rsp = once(&policy(&[503], 2), get("hello"), send).await;
        assert_eq!(rsp.status(), 200);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(bodies.lock().unwrap().iter().all(|b| b == "hello"));
    }

    /// Each attempt carries the caller's method, URI and headers, repeated values in order.
    #[tokio::test(start_paused = true)]
    async fn each_attempt_has_the_callers_head() {
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let h = heads.clone();
        let send = move |req: Request<Body>| {
            let (parts, _) = req.into_parts();
            let mut h = h.lock().unwrap();
            h.push((parts.method, parts.uri, parts.headers));
            std::future::ready(answer(if h.len() == 1 { 503 } else { 200 }))
        };
        let mut req = get("");
        *req.uri_mut() = "/a?b=c".parse().unwrap();
        req.headers_mut().append("x-many", "1".parse().unwrap());
        req.headers_mut().append("x-one", "only".parse().unwrap());
        req.headers_mut().append("x-many", "2".parse().unwrap());
        let original = req.headers().clone();
        once(&policy(&[503], 2), req, send).await;
        let heads = heads.lock().unwrap();
        assert_eq!(heads.len(), 2);
        for (method, uri, headers) in heads.iter() {
            assert_eq!((method, uri.to_string().as_str()), (&Method::GET, "/a?b=c"));
            assert_eq!(headers, &original);
            let many: Vec<_> = headers.get_all("x-many").iter().collect();
            assert_eq!(many, ["1", "2"]);
        }
    }

    /// A request without a body goes, each time, with a body that has ended before it is
    /// read, so that HTTP/2 sends it as one HEADERS frame with END_STREAM, as without retries.
    #[tokio::test(start_paused = true)]
    async fn a_bodiless_request_goes_again_without_a_body() {
        let ended = Arc::new(std::sync::Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let (e, c) = (ended.clone(), calls.clone());
        let send = move |req: Request<Body>| {
            e.lock().unwrap().push(req.body().is_end_stream());
            let n = c.fetch_add(1, Ordering::SeqCst);
            std::future::ready(answer(if n == 0 { 503 } else { 200 }))
        };
        let rsp = once(&policy(&[503], 2), get(""), send).await;
        assert_eq!(rsp.status(), 200);
        assert_eq!(*ended.lock().unwrap(), [true, true]);
        // A body that has not ended is kept for replay, and is not at its end before it is read.
        let ended2 = Arc::new(std::sync::Mutex::new(Vec::new()));
        let e = ended2.clone();
        let send = move |req: Request<Body>| {
            e.lock().unwrap().push(req.body().is_end_stream());
            std::future::ready(answer(200))
        };
        once(&policy(&[503], 2), get("x"), send).await;
        assert_eq!(*ended2.lock().unwrap(), [false]);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_bound_the_retries_and_the_last_answer_stands() {
        let (calls, _, send) = flaky(10, 503);
        let rsp = once(&policy(&[503], 2), get(""), send).await;
        assert_eq!(rsp.status(), 503);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_is_not_retried_on_a_status_unless_the_rule_says_so() {
        let post = || {
            let mut r = get("pay");
            *r.method_mut() = Method::POST;
            r
        };
        let (calls, _, send) = flaky(1, 503);
        let rsp = once(&policy(&[503], 2), post(), send).await;
        assert_eq!(
            (rsp.status().as_u16(), calls.load(Ordering::SeqCst)),
            (503, 1)
        );
        let (calls, _, send) = flaky(1, 503);
        let mut safe = policy(&[503], 2);
        safe.idempotent = true;
        let rsp = once(&safe, post(), send).await;
        assert_eq!(
            (rsp.status().as_u16(), calls.load(Ordering::SeqCst)),
            (200, 2)
        );
    }

    /// A POST the proxy never sent (the connection was reset before it went out) goes
    /// again: nobody can have acted on it.
    #[tokio::test(start_paused = true)]
    async fn a_post_never_sent_goes_again() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let send = move |_req: Request<Body>| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(HttpError::unavailable(Who::Peer, "reset before it was sent").into())
                } else {
                    answer(200)
                }
            }
        };
        let mut post = get("pay");
        *post.method_mut() = Method::POST;
        let rsp = once(&policy(&[], 2), post, send).await;
        assert_eq!(
            (rsp.status().as_u16(), calls.load(Ordering::SeqCst)),
            (200, 2)
        );
    }

    /// The body streams to the first attempt as it comes (a streaming call is not held until
    /// its end), and a later attempt gets all of it again, trailers included, whether the
    /// first read some of it or none.
    #[tokio::test(start_paused = true)]
    async fn the_body_streams_to_the_first_attempt_and_replays_to_the_next() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let body = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let t = Template::new(Request::new(body));
        // An attempt that never read its body (refused before sending).
        drop(t.request());
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        let mut first = t.request().into_body();
        let a = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(a, "a", "before the caller has finished");
        tx.send(Ok(Frame::data(Bytes::from_static(b"b"))))
            .await
            .unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "2".parse().unwrap());
        tx.send(Ok(Frame::trailers(trailers))).await.unwrap();
        drop(tx);
        let b = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(b, "b");
        drop(first);
        assert!(t.replayable());
        let again = t.request().into_body().collect().await.unwrap();
        assert_eq!(again.trailers().unwrap()["x-sum"], "2");
        assert_eq!(again.to_bytes(), "ab");
    }

    #[test]
    fn what_may_go_again() {
        let p = policy(&[503], 2);
        let err = |retry: RetrySafe| -> Result<Response<Body>, BoxError> {
            Err(HttpError::new(Kind::BadGateway, Who::Peer, retry, "x").into())
        };
        assert_eq!(
            verdict(&p, &err(RetrySafe::NotSent), false, false),
            Verdict::Retry(None)
        );
        assert_eq!(
            verdict(&p, &err(RetrySafe::IfIdempotent), false, false),
            Verdict::Done
        );
        assert_eq!(
            verdict(&p, &err(RetrySafe::IfIdempotent), true, false),
            Verdict::Retry(None)
        );
        assert_eq!(verdict(&p, &err(RetrySafe::No), true, false), Verdict::Done);
        let timeout: Result<Response<Body>, BoxError> =
            Err(HttpError::new(Kind::Timeout, Who::Peer, RetrySafe::No, "t").into());
        assert_eq!(verdict(&p, &timeout, true, true), Verdict::Retry(None));
        assert_eq!(
            verdict(&p, &timeout, true, false),
            Verdict::Done,
            "the call's own deadline"
        );
        assert_eq!(
            verdict(&p, &answer(500), true, false),
            Verdict::Done,
            "not listed"
        );
        let mut later = answer(503).unwrap();
        later
            .headers_mut()
            .insert(RETRY_AFTER, "1".parse().unwrap());
        assert_eq!(
            verdict(&p, &Ok(later), true, false),
            Verdict::Retry(Some(Duration::from_secs(1)))
        );
        let mut grpc = answer(200).unwrap();
        grpc.headers_mut()
            .insert("grpc-status", "14".parse().unwrap());
        assert_eq!(verdict(&p, &Ok(grpc), true, false), Verdict::Retry(None));
    }

    #[test]
    fn backoffs_grow_to_ten_times_the_first_with_jitter() {
        let p = policy(&[], 10);
        for n in 1..=10 {
            let bound =
                (Duration::from_millis(25) * (1 << (n - 1))).min(Duration::from_millis(250));
            for _ in 0..50 {
                assert!(backoff(&p, n, None) <= bound, "retry {n}");
            }
        }
        assert!(backoff(&p, 1, Some(Duration::from_millis(700))) >= Duration::from_millis(700));
    }

    /// A long Retry-After ends the retries: the server asked not to come back so soon.
    #[tokio::test(start_paused = true)]
    async fn a_long_retry_after_ends_the_retries() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let send = move |_req: Request<Body>| {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                let mut rsp = answer(503)?;
                rsp.headers_mut().insert(RETRY_AFTER, "30".parse().unwrap());
                Ok(rsp)
            }
        };
        let rsp = once(&policy(&[503], 2), get(""), send).await;
        assert_eq!(
            (rsp.status().as_u16(), calls.load(Ordering::SeqCst)),
            (503, 1)
        );
    }

    /// A body over the replay limit goes once, whole, and is not retried.
    #[tokio::test(start_paused = true)]
    async fn a_long_body_goes_once() {
        let big = Bytes::from(vec![b'x'; MAX_REPLAY_BYTES + 1]);
        let (calls, bodies, send) = flaky(1, 503);
        // Streamed in two chunks, with no length to tell ahead.
        let chunks = futures_util::stream::iter([
            Ok::<_, BoxError>(Frame::data(big.slice(..1000))),
            Ok(Frame::data(big.slice(1000..))),
        ]);
        let mut req = Request::new(Body::new(http_body_util::StreamBody::new(chunks)));
        *req.method_mut() = Method::PUT;
        let rsp = once(&policy(&[503], 2), req, send).await;
        assert_eq!(
            (rsp.status().as_u16(), calls.load(Ordering::SeqCst)),
            (503, 1)
        );
        assert_eq!(bodies.lock().unwrap()[0], big);
    }

    /// The budget allows its reserve and a share of the requests, then counts refusals.
    #[tokio::test(start_paused = true)]
    async fn the_budget_stops_retries_and_counts_it() {
        let p = policy(&[503], 1);
        let s = state(&p);
        let (calls, _, send) = flaky(usize::MAX, 503);
        for _ in 0..200 {
            run(s.clone(), get(""), false, None, None, |r, _: &Attempted| {
                send(r)
            })
            .await
            .unwrap();
        }
        let retries = calls.load(Ordering::SeqCst) - 200;
        // The reserve (10 a second over 10 s) and 20 % of the requests, give or take the
        // budget's rounding and the seconds the backoffs took.
        assert!((100..=160).contains(&retries), "{retries}");
        assert_eq!(s.retries.get() as usize, retries);
        assert_eq!(s.exhausted.get() as usize, 200 - retries);

        // A tighter budget (no floor, 5 %), shared by two rules: their retries add up.
        let tight = budget(&RetryBudget {
            percent: 5,
            min_per_second: 0,
            window: Duration::from_secs(10),
        });
        let a = RetryState::new(
            p.clone(),
            tight.clone(),
            Counter::default(),
            Counter::default(),
        );
        let b = RetryState::new(p.clone(), tight, Counter::default(), Counter::default());
        let (calls, _, send) = flaky(usize::MAX, 503);
        for i in 0..200 {
            let s = if i % 2 == 0 { &a } else { &b };
            run(s.clone(), get(""), false, None, None, |r, _: &Attempted| {
                send(r)
            })
            .await
            .unwrap();
        }
        let retries = calls.load(Ordering::SeqCst) - 200;
        assert!((5..=12).contains(&retries), "{retries}");
        assert_eq!((a.retries.get() + b.retries.get()) as usize, retries);
    }

    /// No retry starts past the call's deadline.
    #[tokio::test(start_paused = true)]
    async fn no_retry_past_the_deadline() {
        let (calls, _, send) = flaky(10, 503);
        let mut p = policy(&[503], 10);
        p.backoff = Duration::from_millis(100);
        let deadline = Instant::now() + Duration::from_millis(150);
        let rsp = run(
            state(&p),
            get(""),
            false,
            Some(deadline),
            None,
            move |r, _: &Attempted| send(r),
        )
        .await
        .unwrap();
        assert_eq!(rsp.status(), 503);
        assert!(Instant::now() < deadline);
        assert!(calls.load(Ordering::SeqCst) < 10);
    }
}
