//! The control plane's HTTP listener and lifecycle: readiness that tells the truth, adapters
//! restarted without losing their workloads, the token off loopback, restart-only edits, and the
//! listener's bounds.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use weft_control::ControlPlane;
use weft_core::config::MeshConfig;
use weft_core::platform::{AttestError, Credential, Platform, PlatformError};
use weft_core::{
    Endpoint, EndpointState, Identity, Protocol, RegistrySnapshot, RegistryWriter, Service,
    ServiceName, ServicePort, TrustDomain, WorkloadKey,
};
use weft_tests::{TestMesh, WAIT, WorkloadDecl, admin_get};

fn config(dir: &std::path::Path, http: &str) -> Arc<MeshConfig> {
    let text = format!(
        "[mesh]\nname = \"t\"\ntrust_domain = \"weft.test\"\n[ca]\ndata_dir = \"{}\"\n[control]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"{http}\"\n",
        dir.display()
    );
    Arc::new(
        weft_control::platforms::loader()
            .load_str(&text, std::path::Path::new("m.toml"))
            .unwrap(),
    )
}

/// Service `svc.fake`, served by one workload `name`.
fn workload(name: &str) -> Service {
    let td = TrustDomain::new("weft.test").unwrap();
    Service {
        name: ServiceName::new("fake", "svc").unwrap(),
        virtual_ips: Vec::new(),
        ports: vec![ServicePort {
            port: 80,
            name: None,
            protocol: Protocol::Auto,
            endpoints: vec![Endpoint {
                address: ([127, 0, 0, 1], 1).into(),
                identity: Some(Identity::new(td, "fake", name).unwrap()),
                meshed: true,
                workload: Some(WorkloadKey {
                    namespace: "fake".into(),
                    name: name.into(),
                }),
                state: EndpointState::Ready,
            }],
        }],
    }
}

/// The names of the workloads behind every endpoint of the registry.
fn workload_names(snap: &RegistrySnapshot) -> Vec<String> {
    snap.sources()
        .flat_map(|src| snap.source(src))
        .flat_map(|s| s.ports.iter())
        .flat_map(|p| p.endpoints.iter())
        .filter_map(|e| e.workload.as_ref().map(|w| w.name.clone()))
        .collect()
}

/// A platform driven by the test: its `n`-th run waits until `release` reaches `n`, then
/// syncs one workload `run-<n>`; with `fail_first`, the first run then fails.
#[derive(Debug, Default)]
struct ScriptedPlatform {
    runs: AtomicUsize,
    started: Notify,
    release: watch::Sender<usize>,
    fail_first: bool,
}

#[async_trait::async_trait]
impl Platform for ScriptedPlatform {
    fn name(&self) -> &str {
        "scripted"
    }
    async fn run(
        &self,
        registry: RegistryWriter,
        shutdown: CancellationToken,
    ) -> Result<(), PlatformError> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        self.started.notify_waiters();
        let mut released = self.release.subscribe();
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = released.wait_for(|r| *r >= n) => { r.unwrap(); }
        }
        registry.replace_all([workload(&format!("run-{n}"))]);
        if self.fail_first && n == 1 {
            return Err(PlatformError::Settings {
                platform: "scripted".into(),
                reason: "scripted failure".into(),
            });
        }
        shutdown.cancelled().await;
        Ok(())
    }
    async fn attest(&self, _: &Credential) -> Result<Identity, AttestError> {
        Err(AttestError::Rejected("no".into()))
    }
}

async fn wait_status(addr: std::net::SocketAddr, path: &str, want: u16) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = admin_get(addr, "GET", path).await;
        if status == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} stayed {status}: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_every_platform_and_failed_adapters_restart_keeping_their_workloads() {
    weft_tests::trace_init();
    let dir = tempfile::tempdir().unwrap();
    let (_tx, rx) = watch::channel(config(dir.path(), "127.0.0.1:0"));
    let platform = Arc::new(ScriptedPlatform {
        fail_first: true,
        ..Default::default()
    });
    let control = ControlPlane::start(rx, vec![platform.clone()])
        .await
        .unwrap();
    let http = control.http_addr;

    // Not ready until gRPC serves; then, serving but with the platform not synced, still not
    // ready, and it says why.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, why) = admin_get(http, "GET", "/ready").await;
        assert_eq!(status, 503, "{why}");
        if why.contains("first sync of platform(s) scripted") {
            break;
        }
        assert!(why.contains("gRPC"), "{why}");
        assert!(tokio::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(admin_get(http, "GET", "/live").await.0, 200);

    // The first run syncs, then fails.
    platform.release.send_replace(1);
    wait_status(http, "/ready", 200).await;
    let mut reg = control.registry.subscribe();
    tokio::time::timeout(WAIT, async {
        loop {
            // Registered before the check, so a restart between the two is not missed.
            let started = platform.started.notified();
            if platform.runs.load(Ordering::SeqCst) >= 2 {
                break;
            }
            started.await;
        }
    })
    .await
    .expect("the failed adapter is restarted");
    // Restarted but not synced again: the first run's workloads are still served, and the
    // control plane stays ready.
    let snap = reg.borrow_and_update().clone();
    assert_eq!(workload_names(&snap), ["run-1"]);
    assert_eq!(admin_get(http, "GET", "/ready").await.0, 200);
    let state = wait_status(http, "/api/state", 200).await;
    assert!(state.contains("\"synced\":true"), "{state}");

    // The restarted adapter's first sync replaces them.
    platform.release.send_replace(2);
    tokio::time::timeout(WAIT, reg.wait_for(|s| workload_names(s) == ["run-2"]))
        .await
        .unwrap()
        .unwrap();
    control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_state_and_metrics_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (_tx, rx) = watch::channel(config(dir.path(), "0.0.0.0:0"));
    let platform = Arc::new(ScriptedPlatform::default());
    platform.release.send_replace(1);
    let control = ControlPlane::start(rx, vec![platform]).await.unwrap();
    // Reached over loopback, although it listens on every address.
    let http: std::net::SocketAddr = ([127, 0, 0, 1], control.http_addr.port()).into();
    assert_eq!(admin_get(http, "GET", "/api/state").await.0, 401);
    assert_eq!(admin_get(http, "GET", "/metrics").await.0, 401);
    wait_status(http, "/ready", 200).await;

    let token = std::fs::read_to_string(dir.path().join("http-token")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("http-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    for (header, want) in [
        (format!("Bearer {}", token.trim()), 200),
        (format!("Bearer {}x", token.trim()), 401),
        ("Bearer ".to_string(), 401),
        (token.trim().to_string(), 401),
    ] {
        let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/api/state")
            .header(http::header::AUTHORIZATION, header.as_str())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let status = send.send_request(req).await.unwrap().status().as_u16();
        assert_eq!(status, want, "{header:?}");
    }
    control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_that_need_a_restart_are_reported_not_applied() {
    let mut mesh = TestMesh::start(&[WorkloadDecl::client("web")], "").await;
    let http = mesh.control.as_ref().unwrap().http_addr;
    let state = wait_status(http, "/api/state", 200).await;
    assert!(state.contains("\"restart_required\":[]"), "{state}");
    mesh.set_ca_extra("leaf_ttl = \"2h\"");
    mesh.set_workloads(&[WorkloadDecl::client("web")]).await;
    let state = wait_status(http, "/api/state", 200).await;
    assert!(state.contains("\"restart_required\":[\"ca\"]"), "{state}");
}

#[tokio::test(start_paused = true)]
async fn the_http_listener_bounds_each_address_and_closes_idle_clients() {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use weft_control::admin::{HEADER_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_PER_ADDRESS};

    async fn connect_from(n: u8, to: SocketAddr) -> tokio::net::TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), 0))
            .unwrap();
        socket.connect(to).await.unwrap()
    }
    /// `GET /live` on a keep-alive connection; whether it was answered.
    async fn live(tcp: &mut tokio::net::TcpStream) -> bool {
        tcp.write_all(b"GET /live HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut rsp = Vec::new();
        let mut buf = [0u8; 512];
        while !rsp.ends_with(b"live\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => rsp.extend_from_slice(&buf[..n]),
            }
        }
        true
    }

    let dir = tempfile::tempdir().unwrap();
    let (_tx, rx) = watch::channel(config(dir.path(), "127.0.0.1:0"));
    let control = ControlPlane::start(rx, vec![]).await.unwrap();
    let http = control.http_addr;
    let started = tokio::time::Instant::now();

    // One address holds its share and no more; others are served up to the total.
    let mut held = Vec::new();
    for _ in 0..MAX_PER_ADDRESS {
        let mut tcp = connect_from(1, http).await;
        assert!(live(&mut tcp).await);
        held.push(tcp);
    }
    let mut extra = connect_from(1, http).await;
    assert!(!live(&mut extra).await);
    let mut n = 2;
    while held.len() < MAX_CONNECTIONS {
        for _ in 0..MAX_PER_ADDRESS.min(MAX_CONNECTIONS - held.len()) {
            let mut tcp = connect_from(n, http).await;
            assert!(live(&mut tcp).await);
            held.push(tcp);
        }
        n += 1;
    }
    let mut over = connect_from(251, http).await;
    assert!(!live(&mut over).await);
    assert!(started.elapsed() < IDLE_TIMEOUT);

    // Each held connection went quiet after its answer: all are closed once the idle timeout
    // has passed, not before, and long before the header timeout.
    let mut out = Vec::new();
    for tcp in &mut held {
        let _ = tcp.read_to_end(&mut out).await;
    }
    assert!(out.is_empty(), "{out:?}");
    assert!(started.elapsed() >= IDLE_TIMEOUT, "{:?}", started.elapsed());
    assert!(
        started.elapsed() < HEADER_TIMEOUT,
        "{:?}",
        started.elapsed()
    );

    // A head in progress is held to the header timeout, however steadily its bytes come.
    let mut slow = connect_from(1, http).await;
    let asked = tokio::time::Instant::now();
    slow.write_all(b"GET /live HTTP/1.1\r\n").await.unwrap();
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / 4).await;
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(std::time::Duration::ZERO, slow.read(&mut byte)).await
        {
            break;
        }
        let _ = slow.write_all(b"X").await;
    }
    let slow_after = asked.elapsed();
    assert!(
        slow_after >= HEADER_TIMEOUT && slow_after < HEADER_TIMEOUT + IDLE_TIMEOUT,
        "{slow_after:?}"
    );
    control.shutdown().await;
}
