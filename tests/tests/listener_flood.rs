//! No client can starve the plaintext HTTP listeners that platforms probe: the proxy's admin
//! and probe listeners and the control plane's HTTP listener. One address floods a listener
//! with keep-alive connections that each send `GET /live` every few hundred milliseconds (so
//! no idle timeout frees them), and a probe from another loopback address must still be
//! answered within the kubelet's default timeout, every time.
//!
//! Real time and real sockets; each flood runs a bounded number of connections for a bounded
//! time, on 127.0.0.1 only.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weft_proxy::{Proxy, ProxyConfig};

/// Connections of one flood.
const FLOOD_CONNECTIONS: usize = 200;
/// How often each flood connection sends its request.
const FLOOD_EVERY: Duration = Duration::from_millis(300);
/// The kubelet's default probe timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Probes sent during a flood; each must be answered.
const PROBES: usize = 5;
/// The longest a flood may take to occupy the listener.
const SETTLE: Duration = Duration::from_secs(10);

const FLOODER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const PROBER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const READER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// Connects to `to` from the local address `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// One `GET path` from `from` on a connection of its own, as the kubelet sends it: the status,
/// or why there was none within [`PROBE_TIMEOUT`].
async fn probe(from: IpAddr, to: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut tcp = connect_from(from, to).await.map_err(|e| e.to_string())?;
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut rsp = Vec::new();
        tcp.read_to_end(&mut rsp).await.map_err(|e| e.to_string())?;
        let rsp = String::from_utf8_lossy(&rsp).into_owned();
        let status = rsp
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("closed without an answer ({rsp:?})"))?;
        Ok((status, rsp))
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {PROBE_TIMEOUT:?}"))?
}

/// A flood of [`FLOOD_CONNECTIONS`] keep-alive connections, each sending `GET /live` every
/// [`FLOOD_EVERY`] and connecting again 50 ms after it is closed.
struct Flood {
    /// Connections that got at least one answer.
    answered: Arc<AtomicUsize>,
    /// Connections that have been attempted at least once.
    started: Arc<AtomicUsize>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Flood {
    /// All from [`FLOODER`].
    fn start(target: SocketAddr) -> Self {
        Self::start_from(&[FLOODER], target)
    }

    /// Spread over the addresses `from`, in turn.
    fn start_from(from: &[IpAddr], target: SocketAddr) -> Self {
        let answered = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for i in 0..FLOOD_CONNECTIONS {
            let (answered, started, stop) = (answered.clone(), started.clone(), stop.clone());
            let source = from[i % from.len()];
            tasks.spawn(async move {
                let mut first = true;
                let mut counted = false;
                let run = async {
                    loop {
                        let conn = connect_from(source, target).await;
                        if std::mem::take(&mut first) {
                            started.fetch_add(1, Ordering::SeqCst);
                        }
                        if let Ok(mut tcp) = conn {
                            while keep_alive_request(&mut tcp).await {
                                if !std::mem::replace(&mut counted, true) {
                                    answered.fetch_add(1, Ordering::SeqCst);
                                }
                                tokio::time::sleep(FLOOD_EVERY).await;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                tokio::select! {
                    _ = run => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
        Self {
            answered,
            started,
            stop,
            tasks,
        }
    }

    /// Waits until every flood connection was attempted and `held` of them were answered: the
    /// flood then holds what the listener lets one address hold.
    async fn settle(&self, held: usize) {
        let deadline = tokio::time::Instant::now() + SETTLE;
        while self.started.load(Ordering::SeqCst) < FLOOD_CONNECTIONS
            || self.answered.load(Ordering::SeqCst) < held
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the flood did not settle: {} started, {} answered",
                self.started.load(Ordering::SeqCst),
                self.answered.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the refused connections come back once or twice.
        tokio::time::sleep(FLOOD_EVERY).await;
    }

    async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Sends `GET /live` on a keep-alive connection and reads the answer; false once the
/// connection is closed or fails.
async fn keep_alive_request(tcp: &mut TcpStream) -> bool {
    if tcp
        .write_all(b"GET /live HTTP/1.1\r\nHost: flood\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut rsp = Vec::new();
    let mut buf = [0u8; 1024];
    // Both listeners answer `/live` with the body `live\n`.
    while !rsp.ends_with(b"live\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => rsp.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Probes `path` [`PROBES`] times from [`PROBER`] during a flood; every probe must get `want`.
async fn probes_are_answered(target: SocketAddr, path: &str, want: u16) {
    let mut failures = Vec::new();
    for i in 0..PROBES {
        match probe(PROBER, target, path).await {
            Ok((status, _)) if status == want => {}
            Ok((status, rsp)) => failures.push(format!("probe {i}: status {status}: {rsp}")),
            Err(why) => failures.push(format!("probe {i}: {why}")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {PROBES} probes of {target}{path} failed during the flood: {failures:#?}",
        failures.len()
    );
}

/// A proxy whose control plane never answers (its listeners serve all the same), with an
/// application TCP probe `web/ready` on `app_port` and a probe listener.
async fn proxy(dir: &std::path::Path, app_port: u16) -> Proxy {
    let probes = format!(r#"{{"web/ready":{{"port":{app_port}}}}}"#);
    let cfg = ProxyConfig::try_parse_from([
        "weft-proxy",
        "--control-addr",
        "127.0.0.1:9",
        "--trust-bundle",
        &dir.join("missing.pem").display().to_string(),
        "--token-file",
        &dir.join("missing-token").display().to_string(),
        "--workload",
        "web",
        "--admin-addr",
        "127.0.0.1:0",
        "--probe-addr",
        "127.0.0.1:0",
        "--app-probes",
        &probes,
    ])
    .unwrap();
    Proxy::start(cfg).await.unwrap()
}

/// The value of the sample `name{labels}` in `/metrics` text, 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_the_admin_listener_does_not_stop_its_probes() {
    let dir = tempfile::tempdir().unwrap();
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = proxy(dir.path(), app.local_addr().unwrap().port()).await;
    let admin = proxy.admin_addr;

    let flood = Flood::start(admin);
    flood.settle(weft_proxy::admin::MAX_PER_ADDRESS).await;
    probes_are_answered(admin, "/live", 200).await;
    probes_are_answered(admin, "/app-health/web/ready", 200).await;
    // The flood kept going all along; it was held to its address's share of the listener.
    assert!(flood.answered.load(Ordering::SeqCst) >= weft_proxy::admin::MAX_PER_ADDRESS);
    flood.stop().await;

    let (_, metrics) = probe(READER, admin, "/metrics").await.unwrap();
    let refused = sample(
        &metrics,
        r#"weft_admin_connections_refused_total{listener="admin",reason="per_address"}"#,
    );
    assert!(refused > 0.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_listener_answers_the_proxys_and_the_applications_probes_during_floods() {
    let dir = tempfile::tempdir().unwrap();
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = proxy(dir.path(), app.local_addr().unwrap().port()).await;
    let probes = proxy.probe_addr.unwrap();

    // A flood of the probe listener itself, and one of the admin listener beside it.
    let on_probes = Flood::start(probes);
    let on_admin = Flood::start(proxy.admin_addr);
    on_probes.settle(weft_proxy::admin::MAX_PER_ADDRESS).await;
    on_admin.settle(weft_proxy::admin::MAX_PER_ADDRESS).await;
    probes_are_answered(probes, "/live", 200).await;
    // No certificate without a control plane: the proxy answers, and says it is not ready.
    probes_are_answered(probes, "/ready", 503).await;
    probes_are_answered(probes, "/app-health/web/ready", 200).await;
    on_probes.stop().await;
    on_admin.stop().await;
}

/// A control plane without platforms, with a probe listener.
async fn control_plane(dir: &std::path::Path) -> weft_control::ControlPlane {
    let text = format!(
        "[mesh]\nname = \"t\"\ntrust_domain = \"weft.test\"\n[ca]\ndata_dir = \"{}\"\n\
         [control]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n\
         probe_addr = \"127.0.0.1:0\"\n",
        dir.display()
    );
    let cfg = weft_control::platforms::loader()
        .load_str(&text, std::path::Path::new("m.toml"))
        .unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(cfg));
    weft_control::ControlPlane::start(rx, vec![]).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_the_control_planes_http_listener_does_not_stop_its_probes() {
    let dir = tempfile::tempdir().unwrap();
    let control = control_plane(dir.path()).await;
    let http = control.http_addr;

    let flood = Flood::start(http);
    flood.settle(weft_control::admin::MAX_PER_ADDRESS).await;
    probes_are_answered(http, "/live", 200).await;
    probes_are_answered(http, "/ready", 200).await;
    flood.stop().await;

    let (_, metrics) = probe(READER, http, "/metrics").await.unwrap();
    let refused = sample(
        &metrics,
        r#"weft_control_http_connections_refused_total{listener="http",reason="per_address"}"#,
    );
    assert!(refused > 0.0, "{metrics}");
    control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_planes_probe_listener_answers_while_many_addresses_fill_the_http_listener() {
    let dir = tempfile::tempdir().unwrap();
    let control = control_plane(dir.path()).await;
    let probes = control.probe_addr.unwrap();

    // Enough addresses, each within its share, to hold every slot of the HTTP listener.
    let per = weft_control::admin::MAX_PER_ADDRESS;
    let addresses: Vec<IpAddr> = (0..weft_control::admin::MAX_CONNECTIONS.div_ceil(per) + 2)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 1, u8::try_from(i + 1).unwrap())))
        .collect();
    let flood = Flood::start_from(&addresses, control.http_addr);
    flood.settle(weft_control::admin::MAX_CONNECTIONS).await;
    // The HTTP listener is full: even a well-behaved client is turned away there...
    assert!(probe(PROBER, control.http_addr, "/live").await.is_err());
    // ...while the probe listener answers every probe.
    probes_are_answered(probes, "/live", 200).await;
    probes_are_answered(probes, "/ready", 200).await;
    flood.stop().await;
    // It serves the probes alone.
    assert_eq!(probe(READER, probes, "/metrics").await.unwrap().0, 404);
    assert_eq!(probe(READER, probes, "/api/state").await.unwrap().0, 404);
    control.shutdown().await;
}
