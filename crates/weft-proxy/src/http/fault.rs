//! Injected faults: for each attempt of a rule that has them (see
//! [`weft_core::policy::fault`]), a delay before sending and an answer in place of the
//! backend's, each drawn for its share of the attempts. An abort answers as a failing backend
//! would (the HTTP status with an empty body, or for gRPC a trailers-only status), so the
//! rule's retries and metrics treat it as one; the answer carries `weft-fault: abort` so that
//! nobody mistakes it for a real failure when reading a trace.

use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use weft_core::policy::fault::{AbortWith, FaultInjection};

use crate::http::Body;
use crate::http::classify::empty_body;

/// The header on an injected answer.
pub const WEFT_FAULT: HeaderName = HeaderName::from_static("weft-fault");

/// What to inject into one attempt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer this instead of sending.
    pub abort: Option<AbortWith>,
}

/// Draws the faults of one attempt; `draw` gives numbers uniform in `0..1_000_000`.
pub fn decide(f: &FaultInjection, mut draw: impl FnMut() -> u32) -> Injected {
    Injected {
        delay: f.delay.filter(|(_, s)| s.hit(draw())).map(|(d, _)| d),
        abort: f.abort.filter(|(_, s)| s.hit(draw())).map(|(a, _)| a),
    }
}

/// A draw for [`decide`] from the thread's generator.
pub fn draw() -> u32 {
    fastrand::u32(0..1_000_000)
}

/// The injected answer.
pub fn abort_response(with: AbortWith) -> Response<Body> {
    let mut rsp = Response::new(empty_body());
    rsp.headers_mut()
        .insert(WEFT_FAULT, HeaderValue::from_static("abort"));
    match with {
        AbortWith::Http(status) => {
            *rsp.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        }
        AbortWith::Grpc(code) => {
            rsp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            rsp.headers_mut()
                .insert("grpc-status", HeaderValue::from(u16::from(code)));
            rsp.headers_mut().insert(
                "grpc-message",
                HeaderValue::from_static("fault%20injected%20by%20the%20mesh"),
            );
        }
    }
    rsp
}

#[cfg(test)]
mod tests {
    use weft_core::policy::fault::Share;

    use super::*;

    /// Over a seeded run of draws, each fault lands near its share: bounded, and the same
    /// every run.
    #[test]
    fn faults_land_at_their_shares() {
        let f = FaultInjection {
            delay: Some((Duration::from_millis(5), Share::from_percent(30.0).unwrap())),
            abort: Some((AbortWith::Http(503), Share::from_percent(10.0).unwrap())),
            sources: vec![],
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let n = 100_000;
        let (mut delayed, mut aborted) = (0u32, 0u32);
        for _ in 0..n {
            let i = decide(&f, || rng.u32(0..1_000_000));
            delayed += u32::from(i.delay.is_some());
            aborted += u32::from(i.abort.is_some());
        }
        // Within 1 point: over 100,000 draws that is more than six standard deviations.
        assert!((29_000..=31_000).contains(&delayed), "{delayed}");
        assert!((9_000..=11_000).contains(&aborted), "{aborted}");
        let none = FaultInjection::default();
        assert_eq!(decide(&none, || 0), Injected::default());
        let all = FaultInjection {
            abort: Some((AbortWith::Grpc(14), Share::ALL)),
            ..FaultInjection::default()
        };
        assert_eq!(decide(&all, || 999_999).abort, Some(AbortWith::Grpc(14)));
    }

    #[test]
    fn aborts_answer_as_a_failing_backend_would() {
        let rsp = abort_response(AbortWith::Http(503));
        assert_eq!(rsp.status(), 503);
        assert_eq!(rsp.headers()[WEFT_FAULT], "abort");
        let rsp = abort_response(AbortWith::Grpc(14));
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.headers()["grpc-status"], "14");
        assert_eq!(rsp.headers()[CONTENT_TYPE], "application/grpc");
    }
}
