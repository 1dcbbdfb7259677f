//! The access log: one line per request on stderr, written by a task of its own.
//!
//! A request formats its line and hands it to a bounded queue ([`QUEUE`] lines); when the
//! queue is full the line is dropped and counted (`weft_access_log_dropped_total`), so a slow
//! stderr never slows traffic down.
//!
//! - `common`: Apache's common log format, then the mesh's fields as `key=value`:
//!   `10.0.0.7 - spiffe://mesh.local/ns/shop/sa/web [2026-12-07T04:57:01.123Z] "GET /cart
//!   HTTP/1.1" 200 512 direction=inbound duration_ms=1.234 ...`
//! - `json`: one object per line with the same fields.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use weft_core::observability::AccessLogFormat;

use super::context::TraceId;
use crate::metrics::Direction;

/// Lines waiting to be written at most.
pub const QUEUE: usize = 4096;

/// One request, as its log line tells it.
#[derive(Debug)]
pub struct Entry<'a> {
    /// When the request arrived.
    pub at: SystemTime,
    /// Which side of the proxy carried it.
    pub direction: Direction,
    /// The connection's client address.
    pub client_addr: SocketAddr,
    /// The client's mesh identity (inbound), if it proved one.
    pub client_identity: Option<&'a str>,
    /// The method.
    pub method: &'a str,
    /// The path (no query: it may carry secrets).
    pub path: &'a str,
    /// The authority or Host.
    pub authority: &'a str,
    /// The HTTP version.
    pub version: http::Version,
    /// The response status; none: no response.
    pub status: Option<u16>,
    /// The gRPC status, if any.
    pub grpc_status: Option<u32>,
    /// The request body's length, where it was known up front.
    pub request_bytes: Option<u64>,
    /// The response body's bytes.
    pub response_bytes: u64,
    /// Time to the response head.
    pub first_byte: Option<Duration>,
    /// Time to the response's end.
    pub duration: Duration,
    /// The trace, if the request was traced.
    pub trace_id: Option<TraceId>,
    /// The route it matched (outbound).
    pub route: Option<&'a str>,
    /// The destination (outbound).
    pub service: Option<&'a str>,
    /// The backend it went to (outbound, routed).
    pub backend: Option<&'a str>,
    /// The identity of the endpoint that answered (outbound).
    pub peer_identity: Option<&'a str>,
}

/// The queue to the writer task.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<String>,
    dropped: Counter,
}

impl AccessLog {
    /// A log that writes to `out` (stderr) from a task of its own.
    pub fn to_writer<W>(out: W, dropped: Counter) -> Self
    where
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(rx, out));
        Self { tx, dropped }
    }

    /// Hands `entry`'s line over, or drops and counts it if the queue is full.
    pub fn write(&self, format: AccessLogFormat, entry: Entry<'_>) {
        let line = match format {
            AccessLogFormat::Off => return,
            AccessLogFormat::Common => common(&entry),
            AccessLogFormat::Json => json(&entry),
        };
        if self.tx.try_send(line).is_err() {
            self.dropped.inc();
        }
    }
}

async fn write_lines<W>(mut rx: mpsc::Receiver<String>, out: W)
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut out = tokio::io::BufWriter::new(out);
    let mut lines = Vec::with_capacity(64);
    while rx.recv_many(&mut lines, 64).await > 0 {
        for l in lines.drain(..) {
            if out.write_all(l.as_bytes()).await.is_err() {
                return;
            }
        }
        if out.flush().await.is_err() {
            return;
        }
    }
}

fn version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::inbound => "inbound",
        Direction::outbound => "outbound",
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A value for `key=value`: `-` when empty, and nothing that could break the line apart.
fn word(s: &str) -> String {
    if s.is_empty() {
        return "-".into();
    }
    s.chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() || c == '"' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

fn common(e: &Entry<'_>) -> String {
    use std::fmt::Write as _;
    let mut l = format!(
        "{} - {} [{}] \"{} {} {}\" {} {}",
        e.client_addr.ip(),
        word(e.client_identity.unwrap_or("")),
        humantime::format_rfc3339_millis(e.at),
        word(e.method),
        word(e.path),
        version(e.version),
        e.status.map_or_else(|| "-".to_string(), |s| s.to_string()),
        e.response_bytes,
    );
    let _ = write!(
        l,
        " direction={} authority={} duration_ms={}",
        direction(e.direction),
        word(e.authority),
        millis(e.duration)
    );
    if let Some(d) = e.first_byte {
        let _ = write!(l, " first_byte_ms={}", millis(d));
    }
    if let Some(n) = e.request_bytes {
        let _ = write!(l, " request_bytes={n}");
    }
    if let Some(g) = e.grpc_status {
        let _ = write!(l, " grpc_status={g}");
    }
    for (k, v) in [
        ("service", e.service),
        ("route", e.route),
        ("backend", e.backend),
        ("peer", e.peer_identity),
    ] {
        if let Some(v) = v {
            let _ = write!(l, " {k}={}", word(v));
        }
    }
    if let Some(t) = e.trace_id {
        let _ = write!(l, " trace_id={}", t.hex());
    }
    l.push('\n');
    l
}

fn json(e: &Entry<'_>) -> String {
    let mut v = serde_json::json!({
        "time": humantime::format_rfc3339_millis(e.at).to_string(),
        "direction": direction(e.direction),
        "client_addr": e.client_addr.ip().to_string(),
        "client_identity": e.client_identity,
        "method": e.method,
        "path": e.path,
        "authority": e.authority,
        "protocol": version(e.version),
        "status": e.status,
        "grpc_status": e.grpc_status,
        "request_bytes": e.request_bytes,
        "response_bytes": e.response_bytes,
        "first_byte_ms": e.first_byte.map(millis),
        "duration_ms": millis(e.duration),
        "trace_id": e.trace_id.map(|t| t.hex()),
        "service": e.service,
        "route": e.route,
        "backend": e.backend,
        "peer_identity": e.peer_identity,
    });
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    let mut line = v.to_string();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            direction: Direction::inbound,
            client_addr: "10.0.0.7:50000".parse().unwrap(),
            client_identity: Some("spiffe://weft.test/ns/shop/sa/web"),
            method: "GET",
            path: "/cart \"x\"",
            authority: "cart.shop",
            version: http::Version::HTTP_11,
            status: Some(200),
            grpc_status: None,
            request_bytes: Some(0),
            response_bytes: 512,
            first_byte: Some(Duration::from_micros(900)),
            duration: Duration::from_micros(1234),
            trace_id: Some(TraceId([7; 16])),
            route: None,
            service: None,
            backend: None,
            peer_identity: None,
        }
    }

    #[test]
    fn common_lines_keep_their_fields_apart() {
        let l = common(&entry());
        assert_eq!(
            l,
            "10.0.0.7 - spiffe://weft.test/ns/shop/sa/web [2023-11-14T22:13:20.000Z] \"GET /cart__x_ HTTP/1.1\" 200 512 direction=inbound authority=cart.shop duration_ms=1.234 first_byte_ms=0.9 request_bytes=0 trace_id=07070707070707070707070707070707\n"
        );
    }

    #[test]
    fn json_lines_parse() {
        let l = json(&entry());
        let v: serde_json::Value = serde_json::from_str(&l).expect("JSON");
        assert_eq!(v["path"], "/cart \"x\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.234);
        assert!(v.get("route").is_none());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        // A writer that never takes a byte: the queue fills and the rest are dropped.
        let (w, _r) = tokio::io::duplex(1);
        let dropped = Counter::default();
        let log = AccessLog::to_writer(w, dropped.clone());
        for _ in 0..QUEUE + 200 {
            log.write(AccessLogFormat::Common, entry());
        }
        assert!(dropped.get() >= 100, "dropped {}", dropped.get());
    }
}
