//! `weft dev --config FILE` as a user runs it: the real binary, its own control plane, demo
//! workloads, proxies and traffic, golden-metric lines, and a clean stop on Ctrl-C.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod support;
use support::free_port;

#[test]
fn weft_dev_runs_a_mesh_prints_golden_metrics_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let [api_in, api_app, web_in, web_app, load_in, up_api, up_web] = [(); 7].map(|_| free_port());
    let config = format!(
        r#"[mesh]
name = "devtest"
trust_domain = "weft.devtest"
[ca]
data_dir = "{data}"
[control]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
[[policy.authorizations]]
service = "api.demo"
allow = ["demo/web"]
[platforms.local]
[[platforms.local.workloads]]
name = "api"
namespace = "demo"
service = "api"
port = {api_in}
app_port = {api_app}
demo = "api"
[[platforms.local.workloads]]
name = "web"
namespace = "demo"
service = "web"
port = {web_in}
app_port = {web_app}
upstreams = {{ api = {up_api} }}
demo = "web"
[[platforms.local.workloads]]
name = "load"
namespace = "demo"
port = {load_in}
upstreams = {{ web = {up_web} }}
demo = "load"
"#,
        data = dir.path().join("data").display()
    );
    let path = dir.path().join("mesh.toml");
    std::fs::write(&path, config).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["dev", "--interval", "1", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });

    // Wait for a golden line of each service showing successful traffic.
    let mut healthy = std::collections::BTreeSet::new();
    let mut seen = Vec::new();
    while healthy.len() < 2 {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "no healthy golden lines; output so far:\n{}",
                    seen.join("\n")
                )
            });
        seen.push(line.clone());
        let mut words = line.split_whitespace();
        if let (Some(svc @ ("api" | "web")), Some("rps")) = (words.next(), words.next())
            && line.contains("success 100.0%")
            && !line.contains("rps     0.0")
        {
            healthy.insert(svc.to_string());
        }
    }
    // "  control plane   grpc 127.0.0.1:PORT  http http://127.0.0.1:PORT"
    let grpc: std::net::SocketAddr = seen
        .iter()
        .find_map(|l| l.trim().strip_prefix("control plane"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no control plane line: {seen:?}"))
        .parse()
        .unwrap();
    assert_ne!(grpc.port(), 0);
    assert!(
        std::net::TcpStream::connect(grpc).is_ok(),
        "the control plane listens where weft dev said"
    );

    // Ctrl-C: everything stops and the process exits cleanly.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "weft dev did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    assert!(
        std::net::TcpStream::connect(grpc).is_err(),
        "the control plane still listens"
    );
}
