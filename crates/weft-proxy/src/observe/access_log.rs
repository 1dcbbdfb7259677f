//! The access log: one line per request on stderr, written by a task of its own.
//!
//! A request formats its line and hands it to a bounded queue ([`QUEUE`] lines); when the
//! queue is full the line is dropped and counted (`weft_access_log_dropped_total`), so a slow
//! stderr never slows traffic down.
//!
//! The writer is a thread of its own, since a write to stderr blocks, started with the first
//! line (a proxy that logs nothing has none). While lines keep coming
//! it takes what the queue holds every [`GATHER`] and writes it at once, so that no request
//! wakes it and a busy proxy makes one write call per interval; when an interval brings
//! nothing it waits on the queue again, so an idle proxy never wakes for it.
//!
//! - `common`: Apache's common log format, then the mesh's fields as `key=value`:
//!   `10.0.0.7 - spiffe://mesh.local/ns/shop/sa/web [2026-12-07T04:57:01.123Z] "GET /cart
//!   HTTP/1.1" 200 512 direction=inbound duration_ms=1.234 ...`
//! - `json`: one object per line with the same fields.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use weft_core::observability::AccessLogFormat;

use super::context::TraceId;
use crate::metrics::Direction;

/// Lines waiting to be written at most.
pub const QUEUE: usize = 4096;

/// How long the writer gathers lines before each write while they keep coming.
pub const GATHER: Duration = Duration::from_millis(10);

/// Bytes gathered at most before a write.
const WRITE_AT: usize = 256 * 1024;

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

/// The queue to the writer thread, which starts with the first line: a proxy that logs
/// nothing (the default) has no thread for it.
#[derive(Debug, Clone)]
pub struct AccessLog {
    writer: Arc<Writer>,
    dropped: Counter,
}

/// The writer thread's queue once it has started, and until then what it will write to.
struct Writer {
    tx: OnceLock<mpsc::Sender<String>>,
    out: Mutex<Option<Box<dyn std::io::Write + Send>>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("started", &self.tx.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the thread; answers its queue.
    fn start(&self) -> mpsc::Sender<String> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let out = self
            .out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // `start` runs once (in a `OnceLock`), so `out` is there.
        if let Some(out) = out {
            let spawned = std::thread::Builder::new()
                .name("weft-access-log".into())
                .spawn(move || write_lines(rx, out));
            if let Err(e) = spawned {
                // The queue's receiver went with the closure: every line is dropped and
                // counted.
                tracing::warn!(error = %e, "no thread for the access log; its lines are dropped");
            }
        }
        tx
    }
}

impl AccessLog {
    /// A log that writes to `out` (stderr) from a thread of its own, started with the first
    /// line.
    pub fn to_writer<W>(out: W, dropped: Counter) -> Self
    where
        W: std::io::Write + Send + 'static,
    {
        let writer = Writer {
            tx: OnceLock::new(),
            out: Mutex::new(Some(Box::new(out))),
        };
        Self {
            writer: Arc::new(writer),
            dropped,
        }
    }

    /// Hands `entry`'s line over, or drops and counts it if the queue is full.
    pub fn write(&self, format: AccessLogFormat, entry: Entry<'_>) {
        let line = match format {
            AccessLogFormat::Off => return,
            AccessLogFormat::Common => common(&entry),
            AccessLogFormat::Json => json(&entry),
        };
        let tx = self.writer.tx.get_or_init(|| self.writer.start());
        if tx.try_send(line).is_err() {
            self.dropped.inc();
        }
    }

    /// Whether the writer thread has started.
    #[cfg(test)]
    fn started(&self) -> bool {
        self.writer.tx.get().is_some()
    }
}

/// The writer thread: see the module docs. Ends when every sender is gone or `out` fails.
fn write_lines<W: std::io::Write>(mut rx: mpsc::Receiver<String>, mut out: W) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    // Quiet: wait for a line, woken by its sender.
    while let Some(first) = rx.blocking_recv() {
        buf.extend_from_slice(first.as_bytes());
        // Busy: gather for an interval without being woken, then write; until an interval
        // brings nothing.
        loop {
            std::thread::sleep(GATHER);
            let (gathered, open) = drain(&mut rx, &mut buf, &mut out);
            if out.write_all(&buf).and_then(|()| out.flush()).is_err() {
                return;
            }
            buf.clear();
            if !open {
                return;
            }
            if !gathered {
                break;
            }
        }
    }
}

/// Moves what the queue holds into `buf`, writing it out whenever it reaches [`WRITE_AT`].
/// Answers whether any line came, and whether the queue still has senders.
fn drain<W: std::io::Write>(
    rx: &mut mpsc::Receiver<String>,
    buf: &mut Vec<u8>,
    out: &mut W,
) -> (bool, bool) {
    let mut gathered = false;
    loop {
        match rx.try_recv() {
            Ok(line) => {
                gathered = true;
                buf.extend_from_slice(line.as_bytes());
                if buf.len() >= WRITE_AT {
                    if out.write_all(buf).is_err() {
                        return (gathered, false);
                    }
                    buf.clear();
                }
            }
            Err(mpsc::error::TryRecvError::Empty) => return (gathered, true),
            Err(mpsc::error::TryRecvError::Disconnected) => return (gathered, false),
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

/// Appends a value for `key=value`: `-` when empty, and nothing that could break the line
/// apart (whitespace, controls and quotes become `_`).
fn push_word(l: &mut String, s: &str) {
    if s.is_empty() {
        l.push('-');
    } else if !s.chars().any(breaks_line) {
        l.push_str(s);
    } else {
        l.extend(s.chars().map(|c| if breaks_line(c) { '_' } else { c }));
    }
}

fn breaks_line(c: char) -> bool {
    c.is_whitespace() || c.is_control() || c == '"'
}

/// Appends `d` in milliseconds to the microsecond, as [`millis`] prints it (no trailing
/// zeros), with integer arithmetic.
fn push_millis(l: &mut String, d: Duration) {
    use std::fmt::Write as _;
    let us = d.as_nanos().saturating_add(500) / 1_000;
    let (whole, mut frac) = (us / 1_000, us % 1_000);
    let _ = write!(l, "{whole}");
    if frac > 0 {
        let mut digits = 3;
        while frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
        let _ = write!(l, ".{frac:0digits$}");
    }
}

fn common(e: &Entry<'_>) -> String {
    use std::fmt::Write as _;
    let mut l = String::with_capacity(256);
    let _ = write!(l, "{} - ", e.client_addr.ip());
    push_word(&mut l, e.client_identity.unwrap_or(""));
    let _ = write!(l, " [{}] \"", humantime::format_rfc3339_millis(e.at));
    push_word(&mut l, e.method);
    l.push(' ');
    push_word(&mut l, e.path);
    l.push(' ');
    l.push_str(version(e.version));
    l.push_str("\" ");
    match e.status {
        Some(s) => {
            let _ = write!(l, "{s}");
        }
        None => l.push('-'),
    }
    let _ = write!(
        l,
        " {} direction={} authority=",
        e.response_bytes,
        direction(e.direction)
    );
    push_word(&mut l, e.authority);
    l.push_str(" duration_ms=");
    push_millis(&mut l, e.duration);
    if let Some(d) = e.first_byte {
        l.push_str(" first_byte_ms=");
        push_millis(&mut l, d);
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
            l.push(' ');
            l.push_str(k);
            l.push('=');
            push_word(&mut l, v);
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
    fn milliseconds_print_alike_in_both_formats() {
        for us in [0, 1, 10, 100, 900, 1_000, 1_234, 1_230, 20_000, 123_456_789] {
            for extra_ns in [0, 499, 500] {
                let d = Duration::from_nanos(us * 1_000 + extra_ns);
                let mut l = String::new();
                push_millis(&mut l, d);
                assert_eq!(l, millis(d).to_string(), "{d:?}");
            }
        }
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

    /// A writer whose every write waits until the test ends (its sender is dropped).
    struct Stuck(std::sync::mpsc::Receiver<()>);

    impl std::io::Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Err(std::io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        // A writer that never takes a byte: the thread holds what it gathered before its write
        // (at most WRITE_AT bytes and a line), the queue fills, and the rest are dropped.
        let (_release, stuck) = std::sync::mpsc::channel();
        let dropped = Counter::default();
        let log = AccessLog::to_writer(Stuck(stuck), dropped.clone());
        let per_line = common(&entry()).len();
        let held = QUEUE + WRITE_AT / per_line + 2;
        let sent = 2 * held;
        for _ in 0..sent {
            log.write(AccessLogFormat::Common, entry());
        }
        let kept = sent - usize::try_from(dropped.get()).unwrap();
        assert!(kept <= held, "kept {kept} of {sent}");
    }

    #[test]
    fn lines_are_written_in_order_and_the_thread_ends_with_the_log() {
        let (out_tx, out_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        struct Collect(std::sync::mpsc::Sender<Vec<u8>>);
        impl std::io::Write for Collect {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.send(b.to_vec());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let dropped = Counter::default();
        let log = AccessLog::to_writer(Collect(out_tx), dropped.clone());
        // Nothing logged, no thread; `off` logs nothing.
        assert!(!log.started());
        log.write(AccessLogFormat::Off, entry());
        assert!(!log.started());
        // A clone (each stack holds one) writes to the same thread.
        let other = log.clone();
        for status in 200..300 {
            let mut e = entry();
            e.status = Some(status);
            let by = if status % 2 == 0 { &log } else { &other };
            by.write(AccessLogFormat::Common, e);
        }
        assert!(other.started());
        drop(log);
        drop(other);
        // The thread writes what it gathered and ends, which closes the channel.
        let written: Vec<u8> = out_rx.iter().flatten().collect();
        let text = String::from_utf8(written).unwrap();
        let statuses: Vec<u16> = text
            .lines()
            .map(|l| l.split("\" ").nth(1).unwrap()[..3].parse().unwrap())
            .collect();
        // In order, and the thread ended with the last clone (the channel closed).
        assert_eq!(statuses, (200..300).collect::<Vec<_>>());
        assert_eq!(dropped.get(), 0);
    }
}
