//! The `weft-proxy` binary as a pod spec or a Nomad task runs it: configured only through
//! `WEFT_PROXY_*` environment variables (its listeners on port 0, found from its start-up log
//! line), live at once, not ready without a control plane, and gone promptly and cleanly on
//! SIGTERM.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// Where the binary says it listens, from its JSON start-up line: the admin, inbound and
/// upstream addresses.
fn listening(line: &str) -> Option<(SocketAddr, SocketAddr, SocketAddr)> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = &event["fields"];
    if fields["message"] != "proxy listening" {
        return None;
    }
    // `inbound` and `upstreams` are logged in debug form: `Some(ADDR)`, `[("api", ADDR)]`.
    let admin = fields["admin_addr"].as_str()?.parse().ok()?;
    let inbound = fields["inbound"]
        .as_str()?
        .strip_prefix("Some(")?
        .strip_suffix(')')?
        .parse()
        .ok()?;
    let upstream = fields["upstreams"]
        .as_str()?
        .strip_prefix("[(\"api\", ")?
        .strip_suffix(")]")?
        .parse()
        .ok()?;
    Some((admin, inbound, upstream))
}

#[test]
fn env_configured_binary_serves_admin_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // A control plane that accepts connections and never answers.
    let silent_control = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .env(
            "WEFT_PROXY_CONTROL_ADDR",
            silent_control.local_addr().unwrap().to_string(),
        )
        .env(
            "WEFT_PROXY_TRUST_BUNDLE",
            dir.path().join("missing-bundle.pem"),
        )
        .env("WEFT_PROXY_TOKEN_FILE", dir.path().join("missing-token"))
        .env("WEFT_PROXY_WORKLOAD", "web")
        .env("WEFT_PROXY_NAMESPACE", "demo")
        .env("WEFT_PROXY_ADMIN_ADDR", "127.0.0.1:0")
        .env("WEFT_PROXY_INBOUND_ADDR", "127.0.0.1:0")
        .env("WEFT_PROXY_APP_PORT", "8080")
        .env("WEFT_PROXY_UPSTREAMS", "api=127.0.0.1:0")
        .env("WEFT_PROXY_LOG_JSON", "true")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, logs) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let (admin, inbound, upstream) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = logs
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no start-up line; logs:\n{}", seen.join("\n")));
        seen.push(line.clone());
        if let Some(addrs) = listening(&line) {
            break addrs;
        }
    };
    assert_eq!(status(admin, "/live"), Some(200));
    assert_eq!(
        status(admin, "/ready"),
        Some(503),
        "ready without a certificate"
    );
    for (what, addr) in [("inbound", inbound), ("upstream", upstream)] {
        assert_ne!(addr.port(), 0);
        assert!(TcpStream::connect(addr).is_ok(), "{what} listener bound");
    }

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
    seen.extend(logs.iter());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "", "logs on stdout");
    assert!(!seen.is_empty());
    for line in &seen {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not JSON: {line}"
        );
    }
}
