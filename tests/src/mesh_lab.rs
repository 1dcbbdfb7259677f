//! A mesh in a [`Lab`](crate::netns::Lab): the control plane in the hub, the real proxy binary intercepting in
//! each meshed host as its own user, and the ways tests look at it (the proxies' admin
//! listeners, curl and a gRPC client run inside a host).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weft_core::config::ConfigWatcher;

use crate::fake_kube::FakeKube;
use crate::kube_objects::TokenFor;
use crate::netns::{LAB_WAIT, Namespace, NsRuntime, PROXY_UID, proxy_binary};

/// Where every lab proxy's admin listener is, inside its own host.
pub const LAB_ADMIN: &str = "127.0.0.1:7191";

/// The control plane's gRPC address on the hub's bridge.
pub const LAB_CONTROL: &str = "10.231.0.1:7443";

/// The mesh, CA and control-plane sections every lab's config file starts with, keeping
/// its data under `dir`.
pub fn lab_sections(dir: &Path) -> String {
    format!(
        r#"[mesh]
name = "lab"
trust_domain = "weft.test"

[ca]
data_dir = "{data}"

[control]
grpc_addr = "{LAB_CONTROL}"
http_addr = "127.0.0.1:7080"
"#,
        data = dir.join("data").display(),
    )
}

/// A temporary directory the proxies' user may enter (it reads its token and the bundle
/// from there).
pub fn lab_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Starts the control plane of the config file at `config` in the hub, for the rest of the
/// test; returns a copy of its trust bundle under `dir` that the proxies may read (its data
/// directory is its own, 0700).
pub async fn start_control(hub: &NsRuntime, dir: &Path, config: &Path) -> PathBuf {
    let path = config.to_path_buf();
    let bundle: PathBuf = hub
        .run(async move {
            let stop = CancellationToken::new();
            let loader = weft_control::platforms::loader();
            let watcher = ConfigWatcher::start(&path, &loader, stop.clone()).unwrap();
            let platforms = weft_control::platforms::enabled(&watcher).await.unwrap();
            let control = weft_control::ControlPlane::start(watcher.subscribe(), platforms)
                .await
                .unwrap();
            let bundle = control.trust_bundle_file.clone();
            tokio::spawn(async move {
                let _running = (control, watcher, stop);
                std::future::pending::<()>().await;
            });
            bundle
        })
        .await;
    let shared = dir.join("bundle.pem");
    std::fs::copy(&bundle, &shared).unwrap();
    shared
}

/// A meshed workload of the lab, as its proxy is told.
#[derive(Clone, Copy, Debug)]
pub struct LabPod<'a> {
    /// Its name (and ServiceAccount, on Kubernetes).
    pub name: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// Extra flags of `weft-proxy init`.
    pub init_flags: &'a [&'a str],
}

/// Runs `weft-proxy init` in `ns` and starts the proxy of `pod` there as the proxies' user,
/// logging to `dir/NAME.log`. On the local platform (`fake` is `None`) it presents the token
/// the control plane wrote for it; on Kubernetes, a projected ServiceAccount token that `fake`
/// reviews.
pub async fn start_proxy(
    ns: &Namespace,
    dir: &Path,
    bundle: &Path,
    pod: LabPod<'_>,
    fake: Option<&FakeKube>,
) -> tokio::process::Child {
    let bin = proxy_binary();
    let out = ns
        .command(bin.to_str().unwrap())
        .arg("init")
        .args(pod.init_flags)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = pod.name;
    // The proxy's own copy of its credential, readable by its user only.
    let token = dir.join(format!("{name}.token"));
    let platform = match fake {
        None => {
            let issued = dir.join("data/tokens").join(pod.namespace).join(name);
            std::fs::copy(issued, &token).unwrap();
            "local"
        }
        Some(fake) => {
            // A projected ServiceAccount token of the pod, as the kubelet would write it.
            let secret = format!("projected-token-of-{}-{name}", pod.namespace);
            TokenFor::new(pod.namespace, name, name).register(fake, &secret);
            std::fs::write(&token, secret).unwrap();
            "kubernetes"
        }
    };
    std::os::unix::fs::chown(&token, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    ns.command_as_proxy_user(&bin)
        .args(["--transparent", "--workload", name, "--namespace"])
        .arg(pod.namespace)
        .args(["--platform", platform, "--account", name])
        .args(["--trust-domain", "weft.test", "--control-addr", LAB_CONTROL])
        .arg("--trust-bundle")
        .arg(bundle)
        .arg("--token-file")
        .arg(&token)
        .args(["--admin-addr", LAB_ADMIN])
        // Every other proxy on one worker thread, as a sidecar limited to a CPU runs, the
        // others on two: traffic crosses both.
        .args(["--workers", workers()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// `--workers` for the next proxy [`start_proxy`] starts: 1 and 2 in turn.
fn workers() -> &'static str {
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if STARTED
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .is_multiple_of(2)
    {
        "1"
    } else {
        "2"
    }
}

/// The log of the proxy of workload `name` started by [`start_proxy`] with `dir`.
pub fn proxy_log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// GET `path` on the admin listener of the proxy in `rt`'s host: status and body, or `None`
/// while it does not answer.
pub async fn admin(rt: &NsRuntime, path: &'static str) -> Option<(u16, String)> {
    rt.run(async move {
        let tcp = tokio::net::TcpStream::connect(LAB_ADMIN).await.ok()?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .ok()?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let rsp = send.send_request(req).await.ok()?;
        let status = rsp.status().as_u16();
        let body = http_body_util::BodyExt::collect(rsp.into_body())
            .await
            .ok()?
            .to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
}

/// Waits until the proxy in `rt`'s host holds a certificate and its settings; `logs` says
/// what to show if it never does.
pub async fn wait_ready(rt: &NsRuntime, logs: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + LAB_WAIT;
    loop {
        if let Some((200, _)) = admin(rt, "/ready").await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a lab proxy never got ready:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `curl -sS -i` in `ns` (as root, or as the proxies' user) with `args`, to the end: the
/// response, or curl's complaint.
pub async fn curl(ns: &Namespace, args: &[&str], as_proxy_user: bool) -> Result<String, String> {
    let mut cmd = if as_proxy_user {
        ns.command_as_proxy_user(Path::new("curl"))
    } else {
        ns.command("curl")
    };
    let out = cmd
        .args(["-sS", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// What a gRPC echo backend ([`crate::backends::grpc_backend_at`]) answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcEcho {
    /// The name of the backend that answered.
    pub backend: String,
    /// The payload it echoed.
    pub payload: Vec<u8>,
    /// The request headers it received, `name: value` (lowercase names), in order.
    pub headers: Vec<String>,
}

/// `n` unary gRPC calls on one channel from `rt`'s host to `url`, from a client that knows
/// nothing of the mesh, each with `metadata`: what each call got, in order.
pub async fn grpc_calls(
    rt: &NsRuntime,
    url: String,
    payload: &'static [u8],
    metadata: &'static [(&'static str, &'static str)],
    n: usize,
) -> Vec<Result<GrpcEcho, String>> {
    rt.run(async move {
        let ch = match tonic::transport::Endpoint::from_shared(url) {
            Ok(e) => e.connect().await,
            Err(e) => return vec![Err(e.to_string())],
        };
        let ch = match ch {
            Ok(ch) => ch,
            Err(e) => return vec![Err(e.to_string())],
        };
        let mut client = weft_api::v1::identity_client::IdentityClient::new(ch);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let mut req = tonic::Request::new(weft_api::CertifyRequest {
                csr: payload.to_vec(),
                ..Default::default()
            });
            for (k, v) in metadata {
                req.metadata_mut().append(*k, v.parse().unwrap());
            }
            out.push(
                client
                    .certify(req)
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        GrpcEcho {
                            backend: r.identity,
                            payload: r.leaf,
                            headers: r
                                .chain
                                .iter()
                                .map(|h| String::from_utf8_lossy(h).into_owned())
                                .collect(),
                        }
                    })
                    .map_err(|e| e.to_string()),
            );
        }
        out
    })
    .await
}

/// Polls `check` (bounded by [`LAB_WAIT`]) until it returns `Ok`: for what a lab's control
/// plane has yet to carry to its proxies. The last complaint, if it never does.
pub async fn eventually<T, F>(mut check: impl FnMut() -> F) -> Result<T, String>
where
    F: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + LAB_WAIT;
    loop {
        match check().await {
            Ok(t) => return Ok(t),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
