//! Weft's sidecar proxy.
//!
//! One binary runs beside every workload: as a Kubernetes native sidecar, as a Nomad task
//! sidecar, or as a plain process under `weft dev`. It
//! - obtains its certificate with `Identity.Certify` (the key never leaves memory) and renews it
//!   at 70 % of its life ([`identity`]);
//! - follows its own settings with `Discovery.Proxy`, and resolves each destination on first
//!   use with `Discovery.Resolve`, sharing the stream between connections and closing it when
//!   idle; it keeps serving from what it knows when the control plane is away ([`discovery`]);
//! - fronts the local application on the inbound listener: mutual TLS from peers, authorization
//!   of the client identity by the policy of the port it dialed, plaintext clients only where
//!   that policy allows unauthenticated clients ([`inbound`]);
//! - carries the application's outbound calls on explicit upstream listeners, or in
//!   transparent mode every connection it opens (redirected by the rules `weft-proxy init`
//!   writes, [`transparent`]), detecting HTTP/1.1, HTTP/2 and opaque TCP, balancing with P2C
//!   over peak-EWMA latency, opening mutual TLS to meshed peers, and passing connections to
//!   addresses outside the mesh through unchanged ([`outbound`]); HTTP requests to a service
//!   with routes are matched, filtered and split between backends as its routes say
//!   ([`outbound::route`], [`outbound::router`]);
//! - speaks mutual TLS with other proxies through streams on rustls's unbuffered API, which
//!   hold no buffers while a connection is idle ([`tls`]);
//! - serves HTTP on both sides through a stack of tower layers whose order each side writes in
//!   one place ([`outbound::stack`], [`inbound::stack`]); every error on the path is typed
//!   ([`errors`]) and answered in one place per side;
//! - records spans of sampled requests (continuing W3C and B3 contexts, starting traces where
//!   the mesh says), exports them over OTLP/gRPC, and writes an access log where asked
//!   ([`observe`]);
//! - serves `/live`, `/ready`, `/metrics` (and `/shutdown` when enabled) on the admin
//!   listener, and the probes alone on an optional probe listener with slots of its own, where
//!   platforms send their probes ([`admin`]).

pub mod admin;
pub mod app_probe;
pub mod config;
pub mod control;
pub mod detect;
pub mod discovery;
pub mod errors;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod io;
pub mod metrics;
pub mod observe;
pub mod outbound;
pub mod runtime;
pub mod server;
pub mod splice;
pub mod tap;
pub mod telemetry;
pub mod tls;
pub mod transparent;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use config::{ControlAddr, ProxyConfig, Upstream};
pub use runtime::Runtime;

/// Failures starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The flags are inconsistent.
    #[error("configuration: {0}")]
    Config(String),
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    /// The admin listener's address.
    pub admin_addr: SocketAddr,
    /// The probe listener's address, if there is one.
    pub probe_addr: Option<SocketAddr>,
    /// The tap listener's address, if there is one.
    pub tap_addr: Option<SocketAddr>,
    /// The inbound listener's address, if it fronts an app.
    pub inbound_addr: Option<SocketAddr>,
    /// The upstream listeners, by service.
    pub upstream_addrs: Vec<(String, SocketAddr)>,
    /// The transparent outbound listeners (IPv4 and, where the host has it, IPv6).
    pub outbound_addrs: Vec<SocketAddr>,
    shared: Arc<Runtime>,
    stop_background: CancellationToken,
    drain_requested: CancellationToken,
}

impl Proxy {
    /// Binds every listener and starts the identity and settings loops. Listeners accept at
    /// once; inbound connections wait for the first certificate, outbound requests for their
    /// destination's first answer.
    pub async fn start(config: ProxyConfig) -> Result<Self, ProxyError> {
        Self::start_with_access_log(config, std::io::stderr()).await
    }

    /// As [`Proxy::start`], with the access log (when one is on) written to `log` instead of
    /// stderr.
    pub async fn start_with_access_log<W>(config: ProxyConfig, log: W) -> Result<Self, ProxyError>
    where
        W: std::io::Write + Send + 'static,
    {
        config.check().map_err(ProxyError::Config)?;
        let stop_background = CancellationToken::new();
        let metrics = metrics::Metrics::default();
        let (cred_tx, credentials) = watch::channel(None);
        let (settings_tx, settings) = watch::channel(None);
        let observer = Arc::new(observe::Observer::new(
            credentials.clone(),
            metrics.spans.clone(),
            observe::access_log::AccessLog::to_writer(log, metrics.access_log_dropped.clone()),
            config.access_log,
            config.namespace.clone(),
            config.workload.clone(),
        ));
        let shared = Arc::new(Runtime {
            config: config.clone(),
            observer,
            credentials,
            settings,
            destinations: outbound::destination::Destinations::new(config.max_destinations),
            control: Default::default(),
            rate_limits: Arc::new(inbound::ratelimit::RateLimits::new(
                metrics.inbound_rate_limited.clone(),
            )),
            metrics,
            drain: runtime::Drain::default(),
            renew: tokio::sync::Notify::new(),
        });
        tokio::spawn(identity::run(
            shared.clone(),
            cred_tx,
            stop_background.clone(),
        ));
        tokio::spawn(discovery::settings::run(
            shared.clone(),
            settings_tx,
            stop_background.clone(),
        ));
        tokio::spawn(outbound::destination::sweep_idle(
            shared.clone(),
            stop_background.clone(),
        ));

        let drain_requested = CancellationToken::new();
        let admin = bind(config.admin_addr).await?;
        let admin_addr = admin.local_addr().map_err(|source| ProxyError::Bind {
            addr: config.admin_addr,
            source,
        })?;
        tokio::spawn(admin::serve(
            admin,
            admin::Endpoints::Admin,
            shared.clone(),
            drain_requested.clone(),
            stop_background.clone(),
        ));
        let mut probe_addr = None;
        if let Some(addr) = config.probe_addr {
            let probes = bind(addr).await?;
            probe_addr = probes.local_addr().ok();
            tokio::spawn(admin::serve(
                probes,
                admin::Endpoints::Probes,
                shared.clone(),
                drain_requested.clone(),
                stop_background.clone(),
            ));
        }

        let mut tap_addr = None;
        if let Some(addr) = config.tap_addr {
            let l = bind(addr).await?;
            tap_addr = l.local_addr().ok();
            tokio::spawn(tap::serve(l, shared.clone()));
        }
        tokio::spawn(telemetry::run(
            shared.clone(),
            config.tap_advertise.or(tap_addr),
            config.report_interval,
            stop_background.clone(),
        ));
        let mut inbound_addr = None;
        let app = match config.app_port {
            Some(port) => Some(inbound::AppTarget::Port(port)),
            None if config.transparent => Some(inbound::AppTarget::OriginalDestination),
            None => None,
        };
        if let Some(app) = app {
            let l = bind(config.inbound_addr).await?;
            inbound_addr = l.local_addr().ok();
            // The nat table redirects IPv6 peers to the same port over IPv6: in transparent
            // mode, an inbound listener on every IPv4 address gets its IPv6 twin.
            if config.transparent && config.inbound_addr.ip().is_unspecified() {
                let port = inbound_addr.map_or(config.inbound_addr.port(), |a| a.port());
                match bind_v6_only((std::net::Ipv6Addr::UNSPECIFIED, port).into()) {
                    Ok(l6) => {
                        tokio::spawn(inbound::serve(l6, app, shared.clone()));
                    }
                    // A host without IPv6 has no IPv6 peers.
                    Err(e) => tracing::info!(error = %e, "no IPv6 inbound listener"),
                }
            }
            tokio::spawn(inbound::serve(l, app, shared.clone()));
        }
        let mut outbound_addrs = Vec::new();
        if config.transparent {
            let mut addrs = vec![config.outbound_addr];
            if config.outbound_addr.ip() == std::net::Ipv4Addr::LOCALHOST {
                addrs.push((std::net::Ipv6Addr::LOCALHOST, config.outbound_addr.port()).into());
            }
            for (i, addr) in addrs.into_iter().enumerate() {
                let l = match bind(addr).await {
                    Ok(l) => l,
                    // ::1 is a convenience: a host without IPv6 has no IPv6 traffic to carry.
                    Err(e) if i > 0 => {
                        tracing::info!(error = %e, "no IPv6 outbound listener");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                outbound_addrs.push(l.local_addr().unwrap_or(addr));
                tokio::spawn(outbound::serve_transparent(l, shared.clone()));
            }
        }
        let mut upstream_addrs = Vec::new();
        for up in &config.upstreams {
            let l = bind(up.listen).await?;
            upstream_addrs.push((up.service.clone(), l.local_addr().unwrap_or(up.listen)));
            tokio::spawn(outbound::serve(l, up.clone(), shared.clone()));
        }
        tracing::info!(%admin_addr, inbound = ?inbound_addr, upstreams = ?upstream_addrs, outbound = ?outbound_addrs, "proxy listening");
        Ok(Self {
            admin_addr,
            probe_addr,
            tap_addr,
            inbound_addr,
            upstream_addrs,
            outbound_addrs,
            shared,
            stop_background,
            drain_requested,
        })
    }

    /// Resolves when `/shutdown` was called on the admin listener.
    pub async fn shutdown_requested(&self) {
        self.drain_requested.cancelled().await
    }

    /// Stops accepting, lets in-flight requests finish within `grace`, then closes whatever
    /// is still open (opaque TCP and upgraded connections included) and stops.
    pub async fn drain(self, grace: Duration) {
        tracing::info!(?grace, "draining");
        self.shared.drain.draining.cancel();
        self.shared.drain.connections.close();
        if tokio::time::timeout(grace, self.shared.drain.connections.wait())
            .await
            .is_err()
        {
            let open = self.shared.drain.connections.len();
            tracing::warn!(open, "grace period over; closing the remaining connections");
            self.shared.drain.closing.cancel();
            // Each connection task ends as soon as it sees `closing`; this wait is short.
            self.shared.drain.connections.wait().await;
        }
        self.stop_background.cancel();
    }

    /// Renews the certificate now instead of at 70 % of its life (after a root rotation, or
    /// to test that renewal drops no connection).
    pub fn renew_certificate(&self) {
        self.shared.renew.notify_one();
    }

    /// A lease on the destination `target`, resolving it if nobody uses it yet, as a
    /// connection to it would (for tests and `weft dev`).
    pub fn destination(
        &self,
        target: &weft_core::Target,
    ) -> Result<outbound::destination::Lease, outbound::destination::TooManyDestinations> {
        self.shared.destinations.get(&self.shared, target)
    }

    /// The proxy's shared state (for tests and `weft dev`).
    pub fn shared(&self) -> &Arc<Runtime> {
        &self.shared
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind { addr, source })
}

/// A listener on the IPv6 address `addr` only, so that it can share its port with a listener
/// on every IPv4 address.
fn bind_v6_only(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}
