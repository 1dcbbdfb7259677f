//! The core's checks, which serde cannot express: names, clashing ports, patterns that match
//! nothing. Each platform adapter checks its own `[platforms.*]` section afterwards
//! ([`PlatformSettings::validate`](super::PlatformSettings::validate)).

use super::load::DataHome;
use super::platforms::{Invalid, Ports};
use super::schema::MeshConfig;
use crate::model::{ServiceName, check_name};
use crate::policy::ratelimit::RateLimitRule;
use crate::policy::route::{RouteMeta, RouteSource};
use crate::policy::route_spec::{Bound, RouteSpecError};
use crate::policy::{AuthorizationRule, IdentityMatch};

/// Validates the core's sections of `cfg` in place, filling its parsed authorization rules and
/// resolved data directory. Returns the ports the control plane claimed (for the adapters'
/// checks) and the warnings: keys that are legal but have no effect.
pub(super) fn validate(
    cfg: &mut MeshConfig,
    home: &DataHome,
    warnings: &mut Vec<Invalid>,
) -> Result<Ports, Invalid> {
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
    let rules = authorizations(cfg, warnings)?;
    cfg.authorization_rules = rules;
    cfg.rate_limit_rules = rate_limits(cfg)?;
    cfg.backend_rules = backends(cfg)?;
    validate_routes(cfg)?;
    warn_pointless_faults(cfg, warnings);
    cfg.observability.validate(warnings)?;
    Ok(ports)
}

/// The rules of `[[policy.authorizations]]`, with warnings for patterns no client of this
/// mesh can match.
fn authorizations(
    cfg: &MeshConfig,
    warnings: &mut Vec<Invalid>,
) -> Result<Vec<AuthorizationRule>, Invalid> {
    let mut rules: Vec<AuthorizationRule> = Vec::new();
    for (i, entry) in cfg.policy.authorizations.iter().enumerate() {
        let key = format!("policy.authorizations[{i}]");
        let service = ServiceName::parse(&entry.spec.service, "default")
            .map_err(|e| (format!("{key}.service"), e.to_string()))?;
        let name = match &entry.name {
            Some(n) => {
                check_name(n).map_err(|e| (format!("{key}.name"), e.to_string()))?;
                n.clone()
            }
            None => format!("{}-{i}", service.name),
        };
        let label = format!("{}/{name}", service.namespace);
        if rules.iter().any(|r| r.name == label) {
            return Err((format!("{key}.name"), format!("a second rule {label}")));
        }
        let rule = entry
            .spec
            .compile(label, in_file(), "default")
            .map_err(|e| (format!("{key}.{}", e.key), e.message))?;
        // The CA only issues identities in the mesh's trust domain, so a pattern of another
        // domain can never match a client: the rule silently matches nobody.
        let field = if entry.spec.allow.is_some() {
            "allow"
        } else {
            "from"
        };
        for (j, m) in rule.from.iter().enumerate() {
            let domain = match m {
                IdentityMatch::Exact(id) => id.trust_domain(),
                IdentityMatch::TrustDomain(td) => td,
                _ => continue,
            };
            if domain != &cfg.mesh.trust_domain {
                warnings.push((
                    format!("{key}.{field}[{j}]"),
                    format!(
                        "{m} is in trust domain {domain}, not in mesh.trust_domain {}: \
                         no identity of this mesh can match it",
                        cfg.mesh.trust_domain
                    ),
                ));
            }
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// Where an entry of the mesh file was written; the loader fills in the file and the line.
fn in_file() -> RouteSource {
    RouteSource::MeshFile {
        path: std::path::PathBuf::new(),
        line: None,
    }
}

/// The entries of `section`, each compiled with its key (`policy.backends[2]`); an error names
/// the entry's key and the key within it.
fn compiled<S, R>(
    section: &str,
    entries: &[S],
    compile: impl Fn(&S, RouteSource) -> Result<R, RouteSpecError>,
) -> Result<Vec<(String, R)>, Invalid> {
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let key = format!("{section}[{i}]");
            let rule =
                compile(entry, in_file()).map_err(|e| (format!("{key}.{}", e.key), e.message))?;
            Ok((key, rule))
        })
        .collect()
}

fn backends(cfg: &MeshConfig) -> Result<Vec<crate::policy::backend::BackendRule>, Invalid> {
    let mut out: Vec<crate::policy::backend::BackendRule> = Vec::new();
    for (key, rule) in compiled("policy.backends", &cfg.policy.backends, |e, source| {
        e.compile(source, "default")
    })? {
        if out.iter().any(|r| r.service == rule.service) {
            return Err((
                format!("{key}.service"),
                format!("{} has a backend policy already", rule.service),
            ));
        }
        out.push(rule);
    }
    Ok(out)
}

fn rate_limits(cfg: &MeshConfig) -> Result<Vec<RateLimitRule>, Invalid> {
    let mut out: Vec<RateLimitRule> = Vec::new();
    for (key, rule) in compiled(
        "policy.rate_limits",
        &cfg.policy.rate_limits,
        |e, source| e.compile(source, "default"),
    )? {
        let whole = |r: &RateLimitRule| r.limit.to.is_empty();
        if whole(&rule) && out.iter().any(|r| r.service == rule.service && whole(r)) {
            return Err((
                format!("{key}.service"),
                format!(
                    "{} has a rate limit for every request already (give this one `to` to limit some requests)",
                    rule.service
                ),
            ));
        }
        out.push(rule);
    }
    Ok(out)
}

/// Warns of faults that other settings make pointless: a share of 0, a delay that the rule's
/// own timeout always cuts before the backend is called, an abort its retries almost always
/// mask, callers that cannot exist.
fn warn_pointless_faults(cfg: &MeshConfig, warnings: &mut Vec<Invalid>) {
    use crate::policy::fault::{AbortWith, FaultInjection, Share};
    use crate::policy::route::{RetryPolicy, Timeouts};
    let mut check = |key: String, f: &FaultInjection, t: &Timeouts, retry: Option<&RetryPolicy>| {
        if let Some((d, share)) = f.delay {
            if share == Share::default() {
                warnings.push((format!("{key}.delay.percent"), "0: never injected".into()));
            }
            if let Some(limit) = t.first_attempt().filter(|l| *l <= d && share == Share::ALL) {
                warnings.push((
                    format!("{key}.delay.fixed"),
                    format!(
                        "every attempt waits {d:?}, and the rule's timeout ({limit:?}) ends it first: the backend is never called"
                    ),
                ));
            }
        }
        if let Some((with, share)) = f.abort {
            if share == Share::default() {
                warnings.push((format!("{key}.abort.percent"), "0: never injected".into()));
            }
            let retried = retry.filter(|r| match with {
                AbortWith::Http(s) => r.codes.contains(&s),
                AbortWith::Grpc(c) => r.grpc_codes.contains(&c),
            });
            if let Some(r) = retried {
                let p = f64::from(share.millionths()) / 1e6;
                let seen = p.powi(
                    i32::try_from(r.attempts)
                        .unwrap_or(i32::MAX)
                        .saturating_add(1),
                );
                if seen < 0.01 {
                    warnings.push((
                        format!("{key}.abort"),
                        format!(
                            "the rule retries this status {} times: a caller sees the abort only when every attempt is aborted ({:.4} % of calls)",
                            r.attempts,
                            seen * 100.0
                        ),
                    ));
                }
            }
        }
        for (i, m) in f.sources.iter().enumerate() {
            if let crate::policy::IdentityMatch::Exact(id) = m
                && id.trust_domain() != &cfg.mesh.trust_domain
            {
                warnings.push((
                    format!("{key}.sources[{i}]"),
                    format!("{id} is not in mesh.trust_domain: no caller can match it"),
                ));
            }
        }
    };
    for (i, b) in cfg.http_routes.iter().enumerate() {
        for (j, r) in b.route.rules.iter().enumerate() {
            if let Some(f) = &r.fault {
                check(
                    format!("routes.http[{i}].rules[{j}].fault"),
                    f,
                    &r.timeouts,
                    r.retry.as_ref(),
                );
            }
        }
    }
    for (i, b) in cfg.grpc_routes.iter().enumerate() {
        for (j, r) in b.route.rules.iter().enumerate() {
            if let Some(f) = &r.fault {
                check(
                    format!("routes.grpc[{i}].rules[{j}].fault"),
                    f,
                    &r.timeouts,
                    r.retry.as_ref(),
                );
            }
        }
    }
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
    // A root and its key alone: each control-plane replica issues its own intermediate in
    // memory, so replicas share the root (from a Secret) and nothing else.
    if ca.root_cert.is_some()
        && ca.root_key.is_some()
        && ca.intermediate_cert.is_none()
        && ca.intermediate_key.is_none()
    {
        return Ok(());
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
                "an existing CA needs root_cert with root_key, or root_cert, intermediate_cert and intermediate_key".into(),
            ));
        }
    } else if ca.root_key.is_some() {
        return Err((
            "ca.root_key".into(),
            "set only together with root_cert".into(),
        ));
    }
    Ok(())
}

/// Checks the control plane's listeners against each other and claims their ports, so that no
/// local workload is given one of them.
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
    if let Some(probes) = cfg.control.probe_addr
        && probes.port() != 0
    {
        ports.claim(probes.ip(), probes.port(), "control.probe_addr".into())?;
    }
    if let Some(local) = cfg.control.local_http_addr {
        // It asks no token: loopback keeps it to the host's (the pod's) own network namespace.
        if !local.ip().is_loopback() {
            return Err((
                "control.local_http_addr".into(),
                format!(
                    "{local} is not a loopback address: this listener asks no token, so it must \
                     be on 127.0.0.1 or ::1 (http_addr is the one other hosts reach)"
                ),
            ));
        }
        if local.port() != 0 {
            ports.claim(local.ip(), local.port(), "control.local_http_addr".into())?;
        }
    }
    validate_limits(&cfg.control.limits)
}

/// A bound of 0 would refuse every caller, and a rate must be a positive number (TOML also
/// spells `nan` and `inf`).
fn validate_limits(limits: &super::schema::ControlLimits) -> Result<(), Invalid> {
    let counts = [
        ("connections_per_identity", limits.connections_per_identity),
        (
            "resolve_streams_per_identity",
            limits.resolve_streams_per_identity,
        ),
        (
            "proxy_streams_per_identity",
            limits.proxy_streams_per_identity,
        ),
        (
            "certify_burst_per_address",
            limits.certify_burst_per_address as usize,
        ),
        (
            "certify_burst_per_identity",
            limits.certify_burst_per_identity as usize,
        ),
    ];
    for (key, n) in counts {
        if n == 0 {
            return Err((format!("control.limits.{key}"), "must be at least 1".into()));
        }
    }
    let rates = [
        ("certify_rate_per_address", limits.certify_rate_per_address),
        (
            "certify_rate_per_identity",
            limits.certify_rate_per_identity,
        ),
    ];
    for (key, rate) in rates {
        if !(rate.is_finite() && rate > 0.0) {
            return Err((
                format!("control.limits.{key}"),
                format!("{rate} is not a positive number of calls per second"),
            ));
        }
    }
    Ok(())
}

/// Builds the file's routes. Their sources name the file's path once the loader knows it
/// (it fills the path and line in).
fn validate_routes(cfg: &mut MeshConfig) -> Result<(), Invalid> {
    fn meta(kind: &str, i: usize, name: &str, namespace: &str) -> Result<RouteMeta, Invalid> {
        let key = format!("routes.{kind}[{i}]");
        check_name(name).map_err(|e| (format!("{key}.name"), e.to_string()))?;
        check_name(namespace).map_err(|e| (format!("{key}.namespace"), e.to_string()))?;
        Ok(RouteMeta {
            name: format!("{namespace}/{name}"),
            source: in_file(),
        })
    }
    let located = |kind: &'static str, i: usize| {
        move |e: RouteSpecError| (format!("routes.{kind}[{i}].{}", e.key), e.message)
    };
    let mut seen = std::collections::HashSet::new();
    let mut http = Vec::new();
    for (i, r) in cfg.routes.http.iter().enumerate() {
        let ns = r.namespace.as_deref().unwrap_or("default");
        let meta = meta("http", i, &r.name, ns)?;
        if !seen.insert(("http", meta.name.clone())) {
            return Err((
                format!("routes.http[{i}].name"),
                format!("a second HTTP route {}", meta.name),
            ));
        }
        let (parents, route) = r.spec.compile(meta, ns).map_err(located("http", i))?;
        http.push(Bound { parents, route });
    }
    let mut grpc = Vec::new();
    for (i, r) in cfg.routes.grpc.iter().enumerate() {
        let ns = r.namespace.as_deref().unwrap_or("default");
        let meta = meta("grpc", i, &r.name, ns)?;
        if !seen.insert(("grpc", meta.name.clone())) {
            return Err((
                format!("routes.grpc[{i}].name"),
                format!("a second gRPC route {}", meta.name),
            ));
        }
        let (parents, route) = r.spec.compile(meta, ns).map_err(located("grpc", i))?;
        grpc.push(Bound { parents, route });
    }
    cfg.http_routes = http;
    cfg.grpc_routes = grpc;
    Ok(())
}
