//! The seam between the core and the platforms that run workloads.
//!
//! Each adapter (local, Kubernetes, Nomad, Consul) implements [`Platform`]. The control plane
//! runs several at once, each writing its own registry source, so one mesh can span platforms
//! under one trust domain.

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::model::Identity;
use crate::registry::RegistryWriter;

/// Errors that stop an adapter's feed. Passing faults (a disconnect, a 410 Gone) are handled
/// inside `run` by resyncing; only faults it cannot recover from are returned.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The adapter's settings are unusable.
    #[error("platform {platform}: bad settings: {reason}")]
    Settings {
        /// The adapter's name.
        platform: String,
        /// What is wrong.
        reason: String,
    },
    /// The adapter failed and cannot go on.
    #[error("platform {platform}: {source}")]
    Fatal {
        /// The adapter's name.
        platform: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why a credential was not accepted.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestError {
    /// The credential is addressed to another platform.
    #[error("credential is for platform {0:?}, not this one")]
    WrongPlatform(String),
    /// The credential is malformed, forged, expired or revoked.
    #[error("credential rejected: {0}")]
    Rejected(String),
    /// The credential is valid but names no workload this platform knows.
    #[error("no workload {0} on this platform")]
    UnknownWorkload(String),
    /// The platform could not be asked (its API is down).
    #[error("platform unavailable: {0}")]
    Unavailable(String),
}

impl AttestError {
    /// A fixed name of the variant, for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            AttestError::WrongPlatform(_) => "wrong_platform",
            AttestError::Rejected(_) => "rejected",
            AttestError::UnknownWorkload(_) => "unknown_workload",
            AttestError::Unavailable(_) => "unavailable",
        }
    }
}

/// An error and its causes on one line, outermost first, each cause said once: transport
/// errors (tonic's, reqwest's, kube's) say little without their sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// At most `max` characters of `s`: how much of a peer- or server-supplied string may go into
/// a log line or an error.
pub fn clip(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// What a proxy presents to prove which workload it runs beside.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The platform that issued the credential (`local`, `kubernetes`, `nomad`).
    pub platform: String,
    /// The secret itself: a bootstrap token, a ServiceAccount token, a workload-identity JWT.
    pub token: String,
    /// The workload the proxy claims to run beside, as `namespace/name`, where the token alone
    /// does not say it.
    pub workload: Option<String>,
    /// The account the proxy asks to be certified as (the name in its CSR's SPIFFE ID), for
    /// platforms whose workloads may run under several accounts.
    pub account: Option<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Credential")
            .field("platform", &self.platform)
            .field("token", &"<redacted>")
            .field("workload", &self.workload)
            .field("account", &self.account)
            .finish()
    }
}

/// A platform adapter.
#[async_trait]
pub trait Platform: std::fmt::Debug + Send + Sync + 'static {
    /// The adapter's name, also its registry source and its credentials' `platform`.
    fn name(&self) -> &str;

    /// Feeds workloads into `registry` until `shutdown` is cancelled, resyncing after
    /// disconnects (relist on 410 Gone, reset a blocking index that goes backwards).
    async fn run(
        &self,
        registry: RegistryWriter,
        shutdown: CancellationToken,
    ) -> Result<(), PlatformError>;

    /// Checks a proxy's credential and returns the identity it proves. The workload the
    /// credential names (`Credential::workload`) must be the one the credential proves, under
    /// the key this platform's registry source gives it: the control plane later finds the
    /// proxy's inbound policy under that key.
    async fn attest(&self, credential: &Credential) -> Result<Identity, AttestError>;

    /// The registry sources that report the workloads of proxies this platform attests: its
    /// own, and any other that keys the same workloads the same way (a Nomad allocation's
    /// services may be registered in Consul). A proxy's inbound policy comes from the services
    /// its workload serves in all of them.
    fn workload_sources(&self) -> Vec<&str> {
        vec![self.name()]
    }
}
