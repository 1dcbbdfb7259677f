//! The Gateway API mesh conformance suite (GAMMA, `conformance/tests/mesh/` of
//! kubernetes-sigs/gateway-api), test for test, in our own lab: the routes are served by the
//! fake Kubernetes API server, the pods are network namespaces with intercepting proxies, and
//! the clients know nothing of the mesh. Each test is written from what the upstream test
//! publishes (its routes and the responses it expects), and asserts more where upstream
//! stops: the path and headers the backend received, the whole `Location` of a redirect,
//! 404 when no rule matches, and that the route's own metrics counted the calls.
//!
//! The lab mirrors upstream's: namespace `gamma` holds pods echo-v1 and echo-v2 and the
//! Services echo-v1, echo-v2 and echo (both pods), each with ports http (80 -> 8080),
//! http-alt (8080) and grpc (7070); namespace `gamma-consumer` holds a client pod. As
//! upstream, the calls come from the echo-v1 pod (so a call to `echo` may come back to the
//! caller's own pod), except where a test says otherwise. Upstream waits until an expected
//! response shows up; these tests first wait until the proxy's route metrics show the routes
//! in force and then check every case once, so a case that passes only by chance fails.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::HashMap;
use std::net::SocketAddr;

use serde_json::{Value, json};
use weft_tests::backends;
use weft_tests::fake_kube::FakeKube;
use weft_tests::kube_objects::{self as k8s, Condition, SliceEndpoint, SvcPort};
use weft_tests::mesh_lab::{self, LabPod};
use weft_tests::netns::{Lab, NsRuntime, lab_or_skip};

/// The producer namespace (upstream's `gateway-conformance-mesh`).
const NS: &str = "gamma";
/// The consumer namespace (upstream's `gateway-conformance-mesh-consumer`).
const CONSUMER_NS: &str = "gamma-consumer";
/// Host of pod echo-v1, the client of most tests.
const V1: usize = 0;
/// Host of pod echo-v2.
const V2: usize = 1;
/// Host of the consumer namespace's client pod.
const CONSUMER: usize = 2;
/// The ClusterIPs of Services echo-v1, echo-v2 and echo.
const V1_IP: &str = "10.96.1.1";
const V2_IP: &str = "10.96.1.2";
const ECHO_IP: &str = "10.96.1.3";

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// The three Services' ports, and an EndpointSlice's view of them.
fn echo_ports() -> Vec<SvcPort> {
    let mut http = SvcPort::new("http", 80);
    http.target = json!(8080);
    vec![
        http,
        SvcPort::new("http-alt", 8080),
        SvcPort::new("grpc", 7070),
    ]
}
const SLICE_PORTS: [(&str, u16); 3] = [("http", 8080), ("http-alt", 8080), ("grpc", 7070)];

fn objects(fake: &FakeKube) {
    fake.apply(k8s::namespace(NS, Some("enabled")));
    fake.apply(k8s::namespace(CONSUMER_NS, Some("enabled")));
    fake.apply(k8s::pod(NS, "echo-v1", "echo-v1", true, Lab::addr(V1)));
    fake.apply(k8s::pod(NS, "echo-v2", "echo-v2", true, Lab::addr(V2)));
    fake.apply(k8s::pod(
        CONSUMER_NS,
        "consumer",
        "consumer",
        true,
        Lab::addr(CONSUMER),
    ));
    let endpoint = |pod: &str, host: usize| SliceEndpoint {
        pod: Some(pod.into()),
        ip: Lab::addr(host),
        condition: Condition::Ready,
    };
    let v1 = endpoint("echo-v1", V1);
    let v2 = endpoint("echo-v2", V2);
    for (name, ip, endpoints) in [
        ("echo-v1", V1_IP, vec![v1.clone()]),
        ("echo-v2", V2_IP, vec![v2.clone()]),
        ("echo", ECHO_IP, vec![v1, v2]),
    ] {
        fake.apply(k8s::service(
            NS,
            name,
            Some(ip.parse().unwrap()),
            &echo_ports(),
        ));
        let slice = format!("{name}-1");
        fake.apply(k8s::slice(NS, &slice, name, &SLICE_PORTS, &endpoints));
    }
}

/// The lab, running.
struct Gamma {
    dir: tempfile::TempDir,
    rts: Vec<NsRuntime>,
    fake: FakeKube,
    lab: Lab,
    _proxies: Vec<tokio::process::Child>,
    _hub: NsRuntime,
}

async fn gamma() -> Option<Gamma> {
    let lab = lab_or_skip(3)?;
    let dir = mesh_lab::lab_dir();
    let hub = lab.hub.runtime();
    let fake = hub.run(FakeKube::start()).await;
    objects(&fake);
    let config_path = dir.path().join("mesh.toml");
    let config = mesh_lab::lab_sections(dir.path())
        + &format!(
            "\n[platforms.kubernetes]\nkubeconfig = \"{}\"\nnamespaces = [\"{NS}\", \"{CONSUMER_NS}\"]\n",
            fake.kubeconfig(dir.path()).display()
        );
    std::fs::write(&config_path, config).unwrap();
    let bundle = mesh_lab::start_control(&hub, dir.path(), &config_path).await;
    let rts: Vec<NsRuntime> = lab.hosts.iter().map(|h| h.runtime()).collect();
    for (host, name) in [(V1, "echo-v1"), (V2, "echo-v2")] {
        rts[host]
            .run(async move {
                backends::http_echo_at(name, any(8080)).await;
                backends::grpc_named_at(name, any(7070)).await;
            })
            .await;
    }
    let mut proxies = Vec::new();
    for (host, name, namespace) in [
        (V1, "echo-v1", NS),
        (V2, "echo-v2", NS),
        (CONSUMER, "consumer", CONSUMER_NS),
    ] {
        let pod = LabPod {
            name,
            namespace,
            init_flags: &[],
        };
        let ns = &lab.hosts[host];
        proxies.push(mesh_lab::start_proxy(ns, dir.path(), &bundle, pod, Some(&fake)).await);
    }
    let g = Gamma {
        dir,
        rts,
        fake,
        lab,
        _proxies: proxies,
        _hub: hub,
    };
    for rt in &g.rts {
        mesh_lab::wait_ready(rt, || g.logs()).await;
    }
    Some(g)
}

/// One HTTP response as curl printed it, and what the echo backend said it received.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Response headers, names lowercase.
    headers: Vec<(String, String)>,
    /// The request line the backend received (`GET /path HTTP/1.1`); empty when no backend
    /// answered.
    request_line: String,
    /// The request headers the backend received, names lowercase.
    received: Vec<(String, String)>,
    raw: String,
}

/// The values of header `name` in `headers`, joined with `,` as HTTP allows; `None` when absent.
fn joined(headers: &[(String, String)], name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    let values: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn header_lines(lines: &[&str]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

impl Reply {
    fn parse(raw: String) -> Self {
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = header_lines(&lines.collect::<Vec<_>>());
        let backend_answered = joined(&headers, "x-backend").is_some();
        let mut body = body.lines();
        let (request_line, received) = if backend_answered {
            let line = body.next().unwrap_or_default().to_string();
            let received: Vec<&str> = body.take_while(|l| !l.is_empty()).collect();
            (line, header_lines(&received))
        } else {
            (String::new(), Vec::new())
        };
        Self {
            status,
            headers,
            request_line,
            received,
            raw,
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        joined(&self.headers, name)
    }

    fn received(&self, name: &str) -> Option<String> {
        joined(&self.received, name)
    }

    /// Which echo backend answered.
    fn backend(&self) -> Option<String> {
        self.header("x-backend")
    }

    /// The path and query the backend received.
    fn received_path(&self) -> &str {
        self.request_line.split_whitespace().nth(1).unwrap_or("")
    }
}

impl Gamma {
    fn logs(&self) -> String {
        ["echo-v1", "echo-v2", "consumer"]
            .iter()
            .map(|n| format!("--- {n}:\n{}", mesh_lab::proxy_log(self.dir.path(), n)))
            .collect()
    }

    /// A route of `kind` in `ns` named `name` with `spec`.
    fn apply(&self, kind: &str, ns: &str, name: &str, spec: Value) {
        self.fake.apply(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": kind,
            "metadata": {"namespace": ns, "name": name},
            "spec": spec,
        }));
    }

    /// An HTTPRoute in the producer namespace.
    fn http_route(&self, name: &str, spec: Value) {
        self.apply("HTTPRoute", NS, name, spec);
    }

    /// curl from host `host` with `args` (headers, then the URL).
    async fn call(&self, host: usize, args: &[&str]) -> Reply {
        let raw = mesh_lab::curl(&self.lab.hosts[host], args, false)
            .await
            .unwrap_or_else(|e| panic!("{args:?} from host {host}: {e}\n{}", self.logs()));
        Reply::parse(raw)
    }

    /// GET `url` from the echo-v1 pod with the request headers `headers` ("Name: value").
    async fn get(&self, url: &str, headers: &[&str]) -> Reply {
        let mut args = Vec::new();
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(url);
        self.call(V1, &args).await
    }

    /// The route metrics of host `host`'s proxy.
    async fn route_requests(&self, host: usize, route: &str, rule: Option<&str>) -> f64 {
        let text = mesh_lab::admin(&self.rts[host], "/metrics")
            .await
            .unwrap()
            .1;
        let route = format!("route=\"{route}\"");
        let rule = rule.map(|r| format!("rule=\"{r}\""));
        let mut labels = vec![route.as_str()];
        labels.extend(rule.as_deref());
        weft_tests::metric(&text, "weft_route_requests_total", &labels)
    }

    /// Waits (bounded) until a call from `host` with curl `args` goes through route
    /// `namespace/name`: its metrics count the call. The route is then in force in that proxy
    /// for that service port.
    async fn settle(&self, host: usize, route: &str, args: &[&str]) {
        self.settle_by(host, route, || async { self.call(host, args).await.raw })
            .await;
    }

    /// [`Gamma::settle`] for a gRPC route on echo:7070, called from echo-v1 with `metadata`.
    async fn settle_grpc(&self, route: &str, metadata: &'static [(&'static str, &'static str)]) {
        self.settle_by(V1, route, || async {
            let call = mesh_lab::grpc_calls(&self.rts[V1], GRPC_URL.into(), b"x", metadata, 1);
            format!("{:?}", call.await)
        })
        .await;
    }

    /// Waits (bounded) until `call` from `host` counts in the metrics of `route`.
    async fn settle_by<F>(&self, host: usize, route: &str, call: impl Fn() -> F)
    where
        F: Future<Output = String>,
    {
        let settled = mesh_lab::eventually(|| async {
            let before = self.route_requests(host, route, None).await;
            let reply = call().await;
            let after = self.route_requests(host, route, None).await;
            if after > before {
                Ok(())
            } else {
                Err(format!("{route} not in force; last reply:\n{reply}"))
            }
        })
        .await;
        if let Err(e) = settled {
            panic!("{e}\n{}", self.logs());
        }
    }

    /// Asserts the route's status says Accepted and ResolvedRefs as `resolved`.
    fn assert_status(&self, kind: &str, ns: &str, name: &str, resolved: bool) {
        let route = self.fake.get(kind, Some(ns), name).unwrap();
        let parents = route["status"]["parents"].as_array().unwrap();
        assert!(!parents.is_empty(), "{route}");
        for parent in parents {
            let cond = |t: &str| {
                parent["conditions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["type"] == t)
                    .map(|c| c["status"].clone())
            };
            assert_eq!(cond("Accepted"), Some(json!("True")), "{route}");
            let want = if resolved { "True" } else { "False" };
            assert_eq!(cond("ResolvedRefs"), Some(json!(want)), "{route}");
        }
    }
}

fn url(ip: &str, path: &str) -> String {
    format!("http://{ip}{path}")
}

fn backend_ref(name: &str, port: u16) -> Value {
    json!({"name": name, "port": port})
}

fn parent(service: &str, port: Option<u16>) -> Value {
    let mut p = json!({"group": "", "kind": "Service", "name": service});
    if let Some(port) = port {
        p["port"] = json!(port);
    }
    p
}

fn path_prefix(value: &str) -> Value {
    json!({"type": "PathPrefix", "value": value})
}

/// Expects `reply` to come from `backend` with the request line `GET <path> HTTP/1.1`.
#[track_caller]
fn assert_served(reply: &Reply, backend: &str, path: &str) {
    assert_eq!(reply.status, 200, "{}", reply.raw);
    assert_eq!(reply.backend().as_deref(), Some(backend), "{}", reply.raw);
    assert_eq!(reply.received_path(), path, "{}", reply.raw);
}

#[track_caller]
fn assert_not_found(reply: &Reply) {
    assert_eq!(reply.status, 404, "{}", reply.raw);
    assert_eq!(reply.backend(), None, "no backend answers: {}", reply.raw);
}

// === MeshBasic ===

/// MeshBasic: with no route at all, a call to Service echo reaches one of its pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_basic() {
    let Some(g) = gamma().await else { return };
    let mut seen = Vec::new();
    // Both pods answer (the caller's own among them); bounded.
    for _ in 0..64 {
        let reply = g.get(&url(ECHO_IP, "/"), &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.raw);
        assert_eq!(reply.received_path(), "/", "{}", reply.raw);
        let b = reply.backend().unwrap();
        if !seen.contains(&b) {
            seen.push(b);
        }
        if seen.len() == 2 {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, ["echo-v1", "echo-v2"]);
}

// === MeshConsumerRoute, MeshFrontend, MeshFrontendHostname, MeshPorts ===

fn set_response_header(value: &str) -> Value {
    json!([{"type": "ResponseHeaderModifier",
            "responseHeaderModifier": {"set": [{"name": "X-Header-Set", "value": value}]}}])
}

/// MeshConsumerRoute: a route in the consumer namespace bound to echo-v1 (in the producer's)
/// applies to the consumer namespace's callers and to no one else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_consumer_route() {
    let Some(g) = gamma().await else { return };
    g.apply(
        "HTTPRoute",
        CONSUMER_NS,
        "mesh-consumer-route",
        json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo-v1", "namespace": NS}],
            "rules": [{"filters": set_response_header("set"),
                       "backendRefs": [{"name": "echo-v1", "namespace": NS, "port": 80}]}],
        }),
    );
    let consumer_route = format!("{CONSUMER_NS}/mesh-consumer-route");
    let to_v1 = url(V1_IP, "/");
    g.settle(CONSUMER, &consumer_route, &[&to_v1]).await;

    let reply = g.call(CONSUMER, &[&to_v1]).await;
    assert_served(&reply, "echo-v1", "/");
    assert_eq!(reply.header("x-header-set").as_deref(), Some("set"));

    // A caller in the producer's namespace is not the consumer's.
    let reply = g.get(&to_v1, &[]).await;
    assert_served(&reply, "echo-v1", "/");
    assert_eq!(reply.header("x-header-set"), None, "{}", reply.raw);
    assert_eq!(g.route_requests(V1, &consumer_route, None).await, 0.0);
    g.assert_status("HTTPRoute", CONSUMER_NS, "mesh-consumer-route", true);
}

/// The route of MeshFrontend and MeshFrontendHostname: bound to the whole of echo-v2.
fn frontend_route(g: &Gamma) {
    g.http_route(
        "mesh-frontend",
        json!({
            "parentRefs": [parent("echo-v2", None)],
            "rules": [{"filters": set_response_header("set"),
                       "backendRefs": [backend_ref("echo-v2", 80)]}],
        }),
    );
}

/// MeshFrontend: a route binds to the Service's frontend, never to a direct call to one of
/// its pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_frontend() {
    let Some(g) = gamma().await else { return };
    frontend_route(&g);
    let to_v2 = url(V2_IP, "/");
    g.settle(V1, "gamma/mesh-frontend", &[&to_v2]).await;

    let reply = g.get(&to_v2, &[]).await;
    assert_served(&reply, "echo-v2", "/");
    assert_eq!(reply.header("x-header-set").as_deref(), Some("set"));

    let before = g.route_requests(V1, "gamma/mesh-frontend", None).await;
    let pod = format!("http://{}/", Lab::at(V2, 8080));
    let reply = g.get(&pod, &[]).await;
    assert_served(&reply, "echo-v2", "/");
    assert_eq!(reply.header("x-header-set"), None, "{}", reply.raw);
    let after = g.route_requests(V1, "gamma/mesh-frontend", None).await;
    assert_eq!(after, before, "the direct call went through no route");
}

/// MeshFrontendHostname: the route is chosen by the address called, not by the `Host`
/// header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_frontend_hostname() {
    let Some(g) = gamma().await else { return };
    frontend_route(&g);
    let to_v2 = url(V2_IP, "/");
    g.settle(V1, "gamma/mesh-frontend", &[&to_v2]).await;

    let reply = g.get(&to_v2, &["Host: echo-v1"]).await;
    assert_served(&reply, "echo-v2", "/");
    assert_eq!(reply.header("x-header-set").as_deref(), Some("set"));
    assert_eq!(reply.received("host").as_deref(), Some("echo-v1"));

    let reply = g.get(&url(V1_IP, "/"), &["Host: echo-v2"]).await;
    assert_served(&reply, "echo-v1", "/");
    assert_eq!(reply.header("x-header-set"), None, "{}", reply.raw);
}

/// MeshPorts: a route bound to port 80 of echo-v1 leaves its port 8080 alone; a route bound
/// to echo-v2 without a port applies to all its ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_ports() {
    let Some(g) = gamma().await else { return };
    g.http_route(
        "mesh-ports-v1",
        json!({
            "parentRefs": [parent("echo-v1", Some(80))],
            "rules": [{"filters": set_response_header("v1"),
                       "backendRefs": [backend_ref("echo-v1", 80)]}],
        }),
    );
    g.http_route(
        "mesh-ports-v2",
        json!({
            "parentRefs": [parent("echo-v2", None)],
            "rules": [{"filters": set_response_header("v2"),
                       "backendRefs": [backend_ref("echo-v2", 80)]}],
        }),
    );
    g.settle(V1, "gamma/mesh-ports-v1", &[&url(V1_IP, "/")])
        .await;
    g.settle(V1, "gamma/mesh-ports-v2", &[&url(V2_IP, "/")])
        .await;

    for (target, backend, header) in [
        (V1_IP.to_string(), "echo-v1", Some("v1")),
        (format!("{V1_IP}:8080"), "echo-v1", None),
        (V2_IP.to_string(), "echo-v2", Some("v2")),
        (format!("{V2_IP}:8080"), "echo-v2", Some("v2")),
    ] {
        let reply = g.get(&url(&target, "/"), &[]).await;
        assert_served(&reply, backend, "/");
        assert_eq!(reply.header("x-header-set").as_deref(), header, "{target}");
    }
}

// === MeshTrafficSplit, MeshHTTPRouteMatching, MeshHTTPRouteQueryParamMatching,
// MeshHTTPRouteNamedRule, MeshHTTPRouteSimpleSameNamespace ===

/// MeshTrafficSplit: exact paths to different backends of Service echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_traffic_split() {
    let Some(g) = gamma().await else { return };
    g.http_route(
        "mesh-split",
        json!({
            "parentRefs": [parent("echo", Some(80))],
            "rules": [
                {"matches": [{"path": {"type": "Exact", "value": "/v1"}}],
                 "backendRefs": [backend_ref("echo-v1", 80)]},
                {"matches": [{"path": {"type": "Exact", "value": "/v2"}}],
                 "backendRefs": [backend_ref("echo-v2", 80)]},
            ],
        }),
    );
    g.settle(V1, "gamma/mesh-split", &[&url(ECHO_IP, "/v1")])
        .await;
    for _ in 0..8 {
        assert_served(&g.get(&url(ECHO_IP, "/v1"), &[]).await, "echo-v1", "/v1");
        assert_served(&g.get(&url(ECHO_IP, "/v2"), &[]).await, "echo-v2", "/v2");
    }
    // Exact is exact; and no rule, no backend.
    assert_not_found(&g.get(&url(ECHO_IP, "/v1/"), &[]).await);
    assert_not_found(&g.get(&url(ECHO_IP, "/v3"), &[]).await);
    assert_not_found(&g.get(&url(ECHO_IP, "/"), &[]).await);
}

/// MeshHTTPRouteMatching: path prefixes by whole segments and header matches, ORed within a
/// rule; the longest prefix wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_httproute_matching() {
    let Some(g) = gamma().await else { return };
    g.http_route(
        "mesh-matching",
        json!({
            "parentRefs": [parent("echo", Some(80))],
            "rules": [
                {"matches": [{"path": path_prefix("/")},
                             {"headers": [{"name": "version", "value": "one"}]}],
                 "backendRefs": [backend_ref("echo-v1", 80)]},
                {"matches": [{"path": path_prefix("/v2")},
                             {"headers": [{"name": "version", "value": "two"}]}],
                 "backendRefs": [backend_ref("echo-v2", 80)]},
            ],
        }),
    );
    g.settle(V1, "gamma/mesh-matching", &[&url(ECHO_IP, "/v2")])
        .await;
    for (path, header, backend) in [
        ("/", None, "echo-v1"),
        ("/example", None, "echo-v1"),
        ("/", Some("Version: one"), "echo-v1"),
        ("/v2", None, "echo-v2"),
        ("/v2/example", None, "echo-v2"),
        ("/", Some("Version: two"), "echo-v2"),
        ("/v2/", None, "echo-v2"),
        ("/v2example", None, "echo-v1"),
        ("/foo/v2/example", None, "echo-v1"),
    ] {
        let reply = g.get(&url(ECHO_IP, path), header.as_slice()).await;
        assert_served(&reply, backend, path);
    }
}

/// MeshHTTPRouteQueryParamMatching: query parameter matches alone and ANDed with path and
/// header matches, with Gateway API precedence between rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_httproute_query_param_matching() {
    let Some(g) = gamma().await else { return };
    let query = |value: &str| json!([{"name": "animal", "value": value}]);
    g.http_route(
        "mesh-query-param-matching",
        json!({
            "parentRefs": [parent("echo", Some(80))],
            "rules": [
                {"matches": [{"queryParams": query("whale")}],
                 "backendRefs": [backend_ref("echo-v1", 80)]},
                {"matches": [{"queryParams": query("dolphin")}],
                 "backendRefs": [backend_ref("echo-v2", 80)]},
                {"matches": [{"path": path_prefix("/path1"), "queryParams": query("whale")}],
                 "backendRefs": [backend_ref("echo-v1", 80)]},
                {"matches": [{"headers": [{"name": "version", "value": "one"}],
                              "queryParams": query("whale")}],
                 "backendRefs": [backend_ref("echo-v2", 80)]},
                {"matches": [
                    {"path": path_prefix("/path3"), "queryParams": query("shark")},
                    {"path": path_prefix("/path4"),
                     "headers": [{"name": "version", "value": "three"}],
                     "queryParams": query("kraken")}],
                 "backendRefs": [backend_ref("echo-v1", 80)]},
                {"matches": [{"path": path_prefix("/path5")}],
                 "backendRefs": [backend_ref("echo-v1", 80)]},
                {"matches": [{"queryParams": query("hydra")}],
                 "backendRefs": [backend_ref("echo-v2", 80)]},
            ],
        }),
    );
    g.settle(
        V1,
        "gamma/mesh-query-param-matching",
        &[&url(ECHO_IP, "/?animal=dolphin")],
    )
    .await;
    for (path, header, backend) in [
        ("/?animal=whale", None, "echo-v1"),
        ("/?animal=dolphin", None, "echo-v2"),
        ("/?animal=whale&otherparam=irrelevant", None, "echo-v1"),
        ("/?animal=dolphin&color=yellow", None, "echo-v2"),
        ("/path1?animal=whale", None, "echo-v1"),
        ("/?animal=whale", Some("version: one"), "echo-v2"),
        ("/path3?animal=shark", None, "echo-v1"),
        ("/path4?animal=kraken", Some("version: three"), "echo-v1"),
        ("/path5?animal=hydra", None, "echo-v1"),
        ("/?animal=hydra", None, "echo-v2"),
    ] {
        let reply = g.get(&url(ECHO_IP, path), header.as_slice()).await;
        assert_served(&reply, backend, path);
    }
    for path in [
        "/?color=blue",
        "/?animal=dog",
        "/?animal=whaledolphin",
        "/",
        "/?animal=shark",
        "/path4?animal=kraken",
    ] {
        assert_not_found(&g.get(&url(ECHO_IP, path), &[]).await);
    }
}

/// MeshHTTPRouteNamedRule: named and unnamed rules both route; the metrics call a rule by its
/// name, else by its index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_httproute_named_rule() {
    let Some(g) = gamma().await else { return };
    g.http_route(
        "mesh-named-rule",
        json!({
            "parentRefs": [parent("echo", Some(80))],
            "rules": [
                {"name": "named-rule", "matches": [{"path": path_prefix("/named")}],
                 "backendRefs": [backend_ref("echo-v1", 80)]},
                {"matches": [{"path": path_prefix("/unnamed")}],
                 "backendRefs": [backend_ref("echo-v2", 80)]},
            ],
        }),
    );
    g.settle(V1, "gamma/mesh-named-rule", &[&url(ECHO_IP, "/named")])
        .await;
    let route = "gamma/mesh-named-rule";
    let named = g.route_requests(V1, route, Some("named-rule")).await;
    let unnamed = g.route_requests(V1, route, Some("1")).await;
    assert_served(
        &g.get(&url(ECHO_IP, "/named"), &[]).await,
        "echo-v1",
        "/named",
    );
    assert_served(
        &g.get(&url(ECHO_IP, "/unnamed"), &[]).await,
        "echo-v2",
        "/unnamed",
    );
    assert_eq!(
        g.route_requests(V1, route, Some("named-rule")).await,
        named + 1.0
    );
    assert_eq!(g.route_requests(V1, route, Some("1")).await, unnamed + 1.0);
}

/// MeshHTTPRouteSimpleSameNamespace: one rule sends every call to echo to echo-v1, on its
/// port 8080.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_httproute_simple_same_namespace() {
    let Some(g) = gamma().await else { return };
    g.http_route(
        "mesh-simple-same-namespace",
        json!({
            "parentRefs": [parent("echo", Some(80))],
            "rules": [{"backendRefs": [backend_ref("echo-v1", 8080)]}],
        }),
    );
    g.settle(
        V1,
        "gamma/mesh-simple-same-namespace",
        &[&url(ECHO_IP, "/")],
    )
    .await;
    for _ in 0..16 {
        assert_served(&g.get(&url(ECHO_IP, "/"), &[]).await, "echo-v1", "/");
    }
    g.assert_status("HTTPRoute", NS, "mesh-simple-same-namespace", true);
}

// === MeshHTTPRouteRequestHeaderModifier, MeshHTTPRouteBackendRequestHeaderModifier ===

/// The filters of the request-header tests, by path.
fn header_filters() -> Vec<(&'static str, Value)> {
    let set = |pairs: &[(&str, &str)]| -> Value {
        pairs
            .iter()
            .map(|(n, v)| json!({"name": n, "value": v}))
            .collect()
    };
    vec![
        (
            "/set",
            json!({"set": set(&[("X-Header-Set", "set-overwrites-values")])}),
        ),
        (
            "/add",
            json!({"add": set(&[("X-Header-Add", "add-appends-values")])}),
        ),
        ("/remove", json!({"remove": ["X-Header-Remove"]})),
        (
            "/multiple",
            json!({
                "set": set(&[("X-Header-Set-1", "header-set-1"), ("X-Header-Set-2", "header-set-2")]),
                "add": set(&[("X-Header-Add-1", "header-add-1"), ("X-Header-Add-2", "header-add-2"),
                             ("X-Header-Add-3", "header-add-3")]),
                "remove": ["X-Header-Remove-1", "X-Header-Remove-2"],
            }),
        ),
        (
            "/case-insensitivity",
            json!({
                "set": set(&[("X-Header-Set", "header-set")]),
                "add": set(&[("X-Header-Add", "header-add")]),
                "remove": ["X-Header-Remove"],
            }),
        ),
    ]
}

/// What a request-header test sends (path, request headers) and what echo-v1 must receive
/// (headers with their values, headers that must be absent).
type HeaderCase = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

const HEADER_CASES: [HeaderCase; 7] = [
    (
        "/set",
        &["Some-Other-Header: val"],
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "set-overwrites-values"),
        ],
        &[],
    ),
    (
        "/set",
        &["Some-Other-Header: val", "X-Header-Set: some-other-value"],
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "set-overwrites-values"),
        ],
        &[],
    ),
    (
        "/add",
        &["Some-Other-Header: val"],
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "add-appends-values"),
        ],
        &[],
    ),
    (
        "/add",
        &["Some-Other-Header: val", "X-Header-Add: some-other-value"],
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "some-other-value,add-appends-values"),
        ],
        &[],
    ),
    (
        "/remove",
        &["X-Header-Remove: val"],
        &[],
        &["X-Header-Remove"],
    ),
    (
        "/multiple",
        &[
            "X-Header-Set-2: set-val-2",
            "X-Header-Add-2: add-val-2",
            "X-Header-Remove-2: remove-val-2",
            "Another-Header: another-header-val",
        ],
        &[
            ("X-Header-Set-1", "header-set-1"),
            ("X-Header-Set-2", "header-set-2"),
            ("X-Header-Add-1", "header-add-1"),
            ("X-Header-Add-2", "add-val-2,header-add-2"),
            ("X-Header-Add-3", "header-add-3"),
            ("Another-Header", "another-header-val"),
        ],
        &["X-Header-Remove-1", "X-Header-Remove-2"],
    ),
    (
        "/case-insensitivity",
        &[
            "x-header-set: original-val-set",
            "x-header-add: original-val-add",
            "x-header-remove: original-val-remove",
            "Another-Header: another-header-val",
        ],
        &[
            ("X-Header-Set", "header-set"),
            ("X-Header-Add", "original-val-add,header-add"),
            ("Another-Header", "another-header-val"),
        ],
        &["X-Header-Remove"],
    ),
];

/// The request-header tests: the route's rules carry the filters themselves, or (`on_backend`)
/// their backends do.
async fn request_header_modifier(on_backend: bool) {
    let Some(g) = gamma().await else { return };
    let rules: Vec<Value> = header_filters()
        .into_iter()
        .map(|(path, modifier)| {
            let filters = json!([{"type": "RequestHeaderModifier",
                                  "requestHeaderModifier": modifier}]);
            let mut backend = backend_ref("echo-v1", 80);
            let mut rule = json!({"matches": [{"path": path_prefix(path)}]});
            if on_backend {
                backend["filters"] = filters;
            } else {
                rule["filters"] = filters;
            }
            rule["backendRefs"] = json!([backend]);
            rule
        })
        .collect();
    g.http_route(
        "mesh-request-header-modifier",
        json!({"parentRefs": [parent("echo", Some(80))], "rules": rules}),
    );
    g.settle(
        V1,
        "gamma/mesh-request-header-modifier",
        &[&url(ECHO_IP, "/set")],
    )
    .await;
    for (path, sent, want, absent) in HEADER_CASES {
        let reply = g.get(&url(ECHO_IP, path), sent).await;
        assert_served(&reply, "echo-v1", path);
        for (name, value) in want {
            assert_eq!(
                reply.received(name).as_deref(),
                Some(*value),
                "{path}: {name}\n{}",
                reply.raw
            );
        }
        for name in absent {
            assert_eq!(reply.received(name), None, "{path}: {name}\n{}", reply.raw);
        }
    }
}

/// MeshHTTPRouteRequestHeaderModifier: set, add and remove request headers, as rule filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_httproute_request_header_modifier() {
    request_header_modifier(false).await;
}

/// MeshHTTPRouteBackendRequestHeaderModifier: the same, as filters of the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_httproute_backend_request_header_modifier() {
    request_header_modifier(true).await;
}

// === MeshHTTPRouteRewritePath ===

/// MeshHTTPRouteRewritePath: prefix and full-path rewrites, alone and with header filters;
/// the query is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_httproute_rewrite_path() {
    let Some(g) = gamma().await else { return };
    let prefix = |to: &str| {
        json!({"type": "URLRewrite", "urlRewrite": {
            "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": to}}})
    };
    let full = |to: &str| {
        json!({"type": "URLRewrite", "urlRewrite": {
            "path": {"type": "ReplaceFullPath", "replaceFullPath": to}}})
    };
    let headers = json!({"type": "RequestHeaderModifier", "requestHeaderModifier": {
        "set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}],
        "add": [{"name": "X-Header-Add-Append", "value": "append-value"}],
        "remove": ["X-Header-Remove"]}});
    let rule = |path: &str, filters: Value| {
        json!({"matches": [{"path": path_prefix(path)}], "filters": filters,
               "backendRefs": [backend_ref("echo-v1", 80)]})
    };
    g.http_route(
        "mesh-rewrite-path",
        json!({
            "parentRefs": [parent("echo", Some(80))],
            "rules": [
                rule("/prefix/one", json!([prefix("/one")])),
                rule("/full/one", json!([full("/one")])),
                rule("/full/rewrite-path-and-modify-headers",
                     json!([full("/test"), headers.clone()])),
                rule("/prefix/rewrite-path-and-modify-headers",
                     json!([prefix("/prefix"), headers])),
                rule("/strip-prefix", json!([prefix("/")])),
                rule("/rewrite-host", json!([{"type": "URLRewrite", "urlRewrite": {
                    "hostname": "one.example.org",
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/host"}}}])),
            ],
        }),
    );
    g.settle(
        V1,
        "gamma/mesh-rewrite-path",
        &[&url(ECHO_IP, "/prefix/one/two")],
    )
    .await;
    for (path, rewritten) in [
        ("/prefix/one/two", "/one/two"),
        ("/prefix/one/two?k=v", "/one/two?k=v"),
        ("/prefix/one", "/one"),
        ("/full/one/two", "/one"),
        ("/full/one/two?k=v", "/one?k=v"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/strip-prefix/", "/"),
    ] {
        assert_served(&g.get(&url(ECHO_IP, path), &[]).await, "echo-v1", rewritten);
    }
    let sent = [
        "X-Header-Add-Append: append-val-1",
        "X-Header-Remove: remove-val",
    ];
    for (path, rewritten) in [
        ("/full/rewrite-path-and-modify-headers/test", "/test"),
        ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one"),
    ] {
        let reply = g.get(&url(ECHO_IP, path), &sent).await;
        assert_served(&reply, "echo-v1", rewritten);
        assert_eq!(
            reply.received("x-header-set").as_deref(),
            Some("set-overwrites-values")
        );
        assert_eq!(
            reply.received("x-header-add-append").as_deref(),
            Some("append-val-1,append-value")
        );
        assert_eq!(reply.received("x-header-remove"), None, "{}", reply.raw);
    }
    // Beyond upstream's path tests: the host rewritten with the path.
    let reply = g.get(&url(ECHO_IP, "/rewrite-host/x"), &[]).await;
    assert_served(&reply, "echo-v1", "/host/x");
    assert_eq!(
        reply.received("host").as_deref(),
        Some("one.example.org"),
        "{}",
        reply.raw
    );
    // No rule matches a path outside every prefix (segments are whole).
    assert_not_found(&g.get(&url(ECHO_IP, "/prefix/onetwo"), &[]).await);
}

// === MeshHTTPRouteWeight ===

/// `n` GETs of `url` on one keep-alive client in `rt`'s host: how many each backend answered.
async fn count_backends(rt: &NsRuntime, url: String, n: usize) -> HashMap<String, usize> {
    rt.run(async move {
        let client = weft_tests::http_client();
        let mut counts = HashMap::new();
        for _ in 0..n {
            let rsp = client
                .request(
                    http::Request::get(&url)
                        .body(http_body_util::Empty::new())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(rsp.status(), 200);
            let backend = rsp.headers()["x-backend"].to_str().unwrap().to_string();
            *counts.entry(backend).or_default() += 1;
            http_body_util::BodyExt::collect(rsp.into_body())
                .await
                .unwrap();
        }
        counts
    })
    .await
}

/// How many calls [`mesh_httproute_weight`] and [`mesh_grpcroute_weight`] count. Upstream
/// sends 500 and allows 5 points either way; a binomial 70/30 split over 500 strays that far
/// once in about 70 runs, over 2,000 once in about a million.
const WEIGHT_CALLS: usize = 2_000;

/// Asserts `counts` (of [`WEIGHT_CALLS`]) split as `want` within 5 percentage points.
#[track_caller]
fn assert_split(counts: &HashMap<String, usize>, want: &[(&str, f64)]) {
    let total: usize = counts.values().sum();
    assert_eq!(total, WEIGHT_CALLS, "{counts:?}");
    for (backend, share) in want {
        let got = counts.get(*backend).copied().unwrap_or(0) as f64 / WEIGHT_CALLS as f64;
        assert!(
            (got - share).abs() <= 0.05,
            "{backend}: {got} of {counts:?}"
        );
    }
    assert!(
        counts.keys().all(|k| want.iter().any(|(b, _)| b == k)),
        "{counts:?}"
    );
}

/// MeshHTTPRouteWeight: a 70/30 split between echo-v1 and echo-v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_httproute_weight() {
    let Some(g) = gamma().await else { return };
    let weighted = |name: &str, weight: u32| json!({"name": name, "port": 80, "weight": weight});
    g.http_route(
        "mesh-weighted-backends",
        json!({
            "parentRefs": [parent("echo", Some(80))],
            "rules": [{"backendRefs": [weighted("echo-v1", 70), weighted("echo-v2", 30)]}],
        }),
    );
    g.settle(V1, "gamma/mesh-weighted-backends", &[&url(ECHO_IP, "/")])
        .await;
    let counts = count_backends(&g.rts[V1], url(ECHO_IP, "/"), WEIGHT_CALLS).await;
    assert_split(&counts, &[("echo-v1", 0.7), ("echo-v2", 0.3)]);
}

// === the redirect tests ===

/// One redirect case: the rule's path prefix and `requestRedirect` fields, then a request
/// path it matches, and the status and whole `Location` expected.
type RedirectCase = (&'static str, Value, &'static str, u16, &'static str);

/// A route `name` on echo:80 with one redirecting rule per case; once it is in force, each
/// case's path is called (with `Host: echo`, as upstream) and answered by the proxy, with no
/// backend, as the case says.
async fn redirects(name: &str, cases: Vec<RedirectCase>) {
    let Some(g) = gamma().await else { return };
    let rules: Vec<Value> = cases
        .iter()
        .map(|(prefix, fields, ..)| {
            json!({"matches": [{"path": path_prefix(prefix)}],
                   "filters": [{"type": "RequestRedirect", "requestRedirect": fields}]})
        })
        .collect();
    g.http_route(
        name,
        json!({"parentRefs": [parent("echo", Some(80))], "rules": rules}),
    );
    let probe = url(ECHO_IP, cases[0].2);
    g.settle(V1, &format!("gamma/{name}"), &["-H", "Host: echo", &probe])
        .await;
    for (_, _, path, status, location) in cases {
        let reply = g.get(&url(ECHO_IP, path), &["Host: echo"]).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.raw);
        assert_eq!(
            reply.header("location").as_deref(),
            Some(location),
            "{path}: {}",
            reply.raw
        );
        assert_eq!(reply.backend(), None, "{}", reply.raw);
    }
}

const HOST: &str = "example.org";

/// MeshHTTPRouteRedirectHostAndStatus: a new host, with the default 302 or a given 301; the
/// query is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_httproute_redirect_host_and_status() {
    redirects(
        "mesh-redirect-host-and-status",
        vec![
            (
                "/hostname-redirect",
                json!({"hostname": HOST}),
                "/hostname-redirect",
                302,
                "http://example.org/hostname-redirect",
            ),
            (
                "/host-and-status",
                json!({"hostname": HOST, "statusCode": 301}),
                "/host-and-status?q=1",
                301,
                "http://example.org/host-and-status?q=1",
            ),
        ],
    )
    .await;
}

/// MeshHTTPRouteRedirectPath: prefix and full-path replacements, alone or with a host or a
/// status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_httproute_redirect_path() {
    let prefix = json!({"type": "ReplacePrefixMatch", "replacePrefixMatch": "/replacement-prefix"});
    let full = json!({"type": "ReplaceFullPath", "replaceFullPath": "/replacement-full"});
    redirects(
        "mesh-redirect-path",
        vec![
            (
                "/original-prefix",
                json!({"path": prefix}),
                "/original-prefix/lemon",
                302,
                "http://echo/replacement-prefix/lemon",
            ),
            (
                "/full",
                json!({"path": {"type": "ReplaceFullPath", "replaceFullPath": "/full-path-replacement"}}),
                "/full/path/original",
                302,
                "http://echo/full-path-replacement",
            ),
            (
                "/path-and-host",
                json!({"hostname": HOST, "path": prefix}),
                "/path-and-host",
                302,
                "http://example.org/replacement-prefix",
            ),
            (
                "/path-and-status",
                json!({"path": prefix, "statusCode": 301}),
                "/path-and-status",
                301,
                "http://echo/replacement-prefix",
            ),
            (
                "/full-path-and-host",
                json!({"hostname": HOST, "path": full}),
                "/full-path-and-host",
                302,
                "http://example.org/replacement-full",
            ),
            (
                "/full-path-and-status",
                json!({"path": full, "statusCode": 301}),
                "/full-path-and-status",
                301,
                "http://echo/replacement-full",
            ),
        ],
    )
    .await;
}

/// MeshHTTPRouteRedirectPort: a new port, alone or with a host or a status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_httproute_redirect_port() {
    redirects(
        "mesh-redirect-port",
        vec![
            (
                "/port",
                json!({"port": 8083}),
                "/port",
                302,
                "http://echo:8083/port",
            ),
            (
                "/port-and-host",
                json!({"hostname": HOST, "port": 8083}),
                "/port-and-host",
                302,
                "http://example.org:8083/port-and-host",
            ),
            (
                "/port-and-status",
                json!({"port": 8083, "statusCode": 301}),
                "/port-and-status",
                301,
                "http://echo:8083/port-and-status",
            ),
            (
                "/port-and-host-and-status",
                json!({"hostname": HOST, "port": 8083, "statusCode": 302}),
                "/port-and-host-and-status",
                302,
                "http://example.org:8083/port-and-host-and-status",
            ),
        ],
    )
    .await;
}

/// MeshHTTPRouteSchemeRedirect: to https (whose well-known port the Location leaves out),
/// alone or with a host or a status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_httproute_redirect_scheme() {
    redirects(
        "mesh-redirect-scheme",
        vec![
            (
                "/scheme",
                json!({"scheme": "https"}),
                "/scheme",
                302,
                "https://echo/scheme",
            ),
            (
                "/scheme-and-host",
                json!({"scheme": "https", "hostname": HOST}),
                "/scheme-and-host",
                302,
                "https://example.org/scheme-and-host",
            ),
            (
                "/scheme-and-status",
                json!({"scheme": "https", "statusCode": 301}),
                "/scheme-and-status",
                301,
                "https://echo/scheme-and-status",
            ),
            (
                "/scheme-and-host-and-status",
                json!({"scheme": "https", "hostname": HOST, "statusCode": 302}),
                "/scheme-and-host-and-status",
                302,
                "https://example.org/scheme-and-host-and-status",
            ),
        ],
    )
    .await;
}

/// MeshHTTPRoute303Redirect, MeshHTTPRoute307Redirect and MeshHTTPRoute308Redirect: the status
/// alone keeps the path; with a host (the later `...-host-and-status` variants) it goes there.
async fn status_redirect(status: u16, path: &'static str, location: &'static str) {
    redirects(
        &format!("mesh-{status}-redirect"),
        vec![
            (path, json!({"statusCode": status}), path, status, location),
            (
                "/host-and-status",
                json!({"hostname": HOST, "statusCode": status}),
                "/host-and-status",
                status,
                "http://example.org/host-and-status",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_httproute_303_redirect() {
    status_redirect(303, "/redirect", "http://echo/redirect").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_httproute_307_redirect() {
    status_redirect(307, "/temporary", "http://echo/temporary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_httproute_308_redirect() {
    status_redirect(308, "/permanent", "http://echo/permanent").await;
}

// === MeshGRPCRouteRequestHeaderModifier, MeshGRPCRouteWeight ===

const GRPC_URL: &str = "http://10.96.1.3:7070";

/// MeshGRPCRouteRequestHeaderModifier: the `x-test-case` header picks a rule whose filter
/// sets, adds or removes headers; the `multi` case goes to echo-v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_grpcroute_request_header_modifier() {
    let Some(g) = gamma().await else { return };
    let rule = |case: &str, modifier: Value, backend: &str| {
        json!({"matches": [{"headers": [{"name": "x-test-case", "value": case}]}],
               "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": modifier}],
               "backendRefs": [backend_ref(backend, 7070)]})
    };
    g.apply(
        "GRPCRoute",
        NS,
        "mesh-grpc-header-modifier",
        json!({
            "parentRefs": [parent("echo", Some(7070))],
            "rules": [
                rule("set", json!({"set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}]}), "echo-v1"),
                rule("add", json!({"add": [{"name": "X-Header-Add", "value": "add-appends-values"}]}), "echo-v1"),
                rule("remove", json!({"remove": ["X-Header-Remove"]}), "echo-v1"),
                rule("multi", json!({
                    "set": [{"name": "X-Header-Set-1", "value": "header-set-1"},
                            {"name": "X-Header-Set-2", "value": "header-set-2"}],
                    "add": [{"name": "X-Header-Add-1", "value": "header-add-1"},
                            {"name": "X-Header-Add-2", "value": "header-add-2"}],
                    "remove": ["X-Header-Remove-1", "X-Header-Remove-2"]}), "echo-v2"),
            ],
        }),
    );
    g.settle_grpc("gamma/mesh-grpc-header-modifier", &[("x-test-case", "set")])
        .await;

    type Case = (
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
    );
    let cases: [Case; 5] = [
        (
            &[("x-test-case", "set"), ("x-header-set", "some-other-value")],
            "echo-v1",
            &[("x-header-set", "set-overwrites-values")],
            &[],
        ),
        (
            &[("x-test-case", "add")],
            "echo-v1",
            &[("x-header-add", "add-appends-values")],
            &[],
        ),
        (
            &[("x-test-case", "add"), ("x-header-add", "some-other-value")],
            "echo-v1",
            &[("x-header-add", "some-other-value,add-appends-values")],
            &[],
        ),
        (
            &[("x-test-case", "remove"), ("x-header-remove", "val")],
            "echo-v1",
            &[],
            &["x-header-remove"],
        ),
        (
            &[
                ("x-test-case", "multi"),
                ("x-header-set-2", "set-val-2"),
                ("x-header-add-2", "add-val-2"),
                ("x-header-remove-2", "remove-val-2"),
                ("another-header", "another-header-val"),
            ],
            "echo-v2",
            &[
                ("x-header-set-1", "header-set-1"),
                ("x-header-set-2", "header-set-2"),
                ("x-header-add-1", "header-add-1"),
                ("x-header-add-2", "add-val-2,header-add-2"),
                ("another-header", "another-header-val"),
            ],
            &["x-header-remove-1", "x-header-remove-2"],
        ),
    ];
    for (sent, backend, want, absent) in cases {
        let mut calls = mesh_lab::grpc_calls(&g.rts[V1], GRPC_URL.into(), b"hdr", sent, 1).await;
        let echo = calls.pop().unwrap().unwrap();
        assert_eq!(echo.backend, backend, "{sent:?}");
        assert_eq!(echo.payload, b"hdr");
        let received: Vec<(String, String)> =
            header_lines(&echo.headers.iter().map(String::as_str).collect::<Vec<_>>());
        for (name, value) in want {
            assert_eq!(
                joined(&received, name).as_deref(),
                Some(*value),
                "{sent:?}: {name} in {:?}",
                echo.headers
            );
        }
        for name in absent {
            assert_eq!(joined(&received, name), None, "{sent:?}: {name}");
        }
    }
    // A call no rule matches: UNIMPLEMENTED, from the proxy.
    let mut calls = mesh_lab::grpc_calls(&g.rts[V1], GRPC_URL.into(), b"x", &[], 1).await;
    let err = calls.pop().unwrap().unwrap_err();
    assert!(
        err.contains("not implemented") || err.contains("Unimplemented"),
        "{err}"
    );
}

/// MeshGRPCRouteWeight: a 70/30/0 split where the weight-0 backend (echo-v3) does not exist:
/// it gets no call and the rest work; the route's status says the reference did not resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_grpcroute_weight() {
    let Some(g) = gamma().await else { return };
    let weighted = |name: &str, weight: u32| json!({"name": name, "port": 7070, "weight": weight});
    g.apply(
        "GRPCRoute",
        NS,
        "mesh-grpc-weighted-backends",
        json!({
            "parentRefs": [parent("echo", Some(7070))],
            "rules": [{"backendRefs": [weighted("echo-v1", 70), weighted("echo-v2", 30),
                                       weighted("echo-v3", 0)]}],
        }),
    );
    g.settle_grpc("gamma/mesh-grpc-weighted-backends", &[])
        .await;
    let calls = mesh_lab::grpc_calls(&g.rts[V1], GRPC_URL.into(), b"w", &[], WEIGHT_CALLS).await;
    let mut counts = HashMap::new();
    for call in calls {
        let echo = call.unwrap();
        *counts.entry(echo.backend).or_default() += 1;
    }
    assert_split(&counts, &[("echo-v1", 0.7), ("echo-v2", 0.3)]);
    g.assert_status("GRPCRoute", NS, "mesh-grpc-weighted-backends", false);
}
