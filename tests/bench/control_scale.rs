//! Control-plane scale benchmark.
//!
//! Two processes, so that the control plane is measured apart from its clients:
//! - the parent runs the control plane in-process, with a bench platform that fills the
//!   registry with `--services` services of `--endpoints-per-service` meshed endpoints each,
//!   and then changes the registry at `--change-rate` changes per second;
//! - the child (this binary again, with `--client`) runs `--proxies` simulated proxies. Each
//!   gets its certificate with `Identity.Certify`, opens its own TLS connection and follows
//!   `--streams-per-proxy` services with `Discovery.Resolve` streams, noting the wall-clock
//!   time at which every endpoint change arrives.
//!
//! A change moves one endpoint of a followed service to a new port; the new address names the
//! change. Changes visit every followed service before one changes again, so at the defaults
//! no change is superseded before it is delivered (one that is counts as missing). At the end
//! the child reports, per service and address, how many streams saw it and when the first and
//! the last did; the parent joins that with the time it made each change and prints a markdown
//! report: change-to-last-subscriber latency (p50, p99, max), deliveries missing, the control
//! plane's RSS per open stream and its CPU per change (net of an idle baseline with the same
//! streams open). Progress goes to stderr.
//!
//! Parent and child talk over the child's stdin and stdout, one line at a time:
//! child `certified N SECS RETRIES`, `connected N SECS`; parent `open`; child
//! `ready OK FAILED SECS [FIRST-ERROR]`; parent `stop`; child JSON lines, the last with
//! `"done": true`; `error ...` from the child at any point ends the run. Every wait has a deadline, every loop
//! a bound, and all traffic stays on 127.0.0.1. Linux only (it reads /proc).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use weft_api::v1::discovery_client::DiscoveryClient;
use weft_api::v1::identity_client::IdentityClient;
use weft_api::v1::resolve_update::Update;
use weft_api::{CertifyRequest, Credential as WireCredential};
use weft_ca::tls::{TlsCredentials, anonymous_client_config};
use weft_ca::{ALPN_H2, LeafKey, TrustBundle};
use weft_core::platform::{AttestError, Credential, Platform, PlatformError};
use weft_core::{
    Endpoint, EndpointState, Identity, Protocol, RegistryWriter, Service, ServiceName, ServicePort,
    Target, TrustDomain, WorkloadKey,
};
use weft_proxy::ProxyConfig;
use weft_proxy::control::ControlError;

/// The allocator `weft-control` ships with, so the in-process control plane measures as the
/// binary would.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The bench platform's name: its registry source and its credentials' platform.
const PLATFORM: &str = "bench";
/// The namespace of every service, workload and proxy identity.
const NAMESPACE: &str = "bench";
const TRUST_DOMAIN: &str = "weft.bench";
/// Endpoints start on this port; each move takes the next one, back to the first after
/// `LAST_PORT`.
const FIRST_PORT: u16 = 10_000;
const LAST_PORT: u16 = 60_000;
/// Attempts at one Certify call or one connection before the setup fails.
const ATTEMPTS: u32 = 30;
/// Targets from the issue.
const TARGET_P99_US: u64 = 1_000_000;
const TARGET_BYTES_PER_STREAM: f64 = 10_000.0;

/// Weft control-plane scale benchmark: a control plane with a large registry, simulated proxies
/// following services over Discovery.Resolve in a second process, and registry changes at a
/// steady rate. Prints a markdown report to stdout, progress to stderr.
#[derive(Clone, Debug, Parser)]
#[command(name = "control-scale")]
struct Args {
    /// Services in the registry.
    #[arg(long, default_value_t = 10_000)]
    services: u32,
    /// Endpoints of each service (on its one port).
    #[arg(long, default_value_t = 10)]
    endpoints_per_service: u32,
    /// Simulated proxies, each with its own certificate and TLS connection.
    #[arg(long, default_value_t = 1_000)]
    proxies: u32,
    /// Discovery.Resolve streams per proxy, each following another service.
    #[arg(long, default_value_t = 10)]
    streams_per_proxy: u32,
    /// Proxies that resolve the same services: proxy p follows services
    /// ((p / fanout) * streams-per-proxy + k) mod services, k < streams-per-proxy.
    #[arg(long, default_value_t = 1)]
    fanout: u32,
    /// Registry changes per second during the change phase.
    #[arg(long, default_value_t = 100.0)]
    change_rate: f64,
    /// Length of the change phase, in seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Length of the idle phase before it (streams open, no change), for the CPU baseline, in
    /// seconds. Defaults to --duration; 0 skips it.
    #[arg(long)]
    baseline: Option<f64>,
    /// How long after the last change subscribers may still receive changes, in seconds.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// After the changes: how long every simulated proxy sends `Telemetry.Report`s (one
    /// every 10 s, the control plane's spacing, so that its window fills), in seconds; 0
    /// skips it. Each report is what a real proxy's /metrics shows for its followed services
    /// and three callers.
    #[arg(long, default_value_t = 65.0)]
    telemetry: f64,
    /// Certify calls in flight at once (the control plane refuses more than 64 anonymous ones).
    #[arg(long, default_value_t = 32)]
    certify_concurrency: usize,
    /// TLS connections being opened at once (the control plane takes 256 pending handshakes).
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Deadline of each setup step (fill, certify, connect, first answers), in seconds.
    #[arg(long, default_value_t = 120.0)]
    setup_timeout: f64,
    /// Clock ticks per second of /proc/<pid>/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clock_ticks: u32,
    /// Internal: run as the client process.
    #[arg(long, hide = true)]
    client: bool,
    /// Internal (client): the control plane's gRPC address.
    #[arg(long, hide = true)]
    control_addr: Option<SocketAddr>,
    /// Internal (client): the trust bundle file.
    #[arg(long, hide = true)]
    trust_bundle: Option<PathBuf>,
}

impl Args {
    fn check(&self) -> anyhow::Result<()> {
        fn within<T: PartialOrd + std::fmt::Display>(
            flag: &str,
            v: T,
            lo: T,
            hi: T,
        ) -> anyhow::Result<()> {
            ensure!(v >= lo && v <= hi, "--{flag} {v}: expected {lo} to {hi}");
            Ok(())
        }
        within("services", self.services, 1, 1_000_000)?;
        within(
            "endpoints-per-service",
            self.endpoints_per_service,
            1,
            1_000,
        )?;
        let total = u64::from(self.services) * u64::from(self.endpoints_per_service);
        ensure!(total < 1 << 24, "fewer than 2^24 endpoints in all, please");
        within("proxies", self.proxies, 1, 20_000)?;
        // Each simulated proxy holds its streams on one connection (the control plane allows
        // 1,100 on one); 64 keeps a run of thousands of proxies within the machine.
        within("streams-per-proxy", self.streams_per_proxy, 1, 64)?;
        within("fanout", self.fanout, 1, self.proxies)?;
        within("change-rate", self.change_rate, 0.001, 10_000.0)?;
        within("duration", self.duration, 0.001, 600.0)?;
        within("baseline", self.baseline(), 0.0, 600.0)?;
        within("drain", self.drain, 0.0, 60.0)?;
        within("certify-concurrency", self.certify_concurrency, 1, 64)?;
        within("connect-concurrency", self.connect_concurrency, 1, 256)?;
        within("setup-timeout", self.setup_timeout, 0.001, 600.0)?;
        within("clock-ticks", self.clock_ticks, 1, 100_000)
    }

    fn baseline(&self) -> f64 {
        self.baseline.unwrap_or(self.duration)
    }

    fn changes(&self) -> u64 {
        ((self.change_rate * self.duration).round() as u64).max(1)
    }

    fn streams(&self) -> u64 {
        u64::from(self.proxies) * u64::from(self.streams_per_proxy)
    }

    fn setup(&self) -> Duration {
        Duration::from_secs_f64(self.setup_timeout)
    }

    /// The service that stream `k` of proxy `p` follows.
    fn subscription(&self, p: u32, k: u32) -> u32 {
        let group = u64::from(p / self.fanout);
        ((group * u64::from(self.streams_per_proxy) + u64::from(k)) % u64::from(self.services))
            as u32
    }

    /// How many streams follow each service.
    fn subscribers(&self) -> Vec<u32> {
        let mut count = vec![0u32; self.services as usize];
        for p in 0..self.proxies {
            for k in 0..self.streams_per_proxy {
                count[self.subscription(p, k) as usize] += 1;
            }
        }
        count
    }
}

fn main() -> anyhow::Result<()> {
    // As weft-control starts it.
    tikv_jemalloc_ctl::background_thread::write(true)
        .map_err(|e| anyhow::anyhow!("jemalloc background thread: {e}"))?;
    let args = Args::parse();
    args.check()?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.client {
        let result = rt.block_on(client(args));
        if let Err(e) = &result {
            // The parent reads this line and stops.
            println!("error {e:#}");
        }
        // Leave at once: a read of stdin may still be pending on a blocking thread.
        std::process::exit(i32::from(result.is_err()));
    }
    // On a worker thread, where a platform adapter's writes run too: which thread allocates
    // decides which malloc arena the registry's nodes come from.
    rt.block_on(async { tokio::spawn(parent(args)).await? })
}

// === the model ===

fn service_name(s: u32) -> anyhow::Result<ServiceName> {
    Ok(ServiceName::new(NAMESPACE, format!("s{s}"))?)
}

/// Endpoint `e` of service `s` has its own loopback address (data only: nobody connects to
/// it), numbered from the endpoint's index over the whole registry.
fn endpoint_ip(s: u32, e: u32, per_service: u32) -> Ipv4Addr {
    let g = s * per_service + e;
    Ipv4Addr::new(127, (g >> 16) as u8, (g >> 8) as u8, g as u8)
}

fn build_service(td: &TrustDomain, s: u32, per_service: u32) -> anyhow::Result<Service> {
    let identity = Identity::new(td.clone(), NAMESPACE, format!("s{s}"))?;
    let endpoints = (0..per_service)
        .map(|e| Endpoint {
            address: SocketAddr::new(endpoint_ip(s, e, per_service).into(), FIRST_PORT),
            identity: Some(identity.clone()),
            meshed: true,
            workload: Some(WorkloadKey {
                namespace: NAMESPACE.into(),
                name: format!("s{s}-{e}"),
            }),
            state: EndpointState::Ready,
        })
        .collect();
    Ok(Service {
        name: service_name(s)?,
        virtual_ips: Vec::new(),
        ports: vec![ServicePort {
            port: 80,
            name: None,
            protocol: Protocol::Http1,
            endpoints,
        }],
    })
}

/// Fills the registry once the parent says so, then holds still; the parent makes the changes
/// through its own writer for the same source. Attests any credential of this platform.
#[derive(Debug)]
struct BenchPlatform {
    td: TrustDomain,
    services: u32,
    per_service: u32,
    fill: Arc<Notify>,
}

#[async_trait::async_trait]
impl Platform for BenchPlatform {
    fn name(&self) -> &str {
        PLATFORM
    }

    async fn run(
        &self,
        registry: RegistryWriter,
        shutdown: CancellationToken,
    ) -> Result<(), PlatformError> {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = self.fill.notified() => {}
        }
        let services = (0..self.services)
            .map(|s| build_service(&self.td, s, self.per_service))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(|e| PlatformError::Fatal {
                platform: PLATFORM.into(),
                source: e.into(),
            })?;
        registry.replace_all(services);
        shutdown.cancelled().await;
        Ok(())
    }

    async fn attest(&self, credential: &Credential) -> Result<Identity, AttestError> {
        if credential.platform != PLATFORM {
            return Err(AttestError::WrongPlatform(credential.platform.clone()));
        }
        let workload = credential.workload.as_deref().unwrap_or_default();
        match workload.split_once('/') {
            Some((NAMESPACE, name)) => Identity::new(self.td.clone(), NAMESPACE, name)
                .map_err(|e| AttestError::Rejected(e.to_string())),
            _ => Err(AttestError::UnknownWorkload(workload.to_string())),
        }
    }
}

/// Visits every service once per round, spread over all of them (so over all proxies), with a
/// step prime to their number.
fn stride(services: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let mut s = ((services as f64 * 0.618) as u64).max(1);
    while gcd(s, services) != 1 {
        s += 1;
    }
    s
}

// === /proc ===

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A `kB` field of /proc/<pid>/status, in bytes.
fn status_bytes(pid: &str, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// User plus system CPU time of a process (all its threads, live or gone), in seconds.
fn cpu_secs(pid: &str, ticks: u32) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which ends at the last ')': state is field 3.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(n - 3)
            .with_context(|| format!("short /proc/{pid}/stat"))?
            .parse()?)
    };
    Ok((field(14)? + field(15)?) as f64 / f64::from(ticks))
}

/// The soft limit on open files.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A sample of one process: RSS and CPU time.
#[derive(Clone, Copy, Debug)]
struct Sample {
    rss: u64,
    cpu: f64,
    at: Instant,
}

fn sample(pid: &str, ticks: u32) -> anyhow::Result<Sample> {
    Ok(Sample {
        rss: status_bytes(pid, "VmRSS")?,
        cpu: cpu_secs(pid, ticks)?,
        at: Instant::now(),
    })
}

// === the parent: control plane, changes, report ===

/// One change the parent made.
struct Change {
    service: u32,
    address: String,
    sent_us: u64,
}

/// What the child saw of one change on one service.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    streams: u64,
    first_us: u64,
    last_us: u64,
}

/// A gauge or counter of the control plane's resolve streams, from its /metrics text.
/// The value of the metric `name`, which has no labels.
fn plain_metric(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

fn resolve_metric(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{kind=\"resolve\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

async fn control_metrics(addr: SocketAddr) -> String {
    weft_tests::admin_get(addr, "GET", "/metrics").await.1
}

/// The next line from the child, which must start with `word`; its other fields.
async fn expect_line<R: AsyncBufRead + Unpin>(
    lines: &mut Lines<R>,
    word: &str,
    within: Duration,
) -> anyhow::Result<Vec<String>> {
    let line = tokio::time::timeout(within, lines.next_line())
        .await
        .with_context(|| format!("the client did not say {word:?} within {within:?}"))??
        .with_context(|| format!("the client exited before saying {word:?}"))?;
    let mut fields = line.split_whitespace().map(str::to_string);
    match fields.next().as_deref() {
        Some(w) if w == word => Ok(fields.collect()),
        Some("error") => bail!("client: {}", line.trim_start_matches("error ")),
        _ => bail!("expected {word:?} from the client, got {line:?}"),
    }
}

fn field<T: std::str::FromStr>(fields: &[String], i: usize) -> anyhow::Result<T> {
    fields
        .get(i)
        .and_then(|f| f.parse().ok())
        .with_context(|| format!("bad field {i} in {fields:?}"))
}

async fn parent(args: Args) -> anyhow::Result<()> {
    let began = Instant::now();
    let ticks = args.clock_ticks;
    let limit = open_files_limit().unwrap_or(0);
    let need = u64::from(args.proxies) + 512;
    ensure!(
        limit >= need,
        "open files limit {limit} < {need}: raise it (ulimit -n 65536) or run tests/bench/control_scale.sh"
    );
    let loadavg = read_trimmed("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");

    let dir = tempfile::tempdir()?;
    // Every simulated proxy certifies from 127.0.0.1, where a real one has an address of its
    // own: the per-address Certify rate is lifted so that the setup measures the control
    // plane, not that bound. Each proxy has an identity of its own, so the per-identity
    // bounds are far away.
    let text = format!(
        "[mesh]\nname = \"bench\"\ntrust_domain = \"{TRUST_DOMAIN}\"\n\
         [ca]\ndata_dir = \"{}\"\n\
         [control]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n\
         [control.limits]\ncertify_rate_per_address = 1000000.0\ncertify_burst_per_address = 1000000\n\
         [policy]\ndefault_inbound = \"allow\"\n",
        dir.path().join("data").display()
    );
    let cfg = weft_control::platforms::loader().load_str(&text, Path::new("bench.toml"))?;
    let td = cfg.mesh.trust_domain.clone();
    // Kept to the end: Resolve streams end when the config sender goes.
    let (_config_tx, config_rx) = watch::channel(Arc::new(cfg));
    let fill = Arc::new(Notify::new());
    let platform = Arc::new(BenchPlatform {
        td,
        services: args.services,
        per_service: args.endpoints_per_service,
        fill: fill.clone(),
    });
    let control = weft_control::ControlPlane::start(config_rx, vec![platform]).await?;
    let me = "self";
    let start = sample(me, ticks)?;

    // Fill the registry.
    fill.notify_one();
    tokio::time::timeout(
        args.setup(),
        control.registry.wait_synced(&[PLATFORM.to_string()]),
    )
    .await
    .context("the registry was not filled in time")?;
    let filled = sample(me, ticks)?;
    let fill_time = filled.at - start.at;
    let endpoints = control.registry.snapshot().endpoint_count();
    let want = args.services as usize * args.endpoints_per_service as usize;
    ensure!(
        endpoints == want,
        "registry holds {endpoints} endpoints, not {want}"
    );
    eprintln!(
        "registry: {} services, {endpoints} endpoints in {:.2} s",
        args.services,
        fill_time.as_secs_f64()
    );

    // The client process.
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        // The same flags, so both sides derive the same topology from them.
        .args(std::env::args_os().skip(1))
        .arg("--client")
        .arg("--control-addr")
        .arg(control.grpc_addr.to_string())
        .arg("--trust-bundle")
        .arg(&control.trust_bundle_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the client process")?;
    let child_pid = child.id().context("client pid")?.to_string();
    let mut to_child = child.stdin.take().context("client stdin")?;
    let mut from_child = BufReader::new(child.stdout.take().context("client stdout")?).lines();

    let f = expect_line(&mut from_child, "certified", args.setup()).await?;
    let (certify_secs, certify_retries): (f64, u64) = (field(&f, 1)?, field(&f, 2)?);
    eprintln!("client: {} proxies certified in {certify_secs:.2} s", f[0]);
    let f = expect_line(&mut from_child, "connected", args.setup()).await?;
    let connect_secs: f64 = field(&f, 1)?;
    eprintln!("client: {} connections in {connect_secs:.2} s", f[0]);
    let connected = sample(me, ticks)?;

    to_child.write_all(b"open\n").await?;
    let f = expect_line(&mut from_child, "ready", args.setup()).await?;
    let (ready, failed, ready_secs): (u64, u64, f64) =
        (field(&f, 0)?, field(&f, 1)?, field(&f, 2)?);
    if failed > 0 {
        bail!(
            "{failed} of {} streams got no first answer: {}",
            args.streams(),
            f[3..].join(" ")
        );
    }
    let open = sample(me, ticks)?;
    let metrics = control_metrics(control.http_addr).await;
    let server_streams = resolve_metric(&metrics, "weft_control_discovery_streams");
    ensure!(
        server_streams == Some(ready as f64),
        "the control plane counts {server_streams:?} open resolve streams, the client {ready}"
    );
    eprintln!("client: {ready} streams answered in {ready_secs:.2} s");

    // Idle baseline: the same streams open, no change.
    let idle_secs = args.baseline();
    let mut idle_cpu_per_sec = None;
    if idle_secs > 0.0 {
        eprintln!("idle baseline: {idle_secs} s");
        let (a, ca) = (sample(me, ticks)?, sample(&child_pid, ticks)?);
        tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
        let (b, cb) = (sample(me, ticks)?, sample(&child_pid, ticks)?);
        let wall = (b.at - a.at).as_secs_f64();
        idle_cpu_per_sec = Some(((b.cpu - a.cpu) / wall, (cb.cpu - ca.cpu) / wall));
    }

    // Changes at a steady rate, each to a followed service: change i moves endpoint
    // (i / followed) mod per-service of followed service (i * stride) mod followed to its next
    // port, so a service changes again only after every other followed service did.
    let n = args.changes();
    let subscribers = args.subscribers();
    let followed: Vec<u32> = (0..args.services)
        .filter(|&s| subscribers[s as usize] > 0)
        .collect();
    let count = followed.len() as u64;
    eprintln!(
        "changes: {n} at {} per second for {} s",
        args.change_rate, args.duration
    );
    let writer = control.registry.writer(PLATFORM);
    let step = stride(count);
    let mut changes = Vec::with_capacity(n as usize);
    let mut max_lag = Duration::ZERO;
    let before = (sample(me, ticks)?, sample(&child_pid, ticks)?);
    let metrics = control_metrics(control.http_addr).await;
    let updates_before =
        resolve_metric(&metrics, "weft_control_discovery_updates_total").unwrap_or(0.0);
    let t0 = tokio::time::Instant::now();
    for i in 0..n {
        let due = t0 + Duration::from_secs_f64(i as f64 / args.change_rate);
        tokio::time::sleep_until(due).await;
        max_lag = max_lag.max(tokio::time::Instant::now() - due);
        let s = followed[((i * step) % count) as usize];
        let e = ((i / count) % u64::from(args.endpoints_per_service)) as u32;
        let ip = endpoint_ip(s, e, args.endpoints_per_service);
        let name = service_name(s)?;
        let current = control
            .registry
            .snapshot()
            .service(&name)
            .with_context(|| format!("{name} is gone"))?;
        let mut next = (*current).clone();
        let endpoint = next.ports[0]
            .endpoints
            .iter_mut()
            .find(|ep| ep.address.ip() == ip)
            .with_context(|| format!("{name} has no endpoint at {ip}"))?;
        let port = match endpoint.address.port() {
            p if p >= LAST_PORT => FIRST_PORT,
            p => p + 1,
        };
        endpoint.address.set_port(port);
        let address = endpoint.address.to_string();
        let sent_us = now_us();
        writer.upsert(next);
        changes.push(Change {
            service: s,
            address,
            sent_us,
        });
    }
    let changed = (sample(me, ticks)?, sample(&child_pid, ticks)?);
    tokio::time::sleep(Duration::from_secs_f64(args.drain)).await;
    let drained = (sample(me, ticks)?, sample(&child_pid, ticks)?);
    let peak = status_bytes(me, "VmHWM")?;
    let metrics = control_metrics(control.http_addr).await;
    let updates_sent = resolve_metric(&metrics, "weft_control_discovery_updates_total")
        .unwrap_or(0.0)
        - updates_before;

    // Telemetry: every proxy reports for a window's worth of time.
    let mut telemetry = None;
    if args.telemetry > 0.0 {
        let before = sample(me, ticks)?;
        to_child.write_all(b"report\n").await?;
        let wait = args.setup() + Duration::from_secs_f64(args.telemetry);
        let f = expect_line(&mut from_child, "reported", wait).await?;
        let (reports, samples): (u64, u64) = (field(&f, 0)?, field(&f, 1)?);
        let after = sample(me, ticks)?;
        let metrics = control_metrics(control.http_addr).await;
        let series = plain_metric(&metrics, "weft_control_telemetry_series").unwrap_or(0.0);
        let values = plain_metric(&metrics, "weft_control_telemetry_values").unwrap_or(0.0);
        eprintln!("telemetry: {reports} reports of {samples} samples each");
        telemetry = Some(Telemetry {
            reports,
            samples,
            series,
            values,
            rss_before: before.rss,
            rss_after: after.rss,
        });
    }

    // What the client saw.
    to_child.write_all(b"stop\n").await?;
    let mut seen: HashMap<(u32, String), Seen> = HashMap::new();
    let summary = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), from_child.next_line())
            .await
            .context("the client did not report within 60 s")??
            .context("the client exited before its report")?;
        if let Some(e) = line.strip_prefix("error ") {
            bail!("client: {e}");
        }
        let v: Value = serde_json::from_str(&line).with_context(|| format!("{line:?}"))?;
        if v["done"].as_bool() == Some(true) {
            break v;
        }
        let key = (
            v["svc"].as_u64().context("svc")? as u32,
            v["addr"].as_str().context("addr")?.to_string(),
        );
        seen.insert(
            key,
            Seen {
                streams: v["n"].as_u64().context("n")?,
                first_us: v["first_us"].as_u64().context("first_us")?,
                last_us: v["last_us"].as_u64().context("last_us")?,
            },
        );
    };
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(status) => ensure!(status?.success(), "the client failed"),
        Err(_) => {
            child.kill().await?;
            bail!("the client did not exit");
        }
    }
    control.shutdown().await;

    // Join.
    let mut last = Vec::new();
    let mut first = Vec::new();
    let (mut complete, mut missing, mut extra) = (0u64, 0u64, 0u64);
    for c in &changes {
        let want = u64::from(subscribers[c.service as usize]);
        let got = seen
            .remove(&(c.service, c.address.clone()))
            .unwrap_or_default();
        missing += want.saturating_sub(got.streams);
        extra += got.streams.saturating_sub(want);
        if got.streams > 0 {
            first.push(got.first_us.saturating_sub(c.sent_us));
        }
        if got.streams >= want {
            complete += 1;
            last.push(got.last_us.saturating_sub(c.sent_us));
        }
    }
    // Whatever is left was never sent by the parent.
    let strays: u64 = seen.values().map(|s| s.streams).sum();
    last.sort_unstable();
    first.sort_unstable();
    let deliveries: u64 = changes
        .iter()
        .map(|c| u64::from(subscribers[c.service as usize]))
        .sum();

    let report = Report {
        args: &args,
        loadavg,
        took: began.elapsed(),
        setup: [
            fill_time.as_secs_f64(),
            certify_secs,
            connect_secs,
            ready_secs,
        ],
        certify_retries,
        rss: [
            start.rss,
            filled.rss,
            connected.rss,
            open.rss,
            drained.0.rss,
            peak,
        ],
        endpoints: endpoints as u64,
        idle_cpu_per_sec,
        before,
        changed,
        drained,
        max_lag,
        n,
        followed: followed.len(),
        complete,
        deliveries,
        missing,
        extra,
        strays,
        updates_sent,
        last,
        first,
        client: summary,
        telemetry,
    };
    print!("{}", report.markdown());
    Ok(())
}

/// What the telemetry phase measured.
struct Telemetry {
    reports: u64,
    samples: u64,
    series: f64,
    values: f64,
    rss_before: u64,
    rss_after: u64,
}

/// Everything the report shows.
struct Report<'a> {
    args: &'a Args,
    loadavg: String,
    took: Duration,
    /// Seconds to fill the registry, certify, connect, and get every first answer.
    setup: [f64; 4],
    certify_retries: u64,
    /// Control-plane RSS: started, filled, connected, streams open, end, peak.
    rss: [u64; 6],
    endpoints: u64,
    /// Control plane and client CPU per second while idle.
    idle_cpu_per_sec: Option<(f64, f64)>,
    /// (control plane, client) at the first change, after the last one and after the drain.
    before: (Sample, Sample),
    changed: (Sample, Sample),
    drained: (Sample, Sample),
    max_lag: Duration,
    n: u64,
    /// Services with at least one stream.
    followed: usize,
    complete: u64,
    deliveries: u64,
    missing: u64,
    extra: u64,
    strays: u64,
    updates_sent: f64,
    /// Change to last subscriber, and to first, in microseconds, sorted.
    last: Vec<u64>,
    first: Vec<u64>,
    /// The telemetry phase, if it ran.
    telemetry: Option<Telemetry>,
    client: Value,
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn duration_us(us: Option<u64>) -> String {
    match us {
        None => "n/a".into(),
        Some(us) if us < 1_000 => format!("{us} µs"),
        Some(us) if us < 1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        Some(us) => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl Report<'_> {
    fn markdown(&self) -> String {
        use std::fmt::Write;
        let a = self.args;
        let streams = a.streams() as f64;
        let n = self.n as f64;
        let [started, filled, connected, open, end, peak] = self.rss;
        let mut rows = String::new();
        let mut row = |what: &str, value: String, target: &str, ok: Option<bool>| {
            let result = ok.map_or("", |ok| if ok { "pass" } else { "**FAIL**" });
            let _ = writeln!(rows, "| {what} | {value} | {target} | {result} |");
        };

        let p99 = percentile(&self.last, 0.99);
        let all_seen = self.missing == 0 && self.complete == self.n;
        let first = |q| duration_us(percentile(&self.first, q));
        let last = |q| duration_us(percentile(&self.last, q));
        row("change → every subscriber saw it, p50", last(0.5), "", None);
        let p99_ok = all_seen && p99.is_some_and(|p| p < TARGET_P99_US);
        row(
            "change → every subscriber saw it, p99",
            last(0.99),
            "< 1 s",
            Some(p99_ok),
        );
        row("change → every subscriber saw it, max", last(1.0), "", None);
        row(
            "change → first subscriber saw it, p50 / p99",
            format!("{} / {}", first(0.5), first(0.99)),
            "",
            None,
        );
        row(
            "changes seen by every subscriber",
            format!(
                "{} of {} ({} deliveries expected, {} missing, {} duplicate, {} unknown; the control plane sent {} updates)",
                self.complete,
                self.n,
                self.deliveries,
                self.missing,
                self.extra,
                self.strays,
                self.updates_sent
            ),
            "all",
            Some(all_seen && self.extra == 0 && self.strays == 0),
        );
        let errors = self.client["stream_errors"].as_u64().unwrap_or(0);
        let first_error = self.client["first_error"]
            .as_str()
            .map(|e| format!(" (first: {e})"));
        row(
            "client: stream errors / unexpected updates",
            format!(
                "{errors} / {}{}",
                self.client["unexpected"],
                first_error.unwrap_or_default()
            ),
            "0",
            Some(errors == 0),
        );

        let per_stream = open.saturating_sub(filled) as f64 / streams;
        row(
            "control-plane RSS per open stream",
            format!("{:.1} KB", per_stream / 1e3),
            "≤ 10 KB",
            Some(per_stream <= TARGET_BYTES_PER_STREAM),
        );
        row(
            "… the streams alone / each connection",
            format!(
                "{:.1} KB per stream / {:.1} KB per connection",
                open.saturating_sub(connected) as f64 / streams / 1e3,
                connected.saturating_sub(filled) as f64 / f64::from(a.proxies) / 1e3
            ),
            "",
            None,
        );

        let window = (self.drained.0.at - self.before.0.at).as_secs_f64();
        let cpu =
            |s: &(Sample, Sample), t: &(Sample, Sample)| (t.0.cpu - s.0.cpu, t.1.cpu - s.1.cpu);
        let (total, client_total) = cpu(&self.before, &self.drained);
        let (changing, _) = cpu(&self.before, &self.changed);
        let us = |secs: f64| format!("{:.0} µs", secs * 1e6);
        let (net, client_net) = match self.idle_cpu_per_sec {
            Some((idle, client_idle)) => (
                us((total - idle * window) / n),
                us((client_total - client_idle * window) / n),
            ),
            None => ("n/a (no baseline)".into(), "n/a".into()),
        };
        row("control-plane CPU per change, net of idle", net, "", None);
        row(
            "control-plane CPU per change, raw (during the changes)",
            format!("{} ({changing:.2} s CPU)", us(changing / n)),
            "",
            None,
        );
        if let Some((idle, client_idle)) = self.idle_cpu_per_sec {
            row(
                "idle CPU with every stream open, control plane / client",
                format!(
                    "{:.1} % / {:.1} % of a core",
                    idle * 100.0,
                    client_idle * 100.0
                ),
                "",
                None,
            );
        }
        row("client CPU per change, net of idle", client_net, "", None);

        if let Some(t) = &self.telemetry {
            let per_proxy = t.rss_after.saturating_sub(t.rss_before) as f64 / f64::from(a.proxies);
            row(
                "telemetry window per proxy (RSS after the reports - before)",
                format!(
                    "{:.1} KB ({} reports of {} samples; {:.0} series and {:.0} values held)",
                    per_proxy / 1e3,
                    t.reports,
                    t.samples,
                    t.series,
                    t.values
                ),
                "",
                None,
            );
        }
        let registry = filled.saturating_sub(started);
        row(
            "registry memory (RSS filled - RSS started)",
            format!(
                "{} ({:.0} B per endpoint)",
                mib(registry),
                registry as f64 / self.endpoints as f64
            ),
            "",
            None,
        );
        let growth = end as f64 - open as f64;
        row(
            "control-plane RSS growth during the changes",
            format!(
                "{:+.1} MiB ({:+.1} KB per change)",
                growth / 1048576.0,
                growth / n / 1e3
            ),
            "",
            None,
        );
        row(
            "control-plane RSS: started / filled / connected / streams open / end / peak",
            [started, filled, connected, open, end, peak]
                .map(mib)
                .join(" / "),
            "",
            None,
        );
        let [fill, certify, connect, answers] = self.setup;
        row(
            "setup: registry fill / Certify / connect / first answers",
            format!(
                "{fill:.2} s / {certify:.2} s ({} retries) / {connect:.2} s / {answers:.2} s",
                self.certify_retries
            ),
            "",
            None,
        );

        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                let line = t.lines().find(|l| l.starts_with("model name"))?;
                Some(line.split_once(':')?.1.trim().to_string())
            })
            .unwrap_or_else(|| "?".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Weft control plane at scale\n\n\
             {} services × {} endpoints ({} endpoints); {} proxies × {} Resolve streams ({} streams \
             following {} services, fan-out {}), every proxy with its own certificate and TLS \
             connection; {} changes/s for {} s ({} changes, spread over the followed services), \
             idle baseline {} s, drain {} s.\n\n\
             Machine: {cores} cores ({cpu}), Linux {}, load average {} at the start; control plane \
             and client share the cores. Run took {:.1} s; the change driver was at most {} behind \
             schedule.\n\n\
             | figure | value | target | result |\n|---|---|---|---|",
            a.services,
            a.endpoints_per_service,
            self.endpoints,
            a.proxies,
            a.streams_per_proxy,
            a.streams(),
            self.followed,
            a.fanout,
            a.change_rate,
            a.duration,
            self.n,
            a.baseline(),
            a.drain,
            read_trimmed("/proc/sys/kernel/osrelease"),
            self.loadavg,
            self.took.as_secs_f64(),
            duration_us(Some(self.max_lag.as_micros() as u64)),
        );
        out.push_str(&rows);
        let _ = writeln!(
            out,
            "\nLatency: from the registry write (wall clock, before `RegistryWriter::upsert`) to the \
             arrival of the `EndpointChanges` message at the last (first) stream following the \
             service. RSS per stream: (RSS with every stream open and answered - RSS with the \
             registry filled) / streams, so each stream carries its share of its connection. CPU: \
             utime + stime of the process; net = (CPU from the first change to the end of the drain \
             - idle CPU per second × that time) / changes. The control plane runs in this \
             process with the allocator weft-control ships with (jemalloc, background purging \
             on); RSS growth during the changes is mostly freed memory jemalloc has not yet \
             handed back (it decays over about 10 s)."
        );
        out
    }
}

// === the child: simulated proxies ===

/// What one stream saw: each upserted address with its arrival time.
#[derive(Debug, Default)]
struct StreamLog {
    service: u32,
    arrivals: Vec<(String, u64)>,
    messages: u64,
    unexpected: u64,
    error: Option<String>,
}

fn retryable(e: &ControlError) -> bool {
    match e {
        ControlError::Connect { .. } => true,
        ControlError::Status(s) => matches!(
            s.code(),
            tonic::Code::ResourceExhausted | tonic::Code::Unavailable
        ),
        _ => false,
    }
}

/// Gets proxy `p` its certificate, on a connection of its own, as a proxy does.
async fn certify(
    p: u32,
    cfg: &ProxyConfig,
    anonymous: Arc<rustls::ClientConfig>,
    bundle: &TrustBundle,
    retries: &AtomicU64,
    deadline: Instant,
) -> anyhow::Result<TlsCredentials> {
    let td = TrustDomain::new(TRUST_DOMAIN)?;
    let identity = Identity::new(td, NAMESPACE, format!("p{p}"))?;
    let key = LeafKey::generate()?;
    let csr = key.csr(&identity)?;
    let request = CertifyRequest {
        credential: Some(WireCredential {
            platform: PLATFORM.into(),
            token: "bench".into(),
            workload: format!("{NAMESPACE}/p{p}"),
        }),
        csr,
    };
    let mut attempt = 0;
    let resp = loop {
        attempt += 1;
        let result = async {
            let ch = weft_proxy::control::channel(cfg, anonymous.clone()).await?;
            let resp = IdentityClient::new(ch).certify(request.clone()).await?;
            Ok::<_, ControlError>(resp.into_inner())
        }
        .await;
        match result {
            Ok(r) => break r,
            Err(e) if retryable(&e) && attempt < ATTEMPTS && Instant::now() < deadline => {
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            Err(e) => bail!("Certify for p{p}: {e}"),
        }
    };
    weft_proxy::identity::credentials_from(identity, &key, resp, bundle.clone())
        .with_context(|| format!("the certificate of p{p}"))
}

/// Opens proxy `p`'s connection to the control plane with its certificate.
async fn connect(
    p: u32,
    cfg: &ProxyConfig,
    creds: &TlsCredentials,
    deadline: Instant,
) -> anyhow::Result<Channel> {
    let control = Identity::control_plane(creds.identity().trust_domain());
    let tls = creds.client_config(&control, ALPN_H2);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match weft_proxy::control::channel(cfg, tls.clone()).await {
            Ok(ch) => return Ok(ch),
            Err(e) if attempt < ATTEMPTS && Instant::now() < deadline => {
                tracing::debug!(p, error = %e, "connect failed; retrying");
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            Err(e) => bail!("connecting p{p}: {e}"),
        }
    }
}

/// Follows one service: the first answer, then every change until `stop`.
async fn follow(
    channel: Channel,
    service: u32,
    endpoints: usize,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    stop: CancellationToken,
) -> StreamLog {
    let mut log = StreamLog {
        service,
        ..Default::default()
    };
    let fail = |log: &mut StreamLog, e: String| {
        let _ = ready.send(Err(e.clone()));
        log.error = Some(e);
    };
    let name = match service_name(service) {
        Ok(n) => n,
        Err(e) => {
            fail(&mut log, e.to_string());
            return log;
        }
    };
    let request = weft_api::convert::target_to_wire(&Target::Service { name, port: None });
    let mut stream = match DiscoveryClient::new(channel).resolve(request).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            fail(&mut log, format!("s{service}: {e}"));
            return log;
        }
    };
    let first = tokio::select! {
        _ = stop.cancelled() => return log,
        m = stream.message() => m,
    };
    match first {
        Ok(Some(m)) => match m.update {
            Some(Update::Resolved(r)) if r.endpoints.len() == endpoints => {
                let _ = ready.send(Ok(()));
            }
            other => {
                fail(
                    &mut log,
                    format!("s{service}: unexpected first answer {other:?}"),
                );
                return log;
            }
        },
        Ok(None) => {
            fail(&mut log, format!("s{service}: stream ended at once"));
            return log;
        }
        Err(e) => {
            fail(&mut log, format!("s{service}: {e}"));
            return log;
        }
    }
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return log,
            m = stream.message() => m,
        };
        match next {
            Ok(Some(m)) => {
                let at = now_us();
                log.messages += 1;
                match m.update {
                    Some(Update::Changes(c)) => {
                        log.arrivals
                            .extend(c.upserted.into_iter().map(|e| (e.address, at)));
                    }
                    _ => log.unexpected += 1,
                }
            }
            Ok(None) => {
                log.error = Some(format!("s{service}: stream ended"));
                return log;
            }
            Err(e) => {
                log.error = Some(format!("s{service}: {e}"));
                return log;
            }
        }
    }
}

/// The lines the parent writes to stdin, read on a thread of their own (the process exits
/// without waiting for it).
fn parent_words() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if tx.send(line.trim().to_string()).is_err() {
                return;
            }
        }
    });
    rx
}

/// A proxy's /metrics after `round` rounds of traffic to its followed `services` from three
/// callers, as the samples it reports.
fn proxy_samples(p: u32, services: &[u32], round: u64) -> Vec<weft_api::MetricSample> {
    use weft_proxy::metrics::{Direction, Metrics, RequestLabels, ResponseLabels, TcpLabels};
    let m = Metrics::default();
    let peer = |s: u32| format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/svc-{s}");
    let n = round + 1;
    for &s in services {
        let labels = RequestLabels {
            direction: Direction::outbound,
            service: format!("svc-{s}.{NAMESPACE}"),
            peer: peer(s),
        };
        m.requests.get_or_create(&labels).inc_by(100 * n);
        for (status, class, count) in [("200", "success", 99 * n), ("503", "failure", n)] {
            m.responses
                .get_or_create(&ResponseLabels {
                    direction: labels.direction,
                    service: labels.service.clone(),
                    peer: labels.peer.clone(),
                    status_code: status.into(),
                    classification: class.into(),
                })
                .inc_by(count);
        }
        let h = m.latency.get_or_create(&labels);
        for i in 0..(10 * n) {
            h.observe(0.0005 * (1 + i % 20) as f64, None, None);
        }
    }
    for caller in 0..3u32 {
        let labels = RequestLabels {
            direction: Direction::inbound,
            service: format!("{NAMESPACE}/proxy-{p}"),
            peer: peer(caller),
        };
        m.requests.get_or_create(&labels).inc_by(50 * n);
        m.latency.get_or_create(&labels).observe(0.001, None, None);
        let tcp = TcpLabels {
            direction: Direction::inbound,
            peer: peer(caller),
        };
        m.tcp_read.get_or_create(&tcp).inc_by(1000 * n);
        m.tcp_write.get_or_create(&tcp).inc_by(5000 * n);
    }
    weft_proxy::telemetry::parse(&m.encode())
}

/// Every proxy reports every 10 s for `--telemetry` seconds on its own connection; the
/// reports sent and the samples in each of the first proxy's.
async fn report_telemetry(channels: &[(u32, Channel)], args: &Args) -> anyhow::Result<(u64, u64)> {
    use weft_api::v1::telemetry_client::TelemetryClient;
    let rounds = (args.telemetry / 10.0).ceil().max(1.0) as u64;
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for (p, ch) in channels {
        let (p, ch, sent) = (*p, ch.clone(), sent.clone());
        let services: Vec<u32> = (0..args.streams_per_proxy)
            .map(|k| args.subscription(p, k))
            .collect();
        tasks.spawn(async move {
            let (tx, rx) = mpsc::channel(1);
            let mut client = TelemetryClient::new(ch);
            let call = tokio::spawn(async move {
                client
                    .report(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
            });
            for round in 0..rounds {
                let report = weft_api::TelemetryReport {
                    workload: format!("{NAMESPACE}/proxy-{p}"),
                    platform: PLATFORM.into(),
                    tap_addr: String::new(),
                    samples: proxy_samples(p, &services, round),
                };
                if tx.send(report).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                if round + 1 < rounds {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
            // The last report in, the stream stays open (as a proxy's would) until the end.
            drop(tx);
            let _ = call.await;
            Ok::<_, anyhow::Error>(())
        });
    }
    let bound = Duration::from_secs(rounds * 10 + 30);
    let t = Instant::now();
    while let Some(r) = tokio::time::timeout(bound.saturating_sub(t.elapsed()), tasks.join_next())
        .await
        .context("reports took too long")?
    {
        r??;
    }
    let first = channels.first().map_or(0, |(p, _)| {
        let services: Vec<u32> = (0..args.streams_per_proxy)
            .map(|k| args.subscription(*p, k))
            .collect();
        proxy_samples(*p, &services, 0).len() as u64
    });
    Ok((sent.load(Ordering::Relaxed), first))
}

async fn client(args: Args) -> anyhow::Result<()> {
    let addr = args.control_addr.context("--control-addr")?;
    let bundle_file = args.trust_bundle.clone().context("--trust-bundle")?;
    ensure!(addr.ip().is_loopback(), "loopback only");
    let bundle =
        TrustBundle::from_pem(&std::fs::read(&bundle_file)?).map_err(anyhow::Error::msg)?;
    let td = TrustDomain::new(TRUST_DOMAIN)?;
    let cfg = Arc::new(ProxyConfig::try_parse_from([
        "control-scale".to_string(),
        "--control-addr".into(),
        addr.to_string(),
        "--trust-domain".into(),
        TRUST_DOMAIN.into(),
        "--trust-bundle".into(),
        bundle_file.display().to_string(),
        "--workload".into(),
        "bench".into(),
        "--token-file".into(),
        "/dev/null".into(),
    ])?);
    let mut input = parent_words();

    // Certificates, with bounded concurrency: beyond 64 anonymous calls the control plane
    // answers RESOURCE_EXHAUSTED (retried, and counted).
    let t = Instant::now();
    let deadline = t + args.setup();
    let anonymous = anonymous_client_config(&bundle, &Identity::control_plane(&td));
    let bundle = Arc::new(bundle);
    let retries = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(Semaphore::new(args.certify_concurrency));
    let mut tasks = JoinSet::new();
    for p in 0..args.proxies {
        let (cfg, anonymous, bundle, retries, permits) = (
            cfg.clone(),
            anonymous.clone(),
            bundle.clone(),
            retries.clone(),
            permits.clone(),
        );
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let creds = certify(p, &cfg, anonymous, &bundle, &retries, deadline).await?;
            Ok::<_, anyhow::Error>((p, creds))
        });
    }
    let mut creds = Vec::with_capacity(args.proxies as usize);
    while let Some(r) = tokio::time::timeout_at(deadline.into(), tasks.join_next())
        .await
        .context("Certify took too long")?
    {
        creds.push(r??);
    }
    println!(
        "certified {} {:.3} {}",
        creds.len(),
        t.elapsed().as_secs_f64(),
        retries.load(Ordering::Relaxed)
    );

    // One TLS connection per proxy.
    let t = Instant::now();
    let deadline = t + args.setup();
    let permits = Arc::new(Semaphore::new(args.connect_concurrency));
    let mut tasks = JoinSet::new();
    for (p, c) in creds {
        let (cfg, permits) = (cfg.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let ch = connect(p, &cfg, &c, deadline).await?;
            Ok::<_, anyhow::Error>((p, ch))
        });
    }
    let mut channels = Vec::with_capacity(args.proxies as usize);
    while let Some(r) = tokio::time::timeout_at(deadline.into(), tasks.join_next())
        .await
        .context("connecting took too long")?
    {
        channels.push(r??);
    }
    println!(
        "connected {} {:.3}",
        channels.len(),
        t.elapsed().as_secs_f64()
    );

    let line = tokio::time::timeout(args.setup(), input.recv())
        .await
        .context("no word from the parent")?;
    ensure!(
        line.as_deref() == Some("open"),
        "expected open, got {line:?}"
    );

    // The streams, all at once; each reports its first answer.
    let t = Instant::now();
    let stop = CancellationToken::new();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut streams = JoinSet::new();
    for (p, ch) in &channels {
        for k in 0..args.streams_per_proxy {
            streams.spawn(follow(
                ch.clone(),
                args.subscription(*p, k),
                args.endpoints_per_service as usize,
                ready_tx.clone(),
                stop.clone(),
            ));
        }
    }
    drop(ready_tx);
    let (mut ok, mut failed, mut first_error) = (0u64, 0u64, None);
    let deadline = tokio::time::Instant::now() + args.setup();
    while ok + failed < args.streams() {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => ok += 1,
            Ok(Some(Err(e))) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Ok(None) => break,
            Err(_) => {
                first_error.get_or_insert("timed out waiting for first answers".into());
                break;
            }
        }
    }
    println!(
        "ready {ok} {} {:.3} {}",
        args.streams() - ok,
        t.elapsed().as_secs_f64(),
        first_error.unwrap_or_default()
    );

    // Follow until the parent says stop (bounded by the phases it runs, plus slack).
    let bound =
        args.setup() + Duration::from_secs_f64(args.baseline() + args.duration + args.drain + 60.0);
    let mut word = tokio::time::timeout(bound, input.recv()).await;
    if matches!(&word, Ok(Some(w)) if w == "report") {
        let (reports, samples) = report_telemetry(&channels, &args).await?;
        println!("reported {reports} {samples}");
        word = tokio::time::timeout(bound, input.recv()).await;
    }
    if !matches!(&word, Ok(Some(w)) if w == "stop") {
        tracing::warn!(?word, "no stop from the parent; reporting anyway");
    }
    stop.cancel();
    let mut seen: HashMap<(u32, String), Seen> = HashMap::new();
    let (mut messages, mut unexpected, mut errors, mut first_error) = (0u64, 0u64, 0u64, None);
    while let Some(r) = tokio::time::timeout(Duration::from_secs(30), streams.join_next())
        .await
        .context("streams did not stop")?
    {
        let log = r?;
        messages += log.messages;
        unexpected += log.unexpected;
        if let Some(e) = log.error {
            errors += 1;
            first_error.get_or_insert(e);
        }
        for (address, at) in log.arrivals {
            let s = seen.entry((log.service, address)).or_insert(Seen {
                streams: 0,
                first_us: u64::MAX,
                last_us: 0,
            });
            s.streams += 1;
            s.first_us = s.first_us.min(at);
            s.last_us = s.last_us.max(at);
        }
    }
    for ((svc, addr), s) in &seen {
        println!(
            "{}",
            json!({"svc": svc, "addr": addr, "n": s.streams, "first_us": s.first_us, "last_us": s.last_us})
        );
    }
    println!(
        "{}",
        json!({"done": true, "messages": messages, "unexpected": unexpected,
               "stream_errors": errors, "first_error": first_error})
    );
    drop(channels);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["control-scale"];
        argv.extend_from_slice(extra);
        let a = Args::try_parse_from(argv).unwrap();
        a.check().unwrap();
        a
    }

    #[test]
    fn defaults_give_every_service_one_stream() {
        let a = args(&[]);
        assert_eq!(a.streams(), 10_000);
        assert_eq!(a.changes(), 2_000);
        assert!(a.subscribers().iter().all(|&n| n == 1));
    }

    #[test]
    fn fanout_shares_services_between_proxies() {
        let a = args(&["--services", "100", "--proxies", "40", "--fanout", "4"]);
        let subs = a.subscribers();
        assert_eq!(subs.iter().filter(|&&n| n == 4).count(), 100);
        assert_eq!(a.subscription(0, 3), a.subscription(3, 3));
        assert_ne!(a.subscription(0, 3), a.subscription(4, 3));
    }

    #[test]
    fn the_stride_visits_every_service_once_per_round() {
        for n in [1u64, 2, 10, 100, 10_000, 9_973] {
            let step = stride(n);
            let mut hit: Vec<u64> = (0..n).map(|i| (i * step) % n).collect();
            hit.sort_unstable();
            hit.dedup();
            assert_eq!(hit.len() as u64, n, "n = {n}");
        }
    }

    #[test]
    fn endpoint_addresses_are_distinct() {
        let mut ips: Vec<Ipv4Addr> = (0..300)
            .flat_map(|s| (0..10).map(move |e| endpoint_ip(s, e, 10)))
            .collect();
        ips.sort_unstable();
        ips.dedup();
        assert_eq!(ips.len(), 3_000);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
