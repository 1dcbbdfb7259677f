//! Weft's control plane.
//!
//! It composes the core (registry, policy, mesh config), the certificate authority and the
//! platform adapters it is given, and serves:
//! - gRPC over TLS (`control.grpc_addr`, default 7443): `Identity.Certify`, and discovery on
//!   demand with `Discovery.Resolve` and `Discovery.Proxy` ([`discovery`]); what a client
//!   without a certificate may hold there is bounded ([`GrpcLimits`]), and so is what one
//!   caller may hold or ask (`[control.limits]`: connections and streams per identity, Certify
//!   calls per client address and per identity), and platform answers to Certify are cached
//!   (a credential presented again costs the platform nothing until its answer expires);
//! - HTTP (`control.http_addr`, default 127.0.0.1:7080): `/live`, `/ready`, `/metrics`,
//!   `/api/state` and the other views of [`admin`], and the built-in dashboard under
//!   `/dashboard` ([`dashboard`]). Bound to anything but loopback, all but `/live` and `/ready`
//!   require the bearer token in `<data_dir>/http-token`;
//! - optionally the same HTTP API on loopback without the token (`control.local_http_addr`;
//!   on Kubernetes the API server's port-forward reaches it, [`admin`]);
//! - optionally probes (`control.probe_addr`): `/live` and `/ready` alone, on connection slots
//!   of their own ([`admin`]).
//!
//! Platform adapters that stop are restarted with backoff; `/ready` answers 200 once the gRPC
//! API serves and every adapter has completed its first full sync.

pub mod admin;
mod attestation;
pub mod dashboard;
pub mod discovery;
mod identity;
mod leaf_ledger;
mod limits;
mod metrics;
pub mod platforms;
mod routes_view;
pub mod stats;
mod tap;
pub mod telemetry;
mod transport;
mod upkeep;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_ca::CertificateAuthority;
use weft_core::config::MeshConfig;
use weft_core::platform::Platform;
use weft_core::{Identity, Registry, RegistryWriter};

pub use discovery::{Answer, ENDPOINTS_PER_MESSAGE, answer, proxy_settings, updates};
pub use metrics::ControlMetrics;
pub use transport::GrpcLimits;

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
    /// The HTTP listener's token could not be written.
    #[error("HTTP API token: {0}")]
    HttpToken(#[from] weft_core::private_fs::PrivateFsError),
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
    /// Where the probe listener listens, if there is one.
    pub probe_addr: Option<SocketAddr>,
    /// Where the loopback HTTP listener without a token listens, if there is one.
    pub local_http_addr: Option<SocketAddr>,
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
    /// Bounds Certify calls in flight from clients without a mesh certificate.
    pub(crate) anonymous_certify: Arc<tokio::sync::Semaphore>,
    /// Bounds per caller: connections and streams per identity, Certify calls per address
    /// and per identity (`[control.limits]` as started with).
    pub(crate) limits: limits::CallerLimits,
    /// What platforms answered about credentials lately.
    pub(crate) attestations: attestation::AttestationCache,
    /// Whether the gRPC server is serving.
    pub(crate) grpc_serving: std::sync::atomic::AtomicBool,
    /// The configuration the control plane started with: `[ca]` and `[control]` edits take
    /// effect only at the next start.
    pub(crate) started_with: Arc<MeshConfig>,
    /// The bearer token `/api/state` and `/metrics` require when the HTTP listener is not on
    /// loopback.
    pub(crate) http_token: Option<String>,
    /// The proxies' traffic reports.
    pub(crate) telemetry: telemetry::Store,
    /// Taps running now (at most [`tap::MAX_TAPS`]).
    pub(crate) taps_running: Arc<std::sync::atomic::AtomicUsize>,
    /// The control plane's current certificate, which it also taps proxies with.
    pub(crate) serving: watch::Receiver<Arc<weft_ca::TlsCredentials>>,
    /// The latest leaf issued to each identity, for the dashboard.
    pub(crate) leaves: leaf_ledger::LeafLedger,
    /// Bounds the dashboard's live streams open at once.
    pub(crate) dashboard_streams: Arc<tokio::sync::Semaphore>,
}

// === impl State ===

impl State {
    /// Why the control plane is not ready, if it is not: the CA is loaded once `State` exists,
    /// so what remains is the gRPC server and each platform's first full sync.
    pub(crate) fn not_ready_because(&self) -> Option<String> {
        if !self.grpc_serving.load(std::sync::atomic::Ordering::Acquire) {
            return Some("the gRPC API is not serving".into());
        }
        let waiting: Vec<&str> = self
            .platforms
            .iter()
            .map(|p| p.name())
            .filter(|name| !self.registry.all_synced([*name]))
            .collect();
        if !waiting.is_empty() {
            return Some(format!(
                "waiting for the first sync of platform(s) {}",
                waiting.join(", ")
            ));
        }
        None
    }

    /// The config sections edited since start that need a restart to take effect.
    pub(crate) fn restart_required(&self) -> Vec<&'static str> {
        let now = self.config.borrow().clone();
        let mut out = Vec::new();
        // The mesh name fixes the data directory and the trust domain fixes the CA.
        if now.mesh != self.started_with.mesh {
            out.push("mesh");
        }
        if now.ca != self.started_with.ca {
            out.push("ca");
        }
        if now.control != self.started_with.control {
            out.push("control");
        }
        out
    }
}

#[cfg(test)]
impl State {
    /// A state for unit tests: trust domain `weft.test`, no platform, an empty registry, and
    /// `http_token` required on the HTTP listener if given.
    #[allow(clippy::unwrap_used, reason = "test support")]
    pub(crate) fn for_tests(ca: CertificateAuthority, http_token: Option<String>) -> Self {
        let dir = std::env::temp_dir();
        let text = format!(
            "[mesh]\nname = \"t\"\ntrust_domain = \"weft.test\"\n[ca]\ndata_dir = \"{}\"\n",
            dir.display()
        );
        let cfg = Arc::new(
            weft_core::config::Loader::new()
                .load_str(&text, std::path::Path::new("m.toml"))
                .unwrap(),
        );
        let (_tx, config) = watch::channel(cfg.clone());
        let own = Identity::control_plane(&cfg.mesh.trust_domain);
        let (_serving_tx, serving) =
            watch::channel(transport::server_credentials(&ca, &own).unwrap());
        State {
            telemetry: Default::default(),
            taps_running: Arc::default(),
            serving,
            leaves: Default::default(),
            dashboard_streams: Arc::new(tokio::sync::Semaphore::new(dashboard::MAX_STREAMS)),
            ca,
            config,
            registry: Registry::new(),
            platforms: Vec::new(),
            metrics: ControlMetrics::default(),
            shutdown: CancellationToken::new(),
            anonymous_certify: Arc::new(tokio::sync::Semaphore::new(1)),
            limits: limits::CallerLimits::new(&cfg.control.limits),
            attestations: Default::default(),
            grpc_serving: Default::default(),
            started_with: cfg,
            http_token,
        }
    }
}

/// Certify calls without a client certificate that may run at once; more are refused with
/// RESOURCE_EXHAUSTED (the proxy retries with backoff).
pub const MAX_ANONYMOUS_CERTIFY: usize = 64;

impl ControlPlane {
    /// Starts the control plane: loads or creates the CA, runs every platform adapter, and
    /// binds the gRPC and HTTP listeners (port 0 picks a free port; see the fields).
    pub async fn start(
        config: watch::Receiver<Arc<MeshConfig>>,
        platforms: Vec<Arc<dyn Platform>>,
    ) -> Result<Self, ControlError> {
        Self::start_with(config, platforms, GrpcLimits::default()).await
    }

    /// [`ControlPlane::start`] with other bounds on the gRPC listener's connections (tests
    /// shorten its timeouts).
    pub async fn start_with(
        config: watch::Receiver<Arc<MeshConfig>>,
        platforms: Vec<Arc<dyn Platform>>,
        limits: GrpcLimits,
    ) -> Result<Self, ControlError> {
        let cfg = config.borrow().clone();
        let data_dir = cfg.data_dir();
        let ca =
            CertificateAuthority::load_or_generate(&cfg.mesh.trust_domain, &cfg.ca, &data_dir)?;
        let trust_bundle_file = data_dir.join("trust-bundle.pem");
        // With a CA from configured files the data directory may not exist yet.
        std::fs::create_dir_all(&data_dir)
            .and_then(|()| {
                weft_core::private_fs::replace_file(
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
        let probes = bind_optional(cfg.control.probe_addr).await?;
        let probe_addr = probes.as_ref().map(|(_, a)| *a);
        let local_http = bind_optional(cfg.control.local_http_addr).await?;
        let local_http_addr = local_http.as_ref().map(|(_, a)| *a);

        let http_token = if cfg.control.http_addr.ip().is_loopback() {
            None
        } else {
            Some(admin::ensure_http_token(&data_dir.join("http-token"))?)
        };
        let shutdown = CancellationToken::new();
        let registry = Registry::new();
        let (serving_tx, serving) = watch::channel(tls);
        let state = Arc::new(State {
            telemetry: telemetry::Store::default(),
            taps_running: Arc::default(),
            serving: serving.clone(),
            leaves: leaf_ledger::LeafLedger::default(),
            dashboard_streams: Arc::new(tokio::sync::Semaphore::new(dashboard::MAX_STREAMS)),
            ca,
            config,
            registry: registry.clone(),
            platforms: platforms.clone(),
            metrics: ControlMetrics::default(),
            shutdown: shutdown.clone(),
            anonymous_certify: Arc::new(tokio::sync::Semaphore::new(MAX_ANONYMOUS_CERTIFY)),
            limits: limits::CallerLimits::new(&cfg.control.limits),
            attestations: attestation::AttestationCache::default(),
            grpc_serving: std::sync::atomic::AtomicBool::new(false),
            started_with: cfg.clone(),
            http_token,
        });

        let mut tasks = Vec::new();
        for platform in platforms {
            let writer = registry.writer(platform.name());
            tasks.push(tokio::spawn(supervise(platform, writer, shutdown.clone())));
        }
        state.metrics.set_intermediate(
            state.ca.intermediate_not_after(),
            state.ca.can_renew_intermediate(),
        );
        tasks.push(tokio::spawn(upkeep::run(
            state.clone(),
            serving_tx,
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(transport::serve_grpc(
            grpc,
            serving,
            state.clone(),
            limits,
            shutdown.clone(),
        )));
        if let Some((l, _)) = probes {
            tasks.push(tokio::spawn(admin::serve(
                l,
                admin::Endpoints::Probes,
                state.clone(),
                shutdown.clone(),
            )));
        }
        if let Some((l, _)) = local_http {
            tasks.push(tokio::spawn(admin::serve(
                l,
                admin::Endpoints::LocalHttp,
                state.clone(),
                shutdown.clone(),
            )));
        }
        tasks.push(tokio::spawn(admin::serve(
            http,
            admin::Endpoints::Http,
            state,
            shutdown.clone(),
        )));
        tracing::info!(%grpc_addr, %http_addr, probe_addr = ?probe_addr, local_http_addr = ?local_http_addr, bundle = %trust_bundle_file.display(), "control plane started");
        Ok(Self {
            grpc_addr,
            http_addr,
            probe_addr,
            local_http_addr,
            registry,
            trust_bundle_file,
            shutdown,
            tasks,
        })
    }

    /// Stops every listener and adapter and waits for them, at most [`SHUTDOWN_GRACE`]: gRPC
    /// connections get that long to finish their calls (a proxy still connected keeps its
    /// HTTP/2 connection open), then whatever is left is aborted.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                tracing::warn!("a control-plane task outlived the shutdown grace period; aborted");
                t.abort();
            }
        }
    }
}

/// How long [`ControlPlane::shutdown`] waits for its tasks.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a platform adapter until shutdown, restarting it with backoff whenever it stops.
/// Its workloads stay in the registry meanwhile: proxies keep routing to the last known
/// endpoints until the restarted adapter's first full sync replaces them.
async fn supervise(platform: Arc<dyn Platform>, writer: RegistryWriter, stop: CancellationToken) {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(250);
    const MAX: std::time::Duration = std::time::Duration::from_secs(30);
    let mut delay = FIRST;
    loop {
        let began = tokio::time::Instant::now();
        let result = platform.run(writer.clone(), stop.clone()).await;
        if stop.is_cancelled() {
            return;
        }
        match result {
            Ok(()) => {
                tracing::warn!(platform = platform.name(), retry_in = ?delay, "platform adapter stopped; restarting")
            }
            Err(e) => {
                tracing::error!(platform = platform.name(), error = %e, retry_in = ?delay, "platform adapter failed; restarting")
            }
        }
        // An adapter that ran for a while before failing starts over from a short delay.
        if began.elapsed() > MAX {
            delay = FIRST;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX);
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ControlError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ControlError::Bind { addr, source })
}

/// A listener on `addr` and the address it got, when there is an `addr`.
async fn bind_optional(
    addr: Option<SocketAddr>,
) -> Result<Option<(tokio::net::TcpListener, SocketAddr)>, ControlError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let l = bind(addr).await?;
    let bound = local_addr(&l, addr)?;
    Ok(Some((l, bound)))
}

fn local_addr(l: &tokio::net::TcpListener, addr: SocketAddr) -> Result<SocketAddr, ControlError> {
    l.local_addr()
        .map_err(|source| ControlError::Bind { addr, source })
}
