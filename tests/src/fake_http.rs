//! What the fake Nomad and Consul HTTP APIs share (and the fake Kubernetes API's query
//! decoding): an HTTP/1.1 server on loopback that can cut its connections and restart on its port, blocking
//! queries with an index and a wait (as both HashiCorp APIs define them), ACL tokens from
//! either header, injected failures, and query-string parsing.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A 500 as Nomad and Consul answer without a leader, or another status.
pub(crate) fn failure(status: u16) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        text(status, "No cluster leader")
    } else {
        text(status, status.canonical_reason().unwrap_or("error"))
    }
}

/// A response body: a whole document or a stream (whose error aborts the connection).
pub(crate) type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Answers one request.
pub(crate) type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// An HTTP/1.1 server on 127.0.0.1 that can cut its connections and restart on its port.
pub(crate) struct Server {
    addr: SocketAddr,
    name: &'static str,
    handler: Handler,
    /// Cancelled on drop: stops whichever generation is serving.
    root: CancellationToken,
    tokens: Arc<Mutex<Tokens>>,
    /// The tasks of the serving generation: its accept loop and connections.
    serving: tokio::sync::Mutex<TaskTracker>,
}

/// The tokens connections hang from: `generation` (one listener's life) and, under it,
/// `epoch` (until the next cut).
struct Tokens {
    generation: CancellationToken,
    epoch: CancellationToken,
}

impl Server {
    /// Listens on 127.0.0.1, on a port of its own.
    pub(crate) fn start(name: &'static str, handler: Handler) -> Server {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .unwrap_or_else(|e| panic!("bind the {name} server to 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the {name} server's address: {e}"));
        let root = CancellationToken::new();
        let generation = root.child_token();
        let tokens = Arc::new(Mutex::new(Tokens {
            epoch: generation.child_token(),
            generation,
        }));
        let tracker = serve(name, listener, handler.clone(), tokens.clone());
        Server {
            addr,
            name,
            handler,
            root,
            tokens,
            serving: tokio::sync::Mutex::new(tracker),
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection; later ones are served.
    pub(crate) fn cut_connections(&self) {
        let mut t = lock(&self.tokens);
        t.epoch.cancel();
        t.epoch = t.generation.child_token();
    }

    /// Closes the listener and every connection, runs `while_down`, then listens again on the
    /// same port.
    pub(crate) async fn restart(&self, while_down: impl FnOnce()) {
        let mut serving = self.serving.lock().await;
        {
            let mut t = lock(&self.tokens);
            t.generation.cancel();
            t.generation = self.root.child_token();
            t.epoch = t.generation.child_token();
        }
        serving.close();
        serving.wait().await;
        while_down();
        let listener = listen(self.addr)
            .unwrap_or_else(|e| panic!("listen again on the {} server's port: {e}", self.name));
        *serving = serve(
            self.name,
            listener,
            self.handler.clone(),
            self.tokens.clone(),
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A listening socket on `addr`, reusable at once after a restart.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves `listener` until the current generation ends.
fn serve(
    name: &'static str,
    listener: TcpListener,
    handler: Handler,
    tokens: Arc<Mutex<Tokens>>,
) -> TaskTracker {
    let tracker = TaskTracker::new();
    let connections = tracker.clone();
    let stop = lock(&tokens).generation.clone();
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, _)) => {
                    // Checked under the lock a restart holds while it replaces the tokens: a
                    // connection accepted as the restart began must not get the next
                    // generation's token, or the restart would wait for it forever.
                    let cut = {
                        let t = lock(&tokens);
                        if stop.is_cancelled() {
                            break;
                        }
                        t.epoch.child_token()
                    };
                    connections.spawn(serve_connection(handler.clone(), tcp, cut));
                }
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted: back
                    // off a little rather than spin.
                    tracing::debug!(error = %e, "{name} server: accept failed");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(10)) => {}
                    }
                }
            }
        }
    });
    tracker
}

/// Serves one connection until the client closes it or `cut` is cancelled, which drops it
/// (mid-response if need be).
async fn serve_connection(handler: Handler, tcp: TcpStream, cut: CancellationToken) {
    let service = hyper::service::service_fn(move |req| {
        let answer = handler(req);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(tcp), service);
    tokio::select! {
        biased;
        () = cut.cancelled() => {}
        _ = conn => {}
    }
}

/// A count that tests can wait on (requests holding, streams open).
#[derive(Clone)]
pub(crate) struct Gauge(watch::Sender<usize>);

impl Default for Gauge {
    fn default() -> Self {
        Self(watch::Sender::new(0))
    }
}

impl Gauge {
    /// Counts one more until the guard drops.
    pub(crate) fn enter(&self) -> GaugeGuard {
        self.0.send_modify(|n| *n += 1);
        GaugeGuard(self.0.clone())
    }

    /// Resolves once the count is at least `n`.
    pub(crate) async fn at_least(&self, n: usize) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|count| *count >= n).await;
    }
}

/// Counts one in a [`Gauge`] while it lives.
pub(crate) struct GaugeGuard(watch::Sender<usize>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The longest `wait` of a blocking query.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// The `wait` of a blocking query that names none.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// The `index` and `wait` of a blocking query.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Blocking {
    /// 0: answer at once.
    pub(crate) index: u64,
    pub(crate) wait: Duration,
}

impl Blocking {
    /// Reads `index` and `wait` (Go duration syntax; default 5 minutes, at most 10).
    pub(crate) fn parse(query: &Query) -> Result<Blocking, String> {
        let index = match query.get("index") {
            None | Some("") => 0,
            Some(i) => i.parse().map_err(|_| "Invalid index".to_owned())?,
        };
        let wait = match query.get("wait") {
            None | Some("") => DEFAULT_WAIT,
            Some(w) => parse_go_duration(w).ok_or_else(|| "Invalid wait time".to_owned())?,
        };
        let wait = if wait.is_zero() { DEFAULT_WAIT } else { wait };
        Ok(Blocking {
            index,
            wait: wait.min(MAX_WAIT),
        })
    }
}

/// Runs `query` (the index the request is about, and its answer) until the index is above
/// the request's, or its wait ends; while holding, counts in `parked`.
pub(crate) async fn block<T>(
    changes: &watch::Sender<u64>,
    parked: &Gauge,
    blocking: &Blocking,
    mut query: impl FnMut() -> (u64, T),
) -> (u64, T) {
    let deadline = tokio::time::Instant::now() + blocking.wait;
    let mut rx = changes.subscribe();
    let mut holding = None;
    loop {
        rx.borrow_and_update();
        let (index, answer) = query();
        if blocking.index == 0 || index > blocking.index {
            return (index, answer);
        }
        if holding.is_none() {
            holding = Some(parked.enter());
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return query();
                }
            }
            () = tokio::time::sleep_until(deadline) => return query(),
        }
    }
}

/// Adds the query meta headers: `<prefix>-Index`, `-KnownLeader` and `-LastContact`.
pub(crate) fn query_meta(mut rsp: Response<Body>, prefix: &str, index: u64) -> Response<Body> {
    let headers = rsp.headers_mut();
    for (name, value) in [
        ("Index", index.to_string()),
        ("KnownLeader", "true".to_owned()),
        ("LastContact", "0".to_owned()),
    ] {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(format!("{prefix}-{name}")),
            HeaderValue::try_from(value),
        ) {
            headers.insert(n, v);
        }
    }
    rsp
}

/// The ACL token of a request: the product's header (`token_header`), else a bearer token.
pub(crate) fn request_token(headers: &HeaderMap, token_header: &str) -> Option<String> {
    let header = headers
        .get(token_header)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let bearer = || {
        headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    header.or_else(bearer).map(str::to_owned)
}

/// A failure injected for the paths under `prefix`.
pub(crate) struct Failure {
    prefix: String,
    status: u16,
    /// `None`: until healed.
    remaining: Option<usize>,
}

impl Failure {
    pub(crate) fn new(prefix: &str, status: u16, times: Option<usize>) -> Self {
        Self {
            prefix: prefix.to_owned(),
            status,
            remaining: times,
        }
    }
}

/// The status of the first failure injected for `path`, if any (counting it down).
pub(crate) fn take_failure(failures: &mut Vec<Failure>, path: &str) -> Option<u16> {
    let i = failures.iter().position(|f| path.starts_with(&f.prefix))?;
    let f = failures.get_mut(i)?;
    let status = f.status;
    if let Some(n) = &mut f.remaining {
        *n = n.saturating_sub(1);
        if *n == 0 {
            failures.remove(i);
        }
    }
    Some(status)
}

pub(crate) fn text(code: StatusCode, msg: &str) -> Response<Body> {
    let mut rsp = Response::new(full(Bytes::from(msg.to_owned())));
    *rsp.status_mut() = code;
    rsp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

pub(crate) fn json_response(code: StatusCode, doc: &Value) -> Response<Body> {
    let mut rsp = Response::new(full(Bytes::from(doc.to_string())));
    *rsp.status_mut() = code;
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rsp
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A query string, decoded.
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(raw: &str) -> Query {
        Query(
            raw.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes a URL component (`+` is a space); malformed escapes are kept as they are.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|c| char::from(*c).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.extend(u8::try_from(hi * 16 + lo));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A duration in Go's syntax (`300ms`, `1.5s`, `1m30s`, `2h`; `0`), as the `wait` parameter
/// takes it. `None` if malformed or negative.
pub(crate) fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        if number.is_empty() || number == "." {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * seconds;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).ok()
}
