//! The request metrics layer: counts each request, its latency to the response head, and its
//! response by status and classification once the body has ended ([`RequestMetrics`]). An
//! error counts as a request without a response, and leaves marked as counted, so the layers
//! above do not count it again.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use tokio::time::Instant;

use super::{Body, BoxError};
use crate::errors::HttpError;
use crate::metrics::RequestMetrics;

/// The layer. See the module docs.
#[derive(Clone, Debug)]
pub struct Metered<S> {
    inner: S,
    metrics: RequestMetrics,
}

impl<S> Metered<S> {
    /// Counts the requests to `inner` under `metrics`.
    pub fn new(inner: S, metrics: RequestMetrics) -> Self {
        Self { inner, metrics }
    }
}

impl<S> tower::Service<Request<Body>> for Metered<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.metrics.request();
        if let Some(notes) = crate::observe::notes(&req) {
            notes.peer(self.metrics.peer());
        }
        let trace = crate::observe::trace_id(&req);
        MeteredFuture {
            inner: self.inner.call(req),
            metrics: Some(self.metrics.clone()),
            started: Instant::now(),
            trace,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Metered`]'s future.
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        metrics: Option<RequestMetrics>,
        started: Instant,
        trace: Option<crate::observe::context::TraceId>,
    }
}

impl<F> Future for MeteredFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(metrics) = this.metrics.take() else {
            return Poll::Ready(result);
        };
        Poll::Ready(match result {
            Ok(rsp) => Ok(metrics.observe_traced(rsp, *this.started, *this.trace)),
            Err(e) => {
                metrics.no_response(*this.started);
                Err(HttpError::from_box(e).counted().into())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::errors::{Kind, RetrySafe, Who};
    use crate::http::classify::empty_body;
    use crate::metrics::{Direction, Metrics, RequestLabels};

    fn metered<S>(inner: S, metrics: &Metrics) -> Metered<S> {
        let labels = RequestLabels {
            direction: Direction::outbound,
            service: "api.demo:80".into(),
            peer: "-".into(),
        };
        Metered::new(inner, RequestMetrics::new(metrics, labels))
    }

    fn count(metrics: &Metrics, what: &str) -> String {
        metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with(what))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A response is counted once its body has ended, with the gRPC status of its trailers;
    /// an error as a request without response, marked counted for the layers above.
    #[tokio::test]
    async fn responses_are_counted_at_their_end_and_errors_once() {
        let metrics = Metrics::default();
        let grpc_failure = tower::service_fn(|_: Request<Body>| async {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
            let body = http_body_util::Empty::<bytes::Bytes>::new()
                .map_err(|e: std::convert::Infallible| match e {})
                .with_trailers(async move { Some(Ok(trailers)) });
            Ok::<_, BoxError>(Response::new(Body::new(body)))
        });
        let rsp = metered(grpc_failure, &metrics)
            .oneshot(Request::new(empty_body()))
            .await
            .unwrap();
        assert_eq!(
            count(&metrics, "weft_responses_total"),
            "",
            "counted before its end"
        );
        rsp.into_body().collect().await.unwrap();
        assert!(
            count(&metrics, "weft_responses_total")
                .contains("status_code=\"200\",classification=\"failure\"} 1"),
            "{}",
            metrics.encode()
        );

        let failing = tower::service_fn(|_: Request<Body>| async {
            Err::<Response<Body>, _>(BoxError::from(HttpError::new(
                Kind::BadGateway,
                Who::Peer,
                RetrySafe::IfIdempotent,
                "reset",
            )))
        });
        let e = metered(failing, &metrics)
            .oneshot(Request::new(empty_body()))
            .await
            .unwrap_err();
        assert!(HttpError::from_box(e).was_counted());
        assert!(
            count(&metrics, "weft_responses_total")
                .contains("status_code=\"\",classification=\"failure\"} 1")
        );
        assert!(count(&metrics, "weft_requests_total").ends_with(" 2"));
    }
}
