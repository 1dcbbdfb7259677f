//! Discovery on demand.
//!
//! - [`settings`]: the proxy's own settings from `Discovery.Proxy` (the inbound policy of each
//!   of its servers and the trust bundle), followed for the proxy's whole life.
//! - [`resolve`]: one `Discovery.Resolve` stream per destination in use, opened at first use
//!   and closed once the destination has been idle for a while.
//!
//! Both keep what they last heard while the control plane is away, and resync on reconnect.

pub mod resolve;
pub mod settings;

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::Runtime;
use crate::control::{Backoff, ControlError};

pub use resolve::{EndpointView, Resolution, ResolvedService};
pub use settings::{PolicyError, ProxySettings, ServerSettings};

/// How one stream to the control plane ended.
#[derive(Debug)]
pub(crate) struct StreamEnd {
    /// Whether the stream delivered anything: the next attempt then starts from the shortest
    /// backoff.
    pub(crate) heard: bool,
    /// Why it ended.
    pub(crate) result: Result<(), ControlError>,
}

/// Opens a stream with `open` on the channel of the proxy's current certificate, and again
/// after it ends, with jittered backoff, until `stop`. What the streams taught stays in force
/// in between: `open` only ever replaces it with something newer. Failures are logged as
/// warnings when `loud`, else at info (one destination among many).
pub(crate) async fn follow_with_backoff<F, Fut>(
    shared: &Runtime,
    stop: &CancellationToken,
    what: &(dyn std::fmt::Display + Sync),
    loud: bool,
    mut open: F,
) where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = StreamEnd>,
{
    let mut backoff = Backoff::default();
    let mut creds_rx = shared.credentials.clone();
    loop {
        // Discovery needs the proxy's mesh certificate.
        let creds = tokio::select! {
            _ = stop.cancelled() => return,
            r = creds_rx.wait_for(|c| c.is_some()) => match r {
                Ok(c) => c.clone(),
                Err(_) => return,
            },
        };
        let Some(creds) = creds else { continue };
        let channel = shared.control.get(&shared.config, &creds);
        let end = tokio::select! {
            _ = stop.cancelled() => return,
            end = open(channel) => end,
        };
        if end.heard {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        match end.result {
            Ok(()) => {
                tracing::debug!(%what, retry_in = ?delay, "discovery stream ended; keeping what is known")
            }
            Err(e) if loud => {
                tracing::warn!(%what, error = %e, retry_in = ?delay, "discovery stream failed; keeping what is known")
            }
            Err(e) => {
                tracing::info!(%what, error = %e, retry_in = ?delay, "discovery stream failed; keeping what is known")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
