//! The service registry: the merged, versioned view of every workload that the platform
//! adapters report.
//!
//! Each adapter owns one *source* and writes only to it through a [`RegistryWriter`]. Readers
//! call [`Registry::subscribe`] and are woken with a new [`RegistrySnapshot`] whenever the merged
//! content changes; a write that changes nothing does not bump the version or wake anyone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::watch;

use crate::model::{Endpoint, ServiceName, Workload, WorkloadKey};

/// The registry. Cheap to clone; all clones share one state.
#[derive(Clone, Debug)]
pub struct Registry {
    tx: watch::Sender<Arc<RegistrySnapshot>>,
    synced: watch::Sender<BTreeSet<String>>,
}

/// An immutable view of the registry at one version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistrySnapshot {
    version: u64,
    sources: BTreeMap<String, BTreeMap<WorkloadKey, Workload>>,
}

/// Writes one source's workloads into the registry.
#[derive(Clone, Debug)]
pub struct RegistryWriter {
    source: String,
    tx: watch::Sender<Arc<RegistrySnapshot>>,
    synced: watch::Sender<BTreeSet<String>>,
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
        Self { tx, synced }
    }

    /// A writer for the named source (one per platform adapter).
    pub fn writer(&self, source: impl Into<String>) -> RegistryWriter {
        RegistryWriter {
            source: source.into(),
            tx: self.tx.clone(),
            synced: self.synced.clone(),
        }
    }

    /// A receiver that always holds the latest snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<RegistrySnapshot>> {
        self.tx.subscribe()
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
}

// === impl RegistryWriter ===

impl RegistryWriter {
    /// The name of the source this writer owns.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Replaces all of this source's workloads, as after a relist or a resync, and marks the
    /// source as synced.
    pub fn replace_all(&self, workloads: impl IntoIterator<Item = Workload>) {
        let next: BTreeMap<_, _> = workloads.into_iter().map(|w| (w.key.clone(), w)).collect();
        self.modify(|set| {
            if *set == next {
                false
            } else {
                *set = next;
                true
            }
        });
        // After the write, so a reader that sees the source synced also sees its content.
        self.synced
            .send_if_modified(|set| set.insert(self.source.clone()));
    }

    /// Adds or updates one workload.
    pub fn upsert(&self, workload: Workload) {
        self.modify(|set| {
            if set.get(&workload.key) == Some(&workload) {
                return false;
            }
            set.insert(workload.key.clone(), workload);
            true
        });
    }

    /// Removes one workload; removing an unknown one is not an error.
    pub fn remove(&self, key: &WorkloadKey) {
        self.modify(|set| set.remove(key).is_some());
    }

    fn modify(&self, f: impl FnOnce(&mut BTreeMap<WorkloadKey, Workload>) -> bool) {
        self.tx.send_if_modified(|snap| {
            let mut next = (**snap).clone();
            let set = next.sources.entry(self.source.clone()).or_default();
            if !f(set) {
                return false;
            }
            next.version += 1;
            *snap = Arc::new(next);
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

    /// Every workload from every source.
    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.sources.values().flat_map(|s| s.values())
    }

    /// One source's workloads.
    pub fn source(&self, source: &str) -> impl Iterator<Item = &Workload> {
        self.sources
            .get(source)
            .into_iter()
            .flat_map(|s| s.values())
    }

    /// Looks a workload up by key in any source.
    pub fn workload(&self, key: &WorkloadKey) -> Option<&Workload> {
        self.sources.values().find_map(|s| s.get(key))
    }

    /// All services and their endpoints, merged across sources.
    pub fn services(&self) -> BTreeMap<ServiceName, BTreeSet<Endpoint>> {
        let mut out: BTreeMap<ServiceName, BTreeSet<Endpoint>> = BTreeMap::new();
        for w in self.workloads() {
            if let Some(svc) = &w.service {
                out.entry(svc.clone()).or_default().insert(endpoint_of(w));
            }
        }
        out
    }

    /// The endpoints of one service.
    pub fn endpoints(&self, service: &ServiceName) -> BTreeSet<Endpoint> {
        self.workloads()
            .filter(|w| w.service.as_ref() == Some(service))
            .map(endpoint_of)
            .collect()
    }
}

fn endpoint_of(w: &Workload) -> Endpoint {
    Endpoint {
        address: w.address,
        identity: w.meshed.then(|| w.identity.clone()),
        workload: w.key.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Identity, Protocol, TrustDomain};

    fn workload(name: &str, port: u16) -> Workload {
        let td = TrustDomain::new("weft.test").unwrap();
        Workload {
            key: WorkloadKey {
                namespace: "demo".into(),
                name: name.into(),
            },
            identity: Identity::new(td, "demo", name).unwrap(),
            service: Some(ServiceName::new("demo", "api").unwrap()),
            address: ([127, 0, 0, 1], port).into(),
            protocol: Protocol::Auto,
            meshed: true,
            labels: Default::default(),
        }
    }

    #[tokio::test]
    async fn merges_sources_and_wakes_readers_only_on_change() {
        let reg = Registry::new();
        let mut rx = reg.subscribe();
        let a = reg.writer("a");
        let b = reg.writer("b");
        a.upsert(workload("one", 1));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        b.replace_all([workload("two", 2)]);
        let svc = ServiceName::new("demo", "api").unwrap();
        assert_eq!(reg.snapshot().endpoints(&svc).len(), 2);
        assert_eq!(reg.snapshot().version(), 2);
        rx.mark_unchanged();

        // The same content again changes nothing.
        b.replace_all([workload("two", 2)]);
        a.upsert(workload("one", 1));
        assert!(!rx.has_changed().unwrap());
        assert_eq!(reg.snapshot().version(), 2);

        // A resync of one source leaves the other alone.
        a.replace_all([]);
        assert!(rx.has_changed().unwrap());
        let eps = reg.snapshot().endpoints(&svc);
        assert_eq!(eps.len(), 1);
        assert_eq!(eps.iter().next().unwrap().address.port(), 2);
        b.remove(&workload("two", 2).key);
        assert!(reg.snapshot().services().is_empty());
    }

    #[test]
    fn a_source_is_synced_after_its_first_full_sync() {
        let reg = Registry::new();
        let a = reg.writer("a");
        a.upsert(workload("one", 1));
        assert!(!reg.all_synced(["a"]));
        a.replace_all([workload("one", 1)]);
        assert!(reg.all_synced(["a"]));
        assert!(!reg.all_synced(["a", "b"]));
        reg.writer("b").replace_all([]);
        assert!(reg.all_synced(["a", "b"]));
    }

    #[test]
    fn unmeshed_endpoints_have_no_identity() {
        let reg = Registry::new();
        let mut w = workload("plain", 3);
        w.meshed = false;
        reg.writer("a").upsert(w);
        let svc = ServiceName::new("demo", "api").unwrap();
        assert!(
            reg.snapshot()
                .endpoints(&svc)
                .iter()
                .all(|e| e.identity.is_none())
        );
    }
}
