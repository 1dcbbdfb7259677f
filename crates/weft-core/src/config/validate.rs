//! Checks that serde cannot express: names, cross references, clashing ports.

use std::collections::{BTreeMap, BTreeSet};

use super::schema::{DemoApp, MeshConfig};
use crate::model::{ServiceName, check_name};
use crate::policy::{AuthorizationRule, IdentityMatch};

type Invalid = (String, String);

/// Validates `cfg` in place, filling its parsed authorization rules.
pub(super) fn validate(cfg: &mut MeshConfig) -> Result<(), Invalid> {
    check_name(&cfg.mesh.name).map_err(|e| ("mesh.name".to_string(), e.to_string()))?;
    validate_ca(cfg)?;
    // Port 0 asks the OS for a free port, so two zeros do not clash.
    if cfg.control.grpc_addr == cfg.control.http_addr && cfg.control.grpc_addr.port() != 0 {
        return Err((
            "control.http_addr".into(),
            format!("{} is also control.grpc_addr", cfg.control.http_addr),
        ));
    }
    let services = validate_local(cfg)?;
    let mut rules = Vec::new();
    for (i, entry) in cfg.policy.authorizations.iter().enumerate() {
        let key = format!("policy.authorizations[{i}]");
        let service = ServiceName::parse(&entry.service, "default")
            .map_err(|e| (format!("{key}.service"), e.to_string()))?;
        if let Some(known) = &services
            && !known.contains(&service)
        {
            return Err((
                format!("{key}.service"),
                format!("no workload serves service {service}"),
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
            from.push(m);
        }
        rules.push(AuthorizationRule { service, from });
    }
    cfg.authorization_rules = rules;
    Ok(())
}

fn validate_ca(cfg: &MeshConfig) -> Result<(), Invalid> {
    let ca = &cfg.ca;
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

/// Checks local workloads; returns the set of known services when the local platform is the
/// only source (so references to other services are dangling).
fn validate_local(cfg: &MeshConfig) -> Result<Option<BTreeSet<ServiceName>>, Invalid> {
    let Some(local) = &cfg.platforms.local else {
        return Ok(None);
    };
    let mut names = BTreeSet::new();
    let mut ports: BTreeMap<(std::net::IpAddr, u16), String> = BTreeMap::new();
    let mut services = BTreeSet::new();
    let mut claim = |addr: std::net::IpAddr, port: u16, key: String| -> Result<(), Invalid> {
        if port == 0 {
            return Err((key, "port 0 is not allowed".into()));
        }
        if let Some(other) = ports.insert((addr, port), key.clone()) {
            return Err((key, format!("{addr}:{port} is already used by {other}")));
        }
        Ok(())
    };
    for (i, w) in local.workloads.iter().enumerate() {
        let key = format!("platforms.local.workloads[{i}]");
        check_name(&w.name).map_err(|e| (format!("{key}.name"), e.to_string()))?;
        check_name(&w.namespace).map_err(|e| (format!("{key}.namespace"), e.to_string()))?;
        check_name(w.account()).map_err(|e| (format!("{key}.identity"), e.to_string()))?;
        if !names.insert((w.namespace.clone(), w.name.clone())) {
            return Err((
                format!("{key}.name"),
                format!("workload {}/{} is declared twice", w.namespace, w.name),
            ));
        }
        claim(w.address, w.port, format!("{key}.port"))?;
        let loopback = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        if let Some(app) = w.app_port {
            claim(loopback, app, format!("{key}.app_port"))?;
        }
        if let Some(admin) = w.admin_port {
            claim(loopback, admin, format!("{key}.admin_port"))?;
        }
        for (svc, port) in &w.upstreams {
            claim(loopback, *port, format!("{key}.upstreams.{svc}"))?;
        }
        if let Some(svc) = &w.service {
            let s = ServiceName::parse(svc, &w.namespace)
                .map_err(|e| (format!("{key}.service"), e.to_string()))?;
            services.insert(s);
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
        for svc in w.upstreams.keys() {
            let key = format!("platforms.local.workloads[{i}].upstreams.{svc}");
            let s =
                ServiceName::parse(svc, &w.namespace).map_err(|e| (key.clone(), e.to_string()))?;
            if !services.contains(&s) {
                return Err((key, format!("no workload serves service {s}")));
            }
        }
    }
    // Other platforms may declare services later; only the local-only mesh can be checked.
    Ok(Some(services))
}
