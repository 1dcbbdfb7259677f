//! `weft-proxy`: the sidecar, as a pod's native sidecar, a Nomad task sidecar or a process.

use clap::Parser;
use weft_proxy::{Proxy, ProxyConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ProxyConfig::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if config.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let grace = config.drain_timeout;
    let proxy = Proxy::start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = proxy.shutdown_requested() => tracing::info!("shutdown requested on the admin listener"),
    }
    proxy.drain(grace).await;
    Ok(())
}
