//! Kubernetes objects in their wire shape, for the fake API server: the pods, Services and
//! EndpointSlices that tests feed the Kubernetes adapter, and the ServiceAccount tokens its
//! proxies present.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::fake_kube::{FakeKube, TokenInfo};

/// The TokenReview `extra` keys of a bound ServiceAccount token.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// See [`POD_NAME_EXTRA`].
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// A Namespace, with its `weft.dev/inject` annotation if given.
pub fn namespace(name: &str, inject: Option<&str>) -> Value {
    let mut ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    if let Some(v) = inject {
        ns["metadata"]["annotations"] = json!({"weft.dev/inject": v});
    }
    ns
}

/// A running pod at `ip` that runs as ServiceAccount `account`, with the Weft proxy as a
/// native sidecar when `meshed`.
pub fn pod(ns: &str, name: &str, account: &str, meshed: bool, ip: IpAddr) -> Value {
    let init = if meshed {
        json!([{"name": "weft-proxy", "image": "weft-proxy:test", "restartPolicy": "Always"}])
    } else {
        json!([])
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": {"app": name}},
        "spec": {
            "serviceAccountName": account,
            "initContainers": init,
            "containers": [{"name": "app", "image": "app:test"}],
        },
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]},
    })
}

/// A Service port: name, port, target port (a number or a container port's name) and
/// appProtocol.
#[derive(Clone, Debug)]
pub struct SvcPort {
    /// The port's name; empty for the single unnamed port.
    pub name: String,
    /// The port clients use.
    pub port: u16,
    /// The target port, a number or a name.
    pub target: Value,
    /// `appProtocol`, if any.
    pub app_protocol: Option<String>,
}

impl SvcPort {
    /// A port named `name` that targets the same number.
    pub fn new(name: &str, port: u16) -> Self {
        Self {
            name: name.into(),
            port,
            target: json!(port),
            app_protocol: None,
        }
    }
}

/// A ClusterIP Service (headless when `cluster_ip` is `None`).
pub fn service(ns: &str, name: &str, cluster_ip: Option<IpAddr>, ports: &[SvcPort]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            let mut v = json!({"port": p.port, "targetPort": p.target, "protocol": "TCP"});
            if !p.name.is_empty() {
                v["name"] = json!(p.name);
            }
            if let Some(a) = &p.app_protocol {
                v["appProtocol"] = json!(a);
            }
            v
        })
        .collect();
    let ip = cluster_ip.map_or("None".to_string(), |ip| ip.to_string());
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ports": ports,
                 "selector": {"svc": name}},
    })
}

/// An endpoint's conditions, as the endpoint controller writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Ready.
    Ready,
    /// Terminating but still passing its readiness checks.
    ServingTerminating,
    /// Terminating and no longer serving.
    Terminating,
    /// Failing its readiness checks.
    NotReady,
}

/// One endpoint of a slice: the pod behind it, its address and its conditions.
#[derive(Clone, Debug)]
pub struct SliceEndpoint {
    /// The pod (in the slice's namespace); `None` for an address with no pod.
    pub pod: Option<String>,
    /// Its address.
    pub ip: IpAddr,
    /// Its conditions.
    pub condition: Condition,
}

/// An EndpointSlice of Service `service`, with its ports as `(service port name, number)`.
pub fn slice(
    ns: &str,
    name: &str,
    service: &str,
    ports: &[(&str, u16)],
    endpoints: &[SliceEndpoint],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| {
            let mut v = json!({"port": p, "protocol": "TCP"});
            if !n.is_empty() {
                v["name"] = json!(n);
            }
            v
        })
        .collect();
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            let (ready, serving, terminating) = match e.condition {
                Condition::Ready => (true, true, false),
                Condition::ServingTerminating => (false, true, true),
                Condition::Terminating => (false, false, true),
                Condition::NotReady => (false, false, false),
            };
            let mut v = json!({
                "addresses": [e.ip.to_string()],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            });
            if let Some(pod) = &e.pod {
                v["targetRef"] = json!({"kind": "Pod", "namespace": ns, "name": pod});
            }
            v
        })
        .collect();
    let family = if endpoints.is_empty() || endpoints_v4(&endpoints) {
        "IPv4"
    } else {
        "IPv6"
    };
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": name,
                     "labels": {"kubernetes.io/service-name": service,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": family,
        "ports": ports,
        "endpoints": endpoints,
    })
}

fn endpoints_v4(endpoints: &[Value]) -> bool {
    endpoints
        .first()
        .and_then(|e| e["addresses"][0].as_str())
        .is_some_and(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
}

/// What a projected ServiceAccount token of a pod says about it.
#[derive(Clone, Debug)]
pub struct TokenFor {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The ServiceAccount the token names.
    pub account: String,
    /// The audiences it is issued for.
    pub audiences: Vec<String>,
    /// Whether it has expired.
    pub expired: bool,
}

impl TokenFor {
    /// A valid token of pod `ns/pod` running as `account`, for audience `weft`.
    pub fn new(ns: &str, pod: &str, account: &str) -> Self {
        Self {
            namespace: ns.into(),
            pod: pod.into(),
            account: account.into(),
            audiences: vec!["weft".into()],
            expired: false,
        }
    }

    /// Registers the token `token` with the fake, bound to the pod's current uid (if the pod
    /// exists; otherwise to a uid no pod has).
    pub fn register(&self, fake: &FakeKube, token: &str) {
        let uid = fake
            .get("Pod", Some(&self.namespace), &self.pod)
            .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "no-such-pod".into());
        let extra = BTreeMap::from([
            (POD_NAME_EXTRA.to_string(), vec![self.pod.clone()]),
            (POD_UID_EXTRA.to_string(), vec![uid]),
        ]);
        fake.add_token(
            token,
            TokenInfo {
                username: format!("system:serviceaccount:{}:{}", self.namespace, self.account),
                uid: format!("sa-uid-{}-{}", self.namespace, self.account),
                audiences: self.audiences.clone(),
                extra,
                expired: self.expired,
            },
        );
    }
}
