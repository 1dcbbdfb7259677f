//! End to end on loopback: client -> outbound proxy -> mutual TLS -> inbound proxy -> backend,
//! for HTTP/1.1, HTTP/2, gRPC, WebSocket and opaque TCP.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use weft_proxy::Proxy;
use weft_tests::{TestMesh, WAIT, WorkloadDecl, backends, metric, pair, upstream};

const ALLOW_ALL: &str = "[policy]\ndefault_inbound = \"allow\"";

/// A plaintext gRPC channel to the client proxy's upstream listener.
async fn grpc_channel(upstream: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{upstream}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn admin_metrics(p: &Proxy) -> String {
    weft_tests::admin_get(p.admin_addr, "GET", "/metrics")
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_arrive_unchanged_over_mtls() {
    let app = backends::http_echo("api").await;
    let p = pair(app, "auto").await;
    let tcp = TcpStream::connect(p.upstream).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);

    // A chunked request body: no content-length, sent in three frames.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = Request::post("/echo?x=1")
        .header("host", "api.test")
        .header("x-test", "one")
        .body(body)
        .unwrap();
    let sent = tokio::spawn(async move {
        for part in ["alpha-", "beta-", "gamma"] {
            tx.send(Ok(Frame::data(Bytes::from(part)))).await.unwrap();
        }
    });
    let rsp = send.send_request(req).await.unwrap();
    sent.await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.headers()["x-backend"], "api");
    let text =
        String::from_utf8(rsp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.starts_with("POST /echo?x=1 HTTP/1.1\n"), "{text}");
    assert!(text.contains("\nhost: api.test\n"), "{text}");
    assert!(text.contains("\nx-test: one\n"), "{text}");
    assert!(text.ends_with("\n\nalpha-beta-gamma"), "{text}");
    assert!(
        !text.contains("weft-"),
        "mesh-internal headers leaked: {text}"
    );

    // Keep-alive: a second request on the same client connection.
    send.ready().await.unwrap();
    let (_, empty) = tokio::sync::mpsc::channel(1);
    let rsp = send
        .send_request(
            Request::get("/second")
                .header("host", "api.test")
                .body(StreamBody::new(
                    tokio_stream::wrappers::ReceiverStream::new(empty),
                ))
                .unwrap(),
        )
        .await
        .unwrap();
    let text =
        String::from_utf8(rsp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.starts_with("GET /second HTTP/1.1\n"), "{text}");

    // Both sides counted the requests under the peer's proven identity. A response is counted
    // when its body ends in the proxy, which may be just after the client has read it.
    let server = weft_tests::wait_metric(
        p.server.admin_addr,
        "weft_responses_total",
        &["direction=\"inbound\""],
        2.0,
    )
    .await;
    let load_id = "peer=\"spiffe://weft.test/ns/test/sa/load\"";
    assert_eq!(
        metric(
            &server,
            "weft_requests_total",
            &["direction=\"inbound\"", load_id]
        ),
        2.0,
        "{server}"
    );
    assert_eq!(
        metric(
            &server,
            "weft_responses_total",
            &[
                "direction=\"inbound\"",
                "status_code=\"200\"",
                "classification=\"success\""
            ]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &server,
            "weft_response_latency_seconds_count",
            &["direction=\"inbound\""]
        ),
        2.0
    );
    let client = admin_metrics(&p.client).await;
    let api_id = "peer=\"spiffe://weft.test/ns/test/sa/api\"";
    assert_eq!(
        metric(
            &client,
            "weft_requests_total",
            &["direction=\"outbound\"", api_id]
        ),
        2.0,
        "{client}"
    );
    assert!(
        metric(
            &server,
            "weft_tcp_open_connections",
            &["direction=\"inbound\"", load_id]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_arrive_as_http2() {
    let app = backends::http_echo("api").await;
    let p = pair(app, "auto").await;
    let tcp = TcpStream::connect(p.upstream).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = Request::put(format!("http://api.test/h2/{i}"))
            .header("x-stream", i.to_string())
            .body(Full::new(Bytes::from(format!("body-{i}"))))
            .unwrap();
        let rsp = send.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        let text = String::from_utf8(rsp.into_body().collect().await.unwrap().to_bytes().to_vec())
            .unwrap();
        assert!(
            text.starts_with(&format!("PUT http://api.test/h2/{i} HTTP/2.0\n")),
            "{text}"
        );
        assert!(text.contains(&format!("\nx-stream: {i}\n")), "{text}");
        assert!(text.ends_with(&format!("body-{i}")), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_streaming_and_status_pass_through() {
    use weft_api::v1::discovery_client::DiscoveryClient;
    use weft_api::v1::identity_client::IdentityClient;
    let app = backends::grpc_backend().await;
    let p = pair(app, "auto").await;
    let ch = grpc_channel(p.upstream).await;
    let rsp = IdentityClient::new(ch.clone())
        .certify(weft_api::CertifyRequest {
            csr: b"hello".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rsp.leaf, b"hello");

    // A gRPC error travels in trailers; it must arrive intact.
    let err = IdentityClient::new(ch.clone())
        .certify(weft_api::CertifyRequest {
            csr: b"fail".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(err.message(), "asked to fail");

    let stream = DiscoveryClient::new(ch)
        .resolve(weft_api::ResolveRequest::default())
        .await
        .unwrap()
        .into_inner();
    let messages = backends::collect(stream).await;
    assert_eq!(
        messages,
        [
            backends::numbered(1),
            backends::numbered(2),
            backends::numbered(3)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_error_in_trailers_after_data_counts_as_a_failure() {
    use weft_api::v1::discovery_client::DiscoveryClient;
    let app = backends::grpc_backend().await;
    let p = pair(app, "auto").await;
    let ch = grpc_channel(p.upstream).await;
    let mut req = tonic::Request::new(weft_api::ResolveRequest::default());
    req.metadata_mut()
        .insert("x-fail-midway", "1".parse().unwrap());
    let mut stream = DiscoveryClient::new(ch)
        .resolve(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stream.message().await.unwrap().unwrap(),
        backends::numbered(1)
    );
    let err = stream.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted);
    assert_eq!(err.message(), "failed midway");

    // HTTP 200 with data, then grpc-status 10 in the trailers: both proxies count a failure.
    for proxy in [&p.server, &p.client] {
        let text = weft_tests::wait_metric(
            proxy.admin_addr,
            "weft_responses_total",
            &["status_code=\"200\"", "classification=\"failure\""],
            1.0,
        )
        .await;
        assert_eq!(
            metric(
                &text,
                "weft_responses_total",
                &["classification=\"success\""]
            ),
            0.0,
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_echoes() {
    let app = backends::ws_echo().await;
    let p = pair(app, "auto").await;
    let tcp = TcpStream::connect(p.upstream).await.unwrap();
    let (mut ws, rsp) = tokio_tungstenite::client_async("ws://api.test/chat", tcp)
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hello mesh")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("hello mesh")
    );
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_echoes_when_declared_and_when_detected() {
    let app = backends::tcp_echo().await;
    for protocol in ["opaque", "auto"] {
        let p = pair(app, protocol).await;
        let mut tcp = TcpStream::connect(p.upstream).await.unwrap();
        let payload = b"\x00\x01 not http at all \xff\r\n";
        tcp.write_all(payload).await.unwrap();
        let mut buf = vec![0u8; payload.len()];
        tokio::time::timeout(WAIT, tcp.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, payload, "protocol {protocol}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_on_an_opaque_port_without_waiting_for_detection() {
    let app = backends::server_first().await;
    let mut api = WorkloadDecl::serving("api", "api");
    api.protocol = "opaque".into();
    let load = WorkloadDecl::client("load");
    let mesh = TestMesh::start(&[api.clone(), load.clone()], ALLOW_ALL).await;
    let _server = mesh.proxy(&api, Some(app.port()), &[]).await;
    let mut cfg = mesh.proxy_config(&load, None, &["api"]);
    // Were detection applied, the greeting would wait for this long.
    cfg.detect_timeout = Duration::from_secs(60);
    let client = Proxy::start(cfg).await.unwrap();
    weft_tests::wait_ready(&client).await;
    let mut tcp = TcpStream::connect(upstream(&client, "api")).await.unwrap();
    let mut buf = [0u8; 27];
    tokio::time::timeout(Duration::from_secs(15), tcp.read_exact(&mut buf))
        .await
        .expect("greeting arrived before any detection timeout")
        .unwrap();
    assert_eq!(&buf, b"220 hello from the server\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_renewal_drops_no_connection() {
    let app = backends::http_echo("api").await;
    let p = pair(app, "auto").await;
    let tcp = TcpStream::connect(p.upstream).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let get = |i: u32| {
        Request::get(format!("http://api.test/{i}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(
        send.send_request(get(0)).await.unwrap().status(),
        StatusCode::OK
    );

    // Both proxies renew; the open connections must keep working.
    let certs_before: Vec<_> = [&p.client, &p.server]
        .iter()
        .map(|x| x.shared().credentials.borrow().clone().unwrap())
        .collect();
    for (proxy, before) in [&p.client, &p.server].into_iter().zip(&certs_before) {
        let mut rx = proxy.shared().credentials.clone();
        rx.mark_unchanged();
        proxy.renew_certificate();
        tokio::time::timeout(WAIT, rx.changed())
            .await
            .unwrap()
            .unwrap();
        let after = rx.borrow().clone().unwrap();
        assert!(
            !std::sync::Arc::ptr_eq(before, &after),
            "a new certificate was installed"
        );
    }
    for i in 1..=3 {
        assert_eq!(
            send.send_request(get(i)).await.unwrap().status(),
            StatusCode::OK
        );
    }
    // And a new client connection works too.
    let tcp = TcpStream::connect(p.upstream).await.unwrap();
    let (mut fresh, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        fresh.send_request(get(9)).await.unwrap().status(),
        StatusCode::OK
    );
}
