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

/// A webhook served on 127.0.0.1 over real TLS, and what a client needs to reach it.
struct TestServer {
    addr: std::net::SocketAddr,
    client: Arc<rustls::ClientConfig>,
    webhook: Arc<Webhook>,
    stop: CancellationToken,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn review_handler() -> Handler {
    Arc::new(|body: &[u8]| {
        let ns = namespaces();
        let view = move |n: &str| lookup(&ns, n);
        super::review(&injector(), &view, body)
    })
}

/// Test limits: short times, so that a deadline is seen in about a second.
fn quick_limits() -> Limits {
    Limits {
        handshake_timeout: Duration::from_secs(1),
        head_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    }
}

async fn start(limits: Limits, handler: Handler) -> TestServer {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let tls = tls_from_files(&cert_file, &key_file).unwrap();
    assert!(
        tls_from_files(&key_file, &key_file).is_err(),
        "a key is not a certificate"
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let webhook = Webhook::new(handler, limits);
    tokio::spawn(webhook.clone().serve(listener, tls, stop.clone()));
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
    TestServer {
        addr,
        client,
        webhook,
        stop,
    }
}

type ClientTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

impl TestServer {
    /// A TLS connection offering `alpn` (`h2`, `http/1.1`).
    async fn connect(&self, alpn: &[u8]) -> ClientTls {
        let mut client = (*self.client).clone();
        client.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        tls
    }

    /// A TCP connection from `source` (a loopback address) to the webhook.
    async fn tcp_from(&self, source: [u8; 4]) -> tokio::net::TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(std::net::SocketAddr::from((source, 0)))
            .unwrap();
        socket.connect(self.addr).await.unwrap()
    }

    /// One HTTP/1.1 exchange on a connection of its own; the answer as text.
    async fn send(&self, head: String, body: Vec<u8>) -> String {
        self.send_from([127, 0, 0, 1], head, body).await
    }

    /// One HTTP/1.1 exchange on a connection of its own from `source`; the answer as text.
    async fn send_from(&self, source: [u8; 4], head: String, body: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut client = (*self.client).clone();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, self.tcp_from(source).await)
            .await
            .unwrap();
        tls.write_all(head.as_bytes()).await.unwrap();
        // The server may answer (and close) before the whole of a refused body is sent.
        let _ = tls.write_all(&body).await;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }
}

fn post_head(len: usize) -> String {
    format!(
        "POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
}

/// Reads (and drops) what `io` receives until the server closes it; how long that took, or
/// `None` if it was still open after `within`.
async fn closed_within(
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    within: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let began = tokio::time::Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return began.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// The webhook over real TLS: a review answered, a GET refused, an oversized body refused.
#[tokio::test]
async fn the_server_answers_over_tls() {
    let server = start(Limits::default(), review_handler()).await;
    let body = pod_review("shop", json!({}), "CREATE")
        .to_string()
        .into_bytes();
    let rsp = server.send(post_head(body.len()), body).await;
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    assert!(rsp.contains("\"patchType\":\"JSONPatch\""), "{rsp}");
    let rsp = server
        .send(
            "GET /inject HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
            Vec::new(),
        )
        .await;
    assert!(rsp.starts_with("HTTP/1.1 405"), "{rsp}");
    let big = vec![b' '; MAX_REVIEW + 1];
    let rsp = server.send(post_head(big.len()), big).await;
    assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp}");
}

/// A pod review padded with `bytes` of annotations.
fn padded_review(bytes: usize) -> Vec<u8> {
    pod_review(
        "shop",
        json!({"example.com/padding": "x".repeat(bytes)}),
        "CREATE",
    )
    .to_string()
    .into_bytes()
}

/// A pod may carry 256 KiB of annotations (the API server's limit) and still be injected;
/// what no pod needs, a review of megabytes, is refused.
#[tokio::test]
async fn max_review_fits_a_pod_with_the_most_annotations_the_api_server_allows() {
    const { assert!(MAX_REVIEW <= 1024 * 1024) };
    let server = start(Limits::default(), review_handler()).await;
    let body = padded_review(256 * 1024 - 64);
    assert!(body.len() <= MAX_REVIEW, "{}", body.len());
    let rsp = server.send(post_head(body.len()), body).await;
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    assert!(rsp.contains("\"patchType\":\"JSONPatch\""), "{rsp}");
    let body = padded_review(MAX_REVIEW);
    let rsp = server.send(post_head(body.len()), body).await;
    assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp}");
    assert!(rsp.contains("larger than"), "{rsp}");
}

/// A connection that sends nothing, before or after its TLS handshake, or nothing more after
/// an answer, is closed once its deadline passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed_at_their_deadlines() {
    use tokio::io::AsyncWriteExt;
    let limits = quick_limits();
    let server = start(limits.clone(), review_handler()).await;
    let margin = Duration::from_secs(3);

    // No TLS ClientHello at all.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let took = closed_within(&mut tcp, limits.handshake_timeout + margin).await;
    let took = took.expect("a silent TCP connection is closed");
    assert!(took >= limits.handshake_timeout / 2, "{took:?}");

    // TLS done, then nothing: neither the HTTP/2 preface nor an HTTP/1 request head.
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let mut tls = server.connect(alpn).await;
        let took = closed_within(&mut tls, limits.head_timeout + margin).await;
        let took = took.unwrap_or_else(|| panic!("{alpn:?}: a silent connection stays open"));
        assert!(took >= limits.head_timeout / 2, "{alpn:?}: {took:?}");
    }

    // A keep-alive connection idle after its answer.
    let mut tls = server.connect(b"http/1.1").await;
    let body = pod_review("shop", json!({}), "CREATE").to_string();
    let head = post_head(body.len()).replace("Connection: close\r\n", "");
    tls.write_all(format!("{head}{body}").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).contains("JSONPatch") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut tls, &mut buf),
        )
        .await
        .expect("answered")
        .unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    let took = closed_within(&mut tls, limits.idle_timeout + margin).await;
    assert!(took.is_some(), "an idle keep-alive connection stays open");
}

/// A body that trickles in is cut when the body deadline, counted from the request head,
/// passes, however often a byte arrives; a review on another connection meanwhile is
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_at_the_body_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = Limits {
        body_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let server = start(limits.clone(), review_handler()).await;
    let mut slow = server.connect(b"http/1.1").await;
    slow.write_all(post_head(100_000).as_bytes()).await.unwrap();
    let began = tokio::time::Instant::now();
    let (mut rd, mut wr) = tokio::io::split(slow);
    let trickle = tokio::spawn(async move {
        // A byte every 100 ms: far more often than any per-read timeout would notice.
        for _ in 0..1000 {
            if wr.write_all(b" ").await.is_err() || wr.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Another client is served meanwhile.
    let body = pod_review("shop", json!({}), "CREATE")
        .to_string()
        .into_bytes();
    let rsp = server.send(post_head(body.len()), body).await;
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");

    let mut out = Vec::new();
    let cut = tokio::time::timeout(
        limits.body_timeout + Duration::from_secs(3),
        rd.read_to_end(&mut out),
    )
    .await;
    let took = began.elapsed();
    trickle.abort();
    assert!(
        cut.is_ok(),
        "the trickle still held its connection after {took:?}"
    );
    assert!(took >= limits.body_timeout / 2, "{took:?}");
    let rsp = String::from_utf8_lossy(&out);
    assert!(rsp.is_empty() || rsp.starts_with("HTTP/1.1 408"), "{rsp}");
}

/// Raw HTTP/2 frames, to act as a client that ignores the server's settings.
mod raw_h2 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub const SETTINGS: u8 = 0x4;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const GOAWAY: u8 = 0x7;
    pub const REFUSED_STREAM: u32 = 0x7;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The head of a `POST /` whose body is still to come (END_HEADERS, not END_STREAM).
    pub fn post_head(stream: u32) -> Vec<u8> {
        // HPACK: :method POST, :scheme https, :path / from the static table; :authority a
        // literal with the static table's name.
        let mut block = vec![0x83, 0x87, 0x84, 0x01, 9];
        block.extend_from_slice(b"localhost");
        frame(HEADERS, 0x4, stream, &block)
    }

    /// Reads one frame: (type, flags, stream, payload).
    pub async fn read(
        io: &mut (impl AsyncReadExt + Unpin),
    ) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        io.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        io.read_exact(&mut payload).await?;
        Ok((head[3], head[4], stream, payload))
    }

    pub async fn handshake(io: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin)) {
        io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        io.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        loop {
            let (kind, flags, _, _) = read(io).await.unwrap();
            if kind == SETTINGS && flags & 1 == 0 {
                break;
            }
        }
        io.write_all(&frame(SETTINGS, 1, 0, &[])).await.unwrap();
    }
}

/// One HTTP/2 connection may open only a few streams at once: those beyond the cap are
/// refused at once (REFUSED_STREAM), before any of their bytes are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_cap_are_refused() {
    use tokio::io::AsyncWriteExt;
    let limits = Limits::default();
    let server = start(limits.clone(), review_handler()).await;
    let mut tls = server.connect(b"h2").await;
    raw_h2::handshake(&mut tls).await;
    let cap = limits.max_streams;
    assert!((1..=16).contains(&cap), "{cap}");
    let opened = cap + 4;
    let mut heads = Vec::new();
    for i in 0..opened {
        heads.extend(raw_h2::post_head(2 * i + 1));
    }
    tls.write_all(&heads).await.unwrap();
    let mut refused = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while refused.len() < 4 {
            let (kind, _, stream, payload) = raw_h2::read(&mut tls).await.unwrap();
            assert_ne!(
                kind,
                raw_h2::GOAWAY,
                "the connection was closed: {payload:?}"
            );
            if kind == raw_h2::RST_STREAM
                && u32::from_be_bytes(payload[..4].try_into().unwrap()) == raw_h2::REFUSED_STREAM
            {
                refused.push(stream);
            }
        }
    })
    .await;
    assert!(read.is_ok(), "streams refused: {refused:?}");
    let beyond: Vec<u32> = (cap..opened).map(|i| 2 * i + 1).collect();
    assert_eq!(refused, beyond);
}

/// A gate the handler waits behind, so that the test decides when reviews are parsed.
#[derive(Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

/// Many large reviews at once hold no more body bytes than the cap: those beyond it are
/// answered 503 at once instead of waiting, and while every parse is held up, the server's
/// runtime still answers other requests (parsing runs on blocking threads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_bytes_in_flight_stay_within_the_cap() {
    let limits = Limits {
        max_body_bytes_in_flight: 1024 * 1024,
        max_parses: 2,
        ..Limits::default()
    };
    let gate = Arc::new(Gate::default());
    let reviews = review_handler();
    let handler: Handler = {
        let gate = gate.clone();
        Arc::new(move |body: &[u8]| {
            gate.wait();
            reviews(body)
        })
    };
    let server = Arc::new(start(limits.clone(), handler).await);
    let body = padded_review(200 * 1024);
    let size = body.len();
    let n = 12;
    assert!(n * size > 2 * limits.max_body_bytes_in_flight);
    let mut calls = Vec::new();
    for _ in 0..n {
        let (server, body) = (server.clone(), body.clone());
        calls.push(tokio::spawn(async move {
            server.send(post_head(body.len()), body).await
        }));
    }
    // Every review is either refused or wholly read, and held behind the gate.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let refused = usize::try_from(server.webhook.refused_busy()).unwrap();
        let held = server.webhook.body_bytes_in_flight();
        if refused > 0 && held == (n - refused) * size {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refused {refused}, {held} bytes in flight, peak {}",
            server.webhook.peak_body_bytes_in_flight()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peak = server.webhook.peak_body_bytes_in_flight();
    assert!(peak <= limits.max_body_bytes_in_flight, "{peak}");
    assert!(peak >= size, "{peak}");
    // The runtime is free while every parse waits.
    let rsp = tokio::time::timeout(
        Duration::from_secs(5),
        server.send(
            "GET /inject HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
            Vec::new(),
        ),
    )
    .await
    .expect("answered while reviews are parsed");
    assert!(rsp.starts_with("HTTP/1.1 405"), "{rsp}");
    gate.open();
    let (mut ok, mut busy) = (0, 0);
    for call in calls {
        let rsp = call.await.unwrap();
        if rsp.starts_with("HTTP/1.1 200") {
            ok += 1;
        } else {
            assert!(rsp.starts_with("HTTP/1.1 503"), "{rsp}");
            busy += 1;
        }
    }
    assert_eq!(ok + busy, n);
    assert!(
        ok * size <= limits.max_body_bytes_in_flight,
        "{ok} answered"
    );
    assert_eq!(server.webhook.body_bytes_in_flight(), 0);
}

#[tokio::test]
async fn one_address_holds_its_share_of_the_connections_and_no_more() {
    // Slow deadlines: the connections below hold their slots for the whole test.
    let limits = Limits {
        max_per_address: 4,
        ..Limits::default()
    };
    let server = start(limits.clone(), review_handler()).await;
    let mut held = Vec::new();
    for _ in 0..limits.max_per_address {
        held.push(server.tcp_from([127, 0, 0, 1]).await);
    }
    // One more from the same address is closed at once, without a handshake.
    let mut over = server.tcp_from([127, 0, 0, 1]).await;
    let took = closed_within(&mut over, Duration::from_secs(5)).await;
    assert!(
        took.is_some(),
        "a connection over the address's share stays open"
    );
    // The API server, from another address, is still answered.
    let body = pod_review("shop", json!({}), "CREATE").to_string();
    let answer = server
        .send_from([127, 0, 0, 2], post_head(body.len()), body.into_bytes())
        .await;
    assert!(answer.contains("JSONPatch"), "{answer}");
    drop(held);
}
