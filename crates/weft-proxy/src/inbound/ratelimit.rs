//! Local rate limits on the inbound side: each server (port) admits the requests each of its
//! [`LocalRateLimit`]s applies to (all of them, or a route's) at its rate with its burst, in
//! one bucket for all clients or one per client identity (clients without an identity share
//! one), and clients an override matches at their own rate in buckets of their own. A request
//! spends a token of every limit that applies to it. A request over the limit is
//! answered 429 with `Retry-After` (`RESOURCE_EXHAUSTED` for gRPC) and counted in
//! `weft_inbound_rate_limited_total`. The layer sits after authorization: a client it refuses
//! spends no tokens. Buckets live as long as their server's limit is unchanged; an edit starts
//! them afresh.
//!
//! Buckets are keyed by identities the mesh issued (or `unauthenticated`), so a peer cannot
//! grow them at will; past [`TIDY_AT`] keys the full ones are dropped.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use http::{Request, Response};
use prometheus_client::metrics::counter::Counter;
use weft_core::Identity;
use weft_core::policy::ratelimit::{LocalRateLimit, Rate};

use super::authz::Caller;
use crate::errors::{HttpError, Kind, RetrySafe, Who};
use crate::http::{Body, BoxError};

/// Keys held before the buckets that are full again are dropped.
pub const TIDY_AT: usize = 4096;

fn quota(r: Rate) -> Quota {
    let period = Duration::from_secs_f64(1.0 / r.per_second).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(r.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period).map_or_else(|| Quota::per_second(burst), |q| q.allow_burst(burst))
}

/// One server's buckets, for the limit they were made for.
struct Buckets {
    limit: LocalRateLimit,
    /// The one bucket of every client, when clients do not have their own.
    shared: DefaultDirectRateLimiter,
    /// A bucket per client, when they have their own.
    base: DefaultKeyedRateLimiter<String>,
    overrides: Vec<DefaultKeyedRateLimiter<String>>,
}

impl Buckets {
    fn new(limit: &LocalRateLimit) -> Self {
        Self {
            limit: limit.clone(),
            shared: DefaultDirectRateLimiter::direct(quota(limit.rate)),
            base: DefaultKeyedRateLimiter::keyed(quota(limit.rate)),
            overrides: limit
                .overrides
                .iter()
                .map(|(_, r)| DefaultKeyedRateLimiter::keyed(quota(*r)))
                .collect(),
        }
    }

    /// Takes a token for `client`, or says how long until one is there.
    fn take(&self, client: Option<&Identity>) -> Result<(), Duration> {
        let key = || client.map_or_else(|| "unauthenticated".to_string(), Identity::spiffe_id);
        let over =
            client.and_then(|id| self.limit.overrides.iter().position(|(m, _)| m.matches(id)));
        let wait = |not_until: governor::NotUntil<_>| {
            not_until.wait_time_from(DefaultClock::default().now())
        };
        let bucket = match over {
            Some(i) => &self.overrides[i],
            None if self.limit.per_identity => &self.base,
            // One bucket for all: no key to build or look up.
            None => return self.shared.check().map_err(wait),
        };
        if bucket.len() > TIDY_AT {
            bucket.retain_recent();
        }
        bucket.check_key(&key()).map_err(wait)
    }
}

/// Every server's buckets, shared by all connections, by port and the limit's place in the
/// server's list. A proxy has few servers and limits, so they are found by a scan, cheaper
/// per request than hashing the key.
#[derive(Default)]
pub struct RateLimits {
    servers: Mutex<Vec<((u16, usize), Buckets)>>,
    limited: Counter,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").finish_non_exhaustive()
    }
}

impl RateLimits {
    /// Empty, counting what it refuses in `limited`.
    pub fn new(limited: Counter) -> Self {
        Self {
            servers: Mutex::default(),
            limited,
        }
    }

    /// Admits a request of `client` under `limit`, the limit `at` (port, place) of a server, or
    /// says how long until it would be admitted.
    pub fn admit(
        &self,
        at: (u16, usize),
        limit: &LocalRateLimit,
        client: Option<&Identity>,
    ) -> Result<(), Duration> {
        let verdict = {
            let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
            let i = match servers.iter().position(|(k, _)| *k == at) {
                Some(i) => {
                    if &servers[i].1.limit != limit {
                        servers[i].1 = Buckets::new(limit);
                    }
                    i
                }
                None => {
                    servers.push((at, Buckets::new(limit)));
                    servers.len() - 1
                }
            };
            servers[i].1.take(client)
        };
        if verdict.is_err() {
            self.limited.inc();
        }
        verdict
    }
}

/// The per-request check. See the module docs.
#[derive(Clone, Debug)]
pub struct Limit<S> {
    inner: S,
    caller: Arc<Caller>,
}

impl<S> Limit<S> {
    /// Limits each request of `caller` before `inner`.
    pub fn new(inner: S, caller: Arc<Caller>) -> Self {
        Self { inner, caller }
    }
}

impl<S> tower::Service<Request<Body>> for Limit<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<std::future::Ready<Result<Response<Body>, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let c = &self.caller;
        if let Err(after) = c
            .authorizer
            .rate_limit(c.client.as_deref(), c.server_port, &req)
        {
            let e = HttpError::new(
                Kind::RateLimited,
                Who::Caller,
                RetrySafe::No,
                "over the server's rate limit",
            )
            .retry_after(after);
            return Either::Left(std::future::ready(Err(e.into())));
        }
        Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use weft_core::TrustDomain;

    use super::*;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    /// The burst passes, the next request waits for the rate; per identity, each client has
    /// its own bucket; an override has its own rate; an edit starts afresh.
    #[test]
    fn bursts_rates_identities_and_overrides() {
        let td = TrustDomain::new("weft.test").unwrap();
        let web = Identity::new(td.clone(), "shop", "web").unwrap();
        let batch = Identity::new(td, "jobs", "batch").unwrap();
        let limits = RateLimits::default();
        // One a minute, three at once, shared.
        let shared = LocalRateLimit {
            rate: rate(1.0 / 60.0, 3),
            per_identity: false,
            overrides: vec![("jobs/*".parse().unwrap(), rate(1.0 / 60.0, 1))],
            to: Vec::new(),
        };
        for _ in 0..3 {
            limits.admit((80, 0), &shared, Some(&web)).unwrap();
        }
        let wait = limits.admit((80, 0), &shared, None).unwrap_err();
        assert!(wait > Duration::from_secs(50), "{wait:?}");
        // The override's bucket is its own.
        limits.admit((80, 0), &shared, Some(&batch)).unwrap();
        assert!(limits.admit((80, 0), &shared, Some(&batch)).is_err());
        assert_eq!(limits.limited.get(), 2);
        // Per identity: web's bucket is not the unauthenticated clients'.
        let per = LocalRateLimit {
            per_identity: true,
            ..shared.clone()
        };
        for _ in 0..3 {
            limits.admit((80, 0), &per, Some(&web)).unwrap();
        }
        assert!(limits.admit((80, 0), &per, Some(&web)).is_err());
        limits.admit((80, 0), &per, None).unwrap();
        // Another port has buckets of its own.
        limits.admit((81, 0), &per, Some(&web)).unwrap();
    }
}
