//! Authorization by route, end to end through real proxy pairs on the local platform, with the
//! rules in the mesh file: allow rules by method and gRPC service, a deny rule that wins over
//! them (however the path is spelled), a rule in audit mode that admits and counts, and the
//! wire form of each denial (403, `PERMISSION_DENIED`, a closed TCP connection), each counted
//! with the rule that decided.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_tests::{TestMesh, WAIT, WorkloadDecl, backends, upstream};

const POLICY: &str = r#"
[policy]
default_inbound = "allow"

[[policy.authorizations]]
name = "reads"
service = "web.test"
from = ["test/load"]
to = [{ method = "GET" }]

[[policy.authorizations]]
name = "no-admin"
service = "web.test"
action = "deny"
to = [{ path = { type = "PathPrefix", value = "/admin" } }]

[[policy.authorizations]]
name = "try-private"
service = "web.test"
action = "deny"
mode = "audit"
to = [{ path = { type = "PathPrefix", value = "/private" } }]

[[policy.authorizations]]
name = "identity-only"
service = "rpc.test"
from = ["test/*"]
to = [{ grpc = { service = "weft.api.v1.Identity" } }]

[[policy.authorizations]]
name = "no-tcp-paths"
service = "tcp.test"
action = "deny"
from = ["test/load"]
to = [{ path = { value = "/x" } }]
"#;

async fn call(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Empty<Bytes>,
    >,
    up: std::net::SocketAddr,
    method: Method,
    path: &str,
) -> StatusCode {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{up}{path}"))
        .header("host", "web.test")
        .body(Empty::new())
        .unwrap();
    let rsp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .unwrap_or_else(|_| panic!("no answer to {path}"))
        .unwrap();
    let status = rsp.status();
    rsp.into_body().collect().await.unwrap();
    status
}

/// Allow rules by method and gRPC service narrow what a service admits; a deny rule wins over
/// them and over the default, however the path is spelled; a rule in audit mode admits and
/// counts; each denial has its wire form and is counted with the rule that decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_authorized_by_route_and_deny_wins() {
    let web_app = backends::http_echo("web").await;
    let rpc_app = backends::grpc_backend().await;
    let tcp_app = backends::tcp_echo().await;
    let web = WorkloadDecl::serving("web", "web");
    let rpc = WorkloadDecl::serving("rpc", "rpc");
    let tcp = WorkloadDecl {
        protocol: "opaque".into(),
        ..WorkloadDecl::serving("tcp", "tcp")
    };
    let load = WorkloadDecl::client("load");
    let other = WorkloadDecl::client("other");
    let mesh = TestMesh::start(
        &[
            web.clone(),
            rpc.clone(),
            tcp.clone(),
            load.clone(),
            other.clone(),
        ],
        POLICY,
    )
    .await;
    let web_proxy = mesh.proxy(&web, Some(web_app.port()), &[]).await;
    let rpc_proxy = mesh.proxy(&rpc, Some(rpc_app.port()), &[]).await;
    let tcp_proxy = mesh.proxy(&tcp, Some(tcp_app.port()), &[]).await;
    let load = mesh.proxy(&load, None, &["web", "rpc", "tcp"]).await;
    let other = mesh.proxy(&other, None, &["web", "tcp"]).await;
    let http = weft_tests::http_client();
    let up = upstream(&load, "web");

    // The allow rule: GET only.
    assert_eq!(call(&http, up, Method::GET, "/items").await, StatusCode::OK);
    assert_eq!(
        call(&http, up, Method::POST, "/items").await,
        StatusCode::FORBIDDEN
    );
    // The deny rule wins over it, however /admin is written.
    let spellings = [
        "/admin",
        "/admin/users",
        "//admin",
        "/items/../admin",
        "/%61dmin",
    ];
    for path in spellings {
        assert_eq!(
            call(&http, up, Method::GET, path).await,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    assert_eq!(
        call(&http, up, Method::GET, "/adminx").await,
        StatusCode::OK
    );
    // In audit mode: admitted, and counted below.
    assert_eq!(
        call(&http, up, Method::GET, "/private/x").await,
        StatusCode::OK
    );
    // A client no allow rule names is refused whatever it asks.
    let other_up = upstream(&other, "web");
    assert_eq!(
        call(&http, other_up, Method::GET, "/items").await,
        StatusCode::FORBIDDEN
    );

    let (_, text) = weft_tests::admin_get(web_proxy.admin_addr, "GET", "/metrics").await;
    let load_id = "client=\"spiffe://weft.test/ns/test/sa/load\"";
    let denied = |rule: &str| {
        weft_tests::metric(
            &text,
            "weft_inbound_authz_denied_total",
            &[load_id, &format!("rule=\"{rule}\"")],
        )
    };
    assert_eq!(denied("test/no-admin"), spellings.len() as f64, "{text}");
    assert_eq!(denied("default"), 1.0, "the POST: {text}");
    assert_eq!(
        weft_tests::metric(
            &text,
            "weft_inbound_authz_audited_total",
            &[load_id, "rule=\"test/try-private\""]
        ),
        1.0,
        "{text}"
    );

    // gRPC: the allowed service answers, another is PERMISSION_DENIED in trailers-only form.
    use weft_api::v1::discovery_client::DiscoveryClient;
    use weft_api::v1::identity_client::IdentityClient;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", upstream(&load, "rpc")))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let rsp = IdentityClient::new(ch.clone())
        .certify(weft_api::CertifyRequest {
            csr: b"hello".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rsp.leaf, b"hello");
    let e = DiscoveryClient::new(ch)
        .resolve(weft_api::ResolveRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    weft_tests::wait_metric(
        rpc_proxy.admin_addr,
        "weft_inbound_authz_denied_total",
        &[load_id, "rule=\"default\""],
        1.0,
    )
    .await;

    // Opaque TCP: the proxy cannot see paths, so the deny rule's path condition counts as
    // met and load's connection is closed unanswered; other, whom the rule does not name,
    // is carried.
    let mut s = TcpStream::connect(upstream(&other, "tcp")).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
    let mut s = TcpStream::connect(upstream(&load, "tcp")).await.unwrap();
    let _ = s.write_all(b"ping").await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(read.is_err() || got.is_empty(), "{got:?}");
    weft_tests::wait_metric(
        tcp_proxy.admin_addr,
        "weft_inbound_authz_denied_total",
        &[load_id, "rule=\"test/no-tcp-paths\""],
        1.0,
    )
    .await;
}

/// Runs `weft authz` with `args` and returns its standard output; it must succeed.
async fn weft_authz(args: &[&str]) -> String {
    let out = tokio::process::Command::new(weft_tests::weft_binary())
        .arg("authz")
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "weft authz {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `weft authz` explains allow, deny and audit decisions, naming the rule and the line of the
/// mesh file it was written on, from the file and from the running control plane alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_authz_explains_decisions_from_the_file_and_the_control_plane() {
    let web = WorkloadDecl::serving("web", "web");
    let mesh = TestMesh::start(&[web], POLICY).await;
    let file = mesh.config_path.display().to_string();
    let text = std::fs::read_to_string(&mesh.config_path).unwrap();
    let line_of = |needle: &str| {
        // The line of the `[[policy.authorizations]]` header above `needle`.
        let at = text.lines().position(|l| l.contains(needle)).unwrap();
        let header = text.lines().take(at).collect::<Vec<_>>();
        header
            .iter()
            .rposition(|l| l.starts_with("[[policy.authorizations]]"))
            .unwrap()
            + 1
    };

    let deny = weft_authz(&[
        "--config",
        &file,
        "--from",
        "test/load",
        "--to",
        "web.test",
        "--path",
        "/x/../admin",
    ])
    .await;
    assert!(
        deny.starts_with("DENY: spiffe://weft.test/ns/test/sa/load -> web.test: GET /x/../admin"),
        "{deny}"
    );
    assert!(
        deny.contains(&format!(
            "decided by rule test/no-admin ({file}:{})",
            line_of("\"no-admin\"")
        )),
        "{deny}"
    );
    assert!(deny.contains("deny rules win"), "{deny}");

    let allow = weft_authz(&[
        "--config",
        &file,
        "--from",
        "test/load",
        "--to",
        "web.test",
        "--path",
        "/items",
    ])
    .await;
    assert!(allow.starts_with("ALLOW"), "{allow}");
    assert!(allow.contains("decided by rule test/reads"), "{allow}");

    let audit = weft_authz(&[
        "--config",
        &file,
        "--from",
        "test/load",
        "--to",
        "web.test",
        "--path",
        "/private/a",
    ])
    .await;
    assert!(audit.starts_with("AUDIT"), "{audit}");
    assert!(
        audit.contains("decided by rule test/try-private"),
        "{audit}"
    );

    let other = weft_authz(&[
        "--config",
        &file,
        "--from",
        "test/other",
        "--to",
        "web.test",
    ])
    .await;
    assert!(
        other.starts_with("DENY") && other.contains("decided by the default"),
        "{other}"
    );
    assert!(
        other.contains("test/reads") && other.contains("the client is not in from [test/load]"),
        "{other}"
    );

    let grpc = weft_authz(&[
        "--config",
        &file,
        "--from",
        "test/load",
        "--to",
        "rpc.test",
        "--grpc",
        "weft.api.v1.Discovery/Resolve",
    ])
    .await;
    assert!(
        grpc.starts_with("DENY") && grpc.contains("the request matches none of its to entries"),
        "{grpc}"
    );

    // The running control plane answers the same, as JSON.
    let http = mesh.control.as_ref().unwrap().http_addr.to_string();
    let json = weft_authz(&[
        "--control",
        &http,
        "-o",
        "json",
        "--from",
        "test/load",
        "--to",
        "web.test",
        "--path",
        "/admin",
    ])
    .await;
    let answer: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(answer["decision"], "deny", "{json}");
    assert_eq!(answer["decided_by"], "test/no-admin", "{json}");
    let source = answer["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "test/no-admin")
        .unwrap()["source"]
        .clone();
    assert_eq!(source, format!("{file}:{}", line_of("\"no-admin\"")));
    let tcp = weft_authz(&[
        "--control",
        &http,
        "--from",
        "test/load",
        "--to",
        "tcp.test",
        "--tcp",
    ])
    .await;
    assert!(
        tcp.starts_with("DENY") && tcp.contains("test/no-tcp-paths"),
        "{tcp}"
    );
}
