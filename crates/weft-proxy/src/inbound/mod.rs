//! The inbound side: clients reach the local application through here.
//!
//! Mesh peers come over mutual TLS: the handshake refuses unknown CAs, expired and missing
//! client certificates, and the client's SPIFFE ID then goes to the authorization policy of
//! the server (the workload's port) it dialed, so workloads that share an identity keep their
//! own policies. A client that policy does not admit is closed at once, before its first
//! request (and each request of an admitted client is checked again, so a policy edit applies
//! to connections already open). The ALPN the client proxy chose says what follows: `weft.h2`
//! (all HTTP, with HTTP/1 marked by `weft-orig-proto`), `weft.http1` (connection upgrades) or
//! opaque TCP.
//!
//! A client outside the mesh (plaintext, or TLS of its own without a mesh ALPN) is admitted
//! only where the server's policy allows unauthenticated clients; the default is mTLS only.
//! Each refusal is logged with its reason and counted in `weft_inbound_tls_rejected_total`.
//!
//! Behind `--app-port`, every connection goes to that port on 127.0.0.1. In transparent mode
//! each goes to its original destination (the address and port the client dialed, before the
//! nat table redirected it here), so every port of a multi-port application is served. Those
//! connections come from 127.0.0.6 ([`crate::init::APP_FORWARD_SOURCE`]), or `::6` over IPv6,
//! when the original destination is an address of the pod: the nat rules let that source
//! through, while the proxy's own calls to its pod's address (a Service this pod backs) go to
//! this listener, like any peer's.

pub mod app;
pub mod authz;
pub mod ratelimit;
pub mod stack;
pub mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use weft_ca::tls::peer_identity;
use weft_ca::{ALPN_MESH_H2, ALPN_MESH_HTTP1};
use weft_core::Identity;
use weft_core::policy::authz::{NoHttp, Request as Facts};

use crate::Runtime;
use crate::detect::{Detected, Opener, detect_from, sniff_opener};
use crate::http::{PlainPool, PoolLimits};
use crate::io::{CountingIo, PrefixedIo};
use crate::metrics::{Direction, RejectLabels, RequestLabels, RequestMetrics, TcpLabels};
use crate::server::{accept_loop, serve_http};
use crate::tls::ServerTls;
use authz::{Authorizer, Caller};
use tls::tls_failure_reason;

/// A handshake slower than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection pools kept for original destinations; past this, connections to further
/// addresses get a pool of their own that ends with them.
const MAX_APP_POOLS: usize = 256;

/// The label of clients without a mesh identity in metrics.
const UNAUTHENTICATED: &str = "unauthenticated";

/// Where inbound connections go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppTarget {
    /// To this port on 127.0.0.1 (`--app-port`).
    Port(u16),
    /// To each connection's original destination (transparent mode).
    OriginalDestination,
}

/// The application's connection pools, one per address it is reached at.
#[derive(Debug)]
struct Apps {
    target: AppTarget,
    limits: PoolLimits,
    /// Behind `--app-port`, the one pool: no lookup per connection.
    fixed: Option<PlainPool>,
    /// In transparent mode, a pool per original destination.
    pools: Mutex<HashMap<SocketAddr, PlainPool>>,
}

impl Apps {
    fn new(target: AppTarget, limits: PoolLimits) -> Self {
        let fixed = match target {
            AppTarget::Port(port) => Some(PlainPool::new(app_at(port), limits)),
            AppTarget::OriginalDestination => None,
        };
        Self {
            target,
            limits,
            fixed,
            pools: Mutex::default(),
        }
    }

    fn pool(&self, addr: SocketAddr) -> PlainPool {
        if let Some(pool) = &self.fixed {
            return pool.clone();
        }
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pools.get(&addr) {
            return p.clone();
        }
        let pool = PlainPool::from_source(addr, forward_source(addr), self.limits);
        if pools.len() < MAX_APP_POOLS {
            pools.insert(addr, pool.clone());
        }
        pool
    }
}

/// Serves the inbound listener until the proxy drains.
pub async fn serve(listener: TcpListener, target: AppTarget, shared: Arc<Runtime>) {
    let limits = PoolLimits {
        connect_timeout: shared.config.connect_timeout,
        ..PoolLimits::default()
    };
    let apps = Arc::new(Apps::new(target, limits));
    accept_loop(listener, shared.drain.clone(), move |tcp, remote| {
        handle(tcp, remote, apps.clone(), shared.clone())
    })
    .await;
}

/// The address a connection to the application at `addr` comes from: 127.0.0.6 (`::6` over
/// IPv6) for the pod's own addresses (an original destination in transparent mode), which the
/// nat rules of `weft-proxy init` tell apart from the proxy's calls to its own pod; the
/// system's choice for loopback (`--app-port`).
fn forward_source(addr: SocketAddr) -> Option<IpAddr> {
    match addr.ip() {
        IpAddr::V4(ip) if !ip.is_loopback() => Some(crate::init::APP_FORWARD_SOURCE.into()),
        IpAddr::V6(ip) if !ip.is_loopback() => Some(crate::init::APP_FORWARD_SOURCE_V6.into()),
        _ => None,
    }
}

/// The application behind `--app-port`.
fn app_at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Logs and counts a refused connection.
fn reject(shared: &Runtime, remote: SocketAddr, reason: &str, detail: &dyn std::fmt::Display) {
    tracing::warn!(%remote, reason, %detail, "inbound connection refused");
    shared
        .metrics
        .tls_rejected
        .get_or_create(&RejectLabels {
            reason: reason.to_string(),
        })
        .inc();
}

async fn handle(mut tcp: TcpStream, remote: SocketAddr, apps: Arc<Apps>, shared: Arc<Runtime>) {
    // Where the connection goes, and the port that names the server whose policy applies:
    // the port the peer dialed.
    let (app_addr, server_port) = match apps.target {
        AppTarget::Port(port) => match tcp.local_addr() {
            Ok(local) => (app_at(port), local.port()),
            Err(e) => {
                tracing::debug!(error = %e, "inbound connection gone before it was read");
                return;
            }
        },
        AppTarget::OriginalDestination => match crate::transparent::original_dst(&tcp) {
            Ok(original) => (original, original.port()),
            Err(e) => {
                reject(&shared, remote, "no_original_destination", &e);
                return;
            }
        },
    };
    let (opener, first) = match Box::pin(sniff_opener(&mut tcp, shared.config.detect_timeout)).await
    {
        Ok(sniffed) => sniffed,
        Err(e) => {
            tracing::debug!(error = %e, "inbound connection gone before it was read");
            return;
        }
    };
    let conn = Inbound {
        remote,
        app_addr,
        server_port,
        apps,
        shared,
    };
    match opener {
        Opener::MeshPeer => {
            // Two boxes, one after the other: the handshake's state (the TLS acceptor's, over a
            // kilobyte) is freed once it is done, instead of sizing the box an accepted
            // connection keeps for its whole life.
            let Some((tls, version, client)) = Box::pin(conn.mesh_handshake(tcp, first)).await
            else {
                return;
            };
            let peer = client.spiffe_id();
            Box::pin(conn.serve(tls, version, Some(Arc::new(client)), peer)).await
        }
        Opener::Plaintext | Opener::OtherTls => Box::pin(conn.outsider(tcp, first, opener)).await,
    }
}

/// One inbound connection, once its destination is known.
struct Inbound {
    remote: SocketAddr,
    app_addr: SocketAddr,
    server_port: u16,
    apps: Arc<Apps>,
    shared: Arc<Runtime>,
}

impl Inbound {
    /// A mesh peer's mutual TLS handshake: the TLS stream, what it carries and the client's
    /// identity, or `None` once the connection is refused.
    async fn mesh_handshake(
        &self,
        tcp: TcpStream,
        first: BytesMut,
    ) -> Option<(Box<ServerTls<PrefixedIo<TcpStream>>>, Detected, Identity)> {
        let shared = &self.shared;
        let Some(creds) = shared.credentials.borrow().clone() else {
            reject(
                shared,
                self.remote,
                "no_certificate_yet",
                &"this proxy has no certificate yet",
            );
            return None;
        };
        let io = PrefixedIo::new(first.freeze(), tcp);
        let handshake = crate::tls::accept(creds.server_config(), io);
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(tls)) => Box::new(tls),
            Ok(Err(e)) => {
                reject(shared, self.remote, tls_failure_reason(&e), &e);
                return None;
            }
            Err(_) => {
                reject(
                    shared,
                    self.remote,
                    "handshake_timeout",
                    &"no handshake in time",
                );
                return None;
            }
        };
        let (_, conn) = tls.get_ref();
        let Some(client) = peer_identity(conn.peer_certificates()) else {
            reject(
                shared,
                self.remote,
                "no_identity",
                &"client certificate carries no SPIFFE ID",
            );
            return None;
        };
        if client.trust_domain() != creds.identity().trust_domain() {
            reject(shared, self.remote, "foreign_trust_domain", &client);
            return None;
        }
        let version = match conn.alpn_protocol() {
            Some(ALPN_MESH_H2) => Detected::Http2,
            Some(ALPN_MESH_HTTP1) => Detected::Http1,
            _ => Detected::Opaque,
        };
        Some((tls, version, client))
    }

    /// A client outside the mesh: admitted only where the policy allows unauthenticated
    /// clients; what it speaks is then detected as on the outbound side.
    async fn outsider(self, mut tcp: TcpStream, first: BytesMut, opener: Opener) {
        // Counted once, as a refused handshake, not also as an authorization denial.
        let authorizer = Authorizer::new(
            self.shared.settings.clone(),
            self.shared.metrics.clone(),
            self.shared.rate_limits.clone(),
        );
        let admits = authorizer
            .decide(None, self.server_port, Facts::<NoHttp>::Connection)
            .decision
            .admits();
        if !admits {
            let (reason, detail) = match opener {
                Opener::OtherTls => (
                    "not_mesh_tls",
                    "TLS without a mesh protocol, and the policy requires mutual TLS",
                ),
                _ => ("not_tls", "plaintext, and the policy requires mutual TLS"),
            };
            reject(&self.shared, self.remote, reason, &detail);
            return;
        }
        let (version, first) = if opener == Opener::OtherTls {
            // The application's own TLS: opaque to the proxy.
            (Detected::Opaque, first.freeze())
        } else {
            match detect_from(&mut tcp, first, self.shared.config.detect_timeout).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(error = %e, "client went away during detection");
                    return;
                }
            }
        };
        let io = PrefixedIo::new(first, tcp);
        self.serve(io, version, None, UNAUTHENTICATED.to_string())
            .await;
    }

    /// Carries an admitted connection to the application, counting it under `peer`.
    async fn serve<I>(self, io: I, version: Detected, client: Option<Arc<Identity>>, peer: String)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let shared = self.shared;
        let labels = TcpLabels {
            direction: Direction::inbound,
            peer: peer.clone(),
        };
        let _open = shared.metrics.open_connection(labels.clone());
        let io = CountingIo::new(
            io,
            shared.metrics.tcp_read.get_or_create(&labels).clone(),
            shared.metrics.tcp_write.get_or_create(&labels).clone(),
        );
        let (app_addr, server_port) = (self.app_addr, self.server_port);
        // Decided once per connection, whatever it carries: a client the server's policy does
        // not admit is closed before it can send a byte to the application or hold an HTTP
        // connection open. HTTP requests are checked again one by one, so a policy edit
        // applies to connections already open.
        let authorizer = Authorizer::new(
            shared.settings.clone(),
            shared.metrics.clone(),
            shared.rate_limits.clone(),
        );
        let opaque = version == Detected::Opaque;
        if !authorizer
            .authorize(client.as_deref(), server_port, opaque)
            .admits()
        {
            return;
        }
        if opaque {
            Box::pin(forward_opaque(io, app_addr)).await;
            return;
        }
        let metrics = RequestMetrics::new(
            &shared.metrics,
            RequestLabels {
                direction: Direction::inbound,
                service: format!("{}/{}", shared.config.namespace, shared.config.workload),
                peer,
            },
        );
        let mesh_peer = client.is_some();
        let caller = Arc::new(Caller {
            authorizer,
            client,
            server_port,
        });
        let app = app::App::new(app_addr, self.apps.pool(app_addr), shared.drain.clone());
        let svc = stack::http(
            caller,
            mesh_peer,
            metrics,
            app,
            &shared.observer,
            self.remote,
        );
        Box::pin(serve_http(io, version, svc, &shared.drain)).await;
    }
}

async fn forward_opaque<I>(mut io: I, app_addr: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match crate::io::dial(app_addr, forward_source(app_addr)).await {
        Ok(mut app) => {
            let _ = app.set_nodelay(true);
            if let Err(e) = crate::splice::splice(&mut io, &mut app).await {
                tracing::debug!(error = %e, "inbound TCP closed with an error");
            }
        }
        Err(e) => tracing::info!(%app_addr, error = %e, "application unreachable"),
    }
}
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Connections to the pod's own addresses come from 127.0.0.6 or `::6`, which the nat
    /// rules let through; loopback (`--app-port`) keeps the system's choice.
    #[tokio::test]
    async fn the_application_is_reached_from_the_forward_source() {
        let six = Some(IpAddr::from(crate::init::APP_FORWARD_SOURCE));
        assert_eq!(forward_source("10.1.2.3:8080".parse().unwrap()), six);
        assert_eq!(forward_source("127.0.0.1:8080".parse().unwrap()), None);
        assert_eq!(
            forward_source("[fd00::1]:8080".parse().unwrap()),
            Some(IpAddr::from(crate::init::APP_FORWARD_SOURCE_V6))
        );
        assert_eq!(forward_source("[::1]:8080".parse().unwrap()), None);

        let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = app.local_addr().unwrap();
        let _out = crate::io::dial(addr, six).await.unwrap();
        let (_in, from) = app.accept().await.unwrap();
        assert_eq!(from.ip(), IpAddr::from([127, 0, 0, 6]));
    }

    /// Every connection's task is as large as its future; the heavy states (handshake, HTTP
    /// server, splice) are boxed so an idle connection pays only for what it uses. This keeps
    /// someone from inlining them again unnoticed.
    #[tokio::test]
    async fn connection_futures_stay_small() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = <crate::ProxyConfig as clap::Parser>::try_parse_from([
            "weft-proxy",
            "--trust-bundle",
            &dir.path().join("none.pem").display().to_string(),
            "--token-file",
            &dir.path().join("none").display().to_string(),
            "--workload",
            "web",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .unwrap();
        let proxy = crate::Proxy::start(cfg).await.unwrap();
        let shared = proxy.shared().clone();
        let apps = Arc::new(Apps::new(
            AppTarget::Port(addr.port()),
            PoolLimits::default(),
        ));
        let inbound = handle(
            TcpStream::connect(addr).await.unwrap(),
            addr,
            apps,
            shared.clone(),
        );
        let target = Arc::new(weft_core::Target::parse("api.demo", "demo").unwrap());
        let outbound = crate::outbound::handle(
            TcpStream::connect(addr).await.unwrap(),
            addr,
            target,
            shared,
        );
        assert!(
            std::mem::size_of_val(&inbound) <= 2048,
            "{}",
            std::mem::size_of_val(&inbound)
        );
        assert!(
            std::mem::size_of_val(&outbound) <= 512,
            "{}",
            std::mem::size_of_val(&outbound)
        );
    }
}
