//! The registry's memory per endpoint, counted by a global allocator in this test binary: the
//! heap the registry holds after a fill (services, their endpoints and both indexes), and again
//! after a stretch of changes, stays under a ceiling. README › Performance › Control-plane scale
//! gives the figures; the scale bench measures the same in RSS.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::alloc::System;
use std::net::{Ipv4Addr, SocketAddr};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use weft_core::{
    Endpoint, EndpointState, Identity, Protocol, Registry, Service, ServiceName, ServicePort,
    TrustDomain, WorkloadKey,
};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SERVICES: u32 = 2_000;
const PER_SERVICE: u32 = 10;

/// Heap bytes per endpoint the registry may hold: about 600 (after the fill) since the indexes
/// keep their sets compact and endpoints share identities. The target is 1 KB of RSS
/// per endpoint, which also pays for the allocator's overhead and the fill's transient memory.
const CEILING: f64 = 650.0;

/// A service as an adapter builds it: each endpoint with an identity and a workload of its own
/// making (the registry shares equal identities).
fn service(td: &TrustDomain, s: u32, moved: u32) -> Service {
    let endpoints = (0..PER_SERVICE)
        .map(|e| {
            let g = s * PER_SERVICE + e;
            let [_, a, b, c] = g.to_be_bytes();
            Endpoint {
                address: SocketAddr::new(Ipv4Addr::new(127, a, b, c).into(), 10_000 + moved as u16),
                identity: Some(Identity::new(td.clone(), "bench", format!("sa-{s}")).unwrap()),
                meshed: true,
                workload: Some(WorkloadKey {
                    namespace: "bench".into(),
                    name: format!("s{s}-{e}"),
                }),
                state: EndpointState::Ready,
            }
        })
        .collect();
    Service {
        name: ServiceName::new("bench", format!("svc-{s}")).unwrap(),
        virtual_ips: vec![Ipv4Addr::new(10, 96, (s >> 8) as u8, s as u8).into()],
        ports: vec![ServicePort {
            port: 80,
            name: None,
            protocol: Protocol::Http1,
            endpoints,
        }],
    }
}

fn held(region: &Region<'_, System>) -> f64 {
    let c = region.change();
    c.bytes_allocated as f64 - c.bytes_deallocated as f64
}

#[test]
fn the_registry_holds_under_a_ceiling_per_endpoint() {
    let td = TrustDomain::new("weft.bench").unwrap();
    let registry = Registry::new();
    let writer = registry.writer("bench");
    let endpoints = f64::from(SERVICES * PER_SERVICE);

    let region = Region::new(GLOBAL);
    writer.replace_all((0..SERVICES).map(|s| service(&td, s, 0)));
    assert_eq!(
        registry.snapshot().endpoint_count(),
        (SERVICES * PER_SERVICE) as usize
    );
    let filled = held(&region) / endpoints;

    // Every service changes twice (its endpoints move to another port), one write each, and
    // the old snapshots are dropped: what is held again is one registry's worth.
    for round in 1..=2 {
        for s in 0..SERVICES {
            writer.upsert(service(&td, s, round));
        }
    }
    let snap = registry.snapshot();
    let moved = SocketAddr::new(Ipv4Addr::new(127, 0, 0, 0).into(), 10_002);
    assert_eq!(snap.lookup_address(moved).count(), 1);
    assert_eq!(
        snap.lookup_address(SocketAddr::new(Ipv4Addr::new(127, 0, 0, 0).into(), 10_000))
            .count(),
        0
    );
    drop(snap);
    let changed = held(&region) / endpoints;

    eprintln!(
        "registry heap per endpoint: {filled:.0} B filled, {changed:.0} B after two changes of every service"
    );
    assert!(filled > 100.0, "the count saw nothing of the registry");
    for (when, bytes) in [("after the fill", filled), ("after the changes", changed)] {
        assert!(
            bytes <= CEILING,
            "the registry holds {bytes:.0} B per endpoint {when}, over the ceiling of {CEILING}"
        );
    }
}
