//! Hop-by-hop headers (RFC 9110 section 7.6.1) belong to one connection: [`Strip`] removes
//! them from each request on its way in and from each response on its way out, keeping
//! `te: trailers`, which gRPC needs end to end. An upgrade request keeps its `Connection` and
//! `Upgrade` headers, and so does the `101 Switching Protocols` answering it: they are what
//! the next hop acts on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};

use super::{Body, is_upgrade};

/// Removes hop-by-hop headers, keeping `te: trailers`.
pub fn strip(headers: &mut HeaderMap) {
    // Names listed in `Connection` are removed one by one; most requests list none.
    if let Some(v) = headers.get(header::CONNECTION) {
        let listed = headers.get_all(header::CONNECTION).iter().count() > 1
            || v.as_bytes().contains(&b',')
            || !is_standard_token(v);
        if listed {
            let names: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .collect();
            for name in names {
                headers.remove(name);
            }
        }
    }
    for name in [
        header::CONNECTION,
        header::UPGRADE,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    if let Some(te) = headers.get(header::TE) {
        let trailers = te.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
        if !(trailers && te.as_bytes().eq_ignore_ascii_case(b"trailers")) {
            headers.remove(header::TE);
            if trailers {
                headers.insert(header::TE, HeaderValue::from_static("trailers"));
            }
        }
    }
}

/// `Connection: keep-alive` or `close` name no other header (and are removed below anyway).
fn is_standard_token(v: &HeaderValue) -> bool {
    let v = v.as_bytes();
    v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
}

/// The layer. See the module docs.
#[derive(Clone, Debug)]
pub struct Strip<S> {
    inner: S,
}

impl<S> Strip<S> {
    /// Strips the requests to `inner` and its responses.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S> tower::Service<Request<Body>> for Strip<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = StripFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        if !is_upgrade(&req) {
            strip(req.headers_mut());
        }
        StripFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Strip`]'s future: strips the response.
    pub struct StripFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, E> Future for StripFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut rsp = ready!(self.project().inner.poll(cx))?;
        if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
            strip(rsp.headers_mut());
        }
        Poll::Ready(Ok(rsp))
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip(&mut h);
        assert!(h.get("x-private").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "yes");

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("x-one"));
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip(&mut h);
        assert!(h.get("x-one").is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip(&mut h);
        assert!(h.get(header::TE).is_none());
    }

    /// The layer strips both ways, and leaves an upgrade's headers to the next hop.
    #[tokio::test]
    async fn the_layer_strips_requests_and_responses_but_not_upgrades() {
        let inner = tower::service_fn(|req: Request<Body>| async move {
            let seen = req.headers().contains_key("x-private")
                || req.headers().contains_key(header::CONNECTION);
            let status = if req.headers().contains_key(header::UPGRADE) {
                StatusCode::SWITCHING_PROTOCOLS
            } else {
                StatusCode::OK
            };
            let rsp = Response::builder()
                .status(status)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "websocket")
                .header("x-seen", if seen { "yes" } else { "no" })
                .body(crate::http::classify::empty_body())
                .unwrap();
            Ok::<_, std::convert::Infallible>(rsp)
        });
        let req = Request::get("/")
            .header(header::CONNECTION, "x-private")
            .header("x-private", "1")
            .body(crate::http::classify::empty_body())
            .unwrap();
        let rsp = Strip::new(inner).oneshot(req).await.unwrap();
        assert_eq!(rsp.headers()["x-seen"], "no");
        assert!(rsp.headers().get(header::UPGRADE).is_none());

        let req = Request::get("/")
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .body(crate::http::classify::empty_body())
            .unwrap();
        let rsp = Strip::new(inner).oneshot(req).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(rsp.headers()["x-seen"], "yes");
        assert_eq!(rsp.headers()[header::UPGRADE], "websocket");
    }
}
