//! `weft inject --platform nomad` on a job spec (`weft_cli::inject_nomad::inject`): any text is
//! meshed or refused with an error, never a panic. The proxy is added by insertions alone, so
//! the job given is kept byte for byte within what is printed (a subsequence of it). The first
//! byte picks the options: explicit mode with an upstream, and a service filter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_cli::inject_nomad::{Options, inject};

/// Whether `small`'s bytes all appear in `big`, in order.
fn is_subsequence(small: &[u8], big: &[u8]) -> bool {
    let mut rest = big.iter();
    small.iter().all(|b| rest.any(|c| c == b))
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut opts = Options::new("weft.fuzz");
    if mode & 1 == 1 {
        opts.explicit = true;
        opts.upstreams = vec!["api=127.0.0.1:9001".into()];
    }
    if mode & 2 == 2 {
        opts.services = vec!["web".into()];
    }
    if let Ok(injected) = inject(text, "fuzz.nomad.hcl", &opts) {
        assert!(
            is_subsequence(text.as_bytes(), injected.text.as_bytes()),
            "the job is kept byte for byte"
        );
    }
});
