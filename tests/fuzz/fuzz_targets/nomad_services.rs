//! The Nomad adapter's decoders: a `/v1/service/:name` answer and the event stream lines that
//! follow it, decoded and turned into mesh services (`weft_nomad::nomad::mesh_services`). The
//! input is the answer, a newline, then the event lines. A meshed endpoint that comes out has
//! an identity in the mesh's trust domain.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_core::TrustDomain;

fuzz_target!(|data: &[u8]| {
    let (registrations, events) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let td = TrustDomain::new("weft.fuzz").expect("a trust domain");
    let Ok(services) = weft_nomad::nomad::mesh_services(&td, registrations, events) else {
        return;
    };
    for service in &services {
        for endpoint in service.ports.iter().flat_map(|p| &p.endpoints) {
            assert!(!endpoint.meshed || endpoint.identity.is_some());
            if let Some(id) = &endpoint.identity {
                assert!(id.to_string().starts_with("spiffe://weft.fuzz/"));
            }
        }
    }
});
