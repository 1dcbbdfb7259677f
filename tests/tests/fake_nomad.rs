//! The fake Nomad API against reqwest, the HTTP client of the Nomad adapter: service lists and
//! reads, blocking queries, the event stream (order, heartbeats, resuming, the bounded
//! buffer), cut connections, restarts, the index going back, ACL tokens, injected failures,
//! and workload-identity JWTs minted in tests, verified with ring against the served JWKS.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};
use weft_tests::fake_nomad::{FakeNomad, ServiceRegistration};
use weft_tests::jwt::{self, Claims, TestKey};

/// How long any one wait may take.
const WAIT: Duration = Duration::from_secs(10);

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// GETs `path_and_query`: the status, `X-Nomad-Index` (0 if absent) and the body.
async fn get(
    c: &reqwest::Client,
    fake: &FakeNomad,
    path_and_query: &str,
) -> (StatusCode, u64, String) {
    let rsp = timeout(
        WAIT,
        c.get(format!("{}{path_and_query}", fake.url())).send(),
    )
    .await
    .expect("answered in time")
    .unwrap();
    let status = rsp.status();
    let index = header_index(&rsp);
    (status, index, rsp.text().await.unwrap())
}

fn header_index(rsp: &reqwest::Response) -> u64 {
    rsp.headers()
        .get("X-Nomad-Index")
        .map(|v| v.to_str().unwrap().parse().unwrap())
        .unwrap_or(0)
}

/// GETs a JSON document: `X-Nomad-Index` and the body.
async fn get_json(c: &reqwest::Client, fake: &FakeNomad, path_and_query: &str) -> (u64, Value) {
    let (status, index, body) = get(c, fake, path_and_query).await;
    assert_eq!(status, StatusCode::OK, "{path_and_query}: {body}");
    (index, serde_json::from_str(&body).unwrap())
}

fn ids(regs: &Value) -> Vec<&str> {
    regs.as_array()
        .unwrap()
        .iter()
        .map(|r| r["ID"].as_str().unwrap())
        .collect()
}

/// An open event stream, read line by line.
struct Stream {
    rsp: reqwest::Response,
    buf: Vec<u8>,
}

impl Stream {
    async fn open(c: &reqwest::Client, fake: &FakeNomad, query: &str) -> Stream {
        let rsp = timeout(
            WAIT,
            c.get(format!("{}/v1/event/stream?{query}", fake.url()))
                .send(),
        )
        .await
        .expect("the stream opens in time")
        .unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(
            rsp.headers()["content-type"].to_str().unwrap(),
            "application/json"
        );
        Stream {
            rsp,
            buf: Vec::new(),
        }
    }

    /// The next line, heartbeats included; `Err` if the stream ends or fails first.
    async fn line(&mut self) -> Result<Value, String> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Ok(serde_json::from_slice(&line).unwrap());
            }
            match timeout(WAIT, self.rsp.chunk())
                .await
                .expect("a line in time")
            {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => return Err("the stream ended".into()),
                Err(e) => return Err(format!("the stream failed: {e}")),
            }
        }
    }

    /// The next line that carries events (past heartbeats).
    async fn events(&mut self) -> Value {
        loop {
            let line = self.line().await.unwrap();
            if line != json!({}) {
                return line;
            }
        }
    }
}

/// The single event of a stream line: its index, type, key and registration ID.
fn event(line: &Value) -> (u64, &str, &str, &str) {
    let events = line["Events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{line}");
    let e = &events[0];
    assert_eq!(e["Topic"], "Service");
    assert_eq!(e["Index"], line["Index"]);
    (
        line["Index"].as_u64().unwrap(),
        e["Type"].as_str().unwrap(),
        e["Key"].as_str().unwrap(),
        e["Payload"]["Service"]["ID"].as_str().unwrap(),
    )
}

#[tokio::test]
async fn lists_and_reads_services_as_documented() {
    let fake = FakeNomad::start().await;
    let c = client();
    let (index, list) = get_json(&c, &fake, "/v1/services").await;
    assert_eq!(list, json!([]));
    assert_eq!(index, 1, "the index of an empty store");

    let api1 = ServiceRegistration::new("default", "api", "10.0.0.1", 8080).tags(&["v1", "http"]);
    let api2 = ServiceRegistration::new("default", "api", "10.0.0.2", 8080).tags(&["v2"]);
    let web = ServiceRegistration::new("default", "web", "10.0.0.3", 80);
    let db = ServiceRegistration::new("prod", "db", "10.0.1.1", 5432).job("storage");
    let i1 = fake.register(api1.clone());
    fake.register(api2.clone());
    fake.register(web);
    let last = fake.register(db.clone());
    assert_eq!(last, i1 + 3, "every change takes the next index");

    let (index, list) = get_json(&c, &fake, "/v1/services").await;
    assert_eq!(index, last);
    assert_eq!(
        list,
        json!([{ "Namespace": "default", "Services": [
            { "ServiceName": "api", "Tags": ["http", "v1", "v2"] },
            { "ServiceName": "web", "Tags": [] },
        ]}])
    );
    let (_, list) = get_json(&c, &fake, "/v1/services?namespace=*").await;
    let namespaces: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Namespace"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces, ["default", "prod"]);
    let (_, list) = get_json(&c, &fake, "/v1/services?namespace=prod").await;
    assert_eq!(
        list,
        json!([{ "Namespace": "prod", "Services": [{ "ServiceName": "db", "Tags": [] }] }])
    );

    let rsp = c
        .get(format!("{}/v1/service/api", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.headers()["X-Nomad-KnownLeader"], "true");
    assert_eq!(rsp.headers()["X-Nomad-LastContact"], "0");
    assert_eq!(header_index(&rsp), i1 + 1, "the last change to `api`");
    let regs: Value = rsp.json().await.unwrap();
    assert_eq!(ids(&regs).len(), 2);
    let first = regs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ID"] == api1.id)
        .unwrap();
    assert_eq!(
        *first,
        json!({
            "ID": api1.id,
            "ServiceName": "api",
            "Namespace": "default",
            "NodeID": api1.node_id,
            "Datacenter": "dc1",
            "JobID": "api",
            "AllocID": api1.alloc_id,
            "Tags": ["v1", "http"],
            "Address": "10.0.0.1",
            "Port": 8080,
            "CreateIndex": i1,
            "ModifyIndex": i1,
        })
    );
    assert!(
        api1.id
            .starts_with(&format!("_nomad-task-{}-api-api-", api1.alloc_id))
    );

    // Another namespace, the wildcard, and a name nobody registered (200 with an empty list).
    let (_, regs) = get_json(&c, &fake, "/v1/service/db").await;
    assert_eq!(regs, json!([]));
    let (_, regs) = get_json(&c, &fake, "/v1/service/db?namespace=prod").await;
    assert_eq!(ids(&regs), [db.id.as_str()]);
    let (_, regs) = get_json(&c, &fake, "/v1/service/db?namespace=*").await;
    assert_eq!(ids(&regs), [db.id.as_str()]);
    let (index, regs) = get_json(&c, &fake, "/v1/service/nobody").await;
    assert_eq!(regs, json!([]));
    assert_eq!(
        index, last,
        "an unknown name reads at the registrations' index"
    );

    // Replacing keeps CreateIndex; deregistering removes.
    let moved = fake.register(api1.clone().tags(&["v1"]));
    let (_, regs) = get_json(&c, &fake, "/v1/service/api").await;
    let first = regs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ID"] == api1.id)
        .unwrap();
    assert_eq!(first["CreateIndex"], i1);
    assert_eq!(first["ModifyIndex"], moved);
    assert!(fake.deregister("default", &api2.id));
    assert!(!fake.deregister("default", &api2.id), "already gone");
    let (index, regs) = get_json(&c, &fake, "/v1/service/api").await;
    assert_eq!(ids(&regs), [api1.id.as_str()]);
    assert_eq!(index, moved + 1);

    // What the API does not serve.
    let (status, _, body) = get(&c, &fake, "/v1/jobs").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "404 page not found")
    );
    let rsp = c
        .put(format!("{}/v1/service/api", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, body) = get(&c, &fake, "/v1/services?index=1&wait=forever").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, "Invalid wait time")
    );
    let (status, _, body) = get(&c, &fake, "/v1/services?index=x").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, "Invalid index")
    );
}

#[tokio::test]
async fn blocking_queries_answer_at_once_for_an_old_index_and_hold_for_the_current_one() {
    let fake = FakeNomad::start().await;
    let c = client();
    let first = fake.register(ServiceRegistration::new("default", "api", "10.0.0.1", 80));

    // An index below the current one: at once, whatever the wait.
    let started = Instant::now();
    let (index, regs) = get_json(
        &c,
        &fake,
        &format!("/v1/service/api?index={}&wait=5m", first - 1),
    )
    .await;
    assert_eq!(index, first);
    assert_eq!(ids(&regs).len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));

    // The current index: holds until a change to `api`...
    let url = format!("{}/v1/service/api?index={first}&wait=1m", fake.url());
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
    // ...which a change to another service is not (the query keeps holding: the answer below
    // carries the index of the change to `api`, not this one)...
    let other = fake.register(ServiceRegistration::new("default", "web", "10.0.0.9", 80));
    let second = ServiceRegistration::new("default", "api", "10.0.0.2", 80);
    let changed = fake.register(second.clone());
    assert_eq!(changed, other + 1);
    let (index, regs) = timeout(WAIT, query)
        .await
        .expect("answered on the change")
        .unwrap();
    assert_eq!(index, changed);
    assert_eq!(ids(&regs).len(), 2);

    // The service list blocks on any registration change.
    let url = format!("{}/v1/services?index={changed}&wait=1m", fake.url());
    let query = tokio::spawn({
        let c = c.clone();
        async move { header_index(&c.get(url).send().await.unwrap()) }
    });
    timeout(WAIT, fake.blocked(1))
        .await
        .expect("the list holds");
    assert!(fake.deregister("default", &second.id));
    let index = timeout(WAIT, query)
        .await
        .expect("answered on the change")
        .unwrap();
    assert_eq!(index, changed + 1);

    // Nothing changes: the query answers when its wait ends, with the same index.
    let started = Instant::now();
    let (index, _) = get_json(
        &c,
        &fake,
        &format!("/v1/service/api?index={}&wait=300ms", changed + 1),
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(index, changed + 1);
    assert!(
        waited >= Duration::from_millis(300),
        "answered after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
}

#[tokio::test]
async fn event_stream_delivers_changes_in_order_with_heartbeats_and_resumes() {
    let fake = FakeNomad::start().await;
    fake.set_heartbeat(Duration::from_millis(100));
    let c = client();
    let a = ServiceRegistration::new("default", "api", "10.0.0.1", 80);
    let b = ServiceRegistration::new("default", "web", "10.0.0.2", 80).job("frontend");
    let ia = fake.register(a.clone());
    let ib = fake.register(b.clone());

    // From the start of the buffer, then live, with heartbeats in between.
    let mut all = Stream::open(&c, &fake, "topic=Service&namespace=*&index=0").await;
    let line = all.events().await;
    assert_eq!(
        event(&line),
        (ia, "ServiceRegistration", a.id.as_str(), a.id.as_str())
    );
    let e = &line["Events"][0];
    assert_eq!(e["Namespace"], "default");
    assert_eq!(e["FilterKeys"], json!(["api", "api"]));
    assert_eq!(e["Payload"]["Service"]["Port"], 80);
    assert_eq!(e["Payload"]["Service"]["ModifyIndex"], ia);
    assert_eq!(event(&all.events().await).0, ib);
    timeout(WAIT, fake.streams(1)).await.unwrap();
    assert!(fake.deregister("default", &a.id));
    let line = all.events().await;
    assert_eq!(
        event(&line),
        (
            ib + 1,
            "ServiceDeregistration",
            a.id.as_str(),
            a.id.as_str()
        )
    );
    loop {
        // A heartbeat comes within its interval of quiet.
        if all.line().await.unwrap() == json!({}) {
            break;
        }
    }

    // Resuming from an index sends that index and later ones.
    let mut resumed =
        Stream::open(&c, &fake, &format!("topic=Service&namespace=*&index={ib}")).await;
    assert_eq!(event(&resumed.events().await).0, ib);
    assert_eq!(event(&resumed.events().await).0, ib + 1);

    // A topic key matches the service name (or job ID, or registration ID); a namespace
    // filters; the default namespace is `default`.
    let mut web_only = Stream::open(&c, &fake, "topic=Service:web&index=0").await;
    let mut by_job = Stream::open(&c, &fake, "topic=Service:frontend&index=0").await;
    let mut default_ns = Stream::open(&c, &fake, "topic=Service").await;
    assert_eq!(event(&web_only.events().await).0, ib);
    assert_eq!(event(&by_job.events().await).0, ib);
    let prod = fake.register(ServiceRegistration::new("prod", "web", "10.0.1.1", 80));
    let api = fake.register(ServiceRegistration::new("default", "api", "10.0.0.3", 80));
    let web = fake.register(b.clone().tags(&["v2"]));
    let seen: Vec<u64> = {
        let mut seen = Vec::new();
        loop {
            let (index, ..) = event(&default_ns.events().await);
            seen.push(index);
            if index == web {
                break seen;
            }
        }
    };
    assert_eq!(
        seen,
        [ia, ib, ib + 1, api, web],
        "no event of namespace prod ({prod})"
    );
    assert_eq!(
        event(&web_only.events().await).0,
        web,
        "prod's web is filtered out"
    );
    assert_eq!(event(&by_job.events().await).0, web);
}

#[tokio::test]
async fn event_stream_from_an_index_older_than_the_buffer_starts_at_the_oldest_held() {
    let fake = FakeNomad::start().await;
    fake.set_event_buffer(3);
    let c = client();
    let indexes: Vec<u64> = (0..5)
        .map(|i| {
            fake.register(ServiceRegistration::new(
                "default",
                "api",
                "10.0.0.1",
                8000 + i,
            ))
        })
        .collect();
    let mut stream = Stream::open(&c, &fake, &format!("topic=Service&index={}", indexes[0])).await;
    let firsts: Vec<u64> = [
        stream.events().await,
        stream.events().await,
        stream.events().await,
    ]
    .iter()
    .map(|l| event(l).0)
    .collect();
    assert_eq!(
        firsts,
        indexes[2..],
        "the two oldest fell out of the buffer"
    );
    // A stream from an index the buffer has not reached waits for it.
    let mut ahead = Stream::open(
        &c,
        &fake,
        &format!("topic=Service&index={}", indexes[4] + 2),
    )
    .await;
    fake.register(ServiceRegistration::new("default", "api", "10.0.0.1", 9000));
    let last = fake.register(ServiceRegistration::new("default", "api", "10.0.0.1", 9001));
    assert_eq!(event(&ahead.events().await).0, last);
}

#[tokio::test]
async fn cut_connections_end_blocking_queries_and_streams_with_an_error() {
    let fake = FakeNomad::start().await;
    fake.set_heartbeat(Duration::from_millis(50));
    let c = client();
    let index = fake.register(ServiceRegistration::new("default", "api", "10.0.0.1", 80));
    let url = format!("{}/v1/service/api?index={index}&wait=1m", fake.url());
    let query = tokio::spawn({
        let c = c.clone();
        async move { c.get(url).send().await }
    });
    let mut stream = Stream::open(&c, &fake, "topic=Service&index=0").await;
    assert_eq!(event(&stream.events().await).0, index);
    assert_eq!(stream.line().await.unwrap(), json!({}), "a heartbeat");
    timeout(WAIT, fake.blocked(1)).await.unwrap();

    fake.cut_connections();
    let answer = timeout(WAIT, query).await.expect("the query ends").unwrap();
    assert!(answer.is_err(), "no answer, an error: {answer:?}");
    let mut rest = Vec::new();
    let err = loop {
        match stream.line().await {
            Ok(line) => rest.push(line),
            Err(e) => break e,
        }
    };
    assert!(err.contains("failed"), "{err} after {rest:?}");

    // New connections are served.
    let (status, idx, _) = get(&client(), &fake, "/v1/service/api").await;
    assert_eq!((status, idx), (StatusCode::OK, index));
}

#[tokio::test]
async fn restart_keeps_the_port_and_the_state() {
    let fake = FakeNomad::start().await;
    fake.set_heartbeat(Duration::from_millis(50));
    let addr = fake.addr();
    let c = client();
    let reg = ServiceRegistration::new("default", "api", "10.0.0.1", 80);
    let index = fake.register(reg.clone());
    let mut stream = Stream::open(&c, &fake, "topic=Service&index=0").await;
    assert_eq!(event(&stream.events().await).0, index);

    timeout(WAIT, fake.restart())
        .await
        .expect("restarted in time");
    assert_eq!(fake.addr(), addr);
    let err = loop {
        if let Err(e) = stream.line().await {
            break e;
        }
    };
    assert!(err.contains("ended") || err.contains("failed"), "{err}");

    let c = client();
    let (idx, regs) = get_json(&c, &fake, "/v1/service/api").await;
    assert_eq!(idx, index);
    assert_eq!(ids(&regs), [reg.id.as_str()]);
    // The event buffer lived in memory: a stream from the start gets only what comes next.
    let mut stream = Stream::open(&c, &fake, "topic=Service&index=0").await;
    timeout(WAIT, fake.streams(1)).await.unwrap();
    let next = fake.register(ServiceRegistration::new("default", "web", "10.0.0.2", 80));
    assert_eq!(next, index + 1);
    assert_eq!(event(&stream.events().await).0, next);
}

#[tokio::test]
async fn index_going_back_shows_in_x_nomad_index() {
    let fake = FakeNomad::start().await;
    let c = client();
    let mut last = 0;
    for port in 1..=4 {
        last = fake.register(ServiceRegistration::new("default", "api", "10.0.0.1", port));
    }
    assert_eq!(get_json(&c, &fake, "/v1/service/api").await.0, last);
    let mut stream = Stream::open(&c, &fake, "topic=Service&index=0").await;
    assert_eq!(event(&stream.events().await).0, 2);
    let url = format!("{}/v1/service/api?index={last}&wait=500ms", fake.url());
    let parked = tokio::spawn({
        let c = c.clone();
        async move { header_index(&c.get(url).send().await.unwrap()) }
    });
    timeout(WAIT, fake.blocked(1)).await.unwrap();

    fake.reset_index();
    assert_eq!(fake.index(), 1);
    // The parked query answers when its wait ends, with the lower index.
    let index = timeout(WAIT, parked).await.unwrap().unwrap();
    assert_eq!(index, 1);
    let (index, regs) = get_json(&c, &fake, "/v1/service/api").await;
    assert_eq!(index, 1);
    assert!(
        regs.as_array()
            .unwrap()
            .iter()
            .all(|r| r["CreateIndex"] == 1 && r["ModifyIndex"] == 1)
    );
    assert_eq!(get_json(&c, &fake, "/v1/services").await.0, 1);
    let err = loop {
        if let Err(e) = stream.line().await {
            break e;
        }
    };
    assert!(err.contains("failed"), "{err}");

    let next = fake.register(ServiceRegistration::new("default", "api", "10.0.0.1", 99));
    assert_eq!(next, 2);
    fake.set_index(100);
    assert_eq!(
        fake.register(ServiceRegistration::new("default", "web", "10.0.0.2", 80)),
        101
    );
}

#[tokio::test]
async fn a_required_token_refuses_requests_without_it() {
    let fake = FakeNomad::start().await;
    fake.register(ServiceRegistration::new("default", "api", "10.0.0.1", 80));
    fake.set_keys(&[&TestKey::fixture(1)]);
    fake.require_token(Some("s3cret"));
    let c = client();
    let url = |p: &str| format!("{}{p}", fake.url());

    for rsp in [
        c.get(url("/v1/service/api")).send().await.unwrap(),
        c.get(url("/v1/services")).send().await.unwrap(),
        c.get(url("/v1/event/stream?topic=Service"))
            .send()
            .await
            .unwrap(),
        c.get(url("/v1/service/api"))
            .header("X-Nomad-Token", "wrong")
            .send()
            .await
            .unwrap(),
        c.get(url("/v1/services?namespace=*"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(rsp.status(), StatusCode::FORBIDDEN);
        assert_eq!(rsp.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(rsp.text().await.unwrap(), "Permission denied");
    }
    // The wildcard filters out what the anonymous token may not see: everything.
    let rsp = c.get(url("/v1/services?namespace=*")).send().await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.json::<Value>().await.unwrap(), json!([]));
    // The token in either header.
    let rsp = c
        .get(url("/v1/service/api"))
        .header("X-Nomad-Token", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(
        rsp.json::<Value>().await.unwrap().as_array().unwrap().len(),
        1
    );
    let rsp = c
        .get(url("/v1/event/stream?topic=Service"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    drop(rsp);
    // The keys need no token.
    let rsp = c.get(url("/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);

    let tokens: Vec<(String, Option<String>)> = fake
        .requests()
        .into_iter()
        .map(|r| (r.path, r.token))
        .collect();
    assert_eq!(tokens[0], ("/v1/service/api".into(), None));
    assert_eq!(tokens[3], ("/v1/service/api".into(), Some("wrong".into())));
    assert_eq!(
        tokens[7],
        ("/v1/event/stream".into(), Some("s3cret".into()))
    );

    fake.require_token(None);
    assert_eq!(get(&c, &fake, "/v1/service/api").await.0, StatusCode::OK);
}

#[tokio::test]
async fn injected_failures_answer_for_a_while() {
    let fake = FakeNomad::start().await;
    let c = client();
    fake.fail("/v1/service/", 500, Some(2));
    fake.fail("/v1/event/stream", 503, None);
    for _ in 0..2 {
        let (status, _, body) = get(&c, &fake, "/v1/service/api").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader")
        );
    }
    assert_eq!(get(&c, &fake, "/v1/service/api").await.0, StatusCode::OK);
    assert_eq!(get(&c, &fake, "/v1/services").await.0, StatusCode::OK);
    for _ in 0..3 {
        let (status, ..) = get(&c, &fake, "/v1/event/stream?topic=Service").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    fake.heal();
    let _open = Stream::open(&c, &fake, "topic=Service").await;
    assert_eq!(fake.requests().len(), 8);
}

#[tokio::test]
async fn jwks_serves_the_keys_and_counts_fetches() {
    let fake = FakeNomad::start().await;
    let c = client();
    let (k1, k2) = (TestKey::fixture(1), TestKey::fixture(2));
    let (_, doc) = get_json(&c, &fake, "/.well-known/jwks.json").await;
    assert_eq!(doc, json!({ "keys": [] }));
    fake.set_keys(&[&k1, &k2]);
    let (_, doc) = get_json(&c, &fake, "/.well-known/jwks.json").await;
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    for (jwk, key) in keys.iter().zip([&k1, &k2]) {
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["alg"], "RS256");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kid"], key.kid());
        let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        let e = URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap();
        assert_eq!(n.len(), 256, "a 2048-bit modulus");
        assert_eq!(e, [1, 0, 1]);
        assert_eq!((n.as_slice(), e.as_slice()), key.public_components());
    }
    assert_ne!(keys[0]["n"], keys[1]["n"]);
    assert_eq!(fake.jwks_fetches(), 2);
    fake.fail("/.well-known/jwks.json", 500, Some(1));
    assert_eq!(
        get(&c, &fake, "/.well-known/jwks.json").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(fake.jwks_fetches(), 3, "failed fetches count too");
    fake.set_jwks(json!({ "keys": "not a list" }));
    assert_eq!(
        get_json(&c, &fake, "/.well-known/jwks.json").await.1["keys"],
        "not a list"
    );
}

/// Why a verifier refuses a token.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    Malformed,
    Algorithm(String),
    UnknownKid,
    BadSignature,
    Expired,
    NotYetValid,
    Audience,
}

/// Verifies an RS256 workload identity against a JWKS as a relying party would, at `now`.
fn verify(token: &str, jwks: &Value, audience: &str, now: i64) -> Result<Value, Refused> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err(Refused::Malformed);
    };
    let decode = |s: &str| -> Result<Value, Refused> {
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| Refused::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| Refused::Malformed)
    };
    let head = decode(header)?;
    let alg = head["alg"].as_str().unwrap_or_default();
    if alg != "RS256" {
        return Err(Refused::Algorithm(alg.to_owned()));
    }
    let kid = head["kid"].as_str().ok_or(Refused::UnknownKid)?;
    let key = jwks["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["kid"] == kid)
        .ok_or(Refused::UnknownKid)?;
    let component = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(key[name].as_str().unwrap_or_default())
            .map_err(|_| Refused::Malformed)
    };
    let (n, e) = (component("n")?, component("e")?);
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| Refused::Malformed)?;
    RsaPublicKeyComponents { n: &n, e: &e }
        .verify(
            &RSA_PKCS1_2048_8192_SHA256,
            format!("{header}.{claims}").as_bytes(),
            &signature,
        )
        .map_err(|_| Refused::BadSignature)?;
    let claims = decode(claims)?;
    if claims["exp"].as_i64().is_none_or(|exp| now >= exp) {
        return Err(Refused::Expired);
    }
    if claims["nbf"].as_i64().is_some_and(|nbf| now < nbf) {
        return Err(Refused::NotYetValid);
    }
    let audiences: Vec<&str> = match &claims["aud"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&audience) {
        return Err(Refused::Audience);
    }
    Ok(claims)
}

#[tokio::test]
async fn minted_tokens_verify_against_the_served_jwks_and_bad_ones_fail_for_their_reason() {
    let fake = FakeNomad::start().await;
    let (k1, k2, k3) = (
        TestKey::fixture(1),
        TestKey::fixture(2),
        TestKey::fixture(3),
    );
    fake.set_keys(&[&k1, &k2]);
    let (_, jwks) = get_json(&client(), &fake, "/.well-known/jwks.json").await;
    let now = jwt::unix_now();
    let check = |token: &str| verify(token, &jwks, "weft", now);

    let alloc = jwt::random_uuid();
    let task = Claims::task("default", "shop", &alloc, "web");
    let claims = check(&task.mint(&k1)).unwrap();
    assert_eq!(claims["nomad_namespace"], "default");
    assert_eq!(claims["nomad_job_id"], "shop");
    assert_eq!(claims["nomad_allocation_id"], alloc);
    assert_eq!(claims["nomad_task"], "web");
    assert!(claims.get("nomad_service").is_none());
    assert_eq!(claims["aud"], json!(["weft"]));
    assert_eq!(claims["sub"], "global:default:shop:group:web:default");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
    assert!(claims["jti"].as_str().unwrap().len() == 36);
    let (header, _) = jwt::decode_unverified(&task.mint(&k2)).unwrap();
    assert_eq!(
        header,
        json!({ "alg": "RS256", "typ": "JWT", "kid": "weft-test-key-2" })
    );
    assert!(check(&task.mint(&k2)).is_ok(), "any key of the set");

    let service = Claims::service("prod", "shop", &alloc, "api").audience("weft");
    let claims = check(&service.mint(&k2)).unwrap();
    assert_eq!(claims["nomad_service"], "api");
    assert_eq!(claims["aud"], "weft", "a single audience as a string");
    assert!(check(&service.clone().audiences(&["vault", "weft"]).mint(&k1)).is_ok());

    let good = task.build();
    assert_eq!(
        check(&jwt::alg_none(&good)),
        Err(Refused::Algorithm("none".into()))
    );
    let forged = task.clone().claim("nomad_job_id", json!("admin")).build();
    assert_eq!(
        check(&jwt::wrong_signature(&k1, &good, &forged)),
        Err(Refused::BadSignature)
    );
    assert_eq!(
        check(&jwt::signed_by_other_key(&k3, k1.kid(), &good)),
        Err(Refused::BadSignature)
    );
    assert_eq!(
        check(&jwt::unknown_kid(&k1, &good)),
        Err(Refused::UnknownKid)
    );
    assert_eq!(
        check(&task.mint(&k3)),
        Err(Refused::UnknownKid),
        "key 3 is not served"
    );
    assert_eq!(
        check(&task.clone().expired().mint(&k1)),
        Err(Refused::Expired)
    );
    assert_eq!(
        check(&task.clone().not_yet_valid().mint(&k1)),
        Err(Refused::NotYetValid)
    );
    assert_eq!(
        check(&task.clone().audiences(&["vault"]).mint(&k1)),
        Err(Refused::Audience)
    );
    assert_eq!(
        check(&task.clone().ttl(Duration::ZERO).mint(&k1)),
        Err(Refused::Expired)
    );
    assert_eq!(check("not.a-token"), Err(Refused::Malformed));

    // Serving key 3 makes its tokens good; dropping key 1 makes its tokens unknown.
    fake.set_keys(&[&k2, &k3]);
    let (_, jwks) = get_json(&client(), &fake, "/.well-known/jwks.json").await;
    assert!(verify(&task.mint(&k3), &jwks, "weft", now).is_ok());
    assert_eq!(
        verify(&task.mint(&k1), &jwks, "weft", now),
        Err(Refused::UnknownKid)
    );
    assert_eq!(fake.jwks_fetches(), 2);
}
