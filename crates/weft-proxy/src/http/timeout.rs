//! Deadlines: a route rule's timeouts and a gRPC caller's `grpc-timeout`, whichever ends
//! first.
//!
//! - The wait for the response's headers is bounded by the deadline: past it the call fails
//!   with [`Kind::Timeout`] (504, or `DEADLINE_EXCEEDED` for gRPC) and the request to the
//!   backend is dropped (its stream reset, or its pooled connection closed), while the
//!   caller's own connection stays open for its next request.
//! - A response that has begun is bounded too. A gRPC one ends at the deadline with the
//!   trailers `grpc-status: 4` (`DEADLINE_EXCEEDED`), which is how a gRPC client learns its
//!   call timed out; a plain HTTP one fails there, so an HTTP/2 caller sees its stream reset
//!   and an HTTP/1 caller its connection closed (the only way to tell it the body is cut
//!   short). The timer is armed only if the body has to wait for data.
//! - A gRPC request goes on with `grpc-timeout` set to what is left of the deadline, so the
//!   server knows when its answer stops mattering.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::errors::{HttpError, Kind, RetrySafe, Who};
use crate::http::{Body, BoxError};

/// The header a gRPC caller states its deadline in.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The largest value `grpc-timeout` can hold (eight digits).
const GRPC_TIMEOUT_MAX: u128 = 99_999_999;

/// Reads a `grpc-timeout` value: one to eight digits and a unit (`H`, `M`, `S`, `m`, `u`,
/// `n`). `None` when it is not one, in which case the caller has stated no deadline.
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let v = value.as_bytes();
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `d` as a `grpc-timeout` value: the finest unit that holds it in eight digits, rounded up
/// (a deadline is never stated shorter than it is); past the largest value, that value.
pub fn encode_grpc_timeout(d: Duration) -> HeaderValue {
    let nanos = d.as_nanos();
    for (unit, size) in [
        ('n', 1u128),
        ('u', 1_000),
        ('m', 1_000_000),
        ('S', 1_000_000_000),
        ('M', 60_000_000_000),
        ('H', 3_600_000_000_000),
    ] {
        let n = nanos.div_ceil(size);
        if n <= GRPC_TIMEOUT_MAX {
            return HeaderValue::from_str(&format!("{n}{unit}"))
                .unwrap_or_else(|_| HeaderValue::from_static("99999999H"));
        }
    }
    HeaderValue::from_static("99999999H")
}

/// When the call must have been answered: the earliest of `limit` from now and, for a gRPC
/// request, the caller's `grpc-timeout`. `None`: no deadline.
pub fn deadline<B>(req: &Request<B>, grpc: bool, limit: Option<Duration>) -> Option<Instant> {
    let caller = grpc
        .then(|| req.headers().get(GRPC_TIMEOUT).and_then(parse_grpc_timeout))
        .flatten();
    let shortest = match (limit, caller) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }?;
    // Past what a timer can hold, there is no deadline to speak of.
    Instant::now().checked_add(shortest)
}

/// Sends `req` through `send` within `deadline`: what [`deadline`] gave for it. See the
/// module docs.
pub fn within<F>(
    deadline: Instant,
    grpc: bool,
    mut req: Request<Body>,
    send: impl FnOnce(Request<Body>) -> F,
) -> impl Future<Output = Result<Response<Body>, BoxError>> + Send
where
    F: Future<Output = Result<Response<Body>, BoxError>> + Send,
{
    stamp(&mut req, deadline, grpc);
    bound(deadline, grpc, send(req))
}

/// Tells a gRPC server the time left before `deadline`, in `grpc-timeout`.
pub fn stamp(req: &mut Request<Body>, deadline: Instant, grpc: bool) {
    if grpc {
        let left = deadline.saturating_duration_since(Instant::now());
        req.headers_mut()
            .insert(GRPC_TIMEOUT, encode_grpc_timeout(left));
    }
}

/// Bounds `sent`, a request [`stamp`]ed and sent, by `deadline`.
pub fn bound<F>(
    deadline: Instant,
    grpc: bool,
    sent: F,
) -> impl Future<Output = Result<Response<Body>, BoxError>> + Send
where
    F: Future<Output = Result<Response<Body>, BoxError>> + Send,
{
    // A combinator rather than an `async` block, which would hold the sent future twice.
    futures_util::FutureExt::map(tokio::time::timeout_at(deadline, sent), move |r| match r {
        Ok(Ok(rsp)) if http_body::Body::is_end_stream(rsp.body()) => Ok(rsp),
        Ok(Ok(rsp)) => Ok(rsp.map(|b| Body::new(Deadline::new(b, deadline, grpc)))),
        Ok(r) => r,
        Err(_) => Err(timed_out().into()),
    })
}

/// The error of a call whose deadline passed.
pub fn timed_out() -> HttpError {
    HttpError::new(
        Kind::Timeout,
        Who::Peer,
        RetrySafe::No,
        "no response before the deadline",
    )
}

/// A response body cut at the deadline: with `DEADLINE_EXCEEDED` trailers for gRPC, with an
/// error otherwise.
struct Deadline {
    inner: Body,
    deadline: Instant,
    /// Made the first time the body waits for data.
    sleep: Option<Pin<Box<Sleep>>>,
    grpc: bool,
    ended: bool,
}

impl Deadline {
    fn new(inner: Body, deadline: Instant, grpc: bool) -> Self {
        Self {
            inner,
            deadline,
            sleep: None,
            grpc,
            ended: false,
        }
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            if frame
                .as_ref()
                .is_none_or(|f| !matches!(f, Ok(f) if f.is_data()))
            {
                self.ended = true;
            }
            return Poll::Ready(frame);
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Dropping the rest of the response resets the backend's stream.
        self.ended = true;
        self.inner = crate::http::classify::empty_body();
        if !self.grpc {
            let cut = HttpError::new(
                Kind::Timeout,
                Who::Peer,
                RetrySafe::No,
                "the response body did not end before the deadline",
            );
            return Poll::Ready(Some(Err(cut.into())));
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("4"));
        trailers.insert(
            "grpc-message",
            HeaderValue::from_static("deadline%20exceeded"),
        );
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    /// The backend's: a body that reaches its end is the backend's whole body (one cut short
    /// fails, or for gRPC ends in trailers, which the hint does not count).
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn grpc_timeouts_read_and_written() {
        let read = |s: &'static str| parse_grpc_timeout(&HeaderValue::from_static(s));
        assert_eq!(read("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(read("2M"), Some(Duration::from_secs(120)));
        assert_eq!(read("3S"), Some(Duration::from_secs(3)));
        assert_eq!(read("250m"), Some(Duration::from_millis(250)));
        assert_eq!(read("7u"), Some(Duration::from_micros(7)));
        assert_eq!(read("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "1", "123456789S", "1s", "-1S", "1.5S", "1 S"] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
        let write = |d: Duration| encode_grpc_timeout(d).to_str().unwrap().to_string();
        assert_eq!(write(Duration::from_nanos(5)), "5n");
        assert_eq!(write(Duration::from_millis(250)), "250000u");
        assert_eq!(write(Duration::from_secs(3)), "3000000u");
        assert_eq!(write(Duration::from_secs(1000)), "1000000m");
        assert_eq!(write(Duration::from_secs(200_000)), "200000S");
        assert_eq!(write(Duration::from_secs(u64::MAX)), "99999999H");
        // Written values read back to at least what they state.
        for ms in [1, 999, 1_000, 86_400_000] {
            let d = Duration::from_millis(ms);
            assert!(parse_grpc_timeout(&encode_grpc_timeout(d)).unwrap() >= d);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_caller_s_deadline_wins_when_it_is_shorter() {
        let req = |t: &'static str| {
            Request::post("/pkg.S/M")
                .header(GRPC_TIMEOUT, t)
                .body(())
                .unwrap()
        };
        let now = Instant::now();
        let second = Some(Duration::from_secs(1));
        assert_eq!(
            deadline(&req("200m"), true, second),
            Some(now + Duration::from_millis(200))
        );
        assert_eq!(
            deadline(&req("5S"), true, second),
            Some(now + Duration::from_secs(1))
        );
        assert_eq!(
            deadline(&req("5S"), true, None),
            Some(now + Duration::from_secs(5))
        );
        // Not gRPC, or unreadable: only the route's limit.
        assert_eq!(
            deadline(&req("200m"), false, second),
            Some(now + Duration::from_secs(1))
        );
        assert_eq!(deadline(&req("soon"), true, None), None);
    }

    fn grpc_request() -> Request<Body> {
        Request::post("/pkg.S/M")
            .header(GRPC_TIMEOUT, "10S")
            .body(crate::http::classify::empty_body())
            .unwrap()
    }

    /// Past the deadline without an answer: a timeout error, and the request that went on
    /// stated what was left of the deadline.
    #[tokio::test(start_paused = true)]
    async fn no_answer_by_the_deadline_is_a_timeout() {
        let at = Instant::now() + Duration::from_millis(300);
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let call = within(at, true, grpc_request(), move |req: Request<Body>| {
            let _ = seen_tx.send(req.headers()[GRPC_TIMEOUT].clone());
            std::future::pending()
        });
        let e = HttpError::from_box(call.await.unwrap_err());
        assert_eq!(e.kind(), Kind::Timeout);
        assert_eq!(Instant::now(), at);
        let stated = parse_grpc_timeout(&seen_rx.await.unwrap()).unwrap();
        assert_eq!(stated, Duration::from_millis(300));
    }

    /// A gRPC response that has begun ends with DEADLINE_EXCEEDED trailers at the deadline.
    #[tokio::test(start_paused = true)]
    async fn a_begun_grpc_response_ends_with_deadline_exceeded() {
        let at = Instant::now() + Duration::from_millis(300);
        let (tx, body) = {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
            let stream =
                http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            (tx, Body::new(stream))
        };
        tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .await
            .unwrap();
        let rsp = within(at, true, grpc_request(), move |_| async move {
            Ok(Response::new(body))
        })
        .await
        .unwrap();
        let mut body = rsp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "first");
        let last = body.frame().await.unwrap().unwrap();
        assert_eq!(Instant::now(), at);
        let trailers = last.into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "4");
        assert!(body.frame().await.is_none());
        assert!(tx.is_closed(), "the backend's stream was dropped");
    }

    /// An answer in time goes through untouched.
    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_passes() {
        let at = Instant::now() + Duration::from_secs(1);
        let rsp = within(at, false, grpc_request(), |_| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(Response::new(crate::http::classify::empty_body()))
        })
        .await
        .unwrap();
        assert_eq!(rsp.status(), 200);
    }
}
