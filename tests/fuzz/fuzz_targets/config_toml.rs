//! The mesh config loader on a TOML file: any text must load or be refused with an error,
//! never panic, and a file that loads must load the same way again.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let loader = weft_control::platforms::loader();
    let first = loader.load_str(text, Path::new("mesh.toml"));
    let again = loader.load_str(text, Path::new("mesh.toml"));
    assert_eq!(first.is_ok(), again.is_ok(), "loading is deterministic");
    if let Err(e) = first {
        // The error names the file and prints without panicking.
        assert!(e.to_string().contains("mesh.toml"));
    }
});
