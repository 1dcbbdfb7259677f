//! Nomad's native service discovery (`provider = "nomad"`), followed from its HTTP API.
//!
//! The adapter reads every service (`/v1/services` across namespaces, then
//! `/v1/service/:name` for each), writes them to the registry in one write, and then follows
//! the event stream (`/v1/event/stream?topic=Service`) from the index of what it read. Each
//! batch of events is one registry write. When the stream fails, ends, falls silent for longer
//! than three heartbeats, or shows an index lower than one already seen (the cluster's state
//! was restored), the adapter waits with backoff and reads everything again: the registry is
//! then replaced in one write, so a service that still exists never vanishes in between.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use weft_core::{RegistryWriter, ServiceName, TrustDomain};

use crate::api::{Api, ApiError, Index};
use crate::services::{self, Instance};

/// How long the event stream may stay silent: Nomad sends a heartbeat every 10 s.
const SILENCE: Duration = Duration::from_secs(30);

/// One service registration, as `/v1/service/:name` and the event stream give it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Registration {
    #[serde(rename = "ID")]
    pub id: String,
    pub service_name: String,
    pub namespace: String,
    #[serde(rename = "JobID", default)]
    pub job_id: String,
    #[serde(rename = "AllocID", default)]
    pub alloc_id: String,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    pub address: String,
    pub port: u16,
}

/// One namespace of `/v1/services`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NamespaceServices {
    namespace: String,
    #[serde(default)]
    services: Option<Vec<ServiceStub>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceStub {
    service_name: String,
}

/// A line of the event stream: a batch of events, or `{}` (a heartbeat).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EventLine {
    #[serde(default)]
    index: u64,
    #[serde(default)]
    events: Option<Vec<Event>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Event {
    topic: String,
    #[serde(rename = "Type")]
    kind: String,
    #[serde(default)]
    payload: Option<Payload>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Payload {
    #[serde(default)]
    service: Option<Registration>,
}

/// Reads the service registrations of an allocation: what attestation checks a proxy's
/// claim against.
pub async fn allocation_services(
    api: &Api,
    namespace: &str,
    allocation: &str,
) -> Result<Vec<Registration>, ApiError> {
    let mut path = String::from("/v1/allocation/");
    path.extend(url::form_urlencoded::byte_serialize(allocation.as_bytes()));
    path.push_str("/services");
    match api
        .get::<Option<Vec<Registration>>>(&path, &[("namespace", namespace)])
        .await
    {
        Ok((regs, _)) => Ok(regs.unwrap_or_default()),
        // An allocation Nomad does not know registers nothing.
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn service_path(service: &str) -> String {
    let mut path = String::from("/v1/service/");
    path.extend(url::form_urlencoded::byte_serialize(service.as_bytes()));
    path
}

/// What the adapter knows: every registration, by service.
#[derive(Default)]
struct State {
    /// Registrations by service, then by ID.
    services: BTreeMap<ServiceName, BTreeMap<String, Instance>>,
    /// Names refused once (not valid mesh names), so each is logged once; bounded.
    refused: BTreeSet<String>,
    /// Registrations refused since the count was last taken.
    problems: u64,
}

const MAX_REFUSED_NAMES: usize = 1024;

impl State {
    fn instance(&mut self, reg: &Registration) -> Option<(ServiceName, Instance)> {
        let address: IpAddr = match reg.address.parse() {
            Ok(a) => a,
            Err(_) => {
                self.refuse(
                    &reg.service_name,
                    format!(
                        "registration {} of service {}: address {:?} is not an IP address",
                        weft_core::platform::clip(&reg.id, 80),
                        weft_core::platform::clip(&reg.service_name, 80),
                        weft_core::platform::clip(&reg.address, 80)
                    ),
                );
                return None;
            }
        };
        let instance = Instance {
            namespace: reg.namespace.clone(),
            service: reg.service_name.clone(),
            workload: reg.alloc_id.clone(),
            address,
            port: reg.port,
            tags: reg.tags.clone().unwrap_or_default(),
            ready: true,
        };
        match services::name_of(&instance) {
            Ok(name) => Some((name, instance)),
            Err(why) => {
                self.refuse(&reg.service_name, why);
                None
            }
        }
    }

    /// Adds a registration read from `/v1/service/:name`.
    fn add(&mut self, reg: &Registration) {
        if let Some((name, inst)) = self.instance(reg) {
            self.services
                .entry(name)
                .or_default()
                .insert(reg.id.clone(), inst);
        }
    }

    /// Applies a batch of the event stream (the events of namespaces `wanted` says yes to);
    /// returns the services it changed.
    fn apply(
        &mut self,
        events: Vec<Event>,
        wanted: impl Fn(&str) -> bool,
    ) -> BTreeSet<ServiceName> {
        let mut changed = BTreeSet::new();
        for event in events {
            if event.topic != "Service" {
                continue;
            }
            let Some(reg) = event.payload.and_then(|p| p.service) else {
                continue;
            };
            if !wanted(&reg.namespace) {
                continue;
            }
            let Some((name, inst)) = self.instance(&reg) else {
                continue;
            };
            let regs = self.services.entry(name.clone()).or_default();
            match event.kind.as_str() {
                "ServiceRegistration" => {
                    regs.insert(reg.id.clone(), inst);
                }
                "ServiceDeregistration" => {
                    regs.remove(&reg.id);
                }
                _ => continue,
            }
            changed.insert(name);
        }
        changed
    }

    /// What the services `changed` are now (`None`: gone, and forgotten).
    fn updates(
        &mut self,
        trust_domain: &TrustDomain,
        changed: BTreeSet<ServiceName>,
    ) -> Vec<(ServiceName, Option<weft_core::Service>)> {
        changed
            .into_iter()
            .map(|name| {
                let service = self
                    .services
                    .get(&name)
                    .and_then(|regs| services::build(trust_domain, &name, regs.values()));
                if service.is_none() {
                    self.services.remove(&name);
                }
                (name, service)
            })
            .collect()
    }

    fn refuse(&mut self, key: &str, why: String) {
        self.problems += 1;
        if self.refused.len() < MAX_REFUSED_NAMES && self.refused.insert(key.to_string()) {
            tracing::warn!(platform = crate::NOMAD, "left out of the mesh: {why}");
        }
    }
}

/// The mesh services that Nomad API answers make, computed as the adapter computes them but
/// without an API: `registrations` is the body of a `/v1/service/:name` answer (a JSON list of
/// registrations, or `null`), and `events` the event stream that follows, one batch (or `{}`
/// heartbeat) per line. A body or a line that does not decode is an error, as it ends the
/// adapter's read. The fuzz target of the response decoders (`tests/fuzz`) calls this.
pub fn mesh_services(
    trust_domain: &TrustDomain,
    registrations: &[u8],
    events: &[u8],
) -> Result<Vec<weft_core::Service>, serde_json::Error> {
    let mut state = State::default();
    let regs: Option<Vec<Registration>> = serde_json::from_slice(registrations)?;
    for reg in regs.unwrap_or_default() {
        state.add(&reg);
    }
    for line in events.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let batch: EventLine = serde_json::from_slice(line)?;
        if let Some(events) = batch.events {
            let changed = state.apply(events, |_| true);
            state.updates(trust_domain, changed);
        }
    }
    Ok(state
        .services
        .iter()
        .filter_map(|(name, regs)| services::build(trust_domain, name, regs.values()))
        .collect())
}

/// The adapter's feed: runs until `shutdown`.
pub async fn run(
    api: &Api,
    namespaces: &[String],
    trust_domain: &TrustDomain,
    writer: &RegistryWriter,
    retry_floor: Duration,
    errors: &tokio::sync::watch::Sender<u64>,
    shutdown: &CancellationToken,
) {
    let mut backoff = retry_floor;
    let mut last = Index::default();
    loop {
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            r = sync_and_follow(api, namespaces, trust_domain, writer, &mut last, &mut backoff, retry_floor, errors) => r,
        };
        let reason = match outcome {
            Ok(()) => "the event stream ended".to_string(),
            Err(e) => e.to_string(),
        };
        errors.send_modify(|n| *n += 1);
        tracing::warn!(platform = crate::NOMAD, %reason, retry_in = ?backoff, "reading everything again");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Reads everything, writes it, then follows the event stream until it fails or ends.
#[allow(
    clippy::too_many_arguments,
    reason = "the feed's state, passed down once"
)]
async fn sync_and_follow(
    api: &Api,
    namespaces: &[String],
    trust_domain: &TrustDomain,
    writer: &RegistryWriter,
    last: &mut Index,
    backoff: &mut Duration,
    retry_floor: Duration,
    errors: &tokio::sync::watch::Sender<u64>,
) -> Result<(), ApiError> {
    let mut state = State::default();
    // Refused registrations count as feed errors, after the write they were left out of.
    let count = |state: &mut State| {
        if state.problems > 0 {
            let n = std::mem::take(&mut state.problems);
            errors.send_modify(|e| *e += n);
        }
    };
    let wanted = |ns: &str| namespaces.is_empty() || namespaces.iter().any(|n| n == ns);
    let (listed, list_index) = api
        .get::<Option<Vec<NamespaceServices>>>("/v1/services", &[("namespace", "*")])
        .await?;
    let mut index = list_index;
    for ns in listed.unwrap_or_default() {
        if !wanted(&ns.namespace) {
            continue;
        }
        for stub in ns.services.unwrap_or_default() {
            let (regs, i) = api
                .get::<Option<Vec<Registration>>>(
                    &service_path(&stub.service_name),
                    &[("namespace", &ns.namespace)],
                )
                .await?;
            index = index.max(i);
            for reg in regs.unwrap_or_default() {
                state.add(&reg);
            }
        }
    }
    if !last.advance(index) {
        tracing::info!(
            platform = crate::NOMAD,
            index,
            "the cluster's index went backwards; starting over from it"
        );
    }
    writer.replace_all(
        state
            .services
            .iter()
            .filter_map(|(name, regs)| services::build(trust_domain, name, regs.values())),
    );
    tracing::debug!(
        platform = crate::NOMAD,
        services = state.services.len(),
        index,
        "synced"
    );

    let from = (last.0 + 1).to_string();
    let mut lines = api
        .stream(
            "/v1/event/stream",
            &[("topic", "Service"), ("namespace", "*"), ("index", &from)],
        )
        .await?;
    // The stream is open: the next failure starts from the shortest wait again.
    *backoff = retry_floor;
    loop {
        let line = match tokio::time::timeout(SILENCE, lines.next()).await {
            Err(_) => {
                return Err(ApiError::Transport {
                    url: "event stream".into(),
                    reason: format!("no event or heartbeat for {SILENCE:?}"),
                });
            }
            Ok(line) => match line? {
                Some(line) => line,
                None => return Ok(()),
            },
        };
        let batch: EventLine = serde_json::from_slice(&line).map_err(|e| ApiError::Invalid {
            url: "event stream".into(),
            reason: format!("an event line that is not an event batch: {e}"),
        })?;
        let Some(events) = batch.events else {
            continue; // a heartbeat
        };
        if batch.index == last.0 {
            continue; // already read
        }
        if !last.advance(batch.index) {
            // Lower than what was read: the cluster's state was restored.
            return Err(ApiError::Invalid {
                url: "event stream".into(),
                reason: format!("the index went backwards to {}", batch.index),
            });
        }
        let changed = state.apply(events, wanted);
        if changed.is_empty() {
            count(&mut state);
            continue;
        }
        let updates = state.updates(trust_domain, changed);
        writer.update(updates);
        count(&mut state);
    }
}
