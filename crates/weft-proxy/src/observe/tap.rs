//! Live tap: the heads of the requests the proxy carries, streamed to the clients watching
//! ([`crate::tap`] serves them).
//!
//! At most [`MAX_WATCHES`] watches at once; each has its filter, its rate (default
//! [`DEFAULT_RATE`] events a second, at most [`MAX_RATE`]) and a queue of [`QUEUE`] events.
//! Events over the rate, or that find the queue full, are dropped and counted in the next
//! event the watch sends. No body is copied, and of the request headers only those in
//! [`HEADERS`]. With no watch, requests pay nothing for tap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;
use tokio::time::Instant;
use weft_api::TapRequest;

/// Watches one proxy serves at once.
pub const MAX_WATCHES: usize = 16;
/// Events a second a watch gets unless it asks for fewer.
pub const DEFAULT_RATE: u32 = 100;
/// The most events a second a watch may ask for.
pub const MAX_RATE: u32 = 1000;
/// Events waiting for a slow reader.
pub const QUEUE: usize = 256;
/// The request headers an event carries, when present.
pub const HEADERS: [&str; 3] = ["user-agent", "content-type", "x-request-id"];

/// What a watch wants to see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// The method, exactly.
    pub method: String,
    /// A prefix of the path.
    pub path_prefix: String,
    /// The authority, exactly.
    pub authority: String,
    /// A prefix of the client's identity.
    pub source: String,
    /// The destination service or the proxy's workload, exactly.
    pub destination: String,
}

impl From<&TapRequest> for Filter {
    fn from(r: &TapRequest) -> Self {
        Self {
            method: r.method.clone(),
            path_prefix: r.path_prefix.clone(),
            authority: r.authority.clone(),
            source: r.source.clone(),
            destination: r.destination.clone(),
        }
    }
}

/// What a filter looks at.
#[derive(Debug)]
pub struct Seen<'a> {
    /// The method.
    pub method: &'a str,
    /// The path.
    pub path: &'a str,
    /// The authority.
    pub authority: &'a str,
    /// The client's identity, if known.
    pub source: Option<&'a str>,
    /// The destination service, or the proxy's workload.
    pub destination: &'a str,
}

impl Filter {
    /// Whether `s` passes.
    pub fn matches(&self, s: &Seen<'_>) -> bool {
        (self.method.is_empty() || self.method.eq_ignore_ascii_case(s.method))
            && s.path.starts_with(&self.path_prefix)
            && (self.authority.is_empty() || self.authority.eq_ignore_ascii_case(s.authority))
            && (self.source.is_empty() || s.source.is_some_and(|id| id.starts_with(&self.source)))
            && (self.destination.is_empty() || self.destination == s.destination)
    }
}

/// A token bucket: `rate` a second, as many at once.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One watch.
#[derive(Debug)]
pub struct Watch {
    filter: Filter,
    tx: mpsc::Sender<weft_api::TapEvent>,
    bucket: Mutex<Bucket>,
    dropped: AtomicU64,
}

impl Watch {
    /// Offers an event, made only if the watch takes it.
    pub fn offer(&self, seen: &Seen<'_>, make: impl FnOnce() -> weft_api::TapEvent) {
        if !self.filter.matches(seen) {
            return;
        }
        let admitted = self
            .bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if !admitted {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut event = make();
        event.dropped = self.dropped.load(Ordering::Relaxed);
        if self.tx.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The watches of one proxy.
#[derive(Debug, Default)]
pub struct Taps {
    watches: Mutex<Vec<Arc<Watch>>>,
    /// How many watches the list holds, for a check without the lock.
    count: std::sync::atomic::AtomicUsize,
}

/// There are [`MAX_WATCHES`] watches already.
#[derive(Debug, thiserror::Error)]
#[error("this proxy serves {MAX_WATCHES} taps already")]
pub struct TooManyWatches;

impl Taps {
    /// Starts a watch; it ends when the receiver is dropped and [`Taps::sweep`] runs (any
    /// later event, or the next watch).
    pub fn watch(
        &self,
        filter: Filter,
        rate: u32,
    ) -> Result<mpsc::Receiver<weft_api::TapEvent>, TooManyWatches> {
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        watches.retain(|w| !w.tx.is_closed());
        if watches.len() >= MAX_WATCHES {
            return Err(TooManyWatches);
        }
        let rate = match rate {
            0 => DEFAULT_RATE,
            n => n.min(MAX_RATE),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        self.count.store(watches.len() + 1, Ordering::Release);
        watches.push(Arc::new(Watch {
            filter,
            tx,
            bucket: Mutex::new(Bucket {
                rate: f64::from(rate),
                tokens: f64::from(rate),
                at: Instant::now(),
            }),
            dropped: AtomicU64::new(0),
        }));
        Ok(rx)
    }

    /// The watches still open; drops those whose reader has gone.
    pub fn open(&self) -> Vec<Arc<Watch>> {
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        watches.retain(|w| !w.tx.is_closed());
        self.count.store(watches.len(), Ordering::Release);
        watches.clone()
    }

    /// Whether any watch is open (a reader gone counts until the next sweep). One atomic
    /// load.
    pub fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(method: &'a str, path: &'a str, source: Option<&'a str>) -> Seen<'a> {
        Seen {
            method,
            path,
            authority: "web.shop",
            source,
            destination: "web.shop",
        }
    }

    #[test]
    fn filters_match_every_field_given() {
        let f = Filter {
            method: "get".into(),
            path_prefix: "/api".into(),
            source: "spiffe://weft.test/ns/shop/".into(),
            ..Filter::default()
        };
        let id = Some("spiffe://weft.test/ns/shop/sa/web");
        assert!(f.matches(&seen("GET", "/api/users", id)));
        assert!(!f.matches(&seen("POST", "/api/users", id)));
        assert!(!f.matches(&seen("GET", "/health", id)));
        assert!(!f.matches(&seen("GET", "/api", Some("spiffe://weft.test/ns/ops/sa/x"))));
        assert!(!f.matches(&seen("GET", "/api", None)));
        assert!(Filter::default().matches(&seen("PUT", "/", None)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_gets_its_rate_and_counts_the_rest() {
        let taps = Taps::default();
        let mut rx = taps.watch(Filter::default(), 10).expect("a watch");
        let event = || weft_api::TapEvent::default();
        for _ in 0..25 {
            for w in taps.open() {
                w.offer(&seen("GET", "/", None), event);
            }
        }
        let mut got = Vec::new();
        while let Ok(e) = rx.try_recv() {
            got.push(e);
        }
        assert_eq!(got.len(), 10, "a burst of the rate, no more");
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        for w in taps.open() {
            w.offer(&seen("GET", "/", None), event);
        }
        let later = rx.try_recv().expect("half a second refills five");
        assert_eq!(later.dropped, 15, "the dropped events are counted");
        drop(rx);
        assert!(taps.open().is_empty(), "a watch whose reader left ends");
    }

    #[test]
    fn watches_are_bounded() {
        let taps = Taps::default();
        assert!(!taps.any());
        let held: Vec<_> = (0..MAX_WATCHES)
            .map(|_| taps.watch(Filter::default(), 0).expect("room"))
            .collect();
        assert!(taps.watch(Filter::default(), 0).is_err());
        drop(held);
        assert!(taps.watch(Filter::default(), 0).is_ok());
    }
}
