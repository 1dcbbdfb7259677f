//! The `weft-control` binary as a deployment runs it: the mesh config file overridden by
//! `WEFT_<SECTION>__<KEY>` environment variables, its listeners bound where the environment
//! says (port 0 here, read back from its log), and a clean stop on Ctrl-C.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// `GET path` on `addr`: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: control\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut rsp = String::new();
    tcp.read_to_string(&mut rsp).unwrap();
    let status = rsp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = rsp.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

#[test]
fn environment_overrides_apply_to_a_running_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    // The file names addresses that are taken: the control plane can only start if the
    // environment's addresses replace them.
    let taken_grpc = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_http = TcpListener::bind("127.0.0.1:0").unwrap();
    let path = dir.path().join("mesh.toml");
    std::fs::write(
        &path,
        format!(
            "[mesh]\nname = \"envtest\"\ntrust_domain = \"file.test\"\n[ca]\ndata_dir = \"{}\"\n[control]\ngrpc_addr = \"{}\"\nhttp_addr = \"{}\"\n[[platforms.local.workloads]]\nname = \"web\"\nnamespace = \"demo\"\nservice = \"web\"\nport = 7000\n",
            dir.path().join("data").display(),
            taken_grpc.local_addr().unwrap(),
            taken_http.local_addr().unwrap(),
        ),
    )
    .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-control"))
        .arg("--config")
        .arg(&path)
        .env("WEFT_MESH__TRUST_DOMAIN", "env.test")
        .env("WEFT_CONTROL__GRPC_ADDR", "127.0.0.1:0")
        .env("WEFT_CONTROL__HTTP_ADDR", "127.0.0.1:0")
        .env("WEFT_LOG_JSON", "true")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    // The bound addresses, from the start-up log line.
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    let fields = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no start-up line; logs:\n{}", seen.join("\n")));
        seen.push(line.clone());
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if event["fields"]["message"] == "control plane started" {
            break event["fields"].clone();
        }
    };
    let addr = |key: &str| -> SocketAddr { fields[key].as_str().unwrap().parse().unwrap() };
    let (grpc, http) = (addr("grpc_addr"), addr("http_addr"));
    for (bound, taken) in [(grpc, &taken_grpc), (http, &taken_http)] {
        assert_ne!(bound, taken.local_addr().unwrap());
        assert!(bound.ip().is_loopback(), "{bound}");
    }
    assert!(TcpStream::connect(grpc).is_ok(), "gRPC listens at {grpc}");

    // The overridden trust domain is the one identities are made in.
    let deadline = Instant::now() + WAIT;
    let state = loop {
        let (status, body) = get(http, "/api/state");
        assert_eq!(status, 200, "{body}");
        let state: serde_json::Value = serde_json::from_str(&body).unwrap();
        if state["endpoints"].as_u64().is_some_and(|n| n > 0) {
            break state;
        }
        assert!(Instant::now() < deadline, "no endpoints: {state}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        state["sources"]["local"]["services"][0]["ports"][0]["endpoints"][0]["identity"],
        "spiffe://env.test/ns/demo/sa/web",
        "{state}"
    );

    // Ctrl-C: a clean exit.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "weft-control did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}
