//! The proto-to-model conversions of `weft-api`: arbitrary bytes decoded as the messages that
//! cross the control plane's gRPC port, then converted. The first byte picks the message:
//!
//! - 0: a `ResolveRequest` (what the control plane reads from a proxy), `target_from_wire`;
//! - 1: a `ResolveUpdate` (what a proxy reads), `protocol_from_wire`, `endpoint_from_wire` and
//!   `traffic_from_wire` (routes, which compile regular expressions);
//! - 2: `ProxySettings` (what a proxy reads), `policy_from_wire` and the proxy's own
//!   `settings::from_wire`.
//!
//! Whatever converts must survive the trip back to the wire and in again unchanged; an
//! endpoint with an identity is meshed; a policy that does not read denies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use weft_api::convert::{
    endpoint_from_wire, endpoint_to_wire, policy_from_wire, policy_to_wire, protocol_from_wire,
    target_from_wire, target_to_wire,
};
use weft_api::convert::route::{traffic_from_wire, traffic_to_wire};
use weft_api::v1::resolve_update::Update;
use weft_api::{Endpoint, ProxySettings, ResolveRequest, ResolveUpdate};
use weft_core::policy::Decision;

fn endpoint(e: &Endpoint) {
    if let Ok(core) = endpoint_from_wire(e) {
        assert_eq!(core.meshed, core.identity.is_some());
        let again = endpoint_from_wire(&endpoint_to_wire(&core)).expect("a converted endpoint reads back");
        assert_eq!(again, core);
    }
}

fn traffic(p: &weft_api::TrafficPolicy) {
    if let Ok(core) = traffic_from_wire(p) {
        let again = traffic_from_wire(&traffic_to_wire(&core)).expect("converted routes read back");
        assert_eq!(again, core);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, bytes)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let Ok(request) = ResolveRequest::decode(bytes) else {
                return;
            };
            if let Ok(target) = target_from_wire(&request) {
                let again = target_from_wire(&target_to_wire(&target)).expect("a target reads back");
                assert_eq!(again, target);
            }
        }
        1 => {
            let Ok(update) = ResolveUpdate::decode(bytes) else {
                return;
            };
            match update.update {
                Some(Update::Resolved(r)) => {
                    if let Some(meta) = &r.service {
                        protocol_from_wire(meta.protocol);
                    }
                    r.endpoints.iter().for_each(endpoint);
                    r.policy.iter().for_each(traffic);
                }
                Some(Update::Changes(c)) => c.upserted.iter().for_each(endpoint),
                Some(Update::Policy(p)) => traffic(&p),
                Some(Update::NotInMesh(_) | Update::Denied(_)) | None => {}
            }
        }
        _ => {
            let Ok(settings) = ProxySettings::decode(bytes) else {
                return;
            };
            let policies: Vec<_> = settings
                .default_policy
                .iter()
                .chain(settings.servers.iter().filter_map(|s| s.policy.as_ref()))
                .cloned()
                .collect();
            for wire in &policies {
                if let Ok(core) = policy_from_wire(wire) {
                    let protocol = protocol_from_wire(wire.protocol);
                    let again = policy_from_wire(&policy_to_wire(&core, protocol))
                        .expect("a converted policy reads back");
                    assert_eq!(again, core);
                }
            }
            let unreadable = settings.default_policy.is_none()
                || settings
                    .default_policy
                    .as_ref()
                    .is_some_and(|p| policy_from_wire(p).is_err());
            let read = weft_proxy::discovery::settings::from_wire(settings);
            if unreadable {
                // A policy that does not read denies every client; never a parser's default.
                assert!(read.policy_error.is_some());
                assert_eq!(read.default.default, Decision::Deny);
                assert!(read.default.rules.is_empty());
            }
        }
    }
});
