//! Gateway API routes on Kubernetes (the GAMMA mesh profile), against the fake API server:
//! `HTTPRoute` and `GRPCRoute` objects bound to Services reach the registry in the mesh's
//! route model, each gets its `status.parents` conditions (written once, not again while
//! nothing changes), an invalid edit is refused in the status while the last good version
//! stays in force, a missing backend is reported, and a cluster without the Gateway API CRDs
//! still syncs.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::IpAddr;

use serde_json::{Value, json};
use weft_core::ServiceName;
use weft_kubernetes::{KubernetesPlatform, KubernetesSettings};
use weft_tests::fake_kube::FakeKube;
use weft_tests::kube_objects::{self as k8s, Condition, SliceEndpoint, SvcPort};

type Running = weft_tests::RunningPlatform<KubernetesPlatform>;

async fn running(fake: &FakeKube) -> Running {
    let dir = tempfile::tempdir().unwrap();
    Running::start(weft_tests::kube_platform(fake, dir.path(), KubernetesSettings::default()).await)
}

/// A Service `name` in `shop` on port 80 with one ready, meshed pod at `ip`.
fn add_service(fake: &FakeKube, name: &str, ip: IpAddr) {
    let pod = format!("{name}-0");
    fake.apply(k8s::pod("shop", &pod, name, true, ip));
    fake.apply(k8s::service(
        "shop",
        name,
        None,
        &[SvcPort::new("http", 80)],
    ));
    fake.apply(k8s::slice(
        "shop",
        &format!("{name}-abc"),
        name,
        &[("http", 80)],
        &[SliceEndpoint {
            pod: Some(pod),
            ip,
            condition: Condition::Ready,
        }],
    ));
}

fn http_route(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"namespace": "shop", "name": name},
        "spec": spec,
    })
}

fn canary(v2: &str, weight: u32) -> Value {
    json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
        "rules": [{"backendRefs": [
            {"name": "web", "port": 80, "weight": 100 - weight},
            {"name": v2, "port": 80, "weight": weight},
        ], "timeouts": {"request": "10s", "backendRequest": "2s"}}],
    })
}

/// The condition `kind` of the first parent in `obj`'s status, if written.
fn condition(obj: &Value, kind: &str) -> Option<Value> {
    obj["status"]["parents"][0]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

fn weights(s: &weft_core::RegistrySnapshot, route: &str) -> Option<Vec<u32>> {
    s.routes()
        .iter()
        .flat_map(|r| r.http.iter())
        .find(|b| b.route.meta.name == route)
        .map(|b| b.route.rules[0].backends.iter().map(|b| b.weight).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_reach_the_registry_and_say_in_their_status_what_the_mesh_made_of_them() {
    let fake = FakeKube::start().await;
    add_service(&fake, "web", "10.1.0.1".parse().unwrap());
    add_service(&fake, "web-v2", "10.1.0.2".parse().unwrap());
    fake.apply(http_route("canary", canary("web-v2", 10)));
    // Bound to a Gateway only: another controller's route.
    fake.apply(http_route(
        "ingress",
        json!({"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
    ));
    fake.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"namespace": "shop", "name": "users"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
            "rules": [{"matches": [{"method": {"service": "pkg.Users", "method": "Get"}}],
                       "backendRefs": [{"name": "web-v2", "port": 80}]}],
        },
    }));
    let run = running(&fake).await;
    run.until("the canary in the registry", |s| {
        weights(s, "shop/canary") == Some(vec![90, 10])
    })
    .await;
    let snap = run.registry.snapshot();
    let routes = snap.routes();
    let all_http: Vec<_> = routes.iter().flat_map(|r| r.http.iter()).collect();
    assert_eq!(all_http.len(), 1, "the Gateway's route is not the mesh's");
    // Gateway API timeouts, read by the same types as the mesh file's.
    let timeouts = all_http[0].route.rules[0].timeouts;
    assert_eq!(timeouts.request, Some(std::time::Duration::from_secs(10)));
    assert_eq!(
        timeouts.backend_request,
        Some(std::time::Duration::from_secs(2))
    );
    assert_eq!(
        all_http[0].parents[0].service,
        ServiceName::new("shop", "web").unwrap()
    );
    assert_eq!(routes.iter().flat_map(|r| r.grpc.iter()).count(), 1);

    let obj = fake
        .wait_object("HTTPRoute", "shop", "canary", "accepted", |o| {
            condition(o, "Accepted").is_some_and(|c| c["status"] == "True")
        })
        .await;
    let parent = &obj["status"]["parents"][0];
    assert_eq!(parent["controllerName"], "weft.dev/mesh");
    assert_eq!(parent["parentRef"]["name"], "web");
    let resolved = condition(&obj, "ResolvedRefs").unwrap();
    assert_eq!(
        (resolved["status"].as_str(), resolved["reason"].as_str()),
        (Some("True"), Some("ResolvedRefs"))
    );
    assert!(condition(&obj, "Accepted").unwrap()["lastTransitionTime"].is_string());
    assert!(fake.get("HTTPRoute", Some("shop"), "ingress").unwrap()["status"].is_null());
    fake.wait_object("GRPCRoute", "shop", "users", "accepted", |o| {
        condition(o, "Accepted").is_some_and(|c| c["status"] == "True")
    })
    .await;

    // Unrelated changes do not rewrite an unchanged status.
    let patches = fake.status_patches();
    add_service(&fake, "db", "10.1.0.3".parse().unwrap());
    run.until("db", |s| {
        s.service(&ServiceName::new("shop", "db").unwrap())
            .is_some()
    })
    .await;
    assert_eq!(fake.status_patches(), patches);

    // An invalid edit: refused in the status, naming the key; the last good weights stay.
    let mut bad = canary("web-v2", 50);
    bad["rules"][0]["matches"] = json!([{"path": {"type": "RegularExpression", "value": "(("}}]);
    fake.apply(http_route("canary", bad));
    let obj = fake
        .wait_object("HTTPRoute", "shop", "canary", "refused", |o| {
            condition(o, "Accepted").is_some_and(|c| c["status"] == "False")
        })
        .await;
    let accepted = condition(&obj, "Accepted").unwrap();
    assert_eq!(accepted["reason"], "UnsupportedValue");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .contains("rules[0].matches[0].path.value"),
        "{accepted}"
    );
    assert_eq!(
        accepted["observedGeneration"],
        obj["metadata"]["generation"]
    );
    assert_eq!(
        weights(&run.registry.snapshot(), "shop/canary"),
        Some(vec![90, 10])
    );

    // A backend that does not exist: accepted, its refs not resolved.
    fake.apply(http_route("canary", canary("ghost", 20)));
    let obj = fake
        .wait_object("HTTPRoute", "shop", "canary", "backend not found", |o| {
            condition(o, "ResolvedRefs").is_some_and(|c| c["reason"] == "BackendNotFound")
        })
        .await;
    assert_eq!(condition(&obj, "Accepted").unwrap()["status"], "True");
    run.until("the new weights", |s| {
        weights(s, "shop/canary") == Some(vec![80, 20])
    })
    .await;

    // Deleted: gone from the registry.
    fake.delete("HTTPRoute", Some("shop"), "canary");
    run.until("no HTTP route", |s| {
        s.routes().iter().all(|r| r.http.is_empty())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_gateway_api_the_adapter_syncs_and_serves_no_routes() {
    let fake = FakeKube::start().await;
    fake.set_gateway_api(false);
    add_service(&fake, "web", "10.1.0.1".parse().unwrap());
    let run = running(&fake).await;
    run.until("web", |s| {
        s.service(&ServiceName::new("shop", "web").unwrap())
            .is_some()
    })
    .await;
    assert!(run.registry.snapshot().routes().is_empty());
    assert!(
        fake.requests()
            .iter()
            .all(|r| !r.path.contains("httproutes")),
        "routes were watched without the CRDs"
    );
}

/// A route bound to a Service and to a Gateway: the mesh writes its own status entry and
/// keeps the Gateway controller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_controllers_status_entries_are_kept() {
    let fake = FakeKube::start().await;
    add_service(&fake, "web", "10.1.0.1".parse().unwrap());
    let gateway_entry = json!({
        "parentRef": {"name": "gw"},
        "controllerName": "example.net/gateway",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    });
    let mut route = http_route("both", {
        let mut spec = canary("web", 0);
        spec["parentRefs"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "gw"}));
        spec
    });
    route["status"] = json!({"parents": [gateway_entry.clone()]});
    fake.apply(route);
    let _run = running(&fake).await;
    let obj = fake
        .wait_object("HTTPRoute", "shop", "both", "the mesh's entry", |o| {
            o["status"]["parents"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["controllerName"] == "weft.dev/mesh"))
        })
        .await;
    let parents = obj["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2, "{obj}");
    assert!(parents.contains(&gateway_entry), "{obj}");
}

/// Gateway API CRDs installed after the control plane started are picked up without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_installed_later_are_picked_up() {
    let fake = FakeKube::start().await;
    fake.set_gateway_api(false);
    add_service(&fake, "web", "10.1.0.1".parse().unwrap());
    add_service(&fake, "web-v2", "10.1.0.2".parse().unwrap());
    let run = running(&fake).await;
    run.until("web", |s| {
        s.service(&ServiceName::new("shop", "web").unwrap())
            .is_some()
    })
    .await;
    fake.set_gateway_api(true);
    fake.apply(http_route("canary", canary("web-v2", 10)));
    run.until("the canary, once the CRDs are there", |s| {
        weights(s, "shop/canary") == Some(vec![90, 10])
    })
    .await;
}
