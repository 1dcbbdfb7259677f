//! The Kubernetes platform: Services, EndpointSlices, Pods and Namespaces from the API server
//! become mesh services, and proxies prove their pod's ServiceAccount with a projected token.
//!
//! # Discovery
//! The adapter watches the four kinds with kube's runtime watcher (list, then watch from the
//! list's resourceVersion; relist after `410 Gone`; paged lists) and keeps only what the mesh
//! needs of each object. Each Service is one mesh service `name.namespace`:
//! - its TCP ports, with the protocol from `appProtocol`, else the port name's prefix
//!   (`grpc-`, `http-`, `http2-`, `tcp-`, ...), else detected; ports listed in the Service's
//!   `weft.dev/opaque-ports` annotation, or whose target port a pod behind them lists in its
//!   own, are opaque;
//! - its ClusterIPs as virtual addresses, so intercepted connections to them resolve;
//! - endpoints from its EndpointSlices (not v1 Endpoints), merged across slices, with the
//!   port each slice resolved (named target ports work; headless Services too). Ready
//!   endpoints take connections; terminating ones that still serve are used only while no
//!   endpoint is ready; terminating ones that no longer serve drain; the rest are left out.
//! - each endpoint's identity `spiffe://<td>/ns/<namespace>/sa/<ServiceAccount>` from its pod,
//!   and whether the pod runs the Weft proxy (a container named `weft-proxy`): only those are
//!   reached with mutual TLS, the others in plaintext.
//!
//! Changes are written to the registry in batches: what arrived together is one write. While a
//! kind is being relisted, writes wait (at most [`RELIST_HOLD`]) until the relist is complete,
//! so a relist never shows a service vanishing and coming back.
//!
//! # Routes
//! Where the API server serves the Gateway API (its CRDs are installed; asked at start, then
//! every minute while they are not),
//! the adapter also watches `HTTPRoute` and `GRPCRoute` objects whose `parentRefs` name a
//! Service (the GAMMA mesh profile), turns them into the mesh's routes beside the mesh file's,
//! and writes each one's `status.parents` (`Accepted`, `ResolvedRefs`) when it changes (see the
//! `routes` module).
//!
//! # Attestation
//! A proxy presents a projected ServiceAccount token issued for the audience `weft` (or the
//! configured one). The adapter asks the API server with a TokenReview for that audience and
//! accepts only a bound ServiceAccount token (`system:serviceaccount:<ns>:<sa>`, with its pod's
//! name and uid) whose pod exists, has that uid, and runs that ServiceAccount.
//!
//! # For the CLI
//! [`check`] runs `weft check` against a cluster; [`forward`] reaches the control plane's
//! loopback HTTP listener through the API server's `pods/portforward`, for `weft stat
//! --kubernetes` and its siblings.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kube::Client;
use tokio_util::sync::CancellationToken;
use weft_core::config::MeshConfig;
use weft_core::platform::{AttestError, Credential, Platform, PlatformError};
use weft_core::{Identity, RegistryWriter, TrustDomain};

mod attest;
pub mod check;
mod cluster;
pub mod config;
pub mod forward;
pub mod inject;
mod policies;
mod routes;
mod watch;
pub mod webhook;

pub use cluster::{OPAQUE_PORTS_ANNOTATION, PROXY_CONTAINER};
pub use config::KubernetesSettings;

/// The name of this platform, its registry source and its credentials' `platform`.
pub const NAME: &str = "kubernetes";

/// The annotation on a Namespace or a Pod that asks for (`enabled`) or refuses (`disabled`)
/// the proxy sidecar.
pub const INJECT_ANNOTATION: &str = "weft.dev/inject";

/// How long writes wait for a relist to complete before the registry is updated anyway.
pub const RELIST_HOLD: Duration = Duration::from_secs(10);

/// The mesh services that these API objects make, computed as the adapter computes them from
/// its watches: each object reduced to what the mesh needs and applied in turn (namespaces,
/// Services, EndpointSlices, then Pods), then every service read back. No API server is
/// involved: the fuzz target of the response decoders (`tests/fuzz`) feeds it what
/// `serde_json` decoded from arbitrary bytes.
pub fn mesh_services(
    trust_domain: &TrustDomain,
    namespaces: &[k8s_openapi::api::core::v1::Namespace],
    services: &[k8s_openapi::api::core::v1::Service],
    slices: &[k8s_openapi::api::discovery::v1::EndpointSlice],
    pods: &[k8s_openapi::api::core::v1::Pod],
) -> Vec<weft_core::Service> {
    let mut cluster = cluster::Cluster::new(trust_domain.clone(), Default::default());
    let objects = namespaces
        .iter()
        .map(cluster::Object::from)
        .chain(services.iter().map(cluster::Object::from))
        .chain(slices.iter().map(cluster::Object::from))
        .chain(pods.iter().map(cluster::Object::from));
    for object in objects {
        cluster.apply(object);
    }
    cluster.all_services()
}

/// Errors setting the adapter up.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// The kubeconfig file could not be read.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No client configuration was found, or it is unusable.
    #[error("no usable Kubernetes client configuration: {0}")]
    Config(String),
    /// The client could not be built from the configuration.
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    /// A pod's port could not be reached through the API server ([`forward`]).
    #[error("{0}")]
    Forward(String),
}

/// Finds the client configuration as every Kubernetes tool does: `kubeconfig` (with `context`,
/// else its current context) when given; else, with a `context`, the kubeconfig named by
/// `KUBECONFIG` or `~/.kube/config`; else kube's inference (those files, then the in-cluster
/// ServiceAccount).
pub async fn client_config(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> Result<kube::Config, KubernetesError> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    let bad_file = |path: &std::path::Path, source| KubernetesError::Kubeconfig {
        path: path.display().to_string(),
        source,
    };
    match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| bad_file(path, e))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| bad_file(path, e))
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| KubernetesError::Config(e.to_string())),
        None => kube::Config::infer()
            .await
            .map_err(|e| KubernetesError::Config(e.to_string())),
    }
}

/// The Kubernetes platform adapter.
#[derive(Clone)]
pub struct KubernetesPlatform {
    client: Client,
    settings: Arc<KubernetesSettings>,
    trust_domain: TrustDomain,
    retry_floor: Duration,
    /// How many list and watch failures the watch loop has seen.
    watch_errors: Arc<tokio::sync::watch::Sender<u64>>,
    /// Each namespace's `weft.dev/inject` annotation, for the webhook.
    namespaces: cluster::SharedNamespaces,
    /// The control plane's trust bundle file, which the webhook hands to injected proxies.
    bundle_file: Option<std::path::PathBuf>,
    /// Where the webhook listens, once it does.
    webhook_addr: Arc<tokio::sync::watch::Sender<Option<std::net::SocketAddr>>>,
}

impl std::fmt::Debug for KubernetesPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesPlatform")
            .field("settings", &self.settings)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl KubernetesPlatform {
    /// Sets the adapter up from `cfg`'s `[platforms.kubernetes]` section (or the defaults),
    /// finding the client configuration as every Kubernetes tool does: the section's
    /// `kubeconfig`, else `KUBECONFIG`, else `~/.kube/config`, else the in-cluster
    /// ServiceAccount.
    pub async fn new(cfg: &MeshConfig) -> Result<Self, KubernetesError> {
        let settings = KubernetesSettings::of(cfg).cloned().unwrap_or_default();
        let config =
            client_config(settings.kubeconfig.as_deref(), settings.context.as_deref()).await?;
        let client = Client::try_from(config)?;
        Ok(
            Self::with_client(client, settings, cfg.mesh.trust_domain.clone())
                .with_trust_bundle_file(cfg.data_dir().join("trust-bundle.pem")),
        )
    }

    /// Names the file holding the mesh's roots (the control plane writes
    /// `<data_dir>/trust-bundle.pem`), which the webhook hands to the proxies it injects.
    pub fn with_trust_bundle_file(mut self, path: std::path::PathBuf) -> Self {
        self.bundle_file = Some(path);
        self
    }

    /// The adapter over an existing client.
    pub fn with_client(
        client: Client,
        settings: KubernetesSettings,
        trust_domain: TrustDomain,
    ) -> Self {
        Self {
            client,
            settings: Arc::new(settings),
            trust_domain,
            retry_floor: Duration::from_millis(800),
            watch_errors: Arc::new(tokio::sync::watch::Sender::new(0)),
            namespaces: Arc::default(),
            bundle_file: None,
            webhook_addr: Arc::new(tokio::sync::watch::Sender::new(None)),
        }
    }

    /// Sets the first delay before a failed list or watch is retried (default 800 ms; it
    /// doubles on each further failure up to 30 s). Tests shorten it.
    pub fn with_retry_floor(mut self, floor: Duration) -> Self {
        self.retry_floor = floor;
        self
    }

    /// Follows how many list and watch failures (refused requests, cut connections, objects
    /// that do not parse, expired resourceVersions) the adapter has seen and retried.
    pub fn watch_errors(&self) -> tokio::sync::watch::Receiver<u64> {
        self.watch_errors.subscribe()
    }

    /// The webhook's injector, with the mesh's current roots.
    fn injector(&self) -> Result<inject::Injector, String> {
        let path = self
            .bundle_file
            .as_ref()
            .ok_or("no trust bundle file is known to the webhook")?;
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("trust bundle {}: {e}", path.display()))?;
        Ok(inject::Injector {
            settings: self.settings.inject.clone(),
            trust_domain: self.trust_domain.to_string(),
            trust_bundle_pem: pem,
            token_audience: self.settings.token_audience.clone(),
        })
    }

    /// Binds the webhook and serves it until `shutdown`.
    async fn start_webhook(
        &self,
        addr: std::net::SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, PlatformError> {
        let fatal = |e: String| PlatformError::Settings {
            platform: NAME.into(),
            reason: e,
        };
        let w = &self.settings.webhook;
        let (Some(cert), Some(key)) = (&w.cert_file, &w.key_file) else {
            return Err(fatal(
                "webhook.addr needs webhook.cert_file and webhook.key_file".into(),
            ));
        };
        let tls = webhook::tls_from_files(cert, key).map_err(fatal)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| fatal(format!("webhook on {addr}: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| fatal(format!("webhook on {addr}: {e}")))?;
        tracing::info!(addr = %bound, "admission webhook listening");
        self.webhook_addr.send_replace(Some(bound));
        let this = self.clone();
        let handler: webhook::Handler = Arc::new(move |body: &[u8]| {
            let namespaces = this.namespaces.clone();
            let watched = this.settings.namespaces.clone();
            let lookup = move |ns: &str| {
                if !watched.is_empty() && !watched.iter().any(|w| w == ns) {
                    return webhook::Namespace::OutsideMesh;
                }
                webhook::Namespace::InMesh(
                    namespaces
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(ns)
                        .cloned()
                        .flatten(),
                )
            };
            match this.injector() {
                Ok(injector) => webhook::review(&injector, &lookup, body),
                Err(e) => {
                    tracing::warn!(error = %e, "webhook cannot inject");
                    webhook::unavailable(e)
                }
            }
        });
        let server = webhook::Webhook::new(handler, webhook::Limits::default());
        Ok(tokio::spawn(server.serve(listener, tls, shutdown)))
    }

    /// Follows where the admission webhook listens (`None` until it does).
    pub fn webhook_addr(&self) -> tokio::sync::watch::Receiver<Option<std::net::SocketAddr>> {
        self.webhook_addr.subscribe()
    }
}

#[async_trait]
impl Platform for KubernetesPlatform {
    fn name(&self) -> &str {
        NAME
    }

    async fn run(
        &self,
        registry: RegistryWriter,
        shutdown: CancellationToken,
    ) -> Result<(), PlatformError> {
        let webhook = match self.settings.webhook.addr {
            Some(addr) => Some(self.start_webhook(addr, shutdown.child_token()).await?),
            None => None,
        };
        watch::run(self, registry, shutdown).await;
        if let Some(task) = webhook {
            let _ = task.await;
        }
        Ok(())
    }

    async fn attest(&self, credential: &Credential) -> Result<Identity, AttestError> {
        attest::attest(self, credential).await
    }
}
