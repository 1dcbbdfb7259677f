//! HTTP pieces shared by the inbound and outbound sides: the body type, the layers both
//! stacks use ([`hop_by_hop`], [`orig_proto`], [`metered`]), connection upgrades
//! ([`upgrade`]), response classification ([`classify`]), and the pool of plaintext
//! connections to the application and to unmeshed endpoints ([`pool`], with [`resend`]
//! sending again what a pool connection handed back unsent).

pub mod classify;
pub mod fault;
pub mod hop_by_hop;
pub mod limit;
pub mod metered;
pub mod orig_proto;
pub mod pool;
pub mod resend;
pub mod retry;
pub mod timeout;
pub mod upgrade;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::uri::{Authority, Scheme};
use http::{Request, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;

pub use pool::{PlainPool, PoolError, PoolLimits};

/// The body type every proxied message carries. Its error is ours to make, so that the proxy
/// can fail a body halfway (a deadline that passes mid-response resets the stream).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Boxed errors on the data path; the stacks' errors are [`crate::errors::HttpError`]s.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Set by the outbound proxy when it carries an HTTP/1 request over HTTP/2 to a peer proxy, so
/// the inbound proxy hands it to the application as HTTP/1 again. Never leaves the mesh.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("weft-orig-proto");

/// Names the proxy error behind a synthetic response (only to trusted callers).
pub const PROXY_ERROR: HeaderName = HeaderName::from_static("weft-proxy-error");

/// Wraps a body whose error is not ours (hyper's `Incoming`, say) into [`Body`], mapping its
/// error; a body whose error already is [`BoxError`] goes in with `Body::new`, without the
/// mapping layer.
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    UnsyncBoxBody::new(http_body_util::BodyExt::map_err(body, Into::into))
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

/// Makes the URI absolute (`http://authority/path`), as HTTP/2 needs, taking the authority from
/// the Host header when the client sent origin form, else `fallback`. The path is moved, not
/// copied: one allocation, for the authority.
pub fn absolute_uri<B>(req: &mut Request<B>, fallback: &str) -> Result<(), http::Error> {
    if req.uri().authority().is_some() {
        return Ok(());
    }
    let authority = match req.headers().get(header::HOST) {
        Some(host) => Authority::from_maybe_shared(Bytes::copy_from_slice(host.as_bytes()))?,
        None => Authority::from_maybe_shared(Bytes::copy_from_slice(fallback.as_bytes()))?,
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).map_err(http::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn origin_form_becomes_absolute_with_the_host() {
        let mut req = Request::get("/a/b?c=d")
            .header(header::HOST, "api.demo:8080")
            .body(())
            .unwrap();
        absolute_uri(&mut req, "10.0.0.1:80").unwrap();
        assert_eq!(req.uri(), "http://api.demo:8080/a/b?c=d");

        let mut req = Request::get("/").body(()).unwrap();
        absolute_uri(&mut req, "10.0.0.1:80").unwrap();
        assert_eq!(req.uri(), "http://10.0.0.1:80/");

        let mut req = Request::get("/")
            .header(header::HOST, "bad host")
            .body(())
            .unwrap();
        assert!(absolute_uri(&mut req, "10.0.0.1:80").is_err());
    }
}
