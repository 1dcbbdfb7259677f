//! A concurrency limit, of a route rule or of a whole destination service: at most so many
//! calls in flight (from the moment they
//! are let through until their response has ended), and at most so many more waiting for a
//! place; past both a call is refused at once with 503 and the reason, rather than queued
//! without bound. A waiting call still counts against its own deadline.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weft_core::policy::route::ConcurrencyLimit;

use crate::errors::{HttpError, Who};
use crate::http::{Body, BoxError};

/// One rule's or service's places.
#[derive(Debug)]
pub struct Limiter {
    places: Arc<Semaphore>,
    waiting: AtomicUsize,
    limit: ConcurrencyLimit,
    refused: Counter,
    /// What the limit is of, for the reason: `route`, `service`.
    of: &'static str,
}

/// Takes a waiting place back when its call stops waiting, however it stops.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Limiter {
    /// The places `limit` gives, the limit of a route or a service (`of`), counting
    /// refusals in `refused`.
    pub fn new(limit: ConcurrencyLimit, refused: Counter, of: &'static str) -> Self {
        let n = usize::try_from(limit.max_in_flight).unwrap_or(usize::MAX);
        Self {
            places: Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS))),
            waiting: AtomicUsize::new(0),
            limit,
            refused,
            of,
        }
    }

    /// A place for one call: at once, after waiting in line, or an error when the line is
    /// full too.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, HttpError> {
        if let Ok(p) = self.places.clone().try_acquire_owned() {
            return Ok(p);
        }
        let max = usize::try_from(self.limit.max_queue).unwrap_or(usize::MAX);
        let in_line = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        if in_line >= max {
            self.refused.inc();
            return Err(HttpError::unavailable(
                Who::Proxy,
                format!(
                    "over the {}'s concurrency limit: {} calls in flight and {} waiting",
                    self.of, self.limit.max_in_flight, self.limit.max_queue
                ),
            ));
        }
        // The semaphore is never closed.
        self.places
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HttpError::unavailable(Who::Proxy, "the concurrency limit is gone"))
    }
}

/// `rsp`, holding `place` until its body has ended (or is dropped): the place comes free as
/// soon as the last frame has been read, before it is written on, so a caller that has seen
/// the whole response finds the place free.
pub fn hold(rsp: Response<Body>, place: OwnedSemaphorePermit) -> Response<Body> {
    rsp.map(|inner| {
        let place = (!http_body::Body::is_end_stream(&inner)).then_some(place);
        Body::new(Held { inner, place })
    })
}

struct Held {
    inner: Body,
    place: Option<OwnedSemaphorePermit>,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &frame {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => http_body::Body::is_end_stream(&self.inner),
            Poll::Pending => false,
        };
        if ended {
            self.place = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::errors::Kind;
    use crate::http::classify::empty_body;

    fn limiter(max_in_flight: u32, max_queue: u32) -> Limiter {
        Limiter::new(
            ConcurrencyLimit {
                max_in_flight,
                max_queue,
            },
            Counter::default(),
            "route",
        )
    }

    /// Two in flight, one waiting; the fourth is refused at once, and a place freed by a
    /// response ending lets the waiting one through.
    #[tokio::test(start_paused = true)]
    async fn places_then_a_bounded_line_then_refusal() {
        let l = Arc::new(limiter(2, 1));
        let a = l.enter().await.unwrap();
        let b = l.enter().await.unwrap();
        let waiting = tokio::spawn({
            let l = l.clone();
            async move { l.enter().await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let e = l.enter().await.unwrap_err();
        assert_eq!(e.kind(), Kind::Unavailable);
        assert!(e.reason().contains("concurrency limit"), "{e}");
        assert_eq!(l.refused.get(), 1);
        // A response holding a place frees it when it is dropped.
        let rsp = hold(Response::new(empty_body()), a);
        assert!(!waiting.is_finished());
        drop(rsp);
        waiting.await.unwrap().unwrap();
        drop(b);
        assert_eq!(l.places.available_permits(), 2);
        assert_eq!(l.waiting.load(Ordering::SeqCst), 0);
    }

    /// A call that gives up waiting (its deadline passed) leaves the line.
    #[tokio::test(start_paused = true)]
    async fn a_call_that_stops_waiting_leaves_the_line() {
        let l = limiter(1, 1);
        let _a = l.enter().await.unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(5), l.enter()).await;
        assert!(gave_up.is_err());
        assert_eq!(l.waiting.load(Ordering::SeqCst), 0);
        let again = tokio::time::timeout(Duration::from_millis(5), l.enter()).await;
        assert!(
            again.is_err(),
            "still waiting, not refused: the line has room"
        );
    }
}
