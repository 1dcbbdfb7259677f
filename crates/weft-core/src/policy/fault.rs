//! Fault injection on a route rule: a delay, an abort, or both, each for a share of the
//! requests, and optionally only for some callers, so that a team can try its callers'
//! resilience without touching anyone else's traffic.
//!
//! The caller's proxy injects the fault, for each attempt, inside the rule's retries and
//! timeouts: a retry may mask an injected abort (within its budget), and a timeout cuts an
//! injected delay. Nothing else turns a fault off.

use std::time::Duration;

use super::authz::IdentityMatch;
use crate::model::Identity;

/// A share of requests, in millionths (100 % is 1,000,000), so that rules compare exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Share(u32);

impl Share {
    /// All requests.
    pub const ALL: Self = Self(1_000_000);

    /// `percent` (0 to 100, fractions allowed), or `None` outside that range.
    pub fn from_percent(percent: f64) -> Option<Self> {
        if !(0.0..=100.0).contains(&percent) {
            return None;
        }
        // In range and finite: the product fits.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "checked to lie in 0..=1e6 above"
        )]
        Some(Self((percent * 10_000.0).round() as u32))
    }

    /// In millionths.
    pub fn millionths(self) -> u32 {
        self.0
    }

    /// Whether a draw (uniform in `0..1_000_000`) falls in the share.
    pub fn hit(self, draw: u32) -> bool {
        draw < self.0
    }
}

/// What an injected abort answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortWith {
    /// An HTTP status (HTTP rules).
    Http(u16),
    /// A gRPC status code, trailers-only (gRPC rules).
    Grpc(u8),
}

/// gRPC status codes by the names Weft's files use.
pub const GRPC_STATUS_NAMES: [(&str, u8); 16] = [
    ("cancelled", 1),
    ("unknown", 2),
    ("invalid-argument", 3),
    ("deadline-exceeded", 4),
    ("not-found", 5),
    ("already-exists", 6),
    ("permission-denied", 7),
    ("resource-exhausted", 8),
    ("failed-precondition", 9),
    ("aborted", 10),
    ("out-of-range", 11),
    ("unimplemented", 12),
    ("internal", 13),
    ("unavailable", 14),
    ("data-loss", 15),
    ("unauthenticated", 16),
];

/// The faults of a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultInjection {
    /// A delay before the attempt is sent, for a share of the attempts.
    pub delay: Option<(Duration, Share)>,
    /// An answer in place of the backend's, for a share of the attempts.
    pub abort: Option<(AbortWith, Share)>,
    /// The callers it applies to; none: every caller.
    pub sources: Vec<IdentityMatch>,
}

impl FaultInjection {
    /// Whether it applies to a caller whose identity is `caller`.
    pub fn applies_to(&self, caller: &Identity) -> bool {
        self.sources.is_empty() || self.sources.iter().any(|m| m.matches(caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TrustDomain;

    #[test]
    fn shares_are_exact_millionths() {
        assert_eq!(Share::from_percent(100.0), Some(Share::ALL));
        assert_eq!(Share::from_percent(12.5).unwrap().millionths(), 125_000);
        assert_eq!(Share::from_percent(0.0001).unwrap().millionths(), 1);
        for bad in [-1.0, 100.1, f64::NAN, f64::INFINITY] {
            assert_eq!(Share::from_percent(bad), None, "{bad}");
        }
        let s = Share::from_percent(10.0).unwrap();
        assert!(s.hit(99_999) && !s.hit(100_000));
        assert!(!Share::default().hit(0));
    }

    #[test]
    fn sources_pick_the_callers() {
        let td = TrustDomain::new("weft.test").unwrap();
        let web = Identity::new(td.clone(), "shop", "web").unwrap();
        let batch = Identity::new(td, "jobs", "batch").unwrap();
        let mut f = FaultInjection::default();
        assert!(f.applies_to(&web) && f.applies_to(&batch));
        f.sources = vec!["shop/*".parse().unwrap()];
        assert!(f.applies_to(&web) && !f.applies_to(&batch));
    }
}
