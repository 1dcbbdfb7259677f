use std::sync::Arc;

use weft_api::convert::endpoint_from_wire;
use weft_core::config::MeshConfig;
use weft_core::policy::{AuthorizationRule, Decision};
use weft_core::{
    Endpoint as CoreEndpoint, EndpointState, Registry, Service, ServiceName, ServicePort,
    TrustDomain,
};

use super::*;

fn td() -> TrustDomain {
    TrustDomain::new("weft.test").unwrap()
}

fn id(name: &str) -> Identity {
    Identity::new(td(), "demo", name).unwrap()
}

fn ep(port: u16, state: EndpointState) -> CoreEndpoint {
    CoreEndpoint {
        address: ([127, 0, 0, 1], port).into(),
        identity: Some(id("api")),
        meshed: true,
        workload: Some(WorkloadKey {
            namespace: "demo".into(),
            name: format!("api-{port}"),
        }),
        state,
    }
}

fn api(endpoints: Vec<CoreEndpoint>) -> Service {
    Service {
        name: ServiceName::new("demo", "api").unwrap(),
        virtual_ips: vec![[10, 96, 0, 1].into()],
        ports: vec![ServicePort {
            port: 80,
            name: None,
            protocol: Protocol::Http1,
            endpoints,
        }],
    }
}

fn config(rules: Vec<AuthorizationRule>) -> MeshConfig {
    let mut cfg: MeshConfig = weft_core::config::Loader::new().load_str(
        "[mesh]\nname = \"t\"\ntrust_domain = \"weft.test\"\n[ca]\ndata_dir = \"/nonexistent\"\n",
        std::path::Path::new("mesh.toml"),
    )
    .unwrap();
    cfg.authorization_rules = rules;
    cfg
}

fn addrs(a: &Answer) -> Vec<u16> {
    match a {
        Answer::Resolved { endpoints, .. } => endpoints.keys().map(|a| a.port()).collect(),
        other => panic!("not resolved: {other:?}"),
    }
}

#[test]
fn services_and_addresses_resolve() {
    let reg = Registry::new();
    reg.writer("a").upsert(api(vec![
        ep(1, EndpointState::Ready),
        ep(2, EndpointState::Terminating),
    ]));
    let snap = reg.snapshot();
    let cfg = config(Vec::new());
    let by_name = answer(
        &id("web"),
        &snap,
        &cfg,
        &Target::parse("api.demo", "x").unwrap(),
    );
    assert_eq!(addrs(&by_name), [1, 2]);
    let by_vip = answer(
        &id("web"),
        &snap,
        &cfg,
        &Target::parse("10.96.0.1:80", "x").unwrap(),
    );
    assert_eq!(by_vip, by_name);
    // An endpoint's own address resolves to that endpoint alone.
    let by_ep = answer(
        &id("web"),
        &snap,
        &cfg,
        &Target::parse("127.0.0.1:2", "x").unwrap(),
    );
    assert_eq!(addrs(&by_ep), [2]);
    for unknown in ["10.96.0.1:81", "10.0.0.9:80", "api.demo:81", "nope.demo"] {
        assert_eq!(
            answer(
                &id("web"),
                &snap,
                &cfg,
                &Target::parse(unknown, "x").unwrap()
            ),
            Answer::NotInMesh,
            "{unknown}"
        );
    }
}

#[test]
fn a_denied_target_reveals_nothing() {
    let reg = Registry::new();
    reg.writer("a")
        .upsert(api(vec![ep(1, EndpointState::Ready)]));
    let snap = reg.snapshot();
    let cfg = config(vec![AuthorizationRule::allow(
        ServiceName::new("demo", "api").unwrap(),
        vec!["demo/web".parse().unwrap()],
    )]);
    for target in ["api.demo", "10.96.0.1:80", "127.0.0.1:1"] {
        let t = Target::parse(target, "x").unwrap();
        assert!(matches!(
            answer(&id("web"), &snap, &cfg, &t),
            Answer::Resolved { .. }
        ));
        let Answer::Denied(reason) = answer(&id("load"), &snap, &cfg, &t) else {
            panic!("{target} not denied");
        };
        // Neither endpoints nor, for an address, the service's name.
        assert!(reason.contains(target), "{reason}");
        assert!(!reason.contains("127.0.0.1:1") || target == "127.0.0.1:1");
        if target != "api.demo" {
            assert!(!reason.contains("api"), "{reason}");
        }
        let sent = updates(None, &answer(&id("load"), &snap, &cfg, &t));
        assert!(matches!(
            sent[..],
            [ResolveUpdate {
                update: Some(Update::Denied(_))
            }]
        ));
    }
    // A service without a proxy has nothing to enforce a policy: anyone may reach it.
    let mut plain = ep(1, EndpointState::Ready);
    plain.meshed = false;
    reg.writer("a").upsert(api(vec![plain]));
    let t = Target::parse("api.demo", "x").unwrap();
    assert!(matches!(
        answer(&id("load"), &reg.snapshot(), &cfg, &t),
        Answer::Resolved { .. }
    ));
}

#[test]
fn changes_are_sent_as_deltas() {
    let reg = Registry::new();
    let w = reg.writer("a");
    let cfg = config(Vec::new());
    let t = Target::parse("api.demo", "x").unwrap();
    let me = id("web");
    w.upsert(api(vec![
        ep(1, EndpointState::Ready),
        ep(2, EndpointState::Ready),
    ]));
    let first = answer(&me, &reg.snapshot(), &cfg, &t);
    let sent = updates(None, &first);
    assert!(
        matches!(&sent[..], [ResolveUpdate { update: Some(Update::Resolved(r)) }] if r.endpoints.len() == 2)
    );
    // Nothing changed: nothing sent.
    assert!(updates(Some(&first), &first.clone()).is_empty());

    // Added, removed and changed, in one delta.
    w.upsert(api(vec![
        ep(2, EndpointState::Terminating),
        ep(3, EndpointState::Ready),
    ]));
    let second = answer(&me, &reg.snapshot(), &cfg, &t);
    let sent = updates(Some(&first), &second);
    let [
        ResolveUpdate {
            update: Some(Update::Changes(c)),
        },
    ] = &sent[..]
    else {
        panic!("{sent:?}");
    };
    assert_eq!(c.removed, ["127.0.0.1:1"]);
    let up: Vec<_> = c
        .upserted
        .iter()
        .map(|e| endpoint_from_wire(e).unwrap())
        .map(|e| (e.address.port(), e.state))
        .collect();
    assert_eq!(
        up,
        [(2, EndpointState::Terminating), (3, EndpointState::Ready)]
    );

    // A metadata change resends the whole state.
    let mut changed = api(vec![ep(3, EndpointState::Ready)]);
    changed.ports[0].protocol = Protocol::Grpc;
    w.upsert(changed);
    let third = answer(&me, &reg.snapshot(), &cfg, &t);
    assert!(matches!(
        &updates(Some(&second), &third)[..],
        [ResolveUpdate {
            update: Some(Update::Resolved(_))
        }]
    ));
    // A service that goes away is no longer in the mesh; one that comes back resolves again.
    w.remove(&ServiceName::new("demo", "api").unwrap());
    let gone = answer(&me, &reg.snapshot(), &cfg, &t);
    assert_eq!(gone, Answer::NotInMesh);
    assert!(matches!(
        &updates(Some(&third), &gone)[..],
        [ResolveUpdate {
            update: Some(Update::NotInMesh(_))
        }]
    ));
    w.upsert(api(vec![ep(4, EndpointState::Ready)]));
    let back = answer(&me, &reg.snapshot(), &cfg, &t);
    assert!(matches!(
        &updates(Some(&gone), &back)[..],
        [ResolveUpdate {
            update: Some(Update::Resolved(_))
        }]
    ));
}

#[test]
fn large_services_are_split_into_bounded_messages() {
    let reg = Registry::new();
    let n = 2 * ENDPOINTS_PER_MESSAGE + 10;
    let eps = (0..n)
        .map(|i| ep(10_000 + i as u16, EndpointState::Ready))
        .collect();
    reg.writer("a").upsert(api(eps));
    let cfg = config(Vec::new());
    let a = answer(
        &id("web"),
        &reg.snapshot(),
        &cfg,
        &Target::parse("api.demo", "x").unwrap(),
    );
    let sent = updates(None, &a);
    assert_eq!(sent.len(), 3);
    let mut total = 0;
    for (i, u) in sent.iter().enumerate() {
        let count = match &u.update {
            Some(Update::Resolved(r)) if i == 0 => r.endpoints.len(),
            Some(Update::Changes(c)) if i > 0 => c.upserted.len() + c.removed.len(),
            other => panic!("{other:?}"),
        };
        assert!(count <= ENDPOINTS_PER_MESSAGE);
        total += count;
    }
    assert_eq!(total, n);
}

#[test]
fn workloads_sharing_an_identity_keep_their_own_policies() {
    // Two workloads certified as the same account serve different services.
    let reg = Registry::new();
    let shared_id = id("default");
    let endpoint = |name: &str, port: u16| CoreEndpoint {
        address: ([127, 0, 0, 1], port).into(),
        identity: Some(shared_id.clone()),
        meshed: true,
        workload: Some(WorkloadKey {
            namespace: "demo".into(),
            name: name.into(),
        }),
        state: EndpointState::Ready,
    };
    let service = |name: &str, e| Service {
        name: ServiceName::new("demo", name).unwrap(),
        virtual_ips: Vec::new(),
        ports: vec![ServicePort {
            port: 80,
            name: None,
            protocol: Protocol::Auto,
            endpoints: vec![e],
        }],
    };
    let w = reg.writer("a");
    w.upsert(service("billing", endpoint("billing-1", 1)));
    w.upsert(service("catalog", endpoint("catalog-1", 2)));
    let cfg = config(vec![
        AuthorizationRule::allow(
            ServiceName::new("demo", "billing").unwrap(),
            vec!["demo/checkout".parse().unwrap()],
        ),
        AuthorizationRule::allow(
            ServiceName::new("demo", "catalog").unwrap(),
            vec!["demo/web".parse().unwrap()],
        ),
    ]);
    let bundle = weft_ca::TrustBundle::new(Vec::new());
    let sources = [Arc::from("a")];
    let settings = |name: &str| {
        let wl = WorkloadKey {
            namespace: "demo".into(),
            name: name.into(),
        };
        let s = proxy_settings(&shared_id, &wl, &sources, &reg.snapshot(), &cfg, &bundle).unwrap();
        assert_eq!(s.servers.len(), 1);
        weft_api::convert::policy_from_wire(s.servers[0].policy.as_ref().unwrap()).unwrap()
    };
    let billing = settings("billing-1");
    let catalog = settings("catalog-1");
    assert_eq!(
        billing.on_connection(Some(&id("checkout"))),
        Decision::Allow
    );
    assert_eq!(billing.on_connection(Some(&id("web"))), Decision::Deny);
    assert_eq!(catalog.on_connection(Some(&id("web"))), Decision::Allow);
    assert_eq!(catalog.on_connection(Some(&id("checkout"))), Decision::Deny);

    // A proxy claiming a workload certified as someone else is refused.
    let wl = WorkloadKey {
        namespace: "demo".into(),
        name: "billing-1".into(),
    };
    let err = proxy_settings(
        &id("intruder"),
        &wl,
        &sources,
        &reg.snapshot(),
        &cfg,
        &bundle,
    )
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

/// The settings of workload `demo/<name>` proving `id("api")`, read from `sources`, with the
/// policy of `port` and the default policy.
fn policies_of(
    reg: &Registry,
    cfg: &MeshConfig,
    sources: &[&str],
    name: &str,
    port: u16,
) -> (Option<Policy>, Policy) {
    let sources: Vec<Arc<str>> = sources.iter().map(|s| Arc::from(*s)).collect();
    let wl = WorkloadKey {
        namespace: "demo".into(),
        name: name.into(),
    };
    let s = proxy_settings(
        &id("api"),
        &wl,
        &sources,
        &reg.snapshot(),
        cfg,
        &weft_ca::TrustBundle::new(Vec::new()),
    )
    .unwrap();
    let server = s
        .servers
        .iter()
        .find(|p| p.port == u32::from(port))
        .map(|p| weft_api::convert::policy_from_wire(p.policy.as_ref().unwrap()).unwrap());
    let default = weft_api::convert::policy_from_wire(s.default_policy.as_ref().unwrap()).unwrap();
    (server, default)
}

fn only_web() -> MeshConfig {
    config(vec![AuthorizationRule::allow(
        ServiceName::new("demo", "api").unwrap(),
        vec!["demo/web".parse().unwrap()],
    )])
}

#[test]
fn a_workload_that_is_not_ready_keeps_its_rules_and_gets_no_traffic() {
    let reg = Registry::new();
    let cfg = only_web();
    reg.writer("a").upsert(api(vec![
        ep(1, EndpointState::Ready),
        ep(2, EndpointState::NotReady),
    ]));
    // The starting workload's port keeps the service's rule: the mesh default (allow any
    // authenticated identity) would let every workload in.
    let (server, default) = policies_of(&reg, &cfg, &["a"], "api-2", 2);
    let server = server.expect("the not-ready workload's port has its rule");
    assert_eq!(server.on_connection(Some(&id("web"))), Decision::Allow);
    assert_eq!(server.on_connection(Some(&id("intruder"))), Decision::Deny);
    // Its other ports get the mesh default: the workload is known.
    assert_eq!(
        default.on_connection(Some(&id("intruder"))),
        Decision::Allow
    );
    // Callers never hear of it: not by service, not by its own address.
    let a = answer(
        &id("web"),
        &reg.snapshot(),
        &cfg,
        &Target::parse("api.demo", "x").unwrap(),
    );
    assert_eq!(addrs(&a), [1]);
    let a = answer(
        &id("web"),
        &reg.snapshot(),
        &cfg,
        &Target::Address(([127, 0, 0, 1], 2).into()),
    );
    assert_eq!(addrs(&a), Vec::<u16>::new());
}

#[test]
fn a_workload_no_source_knows_denies_every_client() {
    let reg = Registry::new();
    let cfg = only_web();
    reg.writer("a")
        .upsert(api(vec![ep(1, EndpointState::Ready)]));
    // Unknown in the source asked about, or at all: every port denies, even to an identity
    // the mesh default would admit.
    for (sources, name) in [(&["b"][..], "api-1"), (&["a"][..], "api-9")] {
        let (server, default) = policies_of(&reg, &cfg, sources, name, 1);
        assert!(server.is_none());
        assert_eq!(default.on_connection(Some(&id("web"))), Decision::Deny);
        assert_eq!(default.on_connection(Some(&id("intruder"))), Decision::Deny);
        assert_eq!(default.on_connection(None), Decision::Deny);
    }
}

#[test]
fn a_workload_is_found_in_every_source_its_platform_names() {
    // A Nomad allocation whose service is registered in Consul: the proxy attests with Nomad,
    // and its servers come from both sources.
    let reg = Registry::new();
    let cfg = only_web();
    reg.writer("consul")
        .upsert(api(vec![ep(1, EndpointState::Ready)]));
    let (server, _) = policies_of(&reg, &cfg, &["nomad", "consul"], "api-1", 1);
    let server = server.expect("the Consul registration's rule");
    assert_eq!(server.on_connection(Some(&id("intruder"))), Decision::Deny);
    assert_eq!(server.on_connection(Some(&id("web"))), Decision::Allow);
}

/// A config whose routes split `api.demo` between `api` and `api-v2` by `v1`/`v2` weights.
fn routed(v1: u32, v2: u32) -> MeshConfig {
    let text = format!(
        "[mesh]\nname = \"t\"\ntrust_domain = \"weft.test\"\n[ca]\ndata_dir = \"/nonexistent\"\n\
         [[routes.http]]\nname = \"canary\"\nnamespace = \"demo\"\nparent_refs = [{{ name = \"api\" }}]\n\
         [[routes.http.rules]]\nbackend_refs = [{{ name = \"api\", weight = {v1} }}, {{ name = \"api-v2\", weight = {v2} }}]\n"
    );
    weft_core::config::Loader::new()
        .load_str(&text, std::path::Path::new("mesh.toml"))
        .unwrap()
}

/// Routes ride in the first answer; a weight change alone is a `policy` update to a proxy
/// that reads them, and a whole `resolved` to one that does not; a direct call to an endpoint
/// address gets no routes; a backend no platform knows is marked missing.
#[test]
fn routes_travel_apart_from_endpoints() {
    let reg = Registry::new();
    reg.writer("a")
        .upsert(api(vec![ep(1, EndpointState::Ready)]));
    let t = Target::parse("api.demo", "x").unwrap();
    let me = id("web");
    let first = answer(&me, &reg.snapshot(), &routed(90, 10), &t);
    let Answer::Resolved { policy, .. } = &first else {
        panic!("{first:?}");
    };
    assert_eq!(policy.http.len(), 1);
    let backends = &policy.http[0].rules[0].backends;
    assert_eq!((backends[0].weight, backends[0].missing), (90, false));
    assert!(backends[1].missing, "api-v2 is in no registry");

    let second = answer(&me, &reg.snapshot(), &routed(50, 50), &t);
    let sent = updates_for(Some(&first), &second, true);
    let [
        ResolveUpdate {
            update: Some(Update::Policy(p)),
        },
    ] = &sent[..]
    else {
        panic!("{sent:?}");
    };
    assert_eq!(p.http[0].rules[0].backends[1].weight, 50);
    assert!(matches!(
        &updates_for(Some(&first), &second, false)[..],
        [ResolveUpdate {
            update: Some(Update::Resolved(r))
        }] if r.policy.as_ref().is_some_and(|p| p.http[0].rules[0].backends[1].weight == 50)
    ));

    let direct = Target::Address(([127, 0, 0, 1], 1).into());
    let Answer::Resolved { policy, .. } = answer(&me, &reg.snapshot(), &routed(90, 10), &direct)
    else {
        panic!("not resolved");
    };
    assert!(
        policy.http.is_empty(),
        "routes bind to the service, not to an endpoint"
    );
}
