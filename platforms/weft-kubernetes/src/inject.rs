//! Sidecar injection: the change that meshes a pod, applied to a pod template in its wire
//! shape (JSON), so fields this crate's schema does not know pass through untouched. The
//! admission webhook turns it into an RFC 6902 patch; `weft inject` applies it to manifests.
//!
//! An injected pod gets:
//! - the init container `weft-init` (`weft-proxy init`, NET_ADMIN and NET_RAW only), which
//!   writes the nat rules that send the pod's TCP through the proxy;
//! - the proxy `weft-proxy`, as a native sidecar (an init container with
//!   `restartPolicy: Always`, started before the application's init containers and
//!   containers, with a startup probe on its `/ready`, so the application starts once the proxy
//!   holds a certificate and Jobs complete), or with `native_sidecar = false` as the first
//!   ordinary container, for clusters older than 1.29; its probe listener (`probe_port`) serves
//!   every kubelet probe of the pod, and its admin listener (`admin_port`) the metrics;
//! - a projected ServiceAccount token for the audience `weft`, the proxy's environment, its
//!   resources, and the non-root user the rules exempt;
//! - the annotation `weft.dev/proxy-version`.
//!
//! The application's HTTP, HTTPS, TCP and gRPC probes are pointed at the proxy's probe port
//! (`/app-health/<container>/<live|ready|startup>`), and the originals handed to the proxy,
//! which runs them on loopback: the kubelet's own connections to the application's ports
//! would meet the mutual-TLS-only inbound listener. Exec probes need no network and are left
//! as they are. The probe listener has connection slots of its own, apart from the admin
//! listener's, so a client flooding the admin port (which anyone who reaches the pod may
//! scrape) cannot make the kubelet's probes fail.
//!
//! It honours the pod annotations `weft.dev/skip-inbound-ports` and
//! `weft.dev/skip-outbound-ports` (ports or ranges, `22,8000-8010`), which bypass the proxy,
//! and `weft.dev/access-log` (`common`, `json`, `off`), which wins over the mesh file's
//! access log settings.
//! The proxy's probe and admin ports are always skipped inbound, so the kubelet reaches the
//! probes and a metrics scraper the metrics.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{INJECT_ANNOTATION, PROXY_CONTAINER};

/// The init container that writes the nat rules.
pub const INIT_CONTAINER: &str = "weft-init";
/// The annotation an injected pod carries: the injector's version.
pub const VERSION_ANNOTATION: &str = "weft.dev/proxy-version";
/// Inbound ports (and ranges) that bypass the proxy.
pub const SKIP_INBOUND_ANNOTATION: &str = "weft.dev/skip-inbound-ports";
/// Outbound ports (and ranges) that bypass the proxy.
pub const SKIP_OUTBOUND_ANNOTATION: &str = "weft.dev/skip-outbound-ports";
/// The pod annotation that turns the proxy's access log on (`common`, `json`) or off (`off`),
/// whatever the mesh file says.
pub const ACCESS_LOG_ANNOTATION: &str = "weft.dev/access-log";
/// The label of the control plane's own pods, which are never injected.
pub const CONTROL_PLANE_LABEL: &str = "weft.dev/control-plane";

/// The volume holding the projected token, and where the proxy reads it.
const TOKEN_VOLUME: &str = "weft-token";
const TOKEN_DIR: &str = "/var/run/secrets/weft.dev";
const TOKEN_FILE: &str = "token";

/// `[platforms.kubernetes.inject]`: what the injector adds to a pod.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InjectSettings {
    /// The proxy image (also used for the init container).
    pub proxy_image: String,
    /// The image pull policy of both containers.
    pub image_pull_policy: String,
    /// Where proxies reach the control plane (`name:port` or `ip:port`).
    pub control_addr: String,
    /// The proxy as a native sidecar (Kubernetes 1.29 and later); `false` adds it as the first
    /// ordinary container instead.
    pub native_sidecar: bool,
    /// The proxy's user and group id; the nat rules exempt its traffic.
    pub proxy_uid: u32,
    /// The proxy's inbound port.
    pub inbound_port: u16,
    /// The proxy's transparent outbound port.
    pub outbound_port: u16,
    /// The proxy's admin port (`/live`, `/ready`, `/metrics`), for metrics scrapers.
    pub admin_port: u16,
    /// The proxy's probe port (`/live`, `/ready`, `/app-health/...`), where the kubelet probes
    /// the proxy and, through it, the application.
    pub probe_port: u16,
    /// The proxy's tap port (`Tap.Watch` over mutual TLS), where the control plane watches
    /// requests live for `weft tap` and the dashboard.
    pub tap_port: u16,
    /// The lifetime asked for the projected token; the kubelet refreshes it before it ends.
    pub token_expiration_seconds: u32,
    /// The proxy's CPU request.
    pub proxy_cpu_request: String,
    /// The proxy's memory request.
    pub proxy_memory_request: String,
    /// The proxy's memory limit.
    pub proxy_memory_limit: String,
    /// The proxy's log filter (`RUST_LOG` syntax).
    pub log_level: String,
}

impl Default for InjectSettings {
    fn default() -> Self {
        Self {
            proxy_image: format!("ghcr.io/weft-mesh/weft-proxy:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: "IfNotPresent".into(),
            control_addr: "weft-control.weft.svc:7443".into(),
            native_sidecar: true,
            proxy_uid: 2102,
            inbound_port: 7143,
            outbound_port: 7140,
            admin_port: 7191,
            probe_port: 7192,
            tap_port: 7193,
            token_expiration_seconds: 3600,
            proxy_cpu_request: "10m".into(),
            proxy_memory_request: "32Mi".into(),
            proxy_memory_limit: "256Mi".into(),
            log_level: "info".into(),
        }
    }
}

/// What the injector needs besides its settings: the mesh it joins pods to.
#[derive(Clone, Debug)]
pub struct Injector {
    /// The settings.
    pub settings: InjectSettings,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// The mesh's roots, PEM, handed to the proxy to trust the control plane at first.
    pub trust_bundle_pem: String,
    /// The audience of the projected token.
    pub token_audience: String,
}

/// Why a pod is left as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Neither the pod nor its namespace asks for the proxy.
    NotEnabled,
    /// The pod or its namespace says `weft.dev/inject: disabled`.
    Disabled,
    /// `kube-system` is never meshed.
    SystemNamespace,
    /// A pod on the host's network would rewrite the node's rules.
    HostNetwork,
    /// The pod already has the proxy.
    AlreadyInjected,
    /// The control plane itself.
    ControlPlane,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skip::NotEnabled => "neither the pod nor its namespace has weft.dev/inject: enabled",
            Skip::Disabled => "weft.dev/inject: disabled",
            Skip::SystemNamespace => "pods in kube-system are never injected",
            Skip::HostNetwork => "pods on the host network are never injected",
            Skip::AlreadyInjected => "the pod already has the proxy",
            Skip::ControlPlane => "the control plane is never injected",
        })
    }
}

/// Why a pod cannot be injected as asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// An annotation the injector reads has a value it cannot use.
    #[error("annotation {annotation}: {reason}")]
    Annotation {
        /// The annotation.
        annotation: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The object is not a pod template the injector can change.
    #[error("{0}")]
    Shape(String),
}

/// Whether the object's pod wants the proxy. `namespace_inject` is its namespace's
/// `weft.dev/inject` annotation, where known; the pod's own annotation wins.
pub fn decide(
    namespace: &str,
    namespace_inject: Option<&str>,
    template: &Value,
) -> Result<Option<Skip>, InjectError> {
    let meta = &template["metadata"];
    let spec = &template["spec"];
    if namespace == "kube-system" {
        return Ok(Some(Skip::SystemNamespace));
    }
    if meta["labels"].get(CONTROL_PLANE_LABEL).is_some() {
        return Ok(Some(Skip::ControlPlane));
    }
    if spec["hostNetwork"].as_bool() == Some(true) {
        return Ok(Some(Skip::HostNetwork));
    }
    let has = |list: &str| {
        spec[list]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == PROXY_CONTAINER))
    };
    if has("containers") || has("initContainers") {
        return Ok(Some(Skip::AlreadyInjected));
    }
    let pod = meta["annotations"]
        .get(INJECT_ANNOTATION)
        .and_then(Value::as_str);
    let verdict = |v: &str| match v {
        "enabled" => Ok(None),
        "disabled" => Ok(Some(Skip::Disabled)),
        other => Err(InjectError::Annotation {
            annotation: INJECT_ANNOTATION,
            reason: format!("{other:?} is neither enabled nor disabled"),
        }),
    };
    match (pod, namespace_inject) {
        (Some(v), _) => verdict(v),
        (None, Some(v)) => verdict(v),
        (None, None) => Ok(Some(Skip::NotEnabled)),
    }
}

/// Checks a port list annotation (`22,8000-8010`) and returns it as `weft-proxy init` takes
/// it.
fn port_list(annotation: &'static str, value: &str) -> Result<Vec<String>, InjectError> {
    let bad = |reason: String| InjectError::Annotation { annotation, reason };
    let port = |p: &str| match p.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(bad(format!("{p:?} is not a port (1-65535)"))),
        Ok(p) => Ok(p),
    };
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if a > b {
                    return Err(bad(format!("{item:?}: the range ends before it starts")));
                }
                out.push(format!("{a}-{b}"));
            }
            None => out.push(port(item)?.to_string()),
        }
    }
    Ok(out)
}

impl Injector {
    /// Meshes the pod template `{metadata, spec}` in place.
    pub fn inject(&self, template: &mut Value) -> Result<(), InjectError> {
        if !template.is_object() {
            return Err(InjectError::Shape(
                "the pod template is not an object".into(),
            ));
        }
        if !template["spec"].is_object() {
            return Err(InjectError::Shape("the pod template has no spec".into()));
        }
        let annotations = template["metadata"]["annotations"].clone();
        let annotation = |name: &'static str| annotations.get(name).and_then(Value::as_str);
        let s = &self.settings;
        let mut skip_in = vec![
            s.probe_port.to_string(),
            s.admin_port.to_string(),
            s.tap_port.to_string(),
        ];
        if let Some(v) = annotation(SKIP_INBOUND_ANNOTATION) {
            skip_in.extend(port_list(SKIP_INBOUND_ANNOTATION, v)?);
        }
        let skip_out = match annotation(SKIP_OUTBOUND_ANNOTATION) {
            Some(v) => port_list(SKIP_OUTBOUND_ANNOTATION, v)?,
            None => Vec::new(),
        };
        let access_log = match annotation(ACCESS_LOG_ANNOTATION) {
            None => None,
            Some(v) => Some(
                weft_core::observability::AccessLogFormat::parse(v).ok_or_else(|| {
                    InjectError::Annotation {
                        annotation: ACCESS_LOG_ANNOTATION,
                        reason: format!("{v:?} is none of common, json, off"),
                    }
                })?,
            ),
        };

        let init = self.init_container(&skip_in, &skip_out);
        let spec = template["spec"]
            .as_object_mut()
            .ok_or_else(|| InjectError::Shape("the pod template has no spec".into()))?;
        let probes = match spec.get_mut("containers") {
            Some(Value::Array(containers)) => self.rewrite_probes(containers),
            _ => serde_json::Map::new(),
        };
        let proxy = self.proxy_container(&probes, access_log);
        let list =
            |spec: &mut serde_json::Map<String, Value>, key: &str| -> Result<(), InjectError> {
                match spec.get(key) {
                    None | Some(Value::Null) => {
                        spec.insert(key.into(), json!([]));
                        Ok(())
                    }
                    Some(Value::Array(_)) => Ok(()),
                    Some(_) => Err(InjectError::Shape(format!("spec.{key} is not a list"))),
                }
            };
        list(spec, "initContainers")?;
        list(spec, "containers")?;
        list(spec, "volumes")?;
        if let Some(Value::Array(inits)) = spec.get_mut("initContainers") {
            inits.insert(0, init);
            if s.native_sidecar {
                inits.insert(1, proxy.clone());
            }
        }
        if !s.native_sidecar
            && let Some(Value::Array(containers)) = spec.get_mut("containers")
        {
            containers.insert(0, proxy);
        }
        if let Some(Value::Array(volumes)) = spec.get_mut("volumes") {
            volumes.push(self.token_volume());
        }

        let meta = template
            .as_object_mut()
            .ok_or_else(|| InjectError::Shape("the pod template is not an object".into()))?
            .entry("metadata")
            .or_insert_with(|| json!({}));
        let meta = meta
            .as_object_mut()
            .ok_or_else(|| InjectError::Shape("metadata is not an object".into()))?;
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        match annotations {
            Value::Object(a) => {
                a.insert(VERSION_ANNOTATION.into(), json!(env!("CARGO_PKG_VERSION")));
            }
            Value::Null => {
                *annotations = json!({VERSION_ANNOTATION: env!("CARGO_PKG_VERSION")});
            }
            _ => {
                return Err(InjectError::Shape(
                    "metadata.annotations is not an object".into(),
                ));
            }
        }
        Ok(())
    }

    fn init_container(&self, skip_in: &[String], skip_out: &[String]) -> Value {
        let s = &self.settings;
        let mut args = vec![
            "init".to_string(),
            "--proxy-uid".into(),
            s.proxy_uid.to_string(),
            "--inbound-port".into(),
            s.inbound_port.to_string(),
            "--outbound-port".into(),
            s.outbound_port.to_string(),
            "--skip-inbound-ports".into(),
            skip_in.join(","),
        ];
        if !skip_out.is_empty() {
            args.push("--skip-outbound-ports".into());
            args.push(skip_out.join(","));
        }
        json!({
            "name": INIT_CONTAINER,
            "image": s.proxy_image,
            "imagePullPolicy": s.image_pull_policy,
            "command": ["weft-proxy"],
            "args": args,
            "resources": {
                "requests": {"cpu": "10m", "memory": "16Mi"},
                "limits": {"memory": "64Mi"},
            },
            "securityContext": {
                "runAsUser": 0,
                "runAsNonRoot": false,
                "allowPrivilegeEscalation": false,
                "privileged": false,
                // iptables takes its lock under /run.
                "readOnlyRootFilesystem": false,
                "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        })
    }

    /// Points each HTTP, HTTPS, TCP and gRPC probe of the application's containers at the
    /// proxy's probe port (`/app-health/<container>/<live|ready|startup>`), which interception
    /// skips, and returns the original probes for the proxy to run on loopback. Probes it
    /// cannot run (another host, a port name the container does not declare, exec probes) are
    /// left as they are.
    fn rewrite_probes(&self, containers: &mut [Value]) -> serde_json::Map<String, Value> {
        let mut originals = serde_json::Map::new();
        for c in containers.iter_mut() {
            let Some(name) = c["name"].as_str().map(str::to_owned) else {
                continue;
            };
            let named: Vec<(String, u64)> = c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    Some((p["name"].as_str()?.to_owned(), p["containerPort"].as_u64()?))
                })
                .collect();
            let port_of = |v: &Value| -> Option<u64> {
                match v {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s
                        .parse()
                        .ok()
                        .or_else(|| named.iter().find(|(n, _)| n == s).map(|(_, p)| *p)),
                    _ => None,
                }
                .filter(|p| (1..=65535).contains(p))
            };
            for (field, kind) in [
                ("livenessProbe", "live"),
                ("readinessProbe", "ready"),
                ("startupProbe", "startup"),
            ] {
                let Some(probe) = c.get_mut(field).and_then(Value::as_object_mut) else {
                    continue;
                };
                let original = if let Some(h) = probe.get("httpGet") {
                    let scheme = match h["scheme"].as_str() {
                        None | Some("HTTP") => "http",
                        Some("HTTPS") => "https",
                        Some(_) => continue,
                    };
                    match (h.get("host").is_none(), port_of(&h["port"])) {
                        (true, Some(port)) => json!({
                            "port": port,
                            "path": h["path"].as_str().unwrap_or("/"),
                            "headers": h["httpHeaders"].as_array().cloned().unwrap_or_default(),
                            "scheme": scheme,
                        }),
                        _ => continue,
                    }
                } else if let Some(t) = probe.get("tcpSocket") {
                    match (t.get("host").is_none(), port_of(&t["port"])) {
                        (true, Some(port)) => json!({"port": port}),
                        _ => continue,
                    }
                } else if let Some(g) = probe.get("grpc") {
                    // The API takes only a number here, never a port name.
                    match g["port"].as_u64().filter(|p| (1..=65535).contains(p)) {
                        Some(port) => json!({
                            "port": port,
                            "grpc_service": g["service"].as_str().unwrap_or(""),
                        }),
                        None => continue,
                    }
                } else {
                    continue;
                };
                let key = format!("{name}/{kind}");
                probe.remove("tcpSocket");
                probe.remove("grpc");
                probe.insert(
                    "httpGet".into(),
                    json!({
                        "path": format!("/app-health/{key}"),
                        "port": self.settings.probe_port,
                        "scheme": "HTTP",
                    }),
                );
                originals.insert(key, original);
            }
        }
        originals
    }

    fn proxy_container(
        &self,
        probes: &serde_json::Map<String, Value>,
        access_log: Option<weft_core::observability::AccessLogFormat>,
    ) -> Value {
        let s = &self.settings;
        let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
        let mut env = vec![
            json!({"name": "WEFT_PROXY_CONTROL_ADDR", "value": s.control_addr}),
            json!({"name": "WEFT_PROXY_TRUST_DOMAIN", "value": self.trust_domain}),
            json!({"name": "WEFT_PROXY_TRUST_BUNDLE_PEM", "value": self.trust_bundle_pem}),
            json!({"name": "WEFT_PROXY_PLATFORM", "value": crate::NAME}),
            json!({"name": "WEFT_PROXY_NAMESPACE", "valueFrom": field("metadata.namespace")}),
            json!({"name": "WEFT_PROXY_WORKLOAD", "valueFrom": field("metadata.name")}),
            json!({"name": "WEFT_PROXY_ACCOUNT", "valueFrom": field("spec.serviceAccountName")}),
            json!({"name": "WEFT_PROXY_TOKEN_FILE", "value": format!("{TOKEN_DIR}/{TOKEN_FILE}")}),
            json!({"name": "WEFT_PROXY_TRANSPARENT", "value": "true"}),
            json!({"name": "WEFT_PROXY_INBOUND_ADDR", "value": format!("0.0.0.0:{}", s.inbound_port)}),
            json!({"name": "WEFT_PROXY_OUTBOUND_ADDR", "value": format!("127.0.0.1:{}", s.outbound_port)}),
            json!({"name": "WEFT_PROXY_ADMIN_ADDR", "value": format!("0.0.0.0:{}", s.admin_port)}),
            json!({"name": "WEFT_PROXY_PROBE_ADDR", "value": format!("0.0.0.0:{}", s.probe_port)}),
            json!({"name": "WEFT_PROXY_TAP_ADDR", "value": format!("0.0.0.0:{}", s.tap_port)}),
            json!({"name": "WEFT_PROXY_LOG_JSON", "value": "true"}),
            json!({"name": "RUST_LOG", "value": s.log_level}),
        ];
        if let Some(format) = access_log {
            env.push(json!({"name": "WEFT_PROXY_ACCESS_LOG", "value": format.as_str()}));
        }
        if !probes.is_empty() {
            env.push(json!({"name": "WEFT_PROXY_APP_PROBES", "value": Value::Object(probes.clone()).to_string()}));
        }
        env.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let probe = |path: &str, period: u32, failures: u32| {
            json!({
                "httpGet": {"path": path, "port": s.probe_port},
                "periodSeconds": period,
                "failureThreshold": failures,
                "timeoutSeconds": 1,
            })
        };
        let mut proxy = json!({
            "name": PROXY_CONTAINER,
            "image": s.proxy_image,
            "imagePullPolicy": s.image_pull_policy,
            "env": env,
            "ports": [
                {"name": "weft-inbound", "containerPort": s.inbound_port, "protocol": "TCP"},
                {"name": "weft-admin", "containerPort": s.admin_port, "protocol": "TCP"},
                {"name": "weft-probe", "containerPort": s.probe_port, "protocol": "TCP"},
                {"name": "weft-tap", "containerPort": s.tap_port, "protocol": "TCP"},
            ],
            // The application starts once the proxy holds a certificate: two minutes at most.
            "startupProbe": probe("/ready", 1, 120),
            "readinessProbe": probe("/ready", 5, 3),
            "livenessProbe": probe("/live", 10, 3),
            "resources": {
                "requests": {"cpu": s.proxy_cpu_request, "memory": s.proxy_memory_request},
                "limits": {"memory": s.proxy_memory_limit},
            },
            "securityContext": {
                "runAsUser": s.proxy_uid,
                "runAsGroup": s.proxy_uid,
                "runAsNonRoot": true,
                "allowPrivilegeEscalation": false,
                "privileged": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "volumeMounts": [
                {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
            ],
        });
        if s.native_sidecar {
            proxy["restartPolicy"] = json!("Always");
        }
        proxy
    }

    fn token_volume(&self) -> Value {
        json!({
            "name": TOKEN_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": self.token_audience,
                "expirationSeconds": self.settings.token_expiration_seconds,
                "path": TOKEN_FILE,
            }}]},
        })
    }
}

/// Where a manifest of `kind` keeps its pod template, as a JSON pointer; `None` for kinds
/// without one.
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// What injecting one manifest did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pod template was meshed.
    Injected,
    /// The pod template was left as it was, and why.
    Skipped(Skip),
    /// Not a kind with a pod template.
    PassedThrough,
}

impl Injector {
    /// Meshes the pod template of one manifest (a Pod, Deployment, StatefulSet, DaemonSet,
    /// ReplicaSet, Job or CronJob), unless it must not be. Without the namespace's annotation
    /// at hand, offline injection meshes what is not refused. A `List` is meshed item by item.
    pub fn inject_manifest(&self, doc: &mut Value) -> Result<Vec<Outcome>, InjectError> {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        if kind == "List" {
            let mut outcomes = Vec::new();
            if let Some(Value::Array(items)) = doc.get_mut("items") {
                for item in items {
                    outcomes.extend(self.inject_manifest(item)?);
                }
            }
            return Ok(outcomes);
        }
        let Some(pointer) = template_pointer(&kind) else {
            return Ok(vec![Outcome::PassedThrough]);
        };
        let namespace = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let template = doc.pointer_mut(pointer).ok_or_else(|| {
            InjectError::Shape(format!("{kind} has no pod template at {pointer}"))
        })?;
        if let Some(skip) = decide(&namespace, Some("enabled"), template)? {
            return Ok(vec![Outcome::Skipped(skip)]);
        }
        self.inject(template)?;
        Ok(vec![Outcome::Injected])
    }
}

#[cfg(test)]
pub(crate) mod tests;
