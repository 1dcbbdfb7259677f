//! The Go-template renderer behind `weft install` (`weft_cli::gotmpl`), with the Helm functions
//! the chart uses: an arbitrary template (before the first NUL byte) parsed and rendered with
//! arbitrary JSON data (after it, or the chart's shape of data when that is not JSON). Parsing
//! and rendering end with a result or an error, never a panic, a stack overflow or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_cli::gotmpl::Set;
use weft_cli::install::helm_funcs;

fuzz_target!(|data: &[u8]| {
    let (src, json) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(src) = std::str::from_utf8(src) else {
        return;
    };
    let data = serde_json::from_slice(json).unwrap_or_else(|_| {
        serde_json::json!({
            "Values": {"name": "x", "list": [1, "two", {"three": 3}], "flag": true, "n": 3},
            "Release": {"Name": "weft", "Namespace": "weft"},
            "Chart": {"Name": "weft", "Version": "0.1.0"},
        })
    });
    let mut set = Set::new(helm_funcs());
    if set.parse("fuzz.yaml", src).is_ok() {
        let _ = set.render("fuzz.yaml", &data);
    }
});
