//! The conformance suite against the Nomad adapter, which reads a fake Nomad API over HTTP
//! (reqwest): a workload is an allocation, each service it serves one registration, and a
//! relist is a stretch in which the API fails while the world changes, so the adapter learns
//! the changes from a fresh read.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use weft_core::TrustDomain;
use weft_core::platform::{Credential, Platform};
use weft_nomad::{NomadPlatform, NomadSettings};
use weft_tests::conformance::{
    PlatformHarness, WorkloadSpec, run_all, run_inbound_policies, run_policy, run_routes,
};
use weft_tests::fake_nomad::{FakeNomad, ServiceRegistration};
use weft_tests::jwt::{Claims, TestKey};

const NS: &str = "conf";

struct NomadHarness {
    fake: FakeNomad,
    key: TestKey,
    platform: Arc<NomadPlatform>,
    world: Vec<WorkloadSpec>,
    /// What the harness registered, by ID.
    registered: BTreeMap<String, ServiceRegistration>,
}

/// The allocation that runs workload `name`: an ID of its own, as Nomad's are, so that a
/// proxy naming its workload by anything but its allocation finds no rules.
fn alloc_of(name: &str) -> String {
    format!("alloc-{name}")
}

/// The registrations that make Nomad report `workloads`: one per service a workload serves,
/// by the workload's allocation, tagged `weft` and with the workload's account when it is
/// meshed.
fn registrations(workloads: &[WorkloadSpec]) -> BTreeMap<String, ServiceRegistration> {
    let mut out = BTreeMap::new();
    for w in workloads {
        for s in &w.servers {
            let tags: Vec<String> = if w.meshed {
                vec!["weft".into(), format!("weft-account={}", w.account)]
            } else {
                Vec::new()
            };
            let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
            let reg = ServiceRegistration::new(
                NS,
                &s.service,
                &s.address.ip().to_string(),
                s.address.port(),
            )
            .job(&format!("job-{}", w.name))
            .alloc(&alloc_of(&w.name))
            .tags(&tags);
            out.insert(reg.id.clone(), reg);
        }
    }
    out
}

impl NomadHarness {
    async fn start() -> Self {
        let fake = FakeNomad::start().await;
        let key = TestKey::fixture(1);
        fake.set_keys(&[&key]);
        let settings = NomadSettings {
            address: Some(fake.url()),
            ..Default::default()
        };
        let platform = Arc::new(
            NomadPlatform::with_settings(settings, TrustDomain::new("weft.test").unwrap())
                .unwrap()
                .with_retry_floor(Duration::from_millis(50)),
        );
        Self {
            fake,
            key,
            platform,
            world: Vec::new(),
            registered: BTreeMap::new(),
        }
    }

    /// Makes the fake hold exactly `wanted`, through registrations and deregistrations.
    fn apply(&mut self, wanted: BTreeMap<String, ServiceRegistration>) {
        let gone: Vec<String> = self
            .registered
            .keys()
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.fake.deregister(NS, &id);
            self.registered.remove(&id);
        }
        for (id, reg) in wanted {
            if self.registered.get(&id) != Some(&reg) {
                self.fake.register(reg.clone());
                self.registered.insert(id, reg);
            }
        }
    }
}

#[async_trait]
impl PlatformHarness for NomadHarness {
    fn platform(&self) -> Arc<dyn Platform> {
        self.platform.clone()
    }

    fn namespace(&self) -> &str {
        NS
    }

    async fn set(&mut self, workloads: &[WorkloadSpec]) {
        self.world = workloads.to_vec();
        self.apply(registrations(workloads));
    }

    async fn relist(&mut self, workloads: &[WorkloadSpec]) {
        // The API fails and the stream is cut; the world changes meanwhile; then the API
        // heals and the adapter reads everything again.
        let mut errors = self.platform.watch_errors();
        let seen = *errors.borrow_and_update();
        self.fake.fail("/v1", 500, None);
        self.fake.cut_connections();
        tokio::time::timeout(weft_tests::WAIT, errors.wait_for(|n| *n > seen))
            .await
            .expect("the adapter never saw the stream cut")
            .unwrap();
        self.set(workloads).await;
        self.fake.heal();
    }

    async fn break_source(&mut self) {
        // A registration at an address that is not an IP address: the adapter counts it and
        // leaves it out.
        let mut errors = self.platform.watch_errors();
        let seen = *errors.borrow_and_update();
        let bad = ServiceRegistration::new(NS, "api", "not-an-address", 8080).alloc("broken");
        self.fake.register(bad.clone());
        self.registered.insert(bad.id.clone(), bad);
        tokio::time::timeout(weft_tests::WAIT, errors.wait_for(|n| *n > seen))
            .await
            .expect("the adapter never saw the bad registration")
            .unwrap();
    }

    fn credential(&self, name: &str) -> Credential {
        let account = self
            .world
            .iter()
            .find(|w| w.name == name)
            .map_or(name, |w| w.account.as_str());
        let token =
            Claims::task(NS, &format!("job-{name}"), &alloc_of(name), "weft-proxy").mint(&self.key);
        Credential {
            platform: "nomad".into(),
            token,
            // The allocation, as the registry keys it.
            workload: Some(format!("{NS}/{}", alloc_of(name))),
            account: Some(account.into()),
        }
    }

    fn bad_credential(&self, name: &str) -> Credential {
        let mut c = self.credential(name);
        c.token = Claims::task(NS, &format!("job-{name}"), &alloc_of(name), "weft-proxy")
            .expired()
            .mint(&self.key);
        c
    }

    fn reports_terminating(&self) -> bool {
        false
    }

    fn reports_not_ready(&self) -> bool {
        false
    }

    fn workload_key(&self, name: &str) -> String {
        alloc_of(name)
    }

    fn service_port(&self, _declared: u16) -> u16 {
        weft_nomad::services::SERVICE_PORT
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nomad_adapter_passes_the_conformance_suite() {
    weft_tests::trace_init();
    run_all(NomadHarness::start().await, NomadHarness::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nomad_workloads_proxy_enforces_its_rules_when_called_directly() {
    run_policy(NomadHarness::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_files_routes_apply_on_the_nomad_platform() {
    run_routes(NomadHarness::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_policies() {
    run_inbound_policies(NomadHarness::start().await).await;
}
