//! Response classification: whether a response counts as a failure, from its status, a gRPC
//! status in its headers (a trailers-only response) or in its trailers.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::{BodyExt, Empty};

use super::Body;

/// Whether a response counts as a failure by its head: 5xx, or a gRPC error status in its
/// headers (trailers-only responses).
pub fn is_failure<B>(rsp: &Response<B>) -> bool {
    rsp.status().is_server_error() || grpc_failed(rsp.headers())
}

/// The header (or trailer) a gRPC status is sent in; a constant, so that a lookup does not
/// parse the name each time.
pub const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// Whether `headers` (a response's, or its trailers) carry a gRPC status other than OK.
pub fn grpc_failed(headers: &HeaderMap) -> bool {
    headers
        .get(GRPC_STATUS)
        .is_some_and(|v| v.as_bytes() != b"0")
}

/// An empty body.
pub fn empty_body() -> Body {
    Body::new(Empty::<Bytes>::new().map_err(|e: Infallible| match e {}))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let grpc_ok = Response::builder()
            .status(200)
            .header("grpc-status", "0")
            .body(())
            .unwrap();
        assert!(!is_failure(&grpc_ok));
    }
}
