//! The proxy's settings: flags with `WEFT_PROXY_*` environment equivalents, so the same binary
//! fits a pod spec and a Nomad task.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

/// Weft sidecar proxy.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "weft-proxy",
    version,
    after_help = "Transparent mode: `weft-proxy init --help` writes the nat-table rules it needs."
)]
pub struct ProxyConfig {
    /// The control plane's gRPC address: `ip:port`, or `name:port` (such as
    /// `weft-control.weft.svc:7443`), resolved again for every new connection.
    #[arg(
        long,
        env = "WEFT_PROXY_CONTROL_ADDR",
        default_value = "127.0.0.1:7443"
    )]
    pub control_addr: ControlAddr,
    /// The mesh's trust domain.
    #[arg(long, env = "WEFT_PROXY_TRUST_DOMAIN", default_value = "weft.local")]
    pub trust_domain: String,
    /// PEM file with the mesh roots, to trust the control plane before the first certificate.
    #[arg(
        long,
        env = "WEFT_PROXY_TRUST_BUNDLE",
        required_unless_present = "trust_bundle_pem"
    )]
    pub trust_bundle: Option<PathBuf>,
    /// The mesh roots as PEM text, instead of a file (the sidecar injector sets it, so a pod
    /// needs no ConfigMap of its own namespace).
    #[arg(
        long,
        env = "WEFT_PROXY_TRUST_BUNDLE_PEM",
        conflicts_with = "trust_bundle",
        hide_env_values = true
    )]
    pub trust_bundle_pem: Option<String>,
    /// The workload's namespace.
    #[arg(long, env = "WEFT_PROXY_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The workload's name, as its platform's registry keys it: the pod's name on Kubernetes,
    /// the allocation ID on Nomad (`${NOMAD_ALLOC_ID}`), the workload's name on the local
    /// platform. Attestation checks it against the credential, and the control plane finds the
    /// proxy's inbound policy under it.
    #[arg(long, env = "WEFT_PROXY_WORKLOAD")]
    pub workload: String,
    /// The identity's account name (ServiceAccount, Nomad service or `weft-account=` tag);
    /// defaults to the workload name.
    #[arg(long, env = "WEFT_PROXY_ACCOUNT")]
    pub account: Option<String>,
    /// The platform whose credential the proxy presents.
    #[arg(long, env = "WEFT_PROXY_PLATFORM", default_value = "local")]
    pub platform: String,
    /// File holding the platform credential (bootstrap token, ServiceAccount token, JWT); read
    /// again at each renewal, since platforms rotate them.
    #[arg(long, env = "WEFT_PROXY_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// The inbound listener (mutual TLS from peers).
    #[arg(long, env = "WEFT_PROXY_INBOUND_ADDR", default_value = "0.0.0.0:7143")]
    pub inbound_addr: SocketAddr,
    /// The local application's port; without it (and without `--transparent`) the proxy has
    /// no inbound listener.
    #[arg(long, env = "WEFT_PROXY_APP_PORT")]
    pub app_port: Option<u16>,
    /// Transparent mode, behind the rules of `weft-proxy init`: the inbound listener forwards
    /// each connection to its original destination (every port of the application), and the
    /// outbound listener carries every connection the application opens.
    #[arg(long, env = "WEFT_PROXY_TRANSPARENT", conflicts_with = "app_port")]
    pub transparent: bool,
    /// The transparent outbound listener (IPv4 loopback, where the nat table's REDIRECT sends
    /// the application's connections). The same port on ::1 is listened on too when the host
    /// has IPv6.
    #[arg(
        long,
        env = "WEFT_PROXY_OUTBOUND_ADDR",
        default_value = "127.0.0.1:7140"
    )]
    pub outbound_addr: SocketAddr,
    /// The most destinations (services and addresses) the proxy resolves at once; past it, the
    /// one unused the longest is dropped, and a connection is refused when all are in use.
    #[arg(long, env = "WEFT_PROXY_MAX_DESTINATIONS", default_value_t = 1000)]
    pub max_destinations: usize,
    /// An upstream: `service=listen-addr` (repeatable), e.g. `api=127.0.0.1:9001`,
    /// `api.prod=127.0.0.1:9002`, or `api.prod:8080=127.0.0.1:9003` for one port of a
    /// multi-port service.
    #[arg(long = "upstream", env = "WEFT_PROXY_UPSTREAMS", value_delimiter = ',')]
    pub upstreams: Vec<Upstream>,
    /// The admin listener (`/live`, `/ready`, `/metrics`, and `/shutdown` when enabled).
    #[arg(long, env = "WEFT_PROXY_ADMIN_ADDR", default_value = "127.0.0.1:7191")]
    pub admin_addr: SocketAddr,
    /// Enables `POST /shutdown` on the admin listener (from loopback, with the header
    /// `weft-admin-action: shutdown`). Off by default.
    #[arg(long, env = "WEFT_PROXY_ADMIN_SHUTDOWN")]
    pub admin_shutdown: bool,
    /// A listener serving only `/live`, `/ready` and the application's probes
    /// (`/app-health/...`), with connection slots of its own, for platform probes (injected
    /// pods: `0.0.0.0:7192`).
    #[arg(long, env = "WEFT_PROXY_PROBE_ADDR")]
    pub probe_addr: Option<SocketAddr>,
    /// The tap listener: `Tap.Watch` over mutual TLS, for the control plane (and the
    /// identities the mesh allows) to watch requests live. None: no tap.
    #[arg(long, env = "WEFT_PROXY_TAP_ADDR")]
    pub tap_addr: Option<SocketAddr>,
    /// Where the control plane reaches the tap listener, when that is not its own address (a
    /// port the platform maps, such as Nomad's `${NOMAD_HOST_ADDR_weft_tap}`).
    #[arg(long, env = "WEFT_PROXY_TAP_ADVERTISE")]
    pub tap_advertise: Option<SocketAddr>,
    /// How often the proxy reports its traffic counters to the control plane (for `weft stat`
    /// and the dashboard).
    #[arg(long, env = "WEFT_PROXY_REPORT_INTERVAL", default_value = "5s", value_parser = humantime_duration)]
    pub report_interval: Duration,
    /// The application's own health probes, which the admin and probe listeners run at
    /// `/app-health/<name>` on the kubelet's behalf (JSON; the sidecar injector writes it).
    #[arg(long, env = "WEFT_PROXY_APP_PROBES", value_parser = crate::app_probe::parse)]
    pub app_probes: Option<crate::app_probe::AppProbes>,
    /// How long to wait for a client's first bytes before treating the connection as opaque.
    #[arg(long, env = "WEFT_PROXY_DETECT_TIMEOUT", default_value = "1s", value_parser = humantime_duration)]
    pub detect_timeout: Duration,
    /// How long to wait for a connection to an endpoint.
    #[arg(long, env = "WEFT_PROXY_CONNECT_TIMEOUT", default_value = "3s", value_parser = humantime_duration)]
    pub connect_timeout: Duration,
    /// How long a request may wait for a usable endpoint before it fails with 503.
    #[arg(long, env = "WEFT_PROXY_DISPATCH_TIMEOUT", default_value = "3s", value_parser = humantime_duration)]
    pub dispatch_timeout: Duration,
    /// How long a destination may go unused before its resolve stream is closed.
    #[arg(long, env = "WEFT_PROXY_RESOLVE_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime_duration)]
    pub resolve_idle_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM or `/shutdown`.
    #[arg(long, env = "WEFT_PROXY_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime_duration)]
    pub drain_timeout: Duration,
    /// Log as JSON lines.
    #[arg(long, env = "WEFT_PROXY_LOG_JSON")]
    pub log_json: bool,
    /// The access log: `common`, `json` or `off`; wins over the mesh file's
    /// `[[observability.access_log]]` (the injectors set it from a pod's `weft.dev/access-log`
    /// annotation or a Nomad job, group or task's `weft_access_log` meta key). Unset: the mesh
    /// file decides.
    #[arg(long, env = "WEFT_PROXY_ACCESS_LOG", value_parser = access_log_format)]
    pub access_log: Option<weft_core::observability::AccessLogFormat>,
}

fn access_log_format(s: &str) -> Result<weft_core::observability::AccessLogFormat, String> {
    weft_core::observability::AccessLogFormat::parse(s)
        .ok_or_else(|| format!("{s:?}: expected common, json or off"))
}

/// Where the control plane is: an address, or a DNS name and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlAddr {
    /// An IP address and port.
    Addr(SocketAddr),
    /// A DNS name and port, looked up for each connection, so a control plane that moves
    /// (a Service's pods, a Nomad allocation) is found again.
    Name {
        /// The DNS name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl ControlAddr {
    /// The addresses to try, in the resolver's order.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            ControlAddr::Addr(a) => Ok(vec![*a]),
            ControlAddr::Name { host, port } => {
                let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                    .await?
                    .collect();
                if found.is_empty() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{host} has no address"),
                    ));
                }
                Ok(found)
            }
        }
    }
}

impl From<SocketAddr> for ControlAddr {
    fn from(a: SocketAddr) -> Self {
        ControlAddr::Addr(a)
    }
}

impl std::fmt::Display for ControlAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlAddr::Addr(a) => a.fmt(f),
            ControlAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl FromStr for ControlAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(ControlAddr::Addr(a));
        }
        let bad =
            |why: &str| format!("control address {s:?}: {why}; expected ip:port or name:port");
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        // A DNS name: labels of letters, digits and hyphens, dot-separated, a trailing dot
        // allowed.
        let name = host.strip_suffix('.').unwrap_or(host);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(bad("not an IP address or a DNS name"));
        }
        Ok(ControlAddr::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// One `--upstream service=addr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// The service, `name` (in the proxy's namespace) or `name.namespace`.
    pub service: String,
    /// Where the proxy listens for the application's calls to it.
    pub listen: SocketAddr,
}

impl FromStr for Upstream {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (service, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("upstream {s:?}: expected service=ip:port"))?;
        let listen = addr
            .parse()
            .map_err(|e| format!("upstream {s:?}: bad address {addr:?}: {e}"))?;
        if service.is_empty() {
            return Err(format!("upstream {s:?}: empty service name"));
        }
        Ok(Self {
            service: service.to_string(),
            listen,
        })
    }
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("bad duration {s:?}: {e}"))
}

impl ProxyConfig {
    /// Where the bootstrap trust bundle comes from, for messages: the file, or the variable.
    pub fn bundle_source(&self) -> PathBuf {
        match &self.trust_bundle {
            Some(p) => p.clone(),
            None => PathBuf::from("WEFT_PROXY_TRUST_BUNDLE_PEM"),
        }
    }

    /// The bootstrap trust bundle's PEM text.
    pub fn bundle_pem(&self) -> std::io::Result<Vec<u8>> {
        match (&self.trust_bundle, &self.trust_bundle_pem) {
            (Some(p), _) => std::fs::read(p),
            (None, Some(pem)) => Ok(pem.as_bytes().to_vec()),
            (None, None) => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "neither --trust-bundle nor --trust-bundle-pem is set",
            )),
        }
    }

    /// Checks what clap cannot.
    pub fn check(&self) -> Result<(), String> {
        self.identity()?;
        for u in &self.upstreams {
            match weft_core::Target::parse(&u.service, &self.namespace) {
                Ok(weft_core::Target::Service { .. }) => {}
                Ok(weft_core::Target::Address(_)) => {
                    return Err(format!(
                        "upstream {}: expected a service name, not an address",
                        u.service
                    ));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// The identity account.
    pub fn account(&self) -> &str {
        self.account.as_deref().unwrap_or(&self.workload)
    }

    /// The identity this proxy asks for.
    pub fn identity(&self) -> Result<weft_core::Identity, String> {
        let td =
            weft_core::TrustDomain::new(self.trust_domain.clone()).map_err(|e| e.to_string())?;
        weft_core::Identity::new(td, &self.namespace, self.account()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_addresses_are_ips_or_dns_names() {
        let ok = |s: &str| s.parse::<ControlAddr>().unwrap().to_string();
        assert_eq!(ok("10.0.0.1:7443"), "10.0.0.1:7443");
        assert_eq!(ok("[::1]:7443"), "[::1]:7443");
        assert_eq!(
            ok("weft-control.weft.svc:7443"),
            "weft-control.weft.svc:7443"
        );
        assert_eq!(
            ok("Weft-Control.weft.svc.cluster.local.:7443"),
            "weft-control.weft.svc.cluster.local.:7443"
        );
        for bad in [
            "weft-control",
            "weft-control:",
            "weft-control:0",
            "weft-control:99999",
            ":7443",
            "-bad.svc:7443",
            "a..b:7443",
            "under_score:7443",
            "http://weft-control:7443",
        ] {
            assert!(bad.parse::<ControlAddr>().is_err(), "{bad} was accepted");
        }
    }

    #[tokio::test]
    async fn a_name_is_looked_up_each_time() {
        let addr: ControlAddr = "localhost:7443".parse().unwrap();
        let found = addr.resolve().await.unwrap();
        assert!(!found.is_empty());
        assert!(
            found
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 7443)
        );
    }
}
