use std::net::IpAddr;

use super::*;
use crate::model::{Endpoint, EndpointState, Identity, Protocol, ServicePort, TrustDomain};

fn svc(name: &str) -> ServiceName {
    ServiceName::new("demo", name).unwrap()
}

fn endpoint(workload: &str, port: u16) -> Endpoint {
    let td = TrustDomain::new("weft.test").unwrap();
    Endpoint {
        address: ([127, 0, 0, 1], port).into(),
        identity: Some(Identity::new(td, "demo", workload).unwrap()),
        meshed: true,
        workload: Some(WorkloadKey {
            namespace: "demo".into(),
            name: workload.into(),
        }),
        state: EndpointState::Ready,
    }
}

fn service(name: &str, port: u16, endpoints: Vec<Endpoint>) -> Service {
    Service {
        name: svc(name),
        virtual_ips: Vec::new(),
        ports: vec![ServicePort {
            port,
            name: None,
            protocol: Protocol::Auto,
            endpoints,
        }],
    }
}

fn addrs(snap: &RegistrySnapshot, name: &str) -> Vec<u16> {
    snap.service(&svc(name))
        .map(|s| {
            s.ports
                .iter()
                .flat_map(|p| p.endpoints.iter().map(|e| e.address.port()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn merges_sources_and_wakes_readers_only_on_change() {
    let reg = Registry::new();
    let mut rx = reg.subscribe();
    let a = reg.writer("a");
    let b = reg.writer("b");
    a.upsert(service("api", 80, vec![endpoint("one", 1)]));
    assert!(rx.has_changed().unwrap());
    rx.mark_unchanged();
    b.replace_all([service("api", 80, vec![endpoint("two", 2)])]);
    assert_eq!(addrs(&reg.snapshot(), "api"), [1, 2]);
    assert_eq!(reg.snapshot().version(), 2);
    rx.mark_unchanged();

    // The same content again changes nothing.
    b.replace_all([service("api", 80, vec![endpoint("two", 2)])]);
    a.upsert(service("api", 80, vec![endpoint("one", 1)]));
    assert!(!rx.has_changed().unwrap());
    assert_eq!(reg.snapshot().version(), 2);

    // A resync of one source leaves the other alone.
    a.replace_all([]);
    assert!(rx.has_changed().unwrap());
    assert_eq!(addrs(&reg.snapshot(), "api"), [2]);
    b.remove(&svc("api"));
    assert!(reg.snapshot().service_names().is_empty());
}

#[test]
fn the_same_names_in_two_sources_do_not_collide() {
    let reg = Registry::new();
    // Both platforms call their workload demo/api-1, at different addresses.
    reg.writer("kubernetes")
        .upsert(service("api", 80, vec![endpoint("api-1", 1)]));
    reg.writer("nomad")
        .upsert(service("api", 80, vec![endpoint("api-1", 2)]));
    let snap = reg.snapshot();
    assert_eq!(addrs(&snap, "api"), [1, 2]);
    let wl = |source: &str| WorkloadRef {
        source: Arc::from(source),
        key: WorkloadKey {
            namespace: "demo".into(),
            name: "api-1".into(),
        },
    };
    let ports = |source: &str| -> Vec<u16> {
        snap.servers_of(&wl(source))
            .map(|s| s.address.port())
            .collect()
    };
    assert_eq!(ports("kubernetes"), [1]);
    assert_eq!(ports("nomad"), [2]);
    // Removing one source's service keeps the other's.
    reg.writer("nomad").remove(&svc("api"));
    assert_eq!(addrs(&reg.snapshot(), "api"), [1]);
}

#[test]
fn a_source_is_synced_after_its_first_full_sync() {
    let reg = Registry::new();
    let a = reg.writer("a");
    a.upsert(service("api", 80, vec![endpoint("one", 1)]));
    assert!(!reg.all_synced(["a"]));
    a.replace_all([service("api", 80, vec![endpoint("one", 1)])]);
    assert!(reg.all_synced(["a"]));
    assert!(!reg.all_synced(["a", "b"]));
    reg.writer("b").replace_all([]);
    assert!(reg.all_synced(["a", "b"]));
}

#[test]
fn addresses_are_indexed_and_unindexed() {
    let reg = Registry::new();
    let w = reg.writer("a");
    let vip: IpAddr = [10, 96, 0, 10].into();
    let mut api = service("api", 80, vec![endpoint("one", 1), endpoint("two", 2)]);
    api.virtual_ips = vec![vip];
    w.upsert(api.clone());
    let snap = reg.snapshot();
    let found: Vec<_> = snap
        .lookup_address((vip, 80).into())
        .map(|r| (r.kind, r.service.name.clone(), r.port))
        .collect();
    assert_eq!(found, [(AddressKind::Virtual, "api".to_string(), 80)]);
    // The virtual address serves only the service's ports.
    assert_eq!(snap.lookup_address((vip, 81).into()).count(), 0);
    let ep: Vec<_> = snap
        .lookup_address(([127, 0, 0, 1], 2).into())
        .map(|r| r.kind)
        .collect();
    assert_eq!(ep, [AddressKind::Endpoint]);

    // Moving an endpoint moves its index entry.
    api.ports[0].endpoints[1] = endpoint("two", 3);
    w.upsert(api);
    let snap = reg.snapshot();
    assert_eq!(snap.lookup_address(([127, 0, 0, 1], 2).into()).count(), 0);
    assert_eq!(snap.lookup_address(([127, 0, 0, 1], 3).into()).count(), 1);
    w.remove(&svc("api"));
    let snap = reg.snapshot();
    assert_eq!(snap.lookup_address((vip, 80).into()).count(), 0);
    assert_eq!(snap.lookup_address(([127, 0, 0, 1], 1).into()).count(), 0);
}

#[test]
fn one_workload_serves_several_services_and_ports() {
    let reg = Registry::new();
    let w = reg.writer("a");
    let mut api = service("api", 80, vec![endpoint("pod", 8080)]);
    api.ports.push(ServicePort {
        port: 9090,
        name: Some("admin".into()),
        protocol: Protocol::Grpc,
        endpoints: vec![endpoint("pod", 9090)],
    });
    w.upsert(api);
    w.upsert(service("metrics", 80, vec![endpoint("pod", 8080)]));
    let wl = WorkloadRef {
        source: Arc::from("a"),
        key: WorkloadKey {
            namespace: "demo".into(),
            name: "pod".into(),
        },
    };
    let snap = reg.snapshot();
    let servers: Vec<_> = snap
        .servers_of(&wl)
        .map(|s| (s.address.port(), s.service.name.clone(), s.port))
        .collect();
    assert_eq!(
        servers,
        [
            (8080, "api".to_string(), 80),
            (8080, "metrics".to_string(), 80),
            (9090, "api".to_string(), 9090)
        ]
    );
    assert_eq!(
        snap.service(&svc("api"))
            .unwrap()
            .port(9090)
            .unwrap()
            .protocol,
        Protocol::Grpc
    );
}

#[tokio::test]
async fn a_write_wakes_only_the_topics_it_touches() {
    let reg = Registry::new();
    let w = reg.writer("a");
    w.upsert(service("api", 80, vec![endpoint("one", 1)]));
    w.upsert(service("web", 80, vec![endpoint("web", 5)]));
    let mut api = reg.watch_topic(Topic::Service(svc("api")));
    let mut web = reg.watch_topic(Topic::Service(svc("web")));
    let new_addr: SocketAddr = ([127, 0, 0, 1], 2).into();
    let mut addr = reg.watch_topic(Topic::Address(new_addr));
    assert_eq!(reg.watched_topics(), 3);

    w.upsert(service(
        "api",
        80,
        vec![endpoint("one", 1), endpoint("two", 2)],
    ));
    tokio::time::timeout(std::time::Duration::from_secs(1), api.changed())
        .await
        .expect("the changed service's topic is woken");
    tokio::time::timeout(std::time::Duration::from_secs(1), addr.changed())
        .await
        .expect("the new endpoint's address is woken");
    // The other service was not touched.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(1), web.changed())
            .await
            .is_err()
    );
    // A relist that leaves a service as it was does not wake its readers.
    w.replace_all([
        service("api", 80, vec![endpoint("one", 1), endpoint("two", 2)]),
        service("web", 80, vec![endpoint("web", 5)]),
    ]);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(1), api.changed())
            .await
            .is_err()
    );

    drop(api);
    drop(web);
    drop(addr);
    assert_eq!(
        reg.watched_topics(),
        0,
        "dropped watches leave no topic behind"
    );
}

#[test]
fn unchanged_services_are_shared_between_versions() {
    let reg = Registry::new();
    let w = reg.writer("a");
    w.replace_all((0..100).map(|i| service(&format!("s{i}"), 80, vec![endpoint("x", i)])));
    let before = reg.snapshot();
    let v = before.version();
    // A relist that changes two services is one write.
    w.replace_all((0..100).map(|i| {
        let port = if i < 2 { 1000 + i } else { i };
        service(&format!("s{i}"), 80, vec![endpoint("x", port)])
    }));
    let after = reg.snapshot();
    assert_eq!(after.version(), v + 1);
    let same = before
        .source("a")
        .zip(after.source("a"))
        .filter(|(a, b)| Arc::ptr_eq(a, b))
        .count();
    assert_eq!(same, 98);
}

#[test]
fn what_cannot_be_served_is_dropped_and_the_rest_kept() {
    let reg = Registry::new();
    let mut no_identity = endpoint("one", 1);
    no_identity.identity = None;
    let mut plain = endpoint("plain", 3);
    plain.meshed = false;
    let mut api = service(
        "api",
        80,
        vec![endpoint("two", 2), no_identity, endpoint("dup", 2), plain],
    );
    api.ports.push(ServicePort {
        port: 80,
        name: None,
        protocol: Protocol::Opaque,
        endpoints: vec![endpoint("other", 9)],
    });
    reg.writer("a").upsert(api);
    let s = reg.snapshot().service(&svc("api")).unwrap();
    assert_eq!(s.ports.len(), 1);
    assert_eq!(s.ports[0].protocol, Protocol::Auto);
    let eps: Vec<_> = s.ports[0]
        .endpoints
        .iter()
        .map(|e| (e.address.port(), e.tls_identity().is_some()))
        .collect();
    // The meshed endpoint without identity is gone; the unmeshed one stays, in plaintext.
    assert_eq!(eps, [(2, true), (3, false)]);
}

#[tokio::test]
async fn a_batch_of_changes_is_one_write_that_wakes_only_what_changed() {
    let reg = Registry::new();
    let w = reg.writer("kubernetes");
    w.replace_all([
        service("api", 80, vec![endpoint("api-1", 1)]),
        service("web", 80, vec![endpoint("web-1", 2)]),
        service("db", 80, vec![endpoint("db-1", 3)]),
    ]);
    let before = reg.snapshot();
    let mut web = reg.watch_topic(Topic::Service(svc("web")));
    w.update([
        (
            svc("api"),
            Some(service("api", 80, vec![endpoint("api-1", 4)])),
        ),
        (svc("db"), None),
        (
            svc("new"),
            Some(service("new", 80, vec![endpoint("new-1", 5)])),
        ),
        // Unchanged, and a removal of what was never there: no effect.
        (
            svc("web"),
            Some(service("web", 80, vec![endpoint("web-1", 2)])),
        ),
        (svc("ghost"), None),
    ]);
    let after = reg.snapshot();
    assert_eq!(after.version(), before.version() + 1);
    assert_eq!(addrs(&after, "api"), [4]);
    assert!(after.service(&svc("db")).is_none());
    assert_eq!(addrs(&after, "new"), [5]);
    assert!(Arc::ptr_eq(
        &before.service(&svc("web")).unwrap(),
        &after.service(&svc("web")).unwrap()
    ));
    // A zero timeout polls once: a topic that was woken would be ready.
    assert!(
        tokio::time::timeout(std::time::Duration::ZERO, web.changed())
            .await
            .is_err(),
        "an unchanged service was woken"
    );
    // A batch that changes nothing bumps nothing.
    w.update([(svc("ghost"), None)]);
    assert_eq!(reg.snapshot().version(), after.version());
}

/// A reader that sees a write's snapshot finds the topics it touched already woken: a
/// follower that reads the snapshot, then subscribes to a topic, is never woken by a write
/// older than what it read. Each trial races one write on another thread against a reader
/// that checks the topic the moment the new version shows.
#[test]
fn a_visible_write_has_woken_its_topics() {
    const TRIALS: usize = 2_000;
    let mut late = 0;
    for i in 0..TRIALS {
        let reg = Registry::new();
        let w = reg.writer("a");
        let topic = reg.watch_topic(Topic::Service(svc("api")));
        let rx = topic.rx.as_ref().expect("a live watch has a receiver");
        let port = u16::try_from(1 + i % 1000).expect("small");
        std::thread::scope(|s| {
            s.spawn(|| w.upsert(service("api", 80, vec![endpoint("one", port)])));
            while reg.snapshot().version() == 0 {
                std::hint::spin_loop();
            }
            if !rx.has_changed().expect("the sender is alive") {
                late += 1;
            }
        });
    }
    assert_eq!(
        late, 0,
        "{late} of {TRIALS} writes were visible before their topic woke"
    );
}

/// Routes are a source's own: replacing them wakes the services they bind to (old and new
/// parents), by name and by virtual address, and nothing else; the same routes again wake
/// nobody.
#[tokio::test]
async fn routes_wake_the_services_they_bind_to() {
    use crate::policy::route::{HttpRoute, RouteMeta, RouteSource};
    use crate::policy::route_spec::{Bound, Parent};
    use crate::policy::traffic::SourceRoutes;

    let reg = Registry::new();
    let w = reg.writer("k8s");
    let web = ServiceName::new("demo", "web").unwrap();
    let mut svc = Service {
        name: web.clone(),
        virtual_ips: vec![[10, 96, 0, 9].into()],
        ports: vec![],
    };
    svc.ports.push(crate::model::ServicePort {
        port: 80,
        name: None,
        protocol: crate::model::Protocol::Http1,
        endpoints: vec![],
    });
    w.upsert(svc);
    let route = |parent: &ServiceName| SourceRoutes {
        http: vec![Bound {
            parents: vec![Parent {
                service: parent.clone(),
                port: None,
            }],
            route: HttpRoute {
                meta: RouteMeta {
                    name: "demo/r".into(),
                    source: RouteSource::ControlPlane,
                },
                rules: vec![],
            },
        }],
        grpc: vec![],
    };
    let mut by_name = reg.watch_topic(Topic::Service(web.clone()));
    let mut by_vip = reg.watch_topic(Topic::Address(([10, 96, 0, 9], 80).into()));
    let other = ServiceName::new("demo", "api").unwrap();
    let mut unrelated = reg.watch_topic(Topic::Service(other.clone()));
    let before = reg.snapshot().version();
    // Whether a topic was woken: a write wakes before it returns, so no wait is needed.
    async fn woken(t: &mut TopicWatch) -> bool {
        tokio::time::timeout(std::time::Duration::ZERO, t.changed())
            .await
            .is_ok()
    }

    w.replace_routes(route(&web));
    assert!(woken(&mut by_name).await);
    assert!(woken(&mut by_vip).await);
    assert!(!woken(&mut unrelated).await);
    assert_eq!(reg.snapshot().routes().len(), 1);

    w.replace_routes(route(&web));
    assert!(!woken(&mut by_name).await, "the same routes again");
    assert_eq!(reg.snapshot().version(), before + 1);

    // Moving the route to another parent wakes both.
    w.replace_routes(route(&other));
    assert!(woken(&mut by_name).await);
    assert!(woken(&mut unrelated).await);
    w.replace_routes(SourceRoutes::default());
    assert!(reg.snapshot().routes().is_empty());
}

/// Every index entry of `snap`, in a form two snapshots can be compared by.
fn index_entries(snap: &RegistrySnapshot) -> Vec<String> {
    let mut out: Vec<String> = snap
        .addresses
        .iter()
        .flat_map(|(a, set)| set.iter().map(move |r| format!("address {a} -> {r:?}")))
        .collect();
    out.extend(
        snap.workloads
            .iter()
            .flat_map(|(w, set)| set.iter().map(move |r| format!("workload {w:?} -> {r:?}"))),
    );
    out
}

#[test]
fn changes_leave_the_indexes_as_a_fresh_fill_would() {
    let vip: IpAddr = [10, 96, 0, 10].into();
    let mut api = service("api", 80, vec![endpoint("one", 1), endpoint("two", 2)]);
    api.virtual_ips = vec![vip];
    // The same workload serves a second service, at one of the same addresses.
    let mut web = service("web", 80, vec![endpoint("two", 2), endpoint("three", 3)]);
    let reg = Registry::new();
    let w = reg.writer("a");
    w.upsert(api.clone());
    w.upsert(web.clone());

    // An endpoint moves, one is added, the virtual address changes, a port is added.
    api.ports[0].endpoints[0] = endpoint("one", 11);
    api.ports[0].endpoints.push(endpoint("four", 4));
    api.virtual_ips = vec![[10, 96, 0, 11].into()];
    web.ports.push(ServicePort {
        port: 81,
        name: None,
        protocol: Protocol::Http1,
        endpoints: vec![endpoint("three", 3)],
    });
    w.upsert(api.clone());
    w.upsert(web.clone());
    // A service goes away and comes back smaller.
    w.remove(&svc("web"));
    web.ports.remove(0);
    w.upsert(web.clone());

    let fresh = Registry::new();
    fresh.writer("a").replace_all([api, web]);
    let (changed, fresh) = (reg.snapshot(), fresh.snapshot());
    assert_eq!(index_entries(&changed), index_entries(&fresh));
    // Spot checks, so that two empty indexes cannot pass.
    assert_eq!(
        changed.lookup_address(([127, 0, 0, 1], 1).into()).count(),
        0
    );
    assert_eq!(
        changed.lookup_address(([127, 0, 0, 1], 11).into()).count(),
        1
    );
    assert_eq!(changed.lookup_address((vip, 80).into()).count(), 0);
    let three = WorkloadRef {
        source: Arc::from("a"),
        key: WorkloadKey {
            namespace: "demo".into(),
            name: "three".into(),
        },
    };
    let served: Vec<_> = changed.servers_of(&three).map(|s| s.port).collect();
    assert_eq!(served, [81]);
}

#[test]
fn endpoints_with_equal_identities_share_one() {
    let reg = Registry::new();
    let mut two = endpoint("one", 2);
    // Built separately, equal in content.
    two.identity =
        Some(Identity::new(TrustDomain::new("weft.test").unwrap(), "demo", "one").unwrap());
    reg.writer("a").upsert(service(
        "api",
        80,
        vec![endpoint("one", 1), two, endpoint("other", 3)],
    ));
    let api = reg.snapshot().service(&svc("api")).unwrap();
    let ids: Vec<_> = api.ports[0]
        .endpoints
        .iter()
        .map(|e| e.identity.clone().unwrap())
        .collect();
    assert!(ids[0].shares_parts_with(&ids[1]));
    assert!(!ids[0].shares_parts_with(&ids[2]));
}
