//! Every file in `tests/configs/bad/` must be refused with a clear error, never a panic. Each
//! file's first line says what the error must contain: `# expect: <text>`.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::path::Path;

#[test]
fn every_bad_config_gets_a_clear_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/bad");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus shrank: {}", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        let first = String::from_utf8_lossy(&bytes);
        let expect = first
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no '# expect:' line", path.display()))
            .to_string();
        let outcome = std::panic::catch_unwind(|| weft_core::config::load(path));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match outcome {
            Err(_) => failures.push(format!("{name}: panicked")),
            Ok(Ok(_)) => failures.push(format!("{name}: accepted")),
            Ok(Err(e)) => {
                let text = e.to_string();
                if !text.starts_with(&path.display().to_string()) {
                    failures.push(format!("{name}: error does not name the file: {text}"));
                } else if !text.contains(&expect) {
                    failures.push(format!("{name}: expected {expect:?} in: {text}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
