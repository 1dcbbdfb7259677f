//! At the end of the drain's grace period the proxy closes what is still open: opaque TCP
//! connections and upgraded (WebSocket) ones, which would otherwise stay up for as long as
//! their peers like; until then the drain waits for them.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_tests::{WAIT, backends};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tcp_connections_are_closed_at_the_grace_deadline() {
    let app = backends::tcp_echo().await;
    let weft_tests::Pair {
        client,
        server,
        upstream: up,
        mesh: _mesh,
    } = weft_tests::pair(app, "opaque").await;

    let mut tcp = TcpStream::connect(up).await.unwrap();
    tcp.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    // Both proxies drain with a short grace period while the connection sits open.
    let grace = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let drains = tokio::spawn(async move {
        tokio::join!(client.drain(grace), server.drain(grace));
    });
    // The connection is cut: the read ends (EOF or reset) instead of waiting forever.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("the connection was closed at the deadline");
    assert!(read.is_err() || rest.is_empty(), "{read:?} {rest:?}");
    assert!(started.elapsed() >= grace, "closed before the deadline");
    tokio::time::timeout(WAIT, drains)
        .await
        .expect("drain returned after closing")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_are_waited_for_then_closed_at_the_grace_deadline() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let app = backends::ws_echo().await;
    let weft_tests::Pair {
        client,
        server,
        upstream: up,
        mesh: _mesh,
    } = weft_tests::pair(app, "auto").await;
    let tcp = TcpStream::connect(up).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://api.test/chat", tcp)
        .await
        .unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    let grace = Duration::from_millis(400);
    let started = tokio::time::Instant::now();
    let drains = tokio::spawn(async move {
        tokio::join!(client.drain(grace), server.drain(grace));
    });
    // While the drain waits, the upgraded connection still carries messages.
    ws.send(Message::text("during")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("during"));
    assert!(
        !drains.is_finished(),
        "the drain did not wait for the upgraded connection"
    );
    // At the deadline it is cut.
    let end = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("the upgraded connection was closed at the deadline");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{end:?}"
    );
    assert!(started.elapsed() >= grace, "closed before the deadline");
    tokio::time::timeout(WAIT, drains)
        .await
        .expect("drain returned")
        .unwrap();
}
