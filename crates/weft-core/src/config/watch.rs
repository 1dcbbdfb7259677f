//! Follows the mesh config file: reloads on change, keeps the last good configuration when an
//! edit is invalid.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::load::{ConfigError, load, load_text};
use super::schema::MeshConfig;

/// A running watch on one mesh config file.
#[derive(Debug, Clone)]
pub struct ConfigWatcher {
    rx: watch::Receiver<Arc<MeshConfig>>,
    errors: watch::Receiver<Option<ConfigError>>,
}

/// How often the file is checked. Polling a small file is cheap and works the same on every
/// filesystem, including the bind mounts and ConfigMap symlink swaps inotify misses.
const POLL: Duration = Duration::from_millis(200);

impl ConfigWatcher {
    /// Loads `path` once (failing if it is invalid), then follows it until `shutdown`.
    pub fn start(path: &Path, shutdown: CancellationToken) -> Result<Self, ConfigError> {
        // The bytes loaded here are the baseline for change detection, so an edit made right
        // after `start` returns is never mistaken for the initial content.
        let bytes = std::fs::read(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        let first = load_text(&String::from_utf8_lossy(&bytes), path)?;
        let (tx, rx) = watch::channel(Arc::new(first));
        let (err_tx, errors) = watch::channel(None);
        let path = path.to_path_buf();
        tokio::spawn(follow(path, bytes, tx, err_tx, shutdown));
        Ok(Self { rx, errors })
    }

    /// The latest good configuration, updated on every valid edit.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MeshConfig>> {
        self.rx.clone()
    }

    /// The error of the latest edit, `None` once the file is valid again.
    pub fn errors(&self) -> watch::Receiver<Option<ConfigError>> {
        self.errors.clone()
    }

    /// The latest good configuration.
    pub fn current(&self) -> Arc<MeshConfig> {
        self.rx.borrow().clone()
    }
}

async fn follow(
    path: PathBuf,
    initial: Vec<u8>,
    tx: watch::Sender<Arc<MeshConfig>>,
    err_tx: watch::Sender<Option<ConfigError>>,
    shutdown: CancellationToken,
) {
    let mut last = Some(initial);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(bytes) = tokio::fs::read(&path).await else {
            continue;
        };
        if last.as_ref() == Some(&bytes) {
            continue;
        }
        last = Some(bytes);
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || load(&path)).await
        };
        match loaded {
            Ok(Ok(cfg)) => {
                tracing::info!(file = %path.display(), "mesh config reloaded");
                err_tx.send_replace(None);
                tx.send_if_modified(|cur| {
                    if **cur == cfg {
                        return false;
                    }
                    *cur = Arc::new(cfg);
                    true
                });
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "mesh config edit ignored; keeping the last good one");
                err_tx.send_replace(Some(e));
            }
            Err(join) => tracing::error!(error = %join, "config reload task failed"),
        }
    }
}
