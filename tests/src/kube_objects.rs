//! Kubernetes objects in their wire shape, for the fake API server: the pods, Services and
//! EndpointSlices that tests feed the Kubernetes adapter, the ServiceAccount tokens its
//! proxies present, and a control-plane install as the Helm chart makes it, for `weft check`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
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

// === a control-plane install, for `weft check` ===

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct Pem {
    /// The certificate (a chain, leaf first, where it has one).
    pub cert: String,
    /// Its key (PKCS#8).
    pub key: String,
}

/// A CA certificate for `cn` valid from `not_before` to `not_after` (P-256), and the issuer
/// that signs with it.
pub fn ca_cert(
    cn: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> (Pem, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = not_before.into();
    p.not_after = not_after.into();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap().pem();
    let pem = Pem {
        cert,
        key: key.serialize_pem(),
    };
    (pem, Issuer::new(p, key))
}

/// A serving certificate for the DNS names `dns`, signed by `issuer`, valid from `not_before`
/// to `not_after`.
pub fn serving_cert(
    issuer: &Issuer<'_, KeyPair>,
    dns: &[&str],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Pem {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    if let Some(first) = dns.first() {
        p.distinguished_name.push(DnType::CommonName, *first);
    }
    p.not_before = not_before.into();
    p.not_after = not_after.into();
    p.subject_alt_names = dns
        .iter()
        .map(|d| SanType::DnsName((*d).try_into().unwrap()))
        .collect();
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Pem {
        cert: p.signed_by(&key, issuer).unwrap().pem(),
        key: key.serialize_pem(),
    }
}

/// `days` days.
pub fn days(days: u64) -> Duration {
    Duration::from_secs(days * 86_400)
}

/// A `kubernetes.io/tls` Secret holding `pem`.
pub fn tls_secret(ns: &str, name: &str, pem: &Pem) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"namespace": ns, "name": name},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": BASE64.encode(&pem.cert), "tls.key": BASE64.encode(&pem.key)},
    })
}

/// The control plane's Deployment as the chart writes it, with `ready` of `replicas` replicas
/// ready and the mesh's root mounted from Secret `ca_secret`.
pub fn control_deployment(ns: &str, replicas: u32, ready: u32, ca_secret: &str) -> Value {
    let mut status = json!({
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
    });
    // A zero count is left out, as on the wire.
    if ready > 0 {
        status["readyReplicas"] = json!(ready);
        status["availableReplicas"] = json!(ready);
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"namespace": ns, "name": "weft-control", "generation": 1,
                     "labels": {"app.kubernetes.io/name": "weft"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "weft"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "weft", "weft.dev/control-plane": "true"}},
                "spec": {
                    "serviceAccountName": "weft-control",
                    "containers": [{
                        "name": "weft-control",
                        "image": "ghcr.io/weft-mesh/weft-control:0.1.0",
                        "args": ["--config", "/etc/weft/config/mesh.toml", "--log-json"],
                    }],
                    "volumes": [
                        {"name": "config", "configMap": {"name": "weft-config"}},
                        {"name": "ca", "secret": {"secretName": ca_secret, "defaultMode": 256}},
                        {"name": "webhook-tls", "secret": {"secretName": "weft-webhook-tls", "defaultMode": 256}},
                        {"name": "data", "emptyDir": {}},
                    ],
                },
            },
        },
        "status": status,
    })
}

/// A ServiceAccount.
pub fn service_account(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"namespace": ns, "name": name},
    })
}

/// The control plane's Service as the chart writes it.
pub fn control_service(ns: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": "weft-control"},
        "spec": {
            "type": "ClusterIP", "clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50"],
            "selector": {"app.kubernetes.io/name": "weft"},
            "ports": [
                {"name": "grpc", "port": 7443, "targetPort": "grpc", "appProtocol": "grpc", "protocol": "TCP"},
                {"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"},
                {"name": "http", "port": 7080, "targetPort": "http", "protocol": "TCP"},
            ],
        },
    })
}

/// The mesh config file the chart writes for namespace `ns`, with its default values.
pub fn mesh_toml(ns: &str) -> String {
    format!(
        r#"[mesh]
name = "weft"
trust_domain = "cluster.local"

[ca]
data_dir = "/var/lib/weft"
root_cert = "/etc/weft/ca/tls.crt"
root_key = "/etc/weft/ca/tls.key"
leaf_ttl = "24h"

[control]
grpc_addr = "0.0.0.0:7443"
http_addr = "0.0.0.0:7080"
probe_addr = "0.0.0.0:7081"

[policy]
default_inbound = "allow"

[platforms.kubernetes]
namespaces = []
token_audience = "weft"

[platforms.kubernetes.webhook]
addr = "0.0.0.0:8443"
cert_file = "/etc/weft/webhook/tls.crt"
key_file = "/etc/weft/webhook/tls.key"

[platforms.kubernetes.inject]
proxy_image = "ghcr.io/weft-mesh/weft-proxy:0.1.0"
image_pull_policy = "IfNotPresent"
control_addr = "weft-control.{ns}.svc:7443"
native_sidecar = true
proxy_uid = 2102
proxy_cpu_request = "10m"
proxy_memory_request = "32Mi"
proxy_memory_limit = "256Mi"
log_level = "info"
"#
    )
}

/// The ConfigMap `weft-config` holding `mesh_toml` as `mesh.toml`.
pub fn mesh_configmap(ns: &str, mesh_toml: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": ns, "name": "weft-config"},
        "data": {"mesh.toml": mesh_toml},
    })
}

/// The MutatingWebhookConfiguration `weft-inject-<ns>` as the chart writes it, trusting the
/// PEM `ca_bundle`.
pub fn webhook_configuration(ns: &str, ca_bundle: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": format!("weft-inject-{ns}")},
        "webhooks": [{
            "name": "inject.weft.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "Never",
            "clientConfig": {
                "service": {"name": "weft-control", "namespace": ns, "path": "/inject", "port": 443},
                "caBundle": BASE64.encode(ca_bundle),
            },
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                "operator": "NotIn", "values": ["kube-system", ns]}]},
            "objectSelector": {"matchExpressions": [{"key": "weft.dev/control-plane",
                "operator": "DoesNotExist"}]},
        }],
    })
}

/// A running pod with the Weft proxy as a native sidecar, whose proxy is `ready` or not.
pub fn meshed_pod(ns: &str, name: &str, account: &str, ready: bool, ip: IpAddr) -> Value {
    let mut pod = pod(ns, name, account, true, ip);
    pod["status"]["initContainerStatuses"] = json!([{
        "name": "weft-proxy", "ready": ready, "started": true, "restartCount": 0,
        "image": "weft-proxy:test", "imageID": "", "state": {"running": {}},
    }]);
    pod["status"]["containerStatuses"] = json!([{
        "name": "app", "ready": true, "started": true, "restartCount": 0,
        "image": "app:test", "imageID": "", "state": {"running": {}},
    }]);
    pod
}

/// A control-plane pod as the chart's Deployment makes it, scheduled to a node, `Ready` or
/// not.
pub fn control_pod(ns: &str, name: &str, ready: bool, ip: IpAddr) -> Value {
    let mut pod = pod(ns, name, "weft-control", false, ip);
    pod["metadata"]["labels"] = json!({
        "app.kubernetes.io/name": "weft",
        "app.kubernetes.io/component": "control-plane",
        "app.kubernetes.io/instance": "weft",
        "weft.dev/control-plane": "true",
    });
    pod["spec"]["nodeName"] = json!("node-1");
    pod["spec"]["containers"][0]["name"] = json!("weft-control");
    let status = if ready { "True" } else { "False" };
    pod["status"]["conditions"] = json!([
        {"type": "PodScheduled", "status": "True"},
        {"type": "Ready", "status": status},
    ]);
    pod
}

/// A healthy control plane in a namespace as the chart installs it, with the certificates it
/// was made with, and a namespace of meshed pods.
#[derive(Debug)]
pub struct Install {
    /// The control plane's namespace.
    pub namespace: String,
    /// The mesh's root (Secret `weft-ca`).
    pub root: Pem,
    /// The webhook's CA, the MutatingWebhookConfiguration's caBundle.
    pub webhook_ca: Pem,
    /// Signs with the webhook's CA.
    pub webhook_issuer: Issuer<'static, KeyPair>,
    /// The webhook's serving certificate (Secret `weft-webhook-tls`).
    pub webhook_cert: Pem,
    /// The namespace annotated `weft.dev/inject: enabled`.
    pub app_namespace: String,
}

impl Install {
    /// Certificates as the chart makes them (for ten years), for a control plane in `ns`.
    pub fn new(ns: &str) -> Self {
        let now = SystemTime::now();
        let (from, until) = (now - days(1), now + days(3650));
        let (root, _) = ca_cert("weft root cluster.local", from, until);
        let (webhook_ca, webhook_issuer) = ca_cert("weft-webhook-ca", from, until);
        let service = format!("weft-control.{ns}.svc");
        let webhook_cert = serving_cert(
            &webhook_issuer,
            &[&service, &format!("weft-control.{ns}")],
            from,
            until,
        );
        Self {
            namespace: ns.into(),
            root,
            webhook_ca,
            webhook_issuer,
            webhook_cert,
            app_namespace: "shop".into(),
        }
    }

    /// Every object of the install, and the meshed namespace with two ready pods.
    pub fn objects(&self) -> Vec<Value> {
        let ns = self.namespace.as_str();
        let app = self.app_namespace.as_str();
        vec![
            namespace(ns, None),
            service_account(ns, "weft-control"),
            control_service(ns),
            mesh_configmap(ns, &mesh_toml(ns)),
            tls_secret(ns, "weft-ca", &self.root),
            tls_secret(ns, "weft-webhook-tls", &self.webhook_cert),
            control_deployment(ns, 1, 1, "weft-ca"),
            webhook_configuration(ns, &self.webhook_ca.cert),
            namespace(app, Some("enabled")),
            meshed_pod(app, "web-0", "web", true, "10.1.0.10".parse().unwrap()),
            meshed_pod(app, "api-0", "api", true, "10.1.0.11".parse().unwrap()),
        ]
    }

    /// Applies [`Install::objects`] to `fake`.
    pub fn apply(&self, fake: &FakeKube) {
        for obj in self.objects() {
            fake.apply(obj);
        }
    }
}
