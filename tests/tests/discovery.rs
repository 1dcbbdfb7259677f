//! Discovery on demand over real gRPC and TLS: deltas on an open Resolve stream, "not in the
//! mesh" that turns into a service, denied targets that reveal nothing, idle streams closed,
//! and a control-plane restart that costs the proxy no endpoint.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Streaming;
use weft_api::v1::discovery_client::DiscoveryClient;
use weft_api::v1::resolve_update::Update;
use weft_api::{ResolveUpdate, Resolved};
use weft_core::{Identity, Target};
use weft_proxy::Proxy;
use weft_proxy::discovery::Resolution;
use weft_tests::{
    TestMesh, WAIT, WorkloadDecl, backends, get_once, upstream, wait_metric, wait_metrics,
    wait_resolution,
};

const ALLOW_ALL: &str = "[policy]\ndefault_inbound = \"allow\"";

/// Opens `Discovery.Resolve(target)` with `proxy`'s mesh certificate, as the proxy would.
async fn resolve(mesh: &TestMesh, proxy: &Proxy, target: &str) -> Streaming<ResolveUpdate> {
    let creds = proxy.shared().credentials.borrow().clone().unwrap();
    let control = Identity::control_plane(creds.identity().trust_domain());
    let cfg = mesh.proxy_config(&WorkloadDecl::client("x"), None, &[]);
    let channel =
        weft_proxy::control::lazy_channel(&cfg, creds.client_config(&control, weft_ca::ALPN_H2));
    let target = Target::parse(target, "test").unwrap();
    DiscoveryClient::new(channel)
        .resolve(weft_api::convert::target_to_wire(&target))
        .await
        .unwrap()
        .into_inner()
}

async fn next(stream: &mut Streaming<ResolveUpdate>) -> Update {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an update in time")
        .unwrap()
        .expect("the stream stays open")
        .update
        .unwrap()
}

fn addr(mesh: &TestMesh, name: &str) -> String {
    format!("127.0.0.1:{}", mesh.port_of(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_reach_an_open_stream_as_deltas() {
    let api1 = WorkloadDecl::serving("api-1", "api");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[api1.clone(), load.clone()], ALLOW_ALL).await;
    let lp = mesh.proxy(&load, None, &[]).await;
    let mut stream = resolve(&mesh, &lp, "api").await;

    // The whole state first.
    let Update::Resolved(Resolved {
        service, endpoints, ..
    }) = next(&mut stream).await
    else {
        panic!("not resolved first");
    };
    assert_eq!(service.unwrap().name, "api");
    let first: Vec<_> = endpoints.iter().map(|e| e.address.clone()).collect();
    assert_eq!(first, [addr(&mesh, "api-1")]);
    assert_eq!(endpoints[0].identity, "spiffe://weft.test/ns/test/sa/api-1");

    // Added: only the new endpoint travels.
    let api2 = WorkloadDecl::serving("api-2", "api");
    mesh.set_workloads(&[api1.clone(), api2.clone(), load.clone()])
        .await;
    let Update::Changes(c) = next(&mut stream).await else {
        panic!("not a delta");
    };
    let added: Vec<_> = c.upserted.iter().map(|e| e.address.clone()).collect();
    assert_eq!((added, c.removed), (vec![addr(&mesh, "api-2")], vec![]));

    // Changed: api-2 loses its proxy, so it is sent again without an identity.
    let mut plain2 = api2.clone();
    plain2.meshed = false;
    mesh.set_workloads(&[api1.clone(), plain2.clone(), load.clone()])
        .await;
    let Update::Changes(c) = next(&mut stream).await else {
        panic!("not a delta");
    };
    assert_eq!(c.upserted.len(), 1, "{c:?}");
    assert_eq!(c.upserted[0].address, addr(&mesh, "api-2"));
    assert_eq!(c.upserted[0].identity, "");
    assert!(c.removed.is_empty());

    // Removed: only the address travels.
    let gone = addr(&mesh, "api-1");
    mesh.set_workloads(&[plain2, load]).await;
    let Update::Changes(c) = next(&mut stream).await else {
        panic!("not a delta");
    };
    assert_eq!((c.upserted, c.removed), (vec![], vec![gone]));

    // Streams waiting for the next change hold no registry snapshot: each one held would keep
    // alive every node that later versions replace, so memory would grow with every change.
    // Only the registry's own reference and this one remain, once any stream still working
    // (the proxy's settings stream is woken by the same changes) is done.
    let registry = &mesh.control.as_ref().unwrap().registry;
    let held = tokio::time::timeout(WAIT, async {
        loop {
            let refs = Arc::strong_count(&registry.snapshot());
            if refs == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        held.is_ok(),
        "idle streams hold the snapshot: {} references",
        Arc::strong_count(&registry.snapshot())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_address_is_not_in_the_mesh_until_a_service_appears_there() {
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(std::slice::from_ref(&load), ALLOW_ALL).await;
    let lp = mesh.proxy(&load, None, &[]).await;
    let app = backends::http_echo("legacy").await;
    let mut stream = resolve(&mesh, &lp, &app.to_string()).await;
    assert!(matches!(next(&mut stream).await, Update::NotInMesh(_)));

    // A platform starts reporting a service at that address: the same stream resolves it.
    let legacy = WorkloadDecl::unmeshed("legacy", "db", app);
    mesh.set_workloads(&[load, legacy]).await;
    let Update::Resolved(Resolved {
        service, endpoints, ..
    }) = next(&mut stream).await
    else {
        panic!("not resolved");
    };
    assert_eq!(service.unwrap().name, "db");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].address, app.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_target_reveals_nothing_and_its_calls_get_403() {
    const API_FOR_WEB: &str = "[policy]\ndefault_inbound = \"allow\"\n\n[[policy.authorizations]]\nservice = \"secret.test\"\nallow = [\"test/web\"]";
    let app = backends::http_echo("secret").await;
    let secret = WorkloadDecl::serving("vault", "secret");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[secret.clone(), load.clone()], API_FOR_WEB).await;
    let _sp = mesh.proxy(&secret, Some(app.port()), &[]).await;
    let lp = mesh.proxy(&load, None, &["secret"]).await;
    let endpoint = addr(&mesh, "vault");
    for target in ["secret", endpoint.as_str()] {
        let mut stream = resolve(&mesh, &lp, target).await;
        let Update::Denied(d) = next(&mut stream).await else {
            panic!("{target} not denied");
        };
        // Neither the endpoint behind a name, nor the name behind an address.
        assert!(!d.reason.contains("vault"), "{}", d.reason);
        if target == endpoint {
            assert!(!d.reason.contains("secret"), "{}", d.reason);
        } else {
            assert!(!d.reason.contains(&endpoint), "{}", d.reason);
        }
    }
    let rsp = get_once(upstream(&lp, "secret")).await;
    assert_eq!(rsp.status(), StatusCode::FORBIDDEN);
    let metrics = wait_metrics(mesh.control.as_ref().unwrap().http_addr, "a denial", |m| {
        weft_tests::metric(m, "weft_control_resolve_denied_total", &[]) >= 3.0
    })
    .await;
    assert!(!metrics.contains(&endpoint));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_destination_closes_its_stream_and_resolves_again_on_use() {
    let app = backends::http_echo("api").await;
    let api = WorkloadDecl::serving("api", "api");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[api.clone(), load.clone()], ALLOW_ALL).await;
    let _ap = mesh.proxy(&api, Some(app.port()), &[]).await;
    let mut cfg = mesh.proxy_config(&load, None, &["api"]);
    cfg.resolve_idle_timeout = Duration::from_secs(1);
    let lp = mesh.start_proxy(cfg).await;
    let up = upstream(&lp, "api");
    let http = mesh.control.as_ref().unwrap().http_addr;
    let streams =
        |m: &str| weft_tests::metric(m, "weft_control_discovery_streams", &["kind=\"resolve\""]);
    let answers = |m: &str| {
        weft_tests::metric(
            m,
            "weft_control_discovery_updates_total",
            &["kind=\"resolve\""],
        )
    };

    // No destination is resolved before it is used.
    assert!(lp.shared().destinations.is_empty());
    assert_eq!(get_once(up).await.status(), StatusCode::OK);
    assert_eq!(lp.shared().destinations.len(), 1);
    wait_metrics(http, "one answer", |m| answers(m) == 1.0).await;

    // Unused, it is dropped, and the control plane sees its stream close.
    wait_metrics(http, "the idle stream closed", |m| streams(m) == 0.0).await;
    assert!(lp.shared().destinations.is_empty());

    // The next call resolves it again, on a new stream.
    assert_eq!(get_once(up).await.status(), StatusCode::OK);
    wait_metrics(http, "a second answer", |m| answers(m) == 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_restart_mid_stream_costs_the_proxy_no_endpoint() {
    let app = backends::http_echo("api").await;
    let api = WorkloadDecl::serving("api", "api");
    let load = WorkloadDecl::client("load");
    let mut mesh = TestMesh::start(&[api.clone(), load.clone()], ALLOW_ALL).await;
    let _ap = mesh.proxy(&api, Some(app.port()), &[]).await;
    let lp = mesh.proxy(&load, None, &["api"]).await;
    let up = upstream(&lp, "api");
    wait_resolution(&lp, "api", |r| !r.usable().is_empty()).await;
    assert_eq!(get_once(up).await.status(), StatusCode::OK);

    // Watch every state the destination passes through from here on.
    let dest = lp
        .destination(&Target::parse("api", "test").unwrap())
        .unwrap();
    let lost = Arc::new(AtomicBool::new(false));
    let watcher = {
        let mut rx = dest.resolution.clone();
        let lost = lost.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if rx.borrow_and_update().usable().is_empty() {
                    lost.store(true, Ordering::SeqCst);
                }
            }
        })
    };

    mesh.stop_control().await;
    // Away: traffic flows on what the proxy knows.
    assert_eq!(get_once(up).await.status(), StatusCode::OK);
    mesh.start_control().await;
    // Back: the proxy's stream reconnects and resyncs.
    let http = mesh.control.as_ref().unwrap().http_addr;
    wait_metrics(http, "the proxy resolving again", |m| {
        weft_tests::metric(
            m,
            "weft_control_discovery_updates_total",
            &["kind=\"resolve\""],
        ) >= 1.0
    })
    .await;
    assert_eq!(get_once(up).await.status(), StatusCode::OK);
    assert!(
        !lost.load(Ordering::SeqCst),
        "the destination had no endpoint at some point"
    );
    assert!(matches!(*dest.resolution.borrow(), Resolution::Resolved(_)));
    watcher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_are_capped_and_the_longest_unused_makes_room() {
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(std::slice::from_ref(&load), ALLOW_ALL).await;
    let mut cfg = mesh.proxy_config(&load, None, &[]);
    cfg.max_destinations = 2;
    let lp = mesh.start_proxy(cfg).await;
    let target = |s: &str| Target::parse(s, "test").unwrap();
    let a = lp.destination(&target("a")).unwrap();
    let b = lp.destination(&target("b")).unwrap();
    // Both in use: a third destination has no room, and the connection would be refused.
    assert!(lp.destination(&target("c")).is_err());
    // A lease on one already held needs no room.
    let a2 = lp.destination(&target("a")).unwrap();
    drop((a, a2));
    // `a` is unused now: `c` takes its place, and `b` (in use) stays.
    let c = lp.destination(&target("c")).unwrap();
    assert_eq!(lp.shared().destinations.len(), 2);
    assert!(lp.destination(&target("a")).is_err());
    drop((b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_to_the_transparent_listener_without_a_redirect_is_refused() {
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(std::slice::from_ref(&load), ALLOW_ALL).await;
    let mut cfg = mesh.proxy_config(&load, None, &[]);
    cfg.transparent = true;
    let lp = mesh.start_proxy(cfg).await;
    let outbound = lp.outbound_addrs[0];
    let mut tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf));
    wait_metric(
        lp.admin_addr,
        "weft_outbound_refused_total",
        &["reason=\"no_original_destination\""],
        1.0,
    )
    .await;
    // Nothing was resolved for it.
    assert!(lp.shared().destinations.is_empty());
}
