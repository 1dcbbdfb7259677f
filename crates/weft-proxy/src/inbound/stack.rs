//! The inbound HTTP stack, in the order a request goes through it (outermost first), after the
//! connection was admitted (TLS, the client's identity, the server's policy; [`super`]). Each
//! layer is a file of its own; this is the one place that says how they fit.
//!
//! 1. [`Observe`]: the request's span and access log line ([`crate::observe`]), over what
//!    the client saw, refusals included.
//! 2. [`Respond`]: the one place errors become responses (403, 502; `PERMISSION_DENIED`,
//!    `UNAVAILABLE` for gRPC callers), with the reason only for mesh peers, so no address or
//!    free text reaches a client outside the mesh.
//! 3. [`Downgrade`]: an HTTP/1 request carried over HTTP/2 by the client's proxy is itself
//!    again, before anything looks at it.
//! 4. [`Strip`]: hop-by-hop headers, from the request and from the response.
//! 5. [`Authorize`]: the server's policy, again for each request.
//! 6. [`Limit`]: the server's rate limit, after authorization so that a client it refuses
//!    spends no tokens (429, `RESOURCE_EXHAUSTED`).
//! 7. [`Metered`]: the connection's request metrics (peer label: the client's identity).
//! 8. [`App`]: the application's pool, or an upgrade's own connection.

use std::sync::Arc;

use super::app::App;
use super::authz::{Authorize, Caller};
use super::ratelimit::Limit;
use crate::errors::Respond;
use crate::http::hop_by_hop::Strip;
use crate::http::metered::Metered;
use crate::http::orig_proto::Downgrade;
use crate::metrics::RequestMetrics;
use crate::observe::{Observe, Observer, Side};

/// The stack an admitted connection serves its requests with.
pub type Http = Observe<Respond<Downgrade<Strip<Authorize<Limit<Metered<App>>>>>>>;

/// Builds the stack for one connection of `caller` from `remote`; `mesh_peer` says whether
/// errors may carry their reasons.
pub fn http(
    caller: Arc<Caller>,
    mesh_peer: bool,
    metrics: RequestMetrics,
    app: App,
    observer: &Arc<Observer>,
    remote: std::net::SocketAddr,
) -> Http {
    let client = caller.client.as_ref().map(|c| Arc::from(c.spiffe_id()));
    let metered = Metered::new(app, metrics);
    let limit = Limit::new(metered, caller.clone());
    let authorize = Authorize::new(limit, caller);
    let strip = Strip::new(authorize);
    let downgrade = Downgrade::new(strip);
    let respond = Respond::new(downgrade, mesh_peer);
    Observe::new(respond, observer.clone(), Side::Inbound { client }, remote)
}
