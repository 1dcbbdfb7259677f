//! `weft inject` on Kubernetes manifests (`weft_cli::inject::inject_text`): any text is
//! injected or refused with an error, never a panic or an abort (anchors and aliases are
//! refused before anything expands them), and what it prints is manifests it reads again.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use weft_kubernetes::inject::Injector;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let injector = Injector {
        settings: Default::default(),
        trust_domain: "weft.fuzz".into(),
        trust_bundle_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
        token_audience: "weft".into(),
    };
    let file = Path::new("fuzz.yaml");
    if let Ok((out, _report)) = weft_cli::inject::inject_text(&injector, text, file) {
        if let Err(e) = weft_cli::inject::inject_text(&injector, &out, file) {
            panic!("weft inject printed what it cannot read again: {e:#}\n{out}");
        }
    }
});
