//! `weft dev` following its config file: a workload appended to the file gets a proxy and its
//! demo application, one removed from it is stopped. Logs stay on stderr, so stdout holds only
//! what `weft dev` prints for the user.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Long enough for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);

mod support;
use support::free_port;

/// Replaces the file in one step, so `weft dev` never reads half an edit.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The status line of `GET path` on `127.0.0.1:port`, if anything answers.
fn get(port: u16, path: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut rsp = String::new();
    tcp.read_to_string(&mut rsp).ok()?;
    rsp.lines().next().map(str::to_string)
}

/// Reads lines from `rx` into `seen` until one satisfies `want`.
fn wait_line(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, want: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no such line; stdout so far:\n{}", seen.join("\n")));
        seen.push(line.clone());
        if want(&line) {
            return;
        }
    }
}

/// Forwards each line of `from` to a channel, from a thread.
fn lines(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn interrupt_and_wait(child: &mut Child, stderr: &mpsc::Receiver<String>) {
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
        if Instant::now() >= deadline {
            let _ = child.kill();
            let logs: Vec<String> = stderr.try_iter().collect();
            panic!("weft dev did not stop; its logs:\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn weft_dev_starts_and_stops_workloads_as_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let [api_in, api_app, extra_in, extra_app, extra_admin] = [(); 5].map(|_| free_port());
    let base = format!(
        r#"[mesh]
name = "reload"
trust_domain = "weft.reload"
[ca]
data_dir = "{data}"
[control]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
[[platforms.local.workloads]]
name = "api"
namespace = "demo"
service = "api"
port = {api_in}
app_port = {api_app}
demo = "api"
"#,
        data = dir.path().join("data").display()
    );
    let extra = format!(
        r#"[[platforms.local.workloads]]
name = "extra"
namespace = "demo"
service = "extra"
port = {extra_in}
app_port = {extra_app}
admin_port = {extra_admin}
demo = "echo"
"#
    );
    let path = dir.path().join("mesh.toml");
    replace(&path, &base);

    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["dev", "--interval", "1", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines(child.stdout.take().unwrap());
    let stderr = lines(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    wait_line(&stdout, &mut seen, |l| l.starts_with("Edit "));

    // Appended: a proxy on the declared admin port, and the echo application behind it.
    replace(&path, &format!("{base}{extra}"));
    let added = format!("added demo/extra: admin http://127.0.0.1:{extra_admin}");
    wait_line(&stdout, &mut seen, |l| l.starts_with(&added));
    let deadline = Instant::now() + WAIT;
    while get(extra_admin, "/live").as_deref() != Some("HTTP/1.1 200 OK") {
        assert!(
            Instant::now() < deadline,
            "the new proxy's /live never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(extra_app, "/").as_deref(), Some("HTTP/1.1 200 OK"));

    // Removed: "removed" is printed once the proxy and the application have let go of their
    // ports.
    replace(&path, &base);
    wait_line(&stdout, &mut seen, |l| l == "removed demo/extra");
    assert_eq!(get(extra_admin, "/live"), None, "the proxy still answers");
    assert_eq!(
        get(extra_app, "/"),
        None,
        "the demo application still answers"
    );

    interrupt_and_wait(&mut child, &stderr);
    seen.extend(stdout.try_iter());
    let logs: Vec<String> = stderr.try_iter().collect();

    // stdout: only weft dev's own lines; the logs, uncoloured, on stderr.
    for line in &seen {
        assert!(
            !line.contains(" INFO ") && !line.contains(" WARN ") && !line.contains('\u{1b}'),
            "log output on stdout: {line:?}"
        );
    }
    assert!(
        logs.iter()
            .any(|l| l.contains("INFO") && l.contains("mesh config reloaded")),
        "no reload log on stderr: {logs:#?}"
    );
    assert!(
        logs.iter().all(|l| !l.contains('\u{1b}')),
        "colour codes in redirected logs"
    );
}
