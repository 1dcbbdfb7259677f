//! What the outbound side promises beyond one meshed peer: unmeshed endpoints reached in
//! plaintext, load spread over every healthy endpoint by P2C, and the TCP metrics of an opaque
//! exchange.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_tests::{TestMesh, WAIT, WorkloadDecl, backends, metric, upstream, wait_metrics};

const ALLOW_ALL: &str = "[policy]\ndefault_inbound = \"allow\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmeshed_endpoint_is_reached_in_plaintext() {
    // No proxy in front of the backend: it speaks plaintext HTTP only.
    let legacy = backends::http_echo("legacy").await;
    let load = WorkloadDecl::client("load");
    let db = WorkloadDecl::unmeshed("legacy", "api", legacy);
    let mesh = TestMesh::start(&[db, load.clone()], ALLOW_ALL).await;
    let client = mesh.proxy(&load, None, &["api"]).await;
    weft_tests::wait_resolved(&client, "api", |s| {
        s.endpoints.values().all(|e| e.identity.is_none())
    })
    .await;

    let (status, backend, body) = weft_tests::get_through(
        &weft_tests::http_client(),
        upstream(&client, "api"),
        "/plain",
    )
    .await;
    assert_eq!(
        (status, backend.as_str()),
        (StatusCode::OK, "legacy"),
        "{body}"
    );
    // It arrived as the application sent it: HTTP/1.1, with no mesh header.
    assert!(body.starts_with("GET /plain HTTP/1.1\n"), "{body}");
    assert!(!body.contains("weft-"), "{body}");

    // Counted outbound with no peer identity: none was proven.
    let text = wait_metrics(client.admin_addr, "the plaintext response", |t| {
        metric(
            t,
            "weft_responses_total",
            &[
                "direction=\"outbound\"",
                "peer=\"-\"",
                "status_code=\"200\"",
            ],
        ) == 1.0
    })
    .await;
    assert_eq!(
        metric(&text, "weft_requests_total", &["peer=\"spiffe:"]),
        0.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_spreads_requests_over_every_healthy_endpoint() {
    const ENDPOINTS: [&str; 3] = ["one", "two", "three"];
    const REQUESTS: usize = 300;
    const CONCURRENCY: usize = 6;
    let load = WorkloadDecl::client("load");
    let mut decls: Vec<WorkloadDecl> = ENDPOINTS
        .iter()
        .map(|n| WorkloadDecl::serving(&format!("api-{n}"), "api"))
        .collect();
    decls.push(load.clone());
    let mesh = TestMesh::start(&decls, ALLOW_ALL).await;
    let mut servers = Vec::new();
    for (name, decl) in ENDPOINTS.iter().zip(&decls) {
        let app = backends::http_echo(name).await;
        servers.push(mesh.proxy(decl, Some(app.port()), &[]).await);
    }
    let client = mesh.proxy(&load, None, &["api"]).await;
    weft_tests::wait_resolved(&client, "api", |s| s.usable().len() == 3).await;
    let up = upstream(&client, "api");

    let c = weft_tests::http_client();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in (worker..REQUESTS).step_by(CONCURRENCY) {
                let (status, backend, _) = weft_tests::get_through(&c, up, &format!("/{i}")).await;
                assert_eq!(status, StatusCode::OK, "request {i}");
                seen.push(backend);
            }
            seen
        }));
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        for backend in tokio::time::timeout(WAIT, t).await.unwrap().unwrap() {
            *counts.entry(backend).or_default() += 1;
        }
    }
    assert_eq!(counts.values().sum::<usize>(), REQUESTS);
    // Every endpoint gets a fair share: at least half of an even split, and no endpoint takes
    // more than twice its even share.
    let even = REQUESTS / ENDPOINTS.len();
    for name in ENDPOINTS {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!(
            n >= even / 2 && n <= 2 * even,
            "{name} served {n} of {REQUESTS}: {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_metrics_count_an_opaque_exchange_on_both_sides() {
    let app = backends::tcp_echo().await;
    let mut api = WorkloadDecl::serving("api", "api");
    api.protocol = "opaque".into();
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[api.clone(), load.clone()], ALLOW_ALL).await;
    let server = mesh.proxy(&api, Some(app.port()), &[]).await;
    let client = mesh.proxy(&load, None, &["api"]).await;

    let sent = b"opaque bytes, counted on both sides\n".repeat(10);
    let mut tcp = TcpStream::connect(upstream(&client, "api")).await.unwrap();
    tcp.write_all(&sent).await.unwrap();
    let mut echoed = vec![0u8; sent.len()];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, sent);

    // While the connection is open, each proxy counts it as open.
    // The application's side of the outbound proxy; its mesh side is counted under the
    // server's identity.
    let out = ["direction=\"outbound\"", "peer=\"-\""];
    let to_api = [
        "direction=\"outbound\"",
        "peer=\"spiffe://weft.test/ns/test/sa/api\"",
    ];
    let load_id = "peer=\"spiffe://weft.test/ns/test/sa/load\"";
    let inb = ["direction=\"inbound\"", load_id];
    wait_metrics(client.admin_addr, "one open outbound connection", |t| {
        metric(t, "weft_tcp_open_connections", &out) == 1.0
    })
    .await;
    wait_metrics(server.admin_addr, "one open inbound connection", |t| {
        metric(t, "weft_tcp_open_connections", &inb) == 1.0
    })
    .await;

    // Closed: none open, one in total, and every byte counted once each way (the app's
    // bytes outbound, the decrypted bytes inbound).
    drop(tcp);
    let n = sent.len() as f64;
    for (proxy, labels) in [
        (&client, &out[..]),
        (&client, &to_api[..]),
        (&server, &inb[..]),
    ] {
        let text = wait_metrics(proxy.admin_addr, "the connection closed", |t| {
            metric(t, "weft_tcp_open_connections", labels) == 0.0
                && metric(t, "weft_tcp_write_bytes_total", labels) == n
        })
        .await;
        if labels != to_api {
            // Connections accepted; the mesh side's connection was opened, not accepted.
            assert_eq!(
                metric(&text, "weft_tcp_connections_total", labels),
                1.0,
                "{text}"
            );
        }
        assert_eq!(
            metric(&text, "weft_tcp_read_bytes_total", labels),
            n,
            "{text}"
        );
    }
}
