//! Real servers on loopback for the proxies to front: HTTP/1.1 + HTTP/2 echo, gRPC (unary and
//! server streaming, with trailers), WebSocket echo, TCP echo, a server-speaks-first TCP
//! service, and servers that end connections the way real ones do: an HTTP/1.1 server closing
//! kept-alive connections without notice, an HTTP/2 server sending GOAWAY and refusing streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tonic::{Status, Streaming};
use weft_api::v1::discovery_server::{Discovery, DiscoveryServer};
use weft_api::v1::identity_server::{Identity, IdentityServer};
use weft_api::{
    CertifyRequest, CertifyResponse, ProxyRequest, ProxySettings, ResolveRequest, ResolveUpdate,
};

const LOOPBACK_ANY_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

async fn listen_at(addr: SocketAddr) -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind(addr).await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// Binds a loopback port and runs `conn` on each accepted connection in a task of its own.
async fn serve_each<F, Fut>(conn: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    serve_each_at(LOOPBACK_ANY_PORT, conn).await
}

/// Binds `addr` and runs `conn` on each accepted connection in a task of its own.
async fn serve_each_at<F, Fut>(addr: SocketAddr, conn: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (l, addr) = listen_at(addr).await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(conn(tcp));
        }
    });
    addr
}

/// What a backend saw: connections accepted, requests answered (by request target when the
/// backend reads it), and the faults it caused on purpose.
#[derive(Debug, Default)]
pub struct Tally {
    connections: AtomicUsize,
    answered: AtomicUsize,
    targets: Mutex<HashMap<String, u32>>,
    faults: AtomicUsize,
}

impl Tally {
    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests answered.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// How many times each request target was answered.
    pub fn targets(&self) -> HashMap<String, u32> {
        self.targets.lock().unwrap().clone()
    }

    /// Connections closed without notice, streams refused, GOAWAY frames sent.
    pub fn faults(&self) -> usize {
        self.faults.load(Ordering::SeqCst)
    }

    /// Counts an answer; how many times its target has now been answered.
    fn answer(&self, target: Option<&str>) -> u32 {
        self.answered.fetch_add(1, Ordering::SeqCst);
        let Some(t) = target else { return 0 };
        let mut targets = self.targets.lock().unwrap();
        let n = targets.entry(t.to_string()).or_default();
        *n += 1;
        *n
    }

    fn fault(&self) {
        self.faults.fetch_add(1, Ordering::SeqCst);
    }
}

/// Like [`serve_each`], counting accepted connections in the returned tally.
async fn serve_each_tallied<F, Fut>(conn: F) -> (SocketAddr, Arc<Tally>)
where
    F: Fn(TcpStream, Arc<Tally>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    serve_each_tallied_at(LOOPBACK_ANY_PORT, conn).await
}

async fn serve_each_tallied_at<F, Fut>(addr: SocketAddr, conn: F) -> (SocketAddr, Arc<Tally>)
where
    F: Fn(TcpStream, Arc<Tally>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tally = Arc::new(Tally::default());
    let t = tally.clone();
    let addr = serve_each_at(addr, move |tcp| {
        t.connections.fetch_add(1, Ordering::SeqCst);
        conn(tcp, t.clone())
    })
    .await;
    (addr, tally)
}

/// An HTTP/1.1 and HTTP/2 server that answers with what it received: a `x-backend: <name>`
/// header, an `x-peer` header with the address the connection came from, and a body of `METHOD URI VERSION`, the headers (one per line), a blank line and
/// the request body.
pub async fn http_echo(name: &'static str) -> SocketAddr {
    http_echo_tallied(name).await.0
}

/// An HTTP server that holds every request to `/held` until `release` is notified (once per
/// request), answering the rest at once; `200` with body `name`, and `x-backend: name`.
/// Signals `arrived` when a held request comes in.
pub async fn http_gated(
    name: &'static str,
) -> (
    SocketAddr,
    Arc<tokio::sync::Semaphore>,
    Arc<tokio::sync::Notify>,
) {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (r, a) = (release.clone(), arrived.clone());
    let addr = serve_each(move |tcp| {
        let (release, arrived) = (r.clone(), a.clone());
        async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (release, arrived) = (release.clone(), arrived.clone());
                async move {
                    if req.uri().path() == "/held" {
                        arrived.notify_one();
                        if let Ok(permit) = release.acquire().await {
                            permit.forget();
                        }
                    }
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("x-backend", name)
                            .body(Full::new(Bytes::from(name)))
                            .unwrap(),
                    )
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
        }
    })
    .await;
    (addr, release, arrived)
}

/// [`http_echo`], counting connections and requests (by path and query).
pub async fn http_echo_tallied(name: &'static str) -> (SocketAddr, Arc<Tally>) {
    http_echo_at(name, LOOPBACK_ANY_PORT).await
}

/// [`http_echo_tallied`] on `addr`.
pub async fn http_echo_at(name: &'static str, addr: SocketAddr) -> (SocketAddr, Arc<Tally>) {
    echo_failing_at(name, addr, 0, 200).await
}

/// [`http_echo_tallied`] that answers `status` (with `x-backend`) to the first `fail`
/// requests for each request target (path and query), after reading each whole.
pub async fn http_echo_failing(
    name: &'static str,
    fail: u32,
    status: u16,
) -> (SocketAddr, Arc<Tally>) {
    echo_failing_at(name, LOOPBACK_ANY_PORT, fail, status).await
}

async fn echo_failing_at(
    name: &'static str,
    addr: SocketAddr,
    fail: u32,
    failing: u16,
) -> (SocketAddr, Arc<Tally>) {
    serve_each_tallied_at(addr, move |tcp, tally| async move {
        let peer = tcp
            .peer_addr()
            .map_or_else(|e| e.to_string(), |a| a.ip().to_string());
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let tally = tally.clone();
            let peer = peer.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut out = format!("{} {} {:?}\n", parts.method, parts.uri, parts.version);
                for (k, v) in &parts.headers {
                    out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                }
                out.push('\n');
                let mut out = out.into_bytes();
                out.extend_from_slice(&body);
                let n = tally.answer(parts.uri.path_and_query().map(|p| p.as_str()));
                let status = if n <= fail { failing } else { 200 };
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .header("x-backend", name)
                        .header("x-peer", peer)
                        .body(Full::new(Bytes::from(out)))
                        .unwrap(),
                )
            }
        });
        let builder = auto::Builder::new(TokioExecutor::new());
        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
    })
    .await
}

/// An HTTP/1.1 server that answers `n` requests on each connection (`200`, body `ok`) and then
/// closes it without a word: no `Connection: close` warned that the last response was the
/// last, so a client that keeps connections alive holds a dead one. Request bodies must have a
/// `content-length`.
///
/// The FIN travels in the same segment as the last response. Sent a moment later, it could
/// reach a proxy after the proxy had written the next request on the connection, and nobody can
/// tell then whether the application read that request: the proxy rightly reports an error
/// instead of sending it twice, and a test of "no request lost" would depend on the scheduler.
pub async fn http1_closing_after(n: usize) -> (SocketAddr, Arc<Tally>) {
    serve_each_tallied(move |tcp, tally| async move {
        let mut io = BufReader::new(tcp);
        for i in 0..n {
            let Some(target) = read_http1_request(&mut io).await else {
                return;
            };
            tally.answer(Some(&target));
            if i + 1 == n {
                // Held back until the shutdown below adds the FIN to it.
                let _ = socket2::SockRef::from(io.get_ref()).set_tcp_cork(true);
            }
            if io
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .is_err()
            {
                return;
            }
        }
        tally.fault();
        let _ = io.get_mut().shutdown().await;
    })
    .await
}

/// Reads one HTTP/1.1 request; returns its target, or `None` when the connection ended.
async fn read_http1_request(io: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    if io.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let target = line.split(' ').nth(1)?.to_string();
    let mut length = 0;
    loop {
        line.clear();
        if io.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    io.read_exact(&mut body).await.ok()?;
    Some(target)
}

/// An HTTP/2 server (prior knowledge) that behaves as nginx does when a connection reaches its
/// `keepalive_requests`: after answering `n` requests on a connection (`200`, body `ok`), it
/// sends GOAWAY naming the last stream it received and silently ignores every later stream,
/// which a client may already have sent. It also refuses the `refuse_at`-th stream of each
/// connection (REFUSED_STREAM), as a server at its concurrency limit does. Refused and ignored streams were
/// never processed; only answered ones are counted. Written on raw frames, as no server library
/// lets GOAWAY leave out streams it has received; it never decodes headers, so requests are
/// counted, not told apart.
pub async fn http2_goaway_after(n: usize, refuse_at: usize) -> (SocketAddr, Arc<Tally>) {
    serve_each_tallied(move |tcp, tally| async move {
        let _ = h2_goaway_conn(tcp, n, refuse_at, false, &tally).await;
    })
    .await
}

/// Like [`http2_goaway_after`] without refusals, except that the GOAWAY comes on receiving the
/// `n`-th request instead of after answering it, and names the stream before it as the last:
/// the `n`-th request of each connection is never processed, and its client learns so only
/// from the GOAWAY. Deterministic where the other leaves it to timing whether a request is
/// caught above the GOAWAY.
pub async fn http2_goaway_excluding(n: usize) -> (SocketAddr, Arc<Tally>) {
    serve_each_tallied(move |tcp, tally| async move {
        let _ = h2_goaway_conn(tcp, n, 0, true, &tally).await;
    })
    .await
}

async fn h2_goaway_conn(
    tcp: TcpStream,
    n: usize,
    refuse_at: usize,
    exclude_nth: bool,
    tally: &Tally,
) -> std::io::Result<()> {
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const RST_STREAM: u8 = 3;
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const GOAWAY: u8 = 7;
    const WINDOW_UPDATE: u8 = 8;
    const CONTINUATION: u8 = 9;
    const END_STREAM: u8 = 0x1;
    const ACK: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const REFUSED_STREAM: u32 = 0x7;
    fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }
    fn answer(out: &mut Vec<u8>, stream: u32) {
        // 0x88: `:status: 200` from the HPACK static table.
        frame(out, HEADERS, END_HEADERS, stream, &[0x88]);
        frame(out, DATA, END_STREAM, stream, b"ok");
    }

    // Frames go out as they are written, as a real server's do; Nagle would hold small ones.
    let _ = tcp.set_nodelay(true);
    let (rd, mut wr) = tcp.into_split();
    let mut rd = BufReader::new(rd);
    let mut preface = [0u8; 24];
    rd.read_exact(&mut preface).await?;
    if &preface != b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
        return Ok(());
    }
    let mut out = Vec::new();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    wr.write_all(&out).await?;

    let mut seen = 0; // streams received, refused or not
    let mut answered = 0;
    let mut last_received = 0u32;
    let mut goaway: Option<u32> = None;
    // A header block continued in CONTINUATION frames: its stream and END_STREAM flag.
    let mut continued: Option<(u32, bool)> = None;
    // Streams whose request body is still arriving.
    let mut with_body: Vec<u32> = Vec::new();
    loop {
        let mut head = [0u8; 9];
        if rd.read_exact(&mut head).await.is_err() {
            return Ok(()); // The client closed the connection.
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        rd.read_exact(&mut payload).await?;
        out.clear();
        let mut complete = None; // a request whose last frame just arrived
        match kind {
            SETTINGS if flags & ACK == 0 => frame(&mut out, SETTINGS, ACK, 0, &[]),
            PING if flags & ACK == 0 => frame(&mut out, PING, ACK, 0, &payload),
            HEADERS | CONTINUATION => {
                let (id, end_stream) = match (kind, continued.take()) {
                    (HEADERS, _) => (stream, flags & END_STREAM != 0),
                    (_, Some(c)) => c,
                    (_, None) => continue,
                };
                if flags & END_HEADERS == 0 {
                    continued = Some((id, end_stream));
                    continue;
                }
                if goaway.is_some_and(|last| id > last) {
                    continue; // After GOAWAY: ignored, never processed.
                }
                if exclude_nth && seen + 1 == n && goaway.is_none() {
                    // GOAWAY naming the stream before this one: this one is never processed.
                    tally.fault();
                    let mut body = last_received.to_be_bytes().to_vec();
                    body.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
                    frame(&mut out, GOAWAY, 0, 0, &body);
                    goaway = Some(last_received);
                    wr.write_all(&out).await?;
                    continue;
                }
                last_received = id;
                seen += 1;
                if seen == refuse_at {
                    tally.fault();
                    frame(&mut out, RST_STREAM, 0, id, &REFUSED_STREAM.to_be_bytes());
                } else if end_stream {
                    complete = Some(id);
                } else {
                    with_body.push(id);
                }
            }
            DATA => {
                if len > 0 {
                    let credit = (len as u32).to_be_bytes();
                    frame(&mut out, WINDOW_UPDATE, 0, 0, &credit);
                    frame(&mut out, WINDOW_UPDATE, 0, stream, &credit);
                }
                if flags & END_STREAM != 0
                    && let Some(i) = with_body.iter().position(|s| *s == stream)
                {
                    with_body.swap_remove(i);
                    complete = Some(stream);
                }
            }
            _ => {}
        }
        if let Some(id) = complete {
            tally.answer(None);
            answer(&mut out, id);
            answered += 1;
            if !exclude_nth && answered == n && goaway.is_none() {
                tally.fault();
                let mut body = last_received.to_be_bytes().to_vec();
                body.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
                frame(&mut out, GOAWAY, 0, 0, &body);
                goaway = Some(last_received);
            }
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
        }
    }
}

/// A gRPC server reusing the API's generated services as a test protocol: `Certify` echoes
/// the CSR bytes back as the leaf (unary); `Resolve` streams three messages (see [`numbered`]), or
/// with `x-fail-midway` metadata one message and then an error status in the trailers.
pub async fn grpc_backend() -> SocketAddr {
    grpc_backend_at(LOOPBACK_ANY_PORT).await
}

/// [`grpc_backend`] on `addr`.
pub async fn grpc_backend_at(addr: SocketAddr) -> SocketAddr {
    grpc_named_at("echo", addr).await
}

/// [`grpc_backend`] on `addr`, whose `Certify` answers also say who answered (`identity` is
/// `name`) and what request headers it received (`chain`, one `name: value` each).
pub async fn grpc_named_at(name: &'static str, addr: SocketAddr) -> SocketAddr {
    #[derive(Debug)]
    struct Echo(&'static str);
    #[tonic::async_trait]
    impl Identity for Echo {
        async fn certify(
            &self,
            req: tonic::Request<CertifyRequest>,
        ) -> Result<tonic::Response<CertifyResponse>, Status> {
            let headers = req
                .metadata()
                .clone()
                .into_headers()
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")).into_bytes())
                .collect();
            let r = req.into_inner();
            if r.csr == b"fail" {
                return Err(Status::failed_precondition("asked to fail"));
            }
            Ok(tonic::Response::new(CertifyResponse {
                identity: self.0.into(),
                leaf: r.csr,
                chain: headers,
                ..Default::default()
            }))
        }
    }
    type Updates = Pin<Box<dyn Stream<Item = Result<ResolveUpdate, Status>> + Send>>;
    type Settings = Pin<Box<dyn Stream<Item = Result<ProxySettings, Status>> + Send>>;
    #[tonic::async_trait]
    impl Discovery for Echo {
        type ResolveStream = Updates;
        type ProxyStream = Settings;
        /// Streams three messages whose `denied.reason` counts 1, 2, 3.
        async fn resolve(
            &self,
            req: tonic::Request<ResolveRequest>,
        ) -> Result<tonic::Response<Updates>, Status> {
            // `x-fail-midway` asks for one message, then an error in the trailers.
            let fail = req.metadata().contains_key("x-fail-midway");
            let items = (1..=3).map(move |v| {
                if fail && v == 2 {
                    return Err(Status::aborted("failed midway"));
                }
                Ok(numbered(v))
            });
            let items: Vec<_> = if fail {
                items.take(2).collect()
            } else {
                items.collect()
            };
            Ok(tonic::Response::new(Box::pin(futures_util::stream::iter(
                items,
            ))))
        }
        async fn proxy(
            &self,
            _: tonic::Request<ProxyRequest>,
        ) -> Result<tonic::Response<Settings>, Status> {
            Err(Status::unimplemented("not an echo"))
        }
    }
    let (l, addr) = listen_at(addr).await;
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(IdentityServer::new(Echo(name)))
            .add_service(DiscoveryServer::new(Echo(name)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
            .unwrap();
    });
    addr
}

/// A WebSocket server that echoes every message.
pub async fn ws_echo() -> SocketAddr {
    serve_each(|tcp| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() || ws.send(msg).await.is_err() {
                break;
            }
        }
    })
    .await
}

/// A TCP server that echoes bytes.
pub async fn tcp_echo() -> SocketAddr {
    serve_each(|mut tcp| async move {
        let (mut r, mut w) = tcp.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

/// A TCP server that speaks first (like SMTP or MySQL): it greets, then echoes one line.
pub async fn server_first() -> SocketAddr {
    serve_each(|mut tcp| async move {
        let _ = tcp.write_all(b"220 hello from the server\r\n").await;
        let mut buf = [0u8; 256];
        if let Ok(n) = tcp.read(&mut buf).await {
            let _ = tcp.write_all(&buf[..n]).await;
        }
    })
    .await
}

/// Drains a gRPC server stream into its messages.
pub async fn collect<T>(mut s: Streaming<T>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        out.push(m);
    }
    out
}

/// The `n`th message of the gRPC backend's stream.
pub fn numbered(n: u32) -> ResolveUpdate {
    ResolveUpdate {
        update: Some(weft_api::v1::resolve_update::Update::Denied(
            weft_api::Denied {
                reason: n.to_string(),
            },
        )),
    }
}
