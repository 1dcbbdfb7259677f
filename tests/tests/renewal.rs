//! Certificate renewal: the real renewal loop renews between 60 and 70 % (jittered) of the
//! leaf's life (on tokio's paused clock) and not before, and connections opened after a renewal
//! make a fresh TLS handshake with the new certificate, on the inbound side and on the outbound
//! side.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use weft_proxy::Proxy;
use weft_tests::certs::{self, ClientCert};
use weft_tests::{Format, TestMesh, WAIT, WorkloadDecl, backends, upstream};

const ALLOW_ALL: &str = "[policy]\ndefault_inbound = \"allow\"";

fn mesh_leaf(mesh: &TestMesh, spiffe: &str) -> ClientCert {
    let (issuer, inter) = certs::mesh_intermediate(&mesh.data_dir());
    let now = SystemTime::now();
    certs::leaf(
        &issuer,
        &[inter],
        spiffe,
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    )
}

/// Asks `proxy` to renew and waits until it holds the new certificate.
async fn renew(proxy: &Proxy) {
    let mut rx = proxy.shared().credentials.clone();
    let before = rx.borrow_and_update().clone().unwrap();
    proxy.renew_certificate();
    tokio::time::timeout(WAIT, rx.changed())
        .await
        .expect("renewed")
        .unwrap();
    let after = rx.borrow().clone().unwrap();
    assert!(!Arc::ptr_eq(&before, &after));
}

/// The leaf a new TLS connection to `inbound` is served.
async fn served_leaf(inbound: SocketAddr, client: ClientCert) -> CertificateDer<'static> {
    let tcp = TcpStream::connect(inbound).await.unwrap();
    let tls =
        tokio_rustls::TlsConnector::from(certs::client_config(Some(client), weft_ca::ALPN_MESH_H2))
            .connect(weft_ca::tls::server_name(), tcp)
            .await
            .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_after_renewal_is_served_the_new_certificate() {
    let app = backends::http_echo("api").await;
    let api = WorkloadDecl::serving("api", "api");
    let mesh = TestMesh::start(std::slice::from_ref(&api), ALLOW_ALL).await;
    let proxy = mesh.proxy(&api, Some(app.port()), &[]).await;
    let inbound = proxy.inbound_addr.unwrap();
    let load = "spiffe://weft.test/ns/test/sa/load";

    let before = served_leaf(inbound, mesh_leaf(&mesh, load)).await;
    // The same certificate until a renewal: a new handshake alone changes nothing.
    assert_eq!(served_leaf(inbound, mesh_leaf(&mesh, load)).await, before);
    renew(&proxy).await;
    let after = served_leaf(inbound, mesh_leaf(&mesh, load)).await;
    assert_ne!(after, before, "the old certificate is still served");
    assert_eq!(
        weft_ca::identity_of_cert(&after).unwrap().spiffe_id(),
        "spiffe://weft.test/ns/test/sa/api"
    );
}

/// A TLS server posing as a mesh endpoint with `server` (a leaf for the identity discovery
/// promises), answering HTTP/2 with 200. It sends the client certificate of every handshake to
/// `handshakes`.
async fn recording_endpoint(
    server: ClientCert,
    roots: rustls::RootCertStore,
    handshakes: mpsc::UnboundedSender<CertificateDer<'static>>,
) -> SocketAddr {
    let provider = weft_ca::crypto_provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(server.chain, server.key)
        .unwrap();
    cfg.alpn_protocols = vec![weft_ca::ALPN_MESH_H2.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let client = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            handshakes.send(client).unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("recorded"))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

async fn get_through(up: SocketAddr) -> StatusCode {
    let rsp = weft_tests::get_once(up).await;
    let status = rsp.status();
    let _ = rsp.into_body().collect().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_after_renewal_presents_the_new_client_certificate() {
    let api = WorkloadDecl::serving("api", "api");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[api.clone(), load.clone()], ALLOW_ALL).await;
    let bundle =
        weft_ca::TrustBundle::from_pem(&std::fs::read(mesh.bundle_file()).unwrap()).unwrap();
    let (tx, mut handshakes) = mpsc::unbounded_channel();
    let api_leaf = || mesh_leaf(&mesh, "spiffe://weft.test/ns/test/sa/api");
    let first_endpoint = recording_endpoint(api_leaf(), bundle.root_store(), tx.clone()).await;
    let next_endpoint = recording_endpoint(api_leaf(), bundle.root_store(), tx).await;
    mesh.set_port("api", first_endpoint.port()).await;
    let client = mesh.proxy(&load, None, &["api"]).await;
    let up = upstream(&client, "api");

    assert_eq!(get_through(up).await, StatusCode::OK);
    let first = handshakes.recv().await.unwrap();
    assert_eq!(
        weft_ca::identity_of_cert(&first).unwrap().spiffe_id(),
        "spiffe://weft.test/ns/test/sa/load"
    );

    renew(&client).await;
    // The open connection is kept; a request rides it without a handshake.
    assert_eq!(get_through(up).await, StatusCode::OK);
    assert!(handshakes.try_recv().is_err(), "a handshake without need");

    // api moves: the connection to the new endpoint is made with the renewed certificate.
    mesh.set_port("api", next_endpoint.port()).await;
    let port = next_endpoint.port();
    weft_tests::wait_resolved(&client, "api", |s| weft_tests::usable_ports(s) == [port]).await;
    assert_eq!(get_through(up).await, StatusCode::OK);
    let second = tokio::time::timeout(WAIT, handshakes.recv())
        .await
        .expect("a new handshake")
        .unwrap();
    assert_ne!(second, first, "the old client certificate was presented");
    assert_eq!(
        weft_ca::identity_of_cert(&second).unwrap().spiffe_id(),
        "spiffe://weft.test/ns/test/sa/load"
    );
}

// The mesh is set up in real time; the proxy runs on tokio's paused clock from its start. The
// leaf's life is counted on the system clock, which barely moves meanwhile, so the renewal is
// due between 60 and 70 % (jittered) of the leaf's (five-minute) life after it was obtained,
// on tokio's clock.
#[tokio::test]
async fn the_renewal_loop_renews_between_sixty_and_seventy_percent_of_the_leaf_life() {
    let web = WorkloadDecl::client("web");
    let mesh = TestMesh::start_with(
        Format::Toml,
        std::slice::from_ref(&web),
        ALLOW_ALL,
        "leaf_ttl = \"5m\"",
    )
    .await;
    let http = mesh.control.as_ref().unwrap().http_addr;
    tokio::time::pause();
    let proxy = Proxy::start(mesh.proxy_config(&web, None, &[]))
        .await
        .unwrap();
    let mut creds = proxy.shared().credentials.clone();
    creds.wait_for(|c| c.is_some()).await.unwrap();
    let obtained = tokio::time::Instant::now();
    let first = creds.borrow_and_update().clone().unwrap();
    let life = first.not_after().duration_since(SystemTime::now()).unwrap();
    assert!(
        life > Duration::from_secs(290) && life <= Duration::from_secs(300),
        "{life:?}"
    );
    // The README's promise, not the crate's constants: a changed constant must fail here.
    let earliest = life.mul_f64(0.6);
    let latest = life.mul_f64(0.7);

    // Up to a second before 60 %: still the first certificate.
    assert!(
        tokio::time::timeout(earliest - Duration::from_secs(1), creds.changed())
            .await
            .is_err(),
        "renewed {:?} after the leaf was obtained, before 60 % ({earliest:?})",
        obtained.elapsed()
    );
    // By a second after 70 %: a new one.
    tokio::time::timeout(latest - earliest + Duration::from_secs(2), creds.changed())
        .await
        .unwrap_or_else(|_| panic!("not renewed by {:?}", obtained.elapsed()))
        .unwrap();
    let second = creds.borrow().clone().unwrap();
    assert!(!Arc::ptr_eq(&first, &second));
    let (_, text) = weft_tests::admin_get(http, "GET", "/metrics").await;
    assert_eq!(
        weft_tests::metric(&text, "weft_control_certify_total", &["result=\"issued\""]),
        2.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_renews_with_its_certificate_whatever_strangers_hold() {
    // Callers without a certificate from this address get one Certify call and no more (the
    // bucket refills too slowly to matter here): the proxy's first certificate takes it.
    let api = WorkloadDecl::serving("api", "api");
    let mesh = TestMesh::start(
        std::slice::from_ref(&api),
        "[policy]\ndefault_inbound = \"allow\"\n\
         [control.limits]\ncertify_burst_per_address = 1\ncertify_rate_per_address = 0.001",
    )
    .await;
    let proxy = mesh.proxy(&api, None, &[]).await;
    // A renewal presents the certificate it replaces, so it is not a stranger's call.
    renew(&proxy).await;
    renew(&proxy).await;
    let text = weft_tests::wait_metric(
        mesh.control.as_ref().unwrap().http_addr,
        "weft_control_certify_total",
        &["result=\"issued\""],
        3.0,
    )
    .await;
    assert_eq!(
        weft_tests::metric(
            &text,
            "weft_control_limited_total",
            &["reason=\"certify_address_rate\""]
        ),
        0.0,
        "{text}"
    );
}
