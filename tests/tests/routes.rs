//! Routes from the mesh file, end to end on the local platform: a caller's proxy applies the
//! routes of the service it calls (header and path rules, rewrites, redirects, response
//! headers, weighted splits), answers 404 when a service's routes match nothing, and follows
//! route edits without dropping requests.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use weft_tests::{TestMesh, WAIT, WorkloadDecl, backends, upstream};

const ALLOW_ALL: &str = "[policy]\ndefault_inbound = \"allow\"";

/// `/app/...` on `web` splits 90/10 with `web-v2`, except with `x-version: 2` (the same path
/// and one header is more specific); `/v2/...` (rewritten to `/...`) goes to `web-v2`;
/// `/old/...` is redirected; `/private/...` matches no rule.
const ROUTES: &str = r#"
[[routes.http]]
name = "web"
namespace = "test"
parent_refs = [{ name = "web" }]

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/app" }, headers = [{ name = "x-version", value = "2" }] }]
backend_refs = [{ name = "web-v2" }]

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/old" } }]
filters = [{ type = "RequestRedirect", request_redirect = { hostname = "new.test", path = { type = "ReplacePrefixMatch", replace_prefix_match = "/new" }, status_code = 301 } }]

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/v2" } }]
filters = [
  { type = "URLRewrite", url_rewrite = { path = { type = "ReplacePrefixMatch", replace_prefix_match = "/" } } },
  { type = "RequestHeaderModifier", request_header_modifier = { set = [{ name = "x-routed", value = "v2-path" }] } },
  { type = "ResponseHeaderModifier", response_header_modifier = { add = [{ name = "x-route", value = "v2" }] } },
]
backend_refs = [{ name = "web-v2" }]

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/app" } }]
backend_refs = [{ name = "web", weight = 90 }, { name = "web-v2", weight = 10 }]
"#;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// One GET through `up` with `headers`: status, `x-backend`, the response's headers and body.
async fn get(
    c: &HttpClient,
    up: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String, http::HeaderMap, String) {
    let mut req = Request::get(format!("http://{up}{path}")).header("host", "web.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let rsp = c.request(req.body(Empty::new()).unwrap()).await.unwrap();
    let status = rsp.status();
    let headers = rsp.headers().clone();
    let backend = headers
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        backend,
        headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

struct Canary {
    mesh: TestMesh,
    client: weft_proxy::Proxy,
    _servers: Vec<weft_proxy::Proxy>,
}

async fn canary(routes: &str) -> Canary {
    let v1 = backends::http_echo("web-v1").await;
    let v2 = backends::http_echo("web-v2").await;
    let web = WorkloadDecl::serving("web", "web");
    let web_v2 = WorkloadDecl::serving("web-v2", "web-v2");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(
        &[web.clone(), web_v2.clone(), load.clone()],
        &format!("{ALLOW_ALL}\n{routes}"),
    )
    .await;
    let s1 = mesh.proxy(&web, Some(v1.port()), &[]).await;
    let s2 = mesh.proxy(&web_v2, Some(v2.port()), &[]).await;
    let client = mesh.proxy(&load, None, &["web"]).await;
    Canary {
        mesh,
        client,
        _servers: vec![s1, s2],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_path_rewrite_redirect_and_no_match_rules_apply() {
    let c = canary(ROUTES).await;
    let http = weft_tests::http_client();
    let up = upstream(&c.client, "web");

    // The header rule: every request to web-v2.
    for i in 0..5 {
        let (status, backend, _, body) = get(&http, up, "/app/x", &[("x-version", "2")]).await;
        assert_eq!(
            (status, backend.as_str()),
            (StatusCode::OK, "web-v2"),
            "request {i}: {body}"
        );
    }

    // The path rule: rewritten, a request header set, a response header added.
    let (status, backend, headers, body) = get(&http, up, "/v2/users?id=7", &[]).await;
    assert_eq!(
        (status, backend.as_str()),
        (StatusCode::OK, "web-v2"),
        "{body}"
    );
    assert!(
        body.starts_with("GET /users?id=7 "),
        "the backend saw: {body}"
    );
    assert!(body.contains("\nx-routed: v2-path\n"), "{body}");
    assert_eq!(headers["x-route"], "v2");

    // The redirect: the whole Location, from the proxy, no backend.
    let (status, backend, headers, _) = get(&http, up, "/old/page?q=1", &[]).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(backend, "");
    assert_eq!(headers["location"], "http://new.test/new/page?q=1");

    // No rule matches: 404 from the proxy.
    let (status, backend, _, _) = get(&http, up, "/private/x", &[]).await;
    assert_eq!((status, backend.as_str()), (StatusCode::NOT_FOUND, ""));

    // Route metrics: by route, rule and backend, the redirect under backend "-".
    let text = weft_tests::admin_get(c.client.admin_addr, "GET", "/metrics")
        .await
        .1;
    let count = |rule: &str, backend: &str| {
        weft_tests::metric(
            &text,
            "weft_route_requests_total",
            &[
                "route=\"test/web\"",
                &format!("rule=\"{rule}\""),
                &format!("backend=\"{backend}\""),
            ],
        )
    };
    assert_eq!(count("0", "web-v2.test"), 5.0, "{text}");
    assert_eq!(count("1", "-"), 1.0, "{text}");
    assert_eq!(count("2", "web-v2.test"), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ninety_ten_split_holds_within_two_points() {
    let c = canary(ROUTES).await;
    let http = weft_tests::http_client();
    let up = upstream(&c.client, "web");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    const N: usize = 10_000;
    tokio::time::timeout(WAIT * 3, async {
        for _ in 0..N {
            let (status, backend, _, _) = get(&http, up, "/app/x", &[]).await;
            assert_eq!(status, StatusCode::OK);
            *seen.entry(backend).or_default() += 1;
        }
    })
    .await
    .unwrap();
    let v2 = seen.get("web-v2").copied().unwrap_or_default() as f64 / N as f64;
    assert_eq!(seen.values().sum::<usize>(), N, "{seen:?}");
    assert!(
        (v2 - 0.10).abs() <= 0.02,
        "web-v2 got {:.1} %: {seen:?}",
        v2 * 100.0
    );
    let _ = &c.mesh;
}

/// Inbound connections a server proxy has accepted.
async fn accepted(p: &weft_proxy::Proxy) -> f64 {
    let text = weft_tests::admin_get(p.admin_addr, "GET", "/metrics")
        .await
        .1;
    weft_tests::metric(
        &text,
        "weft_tcp_connections_total",
        &["direction=\"inbound\""],
    )
}

/// 32 connections send requests while the split goes from 90/10 to 50/50: no request fails,
/// the new weights apply, and neither backend gets a new connection from the caller's proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_under_load_fails_nothing_and_keeps_connections() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let c = canary(ROUTES).await;
    let up = upstream(&c.client, "web");
    let http = weft_tests::http_client();
    // Warm up: both backends reached, so both connections are open.
    let mut both = BTreeMap::new();
    for _ in 0..500 {
        let (status, backend, _, _) = get(&http, up, "/app/warm", &[]).await;
        assert_eq!(status, StatusCode::OK);
        *both.entry(backend).or_insert(0) += 1;
    }
    assert_eq!(both.len(), 2, "{both:?}");
    let before = [
        accepted(&c._servers[0]).await,
        accepted(&c._servers[1]).await,
    ];

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let after_change = Arc::new(AtomicBool::new(false));
    let v2_after = Arc::new(AtomicUsize::new(0));
    let total_after = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (stop, failed, after_change, v2_after, total_after) = (
            stop.clone(),
            failed.clone(),
            after_change.clone(),
            v2_after.clone(),
            total_after.clone(),
        );
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            // Bounded: at most 2,000 requests per connection.
            for _ in 0..2_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let changed = after_change.load(Ordering::SeqCst);
                let (status, backend, _, _) = get(&http, up, "/app/load", &[]).await;
                if status != StatusCode::OK {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                if changed {
                    total_after.fetch_add(1, Ordering::SeqCst);
                    if backend == "web-v2" {
                        v2_after.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }

    let target = weft_core::Target::parse("web", "test").unwrap();
    let lease = c.client.destination(&target).unwrap();
    let mut routes = lease.routes.clone();
    routes.borrow_and_update();
    let path = c.mesh.watcher().current().source.clone().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    c.mesh.write_raw(
        &text
            .replace("weight = 90", "weight = 50")
            .replace("weight = 10", "weight = 50"),
    );
    tokio::time::timeout(WAIT, routes.changed())
        .await
        .expect("the new routes reached the proxy")
        .unwrap();
    after_change.store(true, Ordering::SeqCst);
    // Let the load run on the new weights for a while, then stop it.
    tokio::time::timeout(WAIT, async {
        while total_after.load(Ordering::SeqCst) < 2_000 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("requests kept flowing after the change");
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }

    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests failed");
    let share = v2_after.load(Ordering::SeqCst) as f64 / total_after.load(Ordering::SeqCst) as f64;
    assert!(
        share > 0.35,
        "web-v2 got {:.1} % after the change",
        share * 100.0
    );
    let after = [
        accepted(&c._servers[0]).await,
        accepted(&c._servers[1]).await,
    ];
    assert_eq!(before, after, "a backend got a new connection");
}

/// Requests an inbound proxy has counted.
async fn served(p: &weft_proxy::Proxy) -> f64 {
    let text = weft_tests::admin_get(p.admin_addr, "GET", "/metrics")
        .await
        .1;
    weft_tests::metric(&text, "weft_requests_total", &["direction=\"inbound\""])
}

/// A gRPC route sends one method to the new version; a method no rule names gets
/// `UNIMPLEMENTED` from the caller's proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_methods_are_routed_and_unmatched_ones_are_unimplemented() {
    use weft_api::v1::discovery_client::DiscoveryClient;
    use weft_api::v1::identity_client::IdentityClient;

    const GRPC_ROUTES: &str = r#"
[[routes.grpc]]
name = "users"
namespace = "test"
parent_refs = [{ name = "users" }]

[[routes.grpc.rules]]
matches = [{ method = { service = "weft.api.v1.Identity", method = "Certify" } }]
backend_refs = [{ name = "users-v2" }]
"#;
    let v1 = backends::grpc_backend().await;
    let v2 = backends::grpc_backend().await;
    let mut users = WorkloadDecl::serving("users", "users");
    users.protocol = "grpc".into();
    let mut users_v2 = WorkloadDecl::serving("users-v2", "users-v2");
    users_v2.protocol = "grpc".into();
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(
        &[users.clone(), users_v2.clone(), load.clone()],
        &format!("{ALLOW_ALL}\n{GRPC_ROUTES}"),
    )
    .await;
    let s1 = mesh.proxy(&users, Some(v1.port()), &[]).await;
    let s2 = mesh.proxy(&users_v2, Some(v2.port()), &[]).await;
    let client = mesh.proxy(&load, None, &["users"]).await;
    let ch =
        tonic::transport::Endpoint::from_shared(format!("http://{}", upstream(&client, "users")))
            .unwrap()
            .connect()
            .await
            .unwrap();

    for _ in 0..3 {
        let rsp = IdentityClient::new(ch.clone())
            .certify(weft_api::CertifyRequest {
                csr: b"hi".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rsp.leaf, b"hi");
    }
    assert_eq!((served(&s1).await, served(&s2).await), (0.0, 3.0));

    let err = DiscoveryClient::new(ch)
        .resolve(weft_api::ResolveRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    assert_eq!(served(&s1).await, 0.0);
}

/// A backend no platform knows: with weight 0 it gets nothing and the rest works; with weight
/// it answers 500 for its share, and the other backend still serves the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_backend_costs_only_its_share() {
    const GHOST: &str = r#"
[[routes.http]]
name = "web"
namespace = "test"
parent_refs = [{ name = "web" }]

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/zero" } }]
backend_refs = [{ name = "web-v2" }, { name = "ghost", weight = 0 }]

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/half" } }]
backend_refs = [{ name = "web-v2" }, { name = "ghost" }]
"#;
    let c = canary(GHOST).await;
    let http = weft_tests::http_client();
    let up = upstream(&c.client, "web");
    for _ in 0..50 {
        let (status, backend, _, _) = get(&http, up, "/zero", &[]).await;
        assert_eq!((status, backend.as_str()), (StatusCode::OK, "web-v2"));
    }
    let mut seen: BTreeMap<(StatusCode, String), usize> = BTreeMap::new();
    for _ in 0..200 {
        let (status, backend, _, _) = get(&http, up, "/half", &[]).await;
        *seen.entry((status, backend)).or_default() += 1;
    }
    let ok = seen
        .get(&(StatusCode::OK, "web-v2".to_string()))
        .copied()
        .unwrap_or_default();
    let failed = seen
        .get(&(StatusCode::INTERNAL_SERVER_ERROR, String::new()))
        .copied()
        .unwrap_or_default();
    assert_eq!(ok + failed, 200, "{seen:?}");
    assert!(ok >= 60 && failed >= 60, "about half each: {seen:?}");
}

/// A backend the mesh policy does not let the caller reach is refused with 403, as a call to
/// that service itself would be (not with the 503 of a backend without endpoints).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_the_caller_may_not_call_is_refused() {
    let denied = format!(
        "{ROUTES}\n[[policy.authorizations]]\nservice = \"web-v2.test\"\nallow = [\"test/web\"]\n"
    );
    let c = canary(&denied).await;
    let http = weft_tests::http_client();
    let up = upstream(&c.client, "web");
    // The backend's destination resolves on first use; its denial arrives with its first
    // answer, so the first request may still wait for it.
    let _ = get(&http, up, "/app/x", &[("x-version", "2")]).await;
    let (status, backend, headers, _) = get(&http, up, "/app/x", &[("x-version", "2")]).await;
    assert_eq!((status, backend.as_str()), (StatusCode::FORBIDDEN, ""));
    assert!(
        headers["weft-proxy-error"]
            .to_str()
            .unwrap()
            .contains("denied"),
        "{headers:?}"
    );
}

/// A route bound to one port of a service applies to that port only (Gateway API's
/// `parentRefs[].port`, the mesh profile's MeshPorts); the other port is reached as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_bound_to_one_port_leaves_the_others_alone() {
    const ONE_PORT: &str = r#"
[[routes.http]]
name = "web-80"
namespace = "test"
parent_refs = [{ name = "web", port = 80 }]

[[routes.http.rules]]
backend_refs = [{ name = "web-v2" }]
"#;
    let v1 = backends::http_echo("web-v1").await;
    let v81 = backends::http_echo("web-81").await;
    let v2 = backends::http_echo("web-v2").await;
    let web = WorkloadDecl::serving("web", "web");
    let mut web_81 = WorkloadDecl::serving("web-81", "web");
    web_81.service_port = Some(81);
    let web_v2 = WorkloadDecl::serving("web-v2", "web-v2");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(
        &[web.clone(), web_81.clone(), web_v2.clone(), load.clone()],
        &format!("{ALLOW_ALL}\n{ONE_PORT}"),
    )
    .await;
    let _s = [
        mesh.proxy(&web, Some(v1.port()), &[]).await,
        mesh.proxy(&web_81, Some(v81.port()), &[]).await,
        mesh.proxy(&web_v2, Some(v2.port()), &[]).await,
    ];
    let client = mesh
        .proxy(&load, None, &["web.test:80", "web.test:81"])
        .await;
    let http = weft_tests::http_client();
    for _ in 0..5 {
        let (status, backend, _, _) = get(&http, upstream(&client, "web.test:80"), "/", &[]).await;
        assert_eq!(
            (status, backend.as_str()),
            (StatusCode::OK, "web-v2"),
            "port 80 is routed"
        );
        let (status, backend, _, _) = get(&http, upstream(&client, "web.test:81"), "/", &[]).await;
        assert_eq!(
            (status, backend.as_str()),
            (StatusCode::OK, "web-81"),
            "port 81 is not"
        );
    }
}
