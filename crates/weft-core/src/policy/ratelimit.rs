//! Local rate limits on the inbound side: a server (the workload's port of a service) admits
//! requests at a rate with a burst, counted in total or per client identity, with overrides
//! for some identities. A client that authorization refuses spends no tokens: the limit is
//! applied after the authorization decision.

use super::authz::IdentityMatch;
use crate::model::{Identity, ServiceName};

/// A rate: a number of requests per second (fractions allowed: 0.5 is one every two seconds)
/// and how many may come at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Requests per second, above zero.
    pub per_second: f64,
    /// Requests at once, at least one.
    pub burst: u32,
}

/// The rate limit of one server.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalRateLimit {
    /// The rate.
    pub rate: Rate,
    /// Whether each client identity has a bucket of its own (clients without an identity
    /// share one); otherwise one bucket for all.
    pub per_identity: bool,
    /// Rates of their own for clients matching a pattern, first match wins; each such client
    /// has a bucket of its own.
    pub overrides: Vec<(IdentityMatch, Rate)>,
}

impl LocalRateLimit {
    /// The rate for `client` and whether it has a bucket of its own.
    pub fn rate_for(&self, client: Option<&Identity>) -> (Rate, bool) {
        if let Some(id) = client
            && let Some((_, r)) = self.overrides.iter().find(|(m, _)| m.matches(id))
        {
            return (*r, true);
        }
        (self.rate, self.per_identity)
    }
}

/// A rate limit the mesh file puts on a service.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitRule {
    /// The service whose servers it limits.
    pub service: ServiceName,
    /// The limit.
    pub limit: LocalRateLimit,
}

/// The limit of a server that backs `services`: the first rule naming one of them.
pub fn for_server<'a>(
    rules: &[RateLimitRule],
    services: impl IntoIterator<Item = &'a ServiceName>,
) -> Option<LocalRateLimit> {
    let services: Vec<&ServiceName> = services.into_iter().collect();
    rules
        .iter()
        .find(|r| services.contains(&&r.service))
        .map(|r| r.limit.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TrustDomain;

    #[test]
    fn overrides_win_and_have_buckets_of_their_own() {
        let td = TrustDomain::new("weft.test").unwrap();
        let batch = Identity::new(td.clone(), "jobs", "batch").unwrap();
        let web = Identity::new(td, "shop", "web").unwrap();
        let base = Rate {
            per_second: 10.0,
            burst: 20,
        };
        let fast = Rate {
            per_second: 100.0,
            burst: 100,
        };
        let l = LocalRateLimit {
            rate: base,
            per_identity: false,
            overrides: vec![("jobs/*".parse().unwrap(), fast)],
        };
        assert_eq!(l.rate_for(Some(&batch)), (fast, true));
        assert_eq!(l.rate_for(Some(&web)), (base, false));
        assert_eq!(l.rate_for(None), (base, false));
        let api = ServiceName::new("shop", "api").unwrap();
        let rules = [RateLimitRule {
            service: api.clone(),
            limit: l.clone(),
        }];
        assert_eq!(for_server(&rules, [&api]), Some(l));
        assert_eq!(for_server(&rules, []), None);
    }
}
