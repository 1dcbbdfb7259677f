//! The Kubernetes adapter against the fake API server, beyond the shared conformance suite:
//! paged lists, cut and ended watches and API server restarts without a relist, namespace
//! restriction, every attestation refusal, and a control plane that issues ServiceAccount
//! identities to two proxies that then talk mTLS by service name.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use weft_core::platform::{AttestError, Credential, Platform};
use weft_core::{Registry, ServiceName};
use weft_kubernetes::{KubernetesPlatform, KubernetesSettings};
use weft_tests::conformance::{self, addrs};
use weft_tests::fake_kube::FakeKube;
use weft_tests::kube_objects::{self as k8s, Condition, SliceEndpoint, SvcPort, TokenFor};
use weft_tests::{WAIT, admin_get, backends};

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

type Running = weft_tests::RunningPlatform<KubernetesPlatform>;

/// Runs the adapter into a fresh registry. Its kubeconfig is read once, when the client is
/// built.
async fn running(fake: &FakeKube, settings: KubernetesSettings) -> Running {
    let dir = tempfile::tempdir().unwrap();
    Running::start(weft_tests::kube_platform(fake, dir.path(), settings).await)
}

fn svc(ns: &str, name: &str) -> ServiceName {
    ServiceName::new(ns, name).unwrap()
}

/// A Service `name` on port 80 (target 8080) with one ready, meshed pod at `pod_ip`.
fn add_service(fake: &FakeKube, ns: &str, name: &str, cluster_ip: Option<IpAddr>, pod_ip: IpAddr) {
    let pod = format!("{name}-0");
    fake.apply(k8s::pod(ns, &pod, name, true, pod_ip));
    let mut port = SvcPort::new("http", 80);
    port.target = serde_json::json!(8080);
    fake.apply(k8s::service(ns, name, cluster_ip, &[port]));
    fake.apply(k8s::slice(
        ns,
        &format!("{name}-abc"),
        name,
        &[("http", 8080)],
        &[SliceEndpoint {
            pod: Some(pod),
            ip: pod_ip,
            condition: Condition::Ready,
        }],
    ));
}

/// The list requests (not watches) the fake has served for `path`.
fn lists(fake: &FakeKube, path: &str) -> Vec<String> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == path && !r.query.contains("watch="))
        .map(|r| r.query)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_lists_and_cluster_ips() {
    let fake = FakeKube::start().await;
    fake.set_page_limit(Some(2));
    for i in 0..5 {
        add_service(
            &fake,
            "shop",
            &format!("s{i}"),
            Some(ip(&format!("10.96.0.{}", 10 + i))),
            ip(&format!("10.1.0.{}", 10 + i)),
        );
    }
    let run = running(&fake, KubernetesSettings::default()).await;
    run.until("five services, each with its endpoint", |s| {
        (0..5).all(|i| addrs(s, &svc("shop", &format!("s{i}"))).len() == 1)
    })
    .await;
    let pages = lists(&fake, "/api/v1/services");
    assert!(
        pages.iter().any(|q| q.contains("continue=")),
        "the services were not listed in pages: {pages:?}"
    );
    // The ClusterIP leads to the service; the endpoint is the pod's address on the target port.
    let snap = run.registry.snapshot();
    let found: Vec<_> = snap
        .lookup_address(SocketAddr::new(ip("10.96.0.12"), 80))
        .map(|a| a.service.to_string())
        .collect();
    assert_eq!(found, ["s2.shop"]);
    assert_eq!(
        addrs(&snap, &svc("shop", "s2")),
        [SocketAddr::new(ip("10.1.0.12"), 8080)]
    );
    let ep = &snap.service(&svc("shop", "s2")).unwrap().ports[0].endpoints[0];
    assert_eq!(
        ep.identity.as_ref().unwrap().spiffe_id(),
        "spiffe://weft.test/ns/shop/sa/s2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_ended_watches_and_restarts_resume_without_a_relist() {
    let fake = FakeKube::start().await;
    add_service(&fake, "shop", "api", Some(ip("10.96.0.10")), ip("10.1.0.1"));
    let run = running(&fake, KubernetesSettings::default()).await;
    let api = svc("shop", "api");
    run.until("api", |s| addrs(s, &api).len() == 1).await;
    // Every write from here on must keep api: a relist that showed it vanishing would fail.
    let mut rx = run.registry.subscribe();
    let watcher = tokio::spawn(async move {
        let mut versions = 0;
        while rx.changed().await.is_ok() {
            let s = rx.borrow_and_update().clone();
            assert!(s.service(&svc("shop", "api")).is_some(), "api vanished");
            versions += 1;
        }
        versions
    });
    let lists_before = fake
        .requests()
        .iter()
        .filter(|r| !r.query.contains("watch="))
        .count();

    let mut n = 0;
    for what in ["cut", "ended"] {
        fake.watchers("/apis/discovery.k8s.io/v1/endpointslices", 1)
            .await;
        match what {
            "cut" => fake.drop_watches(),
            _ => fake.end_watches(),
        }
        n += 1;
        let pod_ip = ip(&format!("10.1.0.{}", 10 + n));
        add_extra_endpoint(&fake, n, pod_ip);
        run.until(
            &format!("an endpoint added after the watches were {what}"),
            |s| addrs(s, &api).contains(&SocketAddr::new(pod_ip, 8080)),
        )
        .await;
    }
    fake.restart().await;
    n += 1;
    let pod_ip = ip(&format!("10.1.0.{}", 10 + n));
    add_extra_endpoint(&fake, n, pod_ip);
    run.until("an endpoint added after an API server restart", |s| {
        addrs(s, &api).contains(&SocketAddr::new(pod_ip, 8080))
    })
    .await;
    let lists_after = fake
        .requests()
        .iter()
        .filter(|r| !r.query.contains("watch="))
        .count();
    assert_eq!(lists_after, lists_before, "a disruption caused a relist");
    run.stop.cancel();
    drop(run);
    let versions = tokio::time::timeout(WAIT, watcher).await.unwrap().unwrap();
    assert!(versions >= 3, "{versions} writes");
}

/// Adds pod `api-<n>` at `pod_ip` to the Service api, in a slice of its own.
fn add_extra_endpoint(fake: &FakeKube, n: u32, pod_ip: IpAddr) {
    let pod = format!("api-{n}");
    fake.apply(k8s::pod("shop", &pod, "api", true, pod_ip));
    fake.apply(k8s::slice(
        "shop",
        &format!("api-x{n}"),
        "api",
        &[("http", 8080)],
        &[SliceEndpoint {
            pod: Some(pod),
            ip: pod_ip,
            condition: Condition::Ready,
        }],
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_listed_namespaces_are_watched_and_attested() {
    let fake = FakeKube::start().await;
    add_service(&fake, "shop", "api", None, ip("10.1.0.1"));
    add_service(&fake, "other", "api", None, ip("10.2.0.1"));
    let settings = KubernetesSettings {
        namespaces: vec!["shop".into()],
        ..Default::default()
    };
    let run = running(&fake, settings).await;
    run.until("shop's api", |s| addrs(s, &svc("shop", "api")).len() == 1)
        .await;
    // Everything listed by now; a watch per namespace, never cluster-wide.
    let snap = run.registry.snapshot();
    assert!(snap.service(&svc("other", "api")).is_none());
    assert!(lists(&fake, "/api/v1/services").is_empty());
    assert!(!lists(&fake, "/api/v1/namespaces/shop/services").is_empty());

    TokenFor::new("other", "api-0", "api").register(&fake, "t-other");
    let err = run
        .platform
        .attest(&credential("t-other", "other/api-0"))
        .await
        .unwrap_err();
    assert!(matches!(err, AttestError::UnknownWorkload(_)), "{err}");
    TokenFor::new("shop", "api-0", "api").register(&fake, "t-shop");
    let id = run
        .platform
        .attest(&credential("t-shop", "shop/api-0"))
        .await
        .unwrap();
    assert_eq!(id.spiffe_id(), "spiffe://weft.test/ns/shop/sa/api");
}

fn credential(token: &str, workload: &str) -> Credential {
    Credential {
        platform: "kubernetes".into(),
        token: token.into(),
        workload: Some(workload.into()),
        account: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_accepts_only_a_bound_token_of_the_right_audience_pod_and_account() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let platform =
        weft_tests::kube_platform(&fake, dir.path(), KubernetesSettings::default()).await;
    fake.apply(k8s::pod("shop", "web-0", "web", true, LOCAL));
    fake.apply(k8s::pod("shop", "db-0", "db", true, LOCAL));

    TokenFor::new("shop", "web-0", "web").register(&fake, "good");
    let id = platform
        .attest(&credential("good", "shop/web-0"))
        .await
        .unwrap();
    assert_eq!(id.spiffe_id(), "spiffe://weft.test/ns/shop/sa/web");
    // Without a claimed workload, the token alone says which pod.
    let mut bare = credential("good", "");
    bare.workload = None;
    assert_eq!(platform.attest(&bare).await.unwrap(), id);

    let refused = |token: &'static str, workload: &'static str| {
        let platform = &platform;
        async move {
            platform
                .attest(&credential(token, workload))
                .await
                .unwrap_err()
        }
    };
    let mut t = TokenFor::new("shop", "web-0", "web");
    t.audiences = vec!["https://kubernetes.default.svc".into()];
    t.register(&fake, "other-audience");
    let e = refused("other-audience", "shop/web-0").await;
    assert!(
        matches!(&e, AttestError::Rejected(m) if m.contains("audience")),
        "{e}"
    );

    let mut t = TokenFor::new("shop", "web-0", "web");
    t.expired = true;
    t.register(&fake, "expired");
    let e = refused("expired", "shop/web-0").await;
    assert!(
        matches!(&e, AttestError::Rejected(m) if m.contains("did not authenticate")),
        "{e}"
    );

    let e = refused("never-issued", "shop/web-0").await;
    assert!(matches!(e, AttestError::Rejected(_)), "{e}");

    // A good token presented for another workload.
    let e = refused("good", "shop/db-0").await;
    assert!(
        matches!(&e, AttestError::Rejected(m) if m.contains("cannot prove")),
        "{e}"
    );

    // A token naming an account the pod does not run as.
    TokenFor::new("shop", "web-0", "db").register(&fake, "wrong-account");
    let e = refused("wrong-account", "shop/web-0").await;
    assert!(
        matches!(&e, AttestError::Rejected(m) if m.contains("runs as")),
        "{e}"
    );

    // A user's token, and a ServiceAccount token not bound to a pod.
    fake.add_token(
        "user",
        weft_tests::fake_kube::TokenInfo {
            username: "jane@example.com".into(),
            audiences: vec!["weft".into()],
            ..Default::default()
        },
    );
    let e = refused("user", "shop/web-0").await;
    assert!(
        matches!(&e, AttestError::Rejected(m) if m.contains("not a ServiceAccount")),
        "{e}"
    );
    fake.add_token(
        "unbound",
        weft_tests::fake_kube::TokenInfo {
            username: "system:serviceaccount:shop:web".into(),
            audiences: vec!["weft".into()],
            ..Default::default()
        },
    );
    let e = refused("unbound", "shop/web-0").await;
    assert!(
        matches!(&e, AttestError::Rejected(m) if m.contains("not bound to a pod")),
        "{e}"
    );

    // The pod is gone, or gone and back under the same name (a new uid).
    TokenFor::new("shop", "db-0", "db").register(&fake, "db-token");
    fake.delete("Pod", Some("shop"), "db-0");
    let e = refused("db-token", "shop/db-0").await;
    assert!(matches!(e, AttestError::UnknownWorkload(_)), "{e}");
    let mut recreated = k8s::pod("shop", "db-0", "db", true, LOCAL);
    recreated["metadata"]["uid"] = serde_json::json!("a-new-uid");
    fake.apply(recreated);
    let e = refused("db-token", "shop/db-0").await;
    assert!(
        matches!(&e, AttestError::UnknownWorkload(m) if m.contains("uid")),
        "{e}"
    );

    // Another platform's credential, and an API server that cannot be reached.
    let mut other = credential("good", "shop/web-0");
    other.platform = "nomad".into();
    assert!(matches!(
        platform.attest(&other).await,
        Err(AttestError::WrongPlatform(_))
    ));
    drop(fake);
    let e = refused("good", "shop/web-0").await;
    assert!(matches!(e, AttestError::Unavailable(_)), "{e}");
}

/// A control plane running the Kubernetes adapter (from the mesh config file, as the binary
/// does) issues ServiceAccount identities to two proxies, which then talk mTLS by service name;
/// the policy, written against those identities, lets web call api and refuses db.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_on_kubernetes_issues_account_identities_and_traffic_flows() {
    weft_tests::trace_init();
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (control, stop) = weft_tests::control_plane_from_file(
        dir.path(),
        &format!(
            "[[policy.authorizations]]\nservice = \"api.shop\"\nallow = [\"shop/web\"]\n\
             [platforms.kubernetes]\nkubeconfig = \"{}\"\n",
            fake.kubeconfig(dir.path()).display()
        ),
    )
    .await;

    fake.apply(k8s::namespace("shop", Some("enabled")));
    let start_proxy = |pod: &str, account: &str, app: Option<u16>, upstreams: &[&str]| {
        fake.apply(k8s::pod("shop", pod, account, true, LOCAL));
        let token = format!("token-{pod}");
        TokenFor::new("shop", pod, account).register(&fake, &token);
        let token_file = dir.path().join(format!("{pod}.token"));
        std::fs::write(&token_file, &token).unwrap();
        weft_proxy::ProxyConfig {
            // As the injector hands it over: the PEM text itself.
            trust_bundle_pem: Some(std::fs::read_to_string(&control.trust_bundle_file).unwrap()),
            namespace: "shop".into(),
            account: Some(account.into()),
            platform: "kubernetes".into(),
            token_file,
            ..weft_tests::loopback_proxy_config(control.grpc_addr, pod, app, upstreams)
        }
    };
    let app = backends::http_echo("api").await;
    let api = weft_proxy::Proxy::start(start_proxy("api-0", "api", Some(app.port()), &[]))
        .await
        .unwrap();
    weft_tests::wait_ready(&api).await;
    // The Service's slice names the pod at the proxy's inbound port, as iptables would lead a
    // connection to the pod's port there.
    let inbound = api.inbound_addr.unwrap().port();
    let mut port = SvcPort::new("http", 80);
    port.target = serde_json::json!("web");
    fake.apply(k8s::service("shop", "api", Some(ip("10.96.0.10")), &[port]));
    fake.apply(k8s::slice(
        "shop",
        "api-1",
        "api",
        &[("http", inbound)],
        &[SliceEndpoint {
            pod: Some("api-0".into()),
            ip: LOCAL,
            condition: Condition::Ready,
        }],
    ));
    let web = weft_proxy::Proxy::start(start_proxy("web-0", "web", None, &["api"]))
        .await
        .unwrap();
    let db = weft_proxy::Proxy::start(start_proxy("db-0", "db", None, &["api"]))
        .await
        .unwrap();
    weft_tests::wait_ready(&web).await;
    weft_tests::wait_ready(&db).await;

    conformance::until(&control.registry, "api's endpoint", |s| {
        addrs(s, &svc("shop", "api")).len() == 1
    })
    .await;
    weft_tests::assert_mesh_call(
        &web,
        "api",
        &api,
        "api",
        "spiffe://weft.test/ns/shop/sa/web",
    )
    .await;
    weft_tests::assert_mesh_refused(&db, "api").await;

    // A proxy whose token is for another audience gets no certificate, and the refusal is
    // counted by reason.
    let mut t = TokenFor::new("shop", "web-0", "web");
    t.audiences = vec!["vault".into()];
    t.register(&fake, "vault-token");
    let token_file = dir.path().join("vault.token");
    std::fs::write(&token_file, "vault-token").unwrap();
    let mut cfg = start_proxy("web-0", "web", None, &[]);
    cfg.token_file = token_file;
    let stray = weft_proxy::Proxy::start(cfg).await.unwrap();
    weft_tests::wait_metric(
        control.http_addr,
        "weft_control_attest_refused_total",
        &["platform=\"kubernetes\"", "reason=\"rejected\""],
        1.0,
    )
    .await;
    let (status, why) = admin_get(stray.admin_addr, "GET", "/ready").await;
    assert_eq!(status, 503, "{why}");
    control.shutdown().await;
    stop.cancel();
}

/// A Certify call to `control` on a new connection without a client certificate: the
/// projected token `token` of pod `shop/web-0` and a CSR for `shop/web` with a new key.
async fn certify_web(
    control: &weft_control::ControlPlane,
    token: &str,
) -> Result<weft_api::CertifyResponse, tonic::Status> {
    let bundle =
        weft_ca::TrustBundle::from_pem(&std::fs::read(&control.trust_bundle_file).unwrap())
            .unwrap();
    let td = weft_core::TrustDomain::new("weft.test").unwrap();
    let tls =
        weft_ca::tls::anonymous_client_config(&bundle, &weft_core::Identity::control_plane(&td));
    let cfg = weft_tests::loopback_proxy_config(control.grpc_addr, "web-0", None, &[]);
    let ch = weft_proxy::control::channel(&cfg, tls).await.unwrap();
    let web = weft_core::Identity::new(td, "shop", "web").unwrap();
    let request = weft_api::CertifyRequest {
        credential: Some(weft_api::Credential {
            platform: "kubernetes".into(),
            token: token.into(),
            workload: "shop/web-0".into(),
        }),
        csr: weft_ca::LeafKey::generate().unwrap().csr(&web).unwrap(),
    };
    weft_api::v1::identity_client::IdentityClient::new(ch)
        .certify(request)
        .await
        .map(tonic::Response::into_inner)
}

/// The TokenReviews the fake API server has been asked for.
fn token_reviews(fake: &FakeKube) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/tokenreviews"))
        .count()
}

/// Certify asks the API server about a token once: a token it authenticated is not reviewed
/// again until the answer's cache time runs out (the token's expiry, at most 10 minutes), yet
/// every call still gets a certificate of its own; a token it refused is not reviewed again
/// for a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certify_reviews_a_token_once_and_still_signs_every_csr() {
    weft_tests::trace_init();
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (control, stop) = weft_tests::control_plane_from_file(
        dir.path(),
        &format!(
            "[platforms.kubernetes]\nkubeconfig = \"{}\"\n",
            fake.kubeconfig(dir.path()).display()
        ),
    )
    .await;
    fake.apply(k8s::pod("shop", "web-0", "web", true, LOCAL));
    // A projected token is a JWT; the control plane reads its expiry (an hour from now)
    // without trusting it, only to bound how long the review's answer is kept.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = weft_tests::jwt::mint(
        &weft_tests::jwt::TestKey::fixture(1),
        &serde_json::json!({
            "iss": "https://kubernetes.default.svc",
            "sub": "system:serviceaccount:shop:web",
            "aud": ["weft"],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
        }),
    );
    TokenFor::new("shop", "web-0", "web").register(&fake, &good);
    let before = token_reviews(&fake);

    let mut leaves = std::collections::HashSet::new();
    for _ in 0..5 {
        let rsp = certify_web(&control, &good).await.unwrap();
        assert_eq!(rsp.identity, "spiffe://weft.test/ns/shop/sa/web");
        leaves.insert(rsp.leaf);
    }
    assert_eq!(leaves.len(), 5, "each call gets a certificate of its own");
    assert_eq!(
        token_reviews(&fake) - before,
        1,
        "one review for five calls"
    );

    // A made-up token, with a CSR that passes: one review, then refusals from memory.
    for _ in 0..5 {
        let err = certify_web(&control, "made-up").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
        assert!(err.message().contains("did not authenticate"), "{err}");
    }
    assert_eq!(token_reviews(&fake) - before, 2);

    let (_, metrics) = admin_get(control.http_addr, "GET", "/metrics").await;
    let cache = |result: &str| {
        weft_tests::metric(
            &metrics,
            "weft_control_attest_cache_total",
            &[&format!("result=\"{result}\"")],
        )
    };
    assert_eq!((cache("miss"), cache("hit")), (2.0, 8.0), "{metrics}");
    control.shutdown().await;
    stop.cancel();
}

/// The adapter's admission webhook, over TLS: a pod created in a namespace the adapter has
/// seen annotated `weft.dev/inject: enabled` gets a patch that carries the mesh's roots; one in
/// a namespace without the annotation is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_injects_pods_of_annotated_namespaces() {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = FakeKube::start().await;
    fake.apply(k8s::namespace("shop", Some("enabled")));
    fake.apply(k8s::namespace("plain", None));
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["weft-control.weft.svc".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file, bundle) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("trust-bundle.pem"),
    );
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::write(&bundle, cert.pem()).unwrap();
    let mut settings = KubernetesSettings::default();
    settings.webhook.addr = Some(([127, 0, 0, 1], 0).into());
    settings.webhook.cert_file = Some(cert_file);
    settings.webhook.key_file = Some(key_file);
    let platform = Arc::new(
        weft_tests::kube_platform(&fake, dir.path(), settings)
            .await
            .with_trust_bundle_file(bundle),
    );
    let registry = Registry::new();
    let stop = CancellationToken::new();
    let (p, w, s) = (
        platform.clone(),
        registry.writer("kubernetes"),
        stop.clone(),
    );
    let task = tokio::spawn(async move { p.run(w, s).await });
    registry.wait_synced(&["kubernetes".to_string()]).await;
    let mut addr = platform.webhook_addr();
    let addr = tokio::time::timeout(WAIT, addr.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let review = |ns: &str| {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": format!("uid-{ns}"),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": ns, "operation": "CREATE",
                "object": {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": "web-0", "namespace": ns},
                           "spec": {"containers": [{"name": "web", "image": "web:1"}]}},
            },
        })
    };
    let post = |body: serde_json::Value| {
        let client = client.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("weft-control.weft.svc").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .unwrap();
            let body = body.to_string();
            tls.write_all(
                format!(
                    "POST /inject HTTP/1.1\r\nHost: weft-control.weft.svc\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            tls.read_to_string(&mut out).await.unwrap();
            let (_, json) = out.split_once("\r\n\r\n").unwrap();
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        }
    };
    let injected = post(review("shop")).await;
    assert_eq!(injected["response"]["uid"], "uid-shop");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(injected["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch = String::from_utf8(patch).unwrap();
    assert!(patch.contains("weft-proxy"), "{patch}");
    assert!(
        patch.contains("BEGIN CERTIFICATE"),
        "the mesh's roots: {patch}"
    );
    let left = post(review("plain")).await;
    assert_eq!(left["response"]["allowed"], true);
    assert!(left["response"].get("patch").is_none(), "{left}");
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// The probes the injector rewrites (HTTP, TCP and gRPC here) are run by the proxy on the
/// kubelet's behalf: the kubelet's GET of the rewritten path on the probe listener (the port the
/// injected pod gives the proxy in `WEFT_PROXY_PROBE_ADDR`) passes while the application's own
/// probe passes, and fails while it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_probes_are_run_by_the_proxy_for_the_kubelet() {
    let app = backends::http_echo("web").await;
    let (_closed, down) = weft_tests::refusing_port();
    // The application's gRPC health service: one service serving, one not.
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop.Cart", tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("shop.Payments", tonic_health::ServingStatus::NotServing)
        .await;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_port = grpc.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc)),
    );
    let injector = weft_kubernetes::inject::Injector {
        settings: Default::default(),
        trust_domain: "weft.test".into(),
        trust_bundle_pem: String::new(),
        token_audience: "weft".into(),
    };
    let mut pod = serde_json::json!({
        "kind": "Pod", "metadata": {"name": "web-0"},
        "spec": {"containers": [{
            "name": "web",
            "ports": [{"name": "http", "containerPort": app.port()}],
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
            "readinessProbe": {"tcpSocket": {"port": down.port()}},
        }, {
            "name": "cart",
            "startupProbe": {"grpc": {"port": grpc_port, "service": "shop.Cart"}},
            "livenessProbe": {"grpc": {"port": grpc_port, "service": "shop.Payments"}},
        }]},
    });
    injector.inject_manifest(&mut pod).unwrap();
    let env = |name: &str| {
        pod["spec"]["initContainers"][1]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let probes = env("WEFT_PROXY_APP_PROBES");
    let probe_addr: std::net::SocketAddr = env("WEFT_PROXY_PROBE_ADDR").parse().unwrap();
    // Every rewritten probe names the port the proxy's probe listener is given.
    for (c, probe) in [
        (0, "livenessProbe"),
        (0, "readinessProbe"),
        (1, "startupProbe"),
        (1, "livenessProbe"),
    ] {
        assert_eq!(
            pod["spec"]["containers"][c][probe]["httpGet"]["port"],
            probe_addr.port(),
            "{c} {probe}"
        );
    }
    let path = |container: usize, probe: &str| {
        pod["spec"]["containers"][container][probe]["httpGet"]["path"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (live, ready) = (path(0, "livenessProbe"), path(0, "readinessProbe"));
    let (serving, not_serving) = (path(1, "startupProbe"), path(1, "livenessProbe"));

    let web = weft_tests::WorkloadDecl::client("web");
    let mesh = weft_tests::TestMesh::start(
        std::slice::from_ref(&web),
        "[policy]\ndefault_inbound = \"allow\"",
    )
    .await;
    let mut cfg = mesh.proxy_config(&web, None, &[]);
    cfg.app_probes = Some(weft_proxy::app_probe::parse(&probes).unwrap());
    // The injected address, on loopback and a free port here.
    cfg.probe_addr = Some(([127, 0, 0, 1], 0).into());
    let proxy = weft_proxy::Proxy::start(cfg).await.unwrap();
    let probe_listener = proxy.probe_addr.unwrap();
    let (status, body) = admin_get(probe_listener, "GET", &live).await;
    assert_eq!(status, 200, "{live}: {body}");
    let (status, body) = admin_get(probe_listener, "GET", &ready).await;
    assert_eq!(status, 503, "{ready}: {body}");
    let (status, body) = admin_get(probe_listener, "GET", &serving).await;
    assert_eq!(status, 200, "{serving}: {body}");
    let (status, body) = admin_get(probe_listener, "GET", &not_serving).await;
    assert_eq!(status, 503, "{not_serving}: {body}");
    assert_eq!(
        admin_get(probe_listener, "GET", "/app-health/web/other")
            .await
            .0,
        404
    );
    assert_eq!(admin_get(probe_listener, "POST", &live).await.0, 405);
}
