//! Live tap, end to end: a proxy's tap listener streams the heads of exactly the requests a
//! watch's filter selects, to the control plane's identity and those the mesh file names, and
//! refuses every other mesh identity.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use weft_api::v1::tap_client::TapClient;
use weft_api::{TapEvent, TapRequest};
use weft_tests::certs::{ClientCert, client_config, leaf, mesh_intermediate};
use weft_tests::{TestMesh, WAIT, WorkloadDecl, backends, upstream};

const LOAD_ID: &str = "spiffe://weft.test/ns/test/sa/load";
const CONTROL_ID: &str = "spiffe://weft.test/ns/weft-system/sa/weft-control";
const OPS_ID: &str = "spiffe://weft.test/ns/test/sa/ops";

/// A leaf from the mesh's own intermediate for `spiffe_id`: any workload could hold one.
fn mesh_leaf(mesh: &TestMesh, spiffe_id: &str) -> ClientCert {
    let (issuer, intermediate) = mesh_intermediate(&mesh.data_dir());
    let now = SystemTime::now();
    leaf(
        &issuer,
        &[intermediate],
        spiffe_id,
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    )
}

/// A Tap client over mutual TLS to `addr`, presenting `cert`.
async fn tap_client(addr: SocketAddr, cert: ClientCert) -> TapClient<tonic::transport::Channel> {
    let tls = tokio_rustls::TlsConnector::from(client_config(Some(cert), weft_ca::ALPN_MESH_H2));
    let connector = tower::service_fn(move |_: http::Uri| {
        let tls = tls.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let io = tls
                .connect(rustls_pki_types::ServerName::try_from("tap").unwrap(), tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(io))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://tap")
        .connect_with_connector(connector)
        .await
        .unwrap();
    TapClient::new(channel)
}

async fn send(up: SocketAddr, method: &str, path: &str) {
    let client = weft_tests::http_client();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{up}{path}"))
        .header("user-agent", "tap-test")
        .header("authorization", "Bearer secret")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let rsp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let _ = rsp.into_body().collect().await.unwrap();
}

async fn next(events: &mut tonic::Streaming<TapEvent>) -> TapEvent {
    tokio::time::timeout(WAIT, events.message())
        .await
        .expect("an event in time")
        .unwrap()
        .expect("the stream goes on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_shows_exactly_the_filtered_requests_to_allowed_identities_only() {
    let app = backends::http_echo("web").await;
    let web = WorkloadDecl::serving("web", "web");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(
        &[web.clone(), load.clone()],
        &format!(
            "[policy]\ndefault_inbound = \"allow\"\n\n[observability.tap]\nclients = [\"{OPS_ID}\"]\n"
        ),
    )
    .await;
    let mut web_cfg = mesh.proxy_config(&web, Some(app.port()), &[]);
    web_cfg.tap_addr = Some(([127, 0, 0, 1], 0).into());
    let web_proxy = mesh.start_proxy(web_cfg).await;
    let tap_addr = web_proxy.tap_addr.unwrap();
    let load_proxy = mesh.proxy(&load, None, &["web"]).await;
    let up = upstream(&load_proxy, "web");

    // The control plane's identity may watch; the watch is in place once the call returns.
    let mut control = tap_client(tap_addr, mesh_leaf(&mesh, CONTROL_ID)).await;
    let mut events = control
        .watch(TapRequest {
            path_prefix: "/api".into(),
            method: "GET".into(),
            ..TapRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    send(up, "GET", "/api/one").await;
    send(up, "GET", "/other").await;
    send(up, "POST", "/api/posted").await;
    send(up, "GET", "/api/two").await;
    // Events come in order: nothing the filter refuses came between these two.
    let first = next(&mut events).await;
    let second = next(&mut events).await;
    assert_eq!(
        (first.path.as_str(), second.path.as_str()),
        ("/api/one", "/api/two")
    );
    assert_eq!(first.direction, "inbound");
    assert_eq!(first.method, "GET");
    assert_eq!(first.status, 200);
    assert_eq!(first.source_identity, LOAD_ID);
    assert_eq!(
        first.destination_identity,
        "spiffe://weft.test/ns/test/sa/web"
    );
    assert_eq!(first.workload, "test/web");
    assert!(first.mtls);
    assert!(first.latency_ms > 0.0);
    let headers: Vec<(&str, &str)> = first
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(
        headers,
        [("user-agent", "tap-test")],
        "only allowlisted headers"
    );

    // Another mesh workload may not.
    let mut intruder = tap_client(tap_addr, mesh_leaf(&mesh, LOAD_ID)).await;
    let refused = intruder.watch(TapRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // An identity the mesh file names may.
    let mut ops = tap_client(tap_addr, mesh_leaf(&mesh, OPS_ID)).await;
    let mut all = ops
        .watch(TapRequest {
            source: "spiffe://weft.test/ns/test/".into(),
            ..TapRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    send(up, "PUT", "/anything").await;
    assert_eq!(next(&mut all).await.path, "/anything");
}
