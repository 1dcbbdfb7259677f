//! The admission webhook's handler on any request body: every body gets an answer (never a
//! panic), a review that cannot be read gets 400, and a review answer echoes the request's uid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_kubernetes::inject::Injector;
use weft_kubernetes::webhook::{Namespace, review};

fuzz_target!(|data: &[u8]| {
    let injector = Injector {
        settings: Default::default(),
        trust_domain: "weft.fuzz".into(),
        trust_bundle_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
        token_audience: "weft".into(),
    };
    // One namespace outside the mesh, one that opts out, the rest in the mesh.
    let namespace_of = |ns: &str| match ns {
        "outside" => Namespace::OutsideMesh,
        "off" => Namespace::InMesh(Some("disabled".into())),
        _ => Namespace::InMesh(Some("enabled".into())),
    };
    let answer = review(&injector, &namespace_of, data);
    match answer.status {
        200 => {
            let response = &answer.body["response"];
            assert!(response["uid"].is_string(), "a review answer names its uid");
            assert!(response["allowed"].is_boolean());
        }
        400 => assert_eq!(answer.body["kind"], "Status"),
        other => panic!("unexpected status {other}"),
    }
});
