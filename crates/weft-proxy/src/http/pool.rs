//! A bounded pool of plaintext HTTP connections to one address: the local application behind
//! the inbound listener, or one unmeshed endpoint outbound.
//!
//! Nothing but the address decides which connection carries a request. The `Host` header and
//! `:authority` belong to the peer and reach the application untouched, but a pool keyed by
//! them (as a generic client's is) lets a peer open, and keep open, one connection to the
//! application per distinct value it sends.
//!
//! - HTTP/1.1: a keep-alive connection is checked out for one request and checked back in
//!   once the response body has ended. At most [`PoolLimits::max_idle`] wait, the most
//!   recently used taken first, so that the rest age out; an idle connection is closed after
//!   [`PoolLimits::idle_timeout`].
//! - HTTP/2: one multiplexed connection carries every request; it is opened again once it
//!   closes or the application sends GOAWAY.
//!
//! A request the application cannot have seen comes back from [`PlainPool::try_send`] as
//! [`TrySendError::NotSent`], with the request, for whoever decides to send it again
//! ([`super::resend`] does so at most [`RETRIES`] times; each attempt is one call, so a retry
//! layer above counts every attempt once). That is: one the connection handed back unsent (it
//! closed before the request was written, as a keep-alive connection does that the
//! application closed a moment before), which goes again on a new connection; over HTTP/2, one
//! with an idempotent method that failed with the application's GOAWAY (hyper cannot say
//! whether such a stream was above the GOAWAY's last stream: one it was opening when the GOAWAY
//! arrived fails too, and may still be processed, so a non-idempotent one is not handed back);
//! and one it refused (REFUSED_STREAM), which goes again on the shared connection if that is
//! still open. Hyper consumes a request it has sent, so the HTTP/2 refusals are handed back only
//! when the request has no body: the pool keeps a copy of the head of each bodiless HTTP/2
//! request until its response arrives. What the next attempt needs to know (a new connection,
//! or not the one that failed) rides in the request's extensions.
//!
//! A request that may have reached the application is never sent twice: it could have had
//! effects. That includes an HTTP/1.1 request written on a kept-alive connection whose FIN from
//! the application arrived just after: the application may have read it, or not; it fails with
//! a 502. [`PoolLimits::idle_timeout`] keeps this window away from the usual idle timeouts of
//! applications.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Body, absolute_uri, boxed};

/// How many times a request the application cannot have seen is sent again.
pub const RETRIES: usize = 2;

/// Bounds of a [`PlainPool`].
#[derive(Clone, Copy, Debug)]
pub struct PoolLimits {
    /// How long a TCP connection may take to be accepted.
    pub connect_timeout: Duration,
    /// How many idle HTTP/1.1 connections are kept.
    pub max_idle: usize,
    /// How long an HTTP/1.1 connection is kept idle before it is closed.
    pub idle_timeout: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            max_idle: 32,
            // Below the 5 s after which Node.js servers close idle connections by default:
            // reusing a connection the application is closing at that moment is the one case
            // where a request can be lost (see the module docs).
            idle_timeout: Duration::from_secs(4),
        }
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No TCP connection could be opened; nothing was sent.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP handshake failed (HTTP/2 sends its preface); nothing was sent.
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
    /// The request failed after it may have been sent.
    #[error("{}", with_cause(source))]
    Request {
        /// The cause.
        #[source]
        source: hyper::Error,
    },
    /// The request was handed back unsent at every attempt.
    #[error("not sent after {attempts} attempts: {}", with_cause(source))]
    NotSent {
        /// How many times it was tried.
        attempts: usize,
        /// Why the last attempt was handed back.
        #[source]
        source: hyper::Error,
    },
    /// The request has no authority and none could be made for it.
    #[error("bad request target: {0}")]
    Target(#[from] http::Error),
}

/// Why one attempt got no response.
pub enum TrySendError {
    /// The application cannot have seen the request: here it is, to go again.
    NotSent {
        /// The request, ready for its next attempt.
        request: Request<Body>,
        /// Why it came back.
        cause: hyper::Error,
    },
    /// It failed, and must not go again (see [`PoolError`]).
    Failed(PoolError),
}

impl std::fmt::Debug for TrySendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotSent { cause, .. } => f.debug_struct("NotSent").field("cause", cause).finish(),
            Self::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl From<PoolError> for TrySendError {
    fn from(e: PoolError) -> Self {
        Self::Failed(e)
    }
}

/// What the next attempt of a request handed back unsent must avoid.
#[derive(Clone, Copy, Debug, Default)]
struct ResendHint {
    /// HTTP/1: take a new connection, not an idle one (they may all have been closed together,
    /// as when the application restarted).
    fresh: bool,
    /// HTTP/2: not this connection (it handed the request back, or sent GOAWAY).
    not_h2: Option<u64>,
}

/// Hyper's error and its cause: hyper says only "http2 error" where h2 names the reason.
fn with_cause(e: &hyper::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

impl PoolError {
    /// Whether the address could not be reached at all.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Handshake { .. })
    }

    /// Whether the request may go again.
    pub fn retry_safe(&self) -> crate::errors::RetrySafe {
        use crate::errors::RetrySafe;
        match self {
            Self::Connect { .. } | Self::Handshake { .. } | Self::NotSent { .. } => {
                RetrySafe::NotSent
            }
            Self::Request { .. } => RetrySafe::IfIdempotent,
            Self::Target(_) => RetrySafe::No,
        }
    }
}

/// Connections to one plaintext address; cheap to clone, clones share the connections.
#[derive(Clone)]
pub struct PlainPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PlainPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainPool")
            .field("addr", &self.inner.addr)
            .field("limits", &self.inner.limits)
            .finish()
    }
}

struct Inner {
    addr: SocketAddr,
    /// The address connections are opened from, when not the system's choice.
    source: Option<IpAddr>,
    limits: PoolLimits,
    idle: Mutex<IdleList>,
    /// The shared HTTP/2 connection: its number, handle, and end.
    h2: Mutex<Option<H2Conn>>,
    /// Held while an HTTP/2 connection is being opened, so that concurrent requests wait for
    /// one handshake instead of each opening a connection.
    h2_opening: tokio::sync::Mutex<()>,
    h2_opened: AtomicU64,
}

type H2Conn = (u64, http2::SendRequest<Body>, Arc<Ended>);

/// Set once a connection's task has ended.
#[derive(Default)]
struct Ended {
    ended: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Ended {
    fn set(&self) {
        self.ended.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        let notified = self.notify.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the flag is read, so that no `set` falls in between.
        notified.as_mut().enable();
        if !self.ended.load(Ordering::Acquire) {
            notified.await;
        }
    }
}

#[derive(Default)]
struct IdleList {
    /// Oldest first.
    conns: VecDeque<(Instant, http1::SendRequest<Body>)>,
    /// Whether a task is closing expired connections.
    reaping: bool,
}

impl PlainPool {
    /// A pool of connections to `addr`.
    pub fn new(addr: SocketAddr, limits: PoolLimits) -> Self {
        Self::from_source(addr, None, limits)
    }

    /// A pool of connections to `addr`, opened from `source` when one is given.
    pub fn from_source(addr: SocketAddr, source: Option<IpAddr>, limits: PoolLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                addr,
                source,
                limits,
                idle: Mutex::default(),
                h2: Mutex::new(None),
                h2_opening: tokio::sync::Mutex::new(()),
                h2_opened: AtomicU64::new(0),
            }),
        }
    }

    /// The address it connects to.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// How many HTTP/1.1 connections wait idle.
    pub fn idle_count(&self) -> usize {
        lock(&self.inner.idle).conns.len()
    }

    /// Sends `req` once, with the HTTP version it carries; its target and `Host` or
    /// `:authority` reach the application as they are (an HTTP/1 request in absolute form is
    /// sent in origin form, an HTTP/2 one without an authority gets the `Host` header's, as a
    /// client's own connection would do). A request handed back unsent comes back in the error.
    pub async fn try_send(&self, mut req: Request<Body>) -> Result<Response<Body>, TrySendError> {
        let hint = req
            .extensions_mut()
            .remove::<ResendHint>()
            .unwrap_or_default();
        if req.version() == Version::HTTP_2 {
            self.try_h2(req, hint).await
        } else {
            self.try_h1(req, hint).await
        }
    }

    async fn try_h1(
        &self,
        mut req: Request<Body>,
        hint: ResendHint,
    ) -> Result<Response<Body>, TrySendError> {
        origin_form(&mut req, self.inner.addr);
        let pooled = if hint.fresh { None } else { self.checkout() };
        let mut send = match pooled {
            Some(send) => send,
            None => self.open_h1().await?,
        };
        let (sent, send) = response_or_close(send.try_send_request(req), send).await;
        match sent {
            Ok(rsp) => {
                let conn = send.map(|send| (send, self.inner.clone()));
                Ok(rsp.map(|body| boxed(CheckIn { body, conn })))
            }
            Err(mut e) => match e.take_message() {
                Some(mut unsent) => {
                    unsent.extensions_mut().insert(ResendHint {
                        fresh: true,
                        not_h2: None,
                    });
                    Err(TrySendError::NotSent {
                        request: unsent,
                        cause: e.into_error(),
                    })
                }
                None => Err(TrySendError::Failed(PoolError::Request {
                    source: e.into_error(),
                })),
            },
        }
    }

    /// The most recently used idle connection that is still open and fresh.
    fn checkout(&self) -> Option<http1::SendRequest<Body>> {
        let now = Instant::now();
        let mut idle = lock(&self.inner.idle);
        while let Some((since, send)) = idle.conns.pop_back() {
            // Only ready connections are checked in, so one that is no longer ready has
            // closed; dropping it, or an expired one, closes it.
            if now.duration_since(since) < self.inner.limits.idle_timeout && send.is_ready() {
                return Some(send);
            }
        }
        None
    }

    async fn open_h1(&self) -> Result<http1::SendRequest<Body>, PoolError> {
        let io = self.connect().await?;
        let addr = self.inner.addr;
        let (send, conn) = http1::handshake(io)
            .await
            .map_err(|source| PoolError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/1.1 connection closed");
            }
        });
        Ok(send)
    }

    async fn try_h2(
        &self,
        mut req: Request<Body>,
        hint: ResendHint,
    ) -> Result<Response<Body>, TrySendError> {
        if req.uri().authority().is_none() {
            // HTTP/2 sends `:authority`, taken from the URI; a client that sent only `Host`
            // gets that, as hyper's client did before.
            absolute_uri(&mut req, &self.inner.addr.to_string()).map_err(PoolError::from)?;
        }
        // Hyper consumes a request once it has handed it to the connection; a copy of the head
        // lets one the application refused go again. A request body cannot be replayed.
        let replay = req.body().is_end_stream().then(|| Head::of(&req));
        let (number, mut send, ended) = self.h2_connection(hint.not_h2).await?;
        let mut sent = std::pin::pin!(send.try_send_request(req));
        let sent = tokio::select! {
            biased;
            rsp = &mut sent => rsp,
            // A request queued just as the connection's task ends stays in its channel
            // until the last handle on the channel is gone: let go of this one (the
            // connection's task has let go of the pool's) and it comes back unsent.
            () = ended.wait() => {
                drop(send);
                sent.await
            }
        };
        let mut e = match sent {
            Ok(rsp) => return Ok(rsp.map(boxed)),
            Err(e) => e,
        };
        let refusal = refusal(e.error());
        let again = match (e.take_message(), refusal) {
            (Some(unsent), _) => Some(unsent),
            (None, Some(Refusal::Stream)) => replay.as_ref().map(Head::request),
            // Hyper reports a GOAWAY that arrives while it opens a stream as that stream's
            // error even when the stream is at or below the GOAWAY's last stream, so the
            // application will process it anyway. Only a request that may run twice (an
            // idempotent method) is handed back.
            (None, Some(Refusal::GoAway)) => replay
                .as_ref()
                .filter(|h| is_idempotent(&h.method))
                .map(Head::request),
            (None, None) => None,
        };
        match again {
            Some(mut again) => {
                // A refused stream leaves its connection usable, and one opened for each
                // refusal would pile connections onto an application that refuses because it
                // is busy. A connection that handed the request back or sent GOAWAY takes no
                // more streams.
                again.extensions_mut().insert(ResendHint {
                    fresh: false,
                    not_h2: (refusal != Some(Refusal::Stream)).then_some(number),
                });
                Err(TrySendError::NotSent {
                    request: again,
                    cause: e.into_error(),
                })
            }
            None => Err(TrySendError::Failed(PoolError::Request {
                source: e.into_error(),
            })),
        }
    }

    /// The shared HTTP/2 connection, opened if there is none open other than `not`.
    async fn h2_connection(&self, not: Option<u64>) -> Result<H2Conn, PoolError> {
        if let Some(conn) = self.current_h2(not) {
            return Ok(conn);
        }
        let _turn = self.inner.h2_opening.lock().await;
        // Another request may have opened one while this one waited for its turn.
        if let Some(conn) = self.current_h2(not) {
            return Ok(conn);
        }
        let io = self.connect().await?;
        let addr = self.inner.addr;
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|source| PoolError::Handshake { addr, source })?;
        let number = self.inner.h2_opened.fetch_add(1, Ordering::Relaxed);
        let ended = Arc::new(Ended::default());
        let pool = Arc::downgrade(&self.inner);
        let end = ended.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/2 connection closed");
            }
            // Let go of the pool's handle, and have the requests in flight let go of theirs,
            // so that a request queued as the connection ended is handed back.
            if let Some(pool) = pool.upgrade() {
                let mut current = lock(&pool.h2);
                if current.as_ref().is_some_and(|(n, _, _)| *n == number) {
                    *current = None;
                }
            }
            end.set();
        });
        *lock(&self.inner.h2) = Some((number, send.clone(), ended.clone()));
        Ok((number, send, ended))
    }

    fn current_h2(&self, not: Option<u64>) -> Option<H2Conn> {
        let current = lock(&self.inner.h2);
        let (number, send, ended) = current.as_ref()?;
        // A connection that received GOAWAY reports itself closed to new requests.
        (Some(*number) != not && !send.is_closed()).then(|| (*number, send.clone(), ended.clone()))
    }

    async fn connect(&self) -> Result<TokioIo<TcpStream>, PoolError> {
        let addr = self.inner.addr;
        let dial = crate::io::dial(addr, self.inner.source);
        let tcp = tokio::time::timeout(self.inner.limits.connect_timeout, dial)
            .await
            .map_err(|_| PoolError::Connect {
                addr,
                source: std::io::ErrorKind::TimedOut.into(),
            })?
            .map_err(|source| PoolError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        Ok(TokioIo::new(tcp))
    }
}

/// Waits for the response to a request sent on `send`, giving up the connection if it closes
/// meanwhile. A request queued just as the connection's task ends stays in its channel until
/// the last handle on the channel is gone, and `send` is the only one: it is dropped then, so
/// that the request comes back unsent.
async fn response_or_close<F: Future>(
    sent: F,
    mut send: http1::SendRequest<Body>,
) -> (F::Output, Option<http1::SendRequest<Body>>) {
    let mut sent = std::pin::pin!(sent);
    let closed = tokio::select! {
        biased;
        rsp = &mut sent => return (rsp, Some(send)),
        // Ready again only once the response has come: it is about to be seen.
        ready = send.ready() => ready.is_err(),
    };
    if closed {
        drop(send);
        (sent.await, None)
    } else {
        (sent.await, Some(send))
    }
}

impl Inner {
    /// Keeps a ready connection for the next request.
    fn check_in(self: &Arc<Self>, send: http1::SendRequest<Body>) {
        if self.limits.max_idle == 0 {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.conns.len() >= self.limits.max_idle {
            idle.conns.pop_front();
        }
        idle.conns.push_back((Instant::now(), send));
        // Without a runtime (a body dropped during shutdown) expired connections are still
        // skipped at checkout.
        if !idle.reaping
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            idle.reaping = true;
            rt.spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Checks in a connection once it is ready for another request. It usually is by the
    /// time its response has ended; if the request body is still being sent, or its task has
    /// not yet seen the end of the response, a task waits for it.
    fn check_in_when_ready(self: &Arc<Self>, mut send: http1::SendRequest<Body>) {
        if send.is_ready() {
            self.check_in(send);
        } else if !send.is_closed()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let pool = Arc::downgrade(self);
            rt.spawn(async move {
                if send.ready().await.is_ok()
                    && let Some(pool) = pool.upgrade()
                {
                    pool.check_in(send);
                }
            });
        }
    }
}

/// Closes idle connections as they expire; ends when none is left or the pool is gone.
async fn reap(pool: Weak<Inner>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let timeout = pool.limits.idle_timeout;
            let now = Instant::now();
            let mut idle = lock(&pool.idle);
            idle.conns.retain(|(_, send)| !send.is_closed());
            while idle
                .conns
                .front()
                .is_some_and(|(since, _)| now.duration_since(*since) >= timeout)
            {
                idle.conns.pop_front();
            }
            match idle.conns.front() {
                Some((since, _)) => *since + timeout,
                None => {
                    idle.reaping = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The lists stay consistent whatever panicked while holding them.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Puts an HTTP/1 request in origin form with a `Host` header, as a client's own connection
/// would send it.
fn origin_form(req: &mut Request<Body>, addr: SocketAddr) {
    if !req.headers().contains_key(HOST) {
        let host = match req.uri().host() {
            Some(host) => match req.uri().port_u16() {
                Some(port) if port != 80 => HeaderValue::try_from(format!("{host}:{port}")),
                _ => HeaderValue::try_from(host),
            },
            // HTTP/1.0 without a Host header.
            None => HeaderValue::try_from(addr.to_string()),
        };
        if let Ok(host) = host {
            req.headers_mut().insert(HOST, host);
        }
    }
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// How an HTTP/2 application said it did not process a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// RST_STREAM with REFUSED_STREAM.
    Stream,
    /// GOAWAY naming a last stream below this one. h2 reports a remote GOAWAY only to such
    /// streams and to streams opened after it arrived.
    GoAway,
}

/// Whether, and how, the application refused an HTTP/2 request unprocessed.
fn refusal(e: &hyper::Error) -> Option<Refusal> {
    let h2 = std::error::Error::source(e)?.downcast_ref::<h2::Error>()?;
    if !h2.is_remote() {
        None
    } else if h2.is_go_away() {
        Some(Refusal::GoAway)
    } else if h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
        Some(Refusal::Stream)
    } else {
        None
    }
}

/// Whether a request with `method` may be applied more than once with the effect of once
/// (RFC 9110, section 9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// What is needed to send a bodiless request again.
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Head {
    fn of(req: &Request<Body>) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        }
    }

    fn request(&self) -> Request<Body> {
        let mut req = Request::new(boxed(
            Empty::<Bytes>::new().map_err(|e: Infallible| match e {}),
        ));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// A response body that checks its connection back in once it has ended. A body dropped
/// before its end takes the connection with it: hyper closes a connection whose response was
/// not read to the end.
struct CheckIn {
    body: Incoming,
    conn: Option<(http1::SendRequest<Body>, Arc<Inner>)>,
}

impl CheckIn {
    fn ended(&mut self) {
        if let Some((send, pool)) = self.conn.take() {
            pool.check_in_when_ready(send);
        }
    }
}

impl Drop for CheckIn {
    fn drop(&mut self) {
        // A bodiless response is often dropped unread.
        if self.body.is_end_stream() {
            self.ended();
        }
    }
}

impl http_body::Body for CheckIn {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.ended(),
            // Checked in with the last frame, before the client can send its next request.
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.ended(),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use std::sync::atomic::AtomicUsize;

    use http_body_util::Full;
    use hyper_util::server::conn::auto;
    use tokio::net::TcpListener;
    use tokio::sync::Notify;

    use super::*;
    use crate::http::resend::send;

    /// Connections a test server accepted and saw closed.
    #[derive(Default)]
    struct Seen {
        accepted: AtomicUsize,
        closed: AtomicUsize,
        changed: Notify,
    }

    impl Seen {
        async fn wait_closed(&self, n: usize) {
            loop {
                let changed = self.changed.notified();
                if self.closed.load(Ordering::SeqCst) >= n {
                    return;
                }
                changed.await;
            }
        }
    }

    /// An HTTP/1.1 and HTTP/2 server answering `ok` once `together` requests have arrived.
    async fn server(together: usize) -> (SocketAddr, Arc<Seen>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let barrier = Arc::new(tokio::sync::Barrier::new(together));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                s.accepted.fetch_add(1, Ordering::SeqCst);
                let (s, barrier) = (s.clone(), barrier.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_: Request<Incoming>| {
                        let barrier = barrier.clone();
                        async move {
                            barrier.wait().await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                    s.closed.fetch_add(1, Ordering::SeqCst);
                    s.changed.notify_waiters();
                });
            }
        });
        (addr, seen)
    }

    fn get(version: Version) -> Request<Body> {
        let mut req = Request::new(boxed(
            Empty::<Bytes>::new().map_err(|e: Infallible| match e {}),
        ));
        *req.uri_mut() = Uri::from_static("http://app.test/x");
        *req.version_mut() = version;
        req
    }

    async fn read_ok(pool: &PlainPool, version: Version) {
        let rsp = send(pool, get(version)).await.unwrap();
        assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "ok");
    }

    #[tokio::test]
    async fn idle_connections_are_bounded_and_expire() {
        let (addr, seen) = server(3).await;
        let limits = PoolLimits {
            max_idle: 2,
            ..PoolLimits::default()
        };
        let pool = PlainPool::new(addr, limits);

        // Three requests in flight at once take three connections; two are kept.
        tokio::join!(
            read_ok(&pool, Version::HTTP_11),
            read_ok(&pool, Version::HTTP_11),
            read_ok(&pool, Version::HTTP_11)
        );
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 3);
        seen.wait_closed(1).await;
        assert_eq!(pool.idle_count(), 2);

        // Idle past the timeout, both are closed.
        tokio::time::pause();
        tokio::time::advance(limits.idle_timeout + Duration::from_millis(1)).await;
        seen.wait_closed(3).await;
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_kept_connection_is_reused() {
        let (addr, seen) = server(1).await;
        let pool = PlainPool::new(addr, PoolLimits::default());
        for _ in 0..5 {
            read_ok(&pool, Version::HTTP_11).await;
        }
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn http2_requests_share_one_connection() {
        let (addr, seen) = server(8).await;
        let pool = PlainPool::new(addr, PoolLimits::default());
        let all = (0..8).map(|_| read_ok(&pool, Version::HTTP_2));
        futures_util::future::join_all(all).await;
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 0, "HTTP/2 is not pooled per request");
    }

    #[tokio::test]
    async fn an_unreachable_address_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let pool = PlainPool::new(addr, PoolLimits::default());
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let e = send(&pool, get(version)).await.unwrap_err();
            assert!(e.is_connect(), "{e}");
        }
    }

    #[test]
    fn http1_requests_go_in_origin_form_with_their_host() {
        let addr: SocketAddr = ([127, 0, 0, 1], 8080).into();
        let cases = [
            // (URI, Host header, expected target, expected Host)
            ("/a?b=1", Some("peer.test"), "/a?b=1", "peer.test"),
            ("http://x.test/a?b", Some("peer.test"), "/a?b", "peer.test"),
            ("http://x.test:8081/a", None, "/a", "x.test:8081"),
            ("http://x.test:80/", None, "/", "x.test"),
            ("http://x.test", None, "/", "x.test"),
            ("/old", None, "/old", "127.0.0.1:8080"),
        ];
        for (uri, host, target, want_host) in cases {
            let mut req = get(Version::HTTP_11);
            *req.uri_mut() = Uri::from_static(uri);
            if let Some(h) = host {
                req.headers_mut().insert(HOST, HeaderValue::from_static(h));
            }
            origin_form(&mut req, addr);
            assert_eq!(req.uri(), target, "{uri}");
            assert_eq!(req.headers()[HOST], want_host, "{uri}");
        }
    }
}
