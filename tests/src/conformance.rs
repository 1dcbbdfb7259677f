//! The platform-adapter conformance suite: the same scenarios run against every adapter
//! (local now; Kubernetes and Nomad against their fake API servers next). A harness drives
//! the platform's source of truth; the scenarios watch the registry the adapter feeds.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use weft_core::platform::{AttestError, Credential, Platform};
use weft_core::{
    EndpointState, Registry, RegistrySnapshot, ServiceName, Topic, WorkloadKey, WorkloadRef,
};

use crate::WAIT;

/// A workload as the scenarios declare it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// Its name on the platform.
    pub name: String,
    /// The account of its identity (ServiceAccount, service identity), which need not be its
    /// name.
    pub account: String,
    /// Whether a Weft proxy runs beside it.
    pub meshed: bool,
    /// Whether it takes new connections.
    pub state: EndpointState,
    /// What it serves; every address has the same IP (one workload, one address).
    pub servers: Vec<ServerSpec>,
}

/// One service port a workload serves, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    /// The service's name, in the harness's namespace.
    pub service: String,
    /// The service port.
    pub service_port: u16,
    /// Where peers connect.
    pub address: SocketAddr,
}

impl WorkloadSpec {
    /// A ready, meshed workload named after its account, serving `service` port 80 at `addr`.
    pub fn new(name: &str, service: &str, addr: SocketAddr) -> Self {
        Self {
            name: name.into(),
            account: name.into(),
            meshed: true,
            state: EndpointState::Ready,
            servers: vec![ServerSpec {
                service: service.into(),
                service_port: 80,
                address: addr,
            }],
        }
    }
}

/// Drives one platform's source of truth.
#[async_trait]
pub trait PlatformHarness: Send {
    /// The adapter under test.
    fn platform(&self) -> Arc<dyn Platform>;
    /// The namespace the harness's workloads live in.
    fn namespace(&self) -> &str;
    /// Makes the platform report exactly `workloads`, through its ordinary change feed.
    async fn set(&mut self, workloads: &[WorkloadSpec]);
    /// Makes the platform report exactly `workloads` through a relist: for an API with
    /// watches, the changes happen while the watch is down and the adapter learns them from a
    /// fresh list (after 410 Gone). Where every update is a full list, as for the local
    /// platform, this is [`PlatformHarness::set`].
    async fn relist(&mut self, workloads: &[WorkloadSpec]) {
        self.set(workloads).await
    }
    /// Feeds the adapter an invalid update (a broken config edit, a malformed object).
    async fn break_source(&mut self);
    /// The credential a proxy beside workload `name` would present.
    fn credential(&self, name: &str) -> Credential;
    /// A credential that must be refused.
    fn bad_credential(&self, name: &str) -> Credential;
    /// Whether the platform reports endpoints on their way out (Kubernetes does; a Nomad
    /// service is deregistered when its allocation stops).
    fn reports_terminating(&self) -> bool {
        true
    }
    /// The port a service declared with `declared` has in the mesh (Nomad and Consul
    /// registrations carry no service port: every such service has one fixed port).
    fn service_port(&self, declared: u16) -> u16 {
        declared
    }
}

/// Waits until the registry satisfies `f`.
pub async fn until(registry: &Registry, what: &str, f: impl Fn(&RegistrySnapshot) -> bool) {
    let mut rx = registry.subscribe();
    tokio::time::timeout(WAIT, rx.wait_for(|s| f(s)))
        .await
        .unwrap_or_else(|_| panic!("registry never showed: {what}"))
        .unwrap();
}

/// The endpoint addresses of every port of `svc`.
pub fn addrs(s: &RegistrySnapshot, svc: &ServiceName) -> Vec<SocketAddr> {
    s.service(svc)
        .map(|s| {
            s.ports
                .iter()
                .flat_map(|p| p.endpoints.iter().map(|e| e.address))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `platform` into `registry` as source `source` until `stop`.
fn run(
    platform: Arc<dyn Platform>,
    registry: &Registry,
    source: &str,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<Result<(), weft_core::platform::PlatformError>> {
    let writer = registry.writer(source);
    let stop = stop.clone();
    tokio::spawn(async move { platform.run(writer, stop).await })
}

/// Runs every scenario against `h`; `second` is another instance of the same platform with a
/// source of truth of its own, for the scenario of two sources that use the same names.
pub async fn run_all<H: PlatformHarness>(mut h: H, mut second: H) {
    let platform = h.platform();
    let registry = Registry::new();
    let stop = CancellationToken::new();
    let task = run(platform.clone(), &registry, platform.name(), &stop);
    let ns = h.namespace().to_string();
    let svc = |name: &str| ServiceName::new(&ns, name).unwrap();
    let api = svc("api");
    let addr = |port: u16| -> SocketAddr { ([127, 0, 0, 1], port).into() };
    let (a1, a2, b1) = (addr(10001), addr(10002), addr(10003));
    let mut world: Vec<WorkloadSpec> = Vec::new();

    // Add, scale up, change, scale down.
    world.push(WorkloadSpec::new("api-1", "api", a1));
    h.set(&world).await;
    until(&registry, "api-1 added", |s| addrs(s, &api) == [a1]).await;
    world.push(WorkloadSpec::new("api-2", "api", b1));
    h.set(&world).await;
    until(&registry, "api-2 added (scale up)", |s| {
        addrs(s, &api).len() == 2
    })
    .await;
    world[0].servers[0].address = a2;
    h.set(&world).await;
    until(&registry, "api-1 moved", |s| {
        let a = addrs(s, &api);
        a.contains(&a2) && !a.contains(&a1)
    })
    .await;
    world.pop();
    h.set(&world).await;
    until(&registry, "api-2 removed (scale down)", |s| {
        addrs(s, &api) == [a2]
    })
    .await;

    // Attestation: a good credential proves the workload's identity; a bad one is refused.
    let id = platform.attest(&h.credential("api-1")).await.unwrap();
    assert_eq!(id.namespace(), ns);
    assert_eq!(id.name(), "api-1");
    let err = platform
        .attest(&h.bad_credential("api-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::Rejected(_) | AttestError::UnknownWorkload(_)
        ),
        "{err}"
    );
    let mut other = h.credential("api-1");
    other.platform = "elsewhere".into();
    assert!(matches!(
        platform.attest(&other).await,
        Err(AttestError::WrongPlatform(_))
    ));

    // An identity that is not the workload's name; meshed and unmeshed endpoints in one
    // service; a terminating endpoint; one workload serving two services on two ports.
    let mut shared = WorkloadSpec::new("api-7f9c", "api", addr(10004));
    shared.account = "api-sa".into();
    let mut legacy = WorkloadSpec::new("legacy", "api", addr(10005));
    legacy.meshed = false;
    let mut leaving = WorkloadSpec::new("api-old", "api", addr(10006));
    leaving.state = EndpointState::Terminating;
    let mut multi = WorkloadSpec::new("multi", "web", addr(10007));
    multi.servers.push(ServerSpec {
        service: "admin".into(),
        service_port: 9090,
        address: addr(10008),
    });
    let terminating = h.reports_terminating();
    world.extend([shared, legacy, multi]);
    if terminating {
        world.push(leaving);
    }
    let api_count = if terminating { 4 } else { 3 };
    h.set(&world).await;
    until(&registry, "the mixed workloads", |s| {
        addrs(s, &api).len() == api_count
            && addrs(s, &svc("web")).len() == 1
            && addrs(s, &svc("admin")).len() == 1
    })
    .await;
    let snap = registry.snapshot();
    let service = snap.service(&api).unwrap();
    let ep = |port: u16| {
        service.ports[0]
            .endpoints
            .iter()
            .find(|e| e.address.port() == port)
            .unwrap_or_else(|| panic!("no endpoint on {port}"))
            .clone()
    };
    let shared_ep = ep(10004);
    assert_eq!(shared_ep.identity.as_ref().unwrap().name(), "api-sa");
    assert_eq!(shared_ep.workload.as_ref().unwrap().name, "api-7f9c");
    assert!(shared_ep.meshed);
    assert!(!ep(10005).meshed, "the unmeshed endpoint");
    assert!(ep(10005).tls_identity().is_none());
    if terminating {
        assert_eq!(ep(10006).state, EndpointState::Terminating);
    }
    assert_eq!(ep(10004).state, EndpointState::Ready);
    let id = platform.attest(&h.credential("api-7f9c")).await.unwrap();
    assert_eq!(
        id.name(),
        "api-sa",
        "attestation proves the account, not the name"
    );
    let multi_ref = WorkloadRef {
        source: Arc::from(platform.name()),
        key: WorkloadKey {
            namespace: ns.clone(),
            name: "multi".into(),
        },
    };
    let served: Vec<_> = snap
        .servers_of(&multi_ref)
        .map(|s| (s.service.name.clone(), s.port, s.address.port()))
        .collect();
    assert_eq!(
        served,
        [
            ("web".to_string(), h.service_port(80), 10007),
            ("admin".to_string(), h.service_port(9090), 10008)
        ]
    );

    // A relist: objects missing from it disappear, changed ones change, in one write, and
    // the services it leaves as they were are not touched (nothing flaps).
    let before = registry.snapshot();
    let mut api_topic = registry.watch_topic(Topic::Service(api.clone()));
    let relisted: Vec<_> = world
        .iter()
        .filter(|w| w.name != "multi")
        .cloned()
        .collect();
    h.relist(&relisted).await;
    until(&registry, "the relist applied", |s| {
        s.service(&svc("web")).is_none() && s.service(&svc("admin")).is_none()
    })
    .await;
    let after = registry.snapshot();
    assert_eq!(
        after.version(),
        before.version() + 1,
        "a relist is one write"
    );
    assert!(Arc::ptr_eq(
        &before.service(&api).unwrap(),
        &after.service(&api).unwrap()
    ));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(50), api_topic.changed())
            .await
            .is_err(),
        "a service the relist left alone was touched"
    );
    world = relisted;

    // Two sources that use the same names: both are kept, and merged into one service.
    let task2 = run(second.platform(), &registry, "second", &stop);
    let twin = vec![WorkloadSpec::new("api-1", "api", addr(10011))];
    second.set(&twin).await;
    until(&registry, "the second source's api-1", |s| {
        addrs(s, &api).contains(&addr(10011)) && addrs(s, &api).contains(&a2)
    })
    .await;
    second.set(&[]).await;
    until(&registry, "the second source emptied", |s| {
        !addrs(s, &api).contains(&addr(10011)) && s.source("second").next().is_none()
    })
    .await;
    assert!(addrs(&registry.snapshot(), &api).contains(&a2));

    // An invalid update keeps the last good state; a later valid one still applies.
    let before = registry.snapshot();
    h.break_source().await;
    // The bad update has been seen and refused by now: the registry still holds exactly what it
    // held before it, the same version included (nothing was removed and re-added).
    let after = registry.snapshot();
    assert_eq!(
        after.source(platform.name()).collect::<Vec<_>>(),
        before.source(platform.name()).collect::<Vec<_>>(),
        "a bad update changed the registry"
    );
    assert_eq!(after.version(), before.version());
    world.push(WorkloadSpec::new("api-3", "api", a1));
    h.set(&world).await;
    until(&registry, "api-3 added after a bad update", |s| {
        addrs(s, &api).contains(&a1)
    })
    .await;

    stop.cancel();
    task.await.unwrap().unwrap();
    task2.await.unwrap().unwrap();
}
