//! The platform adapters this control plane runs: which `[platforms.*]` sections the mesh
//! config file may hold, and which adapters a loaded file enables.

use std::sync::Arc;

use weft_core::config::{ConfigWatcher, Loader};
use weft_core::platform::Platform;
use weft_kubernetes::{KubernetesPlatform, KubernetesSettings};
use weft_local::{LocalPlatform, LocalSettings};
use weft_nomad::{ConsulPlatform, ConsulSettings, NomadPlatform, NomadSettings};

/// Reads mesh config files with the section of every adapter this program has.
pub fn loader() -> Loader {
    Loader::new()
        .with_platform::<LocalSettings>()
        .with_platform::<KubernetesSettings>()
        .with_platform::<NomadSettings>()
        .with_platform::<ConsulSettings>()
}

/// Why an enabled adapter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The local adapter.
    #[error("local platform: {0}")]
    Local(#[from] weft_local::LocalError),
    /// The Kubernetes adapter.
    #[error("kubernetes platform: {0}")]
    Kubernetes(#[from] weft_kubernetes::KubernetesError),
    /// The Nomad or the Consul adapter.
    #[error("{0}")]
    Nomad(#[from] weft_nomad::NomadError),
}

/// The adapters the file `watcher` follows enables, set up to follow it. Which adapters run is
/// decided at start; enabling or disabling one needs a restart.
pub async fn enabled(watcher: &ConfigWatcher) -> Result<Vec<Arc<dyn Platform>>, SetupError> {
    let cfg = watcher.current();
    let mut platforms: Vec<Arc<dyn Platform>> = Vec::new();
    if LocalSettings::of(&cfg).is_some_and(|l| l.enabled) {
        platforms.push(Arc::new(LocalPlatform::new(watcher.subscribe())?));
    }
    if KubernetesSettings::of(&cfg).is_some_and(|k| k.enabled) {
        platforms.push(Arc::new(KubernetesPlatform::new(&cfg).await?));
    }
    if NomadSettings::of(&cfg).is_some_and(|n| n.enabled) {
        platforms.push(Arc::new(NomadPlatform::new(&cfg)?));
    }
    if ConsulSettings::of(&cfg).is_some_and(|c| c.enabled) {
        platforms.push(Arc::new(ConsulPlatform::new(&cfg)?));
    }
    Ok(platforms)
}
