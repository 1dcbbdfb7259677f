//! Resilience of routed calls, end to end through a real proxy pair on the local platform,
//! with the routes in the mesh file: request and per-attempt timeouts answer 504 without
//! closing the caller's connection, and a gRPC caller's `grpc-timeout` is honoured (the
//! shorter deadline wins) and passed on, reduced to what is left.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use weft_proxy::http::timeout::parse_grpc_timeout;
use weft_tests::{TestMesh, WAIT, WorkloadDecl, backends, upstream};

/// `/held` (which the backend never answers) with a 300 ms request timeout; `/try/...`
/// rewritten to `/held` with a 300 ms per-attempt timeout inside a 10 s call; `/echo/...` to
/// the echo backend within 1 s; gRPC calls to `pkg.Held` rewritten to `/held`, with no
/// timeout of their own; everything else without a timeout.
const ROUTES: &str = r#"
[policy]
default_inbound = "allow"

[[routes.http]]
name = "web"
namespace = "test"
parent_refs = [{ name = "web" }]

[[routes.http.rules]]
matches = [{ path = { type = "Exact", value = "/held" } }]
timeouts = { request = "300ms" }

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/try" } }]
filters = [{ type = "URLRewrite", url_rewrite = { path = { type = "ReplaceFullPath", replace_full_path = "/held" } } }]
timeouts = { request = "10s", backend_request = "300ms" }

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/pkg.Held" } }]
filters = [{ type = "URLRewrite", url_rewrite = { path = { type = "ReplaceFullPath", replace_full_path = "/held" } } }]

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/echo" } }]
backend_refs = [{ name = "echo" }]
timeouts = { request = "1s" }

[[routes.http.rules]]
backend_refs = [{ name = "web" }]
"#;

struct Lab {
    _mesh: TestMesh,
    client: weft_proxy::Proxy,
    _servers: Vec<weft_proxy::Proxy>,
}

async fn lab() -> Lab {
    let (held, _release, _arrived) = backends::http_gated("web").await;
    let echo = backends::http_echo("echo").await;
    let web = WorkloadDecl::serving("web", "web");
    let echo_decl = WorkloadDecl::serving("echo", "echo");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[web.clone(), echo_decl.clone(), load.clone()], ROUTES).await;
    let s1 = mesh.proxy(&web, Some(held.port()), &[]).await;
    let s2 = mesh.proxy(&echo_decl, Some(echo.port()), &[]).await;
    let client = mesh.proxy(&load, None, &["web"]).await;
    Lab {
        _mesh: mesh,
        client,
        _servers: vec![s1, s2],
    }
}

type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn get(send: &mut H1, path: &str) -> (StatusCode, http::HeaderMap, String) {
    send.ready().await.unwrap();
    let req = Request::get(path)
        .header("host", "web.test")
        .body(Empty::new())
        .unwrap();
    // Bounded: a timeout that never fires fails the test instead of hanging it.
    let rsp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .unwrap_or_else(|_| panic!("no answer to {path}"))
        .unwrap();
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Both timeouts answer 504 once they have passed, on the caller's one keep-alive connection,
/// which then carries the next call; a call within its timeout is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_attempt_timeouts_answer_504_and_keep_the_callers_connection() {
    let lab = lab().await;
    let up = upstream(&lab.client, "web");
    let tcp = TcpStream::connect(up).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);

    // Warm: the route is in force, and the path without a timeout answers.
    let (status, headers, body) = get(&mut send, "/fast").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-backend"], "web");

    for path in ["/held", "/try/again"] {
        let started = Instant::now();
        let (status, headers, body) = get(&mut send, path).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{path}: {body}");
        assert!(took >= Duration::from_millis(300), "{path} after {took:?}");
        assert!(
            headers["weft-proxy-error"]
                .to_str()
                .unwrap()
                .contains("deadline"),
            "{headers:?}"
        );
        // The same connection goes on.
        let (status, _, body) = get(&mut send, "/fast").await;
        assert_eq!(status, StatusCode::OK, "after {path}: {body}");
    }
    // Within its timeout: answered.
    let (status, headers, _) = get(&mut send, "/echo/x").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-backend"], "echo");
}

/// A gRPC call (HTTP/2, `application/grpc`) that states `grpc-timeout`.
fn grpc_call(path: &str, timeout: &'static str) -> Request<Empty<Bytes>> {
    Request::post(format!("http://web.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(Empty::new())
        .unwrap()
}

/// The caller's `grpc-timeout` bounds a call whose route sets no timeout: `DEADLINE_EXCEEDED`
/// in a trailers-only answer once it has passed. Where the route's timeout is shorter, the
/// server is told what is left of that instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_deadlines_are_honoured_and_passed_on_reduced() {
    let lab = lab().await;
    let up = upstream(&lab.client, "web");
    let tcp = TcpStream::connect(up).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);

    let started = Instant::now();
    let rsp = tokio::time::timeout(WAIT, send.send_request(grpc_call("/pkg.Held/Call", "250m")))
        .await
        .expect("the deadline never came")
        .unwrap();
    let took = started.elapsed();
    assert_eq!(rsp.status(), StatusCode::OK, "gRPC answers in trailers");
    assert_eq!(rsp.headers()["grpc-status"], "4", "{:?}", rsp.headers());
    assert!(took >= Duration::from_millis(250), "after {took:?}");

    // The route's 1 s is shorter than the caller's 10 s: the server sees at most 1 s left.
    send.ready().await.unwrap();
    let rsp = send
        .send_request(grpc_call("/echo/pkg.Echo/Call", "10S"))
        .await
        .unwrap();
    assert_eq!(rsp.headers()["x-backend"], "echo");
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    let stated = body
        .lines()
        .find_map(|l| l.strip_prefix("grpc-timeout: "))
        .unwrap_or_else(|| panic!("no grpc-timeout reached the server: {body}"));
    let left = parse_grpc_timeout(&stated.parse().unwrap()).unwrap();
    assert!(
        left > Duration::ZERO && left <= Duration::from_secs(1),
        "{stated}"
    );
    // The same stream connection carries on.
    send.ready().await.unwrap();
    let rsp = send
        .send_request(grpc_call("/echo/pkg.Echo/Call", "5S"))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
}
