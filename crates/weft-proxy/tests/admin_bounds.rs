//! The admin listener's bounds, on tokio's paused clock: idle and slowloris connections are
//! closed once the header timeout passes (not before), and connections beyond the limit are
//! closed at once.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use weft_proxy::admin::{HEADER_TIMEOUT, MAX_CONNECTIONS};
use weft_proxy::{Proxy, ProxyConfig};

/// Reads until the server closes the connection; returns what it sent.
async fn until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    out
}

#[tokio::test(start_paused = true)]
async fn idle_and_slow_clients_are_closed_and_connections_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ProxyConfig::try_parse_from([
        "weft-proxy",
        "--control-addr",
        "127.0.0.1:9",
        "--trust-bundle",
        &dir.path().join("missing.pem").display().to_string(),
        "--token-file",
        &dir.path().join("missing-token").display().to_string(),
        "--workload",
        "web",
        "--admin-addr",
        "127.0.0.1:0",
    ])
    .unwrap();
    let proxy = Proxy::start(cfg).await.unwrap();
    let admin = proxy.admin_addr;

    let started = Instant::now();
    let mut held = Vec::new();
    for i in 0..MAX_CONNECTIONS {
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        if i % 2 == 0 {
            // Slowloris: a request head that never ends.
            tcp.write_all(b"GET /live HTTP/1.1\r\nHost: a\r\n")
                .await
                .unwrap();
        }
        held.push(tcp);
    }
    // The listener is full: a further connection is closed without an answer. It is accepted
    // only after the others, so its closing proves the limit, not a timeout.
    let mut extra = TcpStream::connect(admin).await.unwrap();
    extra
        .write_all(b"GET /live HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(until_closed(&mut extra).await.is_empty());
    assert!(started.elapsed() < HEADER_TIMEOUT);

    // Idle and slow clients are dropped, but only once the header timeout has passed.
    for tcp in &mut held {
        until_closed(tcp).await;
    }
    assert!(
        started.elapsed() >= HEADER_TIMEOUT,
        "{:?}",
        started.elapsed()
    );

    // The slots are free again, and a keep-alive client that goes idle after a request is
    // closed the same way.
    let mut tcp = TcpStream::connect(admin).await.unwrap();
    let asked = Instant::now();
    tcp.write_all(b"GET /live HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut tcp).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    assert!(asked.elapsed() >= HEADER_TIMEOUT);
}
