//! Local rate limits on the inbound side: a server (the workload's port of a service) admits
//! requests at a rate with a burst, counted in total or per client identity, with overrides
//! for some identities. A limit applies to every request of the server, or, with request
//! matches (`to`, as an authorization rule's), to the requests of one route: a request spends
//! a token of every limit that applies to it. A client that authorization refuses spends no
//! tokens: the limits are applied after the authorization decision.

use serde::Deserialize;

use super::authz::{AuthzView, IdentityMatch, PatternError, RequestMatch};
use super::authz_spec::{RequestMatchSpec, compile_matches};
use super::route::RouteSource;
use super::route_spec::{RouteSpecError, err};
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
    /// The requests it applies to (any of them); empty: every request of the server.
    pub to: Vec<RequestMatch>,
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

    /// Whether the limit applies to `req`. A condition the proxy cannot check (a path that
    /// may be read two ways) counts as met: the limit applies.
    pub fn applies_to<R: AuthzView>(&self, req: &R) -> bool {
        self.to.is_empty() || self.to.iter().any(|m| m.covers(req))
    }

    /// The limit as it applies on `port`, if it does: without the matches of other ports, and
    /// without port conditions.
    fn on_port(&self, port: u16) -> Option<Self> {
        super::authz::on_port(&self.to, port).map(|to| Self { to, ..self.clone() })
    }
}

/// A rate limit the mesh file or a platform object puts on a service.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitRule {
    /// The service whose servers it limits.
    pub service: ServiceName,
    /// The limit.
    pub limit: LocalRateLimit,
    /// Where it was written.
    pub source: RouteSource,
}

/// A rate limit as users write it: an entry of the mesh file's `[[policy.rate_limits]]`
/// (snake_case) and the spec of a Kubernetes `RateLimitPolicy` (`weft.dev/v1alpha1`,
/// camelCase), key for key.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// The service, as `name.namespace` (or `name` in the entry's namespace).
    pub service: String,
    /// Requests per second (fractions allowed).
    #[serde(alias = "requestsPerSecond")]
    pub requests_per_second: f64,
    /// Requests at once (default: one second's worth, at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Whether each client identity has a bucket of its own (default: one for all).
    #[serde(default, alias = "perIdentity")]
    pub per_identity: bool,
    /// Rates of their own for some clients, each with a bucket of its own.
    #[serde(default)]
    pub overrides: Vec<RateOverrideSpec>,
    /// The requests it applies to (any of them), as an authorization rule's `to`; absent:
    /// every request.
    #[serde(default)]
    pub to: Vec<RequestMatchSpec>,
}

/// A rate of its own for the clients a pattern matches.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateOverrideSpec {
    /// The clients: an identity pattern.
    pub clients: String,
    /// Requests per second.
    #[serde(alias = "requestsPerSecond")]
    pub requests_per_second: f64,
    /// Requests at once.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// A rate: above zero and finite, a burst of at least one (by default one second's worth);
/// an error names the key under `key`.
fn rate(key: &str, per_second: f64, burst: Option<u32>) -> Result<Rate, RouteSpecError> {
    let at = |k: &str| {
        if key.is_empty() {
            k.to_string()
        } else {
            format!("{key}.{k}")
        }
    };
    if !(per_second > 0.0 && per_second.is_finite()) {
        return err(
            at("requests_per_second"),
            format!("{per_second}: a number of requests above zero"),
        );
    }
    let burst = match burst {
        Some(0) => return err(at("burst"), "at least 1"),
        Some(b) => b,
        // One second's worth: a whole number at least 1, and within u32 for any finite rate.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "clamped to 1..=u32::MAX first"
        )]
        None => per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32,
    };
    Ok(Rate { per_second, burst })
}

impl RateLimitSpec {
    /// Checks the limit written at `source` and builds it; a service without a namespace is
    /// in `namespace`. An error names the key (`overrides[1].clients`).
    pub fn compile(
        &self,
        source: RouteSource,
        namespace: &str,
    ) -> Result<RateLimitRule, RouteSpecError> {
        let service = ServiceName::parse(&self.service, namespace)
            .or_else(|e| err("service", e.to_string()))?;
        let mut overrides = Vec::new();
        for (j, o) in self.overrides.iter().enumerate() {
            let at = format!("overrides[{j}]");
            let m: IdentityMatch = o
                .clients
                .parse()
                .map_err(|e: PatternError| RouteSpecError {
                    key: format!("{at}.clients"),
                    message: e.to_string(),
                })?;
            overrides.push((m, rate(&at, o.requests_per_second, o.burst)?));
        }
        let to = compile_matches(&self.to)?;
        Ok(RateLimitRule {
            service,
            limit: LocalRateLimit {
                rate: rate("", self.requests_per_second, self.burst)?,
                per_identity: self.per_identity,
                overrides,
                to,
            },
            source,
        })
    }
}

/// The limits of the server on `port` that backs `services`: the first rule naming one of
/// them for every request, and each rule naming one of them for some requests (`to`), as
/// they apply on the port.
pub fn for_server<'a>(
    rules: &[RateLimitRule],
    services: impl IntoIterator<Item = &'a ServiceName>,
    port: u16,
) -> Vec<LocalRateLimit> {
    let services: Vec<&ServiceName> = services.into_iter().collect();
    let mut whole = false;
    let mut out = Vec::new();
    for r in rules.iter().filter(|r| services.contains(&&r.service)) {
        if r.limit.to.is_empty() {
            if whole {
                continue;
            }
            whole = true;
        }
        if let Some(limit) = r.limit.on_port(port) {
            out.push(limit);
        }
    }
    out
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
            to: Vec::new(),
        };
        assert_eq!(l.rate_for(Some(&batch)), (fast, true));
        assert_eq!(l.rate_for(Some(&web)), (base, false));
        assert_eq!(l.rate_for(None), (base, false));
        let api = ServiceName::new("shop", "api").unwrap();
        let rules = [RateLimitRule {
            service: api.clone(),
            limit: l.clone(),
            source: RouteSource::ControlPlane,
        }];
        assert_eq!(for_server(&rules, [&api], 80), vec![l.clone()]);
        assert!(for_server(&rules, [], 80).is_empty());
        // A second whole-server limit is ignored; a route's limit adds to it, on its port.
        let route = LocalRateLimit {
            to: vec![RequestMatch {
                port: Some(8080),
                ..RequestMatch::default()
            }],
            ..l.clone()
        };
        let rules = [
            rules[0].clone(),
            rules[0].clone(),
            RateLimitRule {
                limit: route,
                ..rules[0].clone()
            },
        ];
        assert_eq!(for_server(&rules, [&api], 80), vec![l.clone()]);
        let on_8080 = for_server(&rules, [&api], 8080);
        assert_eq!(on_8080.len(), 2);
        assert_eq!(on_8080[1].to, vec![RequestMatch::default()]);
    }
}
