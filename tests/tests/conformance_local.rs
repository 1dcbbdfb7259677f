//! The conformance suite against the local platform adapter.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::fmt::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use weft_core::config::ConfigWatcher;
use weft_core::platform::{Credential, Platform};
use weft_tests::conformance::{
    PlatformHarness, WorkloadSpec, run_all, run_inbound_policies, run_policy, run_routes,
};

struct LocalHarness {
    dir: tempfile::TempDir,
    workloads: Vec<WorkloadSpec>,
    watcher: ConfigWatcher,
    platform: Arc<weft_local::LocalPlatform>,
    _stop: CancellationToken,
}

impl LocalHarness {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.toml");
        std::fs::write(&path, Self::render(dir.path(), &[])).unwrap();
        let stop = CancellationToken::new();
        let watcher =
            ConfigWatcher::start(&path, &weft_control::platforms::loader(), stop.clone()).unwrap();
        let platform = Arc::new(weft_local::LocalPlatform::new(watcher.subscribe()).unwrap());
        Self {
            dir,
            workloads: Vec::new(),
            watcher,
            platform,
            _stop: stop,
        }
    }

    fn render(dir: &std::path::Path, workloads: &[WorkloadSpec]) -> String {
        let mut s = format!(
            "[mesh]\nname = \"conf\"\ntrust_domain = \"weft.test\"\n[ca]\ndata_dir = \"{}\"\n[platforms.local]\n",
            dir.join("data").display()
        );
        for w in workloads {
            let (first, rest) = w.servers.split_first().unwrap();
            let state = match w.state {
                weft_core::EndpointState::Ready => "ready",
                weft_core::EndpointState::Serving => "serving",
                weft_core::EndpointState::Terminating => "terminating",
                weft_core::EndpointState::NotReady => "not-ready",
            };
            write!(
                s,
                "[[platforms.local.workloads]]\nname = \"{}\"\nnamespace = \"conf\"\nidentity = \"{}\"\nmeshed = {}\nstate = \"{state}\"\nservice = \"{}\"\nservice_port = {}\naddress = \"{}\"\nport = {}\n",
                w.name,
                w.account,
                w.meshed,
                first.service,
                first.service_port,
                first.address.ip(),
                first.address.port()
            )
            .unwrap();
            for p in rest {
                write!(
                    s,
                    "[[platforms.local.workloads.ports]]\nservice = \"{}\"\nservice_port = {}\nport = {}\n",
                    p.service,
                    p.service_port,
                    p.address.port()
                )
                .unwrap();
            }
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
    async fn set(&mut self, workloads: &[WorkloadSpec]) {
        self.workloads = workloads.to_vec();
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
            token: std::fs::read_to_string(weft_local::token_file(
                &self.watcher.current(),
                "conf",
                name,
            ))
            .unwrap_or_default(),
            workload: Some(format!("conf/{name}")),
            account: Some(name.into()),
        }
    }
    fn bad_credential(&self, name: &str) -> Credential {
        Credential {
            platform: "local".into(),
            token: "0".repeat(64),
            workload: Some(format!("conf/{name}")),
            account: Some(name.into()),
        }
    }
}

#[tokio::test]
async fn local_platform_conformance() {
    weft_tests::trace_init();
    run_all(LocalHarness::start(), LocalHarness::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_workloads_proxy_enforces_its_rules_when_called_directly() {
    run_policy(LocalHarness::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_files_routes_apply_on_the_local_platform() {
    run_routes(LocalHarness::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_policies() {
    run_inbound_policies(LocalHarness::start()).await;
}
