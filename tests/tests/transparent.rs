//! Transparent interception in real network namespaces: `weft-proxy init` writes the nat rules
//! in each host, the real proxy binary runs there as its own user, and unmodified clients
//! (curl, a gRPC client) reach servers by their plain addresses.
//!
//! The lab: a hub namespace with the control plane on its bridge (10.231.0.1), host 0 running
//! `web` (a client, behind a proxy), host 1 running `api` (HTTP on 8080 behind the virtual
//! address 10.96.0.10:80, gRPC on 9090, and a server on 8082 that init skips), and host 2
//! outside the mesh (no proxy; servers on 8080 and 8083). Every namespace, rule and process is
//! the test's own and goes away with it. Service `shared` (10.96.0.12:80) has an endpoint in
//! host 0 and one in host 1, both on 8085.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use weft_tests::backends;
use weft_tests::fake_kube::FakeKube;
use weft_tests::kube_objects::{self as k8s, Condition, SliceEndpoint, SvcPort};
use weft_tests::mesh_lab::{self, LabPod};
use weft_tests::netns::{LAB_WAIT, Lab, NsRuntime, lab_or_skip, proxy_binary};

const WEB: usize = 0;
const API: usize = 1;
const OUTSIDE: usize = 2;
const VIP: &str = "10.96.0.10";
/// The virtual address of `shared`, which web and api both serve (port 80 -> 8085).
const SHARED_VIP: &str = "10.96.0.12";

/// `port` on every address of the namespace it is bound in.
fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

fn config(dir: &Path, policy: &str, extra: &str) -> String {
    mesh_lab::lab_sections(dir)
        + extra
        + &format!(
            r#"
[policy]
default_inbound = "{policy}"

[[platforms.local.workloads]]
name = "web"
namespace = "lab"
address = "{web}"
port = 7143

[[platforms.local.workloads.ports]]
service = "shared"
port = 8085
virtual_ip = "{SHARED_VIP}"

[[platforms.local.workloads]]
name = "api"
namespace = "lab"
service = "api"
address = "{api}"
port = 8080
virtual_ip = "{VIP}"

[[platforms.local.workloads.ports]]
service = "api-grpc"
port = 9090
service_port = 9090
protocol = "grpc"

[[platforms.local.workloads.ports]]
service = "shared"
port = 8085
"#,
            web = Lab::addr(WEB),
            api = Lab::addr(API),
        )
}

/// Where the lab's workloads are declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// In the mesh config file (`[[platforms.local.workloads]]`).
    Local,
    /// As pods, Services and EndpointSlices of a fake Kubernetes API server in the hub; the
    /// proxies present ServiceAccount tokens.
    Kubernetes,
}

/// The mesh config file of a lab whose workloads are in the fake API server at `kubeconfig`.
fn kube_config(dir: &Path, kubeconfig: &Path) -> String {
    mesh_lab::lab_sections(dir)
        + &format!(
            r#"
[platforms.kubernetes]
kubeconfig = "{kubeconfig}"
namespaces = ["lab"]
"#,
            kubeconfig = kubeconfig.display(),
        )
}

/// The lab's cluster: pods web and api (each with the proxy, dual-stack), Service api on the virtual
/// address (80 -> the named port `http`, 8080) and Service api-grpc (9090, gRPC).
fn kube_objects(fake: &FakeKube) {
    fake.apply(k8s::namespace("lab", Some("enabled")));
    for (host, name) in [(WEB, "web"), (API, "api")] {
        // Dual-stack, as the lab's hosts are.
        let mut pod = k8s::pod("lab", name, name, true, Lab::addr(host));
        pod["status"]["podIPs"] = serde_json::json!([
            {"ip": Lab::addr(host).to_string()},
            {"ip": Lab::addr6(host).to_string()},
        ]);
        fake.apply(pod);
    }
    let mut http = SvcPort::new("http", 80);
    http.target = serde_json::json!("http");
    fake.apply(k8s::service(
        "lab",
        "api",
        Some(VIP.parse().unwrap()),
        &[http],
    ));
    let mut grpc = SvcPort::new("grpc", 9090);
    grpc.app_protocol = Some("grpc".into());
    fake.apply(k8s::service(
        "lab",
        "api-grpc",
        Some("10.96.0.11".parse().unwrap()),
        &[grpc],
    ));
    let endpoint = [SliceEndpoint {
        pod: Some("api".into()),
        ip: Lab::addr(API),
        condition: Condition::Ready,
    }];
    fake.apply(k8s::slice(
        "lab",
        "api-1",
        "api",
        &[("http", 8080)],
        &endpoint,
    ));
    fake.apply(k8s::slice(
        "lab",
        "api-grpc-1",
        "api-grpc",
        &[("grpc", 9090)],
        &endpoint,
    ));
}

/// The lab with its control plane, backends and proxies running.
struct Mesh {
    dir: tempfile::TempDir,
    rts: Vec<NsRuntime>,
    _proxies: Vec<tokio::process::Child>,
    _hub: NsRuntime,
    _fake: Option<FakeKube>,
    lab: Lab,
}

async fn mesh(policy: &str, init_flags: [&[&str]; 2]) -> Option<Mesh> {
    mesh_via(Via::Local, policy, init_flags).await
}

async fn mesh_via(via: Via, policy: &str, init_flags: [&[&str]; 2]) -> Option<Mesh> {
    mesh_with(via, policy, "", init_flags).await
}

/// A lab whose (local) config file also holds `extra` (routes, say) before its policy.
async fn mesh_with(via: Via, policy: &str, extra: &str, init_flags: [&[&str]; 2]) -> Option<Mesh> {
    let lab = lab_or_skip(3)?;
    let dir = mesh_lab::lab_dir();
    let config_path = dir.path().join("mesh.toml");
    let hub = lab.hub.runtime();
    let fake = match via {
        Via::Local => {
            std::fs::write(&config_path, config(dir.path(), policy, extra)).unwrap();
            None
        }
        Via::Kubernetes => {
            // The API server listens on the hub's loopback, beside the control plane.
            let fake = hub.run(FakeKube::start()).await;
            kube_objects(&fake);
            let kubeconfig = fake.kubeconfig(dir.path());
            std::fs::write(&config_path, kube_config(dir.path(), &kubeconfig)).unwrap();
            Some(fake)
        }
    };
    let bundle = mesh_lab::start_control(&hub, dir.path(), &config_path).await;

    let rts: Vec<NsRuntime> = lab.hosts.iter().map(|h| h.runtime()).collect();
    rts[API]
        .run(async move {
            backends::http_echo_at("api", any(8080)).await;
            backends::grpc_backend_at(any(9090)).await;
            backends::http_echo_at("api-skipped", any(8082)).await;
        })
        .await;
    rts[OUTSIDE]
        .run(async move {
            backends::http_echo_at("outside", any(8080)).await;
            backends::http_echo_at("outside-skipped", any(8083)).await;
        })
        .await;

    let mut proxies = Vec::new();
    for (host, name, init_flags) in [(WEB, "web", init_flags[0]), (API, "api", init_flags[1])] {
        let pod = LabPod {
            name,
            namespace: "lab",
            init_flags,
        };
        let ns = &lab.hosts[host];
        proxies.push(mesh_lab::start_proxy(ns, dir.path(), &bundle, pod, fake.as_ref()).await);
    }
    let mesh = Mesh {
        dir,
        rts,
        _proxies: proxies,
        _hub: hub,
        _fake: fake,
        lab,
    };
    for host in [WEB, API] {
        mesh.wait_ready(host).await;
    }
    Some(mesh)
}

impl Mesh {
    fn log(&self, name: &str) -> String {
        mesh_lab::proxy_log(self.dir.path(), name)
    }

    /// Waits until host `i`'s proxy holds a certificate and its settings.
    async fn wait_ready(&self, i: usize) {
        let logs = || {
            format!(
                "web log:\n{}\napi log:\n{}",
                self.log("web"),
                self.log("api")
            )
        };
        mesh_lab::wait_ready(&self.rts[i], logs).await;
    }

    /// The metrics of host `i`'s proxy.
    async fn metrics(&self, i: usize) -> String {
        mesh_lab::admin(&self.rts[i], "/metrics").await.unwrap().1
    }

    /// `curl -i` from host `i` (as root, or as the proxy's user), to the end.
    async fn curl(&self, i: usize, url: &str, as_proxy_user: bool) -> Result<String, String> {
        self.curl_with(i, &[url], as_proxy_user).await
    }

    /// [`Mesh::curl`] with more of curl's arguments (headers) before the URL.
    async fn curl_with(
        &self,
        i: usize,
        args: &[&str],
        as_proxy_user: bool,
    ) -> Result<String, String> {
        mesh_lab::curl(&self.lab.hosts[i], args, as_proxy_user).await
    }

    /// [`Mesh::curl`], which must succeed and be answered by `backend`; the response.
    async fn expect_backend(
        &self,
        i: usize,
        url: &str,
        as_proxy_user: bool,
        backend: &str,
    ) -> String {
        let rsp = self
            .curl(i, url, as_proxy_user)
            .await
            .unwrap_or_else(|e| panic!("{url} from host {i}: {e}"));
        assert!(rsp.contains(&format!("x-backend: {backend}")), "{rsp}");
        rsp
    }

    /// A gRPC call from host `i` to `url`, from a client that knows nothing of the mesh: the
    /// backend echoes `payload`.
    async fn grpc_echo(
        &self,
        i: usize,
        url: String,
        payload: &'static [u8],
    ) -> Result<Vec<u8>, String> {
        let mut calls = mesh_lab::grpc_calls(&self.rts[i], url, payload, &[], 1).await;
        calls.pop().unwrap().map(|echo| echo.payload)
    }

    /// Calls `url` (a Service that api and web back) from api until both have answered
    /// (bounded): every call succeeds, and api's own application (backend `names[0]`) sees
    /// its proxy's forwards come from `forward_source`.
    async fn own_and_other(&self, url: &str, names: [&str; 2], forward_source: &str) {
        let (mut own, mut other) = (0, 0);
        for _ in 0..200 {
            let rsp = self
                .curl_with(API, &["-g", url], false)
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}\n{}", self.log("api")));
            assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
            if rsp.contains(&format!("x-backend: {}\r\n", names[0])) {
                assert!(
                    rsp.contains(&format!("x-peer: {forward_source}\r\n")),
                    "{rsp}"
                );
                own += 1;
            } else {
                assert!(
                    rsp.contains(&format!("x-backend: {}\r\n", names[1])),
                    "{rsp}"
                );
                other += 1;
            }
            if own > 0 && other > 0 {
                return;
            }
        }
        panic!("own {own}, other {other}");
    }

    fn edit_policy(&self, policy: &str) {
        let path = self.dir.path().join("mesh.toml");
        let tmp = self.dir.path().join("mesh.toml.tmp");
        std::fs::write(&tmp, config(self.dir.path(), policy, "")).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    weft_tests::metric(text, name, labels)
}

/// Outbound connections a proxy's metrics say it carried.
fn outbound_opened(text: &str) -> f64 {
    metric(
        text,
        "weft_tcp_connections_total",
        &["direction=\"outbound\""],
    )
}

const WEB_ID: &str = "peer=\"spiffe://weft.test/ns/lab/sa/web\"";
const API_ID: &str = "peer=\"spiffe://weft.test/ns/lab/sa/api\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmodified_clients_reach_mesh_services_by_plain_address_over_mutual_tls() {
    let Some(m) = mesh("allow", [&[], &[]]).await else {
        return;
    };
    // curl to the endpoint's own address, and to the service's virtual address.
    let api = format!("http://{}/by-endpoint", Lab::at(API, 8080));
    let rsp = m.expect_backend(WEB, &api, false, "api").await;
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    let rsp = m
        .expect_backend(WEB, &format!("http://{VIP}/by-vip"), false, "api")
        .await;
    assert!(rsp.contains("GET /by-vip HTTP/1.1"), "{rsp}");

    // A gRPC client that knows nothing of the mesh, by plain address.
    let url = format!("http://{}", Lab::at(API, 9090));
    assert_eq!(
        m.grpc_echo(WEB, url, b"through the mesh").await.unwrap(),
        b"through the mesh"
    );

    // The server's proxy saw the client's SPIFFE identity on all three.
    let server = m.metrics(API).await;
    let inbound = metric(
        &server,
        "weft_requests_total",
        &["direction=\"inbound\"", WEB_ID],
    );
    assert!(
        inbound >= 3.0,
        "{inbound} inbound requests from web\n{server}"
    );
    // The client's proxy balanced them as mesh services, named by service, not by address.
    let client = m.metrics(WEB).await;
    for service in ["api.lab:80", "api-grpc.lab:9090"] {
        let n = metric(
            &client,
            "weft_requests_total",
            &["direction=\"outbound\"", &format!("service=\"{service}\"")],
        );
        assert!(n >= 1.0, "{service}: {n}\n{client}");
    }
    assert!(!client.contains("10.231.0.3"), "{client}");
}

/// The same lab with its workloads in a (fake) Kubernetes API server: the proxies prove their
/// pods' ServiceAccounts, and an unmodified client reaches the Service by its ClusterIP and by
/// the pod's address, over mutual TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kubernetes_clients_reach_services_by_cluster_ip_over_mutual_tls() {
    let Some(m) = mesh_via(Via::Kubernetes, "allow", [&[], &[]]).await else {
        return;
    };
    let rsp = m
        .expect_backend(WEB, &format!("http://{VIP}/by-cluster-ip"), false, "api")
        .await;
    assert!(rsp.contains("GET /by-cluster-ip HTTP/1.1"), "{rsp}");
    let pod = format!("http://{}/by-pod-ip", Lab::at(API, 8080));
    m.expect_backend(WEB, &pod, false, "api").await;
    let url = "http://10.96.0.11:9090".to_string();
    assert_eq!(
        m.grpc_echo(WEB, url, b"by cluster ip").await.unwrap(),
        b"by cluster ip"
    );
    let server = m.metrics(API).await;
    assert_eq!(
        metric(
            &server,
            "weft_requests_total",
            &["direction=\"inbound\"", WEB_ID]
        ),
        3.0,
        "{server}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_the_mesh_passes_through_and_skipped_ports_bypass_the_proxy() {
    let skip_out: &[&str] = &["--skip-outbound-ports", "8083"];
    let skip_in: &[&str] = &["--skip-inbound-ports", "8082"];
    let Some(m) = mesh("allow", [skip_out, skip_in]).await else {
        return;
    };
    // An address outside the mesh is reached unchanged, through the proxy, with metrics.
    m.expect_backend(
        WEB,
        &format!("http://{}/egress", Lab::at(OUTSIDE, 8080)),
        false,
        "outside",
    )
    .await;
    let client = m.metrics(WEB).await;
    let through = metric(
        &client,
        "weft_requests_total",
        &["direction=\"outbound\"", "service=\"outside-mesh\""],
    );
    assert_eq!(through, 1.0, "{client}");
    let before = outbound_opened(&client);

    // A skipped outbound port goes straight out: the proxy sees nothing of it.
    m.expect_backend(
        WEB,
        &format!("http://{}/", Lab::at(OUTSIDE, 8083)),
        false,
        "outside-skipped",
    )
    .await;
    assert_eq!(outbound_opened(&m.metrics(WEB).await), before);

    // A skipped inbound port is served without the proxy, even to a plaintext client that the
    // mTLS-only default would refuse on any other port.
    m.expect_backend(
        OUTSIDE,
        &format!("http://{}/", Lab::at(API, 8082)),
        false,
        "api-skipped",
    )
    .await;
    let server = m.metrics(API).await;
    assert_eq!(
        metric(
            &server,
            "weft_tcp_connections_total",
            &["direction=\"inbound\""]
        ),
        0.0,
        "{server}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_clients_are_refused_by_default_and_admitted_when_the_policy_allows() {
    let Some(m) = mesh("allow", [&[], &[]]).await else {
        return;
    };
    let url = format!("http://{}/plain", Lab::at(API, 8080));
    let refused = m.curl(OUTSIDE, &url, false).await;
    assert!(refused.is_err(), "served in plaintext: {refused:?}");
    let server = m.metrics(API).await;
    assert_eq!(
        metric(
            &server,
            "weft_inbound_tls_rejected_total",
            &["reason=\"not_tls\""]
        ),
        1.0,
        "{server}"
    );

    m.edit_policy("allow-unauthenticated");
    // The edit travels file -> control plane -> the proxy's settings stream; each attempt is a
    // real request, and the loop is bounded.
    let deadline = tokio::time::Instant::now() + LAB_WAIT;
    let rsp = loop {
        match m.curl(OUTSIDE, &url, false).await {
            Ok(rsp) => break rsp,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "still refused: {e}\n{}",
                m.log("api")
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(rsp.contains("x-backend: api"), "{rsp}");
    let server = m.metrics(API).await;
    assert!(
        metric(
            &server,
            "weft_requests_total",
            &["direction=\"inbound\"", "peer=\"unauthenticated\""]
        ) >= 1.0,
        "{server}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_traffic_does_not_loop() {
    let Some(m) = mesh("allow", [&[], &[]]).await else {
        return;
    };
    let before = outbound_opened(&m.metrics(WEB).await);
    // The proxy's user is exempt: its connections leave as they are.
    m.expect_backend(
        WEB,
        &format!("http://{}/", Lab::at(OUTSIDE, 8080)),
        true,
        "outside",
    )
    .await;
    assert_eq!(outbound_opened(&m.metrics(WEB).await), before);
    // A connection to the outbound listener itself (loopback is exempt, so not redirected)
    // is refused rather than carried back into the proxy.
    let direct = m.curl(WEB, "http://127.0.0.1:7140/", false).await;
    assert!(direct.is_err(), "{direct:?}");
    let client = m.metrics(WEB).await;
    assert_eq!(
        metric(
            &client,
            "weft_outbound_refused_total",
            &["reason=\"no_original_destination\""]
        ),
        1.0,
        "{client}"
    );
    assert_eq!(outbound_opened(&client), before);
}

/// A pod that calls a Service it backs reaches its own application through its own inbound
/// side, over mutual TLS as any peer would (so its policy and metrics apply): when it is the
/// Service's only endpoint, and when it shares the Service with another pod. The application
/// sees those calls come from 127.0.0.6, which the rules tell apart from the proxy's calls to
/// its own pod, so nothing loops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_reaches_itself_through_a_service_it_backs() {
    let Some(m) = mesh("allow", [&[], &[]]).await else {
        return;
    };
    m.rts[WEB]
        .run(async move { backends::http_echo_at("shared-web", any(8085)).await })
        .await;
    m.rts[API]
        .run(async move { backends::http_echo_at("shared-api", any(8085)).await })
        .await;

    // Alone: api is the only endpoint of its Service.
    let rsp = m
        .expect_backend(API, &format!("http://{VIP}/self"), false, "api")
        .await;
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    assert!(rsp.contains("x-peer: 127.0.0.6"), "{rsp}");
    let server = m.metrics(API).await;
    assert_eq!(
        metric(
            &server,
            "weft_requests_total",
            &["direction=\"inbound\"", API_ID]
        ),
        1.0,
        "{server}"
    );

    // Shared: every call succeeds, and the balancer sends some to this pod itself. The loop
    // ends as soon as both endpoints have answered, and is bounded.
    let url = format!("http://{SHARED_VIP}/shared");
    m.own_and_other(&url, ["shared-api", "shared-web"], "127.0.0.6")
        .await;
    let client = m.metrics(API).await;
    assert_eq!(
        metric(
            &client,
            "weft_responses_total",
            &["direction=\"outbound\"", "classification=\"failure\""]
        ),
        0.0,
        "{client}"
    );
}

/// The same over IPv6, on Kubernetes with dual-stack pods: api calls Service api6 (an IPv6
/// ClusterIP) that it alone backs, and Service shared6 that it backs with web. Its proxy's
/// calls to its own IPv6 address meet its inbound side, which reaches the application from
/// `::6` (added to the loopback interface by `init`), never `::1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_reaches_itself_through_a_service_it_backs_over_ipv6() {
    let Some(m) = mesh_via(Via::Kubernetes, "allow", [&[], &[]]).await else {
        return;
    };
    let any6 = |port: u16| SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    m.rts[API]
        .run(async move {
            backends::http_echo_at("api6", any6(8090)).await;
            backends::http_echo_at("shared-api6", any6(8095)).await;
        })
        .await;
    m.rts[WEB]
        .run(async move { backends::http_echo_at("shared-web6", any6(8095)).await })
        .await;
    let fake = m._fake.as_ref().unwrap();
    let endpoint = |host: usize, pod: &str| SliceEndpoint {
        pod: Some(pod.into()),
        ip: Lab::addr6(host),
        condition: Condition::Ready,
    };
    for (name, vip, target, endpoints) in [
        ("api6", "fd00:96::10", 8090, vec![endpoint(API, "api")]),
        (
            "shared6",
            "fd00:96::12",
            8095,
            vec![endpoint(API, "api"), endpoint(WEB, "web")],
        ),
    ] {
        let mut http = SvcPort::new("http", 80);
        http.target = serde_json::json!(target);
        fake.apply(k8s::service(
            "lab",
            name,
            Some(vip.parse().unwrap()),
            &[http],
        ));
        let slice = format!("{name}-1");
        fake.apply(k8s::slice(
            "lab",
            &slice,
            name,
            &[("http", target)],
            &endpoints,
        ));
    }

    // Alone. The Service is new to the control plane: wait (bounded) until it is known.
    let url = "http://[fd00:96::10]/self";
    let mut last = String::new();
    for _ in 0..100 {
        match m.curl_with(API, &["-g", url], false).await {
            Ok(rsp) if rsp.starts_with("HTTP/1.1 200") => {
                last = rsp;
                break;
            }
            Ok(rsp) => last = rsp,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(last.starts_with("HTTP/1.1 200"), "{last}\n{}", m.log("api"));
    assert!(last.contains("x-backend: api6"), "{last}");
    assert!(last.contains("x-peer: ::6\r\n"), "{last}");
    let server = m.metrics(API).await;
    assert!(
        metric(
            &server,
            "weft_requests_total",
            &["direction=\"inbound\"", API_ID]
        ) >= 1.0,
        "the call went through the pod's own inbound side: {server}"
    );

    // Shared: every call succeeds, some reach the pod itself; bounded.
    m.own_and_other(
        "http://[fd00:96::12]/shared",
        ["shared-api6", "shared-web6"],
        "::6",
    )
    .await;
}

/// Routes bound to `api` (the GAMMA mesh profile, written in the mesh file): a header match, a
/// path rewrite with header filters, a redirect, a weighted split with `shared`, and a prefix
/// to the service itself. Nothing else matches.
const LAB_ROUTES: &str = r#"
[[routes.http]]
name = "api"
namespace = "lab"
parent_refs = [{ name = "api" }]

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/api" }, headers = [{ name = "x-to", value = "shared" }] }]
backend_refs = [{ name = "shared" }]

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/rewrite" } }]
filters = [
  { type = "URLRewrite", url_rewrite = { path = { type = "ReplacePrefixMatch", replace_prefix_match = "/new" } } },
  { type = "RequestHeaderModifier", request_header_modifier = { add = [{ name = "x-added", value = "yes" }] } },
  { type = "ResponseHeaderModifier", response_header_modifier = { set = [{ name = "x-route", value = "rewrite" }] } },
]

[[routes.http.rules]]
matches = [{ path = { type = "Exact", value = "/old" } }]
filters = [{ type = "RequestRedirect", request_redirect = { scheme = "https", hostname = "new.lab", status_code = 301 } }]

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/split" } }]
backend_refs = [{ name = "api", weight = 1 }, { name = "shared", weight = 1 }]

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/api" } }]
"#;

/// GAMMA in the lab: an unmodified client calls a Service by its virtual address, its
/// intercepting proxy applies the Service's routes (header match, rewrite and header filters,
/// redirect with its whole Location, weighted split, 404 for no match), and a call to an
/// endpoint's own address is not routed, as routes bind to the Service's frontend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_routes_apply_to_intercepted_calls_to_the_service_address() {
    let Some(m) = mesh_with(Via::Local, "allow", LAB_ROUTES, [&[], &[]]).await else {
        return;
    };
    m.rts[WEB]
        .run(async move { backends::http_echo_at("shared-web", any(8085)).await })
        .await;
    m.rts[API]
        .run(async move { backends::http_echo_at("shared-api", any(8085)).await })
        .await;
    let call = async |args: &[&str]| {
        m.curl_with(WEB, args, false)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", m.log("web")))
    };
    let vip = |path: &str| format!("http://{VIP}{path}");

    let rsp = call(&[&vip("/api/x")]).await;
    assert!(rsp.contains("x-backend: api"), "the service itself: {rsp}");

    let rsp = call(&["-H", "x-to: shared", &vip("/api/x")]).await;
    assert!(rsp.contains("x-backend: shared-"), "the header rule: {rsp}");

    let rsp = call(&[&vip("/rewrite/users?id=1")]).await;
    assert!(rsp.contains("x-backend: api"), "{rsp}");
    assert!(
        rsp.contains("GET /new/users?id=1 HTTP/1.1"),
        "the path the backend saw: {rsp}"
    );
    assert!(rsp.contains("x-added: yes"), "{rsp}");
    assert!(
        rsp.to_ascii_lowercase().contains("x-route: rewrite"),
        "{rsp}"
    );

    let rsp = call(&[&vip("/old?q=1")]).await;
    assert!(rsp.starts_with("HTTP/1.1 301"), "{rsp}");
    assert!(
        rsp.to_ascii_lowercase()
            .contains("location: https://new.lab/old?q=1\r\n"),
        "the whole Location: {rsp}"
    );

    let rsp = call(&[&vip("/nothing")]).await;
    assert!(rsp.starts_with("HTTP/1.1 404"), "no rule matches: {rsp}");

    // A direct call to the endpoint's own address is not routed.
    let direct = format!("http://{}/nothing", Lab::at(API, 8080));
    let rsp = call(&[&direct]).await;
    assert!(
        rsp.starts_with("HTTP/1.1 200") && rsp.contains("x-backend: api"),
        "{rsp}"
    );

    // The split sends some to each; bounded, and done once both have answered.
    let (mut api, mut shared) = (0, 0);
    for _ in 0..200 {
        let rsp = call(&[&vip("/split")]).await;
        assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
        if rsp.contains("x-backend: api") {
            api += 1;
        } else {
            shared += 1;
        }
        if api > 0 && shared > 0 {
            break;
        }
    }
    assert!(api > 0 && shared > 0, "api {api}, shared {shared}");
}

/// GAMMA on Kubernetes in the lab: an `HTTPRoute` bound to Service `api` in the (fake) API
/// server is applied by web's intercepting proxy to calls to the ClusterIP (query parameter
/// and method matches to `api-v2`, a redirect with a new port and path), and the control plane
/// writes its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproutes_in_the_cluster_apply_to_intercepted_calls() {
    let Some(m) = mesh_via(Via::Kubernetes, "allow", [&[], &[]]).await else {
        return;
    };
    m.rts[API]
        .run(async move { backends::http_echo_at("api-v2", any(8086)).await })
        .await;
    let fake = m._fake.as_ref().unwrap();
    let mut http = SvcPort::new("http", 80);
    http.target = serde_json::json!(8086);
    fake.apply(k8s::service("lab", "api-v2", None, &[http]));
    fake.apply(k8s::slice(
        "lab",
        "api-v2-1",
        "api-v2",
        &[("http", 8086)],
        &[SliceEndpoint {
            pod: Some("api".into()),
            ip: Lab::addr(API),
            condition: Condition::Ready,
        }],
    ));
    fake.apply(serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"namespace": "lab", "name": "api"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 80}],
            "rules": [
                {"matches": [{"queryParams": [{"name": "v", "value": "2"}]}],
                 "backendRefs": [{"name": "api-v2", "port": 80}]},
                {"matches": [{"method": "DELETE"}],
                 "backendRefs": [{"name": "api-v2", "port": 80}]},
                {"matches": [{"path": {"type": "Exact", "value": "/moved"}}],
                 "filters": [{"type": "RequestRedirect", "requestRedirect": {
                     "port": 8443, "statusCode": 302,
                     "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new-home"}}}]},
                {"backendRefs": [{"name": "api", "port": 80}]},
            ],
        },
    }));
    let vip = |path: &str| format!("http://{VIP}{path}");
    // The route reaches the proxy: wait (bounded) for its first visible effect.
    let mut routed = false;
    for _ in 0..100 {
        let rsp = m.curl_with(WEB, &[&vip("/q?v=2")], false).await.unwrap();
        if rsp.contains("x-backend: api-v2") {
            routed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(routed, "the HTTPRoute never applied\n{}", m.log("web"));
    let rsp = m.curl_with(WEB, &[&vip("/q?v=1")], false).await.unwrap();
    assert!(rsp.contains("x-backend: api\r\n"), "{rsp}");
    let rsp = m
        .curl_with(WEB, &["-X", "DELETE", &vip("/thing")], false)
        .await
        .unwrap();
    assert!(rsp.contains("x-backend: api-v2"), "{rsp}");
    let rsp = m.curl_with(WEB, &[&vip("/moved")], false).await.unwrap();
    assert!(rsp.starts_with("HTTP/1.1 302"), "{rsp}");
    assert!(
        rsp.to_ascii_lowercase()
            .contains(&format!("location: http://{VIP}:8443/new-home\r\n")),
        "{rsp}"
    );
    let route = fake.get("HTTPRoute", Some("lab"), "api").unwrap();
    let conditions = &route["status"]["parents"][0]["conditions"];
    assert_eq!(conditions[0]["type"], "Accepted");
    assert_eq!(conditions[0]["status"], "True", "{route}");
    assert_eq!(conditions[1]["status"], "True", "{route}");
}

/// GAMMA for gRPC on Kubernetes in the lab: a `GRPCRoute` bound to Service `api-grpc` routes an
/// unmodified gRPC client's calls to the ClusterIP by method, follows an edit of the route, and
/// answers a method no rule matches with `UNIMPLEMENTED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcroutes_in_the_cluster_route_by_method() {
    let Some(m) = mesh_via(Via::Kubernetes, "allow", [&[], &[]]).await else {
        return;
    };
    let fake = m._fake.as_ref().unwrap();
    let route = |service: &str| {
        serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GRPCRoute",
            "metadata": {"namespace": "lab", "name": "api-grpc"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "api-grpc"}],
                "rules": [{"matches": [{"method": {"service": service}}],
                           "backendRefs": [{"name": "api-grpc", "port": 9090}]}],
            },
        })
    };
    let url = "http://10.96.0.11:9090".to_string();
    // Bound to the Discovery service only: Identity.Certify matches no rule.
    fake.apply(route("weft.api.v1.Discovery"));
    let mut last = Ok(Vec::new());
    for _ in 0..100 {
        last = m.grpc_echo(WEB, url.clone(), b"x").await;
        if last.as_ref().is_err_and(|e| e.contains("not implemented")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        last.as_ref().is_err_and(|e| e.contains("not implemented")),
        "the GRPCRoute never applied: {last:?}\n{}\n{:?}",
        m.log("web"),
        fake.get("GRPCRoute", Some("lab"), "api-grpc")
    );
    // The route edited to name Identity: the same call goes through.
    fake.apply(route("weft.api.v1.Identity"));
    let mut through = false;
    for _ in 0..100 {
        if m.grpc_echo(WEB, url.clone(), b"routed").await.as_deref() == Ok(b"routed".as_slice()) {
            through = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        through,
        "the edited GRPCRoute never applied\n{}",
        m.log("web")
    );
}

/// Whether host 0's loopback interface has the IPv6 forward source (`::6/128`).
fn lo_has_forward_source(lab: &Lab) -> bool {
    let out = lab.hosts[0].ip(&["-6", "addr", "show", "dev", "lo"]);
    String::from_utf8_lossy(&out.stdout).contains("inet6 ::6/128")
}

/// The WEFT lines of the nat table as `save` lists them.
async fn weft_rules(lab: &Lab, save: &str) -> Vec<String> {
    let out = lab.hosts[0].run(save, &["-t", "nat"]).await;
    assert!(out.status.success(), "{save}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("WEFT"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_twice_leaves_one_rule_set_and_cleanup_leaves_none_on_both_backends() {
    let Some(lab) = lab_or_skip(1) else {
        return;
    };
    let bin = proxy_binary();
    let init = |args: &'static [&'static str]| {
        let mut c = lab.hosts[0].command(bin.to_str().unwrap());
        c.arg("init").args(args);
        c
    };
    for (backend, saves) in [
        ("nft", ["iptables-nft-save", "ip6tables-nft-save"]),
        ("legacy", ["iptables-legacy-save", "ip6tables-legacy-save"]),
    ] {
        let flags: &'static [&'static str] = match backend {
            "nft" => &["--backend", "nft", "--ipv6", "on"],
            _ => &["--backend", "legacy", "--ipv6", "on"],
        };
        let out = init(flags).output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let once = [
            weft_rules(&lab, saves[0]).await,
            weft_rules(&lab, saves[1]).await,
        ];
        // Four chains, their nine rules (among them: the proxy's calls to its own pod go
        // inbound, the inbound side's forwards from 127.0.0.6 or ::6 pass), and one jump from
        // each of PREROUTING and OUTPUT; and ::6 on the loopback interface.
        assert!(lo_has_forward_source(&lab), "{backend}");
        for (rules, own) in once.iter().zip([9, 9]) {
            assert_eq!(rules.len(), 4 + own + 2, "{backend}: {rules:#?}");
            let jumps = rules
                .iter()
                .filter(|r| r.starts_with("-A PREROUTING") || r.starts_with("-A OUTPUT"))
                .count();
            assert_eq!(jumps, 2, "{backend}: {rules:#?}");
        }
        let out = init(flags).output().await.unwrap();
        assert!(out.status.success());
        let twice = [
            weft_rules(&lab, saves[0]).await,
            weft_rules(&lab, saves[1]).await,
        ];
        assert_eq!(once, twice, "{backend}: a second init changed the rules");

        let cleanup: &'static [&'static str] = match backend {
            "nft" => &["--backend", "nft", "--ipv6", "on", "--cleanup"],
            _ => &["--backend", "legacy", "--ipv6", "on", "--cleanup"],
        };
        let out = init(cleanup).output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for save in saves {
            assert!(weft_rules(&lab, save).await.is_empty(), "{backend}: {save}");
        }
        assert!(!lo_has_forward_source(&lab), "{backend}");
        // Cleaning up what is not there is not an error.
        assert!(init(cleanup).output().await.unwrap().status.success());
    }
    // Without NET_ADMIN (as the proxy's user), the error says what is missing.
    let out = lab.hosts[0]
        .command_as_proxy_user(&bin)
        .args(["init", "--backend", "nft"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs the NET_ADMIN and NET_RAW capabilities"),
        "{err}"
    );
    // Without iptables (hidden under an empty directory in a mount namespace of its own), too.
    let script = format!(
        "mount -t tmpfs none /usr/sbin && PATH=/usr/bin:/bin exec {} init",
        bin.display()
    );
    let out = lab.hosts[0]
        .command("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found") && err.contains("install iptables"),
        "{err}"
    );
    // The dry run prints what it would run, and runs nothing.
    let out = init(&["--dry-run", "--backend", "nft"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("iptables-nft-restore --noflush"), "{text}");
    assert!(weft_rules(&lab, "iptables-nft-save").await.is_empty());
}
