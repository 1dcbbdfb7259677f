//! The Consul catalog adapter against the fake Consul API: the adapter scenarios that apply to
//! a catalog that proves no identity (register, scale, deregister, health, disconnect and
//! resync, restart, an index going backwards, the ACL token), and the tag rules it shares with
//! the Nomad adapter.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::SocketAddr;
use std::time::Duration;

use weft_core::platform::{AttestError, Credential, Platform};
use weft_core::{EndpointState, Protocol, ServiceName, TrustDomain};
use weft_nomad::{ConsulPlatform, ConsulSettings};
use weft_tests::WAIT;
use weft_tests::conformance::addrs;
use weft_tests::fake_consul::{CheckStatus, ConsulService, FakeConsul};

type Running = weft_tests::RunningPlatform<ConsulPlatform>;

/// Runs the adapter against `fake` into a fresh registry, retrying quickly.
fn running(fake: &FakeConsul, settings: ConsulSettings) -> Running {
    let settings = ConsulSettings {
        address: Some(fake.url()),
        ..settings
    };
    Running::start(
        ConsulPlatform::with_settings(settings, TrustDomain::new("weft.test").unwrap())
            .unwrap()
            .with_retry_floor(Duration::from_millis(50)),
    )
}

fn svc(name: &str) -> ServiceName {
    ServiceName::new("default", name).unwrap()
}

fn at(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// Instance `id` of `name` on its own node, passing its check.
fn instance(name: &str, id: &str, port: u16, tags: &[&str]) -> ConsulService {
    ConsulService::new(&format!("node-{id}"), "127.0.0.1", name, "", port)
        .id(id)
        .tags(tags)
        .check(&format!("check-{id}"), CheckStatus::Passing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_is_followed_through_changes_health_and_disruptions() {
    let fake = FakeConsul::start().await;
    fake.require_token(Some("c0nsul"));
    fake.register(instance(
        "api",
        "api-1",
        9001,
        &["weft", "weft-protocol=grpc"],
    ));
    fake.register(instance("legacy", "legacy-1", 9500, &[]));
    let run = running(
        &fake,
        ConsulSettings {
            token: Some("c0nsul".into()),
            ..Default::default()
        },
    );
    let api = svc("api");
    // The first write holds every service at once.
    run.until("the first read", |s| {
        addrs(s, &api) == [at(9001)] && addrs(s, &svc("legacy")) == [at(9500)]
    })
    .await;
    assert_eq!(
        run.registry.snapshot().version(),
        1,
        "one write for the whole catalog"
    );
    let snap = run.registry.snapshot();
    let port = &snap.service(&api).unwrap().ports[0];
    assert_eq!(port.protocol, Protocol::Grpc);
    assert!(port.endpoints[0].meshed);
    assert_eq!(
        port.endpoints[0].identity.as_ref().unwrap().to_string(),
        "spiffe://weft.test/ns/default/sa/api"
    );
    assert!(!snap.service(&svc("legacy")).unwrap().ports[0].endpoints[0].meshed);
    // Consul's own service is in the catalog too, in plaintext.
    assert!(snap.service(&svc("consul")).is_some());
    assert!(
        fake.requests()
            .iter()
            .all(|r| r.token.as_deref() == Some("c0nsul"))
    );

    // Scale up, a failing check, recovery, scale down, a service that goes away.
    fake.register(instance("api", "api-2", 9002, &["weft"]));
    run.until("api scaled up", |s| addrs(s, &api).len() == 2)
        .await;
    // An instance failing a check (its own, or its node's) takes no traffic but stays, not
    // ready: its proxy keeps the service's inbound rules.
    let ready = |s: &weft_core::RegistrySnapshot| -> Vec<(u16, EndpointState)> {
        s.service(&api)
            .map(|svc| {
                svc.ports[0]
                    .endpoints
                    .iter()
                    .map(|e| (e.address.port(), e.state))
                    .collect()
            })
            .unwrap_or_default()
    };
    let both_ready = [(9001, EndpointState::Ready), (9002, EndpointState::Ready)];
    let second_failing = [
        (9001, EndpointState::Ready),
        (9002, EndpointState::NotReady),
    ];
    fake.set_check("node-api-2", "check-api-2", CheckStatus::Critical);
    run.until("a critical instance not ready", |s| {
        ready(s) == second_failing
    })
    .await;
    fake.set_check("node-api-2", "check-api-2", CheckStatus::Passing);
    run.until("back when passing", |s| ready(s) == both_ready)
        .await;
    fake.set_check("node-api-2", "check-api-2", CheckStatus::Warning);
    run.until("a warning is not passing", |s| ready(s) == second_failing)
        .await;
    fake.set_check("node-api-2", "check-api-2", CheckStatus::Passing);
    fake.set_node_health("node-api-2", CheckStatus::Critical);
    run.until("a failing node", |s| ready(s) == second_failing)
        .await;
    fake.set_node_health("node-api-2", CheckStatus::Passing);
    run.until("the node back", |s| ready(s) == both_ready).await;
    fake.deregister("node-api-2", "api-2");
    run.until("api scaled down", |s| addrs(s, &api) == [at(9001)])
        .await;
    fake.deregister("node-legacy-1", "legacy-1");
    run.until("legacy gone", |s| s.service(&svc("legacy")).is_none())
        .await;

    // Cut connections, then a restart on the same port: the queries resume, changes made
    // meanwhile are seen, and what did not change stays.
    let mut errors = run.platform.watch_errors();
    let seen = *errors.borrow_and_update();
    fake.cut_connections();
    fake.register(instance("web", "web-1", 9100, &["weft"]));
    run.until("web after the cut", |s| addrs(s, &svc("web")).len() == 1)
        .await;
    fake.restart().await;
    fake.register(instance("api", "api-3", 9003, &["weft"]));
    run.until("api-3 after the restart", |s| addrs(s, &api).len() == 2)
        .await;
    tokio::time::timeout(WAIT, errors.wait_for(|n| *n > seen))
        .await
        .unwrap()
        .unwrap();

    // The index goes backwards (a restored cluster, whose servers dropped their connections):
    // every query starts over from it and changes still arrive.
    fake.reset_index();
    fake.cut_connections();
    fake.deregister("node-api-3", "api-3");
    run.until("api-3 gone after the reset", |s| {
        addrs(s, &api) == [at(9001)]
    })
    .await;
    fake.register(instance("api", "api-4", 9004, &["weft"]));
    run.until("api-4 after the reset", |s| addrs(s, &api).len() == 2)
        .await;
    assert_eq!(addrs(&run.registry.snapshot(), &svc("web")).len(), 1);

    // A wrong token: queries fail and are counted; the last state stays in force.
    fake.require_token(Some("rotated"));
    let seen = *errors.borrow_and_update();
    fake.cut_connections();
    tokio::time::timeout(WAIT, errors.wait_for(|n| *n > seen))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(addrs(&run.registry.snapshot(), &api).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_name_the_proxy_port_the_account_and_bad_instances_are_left_out() {
    let fake = FakeConsul::start().await;
    fake.register(instance(
        "cart",
        "cart-1",
        9001,
        &["weft", "weft-inbound=7143", "weft-account=shop"],
    ));
    fake.register(
        ConsulService::new("vm-1", "127.0.0.2", "billing", "", 8080)
            .id("billing-1")
            .tags(&["weft"]),
    );
    // Not an IP address, and not a mesh name: left out, the rest goes on.
    fake.register(ConsulService::new("vm-2", "db.example.com", "db", "", 5432).id("db-1"));
    fake.register(instance("Bad_Name", "bad-1", 9009, &[]));
    // Registered by Nomad: the service ID carries the allocation.
    let alloc = "0c4e6f8a-1b2d-4c3e-8f5a-6b7c8d9e0f12";
    fake.register(instance(
        "orders",
        &format!("_nomad-task-{alloc}-orders-orders-http"),
        9300,
        &["weft"],
    ));
    let run = running(&fake, ConsulSettings::default());
    let cart = svc("cart");
    let billing = svc("billing");
    run.until("cart, billing and orders", |s| {
        addrs(s, &cart) == [at(7143)]
            && addrs(s, &billing) == [SocketAddr::from(([127, 0, 0, 2], 8080))]
            && addrs(s, &svc("orders")) == [at(9300)]
    })
    .await;
    let snap = run.registry.snapshot();
    let ep = &snap.service(&cart).unwrap().ports[0].endpoints[0];
    assert_eq!(
        ep.identity.as_ref().unwrap().to_string(),
        "spiffe://weft.test/ns/default/sa/shop"
    );
    // A Nomad task's instance is keyed by its allocation, as the Nomad adapter keys it, so
    // the proxy of that allocation (which attests with Nomad) finds its rules; others by
    // node and service ID.
    assert_eq!(ep.workload.as_ref().unwrap().name, "node-cart-1-cart-1");
    let orders = &snap.service(&svc("orders")).unwrap().ports[0].endpoints[0];
    assert_eq!(orders.workload.as_ref().unwrap().name, alloc);
    assert!(snap.service(&svc("db")).is_none());
    // The catalog proves no identity.
    let cred = Credential {
        platform: "consul".into(),
        token: "anything".into(),
        workload: Some("default/cart".into()),
        account: None,
    };
    assert!(matches!(
        run.platform.attest(&cred).await,
        Err(AttestError::Rejected(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_services_bounds_what_is_followed() {
    let fake = FakeConsul::start().await;
    for i in 0..5 {
        fake.register(instance(
            &format!("svc-{i}"),
            &format!("svc-{i}"),
            9000 + i,
            &[],
        ));
    }
    let run = running(
        &fake,
        ConsulSettings {
            max_services: 3,
            ..Default::default()
        },
    );
    // `consul` sorts first, then svc-0 and svc-1.
    run.until("three services", |s| s.source("consul").count() == 3)
        .await;
    let names: Vec<String> = run
        .registry
        .snapshot()
        .source("consul")
        .map(|s| s.name.name.clone())
        .collect();
    assert_eq!(names, ["consul", "svc-0", "svc-1"]);
    // The catalog's blocking query and those of the three followed services are parked.
    fake.blocked(4).await;
}
