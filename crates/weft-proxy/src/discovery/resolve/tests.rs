use weft_api::{EndpointChanges, Resolved, ServiceMeta};

use super::*;

fn wire_ep(port: u16, state: weft_api::EndpointState) -> weft_api::Endpoint {
    weft_api::Endpoint {
        address: format!("127.0.0.1:{port}"),
        identity: "spiffe://weft.test/ns/demo/sa/api".into(),
        workload: "demo/api".into(),
        state: state as i32,
    }
}

fn resolved(endpoints: Vec<weft_api::Endpoint>) -> weft_api::ResolveUpdate {
    weft_api::ResolveUpdate {
        update: Some(Update::Resolved(Resolved {
            service: Some(ServiceMeta {
                name: "api".into(),
                namespace: "demo".into(),
                port: 80,
                protocol: weft_api::Protocol::Grpc as i32,
            }),
            endpoints,
            policy: None,
        })),
    }
}

fn changes(upserted: Vec<weft_api::Endpoint>, removed: &[&str]) -> weft_api::ResolveUpdate {
    weft_api::ResolveUpdate {
        update: Some(Update::Changes(EndpointChanges {
            upserted,
            removed: removed.iter().map(|s| s.to_string()).collect(),
        })),
    }
}

fn ports(r: &Resolution) -> Vec<u16> {
    if let Resolution::Resolved(s) = r {
        // The per-request check agrees with the list the balancer gets.
        assert_eq!(s.has_usable(), !s.usable().is_empty());
    }
    r.usable().iter().map(|e| e.address.port()).collect()
}

#[test]
fn deltas_apply_to_the_resolved_set() {
    use weft_api::EndpointState as S;
    let r = apply(
        &Resolution::Pending,
        resolved(vec![wire_ep(1, S::Ready), wire_ep(2, S::Ready)]),
    )
    .unwrap();
    let Resolution::Resolved(svc) = &r else {
        panic!()
    };
    assert_eq!(svc.protocol, Protocol::Grpc);
    assert_eq!(ports(&r), [1, 2]);
    let r = apply(&r, changes(vec![wire_ep(3, S::Ready)], &["127.0.0.1:1"])).unwrap();
    assert_eq!(ports(&r), [2, 3]);
    // A terminating endpoint takes no new connections.
    let r = apply(&r, changes(vec![wire_ep(2, S::Terminating)], &[])).unwrap();
    assert_eq!(ports(&r), [3]);
    // With no ready endpoint left, those still serving are used.
    let r = apply(
        &r,
        changes(vec![wire_ep(3, S::Serving), wire_ep(4, S::Serving)], &[]),
    )
    .unwrap();
    assert_eq!(ports(&r), [3, 4]);
    // An unknown state reads as terminating.
    let mut odd = wire_ep(3, S::Ready);
    odd.state = 42;
    let r = apply(&r, changes(vec![odd], &[])).unwrap();
    assert_eq!(ports(&r), [4]);
}

#[test]
fn out_of_step_updates_are_refused() {
    assert_eq!(
        apply(&Resolution::Pending, changes(Vec::new(), &[])),
        Err(UpdateError::NoService)
    );
    assert_eq!(
        apply(
            &Resolution::Pending,
            weft_api::ResolveUpdate { update: None }
        ),
        Err(UpdateError::Unknown)
    );
    let mut no_meta = resolved(Vec::new());
    if let Some(Update::Resolved(r)) = &mut no_meta.update {
        r.service = None;
    }
    assert!(matches!(
        apply(&Resolution::Pending, no_meta),
        Err(UpdateError::Meta(_))
    ));
}

#[test]
fn an_endpoint_with_an_unreadable_identity_is_left_out() {
    use weft_api::EndpointState as S;
    let r = apply(
        &Resolution::Pending,
        resolved(vec![wire_ep(1, S::Ready), wire_ep(2, S::Ready)]),
    )
    .unwrap();
    let mut bad = wire_ep(2, S::Ready);
    bad.identity = "spiffe://weft.test/oops".into();
    // The stale entry at that address goes too: it cannot be trusted any more.
    let r = apply(&r, changes(vec![bad], &[])).unwrap();
    assert_eq!(ports(&r), [1]);
}

/// A route update that cannot be read is not applied (the last good routes stay) and is
/// counted; a readable one is compiled for the resolved service port; an update with no
/// routes changes nothing; a policy update is applied only after a resolved service.
#[test]
fn unreadable_routes_keep_the_last_good_ones_and_are_counted() {
    use weft_api::v1::{
        HttpMatch, HttpRoute, HttpRule, PathMatch, TrafficPolicy as Wire, path_match,
    };

    let metrics = crate::metrics::Metrics::default();
    let target = Target::parse("api.demo", "demo").unwrap();
    let current = apply(
        &Resolution::Pending,
        resolved(vec![wire_ep(1, weft_api::EndpointState::Ready)]),
    )
    .unwrap();
    let with_regex = |re: &str| Wire {
        http: vec![HttpRoute {
            name: "demo/r".into(),
            trace_start_millionths: None,
            rules: vec![HttpRule {
                matches: vec![HttpMatch {
                    path: Some(PathMatch {
                        kind: Some(path_match::Kind::Regex(re.into())),
                    }),
                    ..HttpMatch::default()
                }],
                ..HttpRule::default()
            }],
        }],
        grpc: vec![],
        backend: None,
    };
    let update = |p: Wire| weft_api::ResolveUpdate {
        update: Some(Update::Policy(p)),
    };

    let good = routes_of(&update(with_regex("/v[0-9]+")));
    let (policy, service, port) = routes_to_build(good, &current, &target, &metrics).unwrap();
    assert_eq!(
        (policy.http.len(), service.to_string(), port),
        (1, "api.demo".into(), 80)
    );

    let bad = routes_of(&update(with_regex("(("))).unwrap();
    assert!(bad.is_err());
    assert!(routes_to_build(Some(bad), &current, &target, &metrics).is_none());
    assert!(
        metrics
            .encode()
            .contains("weft_outbound_policy_invalid_total 1")
    );

    assert!(routes_of(&changes(vec![], &["127.0.0.1:1"])).is_none());
    assert_eq!(
        apply(&Resolution::Pending, update(with_regex("/x"))),
        Err(UpdateError::NoService)
    );
    assert_eq!(apply(&current, update(with_regex("/x"))).unwrap(), current);
}
