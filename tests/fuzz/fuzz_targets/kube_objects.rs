//! The Kubernetes adapter's view of API objects: arbitrary JSON decoded into k8s-openapi's
//! Namespace, Service, EndpointSlice and Pod (as the watches decode them), then turned into mesh
//! services (`weft_kubernetes::mesh_services`). The input is one JSON object
//! `{"namespaces": [...], "services": [...], "slices": [...], "pods": [...]}`; a meshed endpoint
//! that comes out has an identity, and every identity is in the mesh's trust domain.
#![no_main]

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use weft_core::TrustDomain;

#[derive(Deserialize)]
struct Objects {
    #[serde(default)]
    namespaces: Vec<Namespace>,
    #[serde(default)]
    services: Vec<Service>,
    #[serde(default)]
    slices: Vec<EndpointSlice>,
    #[serde(default)]
    pods: Vec<Pod>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(objects) = serde_json::from_slice::<Objects>(data) else {
        return;
    };
    let td = TrustDomain::new("weft.fuzz").expect("a trust domain");
    let services = weft_kubernetes::mesh_services(
        &td,
        &objects.namespaces,
        &objects.services,
        &objects.slices,
        &objects.pods,
    );
    for service in &services {
        for port in &service.ports {
            for endpoint in &port.endpoints {
                assert!(!endpoint.meshed || endpoint.identity.is_some());
                if let Some(id) = &endpoint.identity {
                    assert!(id.to_string().starts_with("spiffe://weft.fuzz/"));
                }
            }
        }
    }
});
