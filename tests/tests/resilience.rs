//! Resilience of routed calls, end to end through a real proxy pair on the local platform,
//! with the routes in the mesh file: request and per-attempt timeouts answer 504 without
//! closing the caller's connection and cut a response body that stalls, a gRPC caller's `grpc-timeout` is honoured (the shorter
//! deadline wins) and passed on, reduced to what is left; retries mask failures for
//! idempotent calls only, never replay a body over 64 KiB, and stop when the budget is spent.

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

/// A mesh file that admits every mesh client and gives service `service` (namespace `test`)
/// one HTTP route, named after it, with `rules` (`[[routes.http.rules]]` tables).
fn routes_of(service: &str, rules: &str) -> String {
    format!(
        "[policy]\ndefault_inbound = \"allow\"\n\n[[routes.http]]\nname = \"{service}\"\n\
         namespace = \"test\"\nparent_refs = [{{ name = \"{service}\" }}]\n{rules}"
    )
}

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
    let mesh = TestMesh::start(
        &[web.clone(), echo_decl.clone(), load.clone()],
        &routes_of("web", ROUTES),
    )
    .await;
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

/// Service `flaky` answers 503 (or 429) to the first two requests for each path and query.
/// Its route retries those twice, or once under `/once`, with a 1 ms backoff.
const FLAKY_ROUTES: &str = r#"
[[routes.http.rules]]
name = "once"
matches = [{ path = { type = "PathPrefix", value = "/once" } }]
retry = { codes = [503, 429], attempts = 1, backoff = "1ms" }

[[routes.http.rules]]
name = "twice"
retry = { codes = [503, 429], attempts = 2, backoff = "1ms" }
"#;

struct Flaky {
    _mesh: TestMesh,
    client: weft_proxy::Proxy,
    tally: std::sync::Arc<backends::Tally>,
    _server: weft_proxy::Proxy,
}

async fn flaky(status: u16) -> Flaky {
    let (app, tally) = backends::http_echo_failing("flaky", 2, status).await;
    let flaky = WorkloadDecl::serving("flaky", "flaky");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(
        &[flaky.clone(), load.clone()],
        &routes_of("flaky", FLAKY_ROUTES),
    )
    .await;
    let server = mesh.proxy(&flaky, Some(app.port()), &[]).await;
    let client = mesh.proxy(&load, None, &["flaky"]).await;
    Flaky {
        _mesh: mesh,
        client,
        tally,
        _server: server,
    }
}

impl Flaky {
    /// One call through the client's proxy: its status.
    async fn call(&self, method: &str, path: &str, body: Bytes) -> StatusCode {
        let up = upstream(&self.client, "flaky");
        let c = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<http_body_util::Full<Bytes>>();
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{up}{path}"))
            .header("host", "flaky.test")
            .body(http_body_util::Full::new(body))
            .unwrap();
        let rsp = tokio::time::timeout(WAIT, c.request(req))
            .await
            .unwrap()
            .unwrap();
        let status = rsp.status();
        rsp.into_body().collect().await.unwrap();
        status
    }

    /// Requests the backend received for `target`.
    fn received(&self, target: &str) -> u32 {
        self.tally.targets().get(target).copied().unwrap_or(0)
    }

    async fn metric(&self, name: &str, rule: &str) -> f64 {
        let (_, text) = weft_tests::admin_get(self.client.admin_addr, "GET", "/metrics").await;
        let rule = format!("rule=\"{rule}\"");
        weft_tests::metric(&text, name, &["route=\"test/flaky\"", &rule])
    }
}

/// A GET that fails twice is answered by its third attempt; a POST is not sent again on a
/// 503; a PUT with a body over 64 KiB goes once, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_mask_failures_for_idempotent_calls_only() {
    let f = flaky(503).await;
    assert_eq!(f.call("GET", "/get", Bytes::new()).await, StatusCode::OK);
    assert_eq!(f.received("/get"), 3);
    assert_eq!(f.metric("weft_route_retries_total", "twice").await, 2.0);

    // A PUT (idempotent) with a small body: its body goes again with it.
    assert_eq!(
        f.call("PUT", "/put", Bytes::from_static(b"state")).await,
        StatusCode::OK
    );
    assert_eq!(f.received("/put"), 3);

    // A POST may have paid out: not sent again on a status.
    assert_eq!(
        f.call("POST", "/pay", Bytes::from_static(b"1 EUR")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(f.received("/pay"), 1);

    // A body over 64 KiB is not kept for replay: one attempt, and the backend got it whole.
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    assert_eq!(
        f.call("PUT", "/big", big).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(f.received("/big"), 1);
    assert_eq!(f.metric("weft_route_retries_total", "twice").await, 4.0);
}

/// Requests that always fail spend the budget (its reserve of 10 a second over 10 s and 20 %
/// of the requests), after which they go once; each refusal is counted. The failures are
/// 429s, which failure accrual does not count: it would eject the only endpoint after seven
/// 5xx in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_when_the_budget_is_spent() {
    let f = flaky(429).await;
    let calls = 300;
    for i in 0..calls {
        // Each path fails twice: the first attempt and its one retry both get 429.
        let status = f.call("GET", &format!("/once/{i}"), Bytes::new()).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    }
    let retries = f.metric("weft_route_retries_total", "once").await;
    let refused = f
        .metric("weft_route_retry_budget_exhausted_total", "once")
        .await;
    assert_eq!(retries + refused, f64::from(calls), "every call asked once");
    // 100 in reserve and 20 % of 300, plus what the seconds this took gave back.
    assert!((150.0..=250.0).contains(&retries), "{retries} retries");
    assert!(refused > 0.0);
    let hits: u32 = (0..calls).map(|i| f.received(&format!("/once/{i}"))).sum();
    assert_eq!(f64::from(hits), f64::from(calls) + retries);
}

/// Service `web` (an echo backend) with injected faults: under `/abort`, 503 for half the
/// attempts of callers in `test/load` only; under `/masked`, 503 for a tenth of the attempts,
/// which up to eight retries mask (a call fails 1 in 10^9); under `/slow`, a 5 s delay that
/// a 200 ms timeout cuts.
const FAULT_ROUTES: &str = r#"
[[routes.http.rules]]
name = "abort"
matches = [{ path = { type = "PathPrefix", value = "/abort" } }]
fault = { abort = { http_status = 503, percent = 50 }, sources = ["test/load"] }

[[routes.http.rules]]
name = "masked"
matches = [{ path = { type = "PathPrefix", value = "/masked" } }]
fault = { abort = { http_status = 503, percent = 10 } }
retry = { codes = [503], attempts = 8, backoff = "1ms" }

[[routes.http.rules]]
name = "slow"
matches = [{ path = { type = "PathPrefix", value = "/slow" } }]
fault = { delay = { fixed = "5s" } }
timeouts = { request = "200ms" }
"#;

/// Faults land at their share for the callers named and for no one else; retries mask them
/// within the budget; a timeout cuts an injected delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_hit_the_named_callers_at_their_share_inside_retries_and_timeouts() {
    let app = backends::http_echo("web").await;
    let web = WorkloadDecl::serving("web", "web");
    let load = WorkloadDecl::client("load");
    let other = WorkloadDecl::client("other");
    let mesh = TestMesh::start(
        &[web.clone(), load.clone(), other.clone()],
        &routes_of("web", FAULT_ROUTES),
    )
    .await;
    let _server = mesh.proxy(&web, Some(app.port()), &[]).await;
    let load = mesh.proxy(&load, None, &["web"]).await;
    let other = mesh.proxy(&other, None, &["web"]).await;
    let http = weft_tests::http_client();
    let statuses = async |proxy: &weft_proxy::Proxy, path: &str, n: usize| {
        let up = upstream(proxy, "web");
        let mut out = std::collections::HashMap::<u16, usize>::new();
        for _ in 0..n {
            let (status, ..) = weft_tests::get_through(&http, up, path).await;
            *out.entry(status.as_u16()).or_default() += 1;
        }
        out
    };

    // Half of load's calls, within 8 points over 1,000 (five standard deviations).
    let seen = statuses(&load, "/abort", 1000).await;
    let aborted = seen.get(&503).copied().unwrap_or(0);
    assert!((420..=580).contains(&aborted), "{seen:?}");
    assert_eq!(
        aborted + seen.get(&200).copied().unwrap_or(0),
        1000,
        "{seen:?}"
    );
    // None of another caller's.
    assert_eq!(statuses(&other, "/abort", 200).await, [(200, 200)].into());

    // A tenth of the attempts fail, and the retries answer every call.
    assert_eq!(statuses(&load, "/masked", 200).await, [(200, 200)].into());
    let (_, text) = weft_tests::admin_get(load.admin_addr, "GET", "/metrics").await;
    let retries = weft_tests::metric(
        &text,
        "weft_route_retries_total",
        &["route=\"test/web\"", "rule=\"masked\""],
    );
    assert!(
        retries > 0.0,
        "the aborts were injected and masked: {retries}"
    );

    // The request timeout cuts the 5 s delay.
    let started = Instant::now();
    let (status, ..) = weft_tests::get_through(&http, upstream(&load, "web"), "/slow").await;
    let took = started.elapsed();
    // Both in one message: a 200 after 5 s (the deadline missed) and a quick 200 (the rule
    // not applied) are different failures.
    assert!(
        status == StatusCode::GATEWAY_TIMEOUT
            && took >= Duration::from_millis(200)
            && took < Duration::from_secs(4),
        "{status} after {took:?}"
    );
}

/// `web` splits evenly with `web-v2`, whose one endpoint answers every request with 503.
const SPLIT_ROUTES: &str = r#"
[[routes.http.rules]]
backend_refs = [{ name = "web", weight = 50 }, { name = "web-v2", weight = 50 }]
"#;

/// Calls `/` through the split at `up` until `n` calls have failed with 503 (half the calls go
/// to the failing backend; bounded at 200 calls).
async fn split_until_failed(
    http: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Empty<Bytes>,
    >,
    up: std::net::SocketAddr,
    n: usize,
) {
    let mut failed = 0;
    for _ in 0..200 {
        let (status, ..) = weft_tests::get_through(http, up, "/").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            failed += 1;
            if failed == n {
                return;
            }
        }
    }
    panic!("only {failed} of {n} failures in 200 calls");
}

/// Failure accrual: seven 5xx in a row eject web-v2's only endpoint, and the split then
/// sends web-v2's share to web instead of failing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_backend_whose_endpoints_are_all_ejected_loses_its_share() {
    let v1 = backends::http_echo("web").await;
    let (v2, v2_tally) = backends::http_echo_failing("web-v2", u32::MAX, 503).await;
    let web = WorkloadDecl::serving("web", "web");
    let web_v2 = WorkloadDecl::serving("web-v2", "web-v2");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(
        &[web.clone(), web_v2.clone(), load.clone()],
        &routes_of("web", SPLIT_ROUTES),
    )
    .await;
    let _s1 = mesh.proxy(&web, Some(v1.port()), &[]).await;
    let _s2 = mesh.proxy(&web_v2, Some(v2.port()), &[]).await;
    let client = mesh.proxy(&load, None, &["web"]).await;
    let http = weft_tests::http_client();
    let up = upstream(&client, "web");

    // Until web-v2 has failed seven times in a row (bounded: half the calls go there).
    split_until_failed(&http, up, 7).await;
    let reached = v2_tally.answered();
    // Ejected: every call goes to web. The first penalty lasts at least half a second; should
    // this loop outlast it on a slow machine, one probe may reach web-v2 and fail.
    let mut statuses = std::collections::HashMap::<(u16, String), usize>::new();
    for _ in 0..50 {
        let (status, backend, _) = weft_tests::get_through(&http, up, "/").await;
        *statuses.entry((status.as_u16(), backend)).or_default() += 1;
    }
    let to_web = statuses.get(&(200, "web".into())).copied().unwrap_or(0);
    assert!(to_web >= 49, "{statuses:?}");
    assert!(v2_tally.answered() - reached <= 1, "at most one probe");
}

/// `/held` (which the backend answers only when the test lets it) takes at most two calls
/// in flight and none waiting.
const LIMIT_ROUTES: &str = r#"
[[routes.http.rules]]
name = "held"
matches = [{ path = { type = "Exact", value = "/held" } }]
limits = { max_in_flight = 2 }

[[routes.http.rules]]
backend_refs = [{ name = "web" }]
"#;

/// Past its concurrency limit a rule refuses a call at once with 503 and the reason; a place
/// comes free when a response ends, and other rules are not limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_over_its_concurrency_limit_refuses_at_once() {
    let (held, release, _arrived) = backends::http_gated("web").await;
    let web = WorkloadDecl::serving("web", "web");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(
        &[web.clone(), load.clone()],
        &routes_of("web", LIMIT_ROUTES),
    )
    .await;
    let _server = mesh.proxy(&web, Some(held.port()), &[]).await;
    let client = mesh.proxy(&load, None, &["web"]).await;
    let up = upstream(&client, "web");
    let http = weft_tests::http_client();
    let in_flight: Vec<_> = (0..2)
        .map(|_| {
            let http = http.clone();
            tokio::spawn(async move { weft_tests::get_through(&http, up, "/held").await.0 })
        })
        .collect();
    // Both calls are out (the rule's metrics count them), held by the backend.
    weft_tests::wait_metric(
        client.admin_addr,
        "weft_route_requests_total",
        &["route=\"test/web\"", "rule=\"held\""],
        2.0,
    )
    .await;
    let started = Instant::now();
    let rsp = http
        .request(
            Request::get(format!("http://{up}/held"))
                .header("host", "web.test")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let reason = rsp.headers()["weft-proxy-error"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("concurrency limit"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(5), "at once");
    // Other rules are not limited.
    let (status, ..) = weft_tests::get_through(&http, up, "/other").await;
    assert_eq!(status, StatusCode::OK);
    // The held calls end: their places come free, and a new call gets one.
    release.add_permits(3);
    for call in in_flight {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
    let (status, ..) = weft_tests::get_through(&http, up, "/held").await;
    assert_eq!(status, StatusCode::OK);
    let (_, text) = weft_tests::admin_get(client.admin_addr, "GET", "/metrics").await;
    let refused = weft_tests::metric(
        &text,
        "weft_route_limited_total",
        &["route=\"test/web\"", "rule=\"held\""],
    );
    assert_eq!(refused, 1.0);
}

/// `web` admits `load`, `load2` and `batch` (not `intruder`) at one request a minute with a
/// burst of 3, in one bucket for all; `batch` has a bucket of its own, with a burst of 6.
const RATE_POLICY: &str = r#"
[policy]
default_inbound = "deny"

[[policy.authorizations]]
service = "web.test"
allow = ["test/load", "test/load2", "test/batch"]

[[policy.rate_limits]]
service = "web.test"
requests_per_second = 0.0166
burst = 3

[[policy.rate_limits.overrides]]
clients = "test/batch"
requests_per_second = 0.0166
burst = 6
"#;

/// A server's rate limit: a burst, then 429 with `Retry-After`, in one bucket that clients on
/// different connections share; an override's bucket of its own; and a client that
/// authorization refuses spends no tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_rate_limits_are_the_servers_and_apply_after_authorization() {
    let app = backends::http_echo("web").await;
    let web = WorkloadDecl::serving("web", "web");
    let names = ["load", "load2", "batch", "intruder"];
    let clients: Vec<WorkloadDecl> = names.iter().map(|n| WorkloadDecl::client(n)).collect();
    let mut all = vec![web.clone()];
    all.extend(clients.iter().cloned());
    let mesh = TestMesh::start(&all, RATE_POLICY).await;
    let server = mesh.proxy(&web, Some(app.port()), &[]).await;
    let mut proxies = Vec::new();
    for c in &clients {
        proxies.push(mesh.proxy(c, None, &["web"]).await);
    }
    // A new client, and so a new connection, for every call: buckets are the server's, not a
    // connection's.
    let call = async |i: usize| {
        let up = upstream(&proxies[i], "web");
        let rsp = weft_tests::http_client()
            .request(
                Request::get(format!("http://{up}/"))
                    .header("host", "web.test")
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let after = rsp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        (rsp.status().as_u16(), after)
    };
    let (load, load2, batch, intruder) = (0, 1, 2, 3);

    // Refused by authorization: no token spent.
    for _ in 0..5 {
        assert_eq!(call(intruder).await.0, 403);
    }
    // Two calls of load and one of load2, each through its own proxy and connection, spend
    // the shared burst.
    for i in [load, load2, load] {
        assert_eq!(call(i).await, (200, None));
    }
    for i in [load, load2] {
        let (status, after) = call(i).await;
        assert_eq!(status, 429);
        assert!(after.is_some_and(|s| s >= 50), "{after:?}");
    }
    // The override's bucket is its own, and larger.
    for _ in 0..6 {
        assert_eq!(call(batch).await.0, 200);
    }
    assert_eq!(call(batch).await.0, 429);
    let (_, text) = weft_tests::admin_get(server.admin_addr, "GET", "/metrics").await;
    assert_eq!(
        weft_tests::metric(&text, "weft_inbound_rate_limited_total", &[]),
        3.0
    );
}

/// A server under `audit` admits what `allow` would, and counts (and logs) each client a
/// `deny` would have refused, so a tightening can be tried without refusing anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_admits_and_counts_what_a_deny_would_refuse() {
    let app = backends::http_echo("web").await;
    let web = WorkloadDecl::serving("web", "web");
    let load = WorkloadDecl::client("load");
    let other = WorkloadDecl::client("other");
    let policy = "[policy]\ndefault_inbound = \"audit\"\n\n[[policy.authorizations]]\n\
                  service = \"web.test\"\nallow = [\"test/load\"]\n";
    let mesh = TestMesh::start(&[web.clone(), load.clone(), other.clone()], policy).await;
    let server = mesh.proxy(&web, Some(app.port()), &[]).await;
    let load = mesh.proxy(&load, None, &["web"]).await;
    let other = mesh.proxy(&other, None, &["web"]).await;
    let http = weft_tests::http_client();
    for p in [&load, &other] {
        let (status, backend, _) = weft_tests::get_through(&http, upstream(p, "web"), "/").await;
        assert_eq!((status, backend.as_str()), (StatusCode::OK, "web"));
    }
    let (_, text) = weft_tests::admin_get(server.admin_addr, "GET", "/metrics").await;
    let audited = |who: &str| {
        let label = format!("client=\"spiffe://weft.test/ns/test/sa/{who}\"");
        weft_tests::metric(&text, "weft_inbound_authz_audited_total", &[&label])
    };
    assert!(audited("other") >= 1.0, "{text}");
    assert_eq!(audited("load"), 0.0, "named: plainly allowed");
    assert_eq!(
        weft_tests::metric(&text, "weft_inbound_authz_denied_total", &[]),
        0.0
    );
}

/// A route's rate limit (a limit with `to`) applies to the requests it matches, however
/// their path is spelled, and to no others; per identity, each client has its own bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_rate_limit_applies_to_its_requests_only() {
    let app = backends::http_echo("web").await;
    let web = WorkloadDecl::serving("web", "web");
    let load = WorkloadDecl::client("load");
    let load2 = WorkloadDecl::client("load2");
    let policy = "[policy]\ndefault_inbound = \"allow\"\n\n[[policy.rate_limits]]\n\
                  service = \"web.test\"\nrequests_per_second = 0.0166\nburst = 2\n\
                  per_identity = true\n\
                  to = [{ path = { type = \"PathPrefix\", value = \"/export\" } }]\n";
    let mesh = TestMesh::start(&[web.clone(), load.clone(), load2.clone()], policy).await;
    let server = mesh.proxy(&web, Some(app.port()), &[]).await;
    let load = mesh.proxy(&load, None, &["web"]).await;
    let load2 = mesh.proxy(&load2, None, &["web"]).await;
    let http = weft_tests::http_client();
    let status = async |p: &weft_proxy::Proxy, path: &str| {
        weft_tests::get_through(&http, upstream(p, "web"), path)
            .await
            .0
    };
    for path in ["/export/a", "/export"] {
        assert_eq!(status(&load, path).await, StatusCode::OK, "{path}");
    }
    for path in ["/export/b", "//export", "/x/../export"] {
        assert_eq!(
            status(&load, path).await,
            StatusCode::TOO_MANY_REQUESTS,
            "{path}"
        );
    }
    for _ in 0..5 {
        assert_eq!(
            status(&load, "/other").await,
            StatusCode::OK,
            "not the route"
        );
    }
    assert_eq!(
        status(&load2, "/export").await,
        StatusCode::OK,
        "load2's bucket"
    );
    let (_, text) = weft_tests::admin_get(server.admin_addr, "GET", "/metrics").await;
    assert_eq!(
        weft_tests::metric(&text, "weft_inbound_rate_limited_total", &[]),
        3.0
    );
}

/// A service's backend policy: its concurrency limit bounds every call to it from a caller's
/// proxy, routes or not (past it, 503 at once with the reason, counted by service), and a
/// place comes free when a response ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_concurrency_limit_bounds_every_call_to_it() {
    let (held, release, arrived) = backends::http_gated("web").await;
    let web = WorkloadDecl::serving("web", "web");
    let load = WorkloadDecl::client("load");
    let policy = "[policy]\ndefault_inbound = \"allow\"\n\n[[policy.backends]]\n\
                  service = \"web.test\"\nlimits = { max_in_flight = 1 }\n";
    let mesh = TestMesh::start(&[web.clone(), load.clone()], policy).await;
    let _server = mesh.proxy(&web, Some(held.port()), &[]).await;
    let client = mesh.proxy(&load, None, &["web"]).await;
    let http = weft_tests::http_client();
    let up = upstream(&client, "web");
    let first = {
        let http = http.clone();
        tokio::spawn(async move { weft_tests::get_through(&http, up, "/held").await.0 })
    };
    tokio::time::timeout(WAIT, arrived.notified())
        .await
        .unwrap();
    let rsp = http
        .request(
            Request::get(format!("http://{up}/other"))
                .header("host", "web.test")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let reason = rsp.headers()["weft-proxy-error"].to_str().unwrap();
    assert!(reason.contains("service's concurrency limit"), "{reason}");
    release.add_permits(1);
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    let (status, ..) = weft_tests::get_through(&http, up, "/other").await;
    assert_eq!(status, StatusCode::OK, "the place came free");
    let (_, text) = weft_tests::admin_get(client.admin_addr, "GET", "/metrics").await;
    assert_eq!(
        weft_tests::metric(
            &text,
            "weft_service_limited_total",
            &["service=\"web.test\""]
        ),
        1.0
    );
}

/// A service's backend policy sets its failure accrual: two 5xx in a row eject web-v2's only
/// endpoint (not seven), and the split sends its share to web.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_backend_policy_sets_its_failure_accrual() {
    let v1 = backends::http_echo("web").await;
    let (v2, v2_tally) = backends::http_echo_failing("web-v2", u32::MAX, 503).await;
    let web = WorkloadDecl::serving("web", "web");
    let web_v2 = WorkloadDecl::serving("web-v2", "web-v2");
    let load = WorkloadDecl::client("load");
    let policy = format!(
        "{}\n[[policy.backends]]\nservice = \"web-v2.test\"\n\
         failure_accrual = {{ consecutive_failures = 2, first_penalty = \"30s\" }}\n",
        routes_of("web", SPLIT_ROUTES)
    );
    let mesh = TestMesh::start(&[web.clone(), web_v2.clone(), load.clone()], &policy).await;
    let _s1 = mesh.proxy(&web, Some(v1.port()), &[]).await;
    let _s2 = mesh.proxy(&web_v2, Some(v2.port()), &[]).await;
    let client = mesh.proxy(&load, None, &["web"]).await;
    let http = weft_tests::http_client();
    let up = upstream(&client, "web");
    split_until_failed(&http, up, 2).await;
    // Ejected for at least 15 s: every call goes to web, and none reaches web-v2.
    let reached = v2_tally.answered();
    for _ in 0..50 {
        let (status, backend, _) = weft_tests::get_through(&http, up, "/").await;
        assert_eq!((status.as_u16(), backend.as_str()), (200, "web"));
    }
    assert_eq!(v2_tally.answered(), reached);
}

/// A retry goes to another endpoint where one is ready: of web's two endpoints one always
/// answers 503 (failure accrual is off, so it stays in rotation), and with one retry every
/// call succeeds, while without retries about half fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_goes_to_another_endpoint() {
    let good = backends::http_echo("good").await;
    let (bad, bad_tally) = backends::http_echo_failing("bad", u32::MAX, 503).await;
    let web_a = WorkloadDecl::serving("web-a", "web");
    let web_b = WorkloadDecl::serving("web-b", "web");
    let load = WorkloadDecl::client("load");
    let policy = format!(
        "{}\n[[policy.backends]]\nservice = \"web.test\"\n\
         failure_accrual = {{ consecutive_failures = 0 }}\n",
        routes_of(
            "web",
            "[[routes.http.rules]]\nname = \"retried\"\n\
             matches = [{ path = { type = \"PathPrefix\", value = \"/retried\" } }]\n\
             retry = { codes = [503], attempts = 1, backoff = \"1ms\" }\n\
             [[routes.http.rules]]\n"
        )
    );
    let mesh = TestMesh::start(&[web_a.clone(), web_b.clone(), load.clone()], &policy).await;
    let _a = mesh.proxy(&web_a, Some(good.port()), &[]).await;
    let _b = mesh.proxy(&web_b, Some(bad.port()), &[]).await;
    let client = mesh.proxy(&load, None, &["web"]).await;
    let http = weft_tests::http_client();
    let up = upstream(&client, "web");
    // Both endpoints are in rotation: calls without retries fail about half the time.
    let mut failed = 0;
    for _ in 0..100 {
        let (status, ..) = weft_tests::get_through(&http, up, "/plain").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            failed += 1;
        }
    }
    assert!((10..=90).contains(&failed), "{failed} of 100 failed");
    let before = bad_tally.answered();
    for i in 0..100 {
        let (status, backend, _) = weft_tests::get_through(&http, up, "/retried").await;
        assert_eq!(
            (status, backend.as_str()),
            (StatusCode::OK, "good"),
            "call {i}"
        );
    }
    assert!(
        bad_tally.answered() > before,
        "some first attempts went to the bad endpoint"
    );
}

/// A response that has begun is cut at the rule's deadline too: the backend sends its head
/// and part of a body, then stalls; the HTTP/1 caller gets the head, and its body fails once
/// the 300 ms request timeout has passed (the connection closed: HTTP/1 has no other way to
/// say a body is cut short), instead of waiting for as long as the backend stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_that_stalls_is_cut_at_the_deadline() {
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stalled.local_addr().unwrap();
    let (hold_tx, hold_rx) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = stalled.accept().await else {
                return;
            };
            let mut hold = hold_rx.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 4096];
                let mut read = Vec::new();
                while !read.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read.extend_from_slice(&buf[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npart";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                // Stalls until the test ends.
                let _ = hold.changed().await;
            });
        }
    });
    let slow = WorkloadDecl::serving("slow", "slow");
    let load = WorkloadDecl::client("load");
    let rules = "[[routes.http.rules]]\ntimeouts = { request = \"300ms\" }\n";
    let mesh = TestMesh::start(&[slow.clone(), load.clone()], &routes_of("slow", rules)).await;
    let _server = mesh.proxy(&slow, Some(addr.port()), &[]).await;
    let client = mesh.proxy(&load, None, &["slow"]).await;
    let tcp = TcpStream::connect(upstream(&client, "slow")).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send.ready().await.unwrap();
    let started = Instant::now();
    let req = Request::get("/")
        .header("host", "slow.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let rsp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .expect("the head arrives")
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let body = tokio::time::timeout(WAIT, rsp.into_body().collect())
        .await
        .expect("the body ends at the deadline, not when the backend would");
    let took = started.elapsed();
    assert!(body.is_err(), "a body cut short must fail: {body:?}");
    assert!(took >= Duration::from_millis(300), "cut after {took:?}");
    drop(hold_tx);
}
