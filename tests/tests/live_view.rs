//! The live view without Prometheus, end to end: proxies report their counters to the
//! control plane, whose `/api/stat` and `/api/edges` agree with the proxies' own counters,
//! and `weft stat`, `weft edges`, `weft tap` and `weft top` (the real binary) show them and
//! the requests as they happen.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
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
    let mesh = TestMesh::start(&[web.clone(), load.clone()], MESH).await;
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

    let mut tap = tokio::process::Command::new(weft_tests::weft_binary())
        .args([
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
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(tap.stdout.take().unwrap()).lines();
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
