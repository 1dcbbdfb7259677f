//! Weft's control plane.
//!
//! It composes the core (registry, policy, mesh config), the certificate authority and the
//! platform adapters it is given, and serves:
//! - gRPC over TLS (`control.grpc_addr`, default 7443): `Identity.Certify` and `Discovery.Watch`;
//! - HTTP (`control.http_addr`, default 7080): `/ready`, `/metrics` and `/api/state`.

mod admin;
mod discovery;
mod identity;
mod metrics;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_ca::CertificateAuthority;
use weft_core::config::MeshConfig;
use weft_core::platform::Platform;
use weft_core::{Identity, Registry};

pub use discovery::view_for;
pub use metrics::ControlMetrics;

/// Failures starting the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The CA could not be loaded or created.
    #[error("certificate authority: {0}")]
    Ca(#[from] weft_ca::CaError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration could not be built.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The trust bundle could not be written.
    #[error("writing the trust bundle to {path}: {source}")]
    Bundle {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// The registry the platforms feed.
    pub registry: Registry,
    /// The trust bundle file proxies start from.
    pub trust_bundle_file: std::path::PathBuf,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Shared state of the request handlers.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) ca: CertificateAuthority,
    pub(crate) config: watch::Receiver<Arc<MeshConfig>>,
    pub(crate) registry: Registry,
    pub(crate) platforms: Vec<Arc<dyn Platform>>,
    pub(crate) metrics: ControlMetrics,
    pub(crate) shutdown: CancellationToken,
}

impl ControlPlane {
    /// Starts the control plane: loads or creates the CA, runs every platform adapter, and
    /// binds the gRPC and HTTP listeners (port 0 picks a free port; see the fields).
    pub async fn start(
        config: watch::Receiver<Arc<MeshConfig>>,
        platforms: Vec<Arc<dyn Platform>>,
    ) -> Result<Self, ControlError> {
        let cfg = config.borrow().clone();
        let data_dir = cfg.data_dir();
        let ca =
            CertificateAuthority::load_or_generate(&cfg.mesh.trust_domain, &cfg.ca, &data_dir)?;
        let trust_bundle_file = data_dir.join("trust-bundle.pem");
        // With a CA from configured files the data directory may not exist yet.
        std::fs::create_dir_all(&data_dir)
            .and_then(|()| {
                weft_ca::files::replace_file(
                    &trust_bundle_file,
                    ca.trust_bundle().to_pem().as_bytes(),
                    0o644,
                )
            })
            .map_err(|source| ControlError::Bundle {
                path: trust_bundle_file.clone(),
                source,
            })?;

        let own = Identity::control_plane(&cfg.mesh.trust_domain);
        let tls = transport::server_credentials(&ca, &own)?;
        let grpc = bind(cfg.control.grpc_addr).await?;
        let http = bind(cfg.control.http_addr).await?;
        let grpc_addr = local_addr(&grpc, cfg.control.grpc_addr)?;
        let http_addr = local_addr(&http, cfg.control.http_addr)?;

        let shutdown = CancellationToken::new();
        let registry = Registry::new();
        let state = Arc::new(State {
            ca,
            config,
            registry: registry.clone(),
            platforms: platforms.clone(),
            metrics: ControlMetrics::default(),
            shutdown: shutdown.clone(),
        });

        let mut tasks = Vec::new();
        for platform in platforms {
            let writer = registry.writer(platform.name());
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = platform.run(writer, stop).await {
                    tracing::error!(platform = platform.name(), error = %e, "platform adapter stopped");
                }
            }));
        }
        tasks.push(tokio::spawn(transport::serve_grpc(
            grpc,
            tls,
            state.clone(),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(admin::serve(http, state, shutdown.clone())));
        tracing::info!(%grpc_addr, %http_addr, bundle = %trust_bundle_file.display(), "control plane started");
        Ok(Self {
            grpc_addr,
            http_addr,
            registry,
            trust_bundle_file,
            shutdown,
            tasks,
        })
    }

    /// Stops every listener and adapter and waits for them.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ControlError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ControlError::Bind { addr, source })
}

fn local_addr(l: &tokio::net::TcpListener, addr: SocketAddr) -> Result<SocketAddr, ControlError> {
    l.local_addr()
        .map_err(|source| ControlError::Bind { addr, source })
}
