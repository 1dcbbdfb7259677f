//! The local platform: workloads declared in the mesh config file itself
//! (`[[platforms.local.workloads]]`). It is what `weft dev` runs on, and it suits plain hosts
//! and VMs where no orchestrator knows the workloads.
//!
//! The adapter follows the config file through the core's [`ConfigWatcher`]: a valid edit adds,
//! changes or removes endpoints at once, an invalid edit is reported by the watcher and ignored
//! (the last good set stays). Proxies attest with the bootstrap token this adapter writes to a
//! file only the user can read, plus the name of the workload they run beside.
//!
//! [`ConfigWatcher`]: weft_core::config::ConfigWatcher

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_core::config::{LocalWorkload, MeshConfig};
use weft_core::platform::{AttestError, Credential, Platform, PlatformError};
use weft_core::{Identity, RegistryWriter, ServiceName, Workload, WorkloadKey};

/// The name of this platform, its registry source and its credentials' `platform`.
pub const NAME: &str = "local";

/// Errors setting the adapter up.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The bootstrap token file could not be read or written.
    #[error("bootstrap token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The local platform adapter.
#[derive(Debug)]
pub struct LocalPlatform {
    config: watch::Receiver<Arc<MeshConfig>>,
    token: String,
}

impl LocalPlatform {
    /// Follows `config` and keeps the bootstrap token in `token_file`: reused if it already holds
    /// one, otherwise generated and written with mode 0600.
    pub fn new(
        config: watch::Receiver<Arc<MeshConfig>>,
        token_file: &Path,
    ) -> Result<Self, LocalError> {
        let token = ensure_token(token_file)?;
        Ok(Self { config, token })
    }

    /// The workloads a config declares, as registry entries.
    pub fn workloads_of(cfg: &MeshConfig) -> Vec<Workload> {
        let Some(local) = cfg.platforms.local.as_ref().filter(|l| l.enabled) else {
            return Vec::new();
        };
        local
            .workloads
            .iter()
            .filter_map(|w| to_workload(cfg, w))
            .collect()
    }
}

fn to_workload(cfg: &MeshConfig, w: &LocalWorkload) -> Option<Workload> {
    // The config was validated, so these cannot fail; skip rather than panic all the same.
    let identity = Identity::new(cfg.mesh.trust_domain.clone(), &w.namespace, w.account()).ok()?;
    let service = match &w.service {
        Some(s) => Some(ServiceName::parse(s, &w.namespace).ok()?),
        None => None,
    };
    Some(Workload {
        key: WorkloadKey {
            namespace: w.namespace.clone(),
            name: w.name.clone(),
        },
        identity,
        service,
        address: SocketAddr::new(w.address, w.port),
        protocol: w.protocol,
        meshed: w.meshed,
        labels: Default::default(),
    })
}

#[async_trait]
impl Platform for LocalPlatform {
    fn name(&self) -> &str {
        NAME
    }

    async fn run(
        &self,
        registry: RegistryWriter,
        shutdown: CancellationToken,
    ) -> Result<(), PlatformError> {
        let mut config = self.config.clone();
        loop {
            let workloads = Self::workloads_of(&config.borrow_and_update());
            tracing::debug!(count = workloads.len(), "local workloads");
            registry.replace_all(workloads);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = config.changed() => {
                    if changed.is_err() {
                        // The watcher stopped: the control plane is shutting down.
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn attest(&self, credential: &Credential) -> Result<Identity, AttestError> {
        if credential.platform != NAME {
            return Err(AttestError::WrongPlatform(credential.platform.clone()));
        }
        if !constant_time_eq(credential.token.as_bytes(), self.token.as_bytes()) {
            return Err(AttestError::Rejected("wrong bootstrap token".into()));
        }
        let claim = credential
            .workload
            .as_deref()
            .ok_or_else(|| AttestError::Rejected("no workload named".into()))?;
        let (ns, name) = claim
            .split_once('/')
            .ok_or_else(|| AttestError::Rejected(format!("workload {claim:?} is not ns/name")))?;
        let cfg = self.config.borrow().clone();
        let w = cfg
            .platforms
            .local
            .iter()
            .filter(|l| l.enabled)
            .flat_map(|l| l.workloads.iter())
            .find(|w| w.namespace == ns && w.name == name)
            .ok_or_else(|| AttestError::UnknownWorkload(claim.to_string()))?;
        Identity::new(cfg.mesh.trust_domain.clone(), &w.namespace, w.account())
            .map_err(|e| AttestError::Rejected(e.to_string()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the token in `path` if it is a well-formed one, else writes a new one (mode 0600).
fn ensure_token(path: &Path) -> Result<String, LocalError> {
    let io = |source| LocalError::TokenFile {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(existing) = fs::read_to_string(path) {
        let t = existing.trim();
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
            return Ok(t.to_string());
        }
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| io(std::io::Error::other("no system randomness")))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(token.as_bytes()).map_err(io)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("weft-local-token-{}", std::process::id()));
        let path = dir.join("token");
        let a = ensure_token(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ensure_token(&path).unwrap(), a);
        fs::write(&path, "short").unwrap();
        assert_ne!(ensure_token(&path).unwrap(), a);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
