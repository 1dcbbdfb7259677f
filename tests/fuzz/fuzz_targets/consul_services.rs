//! The Consul adapter's decoder: `/v1/health/service/:name` answers (one per line), decoded and
//! turned into mesh services (`weft_nomad::consul::mesh_services`). A meshed endpoint that
//! comes out has an identity in the mesh's trust domain, and every endpoint is ready or not
//! ready (Consul instances are never draining).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_core::{EndpointState, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::new("weft.fuzz").expect("a trust domain");
    let Ok(services) = weft_nomad::consul::mesh_services(&td, data) else {
        return;
    };
    for service in &services {
        for endpoint in service.ports.iter().flat_map(|p| &p.endpoints) {
            assert!(!endpoint.meshed || endpoint.identity.is_some());
            if let Some(id) = &endpoint.identity {
                assert!(id.to_string().starts_with("spiffe://weft.fuzz/"));
            }
            assert!(matches!(
                endpoint.state,
                EndpointState::Ready | EndpointState::NotReady
            ));
        }
    }
});
