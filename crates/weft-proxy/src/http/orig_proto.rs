//! The HTTP/1 carry between proxies: the outbound side sends every request to a meshed peer
//! over its one HTTP/2 connection, marking an HTTP/1 request with `weft-orig-proto`
//! ([`Upgrade`]); the inbound side turns it back into the HTTP/1 request the client sent
//! before anything else looks at it ([`Downgrade`]), with the `Host` header it sent or, for a
//! request in absolute form, the URI's authority as `Host`. The mark never leaves the mesh.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::header::{HOST, HeaderValue};
use http::{Request, Version};

use super::{Body, BoxError, ORIG_PROTO, absolute_uri};
use crate::errors::{HttpError, Kind, RetrySafe, Who};

/// Outbound, in front of a meshed endpoint's HTTP/2 client.
#[derive(Clone, Debug)]
pub struct Upgrade<S> {
    inner: S,
    /// The authority of a request that names none (HTTP/1.0 without `Host`): the endpoint.
    fallback: Arc<str>,
}

impl<S> Upgrade<S> {
    /// Carries HTTP/1 requests to `inner` as HTTP/2; `fallback` is the authority of a request
    /// that names none.
    pub fn new(inner: S, fallback: Arc<str>) -> Self {
        Self { inner, fallback }
    }
}

impl<S, R> tower::Service<Request<Body>> for Upgrade<S>
where
    S: tower::Service<Request<Body>, Response = R, Error = BoxError>,
{
    type Response = R;
    type Error = BoxError;
    type Future = Either<Ready<Result<R, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        if req.version() != Version::HTTP_2 {
            let orig = if req.version() == Version::HTTP_10 {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            };
            req.headers_mut()
                .insert(ORIG_PROTO, HeaderValue::from_static(orig));
            // In absolute form the URI's authority is the one that counts (RFC 9112, section
            // 3.2.2): a `Host` that may differ goes, and the peer makes it again from the
            // authority. In origin form `Host` is the authority and travels as it is.
            let absolute_form = req.uri().authority().is_some();
            if let Err(e) = absolute_uri(&mut req, &self.fallback) {
                let e = HttpError::new(
                    Kind::BadGateway,
                    Who::Caller,
                    RetrySafe::No,
                    format!("the request's target cannot be carried: {e}"),
                );
                return Either::Left(ready(Err(e.into())));
            }
            if absolute_form {
                req.headers_mut().remove(HOST);
            }
            *req.version_mut() = Version::HTTP_2;
        }
        Either::Right(self.inner.call(req))
    }
}

/// Inbound, first thing after the connection: restores an HTTP/1 request carried over HTTP/2.
#[derive(Clone, Debug)]
pub struct Downgrade<S> {
    inner: S,
}

impl<S> Downgrade<S> {
    /// Restores carried requests before `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S> tower::Service<Request<Body>> for Downgrade<S>
where
    S: tower::Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> S::Future {
        if let Some(orig) = req.headers_mut().remove(ORIG_PROTO) {
            *req.version_mut() = if orig == "HTTP/1.0" {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            if !req.headers().contains_key(HOST)
                && let Some(authority) = req.uri().authority()
                && let Ok(v) = HeaderValue::from_str(authority.as_str())
            {
                req.headers_mut().insert(HOST, v);
            }
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;
    use crate::http::classify::empty_body;

    /// What the inner service saw: version, URI, Host and the mark.
    fn seen(req: &Request<Body>) -> (Version, String, Option<String>, Option<String>) {
        let h = |n| {
            req.headers()
                .get(n)
                .map(|v: &HeaderValue| v.to_str().unwrap().to_string())
        };
        (req.version(), req.uri().to_string(), h(HOST), h(ORIG_PROTO))
    }

    #[tokio::test]
    async fn http1_goes_over_h2_marked_and_comes_back_as_it_was() {
        let echo = tower::service_fn(|req: Request<Body>| async move { Ok::<_, BoxError>(req) });
        let req = Request::get("/a?b=c")
            .version(Version::HTTP_11)
            .header(HOST, "api.demo")
            .body(empty_body())
            .unwrap();
        let carried = Upgrade::new(echo, Arc::from("10.0.0.1:80"))
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(
            seen(&carried),
            (
                Version::HTTP_2,
                "http://api.demo/a?b=c".into(),
                Some("api.demo".into()),
                Some("HTTP/1.1".into())
            )
        );
        let restored = Downgrade::new(echo).oneshot(carried).await.unwrap();
        assert_eq!(
            seen(&restored),
            (
                Version::HTTP_11,
                "http://api.demo/a?b=c".into(),
                Some("api.demo".into()),
                None
            )
        );

        // In absolute form the authority wins over a Host that differs.
        let req = Request::get("http://api.demo/x")
            .header(HOST, "elsewhere.test")
            .body(empty_body())
            .unwrap();
        let carried = Upgrade::new(echo, Arc::from("x:1"))
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(seen(&carried).2, None);
        let restored = Downgrade::new(echo).oneshot(carried).await.unwrap();
        assert_eq!(seen(&restored).2.as_deref(), Some("api.demo"));

        // HTTP/2 passes as it is; so does a request that was never carried.
        let req = Request::get("http://api.demo/")
            .version(Version::HTTP_2)
            .body(empty_body())
            .unwrap();
        let out = Upgrade::new(echo, Arc::from("x:1"))
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(seen(&out).3, None);
        let out = Downgrade::new(echo).oneshot(out).await.unwrap();
        assert_eq!(seen(&out).0, Version::HTTP_2);
    }

    #[tokio::test]
    async fn a_host_that_is_no_authority_fails_as_the_callers_fault() {
        let echo = tower::service_fn(|req: Request<Body>| async move { Ok::<_, BoxError>(req) });
        let req = Request::get("/")
            .header(HOST, "not a host")
            .body(empty_body())
            .unwrap();
        let e = Upgrade::new(echo, Arc::from("x:1"))
            .oneshot(req)
            .await
            .unwrap_err();
        let e = HttpError::from_box(e);
        assert_eq!((e.who(), e.retry_safe()), (Who::Caller, RetrySafe::No));
    }
}
