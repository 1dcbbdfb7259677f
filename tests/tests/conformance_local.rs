//! The conformance suite against the local platform adapter.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use weft_core::config::ConfigWatcher;
use weft_core::platform::{Credential, Platform};
use weft_tests::conformance::{PlatformHarness, run_all};

struct LocalHarness {
    dir: tempfile::TempDir,
    workloads: BTreeMap<String, (String, SocketAddr)>,
    watcher: ConfigWatcher,
    platform: Arc<weft_local::LocalPlatform>,
    _stop: CancellationToken,
}

impl LocalHarness {
    fn render(dir: &std::path::Path, workloads: &BTreeMap<String, (String, SocketAddr)>) -> String {
        let mut s = format!(
            "[mesh]\nname = \"conf\"\ntrust_domain = \"weft.test\"\n[ca]\ndata_dir = \"{}\"\n[platforms.local]\n",
            dir.join("data").display()
        );
        for (name, (svc, addr)) in workloads {
            s.push_str(&format!(
                "[[platforms.local.workloads]]\nname = \"{name}\"\nnamespace = \"conf\"\nservice = \"{svc}\"\naddress = \"{}\"\nport = {}\n",
                addr.ip(),
                addr.port()
            ));
        }
        s
    }

    async fn write(&mut self) {
        let mut rx = self.watcher.subscribe();
        rx.mark_unchanged();
        std::fs::write(
            self.dir.path().join("mesh.toml"),
            Self::render(self.dir.path(), &self.workloads),
        )
        .unwrap();
        tokio::time::timeout(weft_tests::WAIT, rx.changed())
            .await
            .unwrap()
            .unwrap();
    }
}

#[async_trait]
impl PlatformHarness for LocalHarness {
    fn platform(&self) -> Arc<dyn Platform> {
        self.platform.clone()
    }
    fn namespace(&self) -> &str {
        "conf"
    }
    async fn add(&mut self, name: &str, service: &str, addr: SocketAddr) {
        self.workloads.insert(name.into(), (service.into(), addr));
        self.write().await;
    }
    async fn change(&mut self, name: &str, addr: SocketAddr) {
        self.workloads.get_mut(name).unwrap().1 = addr;
        self.write().await;
    }
    async fn remove(&mut self, name: &str) {
        self.workloads.remove(name);
        self.write().await;
    }
    async fn break_source(&mut self) {
        let mut errors = self.watcher.errors();
        errors.mark_unchanged();
        std::fs::write(self.dir.path().join("mesh.toml"), "[mesh\nname = ").unwrap();
        tokio::time::timeout(weft_tests::WAIT, errors.wait_for(|e| e.is_some()))
            .await
            .expect("the broken edit is reported")
            .unwrap();
    }
    fn credential(&self, name: &str) -> Credential {
        Credential {
            platform: "local".into(),
            // Written by the adapter when the workload was declared.
            token: std::fs::read_to_string(
                self.watcher.current().workload_token_file("conf", name),
            )
            .unwrap_or_default(),
            workload: Some(format!("conf/{name}")),
        }
    }
    fn bad_credential(&self, name: &str) -> Credential {
        Credential {
            platform: "local".into(),
            token: "0".repeat(64),
            workload: Some(format!("conf/{name}")),
        }
    }
}

#[tokio::test]
async fn local_platform_conformance() {
    weft_tests::trace_init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.toml");
    std::fs::write(&path, LocalHarness::render(dir.path(), &BTreeMap::new())).unwrap();
    let stop = CancellationToken::new();
    let watcher = ConfigWatcher::start(&path, stop.clone()).unwrap();
    let platform = Arc::new(weft_local::LocalPlatform::new(watcher.subscribe()).unwrap());
    let harness = LocalHarness {
        dir,
        workloads: BTreeMap::new(),
        watcher,
        platform,
        _stop: stop,
    };
    run_all(harness).await;
}
