//! What the proxy tells about the requests it carries, besides its metrics: spans for
//! distributed tracing and an access log.
//!
//! **Tracing.** Once the mesh names a collector, the proxy continues every sampled trace a
//! request carries (W3C or B3, [`context`]) and starts one for the share of requests without
//! a context that its settings say (per workload, or per route on the caller's side). For
//! each such request it records a span on its side of the hop: `Client` outbound, covering
//! the whole call with its retries; `Server` inbound. A rule with a retry policy adds a
//! `Client` span per attempt, the call's children. The next hop's parent is the proxy's span,
//! so a trace stays whole even when the application forwards the headers unchanged. Spans go
//! to the collector through [`export::Exporter`], which requests never wait for.
//!
//! **Access log.** Where the settings (or `--access-log`) ask for it, the proxy writes a line
//! per request to stderr, common-log-like or JSON ([`access_log`]), from a task of its own:
//! a request only hands its line to a bounded queue.
//!
//! Both happen in the [`Observe`] layer at the top of each side's stack, so what they record
//! is what the client saw. With neither on, the layer costs one atomic load per request.

pub mod access_log;
pub mod context;
pub mod export;
pub mod span;
pub mod tap;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use tokio::time::Instant;
use weft_core::observability::AccessLogFormat;

use self::access_log::{AccessLog, Entry};
use self::context::{Context, SpanId, TraceId};
use self::export::{Collector, Exporter, Source, SpanCounters};
use self::span::{Kind, SpanRecord, Value};
use crate::http::classify::GRPC_STATUS;
use crate::http::{Body, BoxError};
use crate::metrics::Direction;
use crate::runtime::CredentialsWatch;

const TRACING: u8 = 1;
const LOGGING: u8 = 2;

/// What the control plane says about observing this proxy's traffic.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    /// Where spans go; none: no spans.
    pub collector: Option<Collector>,
    /// Of requests without a trace context, the share this proxy starts a trace for, in
    /// millionths.
    pub start_millionths: u32,
    /// The access log the mesh file asks for.
    pub access_log: AccessLogFormat,
    /// The `service.name` of the proxy's spans.
    pub service: String,
    /// Who may tap the proxy besides the control plane.
    pub tap_clients: Vec<String>,
}

/// What is on now.
#[derive(Debug, Default)]
struct Active {
    /// The exporter, with the collector and service name it was started for.
    exporter: Option<(Collector, String, Arc<Exporter>)>,
    start_millionths: u32,
    access_log: AccessLogFormat,
}

/// The proxy's tracer and access log, configured by its settings. See the module docs.
#[derive(Debug)]
pub struct Observer {
    on: AtomicU8,
    active: RwLock<Arc<Active>>,
    counters: SpanCounters,
    credentials: CredentialsWatch,
    /// `--access-log`, which wins over the settings.
    flag: Option<AccessLogFormat>,
    log: AccessLog,
    namespace: String,
    instance: String,
    /// The live taps.
    pub taps: tap::Taps,
    /// Who may tap besides the control plane.
    tap_clients: RwLock<Vec<String>>,
}

impl Observer {
    /// An observer with nothing on but what `flag` (`--access-log`) asks for.
    pub fn new(
        credentials: CredentialsWatch,
        counters: SpanCounters,
        log: AccessLog,
        flag: Option<AccessLogFormat>,
        namespace: String,
        instance: String,
    ) -> Self {
        let this = Self {
            on: AtomicU8::new(0),
            active: RwLock::default(),
            counters,
            credentials,
            flag,
            log,
            namespace,
            instance,
            taps: tap::Taps::default(),
            tap_clients: RwLock::default(),
        };
        this.configure(&Settings::default());
        this
    }

    /// Applies `s`: a new collector starts a new exporter (the old one sends what it holds
    /// and ends).
    pub fn configure(&self, s: &Settings) {
        let mut active = self.active.write().unwrap_or_else(PoisonError::into_inner);
        let exporter = match (&s.collector, active.exporter.as_ref()) {
            (None, _) => None,
            (Some(c), Some((old, service, e))) if old == c && *service == s.service => {
                Some((c.clone(), service.clone(), e.clone()))
            }
            (Some(c), _) => Some(self.spawn(c, &s.service)),
        };
        *self
            .tap_clients
            .write()
            .unwrap_or_else(PoisonError::into_inner) = s.tap_clients.clone();
        let access_log = self.flag.unwrap_or(s.access_log);
        let on = if exporter.is_some() { TRACING } else { 0 }
            | if access_log == AccessLogFormat::Off {
                0
            } else {
                LOGGING
            };
        *active = Arc::new(Active {
            exporter,
            start_millionths: s.start_millionths.min(1_000_000),
            access_log,
        });
        self.on.store(on, Ordering::Release);
    }

    /// Whether `caller` may tap this proxy: the control plane of its trust domain, or an
    /// identity the mesh names.
    pub fn may_tap(&self, caller: &weft_core::Identity) -> bool {
        let Some(creds) = self.credentials.borrow().clone() else {
            return false;
        };
        let own = creds.identity().trust_domain();
        if *caller == weft_core::Identity::control_plane(own) {
            return true;
        }
        let id = caller.spiffe_id();
        self.tap_clients
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&id)
    }

    fn spawn(&self, c: &Collector, service: &str) -> (Collector, String, Arc<Exporter>) {
        let identity = self
            .credentials
            .borrow()
            .as_ref()
            .map(|c| c.identity().spiffe_id());
        let source = Source {
            service: if service.is_empty() {
                self.instance.clone()
            } else {
                service.to_string()
            },
            namespace: self.namespace.clone(),
            instance: self.instance.clone(),
            identity,
        };
        let exporter = Exporter::spawn(c, source, self.credentials.clone(), self.counters.clone());
        (c.clone(), service.to_string(), Arc::new(exporter))
    }

    fn current(&self) -> Option<Arc<Active>> {
        if self.on.load(Ordering::Acquire) == 0 && !self.taps.any() {
            return None;
        }
        Some(
            self.active
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// Whether to start a trace, for a share in millionths.
fn draw(millionths: u32) -> bool {
    millionths > 0 && fastrand::u32(0..1_000_000) < millionths
}

/// The trace a request is part of, as the layers below the [`Observe`] layer see it (a
/// request extension, only on sampled requests).
#[derive(Clone, Debug)]
pub struct Current {
    /// The trace.
    pub trace: TraceId,
    /// The proxy's span for the request (the parent of its attempts' spans).
    pub span: SpanId,
    /// How the request carried its context, to write attempts' parents the same way.
    pub context: Context,
    /// What the layers below learn for the span.
    pub notes: Arc<Notes>,
    /// Where attempts' spans go.
    observer: Arc<Observer>,
}

/// What the layers below the [`Observe`] layer learn about a request: its route, its backend,
/// the peer that answered, its retries.
#[derive(Debug, Default)]
pub struct Notes(Mutex<NotesInner>);

#[derive(Debug, Default, Clone)]
struct NotesInner {
    route: Option<Arc<str>>,
    backend: Option<Arc<str>>,
    peer: Option<Arc<str>>,
    retries: u32,
}

impl Notes {
    fn with(&self, f: impl FnOnce(&mut NotesInner)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The route the request matched (`namespace/name`).
    pub fn route(&self, name: &Arc<str>) {
        self.with(|n| n.route = Some(name.clone()));
    }

    /// The backend it was sent to.
    pub fn backend(&self, name: &Arc<str>) {
        self.with(|n| n.backend = Some(name.clone()));
    }

    /// The identity of the peer that answered (outbound: the endpoint's).
    pub fn peer(&self, identity: &Arc<str>) {
        self.with(|n| n.peer = Some(identity.clone()));
    }

    /// One more retry.
    pub fn retried(&self) {
        self.with(|n| n.retries += 1);
    }

    fn get(&self) -> NotesInner {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Notes where the request is traced, logged or tapped; cheap to call on every request.
pub fn notes<B>(req: &Request<B>) -> Option<&Arc<Notes>> {
    req.extensions().get::<Arc<Notes>>()
}

/// The trace ID of a sampled request, for exemplars.
pub fn trace_id<B>(req: &Request<B>) -> Option<TraceId> {
    req.extensions()
        .get::<Current>()
        .filter(|c| c.context.sampled)
        .map(|c| c.trace)
}

/// A span for one attempt of a traced call: its ID, written into the attempt's headers as
/// the next hop's parent, and what closes it.
#[derive(Debug)]
pub struct AttemptSpan {
    current: Current,
    span: SpanId,
    start: SystemTime,
    n: u32,
}

impl Current {
    /// Starts a span for attempt `n` (0: the first) of the call, with `req` as its request:
    /// its headers name the attempt's span as the next hop's parent.
    pub fn attempt<B>(&self, req: &mut Request<B>, n: u32) -> AttemptSpan {
        let span = SpanId::random();
        context::inject(req.headers_mut(), &self.context, span);
        if n > 0 {
            self.notes.retried();
        }
        AttemptSpan {
            current: self.clone(),
            span,
            start: SystemTime::now(),
            n,
        }
    }
}

impl AttemptSpan {
    /// Ends the span with the attempt's outcome.
    pub fn end(self, outcome: &Result<Response<Body>, BoxError>) {
        let Some(active) = self.current.observer.current() else {
            return;
        };
        let Some((_, _, exporter)) = &active.exporter else {
            return;
        };
        let notes = self.current.notes.get();
        let mut attributes: Vec<(&'static str, Value)> =
            vec![("http.request.resend_count", i64::from(self.n).into())];
        if let Some(p) = &notes.peer {
            attributes.push(("weft.peer.identity", p.to_string().into()));
        }
        if let Some(b) = &notes.backend {
            attributes.push(("weft.backend", b.to_string().into()));
        }
        let error = match outcome {
            Ok(rsp) => {
                attributes.push((
                    "http.response.status_code",
                    i64::from(rsp.status().as_u16()).into(),
                ));
                failure(rsp.status().as_u16(), grpc_status(rsp.headers()))
            }
            Err(e) => Some(e.to_string()),
        };
        exporter.send(SpanRecord {
            trace: self.current.trace,
            span: self.span,
            parent: Some(self.current.span),
            name: format!("attempt {}", self.n),
            kind: Kind::Client,
            start: self.start,
            end: SystemTime::now(),
            attributes,
            error,
        });
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

/// Why a response counts as failed: a 5xx or a gRPC status other than OK.
fn failure(status: u16, grpc: Option<u32>) -> Option<String> {
    match grpc {
        Some(code) if code != 0 => Some(format!("grpc-status {code}")),
        _ if status >= 500 => Some(format!("HTTP {status}")),
        _ => None,
    }
}

/// Which side the layer serves, and what it knows of the connection.
#[derive(Clone, Debug)]
pub enum Side {
    /// Calls the local application makes, to the destination `service` (its name, or the
    /// address it was dialed at).
    Outbound {
        /// The destination, as the span and the log name it.
        service: Arc<str>,
        /// The destination, whose routes may say to start traces.
        dest: Arc<crate::outbound::destination::Lease>,
    },
    /// Requests peers make to the local application.
    Inbound {
        /// The client's identity, if it proved one.
        client: Option<Arc<str>>,
    },
}

/// The layer. See the module docs.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    observer: Arc<Observer>,
    side: Side,
    remote: SocketAddr,
}

impl<S> Observe<S> {
    /// Observes the requests to `inner` of a connection from `remote` on `side`.
    pub fn new(inner: S, observer: Arc<Observer>, side: Side, remote: SocketAddr) -> Self {
        Self {
            inner,
            observer,
            side,
            remote,
        }
    }

    fn direction(&self) -> Direction {
        match self.side {
            Side::Outbound { .. } => Direction::outbound,
            Side::Inbound { .. } => Direction::inbound,
        }
    }

    /// The share of context-less requests like `req` that start a trace.
    fn start_share(&self, active: &Active, req: &Request<Body>) -> u32 {
        if let Side::Outbound { dest, .. } = &self.side {
            let routes = dest.routes.borrow().clone();
            if let Some(share) = crate::outbound::route::trace_start(&routes, req) {
                return share;
            }
        }
        active.start_millionths
    }
}

type BoxFuture<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

impl<S> tower::Service<Request<Body>> for Observe<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Error: std::fmt::Display + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures_util::future::Either<S::Future, BoxFuture<S::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        use futures_util::future::Either;
        let Some(active) = self.observer.current() else {
            return Either::Left(self.inner.call(req));
        };
        // The span, if the request is traced.
        let mut traced = None;
        if active.exporter.is_some() {
            let ctx = match context::extract(req.headers()) {
                Some(c) => Some(c),
                None => draw(self.start_share(&active, &req)).then(Context::start),
            };
            if let Some(ctx) = ctx.filter(|c| c.sampled) {
                let span = SpanId::random();
                context::inject(req.headers_mut(), &ctx, span);
                traced = Some((ctx, span));
            }
        }
        let logged = active.access_log != AccessLogFormat::Off;
        let tapped = self.observer.taps.any();
        if traced.is_none() && !logged && !tapped {
            return Either::Left(self.inner.call(req));
        }
        let notes = Arc::new(Notes::default());
        req.extensions_mut().insert(notes.clone());
        if let Some((ctx, span)) = traced {
            req.extensions_mut().insert(Current {
                trace: ctx.trace,
                span,
                context: ctx,
                notes: notes.clone(),
                observer: self.observer.clone(),
            });
        }
        let record = Record {
            direction: self.direction(),
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            authority: authority(&req),
            version: original_version(&req),
            grpc: crate::errors::is_grpc(&req),
            remote: self.remote,
            client: match &self.side {
                Side::Inbound { client } => client.clone(),
                Side::Outbound { .. } => None,
            },
            service: match &self.side {
                Side::Outbound { service, .. } => Some(service.clone()),
                Side::Inbound { .. } => None,
            },
            request_bytes: http_body::Body::size_hint(req.body()).exact(),
            traced,
            notes,
            started: Instant::now(),
            started_at: SystemTime::now(),
            log: logged.then_some(active.access_log),
            observer: self.observer.clone(),
            tap_headers: if tapped {
                tap::HEADERS
                    .iter()
                    .filter_map(|h| {
                        let v = req.headers().get(*h)?.to_str().ok()?;
                        Some((*h, v.chars().take(256).collect()))
                    })
                    .collect()
            } else {
                Vec::new()
            },
        };
        let fut = self.inner.call(req);
        Either::Right(Box::pin(futures_util::FutureExt::map(
            fut,
            move |result| match result {
                Ok(rsp) => {
                    let head = Head {
                        status: rsp.status().as_u16(),
                        grpc: grpc_status(rsp.headers()),
                        first_byte: record.started.elapsed(),
                    };
                    let (parts, body) = rsp.into_parts();
                    let body = Body::new(ObservedBody {
                        inner: body,
                        bytes: 0,
                        done: Some((record, head)),
                    });
                    Ok(Response::from_parts(parts, body))
                }
                Err(e) => {
                    record.finish(None, 0, Some(e.to_string()));
                    Err(e)
                }
            },
        )))
    }
}

/// The version the client sent: an HTTP/1 request another proxy carried over HTTP/2 says
/// which it was.
fn original_version(req: &Request<Body>) -> http::Version {
    match req.headers().get(crate::http::ORIG_PROTO) {
        Some(v) if v == "HTTP/1.0" => http::Version::HTTP_10,
        Some(_) => http::Version::HTTP_11,
        None => req.version(),
    }
}

fn authority(req: &Request<Body>) -> String {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// What the layer keeps of a request until its response has ended.
struct Record {
    direction: Direction,
    method: http::Method,
    path: String,
    authority: String,
    version: http::Version,
    grpc: bool,
    remote: SocketAddr,
    client: Option<Arc<str>>,
    service: Option<Arc<str>>,
    request_bytes: Option<u64>,
    traced: Option<(Context, SpanId)>,
    notes: Arc<Notes>,
    started: Instant,
    started_at: SystemTime,
    log: Option<AccessLogFormat>,
    observer: Arc<Observer>,
    /// The allowlisted request headers, when a tap was open.
    tap_headers: Vec<(&'static str, String)>,
}

/// The response head, as the record needs it.
#[derive(Clone, Copy)]
struct Head {
    status: u16,
    grpc: Option<u32>,
    first_byte: std::time::Duration,
}

impl Record {
    /// Ends the span and writes the log line: `head` is the response's (none: no response),
    /// `grpc_trailer` the status its trailers carried.
    fn finish(self, head: Option<Head>, bytes: u64, error: Option<String>) {
        let notes = self.notes.get();
        let duration = self.started.elapsed();
        let grpc_code = head.and_then(|h| h.grpc);
        let failed = match (head, &error) {
            (_, Some(e)) => Some(e.clone()),
            (Some(h), None) => failure(h.status, grpc_code),
            (None, None) => Some("no response".into()),
        };
        if let Some((ctx, span)) = self.traced
            && let Some(active) = self.observer.current()
            && let Some((_, _, exporter)) = &active.exporter
        {
            exporter.send(self.span(ctx, span, head, &notes, failed));
        }
        if self.observer.taps.any() {
            self.tap(head, &notes, duration);
        }
        if let Some(format) = self.log {
            self.observer.log.write(
                format,
                Entry {
                    at: self.started_at,
                    direction: self.direction,
                    client_addr: self.remote,
                    client_identity: self.client.as_deref(),
                    method: self.method.as_str(),
                    path: &self.path,
                    authority: &self.authority,
                    version: self.version,
                    status: head.map(|h| h.status),
                    grpc_status: grpc_code,
                    request_bytes: self.request_bytes,
                    response_bytes: bytes,
                    first_byte: head.map(|h| h.first_byte),
                    duration,
                    trace_id: self.traced.map(|(c, _)| c.trace),
                    route: notes.route.as_deref(),
                    service: self.service.as_deref(),
                    backend: notes.backend.as_deref(),
                    // Inbound, the peer is the client, named above.
                    peer_identity: match self.direction {
                        Direction::outbound => notes.peer.as_deref(),
                        Direction::inbound => None,
                    },
                },
            );
        }
    }

    /// Offers the request to the open taps.
    fn tap(&self, head: Option<Head>, notes: &NotesInner, duration: std::time::Duration) {
        let workload = format!("{}/{}", self.observer.namespace, self.observer.instance);
        let own = self
            .observer
            .credentials
            .borrow()
            .as_ref()
            .map(|c| c.identity().spiffe_id());
        let (source, destination_identity, destination) = match self.direction {
            Direction::inbound => (
                self.client.as_deref().map(str::to_string),
                own,
                workload.clone(),
            ),
            Direction::outbound => (
                own,
                notes
                    .peer
                    .as_deref()
                    .filter(|p| *p != "-")
                    .map(str::to_string),
                self.service.as_deref().unwrap_or_default().to_string(),
            ),
        };
        let seen = tap::Seen {
            method: self.method.as_str(),
            path: &self.path,
            authority: &self.authority,
            source: source.as_deref(),
            destination: &destination,
        };
        let at = self
            .started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        for w in self.observer.taps.open() {
            w.offer(&seen, || weft_api::TapEvent {
                at_unix_ms: at,
                direction: match self.direction {
                    Direction::inbound => "inbound",
                    Direction::outbound => "outbound",
                }
                .into(),
                method: self.method.to_string(),
                path: self.path.clone(),
                authority: self.authority.clone(),
                status: head.map_or(0, |h| u32::from(h.status)),
                grpc_status: head
                    .and_then(|h| h.grpc)
                    .and_then(|g| i32::try_from(g).ok())
                    .unwrap_or(-1),
                latency_ms: duration.as_secs_f64() * 1e3,
                source_identity: source.clone().unwrap_or_default(),
                destination_identity: destination_identity.clone().unwrap_or_default(),
                destination: destination.clone(),
                route: notes.route.as_deref().unwrap_or_default().to_string(),
                backend: notes.backend.as_deref().unwrap_or_default().to_string(),
                headers: self
                    .tap_headers
                    .iter()
                    .map(|(k, v)| weft_api::Label {
                        name: (*k).to_string(),
                        value: v.clone(),
                    })
                    .collect(),
                mtls: match self.direction {
                    Direction::inbound => self.client.is_some(),
                    Direction::outbound => destination_identity.is_some(),
                },
                workload: workload.clone(),
                dropped: 0,
                trace_id: self.traced.map(|(c, _)| c.trace.hex()).unwrap_or_default(),
            });
        }
    }

    fn span(
        &self,
        ctx: Context,
        span: SpanId,
        head: Option<Head>,
        notes: &NotesInner,
        error: Option<String>,
    ) -> SpanRecord {
        let mut a: Vec<(&'static str, Value)> = Vec::with_capacity(12);
        let (kind, direction) = match self.direction {
            Direction::outbound => (Kind::Client, "outbound"),
            Direction::inbound => (Kind::Server, "inbound"),
        };
        a.push(("weft.direction", direction.into()));
        let name = if self.grpc {
            // `/package.Service/Method`.
            let mut parts = self.path.trim_start_matches('/').splitn(2, '/');
            let service = parts.next().unwrap_or_default();
            let method = parts.next().unwrap_or_default();
            a.push(("rpc.system", "grpc".into()));
            a.push(("rpc.service", service.into()));
            a.push(("rpc.method", method.into()));
            if let Some(code) = head.and_then(|h| h.grpc) {
                a.push(("rpc.grpc.status_code", i64::from(code).into()));
            }
            format!("{service}/{method}")
        } else {
            match &notes.route {
                Some(r) => format!("{} {r}", self.method),
                None => self.method.to_string(),
            }
        };
        a.push(("http.request.method", self.method.as_str().into()));
        a.push(("url.path", self.path.clone().into()));
        a.push(("server.address", self.authority.clone().into()));
        a.push((
            "network.protocol.version",
            match self.version {
                http::Version::HTTP_2 => "2",
                http::Version::HTTP_10 => "1.0",
                _ => "1.1",
            }
            .into(),
        ));
        if let Some(h) = head {
            a.push(("http.response.status_code", i64::from(h.status).into()));
        }
        match self.direction {
            Direction::inbound => {
                a.push(("client.address", self.remote.ip().to_string().into()));
                if let Some(c) = &self.client {
                    a.push(("weft.peer.identity", c.to_string().into()));
                }
            }
            Direction::outbound => {
                if let Some(p) = &notes.peer {
                    a.push(("weft.peer.identity", p.to_string().into()));
                }
            }
        }
        if let Some(s) = &self.service {
            a.push(("weft.service", s.to_string().into()));
        }
        if let Some(r) = &notes.route {
            a.push(("weft.route", r.to_string().into()));
        }
        if let Some(b) = &notes.backend {
            a.push(("weft.backend", b.to_string().into()));
        }
        if notes.retries > 0 {
            a.push(("weft.retries", i64::from(notes.retries).into()));
        }
        SpanRecord {
            trace: ctx.trace,
            span,
            parent: ctx.parent,
            name,
            kind,
            start: self.started_at,
            end: SystemTime::now(),
            attributes: a,
            error,
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request's span and log line when it ends, fails or is
    /// dropped, with the bytes it carried and a gRPC status from its trailers.
    struct ObservedBody {
        #[pin]
        inner: Body,
        bytes: u64,
        done: Option<(Record, Head)>,
    }

    impl PinnedDrop for ObservedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some((record, head)) = this.done.take() {
                record.finish(Some(head), *this.bytes, None);
            }
        }
    }
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    *this.bytes += d.len() as u64;
                } else if let Some(t) = f.trailers_ref()
                    && let Some((_, head)) = this.done.as_mut()
                    && let Some(code) = grpc_status(t)
                {
                    head.grpc = Some(code);
                }
            }
            Some(Err(e)) => {
                if let Some((record, head)) = this.done.take() {
                    record.finish(Some(head), *this.bytes, Some(e.to_string()));
                }
            }
            None => {
                if let Some((record, head)) = this.done.take() {
                    record.finish(Some(head), *this.bytes, None);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
