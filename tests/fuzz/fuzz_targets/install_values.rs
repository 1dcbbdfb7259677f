//! `weft install -f <values file>` (`weft_cli::install::render_values_text`): an arbitrary
//! values file merged over the chart's defaults, checked against the chart's schema and
//! rendered through the chart's own templates. Any file is rendered or refused with an error,
//! never a panic or an abort; anchors and aliases are refused before anything expands them.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = weft_cli::install::render_values_text("weft", text, Path::new("values.yaml"));
});
