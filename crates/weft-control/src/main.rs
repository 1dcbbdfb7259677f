//! `weft-control`: the control plane as a process (a Deployment on Kubernetes, a service job on
//! Nomad). It runs the platform adapters that the mesh config file enables.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use weft_core::config::ConfigWatcher;

/// Weft control plane.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The mesh config file.
    #[arg(long, env = "WEFT_CONFIG", default_value = "/etc/weft/mesh.toml")]
    config: PathBuf,
    /// Log as JSON lines.
    #[arg(long, env = "WEFT_LOG_JSON")]
    log_json: bool,
}

/// jemalloc instead of glibc's allocator, as in the proxy. Measured with the scale bench
/// (README › Performance › Control-plane scale): glibc's per-thread arenas kept what one
/// worker freed from another's writes, so RSS grew with every registry change; with jemalloc
/// the registry also takes less memory per endpoint.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr, leaving stdout to the program's output, and are coloured only on a
    // terminal so that redirected logs carry no escape codes.
    let ansi = std::io::stderr().is_terminal();
    if args.log_json {
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
    // jemalloc's background thread hands freed pages back to the system while the process is
    // idle, so a past peak (a relist, a burst of connections) does not stay resident.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "cannot start jemalloc's background purging");
    }
    let stop = CancellationToken::new();
    let watcher = ConfigWatcher::start(
        &args.config,
        &weft_control::platforms::loader(),
        stop.clone(),
    )?;
    // SIGTERM is how Kubernetes and Nomad stop a task; SIGINT is a terminal's Ctrl-C. Both
    // handlers are in place before any listener opens: a signal that arrives once the control
    // plane answers must stop it cleanly, not kill it.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let platforms = weft_control::platforms::enabled(&watcher).await?;
    let control = weft_control::ControlPlane::start(watcher.subscribe(), platforms).await?;
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    control.shutdown().await;
    stop.cancel();
    Ok(())
}
