//! One mesh across platforms: a single control plane runs the Kubernetes and the Nomad
//! adapters at once (each against its fake API), a pod's proxy and a Nomad task's proxy get
//! certificates in one trust domain, and an authorization rule written once in the mesh file
//! lets the pod call the Nomad service and refuses the other direction.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use weft_core::ServiceName;
use weft_tests::backends;
use weft_tests::conformance::{self, addrs};
use weft_tests::fake_kube::FakeKube;
use weft_tests::fake_nomad::{FakeNomad, ServiceRegistration};
use weft_tests::jwt::{Claims, TestKey};
use weft_tests::kube_objects::{self as k8s, Condition, SliceEndpoint, SvcPort, TokenFor};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_and_a_nomad_task_share_one_mesh_and_one_policy() {
    weft_tests::trace_init();
    let kube = FakeKube::start().await;
    let nomad = FakeNomad::start().await;
    let key = TestKey::fixture(1);
    nomad.set_keys(&[&key]);
    let dir = tempfile::tempdir().unwrap();
    // web (a pod) may call api (a Nomad service); web admits only itself, so api may not
    // call web.
    let (control, stop) = weft_tests::control_plane_from_file(
        dir.path(),
        &format!(
            r#"[[policy.authorizations]]
service = "api.shop"
allow = ["shop/web"]
[[policy.authorizations]]
service = "web.shop"
allow = ["shop/web"]
[platforms.kubernetes]
kubeconfig = "{kubeconfig}"
[platforms.nomad]
address = "{nomad}"
"#,
            kubeconfig = kube.kubeconfig(dir.path()).display(),
            nomad = nomad.url(),
        ),
    )
    .await;
    let bundle = std::fs::read_to_string(&control.trust_bundle_file).unwrap();

    // web: a pod of ServiceAccount web, its proxy presenting a projected token.
    kube.apply(k8s::namespace("shop", Some("enabled")));
    kube.apply(k8s::pod("shop", "web-0", "web", true, LOCAL));
    TokenFor::new("shop", "web-0", "web").register(&kube, "token-web-0");
    let web_token = dir.path().join("web.token");
    std::fs::write(&web_token, "token-web-0").unwrap();
    let web_app = backends::http_echo("web").await;
    let web = weft_proxy::Proxy::start(weft_proxy::ProxyConfig {
        trust_bundle_pem: Some(bundle.clone()),
        namespace: "shop".into(),
        account: Some("web".into()),
        platform: "kubernetes".into(),
        token_file: web_token,
        ..weft_tests::loopback_proxy_config(
            control.grpc_addr,
            "web-0",
            Some(web_app.port()),
            &["api"],
        )
    })
    .await
    .unwrap();

    // api: a Nomad task's proxy presenting its workload-identity JWT.
    let api_app = backends::http_echo("api").await;
    let api_jwt = dir.path().join("api.jwt");
    std::fs::write(
        &api_jwt,
        Claims::task("shop", "api", "alloc-api", "weft-proxy").mint(&key),
    )
    .unwrap();
    nomad.register(
        ServiceRegistration::new("shop", "api", "127.0.0.1", api_app.port())
            .job("api")
            .alloc("alloc-api")
            .tags(&["weft"]),
    );
    let api = weft_proxy::Proxy::start(weft_proxy::ProxyConfig {
        trust_bundle_pem: Some(bundle),
        namespace: "shop".into(),
        platform: "nomad".into(),
        token_file: api_jwt,
        account: Some("api".into()),
        ..weft_tests::loopback_proxy_config(
            control.grpc_addr,
            "alloc-api",
            Some(api_app.port()),
            &["web"],
        )
    })
    .await
    .unwrap();
    weft_tests::wait_ready(&web).await;
    weft_tests::wait_ready(&api).await;

    // Each side's service points at its proxy's inbound listener.
    let api_inbound = api.inbound_addr.unwrap().port();
    nomad.register(
        ServiceRegistration::new("shop", "api", "127.0.0.1", api_app.port())
            .job("api")
            .alloc("alloc-api")
            .tags(&["weft", &format!("weft-inbound={api_inbound}")]),
    );
    let web_inbound = web.inbound_addr.unwrap().port();
    kube.apply(k8s::service(
        "shop",
        "web",
        None,
        &[SvcPort::new("http", 80)],
    ));
    kube.apply(k8s::slice(
        "shop",
        "web-1",
        "web",
        &[("http", web_inbound)],
        &[SliceEndpoint {
            pod: Some("web-0".into()),
            ip: LOCAL,
            condition: Condition::Ready,
        }],
    ));
    let svc = |n: &str| ServiceName::new("shop", n).unwrap();
    conformance::until(&control.registry, "web and api, from two platforms", |s| {
        addrs(s, &svc("api")) == [SocketAddr::new(LOCAL, api_inbound)]
            && addrs(s, &svc("web")) == [SocketAddr::new(LOCAL, web_inbound)]
    })
    .await;
    let snap = control.registry.snapshot();
    assert!(snap.source("kubernetes").any(|s| s.name == svc("web")));
    assert!(snap.source("nomad").any(|s| s.name == svc("api")));

    // The pod calls the Nomad service: allowed, and api sees web's Kubernetes identity.
    weft_tests::assert_mesh_call(
        &web,
        "api",
        &api,
        "api",
        "spiffe://weft.test/ns/shop/sa/web",
    )
    .await;
    // The Nomad task calls the pod: the same file's rule refuses it.
    weft_tests::assert_mesh_refused(&api, "web").await;
    control.shutdown().await;
    stop.cancel();
}
