//! Counts the responses the proxy makes itself before any endpoint is chosen (403, 503, or
//! their gRPC statuses), under the destination's label and no peer, so that every request has
//! its response counted once: a routed one by the endpoint that answered it, any other here.
//! It sits above [`crate::errors::Respond`] and counts what that layer marked
//! [`Uncounted`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};

use super::destination::Lease;
use crate::errors::Uncounted;
use crate::http::Body;
use crate::metrics::{Direction, Metrics, RequestLabels, RequestMetrics};

#[derive(Debug)]
struct Counts {
    dest: Arc<Lease>,
    metrics: Metrics,
}

/// The layer. See the module docs.
#[derive(Clone, Debug)]
pub struct CountUnrouted<S> {
    inner: S,
    counts: Arc<Counts>,
}

impl<S> CountUnrouted<S> {
    /// Counts what `inner` answers itself for `dest`.
    pub fn new(inner: S, dest: Arc<Lease>, metrics: Metrics) -> Self {
        Self {
            inner,
            counts: Arc::new(Counts { dest, metrics }),
        }
    }
}

impl<S, E> tower::Service<Request<Body>> for CountUnrouted<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = E>,
{
    type Response = Response<Body>;
    type Error = E;
    type Future = CountFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        CountFuture {
            inner: self.inner.call(req),
            counts: Some(self.counts.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`CountUnrouted`]'s future.
    pub struct CountFuture<F> {
        #[pin]
        inner: F,
        counts: Option<Arc<Counts>>,
    }
}

impl<F, E> Future for CountFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut rsp = ready!(this.inner.poll(cx))?;
        if rsp.extensions_mut().remove::<Uncounted>().is_some()
            && let Some(counts) = this.counts.take()
        {
            // The labels are built only for the proxy's own answers; routed requests reuse
            // their endpoint's handles.
            let metrics = RequestMetrics::new(
                &counts.metrics,
                RequestLabels {
                    direction: Direction::outbound,
                    service: counts.dest.metric_label(),
                    peer: "-".into(),
                },
            );
            metrics.request();
            rsp = metrics.observe(rsp, tokio::time::Instant::now());
        }
        Poll::Ready(Ok(rsp))
    }
}
