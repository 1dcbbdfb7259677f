//! Bounds per caller on the gRPC API (`[control.limits]`): what one identity may hold at once
//! (connections, Resolve streams, Proxy streams) and how often one client address or one
//! identity may call `Identity.Certify`. A caller beyond a bound is refused at once, never
//! queued, and the refusal is counted in `weft_control_limited_total{reason}`.
//!
//! The maps behind them are bounded too: a count per identity lives only while that identity
//! holds something (identities are what the CA issued, so a peer cannot make them up), and
//! the token buckets keep at most [`MAX_BUCKETS`] keys, forgetting full buckets (which are the
//! same as none) and then the least recently used.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;
use weft_core::Identity;
use weft_core::config::ControlLimits;

/// Token buckets kept per limiter. A bucket is about 100 bytes, so a limiter holds at most
/// about 1 MB however many addresses call.
pub(crate) const MAX_BUCKETS: usize = 8192;

/// The reasons of `weft_control_limited_total`, one per bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    /// Connections presenting one identity's certificate.
    IdentityConnections,
    /// `Discovery.Resolve` streams of one identity.
    IdentityResolveStreams,
    /// `Discovery.Proxy` streams of one identity.
    IdentityProxyStreams,
    /// `Identity.Certify` calls without a certificate from one address.
    CertifyAddressRate,
    /// `Identity.Certify` calls of one identity presenting its certificate.
    CertifyIdentityRate,
}

/// Every per-caller bound of one control plane.
#[derive(Debug)]
pub(crate) struct CallerLimits {
    /// Connections per identity.
    pub(crate) connections: Arc<PerKey<Identity>>,
    /// Resolve streams per identity.
    pub(crate) resolve_streams: Arc<PerKey<Identity>>,
    /// Proxy streams per identity.
    pub(crate) proxy_streams: Arc<PerKey<Identity>>,
    /// Telemetry streams per identity (one per proxy, as Proxy streams: the same bound).
    pub(crate) telemetry_streams: Arc<PerKey<Identity>>,
    /// Certify calls without a client certificate, per client address.
    pub(crate) certify_by_address: RateLimiter<IpAddr>,
    /// Certify calls presenting a certificate, per identity.
    pub(crate) certify_by_identity: RateLimiter<Identity>,
}

/// At most `max` of something held at once per key.
#[derive(Debug)]
pub(crate) struct PerKey<K: Eq + Hash> {
    max: usize,
    held: Mutex<HashMap<K, usize>>,
}

/// One of the `max` a key may hold, given back when dropped.
#[derive(Debug)]
pub(crate) struct KeyPermit<K: Eq + Hash + Clone> {
    owner: Arc<PerKey<K>>,
    key: K,
}

/// Token buckets, one per key: `burst` calls at once, refilled at `rate` a second.
#[derive(Debug)]
pub(crate) struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

/// The tokens of one key when last counted.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

// === impl Limit ===

impl Limit {
    /// The metric label.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Limit::IdentityConnections => "identity_connections",
            Limit::IdentityResolveStreams => "identity_resolve_streams",
            Limit::IdentityProxyStreams => "identity_proxy_streams",
            Limit::CertifyAddressRate => "certify_address_rate",
            Limit::CertifyIdentityRate => "certify_identity_rate",
        }
    }
}

// === impl CallerLimits ===

impl CallerLimits {
    /// The bounds `[control.limits]` sets.
    pub(crate) fn new(limits: &ControlLimits) -> Self {
        Self {
            connections: PerKey::new(limits.connections_per_identity),
            resolve_streams: PerKey::new(limits.resolve_streams_per_identity),
            proxy_streams: PerKey::new(limits.proxy_streams_per_identity),
            telemetry_streams: PerKey::new(limits.proxy_streams_per_identity),
            certify_by_address: RateLimiter::new(
                limits.certify_rate_per_address,
                limits.certify_burst_per_address,
                MAX_BUCKETS,
            ),
            certify_by_identity: RateLimiter::new(
                limits.certify_rate_per_identity,
                limits.certify_burst_per_identity,
                MAX_BUCKETS,
            ),
        }
    }
}

/// The key of a client address for its Certify bucket: an IPv4 address (also when written as
/// an IPv4-mapped IPv6 one), or the /64 of an IPv6 address, since one host commonly holds a
/// whole /64 and could otherwise call from a fresh address each time.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

// === impl PerKey ===

impl<K: Eq + Hash + Clone> PerKey<K> {
    /// At most `max` per key (at least 1).
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            held: Mutex::default(),
        })
    }

    /// One more for `key`, or `None` if it holds `max` already.
    pub(crate) fn try_acquire(self: &Arc<Self>, key: &K) -> Option<KeyPermit<K>> {
        let mut held = self.lock();
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(KeyPermit {
            owner: self.clone(),
            key: key.clone(),
        })
    }

    /// What `key` holds now.
    #[cfg(test)]
    pub(crate) fn held(&self, key: &K) -> usize {
        self.lock().get(key).copied().unwrap_or(0)
    }

    /// Keys holding anything.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> usize {
        self.lock().len()
    }

    /// The bound.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, usize>> {
        // The counts stay consistent whatever panicked while holding the lock.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<K: Eq + Hash + Clone> Drop for KeyPermit<K> {
    fn drop(&mut self) {
        let mut held = self.owner.lock();
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

// === impl RateLimiter ===

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// `burst` calls at once per key, then `rate` a second; at most `max_keys` keys.
    pub(crate) fn new(rate: f64, burst: u32, max_keys: usize) -> Self {
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            max_keys: max_keys.max(1),
            buckets: Mutex::default(),
        }
    }

    /// Takes a token from `key`'s bucket; false if it is empty.
    pub(crate) fn allow(&self, key: &K) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= self.max_keys {
            self.make_room(&mut buckets, now);
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }

    /// Keys with a bucket now.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Forgets the buckets that have refilled (a new key starts full, so nothing is lost),
    /// and if none has, the one used least recently: a caller whose bucket is forgotten gets
    /// no more than a caller from a new address would.
    fn make_room(&self, buckets: &mut HashMap<K, Bucket>, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        });
        if buckets.len() < self.max_keys {
            return;
        }
        let oldest = buckets
            .iter()
            .min_by_key(|(_, b)| b.at)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            buckets.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(2.0, 3, 16);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            (0..5).map(|_| limiter.allow(&a)).collect::<Vec<_>>(),
            [true, true, true, false, false]
        );
        // Another key has a bucket of its own.
        assert!(limiter.allow(&b));
        // 2 a second: one token back after 500 ms, not before.
        tokio::time::advance(Duration::from_millis(400)).await;
        assert!(!limiter.allow(&a));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(limiter.allow(&a));
        assert!(!limiter.allow(&a));
        // A long pause refills to the burst and no further.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!((0..4).filter(|_| limiter.allow(&a)).count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_buckets_are_bounded_and_a_busy_key_keeps_its_bucket_longest() {
        let limiter = RateLimiter::new(0.001, 2, 4);
        let ip = |i: u8| IpAddr::from([10, 0, 0, i]);
        // The busy key empties its bucket first.
        assert!(limiter.allow(&ip(0)) && limiter.allow(&ip(0)) && !limiter.allow(&ip(0)));
        // A flood of other addresses: never more than 4 buckets.
        for i in 1..=200 {
            tokio::time::advance(Duration::from_millis(1)).await;
            // ip(0) stays busy, so it is never the least recently used.
            assert!(!limiter.allow(&ip(0)));
            assert!(limiter.allow(&ip(i)));
            assert!(limiter.keys() <= 4, "{}", limiter.keys());
        }
        // Its empty bucket was kept throughout.
        assert!(!limiter.allow(&ip(0)));
    }

    #[tokio::test(start_paused = true)]
    async fn refilled_buckets_are_forgotten_first() {
        let limiter = RateLimiter::new(10.0, 1, 2);
        let ip = |i: u8| IpAddr::from([10, 0, 0, i]);
        assert!(limiter.allow(&ip(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.allow(&ip(2)));
        // ip(1) has refilled: it goes, ip(2) (empty) stays.
        assert!(limiter.allow(&ip(3)));
        assert!(!limiter.allow(&ip(2)));
        assert_eq!(limiter.keys(), 2);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
    }

    #[test]
    fn a_key_holds_at_most_max_and_gets_them_back() {
        let per = PerKey::<&str>::new(2);
        let a1 = per.try_acquire(&"a").unwrap();
        let a2 = per.try_acquire(&"a").unwrap();
        assert!(per.try_acquire(&"a").is_none());
        let b = per.try_acquire(&"b").unwrap();
        assert_eq!((per.held(&"a"), per.held(&"b")), (2, 1));
        drop(a1);
        let a3 = per.try_acquire(&"a").unwrap();
        drop((a2, a3, b));
        // Nothing is kept for keys that hold nothing.
        assert_eq!(per.keys(), 0);
    }
}
