//! TCP byte counters move while connections are open: a long-lived proxy-to-proxy HTTP/2
//! connection shows its traffic after each batch of requests, not only when it closes.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use weft_tests::{admin_get, backends, metric};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_counters_move_while_the_mesh_connection_stays_open() {
    let app = backends::http_echo("api").await;
    let p = weft_tests::pair(app, "auto").await;
    let (client, server, up) = (&p.client, &p.server, p.upstream);

    let tcp = TcpStream::connect(up).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let api_id = "peer=\"spiffe://weft.test/ns/test/sa/api\"";
    let load_id = "peer=\"spiffe://weft.test/ns/test/sa/load\"";
    let mut last = (0.0, 0.0);
    for batch in 1..=3 {
        for _ in 0..100 {
            send.ready().await.unwrap();
            let req = Request::get("/")
                .header("host", "api")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let rsp = send.send_request(req).await.unwrap();
            assert_eq!(rsp.status(), 200);
            rsp.into_body().collect().await.unwrap();
        }
        // Both proxies and the connection between them are still up.
        let (_, out) = admin_get(client.admin_addr, "GET", "/metrics").await;
        let (_, inb) = admin_get(server.admin_addr, "GET", "/metrics").await;
        let sent = metric(
            &out,
            "weft_tcp_write_bytes_total",
            &["direction=\"outbound\"", api_id],
        );
        let received = metric(
            &inb,
            "weft_tcp_read_bytes_total",
            &["direction=\"inbound\"", load_id],
        );
        assert!(
            sent > last.0 && received > last.1,
            "batch {batch}: counters did not move ({sent}, {received}) after {last:?}\n{out}\n{inb}"
        );
        // One long-lived connection between the proxies carried all of it.
        assert_eq!(
            metric(
                &inb,
                "weft_tcp_open_connections",
                &["direction=\"inbound\"", load_id]
            ),
            1.0,
            "{inb}"
        );
        last = (sent, received);
    }
}
