//! YAML that `weft inject` (Kubernetes manifests) and `weft install -f` (values files) read
//! from files a user was handed: anchors and aliases are refused with the file, line and
//! column before anything is expanded, so a few hundred bytes of nested aliases cannot grow
//! into gigabytes. The real `weft` binary runs under an address-space limit and a deadline:
//! a refusal is an ordinary exit with status 1, never an abort for want of memory.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The address space the binary may use: ample for reading a manifest or a values file and
/// rendering the chart, far below what an expanded alias bomb needs.
const MEMORY_LIMIT_KIB: u64 = 1 << 20;

/// How long one run may take (a debug binary on a busy machine).
const DEADLINE: Duration = Duration::from_secs(60);

const BUNDLE: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

/// Nine levels of nine aliases each: 9^9 (about 387 million) strings once expanded. The first
/// anchor is on line 4, at column 6 (`&a`).
fn bomb(head: &str) -> String {
    assert_eq!(head.lines().count(), 3);
    let mut text = format!("{head}  a: &a [{}]\n", ["\"ha\""; 9].join(","));
    for (name, prev) in ('b'..='i').zip('a'..='h') {
        let refs = vec![format!("*{prev}"); 9].join(",");
        text.push_str(&format!("  {name}: &{name} [{refs}]\n"));
    }
    text
}

const MANIFEST_HEAD: &str = "kind: ConfigMap\nmetadata: {name: lol}\ndata:\n";
const VALUES_HEAD: &str = "controlPlane:\n  replicas: 2\nlol:\n";

/// What the refusal says after `file:line:column: `.
const REFUSAL: &str = "YAML anchors and aliases are not supported: write the value out in full";

/// Runs `weft ARGS` under [`MEMORY_LIMIT_KIB`] of address space, killed after [`DEADLINE`].
fn weft(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {MEMORY_LIMIT_KIB} && exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read both pipes while the child runs, so a large output cannot block it.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            pipe.read_to_string(&mut s).unwrap();
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("weft {args:?} still ran after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// The run failed the ordinary way (status 1, not a signal) with `file:4:6:` and the refusal,
/// and printed nothing.
fn refused_at_the_first_anchor(run: (ExitStatus, String, String), file: &Path) {
    let (status, out, err) = run;
    assert_eq!(status.code(), Some(1), "{status}: {err}");
    assert!(out.is_empty(), "nothing is printed on a refusal: {out}");
    let located = format!("{}:4:6: {REFUSAL}", file.display());
    assert!(err.contains(&located), "{err} lacks {located:?}");
}

#[test]
fn inject_refuses_an_alias_bomb_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, BUNDLE).unwrap();
    let manifest = dir.path().join("lol.yaml");
    let text = bomb(MANIFEST_HEAD);
    assert!(text.len() < 400, "{} bytes", text.len());
    std::fs::write(&manifest, &text).unwrap();
    let run = weft(&[
        "inject",
        manifest.to_str().unwrap(),
        "--trust-bundle",
        bundle.to_str().unwrap(),
    ]);
    refused_at_the_first_anchor(run, &manifest);

    // An alias in a later document is found too, at its own line and column.
    let two = format!(
        "kind: ConfigMap\nmetadata: {{name: a}}\n---\nkind: ConfigMap\nmetadata: {{name: b}}\ndata: {{x: {}}}\n",
        "*x"
    );
    std::fs::write(&manifest, two).unwrap();
    let (status, _, err) = weft(&[
        "inject",
        manifest.to_str().unwrap(),
        "--trust-bundle",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(1), "{status}: {err}");
    let located = format!("{}:6:11: {REFUSAL}", manifest.display());
    assert!(err.contains(&located), "{err} lacks {located:?}");
}

#[test]
fn inject_still_injects_a_manifest_with_stars_and_ampersands_in_its_strings() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, BUNDLE).unwrap();
    let manifest = dir.path().join("web.yaml");
    std::fs::write(
        &manifest,
        "# &not-an-anchor *not-an-alias\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      containers:\n      - name: web\n        image: web:1\n        args: [\"*\", '&a', \"a*b&c\"]\n",
    )
    .unwrap();
    let (status, out, err) = weft(&[
        "inject",
        manifest.to_str().unwrap(),
        "--trust-bundle",
        bundle.to_str().unwrap(),
    ]);
    assert!(status.success(), "{status}: {err}");
    assert_eq!(err, "Deployment/web: injected\n");
    assert!(out.contains("name: weft-proxy"), "{out}");
    assert!(out.contains("a*b&c"), "{out}");
}

#[test]
fn install_refuses_an_alias_bomb_in_a_values_file_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    let text = bomb(VALUES_HEAD);
    assert!(text.len() < 400, "{} bytes", text.len());
    std::fs::write(&values, &text).unwrap();
    let run = weft(&["install", "-f", values.to_str().unwrap()]);
    refused_at_the_first_anchor(run, &values);

    // A merge key is an alias too.
    std::fs::write(
        &values,
        "controlPlane: &cp\n  replicas: 2\nother:\n  <<: *cp\n",
    )
    .unwrap();
    let (status, out, err) = weft(&["install", "-f", values.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{status}: {err}");
    assert!(out.is_empty(), "{out}");
    let located = format!("{}:1:15: {REFUSAL}", values.display());
    assert!(err.contains(&located), "{err} lacks {located:?}");
}

#[test]
fn install_still_renders_with_a_plain_values_file() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "# &not-an-anchor\ncontrolPlane:\n  replicas: 2\nwebhook:\n  failurePolicy: Fail\n",
    )
    .unwrap();
    let (status, out, err) = weft(&["install", "-f", values.to_str().unwrap()]);
    assert!(status.success(), "{status}: {err}");
    assert!(out.contains("kind: Deployment"), "{out}");
    assert!(out.contains("replicas: 2"), "{out}");
    assert!(out.contains("failurePolicy: Fail"), "{out}");
}
