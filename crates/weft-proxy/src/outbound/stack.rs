//! The outbound HTTP stack, in the order a request goes through it (outermost first). Each
//! layer is a file of its own; this is the one place that says how they fit.
//!
//! Per connection (cheap clones per request):
//! 1. [`CountUnrouted`]: counts the responses the proxy makes itself before choosing an
//!    endpoint (no peer label).
//! 2. [`Observe`]: the call's span and access log line ([`crate::observe`]), over what the
//!    application sees, errors answered included.
//! 3. [`Respond`]: the one place errors become responses (403, 503, 502; gRPC statuses for
//!    gRPC callers), with the reason for the application, which is trusted.
//! 4. [`Strip`]: hop-by-hop headers, from the request and from the response.
//! 5. [`Gate`]: the destination gate (denied, not in the mesh, no ready endpoint).
//! 6. [`Route`]: the destination's routes ([`super::router`]): a redirect, filters, then per
//!    matched rule its concurrency limit ([`crate::http::limit`]), the call's deadline
//!    ([`crate::http::timeout`]) and retries ([`crate::http::retry`]), and per attempt the
//!    injected faults ([`crate::http::fault`]) and the backend drawn by weight; without
//!    routes, the destination itself (within a gRPC caller's deadline).
//!
//! Per destination, or per backend (shared by every connection to it):
//! 7. the balancer ([`super::balance`]): [`super::failfast::FailFast`], then P2C over
//!    peak-EWMA latency across the endpoints.
//!
//! Per endpoint ([`super::endpoint`]):
//! 8. [`super::breaker::Breaker`]: failure accrual (ejection after consecutive failures);
//! 9. [`crate::http::metered::Metered`]: the endpoint's request metrics;
//! 10. the client: upgrades on a connection of their own; meshed endpoints
//!    [`crate::http::orig_proto::Upgrade`] then HTTP/2 over mutual TLS; others a plaintext pool.

use std::sync::Arc;

use super::destination::Lease;
use super::gate::Gate;
use super::route::Route;
use super::unrouted::CountUnrouted;
use crate::errors::Respond;
use crate::http::hop_by_hop::Strip;
use crate::metrics::Metrics;
use crate::observe::{Observe, Observer, Side};

/// The stack a connection to `dest` serves its requests with.
pub type Http = CountUnrouted<Observe<Respond<Strip<Gate<Route>>>>>;

/// Builds the stack for one connection from `client` to `dest`.
pub fn http(
    dest: Arc<Lease>,
    metrics: &Metrics,
    observer: &Arc<Observer>,
    client: std::net::SocketAddr,
) -> Http {
    let route = Route::new(dest.clone());
    let gate = Gate::new(route, dest.clone());
    let strip = Strip::new(gate);
    let respond = Respond::new(strip, true);
    let side = Side::Outbound {
        service: Arc::from(dest.target.to_string()),
        dest: dest.clone(),
    };
    let observe = Observe::new(respond, observer.clone(), side, client);
    CountUnrouted::new(observe, dest, metrics.clone())
}
