//! The Nomad platform, and the Consul catalog beside it.
//!
//! # Discovery
//! `[platforms.nomad]` follows Nomad's native services (`provider = "nomad"`): everything is
//! read once, then the event stream keeps it current (see [`nomad`]). `[platforms.consul]`
//! follows the Consul catalog with blocking queries (see [`consul`]), for services Nomad jobs
//! register with `provider = "consul"` and for machines registered in Consul. Both turn
//! registrations into mesh services by the rules of [`services`]: the tag `weft` marks an
//! instance whose proxy takes mutual TLS, `weft-inbound=<port>` says where that proxy listens
//! when it does not intercept the service's own port, and every instance of service `S` in
//! namespace `N` has the identity `spiffe://<trust domain>/ns/N/sa/S`.
//!
//! # Attestation
//! A proxy beside a Nomad task presents a workload-identity JWT for the audience `weft` (a
//! named `identity` block with `aud = ["weft"]` and `file = true`), names its workload as the
//! registry keys it, `namespace/allocation ID` (`--workload ${NOMAD_ALLOC_ID}`), and asks for
//! an account in its CSR (`--account`). The Nomad adapter checks the token's RS256 signature
//! against the cluster's key set, its expiry, start and audience, that the claimed workload is
//! the token's own allocation (`nomad_allocation_id`, in namespace `nomad_namespace`), and
//! then that the account holds: that allocation, of job `nomad_job_id`, must register a
//! meshed service with that account, which the adapter reads from the API
//! (`/v1/allocation/:id/services`); a service identity's token (`nomad_service`) covers only
//! that service. The Consul catalog proves no identity: proxies of Consul services run in
//! Nomad jobs and attest there.
//!
//! # Inbound policy
//! Both adapters key an instance's workload by its allocation where they know it (Nomad
//! always; Consul for the instances Nomad registered, whose service IDs carry the
//! allocation), so the control plane finds the services a proxy's allocation serves in
//! either catalog and gives each of its ports the rules of those services. Consul instances
//! that fail their checks stay in the registry as not ready: they take no traffic, and their
//! proxies keep their rules.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use weft_core::config::MeshConfig;
use weft_core::platform::{AttestError, Credential, Platform, PlatformError, clip};
use weft_core::{Identity, RegistryWriter, TrustDomain};

pub mod api;
pub mod config;
pub mod consul;
pub mod jwt;
pub mod nomad;
pub mod services;

pub use config::{ConsulSettings, NomadSettings};

/// The Nomad platform's name, its registry source and its credentials' `platform`.
pub const NOMAD: &str = "nomad";

/// The Consul platform's name and registry source.
pub const CONSUL: &str = "consul";

/// Why an adapter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NomadError {
    /// The mesh config file has no such section.
    #[error("no [platforms.{0}] section")]
    NoSection(&'static str),
    /// The section and the environment do not make a usable connection.
    #[error("{0}")]
    Settings(String),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] api::ApiError),
}

/// The Nomad platform adapter.
#[derive(Clone, Debug)]
pub struct NomadPlatform {
    api: api::Api,
    settings: Arc<NomadSettings>,
    trust_domain: TrustDomain,
    jwks: Arc<jwt::Jwks>,
    retry_floor: Duration,
    errors: Arc<tokio::sync::watch::Sender<u64>>,
}

impl NomadPlatform {
    /// The adapter of `cfg`'s `[platforms.nomad]`.
    pub fn new(cfg: &MeshConfig) -> Result<Self, NomadError> {
        let settings = NomadSettings::of(cfg).ok_or(NomadError::NoSection(NOMAD))?;
        Self::with_settings(settings.clone(), cfg.mesh.trust_domain.clone())
    }

    /// The adapter for `settings`, issuing identities in `trust_domain`.
    pub fn with_settings(
        settings: NomadSettings,
        trust_domain: TrustDomain,
    ) -> Result<Self, NomadError> {
        let conn = settings.connection().map_err(NomadError::Settings)?;
        let api = api::Api::new(conn, api::Flavor::Nomad)?;
        Ok(Self {
            jwks: Arc::new(jwt::Jwks::new(api.clone(), jwt::REFETCH_EVERY)),
            api,
            settings: Arc::new(settings),
            trust_domain,
            retry_floor: Duration::from_millis(500),
            errors: Arc::new(tokio::sync::watch::channel(0).0),
        })
    }

    /// The shortest wait before reading everything again after a failure (tests shorten it).
    #[must_use]
    pub fn with_retry_floor(mut self, floor: Duration) -> Self {
        self.retry_floor = floor;
        self
    }

    /// The least time between two fetches of the cluster's signing keys (tests shorten it).
    #[must_use]
    pub fn with_key_refetch(mut self, every: Duration) -> Self {
        self.jwks = Arc::new(jwt::Jwks::new(self.api.clone(), every));
        self
    }

    /// How many times the feed failed and read everything again, or left a registration out.
    pub fn watch_errors(&self) -> tokio::sync::watch::Receiver<u64> {
        self.errors.subscribe()
    }

    /// How many times the cluster's signing keys were fetched.
    pub fn key_fetches(&self) -> u64 {
        self.jwks.fetches()
    }
}

#[async_trait]
impl Platform for NomadPlatform {
    fn name(&self) -> &str {
        NOMAD
    }

    async fn run(
        &self,
        registry: RegistryWriter,
        shutdown: CancellationToken,
    ) -> Result<(), PlatformError> {
        nomad::run(
            &self.api,
            &self.settings.namespaces,
            &self.trust_domain,
            &registry,
            self.retry_floor,
            &self.errors,
            &shutdown,
        )
        .await;
        Ok(())
    }

    /// Nomad allocations register their services in Nomad or in Consul; the Consul adapter
    /// keys the instances Nomad registered by their allocation, as this adapter does.
    fn workload_sources(&self) -> Vec<&str> {
        vec![NOMAD, CONSUL]
    }

    async fn attest(&self, credential: &Credential) -> Result<Identity, AttestError> {
        if credential.platform != NOMAD {
            return Err(AttestError::WrongPlatform(credential.platform.clone()));
        }
        let claims = self
            .jwks
            .verify(&credential.token, &self.settings.token_audience)
            .await?;
        let ns = &claims.namespace;
        if !self.settings.namespaces.is_empty() && !self.settings.namespaces.contains(ns) {
            return Err(AttestError::Rejected(format!(
                "namespace {:?} is not one the mesh watches",
                clip(ns, 80)
            )));
        }
        // The proxy names its workload as the registry keys it, `namespace/allocation`, and
        // that must be the token's own allocation: the control plane finds the proxy's inbound
        // policy under that key.
        let Some(workload) = &credential.workload else {
            return Err(AttestError::Rejected(
                "the proxy names no workload: expected namespace/allocation ID (--workload)".into(),
            ));
        };
        match workload.split_once('/') {
            Some((claimed_ns, alloc)) if claimed_ns == ns && alloc == claims.allocation => {}
            _ => {
                return Err(AttestError::Rejected(format!(
                    "the proxy claims workload {:?}, the token is for allocation {}/{}",
                    clip(workload, 80),
                    clip(ns, 80),
                    clip(&claims.allocation, 80)
                )));
            }
        }
        let claimed = credential.account.clone();
        // What the token's allocation registers, in the token's namespace and job; a service
        // identity's token covers only its own service.
        let regs = nomad::allocation_services(&self.api, ns, &claims.allocation)
            .await
            .map_err(|e| AttestError::Unavailable(e.to_string()))?;
        let accounts: Vec<String> = regs
            .iter()
            .filter(|r| r.namespace == *ns && r.job_id == claims.job)
            .filter(|r| claims.service.as_ref().is_none_or(|s| *s == r.service_name))
            .filter_map(|r| {
                let tags = r.tags.clone().unwrap_or_default();
                let inst = services::Instance {
                    namespace: r.namespace.clone(),
                    service: r.service_name.clone(),
                    workload: r.alloc_id.clone(),
                    address: std::net::Ipv4Addr::UNSPECIFIED.into(),
                    port: r.port,
                    tags,
                    ready: true,
                };
                inst.meshed().then(|| inst.account().to_string())
            })
            .collect();
        let service = match claimed {
            Some(a) if accounts.contains(&a) => a,
            Some(a) => {
                return Err(AttestError::UnknownWorkload(format!(
                    "{}/{} (allocation {} of job {} registers no meshed service with that account)",
                    clip(ns, 80),
                    clip(&a, 80),
                    clip(&claims.allocation, 80),
                    clip(&claims.job, 80)
                )));
            }
            None => match accounts.as_slice() {
                [only] => only.clone(),
                [] => {
                    return Err(AttestError::UnknownWorkload(format!(
                        "allocation {} of job {} registers no meshed service",
                        clip(&claims.allocation, 80),
                        clip(&claims.job, 80)
                    )));
                }
                _ => {
                    return Err(AttestError::Rejected(
                        "the allocation's services have several accounts: the proxy must name one (--account)".into(),
                    ));
                }
            },
        };
        Identity::new(self.trust_domain.clone(), ns.as_str(), service.as_str())
            .map_err(|e| AttestError::Rejected(e.to_string()))
    }
}

/// The Consul catalog adapter.
#[derive(Clone, Debug)]
pub struct ConsulPlatform {
    api: api::Api,
    settings: Arc<ConsulSettings>,
    trust_domain: TrustDomain,
    retry_floor: Duration,
    errors: Arc<tokio::sync::watch::Sender<u64>>,
}

impl ConsulPlatform {
    /// The adapter of `cfg`'s `[platforms.consul]`.
    pub fn new(cfg: &MeshConfig) -> Result<Self, NomadError> {
        let settings = ConsulSettings::of(cfg).ok_or(NomadError::NoSection(CONSUL))?;
        Self::with_settings(settings.clone(), cfg.mesh.trust_domain.clone())
    }

    /// The adapter for `settings`.
    pub fn with_settings(
        settings: ConsulSettings,
        trust_domain: TrustDomain,
    ) -> Result<Self, NomadError> {
        let conn = settings.connection().map_err(NomadError::Settings)?;
        Ok(Self {
            api: api::Api::new(conn, api::Flavor::Consul)?,
            settings: Arc::new(settings),
            trust_domain,
            retry_floor: Duration::from_millis(500),
            errors: Arc::new(tokio::sync::watch::channel(0).0),
        })
    }

    /// The shortest wait before a failed query is retried (tests shorten it).
    #[must_use]
    pub fn with_retry_floor(mut self, floor: Duration) -> Self {
        self.retry_floor = floor;
        self
    }

    /// How many queries failed.
    pub fn watch_errors(&self) -> tokio::sync::watch::Receiver<u64> {
        self.errors.subscribe()
    }
}

#[async_trait]
impl Platform for ConsulPlatform {
    fn name(&self) -> &str {
        CONSUL
    }

    async fn run(
        &self,
        registry: RegistryWriter,
        shutdown: CancellationToken,
    ) -> Result<(), PlatformError> {
        consul::run(
            &self.api,
            self.settings.max_services,
            &self.trust_domain,
            &registry,
            self.retry_floor,
            &self.errors,
            &shutdown,
        )
        .await;
        Ok(())
    }

    async fn attest(&self, credential: &Credential) -> Result<Identity, AttestError> {
        if credential.platform != CONSUL {
            return Err(AttestError::WrongPlatform(credential.platform.clone()));
        }
        Err(AttestError::Rejected(
            "the Consul catalog proves no identity: proxies of Nomad jobs attest with platform nomad"
                .into(),
        ))
    }
}
