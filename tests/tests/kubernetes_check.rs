//! `weft check` against a cluster, run as a user runs it: the real `weft` binary, a kubeconfig
//! for the fake API server holding a control plane installed as the Helm chart installs it,
//! and one thing broken per test. Each problem must show as its own line naming it, with exit
//! status 1 (warnings alone exit 0).

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use weft_tests::fake_kube::FakeKube;
use weft_tests::kube_objects::{self as k8s, Install, days};

const NS: &str = "weft";
const CONTROL_USER: &str = "system:serviceaccount:weft:weft-control";

/// What one `weft check` printed and how it exited.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// Check name to its line's label (`ok`, `warn`, `FAIL`, `skip`) and message.
    checks: BTreeMap<String, (String, String)>,
}

impl Run {
    fn message(&self, name: &str) -> &str {
        &self.check(name).1
    }

    fn check(&self, name: &str) -> &(String, String) {
        self.checks
            .get(name)
            .unwrap_or_else(|| panic!("no line for {name}:\n{}", self.stdout))
    }

    /// Asserts that check `name` ended `label` with a message containing `needle`.
    fn expect(&self, name: &str, label: &str, needle: &str) {
        let (l, m) = self.check(name);
        assert!(
            l == label && m.contains(needle),
            "{name}: expected {label} containing {needle:?}, got {l} {m:?}\n{}{}",
            self.stdout,
            self.stderr
        );
    }

    /// Asserts that every check but those of `except` passed.
    fn others_ok(&self, except: &[&str]) {
        for (name, (label, message)) in &self.checks {
            if !except.contains(&name.as_str()) {
                assert_eq!(label, "ok", "{name}: {message}\n{}", self.stdout);
            }
        }
    }

    fn summary(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }
}

/// Runs `weft check` with the kubeconfig at `kubeconfig` and `args`, with no other client
/// configuration to find.
async fn weft_check(home: &Path, kubeconfig: &Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(weft_tests::weft_binary())
        .arg("check")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .env_remove("RUST_LOG")
        .env_remove("XDG_DATA_HOME")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut checks = BTreeMap::new();
    let mut lines = stdout.lines().collect::<Vec<_>>();
    lines.pop();
    for line in lines {
        let (label, rest) = line.split_once(' ').unwrap();
        let (name, message) = rest.trim_start().split_once(": ").unwrap();
        let known = checks.insert(name.to_owned(), (label.to_owned(), message.to_owned()));
        assert!(known.is_none(), "{name} printed twice:\n{stdout}");
    }
    let run = Run {
        code: out.status.code(),
        stdout,
        stderr,
        checks,
    };
    let names: Vec<&str> = run.checks.keys().map(String::as_str).collect();
    let mut every = weft_kubernetes::check::CHECKS.to_vec();
    every.sort_unstable();
    assert_eq!(names, every, "one line per check:\n{}", run.stdout);
    run
}

/// The fake API server with a healthy install of the control plane in `weft`.
struct Cluster {
    fake: FakeKube,
    install: Install,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn healthy() -> Self {
        weft_tests::trace_init();
        let fake = FakeKube::start().await;
        let install = Install::new(NS);
        install.apply(&fake);
        Self {
            fake,
            install,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn check(&self, args: &[&str]) -> Run {
        let kubeconfig = self.fake.kubeconfig(self.dir.path());
        weft_check(self.dir.path(), &kubeconfig, args).await
    }

    /// Replaces the webhook's serving certificate.
    fn serve_webhook_with(&self, pem: &k8s::Pem) {
        self.fake
            .apply(k8s::tls_secret(NS, "weft-webhook-tls", pem));
    }

    /// Replaces the mesh's root.
    fn root(&self, pem: &k8s::Pem) {
        self.fake.apply(k8s::tls_secret(NS, "weft-ca", pem));
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A YAML document as JSON, as the API server would store it.
fn yaml_to_json(y: &yaml_rust2::Yaml) -> serde_json::Value {
    use serde_json::Value;
    use yaml_rust2::Yaml;
    match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => Value::from(r.parse::<f64>().unwrap()),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| (k.as_str().unwrap().to_owned(), yaml_to_json(v)))
                .collect(),
        ),
        other => panic!("not plain YAML: {other:?}"),
    }
}

/// The two install surfaces agree: what `weft install` prints, once applied (with the
/// Deployment's pods up), passes every check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_weft_install_prints_passes_every_check() {
    weft_tests::trace_init();
    let fake = FakeKube::start().await;
    let out = tokio::process::Command::new(weft_tests::weft_binary())
        .args(["install", "--namespace", NS])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs =
        yaml_rust2::YamlLoader::load_from_str(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
    let mut kinds = Vec::new();
    for doc in &docs {
        let mut obj = yaml_to_json(doc);
        let kind = obj["kind"].as_str().unwrap().to_owned();
        // Kinds the fake does not store; RBAC is answered by access reviews, and the fake
        // serves Weft's CRDs as installed.
        let skipped = [
            "ClusterRole",
            "ClusterRoleBinding",
            "PodDisruptionBudget",
            "CustomResourceDefinition",
        ];
        if skipped.contains(&kind.as_str()) {
            continue;
        }
        if kind == "Deployment" {
            // What the Deployment controller reports once the pods are ready.
            obj["metadata"]["generation"] = 1.into();
            obj["status"] = serde_json::json!({
                "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                "readyReplicas": 1, "availableReplicas": 1,
            });
        }
        fake.apply(obj);
        kinds.push(kind);
    }
    assert!(
        kinds.contains(&"MutatingWebhookConfiguration".to_owned()),
        "{kinds:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.kubeconfig(dir.path());
    let run = weft_check(dir.path(), &kubeconfig, &[]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    run.others_ok(&[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_install_passes_every_check() {
    let cluster = Cluster::healthy().await;
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    run.others_ok(&[]);
    assert_eq!(
        run.summary(),
        "8 checks: 8 ok, 0 warnings, 0 failed, 0 skipped"
    );
    // The lines come in the documented order.
    let order: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|n| n.trim_end_matches(':'))
        .take(8)
        .collect();
    assert_eq!(order, weft_kubernetes::check::CHECKS);
    let server = cluster.fake.url();
    assert_eq!(
        run.message("kubernetes-api"),
        format!("reachable at {server}, Kubernetes v1.33.0")
    );
    run.expect(
        "control-plane-rbac",
        "ok",
        "system:serviceaccount:weft:weft-control may do all 22 things",
    );
    run.expect(
        "control-plane",
        "ok",
        "Deployment weft/weft-control: 1 of 1 replicas ready",
    );
    run.expect(
        "mesh-config",
        "ok",
        "ConfigMap weft/weft-config: mesh weft, trust domain cluster.local",
    );
    run.expect(
        "ca-root",
        "ok",
        "Secret weft/weft-ca: CN=weft root cluster.local, valid until",
    );
    assert!(run.message("ca-root").ends_with("key matches"));
    run.expect(
        "webhook",
        "ok",
        "MutatingWebhookConfiguration weft-inject-weft calls service weft/weft-control:443/inject",
    );
    run.expect(
        "webhook-certificate",
        "ok",
        "Secret weft/weft-webhook-tls: weft-control.weft.svc, signed by the caBundle's \
         CN=weft-webhook-ca",
    );
    run.expect(
        "data-plane",
        "ok",
        "2 meshed pods ready in 1 namespace with weft.dev/inject: enabled (shop)",
    );
    // The adapter's own reviews went to the API server, one per permission.
    let reviews = cluster
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/subjectaccessreviews"))
        .count();
    assert_eq!(
        reviews,
        weft_kubernetes::check::CONTROL_PLANE_PERMISSIONS.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_fails_at_once_and_skips_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    // A port held bound without listening: connections are refused.
    let (_held, addr) = weft_tests::refusing_port();
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: \
             http://{addr}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: gone\n  \
             context:\n    cluster: gone\n    user: u\ncurrent-context: gone\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    let run = weft_check(dir.path(), &path, &[]).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect(
        "kubernetes-api",
        "FAIL",
        &format!("cannot reach http://{addr}"),
    );
    assert!(run.message("kubernetes-api").contains("Connection refused"));
    for name in &weft_kubernetes::check::CHECKS[1..] {
        run.expect(name, "skip", "the Kubernetes API cannot be reached");
    }
    assert_eq!(
        run.summary(),
        "8 checks: 0 ok, 0 warnings, 1 failed, 7 skipped"
    );

    // No kubeconfig at all is the same failure, with the reason.
    let run = weft_check(dir.path(), &dir.path().join("missing"), &[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect("kubernetes-api", "FAIL", "missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_kubernetes_fails() {
    let cluster = Cluster::healthy().await;
    cluster.fake.set_version("1", "28");
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect(
        "kubernetes-api",
        "FAIL",
        "Kubernetes v1.28.0 at http://127.0.0.1",
    );
    run.expect("kubernetes-api", "FAIL", "is older than 1.29");
    run.others_ok(&["kubernetes-api"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_permission_is_named() {
    let cluster = Cluster::healthy().await;
    cluster
        .fake
        .deny_access(CONTROL_USER, "watch", "discovery.k8s.io", "endpointslices");
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect(
        "control-plane-rbac",
        "FAIL",
        "system:serviceaccount:weft:weft-control is missing 1 permission: watch \
         endpointslices.discovery.k8s.io (no RBAC policy matched)",
    );
    run.others_ok(&["control-plane-rbac"]);
    assert_eq!(
        run.summary(),
        "8 checks: 7 ok, 0 warnings, 1 failed, 0 skipped"
    );

    // Another user's denial is none of the control plane's business.
    let cluster = Cluster::healthy().await;
    cluster
        .fake
        .deny_access("system:serviceaccount:shop:web", "list", "", "pods");
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_may_not_review_access_is_told_so() {
    let cluster = Cluster::healthy().await;
    cluster.fake.forbid_access_reviews(true);
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect(
        "control-plane-rbac",
        "FAIL",
        "cannot check: you may not create subjectaccessreviews.authorization.k8s.io: \
         subjectaccessreviews.authorization.k8s.io is forbidden: User \"fake-admin\" cannot \
         create resource \"subjectaccessreviews\"",
    );
    run.expect("control-plane-rbac", "FAIL", "(403 Forbidden)");
    run.others_ok(&["control-plane-rbac"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_with_no_ready_replica_fails() {
    let cluster = Cluster::healthy().await;
    cluster
        .fake
        .apply(k8s::control_deployment(NS, 2, 0, "weft-ca"));
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect(
        "control-plane",
        "FAIL",
        "Deployment weft/weft-control has 0 of 2 replicas ready",
    );
    run.others_ok(&["control-plane"]);

    // One of two ready is a warning only.
    cluster
        .fake
        .apply(k8s::control_deployment(NS, 2, 1, "weft-ca"));
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    run.expect("control-plane", "warn", "has 1 of 2 replicas ready");
    assert_eq!(
        run.summary(),
        "8 checks: 7 ok, 1 warning, 0 failed, 0 skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_install_and_another_namespace() {
    // Installed in mesh-system, checked in the default namespace: nothing there.
    let fake = FakeKube::start().await;
    let install = Install::new("mesh-system");
    install.apply(&fake);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.kubeconfig(dir.path());
    let run = weft_check(dir.path(), &kubeconfig, &[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect(
        "control-plane",
        "FAIL",
        "Deployment weft/weft-control not found: is Weft installed in namespace weft?",
    );
    run.expect(
        "control-plane",
        "FAIL",
        "ServiceAccount weft/weft-control not found",
    );
    run.expect(
        "mesh-config",
        "FAIL",
        "ConfigMap weft/weft-config not found",
    );
    run.expect(
        "ca-root",
        "skip",
        "the CA Secret is named by Deployment weft/weft-control, which was not found",
    );
    run.expect(
        "webhook",
        "FAIL",
        "MutatingWebhookConfiguration weft-inject-weft not found",
    );
    run.expect("webhook-certificate", "skip", "no caBundle");

    let run = weft_check(dir.path(), &kubeconfig, &["--namespace", "mesh-system"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    run.expect(
        "webhook-certificate",
        "ok",
        "Secret mesh-system/weft-webhook-tls: weft-control.mesh-system.svc",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_webhook_configuration_fails_and_skips_its_certificate() {
    let cluster = Cluster::healthy().await;
    assert!(
        cluster
            .fake
            .delete("MutatingWebhookConfiguration", None, "weft-inject-weft")
    );
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect(
        "webhook",
        "FAIL",
        "MutatingWebhookConfiguration weft-inject-weft not found: no pod is injected",
    );
    run.expect(
        "webhook-certificate",
        "skip",
        "MutatingWebhookConfiguration weft-inject-weft has no caBundle to verify against",
    );
    run.others_ok(&["webhook", "webhook-certificate"]);
    assert_eq!(
        run.summary(),
        "8 checks: 6 ok, 0 warnings, 1 failed, 1 skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_webhook_certificate_fails() {
    let cluster = Cluster::healthy().await;
    let expired = k8s::serving_cert(
        &cluster.install.webhook_issuer,
        &["weft-control.weft.svc"],
        now() - days(400),
        now() - days(35),
    );
    cluster.serve_webhook_with(&expired);
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect(
        "webhook-certificate",
        "FAIL",
        "Secret weft/weft-webhook-tls data.tls.crt (CN=weft-control.weft.svc) expired on",
    );
    run.others_ok(&["webhook-certificate"]);

    // Expiring within the margin: a warning.
    let soon = k8s::serving_cert(
        &cluster.install.webhook_issuer,
        &["weft-control.weft.svc"],
        now() - days(1),
        now() + days(12),
    );
    cluster.serve_webhook_with(&soon);
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    run.expect("webhook-certificate", "warn", "expires on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_certificate_from_another_ca_fails() {
    let cluster = Cluster::healthy().await;
    let (_, stranger) = k8s::ca_cert("someone else", now() - days(1), now() + days(365));
    let foreign = k8s::serving_cert(
        &stranger,
        &["weft-control.weft.svc"],
        now() - days(1),
        now() + days(365),
    );
    cluster.serve_webhook_with(&foreign);
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect(
        "webhook-certificate",
        "FAIL",
        "is not signed by the MutatingWebhookConfiguration's caBundle (CN=weft-webhook-ca)",
    );
    run.others_ok(&["webhook-certificate"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_certificate_for_another_name_fails() {
    let cluster = Cluster::healthy().await;
    let elsewhere = k8s::serving_cert(
        &cluster.install.webhook_issuer,
        &["weft-control.other.svc", "weft-control.other"],
        now() - days(1),
        now() + days(365),
    );
    cluster.serve_webhook_with(&elsewhere);
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect(
        "webhook-certificate",
        "FAIL",
        "covers weft-control.other.svc, weft-control.other, not weft-control.weft.svc",
    );
    run.others_ok(&["webhook-certificate"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_near_its_end_warns_and_an_expired_one_fails() {
    let cluster = Cluster::healthy().await;
    let (near, _) = k8s::ca_cert(
        "weft root cluster.local",
        now() - days(700),
        now() + days(20),
    );
    cluster.root(&near);
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    run.expect(
        "ca-root",
        "warn",
        "Secret weft/weft-ca data.tls.crt (CN=weft root cluster.local) expires on",
    );
    run.expect("ca-root", "warn", "within the 30-day margin: renew it");
    run.others_ok(&["ca-root"]);
    assert_eq!(
        run.summary(),
        "8 checks: 7 ok, 1 warning, 0 failed, 0 skipped"
    );
    // A smaller margin: no warning.
    let run = cluster.check(&["--ca-min-days", "10"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    run.expect(
        "ca-root",
        "ok",
        "Secret weft/weft-ca: CN=weft root cluster.local",
    );

    let (expired, _) = k8s::ca_cert(
        "weft root cluster.local",
        now() - days(700),
        now() - days(1),
    );
    cluster.root(&expired);
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect("ca-root", "FAIL", "expired on");
    run.others_ok(&["ca-root"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_secret_of_garbage_fails_naming_the_field() {
    let cluster = Cluster::healthy().await;
    cluster.root(&k8s::Pem {
        cert: "-----BEGIN CERTIFICATE-----\nthis is not a certificate\n-----END CERTIFICATE-----\n"
            .into(),
        key: cluster.install.root.key.clone(),
    });
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect("ca-root", "FAIL", "Secret weft/weft-ca data.tls.crt");
    run.others_ok(&["ca-root"]);

    // Another key than the certificate's.
    cluster.root(&k8s::Pem {
        cert: cluster.install.root.cert.clone(),
        key: cluster.install.webhook_ca.key.clone(),
    });
    let run = cluster.check(&[]).await;
    run.expect(
        "ca-root",
        "FAIL",
        "Secret weft/weft-ca data.tls.key is not the key of data.tls.crt",
    );

    // A user's own root, named by the Deployment, that is not there.
    cluster
        .fake
        .apply(k8s::control_deployment(NS, 1, 1, "my-root"));
    let run = cluster.check(&[]).await;
    run.expect(
        "ca-root",
        "FAIL",
        "Secret weft/my-root (the mesh's root) not found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_file_that_does_not_load_fails_with_the_reason() {
    let cluster = Cluster::healthy().await;
    let broken = k8s::mesh_toml(NS).replace(
        "default_inbound = \"allow\"",
        "default_inbound = \"sometimes\"",
    );
    cluster.fake.apply(k8s::mesh_configmap(NS, &broken));
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect(
        "mesh-config",
        "FAIL",
        "ConfigMap weft/weft-config data.mesh.toml does not load: mesh.toml:17: key \
         `policy.default_inbound`",
    );
    run.expect("mesh-config", "FAIL", "sometimes");
    run.others_ok(&["mesh-config"]);

    let syntax = "[mesh\nname = \"weft\"\n";
    cluster.fake.apply(k8s::mesh_configmap(NS, syntax));
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect("mesh-config", "FAIL", "does not load: mesh.toml:1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_started_before_injection_fails() {
    let cluster = Cluster::healthy().await;
    cluster.fake.apply(k8s::pod(
        "shop",
        "legacy-0",
        "legacy",
        false,
        ip("10.1.0.20"),
    ));
    // A pod that opts out is fine.
    let mut opted_out = k8s::pod("shop", "batch-0", "batch", false, ip("10.1.0.21"));
    opted_out["metadata"]["annotations"] = serde_json::json!({"weft.dev/inject": "disabled"});
    cluster.fake.apply(opted_out);
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect(
        "data-plane",
        "FAIL",
        "1 pod without weft-proxy, created before injection was enabled; restart them: \
         shop/legacy-0",
    );
    run.others_ok(&["data-plane"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_proxy_is_not_ready_fails() {
    let cluster = Cluster::healthy().await;
    cluster.fake.apply(k8s::meshed_pod(
        "shop",
        "cart-0",
        "cart",
        false,
        ip("10.1.0.30"),
    ));
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    run.expect(
        "data-plane",
        "FAIL",
        "1 pod whose weft-proxy is not ready: shop/cart-0",
    );
    run.others_ok(&["data-plane"]);

    // No annotated namespace: nothing to say.
    cluster.fake.apply(k8s::namespace("shop", None));
    let run = cluster.check(&[]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    run.expect(
        "data-plane",
        "ok",
        "no namespace has weft.dev/inject: enabled",
    );
}
