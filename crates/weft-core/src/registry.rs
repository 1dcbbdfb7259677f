//! The service registry: the merged, versioned view of every service that the platform
//! adapters report.
//!
//! Each adapter owns one *source* and writes only to it through a [`RegistryWriter`]; keys
//! include the source, so two platforms that report the same names never collide, and a
//! service of the same name on two platforms is one service with the endpoints of both.
//!
//! Every version is an immutable [`RegistrySnapshot`] built from persistent maps: a write copies
//! only the path to what it changes, and unchanged services are shared between versions. The
//! snapshot indexes services by name, by address (virtual addresses and endpoint addresses) and
//! by workload.
//!
//! Readers either follow the whole registry ([`Registry::subscribe`], for the state API and
//! readiness) or one [`Topic`] ([`Registry::watch_topic`]): a service, an address or a
//! workload. A write wakes only the topics it touched, so its cost is proportional to the
//! changed services and their subscribers, not to the size of the mesh. It wakes them before
//! its snapshot becomes visible, so a reader that follows a topic and then reads the snapshot
//! is woken only by writes it has not seen. A write that changes nothing bumps no version and
//! wakes nobody.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use imbl::OrdMap;
use tokio::sync::watch;

use crate::model::{AddressKind, Identity, Service, ServiceName, WorkloadKey};
use crate::policy::traffic::{SourcePolicies, SourceRoutes};

/// The registry. Cheap to clone; all clones share one state.
#[derive(Clone, Debug)]
pub struct Registry {
    tx: watch::Sender<Arc<RegistrySnapshot>>,
    synced: watch::Sender<BTreeSet<String>>,
    topics: Arc<Topics>,
}

/// An immutable view of the registry at one version.
#[derive(Clone, Debug, Default)]
pub struct RegistrySnapshot {
    version: u64,
    /// Each source's services.
    sources: OrdMap<Arc<str>, OrdMap<ServiceName, Arc<Service>>>,
    /// Which service ports each address leads to.
    addresses: OrdMap<SocketAddr, SmallSet<AddressRef>>,
    /// Which service ports each workload serves, and at which endpoint address.
    workloads: OrdMap<WorkloadRef, SmallSet<ServerRef>>,
    /// Each source's routes (platform objects such as Gateway API routes).
    routes: OrdMap<Arc<str>, Arc<SourceRoutes>>,
    /// Each source's inbound policies (platform objects such as Weft's CRDs).
    policies: OrdMap<Arc<str>, Arc<SourcePolicies>>,
}

/// A service port that an address leads to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressRef {
    /// Virtual addresses sort first: they win over an endpoint address that is also listed.
    pub kind: AddressKind,
    /// The service (shared by the entries of one write).
    pub service: Arc<ServiceName>,
    /// Its port.
    pub port: u16,
    /// The source that reported it.
    pub source: Arc<str>,
}

/// A workload, within its source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadRef {
    /// The source that reported it.
    pub source: Arc<str>,
    /// Namespace and name.
    pub key: WorkloadKey,
}

/// One service port a workload serves, and the endpoint address it serves it at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerRef {
    /// The endpoint's address; its port is the workload's server port.
    pub address: SocketAddr,
    /// The service (shared by the entries of one write).
    pub service: Arc<ServiceName>,
    /// The service port.
    pub port: u16,
}

/// An index entry's set: sorted, shared between snapshots, and one allocation of exactly its
/// members. Most addresses lead to one service port and most workloads serve one, where a
/// persistent set would allocate a node with room for sixteen; changing a set copies it, which
/// costs little at these sizes.
#[derive(Clone, Debug)]
struct SmallSet<T>(Arc<[T]>);

/// What a reader can follow without following the whole registry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A service: any change of its ports, protocols, virtual addresses or endpoints.
    Service(ServiceName),
    /// An address: whatever it leads to may have changed.
    Address(SocketAddr),
    /// A workload, in whichever source reports it: the service ports it serves may have
    /// changed. (One workload may be reported by several sources: a Nomad allocation's
    /// services registered in Nomad and in Consul.)
    Workload(WorkloadKey),
}

/// Follows one topic; woken after every write that touched it.
#[derive(Debug)]
pub struct TopicWatch {
    rx: Option<watch::Receiver<()>>,
    topic: Topic,
    topics: Arc<Topics>,
}

/// The topics someone follows, each with its wake-up channel.
#[derive(Debug, Default)]
struct Topics {
    map: Mutex<HashMap<Topic, watch::Sender<()>>>,
}

/// Writes one source's services into the registry.
#[derive(Clone, Debug)]
pub struct RegistryWriter {
    source: Arc<str>,
    registry: Registry,
}

// === impl Registry ===

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry at version 0.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Arc::new(RegistrySnapshot::default()));
        let (synced, _) = watch::channel(BTreeSet::new());
        Self {
            tx,
            synced,
            topics: Arc::default(),
        }
    }

    /// A writer for the named source (one per platform adapter).
    pub fn writer(&self, source: impl Into<String>) -> RegistryWriter {
        RegistryWriter {
            source: Arc::from(source.into()),
            registry: self.clone(),
        }
    }

    /// A receiver that always holds the latest snapshot, woken by every write.
    pub fn subscribe(&self) -> watch::Receiver<Arc<RegistrySnapshot>> {
        self.tx.subscribe()
    }

    /// Follows `topic`. Subscribe before reading the snapshot, so no write falls between.
    pub fn watch_topic(&self, topic: Topic) -> TopicWatch {
        let mut map = self.topics.lock();
        let rx = map
            .entry(topic.clone())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe();
        TopicWatch {
            rx: Some(rx),
            topic,
            topics: self.topics.clone(),
        }
    }

    /// How many topics someone follows (for the control plane's metrics and tests).
    pub fn watched_topics(&self) -> usize {
        self.topics.lock().len()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<RegistrySnapshot> {
        self.tx.borrow().clone()
    }

    /// The sources that have completed their first full sync ([`RegistryWriter::replace_all`]).
    /// A source stays synced after that, through disconnects and restarts of its adapter:
    /// its last state is still served.
    pub fn synced_sources(&self) -> BTreeSet<String> {
        self.synced.borrow().clone()
    }

    /// Whether every source in `sources` has completed its first full sync.
    pub fn all_synced<'a>(&self, sources: impl IntoIterator<Item = &'a str>) -> bool {
        let synced = self.synced.borrow();
        sources.into_iter().all(|s| synced.contains(s))
    }

    /// Resolves when every source in `sources` has completed its first full sync.
    pub async fn wait_synced(&self, sources: &[String]) {
        let mut rx = self.synced.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx
            .wait_for(|synced| sources.iter().all(|s| synced.contains(s)))
            .await;
    }
}

// === impl Topics ===

impl Topics {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Topic, watch::Sender<()>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self, touched: &HashSet<Topic>) {
        let map = self.lock();
        // Walk the smaller side: a relist may touch many topics that nobody follows.
        if touched.len() <= map.len() {
            for t in touched {
                if let Some(tx) = map.get(t) {
                    tx.send_replace(());
                }
            }
        } else {
            for (t, tx) in map.iter() {
                if touched.contains(t) {
                    tx.send_replace(());
                }
            }
        }
    }
}

// === impl TopicWatch ===

impl TopicWatch {
    /// The topic followed.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// Resolves after the next write that touches the topic (at once if one happened since
    /// the last call).
    pub async fn changed(&mut self) {
        match &mut self.rx {
            // The sender lives in the map while a receiver exists, so this does not fail.
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

impl Drop for TopicWatch {
    fn drop(&mut self) {
        let mut map = self.topics.lock();
        drop(self.rx.take());
        if map
            .get(&self.topic)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            map.remove(&self.topic);
        }
    }
}

// === impl RegistryWriter ===

impl RegistryWriter {
    /// The name of the source this writer owns.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Replaces all of this source's services in one write, as after a relist or a resync,
    /// and marks the source as synced. Services missing from `services` are removed; those
    /// that did not change are left untouched (their readers are not woken).
    pub fn replace_all(&self, services: impl IntoIterator<Item = Service>) {
        let mut next: OrdMap<ServiceName, Arc<Service>> = OrdMap::new();
        for s in services {
            let s = self.normalize(s);
            next.insert(s.name.clone(), Arc::new(s));
        }
        self.modify(|current| {
            let mut changes = Vec::new();
            for (name, old) in current.iter() {
                if !next.contains_key(name) {
                    changes.push((name.clone(), Some(old.clone()), None));
                }
            }
            for (name, new) in next.iter() {
                match current.get(name) {
                    Some(old) if old == new => {}
                    old => changes.push((name.clone(), old.cloned(), Some(new.clone()))),
                }
            }
            changes
        });
        // After the write, so a reader that sees the source synced also sees its content.
        self.registry
            .synced
            .send_if_modified(|set| set.insert(self.source.to_string()));
    }

    /// Adds or replaces one service.
    pub fn upsert(&self, service: Service) {
        let new = Arc::new(self.normalize(service));
        self.modify(|current| match current.get(&new.name) {
            Some(old) if *old == new => Vec::new(),
            old => vec![(new.name.clone(), old.cloned(), Some(new))],
        });
    }

    /// Applies several changes in one write: each named service becomes what it is paired
    /// with (`None` removes it). Services that end up as they were wake nobody; the changes of
    /// one batch are seen together or not at all.
    pub fn update(&self, changes: impl IntoIterator<Item = (ServiceName, Option<Service>)>) {
        // One change per name: the last given wins.
        let next: BTreeMap<ServiceName, Option<Arc<Service>>> = changes
            .into_iter()
            .map(|(name, s)| (name, s.map(|s| Arc::new(self.normalize(s)))))
            .collect();
        self.modify(|current| {
            next.into_iter()
                .filter_map(|(name, new)| {
                    let old = current.get(&name);
                    match (old, &new) {
                        (None, None) => None,
                        (Some(old), Some(new)) if old == new => None,
                        _ => Some((name, old.cloned(), new)),
                    }
                })
                .collect()
        });
    }

    /// Replaces this source's routes. The services whose routes changed (old or new parents)
    /// wake their followers, by name and by virtual address; nothing else does.
    pub fn replace_routes(&self, routes: SourceRoutes) {
        let routes = Arc::new(routes);
        self.registry.tx.send_if_modified(|snap| {
            let old = snap.routes.get(&self.source).cloned().unwrap_or_default();
            if *old == *routes {
                return false;
            }
            let mut parents: HashSet<ServiceName> = HashSet::new();
            for r in [&old, &routes] {
                parents.extend(r.parents().cloned());
            }
            let mut touched = HashSet::new();
            for name in parents {
                if let Some(service) = snap.service(&name) {
                    for ip in &service.virtual_ips {
                        for port in &service.ports {
                            touched.insert(Topic::Address(SocketAddr::new(*ip, port.port)));
                        }
                    }
                }
                touched.insert(Topic::Service(name));
            }
            let mut next = (**snap).clone();
            if routes.is_empty() {
                next.routes.remove(&self.source);
            } else {
                next.routes.insert(self.source.clone(), routes.clone());
            }
            next.version += 1;
            *snap = Arc::new(next);
            // As in `modify`: woken before the new version is visible.
            self.registry.topics.notify(&touched);
            true
        });
    }

    /// Replaces this source's inbound policies. The services they name (before or after)
    /// wake their followers, and so do the workloads that serve them, whose proxies'
    /// settings carry the policies.
    pub fn replace_policies(&self, policies: SourcePolicies) {
        let policies = Arc::new(policies);
        self.registry.tx.send_if_modified(|snap| {
            let old = snap.policies.get(&self.source).cloned().unwrap_or_default();
            if *old == *policies {
                return false;
            }
            let mut named: HashSet<ServiceName> = HashSet::new();
            for p in [&old, &policies] {
                named.extend(p.services().cloned());
            }
            let mut touched = HashSet::new();
            for name in named {
                for service in snap.sources.values().filter_map(|s| s.get(&name)) {
                    for port in &service.ports {
                        for e in &port.endpoints {
                            if let Some(w) = &e.workload {
                                touched.insert(Topic::Workload(w.clone()));
                            }
                        }
                    }
                }
                touched.insert(Topic::Service(name));
            }
            let mut next = (**snap).clone();
            if policies.is_empty() {
                next.policies.remove(&self.source);
            } else {
                next.policies.insert(self.source.clone(), policies.clone());
            }
            next.version += 1;
            *snap = Arc::new(next);
            self.registry.topics.notify(&touched);
            true
        });
    }

    /// Removes one service; removing an unknown one is not an error.
    pub fn remove(&self, name: &ServiceName) {
        self.modify(|current| match current.get(name) {
            Some(old) => vec![(name.clone(), Some(old.clone()), None)],
            None => Vec::new(),
        });
    }

    /// Sorts ports and endpoints, and drops what the registry cannot serve, with a warning
    /// naming it: a second port of the same number, a second endpoint at the same address, a
    /// meshed endpoint without the identity clients must check. Endpoints with equal
    /// identities end up sharing one.
    fn normalize(&self, mut s: Service) -> Service {
        let source = &*self.source;
        s.ports.sort_by_key(|p| p.port);
        s.ports.dedup_by(|b, a| {
            let dup = a.port == b.port;
            if dup {
                tracing::warn!(source, service = %s.name, port = b.port, "port listed twice; the first is kept");
            }
            dup
        });
        for p in &mut s.ports {
            p.endpoints.retain(|e| {
                let ok = !e.meshed || e.identity.is_some();
                if !ok {
                    tracing::warn!(source, service = %s.name, address = %e.address, "meshed endpoint without an identity; skipped");
                }
                ok
            });
            p.endpoints.sort_by_key(|e| e.address);
            p.endpoints.dedup_by(|b, a| {
                let dup = a.address == b.address;
                if dup {
                    tracing::warn!(source, service = %s.name, address = %b.address, "endpoint listed twice; the first is kept");
                }
                dup
            });
        }
        s.virtual_ips.sort();
        s.virtual_ips.dedup();
        let mut identities: HashSet<Identity> = HashSet::new();
        for p in &mut s.ports {
            for id in p.endpoints.iter_mut().filter_map(|e| e.identity.as_mut()) {
                match identities.get(id) {
                    Some(shared) => *id = shared.clone(),
                    None => {
                        identities.insert(id.clone());
                    }
                }
            }
        }
        s
    }

    /// Applies the changes `f` computes from this source's current services, as one new
    /// version, and wakes the topics they touch before the version becomes visible.
    #[allow(clippy::type_complexity)]
    fn modify(
        &self,
        f: impl FnOnce(
            &OrdMap<ServiceName, Arc<Service>>,
        ) -> Vec<(ServiceName, Option<Arc<Service>>, Option<Arc<Service>>)>,
    ) {
        let mut touched = HashSet::new();
        self.registry.tx.send_if_modified(|snap| {
            let empty = OrdMap::new();
            let current = snap.sources.get(&self.source).unwrap_or(&empty);
            let changes = f(current);
            if changes.is_empty() {
                return false;
            }
            let mut next = (**snap).clone();
            let mut services = current.clone();
            for (name, old, new) in changes {
                next.reindex(&self.source, old.as_deref(), new.as_deref(), &mut touched);
                match new {
                    Some(new) => services.insert(name.clone(), new),
                    None => services.remove(&name),
                };
                touched.insert(Topic::Service(name));
            }
            next.sources.insert(self.source.clone(), services);
            next.version += 1;
            *snap = Arc::new(next);
            // Wake the topics while the new snapshot is still unpublished (this closure holds
            // the snapshot's write lock): whoever can read this version has been woken by it
            // already, so a follower that subscribes and then reads the snapshot is never
            // woken later by a write it has seen. Nothing takes the topics lock and then
            // reads the snapshot, so the nesting cannot deadlock.
            if !touched.is_empty() {
                self.registry.topics.notify(&touched);
            }
            true
        });
    }
}

// === impl RegistrySnapshot ===

impl RegistrySnapshot {
    /// The version: bumped by one on every change of content.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The sources that have reported something, in name order.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.sources.keys().map(|s| &**s)
    }

    /// One source's services, in name order.
    pub fn source(&self, source: &str) -> impl Iterator<Item = &Arc<Service>> {
        self.sources
            .get(source)
            .into_iter()
            .flat_map(|s| s.values())
    }

    /// The names of every service, merged across sources.
    pub fn service_names(&self) -> BTreeSet<&ServiceName> {
        self.sources.values().flat_map(|s| s.keys()).collect()
    }

    /// One service, merged across the sources that report it: the union of their virtual
    /// addresses and ports; where two sources declare the same port, its protocol and name
    /// come from the first source by name, and an address reported by both is listed once.
    pub fn service(&self, name: &ServiceName) -> Option<Arc<Service>> {
        let mut found = self.sources.values().filter_map(|s| s.get(name));
        let first = found.next()?;
        let Some(second) = found.next() else {
            return Some(first.clone());
        };
        let mut merged = (**first).clone();
        for other in std::iter::once(second).chain(found) {
            merged.virtual_ips.extend(other.virtual_ips.iter().copied());
            for port in &other.ports {
                match merged.ports.iter_mut().find(|p| p.port == port.port) {
                    Some(p) => p.endpoints.extend(port.endpoints.iter().cloned()),
                    None => merged.ports.push(port.clone()),
                }
            }
        }
        merged.virtual_ips.sort();
        merged.virtual_ips.dedup();
        merged.ports.sort_by_key(|p| p.port);
        for p in &mut merged.ports {
            // A stable sort keeps the first source's endpoint first among equal addresses.
            p.endpoints.sort_by_key(|e| e.address);
            p.endpoints.dedup_by_key(|e| e.address);
        }
        Some(Arc::new(merged))
    }

    /// What `addr` leads to, best first: virtual addresses before endpoint addresses, then by
    /// service name and port.
    pub fn lookup_address(&self, addr: SocketAddr) -> impl Iterator<Item = &AddressRef> {
        self.addresses.get(&addr).into_iter().flat_map(|s| s.iter())
    }

    /// The service ports a workload serves, with the endpoint address of each.
    pub fn servers_of(&self, workload: &WorkloadRef) -> impl Iterator<Item = &ServerRef> {
        self.workloads
            .get(workload)
            .into_iter()
            .flat_map(|s| s.iter())
    }

    /// Every source's routes, by source name.
    pub fn routes(&self) -> Vec<&Arc<SourceRoutes>> {
        self.routes.values().collect()
    }

    /// Every source's inbound policies, by source name.
    pub fn policies(&self) -> Vec<&Arc<SourcePolicies>> {
        self.policies.values().collect()
    }

    /// How many endpoints the registry holds, over every source.
    pub fn endpoint_count(&self) -> usize {
        self.sources
            .values()
            .flat_map(|s| s.values())
            .flat_map(|s| s.ports.iter())
            .map(|p| p.endpoints.len())
            .sum()
    }

    /// Moves a service's index entries from what `old` declared to what `new` declares,
    /// touching only the entries that differ (a moved endpoint changes two, not every one of
    /// the service), and marks every address and workload of either as touched: what they
    /// lead to includes the service.
    fn reindex(
        &mut self,
        source: &Arc<str>,
        old: Option<&Service>,
        new: Option<&Service>,
        touched: &mut HashSet<Topic>,
    ) {
        let Some(name) = old.or(new).map(|s| Arc::new(s.name.clone())) else {
            return;
        };
        let addresses = |s: Option<&Service>| -> BTreeSet<(SocketAddr, AddressRef)> {
            s.into_iter()
                .flat_map(|s| address_refs(source, &name, s))
                .collect()
        };
        let (was, is) = (addresses(old), addresses(new));
        move_entries(&mut self.addresses, &was, &is);
        touched.extend(was.into_iter().chain(is).map(|(a, _)| Topic::Address(a)));

        let servers = |s: Option<&Service>| -> BTreeSet<(WorkloadRef, ServerRef)> {
            s.into_iter()
                .flat_map(|s| workload_refs(source, &name, s))
                .collect()
        };
        let (was, is) = (servers(old), servers(new));
        move_entries(&mut self.workloads, &was, &is);
        touched.extend(
            was.into_iter()
                .chain(is)
                .map(|(wl, _)| Topic::Workload(wl.key)),
        );
    }
}

/// Takes the entries only in `was` out of `index` and puts those only in `is` in.
fn move_entries<K: Ord + Clone, T: Ord + Clone>(
    index: &mut OrdMap<K, SmallSet<T>>,
    was: &BTreeSet<(K, T)>,
    is: &BTreeSet<(K, T)>,
) {
    for (key, entry) in was.difference(is) {
        remove_from(index, key, entry);
    }
    for (key, entry) in is.difference(was) {
        insert_into(index, key.clone(), entry);
    }
}

fn insert_into<K: Ord + Clone, T: Ord + Clone>(
    index: &mut OrdMap<K, SmallSet<T>>,
    key: K,
    entry: &T,
) {
    match index.get_mut(&key) {
        Some(set) => *set = set.with(entry),
        None => {
            index.insert(key, SmallSet(Arc::from([entry.clone()])));
        }
    }
}

fn remove_from<K: Ord + Clone, T: Ord + Clone>(
    index: &mut OrdMap<K, SmallSet<T>>,
    key: &K,
    entry: &T,
) {
    if let Some(set) = index.get_mut(key) {
        match set.without(entry) {
            Some(rest) => *set = rest,
            None => {
                index.remove(key);
            }
        }
    }
}

// === impl SmallSet ===

impl<T: Ord + Clone> SmallSet<T> {
    fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// The set with `entry` added.
    fn with(&self, entry: &T) -> Self {
        match self.0.binary_search(entry) {
            Ok(_) => self.clone(),
            Err(at) => {
                let mut v = Vec::with_capacity(self.0.len() + 1);
                v.extend_from_slice(&self.0[..at]);
                v.push(entry.clone());
                v.extend_from_slice(&self.0[at..]);
                Self(v.into())
            }
        }
    }

    /// The set without `entry`, or `None` when nothing is left.
    fn without(&self, entry: &T) -> Option<Self> {
        match self.0.binary_search(entry) {
            Ok(_) if self.0.len() == 1 => None,
            Ok(at) => {
                let mut v = self.0.to_vec();
                v.remove(at);
                Some(Self(v.into()))
            }
            Err(_) => Some(self.clone()),
        }
    }
}

/// Every address that leads to a port of a service, with the index entry it gets.
fn address_refs<'a>(
    source: &'a Arc<str>,
    name: &'a Arc<ServiceName>,
    s: &'a Service,
) -> impl Iterator<Item = (SocketAddr, AddressRef)> + 'a {
    s.addresses().map(move |(addr, port, kind)| {
        (
            addr,
            AddressRef {
                kind,
                service: name.clone(),
                port,
                source: source.clone(),
            },
        )
    })
}

/// The workloads behind a service's endpoints, each with the server it provides.
fn workload_refs<'a>(
    source: &'a Arc<str>,
    name: &'a Arc<ServiceName>,
    s: &'a Service,
) -> impl Iterator<Item = (WorkloadRef, ServerRef)> + 'a {
    s.ports.iter().flat_map(move |p| {
        p.endpoints.iter().filter_map(move |e| {
            let key = e.workload.clone()?;
            Some((
                WorkloadRef {
                    source: source.clone(),
                    key,
                },
                ServerRef {
                    address: e.address,
                    service: name.clone(),
                    port: p.port,
                },
            ))
        })
    })
}

#[cfg(test)]
mod tests;
