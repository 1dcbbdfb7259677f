//! The admin listener's bounds, on tokio's paused clock: one client address holds at most its
//! share of connections and the listener its total (more are closed at once, and counted);
//! connections without traffic are closed after the idle timeout, a request head in progress
//! after the header timeout, and a client that keeps sending keeps its connection.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use weft_proxy::admin::{HEADER_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_PER_ADDRESS};
use weft_proxy::{Proxy, ProxyConfig};

/// Reads until the server closes the connection; returns what it sent.
async fn until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    out
}

/// The loopback address 127.0.0.`n`.
fn lo(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Sends `GET path` on a keep-alive connection and reads the whole answer.
async fn get(tcp: &mut TcpStream, path: &str) -> String {
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut rsp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed mid-answer: {rsp:?}");
        rsp.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&rsp);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            if body.len() >= len {
                return text.into_owned();
            }
        }
    }
}

async fn proxy() -> (Proxy, tempfile::TempDir) {
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
    (Proxy::start(cfg).await.unwrap(), dir)
}

#[tokio::test(start_paused = true)]
async fn one_address_holds_its_share_and_the_listener_its_total() {
    let (proxy, _dir) = proxy().await;
    let admin = proxy.admin_addr;
    let started = Instant::now();

    // One address gets its share, each connection answered...
    let mut held = Vec::new();
    for _ in 0..MAX_PER_ADDRESS {
        let mut tcp = connect_from(lo(1), admin).await;
        assert!(get(&mut tcp, "/live").await.starts_with("HTTP/1.1 200"));
        held.push(tcp);
    }
    // ...and no more: a further connection from it is closed without an answer, at once.
    let mut extra = connect_from(lo(1), admin).await;
    extra
        .write_all(b"GET /live HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(until_closed(&mut extra).await.is_empty());
    assert!(started.elapsed() < IDLE_TIMEOUT);

    // Other addresses are still served, up to the listener's total.
    let mut n = 2;
    while held.len() < MAX_CONNECTIONS {
        for _ in 0..MAX_PER_ADDRESS.min(MAX_CONNECTIONS - held.len()) {
            let mut tcp = connect_from(lo(n), admin).await;
            assert!(get(&mut tcp, "/live").await.starts_with("HTTP/1.1 200"));
            held.push(tcp);
        }
        n += 1;
    }
    let mut over = connect_from(lo(200), admin).await;
    assert!(until_closed(&mut over).await.is_empty());
    assert!(started.elapsed() < IDLE_TIMEOUT);

    // Both refusals are counted, by reason.
    drop(held.pop());
    let mut reader = connect_from(lo(201), admin).await;
    let metrics = get(&mut reader, "/metrics").await;
    for reason in ["per_address", "full"] {
        let series = format!(
            "weft_admin_connections_refused_total{{listener=\"admin\",reason=\"{reason}\"}} 1"
        );
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_closed_after_the_idle_timeout_and_slow_heads_after_the_header_timeout()
 {
    let (proxy, _dir) = proxy().await;
    let admin = proxy.admin_addr;

    // A keep-alive connection that goes quiet after an answer is closed once the idle timeout
    // has passed, and not before.
    let mut quiet = TcpStream::connect(admin).await.unwrap();
    assert!(get(&mut quiet, "/live").await.starts_with("HTTP/1.1 200"));
    let answered = Instant::now();
    // A connection that never sends a byte is closed the same way.
    let mut silent = TcpStream::connect(admin).await.unwrap();
    // A client that sends a request every half idle timeout keeps its connection.
    let mut busy = TcpStream::connect(admin).await.unwrap();
    // Slowloris: a request head that never ends, one byte at a time.
    let mut slow = TcpStream::connect(admin).await.unwrap();
    slow.write_all(b"GET /live HTTP/1.1\r\n").await.unwrap();

    let closed = tokio::spawn(async move {
        until_closed(&mut quiet).await;
        let quiet_after = answered.elapsed();
        until_closed(&mut silent).await;
        (quiet_after, answered.elapsed())
    });
    let slow_closed = tokio::spawn(async move {
        loop {
            tokio::time::sleep(IDLE_TIMEOUT / 4).await;
            if slow.write_all(b"X").await.is_err() {
                break;
            }
            let mut byte = [0u8; 1];
            match tokio::time::timeout(Duration::ZERO, slow.read(&mut byte)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                _ => {}
            }
        }
        answered.elapsed()
    });
    while answered.elapsed() < HEADER_TIMEOUT * 2 {
        assert!(get(&mut busy, "/live").await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(IDLE_TIMEOUT / 2).await;
    }

    let (quiet_after, silent_after) = closed.await.unwrap();
    assert!(
        quiet_after >= IDLE_TIMEOUT && quiet_after < IDLE_TIMEOUT + Duration::from_millis(100),
        "{quiet_after:?}"
    );
    assert!(
        silent_after >= IDLE_TIMEOUT && silent_after < IDLE_TIMEOUT + Duration::from_millis(100),
        "{silent_after:?}"
    );
    let slow_after = slow_closed.await.unwrap();
    assert!(
        slow_after >= HEADER_TIMEOUT && slow_after < HEADER_TIMEOUT + IDLE_TIMEOUT,
        "{slow_after:?}"
    );
}
