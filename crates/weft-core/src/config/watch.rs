//! Follows the mesh config file: reloads on change, keeps the last good configuration when an
//! edit is invalid, and says which edits only take effect after a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::load::{ConfigError, Loader};
use super::schema::MeshConfig;

/// A running watch on one mesh config file.
#[derive(Debug, Clone)]
pub struct ConfigWatcher {
    rx: watch::Receiver<Arc<MeshConfig>>,
    errors: watch::Receiver<Option<ConfigError>>,
    restart: watch::Receiver<Vec<String>>,
}

/// How often the file is checked. Polling a small file is cheap and works the same on every
/// filesystem, including the bind mounts and ConfigMap symlink swaps inotify misses.
const POLL: Duration = Duration::from_millis(200);

impl ConfigWatcher {
    /// Loads `path` with `loader` once (failing if it is invalid), then follows it until
    /// `shutdown`. Warnings of the file are logged at start and on every reload.
    pub fn start(
        path: &Path,
        loader: &Loader,
        shutdown: CancellationToken,
    ) -> Result<Self, ConfigError> {
        // The bytes loaded here are the baseline for change detection, so an edit made right
        // after `start` returns is never mistaken for the initial content.
        let bytes = std::fs::read(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        let first = Arc::new(loader.load_text(&String::from_utf8_lossy(&bytes), path)?);
        log_warnings(&first);
        let (tx, rx) = watch::channel(first.clone());
        let (err_tx, errors) = watch::channel(None);
        let (restart_tx, restart) = watch::channel(Vec::new());
        let follower = Follower {
            path: path.to_path_buf(),
            loader: loader.clone(),
            started: first,
            tx,
            err_tx,
            restart_tx,
        };
        tokio::spawn(follower.run(bytes, shutdown));
        Ok(Self {
            rx,
            errors,
            restart,
        })
    }

    /// The latest good configuration, updated on every valid edit.
    ///
    /// Edits of the sections [`restart_required`](Self::restart_required) lists are published
    /// too (a control plane started again in-process picks them up), but a running control
    /// plane reads those sections only when it starts.
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

    /// The sections (`mesh`, `ca`, `control`) whose values in the file differ from those the
    /// watcher started with. They are read once at start, so their edits wait for a restart.
    /// Empty once the file holds the started values again.
    pub fn restart_required(&self) -> Vec<String> {
        self.restart.borrow().clone()
    }

    /// Follows [`restart_required`](Self::restart_required).
    pub fn restart_pending(&self) -> watch::Receiver<Vec<String>> {
        self.restart.clone()
    }
}

/// The sections a running control plane reads only at start: the mesh's name and trust domain
/// (which fix the data directory and the CA's domain), the CA, and the listeners.
fn restart_sections(started: &MeshConfig, now: &MeshConfig) -> Vec<String> {
    let mut out = Vec::new();
    if started.mesh != now.mesh {
        out.push("mesh".to_string());
    }
    if started.ca != now.ca {
        out.push("ca".to_string());
    }
    if started.control != now.control {
        out.push("control".to_string());
    }
    out
}

/// Whether `a` and `b` differ in what a running mesh applies live: anything but the
/// start-only sections and the bookkeeping (warnings move with every line edit).
fn live_differs(a: &MeshConfig, b: &MeshConfig) -> bool {
    a.policy != b.policy
        || a.platforms != b.platforms
        || a.authorization_rules != b.authorization_rules
        || a.routes != b.routes
}

fn log_warnings(cfg: &MeshConfig) {
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
}

/// The task behind a [`ConfigWatcher`].
struct Follower {
    path: PathBuf,
    loader: Loader,
    /// What the process started with, the reference for restart-only sections.
    started: Arc<MeshConfig>,
    tx: watch::Sender<Arc<MeshConfig>>,
    err_tx: watch::Sender<Option<ConfigError>>,
    restart_tx: watch::Sender<Vec<String>>,
}

impl Follower {
    async fn run(self, initial: Vec<u8>, shutdown: CancellationToken) {
        let mut last = initial;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Ok(bytes) = tokio::fs::read(&self.path).await else {
                continue;
            };
            if last == bytes {
                continue;
            }
            last = bytes;
            let loaded = {
                let (path, loader) = (self.path.clone(), self.loader.clone());
                tokio::task::spawn_blocking(move || loader.load(&path)).await
            };
            match loaded {
                Ok(Ok(cfg)) => self.apply(cfg),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "mesh config edit ignored; keeping the last good one");
                    self.err_tx.send_replace(Some(e));
                }
                Err(join) => tracing::error!(error = %join, "config reload task failed"),
            }
        }
    }

    /// Publishes a valid edit, and says what of it needs a restart.
    fn apply(&self, cfg: MeshConfig) {
        log_warnings(&cfg);
        self.err_tx.send_replace(None);
        let pending = restart_sections(&self.started, &cfg);
        if *self.restart_tx.borrow() != pending {
            if pending.is_empty() {
                tracing::info!(
                    file = %self.path.display(),
                    "mesh config is back to the values the control plane started with"
                );
            } else {
                let sections: Vec<String> = pending.iter().map(|s| format!("[{s}]")).collect();
                tracing::warn!(
                    file = %self.path.display(),
                    "mesh config edit to {} needs a restart of the control plane; the running values stay",
                    sections.join(", ")
                );
            }
            self.restart_tx.send_replace(pending);
        }
        let live = live_differs(&self.tx.borrow(), &cfg);
        self.tx.send_if_modified(|cur| {
            if **cur == cfg {
                return false;
            }
            *cur = Arc::new(cfg);
            true
        });
        // Only what a running mesh applies is announced as reloaded.
        if live {
            tracing::info!(file = %self.path.display(), "mesh config reloaded");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    /// Long enough for a loaded machine; the watcher polls every 200 ms.
    const WAIT: Duration = Duration::from_secs(20);

    /// Replaces the file in one step, so the watcher never reads half an edit.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn good_yaml(data: &Path) -> String {
        format!(
            "mesh:\n  name: t\n  trust_domain: weft.test\nca:\n  data_dir: {}\n\
             policy:\n  authorizations:\n    - service: api.demo\n      allow:\n\
             \x20       - demo/web\n        - demo/cli\n",
            data.display()
        )
    }

    #[tokio::test]
    async fn a_live_edit_into_an_alias_bomb_keeps_the_last_good_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        let good = good_yaml(&dir.path().join("data"));
        replace(&path, &good);
        let stop = CancellationToken::new();
        let watcher = ConfigWatcher::start(&path, &Loader::new(), stop.clone()).unwrap();
        let before = watcher.current();

        let bomb = format!(
            "{good}a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n{}",
            ('b'..='i')
                .zip('a'..='h')
                .map(|(name, prev)| format!(
                    "{name}: &{name} [{}]\n",
                    vec![format!("*{prev}"); 9].join(",")
                ))
                .collect::<String>()
        );
        replace(&path, &bomb);
        let mut errors = watcher.errors();
        let e = tokio::time::timeout(WAIT, errors.wait_for(Option::is_some))
            .await
            .expect("the edit is reported")
            .unwrap()
            .clone()
            .unwrap();
        assert_eq!(e.line, Some(12), "{e}");
        assert!(
            e.message
                .contains("YAML anchors and aliases are not supported"),
            "{e}"
        );
        assert!(Arc::ptr_eq(&before, &watcher.current()));
        stop.cancel();
    }

    #[tokio::test]
    async fn edits_to_start_only_sections_are_reported_as_pending_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.toml");
        let good = format!(
            "[mesh]\nname = \"t\"\ntrust_domain = \"weft.test\"\n[ca]\ndata_dir = \"{}\"\n\
             [policy]\ndefault_inbound = \"allow\"\n",
            dir.path().join("data").display()
        );
        replace(&path, &good);
        let stop = CancellationToken::new();
        let watcher = ConfigWatcher::start(&path, &Loader::new(), stop.clone()).unwrap();
        assert!(watcher.restart_required().is_empty());
        let mut pending = watcher.restart_pending();

        // A policy edit applies live: nothing pending.
        let mut rx = watcher.subscribe();
        let moved = good.replace("\"allow\"", "\"deny\"");
        replace(&path, &moved);
        let deny = |c: &MeshConfig| c.policy.default_inbound == crate::policy::Decision::Deny;
        tokio::time::timeout(WAIT, rx.wait_for(|c| deny(c)))
            .await
            .expect("the policy edit applies")
            .unwrap();
        assert!(watcher.restart_required().is_empty());

        // [ca] and [control] edits wait for a restart.
        let ca = moved.replace("[ca]\n", "[ca]\nleaf_ttl = \"12h\"\n");
        replace(&path, &ca);
        tokio::time::timeout(WAIT, pending.wait_for(|p| *p == ["ca"]))
            .await
            .expect("[ca] pending")
            .unwrap();
        let both = format!("{ca}[control]\ngrpc_addr = \"127.0.0.1:7444\"\n");
        replace(&path, &both);
        tokio::time::timeout(WAIT, pending.wait_for(|p| *p == ["ca", "control"]))
            .await
            .expect("[ca] and [control] pending")
            .unwrap();
        assert_eq!(watcher.restart_required(), ["ca", "control"]);

        // Back to the started values: nothing pending, the policy edit kept.
        replace(&path, &moved);
        tokio::time::timeout(WAIT, pending.wait_for(Vec::is_empty))
            .await
            .expect("nothing pending")
            .unwrap();
        assert!(deny(&watcher.current()));
        stop.cancel();
    }
}
