use serde_json::json;

use super::*;

fn td() -> TrustDomain {
    TrustDomain::new("weft.test").unwrap()
}

fn obj<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
    serde_json::from_value(v).unwrap()
}

fn service(ns: &str, name: &str, spec: serde_json::Value) -> Object {
    let s: core::Service = obj(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}));
    Object::from(&s)
}

fn slice(
    ns: &str,
    name: &str,
    svc: &str,
    ports: serde_json::Value,
    endpoints: serde_json::Value,
) -> Object {
    let s: discovery::EndpointSlice = obj(json!({
        "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
    }));
    Object::from(&s)
}

fn pod(ns: &str, name: &str, account: &str, meshed: bool) -> Object {
    let init = if meshed {
        json!([{"name": "weft-proxy", "image": "weft-proxy", "restartPolicy": "Always"}])
    } else {
        json!([])
    };
    let p: core::Pod = obj(json!({
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}")},
        "spec": {"serviceAccountName": account, "containers": [{"name": "app"}], "initContainers": init},
    }));
    Object::from(&p)
}

fn ep(ip: &str, pod: &str, conditions: serde_json::Value) -> serde_json::Value {
    json!({"addresses": [ip], "conditions": conditions, "targetRef": {"kind": "Pod", "name": pod}})
}

fn changes(c: &mut Cluster) -> BTreeMap<String, Option<Service>> {
    c.take_changes()
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect()
}

#[test]
fn named_target_ports_resolve_per_slice_and_slices_merge() {
    let mut c = Cluster::new(td(), Default::default());
    c.apply(service(
        "shop",
        "api",
        json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
               "ports": [{"name": "http", "port": 80, "targetPort": "web"},
                         {"name": "dns", "port": 53, "protocol": "UDP"}]}),
    ));
    c.apply(pod("shop", "api-a", "api-sa", true));
    c.apply(pod("shop", "api-b", "api-sa", false));
    // Two pods resolve the named port `web` to different numbers, so they sit in two slices.
    c.apply(slice(
        "shop",
        "api-1",
        "api",
        json!([{"name": "http", "port": 8080}]),
        json!([ep("10.0.0.1", "api-a", json!({"ready": true}))]),
    ));
    c.apply(slice(
        "shop",
        "api-2",
        "api",
        json!([{"name": "http", "port": 9090}]),
        json!([ep("10.0.0.2", "api-b", json!({"ready": true}))]),
    ));
    let all = changes(&mut c);
    let api = all["api.shop"].as_ref().unwrap();
    assert_eq!(
        api.virtual_ips,
        [
            "10.96.0.10".parse::<IpAddr>().unwrap(),
            "fd00::10".parse().unwrap()
        ]
    );
    assert_eq!(api.ports.len(), 1, "the UDP port is not a mesh port");
    let eps = &api.ports[0].endpoints;
    let addrs: Vec<String> = eps.iter().map(|e| e.address.to_string()).collect();
    assert_eq!(addrs, ["10.0.0.1:8080", "10.0.0.2:9090"]);
    assert!(eps[0].meshed);
    assert_eq!(
        eps[0].identity.as_ref().unwrap().spiffe_id(),
        "spiffe://weft.test/ns/shop/sa/api-sa"
    );
    assert_eq!(eps[0].workload.as_ref().unwrap().name, "api-a");
    assert!(
        !eps[1].meshed,
        "a pod without the proxy is reached in plaintext"
    );
    assert!(!c.is_dirty());
}

#[test]
fn endpoint_conditions_map_to_states() {
    let mut c = Cluster::new(td(), Default::default());
    c.apply(service("ns", "s", json!({"ports": [{"port": 80}]})));
    for p in ["a", "b", "c", "d", "e"] {
        c.apply(pod("ns", p, "sa", true));
    }
    c.apply(slice(
        "ns",
        "s-1",
        "s",
        json!([{"port": 8080}]),
        json!([
            ep(
                "10.0.0.1",
                "a",
                json!({"ready": true, "serving": true, "terminating": false})
            ),
            ep(
                "10.0.0.2",
                "b",
                json!({"ready": false, "serving": true, "terminating": true})
            ),
            ep(
                "10.0.0.3",
                "c",
                json!({"ready": false, "serving": false, "terminating": true})
            ),
            ep(
                "10.0.0.4",
                "d",
                json!({"ready": false, "serving": false, "terminating": false})
            ),
            // Conditions left out mean ready.
            ep("10.0.0.5", "e", json!({})),
        ]),
    ));
    let s = changes(&mut c).remove("s.ns").unwrap().unwrap();
    let states: Vec<(String, EndpointState)> = s.ports[0]
        .endpoints
        .iter()
        .map(|e| (e.address.ip().to_string(), e.state))
        .collect();
    assert_eq!(
        states,
        [
            ("10.0.0.1".into(), EndpointState::Ready),
            ("10.0.0.2".into(), EndpointState::Serving),
            ("10.0.0.3".into(), EndpointState::Terminating),
            // Not ready: kept (its pod keeps the Service's inbound rules), never sent to
            // callers.
            ("10.0.0.4".into(), EndpointState::NotReady),
            ("10.0.0.5".into(), EndpointState::Ready),
        ]
    );
}

#[test]
fn an_endpoint_waits_for_its_pod_and_a_pod_change_touches_only_its_services() {
    let mut c = Cluster::new(td(), Default::default());
    c.apply(service("ns", "s", json!({"ports": [{"port": 80}]})));
    c.apply(service("ns", "other", json!({"ports": [{"port": 80}]})));
    c.apply(slice(
        "ns",
        "s-1",
        "s",
        json!([{"port": 8080}]),
        json!([
            ep("10.0.0.1", "late", json!({"ready": true})),
            // No target: a VM or a manually managed slice, reached in plaintext.
            {"addresses": ["192.168.1.9"], "conditions": {"ready": true}},
        ]),
    ));
    let s = changes(&mut c).remove("s.ns").unwrap().unwrap();
    let addrs: Vec<String> = s.ports[0]
        .endpoints
        .iter()
        .map(|e| e.address.to_string())
        .collect();
    assert_eq!(addrs, ["192.168.1.9:8080"], "the pod is not known yet");
    assert!(!s.ports[0].endpoints[0].meshed);
    c.apply(pod("ns", "late", "sa", true));
    let touched = changes(&mut c);
    assert_eq!(touched.keys().collect::<Vec<_>>(), ["s.ns"]);
    assert_eq!(
        touched["s.ns"].as_ref().unwrap().ports[0].endpoints.len(),
        2
    );
    // The same pod again changes nothing.
    c.apply(pod("ns", "late", "sa", true));
    assert!(!c.is_dirty());
    c.delete(Kind::Pod, &("ns".into(), "late".into()));
    assert_eq!(
        changes(&mut c)["s.ns"].as_ref().unwrap().ports[0]
            .endpoints
            .len(),
        1
    );
}

#[test]
fn headless_and_external_name_services() {
    let mut c = Cluster::new(td(), Default::default());
    c.apply(service(
        "ns",
        "db",
        json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432, "appProtocol": "postgresql"}]}),
    ));
    c.apply(service(
        "ns",
        "ext",
        json!({"type": "ExternalName", "externalName": "example.com"}),
    ));
    c.apply(pod("ns", "db-0", "db", true));
    c.apply(slice(
        "ns",
        "db-x",
        "db",
        json!([{"name": "pg", "port": 5432}]),
        json!([ep("10.0.0.7", "db-0", json!({"ready": true}))]),
    ));
    let all = changes(&mut c);
    let db = all["db.ns"].as_ref().unwrap();
    assert!(db.virtual_ips.is_empty());
    assert_eq!(db.ports[0].protocol, Protocol::Opaque);
    assert_eq!(
        db.ports[0].endpoints[0].address.to_string(),
        "10.0.0.7:5432"
    );
    assert!(
        all["ext.ns"].is_none(),
        "ExternalName is not a mesh service"
    );
}

#[test]
fn protocols_from_app_protocol_port_names_and_the_opaque_annotation() {
    assert_eq!(
        protocol_of(Some("kubernetes.io/h2c"), None),
        Protocol::Http2
    );
    assert_eq!(protocol_of(Some("grpc"), Some("http")), Protocol::Grpc);
    assert_eq!(protocol_of(None, Some("grpc-api")), Protocol::Grpc);
    assert_eq!(protocol_of(None, Some("http")), Protocol::Http1);
    assert_eq!(protocol_of(None, Some("mysql")), Protocol::Opaque);
    assert_eq!(protocol_of(None, Some("web")), Protocol::Auto);
    assert_eq!(
        protocol_of(Some("example.com/custom"), None),
        Protocol::Auto
    );
    let s: core::Service = obj(json!({
        "metadata": {"namespace": "ns", "name": "s", "annotations": {"weft.dev/opaque-ports": "6379, admin"}},
        "spec": {"ports": [{"name": "redis", "port": 6379, "appProtocol": "http"},
                           {"name": "admin", "port": 9000},
                           {"name": "web", "port": 80}]},
    }));
    let Object::Service(_, info) = Object::from(&s) else {
        panic!("not a service")
    };
    let protocols: Vec<Protocol> = info.ports.iter().map(|p| p.protocol).collect();
    assert_eq!(
        protocols,
        [Protocol::Opaque, Protocol::Opaque, Protocol::Auto]
    );
}

#[test]
fn a_relist_replaces_only_its_scope_and_touches_only_what_changed() {
    let mut c = Cluster::new(td(), Default::default());
    for ns in ["a", "b"] {
        c.apply(service(ns, "s", json!({"ports": [{"port": 80}]})));
        c.apply(service(ns, "t", json!({"ports": [{"port": 80}]})));
    }
    c.take_changes();
    // A relist of namespace a that lost `t` and kept `s` as it was.
    c.replace(
        Kind::Service,
        &Scope::Namespace("a".into()),
        vec![service("a", "s", json!({"ports": [{"port": 80}]}))],
    );
    let touched = changes(&mut c);
    assert_eq!(touched.len(), 1);
    assert!(touched["t.a"].is_none());
    // Namespace b was outside the relist's scope.
    c.replace(Kind::Service, &Scope::All, vec![]);
    let gone: Vec<String> = changes(&mut c).into_keys().collect();
    assert_eq!(gone, ["s.a", "s.b", "t.b"]);
}

#[test]
fn host_network_pods_and_the_default_account() {
    let p: core::Pod = obj(json!({
        "metadata": {"namespace": "ns", "name": "p"},
        "spec": {"hostNetwork": true, "containers": [{"name": "weft-proxy"}]},
    }));
    let Object::Pod(_, info) = Object::from(&p) else {
        panic!("not a pod")
    };
    assert!(!info.meshed);
    assert_eq!(info.account, "default");
}

#[test]
fn a_pod_that_declares_its_port_opaque_makes_the_service_port_opaque() {
    let mut c = Cluster::new(td(), Default::default());
    c.apply(service(
        "ns",
        "db",
        json!({"ports": [{"name": "sql", "port": 3306, "targetPort": "mysql"}]}),
    ));
    let p: core::Pod = obj(json!({
        "metadata": {"namespace": "ns", "name": "db-0", "annotations": {"weft.dev/opaque-ports": "mysql, 9999"}},
        "spec": {"containers": [{"name": "db", "ports": [{"name": "mysql", "containerPort": 3306}]}]},
    }));
    let Object::Pod(_, info) = Object::from(&p) else {
        panic!("not a pod")
    };
    assert_eq!(info.opaque_ports, BTreeSet::from([3306, 9999]));
    c.apply(Object::from(&p));
    c.apply(slice(
        "ns",
        "db-1",
        "db",
        json!([{"name": "sql", "port": 3306}]),
        json!([ep("10.0.0.9", "db-0", json!({"ready": true}))]),
    ));
    let db = changes(&mut c).remove("db.ns").unwrap().unwrap();
    assert_eq!(db.ports[0].protocol, Protocol::Opaque);
}
