//! Weft's policy CRDs on Kubernetes (`weft.dev/v1alpha1`), against the fake API server:
//! `AuthorizationPolicy` and `RateLimitPolicy` objects reach the registry as the mesh file's
//! entries would, each gets an `Accepted` condition (written once, not again while nothing
//! changes), an invalid edit is refused in the status while the last good version stays in
//! force, a second rate limit of one Service is reported as conflicting, and CRDs installed
//! after the start are picked up.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use serde_json::{Value, json};
use weft_core::ServiceName;
use weft_core::policy::authz::Action;
use weft_kubernetes::{KubernetesPlatform, KubernetesSettings};
use weft_tests::fake_kube::FakeKube;
use weft_tests::kube_objects::{self as k8s, SvcPort};

type Running = weft_tests::RunningPlatform<KubernetesPlatform>;

async fn running(fake: &FakeKube) -> Running {
    let dir = tempfile::tempdir().unwrap();
    Running::start(weft_tests::kube_platform(fake, dir.path(), KubernetesSettings::default()).await)
}

fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "weft.dev/v1alpha1",
        "kind": kind,
        "metadata": {"namespace": "shop", "name": name},
        "spec": spec,
    })
}

/// The `Accepted` condition of `obj`, if written.
fn accepted(obj: &Value) -> Option<Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")
        .cloned()
}

fn rule_names(s: &weft_core::RegistrySnapshot) -> Vec<String> {
    s.policies()
        .iter()
        .flat_map(|p| p.authorizations.iter())
        .map(|r| r.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_objects_reach_the_registry_and_say_in_their_status_what_the_mesh_made_of_them() {
    let fake = FakeKube::start().await;
    fake.apply(k8s::service(
        "shop",
        "api",
        None,
        &[SvcPort::new("http", 80)],
    ));
    fake.apply(object(
        "AuthorizationPolicy",
        "no-admin",
        json!({"service": "api", "action": "deny", "mode": "audit",
               "to": [{"path": {"type": "PathPrefix", "value": "/admin"}, "method": "POST"}]}),
    ));
    fake.apply(object(
        "RateLimitPolicy",
        "api-limit",
        json!({"service": "api", "requestsPerSecond": 10, "burst": 20, "perIdentity": true,
               "overrides": [{"clients": "jobs/*", "requestsPerSecond": 1}]}),
    ));
    fake.apply(object(
        "BackendPolicy",
        "api-backend",
        json!({"service": "api", "retryBudget": {"percent": 5},
               "failureAccrual": {"consecutiveFailures": 0}, "limits": {"maxInFlight": 64}}),
    ));
    let run = running(&fake).await;
    run.until("the three policies", |s| {
        let p = s.policies();
        rule_names(s) == ["shop/no-admin"]
            && p.iter().map(|p| p.rate_limits.len()).sum::<usize>() == 1
            && p.iter().map(|p| p.backends.len()).sum::<usize>() == 1
    })
    .await;
    let snap = run.registry.snapshot();
    let policies = snap.policies();
    let rule = &policies[0].authorizations[0];
    assert_eq!(rule.service, ServiceName::new("shop", "api").unwrap());
    assert_eq!((rule.action, rule.audit), (Action::Deny, true));
    assert_eq!(rule.source.to_string(), "AuthorizationPolicy shop/no-admin");
    let limit = &policies[0].rate_limits[0].limit;
    assert_eq!(
        (limit.rate.per_second, limit.rate.burst, limit.per_identity),
        (10.0, 20, true)
    );
    assert_eq!(limit.overrides.len(), 1);
    let backend = &policies[0].backends[0].policy;
    assert_eq!(backend.retry_budget.percent, 5);
    assert_eq!(backend.failure_accrual.consecutive_failures, 0);
    assert_eq!(backend.limit.map(|l| l.max_in_flight), Some(64));

    for (kind, name) in [
        ("AuthorizationPolicy", "no-admin"),
        ("RateLimitPolicy", "api-limit"),
        ("BackendPolicy", "api-backend"),
    ] {
        let obj = fake
            .wait_object(kind, "shop", name, "accepted", |o| {
                accepted(o).is_some_and(|c| c["status"] == "True")
            })
            .await;
        let c = accepted(&obj).unwrap();
        assert_eq!(c["observedGeneration"], obj["metadata"]["generation"]);
        assert!(c["lastTransitionTime"].is_string(), "{c}");
    }

    // Unrelated changes do not rewrite an unchanged status.
    let patches = fake.status_patches();
    fake.apply(k8s::service(
        "shop",
        "db",
        None,
        &[SvcPort::new("http", 80)],
    ));
    run.until("db", |s| {
        s.service(&ServiceName::new("shop", "db").unwrap())
            .is_some()
    })
    .await;
    assert_eq!(fake.status_patches(), patches);

    // An invalid edit: refused in the status, naming the key; the last good rule stays.
    fake.apply(object(
        "AuthorizationPolicy",
        "no-admin",
        json!({"service": "api", "action": "deny",
               "to": [{"path": {"type": "RegularExpression", "value": "(("}}]}),
    ));
    let obj = fake
        .wait_object("AuthorizationPolicy", "shop", "no-admin", "refused", |o| {
            accepted(o).is_some_and(|c| c["status"] == "False")
        })
        .await;
    let c = accepted(&obj).unwrap();
    assert_eq!(c["reason"], "Invalid");
    assert!(
        c["message"].as_str().unwrap().contains("to[0].path.value"),
        "{c}"
    );
    assert_eq!(c["observedGeneration"], obj["metadata"]["generation"]);
    let snap = run.registry.snapshot();
    assert!(
        snap.policies()[0].authorizations[0].audit,
        "the last good version stays"
    );

    // A second rate limit of the same Service: the older one stays, the newer is reported.
    fake.apply(object(
        "RateLimitPolicy",
        "api-limit-2",
        json!({"service": "api.shop", "requestsPerSecond": 99}),
    ));
    let obj = fake
        .wait_object(
            "RateLimitPolicy",
            "shop",
            "api-limit-2",
            "conflicted",
            |o| accepted(o).is_some_and(|c| c["reason"] == "Conflicted"),
        )
        .await;
    assert!(
        accepted(&obj).unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("shop/api-limit"),
        "{obj}"
    );
    let snap = run.registry.snapshot();
    assert_eq!(
        snap.policies()[0].rate_limits[0].limit.rate.per_second,
        10.0
    );

    // Likewise a second backend policy of the same Service.
    fake.apply(object(
        "BackendPolicy",
        "api-backend-2",
        json!({"service": "api"}),
    ));
    fake.wait_object(
        "BackendPolicy",
        "shop",
        "api-backend-2",
        "conflicted",
        |o| accepted(o).is_some_and(|c| c["reason"] == "Conflicted"),
    )
    .await;

    // Deleted: gone from the registry.
    fake.delete("AuthorizationPolicy", Some("shop"), "no-admin");
    run.until("no rule", |s| rule_names(s).is_empty()).await;
}

/// Without Weft's CRDs the adapter syncs and watches none of their kinds; installed later,
/// they are picked up without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_crds_installed_later_are_picked_up() {
    let fake = FakeKube::start().await;
    fake.set_weft_crds(false);
    fake.apply(k8s::service(
        "shop",
        "api",
        None,
        &[SvcPort::new("http", 80)],
    ));
    let run = running(&fake).await;
    run.until("api", |s| {
        s.service(&ServiceName::new("shop", "api").unwrap())
            .is_some()
    })
    .await;
    assert!(run.registry.snapshot().policies().is_empty());
    assert!(
        fake.requests()
            .iter()
            .all(|r| !r.path.contains("authorizationpolicies")),
        "policies were watched without the CRDs"
    );
    fake.set_weft_crds(true);
    fake.apply(object(
        "AuthorizationPolicy",
        "open",
        json!({"service": "api", "from": ["*"]}),
    ));
    run.until("the rule, once the CRDs are there", |s| {
        rule_names(s) == ["shop/open"]
    })
    .await;
}

/// A RoutePolicy adds to a Gateway API route the rule keys HTTPRoute lacks (a fault and a
/// concurrency limit, on one rule by name), and says in its status whether it found the
/// route and rule; an invalid one says which key is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_policy_adds_faults_and_limits_to_a_route_rule() {
    let fake = FakeKube::start().await;
    fake.apply(k8s::service(
        "shop",
        "web",
        None,
        &[SvcPort::new("http", 80)],
    ));
    fake.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"namespace": "shop", "name": "web"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
            "rules": [
                {"name": "slow", "matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}],
                 "timeouts": {"request": "5s"}},
                {"name": "rest"},
            ],
        },
    }));
    fake.apply(object(
        "RoutePolicy",
        "chaos",
        json!({"targetRef": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                             "name": "web", "sectionName": "slow"},
               "fault": {"abort": {"httpStatus": 503, "percent": 10}, "sources": ["shop/*"]},
               "limits": {"maxInFlight": 8}}),
    ));
    fake.apply(object(
        "RoutePolicy",
        "lost",
        json!({"targetRef": {"kind": "HTTPRoute", "name": "web", "sectionName": "gone"},
               "limits": {"maxInFlight": 1}}),
    ));
    fake.apply(object(
        "RoutePolicy",
        "broken",
        json!({"targetRef": {"kind": "HTTPRoute", "name": "web"},
               "fault": {"abort": {"httpStatus": 200}}}),
    ));
    let run = running(&fake).await;
    let rules = |s: &weft_core::RegistrySnapshot| {
        s.routes()
            .iter()
            .flat_map(|r| r.http.iter())
            .find(|b| b.route.meta.name == "shop/web")
            .map(|b| b.route.rules.clone())
    };
    run.until("the fault on the slow rule", |s| {
        rules(s).is_some_and(|r| r[0].fault.is_some())
    })
    .await;
    let r = rules(&run.registry.snapshot()).unwrap();
    assert_eq!(r[0].limit.map(|l| l.max_in_flight), Some(8));
    assert_eq!(
        r[0].timeouts.request,
        Some(std::time::Duration::from_secs(5)),
        "the route's own timeout stays"
    );
    assert!(r[1].fault.is_none() && r[1].limit.is_none(), "another rule");

    let reason = |name: &'static str, want: &'static str| {
        let fake = &fake;
        async move {
            let obj = fake
                .wait_object("RoutePolicy", "shop", name, want, |o| {
                    accepted(o).is_some_and(|c| c["reason"] == want)
                })
                .await;
            accepted(&obj).unwrap()["message"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    reason("chaos", "Accepted").await;
    assert!(
        reason("lost", "TargetNotFound")
            .await
            .contains("no rule named gone")
    );
    assert!(
        reason("broken", "Invalid")
            .await
            .contains("fault.abort.http_status")
    );

    // The route gone: the policy says so.
    fake.delete("HTTPRoute", Some("shop"), "web");
    reason("chaos", "TargetNotFound").await;
}
