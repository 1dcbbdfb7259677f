//! Test hosts in network namespaces that a test makes and removes itself: a hub namespace
//! holding a bridge (10.231.0.1/24 and fd00:231::1/64), and hosts joined to it by veth pairs
//! (10.231.0.2, .3, ... and fd00:231::2, ::3, ...), each with default routes through the hub. Code runs in a namespace either as a
//! process (`ip netns exec`) or on a thread of this process that entered the namespace
//! ([`NsRuntime`]): sockets belong to the namespace of the thread that opened them.
//!
//! Traffic stays inside these namespaces: nothing is routed to the host's own network.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The hub's address on the bridge.
pub const HUB: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
/// The hub's IPv6 address on the bridge.
pub const HUB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x231, 0, 0, 0, 0, 0, 1);

/// The user proxies run as in these tests, which `weft-proxy init` exempts (its default).
pub const PROXY_UID: u32 = 2102;

/// Why a lab could not be built.
#[derive(Debug)]
pub enum LabError {
    /// The machine does not let this process make network namespaces.
    Forbidden(String),
}

/// A network namespace, removed (with its interfaces) when dropped.
#[derive(Debug)]
pub struct Namespace {
    /// Its name under /run/netns.
    pub name: String,
}

/// The `ip` program (iproute2), wherever it is installed.
fn ip() -> PathBuf {
    weft_proxy::init::find_tool("ip").unwrap_or_else(|| PathBuf::from("ip"))
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Namespace {
    fn add(name: String) -> Result<Self, LabError> {
        let out = Command::new(ip())
            .args(["netns", "add", &name])
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip (install iproute2): {e}"));
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            if err.contains("Operation not permitted") || err.contains("Permission denied") {
                return Err(LabError::Forbidden(err.trim().to_string()));
            }
            panic!("ip netns add {name}: {err}");
        }
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        Ok(ns)
    }

    /// `ip -n <ns> <args>`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> Output {
        run_ok(Command::new(ip()).args(["-n", &self.name]).args(args))
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(ip());
        c.args(["netns", "exec", &self.name, program]);
        c.kill_on_drop(true);
        c
    }

    /// A command that runs inside the namespace as the proxy's user.
    pub fn command_as_proxy_user(&self, program: &Path) -> tokio::process::Command {
        let mut c = self.command("setpriv");
        c.arg(format!("--reuid={PROXY_UID}"))
            .arg(format!("--regid={PROXY_UID}"))
            .args(["--clear-groups", "--"])
            .arg(program);
        c
    }

    /// Runs `program args` in the namespace to the end; its output.
    pub async fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    /// A runtime on a thread inside this namespace.
    pub fn runtime(&self) -> NsRuntime {
        NsRuntime::enter(&self.name)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new(ip())
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A single-threaded tokio runtime on a thread that entered a network namespace; what is
/// spawned on it opens its sockets there. Stopped when dropped.
#[derive(Debug)]
pub struct NsRuntime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    fn enter(ns: &str) -> Self {
        let path = PathBuf::from("/run/netns").join(ns);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let file =
                std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            ready_tx.send(rt.handle().clone()).unwrap();
            rt.block_on(async {
                let _ = stop_rx.await;
            });
        });
        let handle = ready_rx.recv().unwrap();
        Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `fut` in the namespace and returns its output.
    pub async fn run<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut).await.unwrap()
    }

    /// Starts `fut` in the namespace, to run until the runtime stops.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(fut));
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A hub and its hosts.
#[derive(Debug)]
pub struct Lab {
    /// The hosts, in order: host `i` has address 10.231.0.(i + 2).
    pub hosts: Vec<Namespace>,
    /// The namespace holding the bridge, at [`HUB`].
    pub hub: Namespace,
}

static LABS: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// Builds a hub and `hosts` hosts. Fails only where the machine forbids namespaces.
    pub fn new(hosts: usize) -> Result<Self, LabError> {
        let id = format!(
            "weft{}x{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let hub = Namespace::add(format!("{id}hub"))?;
        hub.ip(&["link", "add", "br0", "type", "bridge"]);
        hub.ip(&["addr", "add", &format!("{HUB}/24"), "dev", "br0"]);
        hub.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{HUB6}/64"),
            "dev",
            "br0",
            "nodad",
        ]);
        hub.ip(&["link", "set", "br0", "up"]);
        let mut lab = Self {
            hosts: Vec::new(),
            hub,
        };
        for i in 0..hosts {
            let host = Namespace::add(format!("{id}h{i}"))?;
            let port = format!("v{i}");
            lab.hub.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &host.name,
            ]);
            lab.hub.ip(&["link", "set", &port, "master", "br0", "up"]);
            host.ip(&[
                "addr",
                "add",
                &format!("{}/24", Self::addr(i)),
                "dev",
                "eth0",
            ]);
            // IPv6 too, usable at once (no duplicate address detection).
            let v6 = format!("{}/64", Self::addr6(i));
            host.ip(&["-6", "addr", "add", &v6, "dev", "eth0", "nodad"]);
            host.ip(&["link", "set", "eth0", "up"]);
            host.ip(&["route", "add", "default", "via", &HUB.to_string()]);
            host.ip(&["-6", "route", "add", "default", "via", &HUB6.to_string()]);
            lab.hosts.push(host);
        }
        Ok(lab)
    }

    /// The address of host `i`.
    pub fn addr(i: usize) -> IpAddr {
        let last = u8::try_from(i + 2).expect("a small lab");
        IpAddr::V4(Ipv4Addr::new(10, 231, 0, last))
    }

    /// The IPv6 address of host `i`: fd00:231::(i + 2).
    pub fn addr6(i: usize) -> IpAddr {
        let last = u16::try_from(i + 2).expect("a small lab");
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x231, 0, 0, 0, 0, 0, last))
    }

    /// `addr(i):port`.
    pub fn at(i: usize, port: u16) -> SocketAddr {
        SocketAddr::new(Self::addr(i), port)
    }
}

/// Builds a lab, or prints why this machine cannot and returns `None` (the test is then
/// skipped: one line, and only for this reason).
pub fn lab_or_skip(hosts: usize) -> Option<Lab> {
    match Lab::new(hosts) {
        Ok(lab) => Some(lab),
        Err(LabError::Forbidden(why)) => {
            eprintln!("skipped: this machine forbids network namespaces ({why})");
            None
        }
    }
}

/// The proxy binary of this workspace's build, beside the test binaries.
pub fn proxy_binary() -> PathBuf {
    crate::workspace_binary("weft-proxy", "weft-proxy")
}

/// How long a namespaced step may take on a loaded machine.
pub const LAB_WAIT: Duration = Duration::from_secs(30);
