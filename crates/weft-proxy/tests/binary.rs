//! The `weft-proxy` binary as a pod spec or a Nomad task runs it: configured only through
//! `WEFT_PROXY_*` environment variables, live at once, not ready without a control plane, and
//! gone promptly and cleanly on SIGTERM.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 GET; the status code, or `None` if nothing listens.
fn status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn env_configured_binary_serves_admin_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let upstream = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .env(
            "WEFT_PROXY_CONTROL_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env(
            "WEFT_PROXY_TRUST_BUNDLE",
            dir.path().join("missing-bundle.pem"),
        )
        .env("WEFT_PROXY_TOKEN_FILE", dir.path().join("missing-token"))
        .env("WEFT_PROXY_WORKLOAD", "web")
        .env("WEFT_PROXY_NAMESPACE", "demo")
        .env("WEFT_PROXY_ADMIN_ADDR", admin.to_string())
        .env(
            "WEFT_PROXY_INBOUND_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("WEFT_PROXY_APP_PORT", "8080")
        .env("WEFT_PROXY_UPSTREAMS", format!("api=127.0.0.1:{upstream}"))
        .env("WEFT_PROXY_LOG_JSON", "true")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    while status(admin, "/live") != Some(200) {
        assert!(Instant::now() < deadline, "admin listener never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        status(admin, "/ready"),
        Some(503),
        "ready without a certificate"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", upstream)).is_ok(),
        "upstream listener bound"
    );

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "weft-proxy ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    assert_eq!(status(admin, "/live"), None, "admin listener closed");

    // --log-json: every log line is a JSON object, on stderr; stdout stays empty.
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "", "logs on stdout");
    assert!(logs.lines().count() > 0);
    for line in logs.lines() {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not JSON: {line}"
        );
    }
}
