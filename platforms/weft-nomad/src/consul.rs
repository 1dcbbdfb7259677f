//! The Consul catalog: services registered in Consul (by Nomad jobs with
//! `provider = "consul"`, or by VMs and other machines).
//!
//! A blocking query on `/v1/catalog/services` follows the list of services; each service has
//! its own blocking query on `/v1/health/service/:name`. Instances whose checks all pass (the
//! node's included) are ready endpoints; the others stay as endpoints that are not ready,
//! which take no traffic but keep their workload's inbound policy in force (a proxy whose
//! instance fails a check must not fall back to the mesh default). An instance Nomad
//! registered is keyed by its allocation, read from its service ID, as the Nomad adapter keys
//! it. Each query keeps its index by the documented rules (reset
//! when it goes backwards). The first write waits until every service has been read once, and
//! replaces the source at once; after that, each answer that changes a service is one write.
//! Should the catalog query fail, it is retried with backoff while the per-service queries go
//! on; a per-service query that fails keeps its last answer in force and retries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weft_core::{RegistryWriter, ServiceName, TrustDomain};

use crate::api::{Api, Index};
use crate::services::{self, Instance};

/// How long one blocking query may wait for a change.
pub const WAIT: Duration = Duration::from_secs(300);

/// One entry of `/v1/health/service/:name`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: Node,
    service: CatalogService,
    /// The instance's checks and its node's; absent or empty means none.
    #[serde(default)]
    checks: Option<Vec<Check>>,
}

/// One health check of an instance or of its node.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Check {
    /// `passing`, `warning` or `critical` (anything else counts as failing).
    #[serde(default)]
    status: String,
}

/// The prefix of the Consul service IDs Nomad registers:
/// `_nomad-task-<allocation ID>-<task or group-name>-<service>-<port label>`.
const NOMAD_SERVICE_ID_PREFIX: &str = "_nomad-task-";

/// The Nomad allocation behind a Consul service ID that Nomad registered.
fn nomad_allocation(service_id: &str) -> Option<&str> {
    let rest = service_id.strip_prefix(NOMAD_SERVICE_ID_PREFIX)?;
    let alloc = rest.get(..36)?;
    let uuid_shape = alloc.bytes().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => b == b'-',
        _ => b.is_ascii_hexdigit(),
    });
    (uuid_shape && rest.as_bytes().get(36) == Some(&b'-')).then_some(alloc)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CatalogService {
    #[serde(rename = "ID", default)]
    id: String,
    service: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    /// Consul Enterprise namespaces; absent elsewhere. Only the token's own namespace is read:
    /// following several namespaces is not supported yet.
    #[serde(default)]
    namespace: Option<String>,
}

/// What one service's query last answered.
struct Answer {
    service: String,
    instances: Vec<Instance>,
}

type Catalog = Result<(BTreeMap<String, Option<Vec<String>>>, u64), crate::api::ApiError>;

/// The next catalog query: after `delay`, a blocking query from `index`.
async fn catalog(api: Api, index: Index, wait: Duration, delay: Duration) -> Catalog {
    tokio::time::sleep(delay).await;
    api.block("/v1/catalog/services", &[], index, wait).await
}

/// The adapter's feed: runs until `shutdown`.
pub async fn run(
    api: &Api,
    max_services: usize,
    trust_domain: &TrustDomain,
    writer: &RegistryWriter,
    retry_floor: Duration,
    errors: &tokio::sync::watch::Sender<u64>,
    shutdown: &CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<Answer>(256);
    let mut watchers: HashMap<String, CancellationToken> = HashMap::new();
    // The last answer of each watched service (Consul's names).
    let mut answers: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
    let mut catalog_read = false;
    let mut synced = false;
    let mut index = Index::default();
    let mut backoff = retry_floor;
    let mut warned_cap = false;
    let mut query = Box::pin(catalog(
        api.clone(),
        index,
        Duration::from_secs(1),
        Duration::ZERO,
    ));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            r = &mut query => {
                let delay = match r {
                    Ok((names, i)) => {
                        backoff = retry_floor;
                        let unchanged = catalog_read && i == index.0;
                        if !index.advance(i) {
                            tracing::info!(platform = crate::CONSUL, index = i, "the catalog's index went backwards; reading every service again");
                            for (_, t) in watchers.drain() {
                                t.cancel();
                            }
                        } else if unchanged && !watchers.is_empty() {
                            query = Box::pin(catalog(api.clone(), index, WAIT, Duration::ZERO));
                            continue;
                        }
                        catalog_read = true;
                        let mut names: Vec<String> = names.into_keys().collect();
                        if names.len() > max_services {
                            if !warned_cap {
                                tracing::warn!(platform = crate::CONSUL, services = names.len(), max_services, "more services than max_services; the rest are left out");
                                warned_cap = true;
                            }
                            names.truncate(max_services);
                        }
                        let wanted: BTreeSet<String> = names.into_iter().collect();
                        watchers.retain(|name, token| {
                            let keep = wanted.contains(name);
                            if !keep {
                                token.cancel();
                            }
                            keep
                        });
                        for name in &wanted {
                            watchers.entry(name.clone()).or_insert_with(|| {
                                let token = shutdown.child_token();
                                tokio::spawn(watch_service(api.clone(), name.clone(), tx.clone(), retry_floor, errors.clone(), token.clone()));
                                token
                            });
                        }
                        let gone: Vec<String> = answers.keys().filter(|n| !wanted.contains(*n)).cloned().collect();
                        let mut changed = BTreeSet::new();
                        for name in gone {
                            if let Some(old) = answers.remove(&name) {
                                changed.extend(old.iter().filter_map(|i| services::name_of(i).ok()));
                            }
                        }
                        if synced {
                            write_changes(writer, trust_domain, &answers, changed);
                        }
                        Duration::ZERO
                    }
                    Err(e) => {
                        errors.send_modify(|n| *n += 1);
                        tracing::warn!(platform = crate::CONSUL, error = %e, retry_in = ?backoff, "catalog query failed");
                        let d = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        // The next query does not block (see watch_service).
                        query = Box::pin(catalog(api.clone(), Index::default(), Duration::from_secs(1), d));
                        continue;
                    }
                };
                let wait = if synced { WAIT } else { Duration::from_secs(1) };
                query = Box::pin(catalog(api.clone(), index, wait, delay));
            }
            a = rx.recv() => {
                let Some(answer) = a else { break };
                if !watchers.contains_key(&answer.service) {
                    continue;
                }
                let mut changed: BTreeSet<ServiceName> = answer
                    .instances
                    .iter()
                    .filter_map(|i| services::name_of(i).ok())
                    .collect();
                if let Some(old) = answers.insert(answer.service, answer.instances) {
                    changed.extend(old.iter().filter_map(|i| services::name_of(i).ok()));
                }
                if synced {
                    write_changes(writer, trust_domain, &answers, changed);
                }
            }
        }
        // The first write waits until the catalog and every service in it have been read.
        if !synced && catalog_read && watchers.keys().all(|n| answers.contains_key(n)) {
            synced = true;
            writer.replace_all(all_services(trust_domain, &answers));
            tracing::debug!(platform = crate::CONSUL, services = answers.len(), "synced");
        }
    }
    for (_, t) in watchers.drain() {
        t.cancel();
    }
}

/// The mesh services that Consul answers make, computed as the adapter computes them but
/// without an API: `answers` holds `/v1/health/service/:name` bodies, one per line (each a
/// JSON list of entries, keyed here by its line number as the adapter keys each by its
/// service). A body that does not decode is an error, as the adapter then keeps its last
/// answer. The fuzz target of the response decoders (`tests/fuzz`) calls this.
pub fn mesh_services(
    trust_domain: &TrustDomain,
    answers: &[u8],
) -> Result<Vec<weft_core::Service>, serde_json::Error> {
    let mut warned = BTreeSet::new();
    let mut read = BTreeMap::new();
    for (i, body) in answers
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let entries: Option<Vec<HealthEntry>> = serde_json::from_slice(body)?;
        let instances = entries
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| instance(e, &mut warned))
            .collect();
        read.insert(i.to_string(), instances);
    }
    Ok(all_services(trust_domain, &read).collect())
}

/// Every mesh service the answers make.
fn all_services<'a>(
    trust_domain: &'a TrustDomain,
    answers: &'a BTreeMap<String, Vec<Instance>>,
) -> impl Iterator<Item = weft_core::Service> + 'a {
    group(answers)
        .into_iter()
        .filter_map(move |(name, insts)| services::build(trust_domain, &name, insts))
}

/// The instances of every mesh service (a Consul service may span namespaces).
fn group(answers: &BTreeMap<String, Vec<Instance>>) -> BTreeMap<ServiceName, Vec<&Instance>> {
    let mut out: BTreeMap<ServiceName, Vec<&Instance>> = BTreeMap::new();
    for inst in answers.values().flatten() {
        if let Ok(name) = services::name_of(inst) {
            out.entry(name).or_default().push(inst);
        }
    }
    out
}

fn write_changes(
    writer: &RegistryWriter,
    trust_domain: &TrustDomain,
    answers: &BTreeMap<String, Vec<Instance>>,
    changed: BTreeSet<ServiceName>,
) {
    if changed.is_empty() {
        return;
    }
    let grouped = group(answers);
    writer.update(changed.into_iter().map(|name| {
        let service = grouped
            .get(&name)
            .and_then(|insts| services::build(trust_domain, &name, insts.iter().copied()));
        (name, service)
    }));
}

/// Follows one service's instances, with their health, until `stop`.
async fn watch_service(
    api: Api,
    service: String,
    tx: mpsc::Sender<Answer>,
    retry_floor: Duration,
    errors: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
) {
    let path = {
        let mut p = String::from("/v1/health/service/");
        p.extend(url::form_urlencoded::byte_serialize(service.as_bytes()));
        p
    };
    let mut index = Index::default();
    let mut backoff = retry_floor;
    let mut warned = BTreeSet::new();
    // After a failure the next query does not block: its answer shows at once whether the
    // index went backwards meanwhile (a restored cluster), which a blocking query from the
    // old index would only show when its wait ends.
    let mut failed = false;
    loop {
        let (from, wait) = if index.0 == 0 || failed {
            (Index::default(), Duration::from_secs(1))
        } else {
            (index, WAIT)
        };
        let r = tokio::select! {
            () = stop.cancelled() => return,
            r = api.block::<Option<Vec<HealthEntry>>>(&path, &[], from, wait) => r,
        };
        failed = r.is_err();
        match r {
            Ok((entries, i)) => {
                backoff = retry_floor;
                let first = index.0 == 0;
                let before = index;
                index.advance(i);
                if !first && before == index {
                    continue; // the wait ended with no change
                }
                let instances = entries
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|e| instance(e, &mut warned))
                    .collect();
                if tx
                    .send(Answer {
                        service: service.clone(),
                        instances,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                errors.send_modify(|n| *n += 1);
                tracing::warn!(platform = crate::CONSUL, service = %weft_core::platform::clip(&service, 80), error = %e, retry_in = ?backoff, "service query failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn instance(e: HealthEntry, warned: &mut BTreeSet<String>) -> Option<Instance> {
    let addr = if e.service.address.is_empty() {
        &e.node.address
    } else {
        &e.service.address
    };
    let Ok(address) = addr.parse::<IpAddr>() else {
        if warned.len() < 64 && warned.insert(e.service.id.clone()) {
            tracing::warn!(
                platform = crate::CONSUL,
                service = %weft_core::platform::clip(&e.service.service, 80),
                address = %weft_core::platform::clip(addr, 80),
                "left out of the mesh: the instance's address is not an IP address"
            );
        }
        return None;
    };
    let ready = e.checks.iter().flatten().all(|c| c.status == "passing");
    let workload = match nomad_allocation(&e.service.id) {
        Some(alloc) => alloc.to_string(),
        None => format!("{}-{}", e.node.node, e.service.id),
    };
    let inst = Instance {
        namespace: e
            .service
            .namespace
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into()),
        service: e.service.service,
        workload,
        address,
        port: e.service.port,
        tags: e.service.tags.unwrap_or_default(),
        ready,
    };
    match services::name_of(&inst) {
        Ok(_) => Some(inst),
        Err(why) => {
            if warned.len() < 64 && warned.insert(e.service.id.clone()) {
                tracing::warn!(platform = crate::CONSUL, "left out of the mesh: {why}");
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::nomad_allocation;

    #[test]
    fn the_allocation_is_read_from_the_service_ids_nomad_registers() {
        let alloc = "5f2a9c1e-0b7d-4e3a-9f61-2c8d4b7a1e90";
        assert_eq!(
            nomad_allocation(&format!("_nomad-task-{alloc}-web-api-http")),
            Some(alloc)
        );
        assert_eq!(
            nomad_allocation(&format!("_nomad-task-{alloc}-group-cache-redis-db")),
            Some(alloc)
        );
        // Registered by something else, or not shaped like Nomad's.
        assert_eq!(nomad_allocation("redis-1"), None);
        assert_eq!(nomad_allocation(&format!("_nomad-task-{alloc}")), None);
        assert_eq!(
            nomad_allocation("_nomad-task-not-a-uuid-at-all-web-api"),
            None
        );
        assert_eq!(nomad_allocation("_nomad-task-é"), None);
    }
}
