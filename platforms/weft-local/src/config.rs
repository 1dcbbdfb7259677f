//! `[platforms.local]`: the local adapter's section of the mesh config file, with the keys
//! `weft dev` reads to run proxies and demo applications beside the declared workloads.
//! `configs/mesh.toml` documents every key.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use weft_core::config::{MeshConfig, PlatformSettings, SectionCheck, SectionError};
use weft_core::model::{CONTROL_NAMESPACE, check_name};
use weft_core::{EndpointState, Protocol, ServiceName};

/// `[platforms.local]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    /// Whether the local adapter runs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `[[platforms.local.workloads]]`.
    #[serde(default)]
    pub workloads: Vec<LocalWorkload>,
}

/// One `[[platforms.local.workloads]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalWorkload {
    /// The workload's name; also its identity's account name unless `identity` is set.
    pub name: String,
    /// Its namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The service it serves (`name` or `name.namespace`), if any.
    #[serde(default)]
    pub service: Option<String>,
    /// The identity's account name, when it differs from `name`.
    #[serde(default)]
    pub identity: Option<String>,
    /// The address peers dial: the proxy's inbound listener, or the app itself when unmeshed.
    #[serde(default = "default_address")]
    pub address: IpAddr,
    /// The port peers dial.
    pub port: u16,
    /// The number of the service port this workload serves (clients name it as
    /// `service:port` when a service has several); default 80.
    #[serde(default = "default_service_port")]
    pub service_port: u16,
    /// The port's protocol: auto, http1, http2, grpc or opaque.
    #[serde(default)]
    pub protocol: Protocol,
    /// A virtual address of `service` (as a Kubernetes ClusterIP is): clients that dial it on
    /// the service port reach the service, balanced over all its endpoints.
    #[serde(default)]
    pub virtual_ip: Option<IpAddr>,
    /// Whether a Weft proxy fronts this workload.
    #[serde(default = "yes")]
    pub meshed: bool,
    /// Whether it takes new connections: `ready`; `serving` (used only while its service port
    /// has no ready endpoint); `terminating` (no new connections, open ones drain), to take a
    /// host out of rotation; `not-ready` (no traffic at all; its proxy keeps its inbound
    /// policy).
    #[serde(default)]
    pub state: EndpointState,
    /// `[[platforms.local.workloads.ports]]`: more services or ports this workload serves at
    /// its address, besides `service` on `port`.
    #[serde(default)]
    pub ports: Vec<LocalPort>,
    /// For `weft dev`: the port the application listens on behind the proxy.
    #[serde(default)]
    pub app_port: Option<u16>,
    /// For `weft dev`: services this workload calls, with the local port its proxy opens for
    /// each (`upstreams = { api = 9001 }`).
    #[serde(default)]
    pub upstreams: BTreeMap<String, u16>,
    /// For `weft dev`: a built-in demo application to run on `app_port` (`echo`, `web`, `api`)
    /// or a traffic generator (`load`).
    #[serde(default)]
    pub demo: Option<DemoApp>,
    /// The port of this workload's proxy admin listener under `weft dev`.
    #[serde(default)]
    pub admin_port: Option<u16>,
}

/// One `[[platforms.local.workloads.ports]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalPort {
    /// The service served on this port (`name` or `name.namespace`).
    pub service: String,
    /// The port peers dial, at the workload's address.
    pub port: u16,
    /// The service port it serves; default 80.
    #[serde(default = "default_service_port")]
    pub service_port: u16,
    /// The port's protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// A virtual address of this service.
    #[serde(default)]
    pub virtual_ip: Option<IpAddr>,
}

/// The built-in applications `weft dev` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DemoApp {
    /// Echoes requests back.
    Echo,
    /// Answers each request by calling its first upstream.
    Web,
    /// Answers with a small JSON document.
    Api,
    /// Sends a steady stream of requests to its first upstream.
    Load,
}

fn yes() -> bool {
    true
}

fn default_service_port() -> u16 {
    80
}

fn default_namespace() -> String {
    "default".to_string()
}

fn default_address() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

impl LocalWorkload {
    /// The identity account name.
    pub fn account(&self) -> &str {
        self.identity.as_deref().unwrap_or(&self.name)
    }

    /// Every port this workload serves a service on: `service` on `port` first, then `ports`.
    pub fn served_ports(&self) -> impl Iterator<Item = LocalPort> + '_ {
        let main = self.service.as_ref().map(|service| LocalPort {
            service: service.clone(),
            port: self.port,
            service_port: self.service_port,
            protocol: self.protocol,
            virtual_ip: self.virtual_ip,
        });
        main.into_iter().chain(self.ports.iter().cloned())
    }
}

impl LocalSettings {
    /// The local section of `cfg`, if it has one.
    pub fn of(cfg: &MeshConfig) -> Option<&Self> {
        cfg.platforms.get::<Self>()
    }

    /// The workloads of `cfg`'s local section, if it is enabled.
    pub fn workloads(cfg: &MeshConfig) -> impl Iterator<Item = &LocalWorkload> {
        Self::of(cfg)
            .filter(|l| l.enabled)
            .into_iter()
            .flat_map(|l| l.workloads.iter())
    }
}

/// Claims a listening port for `key`; port 0 is refused.
fn claim(
    check: &mut SectionCheck<'_>,
    addr: IpAddr,
    port: u16,
    key: String,
) -> Result<(), SectionError> {
    if port == 0 {
        return Err(SectionError::new(key, "port 0 is not allowed"));
    }
    check.claim(addr, port, &key)
}

/// The file holding the attestation token of local workload `namespace/name`
/// (`<data_dir>/tokens/<namespace>/<name>`, mode 0600), written by the control plane.
pub fn token_file(cfg: &MeshConfig, namespace: &str, name: &str) -> PathBuf {
    cfg.data_dir().join("tokens").join(namespace).join(name)
}

impl PlatformSettings for LocalSettings {
    const NAME: &'static str = crate::NAME;

    fn validate(&self, check: &mut SectionCheck<'_>) -> Result<(), SectionError> {
        let services = self.validate_workloads(check)?;
        self.warn_unserved(check, &services)?;
        Ok(())
    }
}

impl LocalSettings {
    /// Checks each workload; returns the services they serve.
    fn validate_workloads(
        &self,
        check: &mut SectionCheck<'_>,
    ) -> Result<BTreeSet<ServiceName>, SectionError> {
        let mut names = BTreeSet::new();
        let mut services = BTreeSet::new();
        // (service, service port) -> (protocol, the key that declared it first).
        let mut service_ports = BTreeMap::new();
        // virtual address -> (service, the key that declared it first).
        let mut virtual_ips = BTreeMap::new();
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for (i, w) in self.workloads.iter().enumerate() {
            let key = format!("workloads[{i}]");
            let bad = |field: &str, e: &dyn std::fmt::Display| {
                SectionError::new(format!("{key}.{field}"), e.to_string())
            };
            check_name(&w.name).map_err(|e| bad("name", &e))?;
            check_name(&w.namespace).map_err(|e| bad("namespace", &e))?;
            // The control plane's own identity lives in this namespace; a workload there could
            // be issued a certificate that proxies accept as the control plane's.
            if w.namespace == CONTROL_NAMESPACE {
                return Err(bad(
                    "namespace",
                    &format!("namespace {CONTROL_NAMESPACE} is reserved for the control plane"),
                ));
            }
            check_name(w.account()).map_err(|e| bad("identity", &e))?;
            if !names.insert((w.namespace.clone(), w.name.clone())) {
                return Err(bad(
                    "name",
                    &format!("workload {}/{} is declared twice", w.namespace, w.name),
                ));
            }
            claim(check, w.address, w.port, format!("{key}.port"))?;
            for (j, p) in w.ports.iter().enumerate() {
                claim(check, w.address, p.port, format!("{key}.ports[{j}].port"))?;
            }
            let main = usize::from(w.service.is_some());
            for (j, p) in w.served_ports().enumerate() {
                // The workload's own `service` keys first, then each `ports` entry.
                let at = if j < main {
                    key.clone()
                } else {
                    format!("{key}.ports[{}]", j - main)
                };
                let s = ServiceName::parse(&p.service, &w.namespace)
                    .map_err(|e| SectionError::new(format!("{at}.service"), e.to_string()))?;
                if p.service_port == 0 {
                    return Err(SectionError::new(
                        format!("{at}.service_port"),
                        "port 0 is not allowed",
                    ));
                }
                let (protocol, first) = service_ports
                    .entry((s.clone(), p.service_port))
                    .or_insert((p.protocol, at.clone()));
                if *protocol != p.protocol {
                    return Err(SectionError::new(
                        format!("{at}.protocol"),
                        format!(
                            "{s} port {} is {} in platforms.local.{first}; every workload of a service port must use one protocol",
                            p.service_port,
                            protocol.as_str()
                        ),
                    ));
                }
                if let Some(vip) = p.virtual_ip {
                    let (owner, first) = virtual_ips.entry(vip).or_insert((s.clone(), at.clone()));
                    if *owner != s {
                        return Err(SectionError::new(
                            format!("{at}.virtual_ip"),
                            format!(
                                "{vip} is already a virtual address of {owner} (platforms.local.{first})"
                            ),
                        ));
                    }
                }
                services.insert(s);
            }
            if !w.meshed {
                // Nothing runs these for an unmeshed workload: no proxy, so no upstream or
                // admin listener, and `weft dev` starts no demo application. Warn rather than
                // check them.
                let unused = [
                    ("app_port", w.app_port.is_some()),
                    ("upstreams", !w.upstreams.is_empty()),
                    ("demo", w.demo.is_some()),
                    ("admin_port", w.admin_port.is_some()),
                ];
                for (field, _) in unused.iter().filter(|(_, set)| *set) {
                    check.warn(
                        &format!("{key}.{field}"),
                        "has no effect with meshed = false: no proxy runs for this workload",
                    );
                }
                continue;
            }
            if let Some(app) = w.app_port {
                claim(check, loopback, app, format!("{key}.app_port"))?;
            }
            if let Some(admin) = w.admin_port {
                claim(check, loopback, admin, format!("{key}.admin_port"))?;
            }
            for (svc, port) in &w.upstreams {
                claim(check, loopback, *port, format!("{key}.upstreams.{svc}"))?;
            }
            match w.demo {
                Some(DemoApp::Echo | DemoApp::Web | DemoApp::Api) if w.app_port.is_none() => {
                    return Err(bad("demo", &"a demo application needs app_port"));
                }
                Some(DemoApp::Web | DemoApp::Load) if w.upstreams.is_empty() => {
                    return Err(bad(
                        "demo",
                        &"this demo calls its first upstream: declare upstreams",
                    ));
                }
                _ => {}
            }
        }
        Ok(services)
    }

    /// Warns about upstreams and authorization rules that name a service no local workload
    /// serves. They are not refused: another platform may report the service, but a typo is
    /// the likelier cause.
    fn warn_unserved(
        &self,
        check: &mut SectionCheck<'_>,
        services: &BTreeSet<ServiceName>,
    ) -> Result<(), SectionError> {
        for (i, w) in self.workloads.iter().enumerate() {
            if !w.meshed {
                continue;
            }
            for svc in w.upstreams.keys() {
                let key = format!("workloads[{i}].upstreams.{svc}");
                let s = ServiceName::parse(svc, &w.namespace)
                    .map_err(|e| SectionError::new(key.clone(), e.to_string()))?;
                if !services.contains(&s) {
                    check.warn(
                        &key,
                        format!(
                            "no local workload serves service {s}; calls to it fail until a platform reports it"
                        ),
                    );
                }
            }
        }
        for (i, rule) in check.config().authorization_rules.iter().enumerate() {
            if !services.contains(&rule.service) {
                check.warn_elsewhere(
                    format!("policy.authorizations[{i}].service"),
                    format!(
                        "no local workload serves service {}; the rule applies once a platform reports it",
                        rule.service
                    ),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
