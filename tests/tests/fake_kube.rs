//! The fake Kubernetes API server against the real `kube` client: paged lists, the runtime
//! watcher through its list, watch, expiry, cut connections and a server restart, bookmarks,
//! streaming lists, TokenReview, access reviews, discovery and refusals, and the custom
//! resources (the Gateway API's routes, Weft's `weft.dev/v1alpha1` policies) with their status
//! subresource, generation, and the switches that uninstall them; a pod's port-forward over
//! WebSocket.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, DynamicObject, GroupVersionKind, ListParams, ObjectList, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::ApiResource;
use kube::runtime::watcher;
use kube::{Client, Config, ResourceExt};
use serde_json::{Value, json};
use tokio::time::timeout;
use weft_tests::fake_kube::{FakeKube, TokenInfo};

/// How long any one wait may take.
const WAIT: Duration = Duration::from_secs(10);

async fn client_for(fake: &FakeKube, dir: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(fake.kubeconfig(dir)).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn pod(ns: &str, name: &str, app: Option<&str>) -> Value {
    let labels: BTreeMap<&str, &str> = app.map(|a| ("app", a)).into_iter().collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "labels": labels },
        "spec": { "containers": [{ "name": "app", "image": "app:1" }] },
        "status": { "phase": "Running", "podIP": "10.0.0.1" },
    })
}

fn key(p: &Pod) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

/// Lists every page of `api` with `lp`: the keys and the number of pages.
async fn list_all(api: &Api<Pod>, lp: &ListParams) -> (Vec<String>, usize) {
    let mut lp = lp.clone();
    let mut keys = Vec::new();
    for pages in 1..=100 {
        let page: ObjectList<Pod> = api.list(&lp).await.unwrap();
        keys.extend(page.items.iter().map(key));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp.continue_token = Some(token),
            None => return (keys, pages),
        }
    }
    panic!("more than 100 pages")
}

/// The next event of a watcher, errors included.
async fn next<K>(
    w: &mut (impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin),
) -> Result<watcher::Event<K>, watcher::Error> {
    timeout(WAIT, w.next())
        .await
        .expect("the watcher yields in time")
        .expect("the watcher never ends")
}

/// The next event of a watcher, past (a few) errors: a cut connection or a restarting server
/// costs the watcher some.
async fn next_ok<K>(
    w: &mut (impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin),
) -> watcher::Event<K> {
    for _ in 0..20 {
        if let Ok(ev) = next(w).await {
            return ev;
        }
    }
    panic!("the watcher kept failing")
}

/// A watcher's (re)list: Init, InitApply..., InitDone; the keys of what it applied.
async fn init_phase(
    w: &mut (impl Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Unpin),
) -> Vec<String> {
    let ev = next_ok(w).await;
    assert!(
        matches!(ev, watcher::Event::Init),
        "expected Init, got {ev:?}"
    );
    let mut keys = Vec::new();
    for _ in 0..100 {
        match next_ok(w).await {
            watcher::Event::InitApply(p) => keys.push(key(&p)),
            watcher::Event::InitDone => return keys,
            ev => panic!("unexpected {ev:?} in the initial list"),
        }
    }
    panic!("the initial list never ended")
}

#[tokio::test]
async fn lists_page_by_continue_token_on_a_snapshot() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&fake, dir.path()).await;
    for (ns, name, app) in [
        ("a", "p1", Some("web")),
        ("a", "p2", Some("db")),
        ("a", "p3", None),
        ("b", "p4", Some("web")),
        ("b", "p5", None),
    ] {
        fake.apply(pod(ns, name, app));
    }
    fake.set_page_limit(Some(2));
    let all: Api<Pod> = Api::all(client.clone());
    let every = ["a/p1", "a/p2", "a/p3", "b/p4", "b/p5"];

    // Across namespaces, pages of 2 as the client asks.
    let (keys, pages) = list_all(&all, &ListParams::default().limit(2)).await;
    assert_eq!((keys, pages), (every.map(String::from).to_vec(), 3));
    // In one namespace, the server's cap of 2 under the client's 500.
    let in_a: Api<Pod> = Api::namespaced(client.clone(), "a");
    let (keys, pages) = list_all(&in_a, &ListParams::default().limit(500)).await;
    assert_eq!(
        (keys, pages),
        (vec!["a/p1".into(), "a/p2".into(), "a/p3".into()], 2)
    );
    // Without a limit nothing is paged, as on a real server.
    let (keys, pages) = list_all(&all, &ListParams::default()).await;
    assert_eq!((keys.len(), pages), (5, 1));
    let continued = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/pods" && r.query.contains("continue="))
        .count();
    assert_eq!(
        continued,
        2,
        "the second and third pages: {:?}",
        fake.requests()
    );

    // The pages after the first show the list's snapshot: a pod created or deleted meanwhile
    // changes nothing; the next list sees both.
    let first = all.list(&ListParams::default().limit(2)).await.unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    fake.delete("Pod", Some("b"), "p4");
    fake.apply(pod("a", "p9", None));
    let mut lp = ListParams::default().limit(2);
    lp.continue_token = first.metadata.continue_.clone();
    let second = all.list(&lp).await.unwrap();
    assert_eq!(
        second.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    assert_eq!(
        second.items.iter().map(key).collect::<Vec<_>>(),
        ["a/p3", "b/p4"]
    );
    let (keys, _) = list_all(&all, &ListParams::default().limit(2)).await;
    assert_eq!(keys, ["a/p1", "a/p2", "a/p3", "a/p9", "b/p5"]);

    // Selectors.
    let selected = |lp: ListParams| {
        let all = all.clone();
        async move {
            let mut keys: Vec<String> =
                all.list(&lp).await.unwrap().items.iter().map(key).collect();
            keys.sort();
            keys
        }
    };
    fake.set_page_limit(None);
    assert_eq!(
        selected(ListParams::default().labels("app=web")).await,
        ["a/p1"]
    );
    assert_eq!(
        selected(ListParams::default().labels("app!=web")).await,
        ["a/p2", "a/p3", "a/p9", "b/p5"]
    );
    assert_eq!(
        selected(ListParams::default().labels("app")).await,
        ["a/p1", "a/p2"]
    );
    assert_eq!(
        selected(ListParams::default().labels("!app,metadata.x!=y")).await,
        ["a/p3", "a/p9", "b/p5"]
    );
    assert_eq!(
        selected(ListParams::default().labels("app in (web, db)")).await,
        ["a/p1", "a/p2"]
    );
    assert_eq!(
        selected(ListParams::default().fields("metadata.name=p3")).await,
        ["a/p3"]
    );
    assert_eq!(
        selected(ListParams::default().fields("metadata.namespace=b")).await,
        ["b/p5"]
    );
    assert_eq!(
        selected(ListParams::default().fields("status.phase=Running,metadata.namespace!=a")).await,
        ["b/p5"]
    );
    let kube::Error::Api(status) = all
        .list(&ListParams::default().fields("spec.nope=x"))
        .await
        .unwrap_err()
    else {
        panic!("not an API error")
    };
    assert_eq!((status.code, status.reason.as_str()), (400, "BadRequest"));

    // Compaction expires the continue token of an older list.
    fake.set_page_limit(Some(2));
    let first = all.list(&ListParams::default().limit(2)).await.unwrap();
    fake.apply(pod("a", "p10", None));
    fake.expire_watches();
    let mut lp = ListParams::default().limit(2);
    lp.continue_token = first.metadata.continue_;
    let kube::Error::Api(status) = all.list(&lp).await.unwrap_err() else {
        panic!("not an API error")
    };
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    let kube::Error::Api(status) = all
        .list(
            &ListParams::default()
                .at(&rv)
                .matching(kube::api::VersionMatch::Exact),
        )
        .await
        .unwrap_err()
    else {
        panic!("not an API error")
    };
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
}

#[tokio::test]
async fn watcher_lists_then_watches_and_relists_after_expiry() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&fake, dir.path()).await;
    for name in ["p1", "p2", "p3"] {
        fake.apply(pod("a", name, None));
    }
    fake.apply(pod("b", "p4", None));
    // The watcher pages its list too.
    fake.set_page_limit(Some(2));
    let api: Api<Pod> = Api::namespaced(client, "a");
    let mut w = pin!(watcher(api, watcher::Config::default()));

    assert_eq!(init_phase(&mut w).await, ["a/p1", "a/p2", "a/p3"]);
    // Apply and delete once the watcher watches.
    let (ev, ()) = tokio::join!(next_ok(&mut w), async {
        timeout(WAIT, fake.watchers("/api/v1/namespaces/a/pods", 1))
            .await
            .unwrap();
        fake.apply(pod("b", "elsewhere", None));
        fake.apply(pod("a", "p5", None));
    });
    let watcher::Event::Apply(p) = ev else {
        panic!("expected Apply, got {ev:?}")
    };
    assert_eq!(key(&p), "a/p5");
    assert_eq!(
        p.resource_version(),
        fake.get("Pod", Some("a"), "p5").unwrap()["metadata"]["resourceVersion"]
            .as_str()
            .map(String::from)
    );
    fake.delete("Pod", Some("a"), "p2");
    let ev = next_ok(&mut w).await;
    let watcher::Event::Delete(p) = ev else {
        panic!("expected Delete, got {ev:?}")
    };
    assert_eq!(key(&p), "a/p2");

    // Expiry: the watch ends with 410; what changed meanwhile shows in the relist.
    fake.expire_watches();
    fake.delete("Pod", Some("a"), "p1");
    let err = next(&mut w).await.unwrap_err();
    assert!(
        matches!(&err, watcher::Error::WatchError(s) if s.code == 410 && s.reason == "Expired"),
        "{err:?}"
    );
    assert_eq!(init_phase(&mut w).await, ["a/p3", "a/p5"]);
    let (ev, ()) = tokio::join!(next_ok(&mut w), async {
        timeout(WAIT, fake.watchers("/api/v1/namespaces/a/pods", 1))
            .await
            .unwrap();
        fake.apply(pod("a", "p6", None));
    });
    assert!(matches!(ev, watcher::Event::Apply(p) if p.name_any() == "p6"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_resumes_after_a_cut_and_a_restart() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&fake, dir.path()).await;
    fake.apply(pod("a", "p1", None));
    let api: Api<Pod> = Api::all(client.clone());
    let mut w = pin!(watcher(api.clone(), watcher::Config::default()));
    assert_eq!(init_phase(&mut w).await, ["a/p1"]);
    let (ev, ()) = tokio::join!(next_ok(&mut w), async {
        timeout(WAIT, fake.watchers("/api/v1/pods", 1))
            .await
            .unwrap();
        fake.apply(pod("a", "p2", None));
    });
    assert!(matches!(ev, watcher::Event::Apply(p) if p.name_any() == "p2"));

    // A cut connection: the watcher resumes from its resourceVersion, without a relist, and
    // gets what changed while it was cut.
    fake.drop_watches();
    fake.apply(pod("a", "p3", None));
    let ev = next_ok(&mut w).await;
    assert!(
        matches!(&ev, watcher::Event::Apply(p) if p.name_any() == "p3"),
        "{ev:?}"
    );

    // A clean end (a watch timeout): the same.
    fake.end_watches();
    fake.apply(pod("a", "p4", None));
    let ev = next_ok(&mut w).await;
    assert!(
        matches!(&ev, watcher::Event::Apply(p) if p.name_any() == "p4"),
        "{ev:?}"
    );

    // A restart: the store survives, and the watcher resumes on the same address.
    timeout(WAIT, fake.restart()).await.unwrap();
    fake.apply(pod("a", "p5", None));
    let ev = next_ok(&mut w).await;
    assert!(
        matches!(&ev, watcher::Event::Apply(p) if p.name_any() == "p5"),
        "{ev:?}"
    );
    // One list in all: every resume was a watch from the last resourceVersion seen.
    let pods = |watch: bool| {
        fake.requests()
            .iter()
            .filter(|r| r.path == "/api/v1/pods" && r.query.contains("watch=true") == watch)
            .count()
    };
    assert_eq!(pods(false), 1, "{:?}", fake.requests());
    assert!(pods(true) >= 4, "{:?}", fake.requests());
    let names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert_eq!(names, ["p1", "p2", "p3", "p4", "p5"]);
    let (ev, ()) = tokio::join!(next_ok(&mut w), async {
        timeout(WAIT, fake.watchers("/api/v1/pods", 1))
            .await
            .unwrap();
        fake.delete("Pod", Some("a"), "p1");
    });
    assert!(
        matches!(&ev, watcher::Event::Delete(p) if p.name_any() == "p1"),
        "{ev:?}"
    );
}

/// Opens a raw watch of every pod: the response, its body unread.
async fn raw_watch(fake: &FakeKube) -> http::Response<hyper::body::Incoming> {
    let http = weft_tests::http_client();
    let rsp = http
        .request(
            http::Request::get(format!("{}/api/v1/pods?watch=1", fake.url()))
                .header("authorization", format!("Bearer {}", fake.client_token()))
                .body(http_body_util::Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), http::StatusCode::OK);
    assert_eq!(rsp.headers()["content-type"], "application/json");
    rsp
}

/// Reads `body` to its end: the lines, and whether it ended cleanly (last chunk received)
/// rather than by a cut connection.
async fn read_to_end(mut body: hyper::body::Incoming) -> (Vec<Value>, bool) {
    let mut text = Vec::new();
    for _ in 0..1000 {
        match timeout(WAIT, body.frame()).await.unwrap() {
            Some(Ok(frame)) => text.extend_from_slice(&frame.into_data().unwrap_or_default()),
            Some(Err(_)) => return (lines(&text), false),
            None => return (lines(&text), true),
        }
    }
    panic!("the watch never ended")
}

fn lines(text: &[u8]) -> Vec<Value> {
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

// On two threads: the cut must win over the queue closing wherever the tasks run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_are_cut_and_ended_watches_end_cleanly() {
    let fake = FakeKube::start().await;
    fake.apply(pod("a", "p1", None));
    let rsp = raw_watch(&fake).await;
    fake.drop_watches();
    let (events, clean) = read_to_end(rsp.into_body()).await;
    assert!(!clean, "a dropped watch ends without its last chunk");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["kind"], "Pod");
    assert_eq!(events[0]["object"]["apiVersion"], "v1");

    let rsp = raw_watch(&fake).await;
    timeout(WAIT, fake.watchers("/api/v1/pods", 1))
        .await
        .unwrap();
    fake.apply(pod("a", "p2", None));
    fake.end_watches();
    let (events, clean) = read_to_end(rsp.into_body()).await;
    assert!(clean, "an ended watch sends its last chunk");
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["object"]["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [("ADDED", "p1"), ("ADDED", "p2")]);
}

#[tokio::test]
async fn watches_get_bookmarks_streaming_lists_timeouts_and_410() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&fake, dir.path()).await;
    fake.apply(pod("a", "p1", None));
    let api: Api<Pod> = Api::all(client.clone());

    // From "0": the current objects as ADDED, then the changes; bookmarks only where asked.
    let with = api.watch(&WatchParams::default(), "0").await.unwrap();
    let without = api
        .watch(&WatchParams::default().disable_bookmarks(), "0")
        .await
        .unwrap();
    let (mut with, mut without) = (pin!(with), pin!(without));
    timeout(WAIT, fake.watchers("/api/v1/pods", 2))
        .await
        .unwrap();
    fake.bookmark();
    let rv = fake.apply(pod("a", "p2", None));
    for w in [&mut with, &mut without] {
        let ev = timeout(WAIT, w.next()).await.unwrap().unwrap().unwrap();
        assert!(
            matches!(&ev, WatchEvent::Added(p) if p.name_any() == "p1"),
            "{ev:?}"
        );
    }
    let ev = timeout(WAIT, with.next()).await.unwrap().unwrap().unwrap();
    let WatchEvent::Bookmark(bm) = ev else {
        panic!("expected a bookmark, got {ev:?}")
    };
    assert_eq!(
        (bm.types.kind.as_str(), bm.types.api_version.as_str()),
        ("Pod", "v1")
    );
    assert_eq!(
        bm.metadata.resource_version.parse::<u64>().unwrap() + 1,
        rv.parse::<u64>().unwrap()
    );
    for w in [&mut with, &mut without] {
        let ev = timeout(WAIT, w.next()).await.unwrap().unwrap().unwrap();
        assert!(
            matches!(&ev, WatchEvent::Added(p) if p.name_any() == "p2"),
            "{ev:?}"
        );
    }

    // From a resourceVersion: only what came after it.
    let from = api.watch(&WatchParams::default(), &rv).await.unwrap();
    let mut from = pin!(from);
    fake.delete("Pod", Some("a"), "p1");
    let ev = timeout(WAIT, from.next()).await.unwrap().unwrap().unwrap();
    let WatchEvent::Deleted(p) = ev else {
        panic!("expected Deleted, got {ev:?}")
    };
    assert_eq!(p.name_any(), "p1");
    assert!(p.resource_version().unwrap().parse::<u64>().unwrap() > rv.parse().unwrap());

    // A watch with timeoutSeconds ends cleanly.
    let short = api
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap();
    let mut short = pin!(short);
    let ev = timeout(WAIT, short.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(ev, WatchEvent::Deleted(_)));
    assert!(timeout(WAIT, short.next()).await.unwrap().is_none());

    // After compaction: the open watches get 410 and end; so does a new watch from before.
    fake.expire_watches();
    let ev = timeout(WAIT, from.next()).await.unwrap().unwrap().unwrap();
    assert!(
        matches!(&ev, WatchEvent::Error(s) if s.code == 410 && s.reason == "Expired"),
        "{ev:?}"
    );
    assert!(timeout(WAIT, from.next()).await.unwrap().is_none());
    let old = api.watch(&WatchParams::default(), &rv).await.unwrap();
    let mut old = pin!(old);
    let ev = timeout(WAIT, old.next()).await.unwrap().unwrap().unwrap();
    assert!(
        matches!(&ev, WatchEvent::Error(s) if s.code == 410),
        "{ev:?}"
    );
    assert!(timeout(WAIT, old.next()).await.unwrap().is_none());

    // The watcher's streaming list: initial events, then the bookmark that ends them.
    let cfg = watcher::Config::default().streaming_lists();
    let mut w = pin!(watcher(api, cfg));
    assert_eq!(init_phase(&mut w).await, ["a/p2"]);
    let (ev, ()) = tokio::join!(next_ok(&mut w), async {
        timeout(WAIT, fake.watchers("/api/v1/pods", 1))
            .await
            .unwrap();
        fake.apply(pod("a", "p3", None));
    });
    assert!(
        matches!(&ev, watcher::Event::Apply(p) if p.name_any() == "p3"),
        "{ev:?}"
    );
}

#[tokio::test]
async fn label_selected_watches_see_objects_enter_and_leave() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&fake, dir.path()).await;
    let api: Api<Pod> = Api::namespaced(client, "a");
    let w = api
        .watch(&WatchParams::default().labels("app=web"), "0")
        .await
        .unwrap();
    let mut w = pin!(w);
    fake.apply(pod("a", "p1", Some("db")));
    fake.apply(pod("a", "p1", Some("web")));
    fake.apply(pod("a", "p1", Some("web")));
    fake.apply(pod("a", "p1", None));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = timeout(WAIT, w.next()).await.unwrap().unwrap().unwrap();
        seen.push(match ev {
            WatchEvent::Added(p) => format!("ADDED {}", p.labels().get("app").unwrap()),
            WatchEvent::Modified(p) => format!("MODIFIED {}", p.labels().get("app").unwrap()),
            WatchEvent::Deleted(p) => format!("DELETED {}", p.labels().get("app").unwrap()),
            ev => panic!("unexpected {ev:?}"),
        });
    }
    assert_eq!(seen, ["ADDED web", "MODIFIED web", "DELETED web"]);
}

#[tokio::test]
async fn other_kinds_and_discovery() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&fake, dir.path()).await;
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": "a" }, "status": { "phase": "Active" },
    }));
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "api", "namespace": "a" },
        "spec": { "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }], "clusterIP": "10.96.0.10" },
    }));
    fake.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": "api-x1", "namespace": "a", "labels": { "kubernetes.io/service-name": "api" } },
        "addressType": "IPv4",
        "endpoints": [{ "addresses": ["10.0.0.1"], "conditions": { "ready": true } }],
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
    }));
    let ns: Api<Namespace> = Api::all(client.clone());
    let created = ns.get("a").await.unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let svc: Api<Service> = Api::namespaced(client.clone(), "a");
    assert_eq!(
        svc.get("api").await.unwrap().spec.unwrap().ports.unwrap()[0].port,
        80
    );
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=api"))
        .await
        .unwrap();
    assert_eq!(list.items[0].endpoints[0].addresses, ["10.0.0.1"]);
    // The UID stays through a replace; the resourceVersion moves on.
    let uid = created.metadata.uid.clone();
    fake.apply(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "a" } }));
    let replaced = ns.get("a").await.unwrap();
    assert_eq!(replaced.metadata.uid, uid);
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );

    let kube::Error::Api(status) = svc.get("nope").await.unwrap_err() else {
        panic!("not an API error")
    };
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, "services \"nope\" not found");

    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );
    assert_eq!(version.git_version, "v1.33.0");
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    for (group, kind) in [
        ("", "Pod"),
        ("", "Service"),
        ("", "Namespace"),
        ("discovery.k8s.io", "EndpointSlice"),
        ("authentication.k8s.io", "TokenReview"),
        ("", "ServiceAccount"),
        ("apps", "Deployment"),
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration",
        ),
        ("authorization.k8s.io", "SubjectAccessReview"),
    ] {
        let gvk = kube::api::GroupVersionKind::gvk(group, "v1", kind);
        assert!(
            discovery.resolve_gvk(&gvk).is_some(),
            "{gvk:?} is discovered"
        );
    }
}

#[tokio::test]
async fn access_reviews() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&fake, dir.path());
    let client = client.await;
    let user = "system:serviceaccount:weft:weft-control";
    fake.deny_access(user, "watch", "discovery.k8s.io", "endpointslices");
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let ask = |user: &str, verb: &str, group: &str, resource: &str| {
        let reviews = reviews.clone();
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.into()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        async move { reviews.create(&PostParams::default(), &review).await }
    };
    let denied = ask(user, "watch", "discovery.k8s.io", "endpointslices")
        .await
        .unwrap()
        .status
        .unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.reason.as_deref(), Some("no RBAC policy matched"));
    for (who, verb) in [(user, "list"), ("system:serviceaccount:a:b", "watch")] {
        let status = ask(who, verb, "discovery.k8s.io", "endpointslices")
            .await
            .unwrap()
            .status
            .unwrap();
        assert!(status.allowed, "{who} {verb}");
    }

    // A caller that may not create SubjectAccessReviews gets a 403 Status.
    fake.forbid_access_reviews(true);
    let kube::Error::Api(status) = ask(user, "list", "", "pods").await.unwrap_err() else {
        panic!("not an API error")
    };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "subjectaccessreviews.authorization.k8s.io is forbidden: User \"fake-admin\" cannot \
         create resource \"subjectaccessreviews\" in API group \"authorization.k8s.io\" at the \
         cluster scope"
    );
    fake.forbid_access_reviews(false);
    assert!(ask(user, "list", "", "pods").await.is_ok());

    // The new kinds are stored and served like the others.
    fake.apply(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"namespace": "weft", "name": "weft-control"},
        "spec": {"selector": {"matchLabels": {"app": "weft"}}, "template": {}},
        "status": {"readyReplicas": 1},
    }));
    let deployments: Api<Deployment> = Api::namespaced(client, "weft");
    let d = deployments.get("weft-control").await.unwrap();
    assert_eq!(d.status.unwrap().ready_replicas, Some(1));
}

#[tokio::test]
async fn token_review() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&fake, dir.path()).await;
    let sa = |expired| TokenInfo {
        username: "system:serviceaccount:a:web".into(),
        uid: "u-1".into(),
        audiences: vec!["weft".into(), "other".into()],
        extra: BTreeMap::from([(
            "authentication.kubernetes.io/pod-name".into(),
            vec!["web-1".into()],
        )]),
        expired,
    };
    fake.add_token("good", sa(false));
    fake.add_token("old", sa(true));
    let reviews: Api<TokenReview> = Api::all(client);
    let review = |token: &str, audiences: &[&str]| {
        let reviews = reviews.clone();
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.into()),
                audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            },
            ..Default::default()
        };
        async move {
            reviews
                .create(&PostParams::default(), &review)
                .await
                .unwrap()
                .status
                .unwrap()
        }
    };

    let ok = review("good", &["weft", "nope"]).await;
    assert_eq!(ok.authenticated, Some(true));
    assert_eq!(ok.audiences.as_deref(), Some(&["weft".to_string()][..]));
    assert_eq!(ok.error, None);
    let user = ok.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:a:web")
    );
    assert_eq!(user.uid.as_deref(), Some("u-1"));
    assert_eq!(
        user.groups.unwrap(),
        [
            "system:serviceaccounts",
            "system:serviceaccounts:a",
            "system:authenticated"
        ]
    );
    assert_eq!(
        user.extra.unwrap()["authentication.kubernetes.io/pod-name"],
        ["web-1"]
    );
    // No audiences asked: the token's.
    let any = review("good", &[]).await;
    assert_eq!(any.audiences.unwrap(), ["weft", "other"]);

    for (token, audiences, error) in [
        ("old", &["weft"][..], "expired"),
        ("good", &["kubernetes"][..], "audience"),
        ("unknown", &[][..], "invalid bearer token"),
    ] {
        let status = review(token, audiences).await;
        assert_ne!(status.authenticated, Some(true), "{token}");
        let message = status.error.unwrap();
        assert!(message.contains(error), "{token}: {message}");
    }
}

#[tokio::test]
async fn refuses_requests_without_the_token() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(fake.client_token(), "fake-admin-token");

    let http = weft_tests::http_client();
    let rsp = http
        .request(
            http::Request::get(format!("{}/api/v1/pods", fake.url()))
                .body(http_body_util::Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), http::StatusCode::UNAUTHORIZED);
    let body: Value =
        serde_json::from_slice(&rsp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Unauthorized");
    assert_eq!(body["code"], 401);

    // A wrong token through the client.
    let path = fake.kubeconfig(dir.path());
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(fake.client_token(), "wrong")).unwrap();
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&path).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::all(Client::try_from(config).unwrap());
    let kube::Error::Api(status) = pods.list(&ListParams::default()).await.unwrap_err() else {
        panic!("not an API error")
    };
    assert_eq!((status.code, status.reason.as_str()), (401, "Unauthorized"));

    // Unknown paths and writes, with the token.
    let client = client_for(&fake, dir.path()).await;
    for (method, path, code) in [
        ("GET", "/api/v1/widgets", 404),
        ("GET", "/apis/example.com/v1/things", 404),
        ("DELETE", "/api/v1/namespaces/a/pods/x", 405),
    ] {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(Vec::new())
            .unwrap();
        let kube::Error::Api(status) = client.request_text(req).await.unwrap_err() else {
            panic!("not an API error")
        };
        assert_eq!(status.code, code, "{method} {path}");
    }
    // A malformed body.
    let req = http::Request::post("/apis/authentication.k8s.io/v1/tokenreviews")
        .header("content-type", "application/json")
        .body(b"{not json".to_vec())
        .unwrap();
    let kube::Error::Api(status) = client.request_text(req).await.unwrap_err() else {
        panic!("not an API error")
    };
    assert_eq!((status.code, status.reason.as_str()), (400, "BadRequest"));
    let logged = fake.requests();
    assert!(
        logged
            .iter()
            .any(|r| r.method == "DELETE" && r.path == "/api/v1/namespaces/a/pods/x")
    );
}

/// The Gateway API's group.
const GATEWAY: &str = "gateway.networking.k8s.io";

/// The dynamic type of the Gateway API's `kind` (HTTPRoute, GRPCRoute).
fn route_type(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(GATEWAY, "v1", kind))
}

/// An HTTPRoute for Service `api`, to `api-v2` on `port`.
fn http_route(ns: &str, name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "api", "port": 80 }],
            "rules": [{ "backendRefs": [{ "name": "api-v2", "port": port }] }],
        },
    })
}

/// A route's status as a mesh controller writes it.
fn accepted(generation: i64) -> Value {
    json!({
        "parents": [{
            "parentRef": { "group": "", "kind": "Service", "name": "api", "port": 80 },
            "controllerName": "weft.dev/mesh",
            "conditions": [{
                "type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                "observedGeneration": generation,
                "lastTransitionTime": "2025-01-01T00:00:00Z",
            }],
        }],
    })
}

/// The API error of a failed call.
fn api_error<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn gateway_routes_with_status_subresource_and_generation() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&fake, dir.path()).await;
    let http = route_type("HTTPRoute");
    fake.apply(http_route("a", "web", 8080));
    fake.apply(http_route("b", "other", 8080));
    fake.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": { "name": "rpc", "namespace": "a" },
        "spec": { "rules": [{ "backendRefs": [{ "name": "api", "port": 9000 }] }] },
    }));

    // Listed across namespaces and in one, with generation 1 and a creationTimestamp.
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &http);
    let list = all.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        list.items
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>(),
        ["web", "other"]
    );
    for route in &list.items {
        assert_eq!(route.metadata.generation, Some(1));
        assert!(route.metadata.creation_timestamp.is_some());
        assert!(route.metadata.uid.is_some());
    }
    let in_a: Api<DynamicObject> = Api::namespaced_with(client.clone(), "a", &http);
    let list = in_a.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let spec = list.items[0].data["spec"].clone();
    let listed_rv = list.metadata.resource_version.unwrap();
    let w = in_a
        .watch(&WatchParams::default(), &listed_rv)
        .await
        .unwrap();
    let mut w = pin!(w);

    // A status PATCH: only `.status` changes, the generation stays, the watch sees it.
    let patch = json!({
        "status": accepted(1),
        "spec": { "rules": [] },
        "metadata": { "labels": { "sneaked": "in" } },
    });
    let patched = in_a
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(patched.data["status"], accepted(1));
    assert_eq!(patched.data["spec"], spec);
    assert!(patched.labels().is_empty());
    assert_eq!(patched.metadata.generation, Some(1));
    let patched_rv: u64 = patched.resource_version().unwrap().parse().unwrap();
    assert!(patched_rv > listed_rv.parse().unwrap());
    let ev = timeout(WAIT, w.next()).await.unwrap().unwrap().unwrap();
    let WatchEvent::Modified(seen) = ev else {
        panic!("expected Modified, got {ev:?}")
    };
    assert_eq!(seen.data["status"], accepted(1));
    assert_eq!(seen.metadata.generation, Some(1));
    assert_eq!(seen.resource_version(), patched.resource_version());
    assert_eq!(fake.status_patches(), 1);

    // The same status again is accepted but writes nothing: no new resourceVersion, no event
    // (the next event is the apply's below).
    let again = in_a
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": accepted(1) })),
        )
        .await
        .unwrap();
    assert_eq!(again.resource_version(), patched.resource_version());
    assert_eq!(fake.status_patches(), 2);

    // A spec change through apply makes a new generation, and keeps the status.
    fake.apply(http_route("a", "web", 9090));
    let ev = timeout(WAIT, w.next()).await.unwrap().unwrap().unwrap();
    let WatchEvent::Modified(seen) = ev else {
        panic!("expected Modified, got {ev:?}")
    };
    assert_eq!(seen.metadata.generation, Some(2));
    assert_eq!(
        seen.data["spec"]["rules"][0]["backendRefs"][0]["port"],
        9090
    );
    assert_eq!(seen.data["status"], accepted(1));
    assert_eq!(
        seen.metadata.creation_timestamp,
        patched.metadata.creation_timestamp
    );
    // A change of metadata alone does not.
    let mut labelled = http_route("a", "web", 9090);
    labelled["metadata"]["labels"] = json!({ "team": "a" });
    fake.apply(labelled);
    let stored = fake.get("HTTPRoute", Some("a"), "web").unwrap();
    assert_eq!(stored["metadata"]["generation"], 2);
    assert_eq!(stored["metadata"]["labels"]["team"], "a");
    let got = in_a.get_status("web").await.unwrap();
    assert_eq!(got.metadata.generation, Some(2));
    assert_eq!(got.data["status"], accepted(1));

    // A resourceVersion precondition: a stale one conflicts, the current one passes.
    let stale = json!({ "metadata": { "resourceVersion": listed_rv }, "status": accepted(2) });
    let status = api_error(
        in_a.patch_status("web", &PatchParams::default(), &Patch::Merge(&stale))
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    let current = got.resource_version().unwrap();
    let fresh = json!({ "metadata": { "resourceVersion": current }, "status": accepted(2) });
    let updated = in_a
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&fresh))
        .await
        .unwrap();
    assert_eq!(updated.data["status"], accepted(2));
    assert_eq!(updated.metadata.generation, Some(2));

    // A missing route.
    let status = api_error(
        in_a.patch_status(
            "nope",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": accepted(1) })),
        )
        .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        status.message,
        "httproutes.gateway.networking.k8s.io \"nope\" not found"
    );

    // Server-side apply of a GRPCRoute's status, merged into `.status`.
    let grpc: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "a", &route_type("GRPCRoute"));
    let applied = grpc
        .patch_status(
            "rpc",
            &PatchParams::apply("weft-test"),
            &Patch::Apply(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
                "status": accepted(1),
            })),
        )
        .await
        .unwrap();
    assert_eq!(applied.data["status"], accepted(1));
    assert_eq!(applied.metadata.generation, Some(1));
    assert_eq!(fake.status_patches(), 4);

    // Other media types, an apply without a field manager, and every other write.
    let web = "/apis/gateway.networking.k8s.io/v1/namespaces/a/httproutes/web";
    for (method, path, content_type, code, reason) in [
        (
            "PATCH",
            format!("{web}/status"),
            "application/json-patch+json",
            415,
            "UnsupportedMediaType",
        ),
        (
            "PATCH",
            format!("{web}/status"),
            "application/apply-patch+yaml",
            422,
            "Invalid",
        ),
        (
            "PATCH",
            web.to_owned(),
            "application/merge-patch+json",
            405,
            "MethodNotAllowed",
        ),
        (
            "PUT",
            format!("{web}/status"),
            "application/json",
            405,
            "MethodNotAllowed",
        ),
        (
            "DELETE",
            web.to_owned(),
            "application/json",
            405,
            "MethodNotAllowed",
        ),
    ] {
        let req = http::Request::builder()
            .method(method)
            .uri(&path)
            .header("content-type", content_type)
            .body(br#"{"status":{}}"#.to_vec())
            .unwrap();
        let status = api_error(client.request_text(req).await);
        assert_eq!(
            (status.code, status.reason.as_str()),
            (code, reason),
            "{method} {path} ({content_type})"
        );
    }
    assert_eq!(fake.status_patches(), 4);
    let patches = fake
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path == format!("{web}/status"))
        .count();
    assert_eq!(patches, 6, "{:?}", fake.requests());

    // Discovery: the group, its version's resources with their status subresources.
    let resources = client
        .list_api_group_resources("gateway.networking.k8s.io/v1")
        .await
        .unwrap();
    let names: Vec<&str> = resources
        .resources
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "httproutes",
            "httproutes/status",
            "grpcroutes",
            "grpcroutes/status"
        ]
    );
    let crd_verbs = [
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "create",
        "update",
        "watch",
    ];
    for r in &resources.resources {
        if r.name.ends_with("/status") {
            assert_eq!(r.verbs, ["get", "patch", "update"], "{}", r.name);
        } else {
            assert_eq!(r.verbs, crd_verbs, "{}", r.name);
            assert_eq!(
                r.categories.as_deref(),
                Some(&["gateway-api".to_owned()][..])
            );
            assert!(r.storage_version_hash.is_some(), "{}", r.name);
        }
        assert!(r.namespaced, "{}", r.name);
    }
    let groups = client.list_api_groups().await.unwrap();
    let group = groups.groups.iter().find(|g| g.name == GATEWAY).unwrap();
    assert_eq!(
        group.preferred_version.as_ref().unwrap().group_version,
        "gateway.networking.k8s.io/v1"
    );
    let req = http::Request::get("/apis/gateway.networking.k8s.io")
        .body(Vec::new())
        .unwrap();
    let doc: Value = serde_json::from_str(&client.request_text(req).await.unwrap()).unwrap();
    assert_eq!(
        (doc["kind"].as_str(), doc["name"].as_str()),
        (Some("APIGroup"), Some(GATEWAY))
    );
    let discovery = kube::Discovery::new(client).run().await.unwrap();
    for kind in ["HTTPRoute", "GRPCRoute"] {
        let gvk = GroupVersionKind::gvk(GATEWAY, "v1", kind);
        let (ar, caps) = discovery.resolve_gvk(&gvk).unwrap();
        assert_eq!(ar.plural, format!("{}s", kind.to_lowercase()));
        assert!(caps.supports_operation(kube::discovery::verbs::WATCH));
    }
}

#[tokio::test]
async fn gateway_api_uninstalled_is_not_found() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&fake, dir.path()).await;
    let http = route_type("HTTPRoute");
    fake.apply(http_route("a", "web", 8080));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "a", &http);
    let list = api.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let w = api.watch(&WatchParams::default(), &rv).await.unwrap();
    let mut w = pin!(w);
    timeout(
        WAIT,
        fake.watchers(
            "/apis/gateway.networking.k8s.io/v1/namespaces/a/httproutes",
            1,
        ),
    )
    .await
    .unwrap();

    // Uninstalled: the open watch ends cleanly; everything under the group is 404.
    fake.set_gateway_api(false);
    assert!(timeout(WAIT, w.next()).await.unwrap().is_none());
    let status = api_error(api.list(&ListParams::default()).await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &http);
    let status = api_error(all.list(&ListParams::default()).await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    let status = api_error(
        api.patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": accepted(1) })),
        )
        .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    for path in [
        "/apis/gateway.networking.k8s.io",
        "/apis/gateway.networking.k8s.io/v1",
    ] {
        let req = http::Request::get(path).body(Vec::new()).unwrap();
        let status = api_error(client.request_text(req).await);
        assert_eq!(
            (status.code, status.reason.as_str()),
            (404, "NotFound"),
            "{path}"
        );
    }
    let groups = client.list_api_groups().await.unwrap();
    assert!(groups.groups.iter().all(|g| g.name != GATEWAY));
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(!discovery.has_group(GATEWAY));
    assert!(discovery.has_group("apps"));
    assert_eq!(fake.status_patches(), 0);

    // Reinstalled: the route shows again.
    fake.set_gateway_api(true);
    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items[0].name_any(), "web");
    let discovery = kube::Discovery::new(client).run().await.unwrap();
    assert!(discovery.has_group(GATEWAY));
}

/// Weft's own group.
const WEFT: &str = "weft.dev";

/// The dynamic type of Weft's `kind` (AuthorizationPolicy, RateLimitPolicy) of `plural`.
fn weft_type(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(WEFT, "v1alpha1", kind), plural)
}

/// An AuthorizationPolicy allowing `from` to reach Service `api`.
fn authorization_policy(ns: &str, name: &str, from: &str) -> Value {
    json!({
        "apiVersion": "weft.dev/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "service": "api", "action": "allow", "from": [from] },
    })
}

/// A policy's status as the adapter writes it.
fn policy_accepted(generation: i64) -> Value {
    json!({
        "conditions": [{
            "type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
            "observedGeneration": generation,
            "lastTransitionTime": "2025-01-01T00:00:00Z",
        }],
    })
}

#[tokio::test]
async fn weft_policies_at_v1alpha1_with_status_and_the_switch_that_uninstalls_them() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&fake, dir.path()).await;
    let authz = weft_type("AuthorizationPolicy", "authorizationpolicies");

    // Discovery: the group at v1alpha1 only, both kinds with their status subresources.
    let groups = client.list_api_groups().await.unwrap();
    let group = groups.groups.iter().find(|g| g.name == WEFT).unwrap();
    let versions: Vec<&str> = group
        .versions
        .iter()
        .map(|v| v.group_version.as_str())
        .collect();
    assert_eq!(versions, ["weft.dev/v1alpha1"]);
    assert_eq!(
        group.preferred_version.as_ref().unwrap().version,
        "v1alpha1"
    );
    let resources = client
        .list_api_group_resources("weft.dev/v1alpha1")
        .await
        .unwrap();
    assert_eq!(resources.group_version, "weft.dev/v1alpha1");
    let names: Vec<&str> = resources
        .resources
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "authorizationpolicies",
            "authorizationpolicies/status",
            "ratelimitpolicies",
            "ratelimitpolicies/status",
            "backendpolicies",
            "backendpolicies/status",
            "routepolicies",
            "routepolicies/status"
        ]
    );
    for r in &resources.resources {
        assert!(r.namespaced, "{}", r.name);
        if r.name.ends_with("/status") {
            assert_eq!(r.verbs, ["get", "patch", "update"], "{}", r.name);
        } else {
            assert!(r.verbs.iter().any(|v| v == "watch"), "{}", r.name);
            assert_eq!(r.categories.as_deref(), Some(&["weft".to_owned()][..]));
            assert!(r.storage_version_hash.is_some(), "{}", r.name);
        }
    }
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    for (kind, plural, singular) in [
        (
            "AuthorizationPolicy",
            "authorizationpolicies",
            "authorizationpolicy",
        ),
        ("RateLimitPolicy", "ratelimitpolicies", "ratelimitpolicy"),
    ] {
        let gvk = GroupVersionKind::gvk(WEFT, "v1alpha1", kind);
        let (ar, caps) = discovery.resolve_gvk(&gvk).unwrap();
        assert_eq!(
            (ar.plural.as_str(), ar.api_version.as_str()),
            (plural, "weft.dev/v1alpha1")
        );
        assert!(caps.supports_operation(kube::discovery::verbs::WATCH));
        assert!(
            discovery
                .resolve_gvk(&GroupVersionKind::gvk(WEFT, "v1", kind))
                .is_none()
        );
        let entry = resources.resources.iter().find(|r| r.kind == kind).unwrap();
        assert_eq!(entry.singular_name, singular);
    }
    // Another version of the group is no path at all.
    for path in [
        "/apis/weft.dev/v1",
        "/apis/weft.dev/v1/namespaces/a/authorizationpolicies",
        "/apis/weft.dev/v1beta1/namespaces/a/ratelimitpolicies",
    ] {
        let req = http::Request::get(path).body(Vec::new()).unwrap();
        let status = api_error(client.request_text(req).await);
        assert_eq!(
            (status.code, status.reason.as_str()),
            (404, "NotFound"),
            "{path}"
        );
    }

    // The runtime watcher lists, then watches, and sees an applied policy, at v1alpha1.
    let in_a: Api<DynamicObject> = Api::namespaced_with(client.clone(), "a", &authz);
    let w = watcher(in_a.clone(), watcher::Config::default());
    let mut w = pin!(w);
    assert!(matches!(next_ok(&mut w).await, watcher::Event::Init));
    assert!(matches!(next_ok(&mut w).await, watcher::Event::InitDone));
    // Applied after the list: the watch (from the list's resourceVersion) brings it.
    fake.apply(authorization_policy(
        "a",
        "web",
        "spiffe://cluster.local/ns/a/sa/web",
    ));
    let watcher::Event::Apply(seen) = next_ok(&mut w).await else {
        panic!("expected the applied policy")
    };
    assert_eq!(seen.name_any(), "web");
    assert_eq!(seen.metadata.generation, Some(1));
    let path = "/apis/weft.dev/v1alpha1/namespaces/a/authorizationpolicies";
    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path == path && !r.query.contains("watch=true"))
            && requests
                .iter()
                .any(|r| r.path == path && r.query.contains("watch=true")),
        "a list and a watch: {requests:?}"
    );
    assert_eq!(
        seen.types.as_ref().map(|t| t.api_version.as_str()),
        Some("weft.dev/v1alpha1")
    );
    let list = in_a.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        (list.types.api_version.as_str(), list.types.kind.as_str()),
        ("weft.dev/v1alpha1", "AuthorizationPolicyList")
    );
    assert_eq!(list.items.len(), 1);
    let spec = list.items[0].data["spec"].clone();
    assert_eq!(
        fake.get("AuthorizationPolicy", Some("a"), "web").unwrap()["apiVersion"],
        "weft.dev/v1alpha1"
    );

    // A status merge PATCH changes only the status and keeps the generation; the watcher
    // sees it.
    let patch = json!({
        "status": policy_accepted(1),
        "spec": { "service": "other" },
        "metadata": { "labels": { "sneaked": "in" } },
    });
    let patched = in_a
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(patched.data["status"], policy_accepted(1));
    assert_eq!(patched.data["spec"], spec);
    assert!(patched.labels().is_empty());
    assert_eq!(patched.metadata.generation, Some(1));
    let watcher::Event::Apply(seen) = next_ok(&mut w).await else {
        panic!("expected the patched policy")
    };
    assert_eq!(seen.data["status"], policy_accepted(1));
    assert_eq!(seen.resource_version(), patched.resource_version());
    assert_eq!(fake.status_patches(), 1);
    // A server-side apply patch names the group's version.
    let applied = in_a
        .patch_status(
            "web",
            &PatchParams::apply("weft-test"),
            &Patch::Apply(json!({
                "apiVersion": "weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
                "status": policy_accepted(1),
            })),
        )
        .await
        .unwrap();
    assert_eq!(applied.resource_version(), patched.resource_version());
    assert_eq!(fake.status_patches(), 2);

    // A spec change makes a new generation and keeps the status.
    fake.apply(authorization_policy(
        "a",
        "web",
        "spiffe://cluster.local/ns/b/sa/*",
    ));
    let watcher::Event::Apply(seen) = next_ok(&mut w).await else {
        panic!("expected the changed policy")
    };
    assert_eq!(seen.metadata.generation, Some(2));
    assert_eq!(
        seen.data["spec"]["from"][0],
        "spiffe://cluster.local/ns/b/sa/*"
    );
    assert_eq!(seen.data["status"], policy_accepted(1));
    let got = in_a.get_status("web").await.unwrap();
    assert_eq!(got.metadata.generation, Some(2));

    // A RateLimitPolicy is served the same way.
    fake.apply(json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "RateLimitPolicy",
        "metadata": { "name": "api", "namespace": "a" },
        "spec": { "service": "api", "requestsPerSecond": 100 },
    }));
    let limits: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "a",
        &weft_type("RateLimitPolicy", "ratelimitpolicies"),
    );
    let limit = limits.get("api").await.unwrap();
    assert_eq!(limit.metadata.generation, Some(1));
    let status = api_error(
        limits
            .patch_status(
                "nope",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": policy_accepted(1) })),
            )
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        status.message,
        "ratelimitpolicies.weft.dev \"nope\" not found"
    );

    // Uninstalled: the watch ends cleanly (the watcher's next step is to watch again, which
    // is refused, where a cut stream would fail first), the group is gone from discovery,
    // and everything under it is 404; the Gateway API stays.
    fake.set_weft_crds(false);
    match next(&mut w).await {
        Err(watcher::Error::WatchStartFailed(kube::Error::Api(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
        }
        other => panic!("expected the watch to end and not start again, got {other:?}"),
    }
    let status = api_error(in_a.list(&ListParams::default()).await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    let status = api_error(in_a.get("web").await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    let status = api_error(
        in_a.patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": policy_accepted(2) })),
        )
        .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    for path in ["/apis/weft.dev", "/apis/weft.dev/v1alpha1"] {
        let req = http::Request::get(path).body(Vec::new()).unwrap();
        let status = api_error(client.request_text(req).await);
        assert_eq!(
            (status.code, status.reason.as_str()),
            (404, "NotFound"),
            "{path}"
        );
    }
    let groups = client.list_api_groups().await.unwrap();
    assert!(groups.groups.iter().all(|g| g.name != WEFT));
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(!discovery.has_group(WEFT));
    assert!(discovery.has_group(GATEWAY));
    assert_eq!(fake.status_patches(), 2);
    // Stored all the same.
    assert!(fake.get("AuthorizationPolicy", Some("a"), "web").is_some());

    // Reinstalled: the policy shows again, status and generation as they were, and the
    // watcher resumes and sees the next change.
    fake.set_weft_crds(true);
    let list = in_a.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].name_any(), "web");
    assert_eq!(list.items[0].metadata.generation, Some(2));
    assert_eq!(list.items[0].data["status"], policy_accepted(1));
    fake.apply(authorization_policy(
        "a",
        "web",
        "spiffe://cluster.local/ns/c/sa/*",
    ));
    let watcher::Event::Apply(seen) = next_ok(&mut w).await else {
        panic!("expected the policy changed after the reinstall")
    };
    assert_eq!(seen.metadata.generation, Some(3));
    let discovery = kube::Discovery::new(client).run().await.unwrap();
    assert!(discovery.has_group(WEFT));
}

/// An echo server on loopback that answers each line it reads with `tag` and the line.
async fn echo(tag: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                let mut lines = tokio::io::BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let answer = format!("{tag}:{line}\n");
                    if write.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn port_forward_relays_each_port_and_reports_errors_on_its_channel() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&fake, dir.path()).await;
    let pods: Api<Pod> = Api::namespaced(client, "ns");
    let mut scheduled = pod("ns", "p", None);
    scheduled["spec"]["nodeName"] = json!("node-1");
    fake.apply(scheduled);
    fake.apply(pod("ns", "pending", None));
    fake.set_pod_port("ns", "p", 80, echo("eighty").await);
    fake.set_pod_port("ns", "p", 81, echo("eighty-one").await);

    // Two ports over one WebSocket, each with its own bytes.
    let mut forward = timeout(WAIT, pods.portforward("p", &[80, 81]))
        .await
        .unwrap()
        .unwrap();
    for (port, tag) in [(80, "eighty"), (81, "eighty-one")] {
        let io = forward.take_stream(port).unwrap();
        let (read, mut write) = tokio::io::split(io);
        let mut lines = tokio::io::BufReader::new(read).lines();
        for n in 0..3 {
            write
                .write_all(format!("hello {n}\n").as_bytes())
                .await
                .unwrap();
            let line = timeout(WAIT, lines.next_line()).await.unwrap().unwrap();
            assert_eq!(line.as_deref(), Some(format!("{tag}:hello {n}").as_str()));
        }
        // A large write arrives whole, in the server's chunks.
        let big = "x".repeat(100_000);
        write
            .write_all(format!("{big}\n").as_bytes())
            .await
            .unwrap();
        let line = timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(line.len(), tag.len() + 1 + big.len());
    }
    // Every stream taken and dropped: the forward closes.
    timeout(WAIT, forward.join()).await.unwrap().unwrap();

    // A port nothing listens on: its error channel says so.
    let mut forward = pods.portforward("p", &[82]).await.unwrap();
    let error = forward.take_error(82).unwrap();
    let reason = timeout(WAIT, error).await.unwrap().unwrap();
    assert!(
        reason.contains("error forwarding port 82 to pod ns/p")
            && reason.contains("connection refused"),
        "{reason}"
    );

    // A pod that does not exist, one not scheduled: as the API server answers.
    let status = |e: kube::Error| match e {
        kube::Error::Api(s) => (s.code, s.message),
        other => panic!("{other}"),
    };
    let (code, _) = status(pods.portforward("absent", &[80]).await.err().unwrap());
    assert_eq!(code, 404);
    let (code, msg) = status(pods.portforward("pending", &[80]).await.err().unwrap());
    assert_eq!(code, 400);
    assert!(msg.contains("does not have a host assigned"), "{msg}");

    // Without the permission: 403, before anything else is looked at.
    fake.deny_access(
        weft_tests::fake_kube::ADMIN_USER,
        "get",
        "",
        "pods/portforward",
    );
    let (code, msg) = status(pods.portforward("absent", &[80]).await.err().unwrap());
    assert_eq!(code, 403);
    assert!(msg.contains("pods/portforward"), "{msg}");
}
