//! Checks that serde cannot express: names, cross references, clashing ports, reserved
//! identities; and warnings for keys that are accepted but do nothing.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use super::load::DataHome;
use super::schema::{DemoApp, MeshConfig};
use crate::model::{CONTROL_NAMESPACE, ServiceName, check_name};
use crate::policy::{AuthorizationRule, IdentityMatch};

/// A key and what is wrong with it.
type Invalid = (String, String);

/// Validates `cfg` in place, filling its parsed authorization rules and resolved data
/// directory. Returns the warnings: keys that are legal but have no effect.
pub(super) fn validate(cfg: &mut MeshConfig, home: &DataHome) -> Result<Vec<Invalid>, Invalid> {
    let mut warnings = Vec::new();
    check_name(&cfg.mesh.name).map_err(|e| ("mesh.name".to_string(), e.to_string()))?;
    validate_ca(cfg)?;
    cfg.resolved_data_dir = Some(cfg.resolve_data_dir(home).ok_or_else(|| {
        (
            "ca.data_dir".to_string(),
            "set ca.data_dir: neither XDG_DATA_HOME nor HOME is set".to_string(),
        )
    })?);
    let mut ports = Ports::default();
    validate_control(cfg, &mut ports)?;
    let services = validate_local(cfg, &mut ports, &mut warnings)?;
    let mut rules = Vec::new();
    for (i, entry) in cfg.policy.authorizations.iter().enumerate() {
        let key = format!("policy.authorizations[{i}]");
        let service = ServiceName::parse(&entry.service, "default")
            .map_err(|e| (format!("{key}.service"), e.to_string()))?;
        // Another platform may report the service; only a typo is likely here, so warn.
        if let Some(known) = &services
            && !known.contains(&service)
        {
            warnings.push((
                format!("{key}.service"),
                format!(
                    "no local workload serves service {service}; the rule applies once a platform reports it"
                ),
            ));
        }
        if entry.allow.is_empty() {
            return Err((
                format!("{key}.allow"),
                "empty allow list: list identities, or use policy.default_inbound".into(),
            ));
        }
        let mut from = Vec::new();
        for (j, pattern) in entry.allow.iter().enumerate() {
            let m: IdentityMatch =
                pattern
                    .parse()
                    .map_err(|e: crate::policy::authz::PatternError| {
                        (format!("{key}.allow[{j}]"), e.to_string())
                    })?;
            // The CA only issues identities in the mesh's trust domain, so a SPIFFE ID from
            // another domain can never match a client: the rule silently allows nobody.
            if let IdentityMatch::Exact(id) = &m
                && id.trust_domain() != &cfg.mesh.trust_domain
            {
                warnings.push((
                    format!("{key}.allow[{j}]"),
                    format!(
                        "{pattern} is in trust domain {}, not in mesh.trust_domain {}: \
                         no identity of this mesh can match it",
                        id.trust_domain(),
                        cfg.mesh.trust_domain
                    ),
                ));
            }
            from.push(m);
        }
        rules.push(AuthorizationRule { service, from });
    }
    cfg.authorization_rules = rules;
    Ok(warnings)
}

fn validate_ca(cfg: &MeshConfig) -> Result<(), Invalid> {
    let ca = &cfg.ca;
    // An empty path would put the CA's keys in whatever directory the process started in.
    if ca
        .data_dir
        .as_ref()
        .is_some_and(|d| d.as_os_str().is_empty())
    {
        return Err((
            "ca.data_dir".into(),
            "must not be empty: name a directory, or remove the key for the default".into(),
        ));
    }
    if ca.leaf_ttl < std::time::Duration::from_secs(300) {
        return Err(("ca.leaf_ttl".into(), "must be at least 5m".into()));
    }
    if ca.leaf_ttl > std::time::Duration::from_secs(366 * 24 * 3600) {
        return Err(("ca.leaf_ttl".into(), "must be at most one year".into()));
    }
    if ca.clock_skew >= ca.leaf_ttl {
        return Err((
            "ca.clock_skew".into(),
            "must be shorter than ca.leaf_ttl".into(),
        ));
    }
    let given = [
        ("ca.root_cert", ca.root_cert.is_some()),
        ("ca.intermediate_cert", ca.intermediate_cert.is_some()),
        ("ca.intermediate_key", ca.intermediate_key.is_some()),
    ];
    if given.iter().any(|(_, set)| *set) {
        if let Some((key, _)) = given.iter().find(|(_, set)| !*set) {
            return Err((
                key.to_string(),
                "an existing CA needs root_cert, intermediate_cert and intermediate_key".into(),
            ));
        }
    } else if ca.root_key.is_some() {
        return Err((
            "ca.root_key".into(),
            "set only together with root_cert, intermediate_cert and intermediate_key".into(),
        ));
    }
    Ok(())
}

/// The listening addresses claimed so far, with the key that claimed each.
#[derive(Default)]
struct Ports(Vec<(IpAddr, u16, String)>);

impl Ports {
    /// Claims `addr:port` for `key`, refusing a port another key listens on at an address
    /// that overlaps: the same address, or the unspecified address (0.0.0.0 or ::), which
    /// binds every address of the host.
    fn claim(&mut self, addr: IpAddr, port: u16, key: String) -> Result<(), Invalid> {
        let taken = self.0.iter().find(|(other, other_port, _)| {
            *other_port == port
                && (*other == addr || other.is_unspecified() || addr.is_unspecified())
        });
        if let Some((other, _, other_key)) = taken {
            let message = if *other == addr {
                format!("{addr}:{port} is already used by {other_key}")
            } else {
                format!("{addr}:{port} is already used by {other_key} ({other}:{port})")
            };
            return Err((key, message));
        }
        self.0.push((addr, port, key));
        Ok(())
    }
}

/// Checks the control plane's two listeners against each other and claims their ports, so
/// that no local workload is given one of them.
fn validate_control(cfg: &MeshConfig, ports: &mut Ports) -> Result<(), Invalid> {
    let (grpc, http) = (cfg.control.grpc_addr, cfg.control.http_addr);
    // Port 0 asks the OS for a free port, so zeros clash with nothing.
    if grpc == http && grpc.port() != 0 {
        return Err((
            "control.http_addr".into(),
            format!("{http} is also control.grpc_addr"),
        ));
    }
    if grpc.port() != 0 {
        ports.claim(grpc.ip(), grpc.port(), "control.grpc_addr".into())?;
    }
    if http.port() != 0 {
        ports.claim(http.ip(), http.port(), "control.http_addr".into())?;
    }
    Ok(())
}

/// Checks local workloads; returns the services they serve, or `None` without a local
/// platform.
fn validate_local(
    cfg: &MeshConfig,
    ports: &mut Ports,
    warnings: &mut Vec<Invalid>,
) -> Result<Option<BTreeSet<ServiceName>>, Invalid> {
    let Some(local) = &cfg.platforms.local else {
        return Ok(None);
    };
    let mut names = BTreeSet::new();
    let mut services = BTreeSet::new();
    // (service, service port) -> (protocol, the key that declared it first).
    let mut service_ports = std::collections::BTreeMap::new();
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for (i, w) in local.workloads.iter().enumerate() {
        let key = format!("platforms.local.workloads[{i}]");
        check_name(&w.name).map_err(|e| (format!("{key}.name"), e.to_string()))?;
        check_name(&w.namespace).map_err(|e| (format!("{key}.namespace"), e.to_string()))?;
        // The control plane's own identity lives in this namespace; a workload there could be
        // issued a certificate that proxies accept as the control plane's.
        if w.namespace == CONTROL_NAMESPACE {
            return Err((
                format!("{key}.namespace"),
                format!("namespace {CONTROL_NAMESPACE} is reserved for the control plane"),
            ));
        }
        check_name(w.account()).map_err(|e| (format!("{key}.identity"), e.to_string()))?;
        if !names.insert((w.namespace.clone(), w.name.clone())) {
            return Err((
                format!("{key}.name"),
                format!("workload {}/{} is declared twice", w.namespace, w.name),
            ));
        }
        if w.port == 0 {
            return Err((format!("{key}.port"), "port 0 is not allowed".into()));
        }
        ports.claim(w.address, w.port, format!("{key}.port"))?;
        for (j, p) in w.ports.iter().enumerate() {
            if p.port == 0 {
                return Err((
                    format!("{key}.ports[{j}].port"),
                    "port 0 is not allowed".into(),
                ));
            }
            ports.claim(w.address, p.port, format!("{key}.ports[{j}].port"))?;
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
                .map_err(|e| (format!("{at}.service"), e.to_string()))?;
            if p.service_port == 0 {
                return Err((format!("{at}.service_port"), "port 0 is not allowed".into()));
            }
            let (protocol, first) = service_ports
                .entry((s.clone(), p.service_port))
                .or_insert((p.protocol, at.clone()));
            if *protocol != p.protocol {
                return Err((
                    format!("{at}.protocol"),
                    format!(
                        "{s} port {} is {} in {first}; every workload of a service port must use one protocol",
                        p.service_port,
                        protocol.as_str()
                    ),
                ));
            }
            services.insert(s);
        }
        if !w.meshed {
            // Nothing runs these for an unmeshed workload: no proxy, so no upstream or admin
            // listener, and `weft dev` starts no demo application. Warn rather than check them.
            let unused = [
                ("app_port", w.app_port.is_some()),
                ("upstreams", !w.upstreams.is_empty()),
                ("demo", w.demo.is_some()),
                ("admin_port", w.admin_port.is_some()),
            ];
            for (field, _) in unused.iter().filter(|(_, set)| *set) {
                warnings.push((
                    format!("{key}.{field}"),
                    "has no effect with meshed = false: no proxy runs for this workload".into(),
                ));
            }
            continue;
        }
        let mut claim_local = |port: u16, key: String| {
            if port == 0 {
                return Err((key, "port 0 is not allowed".into()));
            }
            ports.claim(loopback, port, key)
        };
        if let Some(app) = w.app_port {
            claim_local(app, format!("{key}.app_port"))?;
        }
        if let Some(admin) = w.admin_port {
            claim_local(admin, format!("{key}.admin_port"))?;
        }
        for (svc, port) in &w.upstreams {
            claim_local(*port, format!("{key}.upstreams.{svc}"))?;
        }
        match w.demo {
            Some(DemoApp::Echo | DemoApp::Web | DemoApp::Api) if w.app_port.is_none() => {
                return Err((
                    format!("{key}.demo"),
                    "a demo application needs app_port".into(),
                ));
            }
            Some(DemoApp::Web | DemoApp::Load) if w.upstreams.is_empty() => {
                return Err((
                    format!("{key}.demo"),
                    "this demo calls its first upstream: declare upstreams".into(),
                ));
            }
            _ => {}
        }
    }
    for (i, w) in local.workloads.iter().enumerate() {
        if !w.meshed {
            continue;
        }
        for svc in w.upstreams.keys() {
            let key = format!("platforms.local.workloads[{i}].upstreams.{svc}");
            let s =
                ServiceName::parse(svc, &w.namespace).map_err(|e| (key.clone(), e.to_string()))?;
            if !services.contains(&s) {
                warnings.push((
                    key,
                    format!(
                        "no local workload serves service {s}; calls to it fail until a platform reports it"
                    ),
                ));
            }
        }
    }
    // References to other services are warned about, not refused: another platform may report them.
    Ok(Some(services))
}
