//! The platform-adapter conformance suite: the same scenarios run against every adapter
//! (local, and Kubernetes and Nomad against their fake API servers). A harness drives the
//! platform's source of truth. [`run_all`] watches the registry the adapter feeds;
//! [`run_policy`] runs a control plane on the adapter and a proxy beside one of its workloads,
//! and calls that proxy directly, as a hostile workload would.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use weft_core::platform::{AttestError, Credential, Platform};
use weft_core::{
    EndpointState, Registry, RegistrySnapshot, ServiceName, Topic, WorkloadKey, WorkloadRef,
};

use crate::WAIT;

/// A workload as the scenarios declare it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// Its name on the platform.
    pub name: String,
    /// The account of its identity (ServiceAccount, service identity), which need not be its
    /// name.
    pub account: String,
    /// Whether a Weft proxy runs beside it.
    pub meshed: bool,
    /// Whether it takes new connections.
    pub state: EndpointState,
    /// What it serves; every address has the same IP (one workload, one address).
    pub servers: Vec<ServerSpec>,
}

/// One service port a workload serves, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    /// The service's name, in the harness's namespace.
    pub service: String,
    /// The service port.
    pub service_port: u16,
    /// Where peers connect.
    pub address: SocketAddr,
}

impl WorkloadSpec {
    /// A ready, meshed workload named after its account, serving `service` port 80 at `addr`.
    pub fn new(name: &str, service: &str, addr: SocketAddr) -> Self {
        Self {
            name: name.into(),
            account: name.into(),
            meshed: true,
            state: EndpointState::Ready,
            servers: vec![ServerSpec {
                service: service.into(),
                service_port: 80,
                address: addr,
            }],
        }
    }
}

/// Drives one platform's source of truth.
#[async_trait]
pub trait PlatformHarness: Send {
    /// The adapter under test.
    fn platform(&self) -> Arc<dyn Platform>;
    /// The namespace the harness's workloads live in.
    fn namespace(&self) -> &str;
    /// Makes the platform report exactly `workloads`, through its ordinary change feed.
    async fn set(&mut self, workloads: &[WorkloadSpec]);
    /// Makes the platform report exactly `workloads` through a relist: for an API with
    /// watches, the changes happen while the watch is down and the adapter learns them from a
    /// fresh list (after 410 Gone). Where every update is a full list, as for the local
    /// platform, this is [`PlatformHarness::set`].
    async fn relist(&mut self, workloads: &[WorkloadSpec]) {
        self.set(workloads).await
    }
    /// Feeds the adapter an invalid update (a broken config edit, a malformed object).
    async fn break_source(&mut self);
    /// The credential a proxy beside workload `name` would present.
    fn credential(&self, name: &str) -> Credential;
    /// A credential that must be refused.
    fn bad_credential(&self, name: &str) -> Credential;
    /// Whether the platform reports endpoints on their way out (Kubernetes does; a Nomad
    /// service is deregistered when its allocation stops).
    fn reports_terminating(&self) -> bool {
        true
    }
    /// The port a service declared with `declared` has in the mesh (Nomad and Consul
    /// registrations carry no service port: every such service has one fixed port).
    fn service_port(&self, declared: u16) -> u16 {
        declared
    }
    /// The name under which the platform's registry keys workload `name` (a Nomad allocation
    /// has an ID of its own, which the harness derives from the name).
    fn workload_key(&self, name: &str) -> String {
        name.to_string()
    }
    /// Whether the platform reports workloads that run but are not ready (Kubernetes
    /// endpoints failing readiness; a Nomad registration has no readiness).
    fn reports_not_ready(&self) -> bool {
        true
    }
    /// Writes policies as the platform's own objects (on Kubernetes, Weft's CRDs and Gateway
    /// API routes): each `(kind, name, spec)`, the spec in the objects' camelCase. False where the platform has no such objects
    /// and policies come from the mesh file alone.
    async fn set_policies(&mut self, _objects: &[(&str, &str, serde_json::Value)]) -> bool {
        false
    }
}

/// Waits until the registry satisfies `f`.
pub async fn until(registry: &Registry, what: &str, f: impl Fn(&RegistrySnapshot) -> bool) {
    let mut rx = registry.subscribe();
    tokio::time::timeout(WAIT, rx.wait_for(|s| f(s)))
        .await
        .unwrap_or_else(|_| panic!("registry never showed: {what}"))
        .unwrap();
}

/// The endpoint addresses of every port of `svc`.
pub fn addrs(s: &RegistrySnapshot, svc: &ServiceName) -> Vec<SocketAddr> {
    s.service(svc)
        .map(|s| {
            s.ports
                .iter()
                .flat_map(|p| p.endpoints.iter().map(|e| e.address))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `platform` into `registry` as source `source` until `stop`.
fn run(
    platform: Arc<dyn Platform>,
    registry: &Registry,
    source: &str,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<Result<(), weft_core::platform::PlatformError>> {
    let writer = registry.writer(source);
    let stop = stop.clone();
    tokio::spawn(async move { platform.run(writer, stop).await })
}

/// Runs every scenario against `h`; `second` is another instance of the same platform with a
/// source of truth of its own, for the scenario of two sources that use the same names.
pub async fn run_all<H: PlatformHarness>(mut h: H, mut second: H) {
    let platform = h.platform();
    let registry = Registry::new();
    let stop = CancellationToken::new();
    let task = run(platform.clone(), &registry, platform.name(), &stop);
    let ns = h.namespace().to_string();
    let svc = |name: &str| ServiceName::new(&ns, name).unwrap();
    let api = svc("api");
    let addr = |port: u16| -> SocketAddr { ([127, 0, 0, 1], port).into() };
    let (a1, a2, b1) = (addr(10001), addr(10002), addr(10003));
    let mut world: Vec<WorkloadSpec> = Vec::new();

    // Add, scale up, change, scale down.
    world.push(WorkloadSpec::new("api-1", "api", a1));
    h.set(&world).await;
    until(&registry, "api-1 added", |s| addrs(s, &api) == [a1]).await;
    world.push(WorkloadSpec::new("api-2", "api", b1));
    h.set(&world).await;
    until(&registry, "api-2 added (scale up)", |s| {
        addrs(s, &api).len() == 2
    })
    .await;
    world[0].servers[0].address = a2;
    h.set(&world).await;
    until(&registry, "api-1 moved", |s| {
        let a = addrs(s, &api);
        a.contains(&a2) && !a.contains(&a1)
    })
    .await;
    world.pop();
    h.set(&world).await;
    until(&registry, "api-2 removed (scale down)", |s| {
        addrs(s, &api) == [a2]
    })
    .await;

    // Attestation: a good credential proves the workload's identity; a bad one is refused.
    let id = platform.attest(&h.credential("api-1")).await.unwrap();
    assert_eq!(id.namespace(), ns);
    assert_eq!(id.name(), "api-1");
    let err = platform
        .attest(&h.bad_credential("api-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::Rejected(_) | AttestError::UnknownWorkload(_)
        ),
        "{err}"
    );
    let mut other = h.credential("api-1");
    other.platform = "elsewhere".into();
    assert!(matches!(
        platform.attest(&other).await,
        Err(AttestError::WrongPlatform(_))
    ));

    // An identity that is not the workload's name; meshed and unmeshed endpoints in one
    // service; a terminating endpoint; one workload serving two services on two ports.
    let mut shared = WorkloadSpec::new("api-7f9c", "api", addr(10004));
    shared.account = "api-sa".into();
    let mut legacy = WorkloadSpec::new("legacy", "api", addr(10005));
    legacy.meshed = false;
    let mut leaving = WorkloadSpec::new("api-old", "api", addr(10006));
    leaving.state = EndpointState::Terminating;
    let mut multi = WorkloadSpec::new("multi", "web", addr(10007));
    multi.servers.push(ServerSpec {
        service: "admin".into(),
        service_port: 9090,
        address: addr(10008),
    });
    let terminating = h.reports_terminating();
    world.extend([shared, legacy, multi]);
    if terminating {
        world.push(leaving);
    }
    let api_count = if terminating { 4 } else { 3 };
    h.set(&world).await;
    until(&registry, "the mixed workloads", |s| {
        addrs(s, &api).len() == api_count
            && addrs(s, &svc("web")).len() == 1
            && addrs(s, &svc("admin")).len() == 1
    })
    .await;
    let snap = registry.snapshot();
    let service = snap.service(&api).unwrap();
    let ep = |port: u16| {
        service.ports[0]
            .endpoints
            .iter()
            .find(|e| e.address.port() == port)
            .unwrap_or_else(|| panic!("no endpoint on {port}"))
            .clone()
    };
    let shared_ep = ep(10004);
    assert_eq!(shared_ep.identity.as_ref().unwrap().name(), "api-sa");
    assert_eq!(
        shared_ep.workload.as_ref().unwrap().name,
        h.workload_key("api-7f9c")
    );
    assert!(shared_ep.meshed);
    assert!(!ep(10005).meshed, "the unmeshed endpoint");
    assert!(ep(10005).tls_identity().is_none());
    if terminating {
        assert_eq!(ep(10006).state, EndpointState::Terminating);
    }
    assert_eq!(ep(10004).state, EndpointState::Ready);
    let id = platform.attest(&h.credential("api-7f9c")).await.unwrap();
    assert_eq!(
        id.name(),
        "api-sa",
        "attestation proves the account, not the name"
    );
    let multi_ref = WorkloadRef {
        source: Arc::from(platform.name()),
        key: WorkloadKey {
            namespace: ns.clone(),
            name: h.workload_key("multi"),
        },
    };
    let served: Vec<_> = snap
        .servers_of(&multi_ref)
        .map(|s| (s.service.name.clone(), s.port, s.address.port()))
        .collect();
    assert_eq!(
        served,
        [
            ("web".to_string(), h.service_port(80), 10007),
            ("admin".to_string(), h.service_port(9090), 10008)
        ]
    );

    // A relist: objects missing from it disappear, changed ones change, in one write, and
    // the services it leaves as they were are not touched (nothing flaps).
    let before = registry.snapshot();
    let mut api_topic = registry.watch_topic(Topic::Service(api.clone()));
    let relisted: Vec<_> = world
        .iter()
        .filter(|w| w.name != "multi")
        .cloned()
        .collect();
    h.relist(&relisted).await;
    until(&registry, "the relist applied", |s| {
        s.service(&svc("web")).is_none() && s.service(&svc("admin")).is_none()
    })
    .await;
    let after = registry.snapshot();
    assert_eq!(
        after.version(),
        before.version() + 1,
        "a relist is one write"
    );
    assert!(Arc::ptr_eq(
        &before.service(&api).unwrap(),
        &after.service(&api).unwrap()
    ));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(50), api_topic.changed())
            .await
            .is_err(),
        "a service the relist left alone was touched"
    );
    world = relisted;

    // Two sources that use the same names: both are kept, and merged into one service.
    let task2 = run(second.platform(), &registry, "second", &stop);
    let twin = vec![WorkloadSpec::new("api-1", "api", addr(10011))];
    second.set(&twin).await;
    until(&registry, "the second source's api-1", |s| {
        addrs(s, &api).contains(&addr(10011)) && addrs(s, &api).contains(&a2)
    })
    .await;
    second.set(&[]).await;
    until(&registry, "the second source emptied", |s| {
        !addrs(s, &api).contains(&addr(10011)) && s.source("second").next().is_none()
    })
    .await;
    assert!(addrs(&registry.snapshot(), &api).contains(&a2));

    // An invalid update keeps the last good state; a later valid one still applies.
    let before = registry.snapshot();
    h.break_source().await;
    // The bad update has been seen and refused by now: the registry still holds exactly what it
    // held before it, the same version included (nothing was removed and re-added).
    let after = registry.snapshot();
    assert_eq!(
        after.source(platform.name()).collect::<Vec<_>>(),
        before.source(platform.name()).collect::<Vec<_>>(),
        "a bad update changed the registry"
    );
    assert_eq!(after.version(), before.version());
    world.push(WorkloadSpec::new("api-3", "api", a1));
    h.set(&world).await;
    until(&registry, "api-3 added after a bad update", |s| {
        addrs(s, &api).contains(&a1)
    })
    .await;

    stop.cancel();
    task.await.unwrap().unwrap();
    task2.await.unwrap().unwrap();
}

/// The mesh file of [`run_policy`]'s control plane: the mesh default admits any mesh
/// identity, and `api` admits only the identities of `allowed` (accounts of `ns`).
fn policy_config(
    dir: &std::path::Path,
    ns: &str,
    allowed: &[&str],
) -> weft_core::config::MeshConfig {
    let allow: Vec<String> = allowed.iter().map(|a| format!("\"{ns}/{a}\"")).collect();
    let text = format!(
        "[mesh]\nname = \"policy\"\ntrust_domain = \"weft.test\"\n[ca]\ndata_dir = \"{}\"\n\
         [control]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n\
         [policy]\ndefault_inbound = \"allow\"\n\
         [[policy.authorizations]]\nservice = \"api.{ns}\"\nallow = [{}]\n",
        dir.join("data").display(),
        allow.join(", ")
    );
    weft_core::config::Loader::new()
        .load_str(&text, &dir.join("mesh.toml"))
        .unwrap()
}

/// Starts a proxy beside the harness's workload `name`, presenting the platform's credential
/// for it (written to a token file in `dir`), fronting `app` if given.
async fn start_proxy<H: PlatformHarness>(
    h: &H,
    control: &weft_control::ControlPlane,
    dir: &std::path::Path,
    name: &str,
    app: Option<u16>,
    upstreams: &[&str],
) -> weft_proxy::Proxy {
    let credential = h.credential(name);
    let token_file = dir.join(format!("{name}.token"));
    std::fs::write(&token_file, &credential.token).unwrap();
    let (_, workload) = credential
        .workload
        .as_deref()
        .unwrap()
        .split_once('/')
        .unwrap();
    weft_proxy::Proxy::start(weft_proxy::ProxyConfig {
        trust_bundle: Some(control.trust_bundle_file.clone()),
        namespace: h.namespace().to_string(),
        platform: credential.platform.clone(),
        account: credential.account.clone(),
        token_file,
        ..crate::loopback_proxy_config(control.grpc_addr, workload, app, upstreams)
    })
    .await
    .unwrap()
}

/// The callee enforces authorization, on every platform: a control plane runs the adapter,
/// a proxy runs beside workload `api-1` (service `api`, which a rule opens to `web` only), and
/// clients holding mesh certificates call that proxy directly, without a proxy of their own.
/// A certificate the rule names is served; one it does not name is closed at connection time,
/// while the workload is ready, while it is not ready (its endpoints out of rotation), and
/// once the platform no longer knows it at all (then every port denies every client).
pub async fn run_policy<H: PlatformHarness>(mut h: H) {
    crate::trace_init();
    let ns = h.namespace().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (config_tx, config_rx) =
        tokio::sync::watch::channel(Arc::new(policy_config(dir.path(), &ns, &["web"])));
    let data_dir = config_rx.borrow().data_dir();
    let control = weft_control::ControlPlane::start(config_rx, vec![h.platform()])
        .await
        .unwrap();
    let app = crate::backends::http_echo("api").await;
    let placeholder = |port: u16| -> SocketAddr { ([127, 0, 0, 1], port).into() };
    let web = WorkloadSpec::new("web", "web", placeholder(10021));

    // The workload is declared first, so that its credential exists (the local platform
    // writes it then), at a placeholder address until its proxy has bound its inbound port.
    let mut api = WorkloadSpec::new("api-1", "api", placeholder(10020));
    h.set(&[api.clone(), web.clone()]).await;
    let api_name = ServiceName::new(&ns, "api").unwrap();
    until(&control.registry, "api-1 declared", |s| {
        addrs(s, &api_name) == [placeholder(10020)]
    })
    .await;
    let proxy = start_proxy(&h, &control, dir.path(), "api-1", Some(app.port()), &[]).await;
    let inbound = proxy.inbound_addr.unwrap();
    api.servers[0].address = inbound;
    h.set(&[api.clone(), web.clone()]).await;
    crate::wait_ready(&proxy).await;
    let mut settings = proxy.shared().settings.clone();
    let mut wait_settings =
        async |what: &str, f: &dyn Fn(&weft_proxy::discovery::ProxySettings) -> bool| {
            tokio::time::timeout(
                WAIT,
                settings.wait_for(|s| s.as_ref().is_some_and(|s| f(s))),
            )
            .await
            .unwrap_or_else(|_| panic!("the proxy's settings never showed: {what}"))
            .unwrap();
        };
    let port = inbound.port();
    wait_settings("the rule on the inbound port", &|s| {
        s.servers.contains_key(&port)
    })
    .await;

    let id = |account: &str| format!("spiffe://weft.test/ns/{ns}/sa/{account}");
    let call = async |account: &str| {
        crate::direct::h2_request(
            inbound,
            Some(crate::direct::mesh_leaf(&data_dir, &id(account))),
        )
        .await
    };
    assert_eq!(
        call("web").await,
        Ok(http::StatusCode::OK),
        "the named caller"
    );
    crate::direct::assert_closed("a caller the rule does not name", call("intruder").await);

    // Not ready: the workload's endpoint leaves rotation, its proxy keeps the rule.
    if h.reports_not_ready() {
        api.state = EndpointState::NotReady;
        h.set(&[api.clone(), web.clone()]).await;
        until(&control.registry, "api-1 not ready", |s| {
            s.service(&api_name).is_some_and(|svc| {
                svc.ports[0]
                    .endpoints
                    .iter()
                    .any(|e| e.address == inbound && e.state == EndpointState::NotReady)
            })
        })
        .await;
        // A rule edit made after that reaches the proxy computed from the registry as it is
        // now: the port must still carry the service's rule, edited.
        config_tx.send_replace(Arc::new(policy_config(dir.path(), &ns, &["web", "web-2"])));
        let web2 = weft_core::Identity::parse_spiffe(&id("web-2")).unwrap();
        wait_settings("the edited rule on the not-ready workload's port", &|s| {
            s.servers.get(&port).is_some_and(|p| {
                p.policy.on_connection(Some(&web2)) == weft_core::policy::Decision::Allow
            })
        })
        .await;
        assert_eq!(
            call("web").await,
            Ok(http::StatusCode::OK),
            "not ready, named"
        );
        crate::direct::assert_closed(
            "not ready, a caller the rule does not name",
            call("intruder").await,
        );
    }

    // Gone from the platform: nothing is known of the workload's servers, so every port
    // denies every client, rather than falling back to the mesh default.
    h.set(std::slice::from_ref(&web)).await;
    until(&control.registry, "api-1 gone", |s| {
        addrs(s, &api_name).is_empty()
    })
    .await;
    wait_settings("no server left", &|s| s.servers.is_empty()).await;
    crate::direct::assert_closed("an unknown workload, the named caller", call("web").await);
    crate::direct::assert_closed(
        "an unknown workload, another caller",
        call("intruder").await,
    );

    drop(proxy);
    control.shutdown().await;
}

/// Routes from the mesh file apply the same on every platform: a control plane runs the
/// adapter with routes for service `api` (a header rule and a path rule with a rewrite to
/// `api-v2`, and a 50/50 split of the rest), proxies run beside `api-1` (service `api`),
/// `api-2` (service `api-v2`) and a client `web`, and the client's requests go where the
/// routes say; a request timeout cuts an injected delay, retries mask injected aborts, and
/// gRPC calls go by method.
pub async fn run_routes<H: PlatformHarness>(mut h: H) {
    crate::trace_init();
    let ns = h.namespace().to_string();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[mesh]\nname = \"routes\"\ntrust_domain = \"weft.test\"\n[ca]\ndata_dir = \"{data}\"\n\
         [control]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n\
         [policy]\ndefault_inbound = \"allow\"\n\
         [[routes.http]]\nname = \"api\"\nnamespace = \"{ns}\"\nparent_refs = [{{ name = \"api\" }}]\n\
         [[routes.http.rules]]\n\
         matches = [{{ path = {{ type = \"PathPrefix\", value = \"/\" }}, headers = [{{ name = \"x-version\", value = \"2\" }}] }}]\n\
         backend_refs = [{{ name = \"api-v2\" }}]\n\
         [[routes.http.rules]]\n\
         matches = [{{ path = {{ type = \"PathPrefix\", value = \"/v2\" }} }}]\n\
         filters = [{{ type = \"URLRewrite\", url_rewrite = {{ path = {{ type = \"ReplacePrefixMatch\", replace_prefix_match = \"/\" }} }} }}]\n\
         backend_refs = [{{ name = \"api-v2\" }}]\n\
         [[routes.http.rules]]\n\
         matches = [{{ path = {{ type = \"PathPrefix\", value = \"/slow\" }} }}]\n\
         fault = {{ delay = {{ fixed = \"5s\" }} }}\n\
         timeouts = {{ request = \"200ms\" }}\n\
         [[routes.http.rules]]\n\
         matches = [{{ path = {{ type = \"PathPrefix\", value = \"/flaky\" }} }}]\n\
         fault = {{ abort = {{ http_status = 503, percent = 20 }} }}\n\
         retry = {{ codes = [503], attempts = 9, backoff = \"1ms\" }}\n\
         backend_refs = [{{ name = \"api\" }}]\n\
         [[routes.http.rules]]\n\
         backend_refs = [{{ name = \"api\", weight = 50 }}, {{ name = \"api-v2\", weight = 50 }}]\n\
         [[routes.grpc]]\nname = \"api-grpc\"\nnamespace = \"{ns}\"\nparent_refs = [{{ name = \"api\" }}]\n\
         [[routes.grpc.rules]]\n\
         matches = [{{ method = {{ service = \"pkg.Users\", method = \"Get\" }} }}]\n\
         backend_refs = [{{ name = \"api-v2\" }}]\n",
        data = dir.path().join("data").display(),
    );
    let config = weft_core::config::Loader::new()
        .load_str(&text, &dir.path().join("mesh.toml"))
        .unwrap();
    let (_config_tx, config_rx) = tokio::sync::watch::channel(Arc::new(config));
    let control = weft_control::ControlPlane::start(config_rx, vec![h.platform()])
        .await
        .unwrap();
    let v1 = crate::backends::http_echo("api-v1").await;
    let v2 = crate::backends::http_echo("api-v2").await;
    let placeholder = |port: u16| -> SocketAddr { ([127, 0, 0, 1], port).into() };
    let mut workloads = vec![
        WorkloadSpec::new("api-1", "api", placeholder(10030)),
        WorkloadSpec::new("api-2", "api-v2", placeholder(10031)),
        WorkloadSpec::new("web", "web", placeholder(10032)),
    ];
    h.set(&workloads).await;
    let name = |s: &str| ServiceName::new(&ns, s).unwrap();
    until(&control.registry, "the workloads declared", |s| {
        ["api", "api-v2", "web"]
            .iter()
            .all(|n| !addrs(s, &name(n)).is_empty())
    })
    .await;
    let mut proxies = Vec::new();
    for (i, (workload, app, upstreams)) in [
        ("api-1", Some(v1.port()), vec![]),
        ("api-2", Some(v2.port()), vec![]),
        ("web", None, vec!["api"]),
    ]
    .into_iter()
    .enumerate()
    {
        let proxy = start_proxy(&h, &control, dir.path(), workload, app, &upstreams).await;
        // The client has no inbound listener: its workload keeps its placeholder address.
        if let Some(addr) = proxy.inbound_addr {
            workloads[i].servers[0].address = addr;
        }
        proxies.push(proxy);
    }
    h.set(&workloads).await;
    let inbound = |i: usize| proxies[i].inbound_addr.unwrap();
    until(&control.registry, "the proxies' addresses", |s| {
        addrs(s, &name("api")) == [inbound(0)] && addrs(s, &name("api-v2")) == [inbound(1)]
    })
    .await;
    for p in &proxies {
        crate::wait_ready(p).await;
    }
    let up = crate::upstream(&proxies[2], "api");
    let client = crate::http_client();
    let get = async |path: &str, version: Option<&str>| {
        let mut req = http::Request::get(format!("http://{up}{path}")).header("host", "api.test");
        if let Some(v) = version {
            req = req.header("x-version", v);
        }
        let rsp = client
            .request(req.body(http_body_util::Empty::new()).unwrap())
            .await
            .unwrap();
        let backend = rsp
            .headers()
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = http_body_util::BodyExt::collect(rsp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (backend, String::from_utf8_lossy(&body).into_owned())
    };
    for _ in 0..5 {
        assert_eq!(get("/any", Some("2")).await.0, "api-v2", "the header rule");
    }
    let (backend, body) = get("/v2/users?id=1", None).await;
    assert_eq!(backend, "api-v2", "the path rule");
    assert!(body.starts_with("GET /users?id=1 "), "rewritten: {body}");
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..200 {
        *seen.entry(get("/any", None).await.0).or_insert(0) += 1;
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["api-v1", "api-v2"],
        "the split: {seen:?}"
    );
    assert!(seen.values().all(|n| *n >= 50), "50/50 over 200: {seen:?}");

    // Resilience from the same file: a timeout cuts an injected delay; retries mask injected
    // aborts (a fifth of the attempts; a call fails only if all ten are aborted: 1 in 10^7).
    let status = async |path: &str| {
        let req = http::Request::get(format!("http://{up}{path}")).header("host", "api.test");
        let rsp = client
            .request(req.body(http_body_util::Empty::new()).unwrap())
            .await
            .unwrap();
        rsp.status().as_u16()
    };
    assert_eq!(status("/slow").await, 504, "the timeout cut the delay");
    for _ in 0..50 {
        assert_eq!(status("/flaky").await, 200, "the retries masked the aborts");
    }

    // gRPC calls (HTTP/2, application/grpc) go by method: Get to api-v2, and a method no
    // rule names is UNIMPLEMENTED.
    let tcp = tokio::net::TcpStream::connect(up).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut call = async |method: &str| {
        let req = http::Request::post(format!("http://api.test/pkg.Users/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        h2.ready().await.unwrap();
        let rsp = h2.send_request(req).await.unwrap();
        let header = |name: &str| {
            rsp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        (header("x-backend"), header("grpc-status"))
    };
    assert_eq!(call("Get").await.0, "api-v2", "the gRPC method rule");
    assert_eq!(call("List").await, (String::new(), "12".to_string()));
}

/// Policies apply the same on every platform, from the platform's own objects where it has
/// them (Kubernetes) and from the mesh file elsewhere: a deny rule on a path of service `api`
/// refuses its callers there with 403; a backend policy's concurrency limit of one call makes
/// the caller's proxy refuse a second call while the first is held; and a route's rate limit
/// with an override for the client's identity answers 429 once its burst is spent (a denied
/// request spends no tokens, nor does a request to another path).
pub async fn run_inbound_policies<H: PlatformHarness>(mut h: H) {
    crate::trace_init();
    let ns = h.namespace().to_string();
    let dir = tempfile::tempdir().unwrap();
    let authz = serde_json::json!({
        "service": "api",
        "action": "deny",
        "to": [{"path": {"type": "PathPrefix", "value": "/secret"}}],
    });
    let limit = serde_json::json!({
        "service": "api",
        "requestsPerSecond": 1000,
        "overrides": [{"clients": format!("{ns}/web"), "requestsPerSecond": 0.001, "burst": 3}],
        "to": [{"path": {"type": "PathPrefix", "value": "/open"}}],
    });
    let backend = serde_json::json!({"service": "api", "limits": {"maxInFlight": 1}});
    // Routes with a timeout and a retry (Gateway API's keys), and the faults they meet (on
    // Kubernetes, RoutePolicies on the HTTPRoute's named rules).
    let route = serde_json::json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "api"}],
        "rules": [
            {"name": "slow", "matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}],
             "timeouts": {"request": "200ms"}},
            {"name": "flaky", "matches": [{"path": {"type": "PathPrefix", "value": "/flaky"}}],
             "retry": {"codes": [503], "attempts": 9, "backoff": "1ms"}},
            {"name": "rest"},
        ],
    });
    let target = |rule: &str| {
        serde_json::json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                           "name": "api-routes", "sectionName": rule})
    };
    let objects = h
        .set_policies(&[
            ("AuthorizationPolicy", "no-secret", authz),
            ("RateLimitPolicy", "api-limit", limit),
            ("BackendPolicy", "api-backend", backend),
            ("HTTPRoute", "api-routes", route),
            (
                "RoutePolicy",
                "slow-delay",
                serde_json::json!({"targetRef": target("slow"), "fault": {"delay": {"fixed": "5s"}}}),
            ),
            (
                "RoutePolicy",
                "flaky-abort",
                serde_json::json!({"targetRef": target("flaky"),
                                   "fault": {"abort": {"httpStatus": 503, "percent": 20}}}),
            ),
        ])
        .await;
    let in_file = if objects {
        String::new()
    } else {
        format!(
            "[[policy.authorizations]]\nname = \"no-secret\"\nservice = \"api.{ns}\"\naction = \"deny\"\n\
             to = [{{ path = {{ type = \"PathPrefix\", value = \"/secret\" }} }}]\n\
             [[policy.rate_limits]]\nservice = \"api.{ns}\"\nrequests_per_second = 1000\n\
             overrides = [{{ clients = \"{ns}/web\", requests_per_second = 0.001, burst = 3 }}]\n\
             to = [{{ path = {{ type = \"PathPrefix\", value = \"/open\" }} }}]\n\
             [[policy.backends]]\nservice = \"api.{ns}\"\nlimits = {{ max_in_flight = 1 }}\n\
             [[routes.http]]\nname = \"api-routes\"\nnamespace = \"{ns}\"\nparent_refs = [{{ name = \"api\" }}]\n\
             [[routes.http.rules]]\nname = \"slow\"\n\
             matches = [{{ path = {{ type = \"PathPrefix\", value = \"/slow\" }} }}]\n\
             timeouts = {{ request = \"200ms\" }}\nfault = {{ delay = {{ fixed = \"5s\" }} }}\n\
             [[routes.http.rules]]\nname = \"flaky\"\n\
             matches = [{{ path = {{ type = \"PathPrefix\", value = \"/flaky\" }} }}]\n\
             retry = {{ codes = [503], attempts = 9, backoff = \"1ms\" }}\n\
             fault = {{ abort = {{ http_status = 503, percent = 20 }} }}\n\
             [[routes.http.rules]]\nname = \"rest\"\n"
        )
    };
    let text = format!(
        "[mesh]\nname = \"policies\"\ntrust_domain = \"weft.test\"\n[ca]\ndata_dir = \"{data}\"\n\
         [control]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n\
         [policy]\ndefault_inbound = \"allow\"\n{in_file}",
        data = dir.path().join("data").display(),
    );
    let config = weft_core::config::Loader::new()
        .load_str(&text, &dir.path().join("mesh.toml"))
        .unwrap();
    let (_config_tx, config_rx) = tokio::sync::watch::channel(Arc::new(config));
    let control = weft_control::ControlPlane::start(config_rx, vec![h.platform()])
        .await
        .unwrap();
    let (app, release, arrived) = crate::backends::http_gated("api").await;
    let placeholder = |port: u16| -> SocketAddr { ([127, 0, 0, 1], port).into() };
    let mut workloads = vec![
        WorkloadSpec::new("api-1", "api", placeholder(10040)),
        WorkloadSpec::new("web", "web", placeholder(10041)),
    ];
    h.set(&workloads).await;
    let name = |s: &str| ServiceName::new(&ns, s).unwrap();
    until(&control.registry, "the workloads declared", |s| {
        ["api", "web"]
            .iter()
            .all(|n| !addrs(s, &name(n)).is_empty())
    })
    .await;
    let server = start_proxy(&h, &control, dir.path(), "api-1", Some(app.port()), &[]).await;
    let client = start_proxy(&h, &control, dir.path(), "web", None, &["api"]).await;
    workloads[0].servers[0].address = server.inbound_addr.unwrap();
    h.set(&workloads).await;
    crate::wait_ready(&server).await;
    crate::wait_ready(&client).await;
    // Both policies are in the server's settings before any call spends a token.
    let port = server.inbound_addr.unwrap().port();
    let mut settings = server.shared().settings.clone();
    tokio::time::timeout(
        WAIT,
        settings.wait_for(|s| {
            s.as_ref()
                .and_then(|s| s.servers.get(&port))
                .is_some_and(|p| {
                    !p.policy.rate_limits.is_empty()
                        && p.policy
                            .rules
                            .iter()
                            .any(|r| r.name.ends_with("/no-secret"))
                })
        }),
    )
    .await
    .expect("the policies never reached the server's proxy")
    .unwrap();

    let up = crate::upstream(&client, "api");
    let http = crate::http_client();
    // The whole answer is read: the service's one place comes free when the caller's proxy
    // has read the response to its end, before the caller sees that end.
    let status = async |path: &str| {
        let req = http::Request::get(format!("http://{up}{path}")).header("host", "api.test");
        let rsp = http
            .request(req.body(http_body_util::Empty::new()).unwrap())
            .await
            .unwrap();
        let status = rsp.status().as_u16();
        let _ = http_body_util::BodyExt::collect(rsp.into_body()).await;
        status
    };
    for _ in 0..3 {
        assert_eq!(status("/secret/x").await, 403, "the deny rule");
    }
    // The backend policy reached the caller's proxy: one call in flight at a time.
    let held = {
        let (http, up) = (http.clone(), up);
        tokio::spawn(async move { crate::get_through(&http, up, "/held").await.0 })
    };
    tokio::time::timeout(WAIT, arrived.notified())
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        while status("/probe").await != 503 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the service's concurrency limit never applied");
    release.add_permits(1);
    assert_eq!(held.await.unwrap(), http::StatusCode::OK);
    for i in 0..3 {
        assert_eq!(status("/open").await, 200, "call {i} within the burst");
    }
    assert_eq!(status("/open").await, 429, "the override's burst is spent");

    // The route's timeout cuts the injected delay (once the routes are in force), and its
    // retries mask the injected aborts (a fifth of the attempts; a call fails only if all ten
    // are aborted: 1 in 10^7).
    tokio::time::timeout(WAIT, async {
        while status("/slow").await != 504 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the route's timeout and fault never applied");
    for _ in 0..30 {
        assert_eq!(status("/flaky").await, 200, "the retries masked the aborts");
    }
    drop((client, server));
    control.shutdown().await;
}
