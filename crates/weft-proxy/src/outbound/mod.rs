//! The outbound side: the application's calls, on explicit upstream listeners
//! (`--upstream api=127.0.0.1:9001`) and, in transparent mode, on the listener the nat table
//! redirects the application's connections to. There the target is the connection's original
//! destination, resolved by address: a mesh service is balanced over its endpoints exactly as an
//! explicit upstream is; an address outside the mesh is reached unchanged, in plaintext, with
//! the same metrics. A connection that reaches that listener without a redirect is refused
//! rather than looped back into the proxy.
//!
//! A connection takes a lease on its target's [`destination::Destination`], which resolves
//! the target on first use and is shared by every connection to it; its HTTP requests go
//! through the layers [`stack`] lists, its opaque bytes through [`tcp`].

pub mod balance;
pub mod breaker;
pub mod connect;
pub mod destination;
pub mod endpoint;
pub mod failfast;
pub mod gate;
pub mod p2c;
pub mod route;
pub mod router;
pub mod stack;
pub mod tcp;
pub mod unrouted;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use weft_core::{Protocol, Target};

use crate::detect::{Detected, detect};
use crate::discovery::Resolution;
use crate::io::{CountingIo, PrefixedIo};
use crate::metrics::{Direction, RejectLabels, TcpLabels};
use crate::server::{accept_loop, serve_http};
use crate::{Runtime, Upstream};

/// Serves one upstream listener until the proxy drains.
pub async fn serve(listener: TcpListener, upstream: Upstream, shared: Arc<Runtime>) {
    let target = match Target::parse(&upstream.service, &shared.config.namespace) {
        Ok(t @ Target::Service { .. }) => t,
        Ok(Target::Address(_)) | Err(_) => {
            tracing::error!(upstream = %upstream.service, "upstream not served: not a service name");
            return;
        }
    };
    let target = Arc::new(target);
    accept_loop(listener, shared.drain.clone(), move |tcp, peer| {
        handle(tcp, peer, target.clone(), shared.clone())
    })
    .await;
}

/// Serves the transparent outbound listener until the proxy drains.
pub async fn serve_transparent(listener: TcpListener, shared: Arc<Runtime>) {
    accept_loop(listener, shared.drain.clone(), move |tcp, peer| {
        handle_redirected(tcp, peer, shared.clone())
    })
    .await;
}

/// Logs and counts an outbound connection refused before any destination was chosen.
fn refuse_connection(
    shared: &Runtime,
    client: SocketAddr,
    reason: &str,
    detail: &dyn std::fmt::Display,
) {
    tracing::warn!(%client, reason, %detail, "outbound connection refused");
    shared
        .metrics
        .outbound_refused
        .get_or_create(&RejectLabels {
            reason: reason.to_string(),
        })
        .inc();
}

/// Carries one connection the nat table redirected here to its original destination.
async fn handle_redirected(tcp: TcpStream, client: SocketAddr, shared: Arc<Runtime>) {
    match crate::transparent::original_dst(&tcp) {
        Ok(original) => handle(tcp, client, Arc::new(Target::Address(original)), shared).await,
        Err(e) => refuse_connection(&shared, client, "no_original_destination", &e),
    }
}

/// Carries one connection from the application to `target`.
pub async fn handle(
    mut tcp: TcpStream,
    client: SocketAddr,
    target: Arc<Target>,
    shared: Arc<Runtime>,
) {
    let dest = match shared.destinations.get(&shared, &target) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            refuse_connection(&shared, client, "too_many_destinations", &e);
            return;
        }
    };
    let labels = TcpLabels {
        direction: Direction::outbound,
        peer: "-".into(),
    };
    let _open = shared.metrics.open_connection(labels.clone());
    // The declared protocol decides whether to detect: a server-speaks-first port must not
    // wait for the client's first bytes. Without an answer in time, detection is safe.
    // Every connection but the first finds the answer there: no timer, and the wait's state
    // is boxed so it does not enlarge every connection's task.
    let answer = match dest.answered() {
        Some(r) => r,
        None => Box::pin(dest.first_answer(shared.config.dispatch_timeout)).await,
    };
    let declared = match answer {
        Resolution::Resolved(r) => r.protocol,
        _ => Protocol::Auto,
    };
    let (detected, prefix) = match declared {
        Protocol::Opaque => (Detected::Opaque, bytes::Bytes::new()),
        Protocol::Http2 | Protocol::Grpc => (Detected::Http2, bytes::Bytes::new()),
        Protocol::Http1 => (Detected::Http1, bytes::Bytes::new()),
        Protocol::Auto => match Box::pin(detect(&mut tcp, shared.config.detect_timeout)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "client went away during detection");
                return;
            }
        },
    };
    let io = CountingIo::new(
        PrefixedIo::new(prefix, tcp),
        shared.metrics.tcp_read.get_or_create(&labels).clone(),
        shared.metrics.tcp_write.get_or_create(&labels).clone(),
    );
    match detected {
        // Boxed, so the connection's task holds only the state of the path it takes.
        Detected::Opaque => Box::pin(tcp::forward_tcp(io, &dest)).await,
        Detected::Http1 | Detected::Http2 => {
            let svc = stack::http(dest, &shared.metrics, &shared.observer, client);
            Box::pin(serve_http(io, detected, svc, &shared.drain)).await;
        }
    }
}
