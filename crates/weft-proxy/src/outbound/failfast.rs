//! Fail-fast in front of a balancer: requests wait at most a dispatch timeout for an endpoint
//! to become ready; past it, they fail at once with [`Unavailable`] (a 503) until an endpoint
//! is ready again. It wraps the balancer itself, so every waiting request is bounded, and the
//! requests queued behind it are failed at once rather than each waiting its own timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

use crate::http::BoxError;

/// No endpoint of the service became ready within the dispatch timeout.
#[derive(Debug, thiserror::Error)]
#[error("no endpoint became available within {0:?}")]
pub struct Unavailable(pub Duration);

/// Whether `e` (or any of its sources) is [`Unavailable`].
pub fn is_unavailable(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<Unavailable>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// See the module docs.
#[derive(Debug)]
pub struct FailFast<S> {
    inner: S,
    timeout: Duration,
    waiting: Option<Pin<Box<Sleep>>>,
    failing: bool,
}

impl<S> FailFast<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            waiting: None,
            failing: false,
        }
    }

    /// The wrapped service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S, Req> tower::Service<Req> for FailFast<S>
where
    S: tower::Service<Req, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = FailFastFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.waiting = None;
                self.failing = false;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.failing => Poll::Ready(Ok(())),
            Poll::Pending => {
                let timeout = self.timeout;
                let waiting = self
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if waiting.as_mut().poll(cx).is_ready() {
                    tracing::info!(?timeout, "no endpoint ready; failing requests fast");
                    self.failing = true;
                    self.waiting = None;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if self.failing {
            return FailFastFuture::Failed {
                timeout: Some(self.timeout),
            };
        }
        FailFastFuture::Called {
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`FailFast`]'s future: the inner call's, or a failure without waiting.
    #[project = Proj]
    pub enum FailFastFuture<F> {
        /// Failed fast: [`Unavailable`].
        Failed { timeout: Option<Duration> },
        /// Passed on.
        Called { #[pin] inner: F },
    }
}

impl<F, T> Future for FailFastFuture<F>
where
    F: Future<Output = Result<T, BoxError>>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Failed { timeout } => {
                let timeout = timeout.take().unwrap_or_default();
                Poll::Ready(Err(Unavailable(timeout).into()))
            }
            Proj::Called { inner } => inner.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tower::{Service, ServiceExt};

    use super::*;

    /// A service whose readiness the test switches.
    #[derive(Clone)]
    struct Gate(Arc<AtomicBool>);

    impl Service<()> for Gate {
        type Response = ();
        type Error = BoxError;
        type Future = std::future::Ready<Result<(), BoxError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            // Closed gates stay pending without waking anyone: only the timer moves time.
            if self.0.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
        fn call(&mut self, _: ()) -> Self::Future {
            std::future::ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_timeout_then_fails_fast_until_ready() {
        let open = Arc::new(AtomicBool::new(false));
        let mut svc = FailFast::new(Gate(open.clone()), Duration::from_secs(3));

        let started = tokio::time::Instant::now();
        let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(is_unavailable(&*err));
        assert_eq!(started.elapsed(), Duration::from_secs(3));

        // Still failing: the next request does not wait.
        let again = tokio::time::Instant::now();
        assert!(svc.ready().await.unwrap().call(()).await.is_err());
        assert_eq!(again.elapsed(), Duration::ZERO);

        // An endpoint is back: requests go through.
        open.store(true, Ordering::SeqCst);
        svc.ready().await.unwrap().call(()).await.unwrap();
    }
}
