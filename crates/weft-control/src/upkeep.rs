//! Keeping the control plane's own credentials alive while it runs: its serving certificate
//! is re-issued at 70 % of its life (it lives `ca.leaf_ttl` like any leaf), and the CA's
//! intermediate is renewed once due when the root key is at hand. When it is not, the
//! control plane warns at every check from the moment renewal falls due, and exports the
//! intermediate's end as a gauge so an alert can fire long before leaves stop being issued.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_ca::{CaError, TlsCredentials};

use crate::State;
use crate::transport::server_credentials;

/// How often the intermediate is checked, at most. Renewal falls due months before the end,
/// so hourly checks lose nothing.
pub const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// The share of the serving certificate's life after which it is re-issued (as proxies do).
const RENEW_AT: f64 = 0.7;

/// A retry after a failed re-issue comes this much later.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// What one check did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Checked {
    /// Nothing was due.
    Nothing,
    /// The intermediate was renewed; it now ends then.
    Renewed(SystemTime),
    /// Renewal is due but impossible; the current intermediate ends then.
    CannotRenew(SystemTime),
}

/// Runs until `stop`: checks the intermediate and re-issues the serving certificate when due.
pub(crate) async fn run(
    state: Arc<State>,
    serving: watch::Sender<Arc<TlsCredentials>>,
    stop: CancellationToken,
) {
    loop {
        let checked = check_intermediate(&state, SystemTime::now());
        let current = serving.borrow().clone();
        let reissue = matches!(checked, Checked::Renewed(_))
            || renewal_due(current.not_after(), state.ca.leaf_ttl(), SystemTime::now());
        let mut wait = CHECK_EVERY;
        if reissue {
            match server_credentials(&state.ca, current.identity()) {
                Ok(next) => {
                    tracing::info!(valid_until = ?next.not_after(), "control-plane certificate re-issued");
                    serving.send_replace(next);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot re-issue the control plane's certificate");
                    wait = RETRY_AFTER;
                }
            }
        }
        let latest = serving.borrow().clone();
        wait = wait.min(until_renewal(
            latest.not_after(),
            state.ca.leaf_ttl(),
            SystemTime::now(),
        ));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait.max(Duration::from_secs(1))) => {}
        }
    }
}

/// Renews the intermediate if due, updating the gauges and warning when it cannot be renewed.
pub(crate) fn check_intermediate(state: &State, now: SystemTime) -> Checked {
    let outcome = match state.ca.renew_intermediate_if_due(now) {
        Ok(None) => Checked::Nothing,
        Ok(Some(end)) => {
            tracing::info!(not_after = ?end, "intermediate CA renewed");
            Checked::Renewed(end)
        }
        Err(e @ CaError::RenewalImpossible { .. }) => {
            let end = state.ca.intermediate_not_after();
            let left = end.duration_since(now).unwrap_or_default();
            tracing::warn!(error = %e, days_left = left.as_secs() / 86_400, "the intermediate CA is due for renewal and cannot be renewed here; when it expires no certificate can be issued");
            Checked::CannotRenew(end)
        }
        Err(e) => {
            tracing::error!(error = %e, "intermediate CA renewal failed; retrying at the next check");
            Checked::CannotRenew(state.ca.intermediate_not_after())
        }
    };
    state.metrics.set_intermediate(
        state.ca.intermediate_not_after(),
        !matches!(outcome, Checked::CannotRenew(_)),
    );
    outcome
}

/// Whether a certificate of lifetime `ttl` ending at `not_after` should be re-issued `now`.
fn renewal_due(not_after: SystemTime, ttl: Duration, now: SystemTime) -> bool {
    until_renewal(not_after, ttl, now).is_zero()
}

/// How long until a certificate of lifetime `ttl` ending at `not_after` reaches 70 % of its
/// life. A certificate cut short (by its intermediate) is renewed when 30 % of `ttl` is left.
fn until_renewal(not_after: SystemTime, ttl: Duration, now: SystemTime) -> Duration {
    let renew_at = not_after
        .checked_sub(ttl.mul_f64(1.0 - RENEW_AT))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    renew_at.duration_since(now).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_ca::CertificateAuthority;
    use weft_core::TrustDomain;

    const DAY: Duration = Duration::from_secs(86_400);

    fn state(ca: CertificateAuthority) -> State {
        State::for_tests(ca, None)
    }

    fn ca_ending_in(days: u64, keep_root_key: bool) -> CertificateAuthority {
        let now = SystemTime::now();
        CertificateAuthority::generate_ephemeral_with_validity(
            &TrustDomain::new("weft.test").unwrap(),
            Duration::from_secs(3600),
            (now - DAY * 300)..(now + DAY * days as u32),
            keep_root_key,
        )
        .unwrap()
    }

    fn gauges(state: &State) -> (i64, i64) {
        (
            state.metrics.intermediate_expiry.get(),
            state.metrics.intermediate_renewable.get(),
        )
    }

    #[test]
    fn a_due_intermediate_is_renewed_and_the_gauges_follow() {
        let s = state(ca_ending_in(60, true));
        let before = s.ca.intermediate_not_after();
        let Checked::Renewed(end) = check_intermediate(&s, SystemTime::now()) else {
            panic!("not renewed");
        };
        assert!(end > before + DAY * 200);
        let secs = end
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(gauges(&s), (secs as i64, 1));
        // Renewed, it is not due again.
        assert_eq!(check_intermediate(&s, SystemTime::now()), Checked::Nothing);
        // The serving certificate can be issued from the new intermediate.
        let own = weft_core::Identity::control_plane(s.ca.trust_domain());
        assert!(server_credentials(&s.ca, &own).is_ok());
    }

    #[test]
    fn without_the_root_key_renewal_is_reported_and_exported() {
        let s = state(ca_ending_in(60, false));
        let end = s.ca.intermediate_not_after();
        assert_eq!(
            check_intermediate(&s, SystemTime::now()),
            Checked::CannotRenew(end)
        );
        assert_eq!(gauges(&s).1, 0);
        let secs = end
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(gauges(&s).0, secs as i64);
    }

    #[test]
    fn serving_certificate_renews_at_seventy_percent() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ttl = Duration::from_secs(1000);
        // Issued now, ends in 1000 s: due in 700 s.
        let end = now + ttl;
        assert_eq!(until_renewal(end, ttl, now), Duration::from_secs(700));
        assert!(!renewal_due(end, ttl, now + Duration::from_secs(699)));
        assert!(renewal_due(end, ttl, now + Duration::from_secs(700)));
        // Already expired: due at once.
        assert!(renewal_due(now, ttl, now + Duration::from_secs(5)));
    }
}
