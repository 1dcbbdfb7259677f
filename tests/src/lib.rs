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
pub mod direct;
pub mod fake_consul;
mod fake_http;
pub mod fake_kube;
pub mod fake_nomad;
pub mod jwt;
pub mod kube_objects;
pub mod mesh_lab;
pub mod netns;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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

/// The mesh config file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `mesh.toml`.
    Toml,
    /// `mesh.yaml`.
    Yaml,
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
    /// The port peers dial. `None`: the port the mesh gives the workload, which is its proxy's
    /// inbound listener once [`TestMesh::proxy`] has started one, and until then a port the
    /// mesh holds bound without listening (connections to it are refused).
    pub port: Option<u16>,
    /// Port protocol.
    pub protocol: String,
    /// Whether a proxy fronts it.
    pub meshed: bool,
    /// `ready` (`None`), `serving` or `terminating`.
    pub state: Option<String>,
    /// The service port it serves (`None`: 80).
    pub service_port: Option<u16>,
}

impl WorkloadDecl {
    /// A meshed workload serving `service`.
    pub fn serving(name: &str, service: &str) -> Self {
        Self {
            name: name.into(),
            service: Some(service.into()),
            identity: None,
            port: None,
            protocol: "auto".into(),
            meshed: true,
            state: None,
            service_port: None,
        }
    }

    /// A meshed client-only workload.
    pub fn client(name: &str) -> Self {
        Self {
            name: name.into(),
            service: None,
            identity: None,
            port: None,
            protocol: "auto".into(),
            meshed: true,
            state: None,
            service_port: None,
        }
    }

    /// A workload without a proxy, serving `service` in plaintext at `app` (on 127.0.0.1).
    pub fn unmeshed(name: &str, service: &str, app: SocketAddr) -> Self {
        Self {
            name: name.into(),
            service: Some(service.into()),
            identity: None,
            port: Some(app.port()),
            protocol: "auto".into(),
            meshed: false,
            state: None,
            service_port: None,
        }
    }

    fn to_toml(&self, port: u16) -> String {
        let mut s = format!(
            "[[platforms.local.workloads]]\nname = \"{}\"\nnamespace = \"test\"\nport = {port}\nprotocol = \"{}\"\nmeshed = {}\n",
            self.name, self.protocol, self.meshed
        );
        if let Some(svc) = &self.service {
            s.push_str(&format!("service = \"{svc}\"\n"));
        }
        if let Some(id) = &self.identity {
            s.push_str(&format!("identity = \"{id}\"\n"));
        }
        if let Some(state) = &self.state {
            s.push_str(&format!("state = \"{state}\"\n"));
        }
        if let Some(p) = self.service_port {
            s.push_str(&format!("service_port = {p}\n"));
        }
        s
    }

    fn to_yaml(&self, port: u16) -> String {
        let mut s = format!(
            "      - name: \"{}\"\n        namespace: test\n        port: {port}\n        protocol: {}\n        meshed: {}\n",
            self.name, self.protocol, self.meshed
        );
        if let Some(svc) = &self.service {
            s.push_str(&format!("        service: \"{svc}\"\n"));
        }
        if let Some(id) = &self.identity {
            s.push_str(&format!("        identity: \"{id}\"\n"));
        }
        if let Some(state) = &self.state {
            s.push_str(&format!("        state: {state}\n"));
        }
        if let Some(p) = self.service_port {
            s.push_str(&format!("        service_port: {p}\n"));
        }
        s
    }
}

/// A port on 127.0.0.1 held bound, without listening, for as long as the socket lives:
/// connections to it are refused, and nothing else can take the port meanwhile.
pub fn refusing_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// What the config file holds besides the fixed policy, and the ports given to workloads.
#[derive(Default)]
struct FileState {
    workloads: Vec<WorkloadDecl>,
    /// `control.grpc_addr`'s port in the file: 0 (any) until the control plane is restarted,
    /// which has to happen on the address the running proxies know.
    grpc_port: u16,
    ca_extra: String,
    /// Extra lines of the `[control]` table (TOML only).
    control_extra: String,
    /// Ports of workloads declared without one.
    ports: BTreeMap<String, u16>,
    /// Sockets holding the ports given to workloads that no proxy listens for yet.
    held: Vec<tokio::net::TcpSocket>,
}

impl FileState {
    fn render(&mut self, format: Format, dir: &Path, policy: &str) -> String {
        let data = dir.join("data");
        let grpc = self.grpc_port;
        let mut s = match format {
            Format::Toml => format!(
                "[mesh]\nname = \"test\"\ntrust_domain = \"weft.test\"\n\n[ca]\ndata_dir = \"{}\"\n{}\n\n[control]\ngrpc_addr = \"127.0.0.1:{grpc}\"\nhttp_addr = \"127.0.0.1:0\"\n{}\n\n{policy}\n\n[platforms.local]\n",
                data.display(),
                self.ca_extra,
                self.control_extra,
            ),
            Format::Yaml => {
                let ca_extra: String = self.ca_extra.lines().map(|l| format!("  {l}\n")).collect();
                format!(
                    "mesh:\n  name: test\n  trust_domain: weft.test\nca:\n  data_dir: \"{}\"\n{ca_extra}control:\n  grpc_addr: \"127.0.0.1:{grpc}\"\n  http_addr: \"127.0.0.1:0\"\n{policy}\nplatforms:\n  local:\n    workloads:\n",
                    data.display()
                )
            }
        };
        let workloads = self.workloads.clone();
        if format == Format::Yaml && workloads.is_empty() {
            s.push_str("      []\n");
        }
        for w in &workloads {
            let port = match w.port {
                Some(p) => p,
                None => self.port_of(&w.name),
            };
            match format {
                Format::Toml => {
                    s.push('\n');
                    s.push_str(&w.to_toml(port));
                }
                Format::Yaml => s.push_str(&w.to_yaml(port)),
            }
        }
        s
    }

    /// The port given to `name`, holding a fresh one if it has none yet.
    fn port_of(&mut self, name: &str) -> u16 {
        if let Some(p) = self.ports.get(name) {
            return *p;
        }
        let (socket, addr) = refusing_port();
        self.held.push(socket);
        self.ports.insert(name.to_string(), addr.port());
        addr.port()
    }
}

/// A control plane on the local platform, with its config file in a temporary directory.
///
/// Every port is bound by whoever listens on it, at port 0, and reported: the control plane's
/// listeners, each proxy's listeners (a workload's declared port is set to its proxy's inbound
/// listener once the proxy runs), and the backends.
#[allow(missing_debug_implementations, reason = "test fixture")]
pub struct TestMesh {
    /// The directory holding the config file, CA and token.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config_path: PathBuf,
    /// The running control plane, if up.
    pub control: Option<ControlPlane>,
    grpc_addr: Option<SocketAddr>,
    format: Format,
    stop: CancellationToken,
    watcher: ConfigWatcher,
    policy: String,
    file: Mutex<FileState>,
}

impl TestMesh {
    /// Writes a TOML config with `workloads` and `policy` (TOML for `[policy]` and its rules)
    /// and starts the control plane.
    pub async fn start(workloads: &[WorkloadDecl], policy: &str) -> Self {
        Self::start_with(Format::Toml, workloads, policy, "").await
    }

    /// Like [`TestMesh::start`], with the config file in `format` (`policy` and `ca_extra`,
    /// extra lines of the `[ca]` table, written in it).
    pub async fn start_with(
        format: Format,
        workloads: &[WorkloadDecl],
        policy: &str,
        ca_extra: &str,
    ) -> Self {
        Self::start_file(
            format,
            workloads,
            policy,
            FileState {
                ca_extra: ca_extra.to_string(),
                ..Default::default()
            },
        )
        .await
    }

    /// Like [`TestMesh::start`], with `control_extra` as extra lines of the `[control]` table.
    pub async fn start_with_control(
        workloads: &[WorkloadDecl],
        policy: &str,
        control_extra: &str,
    ) -> Self {
        Self::start_file(
            Format::Toml,
            workloads,
            policy,
            FileState {
                control_extra: control_extra.to_string(),
                ..Default::default()
            },
        )
        .await
    }

    async fn start_file(
        format: Format,
        workloads: &[WorkloadDecl],
        policy: &str,
        mut file: FileState,
    ) -> Self {
        trace_init();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join(match format {
            Format::Toml => "mesh.toml",
            Format::Yaml => "mesh.yaml",
        });
        file.workloads = workloads.to_vec();
        std::fs::write(&config_path, file.render(format, dir.path(), policy)).unwrap();
        let stop = CancellationToken::new();
        let watcher = ConfigWatcher::start(
            &config_path,
            &weft_control::platforms::loader(),
            stop.clone(),
        )
        .unwrap();
        let mut mesh = Self {
            dir,
            config_path,
            control: None,
            grpc_addr: None,
            format,
            stop,
            watcher,
            policy: policy.to_string(),
            file: Mutex::new(file),
        };
        mesh.start_control().await;
        mesh
    }

    /// Starts the control plane (again).
    pub async fn start_control(&mut self) {
        let local = weft_local::LocalPlatform::new(self.watcher.subscribe()).unwrap();
        let platforms: Vec<Arc<dyn Platform>> = vec![Arc::new(local)];
        let control = ControlPlane::start(self.watcher.subscribe(), platforms)
            .await
            .unwrap();
        let first = *self.grpc_addr.get_or_insert(control.grpc_addr);
        assert_eq!(control.grpc_addr, first, "restarted on another address");
        self.control = Some(control);
    }

    /// Stops the control plane, and names its gRPC address in the file so that the next
    /// [`TestMesh::start_control`] binds the address the proxies know: a restart in place, as
    /// in production. (Between the two, the port is free for anyone to take; nothing else in
    /// these tests binds a fixed port.)
    pub async fn stop_control(&mut self) {
        if let Some(c) = self.control.take() {
            c.shutdown().await;
        }
        self.file.lock().unwrap().grpc_port = self.grpc_addr().port();
        self.rewrite().await;
    }

    /// Rewrites the config file with new workloads and waits until the control plane has
    /// loaded it.
    pub async fn set_workloads(&self, workloads: &[WorkloadDecl]) {
        self.file.lock().unwrap().workloads = workloads.to_vec();
        self.rewrite().await;
    }

    /// Declares `port` as the port of workload `name` (one declared without a port), and
    /// waits until the control plane's registry has it there. Returns whether the workload
    /// serves a service there.
    pub async fn set_port(&self, name: &str, port: u16) -> bool {
        let (declared, serves) = {
            let mut file = self.file.lock().unwrap();
            file.ports.insert(name.to_string(), port);
            let w = file
                .workloads
                .iter()
                .find(|w| w.name == name && w.port.is_none());
            (w.is_some(), w.is_some_and(|w| w.service.is_some()))
        };
        if !declared {
            return false;
        }
        self.rewrite().await;
        // A workload that serves nothing is not in the registry: the reload is all there is.
        if let Some(control) = self.control.as_ref().filter(|_| serves) {
            let mut reg = control.registry.subscribe();
            tokio::time::timeout(
                WAIT,
                reg.wait_for(|s| {
                    s.sources()
                        .flat_map(|src| s.source(src))
                        .flat_map(|svc| svc.ports.iter())
                        .flat_map(|p| p.endpoints.iter())
                        .any(|e| {
                            e.workload.as_ref().is_some_and(|w| w.name == name)
                                && e.address.port() == port
                        })
                }),
            )
            .await
            .expect("the registry has the workload's new port")
            .unwrap();
        }
        serves
    }

    /// The port workload `name` is declared with.
    pub fn port_of(&self, name: &str) -> u16 {
        let mut file = self.file.lock().unwrap();
        match file.workloads.iter().find(|w| w.name == name) {
            Some(WorkloadDecl { port: Some(p), .. }) => *p,
            _ => file.port_of(name),
        }
    }

    async fn rewrite(&self) {
        let mut rx = self.watcher.subscribe();
        rx.mark_unchanged();
        let text = self
            .file
            .lock()
            .unwrap()
            .render(self.format, self.dir.path(), &self.policy);
        std::fs::write(&self.config_path, text).unwrap();
        tokio::time::timeout(WAIT, rx.changed())
            .await
            .expect("config reloaded")
            .unwrap();
    }

    /// Extra lines for the `[ca]` table, used from the next `set_workloads` on.
    pub fn set_ca_extra(&mut self, lines: &str) {
        self.file.lock().unwrap().ca_extra = lines.to_string();
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
        self.grpc_addr.expect("the control plane was started")
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
        weft_local::token_file(&self.watcher.current(), "test", name)
    }

    /// Proxy settings for workload `w`, fronting `app_port`, with an upstream listener for each
    /// of `upstreams`; every listener on port 0.
    pub fn proxy_config(
        &self,
        w: &WorkloadDecl,
        app_port: Option<u16>,
        upstreams: &[&str],
    ) -> ProxyConfig {
        ProxyConfig {
            trust_bundle: Some(self.bundle_file()),
            account: w.identity.clone(),
            token_file: self.token_file(&w.name),
            ..loopback_proxy_config(self.grpc_addr(), &w.name, app_port, upstreams)
        }
    }

    /// Starts a proxy, declares its inbound listener (if it fronts an app) as the workload's
    /// port, and waits until it is ready (certificate and settings).
    pub async fn proxy(
        &self,
        w: &WorkloadDecl,
        app_port: Option<u16>,
        upstreams: &[&str],
    ) -> Proxy {
        self.start_proxy(self.proxy_config(w, app_port, upstreams))
            .await
    }

    /// Starts a proxy with `cfg`, as [`TestMesh::proxy`] does.
    pub async fn start_proxy(&self, cfg: ProxyConfig) -> Proxy {
        let name = cfg.workload.clone();
        let proxy = Proxy::start(cfg).await.unwrap();
        let serves = match proxy.inbound_addr {
            Some(inbound) => self.set_port(&name, inbound.port()).await,
            None => false,
        };
        wait_ready(&proxy).await;
        // Ready means the proxy holds settings, not yet those that name its new port: until
        // they do, that port has the default policy.
        if let (true, Some(inbound)) = (serves, proxy.inbound_addr) {
            wait_serving(&proxy, inbound.port()).await;
        }
        proxy
    }
}

impl Drop for TestMesh {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Proxy settings for workload `test/<workload>` of the local platform with control plane
/// `control`, fronting `app_port`, with an upstream listener for each of `upstreams`, every
/// listener on loopback port 0. The trust bundle and the token file are left for the caller.
pub fn loopback_proxy_config(
    control: SocketAddr,
    workload: &str,
    app_port: Option<u16>,
    upstreams: &[&str],
) -> ProxyConfig {
    ProxyConfig {
        control_addr: control.into(),
        trust_domain: "weft.test".into(),
        trust_bundle: None,
        trust_bundle_pem: None,
        namespace: "test".into(),
        workload: workload.into(),
        account: None,
        platform: "local".into(),
        token_file: PathBuf::new(),
        inbound_addr: ([127, 0, 0, 1], 0).into(),
        app_port,
        transparent: false,
        outbound_addr: ([127, 0, 0, 1], 0).into(),
        max_destinations: 1000,
        upstreams: upstreams
            .iter()
            .map(|s| Upstream {
                service: s.to_string(),
                listen: ([127, 0, 0, 1], 0).into(),
            })
            .collect(),
        admin_addr: ([127, 0, 0, 1], 0).into(),
        admin_shutdown: false,
        probe_addr: None,
        app_probes: None,
        detect_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        dispatch_timeout: Duration::from_secs(3),
        drain_timeout: Duration::from_secs(5),
        resolve_idle_timeout: Duration::from_secs(60),
        log_json: false,
        access_log: None,
        tap_addr: None,
        report_interval: Duration::from_secs(1),
        tap_advertise: None,
    }
}

/// Where `proxy` listens for its application's calls to `service`.
pub fn upstream(proxy: &Proxy, service: &str) -> SocketAddr {
    proxy
        .upstream_addrs
        .iter()
        .find(|(s, _)| s == service)
        .map(|(_, a)| *a)
        .unwrap_or_else(|| panic!("no upstream listener for {service}"))
}

/// A client workload `load` calling service `api` through its proxy, and `api`'s proxy
/// fronting an application, in a mesh that allows every identity.
#[allow(missing_debug_implementations, reason = "test fixture")]
pub struct Pair {
    /// The mesh.
    pub mesh: TestMesh,
    /// `load`'s proxy.
    pub client: Proxy,
    /// `api`'s proxy.
    pub server: Proxy,
    /// The client proxy's upstream listener for `api`.
    pub upstream: SocketAddr,
}

/// Starts a [`Pair`] whose `api` fronts `app` and declares `protocol` on its port.
pub async fn pair(app: SocketAddr, protocol: &str) -> Pair {
    let mut api = WorkloadDecl::serving("api", "api");
    api.protocol = protocol.into();
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(
        &[api.clone(), load.clone()],
        "[policy]\ndefault_inbound = \"allow\"",
    )
    .await;
    let server = mesh.proxy(&api, Some(app.port()), &[]).await;
    let client = mesh.proxy(&load, None, &["api"]).await;
    Pair {
        mesh,
        upstream: upstream(&client, "api"),
        client,
        server,
    }
}

/// Sends one `GET /` with `Host: api.test` to `up` on a connection of its own and returns the
/// response, its body unread.
pub async fn get_once(up: SocketAddr) -> http::Response<hyper::body::Incoming> {
    let tcp = tokio::net::TcpStream::connect(up).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send.send_request(
        http::Request::get("/")
            .header("host", "api.test")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap(),
    )
    .await
    .unwrap()
}

/// A keep-alive HTTP/1.1 client.
pub fn http_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// GETs `path` with `Host: api.test` through the upstream listener at `up`: the status, the
/// `x-backend` header (which test backend answered) and the body.
pub async fn get_through(
    c: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
    up: SocketAddr,
    path: &str,
) -> (http::StatusCode, String, String) {
    use http_body_util::BodyExt;
    let rsp = c
        .request(
            http::Request::get(format!("http://{up}{path}"))
                .header("host", "api.test")
                .body(http_body_util::Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = rsp.status();
    let backend = rsp
        .headers()
        .get("x-backend")
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, backend, String::from_utf8_lossy(&body).into_owned())
}

/// Sends one plaintext HTTP/1.1 `GET /` (`Host: api.test`, `Connection: close`) on a fresh
/// connection to `addr`; the response text, whatever came before the connection closed.
pub async fn plaintext_get(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf))
        .await
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// Waits until `proxy` holds a certificate and its settings.
/// Waits until `proxy`'s settings name `port` as a server of its workload. Until they do, a
/// proxy denies every client on that port (the policy of a server it does not know), so a
/// test that makes a workload serve must wait for this as well as for its callers to
/// resolve it.
pub async fn wait_serving(proxy: &Proxy, port: u16) {
    let mut settings = proxy.shared().settings.clone();
    tokio::time::timeout(
        WAIT,
        settings.wait_for(|s| s.as_ref().is_some_and(|s| s.servers.contains_key(&port))),
    )
    .await
    .expect("the proxy's settings name the port it serves")
    .unwrap();
}

pub async fn wait_ready(proxy: &Proxy) {
    let shared = proxy.shared();
    let mut c = shared.credentials.clone();
    let mut d = shared.settings.clone();
    tokio::time::timeout(WAIT, async {
        c.wait_for(|c| c.is_some()).await.unwrap();
        d.wait_for(|d| d.is_some()).await.unwrap();
    })
    .await
    .expect("proxy became ready");
}

/// Waits until what `proxy` knows of `target` (`name`, `name.namespace[:port]` or
/// `ip:port`, in namespace `test`) satisfies `f`. The wait uses the destination as a
/// connection would: it resolves the target if nobody does yet.
pub async fn wait_resolution(
    proxy: &Proxy,
    target: &str,
    f: impl Fn(&weft_proxy::discovery::Resolution) -> bool,
) {
    let target = weft_core::Target::parse(target, "test").expect("a valid target");
    let dest = proxy.destination(&target).expect("room for a destination");
    let mut rx = dest.resolution.clone();
    tokio::time::timeout(WAIT, rx.wait_for(|r| f(r)))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{target} never resolved as expected: {:?}",
                *dest.resolution.borrow()
            )
        })
        .unwrap();
}

/// Waits until `proxy` resolves `target` to a service that satisfies `f`.
pub async fn wait_resolved(
    proxy: &Proxy,
    target: &str,
    f: impl Fn(&weft_proxy::discovery::ResolvedService) -> bool,
) {
    wait_resolution(proxy, target, |r| match r {
        weft_proxy::discovery::Resolution::Resolved(s) => f(s),
        _ => false,
    })
    .await
}

/// The ports of the usable endpoints of a resolved service.
pub fn usable_ports(s: &weft_proxy::discovery::ResolvedService) -> Vec<u16> {
    s.usable().iter().map(|e| e.address.port()).collect()
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

/// Polls the metrics at `admin` (a proxy's admin listener or the control plane's HTTP
/// listener) until `ok` holds for them, and returns them.
pub async fn wait_metrics(admin: SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, text) = admin_get(admin, "GET", "/metrics").await;
        if ok(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the metrics never showed {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

/// Log lines of the current thread, captured from when [`LogCapture::install`] is called
/// until the capture is dropped. In a current-thread runtime that is every task of the test:
/// the proxies and the control plane included.
#[allow(missing_debug_implementations, reason = "test fixture")]
pub struct LogCapture {
    lines: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Captures events at `debug` and above on this thread.
    pub fn install() -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let writer = CaptureWriter(lines.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        Self {
            lines,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// The lines captured so far that contain every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        String::from_utf8_lossy(&self.lines.lock().unwrap())
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }
}

/// The Kubernetes adapter reading `fake` through the real kube client, with a kubeconfig
/// written to `dir`, in trust domain `weft.test`.
pub async fn kube_platform(
    fake: &fake_kube::FakeKube,
    dir: &Path,
    settings: weft_kubernetes::KubernetesSettings,
) -> weft_kubernetes::KubernetesPlatform {
    let path = fake.kubeconfig(dir);
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    weft_kubernetes::KubernetesPlatform::with_client(
        client,
        settings,
        weft_core::TrustDomain::new("weft.test").unwrap(),
    )
    .with_retry_floor(Duration::from_millis(50))
}

/// A binary of this workspace's build, beside the test binaries: `cargo test --workspace`
/// and `cargo nextest run --workspace` build every package's binaries, since each package
/// with binaries has integration tests of its own.
pub fn workspace_binary(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .unwrap();
    assert!(
        bin.is_file(),
        "{} is missing: build it first (cargo build -p {package})",
        bin.display()
    );
    bin
}

/// The `weft` command-line binary.
pub fn weft_binary() -> PathBuf {
    workspace_binary("weft", "weft-cli")
}

/// The real `weft` run with `args` (killed when dropped), and the lines of its stdout.
pub fn weft_lines(
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(weft_binary())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    (child, tokio::io::BufReader::new(stdout).lines())
}

/// `weft dashboard --no-browser` with `args`, and the address it printed (it runs until
/// dropped; its later lines are read and dropped).
pub async fn weft_dashboard(args: &[&str]) -> (tokio::process::Child, String) {
    let mut all = vec!["dashboard", "--no-browser"];
    all.extend_from_slice(args);
    let (child, mut lines) = weft_lines(&all);
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let url = first
        .strip_prefix("Weft dashboard: ")
        .expect(&first)
        .to_string();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

/// A control plane as `weft-control --config` starts one: from a mesh file in `dir` with the
/// trust domain `weft.test`, its CA in `dir/data`, its listeners on loopback, and `sections`
/// (policy, platforms) after those. It runs the adapters the file enables; cancel the token
/// (after `shutdown`) to stop following the file.
pub async fn control_plane_from_file(
    dir: &Path,
    sections: &str,
) -> (ControlPlane, CancellationToken) {
    let config = dir.join("mesh.toml");
    std::fs::write(
        &config,
        format!(
            "[mesh]\nname = \"test\"\ntrust_domain = \"weft.test\"\n[ca]\ndata_dir = \"{}\"\n\
             [control]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n{sections}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let stop = CancellationToken::new();
    let watcher =
        ConfigWatcher::start(&config, &weft_control::platforms::loader(), stop.clone()).unwrap();
    let platforms = weft_control::platforms::enabled(&watcher).await.unwrap();
    let control = ControlPlane::start(watcher.subscribe(), platforms)
        .await
        .unwrap();
    (control, stop)
}

/// A platform adapter feeding a registry of its own (source: the adapter's name), stopped
/// when dropped.
#[derive(Debug)]
pub struct RunningPlatform<P> {
    /// What the adapter writes.
    pub registry: weft_core::Registry,
    /// The adapter.
    pub platform: Arc<P>,
    /// Cancel to stop the adapter.
    pub stop: CancellationToken,
}

impl<P: Platform> RunningPlatform<P> {
    /// Runs `platform` until dropped.
    pub fn start(platform: P) -> Self {
        trace_init();
        let platform = Arc::new(platform);
        let registry = weft_core::Registry::new();
        let stop = CancellationToken::new();
        let (p, w, s) = (
            platform.clone(),
            registry.writer(platform.name()),
            stop.clone(),
        );
        tokio::spawn(async move { p.run(w, s).await });
        Self {
            registry,
            platform,
            stop,
        }
    }

    /// Waits until the registry satisfies `f`.
    pub async fn until(&self, what: &str, f: impl Fn(&weft_core::RegistrySnapshot) -> bool) {
        conformance::until(&self.registry, what, f).await
    }
}

impl<P> Drop for RunningPlatform<P> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A GET through `client`'s upstream `service` reaches `backend` behind `server`, and the
/// server proxy counts it as one inbound request from `peer` (a SPIFFE ID): the call went
/// over mutual TLS with the client's identity.
pub async fn assert_mesh_call(
    client: &Proxy,
    service: &str,
    server: &Proxy,
    backend: &str,
    peer: &str,
) {
    // The server's proxy admits callers on its port once its settings say the workload
    // serves it (a workload whose servers it does not know yet admits nobody).
    if let Some(inbound) = server.inbound_addr {
        let mut settings = server.shared().settings.clone();
        tokio::time::timeout(
            WAIT,
            settings.wait_for(|s| {
                s.as_ref()
                    .is_some_and(|s| s.servers.contains_key(&inbound.port()))
            }),
        )
        .await
        .expect("the server's proxy learns that its workload serves the port")
        .unwrap();
    }
    let c = http_client();
    let (status, answered, _) = get_through(&c, upstream(client, service), "/").await;
    assert_eq!((status.as_u16(), answered.as_str()), (200, backend));
    let peer = format!("peer=\"{peer}\"");
    let text = wait_metric(
        server.admin_addr,
        "weft_requests_total",
        &["direction=\"inbound\"", &peer],
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &text,
            "weft_requests_total",
            &["direction=\"inbound\"", &peer]
        ),
        1.0,
        "{text}"
    );
}

/// A GET through `client`'s upstream `service` is refused by the policy (403).
pub async fn assert_mesh_refused(client: &Proxy, service: &str) {
    let (status, _, _) = get_through(&http_client(), upstream(client, service), "/").await;
    assert_eq!(status.as_u16(), 403, "{service} must refuse this caller");
}
