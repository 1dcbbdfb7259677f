//! How a route rule guards its calls: timeouts (Gateway API `HTTPRoute` `timeouts`, GEP-1742)
//! and retries (`HTTPRoute` rule `retry`, GEP-1731).
//!
//! - `request`: the whole call as the caller sees it, from the moment the proxy has the request
//!   until the response has ended (every attempt included, once retries exist).
//! - `backend_request`: each attempt sent to a backend, until its response has ended; at most
//!   `request`.
//!
//! A zero duration (`0s`) turns a timeout off, as Gateway API says. Durations are written as
//! Gateway API writes them (GEP-2257): one to four `<number><unit>` parts, the number of at
//! most five digits, the unit `h`, `m`, `s` or `ms` (`1h30m`, `500ms`, `10s`).

use std::time::Duration;

/// The timeouts of a rule; `None`: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole call.
    pub request: Option<Duration>,
    /// Each attempt.
    pub backend_request: Option<Duration>,
}

impl Timeouts {
    /// Whether no timeout is set.
    pub fn is_empty(&self) -> bool {
        self.request.is_none() && self.backend_request.is_none()
    }

    /// The limit of a call's single attempt: the smaller of the two.
    pub fn first_attempt(&self) -> Option<Duration> {
        match (self.request, self.backend_request) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The gRPC statuses a gRPC rule may retry on, by the names Weft's files use.
pub const GRPC_RETRY_CONDITIONS: [(&str, u8); 5] = [
    ("cancelled", 1),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("internal", 13),
    ("unavailable", 14),
];

/// Retries after the first attempt when a rule sets `retry` without `attempts`.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// The first backoff when a rule sets `retry` without `backoff`; backoffs grow to ten times it.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);
/// The most retries a rule may ask for (the retry budget bounds them further).
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

/// When and how a rule sends a failed call again. Whatever it says, a request the proxy never
/// sent is sent again; a request the application may have seen goes again only as this
/// allows: on one of these statuses (or a connection lost after sending), for an idempotent
/// method or a route marked `idempotent`, within the retry budget.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// HTTP statuses that are retried.
    pub codes: Vec<u16>,
    /// gRPC statuses that are retried (gRPC rules).
    pub grpc_codes: Vec<u8>,
    /// The first backoff; later ones grow to ten times it, each drawn with full jitter.
    pub backoff: Duration,
    /// Whether every call of the rule is safe to send twice (a `POST` that creates nothing, a
    /// gRPC method without side effects): then all methods are retried.
    pub idempotent: bool,
}

/// How many calls of a rule may be in flight at once, and how many more may wait for one of
/// them to end; past both, a call is refused at once (503) rather than queued without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConcurrencyLimit {
    /// Calls in flight (sent, and their response not yet ended).
    pub max_in_flight: u32,
    /// Calls waiting for a place.
    pub max_queue: u32,
}

/// Why a duration cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a duration: write one to four parts of up to five digits and a unit (h, m, s or ms), such as 10s, 1m30s or 500ms"
)]
pub struct DurationError(pub String);

/// Reads a Gateway API duration (GEP-2257).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError(text.to_string());
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        let n = u32::try_from(n).map_err(|_| bad())?;
        total = total.checked_add(unit * n).ok_or_else(bad)?;
        parts += 1;
        if parts > 4 {
            return Err(bad());
        }
    }
    if parts == 0 {
        return Err(bad());
    }
    Ok(total)
}

/// A duration written back as [`parse_duration`] reads it (milliseconds when it has some).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_gateway_api_writes_them() {
        for (text, ms) in [
            ("0s", 0),
            ("10s", 10_000),
            ("500ms", 500),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("1h2m3s4ms", 3_723_004),
            ("99999ms", 99_999),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for text in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "100000ms",
            "1d",
            "1s2s3s4s5s",
            " 1s",
            "1S",
            "10us",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
    }

    #[test]
    fn one_attempt_gets_the_smaller_limit() {
        let t = |r: Option<u64>, b: Option<u64>| Timeouts {
            request: r.map(Duration::from_millis),
            backend_request: b.map(Duration::from_millis),
        };
        assert_eq!(t(None, None).first_attempt(), None);
        assert_eq!(
            t(Some(5), None).first_attempt(),
            Some(Duration::from_millis(5))
        );
        assert_eq!(
            t(None, Some(7)).first_attempt(),
            Some(Duration::from_millis(7))
        );
        assert_eq!(
            t(Some(5), Some(7)).first_attempt(),
            Some(Duration::from_millis(5))
        );
        assert!(t(None, None).is_empty());
    }
}
