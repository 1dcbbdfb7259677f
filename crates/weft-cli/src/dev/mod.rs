//! `weft dev`: the whole mesh in one terminal.

mod apps;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use weft_core::config::{ConfigWatcher, LocalWorkload, MeshConfig};
use weft_core::platform::Platform;
use weft_proxy::{Proxy, ProxyConfig, Upstream};

/// The demo mesh, used when no config file is given.
const DEMO_CONFIG: &str = include_str!("../../../../configs/mesh.toml");

pub async fn run(config: Option<PathBuf>, interval: u64) -> anyhow::Result<()> {
    let path = match config {
        Some(p) => p,
        None => write_demo_config()?,
    };
    let stop = CancellationToken::new();
    let watcher = ConfigWatcher::start(&path, stop.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = watcher.current();
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

    let workloads: Vec<LocalWorkload> = cfg
        .platforms
        .local
        .as_ref()
        .map(|l| l.workloads.iter().filter(|w| w.meshed).cloned().collect())
        .unwrap_or_default();
    let mut proxies = Vec::new();
    let mut scrape = Vec::new();
    for w in &workloads {
        if let (Some(demo), Some(port)) = (w.demo, w.app_port) {
            apps::spawn(demo, port, w, stop.clone()).await?;
        }
        let proxy_cfg = proxy_config(&cfg, w, control.grpc_addr, &control.trust_bundle_file);
        let proxy = Proxy::start(proxy_cfg)
            .await
            .with_context(|| format!("proxy of {}/{}", w.namespace, w.name))?;
        println!(
            "  {:<14}  admin http://{}  inbound {}  upstreams {:?}",
            format!("{}/{}", w.namespace, w.name),
            proxy.admin_addr,
            proxy
                .inbound_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            proxy.upstream_addrs
        );
        if let Some(demo @ weft_core::config::DemoApp::Load) = w.demo
            && let Some((_, addr)) = proxy.upstream_addrs.first()
        {
            apps::spawn_load(demo, *addr, stop.clone());
        }
        if w.service.is_some() {
            scrape.push((w.service.clone().unwrap_or_default(), proxy.admin_addr));
        }
        proxies.push(proxy);
    }
    println!(
        "Edit {} to change the mesh; Ctrl-C to stop.\n",
        path.display()
    );

    let mut stats = stats::Golden::new(scrape);
    let mut tick = tokio::time::interval(Duration::from_secs(interval.max(1)));
    tick.tick().await;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                for line in stats.sample().await {
                    println!("{line}");
                }
            }
        }
    }
    println!("\nstopping");
    stop.cancel();
    for p in proxies {
        p.drain(Duration::from_secs(5)).await;
    }
    control.shutdown().await;
    Ok(())
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
        control_addr: control,
        trust_domain: cfg.mesh.trust_domain.to_string(),
        trust_bundle: bundle.to_path_buf(),
        namespace: w.namespace.clone(),
        workload: w.name.clone(),
        account: w.identity.clone(),
        platform: weft_local::NAME.to_string(),
        token_file: cfg.workload_token_file(&w.namespace, &w.name),
        inbound_addr: SocketAddr::new(w.address, w.port),
        app_port: w.app_port,
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
        detect_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(3),
        dispatch_timeout: Duration::from_secs(3),
        drain_timeout: Duration::from_secs(5),
        log_json: false,
    }
}
