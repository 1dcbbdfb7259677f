use std::collections::HashMap;

use super::*;
use crate::inject::tests::injector;

fn lookup(ns: &HashMap<String, Option<String>>, n: &str) -> Namespace {
    if n == "outside" {
        Namespace::OutsideMesh
    } else {
        Namespace::InMesh(ns.get(n).cloned().flatten())
    }
}

fn namespaces() -> HashMap<String, Option<String>> {
    HashMap::from([
        ("shop".to_string(), Some("enabled".to_string())),
        ("plain".to_string(), None),
    ])
}

/// A review of a pod being created in `ns`, as the API server sends it.
fn pod_review(ns: &str, annotations: Value, operation: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ns,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "web-7d4b9c-", "namespace": ns, "labels": {"app": "web"}, "annotations": annotations},
                "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "web:1"}]},
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
}

fn answer(review: &Value) -> Answer {
    let ns = namespaces();
    let view = move |n: &str| lookup(&ns, n);
    super::review(&injector(), &view, review.to_string().as_bytes())
}

fn patch_of(a: &Answer) -> Option<json_patch::Patch> {
    let response = &a.body["response"];
    let encoded = response["patch"].as_str()?;
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

#[test]
fn a_pod_in_an_enabled_namespace_gets_a_patch_that_yields_the_injected_pod() {
    let review = pod_review("shop", json!({}), "CREATE");
    let a = answer(&review);
    assert_eq!(a.status, 200);
    assert_eq!(a.body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(a.body["kind"], "AdmissionReview");
    assert_eq!(a.body["response"]["uid"], review["request"]["uid"]);
    assert_eq!(a.body["response"]["allowed"], true);
    let patch = patch_of(&a).expect("a patch");
    // Applied by the JSON-patch library, the patch gives exactly the injector's pod.
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    let mut expected = review["request"]["object"].clone();
    injector().inject(&mut expected).unwrap();
    assert_eq!(pod, expected);
    let inits: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["weft-init", "weft-proxy"]);
}

#[test]
fn what_must_not_be_injected_is_allowed_unchanged() {
    for (what, review) in [
        (
            "namespace not enabled",
            pod_review("plain", json!({}), "CREATE"),
        ),
        (
            "unknown namespace",
            pod_review("elsewhere", json!({}), "CREATE"),
        ),
        (
            "kube-system",
            pod_review(
                "kube-system",
                json!({"weft.dev/inject": "enabled"}),
                "CREATE",
            ),
        ),
        (
            "pod says disabled",
            pod_review("shop", json!({"weft.dev/inject": "disabled"}), "CREATE"),
        ),
        ("an update", pod_review("shop", json!({}), "UPDATE")),
        (
            "outside the mesh's namespaces",
            pod_review("outside", json!({"weft.dev/inject": "enabled"}), "CREATE"),
        ),
    ] {
        let a = answer(&review);
        assert_eq!(a.status, 200, "{what}");
        assert_eq!(a.body["response"]["allowed"], true, "{what}");
        assert!(patch_of(&a).is_none(), "{what}: patched");
    }
    let mut not_a_pod = pod_review("shop", json!({}), "CREATE");
    not_a_pod["request"]["kind"]["kind"] = json!("Deployment");
    not_a_pod["request"]["resource"]["resource"] = json!("deployments");
    assert!(patch_of(&answer(&not_a_pod)).is_none());
    // The pod annotation enables it in a namespace that does not.
    let a = answer(&pod_review(
        "plain",
        json!({"weft.dev/inject": "enabled"}),
        "CREATE",
    ));
    assert!(patch_of(&a).is_some());
}

#[test]
fn a_pod_with_an_unusable_annotation_is_denied_with_the_reason() {
    let a = answer(&pod_review(
        "shop",
        json!({"weft.dev/skip-outbound-ports": "all"}),
        "CREATE",
    ));
    assert_eq!(a.status, 200);
    assert_eq!(a.body["response"]["allowed"], false);
    assert_eq!(
        a.body["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    let message = a.body["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("weft.dev/skip-outbound-ports"),
        "{message}"
    );
}

#[test]
fn malformed_reviews_get_a_clean_400() {
    let ns = namespaces();
    let view = move |n: &str| lookup(&ns, n);
    let mut no_uid = pod_review("shop", json!({}), "CREATE");
    no_uid["request"]["uid"] = json!("");
    let mut v1beta1 = pod_review("shop", json!({}), "CREATE");
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"{\"apiVersion\":".to_vec()),
        ("empty", Vec::new()),
        ("an array", b"[]".to_vec()),
        (
            "no request",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
        ),
        ("no uid", no_uid.to_string().into_bytes()),
        ("another version", v1beta1.to_string().into_bytes()),
        (
            "deep nesting",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        ),
    ];
    for (what, body) in cases {
        let a = super::review(&injector(), &view, &body);
        assert_eq!(a.status, 400, "{what}");
        assert_eq!(a.body["kind"], "Status", "{what}");
    }
    // A pod review whose object is not a pod is denied, not crashed on.
    let mut no_pod = pod_review("shop", json!({}), "CREATE");
    no_pod["request"]["object"] = json!("pod");
    let a = answer(&no_pod);
    assert_eq!(a.body["response"]["allowed"], false);
}

/// The webhook over real TLS: a review answered, a GET refused, an oversized body refused.
#[tokio::test]
async fn the_server_answers_over_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("weft-webhook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let tls = tls_from_files(&cert_file, &key_file).unwrap();
    assert!(
        tls_from_files(&key_file, &key_file).is_err(),
        "a key is not a certificate"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let handler: Handler = Arc::new(|body: &[u8]| {
        let ns = namespaces();
        let view = move |n: &str| lookup(&ns, n);
        super::review(&injector(), &view, body)
    });
    tokio::spawn(serve(listener, tls, handler, stop.clone()));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let send = |head: String, body: Vec<u8>| {
        let client = client.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .unwrap();
            tls.write_all(head.as_bytes()).await.unwrap();
            // The server may answer (and close) before the whole of an oversized body is sent.
            let _ = tls.write_all(&body).await;
            let mut out = Vec::new();
            let _ = tls.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let body = pod_review("shop", json!({}), "CREATE")
        .to_string()
        .into_bytes();
    let rsp = send(
        format!(
            "POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ),
        body,
    )
    .await;
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    assert!(rsp.contains("\"patchType\":\"JSONPatch\""), "{rsp}");
    let rsp = send(
        "GET /inject HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
        Vec::new(),
    )
    .await;
    assert!(rsp.starts_with("HTTP/1.1 405"), "{rsp}");
    let big = vec![b' '; MAX_REVIEW + 1];
    let rsp = send(
        format!(
            "POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            big.len()
        ),
        big,
    )
    .await;
    assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp}");
    stop.cancel();
}
