//! How a caller's proxy treats a whole destination service, beyond its routes: the retry
//! budget that every retry to the service draws on, failure accrual on its endpoints, and a
//! concurrency limit on all its calls. The defaults are what a service without a policy gets.
//!
//! Users write it as an entry of the mesh file's `[[policy.backends]]` (snake_case) or the
//! spec of a Kubernetes `BackendPolicy` (`weft.dev/v1alpha1`, camelCase), read by the same
//! serde types ([`BackendPolicySpec`]).

use std::time::Duration;

use serde::Deserialize;

use super::resilience::{ConcurrencyLimit, parse_duration};
use super::route::RouteSource;
use super::route_spec::{LimitsSpec, RouteSpecError, err, limits};
use crate::model::ServiceName;

/// The share of requests that may be retried, on top of a floor of retries a second, over a
/// window: retries beyond it are refused (and counted), so retries cannot multiply an outage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBudget {
    /// Retries allowed per hundred requests sent, 0 to 100.
    pub percent: u32,
    /// Retries allowed a second whatever the requests.
    pub min_per_second: u32,
    /// How long a request counts towards the budget.
    pub window: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: 20,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// When an endpoint is ejected, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureAccrual {
    /// Consecutive failures (connection errors and 5xx) that eject an endpoint; 0: never.
    pub consecutive_failures: u32,
    /// The first penalty's bound; each failed probe doubles it.
    pub first_penalty: Duration,
    /// The largest penalty's bound.
    pub max_penalty: Duration,
}

impl Default for FailureAccrual {
    fn default() -> Self {
        Self {
            consecutive_failures: 7,
            first_penalty: Duration::from_secs(1),
            max_penalty: Duration::from_secs(60),
        }
    }
}

/// What a caller's proxy applies to every call to one service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendPolicy {
    /// The budget of retries to the service.
    pub retry_budget: RetryBudget,
    /// Failure accrual on its endpoints.
    pub failure_accrual: FailureAccrual,
    /// Calls to it in flight at once, from one proxy; none: no limit.
    pub limit: Option<ConcurrencyLimit>,
}

/// A backend policy the mesh file or a platform object puts on a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRule {
    /// The service.
    pub service: ServiceName,
    /// The policy.
    pub policy: BackendPolicy,
    /// Where it was written.
    pub source: RouteSource,
}

/// `retry_budget`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSpec {
    /// Retries as a percentage of requests, 0 to 100 (default 20).
    #[serde(default)]
    pub percent: Option<u32>,
    /// Retries allowed a second whatever the requests (default 10).
    #[serde(default, alias = "minRetriesPerSecond")]
    pub min_retries_per_second: Option<u32>,
    /// The window requests count in, 1s to 60s (default `10s`).
    #[serde(default)]
    pub interval: Option<String>,
}

/// `failure_accrual`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureAccrualSpec {
    /// Consecutive failures that eject an endpoint (default 7; 0 turns accrual off).
    #[serde(default, alias = "consecutiveFailures")]
    pub consecutive_failures: Option<u32>,
    /// The first penalty's bound (default `1s`).
    #[serde(default, alias = "firstPenalty")]
    pub first_penalty: Option<String>,
    /// The largest penalty's bound (default `60s`).
    #[serde(default, alias = "maxPenalty")]
    pub max_penalty: Option<String>,
}

/// A backend policy as users write it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendPolicySpec {
    /// The service: `name` (in the entry's namespace) or `name.namespace`.
    pub service: String,
    /// The retry budget.
    #[serde(default, alias = "retryBudget")]
    pub retry_budget: Option<RetryBudgetSpec>,
    /// Failure accrual.
    #[serde(default, alias = "failureAccrual")]
    pub failure_accrual: Option<FailureAccrualSpec>,
    /// The concurrency limit on all calls to the service, from each caller's proxy.
    #[serde(default)]
    pub limits: Option<LimitsSpec>,
}

fn duration(
    key: &str,
    text: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, RouteSpecError> {
    let d = parse_duration(text).or_else(|e| err(key, e.to_string()))?;
    if d < min || d > max {
        return err(key, format!("{text}: from {min:?} to {max:?}"));
    }
    Ok(d)
}

impl BackendPolicySpec {
    /// Checks the policy written at `source` and builds it; a service without a namespace is
    /// in `namespace`. An error names the key (`failure_accrual.max_penalty`).
    pub fn compile(
        &self,
        source: RouteSource,
        namespace: &str,
    ) -> Result<BackendRule, RouteSpecError> {
        let service = ServiceName::parse(&self.service, namespace)
            .or_else(|e| err("service", e.to_string()))?;
        let mut policy = BackendPolicy::default();
        if let Some(b) = &self.retry_budget {
            if let Some(p) = b.percent {
                if p > 100 {
                    return err("retry_budget.percent", format!("{p}: from 0 to 100"));
                }
                policy.retry_budget.percent = p;
            }
            if let Some(n) = b.min_retries_per_second {
                policy.retry_budget.min_per_second = n;
            }
            if let Some(i) = &b.interval {
                policy.retry_budget.window = duration(
                    "retry_budget.interval",
                    i,
                    Duration::from_secs(1),
                    Duration::from_secs(60),
                )?;
            }
        }
        if let Some(a) = &self.failure_accrual {
            let f = &mut policy.failure_accrual;
            if let Some(n) = a.consecutive_failures {
                f.consecutive_failures = n;
            }
            let hour = Duration::from_secs(3600);
            if let Some(p) = &a.first_penalty {
                f.first_penalty = duration(
                    "failure_accrual.first_penalty",
                    p,
                    Duration::from_millis(1),
                    hour,
                )?;
            }
            if let Some(p) = &a.max_penalty {
                f.max_penalty = duration(
                    "failure_accrual.max_penalty",
                    p,
                    Duration::from_millis(1),
                    hour,
                )?;
            }
            if f.max_penalty < f.first_penalty {
                return err("failure_accrual.max_penalty", "below first_penalty");
            }
        }
        policy.limit = limits("", self.limits.as_ref()).map_err(|e| RouteSpecError {
            key: e.key.trim_start_matches('.').to_string(),
            message: e.message,
        })?;
        Ok(BackendRule {
            service,
            policy,
            source,
        })
    }
}

/// The policy of `service`: the first rule naming it, else the defaults.
pub fn for_service(rules: &[BackendRule], service: &ServiceName) -> BackendPolicy {
    rules
        .iter()
        .find(|r| &r.service == service)
        .map(|r| r.policy.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(json: serde_json::Value) -> Result<BackendRule, RouteSpecError> {
        let spec: BackendPolicySpec = serde_json::from_value(json).unwrap();
        spec.compile(RouteSource::ControlPlane, "shop")
    }

    #[test]
    fn specs_compile_with_defaults_and_located_errors() {
        let r = compile(serde_json::json!({
            "service": "api",
            "retryBudget": {"percent": 50, "minRetriesPerSecond": 1, "interval": "30s"},
            "failureAccrual": {"consecutiveFailures": 3, "firstPenalty": "100ms", "maxPenalty": "5s"},
            "limits": {"maxInFlight": 8, "maxQueue": 2},
        }))
        .unwrap();
        assert_eq!(r.service, ServiceName::new("shop", "api").unwrap());
        assert_eq!(
            r.policy.retry_budget,
            RetryBudget {
                percent: 50,
                min_per_second: 1,
                window: Duration::from_secs(30)
            }
        );
        assert_eq!(
            r.policy.failure_accrual,
            FailureAccrual {
                consecutive_failures: 3,
                first_penalty: Duration::from_millis(100),
                max_penalty: Duration::from_secs(5)
            }
        );
        assert_eq!(
            r.policy.limit,
            Some(ConcurrencyLimit {
                max_in_flight: 8,
                max_queue: 2
            })
        );
        let r = compile(serde_json::json!({"service": "api"})).unwrap();
        assert_eq!(r.policy, BackendPolicy::default());
        for (json, key) in [
            (
                serde_json::json!({"service": "api", "retry_budget": {"percent": 101}}),
                "retry_budget.percent",
            ),
            (
                serde_json::json!({"service": "api", "retry_budget": {"interval": "2m"}}),
                "retry_budget.interval",
            ),
            (
                serde_json::json!({"service": "api", "failure_accrual": {"first_penalty": "x"}}),
                "failure_accrual.first_penalty",
            ),
            (
                serde_json::json!({"service": "api", "failure_accrual": {"first_penalty": "10s", "max_penalty": "1s"}}),
                "failure_accrual.max_penalty",
            ),
            (
                serde_json::json!({"service": "api", "limits": {"max_in_flight": 0}}),
                "limits.max_in_flight",
            ),
        ] {
            assert_eq!(compile(json.clone()).unwrap_err().key, key, "{json}");
        }
    }
}
