//! The live view without Prometheus, end to end: proxies report their counters to the
//! control plane, whose `/api/stat` and `/api/edges` agree with the proxies' own counters,
//! and `weft stat`, `weft edges`, `weft tap` and `weft top` (the real binary) show them and
//! the requests as they happen, both at the control plane's address and (`--kubernetes`)
//! through a Kubernetes API server's port-forward, as `kubectl port-forward` reaches a pod.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use serde_json::Value;
use weft_tests::{TestMesh, WAIT, WorkloadDecl, admin_get, backends, metric, upstream};

const LOAD_ID: &str = "spiffe://weft.test/ns/test/sa/load";

const MESH: &str = r#"[policy]
default_inbound = "allow"

[[routes.http]]
name = "web"
namespace = "test"
parent_refs = [{ name = "web" }]

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/api" } }]
backend_refs = [{ name = "web" }]

[[routes.http.rules]]
backend_refs = [{ name = "web" }]
"#;

struct Lab {
    mesh: TestMesh,
    web: weft_proxy::Proxy,
    load: weft_proxy::Proxy,
    http: SocketAddr,
}

async fn lab() -> Lab {
    let app = backends::http_echo("web").await;
    let web = WorkloadDecl::serving("web", "web");
    let load = WorkloadDecl::client("load");
    // The loopback listener without a token, which a port-forward reaches.
    let mesh = TestMesh::start_with_control(
        &[web.clone(), load.clone()],
        MESH,
        "local_http_addr = \"127.0.0.1:0\"",
    )
    .await;
    let fast = |mut cfg: weft_proxy::ProxyConfig| {
        cfg.report_interval = Duration::from_millis(200);
        cfg.tap_addr = Some(([127, 0, 0, 1], 0).into());
        cfg
    };
    let web_proxy = mesh
        .start_proxy(fast(mesh.proxy_config(&web, Some(app.port()), &[])))
        .await;
    let load_proxy = mesh
        .start_proxy(fast(mesh.proxy_config(&load, None, &["web"])))
        .await;
    let http = mesh.control.as_ref().unwrap().http_addr;
    Lab {
        mesh,
        web: web_proxy,
        load: load_proxy,
        http,
    }
}

async fn send(up: SocketAddr, path: &str) {
    let client = weft_tests::http_client();
    let req = Request::get(format!("http://{up}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let rsp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let _ = rsp.into_body().collect().await.unwrap();
}

async fn api(http: SocketAddr, path: &str) -> Value {
    let client = weft_tests::http_client();
    let rsp = client
        .request(
            Request::get(format!("http://{http}{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200, "{path}");
    serde_json::from_slice(&rsp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

/// The row of `rows` named `name`, once `ok` holds of it.
async fn wait_row(
    http: SocketAddr,
    path: &str,
    key: &str,
    name: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = api(http, path).await;
        let row = v[key].as_array().and_then(|rows| {
            rows.iter()
                .find(|r| (r["name"] == name || r["to"] == name) && ok(r))
                .cloned()
        });
        if let Some(r) = row {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: no row {name} as expected: {v:#}"
        );
        // The proxies report every 200 ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn weft(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(weft_tests::weft_binary())
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_and_edges_agree_with_the_proxies_own_counters() {
    let lab = lab().await;
    let up = upstream(&lab.load, "web");
    for i in 0..12 {
        send(up, &format!("/api/{i}")).await;
    }
    for _ in 0..3 {
        send(up, "/other").await;
    }
    // The proxies' own counters.
    let (_, web_metrics) = admin_get(lab.web.admin_addr, "GET", "/metrics").await;
    let inbound = metric(
        &web_metrics,
        "weft_requests_total",
        &["direction=\"inbound\""],
    );
    assert_eq!(inbound, 15.0);
    let (_, load_metrics) = admin_get(lab.load.admin_addr, "GET", "/metrics").await;
    let routed = metric(
        &load_metrics,
        "weft_route_requests_total",
        &["route=\"test/web\""],
    );
    assert_eq!(routed, 15.0, "both rules of the route");

    let http = lab.http;
    let by_workload = wait_row(http, "/api/stat?by=workload", "rows", "test/web", |r| {
        r["requests"] == 15
    })
    .await;
    assert_eq!(by_workload["success_rate"], 1.0);
    assert!(
        by_workload["rps"].as_f64().is_some(),
        "two reports make a window"
    );
    assert!(by_workload["p99_ms"].as_f64().unwrap() > 0.0);
    assert!(by_workload["tcp_connections"].as_f64().unwrap() >= 1.0);
    let by_service = wait_row(http, "/api/stat?by=service", "rows", "web.test", |r| {
        r["requests"] == 15
    })
    .await;
    assert_eq!(by_service["proxies"], 1);
    let by_route = wait_row(http, "/api/stat?by=route", "rows", "test/web", |r| {
        r["requests"] == 15
    })
    .await;
    assert_eq!(by_route["backend"], "web.test");
    // Clients the filter leaves out count for nothing.
    let other = api(http, "/api/stat?by=workload&to=test/web&from=test/someone").await;
    assert_eq!(other["rows"][0]["requests"], 0);
    let edge = wait_row(http, "/api/edges", "edges", "test/web", |r| {
        r["requests"] == 15
    })
    .await;
    assert_eq!(edge["from"], LOAD_ID);
    assert_eq!(edge["from_workloads"][0], "test/load");
    assert_eq!(edge["mtls"], true);

    // The CLI reads the same.
    let control = lab.http.to_string();
    let (ok, out) = weft(&["stat", "service", "--control", &control, "-o", "json"]).await;
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let row = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "web.test")
        .unwrap();
    assert_eq!(row["requests"], 15);
    let (ok, out) = weft(&["stat", "--control", &control]).await;
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("test/web "))
        .expect(&out);
    assert!(line.contains("100.00%"), "{out}");
    assert!(out.starts_with("WORKLOAD"), "{out}");
    let (ok, out) = weft(&["edges", "--control", &control]).await;
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("test/load") && l.contains("test/web") && l.contains(" yes ")),
        "{out}"
    );

    // What callers apply to web, with the route's traffic.
    let (ok, out) = weft(&["routes", "web.test", "--control", &control, "-o", "json"]).await;
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let route = &v["routes"][0];
    assert_eq!(route["name"], "test/web");
    assert_eq!(route["rules"][0]["matches"][0], "path /api*");
    assert_eq!(route["rules"][0]["backends"][0]["service"], "web.test");
    assert_eq!(route["stats"][0]["requests"], 15);
    assert_eq!(v["backend_policy"]["retry_budget"]["percent"], 20);
    let (ok, out) = weft(&["routes", "web.test", "--control", &control]).await;
    assert!(ok, "{out}");
    assert!(out.contains("HTTP route test/web"), "{out}");
    assert!(
        out.contains("rule 0: path /api* -> web.test (weight 1)"),
        "{out}"
    );
    let (ok, out) = weft(&["routes", "nothing.test", "--control", &control]).await;
    assert!(!ok && out.contains("no service nothing.test"), "{out}");
    let _ = &lab.mesh;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_tap_and_top_show_requests_as_they_happen() {
    let lab = lab().await;
    let up = upstream(&lab.load, "web");
    let control = lab.http.to_string();
    // The proxies must have reported where they serve tap.
    wait_row(
        lab.http,
        "/api/stat?by=workload",
        "rows",
        "test/web",
        |_| true,
    )
    .await;

    let (mut tap, mut lines) = weft_tests::weft_lines(&[
        "tap",
        "--control",
        &control,
        "--to",
        "web.test",
        "--path",
        "/api",
        "--max",
        "3",
        "-o",
        "json",
    ]);
    // Traffic until the tap has seen three requests: it starts at some point in it.
    let traffic = tokio::spawn(async move {
        for i in 0..400 {
            send(up, if i % 2 == 0 { "/api/x" } else { "/other" }).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("tap events in time")
            .unwrap()
            .expect("three lines before the end");
        seen.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    let status = tokio::time::timeout(WAIT, tap.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "--max ends the tap");
    for e in &seen {
        assert_eq!(e["path"], "/api/x", "only the filtered path");
        assert_eq!(e["direction"], "inbound");
        assert_eq!(e["source_identity"], LOAD_ID);
        assert_eq!(e["status"], 200);
        assert_eq!(e["mtls"], true);
    }

    let (ok, out) = weft(&[
        "top",
        "--control",
        &control,
        "--to",
        "web.test",
        "--max",
        "4",
        "--every",
        "1h",
    ])
    .await;
    traffic.abort();
    assert!(ok, "{out}");
    let header = out.lines().next().unwrap();
    assert!(header.starts_with("SOURCE"), "{out}");
    let counted: u64 = out
        .lines()
        .skip(1)
        .filter(|l| l.starts_with(LOAD_ID))
        .map(|l| l.split_whitespace().nth(4).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, 4, "{out}");
}

/// A fake API server that serves a control-plane pod named `weft-control-b`, Ready, whose port
/// 7082 leads to `local_http`; `weft-control-a` sorts first but is not Ready, and leads
/// nowhere. Answers the server and the kubeconfig naming it.
async fn cluster(
    local_http: SocketAddr,
    dir: &std::path::Path,
) -> (weft_tests::fake_kube::FakeKube, String) {
    use weft_tests::kube_objects::control_pod;
    let kube = weft_tests::fake_kube::FakeKube::start().await;
    let ip = "10.0.0.9".parse().unwrap();
    kube.apply(control_pod("weft", "weft-control-a", false, ip));
    kube.apply(control_pod("weft", "weft-control-b", true, ip));
    kube.set_pod_port("weft", "weft-control-b", 7082, local_http);
    let kubeconfig = kube.kubeconfig(dir).display().to_string();
    (kube, kubeconfig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_a_control_plane_in_kubernetes_through_port_forward() {
    let lab = lab().await;
    let local_http = lab.mesh.control.as_ref().unwrap().local_http_addr.unwrap();
    assert!(local_http.ip().is_loopback());
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(local_http, dir.path()).await;
    let kube_args = ["--kubernetes", "--kubeconfig", &kubeconfig];

    let up = upstream(&lab.load, "web");
    for i in 0..6 {
        send(up, &format!("/api/{i}")).await;
    }
    wait_row(lab.http, "/api/stat?by=service", "rows", "web.test", |r| {
        r["requests"] == 6
    })
    .await;

    // `weft stat` through the forward reads what the HTTP listener answers.
    let mut args = vec!["stat", "service", "-o", "json"];
    args.extend(kube_args);
    let (ok, out) = weft(&args).await;
    assert!(ok, "{out}");
    let through: Value = serde_json::from_str(&out).unwrap();
    let row = |v: &Value| {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "web.test")
            .cloned()
            .unwrap()
    };
    let direct = api(lab.http, "/api/stat?by=service").await;
    assert_eq!(row(&through)["requests"], 6);
    assert_eq!(row(&through)["requests"], row(&direct)["requests"]);
    assert_eq!(row(&through)["success_rate"], row(&direct)["success_rate"]);
    // Through the API server, to the Ready pod only, with the WebSocket transport.
    let forwards: Vec<String> = kube
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.ends_with("/portforward"))
        .collect();
    assert_eq!(
        forwards,
        ["/api/v1/namespaces/weft/pods/weft-control-b/portforward"],
        "one forward for the one request"
    );

    let mut args = vec!["edges"];
    args.extend(kube_args);
    let (ok, out) = weft(&args).await;
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("test/load") && l.contains("test/web") && l.contains(" yes ")),
        "{out}"
    );

    // A tap streams through the forward as requests happen.
    let mut args = vec!["tap", "--to", "web.test", "--max", "2", "-o", "json"];
    args.extend(kube_args);
    let (mut tap, mut lines) = weft_tests::weft_lines(&args);
    let traffic = tokio::spawn(async move {
        for i in 0..400 {
            send(up, &format!("/api/tapped/{i}")).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    for _ in 0..2 {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("tap events in time")
            .unwrap()
            .expect("two lines before the end");
        let e: Value = serde_json::from_str(&line).unwrap();
        assert!(
            e["path"].as_str().unwrap().starts_with("/api/tapped/"),
            "{e}"
        );
        assert_eq!(e["source_identity"], LOAD_ID);
    }
    let status = tokio::time::timeout(WAIT, tap.wait())
        .await
        .unwrap()
        .unwrap();
    traffic.abort();
    assert!(status.success(), "--max ends the tap");

    // The dashboard: a local forwarder that only the browser handed its address may use.
    let (mut dash, url) = weft_tests::weft_dashboard(&kube_args).await;
    let rest = url.strip_prefix("http://").unwrap();
    let (host, open) = rest.split_once('/').unwrap();
    let addr: SocketAddr = host.parse().unwrap();
    assert!(addr.ip().is_loopback());
    let (status, headers, _) = raw_get(addr, &format!("/{open}"), None).await;
    assert_eq!(status, 303);
    let cookie = headers
        .get(http::header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let (status, _, body) = raw_get(addr, "/dashboard", Some(&cookie)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("web.test"), "the mesh at a glance: {body}");
    let (status, _, _) = raw_get(addr, "/dashboard", None).await;
    assert_eq!(status, 403, "no cookie, no dashboard");
    let (status, _, _) = raw_get(addr, "/api/state", Some(&cookie)).await;
    assert_eq!(status, 404, "the API beside it is not forwarded");
    dash.kill().await.unwrap();
}

/// A GET to `addr` with `Host: addr` and the cookie, if any: status, headers, body.
async fn raw_get(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
) -> (u16, http::HeaderMap, String) {
    let client = weft_tests::http_client();
    let mut req = Request::get(format!("http://{addr}{path}"));
    if let Some(c) = cookie {
        req = req.header(http::header::COOKIE, c);
    }
    let rsp = tokio::time::timeout(
        WAIT,
        client.request(req.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_says_why_a_port_forward_fails() {
    // A control plane with the loopback listener, and no traffic.
    let mesh = TestMesh::start_with_control(&[], "", "local_http_addr = \"127.0.0.1:0\"").await;
    let local_http = mesh.control.as_ref().unwrap().local_http_addr.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (kube, kubeconfig) = cluster(local_http, dir.path()).await;
    let stat = |namespace: &'static str| {
        let kubeconfig = kubeconfig.clone();
        async move {
            weft(&[
                "stat",
                "--kubernetes",
                "--kubeconfig",
                &kubeconfig,
                "--kube-namespace",
                namespace,
            ])
            .await
        }
    };
    let (ok, out) = stat("weft").await;
    assert!(ok, "{out}");
    assert!(out.starts_with("WORKLOAD"), "{out}");

    // No control-plane pod in that namespace.
    let (ok, out) = stat("elsewhere").await;
    assert!(!ok);
    assert!(
        out.contains("no Ready control-plane pod in namespace elsewhere"),
        "{out}"
    );

    // The pod's port leads nowhere: the kubelet's reason is shown.
    kube.delete("Pod", Some("weft"), "weft-control-b");
    kube.apply(weft_tests::kube_objects::control_pod(
        "weft",
        "weft-control-c",
        true,
        "10.0.0.9".parse().unwrap(),
    ));
    let (ok, out) = stat("weft").await;
    assert!(!ok);
    assert!(
        out.contains("weft-control-c") && out.contains("failed to connect to localhost:7082"),
        "{out}"
    );

    // RBAC without pods/portforward: the API server's 403.
    kube.set_pod_port("weft", "weft-control-c", 7082, local_http);
    assert!(stat("weft").await.0, "reachable again");
    kube.deny_access(
        weft_tests::fake_kube::ADMIN_USER,
        "create",
        "",
        "pods/portforward",
    );
    let (ok, out) = stat("weft").await;
    assert!(!ok);
    assert!(
        out.contains("forbidden") && out.contains("pods/portforward"),
        "{out}"
    );

    // --kubernetes asks no token file, and the two cannot be mixed.
    let (ok, out) = weft(&["stat", "--kubernetes", "--token-file", "/nonexistent"]).await;
    assert!(!ok && out.contains("cannot be used with"), "{out}");
}
