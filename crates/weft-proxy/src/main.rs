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
/// idle connections closed; with jemalloc and [`idle_trim`] it returns to within 10 % of idle).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Hands an idle worker's cache of freed objects back to jemalloc.
///
/// jemalloc keeps each thread's recently freed objects in a cache of its own and trims it only
/// as the thread allocates again, so a worker that goes idle after a burst keeps up to a MiB
/// of them, and the pages under them stay resident. A worker trims its cache when it parks,
/// if it allocated enough since its last trim and that was at least [`idle_trim::EVERY`] ago:
/// under load a worker parks often, and this keeps trimming to once a second, away from the
/// request path. A worker whose last park came too soon after a trim is woken by
/// [`idle_trim::tick`] and trims at its next park. The tick wakes the worker that waits on the
/// runtime's driver; with two workers the other keeps its cache until work comes. Measured in
/// the README (Performance, "Back to idle after load").
#[cfg(feature = "jemalloc")]
mod idle_trim {
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    use tikv_jemalloc_ctl::{Access, AsName, thread::ThreadLocal};

    /// At most one trim per worker this often.
    pub const EVERY: Duration = Duration::from_secs(1);
    /// How often an idle proxy wakes a worker, to trim what its last park left.
    const TICK: Duration = Duration::from_secs(5);
    /// Bytes a worker must have allocated since its last trim to trim again: none while idle.
    const AFTER_BYTES: u64 = 64 << 10;

    /// The thread's jemalloc counter of bytes it allocated, and where its cache is switched.
    struct Trim {
        allocated: ThreadLocal<u64>,
        enabled: tikv_jemalloc_ctl::Mib<[usize; 3]>,
        /// The counter at the last trim (or when the thread first parked) and the time of
        /// that trim, if any: a worker's first trim need not wait.
        last: Cell<(u64, Option<Instant>)>,
    }

    thread_local! {
        static TRIM: Option<Trim> = {
            let allocated = tikv_jemalloc_ctl::thread::allocatedp::read().ok();
            let enabled = b"thread.tcache.enabled\0".name().mib().ok();
            allocated.zip(enabled).map(|(allocated, enabled)| Trim {
                last: Cell::new((allocated.get(), None)),
                allocated,
                enabled,
            })
        };
    }

    /// The runtime's park hook.
    pub fn on_park() {
        // A thread whose locals are already gone (it is ending) has nothing to trim.
        let _ = TRIM.try_with(|trim| {
            let Some(trim) = trim else { return };
            let allocated = trim.allocated.get();
            let (at_last, when) = trim.last.get();
            if allocated.wrapping_sub(at_last) < AFTER_BYTES {
                return;
            }
            let now = Instant::now();
            if let Some(when) = when
                && now.duration_since(when) < EVERY
            {
                return;
            }
            // Switching the cache off flushes it; switching it back on starts it empty.
            let flushed = trim
                .enabled
                .write(false)
                .and_then(|()| trim.enabled.write(true));
            if let Err(e) = flushed {
                tracing::debug!(error = %e, "cannot trim the thread's allocation cache");
            }
            trim.last.set((trim.allocated.get(), Some(now)));
        });
    }

    /// Wakes a worker every [`TICK`], so that one idle since a burst parks again and trims.
    pub async fn tick() {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Bytes the arenas count as handed out: objects in a thread's cache among them, so
        /// it falls by what a trim gives back.
        fn handed_out() -> usize {
            tikv_jemalloc_ctl::epoch::advance().unwrap();
            tikv_jemalloc_ctl::stats::allocated::read().unwrap()
        }

        /// Allocates objects of several small sizes, then frees them all: the thread's cache
        /// keeps many of them.
        fn burst() {
            let held: Vec<Vec<u8>> = (0..64)
                .flat_map(|_| [32, 64, 128, 256, 512].map(Vec::<u8>::with_capacity))
                .collect();
            drop(std::hint::black_box(held));
        }

        /// A park after a burst hands the thread's cache back; another burst and park within
        /// [`EVERY`] does not, so a busy worker trims at most once a second.
        #[test]
        fn a_park_after_a_burst_trims_the_cache_once_a_second_at_most() {
            on_park();
            for _ in 0..4 {
                burst();
            }
            let before = handed_out();
            on_park();
            let returned = before.saturating_sub(handed_out());
            for _ in 0..4 {
                burst();
            }
            let before = handed_out();
            on_park();
            let again = before.saturating_sub(handed_out());
            assert!(returned >= 16 << 10, "the trim gave back {returned} bytes");
            assert!(
                again < returned / 8,
                "a second trim within a second gave back {again} bytes"
            );
        }
    }
}

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
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.worker_threads(workers).enable_all();
    #[cfg(feature = "jemalloc")]
    runtime.on_thread_park(idle_trim::on_park);
    let runtime = runtime.build()?;
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
    #[cfg(feature = "jemalloc")]
    tokio::spawn(idle_trim::tick());
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
