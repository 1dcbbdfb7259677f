//! `weft check FILE` as a user runs it: the verdict on stdout, warnings and errors on stderr,
//! exit status 0 unless the file is refused.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `weft check` on `file` with `HOME` set to `home` (or unset) and no `XDG_DATA_HOME`.
fn check(file: &Path, home: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.arg("check")
        .arg(file)
        .env_remove("XDG_DATA_HOME")
        .env_remove("HOME")
        .env_remove("RUST_LOG");
    if let Some(home) = home {
        cmd.env("HOME", home);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

const UNMESHED_WITH_APP_PORT: &str = r#"[mesh]
name = "t"
trust_domain = "weft.test"
[[platforms.local.workloads]]
name = "db"
port = 5432
meshed = false
app_port = 5433
"#;

#[test]
fn warnings_go_to_stderr_and_the_check_still_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.toml");
    std::fs::write(&path, UNMESHED_WITH_APP_PORT).unwrap();
    let out = check(&path, Some(dir.path()));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout,
        format!(
            "{}: ok (mesh t, trust domain weft.test, 1 local workloads, 1 warning)\n",
            path.display()
        )
    );
    assert_eq!(
        stderr,
        format!(
            "{}:8: key `platforms.local.workloads[0].app_port`: warning: has no effect with \
             meshed = false: no proxy runs for this workload\n",
            path.display()
        )
    );
}

#[test]
fn errors_go_to_stderr_and_fail_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.toml");
    std::fs::write(
        &path,
        UNMESHED_WITH_APP_PORT.replace(
            "name = \"db\"",
            "name = \"db\"\nnamespace = \"weft-system\"",
        ),
    )
    .unwrap();
    let out = check(&path, Some(dir.path()));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(text(&out.stdout), "");
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{}:6: key `platforms.local.workloads[0].namespace`: namespace weft-system is reserved",
            path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn without_a_home_the_data_dir_must_be_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.toml");
    std::fs::write(&path, UNMESHED_WITH_APP_PORT).unwrap();
    let out = check(&path, None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr
            .contains("key `ca.data_dir`: set ca.data_dir: neither XDG_DATA_HOME nor HOME is set"),
        "{stderr}"
    );

    let explicit = UNMESHED_WITH_APP_PORT.replace(
        "[[platforms",
        &format!("[ca]\ndata_dir = \"{}\"\n[[platforms", dir.path().display()),
    );
    std::fs::write(&path, explicit).unwrap();
    assert!(check(&path, None).status.success());
}

#[test]
fn other_extensions_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.json");
    std::fs::write(&path, "{\"mesh\": {}}").unwrap();
    let out = check(&path, Some(dir.path()));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        format!(
            "{}: unsupported file extension `.json`: use .toml, .yaml or .yml\n",
            path.display()
        )
    );
}
