//! The mesh's vocabulary: identities, services, their ports and endpoints, workloads.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Errors from parsing model values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    /// A trust domain that is not a lowercase DNS-like name.
    #[error("invalid trust domain {0:?}: use lowercase letters, digits, '.', '-' and '_'")]
    TrustDomain(String),
    /// A namespace or name segment that cannot appear in a SPIFFE ID.
    #[error(
        "invalid name {0:?}: use 1-63 lowercase letters, digits, '-', '_' or '.', and not \".\" or \"..\""
    )]
    Name(String),
    /// A SPIFFE ID that is not of the form `spiffe://<domain>/ns/<ns>/sa/<name>`.
    #[error("invalid SPIFFE ID {0:?}: expected spiffe://<trust-domain>/ns/<namespace>/sa/<name>")]
    SpiffeId(String),
    /// A service reference that is not `name` or `name.namespace`.
    #[error("invalid service name {0:?}: expected <name> or <name>.<namespace>")]
    Service(String),
    /// A discovery target that is neither `name.namespace[:port]` nor `ip:port`.
    #[error("invalid target {0:?}: expected <name>.<namespace>[:<port>] or <ip>:<port>")]
    Target(String),
    /// An unknown port protocol.
    #[error("unknown protocol {0:?}: expected auto, http1, http2, grpc or opaque")]
    Protocol(String),
}

/// The trust domain of a mesh: the authority part of every SPIFFE ID it issues.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TrustDomain(String);

/// A workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<name>` on every platform.
///
/// Cheap to clone: the parts are shared, so the endpoints of a workload (often hundreds of
/// them in a registry) hold one copy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity(Arc<IdentityParts>);

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct IdentityParts {
    trust_domain: TrustDomain,
    namespace: String,
    name: String,
}

/// A service, named within a namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    /// The namespace the service lives in.
    pub namespace: String,
    /// The service's name.
    pub name: String,
}

/// How traffic on a port is handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Detect HTTP/1.1 or HTTP/2 from the first bytes; anything else is forwarded as opaque TCP.
    #[default]
    Auto,
    /// HTTP/1.1, no detection.
    Http1,
    /// HTTP/2 with prior knowledge, no detection.
    Http2,
    /// gRPC (HTTP/2), no detection.
    Grpc,
    /// Opaque TCP: no detection, for server-speaks-first protocols such as MySQL or SMTP.
    Opaque,
}

/// Names a workload within one platform source: namespace and name. The registry keys it by
/// source as well, so two platforms may report the same names without colliding.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey {
    /// The namespace of the workload.
    pub namespace: String,
    /// The workload instance's name (pod name, Nomad allocation, local workload name).
    pub name: String,
}

/// A service as its platform declares it: its ports, each with its protocol and endpoints,
/// and the virtual addresses clients may dial instead of an endpoint (Kubernetes ClusterIPs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Namespace and name.
    pub name: ServiceName,
    /// Virtual addresses; each serves every port of the service.
    pub virtual_ips: Vec<IpAddr>,
    /// The ports, sorted by number, at most one per number.
    pub ports: Vec<ServicePort>,
}

/// One port of a service. Each port is balanced on its own: a multi-port service's ports may
/// be served by different workload ports, with different protocols.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port number clients use (on a virtual address, and in `name.namespace:port`).
    pub port: u16,
    /// The port's name, where the platform gives one.
    pub name: Option<String>,
    /// How traffic on the port is handled (Kubernetes `appProtocol`).
    pub protocol: Protocol,
    /// The endpoints, sorted by address, at most one per address.
    pub endpoints: Vec<Endpoint>,
}

/// Whether an endpoint takes new connections.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// Takes new connections.
    #[default]
    Ready,
    /// Still answers, but is not ready (Kubernetes: serving while terminating): used for new
    /// connections only while the port has no ready endpoint.
    Serving,
    /// On its way out: no new connections; those open are left to drain.
    Terminating,
    /// Running but not ready (starting, or failing its readiness checks): no connections at
    /// all, and never sent to proxies. It is kept so that the workload still declares what it
    /// serves: its proxy's inbound policy comes from the services that name it, whatever its
    /// readiness, never from which endpoints happen to be ready.
    #[serde(rename = "not-ready")]
    NotReady,
}

/// One address of a service port, with what a client must expect when connecting to it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// Where to connect: the workload's proxy, or the application itself when unmeshed.
    pub address: SocketAddr,
    /// The identity of the workload behind the endpoint, where the platform knows it.
    pub identity: Option<Identity>,
    /// Whether a Weft proxy fronts the endpoint: clients then use mutual TLS and check
    /// `identity`. The registry refuses a meshed endpoint without an identity.
    pub meshed: bool,
    /// The workload behind the endpoint, where the platform knows it.
    pub workload: Option<WorkloadKey>,
    /// Whether it takes new connections.
    pub state: EndpointState,
}

/// What a proxy asks discovery about: a service by name (and port, where the service has
/// several), or a destination address (a virtual address or an endpoint's own address).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A service by name; `port` picks one of its ports, `None` its only (or lowest) port.
    Service {
        /// The service.
        name: ServiceName,
        /// The service port.
        port: Option<u16>,
    },
    /// A destination address, as an intercepted connection had it.
    Address(SocketAddr),
}

/// The namespace of the control plane's own identity.
pub const CONTROL_NAMESPACE: &str = "weft-system";
/// The account of the control plane's own identity.
pub const CONTROL_ACCOUNT: &str = "weft-control";

// === impl TrustDomain ===

impl TrustDomain {
    /// Parses and checks a trust domain.
    pub fn new(domain: impl Into<String>) -> Result<Self, ModelError> {
        let domain = domain.into();
        let ok = !domain.is_empty()
            && domain.len() <= 255
            && domain.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        if ok {
            Ok(Self(domain))
        } else {
            Err(ModelError::TrustDomain(domain))
        }
    }

    /// The domain as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TrustDomain::new(s).map_err(serde::de::Error::custom)
    }
}

/// Checks a namespace or name segment.
///
/// Names become path segments (of SPIFFE IDs, and of the data directory for the mesh name), so
/// `.` and `..` are refused: they would point at the current or parent directory.
pub fn check_name(name: &str) -> Result<(), ModelError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 63
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(ModelError::Name(name.to_string()))
    }
}

// === impl Identity ===

impl Identity {
    /// Builds an identity from its parts, checking each.
    pub fn new(
        trust_domain: TrustDomain,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Result<Self, ModelError> {
        let namespace = namespace.into();
        let name = name.into();
        check_name(&namespace)?;
        check_name(&name)?;
        Ok(Self(Arc::new(IdentityParts {
            trust_domain,
            namespace,
            name,
        })))
    }

    /// Parses `spiffe://<trust-domain>/ns/<namespace>/sa/<name>`.
    pub fn parse_spiffe(uri: &str) -> Result<Self, ModelError> {
        let err = || ModelError::SpiffeId(uri.to_string());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(err)?;
        let mut parts = rest.split('/');
        let (Some(domain), Some("ns"), Some(ns), Some("sa"), Some(name), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(err());
        };
        let domain = TrustDomain::new(domain).map_err(|_| err())?;
        Identity::new(domain, ns, name).map_err(|_| err())
    }

    /// The control plane's identity in `trust_domain`; proxies accept no other server.
    pub fn control_plane(trust_domain: &TrustDomain) -> Self {
        Self(Arc::new(IdentityParts {
            trust_domain: trust_domain.clone(),
            namespace: CONTROL_NAMESPACE.to_string(),
            name: CONTROL_ACCOUNT.to_string(),
        }))
    }

    /// The SPIFFE ID as a URI string.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.0.trust_domain, self.0.namespace, self.0.name
        )
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.0.trust_domain
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    /// The account name (Kubernetes ServiceAccount, Nomad service identity, local workload).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Whether `other` is this identity's clone, sharing its parts (not merely equal).
    pub fn shares_parts_with(&self, other: &Identity) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spiffe_id())
    }
}

impl FromStr for Identity {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_spiffe(s)
    }
}

// === impl ServiceName ===

impl ServiceName {
    /// Builds a service name, checking both parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Result<Self, ModelError> {
        let namespace = namespace.into();
        let name = name.into();
        check_name(&namespace).map_err(|_| ModelError::Service(format!("{name}.{namespace}")))?;
        check_name(&name).map_err(|_| ModelError::Service(format!("{name}.{namespace}")))?;
        if name.contains('.') {
            return Err(ModelError::Service(name));
        }
        Ok(Self { namespace, name })
    }

    /// Parses `name` (in `default_namespace`) or `name.namespace`.
    pub fn parse(s: &str, default_namespace: &str) -> Result<Self, ModelError> {
        match s.split_once('.') {
            Some((name, ns)) => Self::new(ns, name),
            None => Self::new(default_namespace, s),
        }
        .map_err(|_| ModelError::Service(s.to_string()))
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

// === impl Protocol ===

impl Protocol {
    /// The protocol's name as written in config files and on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Auto => "auto",
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Opaque => "opaque",
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for Protocol {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" | "" => Protocol::Auto,
            "http1" | "http" => Protocol::Http1,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "opaque" | "tcp" => Protocol::Opaque,
            other => return Err(ModelError::Protocol(other.to_string())),
        })
    }
}

// === impl Endpoint ===

impl Endpoint {
    /// The identity a client must check over mutual TLS; `None` for plaintext.
    pub fn tls_identity(&self) -> Option<&Identity> {
        if self.meshed {
            self.identity.as_ref()
        } else {
            None
        }
    }
}

// === impl Service ===

impl Service {
    /// The port numbered `port`.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports
            .binary_search_by_key(&port, |p| p.port)
            .ok()
            .map(|i| &self.ports[i])
    }

    /// Every address that leads to a port of this service: each virtual address with each
    /// port, then each endpoint's address, with the port number it belongs to.
    pub fn addresses(&self) -> impl Iterator<Item = (SocketAddr, u16, AddressKind)> + '_ {
        let virtuals = self.ports.iter().flat_map(move |p| {
            self.virtual_ips
                .iter()
                .map(move |ip| (SocketAddr::new(*ip, p.port), p.port, AddressKind::Virtual))
        });
        let endpoints = self.ports.iter().flat_map(|p| {
            p.endpoints
                .iter()
                .map(move |e| (e.address, p.port, AddressKind::Endpoint))
        });
        virtuals.chain(endpoints)
    }
}

/// How an address belongs to a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressKind {
    /// A virtual address of the service (balanced over all its endpoints).
    Virtual,
    /// One endpoint's own address.
    Endpoint,
}

// === impl Target ===

impl Target {
    /// Parses `ip:port`, or a service as `name` (in `default_namespace`), `name.namespace`, with
    /// an optional `:port`.
    pub fn parse(s: &str, default_namespace: &str) -> Result<Self, ModelError> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Target::Address(addr));
        }
        let err = || ModelError::Target(s.to_string());
        let (name, port) = match s.rsplit_once(':') {
            Some((name, port)) => (name, Some(port.parse::<u16>().map_err(|_| err())?)),
            None => (s, None),
        };
        if port == Some(0) {
            return Err(err());
        }
        let name = ServiceName::parse(name, default_namespace).map_err(|_| err())?;
        Ok(Target::Service { name, port })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Service { name, port: None } => write!(f, "{name}"),
            Target::Service {
                name,
                port: Some(port),
            } => write!(f, "{name}:{port}"),
            Target::Address(addr) => write!(f, "{addr}"),
        }
    }
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_round_trip() {
        let td = TrustDomain::new("weft.local").unwrap();
        let id = Identity::new(td, "demo", "web").unwrap();
        assert_eq!(id.spiffe_id(), "spiffe://weft.local/ns/demo/sa/web");
        assert_eq!(Identity::parse_spiffe(&id.spiffe_id()).unwrap(), id);
    }

    #[test]
    fn spiffe_rejects_malformed() {
        for bad in [
            "http://weft.local/ns/a/sa/b",
            "spiffe://weft.local/ns/a/sa",
            "spiffe://weft.local/ns/a/sa/b/c",
            "spiffe://Weft/ns/a/sa/b",
            "spiffe://weft.local/ns//sa/b",
            "spiffe://weft.local/sa/a/ns/b",
            "spiffe://weft.local/ns/../sa/b",
            "spiffe://weft.local/ns/./sa/b",
            "spiffe://weft.local/ns/a/sa/..",
            "spiffe://weft.local/ns/a/sa/.",
        ] {
            assert!(Identity::parse_spiffe(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn dot_and_dot_dot_are_not_names() {
        for bad in [".", ".."] {
            assert_eq!(check_name(bad), Err(ModelError::Name(bad.to_string())));
            let td = TrustDomain::new("weft.local").unwrap();
            assert!(Identity::new(td.clone(), bad, "web").is_err(), "{bad}");
            assert!(Identity::new(td, "demo", bad).is_err(), "{bad}");
        }
        // Dots elsewhere stay legal, as they were.
        for good in ["a.b", "...", ".hidden", "v1.2"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        assert!(ServiceName::parse("api...", "demo").is_err());
    }

    #[test]
    fn targets() {
        let t = Target::parse("api.prod:8080", "demo").unwrap();
        assert_eq!(t.to_string(), "api.prod:8080");
        assert_eq!(
            Target::parse("api", "demo").unwrap(),
            Target::Service {
                name: ServiceName::new("demo", "api").unwrap(),
                port: None
            }
        );
        assert_eq!(
            Target::parse("10.0.0.1:80", "demo").unwrap(),
            Target::Address(([10, 0, 0, 1], 80).into())
        );
        assert!(matches!(
            Target::parse("[::1]:80", "demo").unwrap(),
            Target::Address(_)
        ));
        for bad in ["api:0", "api:x", "API", "10.0.0.1:99999", ""] {
            assert!(Target::parse(bad, "demo").is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn service_names() {
        let s = ServiceName::parse("api", "demo").unwrap();
        assert_eq!(s.to_string(), "api.demo");
        assert_eq!(
            ServiceName::parse("api.prod", "demo").unwrap().namespace,
            "prod"
        );
        assert!(ServiceName::parse("API", "demo").is_err());
    }
}
