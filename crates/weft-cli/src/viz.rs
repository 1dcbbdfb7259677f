//! `weft stat`, `weft edges`, `weft tap` and `weft top`: what a running control plane knows of
//! the mesh's traffic, read from its HTTP listener (`/api/stat`, `/api/edges`, `/api/tap`).
//! The control plane keeps a short window of every proxy's counters and relays taps from the
//! proxies, so none of these needs Prometheus. `weft dashboard` opens the control plane's own
//! dashboard (`/dashboard`) in a browser, through a local forwarder that adds the token when
//! the listener is not on loopback.
//!
//! Long-running commands (`tap`, `top`) redraw in place on a terminal and print lines
//! otherwise.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Where the control plane's HTTP listener is, as the command line names it.
#[derive(Clone, Debug, clap::Args)]
pub struct ControlArgs {
    /// The control plane's HTTP listener, `host:port` (`weft dev`: 127.0.0.1:7080; a Nomad
    /// job: the address of its `http` port).
    #[arg(long, env = "WEFT_CONTROL_HTTP", default_value = "127.0.0.1:7080")]
    pub control: SocketAddr,
    /// The file with the control plane's HTTP token (`<data_dir>/http-token`), when its
    /// listener is not on loopback.
    #[arg(long, env = "WEFT_CONTROL_TOKEN_FILE", conflicts_with = "kubernetes")]
    pub token_file: Option<PathBuf>,
    /// Reach the control plane installed in a Kubernetes cluster through the API server's
    /// port-forward, as `kubectl port-forward` does (the kubeconfig user needs
    /// `pods/portforward` in its namespace): each connection goes to the loopback listener
    /// inside a Ready control-plane pod (127.0.0.1:7082), which asks no token. --control is
    /// not used.
    #[arg(long)]
    pub kubernetes: bool,
    /// With --kubernetes: the kubeconfig file; default `KUBECONFIG`, `~/.kube/config`, or
    /// in-cluster.
    #[arg(long, requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// With --kubernetes: the kubeconfig context; default its current context.
    #[arg(long, requires = "kubernetes")]
    pub kube_context: Option<String>,
    /// With --kubernetes: the namespace the control plane is installed in.
    #[arg(long, default_value = weft_kubernetes::check::DEFAULT_NAMESPACE,
          value_parser = crate::kube_check::namespace_arg)]
    pub kube_namespace: String,
}

impl ControlArgs {
    /// Finds the control plane: reads the token, or (with --kubernetes) finds a Ready
    /// control-plane pod to forward to.
    pub async fn reach(&self) -> anyhow::Result<Control> {
        if !self.kubernetes {
            let token = self.token_file.as_deref().map(read_token).transpose()?;
            return Ok(Control::tcp(self.control, token));
        }
        let pod = weft_kubernetes::forward::PodPort::control_plane(
            self.kubeconfig.as_deref(),
            self.kube_context.as_deref(),
            &self.kube_namespace,
            weft_kubernetes::forward::CONTROL_LOCAL_HTTP_PORT,
        )
        .await?;
        Ok(Control {
            dial: Dial::Pod(Box::new(pod)),
            token: None,
        })
    }
}

/// The token in `file` (`<data_dir>/http-token`).
pub fn read_token(file: &std::path::Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(file)
        .with_context(|| format!("reading the token in {}", file.display()))?;
    Ok(token.trim().to_owned())
}

/// A control plane's HTTP listener, found: how to open a connection to it and the token it
/// asks for.
#[derive(Clone, Debug)]
pub struct Control {
    dial: Dial,
    token: Option<String>,
}

/// How a connection to the control plane is opened.
#[derive(Clone, Debug)]
enum Dial {
    /// TCP to its HTTP listener.
    Tcp(SocketAddr),
    /// A port-forward through the Kubernetes API server to its pod's loopback listener.
    Pod(Box<weft_kubernetes::forward::PodPort>),
}

/// A connection to the control plane.
type Io = tokio_util::either::Either<tokio::net::TcpStream, tokio::io::DuplexStream>;

/// Why a port-forwarded connection broke, as the kubelet said it.
type Why = std::pin::Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// How long a failed request waits for the kubelet's reason.
const WHY_WAIT: Duration = Duration::from_secs(2);

impl Control {
    /// A control plane reached over TCP at `addr`, with `token` when it asks for one.
    pub fn tcp(addr: SocketAddr, token: Option<String>) -> Self {
        Self {
            dial: Dial::Tcp(addr),
            token,
        }
    }

    /// How messages name it.
    fn name(&self) -> String {
        match &self.dial {
            Dial::Tcp(addr) => addr.to_string(),
            Dial::Pod(pod) => format!("pod {} (port-forward)", pod.pod()),
        }
    }

    /// A request to it: `Host` and, when it asks for one, the token.
    pub fn request(&self, method: http::Method, path_and_query: &str) -> http::request::Builder {
        let host = match &self.dial {
            Dial::Tcp(addr) => addr.to_string(),
            Dial::Pod(pod) => format!("127.0.0.1:{}", pod.port()),
        };
        let req = http::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(http::header::HOST, host);
        match &self.token {
            Some(token) => req.header(http::header::AUTHORIZATION, format!("Bearer {token}")),
            None => req,
        }
    }

    /// Opens a connection.
    async fn connect(&self) -> anyhow::Result<(Io, Option<Why>)> {
        match &self.dial {
            Dial::Tcp(addr) => {
                let tcp = tokio::net::TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("connecting to the control plane at {addr}"))?;
                Ok((Io::Left(tcp), None))
            }
            Dial::Pod(pod) => {
                let forwarded = pod.connect().await.with_context(|| {
                    format!("port-forwarding to the control plane's pod {}", pod.pod())
                })?;
                Ok((Io::Right(forwarded.io), Some(forwarded.error)))
            }
        }
    }

    /// Sends `req` on a connection of its own; answers the response's head, the connection
    /// ending with its body.
    pub async fn send<B>(
        &self,
        req: http::Request<B>,
    ) -> anyhow::Result<http::Response<hyper::body::Incoming>>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (io, why) = self.connect().await?;
        let sent = async {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
            tokio::spawn(conn);
            send.send_request(req).await
        }
        .await;
        match sent {
            Ok(rsp) => Ok(rsp),
            Err(e) => {
                // Through a port-forward, the kubelet says why the port could not be reached.
                if let Some(why) = why
                    && let Ok(Some(reason)) = tokio::time::timeout(WHY_WAIT, why).await
                {
                    bail!("the control plane at {}: {reason}", self.name());
                }
                Err(anyhow::Error::new(e).context(format!("the control plane at {}", self.name())))
            }
        }
    }
}

/// A request to the control plane: its head sent, the response's head received.
async fn get(control: &Control, path_and_query: &str) -> anyhow::Result<hyper::body::Incoming> {
    let req = control.request(http::Method::GET, path_and_query);
    let rsp = control.send(req.body(Empty::<Bytes>::new())?).await?;
    let status = rsp.status();
    if !status.is_success() {
        let bytes = rsp.into_body().collect().await?.to_bytes();
        bail!(
            "the control plane answered {status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        );
    }
    Ok(rsp.into_body())
}

async fn get_json(control: &Control, path_and_query: &str) -> anyhow::Result<Value> {
    let body = get(control, path_and_query).await?;
    let bytes = body.collect().await?.to_bytes();
    serde_json::from_slice(&bytes).context("reading the control plane's answer")
}

/// `?a=x&b=y` of the parameters that are set.
fn query(params: &[(&str, Option<&str>)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

/// The arguments of `weft stat`.
#[derive(Clone, Debug)]
pub struct StatArgs {
    /// `workload`, `service` or `route`.
    pub by: String,
    /// Only clients (workloads, services) or callers (routes) this names.
    pub from: Option<String>,
    /// Only the row this names.
    pub to: Option<String>,
    /// JSON instead of a table.
    pub json: bool,
}

/// `weft stat`.
pub async fn stat(control: &Control, a: &StatArgs) -> anyhow::Result<()> {
    let v = get_json(
        control,
        &format!(
            "/api/stat{}",
            query(&[
                ("by", Some(&a.by)),
                ("from", a.from.as_deref()),
                ("to", a.to.as_deref())
            ])
        ),
    )
    .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", stat_table(&v, &a.by));
    Ok(())
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn ms(v: &Value, key: &str) -> String {
    num(v, key).map_or("-".into(), |x| format!("{x:.1}ms"))
}

fn pct(v: &Value) -> String {
    num(v, "success_rate").map_or("-".into(), |x| format!("{:.2}%", x * 100.0))
}

fn rps(v: &Value) -> String {
    num(v, "rps").map_or("-".into(), |x| format!("{x:.1}"))
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = String>| {
        let cells: Vec<String> = cells.collect();
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(&c);
            } else {
                let _ = write!(out, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(&mut out, &mut header.iter().map(|h| h.to_string()));
    for r in rows {
        line(&mut out, &mut r.iter().cloned());
    }
    out
}

fn stat_table(v: &Value, by: &str) -> String {
    let rows: Vec<Vec<String>> = v["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    let mut name = r["name"].as_str().unwrap_or_default().to_string();
                    if let Some(b) = r["backend"].as_str() {
                        let _ = write!(name, " -> {b}");
                    }
                    let mut cells = vec![
                        name,
                        r["proxies"].as_u64().unwrap_or(0).to_string(),
                        pct(r),
                        rps(r),
                        ms(r, "p50_ms"),
                        ms(r, "p95_ms"),
                        ms(r, "p99_ms"),
                        r["requests"].as_u64().unwrap_or(0).to_string(),
                    ];
                    if by == "route" {
                        cells.push(format!("{}", num(r, "retries").unwrap_or(0.0)));
                        cells.push(format!("{}", num(r, "timeouts").unwrap_or(0.0)));
                    } else {
                        cells.push(format!("{}", num(r, "tcp_connections").unwrap_or(0.0)));
                        cells.push(format!("{}", num(r, "denied").unwrap_or(0.0)));
                    }
                    cells
                })
                .collect()
        })
        .unwrap_or_default();
    let last = if by == "route" {
        ["RETRIES", "TIMEOUTS"]
    } else {
        ["TCP_CONN", "DENIED"]
    };
    let first = match by {
        "route" => "ROUTE",
        "service" => "SERVICE",
        _ => "WORKLOAD",
    };
    table(
        &[
            first, "PROXIES", "SUCCESS", "RPS", "P50", "P95", "P99", "REQUESTS", last[0], last[1],
        ],
        &rows,
    )
}

/// `weft edges`.
pub async fn edges(
    control: &Control,
    from: Option<&str>,
    to: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let v = get_json(
        control,
        &format!("/api/edges{}", query(&[("from", from), ("to", to)])),
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["edges"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    let from = match r["from_workloads"].as_array().filter(|w| !w.is_empty()) {
                        Some(w) => w
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(","),
                        None => r["from"].as_str().unwrap_or("-").to_string(),
                    };
                    vec![
                        from,
                        r["to"].as_str().unwrap_or("-").to_string(),
                        if r["mtls"].as_bool() == Some(true) {
                            "yes"
                        } else {
                            "no"
                        }
                        .into(),
                        pct(r),
                        rps(r),
                        ms(r, "p99_ms"),
                        r["from"].as_str().unwrap_or("-").to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print!(
        "{}",
        table(
            &[
                "FROM",
                "TO",
                "MTLS",
                "SUCCESS",
                "RPS",
                "P99",
                "CLIENT_IDENTITY"
            ],
            &rows
        )
    );
    Ok(())
}

/// `weft routes`: what a caller in `from` (default the service's namespace) applies to
/// `service` now: its routes with their rules, backends and guards, each route's traffic, and
/// the service's backend policy.
pub async fn routes(
    control: &Control,
    service: &str,
    from: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let v = get_json(
        control,
        &format!(
            "/api/routes{}",
            query(&[("service", Some(service)), ("from", from)])
        ),
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", routes_text(&v));
    Ok(())
}

fn routes_text(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} port {}, as callers in namespace {} see it",
        v["service"].as_str().unwrap_or("-"),
        v["port"],
        v["caller_namespace"].as_str().unwrap_or("-")
    );
    let routes = v["routes"].as_array().cloned().unwrap_or_default();
    if routes.is_empty() {
        out.push_str("no routes: requests go to the service itself\n");
    }
    for r in &routes {
        let _ = writeln!(
            out,
            "\n{} route {} ({})",
            r["kind"].as_str().unwrap_or("http").to_uppercase(),
            r["name"].as_str().unwrap_or("-"),
            r["source"].as_str().unwrap_or("-")
        );
        if let Some(share) = r["trace_start"].as_f64() {
            let _ = writeln!(
                out,
                "  starts traces for {:.1} % of requests",
                share * 100.0
            );
        }
        for (i, rule) in r["rules"].as_array().into_iter().flatten().enumerate() {
            let name = rule["name"].as_str().map_or(i.to_string(), str::to_string);
            let matches: Vec<&str> = rule["matches"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let backends: Vec<String> = rule["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    format!(
                        "{} (weight {}){}",
                        b["service"].as_str().unwrap_or("-"),
                        b["weight"],
                        if b["missing"] == true {
                            ", missing"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "  rule {name}: {} -> {}",
                if matches.is_empty() {
                    "any".to_string()
                } else {
                    matches.join(" | ")
                },
                if backends.is_empty() {
                    "the service".to_string()
                } else {
                    backends.join(", ")
                }
            );
            let mut guards = Vec::new();
            if let Some(t) = rule["timeout_ms"].as_u64() {
                guards.push(format!("timeout {t}ms"));
            }
            if let Some(t) = rule["per_try_timeout_ms"].as_u64() {
                guards.push(format!("per try {t}ms"));
            }
            if let Some(retry) = rule["retry"].as_object() {
                guards.push(format!(
                    "retry {}x on {}",
                    retry["attempts"], retry["codes"]
                ));
            }
            if rule["fault"] == true {
                guards.push("faults".into());
            }
            if let Some(l) = rule["limit"].as_object() {
                guards.push(format!("limit {} in flight", l["max_in_flight"]));
            }
            if !guards.is_empty() {
                let _ = writeln!(out, "    {}", guards.join(", "));
            }
        }
        let stats: Vec<Vec<String>> = r["stats"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                vec![
                    format!("    {}", s["backend"].as_str().unwrap_or("(rule)")),
                    pct(s),
                    rps(s),
                    ms(s, "p99_ms"),
                    s["requests"].as_u64().unwrap_or(0).to_string(),
                    format!("{}", num(s, "retries").unwrap_or(0.0)),
                ]
            })
            .collect();
        if !stats.is_empty() {
            out.push_str(&table(
                &[
                    "    BACKEND",
                    "SUCCESS",
                    "RPS",
                    "P99",
                    "REQUESTS",
                    "RETRIES",
                ],
                &stats,
            ));
        }
    }
    let b = &v["backend_policy"];
    let _ = writeln!(
        out,
        "\nbackend policy: retry budget {} % + {}/s over {} ms; ejection after {} failures ({}..{} ms)",
        b["retry_budget"]["percent"],
        b["retry_budget"]["min_per_second"],
        b["retry_budget"]["window_ms"],
        b["failure_accrual"]["consecutive_failures"],
        b["failure_accrual"]["first_penalty_ms"],
        b["failure_accrual"]["max_penalty_ms"],
    );
    out
}

/// The filters of `weft tap` and `weft top`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TapArgs {
    /// Requests to this service (`name.namespace`) or workload (`namespace/name`).
    #[arg(long)]
    pub to: Option<String>,
    /// Requests from this identity (`namespace/account`, a SPIFFE ID or a prefix of one).
    #[arg(long)]
    pub from: Option<String>,
    /// Only this method.
    #[arg(long)]
    pub method: Option<String>,
    /// Only paths starting with this.
    #[arg(long)]
    pub path: Option<String>,
    /// Only this authority.
    #[arg(long)]
    pub authority: Option<String>,
    /// Events a second at most, per proxy tapped (default 100).
    #[arg(long)]
    pub rate: Option<u32>,
    /// Stop after this many events.
    #[arg(long)]
    pub max: Option<u64>,
}

impl TapArgs {
    fn path(&self) -> String {
        let rate = self.rate.map(|r| r.to_string());
        let max = self.max.map(|m| m.to_string());
        format!(
            "/api/tap{}",
            query(&[
                ("to", self.to.as_deref()),
                ("from", self.from.as_deref()),
                ("method", self.method.as_deref()),
                ("path", self.path.as_deref()),
                ("authority", self.authority.as_deref()),
                ("rate", rate.as_deref()),
                ("max", max.as_deref()),
            ])
        )
    }
}

/// Reads the tap's JSON lines, calling `each` with every event until the stream ends or
/// `each` says to stop.
async fn events(
    control: &Control,
    args: &TapArgs,
    mut each: impl FnMut(Value) -> bool,
) -> anyhow::Result<()> {
    let mut body = get(control, &args.path()).await?;
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if !each(v) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// One event as a line of `weft tap`.
pub fn tap_line(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or_default();
    let status = match e["status"].as_u64() {
        Some(0) | None => "-".to_string(),
        Some(n) => n.to_string(),
    };
    let grpc = match e["grpc_status"].as_i64() {
        Some(g) if g >= 0 => format!(" grpc-status={g}"),
        _ => String::new(),
    };
    let mut line = format!(
        "{} {} {} {}{} {} {:.2}ms src={} dst={} mtls={}",
        s("direction"),
        s("method"),
        s("authority"),
        s("path"),
        grpc,
        status,
        e["latency_ms"].as_f64().unwrap_or(0.0),
        if s("source_identity").is_empty() {
            "-"
        } else {
            s("source_identity")
        },
        if s("destination_identity").is_empty() {
            s("destination")
        } else {
            s("destination_identity")
        },
        e["mtls"].as_bool().unwrap_or(false),
    );
    for k in ["route", "backend", "trace_id"] {
        if !s(k).is_empty() {
            let _ = write!(line, " {k}={}", s(k));
        }
    }
    line
}

/// `weft tap`: one line per request as it happens (JSON with `json`).
pub async fn tap(control: &Control, args: &TapArgs, json: bool) -> anyhow::Result<()> {
    events(control, args, |e| {
        if json {
            println!("{e}");
        } else {
            println!("{}", tap_line(&e));
        }
        true
    })
    .await
}

/// One row of `weft top`.
#[derive(Debug, Default, Clone)]
struct TopRow {
    count: u64,
    failures: u64,
    best: f64,
    worst: f64,
    last: f64,
}

/// `weft top`: a live table of the requests tap sees, by source, destination, method and
/// path, sorted by count; redrawn every `every` on a terminal, printed every `every`
/// otherwise.
pub async fn top(control: &Control, args: &TapArgs, every: Duration) -> anyhow::Result<()> {
    use std::collections::HashMap;
    let terminal = std::io::stdout().is_terminal();
    let rows: std::sync::Arc<std::sync::Mutex<HashMap<[String; 4], TopRow>>> =
        std::sync::Arc::default();
    let render = {
        let rows = rows.clone();
        move || {
            let rows = rows.lock().unwrap_or_else(|p| p.into_inner());
            let mut list: Vec<(&[String; 4], &TopRow)> = rows.iter().collect();
            list.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(b.0)));
            let cells: Vec<Vec<String>> = list
                .into_iter()
                .take(40)
                .map(|(k, r)| {
                    vec![
                        k[0].clone(),
                        k[1].clone(),
                        k[2].clone(),
                        k[3].clone(),
                        r.count.to_string(),
                        format!("{:.1}ms", r.best),
                        format!("{:.1}ms", r.worst),
                        format!("{:.1}ms", r.last),
                        format!(
                            "{:.2}%",
                            100.0 * (r.count - r.failures) as f64 / r.count.max(1) as f64
                        ),
                    ]
                })
                .collect();
            table(
                &[
                    "SOURCE",
                    "DESTINATION",
                    "METHOD",
                    "PATH",
                    "COUNT",
                    "BEST",
                    "WORST",
                    "LAST",
                    "SUCCESS",
                ],
                &cells,
            )
        }
    };
    let printer = {
        let render = render.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let t = render();
                if terminal {
                    // Home and clear, then the table.
                    print!("\x1b[H\x1b[2J{t}");
                } else {
                    println!("{t}");
                }
            }
        })
    };
    let result = events(control, args, |e| {
        let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
        let source = if s("source_identity").is_empty() {
            "-".into()
        } else {
            s("source_identity")
        };
        let key = [source, s("destination"), s("method"), s("path")];
        let latency = e["latency_ms"].as_f64().unwrap_or(0.0);
        let status = e["status"].as_u64().unwrap_or(0);
        let grpc = e["grpc_status"].as_i64().unwrap_or(-1);
        let failed = status == 0 || status >= 500 || grpc > 0;
        let mut rows = rows.lock().unwrap_or_else(|p| p.into_inner());
        let r = rows.entry(key).or_insert_with(|| TopRow {
            best: latency,
            ..TopRow::default()
        });
        r.count += 1;
        r.failures += u64::from(failed);
        r.best = r.best.min(latency);
        r.worst = r.worst.max(latency);
        r.last = latency;
        true
    })
    .await;
    printer.abort();
    // What was seen, once more, when the stream ends (with --max, or the control plane went).
    print!("{}", render());
    result
}

/// `weft dashboard`: prints the address of the control plane's dashboard and opens it in a
/// browser when there is a display (and `browser`). For a control plane that asks for its
/// token, or one reached through a Kubernetes port-forward, it serves a [`DashboardForwarder`]
/// on 127.0.0.1 and points at it instead, until interrupted.
pub async fn dashboard(control: &Control, browser: bool) -> anyhow::Result<()> {
    if let (Dial::Tcp(addr), None) = (&control.dial, &control.token) {
        let url = format!("http://{addr}/dashboard");
        println!("Weft dashboard: {url}");
        if !addr.ip().is_loopback() {
            println!(
                "The control plane is not on loopback: it asks for its token; pass --token-file \
                 <data_dir>/http-token to reach it through a local forwarder."
            );
        }
        if browser {
            open_in_browser(&url).await;
        }
        return Ok(());
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let forwarder = DashboardForwarder::start(control.clone(), stop.clone()).await?;
    println!("Weft dashboard: {}", forwarder.url);
    let how = if control.token.is_some() {
        " with its token"
    } else {
        ""
    };
    println!(
        "Forwarding {} to the control plane at {}{how}; Ctrl-C stops.",
        forwarder.addr,
        control.name()
    );
    if browser {
        open_in_browser(&forwarder.url).await;
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    stop.cancel();
    forwarder.task.await.context("the forwarder failed")?;
    Ok(())
}

/// Opens `url` with `xdg-open` when there is a display; says so when there is none, or when
/// it cannot be started. Never fails: the address is printed already.
async fn open_in_browser(url: &str) {
    let display = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|d| !d.is_empty()));
    if !display {
        println!("No display: open the address above in a browser.");
        return;
    }
    match tokio::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            // xdg-open hands the address to the browser and exits; reap it.
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
        Err(e) => println!("Could not run xdg-open ({e}): open the address above in a browser."),
    }
}

/// Connections the forwarder holds at once at most (a browser opens six or so per site).
const FORWARDER_CONNECTIONS: usize = 64;
/// The cookie that proves a browser was handed the forwarder's address.
const FORWARDER_COOKIE: &str = "weft-dashboard";

type ForwardBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// A forwarder on 127.0.0.1 (a port the OS picks) to the dashboard of a control plane that
/// asks for its token, or that only a Kubernetes port-forward reaches: it adds
/// `Authorization: Bearer <token>` (when there is one) to each request, sends it on a
/// connection of its own ([`Control`]) and streams the answer back as it comes (server-sent
/// events pass through).
///
/// Anyone on the machine can reach a loopback port, and any web page can make a browser send
/// requests there, so the forwarder serves only the browser that opened its address: that
/// address carries a random key, which it trades for a cookie (`HttpOnly`, `SameSite=Strict`),
/// and every other request must bring that cookie and name the forwarder itself as `Host`
/// (so a name rebound to 127.0.0.1 gets nothing). It forwards `GET` and `HEAD` under
/// `/dashboard` alone, never the token-protected API beside it.
#[derive(Debug)]
pub struct DashboardForwarder {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The address to open: it sets the cookie and leads to the dashboard.
    pub url: String,
    /// The task serving it, until the stop token given to [`DashboardForwarder::start`].
    pub task: tokio::task::JoinHandle<()>,
}

impl DashboardForwarder {
    /// Listens on 127.0.0.1 and forwards to the control plane `control`, until `stop`.
    pub async fn start(
        control: Control,
        stop: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("listening on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let key = random_key()?;
        let url = format!("http://{addr}/open/{key}");
        let shared = std::sync::Arc::new(ForwarderState { control, key, addr });
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(FORWARDER_CONNECTIONS));
        let task = tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!(error = %e, "forwarder accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    },
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!("forwarder connection over its bound; closed");
                    continue;
                };
                let shared = shared.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(shared.answer(req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = conn => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
        Ok(Self { addr, url, task })
    }
}

/// 32 random bytes, hex.
fn random_key() -> anyhow::Result<String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for the forwarder's key"))?;
    Ok(bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// `a == b`, in time that depends on their lengths alone.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// What each connection of the forwarder shares.
#[derive(Debug)]
struct ForwarderState {
    control: Control,
    key: String,
    addr: SocketAddr,
}

impl ForwarderState {
    /// Answers one request of the browser.
    async fn answer<B>(&self, req: http::Request<B>) -> http::Response<ForwardBody> {
        let local = |status: http::StatusCode, text: &str| {
            let body = http_body_util::Full::new(Bytes::from(text.to_string()))
                .map_err(|never| match never {})
                .boxed();
            let mut rsp = http::Response::new(body);
            *rsp.status_mut() = status;
            rsp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            rsp
        };
        // The forwarder's own name, by address or as localhost: nothing rebound to it.
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let port = self.addr.port();
        if host != self.addr.to_string() && host != format!("localhost:{port}") {
            return local(http::StatusCode::FORBIDDEN, "not this forwarder\n");
        }
        if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
            return local(http::StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        let path = req.uri().path();
        if let Some(key) = path.strip_prefix("/open/") {
            if !same(key, &self.key) {
                return local(
                    http::StatusCode::FORBIDDEN,
                    "not the key of this forwarder\n",
                );
            }
            let mut rsp = local(http::StatusCode::SEE_OTHER, "to the dashboard\n");
            rsp.headers_mut().insert(
                http::header::LOCATION,
                http::HeaderValue::from_static("/dashboard"),
            );
            if let Ok(cookie) = http::HeaderValue::from_str(&format!(
                "{FORWARDER_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
                self.key
            )) {
                rsp.headers_mut().insert(http::header::SET_COOKIE, cookie);
            }
            return rsp;
        }
        let cookie_ok = req
            .headers()
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(name, value)| name == FORWARDER_COOKIE && same(value, &self.key));
        if !cookie_ok {
            return local(
                http::StatusCode::FORBIDDEN,
                "open the address `weft dashboard` printed\n",
            );
        }
        if path != "/dashboard" && !path.starts_with("/dashboard/") {
            return local(
                http::StatusCode::NOT_FOUND,
                "only the dashboard is forwarded\n",
            );
        }
        match self.forward(&req).await {
            Ok(rsp) => rsp,
            Err(e) => local(http::StatusCode::BAD_GATEWAY, &format!("{e:#}\n")),
        }
    }

    /// Sends `req`'s head to the control plane with the token, and streams its answer back.
    async fn forward<B>(
        &self,
        req: &http::Request<B>,
    ) -> anyhow::Result<http::Response<ForwardBody>> {
        let target = req
            .uri()
            .path_and_query()
            .map_or("/dashboard", |p| p.as_str());
        let mut out = self.control.request(req.method().clone(), target);
        // What the dashboard reads of a request, and never the cookie that holds the key.
        for name in [
            http::header::ACCEPT,
            http::header::ACCEPT_LANGUAGE,
            http::header::CACHE_CONTROL,
            http::HeaderName::from_static("last-event-id"),
        ] {
            if let Some(v) = req.headers().get(&name) {
                out = out.header(name, v);
            }
        }
        // The connection serves this one request and ends with its answer's body (or when
        // the browser goes away and the body is dropped).
        let rsp = self.control.send(out.body(Empty::<Bytes>::new())?).await?;
        Ok(rsp.map(BodyExt::boxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in control plane: answers `/dashboard/events` with two events some time apart
    /// when the token is right, 401 otherwise; every request's head is sent on `heads`.
    async fn control_plane(
        token: &'static str,
    ) -> (
        SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<http::request::Parts>,
    ) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, heads) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let tx = tx.clone();
                            async move {
                                let (parts, _) = req.into_parts();
                                let ok = parts.headers.get(http::header::AUTHORIZATION)
                                    == Some(
                                        &http::HeaderValue::from_str(&format!("Bearer {token}"))
                                            .unwrap(),
                                    );
                                let _ = tx.send(parts);
                                let (frames, body) = tokio::sync::mpsc::channel::<
                                    Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
                                >(4);
                                let status = if ok { 200 } else { 401 };
                                tokio::spawn(async move {
                                    if ok {
                                        let _ = frames
                                            .send(Ok(hyper::body::Frame::data(Bytes::from(
                                                "data: one\n\n",
                                            ))))
                                            .await;
                                        tokio::time::sleep(Duration::from_millis(200)).await;
                                        let _ = frames
                                            .send(Ok(hyper::body::Frame::data(Bytes::from(
                                                "data: two\n\n",
                                            ))))
                                            .await;
                                    }
                                });
                                let body = http_body_util::StreamBody::new(
                                    tokio_stream::wrappers::ReceiverStream::new(body),
                                );
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder().status(status).body(body).unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (addr, heads)
    }

    async fn get(
        addr: SocketAddr,
        path: &str,
        host: &str,
        cookie: Option<&str>,
    ) -> http::Response<hyper::body::Incoming> {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::get(path).header(http::header::HOST, host);
        if let Some(c) = cookie {
            req = req.header(http::header::COOKIE, c);
        }
        send.send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_forwarder_adds_the_token_for_the_browser_that_opened_it_alone() {
        let (control, mut heads) = control_plane("sesame").await;
        let stop = tokio_util::sync::CancellationToken::new();
        let fwd =
            DashboardForwarder::start(Control::tcp(control, Some("sesame".into())), stop.clone())
                .await
                .unwrap();
        assert!(fwd.addr.ip().is_loopback());
        let host = fwd.addr.to_string();
        let path = fwd.url.strip_prefix(&format!("http://{host}")).unwrap();

        // The address printed trades its key for a cookie.
        let rsp = get(fwd.addr, path, &host, None).await;
        assert_eq!(rsp.status(), 303);
        assert_eq!(rsp.headers()[http::header::LOCATION], "/dashboard");
        let cookie = rsp.headers()[http::header::SET_COOKIE].to_str().unwrap();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        let cookie = cookie.split(';').next().unwrap().to_string();

        // With it, requests go through with the token, and events stream as they come.
        let rsp = get(
            fwd.addr,
            "/dashboard/events?view=overview",
            &host,
            Some(&cookie),
        )
        .await;
        assert_eq!(rsp.status(), 200);
        let head = heads.recv().await.unwrap();
        assert_eq!(head.uri, "/dashboard/events?view=overview");
        assert_eq!(head.headers[http::header::AUTHORIZATION], "Bearer sesame");
        assert!(
            head.headers.get(http::header::COOKIE).is_none(),
            "the key stays here"
        );
        let mut body = rsp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(
            &first[..],
            b"data: one\n\n",
            "the first event before the second exists"
        );
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&second[..], b"data: two\n\n");

        // Without the cookie, with a wrong key, another Host, or outside the dashboard: no.
        for (path, host, cookie, status) in [
            ("/dashboard", host.clone(), None, 403),
            ("/dashboard", host.clone(), Some("weft-dashboard=00"), 403),
            ("/open/00", host.clone(), None, 403),
            (
                "/dashboard",
                format!("evil.example:{}", fwd.addr.port()),
                Some(cookie.as_str()),
                403,
            ),
            ("/api/state", host.clone(), Some(cookie.as_str()), 404),
            ("/metrics", host.clone(), Some(cookie.as_str()), 404),
        ] {
            let rsp = get(fwd.addr, path, &host, cookie).await;
            assert_eq!(rsp.status(), status, "{path} {host} {cookie:?}");
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), fwd.task)
            .await
            .unwrap()
            .unwrap();
    }
}
