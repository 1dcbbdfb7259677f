//! `weft-proxy`: the sidecar, as a pod's native sidecar, a Nomad task sidecar or a process.

use std::io::IsTerminal;

use clap::Parser;
use weft_proxy::{Proxy, ProxyConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ProxyConfig::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr, leaving stdout to the program's output, and are coloured only on a
    // terminal so that redirected logs carry no escape codes.
    let ansi = std::io::stderr().is_terminal();
    if config.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_env_filter(filter)
            .init();
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
