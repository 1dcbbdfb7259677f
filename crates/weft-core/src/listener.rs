//! Bounds shared by the small plaintext HTTP listeners that anyone on the network may reach: the
//! proxy's admin and probe listeners and the control plane's HTTP listener. Platforms probe
//! them, so one client must not be able to take every connection they accept.
//!
//! - [`ConnectionLimits`] admits a connection only while the listener holds fewer than its
//!   total and the client's address holds fewer than its per-address share; the rest are
//!   closed at once. One address can therefore never hold more than its share, however many
//!   connections it opens.
//! - [`Activity`] tells when a connection has gone idle: no byte read or written and no request
//!   being answered for a while. The listener then closes it, so a client must keep sending to
//!   keep a slot. A request head in progress counts as activity; the HTTP server's own header
//!   timeout still bounds how long it may take.
//!
//! The address map holds an entry only while a connection from that address is open, so it is
//! bounded by the listener's total.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Connections one client address may hold on each listener.
pub const MAX_PER_ADDRESS: usize = 8;

/// How long a connection may stay without traffic and without a request being answered
/// before it is closed (between keep-alive requests, or before the first byte).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The listener holds its total.
    Full,
    /// The client's address holds its share.
    PerAddress,
}

impl Refusal {
    /// The metric label value: `full` or `per_address`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::PerAddress => "per_address",
        }
    }
}

/// The connection limits of one listener: a total and a share per client address.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    inner: Arc<LimitsInner>,
}

#[derive(Debug)]
struct LimitsInner {
    max_total: usize,
    max_per_address: usize,
    open: Mutex<OpenConnections>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One admitted connection; its slot is given back when this is dropped.
#[derive(Debug)]
pub struct Slot {
    inner: Arc<LimitsInner>,
    address: IpAddr,
}

// === impl ConnectionLimits ===

impl ConnectionLimits {
    /// Limits of `max_total` connections, at most `max_per_address` of them from one address.
    pub fn new(max_total: usize, max_per_address: usize) -> Self {
        Self {
            inner: Arc::new(LimitsInner {
                max_total,
                max_per_address,
                open: Mutex::new(OpenConnections::default()),
            }),
        }
    }

    /// Admits a connection from `address`, or says why not. An IPv4 address mapped into IPv6
    /// counts as the IPv4 address, so a dual-stack socket does not double a client's share.
    pub fn try_admit(&self, address: IpAddr) -> Result<Slot, Refusal> {
        let address = address.to_canonical();
        let mut open = self.inner.lock();
        if open.total >= self.inner.max_total {
            return Err(Refusal::Full);
        }
        let from = open.by_address.entry(address).or_default();
        if *from >= self.inner.max_per_address {
            return Err(Refusal::PerAddress);
        }
        *from += 1;
        open.total += 1;
        Ok(Slot {
            inner: self.inner.clone(),
            address,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.lock().total
    }
}

impl LimitsInner {
    fn lock(&self) -> MutexGuard<'_, OpenConnections> {
        // The counts are updated in single steps that cannot panic halfway.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === impl Slot ===

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.inner.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(from) = open.by_address.get_mut(&self.address) {
            *from = from.saturating_sub(1);
            if *from == 0 {
                open.by_address.remove(&self.address);
            }
        }
    }
}

/// When a connection last moved, and how many of its requests are being answered.
#[derive(Clone, Debug)]
pub struct Activity {
    inner: Arc<ActivityInner>,
}

#[derive(Debug)]
struct ActivityInner {
    last: Mutex<Instant>,
    answering: AtomicUsize,
}

/// Marks a request as being answered until dropped: a slow answer (an application probe)
/// does not make its connection idle.
#[derive(Debug)]
pub struct Answering {
    activity: Activity,
}

/// An I/O stream whose reads and writes count as [`Activity`].
#[derive(Debug)]
pub struct Tracked<T> {
    io: T,
    activity: Activity,
}

// === impl Activity ===

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// A connection that moves now.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(ActivityInner {
                last: Mutex::new(Instant::now()),
                answering: AtomicUsize::new(0),
            }),
        }
    }

    /// Wraps the connection's stream, so every byte read or written counts.
    pub fn track<T>(&self, io: T) -> Tracked<T> {
        Tracked {
            io,
            activity: self.clone(),
        }
    }

    /// Marks one request as being answered, until the guard is dropped.
    pub fn answering(&self) -> Answering {
        self.inner.answering.fetch_add(1, Ordering::SeqCst);
        self.touch();
        Answering {
            activity: self.clone(),
        }
    }

    /// Resolves once the connection has had no traffic and no request being answered for
    /// `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let deadline = self.last() + timeout;
            if Instant::now() >= deadline && self.inner.answering.load(Ordering::SeqCst) == 0 {
                return;
            }
            // While a request is being answered, look again a quarter of the timeout later; the
            // answer's end counts as activity, so the connection then has its full idle time.
            tokio::time::sleep_until(deadline.max(Instant::now() + timeout / 4)).await;
        }
    }

    fn last(&self) -> Instant {
        *self.inner.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        *self.inner.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

// === impl Answering ===

impl Drop for Answering {
    fn drop(&mut self) {
        self.activity.touch();
        self.activity.inner.answering.fetch_sub(1, Ordering::SeqCst);
    }
}

// === impl Tracked ===

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn one_address_holds_at_most_its_share_and_the_listener_its_total() {
        let limits = ConnectionLimits::new(5, 3);
        let from_a: Vec<_> = (0..3).map(|_| limits.try_admit(A).unwrap()).collect();
        assert_eq!(limits.try_admit(A).unwrap_err(), Refusal::PerAddress);
        // The same address written as IPv4-mapped IPv6 is the same client.
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(limits.try_admit(mapped).unwrap_err(), Refusal::PerAddress);
        let from_b: Vec<_> = (0..2).map(|_| limits.try_admit(B).unwrap()).collect();
        let c = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(limits.try_admit(c).unwrap_err(), Refusal::Full);
        assert_eq!(limits.open(), 5);

        // Slots come back when connections close, and an address without any leaves no entry.
        drop(from_b);
        assert_eq!(limits.open(), 3);
        assert_eq!(limits.inner.lock().by_address.len(), 1);
        let _c = limits.try_admit(c).unwrap();
        drop(from_a);
        assert_eq!(limits.inner.lock().by_address.len(), 1);
        let _a = limits.try_admit(A).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_without_traffic_and_without_a_request_being_answered() {
        let timeout = Duration::from_secs(2);
        let activity = Activity::new();
        let (client, server) = tokio::io::duplex(64);
        let mut server = activity.track(server);
        let mut client = client;
        let started = Instant::now();

        // Traffic every second keeps it busy for as long as it lasts.
        for _ in 0..5 {
            tokio::select! {
                _ = activity.idle(timeout) => panic!("idle while sending"),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            client.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            server.read_exact(&mut byte).await.unwrap();
        }
        // A request being answered keeps it busy too, however long the answer takes.
        let answering = activity.answering();
        tokio::select! {
            _ = activity.idle(timeout) => panic!("idle while answering"),
            _ = tokio::time::sleep(timeout * 3) => {}
        }
        drop(answering);
        let quiet = Instant::now();
        activity.idle(timeout).await;
        assert_eq!(quiet.elapsed(), timeout);
        // Writes count as well.
        server.write_all(b"y").await.unwrap();
        let wrote = Instant::now();
        activity.idle(timeout).await;
        assert_eq!(wrote.elapsed(), timeout);
        assert!(started.elapsed() >= Duration::from_secs(11));
    }
}
