//! `weft dev`: the whole mesh in one terminal.

mod apps;
mod stats;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use weft_core::WorkloadKey;
use weft_core::config::{ConfigWatcher, MeshConfig};
use weft_core::platform::Platform;
use weft_local::config::DemoApp;
use weft_local::{LocalSettings, LocalWorkload};
use weft_proxy::{Proxy, ProxyConfig, Upstream};

/// The demo mesh, used when no config file is given.
const DEMO_CONFIG: &str = include_str!("../../../../configs/mesh.toml");

/// How long a stopping proxy lets in-flight requests finish.
const DRAIN: Duration = Duration::from_secs(5);

/// How long a stopped workload's ports may take to be released before it starts again.
const RELEASE: Duration = Duration::from_secs(5);

pub async fn run(config: Option<PathBuf>, interval: u64) -> anyhow::Result<()> {
    let path = match config {
        Some(p) => p,
        None => write_demo_config()?,
    };
    let stop = CancellationToken::new();
    let watcher = ConfigWatcher::start(&path, &weft_control::platforms::loader(), stop.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut config_rx = watcher.subscribe();
    let cfg = config_rx.borrow_and_update().clone();
    let local = weft_local::LocalPlatform::new(watcher.subscribe()).context("local platform")?;
    let platforms: Vec<Arc<dyn Platform>> = vec![Arc::new(local)];
    let control = weft_control::ControlPlane::start(watcher.subscribe(), platforms)
        .await
        .context("control plane")?;
    println!("weft dev: mesh {:?} from {}", cfg.mesh.name, path.display());
    println!(
        "  control plane   grpc {}  http http://{}",
        control.grpc_addr, control.http_addr
    );

    let mut mesh = DevMesh {
        // The proxies keep talking to the control plane that runs, whatever later edits of
        // [mesh] and [control] say: those need a restart.
        started: cfg.clone(),
        control_addr: control.grpc_addr,
        bundle: control.trust_bundle_file.clone(),
        stop: stop.clone(),
        running: BTreeMap::new(),
    };
    for (key, w) in meshed_workloads(&cfg) {
        let running = mesh
            .start(&w)
            .await
            .with_context(|| format!("workload {key}"))?;
        println!("  {:<14}  {}", key.to_string(), running.describe());
        mesh.running.insert(key, running);
    }
    println!(
        "Edit {} to change the mesh; Ctrl-C to stop.\n",
        path.display()
    );

    let mut stats = stats::Golden::new(mesh.scrape_targets(&cfg));
    let mut tick = tokio::time::interval(Duration::from_secs(interval.max(1)));
    tick.tick().await;
    // Both signal streams exist before the loop: a signal that arrives while the loop is busy
    // (sampling metrics, applying an edit) is kept for the next `recv`, where a `ctrl_c()`
    // future made anew on each turn would miss it.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                for line in stats.sample().await {
                    println!("{line}");
                }
            }
            changed = config_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let cfg = config_rx.borrow_and_update().clone();
                mesh.apply(&cfg, &mut stats).await;
            }
        }
    }
    println!("\nstopping");
    stop.cancel();
    for (_, running) in std::mem::take(&mut mesh.running) {
        running.stop().await;
    }
    control.shutdown().await;
    Ok(())
}

/// The workloads `weft dev` runs, by namespace/name: the meshed ones of an enabled local
/// platform, as the local platform adapter registers them.
fn meshed_workloads(cfg: &MeshConfig) -> BTreeMap<WorkloadKey, LocalWorkload> {
    LocalSettings::workloads(cfg)
        .filter(|w| w.meshed)
        .map(|w| {
            let key = WorkloadKey {
                namespace: w.namespace.clone(),
                name: w.name.clone(),
            };
            (key, w.clone())
        })
        .collect()
}

/// The workloads `weft dev` runs, with what it needs to start more.
struct DevMesh {
    started: Arc<MeshConfig>,
    control_addr: SocketAddr,
    bundle: PathBuf,
    stop: CancellationToken,
    running: BTreeMap<WorkloadKey, Running>,
}

/// One workload's proxy and demo application.
struct Running {
    spec: LocalWorkload,
    proxy: Proxy,
    /// Stops this workload's demo application and traffic loop, not the others'.
    apps: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl DevMesh {
    /// Starts `w`'s demo application and proxy, and its traffic loop if it has one.
    async fn start(&self, w: &LocalWorkload) -> anyhow::Result<Running> {
        let apps = self.stop.child_token();
        let mut tasks = Vec::new();
        if let (Some(demo), Some(port)) = (w.demo, w.app_port) {
            let task = apps::spawn(demo, port, w, apps.clone())
                .await
                .with_context(|| format!("demo application on port {port}"))?;
            tasks.push(task);
        }
        let proxy_cfg = proxy_config(&self.started, w, self.control_addr, &self.bundle);
        let proxy = match Proxy::start(proxy_cfg).await {
            Ok(proxy) => proxy,
            Err(e) => {
                stop_tasks(&apps, tasks).await;
                return Err(e).context("proxy");
            }
        };
        if let Some(demo @ DemoApp::Load) = w.demo
            && let Some((_, addr)) = proxy.upstream_addrs.first()
        {
            tasks.push(apps::spawn_load(demo, *addr, apps.clone()));
        }
        Ok(Running {
            spec: w.clone(),
            proxy,
            apps,
            tasks,
        })
    }

    /// Brings the running workloads in line with `cfg`: stops those removed, starts those
    /// added, and restarts those whose settings changed.
    async fn apply(&mut self, cfg: &MeshConfig, stats: &mut stats::Golden) {
        let wanted = meshed_workloads(cfg);
        let stale: Vec<WorkloadKey> = self
            .running
            .iter()
            .filter(|(key, r)| wanted.get(*key) != Some(&r.spec))
            .map(|(key, _)| key.clone())
            .collect();
        let mut restarting = Vec::new();
        for key in stale {
            let Some(running) = self.running.remove(&key) else {
                continue;
            };
            stats.forget(running.proxy.admin_addr);
            running.stop().await;
            if wanted.contains_key(&key) {
                restarting.push(key);
            } else {
                println!("removed {key}");
            }
        }
        for (key, w) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let verb = if restarting.contains(&key) {
                "restarted"
            } else {
                "added"
            };
            match self.start(&w).await {
                Ok(running) => {
                    println!("{verb} {key}: {}", running.describe());
                    self.running.insert(key, running);
                }
                // Reported and retried on the next edit; the rest of the mesh keeps running.
                Err(e) => eprintln!("weft dev: cannot start {key}: {e:#}"),
            }
        }
        stats.set_targets(self.scrape_targets(cfg));
    }

    /// The admin address of each running proxy that serves a service, in file order.
    fn scrape_targets(&self, cfg: &MeshConfig) -> Vec<(String, SocketAddr)> {
        LocalSettings::workloads(cfg)
            .filter_map(|w| {
                let key = WorkloadKey {
                    namespace: w.namespace.clone(),
                    name: w.name.clone(),
                };
                let running = self.running.get(&key)?;
                Some((running.spec.service.clone()?, running.proxy.admin_addr))
            })
            .collect()
    }
}

impl Running {
    /// The line `weft dev` prints about a started workload.
    fn describe(&self) -> String {
        format!(
            "admin http://{}  inbound {}  upstreams {:?}",
            self.proxy.admin_addr,
            self.proxy
                .inbound_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            self.proxy.upstream_addrs
        )
    }

    /// Drains the proxy, stops the demo application and traffic loop, and waits until their
    /// listening ports are free, so that a restart can bind them again.
    async fn stop(self) {
        let mut addrs: Vec<SocketAddr> = vec![self.proxy.admin_addr];
        addrs.extend(self.proxy.inbound_addr);
        addrs.extend(self.proxy.upstream_addrs.iter().map(|(_, a)| *a));
        self.proxy.drain(DRAIN).await;
        stop_tasks(&self.apps, self.tasks).await;
        wait_released(&addrs).await;
    }
}

async fn stop_tasks(apps: &CancellationToken, tasks: Vec<JoinHandle<()>>) {
    apps.cancel();
    for task in tasks {
        let _ = task.await;
    }
}

/// Waits until every address can be bound again, or [`RELEASE`] has passed. The proxy's
/// listener tasks close their sockets on their next poll after `drain` returns, not before.
async fn wait_released(addrs: &[SocketAddr]) {
    let deadline = tokio::time::Instant::now() + RELEASE;
    for addr in addrs {
        while tokio::net::TcpListener::bind(addr).await.is_err() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(%addr, "port still in use after stopping the workload");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn write_demo_config() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("weft-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("mesh.toml");
    std::fs::write(&path, DEMO_CONFIG)?;
    Ok(path)
}

fn proxy_config(
    cfg: &MeshConfig,
    w: &LocalWorkload,
    control: SocketAddr,
    bundle: &std::path::Path,
) -> ProxyConfig {
    ProxyConfig {
        control_addr: control.into(),
        trust_domain: cfg.mesh.trust_domain.to_string(),
        trust_bundle: Some(bundle.to_path_buf()),
        trust_bundle_pem: None,
        namespace: w.namespace.clone(),
        workload: w.name.clone(),
        account: w.identity.clone(),
        platform: weft_local::NAME.to_string(),
        token_file: weft_local::token_file(cfg, &w.namespace, &w.name),
        inbound_addr: SocketAddr::new(w.address, w.port),
        app_port: w.app_port,
        transparent: false,
        outbound_addr: ([127, 0, 0, 1], 0).into(),
        max_destinations: 1000,
        upstreams: w
            .upstreams
            .iter()
            .map(|(service, port)| Upstream {
                service: service.clone(),
                listen: ([127, 0, 0, 1], *port).into(),
            })
            .collect(),
        admin_addr: ([127, 0, 0, 1], w.admin_port.unwrap_or(0)).into(),
        admin_shutdown: false,
        probe_addr: None,
        app_probes: None,
        detect_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(3),
        dispatch_timeout: Duration::from_secs(3),
        drain_timeout: Duration::from_secs(5),
        resolve_idle_timeout: Duration::from_secs(60),
        log_json: false,
        access_log: None,
        // Any free port: the proxy tells the control plane which.
        tap_addr: Some(([127, 0, 0, 1], 0).into()),
        report_interval: Duration::from_secs(1),
        tap_advertise: None,
    }
}
