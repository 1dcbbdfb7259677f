//! The leaf certificates `Identity.Certify` issued: for each identity, the end of the latest
//! leaf, so that the dashboard can show which expire soonest.
//!
//! Bounded: at most [`MAX_IDENTITIES`] identities; the one certified longest ago makes room
//! for a new one. A renewal moves its identity to the back of that queue.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use weft_core::Identity;

/// Identities the ledger keeps at most.
pub const MAX_IDENTITIES: usize = 10_000;

/// One identity's latest leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IssuedLeaf {
    /// The identity it proves.
    pub(crate) identity: Identity,
    /// When it was issued.
    pub(crate) issued_at: SystemTime,
    /// The end of its validity.
    pub(crate) not_after: SystemTime,
}

/// The latest leaf of each identity, bounded.
#[derive(Debug)]
pub(crate) struct LeafLedger {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped at each record: the order in which identities were last certified.
    next: u64,
    by_identity: HashMap<Identity, (u64, IssuedLeaf)>,
    /// Sequence number -> identity, oldest first.
    order: BTreeMap<u64, Identity>,
}

impl Default for LeafLedger {
    fn default() -> Self {
        Self::with_capacity(MAX_IDENTITIES)
    }
}

// === impl LeafLedger ===

impl LeafLedger {
    /// A ledger of at most `capacity` identities.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update leaves the maps consistent before it can panic, so a poisoned lock is
        // used as it is.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a leaf issued to `identity` now, valid until `not_after`.
    pub(crate) fn record(&self, identity: &Identity, not_after: SystemTime) {
        let mut inner = self.lock();
        inner.next += 1;
        let seq = inner.next;
        let leaf = IssuedLeaf {
            identity: identity.clone(),
            issued_at: SystemTime::now(),
            not_after,
        };
        if let Some((old, _)) = inner.by_identity.insert(identity.clone(), (seq, leaf)) {
            inner.order.remove(&old);
        }
        inner.order.insert(seq, identity.clone());
        while inner.by_identity.len() > self.capacity {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            inner.by_identity.remove(&oldest);
        }
    }

    /// The `n` leaves that end soonest, soonest first (ties by identity).
    pub(crate) fn soonest(&self, n: usize) -> Vec<IssuedLeaf> {
        let inner = self.lock();
        let mut all: Vec<&IssuedLeaf> = inner.by_identity.values().map(|(_, l)| l).collect();
        let by_end = |a: &&IssuedLeaf, b: &&IssuedLeaf| {
            a.not_after
                .cmp(&b.not_after)
                .then_with(|| a.identity.cmp(&b.identity))
        };
        if all.len() > n && n > 0 {
            all.select_nth_unstable_by(n - 1, by_end);
        }
        all.truncate(n);
        all.sort_by(by_end);
        all.into_iter().cloned().collect()
    }

    /// How many identities the ledger holds.
    pub(crate) fn len(&self) -> usize {
        self.lock().by_identity.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn id(name: &str) -> Identity {
        Identity::parse_spiffe(&format!("spiffe://weft.test/ns/shop/sa/{name}")).unwrap()
    }

    #[test]
    fn keeps_the_latest_leaf_of_each_identity_and_drops_the_oldest() {
        let ledger = LeafLedger::with_capacity(3);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        ledger.record(&id("a"), t0 + Duration::from_secs(30));
        ledger.record(&id("b"), t0 + Duration::from_secs(10));
        ledger.record(&id("c"), t0 + Duration::from_secs(20));
        // A renewal replaces the identity's leaf and makes it the newest.
        ledger.record(&id("a"), t0 + Duration::from_secs(40));
        assert_eq!(ledger.len(), 3);
        // A fourth identity pushes out the one certified longest ago: b.
        ledger.record(&id("d"), t0 + Duration::from_secs(5));
        assert_eq!(ledger.len(), 3);
        let names: Vec<String> = ledger
            .soonest(10)
            .iter()
            .map(|l| l.identity.name().to_string())
            .collect();
        assert_eq!(names, ["d", "c", "a"]);
        let two = ledger.soonest(2);
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].not_after, t0 + Duration::from_secs(20));
        assert!(ledger.soonest(0).is_empty());
    }

    #[test]
    fn the_default_bound_holds() {
        let ledger = LeafLedger::default();
        let t0 = SystemTime::UNIX_EPOCH;
        for i in 0..MAX_IDENTITIES + 5 {
            ledger.record(&id(&format!("w{i}")), t0 + Duration::from_secs(i as u64));
        }
        assert_eq!(ledger.len(), MAX_IDENTITIES);
        // The first five went; the soonest left is the sixth.
        assert_eq!(ledger.soonest(1)[0].identity.name(), "w5");
    }
}
