//! What the proxy's tasks share, split by use, so that each layer of a request stack holds only
//! what it reads and can be built alone in a test.
//!
//! - [`Drain`]: the connection tracker and the two drain signals; every server and every
//!   spliced connection needs it.
//! - [`CredentialsWatch`]: the current certificate (TLS on both sides).
//! - [`SettingsWatch`]: the proxy's settings from the control plane (inbound policy).
//! - [`crate::metrics::Metrics`]: the registry's handles.
//!
//! [`Runtime`] holds them all, with the configuration, the destinations and the control-plane
//! channel, for the background loops (identity, settings, resolution) and for building the
//! stacks; no layer takes it.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{ProxyConfig, control, discovery, metrics, outbound};

/// The current certificate, once there is one.
pub type CredentialsWatch = watch::Receiver<Option<Arc<weft_ca::TlsCredentials>>>;

/// The proxy's own settings (inbound policies, trust bundle), once they have come.
pub type SettingsWatch = watch::Receiver<Option<Arc<discovery::ProxySettings>>>;

/// The drain: connections are tracked, told to finish (`draining`) and then closed
/// (`closing`). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    /// Cancelled when the proxy stops accepting and starts draining.
    pub draining: CancellationToken,
    /// Cancelled when the drain's grace period is over: every connection still open is closed.
    pub closing: CancellationToken,
    /// Tracks every connection, for the drain.
    pub connections: TaskTracker,
}

impl Drain {
    /// Runs `conn` as one of the proxy's connections: the drain waits for it, and drops it
    /// (closing its sockets) at the grace deadline.
    pub fn spawn(&self, conn: impl Future<Output = ()> + Send + 'static) {
        let closing = self.closing.clone();
        self.connections.spawn(async move {
            tokio::select! {
                () = conn => {}
                () = closing.cancelled() => {}
            }
        });
    }
}

/// Everything the proxy's tasks share. See the module docs.
#[derive(Debug)]
pub struct Runtime {
    /// The settings.
    pub config: ProxyConfig,
    /// The current certificate, once there is one.
    pub credentials: CredentialsWatch,
    /// The proxy's own settings, once they have come.
    pub settings: SettingsWatch,
    /// The destinations in use, each with its resolve stream and balancers.
    pub destinations: outbound::destination::Destinations,
    /// The channel discovery calls share.
    pub control: control::SharedChannel,
    /// The metrics registry.
    pub metrics: metrics::Metrics,
    /// The drain.
    pub drain: Drain,
    /// Wakes the identity loop to renew the certificate now.
    pub renew: tokio::sync::Notify,
    /// The inbound servers' rate-limit buckets, shared by every connection.
    pub rate_limits: Arc<crate::inbound::ratelimit::RateLimits>,
    /// Spans and the access log.
    pub observer: Arc<crate::observe::Observer>,
}
