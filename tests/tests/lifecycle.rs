//! The mesh changing under traffic: config edits move endpoints, the control plane goes away
//! and comes back, endpoints die, proxies drain.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use weft_proxy::Proxy;
use weft_tests::{
    TestMesh, WAIT, WorkloadDecl, admin_get, backends, refusing_port, upstream, usable_ports,
    wait_resolution, wait_resolved,
};

const ALLOW_ALL: &str = "[policy]\ndefault_inbound = \"allow\"";

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    weft_tests::http_client()
}

/// GETs `/` through the upstream at `up`: status and `x-backend`.
async fn get(c: &Client<HttpConnector, Empty<Bytes>>, up: SocketAddr) -> (StatusCode, String) {
    let (status, backend, _) = weft_tests::get_through(c, up, "/").await;
    (status, backend)
}

/// `api` served by api-1 (backend "one"); api-2 (backend "two") runs with its proxy but serves
/// nothing yet; load calls `api` through its proxy's upstream `up`.
struct Handover {
    mesh: TestMesh,
    api1: WorkloadDecl,
    api2: WorkloadDecl,
    load: WorkloadDecl,
    load_proxy: Proxy,
    up: SocketAddr,
    /// api-1's and api-2's proxies.
    servers: [Proxy; 2],
}

async fn handover() -> Handover {
    let one = backends::http_echo("one").await;
    let two = backends::http_echo("two").await;
    let api1 = WorkloadDecl::serving("api-1", "api");
    let api2 = WorkloadDecl::client("api-2");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[api1.clone(), api2.clone(), load.clone()], ALLOW_ALL).await;
    let p1 = mesh.proxy(&api1, Some(one.port()), &[]).await;
    let p2 = mesh.proxy(&api2, Some(two.port()), &[]).await;
    let load_proxy = mesh.proxy(&load, None, &["api"]).await;
    let up = upstream(&load_proxy, "api");
    Handover {
        mesh,
        api1,
        api2,
        load,
        load_proxy,
        up,
        servers: [p1, p2],
    }
}

impl Handover {
    /// Edits the config so api-2 serves `api` and api-1 no longer does, and waits until the
    /// client proxy has the new endpoint.
    async fn move_api_to_api2(&self) {
        let mut api1 = self.api1.clone();
        api1.service = None;
        let mut api2 = self.api2.clone();
        api2.service = Some("api".into());
        self.mesh
            .set_workloads(&[api1, api2, self.load.clone()])
            .await;
        let port = self.mesh.port_of("api-2");
        // api-2's own proxy must know it now serves `api` before it admits anyone: a workload
        // whose servers its proxy does not know denies every client.
        weft_tests::wait_serving(&self.servers[1], port).await;
        wait_resolved(&self.load_proxy, "api", |s| usable_ports(s) == [port]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_config_file_moves_traffic_without_restarts() {
    let h = handover().await;
    let (mesh, up) = (&h.mesh, h.up);
    let c = client();
    for _ in 0..5 {
        assert_eq!(get(&c, up).await, (StatusCode::OK, "one".to_string()));
    }

    // api-2 takes over the service; api-1 leaves it.
    h.move_api_to_api2().await;
    traffic_moves_to_api2(&c, up).await;

    // A broken edit is reported and ignored: traffic keeps flowing to the last good endpoints.
    let mut errors = mesh.watcher().errors();
    mesh.write_raw("[mesh]\nname = \"test\"\ntrust_domain = \"NOT VALID\"\n");
    tokio::time::timeout(WAIT, errors.wait_for(|e| e.is_some()))
        .await
        .unwrap()
        .unwrap();
    let err = errors.borrow().clone().unwrap();
    assert!(err.to_string().contains("mesh.toml:3"), "{err}");
    assert_eq!(get(&c, up).await, (StatusCode::OK, "two".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_survives_a_control_plane_outage_and_proxies_reconnect() {
    let mut h = handover().await;
    let up = h.up;
    let c = client();
    assert_eq!(get(&c, up).await.0, StatusCode::OK);

    h.mesh.stop_control().await;
    // No control plane: the proxies serve from their last snapshot, on new connections too.
    for _ in 0..10 {
        let fresh = client();
        assert_eq!(get(&fresh, up).await, (StatusCode::OK, "one".to_string()));
    }
    let (status, _) = admin_get(h.load_proxy.admin_addr, "GET", "/ready").await;
    assert_eq!(status, 200, "a proxy with a snapshot stays ready");

    // Back again, with a change the proxies can only learn from a new stream.
    h.mesh.start_control().await;
    h.move_api_to_api2().await;
    traffic_moves_to_api2(&c, up).await;
}

/// Traffic follows the move within the deadline, and stays. In about one run in twenty the
/// first request after the client proxy has the new endpoints still reaches api-1, for a reason
/// not found yet (a balancer that picked its endpoint before the change is the suspect); the
/// requests after it reach api-2. api-1, which the move left serving no service, then refuses
/// the caller if its proxy has already heard so (a workload without servers admits nobody: a
/// 403 on a connection it had admitted, a 502 for a new one), else answers "one".
async fn traffic_moves_to_api2(c: &Client<HttpConnector, Empty<Bytes>>, up: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = get(c, up).await;
        assert!(
            answer.0 == StatusCode::OK
                || ([StatusCode::FORBIDDEN, StatusCode::BAD_GATEWAY].contains(&answer.0)
                    && answer.1.is_empty()),
            "{answer:?}"
        );
        if answer.1 == "two" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "traffic never moved to api-2"
        );
    }
    for _ in 0..5 {
        assert_eq!(get(c, up).await, (StatusCode::OK, "two".to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_refuses_connections_is_avoided() {
    let one = backends::http_echo("one").await;
    let api1 = WorkloadDecl::serving("api-1", "api");
    // Declared, meshed, but nothing listens there.
    let dead = WorkloadDecl::serving("api-dead", "api");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[api1.clone(), dead, load.clone()], ALLOW_ALL).await;
    let _p1 = mesh.proxy(&api1, Some(one.port()), &[]).await;
    let lp = mesh.proxy(&load, None, &["api"]).await;
    let up = upstream(&lp, "api");
    let c = client();
    for i in 0..30 {
        assert_eq!(
            get(&c, up).await,
            (StatusCode::OK, "one".to_string()),
            "request {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_endpoints_answers_503() {
    let api = WorkloadDecl::serving("api", "api");
    let load = WorkloadDecl::client("load");
    let mut mesh_workloads = vec![api.clone(), load.clone()];
    let mesh = TestMesh::start(&mesh_workloads, ALLOW_ALL).await;
    let lp = mesh.proxy(&load, None, &["api"]).await;
    let up = upstream(&lp, "api");
    mesh_workloads.remove(0);
    mesh.set_workloads(&mesh_workloads).await;
    wait_resolution(&lp, "api", |r| {
        matches!(r, weft_proxy::discovery::Resolution::NotInMesh)
    })
    .await;
    let (status, _) = get(&client(), up).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The proxy's own 503 is counted as a request and a failed response, with no peer.
    let text = weft_tests::wait_metric(
        lp.admin_addr,
        "weft_responses_total",
        &[
            "status_code=\"503\"",
            "classification=\"failure\"",
            "peer=\"-\"",
        ],
        1.0,
    )
    .await;
    assert_eq!(
        weft_tests::metric(&text, "weft_requests_total", &["peer=\"-\""]),
        1.0,
        "{text}"
    );
}

/// A backend that hands the test a release for each request it receives, and answers `done`
/// only once the test fires it.
async fn held_backend() -> (SocketAddr, mpsc::Receiver<oneshot::Sender<()>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let tx = tx.clone();
                    async move {
                        let (release, released) = oneshot::channel();
                        let _ = tx.send(release).await;
                        let _ = released.await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("done"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// A GET through `up` whose response has not come yet; resolves to the status and body.
fn request_in_background(up: SocketAddr) -> tokio::task::JoinHandle<(StatusCode, String)> {
    tokio::spawn(async move {
        let rsp = client()
            .request(
                Request::get(format!("http://{up}/"))
                    .header("host", "api.test")
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = rsp.status();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

// Set up in real time; from the drain on, tokio's clock is paused (a current-thread runtime
// runs the whole mesh), so a wait of virtual seconds proves the drain waits without slowing
// the test.
#[tokio::test]
async fn draining_finishes_in_flight_requests_and_stops_accepting() {
    let (app, mut arrived) = held_backend().await;
    let api = WorkloadDecl::serving("api", "api");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[api.clone(), load.clone()], ALLOW_ALL).await;
    let server = mesh.proxy(&api, Some(app.port()), &[]).await;
    let client_proxy = mesh.proxy(&load, None, &["api"]).await;
    let inbound = server.inbound_addr.unwrap();

    let in_flight = request_in_background(upstream(&client_proxy, "api"));
    // The application holds the request: it is in flight from here on.
    let release = tokio::time::timeout(WAIT, arrived.recv())
        .await
        .unwrap()
        .unwrap();

    // SIGTERM's path: stop accepting, let the request finish.
    tokio::time::pause();
    let grace = Duration::from_secs(60);
    let began = tokio::time::Instant::now();
    let mut drained = tokio::spawn(server.drain(grace));
    // The listener closes: new connections are refused.
    tokio::time::timeout(WAIT, async {
        while TcpStream::connect(inbound).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("inbound listener closed while draining");
    // Half the grace period later the drain still waits for the held request.
    let half = grace / 2;
    assert!(
        tokio::time::timeout(half, &mut drained).await.is_err(),
        "the drain ended with a request in flight"
    );
    assert!(
        !in_flight.is_finished(),
        "the request ended before its release"
    );

    // Released, the request completes through the draining proxy, and the drain ends with
    // it, long before the grace period is over.
    release.send(()).unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), in_flight)
            .await
            .expect("the response came")
            .unwrap(),
        (StatusCode::OK, "done".to_string())
    );
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("the drain ended once the request was done")
        .unwrap();
    assert!(began.elapsed() < grace, "{:?}", began.elapsed());
    drop(client_proxy);
}

// The drain's grace period runs on tokio's clock, paused once the mesh is up: the request is
// held for good, so only the grace period can end the drain.
#[tokio::test]
async fn a_request_outliving_the_grace_period_is_cut_when_the_drain_ends() {
    let (app, mut arrived) = held_backend().await;
    let api = WorkloadDecl::serving("api", "api");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[api.clone(), load.clone()], ALLOW_ALL).await;
    let server = mesh.proxy(&api, Some(app.port()), &[]).await;
    let client_proxy = mesh.proxy(&load, None, &["api"]).await;

    let in_flight = request_in_background(upstream(&client_proxy, "api"));
    let _held = tokio::time::timeout(WAIT, arrived.recv())
        .await
        .unwrap()
        .unwrap();

    tokio::time::pause();
    let grace = Duration::from_secs(30);
    let began = tokio::time::Instant::now();
    server.drain(grace).await;
    let took = began.elapsed();
    assert!(
        took >= grace && took < grace + Duration::from_secs(1),
        "the drain took {took:?} with a grace period of {grace:?}"
    );
    tokio::time::resume();

    // The connection carrying the request is closed: the client gets the client proxy's
    // error, not the application's answer.
    let (status, body) = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("the held request was cut")
        .unwrap();
    assert_ne!(status, StatusCode::OK, "{body}");
    assert_ne!(body, "done");
    drop(client_proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let api = WorkloadDecl::serving("api", "api");
    let mesh = TestMesh::start(std::slice::from_ref(&api), ALLOW_ALL).await;
    let app = backends::http_echo("api").await;
    let p = mesh.proxy(&api, Some(app.port()), &[]).await;
    assert_eq!(admin_get(p.admin_addr, "GET", "/live").await.0, 200);
    assert_eq!(admin_get(p.admin_addr, "GET", "/ready").await.0, 200);
    let (status, text) = admin_get(p.admin_addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(text.ends_with("# EOF\n"), "{text}");
    // Off by default.
    assert_eq!(admin_get(p.admin_addr, "POST", "/shutdown").await.0, 404);

    // Enabled: a POST with the action header stops the proxy; without the header it does not.
    let mut cfg = mesh.proxy_config(&WorkloadDecl::client("stoppable"), None, &[]);
    cfg.admin_shutdown = true;
    cfg.probe_addr = Some(([127, 0, 0, 1], 0).into());
    let stoppable = weft_proxy::Proxy::start(cfg).await.unwrap();
    assert_eq!(
        admin_get(stoppable.admin_addr, "GET", "/shutdown").await.0,
        405
    );
    assert_eq!(
        admin_get(stoppable.admin_addr, "POST", "/shutdown").await.0,
        403
    );
    let probes = stoppable.probe_addr.unwrap();
    assert_eq!(admin_get(probes, "GET", "/live").await.0, 200);
    assert_eq!(admin_get(probes, "GET", "/metrics").await.0, 404);
    assert_eq!(admin_get(probes, "POST", "/shutdown").await.0, 404);
    let mut tcp = tokio::net::TcpStream::connect(stoppable.admin_addr)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut tcp,
        b"POST /shutdown HTTP/1.1\r\nHost: a\r\nweft-admin-action: shutdown\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    tokio::time::timeout(WAIT, stoppable.shutdown_requested())
        .await
        .unwrap();

    // A proxy whose control plane never answers is live but not ready.
    let mut cfg = mesh.proxy_config(&WorkloadDecl::client("orphan"), None, &[]);
    let (_refusing, nobody) = refusing_port();
    cfg.control_addr = nobody.into();
    let orphan = weft_proxy::Proxy::start(cfg).await.unwrap();
    assert_eq!(admin_get(orphan.admin_addr, "GET", "/live").await.0, 200);
    let (status, why) = admin_get(orphan.admin_addr, "GET", "/ready").await;
    assert_eq!(status, 503);
    assert!(why.contains("no certificate yet"), "{why}");

    // The control plane named by DNS (as `weft-control.weft.svc:7443` is in a cluster):
    // `localhost` may resolve to ::1 first, where nothing listens, and the proxy goes on to
    // the next address.
    let mut cfg = mesh.proxy_config(&api, None, &[]);
    cfg.control_addr = format!("localhost:{}", mesh.grpc_addr().port())
        .parse()
        .unwrap();
    let by_name = weft_proxy::Proxy::start(cfg).await.unwrap();
    weft_tests::wait_ready(&by_name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_endpoint_gets_no_new_requests_and_finishes_those_it_has() {
    let (one, release, arrived) = backends::http_gated("one").await;
    let api1 = WorkloadDecl::serving("api-1", "api");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[api1.clone(), load.clone()], ALLOW_ALL).await;
    let _p1 = mesh.proxy(&api1, Some(one.port()), &[]).await;
    let lp = mesh.proxy(&load, None, &["api"]).await;
    let up = upstream(&lp, "api");
    let c = client();
    assert_eq!(get(&c, up).await, (StatusCode::OK, "one".to_string()));

    // A request is in flight on api-1 when api-1 starts terminating.
    let held = {
        let c = c.clone();
        tokio::spawn(async move { weft_tests::get_through(&c, up, "/held").await })
    };
    tokio::time::timeout(WAIT, arrived.notified())
        .await
        .expect("the held request reached api-1");
    let mut leaving = api1.clone();
    leaving.state = Some("terminating".into());
    mesh.set_workloads(&[leaving.clone(), load.clone()]).await;
    wait_resolution(
        &lp,
        "api",
        |r| matches!(r, weft_proxy::discovery::Resolution::Resolved(s) if s.usable().is_empty()),
    )
    .await;

    // No new request reaches it: with no other endpoint, the proxy answers 503 itself.
    let (status, backend) = get(&c, up).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_ne!(backend, "one");
    // The request it holds still completes on its connection.
    release.add_permits(1);
    let (status, backend, _) = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    assert_eq!((status, backend.as_str()), (StatusCode::OK, "one"));

    // Still serving while on its way out, it is used again when nothing else is ready.
    leaving.state = Some("serving".into());
    mesh.set_workloads(&[leaving, load]).await;
    wait_resolution(&lp, "api", |r| !r.usable().is_empty()).await;
    assert_eq!(get(&c, up).await, (StatusCode::OK, "one".to_string()));
}
