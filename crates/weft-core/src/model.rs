//! The mesh's vocabulary: identities, services, workloads and endpoints.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

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
    /// An unknown port protocol.
    #[error("unknown protocol {0:?}: expected auto, http1, http2, grpc or opaque")]
    Protocol(String),
}

/// The trust domain of a mesh: the authority part of every SPIFFE ID it issues.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TrustDomain(String);

/// A workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<name>` on every platform.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
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

/// Uniquely names a workload within the registry: platform source, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey {
    /// The namespace of the workload.
    pub namespace: String,
    /// The workload instance's name (pod name, Nomad allocation, local workload name).
    pub name: String,
}

/// One running instance of an application, as a platform adapter reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Namespace and name.
    pub key: WorkloadKey,
    /// The identity the workload's proxy is certified for.
    pub identity: Identity,
    /// The service this workload serves, if any.
    pub service: Option<ServiceName>,
    /// The address peers dial to reach the workload (its proxy's inbound listener when meshed).
    pub address: SocketAddr,
    /// The protocol of the workload's port.
    pub protocol: Protocol,
    /// Whether a Weft proxy fronts the workload (peers then use mutual TLS).
    pub meshed: bool,
    /// Free-form labels (Kubernetes labels, Nomad meta).
    pub labels: BTreeMap<String, String>,
}

/// One address of a service, with what a client must expect when connecting to it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// Where to connect.
    pub address: SocketAddr,
    /// The identity the server must prove; `None` for an endpoint without a proxy (plaintext).
    pub identity: Option<Identity>,
    /// The workload behind the endpoint.
    pub workload: WorkloadKey,
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
        Ok(Self {
            trust_domain,
            namespace,
            name,
        })
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
        Self {
            trust_domain: trust_domain.clone(),
            namespace: CONTROL_NAMESPACE.to_string(),
            name: CONTROL_ACCOUNT.to_string(),
        }
    }

    /// The SPIFFE ID as a URI string.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.name
        )
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The account name (Kubernetes ServiceAccount, Nomad service identity, local workload).
    pub fn name(&self) -> &str {
        &self.name
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
