//! The conformance suite against the Kubernetes adapter, which reads a fake API server through
//! the real kube client: workloads are pods, services are Services with EndpointSlices, and
//! a relist is a partition followed by 410 Gone.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use weft_core::EndpointState;
use weft_core::platform::{Credential, Platform};
use weft_kubernetes::{KubernetesPlatform, KubernetesSettings};
use weft_tests::conformance::{
    PlatformHarness, WorkloadSpec, run_all, run_inbound_policies, run_policy, run_routes,
};
use weft_tests::fake_kube::FakeKube;
use weft_tests::kube_objects::{self as k8s, Condition, SliceEndpoint, SvcPort, TokenFor};

const NS: &str = "conf";

struct KubeHarness {
    fake: FakeKube,
    _dir: tempfile::TempDir,
    platform: Arc<KubernetesPlatform>,
    world: Vec<WorkloadSpec>,
    /// What the harness last wrote, by (kind, name).
    applied: BTreeMap<(&'static str, String), Value>,
}

impl KubeHarness {
    async fn start() -> Self {
        let fake = FakeKube::start().await;
        let dir = tempfile::tempdir().unwrap();
        fake.apply(k8s::namespace(NS, Some("enabled")));
        let platform = Arc::new(
            weft_tests::kube_platform(&fake, dir.path(), KubernetesSettings::default())
                .await
                // Long enough that the four kinds all hear of a 410 before the first relists.
                .with_retry_floor(Duration::from_millis(300)),
        );
        Self {
            fake,
            _dir: dir,
            platform,
            world: Vec::new(),
            applied: BTreeMap::new(),
        }
    }

    /// The objects that make the cluster report exactly `workloads`: a pod each, a Service per
    /// service (a stable ClusterIP from its name), and an EndpointSlice per (service,
    /// workload), since each workload may resolve the target port to its own number.
    fn objects(workloads: &[WorkloadSpec]) -> BTreeMap<(&'static str, String), Value> {
        let mut out = BTreeMap::new();
        let mut service_ports: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
        for w in workloads {
            let ip = w.servers[0].address.ip();
            out.insert(
                ("Pod", w.name.clone()),
                k8s::pod(NS, &w.name, &w.account, w.meshed, ip),
            );
            let mut by_service: BTreeMap<&str, Vec<(String, u16)>> = BTreeMap::new();
            for s in &w.servers {
                service_ports
                    .entry(&s.service)
                    .or_default()
                    .insert(s.service_port);
                by_service
                    .entry(&s.service)
                    .or_default()
                    .push((format!("p{}", s.service_port), s.address.port()));
            }
            let condition = match w.state {
                EndpointState::Ready => Condition::Ready,
                EndpointState::Serving => Condition::ServingTerminating,
                EndpointState::Terminating => Condition::Terminating,
                EndpointState::NotReady => Condition::NotReady,
            };
            for (service, ports) in by_service {
                let name = format!("{service}-{}", w.name);
                let ports: Vec<(&str, u16)> = ports.iter().map(|(n, p)| (n.as_str(), *p)).collect();
                let endpoint = SliceEndpoint {
                    pod: Some(w.name.clone()),
                    ip,
                    condition,
                };
                out.insert(
                    ("EndpointSlice", name.clone()),
                    k8s::slice(NS, &name, service, &ports, &[endpoint]),
                );
            }
        }
        for (service, ports) in service_ports {
            let ports: Vec<SvcPort> = ports
                .iter()
                .map(|p| SvcPort::new(&format!("p{p}"), *p))
                .collect();
            let h = service
                .bytes()
                .fold(7u32, |h, b| h.wrapping_mul(31) ^ u32::from(b));
            let ip = IpAddr::V4(Ipv4Addr::new(10, 96, (h >> 8) as u8, h as u8));
            out.insert(
                ("Service", service.to_string()),
                k8s::service(NS, service, Some(ip), &ports),
            );
        }
        out
    }

    /// Writes what differs from the last write: pods first, so slices name known pods.
    fn write(&mut self, workloads: &[WorkloadSpec]) {
        self.world = workloads.to_vec();
        let next = Self::objects(workloads);
        for kind in ["Pod", "Service", "EndpointSlice"] {
            for (key, obj) in next.iter().filter(|(k, _)| k.0 == kind) {
                if self.applied.get(key) != Some(obj) {
                    self.fake.apply(obj.clone());
                }
            }
        }
        for key in self.applied.keys() {
            if !next.contains_key(key) {
                self.fake.delete(key.0, Some(NS), &key.1);
            }
        }
        self.applied = next;
    }
}

#[async_trait]
impl PlatformHarness for KubeHarness {
    fn platform(&self) -> Arc<dyn Platform> {
        self.platform.clone()
    }

    /// Weft's CRDs (and Gateway API routes), in the harness's namespace.
    async fn set_policies(&mut self, objects: &[(&str, &str, Value)]) -> bool {
        for (kind, name, spec) in objects {
            let api_version = match *kind {
                "HTTPRoute" | "GRPCRoute" => "gateway.networking.k8s.io/v1",
                _ => "weft.dev/v1alpha1",
            };
            self.fake.apply(json!({
                "apiVersion": api_version,
                "kind": kind,
                "metadata": {"namespace": NS, "name": name},
                "spec": spec,
            }));
        }
        true
    }

    fn namespace(&self) -> &str {
        NS
    }

    async fn set(&mut self, workloads: &[WorkloadSpec]) {
        self.write(workloads);
    }

    async fn relist(&mut self, workloads: &[WorkloadSpec]) {
        // The changes reach no watch; the compaction that follows makes every watcher relist.
        self.fake.set_partitioned(true);
        self.write(workloads);
        self.fake.expire_watches();
        self.fake.set_partitioned(false);
    }

    async fn break_source(&mut self) {
        // A Service whose ports are not a list: the watch event does not parse. The adapter
        // counts the failure and keeps what it had.
        let mut errors = self.platform.watch_errors();
        let seen = *errors.borrow_and_update();
        let bad = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": NS, "name": "api"},
            "spec": {"ports": "eighty"},
        });
        self.fake.apply(bad.clone());
        self.applied.insert(("Service", "api".into()), bad);
        tokio::time::timeout(weft_tests::WAIT, errors.wait_for(|n| *n > seen))
            .await
            .expect("the adapter never saw the malformed Service")
            .unwrap();
    }

    fn credential(&self, name: &str) -> Credential {
        let account = self
            .world
            .iter()
            .find(|w| w.name == name)
            .map_or(name, |w| w.account.as_str());
        let token = format!("token-{name}");
        TokenFor::new(NS, name, account).register(&self.fake, &token);
        Credential {
            platform: "kubernetes".into(),
            token,
            workload: Some(format!("{NS}/{name}")),
            account: Some(account.into()),
        }
    }

    fn bad_credential(&self, name: &str) -> Credential {
        let mut t = TokenFor::new(NS, name, name);
        t.audiences = vec!["https://kubernetes.default.svc".into()];
        let token = format!("other-audience-{name}");
        t.register(&self.fake, &token);
        Credential {
            platform: "kubernetes".into(),
            token,
            workload: Some(format!("{NS}/{name}")),
            account: Some(name.into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_adapter_conforms() {
    weft_tests::trace_init();
    run_all(KubeHarness::start().await, KubeHarness::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_workloads_proxy_enforces_its_rules_when_called_directly() {
    run_policy(KubeHarness::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_files_routes_apply_on_the_kubernetes_platform() {
    run_routes(KubeHarness::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_policies() {
    run_inbound_policies(KubeHarness::start().await).await;
}
