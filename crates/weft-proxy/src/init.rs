//! `weft-proxy init`: the nat-table rules that send a network namespace's TCP through the
//! proxy, for transparent mode.
//!
//! - Inbound: every TCP connection arriving in the namespace goes to the proxy's inbound port,
//!   except the ports in `--skip-inbound-ports` and the inbound port itself.
//! - Outbound: every TCP connection the namespace opens goes to the proxy's outbound listener,
//!   except those of the proxy's own user (so the proxy's connections never loop back into
//!   it), those leaving through loopback, the ports in `--skip-outbound-ports` and the
//!   addresses in `--skip-outbound-cidrs`.
//! - The proxy reaching its own pod: a connection of the proxy's user to one of the
//!   namespace's own addresses (through loopback, not to a loopback address) goes to the
//!   inbound port like any peer's, unless its port is skipped inbound, so a pod that calls a
//!   Service it backs meets its own inbound side and policy instead of its plaintext
//!   application. The inbound side's connections to the application come from
//!   [`APP_FORWARD_SOURCE`] (127.0.0.6) or, over IPv6, [`APP_FORWARD_SOURCE_V6`] (`::6`, which
//!   `init` adds to `lo`: see [`loopback`]), and pass untouched; the kernel picks the pod's own
//!   address as the source of the proxy's calls to it, never one of those.
//!
//! The rules live in chains of their own (`WEFT_INBOUND`, `WEFT_IN_REDIRECT`, `WEFT_OUTPUT`,
//! `WEFT_REDIRECT`), written in one `iptables-restore --noflush` transaction that empties
//! them first, and reached by one jump each from `PREROUTING` and `OUTPUT`, added only when
//! missing: running `init` again leaves one set of rules. `--cleanup` removes the jumps and the
//! chains. The same rules go to ip6tables when the host has IPv6. Both iptables backends
//! work: `nft` (the default of current distributions) and `legacy`; `auto` picks the one that
//! already holds rules in the namespace, else `nft`.

pub mod loopback;

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

use clap::{Parser, ValueEnum};

/// The chain `PREROUTING` jumps to.
pub const INBOUND_CHAIN: &str = "WEFT_INBOUND";
/// The chain that redirects inbound connections to the proxy.
pub const IN_REDIRECT_CHAIN: &str = "WEFT_IN_REDIRECT";
/// The chain `OUTPUT` jumps to.
pub const OUTPUT_CHAIN: &str = "WEFT_OUTPUT";
/// The chain that redirects outbound connections to the proxy.
pub const REDIRECT_CHAIN: &str = "WEFT_REDIRECT";
/// The source address of the inbound side's connections to the application in transparent
/// mode (IPv4). The rules tell them apart by it from the proxy's own connections to its pod's
/// address, which go to the inbound port; the application sees this address as the caller's,
/// never one it might trust as its own host.
pub const APP_FORWARD_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// [`APP_FORWARD_SOURCE`] over IPv6: `::6`, which `init` adds to the loopback interface (IPv6
/// has no spare loopback block, and `::1` is an address applications trust as their own host).
pub const APP_FORWARD_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);
/// Our chains, each before those it jumps to (WEFT_OUTPUT jumps to WEFT_INBOUND, for the
/// proxy's calls to its own pod, and to WEFT_REDIRECT; WEFT_INBOUND to WEFT_IN_REDIRECT):
/// `--cleanup` drops them in this order, since a chain still referenced cannot go.
const CHAINS: [&str; 4] = [
    OUTPUT_CHAIN,
    INBOUND_CHAIN,
    IN_REDIRECT_CHAIN,
    REDIRECT_CHAIN,
];

/// Writes the nat-table rules that send this network namespace's TCP through the proxy.
#[derive(Clone, Debug, Parser)]
#[command(name = "weft-proxy init", version)]
pub struct InitArgs {
    /// The proxy's user id: its own connections are never redirected.
    #[arg(long, env = "WEFT_INIT_PROXY_UID", default_value_t = 2102)]
    pub proxy_uid: u32,
    /// The proxy's inbound port (`--inbound-addr` of the proxy).
    #[arg(long, env = "WEFT_INIT_INBOUND_PORT", default_value_t = 7143)]
    pub inbound_port: u16,
    /// The proxy's transparent outbound port (`--outbound-addr` of the proxy).
    #[arg(long, env = "WEFT_INIT_OUTBOUND_PORT", default_value_t = 7140)]
    pub outbound_port: u16,
    /// Inbound ports that bypass the proxy: `22,8000-8010`.
    #[arg(long, env = "WEFT_INIT_SKIP_INBOUND_PORTS", value_delimiter = ',')]
    pub skip_inbound_ports: Vec<PortRange>,
    /// Outbound ports that bypass the proxy.
    #[arg(long, env = "WEFT_INIT_SKIP_OUTBOUND_PORTS", value_delimiter = ',')]
    pub skip_outbound_ports: Vec<PortRange>,
    /// Outbound destinations that bypass the proxy: `10.0.0.0/8,fd00::/8`.
    #[arg(long, env = "WEFT_INIT_SKIP_OUTBOUND_CIDRS", value_delimiter = ',')]
    pub skip_outbound_cidrs: Vec<Cidr>,
    /// The iptables backend: `nft`, `legacy`, or `auto` (the one already holding rules in
    /// this namespace, else `nft`).
    #[arg(long, env = "WEFT_INIT_BACKEND", value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Whether to write IPv6 rules too: `auto` (when the host has IPv6), `on` or `off`.
    #[arg(long, env = "WEFT_INIT_IPV6", value_enum, default_value_t = Toggle::Auto)]
    pub ipv6: Toggle,
    /// Prints the commands instead of running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Removes the rules instead of writing them.
    #[arg(long)]
    pub cleanup: bool,
}

/// An iptables backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The one already holding rules in this namespace, else nft.
    Auto,
    /// iptables over nf_tables (`iptables-nft`).
    Nft,
    /// The legacy x_tables backend (`iptables-legacy`).
    Legacy,
}

/// On, off, or decided from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    /// Decided from the host.
    Auto,
    /// On.
    On,
    /// Off.
    Off,
}

/// A port or an inclusive range, `8000` or `8000-8010`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("{s:?} is not a port (1-65535) or a range a-b")),
                Ok(p) => Ok(p),
            }
        };
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if a > b {
            return Err(format!("{s:?}: the range ends before it starts"));
        }
        Ok(Self(a, b))
    }
}

impl fmt::Display for PortRange {
    /// As iptables writes it: `8000` or `8000:8010`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == self.1 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}:{}", self.0, self.1)
        }
    }
}

/// An address block, `10.0.0.0/8` or `fd00::/8`; a bare address is a block of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(pub IpAddr, pub u8);

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address block like 10.0.0.0/8 or fd00::/8");
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (
                a.parse::<IpAddr>().map_err(|_| bad())?,
                Some(l.parse::<u8>().map_err(|_| bad())?),
            ),
            None => (s.trim().parse::<IpAddr>().map_err(|_| bad())?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(bad());
        }
        Ok(Self(addr, len))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

/// An IP family, with its tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// iptables.
    V4,
    /// ip6tables.
    V6,
}

/// Why the rules could not be written or removed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// No iptables program was found.
    #[error(
        "{0} not found (looked in PATH, /usr/sbin and /sbin): install iptables (Debian and Ubuntu: apt-get install iptables)"
    )]
    NoTool(String),
    /// The kernel refused: the process lacks NET_ADMIN.
    #[error(
        "{command} was refused by the kernel: writing nat rules needs the NET_ADMIN and NET_RAW capabilities (run as root, or add them to the init container): {detail}"
    )]
    NotPermitted {
        /// The command.
        command: String,
        /// What it printed.
        detail: String,
    },
    /// A command failed.
    #[error("{command} failed ({status}): {detail}")]
    Failed {
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        detail: String,
    },
    /// A command could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// The cause.
        source: std::io::Error,
    },
    /// IPv6 rules were asked for, but ip6tables is missing.
    #[error("--ipv6 on, but {0} is not installed")]
    NoIpv6Tool(String),
}

/// One thing to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `<restore> --noflush` with `input` on stdin: the chains and their rules, in one
    /// transaction.
    Restore {
        /// The restore program.
        tool: PathBuf,
        /// Its input.
        input: String,
    },
    /// Adds `rule` to the nat table unless it is there already.
    Ensure {
        /// The iptables program.
        tool: PathBuf,
        /// The chain and the rule, as `-A` takes them.
        rule: Vec<String>,
    },
    /// Deletes every copy of `rule` from the nat table.
    DeleteAll {
        /// The iptables program.
        tool: PathBuf,
        /// The chain and the rule.
        rule: Vec<String>,
    },
    /// Empties and removes a chain of the nat table, if it exists.
    DropChain {
        /// The iptables program.
        tool: PathBuf,
        /// The chain.
        chain: &'static str,
    },
    /// Adds [`APP_FORWARD_SOURCE_V6`] to the loopback interface, or removes it.
    Loopback(loopback::Change),
}

/// The tools of one family on one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tools {
    /// `iptables-nft`, `ip6tables-legacy`, ...
    pub iptables: PathBuf,
    /// The matching `-restore`.
    pub restore: PathBuf,
    /// The matching `-save`.
    pub save: PathBuf,
}

/// The jumps into our chains: (chain, rule).
fn jumps() -> [Vec<String>; 2] {
    [
        args(&["PREROUTING", "-p", "tcp", "-j", INBOUND_CHAIN]),
        args(&["OUTPUT", "-p", "tcp", "-j", OUTPUT_CHAIN]),
    ]
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

impl InitArgs {
    /// The `iptables-restore` input that fills our chains for `family`.
    pub fn ruleset(&self, family: Family) -> String {
        let mut out = String::from("*nat\n");
        for chain in CHAINS {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        let _ = writeln!(
            out,
            "-A {IN_REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        );
        let _ = writeln!(
            out,
            "-A {INBOUND_CHAIN} -p tcp --dport {} -j RETURN",
            self.inbound_port
        );
        for p in &self.skip_inbound_ports {
            let _ = writeln!(out, "-A {INBOUND_CHAIN} -p tcp --dport {p} -j RETURN");
        }
        let _ = writeln!(out, "-A {INBOUND_CHAIN} -p tcp -j {IN_REDIRECT_CHAIN}");
        let _ = writeln!(
            out,
            "-A {REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        );
        // The proxy reaching its own pod (a Service that this pod backs): its mutual-TLS
        // connection to the pod's address goes to its own inbound port, as a peer's would,
        // through the inbound skips. The inbound side forwards to the application from the
        // forward source, which the first rule lets through, so nothing loops.
        let (source, loopback) = match family {
            Family::V4 => (format!("{APP_FORWARD_SOURCE}/32"), "127.0.0.0/8"),
            Family::V6 => (format!("{APP_FORWARD_SOURCE_V6}/128"), "::1/128"),
        };
        let _ = writeln!(out, "-A {OUTPUT_CHAIN} -o lo -s {source} -j RETURN");
        let _ = writeln!(
            out,
            "-A {OUTPUT_CHAIN} -o lo ! -d {loopback} -m owner --uid-owner {} -j {INBOUND_CHAIN}",
            self.proxy_uid
        );
        let _ = writeln!(
            out,
            "-A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        );
        let _ = writeln!(out, "-A {OUTPUT_CHAIN} -o lo -j RETURN");
        for p in &self.skip_outbound_ports {
            let _ = writeln!(out, "-A {OUTPUT_CHAIN} -p tcp --dport {p} -j RETURN");
        }
        let v6 = family == Family::V6;
        for c in self
            .skip_outbound_cidrs
            .iter()
            .filter(|c| c.0.is_ipv6() == v6)
        {
            let _ = writeln!(out, "-A {OUTPUT_CHAIN} -d {c} -j RETURN");
        }
        let _ = writeln!(out, "-A {OUTPUT_CHAIN} -p tcp -j {REDIRECT_CHAIN}");
        out.push_str("COMMIT\n");
        out
    }

    /// What to run, family by family, with `tools`.
    pub fn plan(&self, tools: &[Tools]) -> Vec<Step> {
        let mut steps = Vec::new();
        for (t, family) in tools.iter().zip([Family::V4, Family::V6]) {
            if self.cleanup {
                for rule in jumps() {
                    steps.push(Step::DeleteAll {
                        tool: t.iptables.clone(),
                        rule,
                    });
                }
                for chain in CHAINS {
                    steps.push(Step::DropChain {
                        tool: t.iptables.clone(),
                        chain,
                    });
                }
                if family == Family::V6 {
                    steps.push(Step::Loopback(loopback::Change::Remove));
                }
            } else {
                // The forward source exists before the rules that let it through.
                if family == Family::V6 {
                    steps.push(Step::Loopback(loopback::Change::Add));
                }
                steps.push(Step::Restore {
                    tool: t.restore.clone(),
                    input: self.ruleset(family),
                });
                for rule in jumps() {
                    steps.push(Step::Ensure {
                        tool: t.iptables.clone(),
                        rule,
                    });
                }
            }
        }
        steps
    }
}

impl fmt::Display for Step {
    /// As a line of `sh`: what `--dry-run` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Restore { tool, input } => {
                write!(f, "{} --noflush <<'EOF'\n{input}EOF", tool.display())
            }
            Step::Ensure { tool, rule } => {
                let (t, r) = (tool.display(), rule.join(" "));
                write!(f, "{t} -t nat -C {r} 2>/dev/null || {t} -t nat -A {r}")
            }
            Step::DeleteAll { tool, rule } => {
                let (t, r) = (tool.display(), rule.join(" "));
                write!(
                    f,
                    "while {t} -t nat -C {r} 2>/dev/null; do {t} -t nat -D {r}; done"
                )
            }
            Step::DropChain { tool, chain } => {
                let t = tool.display();
                write!(
                    f,
                    "if {t} -t nat -S {chain} >/dev/null 2>&1; then {t} -t nat -F {chain} && {t} -t nat -X {chain}; fi"
                )
            }
            Step::Loopback(change) => f.write_str(&loopback::as_shell(*change)),
        }
    }
}

/// Finds `name` in `PATH`, then in /usr/sbin and /sbin (where iptables lives, often outside
/// an unprivileged user's PATH).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The tools of `family` on `backend` (`nft` or `legacy`), if installed. Hosts with a single
/// `iptables` (no `-nft`/`-legacy` names) get that one as either.
fn tools_of(family: Family, backend: Backend) -> Option<Tools> {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    let suffix = match backend {
        Backend::Legacy => "-legacy",
        _ => "-nft",
    };
    let named = |tail: &str| find_tool(&format!("{base}{suffix}{tail}"));
    if let (Some(iptables), Some(restore), Some(save)) =
        (named(""), named("-restore"), named("-save"))
    {
        return Some(Tools {
            iptables,
            restore,
            save,
        });
    }
    let plain = |tail: &str| find_tool(&format!("{base}{tail}"));
    Some(Tools {
        iptables: plain("")?,
        restore: plain("-restore")?,
        save: plain("-save")?,
    })
}

/// How many rules `save` lists in this namespace (0 when it cannot tell).
fn rule_count(save: &Path) -> usize {
    Command::new(save)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("-A "))
                .count()
        })
        .unwrap_or(0)
}

/// The backend `auto` stands for: legacy when only it holds rules here, else nft when
/// installed, else legacy.
pub fn pick_backend() -> Backend {
    let nft = tools_of(Family::V4, Backend::Nft);
    let legacy = tools_of(Family::V4, Backend::Legacy);
    match (nft, legacy) {
        (Some(n), Some(l)) if n != l => {
            if rule_count(&l.save) > 0 && rule_count(&n.save) == 0 {
                Backend::Legacy
            } else {
                Backend::Nft
            }
        }
        (Some(_), _) => Backend::Nft,
        (None, _) => Backend::Legacy,
    }
}

/// Whether the host has IPv6 (the kernel lists IPv6 addresses).
fn host_has_ipv6() -> bool {
    Path::new("/proc/net/if_inet6").exists()
}

/// The tools to use for each family, in order (IPv4, then IPv6 when wanted).
pub fn resolve_tools(args: &InitArgs) -> Result<(Backend, Vec<Tools>), InitError> {
    let backend = match args.backend {
        Backend::Auto => pick_backend(),
        b => b,
    };
    let name = |family| {
        let base = if family == Family::V4 {
            "iptables"
        } else {
            "ip6tables"
        };
        match backend {
            Backend::Legacy => format!("{base}-legacy"),
            _ => format!("{base}-nft"),
        }
    };
    let v4 = tools_of(Family::V4, backend).ok_or_else(|| InitError::NoTool(name(Family::V4)))?;
    let mut tools = vec![v4];
    let want_v6 = match args.ipv6 {
        Toggle::On => true,
        Toggle::Off => false,
        Toggle::Auto => host_has_ipv6(),
    };
    if want_v6 {
        match tools_of(Family::V6, backend) {
            Some(t) => tools.push(t),
            None if args.ipv6 == Toggle::On => return Err(InitError::NoIpv6Tool(name(Family::V6))),
            None => tracing::warn!("no {}: IPv6 traffic is not intercepted", name(Family::V6)),
        }
    }
    Ok((backend, tools))
}

/// Runs `command`, turning a failure into an [`InitError`] that says why.
fn run(command: &mut Command, input: Option<&str>) -> Result<(), InitError> {
    let shown = format!("{command:?}").replace('"', "");
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| InitError::Spawn {
            command: shown.clone(),
            source,
        })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A restore that fails early closes its stdin; its exit status says why.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| InitError::Spawn {
            command: shown.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let lower = detail.to_ascii_lowercase();
    if lower.contains("permission denied")
        || lower.contains("operation not permitted")
        || lower.contains("you must be root")
    {
        return Err(InitError::NotPermitted {
            command: shown,
            detail,
        });
    }
    Err(InitError::Failed {
        command: shown,
        status: out.status.to_string(),
        detail,
    })
}

/// Whether `tool -t nat <check...>` succeeds (the rule or chain exists).
fn holds(tool: &Path, check: &[&str]) -> bool {
    Command::new(tool)
        .args(["-t", "nat"])
        .args(check)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Carries out one step.
pub fn execute(step: &Step) -> Result<(), InitError> {
    match step {
        Step::Restore { tool, input } => run(Command::new(tool).arg("--noflush"), Some(input)),
        Step::Ensure { tool, rule } => {
            let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
            if holds(tool, &[&["-C"], rule.as_slice()].concat()) {
                return Ok(());
            }
            run(
                Command::new(tool).args(["-t", "nat", "-A"]).args(&rule),
                None,
            )
        }
        Step::DeleteAll { tool, rule } => {
            let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
            // Bounded: each pass removes one copy, and nobody adds copies meanwhile.
            for _ in 0..64 {
                if !holds(tool, &[&["-C"], rule.as_slice()].concat()) {
                    return Ok(());
                }
                run(
                    Command::new(tool).args(["-t", "nat", "-D"]).args(&rule),
                    None,
                )?;
            }
            Ok(())
        }
        Step::DropChain { tool, chain } => {
            if !holds(tool, &["-S", chain]) {
                return Ok(());
            }
            run(Command::new(tool).args(["-t", "nat", "-F", chain]), None)?;
            run(Command::new(tool).args(["-t", "nat", "-X", chain]), None)
        }
        Step::Loopback(change) => loopback::apply(*change),
    }
}

/// `weft-proxy init`: writes (or with `--cleanup` removes) the rules, or prints the commands
/// with `--dry-run`. Returns what it did, for the caller to print.
pub fn init(args: &InitArgs) -> Result<String, InitError> {
    let (backend, tools) = resolve_tools(args)?;
    let steps = args.plan(&tools);
    if args.dry_run {
        let mut out = String::new();
        for s in &steps {
            let _ = writeln!(out, "{s}");
        }
        return Ok(out);
    }
    for s in &steps {
        execute(s)?;
    }
    let families = if tools.len() > 1 {
        "IPv4 and IPv6"
    } else {
        "IPv4"
    };
    let backend = match backend {
        Backend::Legacy => "legacy",
        _ => "nft",
    };
    Ok(if args.cleanup {
        format!("weft-proxy init: rules removed ({families}, {backend} backend)\n")
    } else {
        format!(
            "weft-proxy init: {families} TCP goes through the proxy ({backend} backend): inbound to port {}, outbound to port {}; user {} exempt\n",
            args.inbound_port, args.outbound_port, args.proxy_uid
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> InitArgs {
        InitArgs::try_parse_from([&["weft-proxy init"], extra].concat()).unwrap()
    }

    #[test]
    fn ports_and_blocks_parse_or_say_why_not() {
        assert_eq!("22".parse::<PortRange>().unwrap().to_string(), "22");
        assert_eq!(
            "8000-8010".parse::<PortRange>().unwrap().to_string(),
            "8000:8010"
        );
        for bad in ["0", "70000", "9-1", "x", "1-"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "fd00::1".parse::<Cidr>().unwrap().to_string(),
            "fd00::1/128"
        );
        for bad in ["10.0.0.0/33", "fd00::/129", "10.0.0/8", "x/1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_ruleset_exempts_the_proxy_loopback_and_what_is_skipped() {
        let a = parse(&[
            "--skip-inbound-ports",
            "22,9000-9010",
            "--skip-outbound-ports",
            "5432",
            "--skip-outbound-cidrs",
            "10.9.0.0/16,fd00::/8",
        ]);
        let v4 = a.ruleset(Family::V4);
        let lines: Vec<&str> = v4.lines().collect();
        assert_eq!(lines[0], "*nat");
        assert_eq!(lines.last(), Some(&"COMMIT"));
        for want in [
            ":WEFT_INBOUND - [0:0]",
            "-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 7143",
            "-A WEFT_INBOUND -p tcp --dport 7143 -j RETURN",
            "-A WEFT_INBOUND -p tcp --dport 22 -j RETURN",
            "-A WEFT_INBOUND -p tcp --dport 9000:9010 -j RETURN",
            "-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 7140",
            "-A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN",
            "-A WEFT_OUTPUT -o lo -j RETURN",
            "-A WEFT_OUTPUT -p tcp --dport 5432 -j RETURN",
            "-A WEFT_OUTPUT -d 10.9.0.0/16 -j RETURN",
            "-A WEFT_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
            "-A WEFT_OUTPUT -o lo ! -d 127.0.0.0/8 -m owner --uid-owner 2102 -j WEFT_INBOUND",
        ] {
            assert!(lines.contains(&want), "{want} missing from\n{v4}");
        }
        // Exemptions come before the catch-all redirect of their chain.
        let pos = |l: &str| lines.iter().position(|x| *x == l).unwrap();
        assert!(
            pos("-A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN")
                < pos("-A WEFT_OUTPUT -p tcp -j WEFT_REDIRECT")
        );
        // The inbound side's forwards pass before the proxy's calls to its own pod turn
        // inbound, and both before the proxy's user is exempt.
        assert!(
            pos("-A WEFT_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN")
                < pos(
                    "-A WEFT_OUTPUT -o lo ! -d 127.0.0.0/8 -m owner --uid-owner 2102 -j WEFT_INBOUND"
                )
        );
        assert!(
            pos("-A WEFT_OUTPUT -o lo ! -d 127.0.0.0/8 -m owner --uid-owner 2102 -j WEFT_INBOUND")
                < pos("-A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN")
        );
        assert!(
            pos("-A WEFT_INBOUND -p tcp --dport 22 -j RETURN")
                < pos("-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT")
        );
        // Each family gets only its own address blocks.
        assert!(!v4.contains("fd00::/8"));
        let v6 = a.ruleset(Family::V6);
        assert!(v6.contains("-A WEFT_OUTPUT -d fd00::/8 -j RETURN"));
        assert!(!v6.contains("127.0.0"), "no IPv4 address in\n{v6}");
        assert!(!v6.contains("10.9.0.0/16"));
        // Over IPv6 the forwards come from ::6, and the proxy's calls to its pod turn inbound.
        let v6_lines: Vec<&str> = v6.lines().collect();
        let pos6 = |l: &str| v6_lines.iter().position(|x| *x == l).unwrap();
        let pass = pos6("-A WEFT_OUTPUT -o lo -s ::6/128 -j RETURN");
        let own =
            pos6("-A WEFT_OUTPUT -o lo ! -d ::1/128 -m owner --uid-owner 2102 -j WEFT_INBOUND");
        assert!(pass < own && own < pos6("-A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN"));
    }

    #[test]
    fn the_dry_run_prints_commands_a_shell_can_run() {
        let tools = |n: &str| Tools {
            iptables: PathBuf::from(format!("/usr/sbin/{n}")),
            restore: PathBuf::from(format!("/usr/sbin/{n}-restore")),
            save: PathBuf::from(format!("/usr/sbin/{n}-save")),
        };
        let both = [tools("iptables-nft"), tools("ip6tables-nft")];
        let steps = parse(&[]).plan(&both);
        let text: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 7);
        assert!(text[0].starts_with("/usr/sbin/iptables-nft-restore --noflush <<'EOF'\n*nat\n"));
        assert!(text[0].ends_with("COMMIT\nEOF"));
        assert_eq!(
            text[1],
            "/usr/sbin/iptables-nft -t nat -C PREROUTING -p tcp -j WEFT_INBOUND 2>/dev/null \
             || /usr/sbin/iptables-nft -t nat -A PREROUTING -p tcp -j WEFT_INBOUND"
        );
        // Over IPv6 the forward source is added first, then the rules that let it through.
        assert_eq!(text[3], "ip -6 addr replace ::6/128 dev lo nodad");
        assert!(text[4].starts_with("/usr/sbin/ip6tables-nft-restore --noflush"));
        let both_cleanup = parse(&["--cleanup"]).plan(&both);
        assert_eq!(
            both_cleanup.last().map(ToString::to_string).as_deref(),
            Some("ip -6 addr del ::6/128 dev lo 2>/dev/null || true")
        );
        let cleanup = parse(&["--cleanup"]).plan(&both[..1]);
        let text: Vec<String> = cleanup.iter().map(ToString::to_string).collect();
        assert_eq!(
            text[0],
            "while /usr/sbin/iptables-nft -t nat -C PREROUTING -p tcp -j WEFT_INBOUND 2>/dev/null; \
             do /usr/sbin/iptables-nft -t nat -D PREROUTING -p tcp -j WEFT_INBOUND; done"
        );
        assert_eq!(text.len(), 2 + CHAINS.len());
        assert!(text[2].contains("-F WEFT_OUTPUT && /usr/sbin/iptables-nft -t nat -X WEFT_OUTPUT"));
    }
}
