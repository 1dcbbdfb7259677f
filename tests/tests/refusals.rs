//! Peers that are not in the mesh, or not allowed, are refused: plaintext, a self-made CA, an
//! expired leaf, no client certificate, an identity the policy does not admit, and (on the
//! client side) a server proving another identity than discovery promised.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use tokio::net::TcpStream;
use weft_proxy::Proxy;
use weft_tests::certs::{self, ClientCert};
use weft_tests::direct::h2_request;
use weft_tests::{LogCapture, TestMesh, WAIT, WorkloadDecl, backends, upstream, wait_metric};

const ONLY_LOAD: &str = "[policy]\ndefault_inbound = \"allow\"\n\n[[policy.authorizations]]\nservice = \"api.test\"\nallow = [\"test/load\"]";

struct Server {
    mesh: TestMesh,
    proxy: Proxy,
    inbound: SocketAddr,
}

async fn server() -> Server {
    let app = backends::http_echo("api").await;
    let api = WorkloadDecl::serving("api", "api");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[api.clone(), load], ONLY_LOAD).await;
    let proxy = mesh.proxy(&api, Some(app.port()), &[]).await;
    let inbound = proxy.inbound_addr.unwrap();
    Server {
        mesh,
        proxy,
        inbound,
    }
}

fn mesh_leaf(mesh: &TestMesh, spiffe: &str, from: SystemTime, to: SystemTime) -> ClientCert {
    weft_tests::direct::mesh_leaf_between(&mesh.data_dir(), spiffe, from, to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_mesh_identity_is_served() {
    // The control for every refusal below: the same client code, with a good certificate.
    let s = server().await;
    let now = SystemTime::now();
    let good = mesh_leaf(
        &s.mesh,
        "spiffe://weft.test/ns/test/sa/load",
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    );
    assert_eq!(h2_request(s.inbound, Some(good)).await, Ok(StatusCode::OK));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused() {
    let s = server().await;
    assert!(
        !weft_tests::plaintext_get(s.inbound)
            .await
            .contains("HTTP/1.1 200"),
        "served plaintext"
    );
    wait_metric(
        s.proxy.admin_addr,
        "weft_inbound_tls_rejected_total",
        &["reason=\"not_tls\""],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_made_ca_is_refused() {
    let s = server().await;
    let forged = certs::self_made("spiffe://weft.test/ns/test/sa/load");
    assert!(h2_request(s.inbound, Some(forged)).await.is_err());
    wait_metric(
        s.proxy.admin_addr,
        "weft_inbound_tls_rejected_total",
        &["reason=\"unknown_ca\""],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_leaf_is_refused() {
    let s = server().await;
    let now = SystemTime::now();
    let expired = mesh_leaf(
        &s.mesh,
        "spiffe://weft.test/ns/test/sa/load",
        now - Duration::from_secs(7200),
        now - Duration::from_secs(3600),
    );
    assert!(h2_request(s.inbound, Some(expired)).await.is_err());
    wait_metric(
        s.proxy.admin_addr,
        "weft_inbound_tls_rejected_total",
        &["reason=\"expired_certificate\""],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_client_certificate_is_refused() {
    let s = server().await;
    assert!(h2_request(s.inbound, None).await.is_err());
    wait_metric(
        s.proxy.admin_addr,
        "weft_inbound_tls_rejected_total",
        &["reason=\"no_client_certificate\""],
        1.0,
    )
    .await;
}

fn closed(r: Result<StatusCode, String>) {
    weft_tests::direct::assert_closed("a client the policy does not admit", r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_the_policy_does_not_admit_is_closed_at_connection_time() {
    let s = server().await;
    let now = SystemTime::now();
    let intruder = mesh_leaf(
        &s.mesh,
        "spiffe://weft.test/ns/test/sa/intruder",
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    );
    closed(h2_request(s.inbound, Some(intruder)).await);
    wait_metric(
        s.proxy.admin_addr,
        "weft_inbound_authz_denied_total",
        &["client=\"spiffe://weft.test/ns/test/sa/intruder\""],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_trust_domain_is_refused() {
    // Signed by the mesh's own CA, so only the trust-domain check can refuse it.
    let s = server().await;
    let now = SystemTime::now();
    let foreign = mesh_leaf(
        &s.mesh,
        "spiffe://other.test/ns/test/sa/load",
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    );
    assert_refused_at_handshake(&s, foreign, "foreign_trust_domain").await;
}

/// `cert` is refused during the handshake, counted under `reason`, and no request gets in.
async fn assert_refused_at_handshake(s: &Server, cert: ClientCert, reason: &str) {
    assert!(h2_request(s.inbound, Some(cert)).await.is_err());
    let text = wait_metric(
        s.proxy.admin_addr,
        "weft_inbound_tls_rejected_total",
        &[&format!("reason=\"{reason}\"")],
        1.0,
    )
    .await;
    assert_eq!(
        weft_tests::metric(&text, "weft_requests_total", &["direction=\"inbound\""]),
        0.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_a_spiffe_id_is_refused() {
    let s = server().await;
    let (issuer, inter) = certs::mesh_intermediate(&s.mesh.data_dir());
    let now = SystemTime::now();
    let anonymous = certs::leaf_with_sans(
        &issuer,
        &[inter],
        vec![rcgen::SanType::DnsName("load.test".try_into().unwrap())],
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    );
    assert_refused_at_handshake(&s, anonymous, "no_identity").await;
}

// On the current-thread runtime every task of the mesh runs on the test's thread, where the
// log capture sees the client proxy's reason for refusing the endpoint.
#[tokio::test]
async fn the_client_refuses_a_server_proving_another_identity() {
    let logs = LogCapture::install();
    let app = backends::http_echo("impostor-app").await;
    let api = WorkloadDecl::serving("api", "api");
    let impostor = WorkloadDecl::client("impostor");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[api.clone(), impostor.clone(), load.clone()], ONLY_LOAD).await;
    // The impostor's proxy, certified as test/impostor, listens where discovery says api is.
    let imp = Proxy::start(mesh.proxy_config(&impostor, Some(app.port()), &[]))
        .await
        .unwrap();
    mesh.set_port("api", imp.inbound_addr.unwrap().port()).await;
    weft_tests::wait_ready(&imp).await;
    let client = mesh.proxy(&load, None, &["api"]).await;

    let rsp = weft_tests::get_once(upstream(&client, "api")).await;
    // The proxy's own answer: no endpoint of api could be used.
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        rsp.headers().get("x-backend").is_none(),
        "the impostor's app was reached"
    );
    assert!(
        rsp.headers().contains_key("weft-proxy-error"),
        "{:?}",
        rsp.headers()
    );
    // And why: the endpoint proved the impostor's identity where api's was expected.
    let (proven, expected) = (
        "spiffe://weft.test/ns/test/sa/impostor",
        "spiffe://weft.test/ns/test/sa/api",
    );
    let refusals: Vec<String> = logs
        .lines_with(&[proven, expected])
        .into_iter()
        // The identity found first, then the one expected (as "proved X, expected Y" says).
        .filter(|l| l.find(proven) < l.rfind(expected))
        .collect();
    assert!(
        !refusals.is_empty(),
        "no log names the identity mismatch:\n{}",
        logs.lines_with(&[]).join("\n")
    );
    // The impostor's application never saw a request.
    let text = weft_tests::admin_get(imp.admin_addr, "GET", "/metrics")
        .await
        .1;
    assert_eq!(
        weft_tests::metric(&text, "weft_requests_total", &["direction=\"inbound\""]),
        0.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_added_for_rotation_is_trusted_without_restarting_proxies() {
    let app = backends::http_echo("api").await;
    let api = WorkloadDecl::serving("api", "api");
    let load = WorkloadDecl::client("load");
    let mut mesh = TestMesh::start(&[api.clone(), load.clone()], ONLY_LOAD).await;
    let proxy = mesh.proxy(&api, Some(app.port()), &[]).await;
    let inbound = proxy.inbound_addr.unwrap();

    // A second CA, as a mesh rotating to a new root would have.
    let next = mesh.dir.path().join("next-ca");
    let td = weft_core::TrustDomain::new("weft.test").unwrap();
    weft_ca::CertificateAuthority::load_or_generate(&td, &Default::default(), &next).unwrap();
    let from_next = || {
        let (issuer, inter) = certs::mesh_intermediate(&next);
        let now = SystemTime::now();
        certs::leaf(
            &issuer,
            &[inter],
            "spiffe://weft.test/ns/test/sa/load",
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
    };
    assert!(
        h2_request(inbound, Some(from_next())).await.is_err(),
        "trusted before rotation"
    );

    // The control plane restarts with the new root as an extra root; the running proxy learns
    // it from discovery and trusts both roots.
    mesh.stop_control().await;
    mesh.set_ca_extra(&format!(
        "extra_roots = [\"{}\"]",
        next.join("root.pem").display()
    ));
    mesh.set_workloads(&[api.clone(), load.clone()]).await;
    mesh.start_control().await;
    let mut creds = proxy.shared().credentials.clone();
    tokio::time::timeout(
        WAIT,
        creds.wait_for(|c| {
            c.as_ref()
                .is_some_and(|c| c.trust_bundle().roots().len() == 2)
        }),
    )
    .await
    .expect("the proxy adopted the two-root bundle")
    .unwrap();
    assert_eq!(
        h2_request(inbound, Some(from_next())).await,
        Ok(StatusCode::OK)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_sharing_an_identity_keep_their_own_policies() {
    // billing-1 and catalog-1 both run as `shared`, as pods of one ServiceAccount do; each
    // service admits a different client.
    const RULES: &str = "[policy]\ndefault_inbound = \"deny\"\n\n[[policy.authorizations]]\nservice = \"billing.test\"\nallow = [\"test/checkout\"]\n\n[[policy.authorizations]]\nservice = \"catalog.test\"\nallow = [\"test/web\"]";
    let mut billing = WorkloadDecl::serving("billing-1", "billing");
    billing.identity = Some("shared".into());
    let mut catalog = WorkloadDecl::serving("catalog-1", "catalog");
    catalog.identity = Some("shared".into());
    let mesh = TestMesh::start(&[billing.clone(), catalog.clone()], RULES).await;
    let billing_app = backends::http_echo("billing").await;
    let catalog_app = backends::http_echo("catalog").await;
    let bp = mesh.proxy(&billing, Some(billing_app.port()), &[]).await;
    let cp = mesh.proxy(&catalog, Some(catalog_app.port()), &[]).await;
    let now = SystemTime::now();
    let client = |account: &str| {
        mesh_leaf(
            &mesh,
            &format!("spiffe://weft.test/ns/test/sa/{account}"),
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
    };
    let (billing_in, catalog_in) = (bp.inbound_addr.unwrap(), cp.inbound_addr.unwrap());
    assert_eq!(
        h2_request(billing_in, Some(client("checkout"))).await,
        Ok(StatusCode::OK)
    );
    assert_eq!(
        h2_request(catalog_in, Some(client("web"))).await,
        Ok(StatusCode::OK)
    );
    // Allowed on one, a client is not allowed on the other for sharing its identity.
    closed(h2_request(billing_in, Some(client("web"))).await);
    closed(h2_request(catalog_in, Some(client("checkout"))).await);
}

/// Waits until `proxy`'s settings say whether the server on `port` admits clients without a
/// mesh identity.
async fn wait_plaintext_policy(proxy: &Proxy, port: u16, admits: bool) {
    let want = if admits {
        weft_core::policy::Decision::Allow
    } else {
        weft_core::policy::Decision::Deny
    };
    let mut settings = proxy.shared().settings.clone();
    tokio::time::timeout(
        WAIT,
        settings.wait_for(|s| {
            s.as_ref()
                .is_some_and(|s| s.policy(port).on_connection(None) == want)
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("the proxy's policy for port {port} never became {want:?}"))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_meant_for_the_application_is_not_taken_for_a_mesh_peer() {
    // A client outside the mesh that speaks TLS with the usual ALPN (`h2`) is an outsider,
    // refused under the mTLS-only default, with its own reason.
    let s = server().await;
    let tcp = TcpStream::connect(s.inbound).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(certs::client_config(None, b"h2"));
    let handshake = connector.connect(weft_ca::tls::server_name(), tcp).await;
    assert!(
        handshake.is_err(),
        "the proxy answered a non-mesh handshake"
    );
    wait_metric(
        s.proxy.admin_addr,
        "weft_inbound_tls_rejected_total",
        &["reason=\"not_mesh_tls\""],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_the_mesh_are_admitted_only_where_the_policy_says() {
    let app = backends::http_echo("api").await;
    let api = WorkloadDecl::serving("api", "api");
    let load = WorkloadDecl::client("load");
    // Every service admits plaintext clients, but a rule narrows api to one identity.
    let narrowed = "[policy]\ndefault_inbound = \"allow-unauthenticated\"\n\n\
                    [[policy.authorizations]]\nservice = \"api.test\"\nallow = [\"test/load\"]";
    let mesh = TestMesh::start(&[api.clone(), load], narrowed).await;
    let proxy = mesh.proxy(&api, Some(app.port()), &[]).await;
    let inbound = proxy.inbound_addr.unwrap();
    // The workload's port is declared once the proxy has bound it: until the proxy's settings
    // carry the rule for that port, the port has the mesh default.
    wait_plaintext_policy(&proxy, inbound.port(), false).await;
    assert!(!weft_tests::plaintext_get(inbound).await.contains(" 200 "));
    wait_metric(
        proxy.admin_addr,
        "weft_inbound_tls_rejected_total",
        &["reason=\"not_tls\""],
        1.0,
    )
    .await;

    // A mesh client the rule does not name is refused too: the rule narrows the default.
    let now = SystemTime::now();
    let web = mesh_leaf(
        &mesh,
        "spiffe://weft.test/ns/test/sa/web",
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    );
    closed(h2_request(inbound, Some(web)).await);

    // The rule names `unauthenticated`: plaintext is served, and counted as such.
    let path = mesh.watcher().current().source.clone().unwrap();
    let edited = std::fs::read_to_string(&path).unwrap().replace(
        "allow = [\"test/load\"]",
        "allow = [\"test/load\", \"unauthenticated\"]",
    );
    mesh.write_raw(&edited);
    // The edit reaches the proxy through the control plane's settings stream.
    wait_plaintext_policy(&proxy, inbound.port(), true).await;
    let served = weft_tests::plaintext_get(inbound).await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    wait_metric(
        proxy.admin_addr,
        "weft_requests_total",
        &["direction=\"inbound\"", "peer=\"unauthenticated\""],
        1.0,
    )
    .await;
}
