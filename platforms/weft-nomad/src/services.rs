//! From registrations (Nomad's or Consul's) to mesh services, by the rules both adapters
//! share:
//!
//! - every registered service is one mesh service `name.namespace` with one port,
//!   [`SERVICE_PORT`], since registrations carry no service port of their own (each instance
//!   has its own, often dynamic, port): clients name it (`--upstream api=127.0.0.1:9001`), or
//!   connect to an instance's address;
//! - an instance whose tags include [`MESH_TAG`] runs a Weft proxy and is reached with mutual
//!   TLS; the others in plaintext;
//! - a proxy that does not intercept the service's own port says where it listens with the
//!   tag `weft-inbound=<port>` ([`INBOUND_TAG`]); the mesh then connects there;
//! - `weft-protocol=http1|http2|grpc|opaque` ([`PROTOCOL_TAG`]) declares the protocol;
//!   without it, it is detected;
//! - every instance's identity is `spiffe://<trust domain>/ns/<namespace>/sa/<account>`, the
//!   same shape as a Kubernetes ServiceAccount identity, so policy reads the same on both. The
//!   account is the service's name, unless a tag `weft-account=<name>` ([`ACCOUNT_TAG`]) names
//!   another: a group whose one proxy fronts several services tags them all with one account,
//!   as pods of several Services share one ServiceAccount. Like a ServiceAccount, an account
//!   is a name within its namespace that whoever may run jobs there may use.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use weft_core::{
    Endpoint, EndpointState, Identity, Protocol, Service, ServiceName, ServicePort, TrustDomain,
    WorkloadKey,
};

/// The tag that marks an instance as running a Weft proxy.
pub const MESH_TAG: &str = "weft";

/// The tag prefix that gives the proxy's inbound port: `weft-inbound=<port>`.
pub const INBOUND_TAG: &str = "weft-inbound=";

/// The tag prefix that names the identity's account: `weft-account=<name>`.
pub const ACCOUNT_TAG: &str = "weft-account=";

/// The tag prefix that declares the service's protocol: `weft-protocol=<protocol>`.
pub const PROTOCOL_TAG: &str = "weft-protocol=";

/// The port number a Nomad or Consul service has in the mesh (`api.default:80`).
pub const SERVICE_PORT: u16 = 80;

/// One registered instance of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Its namespace (Nomad's, or Consul's; `default` where there is none).
    pub namespace: String,
    /// Its service's name.
    pub service: String,
    /// The workload behind it: a Nomad allocation (also for the Consul instances Nomad
    /// registered), or else a Consul node and service ID.
    pub workload: String,
    /// Where the application listens.
    pub address: IpAddr,
    /// Its port.
    pub port: u16,
    /// Its tags.
    pub tags: Vec<String>,
    /// Whether it passes its health checks (Consul's; Nomad's own registrations are always
    /// ready). One that fails them stays in the mesh as not ready: no traffic, and its
    /// workload keeps its inbound policy.
    pub ready: bool,
}

impl Instance {
    /// Whether a Weft proxy runs beside it.
    pub fn meshed(&self) -> bool {
        self.tags.iter().any(|t| t == MESH_TAG)
    }

    /// Where the mesh connects: the proxy's inbound port when a tag gives it, else the
    /// registered port.
    pub fn endpoint_addr(&self) -> SocketAddr {
        let inbound = self
            .tags
            .iter()
            .filter_map(|t| t.strip_prefix(INBOUND_TAG))
            .find_map(|p| p.parse::<u16>().ok().filter(|p| *p != 0));
        SocketAddr::new(self.address, inbound.unwrap_or(self.port))
    }

    /// The account of its identity: the `weft-account=` tag's, else the service's name.
    pub fn account(&self) -> &str {
        self.tags
            .iter()
            .find_map(|t| t.strip_prefix(ACCOUNT_TAG))
            .filter(|a| !a.is_empty())
            .unwrap_or(&self.service)
    }

    fn protocol(&self) -> Option<Protocol> {
        self.tags
            .iter()
            .filter_map(|t| t.strip_prefix(PROTOCOL_TAG))
            .find_map(|p| match p {
                "http1" | "http" => Some(Protocol::Http1),
                "http2" => Some(Protocol::Http2),
                "grpc" => Some(Protocol::Grpc),
                "opaque" | "tcp" => Some(Protocol::Opaque),
                _ => None,
            })
    }
}

/// Why an instance cannot join the mesh.
pub fn name_of(instance: &Instance) -> Result<ServiceName, String> {
    ServiceName::new(instance.namespace.clone(), instance.service.clone()).map_err(|_| {
        format!(
            "service {:?} in namespace {:?}: not a valid mesh service name (lowercase letters, digits and '-', at most 63)",
            weft_core::platform::clip(&instance.service, 80),
            weft_core::platform::clip(&instance.namespace, 80),
        )
    })
}

/// The mesh service of `name` from its instances (all of that name); `None` when none is
/// left.
pub fn build<'a>(
    trust_domain: &TrustDomain,
    name: &ServiceName,
    instances: impl IntoIterator<Item = &'a Instance>,
) -> Option<Service> {
    let mut endpoints: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
    let mut protocol = None;
    for i in instances {
        let meshed = i.meshed();
        let identity = Identity::new(trust_domain.clone(), &name.namespace, i.account()).ok();
        if meshed && identity.is_none() {
            continue;
        }
        protocol = protocol.or(i.protocol());
        let address = i.endpoint_addr();
        // Two instances at one address (a re-registration in flight): the meshed one wins.
        if endpoints.get(&address).is_some_and(|e| e.meshed && !meshed) {
            continue;
        }
        endpoints.insert(
            address,
            Endpoint {
                address,
                identity,
                meshed,
                workload: Some(WorkloadKey {
                    namespace: name.namespace.clone(),
                    name: i.workload.clone(),
                }),
                state: if i.ready {
                    EndpointState::Ready
                } else {
                    EndpointState::NotReady
                },
            },
        );
    }
    if endpoints.is_empty() {
        return None;
    }
    Some(Service {
        name: name.clone(),
        virtual_ips: Vec::new(),
        ports: vec![ServicePort {
            port: SERVICE_PORT,
            name: None,
            protocol: protocol.unwrap_or_default(),
            endpoints: endpoints.into_values().collect(),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(workload: &str, ip: &str, port: u16, tags: &[&str]) -> Instance {
        Instance {
            namespace: "default".into(),
            service: "api".into(),
            workload: workload.into(),
            address: ip.parse().unwrap(),
            port,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ready: true,
        }
    }

    #[test]
    fn tags_say_meshed_where_and_how() {
        let td = TrustDomain::new("weft.test").unwrap();
        let name = ServiceName::new("default", "api").unwrap();
        let all = [
            inst("a1", "10.0.0.1", 23456, &["weft", "weft-protocol=grpc"]),
            inst("a2", "10.0.0.2", 23457, &["weft", "weft-inbound=24000"]),
            inst("a3", "10.0.0.3", 8080, &["v1"]),
            inst("a4", "10.0.0.4", 8080, &["weft", "weft-account=shop"]),
        ];
        let s = build(&td, &name, &all).unwrap();
        assert_eq!(s.ports.len(), 1);
        let port = &s.ports[0];
        assert_eq!(port.port, SERVICE_PORT);
        assert_eq!(port.protocol, Protocol::Grpc);
        let eps: Vec<(String, bool)> = port
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.meshed))
            .collect();
        assert_eq!(
            eps,
            [
                ("10.0.0.1:23456".to_string(), true),
                ("10.0.0.2:24000".to_string(), true),
                ("10.0.0.3:8080".to_string(), false),
                ("10.0.0.4:8080".to_string(), true)
            ]
        );
        assert_eq!(
            port.endpoints[3].identity.as_ref().unwrap().to_string(),
            "spiffe://weft.test/ns/default/sa/shop"
        );
        assert_eq!(
            port.endpoints[0].identity.as_ref().unwrap().to_string(),
            "spiffe://weft.test/ns/default/sa/api"
        );
        assert!(build(&td, &name, &[]).is_none());
        let bad = Instance {
            service: "Bad_Name".into(),
            ..all[0].clone()
        };
        assert!(name_of(&bad).unwrap_err().contains("Bad_Name"));
    }
}
