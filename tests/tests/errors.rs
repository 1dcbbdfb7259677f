//! The proxies' own answers, end to end: an error on the data path becomes an HTTP status for
//! an HTTP caller and a gRPC status (a trailers-only response) for a gRPC caller, and its
//! reason reaches only trusted callers (the application through its own proxy, mesh peers),
//! never a client outside the mesh.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::SocketAddr;

use http::StatusCode;
use tokio::net::TcpListener;
use weft_api::v1::identity_client::IdentityClient;
use weft_tests::{TestMesh, WAIT, WorkloadDecl, pair, upstream};

/// An address on loopback where nothing listens: the application is down.
async fn nothing_listening() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_caller_gets_a_grpc_status_and_an_http_caller_an_http_one() {
    let app = nothing_listening().await;
    let p = pair(app, "auto").await;

    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", p.upstream))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = IdentityClient::new(ch)
        .certify(weft_api::CertifyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains(&format!("application at {app}")),
        "{err:?}"
    );

    let rsp = weft_tests::get_once(p.upstream).await;
    assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
    let reason = rsp.headers()["weft-proxy-error"].to_str().unwrap();
    assert!(
        reason.contains(&format!("application at {app}")),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reason_reaches_mesh_peers_but_not_clients_outside_the_mesh() {
    let app = nothing_listening().await;
    let api = WorkloadDecl::serving("api", "api");
    let load = WorkloadDecl::client("load");
    let open = "[policy]\ndefault_inbound = \"allow-unauthenticated\"";
    let mesh = TestMesh::start(&[api.clone(), load.clone()], open).await;
    let server = mesh.proxy(&api, Some(app.port()), &[]).await;
    let client = mesh.proxy(&load, None, &["api"]).await;
    let inbound = server.inbound_addr.unwrap();

    // A mesh peer (here through the caller's own proxy) is told why.
    let rsp = weft_tests::get_once(upstream(&client, "api")).await;
    assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
    assert!(rsp.headers().contains_key("weft-proxy-error"));

    // A plaintext client the policy admits gets the status and nothing of the inside.
    let mut settings = server.shared().settings.clone();
    tokio::time::timeout(
        WAIT,
        settings.wait_for(|s| {
            s.as_ref().is_some_and(|s| {
                s.policy(inbound.port()).on_connection(None) == weft_core::policy::Decision::Allow
            })
        }),
    )
    .await
    .unwrap()
    .unwrap();
    let text = weft_tests::plaintext_get(inbound).await;
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("weft-proxy-error"),
        "{text}"
    );
    assert!(!text.contains(&app.to_string()), "{text}");
    assert!(text.ends_with("Bad Gateway\n"), "{text}");
}
