//! `weft inject` as a user runs it: manifests on stdin, the injected ones on stdout, a line per
//! document on stderr; settings from the mesh config file.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::io::Write;
use std::process::{Command, Stdio};

const BUNDLE: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

const MANIFESTS: &str = "\
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: shop}
spec:
  schedule: '*/5 * * * *'
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: report, image: report:1}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {level: '3'}
";

fn inject(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("inject")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses its flags exits without reading stdin: the pipe may be closed
    // before the input is all written, which is no failure of the test.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn manifests_from_stdin_come_out_injected_with_the_mesh_files_settings() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, BUNDLE).unwrap();
    let config = dir.path().join("mesh.toml");
    std::fs::write(
        &config,
        "[mesh]\nname = \"m\"\ntrust_domain = \"prod.example\"\n\
         [platforms.kubernetes]\n[platforms.kubernetes.inject]\nproxy_image = \"registry.example/weft-proxy:1\"\nnative_sidecar = false\n",
    )
    .unwrap();
    let (ok, out, err) = inject(
        &[
            "-",
            "--trust-bundle",
            bundle.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        MANIFESTS,
    );
    assert!(ok, "{err}");
    assert_eq!(
        err,
        "CronJob/report: injected\nConfigMap/settings: passed through (no pod template)\n"
    );
    assert_eq!(out.lines().filter(|l| *l == "---").count(), 2, "{out}");
    assert!(out.contains("registry.example/weft-proxy:1"), "{out}");
    assert!(out.contains("prod.example"), "{out}");
    assert!(
        out.contains("schedule: \"*/5 * * * *\"") || out.contains("schedule: '*/5 * * * *'"),
        "{out}"
    );
    assert!(
        out.contains("level: \"3\"") || out.contains("level: '3'"),
        "{out}"
    );
}

#[test]
fn a_missing_or_empty_bundle_and_a_bad_manifest_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = inject(
        &["-", "--trust-bundle", "/nonexistent/bundle.pem"],
        MANIFESTS,
    );
    assert!(!ok);
    assert!(err.contains("/nonexistent/bundle.pem"), "{err}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let (ok, _, err) = inject(&["-", "--trust-bundle", empty.to_str().unwrap()], MANIFESTS);
    assert!(!ok);
    assert!(err.contains("no PEM certificate"), "{err}");
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, BUNDLE).unwrap();
    let (ok, out, err) = inject(
        &["-", "--trust-bundle", bundle.to_str().unwrap()],
        "kind: Deployment\nmetadata: {name: web}\nspec: {template: {metadata: {annotations: {weft.dev/skip-inbound-ports: ssh}}, spec: {containers: []}}}\n",
    );
    assert!(!ok);
    assert!(out.is_empty(), "nothing is printed on a failure: {out}");
    assert!(err.contains("- document 1 (Deployment web)"), "{err}");
    assert!(err.contains("weft.dev/skip-inbound-ports"), "{err}");
}

#[test]
fn kubernetes_still_needs_a_bundle_and_nomad_refuses_one() {
    let (ok, out, err) = inject(&["-"], MANIFESTS);
    assert!(!ok && out.is_empty());
    assert!(
        err.contains("--trust-bundle is required with --platform kubernetes"),
        "{err}"
    );
    let (ok, _, err) = inject(&["-", "--explicit"], MANIFESTS);
    assert!(!ok);
    assert!(err.contains("are for --platform nomad"), "{err}");
    let (ok, _, err) = inject(
        &["--platform", "nomad", "-", "--trust-bundle", "b.pem"],
        JOB,
    );
    assert!(!ok);
    assert!(
        err.contains("--trust-bundle is not used with --platform nomad"),
        "{err}"
    );
    // --upstream belongs to explicit mode.
    let (ok, _, err) = inject(
        &[
            "--platform",
            "nomad",
            "-",
            "--upstream",
            "api=127.0.0.1:9001",
        ],
        JOB,
    );
    assert!(!ok);
    assert!(err.contains("--explicit"), "{err}");
}

const JOB: &str = r#"# a comment that stays
job "shop" {
  group "cart" {
    network {
      mode = "bridge"
      port "http" {
        to = 8080
      }
    }

    service {
      name     = "cart"
      provider = "nomad"
      port     = "http"
    }

    task "cart" {
      driver = "docker"

      config {
        image = "cart:1"
      }
    }
  }
}
"#;

#[test]
fn a_nomad_job_from_stdin_comes_out_meshed_with_the_mesh_files_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mesh.toml");
    std::fs::write(
        &config,
        "[mesh]\nname = \"m\"\ntrust_domain = \"prod.example\"\n",
    )
    .unwrap();
    let (ok, out, err) = inject(
        &[
            "--platform",
            "nomad",
            "--config",
            config.to_str().unwrap(),
            "--explicit",
            "--upstream",
            "api=127.0.0.1:9001",
            "-",
        ],
        JOB,
    );
    assert!(ok, "{err}");
    assert_eq!(
        err,
        "job \"shop\" group \"cart\": meshed (explicit) as spiffe://prod.example/ns/<namespace>/sa/cart\n"
    );
    assert!(
        out.starts_with("# a comment that stays\njob \"shop\" {\n"),
        "{out}"
    );
    assert!(
        out.contains("\"--trust-domain\", \"prod.example\","),
        "{out}"
    );
    assert!(
        out.contains("\"--upstream\", \"api=127.0.0.1:9001\","),
        "{out}"
    );
    assert!(out.contains("      port \"weft\" { to = 7143 }"), "{out}");

    // The output again is refused: the group has its proxy. Nothing goes to stdout.
    let (ok, again, err) = inject(&["--platform", "nomad", "-"], &out);
    assert!(!ok);
    assert!(again.is_empty(), "{again}");
    assert!(
        err.contains("<stdin>:")
            && err.contains("job \"shop\" group \"cart\": already has the weft-proxy task"),
        "{err}"
    );

    // A file that does not parse is named with its line.
    let (ok, _, err) = inject(
        &["--platform", "nomad", "-"],
        "job \"x\" {\n  group = = 1\n}\n",
    );
    assert!(!ok);
    assert!(err.contains("<stdin>:2:"), "{err}");
}
