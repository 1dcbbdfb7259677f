//! The control plane's API seen from outside: Certify proves before it signs, Watch needs a
//! mesh certificate and serves each proxy only its own view.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use rustls_pki_types::CertificateDer;
use tonic::Code;
use weft_api::v1::discovery_client::DiscoveryClient;
use weft_api::v1::identity_client::IdentityClient;
use weft_api::{CertifyRequest, Credential, ProxyRequest};
use weft_ca::{LeafKey, TrustBundle};
use weft_core::{Identity, TrustDomain};
use weft_tests::{TestMesh, WorkloadDecl, admin_get, wait_resolution};

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
async fn discovery_without_a_mesh_certificate_is_refused() {
    let mesh = TestMesh::start(&[WorkloadDecl::client("web")], "").await;
    let ch = anonymous_channel(&mesh).await;
    let target =
        weft_api::convert::target_to_wire(&weft_core::Target::parse("web.test", "x").unwrap());
    let err = DiscoveryClient::new(ch.clone())
        .resolve(target)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let err = DiscoveryClient::new(ch)
        .proxy(ProxyRequest {
            workload: "test/web".into(),
            platform: "local".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certify_signs_only_what_the_credential_proves() {
    let mesh = TestMesh::start(&[WorkloadDecl::client("web")], "").await;
    let token = std::fs::read_to_string(mesh.token_file("web")).unwrap();
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
    // The same refusals by reason: a wrong token, and a workload the platform does not know.
    let refused = |reason: &str| {
        weft_tests::metric(
            &metrics,
            "weft_control_attest_refused_total",
            &["platform=\"local\"", &format!("reason=\"{reason}\"")],
        )
    };
    assert_eq!(
        (refused("rejected"), refused("unknown_workload")),
        (1.0, 1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_proxy_resolves_only_the_services_it_may_reach() {
    use weft_proxy::discovery::Resolution;
    let api = WorkloadDecl::serving("api", "api");
    let web = WorkloadDecl::serving("web", "web");
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[api.clone(), web.clone(), load.clone()], WEB_ONLY).await;
    let web_proxy = mesh.proxy(&web, Some(1), &[]).await;
    let load_proxy = mesh.proxy(&load, None, &[]).await;
    let api_proxy = mesh.proxy(&api, Some(1), &[]).await;
    wait_resolution(&web_proxy, "api", |r| matches!(r, Resolution::Resolved(_))).await;
    wait_resolution(&load_proxy, "web", |r| matches!(r, Resolution::Resolved(_))).await;
    wait_resolution(&load_proxy, "api", |r| matches!(r, Resolution::Denied(_))).await;
    // api's own inbound policy, on the port peers dial, is the allow list that names web.
    let port = api_proxy.inbound_addr.unwrap().port();
    let mut settings = api_proxy.shared().settings.clone();
    tokio::time::timeout(
        weft_tests::WAIT,
        settings.wait_for(|s| {
            s.as_ref().is_some_and(|s| {
                s.policy(port).on_connection(Some(&id("web"))) == weft_core::policy::Decision::Allow
                    && s.policy(port).on_connection(Some(&id("load")))
                        == weft_core::policy::Decision::Deny
            })
        }),
    )
    .await
    .expect("api's settings name web")
    .unwrap();
}

fn certify_request(platform: &str, token: &str) -> CertifyRequest {
    CertifyRequest {
        credential: Some(Credential {
            platform: platform.into(),
            token: token.into(),
            workload: "test/web".into(),
        }),
        csr: LeafKey::generate().unwrap().csr(&id("web")).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certify_metric_labels_and_request_sizes_are_bounded() {
    let mesh = TestMesh::start(&[WorkloadDecl::client("web")], "").await;
    let mut client = IdentityClient::new(anonymous_channel(&mesh).await);
    // Each call names a platform of its own; none may become a metric series.
    for i in 0..50 {
        let err = client
            .certify(certify_request(&format!("made-up-{i}"), "x"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    }
    let big = client
        .certify(certify_request("local", &"t".repeat(100 * 1024)))
        .await
        .unwrap_err();
    assert!(
        matches!(big.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{big}"
    );

    let http = mesh.control.as_ref().unwrap().http_addr;
    let (_, metrics) = admin_get(http, "GET", "/metrics").await;
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("weft_control_certify_total{"))
        .collect();
    assert!(
        series
            .iter()
            .all(|l| l.contains("platform=\"unknown\"") || l.contains("platform=\"local\"")),
        "{metrics}"
    );
    assert!(!metrics.contains("made-up"), "{metrics}");
    assert_eq!(
        weft_tests::metric(
            &metrics,
            "weft_control_certify_total",
            &["platform=\"unknown\"", "result=\"attest_failed\""]
        ),
        50.0,
        "{metrics}"
    );
}

/// A platform whose attestation waits until released, to hold Certify calls in flight.
#[derive(Debug, Default)]
struct StallingPlatform {
    entered: std::sync::atomic::AtomicUsize,
    arrived: tokio::sync::Notify,
    release: tokio_util::sync::CancellationToken,
}

#[async_trait::async_trait]
impl weft_core::platform::Platform for StallingPlatform {
    fn name(&self) -> &str {
        "stalling"
    }
    async fn run(
        &self,
        registry: weft_core::RegistryWriter,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), weft_core::platform::PlatformError> {
        registry.replace_all([]);
        shutdown.cancelled().await;
        Ok(())
    }
    async fn attest(
        &self,
        _: &weft_core::platform::Credential,
    ) -> Result<Identity, weft_core::platform::AttestError> {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.arrived.notify_one();
        self.release.cancelled().await;
        Err(weft_core::platform::AttestError::Rejected(
            "released".into(),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_anonymous_certify_calls_are_bounded() {
    use std::sync::atomic::Ordering;
    weft_tests::trace_init();
    let dir = tempfile::tempdir().unwrap();
    // Every call comes from 127.0.0.1: the bucket of one address is made large enough for all.
    let text = format!(
        "[mesh]\nname = \"t\"\ntrust_domain = \"weft.test\"\n[ca]\ndata_dir = \"{}\"\n[control]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n[control.limits]\ncertify_burst_per_address = 1000\n",
        dir.path().display()
    );
    let cfg = weft_control::platforms::loader()
        .load_str(&text, std::path::Path::new("m.toml"))
        .unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(cfg));
    let platform = std::sync::Arc::new(StallingPlatform::default());
    let control = weft_control::ControlPlane::start(rx, vec![platform.clone()])
        .await
        .unwrap();
    let bundle =
        TrustBundle::from_pem(&std::fs::read(&control.trust_bundle_file).unwrap()).unwrap();
    let td = TrustDomain::new("weft.test").unwrap();
    let proxy_cfg = web_proxy_config(&control);
    let limit = weft_control::MAX_ANONYMOUS_CERTIFY;
    // Two connections, since one carries a bounded number of streams.
    let mut calls = Vec::new();
    for half in 0..2 {
        let tls = weft_ca::tls::anonymous_client_config(&bundle, &Identity::control_plane(&td));
        let ch = weft_proxy::control::channel(&proxy_cfg, tls).await.unwrap();
        for i in 0..limit / 2 + half * (limit % 2) {
            let mut client = IdentityClient::new(ch.clone());
            // A token each: calls with one token would wait for one attestation.
            let token = format!("x{half}-{i}");
            calls.push(tokio::spawn(async move {
                client.certify(certify_request("stalling", &token)).await
            }));
        }
    }
    tokio::time::timeout(weft_tests::WAIT, async {
        while platform.entered.load(Ordering::SeqCst) < limit {
            platform.arrived.notified().await;
        }
    })
    .await
    .expect("every call reached attestation");

    // One more, while the others hold every permit: refused at once, not queued.
    let tls = weft_ca::tls::anonymous_client_config(&bundle, &Identity::control_plane(&td));
    let ch = weft_proxy::control::channel(&proxy_cfg, tls).await.unwrap();
    let extra = tokio::time::timeout(
        weft_tests::WAIT,
        IdentityClient::new(ch.clone()).certify(certify_request("stalling", "x")),
    )
    .await
    .expect("the extra call is answered without waiting")
    .unwrap_err();
    assert_eq!(extra.code(), Code::ResourceExhausted, "{extra}");
    assert_eq!(platform.entered.load(Ordering::SeqCst), limit);

    platform.release.cancel();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap_err().code(), Code::PermissionDenied);
    }
    // With the permits back, calls are served again.
    let after = IdentityClient::new(ch)
        .certify(certify_request("stalling", "x"))
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::PermissionDenied, "{after}");
    control.shutdown().await;
}

/// Polls the control plane's metrics until `name{labels}` reaches `at_least`.
async fn wait_control_metric(mesh: &TestMesh, name: &str, labels: &[&str], at_least: f64) {
    let http = mesh.control.as_ref().unwrap().http_addr;
    weft_tests::wait_metric(http, name, labels, at_least).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_domain_or_bundle_mismatch_is_named_on_both_sides() {
    let mesh = TestMesh::start(&[WorkloadDecl::client("web")], "").await;
    let mut cfg = mesh.proxy_config(&WorkloadDecl::client("web"), None, &[]);

    // A proxy told another trust domain expects another control-plane identity.
    cfg.trust_domain = "other.test".into();
    let bundle = TrustBundle::from_pem(&std::fs::read(mesh.bundle_file()).unwrap()).unwrap();
    let other_td = TrustDomain::new("other.test").unwrap();
    let tls = weft_ca::tls::anonymous_client_config(&bundle, &Identity::control_plane(&other_td));
    let err = weft_proxy::control::channel(&cfg, tls).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("trust domain is \"other.test\""), "{text}");
    assert!(
        text.contains("spiffe://weft.test/ns/weft-system/sa/weft-control"),
        "{text}"
    );
    wait_control_metric(
        &mesh,
        "weft_control_tls_rejected_total",
        &["reason=\"peer_rejected_control_identity\""],
        1.0,
    )
    .await;

    // A proxy given another mesh's trust bundle cannot verify the control plane at all.
    cfg.trust_domain = "weft.test".into();
    let foreign = weft_ca::CertificateAuthority::generate_ephemeral(
        &TrustDomain::new("weft.test").unwrap(),
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let td = TrustDomain::new("weft.test").unwrap();
    let tls = weft_ca::tls::anonymous_client_config(
        foreign.trust_bundle(),
        &Identity::control_plane(&td),
    );
    let err = weft_proxy::control::channel(&cfg, tls).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("not signed by any root in the trust bundle"),
        "{text}"
    );
    wait_control_metric(
        &mesh,
        "weft_control_tls_rejected_total",
        &["reason=\"peer_distrusts_control_plane\""],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_api_shows_services_ports_endpoints_and_identities_by_source() {
    let legacy_app = weft_tests::backends::http_echo("legacy").await;
    let api = WorkloadDecl::serving("api", "api");
    let load = WorkloadDecl::client("load");
    let legacy = WorkloadDecl::unmeshed("legacy", "db", legacy_app);
    let mesh = TestMesh::start(&[api.clone(), load.clone(), legacy], "").await;
    let api_proxy = mesh.proxy(&api, Some(1), &[]).await;
    let api_addr = api_proxy.inbound_addr.unwrap();
    let http = mesh.control.as_ref().unwrap().http_addr;

    let (status, body) = admin_get(http, "GET", "/api/state").await;
    assert_eq!(status, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["ready"], true, "{state:#}");
    assert_eq!(
        state["platforms"],
        serde_json::json!([{ "name": "local", "synced": true }])
    );
    // Services under their source, with ports, protocols, virtual addresses, and endpoints
    // with state, meshed flag, identity and workload. load serves nothing, so it is not there.
    let endpoint = |address: String, meshed: bool, account: &str, workload: &str| {
        serde_json::json!({
            "address": address,
            "state": "ready",
            "meshed": meshed,
            "identity": format!("spiffe://weft.test/ns/test/sa/{account}"),
            "workload": format!("test/{workload}"),
        })
    };
    let service = |name: &str, endpoint: serde_json::Value| {
        serde_json::json!({
            "name": name,
            "virtual_ips": [],
            "ports": [{ "port": 80, "name": null, "protocol": "auto", "endpoints": [endpoint] }],
        })
    };
    assert_eq!(state["endpoints"], 2, "{state:#}");
    assert_eq!(
        state["sources"],
        serde_json::json!({
            "local": {
                "services": [
                    service("api.test", endpoint(api_addr.to_string(), true, "api", "api")),
                    service("db.test", endpoint(legacy_app.to_string(), false, "legacy", "legacy")),
                ]
            }
        }),
        "{body}"
    );
}

/// A platform that proves `test/web` for the token `web` and `test/api` for `api`, holds a
/// call with the token `stall` until released, and refuses anything else. It counts the
/// attestations it is asked for.
#[derive(Debug, Default)]
struct GatePlatform {
    stalled: std::sync::atomic::AtomicUsize,
    attested: std::sync::atomic::AtomicUsize,
    release: tokio_util::sync::CancellationToken,
}

#[async_trait::async_trait]
impl weft_core::platform::Platform for GatePlatform {
    fn name(&self) -> &str {
        "gate"
    }
    async fn run(
        &self,
        registry: weft_core::RegistryWriter,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), weft_core::platform::PlatformError> {
        registry.replace_all([]);
        shutdown.cancelled().await;
        Ok(())
    }
    async fn attest(
        &self,
        credential: &weft_core::platform::Credential,
    ) -> Result<Identity, weft_core::platform::AttestError> {
        self.attested
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match credential.token.as_str() {
            "web" => Ok(id("web")),
            "api" => Ok(id("api")),
            "stall" => {
                self.stalled
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.release.cancelled().await;
                Err(weft_core::platform::AttestError::Rejected(
                    "released".into(),
                ))
            }
            _ => Err(weft_core::platform::AttestError::Rejected(
                "unknown token".into(),
            )),
        }
    }
}

/// A control plane with `limits` on its gRPC listener and the [`GatePlatform`].
struct GatedControl {
    control: weft_control::ControlPlane,
    platform: std::sync::Arc<GatePlatform>,
    bundle: TrustBundle,
    proxy_cfg: weft_proxy::ProxyConfig,
    /// Kept: Discovery streams end when the config sender goes.
    _config: tokio::sync::watch::Sender<std::sync::Arc<weft_core::config::MeshConfig>>,
    _dir: tempfile::TempDir,
}

impl GatedControl {
    async fn start(limits: weft_control::GrpcLimits) -> Self {
        Self::start_configured(limits, "").await
    }

    /// With `control_limits`, the keys of a `[control.limits]` section.
    async fn start_configured(limits: weft_control::GrpcLimits, control_limits: &str) -> Self {
        weft_tests::trace_init();
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[mesh]\nname = \"t\"\ntrust_domain = \"weft.test\"\n[ca]\ndata_dir = \"{}\"\n[control]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n[control.limits]\n{control_limits}\n",
            dir.path().display()
        );
        let cfg = weft_control::platforms::loader()
            .load_str(&text, std::path::Path::new("m.toml"))
            .unwrap();
        let (config, rx) = tokio::sync::watch::channel(std::sync::Arc::new(cfg));
        let platform = std::sync::Arc::new(GatePlatform::default());
        let control = weft_control::ControlPlane::start_with(rx, vec![platform.clone()], limits)
            .await
            .unwrap();
        let bundle =
            TrustBundle::from_pem(&std::fs::read(&control.trust_bundle_file).unwrap()).unwrap();
        let proxy_cfg = web_proxy_config(&control);
        Self {
            control,
            platform,
            bundle,
            proxy_cfg,
            _config: config,
            _dir: dir,
        }
    }

    fn control_id() -> Identity {
        Identity::control_plane(&TrustDomain::new("weft.test").unwrap())
    }

    fn anonymous_tls(&self) -> std::sync::Arc<rustls::ClientConfig> {
        weft_ca::tls::anonymous_client_config(&self.bundle, &Self::control_id())
    }

    /// A TLS connection to the gRPC port with `tls`, on which nothing is sent yet.
    async fn raw(
        &self,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(self.control.grpc_addr)
            .await
            .unwrap();
        tokio_rustls::TlsConnector::from(tls)
            .connect(weft_ca::tls::server_name(), tcp)
            .await
            .unwrap()
    }

    /// Certify for `test/web` on a new anonymous connection.
    async fn certify_web(&self) -> Result<weft_ca::tls::TlsCredentials, tonic::Status> {
        let ch = weft_proxy::control::channel(&self.proxy_cfg, self.anonymous_tls())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        self.certify_web_on(ch).await
    }

    async fn certify_web_on(
        &self,
        ch: tonic::transport::Channel,
    ) -> Result<weft_ca::tls::TlsCredentials, tonic::Status> {
        self.certify_on(ch, "web").await
    }

    /// Certify for `test/<name>` (the token is the name) on `ch`.
    async fn certify_on(
        &self,
        ch: tonic::transport::Channel,
        name: &str,
    ) -> Result<weft_ca::tls::TlsCredentials, tonic::Status> {
        let key = LeafKey::generate().unwrap();
        let rsp = IdentityClient::new(ch)
            .certify(CertifyRequest {
                credential: Some(Credential {
                    platform: "gate".into(),
                    token: name.into(),
                    workload: format!("test/{name}"),
                }),
                csr: key.csr(&id(name)).unwrap(),
            })
            .await?
            .into_inner();
        Ok(
            weft_proxy::identity::credentials_from(id(name), &key, rsp, self.bundle.clone())
                .unwrap(),
        )
    }

    /// The credentials of `test/<name>`, from a Certify call on a new anonymous connection.
    async fn credentials(&self, name: &str) -> weft_ca::tls::TlsCredentials {
        let ch = weft_proxy::control::channel(&self.proxy_cfg, self.anonymous_tls())
            .await
            .unwrap();
        self.certify_on(ch, name).await.unwrap()
    }

    /// A new connection presenting `creds`.
    async fn connect_as(
        &self,
        creds: &weft_ca::tls::TlsCredentials,
    ) -> Result<tonic::transport::Channel, weft_proxy::control::ControlError> {
        let tls = creds.client_config(&Self::control_id(), weft_ca::ALPN_H2);
        weft_proxy::control::channel(&self.proxy_cfg, tls).await
    }

    async fn metrics(&self) -> String {
        admin_get(self.control.http_addr, "GET", "/metrics").await.1
    }

    /// Waits until the gauge of anonymous connections reads `n`.
    async fn wait_anonymous(&self, n: f64) {
        let deadline = tokio::time::Instant::now() + weft_tests::WAIT;
        loop {
            let text = self.metrics().await;
            let now = weft_tests::metric(&text, "weft_control_anonymous_connections", &[]);
            if now == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{now} anonymous connections, expected {n}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Reads (and drops) what `io` receives until the peer closes it; how long that took, or
/// `None` if it was still open after `within`.
async fn closed_within(
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    within: std::time::Duration,
) -> Option<std::time::Duration> {
    use tokio::io::AsyncReadExt;
    let began = tokio::time::Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return began.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// The HTTP/2 client preface and an empty SETTINGS frame: what opens a connection.
const H2_OPENING: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_the_http2_preface_is_closed() {
    let limits = weft_control::GrpcLimits {
        preface_timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let c = GatedControl::start(limits.clone()).await;
    let creds = c.certify_web().await.unwrap();
    let with_cert = creds.client_config(&GatedControl::control_id(), weft_ca::ALPN_H2);
    let margin = std::time::Duration::from_secs(3);
    for (what, tls) in [
        ("anonymous", c.anonymous_tls()),
        ("with a certificate", with_cert),
    ] {
        let mut io = c.raw(tls).await;
        let took = closed_within(&mut io, limits.preface_timeout + margin)
            .await
            .unwrap_or_else(|| panic!("{what}: still open"));
        assert!(took >= limits.preface_timeout / 2, "{what}: {took:?}");
    }
    let text = c.metrics().await;
    assert_eq!(
        weft_tests::metric(
            &text,
            "weft_control_connections_closed_total",
            &["reason=\"preface_timeout\""]
        ),
        2.0,
        "{text}"
    );
    c.control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_are_bounded_and_a_proxy_still_gets_its_certificate() {
    use tokio::io::AsyncWriteExt;
    let limits = weft_control::GrpcLimits {
        max_anonymous_connections: 8,
        anonymous_idle_timeout: std::time::Duration::from_secs(600),
        ..Default::default()
    };
    let c = GatedControl::start(limits.clone()).await;
    let creds = c.certify_web().await.unwrap();
    c.wait_anonymous(0.0).await;
    // Strangers fill every anonymous slot, with connections that opened HTTP/2 and hold it.
    let mut held = Vec::new();
    for _ in 0..limits.max_anonymous_connections {
        let mut io = c.raw(c.anonymous_tls()).await;
        io.write_all(H2_OPENING).await.unwrap();
        held.push(io);
    }
    c.wait_anonymous(limits.max_anonymous_connections as f64)
        .await;
    // One more is closed at once, and counted.
    let mut extra = c.raw(c.anonymous_tls()).await;
    extra.write_all(H2_OPENING).await.unwrap();
    assert!(
        closed_within(&mut extra, std::time::Duration::from_secs(3))
            .await
            .is_some(),
        "an anonymous connection beyond the cap stays open"
    );
    weft_tests::wait_metric(
        c.control.http_addr,
        "weft_control_connections_closed_total",
        &["reason=\"anonymous_limit\""],
        1.0,
    )
    .await;
    // A proxy with its certificate renews meanwhile.
    let tls = creds.client_config(&GatedControl::control_id(), weft_ca::ALPN_H2);
    let ch = weft_proxy::control::channel(&c.proxy_cfg, tls)
        .await
        .unwrap();
    c.certify_web_on(ch).await.unwrap();
    // Once some strangers leave, a new proxy gets its first certificate.
    held.truncate(limits.max_anonymous_connections - 2);
    c.wait_anonymous((limits.max_anonymous_connections - 2) as f64)
        .await;
    c.certify_web().await.unwrap();
    // The strangers still held were never closed: the cap closed only the one beyond it.
    for io in &mut held {
        assert!(
            closed_within(io, std::time::Duration::from_millis(10))
                .await
                .is_none()
        );
    }
    c.control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_anonymous_connections_are_closed_but_not_during_a_call() {
    use tokio::io::AsyncWriteExt;
    let limits = weft_control::GrpcLimits {
        anonymous_idle_timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let c = GatedControl::start(limits.clone()).await;
    let margin = std::time::Duration::from_secs(3);
    // HTTP/2 opened, then nothing asked.
    let mut idle = c.raw(c.anonymous_tls()).await;
    idle.write_all(H2_OPENING).await.unwrap();
    let took = closed_within(&mut idle, limits.anonymous_idle_timeout + margin)
        .await
        .expect("an idle anonymous connection stays open");
    assert!(took >= limits.anonymous_idle_timeout / 2, "{took:?}");
    weft_tests::wait_metric(
        c.control.http_addr,
        "weft_control_connections_closed_total",
        &["reason=\"anonymous_idle\""],
        1.0,
    )
    .await;

    // A Certify call in flight keeps its connection open past the idle time.
    let ch = weft_proxy::control::channel(&c.proxy_cfg, c.anonymous_tls())
        .await
        .unwrap();
    let mut client = IdentityClient::new(ch.clone());
    let call = tokio::spawn(async move { client.certify(certify_request("gate", "stall")).await });
    let deadline = tokio::time::Instant::now() + weft_tests::WAIT;
    while c.platform.stalled.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(limits.anonymous_idle_timeout * 2).await;
    c.platform.release.cancel();
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    c.control.shutdown().await;
}

/// The settings of a proxy `web` of `control`'s mesh (its credential is never read: the tests
/// that use it call the control plane with settings of their own).
fn web_proxy_config(control: &weft_control::ControlPlane) -> weft_proxy::ProxyConfig {
    <weft_proxy::ProxyConfig as clap::Parser>::try_parse_from([
        "weft-proxy",
        "--control-addr",
        &control.grpc_addr.to_string(),
        "--trust-domain",
        "weft.test",
        "--trust-bundle",
        &control.trust_bundle_file.display().to_string(),
        "--workload",
        "web",
        "--token-file",
        "/dev/null",
    ])
    .unwrap()
}

/// The value of `weft_control_limited_total{reason}`.
fn limited(metrics: &str, reason: &str) -> f64 {
    weft_tests::metric(
        metrics,
        "weft_control_limited_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_anonymous_certify_calls_from_one_address_is_cut_to_the_bucket() {
    use std::sync::atomic::Ordering;
    // A bucket of 3 that refills too slowly to matter during the test.
    let c = GatedControl::start_configured(
        weft_control::GrpcLimits::default(),
        "certify_burst_per_address = 3\ncertify_rate_per_address = 0.001",
    )
    .await;
    let mut issued = Vec::new();
    let mut codes = Vec::new();
    for _ in 0..8 {
        match c.certify_web().await {
            Ok(creds) => issued.push(creds),
            Err(e) => codes.push(e.code()),
        }
    }
    assert_eq!(issued.len(), 3, "{codes:?}");
    assert_eq!(codes, [Code::ResourceExhausted; 5]);
    // Refused before the platform was asked.
    assert_eq!(c.platform.attested.load(Ordering::SeqCst), 3);
    let text = c.metrics().await;
    assert_eq!(limited(&text, "certify_address_rate"), 5.0, "{text}");
    assert_eq!(
        weft_tests::metric(
            &text,
            "weft_control_certify_total",
            &["result=\"throttled\""]
        ),
        5.0,
        "{text}"
    );
    // A caller presenting its certificate is held to its identity's bucket instead.
    let ch = c.connect_as(&issued[0]).await.unwrap();
    c.certify_web_on(ch).await.unwrap();
    c.control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certify_calls_presenting_a_certificate_are_limited_per_identity() {
    let c = GatedControl::start_configured(
        weft_control::GrpcLimits::default(),
        "certify_burst_per_identity = 2\ncertify_rate_per_identity = 0.001",
    )
    .await;
    let web = c.credentials("web").await;
    let api = c.credentials("api").await;
    let ch = c.connect_as(&web).await.unwrap();
    c.certify_web_on(ch.clone()).await.unwrap();
    c.certify_web_on(ch.clone()).await.unwrap();
    let err = c.certify_web_on(ch.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    // On a new connection too: the bound is the identity's, not the connection's.
    let again = c.connect_as(&web).await.unwrap();
    let err = c.certify_web_on(again).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    // Another identity, and callers without a certificate, are not affected.
    let ch = c.connect_as(&api).await.unwrap();
    c.certify_on(ch, "api").await.unwrap();
    c.certify_web().await.unwrap();
    let text = c.metrics().await;
    assert_eq!(limited(&text, "certify_identity_rate"), 2.0, "{text}");
    assert_eq!(limited(&text, "certify_address_rate"), 0.0, "{text}");
    c.control.shutdown().await;
}

/// Opens a Resolve stream for `api.test` on `ch`: the stream, or the call's status.
async fn open_resolve(
    ch: &tonic::transport::Channel,
) -> Result<tonic::Streaming<weft_api::ResolveUpdate>, tonic::Status> {
    let target =
        weft_api::convert::target_to_wire(&weft_core::Target::parse("api.test", "x").unwrap());
    DiscoveryClient::new(ch.clone())
        .resolve(target)
        .await
        .map(|r| r.into_inner())
}

/// Opens a Proxy stream for `test/<name>` on `ch`.
async fn open_settings(
    ch: &tonic::transport::Channel,
    name: &str,
) -> Result<tonic::Streaming<weft_api::ProxySettings>, tonic::Status> {
    DiscoveryClient::new(ch.clone())
        .proxy(ProxyRequest {
            workload: format!("test/{name}"),
            platform: "gate".into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Retries `open` until it succeeds, within [`weft_tests::WAIT`]: a slot freed by a stream or
/// connection the client dropped is returned once the server has seen it go.
async fn until_open<T, F, Fut>(what: &str, mut open: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + weft_tests::WAIT;
    loop {
        match open().await {
            Ok(t) => return t,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: still refused: {e}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_cannot_hold_more_discovery_streams_than_its_bound() {
    let c = GatedControl::start_configured(
        weft_control::GrpcLimits::default(),
        "resolve_streams_per_identity = 3\nproxy_streams_per_identity = 1",
    )
    .await;
    let web = c.credentials("web").await;
    let api = c.credentials("api").await;
    // web's streams, over two connections: the bound is the identity's.
    let first = c.connect_as(&web).await.unwrap();
    let second = c.connect_as(&web).await.unwrap();
    let mut held = vec![
        open_resolve(&first).await.unwrap(),
        open_resolve(&first).await.unwrap(),
        open_resolve(&second).await.unwrap(),
    ];
    // The next is refused at once, on either connection.
    for ch in [&first, &second] {
        let err = tokio::time::timeout(weft_tests::WAIT, open_resolve(ch))
            .await
            .expect("refused without waiting")
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    }
    let settings = open_settings(&first, "web").await.unwrap();
    let err = open_settings(&second, "web").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");

    // Another identity still resolves and follows its settings.
    let other = c.connect_as(&api).await.unwrap();
    let mut api_stream = open_resolve(&other).await.unwrap();
    let mut api_settings = open_settings(&other, "api").await.unwrap();
    let first_answer = tokio::time::timeout(weft_tests::WAIT, api_stream.message())
        .await
        .expect("api gets an answer")
        .unwrap();
    assert!(first_answer.is_some());
    assert!(
        tokio::time::timeout(weft_tests::WAIT, api_settings.message())
            .await
            .expect("api gets its settings")
            .unwrap()
            .is_some()
    );

    let text = c.metrics().await;
    assert_eq!(limited(&text, "identity_resolve_streams"), 2.0, "{text}");
    assert_eq!(limited(&text, "identity_proxy_streams"), 1.0, "{text}");

    // Once web closes streams, their slots are web's again.
    held.truncate(2);
    drop(settings);
    let _again = until_open("a Resolve stream after one closed", || async {
        open_resolve(&second).await.map_err(|e| e.to_string())
    })
    .await;
    let _settings = until_open("a Proxy stream after it closed", || async {
        open_settings(&second, "web")
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    c.control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_cannot_hold_more_connections_than_its_bound() {
    let c = GatedControl::start_configured(
        weft_control::GrpcLimits::default(),
        "connections_per_identity = 2",
    )
    .await;
    let web = c.credentials("web").await;
    let api = c.credentials("api").await;
    // Two connections of web, each in use.
    let mut held = Vec::new();
    for _ in 0..2 {
        let ch = c.connect_as(&web).await.unwrap();
        let stream = open_resolve(&ch).await.unwrap();
        held.push((ch, stream));
    }
    // A third is closed once its handshake proves who it is: connecting or the first call
    // fails, without waiting.
    let third = tokio::time::timeout(weft_tests::WAIT, async {
        match c.connect_as(&web).await {
            Err(e) => e.to_string(),
            Ok(ch) => open_resolve(&ch)
                .await
                .map(|_| ())
                .expect_err("a third connection of one identity serves a call")
                .to_string(),
        }
    })
    .await
    .expect("the third connection is refused without waiting");
    tracing::info!(%third, "third connection refused");
    weft_tests::wait_metric(
        c.control.http_addr,
        "weft_control_limited_total",
        &["reason=\"identity_connections\""],
        1.0,
    )
    .await;
    // Another identity connects meanwhile, and so do callers without a certificate.
    let other = c.connect_as(&api).await.unwrap();
    open_resolve(&other).await.unwrap();
    c.certify_web().await.unwrap();
    // The two connections in use were left alone.
    for (_, stream) in &mut held {
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(1), stream.message())
                .await
                .is_ok_and(|m| m.is_ok_and(|m| m.is_some())),
            "a connection within the bound lost its stream"
        );
    }
    // Once web closes one, it may open another.
    held.truncate(1);
    until_open("a connection after one closed", || async {
        let ch = c.connect_as(&web).await.map_err(|e| e.to_string())?;
        open_resolve(&ch).await.map_err(|e| e.to_string())?;
        Ok(ch)
    })
    .await;
    c.control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_refused_for_its_address_rate_retries_and_gets_its_certificate() {
    // One call per 5 s from an address: the proxy's first attempts, right after this test's
    // own call, find the bucket empty.
    let c = GatedControl::start_configured(
        weft_control::GrpcLimits::default(),
        "certify_burst_per_address = 1\ncertify_rate_per_address = 0.2",
    )
    .await;
    c.certify_web().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "web").unwrap();
    let cfg = weft_proxy::ProxyConfig {
        trust_bundle: Some(c.control.trust_bundle_file.clone()),
        platform: "gate".into(),
        token_file,
        ..weft_tests::loopback_proxy_config(c.control.grpc_addr, "web", None, &[])
    };
    let proxy = weft_proxy::Proxy::start(cfg).await.unwrap();
    let mut creds = proxy.shared().credentials.clone();
    tokio::time::timeout(weft_tests::WAIT, creds.wait_for(|c| c.is_some()))
        .await
        .expect("the proxy got its certificate after backing off")
        .unwrap();
    let text = c.metrics().await;
    assert!(limited(&text, "certify_address_rate") >= 1.0, "{text}");
    c.control.shutdown().await;
}
