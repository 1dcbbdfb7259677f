//! The local platform: workloads declared in the mesh config file itself
//! (`[[platforms.local.workloads]]`). It is what `weft dev` runs on, and it suits plain hosts
//! and VMs where no orchestrator knows the workloads.
//!
//! The adapter follows the config file through the core's [`ConfigWatcher`]: a valid edit adds,
//! changes or removes endpoints at once, an invalid edit is reported by the watcher and ignored
//! (the last good set stays).
//!
//! Proxies attest with a token of their own workload: the adapter writes one random token per
//! declared workload to `<data_dir>/tokens/<namespace>/<name>` (mode 0600, directories 0700)
//! and accepts a token only for the workload it was written for, so the token of one workload
//! proves nothing about another. A removed workload's token is deleted, and one that comes back
//! gets a new token.
//!
//! [`ConfigWatcher`]: weft_core::config::ConfigWatcher

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_core::config::MeshConfig;
use weft_core::platform::{AttestError, Credential, Platform, PlatformError};
use weft_core::private_fs::{self, PrivateFsError};
use weft_core::{
    Endpoint, Identity, RegistryWriter, Service, ServiceName, ServicePort, WorkloadKey,
};

pub mod config;

pub use config::{LocalPort, LocalSettings, LocalWorkload, token_file};

/// The name of this platform, its registry source and its credentials' `platform`.
pub const NAME: &str = "local";

/// Errors setting the adapter up.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A workload token could not be read or written.
    #[error("workload token: {0}")]
    Token(#[from] PrivateFsError),
    /// A workload name cannot be used as a file name.
    #[error("workload {0:?} cannot name a token file")]
    BadName(String),
}

/// The local platform adapter.
#[derive(Debug)]
pub struct LocalPlatform {
    config: watch::Receiver<Arc<MeshConfig>>,
    /// The token of each declared workload, by (namespace, name).
    tokens: Mutex<Tokens>,
}

type Tokens = BTreeMap<(String, String), String>;

impl LocalPlatform {
    /// Follows `config` and writes the token of every workload it declares (reusing tokens
    /// already on disk), so proxies can attest as soon as this returns.
    pub fn new(config: watch::Receiver<Arc<MeshConfig>>) -> Result<Self, LocalError> {
        let cfg = config.borrow().clone();
        let tokens = sync_tokens(&cfg, &Tokens::new())?;
        Ok(Self {
            config,
            tokens: Mutex::new(tokens),
        })
    }

    /// The services a config declares, as registry entries: each port a workload serves a
    /// service on is an endpoint of that service's port `service_port`, at the workload's
    /// address.
    pub fn services_of(cfg: &MeshConfig) -> Vec<Service> {
        let mut services: BTreeMap<ServiceName, BTreeMap<u16, ServicePort>> = BTreeMap::new();
        let mut virtual_ips: BTreeMap<ServiceName, Vec<std::net::IpAddr>> = BTreeMap::new();
        for w in declared(cfg) {
            // The config was validated, so these cannot fail; skip rather than panic all the
            // same.
            let Ok(identity) =
                Identity::new(cfg.mesh.trust_domain.clone(), &w.namespace, w.account())
            else {
                continue;
            };
            for p in w.served_ports() {
                let Ok(name) = ServiceName::parse(&p.service, &w.namespace) else {
                    continue;
                };
                if let Some(vip) = p.virtual_ip {
                    virtual_ips.entry(name.clone()).or_default().push(vip);
                }
                let port = services
                    .entry(name)
                    .or_default()
                    .entry(p.service_port)
                    .or_insert_with(|| ServicePort {
                        port: p.service_port,
                        name: None,
                        // Validation refused workloads of one service port that disagree.
                        protocol: p.protocol,
                        endpoints: Vec::new(),
                    });
                port.endpoints.push(Endpoint {
                    address: SocketAddr::new(w.address, p.port),
                    identity: Some(identity.clone()),
                    meshed: w.meshed,
                    workload: Some(WorkloadKey {
                        namespace: w.namespace.clone(),
                        name: w.name.clone(),
                    }),
                    state: w.state,
                });
            }
        }
        services
            .into_iter()
            .map(|(name, ports)| Service {
                virtual_ips: virtual_ips.remove(&name).unwrap_or_default(),
                name,
                ports: ports.into_values().collect(),
            })
            .collect()
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The workloads of an enabled local platform.
fn declared(cfg: &MeshConfig) -> impl Iterator<Item = &LocalWorkload> {
    LocalSettings::workloads(cfg)
}

/// Makes the token files match the workloads `cfg` declares: keeps existing tokens, writes
/// new ones, deletes those of workloads no longer declared. Returns the tokens in force.
fn sync_tokens(cfg: &MeshConfig, current: &Tokens) -> Result<Tokens, LocalError> {
    let root = cfg.data_dir().join("tokens");
    private_fs::create_private_dir(&root)?;
    let mut next = Tokens::new();
    for w in declared(cfg).filter(|w| w.meshed) {
        let key = (w.namespace.clone(), w.name.clone());
        let path = token_path(&root, &w.namespace, &w.name)?;
        let token = match current.get(&key) {
            Some(t) => t.clone(),
            None => private_fs::ensure_token(&path)?,
        };
        next.insert(key, token);
    }
    let gone: BTreeSet<_> = current.keys().filter(|k| !next.contains_key(k)).collect();
    for (ns, name) in gone {
        if let Ok(path) = token_path(&root, ns, name) {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(workload = %format!("{ns}/{name}"), "token of a removed workload deleted")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete the token of a removed workload")
                }
            }
        }
    }
    Ok(next)
}

/// `<root>/<namespace>/<name>`, refusing segments that would leave `root`.
fn token_path(root: &Path, namespace: &str, name: &str) -> Result<PathBuf, LocalError> {
    for seg in [namespace, name] {
        let safe = !seg.is_empty()
            && seg != "."
            && seg != ".."
            && !seg.contains('/')
            && !seg.contains('\0');
        if !safe {
            return Err(LocalError::BadName(seg.to_string()));
        }
    }
    let dir = root.join(namespace);
    private_fs::create_private_dir(&dir)?;
    Ok(dir.join(name))
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
            let cfg = config.borrow_and_update().clone();
            let synced = sync_tokens(&cfg, &self.tokens());
            match synced {
                Ok(tokens) => *self.tokens() = tokens,
                // The old tokens stay valid; proxies of new workloads wait for the next edit.
                Err(e) => tracing::error!(error = %e, "cannot write workload tokens"),
            }
            let services = Self::services_of(&cfg);
            tracing::debug!(count = services.len(), "local services");
            registry.replace_all(services);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = config.changed() => {
                    if changed.is_err() {
                        // The watcher stopped: the process is shutting down. The last workloads
                        // stay until the control plane stops this adapter.
                        shutdown.cancelled().await;
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
        let claim = credential
            .workload
            .as_deref()
            .ok_or_else(|| AttestError::Rejected("no workload named".into()))?;
        let (ns, name) = claim
            .split_once('/')
            .ok_or_else(|| AttestError::Rejected("the workload is not namespace/name".into()))?;
        let expected = self
            .tokens()
            .get(&(ns.to_string(), name.to_string()))
            .cloned();
        let Some(expected) = expected else {
            // The claim is echoed only once it names a declared workload (bounded, validated).
            return Err(AttestError::UnknownWorkload(
                "(a workload this platform does not declare)".into(),
            ));
        };
        if !constant_time_eq(credential.token.as_bytes(), expected.as_bytes()) {
            return Err(AttestError::Rejected(format!(
                "wrong token for workload {ns}/{name}"
            )));
        }
        let cfg = self.config.borrow().clone();
        let w = declared(&cfg)
            .find(|w| w.namespace == ns && w.name == name)
            .ok_or_else(|| AttestError::UnknownWorkload(format!("{ns}/{name}")))?;
        Identity::new(cfg.mesh.trust_domain.clone(), &w.namespace, w.account())
            .map_err(|e| AttestError::Rejected(e.to_string()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn config(dir: &Path, workloads: &[&str]) -> Arc<MeshConfig> {
        let mut text = format!(
            "[mesh]\nname = \"t\"\ntrust_domain = \"weft.test\"\n[ca]\ndata_dir = \"{}\"\n[platforms.local]\n",
            dir.display()
        );
        for (i, w) in workloads.iter().enumerate() {
            text.push_str(&format!(
                "[[platforms.local.workloads]]\nname = \"{w}\"\nnamespace = \"demo\"\nservice = \"{w}\"\nport = {}\n",
                20000 + i
            ));
        }
        Arc::new(
            weft_core::config::Loader::new()
                .with_platform::<LocalSettings>()
                .load_str(&text, Path::new("mesh.toml"))
                .unwrap(),
        )
    }

    fn credential(token: &str, workload: &str) -> Credential {
        Credential {
            platform: NAME.into(),
            token: token.into(),
            workload: Some(workload.into()),
            account: None,
        }
    }

    #[tokio::test]
    async fn each_workload_has_its_own_private_token() {
        let dir = tempfile::tempdir().unwrap();
        let (_tx, rx) = watch::channel(config(dir.path(), &["web", "api"]));
        let local = LocalPlatform::new(rx).unwrap();
        let cfg = config(dir.path(), &[]);
        let web_file = token_file(&cfg, "demo", "web");
        let api_file = token_file(&cfg, "demo", "api");
        let web = std::fs::read_to_string(&web_file).unwrap();
        let api = std::fs::read_to_string(&api_file).unwrap();
        assert_ne!(web, api);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&web_file), 0o600);
        assert_eq!(mode(web_file.parent().unwrap()), 0o700);

        let id = local.attest(&credential(&web, "demo/web")).await.unwrap();
        assert_eq!(id.spiffe_id(), "spiffe://weft.test/ns/demo/sa/web");
        // web's token proves nothing about api.
        assert!(matches!(
            local.attest(&credential(&web, "demo/api")).await,
            Err(AttestError::Rejected(_))
        ));
        assert!(matches!(
            local.attest(&credential(&web, "demo/ghost")).await,
            Err(AttestError::UnknownWorkload(_))
        ));
        assert!(local.attest(&credential(&api, "demo/api")).await.is_ok());
    }

    #[tokio::test]
    async fn tokens_follow_the_declared_workloads() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = watch::channel(config(dir.path(), &["web", "api"]));
        let local = Arc::new(LocalPlatform::new(rx).unwrap());
        let registry = weft_core::Registry::new();
        let stop = CancellationToken::new();
        let run = {
            let local = local.clone();
            let writer = registry.writer(NAME);
            let stop = stop.clone();
            tokio::spawn(async move { local.run(writer, stop).await })
        };
        let cfg = config(dir.path(), &[]);
        let api_file = token_file(&cfg, "demo", "api");
        let api = std::fs::read_to_string(&api_file).unwrap();

        // api goes away: its token file is deleted and its token no longer attests.
        let mut reg = registry.subscribe();
        tx.send_replace(config(dir.path(), &["web"]));
        reg.wait_for(|s| s.service_names().len() == 1)
            .await
            .unwrap();
        assert!(!api_file.exists());
        assert!(local.attest(&credential(&api, "demo/api")).await.is_err());

        // api comes back with a fresh token; the old one stays useless.
        tx.send_replace(config(dir.path(), &["web", "api"]));
        reg.wait_for(|s| s.service_names().len() == 2)
            .await
            .unwrap();
        let fresh = std::fs::read_to_string(&api_file).unwrap();
        assert_ne!(fresh, api);
        assert!(local.attest(&credential(&api, "demo/api")).await.is_err());
        assert!(local.attest(&credential(&fresh, "demo/api")).await.is_ok());
        stop.cancel();
        run.await.unwrap().unwrap();
    }

    #[test]
    fn token_paths_stay_under_the_token_directory() {
        let dir = tempfile::tempdir().unwrap();
        for (ns, name) in [("..", "x"), ("demo", ".."), ("demo", "a/b"), (".", "x")] {
            assert!(
                matches!(
                    token_path(dir.path(), ns, name),
                    Err(LocalError::BadName(_))
                ),
                "{ns}/{name}"
            );
        }
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
