//! Shared fixtures for Weft's end-to-end tests: a control plane on the local platform in a
//! temporary directory, proxies started in-process, real backends on loopback, and the
//! platform-adapter conformance scenarios.
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    reason = "test support code"
)]

pub mod backends;
pub mod certs;
pub mod conformance;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weft_control::ControlPlane;
use weft_core::config::ConfigWatcher;
use weft_core::platform::Platform;
use weft_proxy::{Proxy, ProxyConfig, Upstream};

/// How long any wait in these tests may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Logs to the test output when `RUST_LOG` is set.
pub fn trace_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A free port on 127.0.0.1 (bound, then released for the caller to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One workload in the test mesh's config file.
#[derive(Clone, Debug)]
pub struct WorkloadDecl {
    /// Name (and identity account unless `identity` is set).
    pub name: String,
    /// Service it serves.
    pub service: Option<String>,
    /// Identity account override.
    pub identity: Option<String>,
    /// The port peers dial (the proxy's inbound, or the app when unmeshed).
    pub port: u16,
    /// Port protocol.
    pub protocol: String,
    /// Whether a proxy fronts it.
    pub meshed: bool,
}

impl WorkloadDecl {
    /// A meshed workload serving `service` on a free port.
    pub fn serving(name: &str, service: &str) -> Self {
        Self {
            name: name.into(),
            service: Some(service.into()),
            identity: None,
            port: free_port(),
            protocol: "auto".into(),
            meshed: true,
        }
    }

    /// A meshed client-only workload.
    pub fn client(name: &str) -> Self {
        Self {
            name: name.into(),
            service: None,
            identity: None,
            port: free_port(),
            protocol: "auto".into(),
            meshed: true,
        }
    }

    fn to_toml(&self) -> String {
        let mut s = format!(
            "[[platforms.local.workloads]]\nname = \"{}\"\nnamespace = \"test\"\nport = {}\nprotocol = \"{}\"\nmeshed = {}\n",
            self.name, self.port, self.protocol, self.meshed
        );
        if let Some(svc) = &self.service {
            s.push_str(&format!("service = \"{svc}\"\n"));
        }
        if let Some(id) = &self.identity {
            s.push_str(&format!("identity = \"{id}\"\n"));
        }
        s
    }
}

/// A control plane on the local platform, with its config file in a temporary directory.
#[allow(missing_debug_implementations, reason = "test fixture")]
pub struct TestMesh {
    /// The directory holding the config file, CA and token.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config_path: PathBuf,
    /// The running control plane, if up.
    pub control: Option<ControlPlane>,
    grpc_port: u16,
    stop: CancellationToken,
    watcher: ConfigWatcher,
    policy: String,
    ca_extra: String,
}

impl TestMesh {
    /// Writes a config with `workloads` and `policy` (TOML for `[policy]` and its rules) and
    /// starts the control plane.
    pub async fn start(workloads: &[WorkloadDecl], policy: &str) -> Self {
        trace_init();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("mesh.toml");
        let grpc_port = free_port();
        let policy = policy.to_string();
        std::fs::write(
            &config_path,
            render(dir.path(), grpc_port, &policy, "", workloads),
        )
        .unwrap();
        let stop = CancellationToken::new();
        let watcher = ConfigWatcher::start(&config_path, stop.clone()).unwrap();
        let mut mesh = Self {
            dir,
            config_path,
            control: None,
            grpc_port,
            stop,
            watcher,
            policy,
            ca_extra: String::new(),
        };
        mesh.start_control().await;
        mesh
    }

    /// Starts the control plane (again).
    pub async fn start_control(&mut self) {
        let local = weft_local::LocalPlatform::new(self.watcher.subscribe()).unwrap();
        let platforms: Vec<Arc<dyn Platform>> = vec![Arc::new(local)];
        self.control = Some(
            ControlPlane::start(self.watcher.subscribe(), platforms)
                .await
                .unwrap(),
        );
    }

    /// Stops the control plane.
    pub async fn stop_control(&mut self) {
        if let Some(c) = self.control.take() {
            c.shutdown().await;
        }
    }

    /// Rewrites the config file with new workloads and waits until the control plane has
    /// loaded it.
    pub async fn set_workloads(&self, workloads: &[WorkloadDecl]) {
        let mut rx = self.watcher.subscribe();
        rx.mark_unchanged();
        std::fs::write(
            &self.config_path,
            render(
                self.dir.path(),
                self.grpc_port,
                &self.policy,
                &self.ca_extra,
                workloads,
            ),
        )
        .unwrap();
        tokio::time::timeout(WAIT, rx.changed())
            .await
            .expect("config reloaded")
            .unwrap();
    }

    /// Extra lines for the `[ca]` table, used from the next `set_workloads` on.
    pub fn set_ca_extra(&mut self, lines: &str) {
        self.ca_extra = lines.to_string();
    }

    /// Writes raw text to the config file (for invalid edits).
    pub fn write_raw(&self, text: &str) {
        std::fs::write(&self.config_path, text).unwrap();
    }

    /// The config watcher.
    pub fn watcher(&self) -> &ConfigWatcher {
        &self.watcher
    }

    /// The gRPC address of the control plane.
    pub fn grpc_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.grpc_port).into()
    }

    /// The trust bundle file.
    pub fn bundle_file(&self) -> PathBuf {
        self.dir.path().join("data/trust-bundle.pem")
    }

    /// The CA data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The attestation token file of workload `test/<name>`.
    pub fn token_file(&self, name: &str) -> PathBuf {
        self.watcher.current().workload_token_file("test", name)
    }

    /// Proxy settings for workload `w`, fronting `app_port`, with `upstreams`.
    pub fn proxy_config(
        &self,
        w: &WorkloadDecl,
        app_port: Option<u16>,
        upstreams: &[(&str, u16)],
    ) -> ProxyConfig {
        ProxyConfig {
            control_addr: self.grpc_addr(),
            trust_domain: "weft.test".into(),
            trust_bundle: self.bundle_file(),
            namespace: "test".into(),
            workload: w.name.clone(),
            account: w.identity.clone(),
            platform: "local".into(),
            token_file: self.token_file(&w.name),
            inbound_addr: ([127, 0, 0, 1], w.port).into(),
            app_port,
            upstreams: upstreams
                .iter()
                .map(|(s, p)| Upstream {
                    service: s.to_string(),
                    listen: ([127, 0, 0, 1], *p).into(),
                })
                .collect(),
            admin_addr: ([127, 0, 0, 1], 0).into(),
            admin_shutdown: false,
            probe_addr: None,
            detect_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            dispatch_timeout: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(5),
            log_json: false,
        }
    }

    /// Starts a proxy and waits until it is ready (certificate and first snapshot).
    pub async fn proxy(
        &self,
        w: &WorkloadDecl,
        app_port: Option<u16>,
        upstreams: &[(&str, u16)],
    ) -> Proxy {
        let proxy = Proxy::start(self.proxy_config(w, app_port, upstreams))
            .await
            .unwrap();
        wait_ready(&proxy).await;
        proxy
    }
}

impl Drop for TestMesh {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Waits until `proxy` holds a certificate and a snapshot.
pub async fn wait_ready(proxy: &Proxy) {
    let shared = proxy.shared();
    let mut c = shared.credentials.clone();
    let mut d = shared.discovery.clone();
    tokio::time::timeout(WAIT, async {
        c.wait_for(|c| c.is_some()).await.unwrap();
        d.wait_for(|d| d.is_some()).await.unwrap();
    })
    .await
    .expect("proxy became ready");
}

/// Waits until `proxy`'s snapshot satisfies `f`.
pub async fn wait_snapshot(
    proxy: &Proxy,
    f: impl Fn(&weft_proxy::discovery::DiscoveryState) -> bool,
) {
    let mut d = proxy.shared().discovery.clone();
    tokio::time::timeout(WAIT, d.wait_for(|s| s.as_ref().is_some_and(|s| f(s))))
        .await
        .expect("snapshot reached the expected state")
        .unwrap();
}

/// Sums the values of every series of metric `name` whose labels contain all of `labels`
/// (`key="value"` strings).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            series.split('{').next() == Some(name) && labels.iter().all(|lb| series.contains(lb))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

fn render(
    dir: &std::path::Path,
    grpc_port: u16,
    policy: &str,
    ca_extra: &str,
    workloads: &[WorkloadDecl],
) -> String {
    let mut s = format!(
        "[mesh]\nname = \"test\"\ntrust_domain = \"weft.test\"\n\n[ca]\ndata_dir = \"{}\"\n{ca_extra}\n\n[control]\ngrpc_addr = \"127.0.0.1:{grpc_port}\"\nhttp_addr = \"127.0.0.1:0\"\n\n{policy}\n\n[platforms.local]\n",
        dir.join("data").display()
    );
    for w in workloads {
        s.push('\n');
        s.push_str(&w.to_toml());
    }
    s
}

/// Fetches `path` from a proxy's admin listener: status and body.
pub async fn admin_get(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let rsp = send.send_request(req).await.unwrap();
    let status = rsp.status().as_u16();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Polls a proxy's metrics until `metric(name, labels)` reaches `at_least`.
pub async fn wait_metric(admin: SocketAddr, name: &str, labels: &[&str], at_least: f64) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, text) = admin_get(admin, "GET", "/metrics").await;
        if metric(&text, name, labels) >= at_least {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} never reached {at_least}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
