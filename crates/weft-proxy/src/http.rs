//! HTTP pieces shared by the inbound and outbound sides: body type, hop-by-hop headers, error
//! responses, connection upgrades, response classification, and the pool of plaintext
//! connections to the application and to unmeshed endpoints ([`pool`]).

pub mod pool;

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

pub use pool::{PlainPool, PoolError, PoolLimits};

/// The body type every proxied message carries.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Boxed errors on the data path.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Set by the outbound proxy when it carries an HTTP/1 request over HTTP/2 to a peer proxy, so
/// the inbound proxy hands it to the application as HTTP/1 again. Never leaves the mesh.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("weft-orig-proto");

/// Names the proxy error behind a synthetic response.
pub const PROXY_ERROR: HeaderName = HeaderName::from_static("weft-proxy-error");

/// Wraps any body into [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
{
    UnsyncBoxBody::new(body)
}

/// A response made by the proxy itself.
pub fn error_response(status: StatusCode, reason: &str) -> Response<Body> {
    let mut rsp = Response::new(UnsyncBoxBody::new(
        Full::new(Bytes::from(format!("{reason}\n"))).map_err(|e: Infallible| match e {}),
    ));
    *rsp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(reason) {
        rsp.headers_mut().insert(PROXY_ERROR, v);
    }
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

/// Whether the request asks to take the connection over (WebSocket and other HTTP/1.1
/// upgrades, or CONNECT).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    if req.method() == http::Method::CONNECT {
        return true;
    }
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers (RFC 9110 section 7.6.1), keeping `te: trailers`, which gRPC
/// needs end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
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
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether a response counts as a failure: 5xx, or a gRPC error status in its headers
/// (trailers-only responses).
pub fn is_failure<B>(rsp: &Response<B>) -> bool {
    if rsp.status().is_server_error() {
        return true;
    }
    rsp.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "0")
}

/// Once both sides of an upgrade have switched protocols, copies bytes between them until
/// either closes. The copy is one of the proxy's connections: a drain waits for it and closes
/// it at the grace deadline.
pub fn splice_upgrades(downstream: OnUpgrade, upstream: OnUpgrade, shared: &crate::Shared) {
    let closing = shared.closing.clone();
    shared.connections.spawn(async move {
        let splice = async move {
            let (down, up) = match tokio::try_join!(downstream, upstream) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            let mut down = TokioIo::new(down);
            let mut up = TokioIo::new(up);
            if let Err(e) = crate::splice::splice(&mut down, &mut up).await {
                tracing::debug!(error = %e, "upgraded connection closed with an error");
            }
        };
        tokio::select! {
            () = splice => {}
            () = closing.cancelled() => {}
        }
    });
}

/// A response body that reports once how the response ended: `true` if its trailers carry a
/// gRPC error status or the body failed. A body dropped early reports `false`: the headers
/// already said what there was to say.
pub struct ObservedBody {
    inner: Body,
    done: Option<Box<dyn FnOnce(bool) + Send>>,
}

impl std::fmt::Debug for ObservedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObservedBody")
    }
}

impl ObservedBody {
    /// Wraps `inner`; `done` runs once, at the end.
    pub fn new(inner: Body, done: impl FnOnce(bool) + Send + 'static) -> Self {
        Self {
            inner,
            done: Some(Box::new(done)),
        }
    }

    fn finish(&mut self, failed: bool) {
        if let Some(done) = self.done.take() {
            done(failed);
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.finish(false);
    }
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let failed = trailers
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v != "0");
                    self.finish(failed);
                }
            }
            std::task::Poll::Ready(Some(Err(_))) => self.finish(true),
            std::task::Poll::Ready(None) => self.finish(false),
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Sends an upgrade request over a fresh HTTP/1.1 connection `io`; if the server switches
/// protocols, splices the two upgraded connections.
pub async fn forward_upgrade<T>(
    mut req: Request<Body>,
    io: T,
    shared: &crate::Shared,
) -> Result<Response<Body>, BoxError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let downstream = req.extensions_mut().remove::<OnUpgrade>();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection failed");
        }
    });
    let mut rsp = send.send_request(req).await?;
    if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut rsp);
        match downstream {
            Some(down) => splice_upgrades(down, upstream, shared),
            None => return Err("the client connection cannot be upgraded".into()),
        }
    }
    Ok(rsp.map(boxed))
}

/// Makes the URI absolute (`http://authority/path`), as HTTP/2 needs, taking the authority from
/// the Host header when the client sent origin form, else `fallback`.
pub fn absolute_uri<B>(req: &mut Request<B>, fallback: &str) -> Result<(), http::Error> {
    if req.uri().authority().is_some() {
        return Ok(());
    }
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or(fallback)
        .to_string();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    *req.uri_mut() = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(pq)
        .build()?;
    Ok(())
}

#[cfg(test)]
mod tests {
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
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-private").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "yes");
    }

    #[test]
    fn upgrades_are_recognised() {
        let req = Request::builder()
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(is_upgrade(&req));
        let req = Request::builder()
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(!is_upgrade(&req));
    }

    #[test]
    fn failures_are_classified() {
        let ok = Response::builder().status(200).body(()).unwrap();
        assert!(!is_failure(&ok));
        let bad = Response::builder().status(503).body(()).unwrap();
        assert!(is_failure(&bad));
        let grpc = Response::builder()
            .status(200)
            .header("grpc-status", "14")
            .body(())
            .unwrap();
        assert!(is_failure(&grpc));
    }
}
