//! The control plane's API seen from outside: Certify proves before it signs, Watch needs a
//! mesh certificate and serves each proxy only its own view.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use rustls_pki_types::CertificateDer;
use tonic::Code;
use weft_api::v1::discovery_client::DiscoveryClient;
use weft_api::v1::identity_client::IdentityClient;
use weft_api::{CertifyRequest, Credential, WatchRequest};
use weft_ca::{LeafKey, TrustBundle};
use weft_core::{Identity, ServiceName, TrustDomain};
use weft_tests::{TestMesh, WorkloadDecl, admin_get, wait_snapshot};

const WEB_ONLY: &str = "[policy]\ndefault_inbound = \"allow\"\n\n[[policy.authorizations]]\nservice = \"api.test\"\nallow = [\"test/web\"]";

async fn anonymous_channel(mesh: &TestMesh) -> tonic::transport::Channel {
    let bundle = TrustBundle::from_pem(&std::fs::read(mesh.bundle_file()).unwrap()).unwrap();
    let td = TrustDomain::new("weft.test").unwrap();
    let tls = weft_ca::tls::anonymous_client_config(&bundle, &Identity::control_plane(&td));
    let cfg = mesh.proxy_config(&WorkloadDecl::client("x"), None, &[]);
    weft_proxy::control::channel(&cfg, tls).await.unwrap()
}

fn id(name: &str) -> Identity {
    Identity::new(TrustDomain::new("weft.test").unwrap(), "test", name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_without_a_mesh_certificate_is_refused() {
    let mesh = TestMesh::start(&[WorkloadDecl::client("web")], "").await;
    let ch = anonymous_channel(&mesh).await;
    let err = DiscoveryClient::new(ch)
        .watch(WatchRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certify_signs_only_what_the_credential_proves() {
    let mesh = TestMesh::start(&[WorkloadDecl::client("web")], "").await;
    let token = std::fs::read_to_string(mesh.data_dir().join("bootstrap-token")).unwrap();
    let mut client = IdentityClient::new(anonymous_channel(&mesh).await);
    let key = LeafKey::generate().unwrap();
    let request = |token: &str, workload: &str, csr_for: &str| CertifyRequest {
        credential: Some(Credential {
            platform: "local".into(),
            token: token.into(),
            workload: workload.into(),
        }),
        csr: key.csr(&id(csr_for)).unwrap(),
    };

    let ok = client
        .certify(request(&token, "test/web", "web"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.identity, "spiffe://weft.test/ns/test/sa/web");
    let leaf = CertificateDer::from(ok.leaf);
    assert_eq!(weft_ca::identity_of_cert(&leaf).unwrap(), id("web"));
    assert!(!ok.trust_bundle.is_empty());

    let wrong_token = client
        .certify(request(&"0".repeat(64), "test/web", "web"))
        .await
        .unwrap_err();
    assert_eq!(wrong_token.code(), Code::PermissionDenied);
    let unknown = client
        .certify(request(&token, "test/ghost", "ghost"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::PermissionDenied);
    let other_identity = client
        .certify(request(&token, "test/web", "admin"))
        .await
        .unwrap_err();
    assert_eq!(other_identity.code(), Code::InvalidArgument);
    assert!(
        other_identity
            .message()
            .contains("proves spiffe://weft.test/ns/test/sa/web")
    );

    let http = mesh.control.as_ref().unwrap().http_addr;
    assert_eq!(admin_get(http, "GET", "/ready").await.0, 200);
    let (_, metrics) = admin_get(http, "GET", "/metrics").await;
    assert_eq!(
        weft_tests::metric(
            &metrics,
            "weft_control_certify_total",
            &["result=\"issued\""]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        weft_tests::metric(
            &metrics,
            "weft_control_certify_total",
            &["result=\"attest_failed\""]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_proxy_sees_only_the_services_it_may_reach() {
    let api = WorkloadDecl::serving("api", "api");
    let web = WorkloadDecl::serving("web", "web");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[api.clone(), web.clone(), load.clone()], WEB_ONLY).await;
    let api_svc = ServiceName::new("test", "api").unwrap();
    let web_svc = ServiceName::new("test", "web").unwrap();
    let web_proxy = mesh.proxy(&web, Some(1), &[]).await;
    let load_proxy = mesh.proxy(&load, None, &[]).await;
    let api_proxy = mesh.proxy(&api, Some(1), &[]).await;
    wait_snapshot(&web_proxy, |s| s.services.contains_key(&api_svc)).await;
    wait_snapshot(&load_proxy, |s| {
        s.services.contains_key(&web_svc) && !s.services.contains_key(&api_svc)
    })
    .await;
    // api's own inbound policy is the allow list that names web.
    wait_snapshot(&api_proxy, |s| {
        s.inbound.authorize(&id("web")) == weft_core::policy::Decision::Allow
            && s.inbound.authorize(&id("load")) == weft_core::policy::Decision::Deny
    })
    .await;
}
