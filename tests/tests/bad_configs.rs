//! Every file in `tests/configs/bad/` must be refused with a clear error, never a panic; every
//! file in `tests/configs/warn/` must load with a warning. Each file's first line says what the
//! error or warning must contain: `# expect: <text>`.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::path::{Path, PathBuf};

/// The corpus files of `configs/<dir>`, sorted, each with its expected text.
fn corpus(dir: &str) -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            let expect = String::from_utf8_lossy(&bytes)
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} has no '# expect:' line", path.display()))
                .to_string();
            (path, expect)
        })
        .collect()
}

#[test]
fn every_bad_config_gets_a_clear_error() {
    let files = corpus("bad");
    assert!(files.len() >= 20, "the corpus shrank: {}", files.len());
    let mut failures = Vec::new();
    for (path, expect) in &files {
        let outcome = std::panic::catch_unwind(|| weft_control::platforms::loader().load(path));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match outcome {
            Err(_) => failures.push(format!("{name}: panicked")),
            Ok(Ok(_)) => failures.push(format!("{name}: accepted")),
            Ok(Err(e)) => {
                let text = e.to_string();
                if !text.starts_with(&path.display().to_string()) {
                    failures.push(format!("{name}: error does not name the file: {text}"));
                } else if !text.contains(expect.as_str()) {
                    failures.push(format!("{name}: expected {expect:?} in: {text}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_warned_config_loads_with_a_located_warning() {
    let files = corpus("warn");
    assert!(files.len() >= 3, "the corpus shrank: {}", files.len());
    let mut failures = Vec::new();
    for (path, expect) in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match weft_control::platforms::loader().load(path) {
            Err(e) => failures.push(format!("{name}: refused: {e}")),
            Ok(cfg) => {
                let warnings: Vec<String> = cfg.warnings.iter().map(|w| w.to_string()).collect();
                let prefix = path.display().to_string();
                if !warnings
                    .iter()
                    .any(|w| w.starts_with(&prefix) && w.contains(expect.as_str()))
                {
                    failures.push(format!("{name}: expected {expect:?} in: {warnings:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
