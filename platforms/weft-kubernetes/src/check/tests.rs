use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn secret(crt: &str, key: &str) -> Value {
    json!({"type": "kubernetes.io/tls", "data": {"tls.crt": b64(crt.as_bytes()), "tls.key": b64(key.as_bytes())}})
}

fn now() -> i64 {
    unix_now()
}

/// A certificate, its key, and an issuer made of them when it is a CA.
struct Made {
    pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn params(cn: &str, from: SystemTime, until: SystemTime, ca: bool) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = from.into();
    p.not_after = until.into();
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    }
    p
}

fn make_ca(cn: &str, from: SystemTime, until: SystemTime) -> Made {
    let key = KeyPair::generate().unwrap();
    let p = params(cn, from, until, true);
    let pem = p.self_signed(&key).unwrap().pem();
    let key_pem = key.serialize_pem();
    Made {
        pem,
        key_pem,
        issuer: Issuer::new(p, key),
    }
}

fn ca_for(days: u64) -> Made {
    let t = SystemTime::now();
    make_ca("weft root weft.test", t - DAY, t + DAY * days as u32)
}

fn make_leaf(
    by: &Issuer<'_, KeyPair>,
    dns: &[&str],
    from: SystemTime,
    until: SystemTime,
    ca: bool,
) -> Made {
    let key = KeyPair::generate().unwrap();
    let mut p = params("webhook", from, until, ca);
    p.subject_alt_names = dns
        .iter()
        .map(|d| SanType::DnsName((*d).try_into().unwrap()))
        .collect();
    let pem = p.signed_by(&key, by).unwrap().pem();
    let key_pem = key.serialize_pem();
    Made {
        pem,
        key_pem,
        issuer: Issuer::new(p, key),
    }
}

fn leaf(by: &Made, dns: &[&str], days: u64) -> Made {
    let t = SystemTime::now();
    make_leaf(&by.issuer, dns, t - DAY, t + DAY * days as u32, false)
}

fn der_of(pem: &str) -> Vec<Vec<u8>> {
    pem_certs(pem.as_bytes(), "test").unwrap()
}

fn fail_text(o: &Outcome) -> &str {
    match o {
        Outcome::Fail(m) => m,
        other => panic!("not a failure: {other:?}"),
    }
}

const DNS: &str = "weft-control.weft.svc";
const WHAT: &str = "Secret weft/weft-webhook-tls";

#[test]
fn lines_and_summary() {
    let checks = vec![
        Check {
            name: API,
            outcome: Outcome::Ok("reachable".into()),
        },
        Check {
            name: WEBHOOK,
            outcome: Outcome::Fail("gone".into()),
        },
        Check {
            name: WEBHOOK_CERTIFICATE,
            outcome: Outcome::Skipped("no caBundle".into()),
        },
        Check {
            name: CA_ROOT,
            outcome: Outcome::Warn("soon".into()),
        },
    ];
    let lines: Vec<String> = checks.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "ok    kubernetes-api: reachable",
            "FAIL  webhook: gone",
            "skip  webhook-certificate: no caBundle",
            "warn  ca-root: soon",
        ]
    );
    let s = Summary::of(&checks);
    assert!(!s.passed());
    assert_eq!(
        s.to_string(),
        "4 checks: 1 ok, 1 warning, 1 failed, 1 skipped"
    );
    let unreachable = unreachable("cannot reach x".into());
    assert_eq!(
        unreachable.iter().map(|c| c.name).collect::<Vec<_>>(),
        CHECKS
    );
    assert_eq!(Summary::of(&unreachable).skipped, CHECKS.len() - 1);
}

#[test]
fn versions() {
    let v = |major: &str, minor: &str, git: &str| {
        version_outcome(
            &json!({"major": major, "minor": minor, "gitVersion": git}),
            "https://k",
        )
    };
    assert_eq!(
        v("1", "33", "v1.33.1"),
        Outcome::Ok("reachable at https://k, Kubernetes v1.33.1".into())
    );
    assert!(matches!(v("1", "29+", "v1.29.4-gke.1"), Outcome::Ok(_)));
    assert!(fail_text(&v("1", "28", "v1.28.9")).contains("older than 1.29"));
    assert!(matches!(v("", "", ""), Outcome::Warn(_)));
    assert!(matches!(version_outcome(&json!([]), "k"), Outcome::Warn(_)));
}

#[test]
fn access_review_answers() {
    assert_eq!(
        review_answer(&json!({"status": {"allowed": true}})),
        Ok(Ok(()))
    );
    assert_eq!(review_answer(&json!({"status": {}})), Ok(Err(None)));
    assert_eq!(
        review_answer(&json!({"status": {"allowed": false, "reason": "no rule"}})),
        Ok(Err(Some("no rule".into())))
    );
    assert!(review_answer(&json!({"spec": {}})).is_err());
    assert_eq!(
        CONTROL_PLANE_PERMISSIONS[7].to_string(),
        "list endpointslices.discovery.k8s.io"
    );
    assert_eq!(CONTROL_PLANE_PERMISSIONS[4].to_string(), "get pods");
}

fn deployment(replicas: Value, ready: Value) -> Result<Option<Value>, ApiError> {
    Ok(Some(json!({
        "metadata": {"generation": 2},
        "spec": {"replicas": replicas},
        "status": {"readyReplicas": ready, "observedGeneration": 2},
    })))
}

#[test]
fn control_plane_replicas() {
    let here = || Ok(Some(json!({})));
    let ok = control_plane_outcome("weft", &deployment(json!(2), json!(2)), &here(), &here());
    assert_eq!(
        ok,
        Outcome::Ok(
            "Deployment weft/weft-control: 2 of 2 replicas ready; Service and ServiceAccount \
             weft-control present"
                .into()
        )
    );
    let some = control_plane_outcome("weft", &deployment(json!(2), json!(1)), &here(), &here());
    assert!(matches!(some, Outcome::Warn(ref m) if m.contains("1 of 2 replicas ready")));
    // A status with no ready replica leaves the field out.
    let none = control_plane_outcome("weft", &deployment(json!(1), Value::Null), &here(), &here());
    assert!(fail_text(&none).contains("0 of 1 replicas ready"));
    let odd = control_plane_outcome(
        "weft",
        &deployment(json!("two"), json!(1)),
        &here(),
        &here(),
    );
    assert!(fail_text(&odd).contains("spec.replicas is not an integer"));
    let missing = control_plane_outcome("weft", &Ok(None), &Ok(None), &here());
    let m = fail_text(&missing);
    assert!(m.contains("Deployment weft/weft-control not found"), "{m}");
    assert!(m.contains("Service weft/weft-control not found"), "{m}");
    let rolling = control_plane_outcome(
        "weft",
        &Ok(Some(json!({
            "metadata": {"generation": 3},
            "spec": {"replicas": 1},
            "status": {"readyReplicas": 1, "observedGeneration": 2},
        }))),
        &here(),
        &here(),
    );
    assert!(matches!(rolling, Outcome::Warn(ref m) if m.contains("generation 3")));
}

#[test]
fn mesh_config_from_the_configmap() {
    let validator: MeshValidator = Arc::new(|text: &str| {
        if text.contains("good") {
            Ok(ValidMesh {
                summary: "trust domain weft.test".into(),
                ..Default::default()
            })
        } else {
            Err("mesh.toml:1: key `x`: unknown".into())
        }
    });
    let cm = |text: &str| json!({"data": {"mesh.toml": text}});
    let what = "ConfigMap weft/weft-config";
    let (ok, mesh) = mesh_config_outcome(what, &cm("good"), Some(&validator));
    assert_eq!(
        ok,
        Outcome::Ok("ConfigMap weft/weft-config: trust domain weft.test".into())
    );
    assert!(mesh.is_some());
    let (bad, _) = mesh_config_outcome(what, &cm("bad"), Some(&validator));
    assert!(fail_text(&bad).contains("does not load: mesh.toml:1: key `x`: unknown"));
    let (missing, _) = mesh_config_outcome(what, &json!({"data": {}}), Some(&validator));
    assert!(fail_text(&missing).contains("has no data.mesh.toml"));
    let (odd, _) = mesh_config_outcome(what, &json!({"data": {"mesh.toml": 3}}), None);
    assert!(fail_text(&odd).contains("not a string"));
}

#[test]
fn ca_root_healthy_near_and_expired() {
    let ca = ca_for(3650);
    let ok = ca_root_outcome(
        "Secret weft/weft-ca",
        &secret(&ca.pem, &ca.key_pem),
        now(),
        30,
    );
    let Outcome::Ok(m) = &ok else {
        panic!("{ok:?}")
    };
    assert!(
        m.starts_with("Secret weft/weft-ca: CN=weft root weft.test, valid until "),
        "{m}"
    );
    assert!(m.ends_with("key matches"), "{m}");

    let near = ca_for(10);
    let warned = ca_root_outcome("s", &secret(&near.pem, &near.key_pem), now(), 30);
    assert!(
        matches!(&warned, Outcome::Warn(m) if m.contains("in 9 days") || m.contains("in 10 days")),
        "{warned:?}"
    );
    // Warnings are only about the configured margin.
    assert!(matches!(
        ca_root_outcome("s", &secret(&near.pem, &near.key_pem), now(), 5),
        Outcome::Ok(_)
    ));

    let t = SystemTime::now();
    let old = make_ca("old", t - DAY * 20, t - DAY);
    let expired = ca_root_outcome("s", &secret(&old.pem, &old.key_pem), now(), 30);
    assert!(fail_text(&expired).contains("expired on"), "{expired:?}");
    let early = make_ca("early", t + DAY, t + DAY * 20);
    let future = ca_root_outcome("s", &secret(&early.pem, &early.key_pem), now(), 30);
    assert!(
        fail_text(&future).contains("not valid before"),
        "{future:?}"
    );
}

#[test]
fn ca_root_refusals() {
    let ca = ca_for(365);
    let what = "Secret weft/weft-ca";
    let check = |s: Value| ca_root_outcome(what, &s, now(), 30);

    let other = ca_for(365);
    let mismatch = check(secret(&ca.pem, &other.key_pem));
    assert!(fail_text(&mismatch).contains("data.tls.key is not the key of data.tls.crt"));

    let garbage = check(secret(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        &ca.key_pem,
    ));
    assert!(
        fail_text(&garbage).starts_with("Secret weft/weft-ca data.tls.crt"),
        "{garbage:?}"
    );
    let no_pem = check(secret("hello", &ca.key_pem));
    assert!(
        fail_text(&no_pem).contains("holds no PEM CERTIFICATE"),
        "{no_pem:?}"
    );
    let der_junk = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        b64(b"definitely not DER")
    );
    let junk = check(secret(&der_junk, &ca.key_pem));
    assert!(fail_text(&junk).contains("does not parse"), "{junk:?}");
    let bad_b64 = check(json!({"data": {"tls.crt": "%%%", "tls.key": "x"}}));
    assert!(
        fail_text(&bad_b64).contains("data.tls.crt is not base64"),
        "{bad_b64:?}"
    );
    let no_key = check(json!({"data": {"tls.crt": b64(ca.pem.as_bytes())}}));
    assert!(fail_text(&no_key).contains("has no data.tls.key"));
    let no_data = check(json!({"metadata": {}}));
    assert!(fail_text(&no_data).contains("has no data.tls.crt"));
    let key_garbage = check(secret(&ca.pem, "nonsense"));
    assert!(fail_text(&key_garbage).contains("data.tls.key: holds no PEM private key"));

    // A leaf is no root.
    let t = SystemTime::now();
    let not_ca = make_leaf(&ca.issuer, &["x"], t - DAY, t + DAY * 90, false);
    let refused = check(secret(&not_ca.pem, &not_ca.key_pem));
    assert!(
        fail_text(&refused).contains("is not a CA certificate"),
        "{refused:?}"
    );
}

/// Helm's genCA writes a PKCS#1 RSA key; openssl makes one here (it shares no code with ring).
#[test]
fn ca_root_with_a_pkcs1_rsa_key() {
    let dir = tempfile::tempdir().unwrap();
    let (key, crt) = (dir.path().join("ca.key"), dir.path().join("ca.crt"));
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .expect("openssl is installed by .ci/run");
    assert!(ok.status.success(), "{ok:?}");
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-new",
            "-days",
            "3650",
            "-subj",
            "/CN=weft root rsa",
            "-key",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let key_pem = std::fs::read_to_string(&key).unwrap();
    assert!(key_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let crt_pem = std::fs::read_to_string(&crt).unwrap();
    let outcome = ca_root_outcome("s", &secret(&crt_pem, &key_pem), now(), 30);
    assert!(
        matches!(&outcome, Outcome::Ok(m) if m.contains("CN=weft root rsa") && m.ends_with("key matches")),
        "{outcome:?}"
    );
    let other = ca_for(365);
    let mismatch = ca_root_outcome("s", &secret(&crt_pem, &other.key_pem), now(), 30);
    assert!(fail_text(&mismatch).contains("is not the key"));
}

fn webhook_configuration(bundle: &str) -> Value {
    json!({"webhooks": [{
        "name": WEBHOOK_NAME,
        "failurePolicy": "Ignore",
        "clientConfig": {
            "service": {"name": CONTROL_NAME, "namespace": "weft", "path": "/inject", "port": 443},
            "caBundle": b64(bundle.as_bytes()),
        },
    }]})
}

#[test]
fn webhook_configuration_checks() {
    let ca = ca_for(365);
    let service = json!({"spec": {"ports": [{"name": "webhook", "port": 443}]}});
    let (ok, bundle) = webhook_outcome("weft", &webhook_configuration(&ca.pem), Some(&service));
    assert_eq!(
        ok,
        Outcome::Ok(
            "MutatingWebhookConfiguration weft-inject-weft calls service weft/weft-control:443\
             /inject (failurePolicy Ignore), caBundle of 1 certificate"
                .into()
        )
    );
    assert_eq!(bundle.unwrap(), der_of(&ca.pem));

    let mut other = webhook_configuration(&ca.pem);
    other["webhooks"][0]["clientConfig"]["service"]["namespace"] = json!("elsewhere");
    other["webhooks"][0]["clientConfig"]["service"]["path"] = Value::Null;
    let (wrong, bundle) = webhook_outcome("weft", &other, None);
    let m = fail_text(&wrong);
    assert!(
        m.contains("calls service elsewhere/weft-control instead of service weft/weft-control"),
        "{m}"
    );
    assert!(m.contains("calls path / instead of /inject"), "{m}");
    // The caBundle is still good to verify the certificate with.
    assert!(bundle.is_some());

    let mut none = webhook_configuration(&ca.pem);
    none["webhooks"][0]["clientConfig"]["caBundle"] = json!("");
    let (no_bundle, bundle) = webhook_outcome("weft", &none, Some(&service));
    assert!(fail_text(&no_bundle).contains("has no clientConfig.caBundle"));
    assert!(bundle.is_none());

    let mut junk = webhook_configuration(&ca.pem);
    junk["webhooks"][0]["clientConfig"]["caBundle"] = json!("!!!");
    let (bad, bundle) = webhook_outcome("weft", &junk, Some(&service));
    assert!(fail_text(&bad).contains("clientConfig.caBundle is not base64"));
    assert!(bundle.is_none());

    let (no_port, _) = webhook_outcome(
        "weft",
        &webhook_configuration(&ca.pem),
        Some(&json!({"spec": {"ports": [{"port": 7443}]}})),
    );
    assert!(fail_text(&no_port).contains("has no port 443"));

    let (no_hook, _) = webhook_outcome("weft", &json!({"webhooks": "odd"}), None);
    assert!(fail_text(&no_hook).contains("has no webhook inject.weft.dev"));
}

#[test]
fn webhook_certificate_checks() {
    let ca = ca_for(3650);
    let bundle = der_of(&ca.pem);
    let check = |cert: &Made| {
        webhook_cert_outcome(
            WHAT,
            &secret(&cert.pem, &cert.key_pem),
            &bundle,
            DNS,
            now(),
            30,
        )
    };
    let good = leaf(&ca, &[DNS, "weft-control.weft"], 3650);
    let ok = check(&good);
    let Outcome::Ok(m) = &ok else {
        panic!("{ok:?}")
    };
    assert!(
        m.starts_with(
            "Secret weft/weft-webhook-tls: weft-control.weft.svc, signed by the caBundle's \
             CN=weft root weft.test, valid until"
        ),
        "{m}"
    );

    let stranger = ca_for(3650);
    let foreign = check(&leaf(&stranger, &[DNS], 3650));
    assert!(fail_text(&foreign).contains(
        "is not signed by the MutatingWebhookConfiguration's caBundle (CN=weft root weft.test)"
    ));

    let wrong = check(&leaf(&ca, &["weft-control.other.svc"], 3650));
    assert!(fail_text(&wrong).contains("covers weft-control.other.svc, not weft-control.weft.svc"));
    let wildcard = check(&leaf(&ca, &["*.weft.svc"], 3650));
    assert!(matches!(wildcard, Outcome::Ok(_)), "{wildcard:?}");

    let t = SystemTime::now();
    let old = make_leaf(&ca.issuer, &[DNS], t - DAY * 400, t - DAY * 2, false);
    assert!(fail_text(&check(&old)).contains("expired on"));
    let soon = check(&leaf(&ca, &[DNS], 7));
    assert!(
        matches!(soon, Outcome::Warn(ref m) if m.contains("expires on")),
        "{soon:?}"
    );

    let mut swapped = secret(&good.pem, &leaf(&ca, &[DNS], 10).key_pem);
    let mismatch = webhook_cert_outcome(WHAT, &swapped, &bundle, DNS, now(), 30);
    assert!(fail_text(&mismatch).contains("data.tls.key is not the key"));
    swapped["data"]["tls.crt"] = json!(b64(b"-----BEGIN CERTIFICATE-----\n"));
    let garbage = webhook_cert_outcome(WHAT, &swapped, &bundle, DNS, now(), 30);
    assert!(fail_text(&garbage).starts_with("Secret weft/weft-webhook-tls data.tls.crt"));

    // Through an intermediate that tls.crt carries after the leaf.
    let inter = make_leaf(&ca.issuer, &[], t - DAY, t + DAY * 3650, true);
    let served = leaf(&inter, &[DNS], 365);
    let chained = webhook_cert_outcome(
        WHAT,
        &secret(&format!("{}{}", served.pem, inter.pem), &served.key_pem),
        &bundle,
        DNS,
        now(),
        30,
    );
    assert!(matches!(chained, Outcome::Ok(_)), "{chained:?}");
    // The same leaf alone does not reach the caBundle.
    let alone = webhook_cert_outcome(
        WHAT,
        &secret(&served.pem, &served.key_pem),
        &bundle,
        DNS,
        now(),
        30,
    );
    assert!(fail_text(&alone).contains("is not signed by"));
}

#[test]
fn dns_name_patterns() {
    assert!(dns_matches("Weft-Control.weft.svc", DNS));
    assert!(dns_matches("*.weft.svc", DNS));
    assert!(!dns_matches("*.svc", DNS));
    assert!(!dns_matches("*.weft.svc", "weft.svc"));
    assert!(!dns_matches("weft-control.weft", DNS));
}

fn pod(name: &str, proxy: Option<bool>, phase: &str, annotations: Value) -> Value {
    let (init, statuses) = match proxy {
        Some(ready) => (
            json!([{"name": "weft-proxy", "restartPolicy": "Always"}]),
            json!([{"name": "weft-proxy", "ready": ready}]),
        ),
        None => (json!([]), json!([])),
    };
    json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"initContainers": init, "containers": [{"name": "app"}]},
        "status": {"phase": phase, "initContainerStatuses": statuses},
    })
}

#[test]
fn data_plane_pods() {
    assert_eq!(
        data_plane_outcome(&[], &[]),
        Outcome::Ok("no namespace has weft.dev/inject: enabled".into())
    );
    let healthy = vec![
        pod("a", Some(true), "Running", json!({})),
        pod("b", Some(true), "Running", json!({})),
        // Opted out, finished, or not yet running: none of the check's business.
        pod("c", None, "Running", json!({"weft.dev/inject": "disabled"})),
        pod("d", None, "Succeeded", json!({})),
        pod("e", None, "Pending", json!({})),
    ];
    let ok = data_plane_outcome(&[("shop".into(), healthy.clone())], &[]);
    assert_eq!(
        ok,
        Outcome::Ok(
            "2 meshed pods ready in 1 namespace with weft.dev/inject: enabled (shop)".into()
        )
    );

    let mut broken = healthy.clone();
    for i in 0..7 {
        broken.push(pod(&format!("old-{i}"), None, "Running", json!({})));
    }
    // A classic sidecar that is not ready.
    broken.push(json!({
        "metadata": {"name": "slow"},
        "spec": {"containers": [{"name": "app"}, {"name": "weft-proxy"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "weft-proxy", "ready": false}]},
    }));
    let outcome = data_plane_outcome(&[("shop".into(), broken)], &[]);
    let m = fail_text(&outcome);
    assert!(
        m.contains(
            "7 pods without weft-proxy, created before injection was enabled; restart them: \
             shop/old-0, shop/old-1, shop/old-2, shop/old-3, shop/old-4 and 2 more"
        ),
        "{m}"
    );
    assert!(
        m.contains("1 pod whose weft-proxy is not ready: shop/slow"),
        "{m}"
    );

    let odd = vec![pod(
        "x",
        None,
        "Running",
        json!({"weft.dev/inject": "maybe"}),
    )];
    assert!(matches!(
        data_plane_outcome(&[("shop".into(), odd)], &[]),
        Outcome::Warn(ref m) if m.contains("shop/x")
    ));
    let outside = data_plane_outcome(
        &[("lab".into(), vec![pod("y", None, "Running", json!({}))])],
        &["shop".to_string()],
    );
    assert!(
        matches!(outside, Outcome::Warn(ref m) if m.contains("never injected: lab")),
        "{outside:?}"
    );
}

#[test]
fn ca_secret_from_the_deployment() {
    let d = json!({"spec": {"template": {"spec": {"volumes": [
        {"name": "config", "configMap": {"name": "weft-config"}},
        {"name": "ca", "secret": {"secretName": "my-root"}},
    ]}}}});
    assert_eq!(ca_secret_name(&d), Some("my-root"));
    assert_eq!(ca_secret_name(&json!({"spec": {}})), None);
    assert_eq!(
        ca_secret_name(&json!({"spec": {"template": {"spec": {"volumes": [{"name": "ca"}]}}}})),
        None
    );
}

#[test]
fn query_escapes() {
    assert_eq!(query_escape("a-b_c.d~e"), "a-b_c.d~e");
    assert_eq!(query_escape("ey+/="), "ey%2B%2F%3D");
}
