//! The fake Consul API against reqwest, the HTTP client of the Consul adapter: the catalog's
//! service list, the health of a service's instances with the `passing` filter, namespaces,
//! blocking queries, cut connections, restarts, the index going back, ACL tokens and injected
//! failures.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};
use weft_tests::fake_consul::{CheckStatus, ConsulService, FakeConsul, SERVER_NODE};

/// How long any one wait may take.
const WAIT: Duration = Duration::from_secs(10);

/// Sends `req`: the status, `X-Consul-Index` (0 if absent), the headers and the body.
async fn send(
    req: reqwest::RequestBuilder,
) -> (StatusCode, u64, reqwest::header::HeaderMap, String) {
    let rsp = timeout(WAIT, req.send())
        .await
        .expect("answered in time")
        .unwrap();
    let status = rsp.status();
    let index = header_index(&rsp);
    let headers = rsp.headers().clone();
    (status, index, headers, rsp.text().await.unwrap())
}

fn header_index(rsp: &reqwest::Response) -> u64 {
    rsp.headers()
        .get("X-Consul-Index")
        .map(|v| v.to_str().unwrap().parse().unwrap())
        .unwrap_or(0)
}

async fn get_json(c: &reqwest::Client, fake: &FakeConsul, path_and_query: &str) -> (u64, Value) {
    let (status, index, _, body) = send(c.get(format!("{}{path_and_query}", fake.url()))).await;
    assert_eq!(status, StatusCode::OK, "{path_and_query}: {body}");
    (index, serde_json::from_str(&body).unwrap())
}

/// The service IDs of health entries.
fn ids(entries: &Value) -> Vec<&str> {
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Service"]["ID"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn catalog_lists_services_with_their_tags() {
    let fake = FakeConsul::start().await;
    let c = reqwest::Client::new();
    let (index, services) = get_json(&c, &fake, "/v1/catalog/services").await;
    assert_eq!(
        services,
        json!({ "consul": [] }),
        "the server's own service"
    );
    assert_eq!(index, 2);

    fake.register(ConsulService::new("node-a", "10.0.0.1", "web", "", 80).tags(&["v1", "primary"]));
    fake.register(
        ConsulService::new("node-b", "10.0.0.2", "web", "10.0.1.2", 80)
            .id("web-2")
            .tags(&["v1", "canary"]),
    );
    let last = fake.register(ConsulService::new("node-b", "10.0.0.2", "api", "", 9000));
    let rsp = c
        .get(format!("{}/v1/catalog/services", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.headers()["X-Consul-KnownLeader"], "true");
    assert_eq!(rsp.headers()["X-Consul-LastContact"], "0");
    assert_eq!(rsp.headers()["content-type"], "application/json");
    assert_eq!(header_index(&rsp), last);
    assert_eq!(
        rsp.json::<Value>().await.unwrap(),
        json!({ "api": [], "consul": [], "web": ["canary", "primary", "v1"] })
    );

    assert!(fake.deregister("node-b", "api"));
    assert!(!fake.deregister("node-b", "api"));
    let (index, services) = get_json(&c, &fake, "/v1/catalog/services").await;
    assert_eq!(index, last + 1);
    assert!(services.get("api").is_none());
    assert!(fake.deregister_node("node-b"));
    let (_, services) = get_json(&c, &fake, "/v1/catalog/services").await;
    assert_eq!(services["web"], json!(["primary", "v1"]));

    let (status, _, _, body) = send(c.get(format!("{}/v1/catalog/nodes", fake.url()))).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "404 page not found")
    );
    let (status, ..) = send(c.put(format!("{}/v1/catalog/services", fake.url()))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, _, body) = send(c.get(format!(
        "{}/v1/catalog/services?index=2&wait=soon",
        fake.url()
    )))
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, "Invalid wait time")
    );
}

#[tokio::test]
async fn health_lists_instances_and_filters_passing_ones() {
    let fake = FakeConsul::start().await;
    let c = reqwest::Client::new();
    fake.register(
        ConsulService::new("node-a", "10.0.0.1", "web", "", 80)
            .id("web-1")
            .tags(&["v1"])
            .check("service:web-1", CheckStatus::Passing),
    );
    fake.register(
        ConsulService::new("node-b", "10.0.0.2", "web", "10.0.1.2", 80)
            .id("web-2")
            .check("service:web-2", CheckStatus::Critical),
    );
    let last = fake.register(
        ConsulService::new("node-c", "10.0.0.3", "web", "", 8080)
            .id("web-3")
            .tags(&["v1"])
            .check("service:web-3", CheckStatus::Warning),
    );

    let (index, all) = get_json(&c, &fake, "/v1/health/service/web").await;
    assert_eq!(index, last);
    assert_eq!(ids(&all), ["web-1", "web-2", "web-3"]);
    let first = &all[0];
    assert_eq!(first["Node"]["Node"], "node-a");
    assert_eq!(first["Node"]["Address"], "10.0.0.1");
    assert_eq!(first["Node"]["Datacenter"], "dc1");
    assert_eq!(first["Node"]["TaggedAddresses"]["lan"], "10.0.0.1");
    assert_eq!(first["Service"]["Service"], "web");
    assert_eq!(first["Service"]["Address"], "", "empty: the node's address");
    assert_eq!(first["Service"]["Port"], 80);
    assert_eq!(first["Service"]["Tags"], json!(["v1"]));
    assert!(
        first["Service"].get("Namespace").is_none(),
        "as Consul CE writes it"
    );
    let checks: Vec<(&str, &str, &str)> = first["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["CheckID"].as_str().unwrap(),
                c["Status"].as_str().unwrap(),
                c["ServiceID"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        checks,
        [
            ("serfHealth", "passing", ""),
            ("service:web-1", "passing", "web-1")
        ]
    );
    assert_eq!(all[1]["Service"]["Address"], "10.0.1.2");

    // `passing` (with or without a value) keeps instances whose checks all pass; a warning
    // does not pass.
    for q in ["passing", "passing=1", "passing=true"] {
        let (_, passing) = get_json(&c, &fake, &format!("/v1/health/service/web?{q}")).await;
        assert_eq!(ids(&passing), ["web-1"], "{q}");
    }
    let (_, all) = get_json(&c, &fake, "/v1/health/service/web?passing=false").await;
    assert_eq!(ids(&all).len(), 3);
    let (_, tagged) = get_json(&c, &fake, "/v1/health/service/web?tag=v1").await;
    assert_eq!(ids(&tagged), ["web-1", "web-3"]);

    assert!(fake.set_check("node-b", "service:web-2", CheckStatus::Passing));
    assert!(
        !fake.set_check("node-a", "service:web-2", CheckStatus::Passing),
        "not on node-a"
    );
    let (_, passing) = get_json(&c, &fake, "/v1/health/service/web?passing").await;
    assert_eq!(ids(&passing), ["web-1", "web-2"]);
    // A node that fails fails its instances.
    assert!(fake.set_node_health("node-a", CheckStatus::Critical));
    let (index, passing) = get_json(&c, &fake, "/v1/health/service/web?passing").await;
    assert_eq!(ids(&passing), ["web-2"]);
    assert_eq!(index, fake.index());
    let (_, all) = get_json(&c, &fake, "/v1/health/service/web").await;
    assert_eq!(all[0]["Checks"][0]["Status"], "critical");

    // An unknown service: 200 and an empty list.
    let (_, none) = get_json(&c, &fake, "/v1/health/service/nobody").await;
    assert_eq!(none, json!([]));
    let (_, consul) = get_json(&c, &fake, "/v1/health/service/consul").await;
    assert_eq!(consul[0]["Node"]["Node"], SERVER_NODE);
    assert_eq!(consul[0]["Service"]["Port"], 8300);
}

#[tokio::test]
async fn namespaces_select_instances() {
    let fake = FakeConsul::start().await;
    let c = reqwest::Client::new();
    fake.register(ConsulService::new("node-a", "10.0.0.1", "web", "", 80));
    fake.register(
        ConsulService::new("node-b", "10.0.0.2", "web", "", 80)
            .id("web-team")
            .namespace("team"),
    );
    let (_, default) = get_json(&c, &fake, "/v1/health/service/web").await;
    assert_eq!(ids(&default), ["web"]);
    let (_, team) = get_json(&c, &fake, "/v1/health/service/web?ns=team").await;
    assert_eq!(ids(&team), ["web-team"]);
    assert_eq!(team[0]["Service"]["Namespace"], "team");
    assert_eq!(team[0]["Checks"][0]["Namespace"], "team");
    let (_, all) = get_json(&c, &fake, "/v1/health/service/web?ns=*").await;
    assert_eq!(ids(&all).len(), 2);
    let (.., body) = send(
        c.get(format!("{}/v1/catalog/services", fake.url()))
            .header("X-Consul-Namespace", "team"),
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({ "web": [] }),
        "the namespace header selects too"
    );
}

#[tokio::test]
async fn blocking_queries_answer_at_once_for_an_old_index_and_hold_for_the_current_one() {
    let fake = FakeConsul::start().await;
    let c = reqwest::Client::new();
    let first = fake.register(
        ConsulService::new("node-a", "10.0.0.1", "web", "", 80)
            .check("service:web", CheckStatus::Passing),
    );

    let started = Instant::now();
    let (index, _) = get_json(
        &c,
        &fake,
        &format!("/v1/health/service/web?index={}&wait=5m", first - 1),
    )
    .await;
    assert_eq!(index, first);
    assert!(started.elapsed() < Duration::from_secs(5));

    // Holds at the current index; a change to another service does not answer it, a check
    // of this one does.
    let url = format!(
        "{}/v1/health/service/web?passing&index={first}&wait=1m",
        fake.url()
    );
    let query = tokio::spawn({
        let c = c.clone();
        async move {
            let rsp = c.get(url).send().await.unwrap();
            (header_index(&rsp), rsp.json::<Value>().await.unwrap())
        }
    });
    timeout(WAIT, fake.blocked(1))
        .await
        .expect("the query holds");
    assert!(!query.is_finished());
    let other = fake.register(ConsulService::new("node-b", "10.0.0.2", "api", "", 9000));
    assert!(fake.set_check("node-a", "service:web", CheckStatus::Critical));
    let (index, passing) = timeout(WAIT, query)
        .await
        .expect("answered on the change")
        .unwrap();
    assert_eq!(index, other + 1);
    assert_eq!(passing, json!([]));

    // The catalog's list holds until a registration (not a check) changes.
    let url = format!("{}/v1/catalog/services?index={}&wait=1m", fake.url(), other);
    let query = tokio::spawn({
        let c = c.clone();
        async move { header_index(&c.get(url).send().await.unwrap()) }
    });
    timeout(WAIT, fake.blocked(1)).await.unwrap();
    assert!(fake.set_check("node-a", "service:web", CheckStatus::Passing));
    let changed = fake.register(ConsulService::new("node-b", "10.0.0.2", "db", "", 5432));
    assert_eq!(timeout(WAIT, query).await.unwrap().unwrap(), changed);

    // Nothing changes: the answer comes when the wait ends, with the same index.
    let started = Instant::now();
    let (index, _) = get_json(
        &c,
        &fake,
        &format!("/v1/catalog/services?index={changed}&wait=300ms"),
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(index, changed);
    assert!(
        waited >= Duration::from_millis(300),
        "answered after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
}

#[tokio::test]
async fn cut_connections_end_blocking_queries_with_an_error() {
    let fake = FakeConsul::start().await;
    let c = reqwest::Client::new();
    let index = fake.register(ConsulService::new("node-a", "10.0.0.1", "web", "", 80));
    let url = format!("{}/v1/health/service/web?index={index}&wait=1m", fake.url());
    let query = tokio::spawn({
        let c = c.clone();
        async move { c.get(url).send().await }
    });
    timeout(WAIT, fake.blocked(1)).await.unwrap();
    fake.cut_connections();
    let answer = timeout(WAIT, query).await.expect("the query ends").unwrap();
    assert!(answer.is_err(), "no answer, an error: {answer:?}");
    let (idx, entries) = get_json(&reqwest::Client::new(), &fake, "/v1/health/service/web").await;
    assert_eq!((idx, ids(&entries)), (index, vec!["web"]));
}

#[tokio::test]
async fn restart_keeps_the_port_and_the_catalog() {
    let fake = FakeConsul::start().await;
    let addr = fake.addr();
    let index = fake.register(ConsulService::new("node-a", "10.0.0.1", "web", "", 80));
    let url = format!("{}/v1/catalog/services?index={index}&wait=1m", fake.url());
    let query = tokio::spawn(async move { reqwest::get(url).await });
    timeout(WAIT, fake.blocked(1)).await.unwrap();
    timeout(WAIT, fake.restart())
        .await
        .expect("restarted in time");
    assert_eq!(fake.addr(), addr);
    assert!(timeout(WAIT, query).await.unwrap().unwrap().is_err());
    let (idx, services) = get_json(&reqwest::Client::new(), &fake, "/v1/catalog/services").await;
    assert_eq!(idx, index);
    assert_eq!(services, json!({ "consul": [], "web": [] }));
}

#[tokio::test]
async fn index_going_back_shows_in_x_consul_index() {
    let fake = FakeConsul::start().await;
    let c = reqwest::Client::new();
    let mut last = 0;
    for port in 1..=4 {
        last = fake.register(
            ConsulService::new("node-a", "10.0.0.1", "web", "", port).id(&format!("web-{port}")),
        );
    }
    assert_eq!(get_json(&c, &fake, "/v1/health/service/web").await.0, last);
    let url = format!(
        "{}/v1/health/service/web?index={last}&wait=500ms",
        fake.url()
    );
    let parked = tokio::spawn({
        let c = c.clone();
        async move { header_index(&c.get(url).send().await.unwrap()) }
    });
    timeout(WAIT, fake.blocked(1)).await.unwrap();
    fake.reset_index();
    assert_eq!(
        timeout(WAIT, parked).await.unwrap().unwrap(),
        1,
        "the lower index when the wait ends"
    );
    let (index, entries) = get_json(&c, &fake, "/v1/health/service/web").await;
    assert_eq!(index, 1);
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["Service"]["ModifyIndex"] == 1)
    );
    assert_eq!(get_json(&c, &fake, "/v1/catalog/services").await.0, 1);
    assert_eq!(
        fake.register(ConsulService::new("node-a", "10.0.0.1", "api", "", 1)),
        2
    );
    fake.set_index(50);
    assert_eq!(
        fake.register(ConsulService::new("node-a", "10.0.0.1", "db", "", 1)),
        51
    );
}

#[tokio::test]
async fn acl_tokens() {
    let fake = FakeConsul::start().await;
    fake.register(ConsulService::new("node-a", "10.0.0.1", "web", "", 80));
    fake.require_token(Some("s3cret"));
    let c = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", fake.url());

    // An unknown token.
    for req in [
        c.get(url("/v1/health/service/web"))
            .header("X-Consul-Token", "wrong"),
        c.get(url("/v1/catalog/services")).bearer_auth("wrong"),
        c.get(url("/v1/catalog/services?token=wrong")),
    ] {
        let (status, _, headers, body) = send(req).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::FORBIDDEN, "ACL not found")
        );
        assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    }
    // No token: the anonymous token sees nothing, and the answer says it left things out.
    let (status, index, headers, body) = send(c.get(url("/v1/health/service/web"))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));
    assert_eq!(headers["X-Consul-Results-Filtered-By-ACLs"], "true");
    assert_eq!(index, fake.index());
    let (status, _, headers, body) = send(c.get(url("/v1/catalog/services"))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "{}"));
    assert_eq!(headers["X-Consul-Results-Filtered-By-ACLs"], "true");
    let (_, _, headers, body) = send(c.get(url("/v1/health/service/nobody"))).await;
    assert_eq!(body, "[]");
    assert!(
        headers.get("X-Consul-Results-Filtered-By-ACLs").is_none(),
        "nothing left out"
    );
    // The token in any of its three places.
    for req in [
        c.get(url("/v1/health/service/web"))
            .header("X-Consul-Token", "s3cret"),
        c.get(url("/v1/health/service/web")).bearer_auth("s3cret"),
        c.get(url("/v1/health/service/web?token=s3cret")),
    ] {
        let (status, _, headers, body) = send(req).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers.get("X-Consul-Results-Filtered-By-ACLs").is_none());
        assert_eq!(ids(&serde_json::from_str(&body).unwrap()), ["web"]);
    }
    let tokens: Vec<Option<String>> = fake.requests().into_iter().map(|r| r.token).collect();
    assert_eq!(tokens[0].as_deref(), Some("wrong"));
    assert_eq!(tokens[3], None);
    assert_eq!(tokens[8].as_deref(), Some("s3cret"));
}

#[tokio::test]
async fn injected_failures_answer_for_a_while() {
    let fake = FakeConsul::start().await;
    let c = reqwest::Client::new();
    fake.fail("/v1/health/", 500, Some(2));
    fake.fail("/v1/catalog/", 429, None);
    for _ in 0..2 {
        let (status, _, _, body) =
            send(c.get(format!("{}/v1/health/service/web", fake.url()))).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader")
        );
    }
    let (status, ..) = send(c.get(format!("{}/v1/health/service/web", fake.url()))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, ..) = send(c.get(format!("{}/v1/catalog/services", fake.url()))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    fake.heal();
    let (status, ..) = send(c.get(format!("{}/v1/catalog/services", fake.url()))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.requests().len(), 5);
}
