//! `weft-proxy`: the sidecar, as a pod's native sidecar, a Nomad task sidecar or a process.

use std::io::IsTerminal;
use std::num::NonZeroUsize;

use clap::Parser;
use weft_proxy::{Proxy, ProxyConfig};

/// The most threads a proxy serves traffic on unless told otherwise (`--workers`).
const DEFAULT_WORKERS_AT_MOST: usize = 2;

/// The proxy's flags, and how many threads serve its traffic.
#[derive(Debug, Parser)]
#[command(
    name = "weft-proxy",
    version,
    about = "Weft sidecar proxy.",
    after_help = "Transparent mode: `weft-proxy init --help` writes the nat-table rules it needs."
)]
struct Cli {
    #[command(flatten)]
    config: ProxyConfig,
    /// Threads that serve traffic. Default: the CPUs the process may use (its affinity and its
    /// cgroup's CPU quota, so a pod's CPU limit), at most 2.
    #[arg(long, env = "WEFT_PROXY_WORKERS")]
    workers: Option<NonZeroUsize>,
}

/// jemalloc instead of the system allocator: with its background thread it hands memory back to
/// the system seconds after a burst of connections ends, where glibc's allocator kept the
/// whole peak resident (measured with `tests/bench/run.sh`: RSS stayed at 3-4x idle after 1,000
/// idle connections closed; with jemalloc it returns to within about 15-25 % of idle).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    // `weft-proxy init ...` writes the interception rules and exits; anything else runs the
    // proxy. The same binary serves both, so an init container needs no other image.
    if std::env::args_os().nth(1).is_some_and(|a| a == "init") {
        return init();
    }
    proxy()
}

fn init() -> anyhow::Result<()> {
    let args = weft_proxy::init::InitArgs::parse_from(std::env::args_os().skip(1));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match weft_proxy::init::init(&args) {
        Ok(done) => {
            print!("{done}");
            Ok(())
        }
        Err(e) => {
            eprintln!("weft-proxy init: {e}");
            std::process::exit(1);
        }
    }
}

fn proxy() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let workers = cli.workers.map_or_else(default_workers, NonZeroUsize::get);
    // The multi-thread scheduler even with one worker: the current-thread one measured no
    // better (user-space instructions per request from 4 % fewer to 7 % more across the
    // paths of `INSN=1 tests/bench/run.sh`, whose pinned proxies have one worker).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    runtime.block_on(serve(cli.config, workers))
}

/// The CPUs this process may use (std reads its affinity and its cgroup's quota), at most
/// [`DEFAULT_WORKERS_AT_MOST`]: a sidecar on a 64-core node must not start 64 threads.
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(DEFAULT_WORKERS_AT_MOST)
}

async fn serve(config: ProxyConfig, workers: usize) -> anyhow::Result<()> {
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
    // Without its background thread jemalloc purges freed pages only when the process
    // allocates again, so an idle proxy would keep a past peak resident.
    #[cfg(feature = "jemalloc")]
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "cannot start jemalloc's background purging");
    }
    let grace = config.drain_timeout;
    // The handlers go in before the listeners open: a SIGTERM that comes as soon as the
    // start-up line is logged must drain the proxy, not kill it.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tracing::debug!(workers, "runtime");
    let proxy = Proxy::start(config).await?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = interrupt.recv() => tracing::info!("interrupted"),
        _ = proxy.shutdown_requested() => tracing::info!("shutdown requested on the admin listener"),
    }
    proxy.drain(grace).await;
    Ok(())
}
