//! What the adapter keeps of the cluster, and how it becomes registry services.
//!
//! Only the fields the mesh needs are kept (a few hundred bytes per object, not the whole
//! object), in maps that also index which services each EndpointSlice and Pod touches, so a
//! change recomputes only the services it affects.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1 as core;
use weft_core::policy::traffic::{SourcePolicies, SourceRoutes};

use crate::policies::{
    AuthorizationPolicyObject, BackendPolicyObject, PolicyKind, PolicyStatus, PolicyStore,
    RateLimitPolicyObject, RoutePolicyObject,
};
use crate::routes::{
    GrpcRouteObject, HttpRouteObject, RouteInfo, RouteKind, RouteStore, StatusUpdate,
};
use k8s_openapi::api::discovery::v1 as discovery;
use weft_core::{
    Endpoint, EndpointState, Identity, Protocol, Service, ServiceName, ServicePort, TrustDomain,
    WorkloadKey,
};

/// The name of the container that runs the Weft proxy in a meshed pod (a native sidecar in
/// `initContainers`, or a classic sidecar in `containers`).
pub const PROXY_CONTAINER: &str = "weft-proxy";

/// The Service (or Pod) annotation listing ports (numbers or names, comma-separated) whose traffic is
/// opaque TCP: no protocol detection, for protocols where the server speaks first.
pub const OPAQUE_PORTS_ANNOTATION: &str = "weft.dev/opaque-ports";

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Each known namespace's `weft.dev/inject` annotation.
pub(crate) type SharedNamespaces =
    std::sync::Arc<std::sync::RwLock<HashMap<String, Option<String>>>>;

/// A namespaced object's namespace and name.
pub(crate) type Key = (String, String);

/// What the mesh needs of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceInfo {
    /// ClusterIPs (none for a headless Service).
    pub virtual_ips: Vec<IpAddr>,
    /// TCP ports.
    pub ports: Vec<PortInfo>,
    /// `type: ExternalName`: a DNS alias with no endpoints, not a mesh service.
    pub external_name: bool,
}

/// One TCP port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PortInfo {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// What the mesh needs of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SliceInfo {
    /// The Service it belongs to (its `kubernetes.io/service-name` label), if any.
    pub service: Option<String>,
    /// Its TCP ports, by Service port name, resolved to the endpoints' port numbers.
    pub ports: Vec<(Option<String>, u16)>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SliceEndpoint {
    pub ip: IpAddr,
    pub state: EndpointState,
    /// The pod behind it (in the slice's namespace), if the slice names one.
    pub pod: Option<String>,
}

/// What the mesh needs of a Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodInfo {
    pub uid: String,
    pub account: String,
    /// Whether the Weft proxy runs beside it.
    pub meshed: bool,
    /// The ports its `weft.dev/opaque-ports` annotation names (numbers, or names of its
    /// containers' ports): a service port that reaches one of them is opaque.
    pub opaque_ports: BTreeSet<u16>,
}

/// What the mesh needs of a Namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NamespaceInfo {
    /// Its `weft.dev/inject` annotation.
    pub inject: Option<String>,
}

/// The kinds the adapter watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Namespace,
    Service,
    Slice,
    Pod,
    HttpRoute,
    GrpcRoute,
    AuthorizationPolicy,
    RateLimitPolicy,
    BackendPolicy,
    RoutePolicy,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::Slice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RateLimitPolicy => "RateLimitPolicy",
            Kind::BackendPolicy => "BackendPolicy",
            Kind::RoutePolicy => "RoutePolicy",
        }
    }

    /// The policy kind this is, if it is one.
    fn policy(self) -> Option<PolicyKind> {
        match self {
            Kind::AuthorizationPolicy => Some(PolicyKind::Authorization),
            Kind::RateLimitPolicy => Some(PolicyKind::RateLimit),
            Kind::BackendPolicy => Some(PolicyKind::Backend),
            _ => None,
        }
    }

    /// The route kind this is, if it is one.
    fn route(self) -> Option<RouteKind> {
        match self {
            Kind::HttpRoute => Some(RouteKind::Http),
            Kind::GrpcRoute => Some(RouteKind::Grpc),
            Kind::RoutePolicy => Some(RouteKind::Policy),
            _ => None,
        }
    }
}

/// One watched object, reduced to what the mesh needs.
#[derive(Clone, Debug)]
pub(crate) enum Object {
    Namespace(String, NamespaceInfo),
    Service(Key, ServiceInfo),
    Slice(Key, SliceInfo),
    Pod(Key, PodInfo),
    Route(RouteKind, Key, RouteInfo),
    Policy(PolicyKind, Key, RouteInfo),
}

impl Object {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Object::Namespace(..) => Kind::Namespace,
            Object::Service(..) => Kind::Service,
            Object::Slice(..) => Kind::Slice,
            Object::Pod(..) => Kind::Pod,
            Object::Route(RouteKind::Http, ..) => Kind::HttpRoute,
            Object::Route(RouteKind::Grpc, ..) => Kind::GrpcRoute,
            Object::Route(RouteKind::Policy, ..) => Kind::RoutePolicy,
            Object::Policy(PolicyKind::Authorization, ..) => Kind::AuthorizationPolicy,
            Object::Policy(PolicyKind::RateLimit, ..) => Kind::RateLimitPolicy,
            Object::Policy(PolicyKind::Backend, ..) => Kind::BackendPolicy,
        }
    }

    fn key(&self) -> Key {
        match self {
            Object::Namespace(name, _) => (String::new(), name.clone()),
            Object::Service(k, _) | Object::Slice(k, _) | Object::Pod(k, _) => k.clone(),
            Object::Route(_, k, _) | Object::Policy(_, k, _) => k.clone(),
        }
    }
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

// === conversions ===

impl From<&HttpRouteObject> for Object {
    fn from(r: &HttpRouteObject) -> Self {
        Object::Route(
            RouteKind::Http,
            key_of(&r.metadata),
            RouteInfo::of(&r.metadata, &r.spec),
        )
    }
}

impl From<&GrpcRouteObject> for Object {
    fn from(r: &GrpcRouteObject) -> Self {
        Object::Route(
            RouteKind::Grpc,
            key_of(&r.metadata),
            RouteInfo::of(&r.metadata, &r.spec),
        )
    }
}

impl From<&AuthorizationPolicyObject> for Object {
    fn from(p: &AuthorizationPolicyObject) -> Self {
        Object::Policy(
            PolicyKind::Authorization,
            key_of(&p.metadata),
            RouteInfo::of(&p.metadata, &p.spec),
        )
    }
}

impl From<&RoutePolicyObject> for Object {
    fn from(p: &RoutePolicyObject) -> Self {
        Object::Route(
            RouteKind::Policy,
            key_of(&p.metadata),
            RouteInfo::of(&p.metadata, &p.spec),
        )
    }
}

impl From<&BackendPolicyObject> for Object {
    fn from(p: &BackendPolicyObject) -> Self {
        Object::Policy(
            PolicyKind::Backend,
            key_of(&p.metadata),
            RouteInfo::of(&p.metadata, &p.spec),
        )
    }
}

impl From<&RateLimitPolicyObject> for Object {
    fn from(p: &RateLimitPolicyObject) -> Self {
        Object::Policy(
            PolicyKind::RateLimit,
            key_of(&p.metadata),
            RouteInfo::of(&p.metadata, &p.spec),
        )
    }
}

impl From<&core::Namespace> for Object {
    fn from(ns: &core::Namespace) -> Self {
        let inject = ns
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::INJECT_ANNOTATION))
            .cloned();
        Object::Namespace(
            ns.metadata.name.clone().unwrap_or_default(),
            NamespaceInfo { inject },
        )
    }
}

impl From<&core::Service> for Object {
    fn from(svc: &core::Service) -> Self {
        let spec = svc.spec.clone().unwrap_or_default();
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .unwrap_or_default()
            .iter()
            .chain(spec.cluster_ip.as_ref())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();
        let opaque: BTreeSet<&str> = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(OPAQUE_PORTS_ANNOTATION))
            .map(|v| v.split(',').map(str::trim).collect())
            .unwrap_or_default();
        let ports = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok().filter(|p| *p != 0)?;
                let name = p.name.filter(|n| !n.is_empty());
                let declared_opaque = opaque.contains(port.to_string().as_str())
                    || name.as_deref().is_some_and(|n| opaque.contains(n));
                let protocol = if declared_opaque {
                    Protocol::Opaque
                } else {
                    protocol_of(p.app_protocol.as_deref(), name.as_deref())
                };
                Some(PortInfo {
                    name,
                    port,
                    protocol,
                })
            })
            .collect();
        Object::Service(
            key_of(&svc.metadata),
            ServiceInfo {
                virtual_ips: ips,
                ports,
                external_name: spec.type_.as_deref() == Some("ExternalName"),
            },
        )
    }
}

/// A Service port's protocol: its `appProtocol` first, then the prefix of its name (`grpc-api`,
/// `http-web`, as Istio reads them), else detected.
pub(crate) fn protocol_of(app_protocol: Option<&str>, name: Option<&str>) -> Protocol {
    let by_app = app_protocol.and_then(|a| match a.to_ascii_lowercase().as_str() {
        "grpc" | "grpc-web" => Some(Protocol::Grpc),
        "kubernetes.io/h2c" | "http2" | "h2c" => Some(Protocol::Http2),
        "http" | "kubernetes.io/ws" => Some(Protocol::Http1),
        "tcp" | "mysql" | "postgresql" | "postgres" | "redis" | "mongo" | "mongodb" | "smtp"
        | "amqp" | "kafka" | "memcached" | "nats" | "tls" | "https" | "kubernetes.io/wss" => {
            Some(Protocol::Opaque)
        }
        _ => None,
    });
    if let Some(p) = by_app {
        return p;
    }
    let prefix = name
        .map(|n| n.split_once('-').map_or(n, |(p, _)| p))
        .unwrap_or_default();
    match prefix {
        "grpc" => Protocol::Grpc,
        "http2" | "h2c" => Protocol::Http2,
        "http" => Protocol::Http1,
        "tcp" | "mysql" | "postgres" | "postgresql" | "redis" | "mongo" | "smtp" | "tls"
        | "https" => Protocol::Opaque,
        _ => Protocol::Auto,
    }
}

impl From<&discovery::EndpointSlice> for Object {
    fn from(slice: &discovery::EndpointSlice) -> Self {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned();
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        let ip_slice = matches!(slice.address_type.as_str(), "IPv4" | "IPv6");
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
            .filter_map(|p| {
                let port = u16::try_from(p.port?).ok().filter(|p| *p != 0)?;
                Some((p.name.clone().filter(|n| !n.is_empty()), port))
            })
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .filter(|_| ip_slice)
            .filter_map(|e| {
                // Addresses of one endpoint are fungible; the first is used.
                let ip: IpAddr = e.addresses.first()?.parse().ok()?;
                let state = state_of(e.conditions.as_ref());
                let pod = e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .filter(|r| r.namespace.as_deref().is_none_or(|n| n == ns))
                    .and_then(|r| r.name.clone());
                Some(SliceEndpoint { ip, state, pod })
            })
            .collect();
        Object::Slice(
            key_of(&slice.metadata),
            SliceInfo {
                service,
                ports,
                endpoints,
            },
        )
    }
}

/// An endpoint's state from its conditions.
///
/// Ready endpoints take new connections. A terminating endpoint that still passes its
/// readiness checks (serving) is used only while its port has no ready endpoint, as
/// kube-proxy does. A terminating endpoint that no longer serves takes no new connections,
/// but its open ones drain rather than being cut. An endpoint that is neither ready nor
/// terminating (starting, or failing its readiness probe) takes no traffic at all, but stays
/// in the registry: its pod still serves the Service's port, so the pod's proxy keeps the
/// Service's inbound rules.
fn state_of(c: Option<&discovery::EndpointConditions>) -> EndpointState {
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    if ready && !terminating {
        EndpointState::Ready
    } else if terminating && serving {
        EndpointState::Serving
    } else if terminating {
        EndpointState::Terminating
    } else {
        EndpointState::NotReady
    }
}

impl From<&core::Pod> for Object {
    fn from(pod: &core::Pod) -> Self {
        let spec = pod.spec.as_ref();
        let account = spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let meshed = !host_network
            && spec.is_some_and(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .any(|c| c.name == PROXY_CONTAINER)
            });
        let named: BTreeMap<&str, u16> = spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| Some((p.name.as_deref()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        let opaque_ports = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(OPAQUE_PORTS_ANNOTATION))
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter_map(|p| p.parse::<u16>().ok().or_else(|| named.get(p).copied()))
                    .collect()
            })
            .unwrap_or_default();
        Object::Pod(
            key_of(&pod.metadata),
            PodInfo {
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                account,
                meshed,
                opaque_ports,
            },
        )
    }
}

// === the cluster ===

/// Which objects a watch stream covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every namespace.
    All,
    /// One namespace (for a Namespace watch: that Namespace object).
    Namespace(String),
}

impl Scope {
    fn covers(&self, kind: Kind, key: &Key) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespace(ns) if kind == Kind::Namespace => key.1 == *ns,
            Scope::Namespace(ns) => key.0 == *ns,
        }
    }
}

/// The adapter's view of the cluster, with the services a change has made stale.
#[derive(Debug)]
pub(crate) struct Cluster {
    trust_domain: TrustDomain,
    namespaces: HashMap<String, NamespaceInfo>,
    /// Each namespace's `weft.dev/inject` annotation, shared with the webhook.
    shared_namespaces: SharedNamespaces,
    services: HashMap<Key, ServiceInfo>,
    slices: HashMap<Key, SliceInfo>,
    pods: HashMap<Key, PodInfo>,
    /// Service (namespace, name) -> the names of its slices.
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// Pod (namespace, name) -> the services whose slices name it, with how many slices do.
    services_of_pod: HashMap<Key, BTreeMap<String, usize>>,
    /// Services to recompute.
    dirty: BTreeSet<Key>,
    /// Gateway API routes.
    routes: RouteStore,
    /// Weft's policy objects.
    policies: PolicyStore,
}

impl Cluster {
    pub(crate) fn new(trust_domain: TrustDomain, shared_namespaces: SharedNamespaces) -> Self {
        Self {
            trust_domain,
            namespaces: HashMap::new(),
            shared_namespaces,
            services: HashMap::new(),
            slices: HashMap::new(),
            pods: HashMap::new(),
            slices_of: HashMap::new(),
            services_of_pod: HashMap::new(),
            dirty: BTreeSet::new(),
            routes: RouteStore::default(),
            policies: PolicyStore::default(),
        }
    }

    /// Adds or replaces an object.
    pub(crate) fn apply(&mut self, object: Object) {
        match object {
            Object::Namespace(name, info) => {
                self.shared_namespaces
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone(), info.inject.clone());
                self.namespaces.insert(name, info);
            }
            Object::Service(key, info) => {
                if self.services.get(&key) != Some(&info) {
                    // Whether it exists decides routes' statuses.
                    self.routes.dirty |= !self.services.contains_key(&key);
                    self.services.insert(key.clone(), info);
                    self.dirty.insert(key);
                }
            }
            Object::Route(kind, key, info) => self.routes.apply(kind, key, info),
            Object::Policy(kind, key, info) => self.policies.apply(kind, key, info),
            Object::Slice(key, info) => {
                if self.slices.get(&key) != Some(&info) {
                    self.remove_slice(&key);
                    self.add_slice(key, info);
                }
            }
            Object::Pod(key, info) => {
                if self.pods.get(&key) != Some(&info) {
                    self.pods.insert(key.clone(), info);
                    self.touch_pod(&key);
                }
            }
        }
    }

    /// Removes an object; removing an unknown one changes nothing.
    pub(crate) fn delete(&mut self, kind: Kind, key: &Key) {
        match kind {
            Kind::Namespace => {
                self.shared_namespaces
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key.1);
                self.namespaces.remove(&key.1);
            }
            Kind::Service => {
                if self.services.remove(key).is_some() {
                    self.dirty.insert(key.clone());
                    self.routes.dirty = true;
                }
            }
            Kind::HttpRoute => self.routes.delete(RouteKind::Http, key),
            Kind::GrpcRoute => self.routes.delete(RouteKind::Grpc, key),
            Kind::RoutePolicy => self.routes.delete(RouteKind::Policy, key),
            Kind::AuthorizationPolicy => self.policies.delete(PolicyKind::Authorization, key),
            Kind::RateLimitPolicy => self.policies.delete(PolicyKind::RateLimit, key),
            Kind::BackendPolicy => self.policies.delete(PolicyKind::Backend, key),
            Kind::Slice => self.remove_slice(key),
            Kind::Pod => {
                if self.pods.remove(key).is_some() {
                    self.touch_pod(key);
                }
            }
        }
    }

    /// Deletes an object given as the watch reported it.
    pub(crate) fn delete_object(&mut self, object: &Object) {
        self.delete(object.kind(), &object.key());
    }

    /// Makes the objects of `kind` within `scope` exactly `listed`, as after a (re)list:
    /// those missing from it are deleted, the others added or replaced. Objects that did not
    /// change leave their services untouched.
    pub(crate) fn replace(&mut self, kind: Kind, scope: &Scope, listed: Vec<Object>) {
        let keep: BTreeSet<Key> = listed
            .iter()
            .filter(|o| o.kind() == kind)
            .map(Object::key)
            .collect();
        let known: Vec<Key> = match kind {
            Kind::Namespace => self
                .namespaces
                .keys()
                .map(|n| (String::new(), n.clone()))
                .collect(),
            Kind::Service => self.services.keys().cloned().collect(),
            Kind::Slice => self.slices.keys().cloned().collect(),
            Kind::Pod => self.pods.keys().cloned().collect(),
            Kind::HttpRoute | Kind::GrpcRoute | Kind::RoutePolicy => kind
                .route()
                .map(|k| self.routes.keys(k))
                .unwrap_or_default(),
            Kind::AuthorizationPolicy | Kind::RateLimitPolicy | Kind::BackendPolicy => kind
                .policy()
                .map(|k| self.policies.keys(k))
                .unwrap_or_default(),
        };
        let gone: Vec<Key> = known
            .into_iter()
            .filter(|k| scope.covers(kind, k) && !keep.contains(k))
            .collect();
        for key in &gone {
            self.delete(kind, key);
        }
        for object in listed {
            if object.kind() == kind {
                self.apply(object);
            }
        }
    }

    fn add_slice(&mut self, key: Key, info: SliceInfo) {
        if let Some(service) = &info.service {
            let skey = (key.0.clone(), service.clone());
            self.slices_of
                .entry(skey.clone())
                .or_default()
                .insert(key.1.clone());
            for pod in info.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
                *self
                    .services_of_pod
                    .entry((key.0.clone(), pod.clone()))
                    .or_default()
                    .entry(service.clone())
                    .or_default() += 1;
            }
            self.dirty.insert(skey);
        }
        self.slices.insert(key, info);
    }

    fn remove_slice(&mut self, key: &Key) {
        let Some(info) = self.slices.remove(key) else {
            return;
        };
        let Some(service) = info.service else {
            return;
        };
        let skey = (key.0.clone(), service.clone());
        if let Some(set) = self.slices_of.get_mut(&skey) {
            set.remove(&key.1);
            if set.is_empty() {
                self.slices_of.remove(&skey);
            }
        }
        for pod in info.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
            let pkey = (key.0.clone(), pod.clone());
            if let Some(services) = self.services_of_pod.get_mut(&pkey) {
                if let Some(n) = services.get_mut(&service) {
                    *n -= 1;
                    if *n == 0 {
                        services.remove(&service);
                    }
                }
                if services.is_empty() {
                    self.services_of_pod.remove(&pkey);
                }
            }
        }
        self.dirty.insert(skey);
    }

    /// Marks the services whose endpoints name pod `key` as stale.
    fn touch_pod(&mut self, key: &Key) {
        if let Some(services) = self.services_of_pod.get(key) {
            for s in services.keys() {
                self.dirty.insert((key.0.clone(), s.clone()));
            }
        }
    }

    /// Whether some change has made a service stale.
    pub(crate) fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Takes the stale services, each with what it is now (`None`: it is gone).
    pub(crate) fn take_changes(&mut self) -> Vec<(ServiceName, Option<Service>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|key| {
                let name = service_name(&key)?;
                let service = self.compute(&key, &name);
                Some((name, service))
            })
            .collect()
    }

    /// The routes to serve and the statuses to write, if the routes (or the services they
    /// name) changed since the last call.
    pub(crate) fn take_routes(&mut self) -> Option<(SourceRoutes, Vec<StatusUpdate>)> {
        if !self.routes.dirty {
            return None;
        }
        let services = &self.services;
        Some(self.routes.translate(|name| {
            services
                .get(&(name.namespace.clone(), name.name.clone()))
                .is_some_and(|s| !s.external_name)
        }))
    }

    /// The policies to serve and the statuses to write, if they changed since the last call.
    pub(crate) fn take_policies(&mut self) -> Option<(SourcePolicies, Vec<PolicyStatus>)> {
        if !self.policies.dirty {
            return None;
        }
        Some(self.policies.translate())
    }

    /// Every service, as for a full sync; clears the stale set.
    pub(crate) fn all_services(&mut self) -> Vec<Service> {
        self.dirty.clear();
        let keys: Vec<Key> = self.services.keys().cloned().collect();
        keys.iter()
            .filter_map(|key| {
                let name = service_name(key)?;
                self.compute(key, &name)
            })
            .collect()
    }

    /// The registry entry of Service `key`: its TCP ports, each with the endpoints its slices
    /// list for it.
    fn compute(&self, key: &Key, name: &ServiceName) -> Option<Service> {
        let info = self.services.get(key)?;
        if info.external_name {
            return None;
        }
        let mut ports: Vec<ServicePort> = info
            .ports
            .iter()
            .map(|p| ServicePort {
                port: p.port,
                name: p.name.clone(),
                protocol: p.protocol,
                endpoints: Vec::new(),
            })
            .collect();
        // By port, then address: the best state wins where slices overlap (they may while the
        // endpoint controller moves an endpoint between slices).
        let mut found: Vec<BTreeMap<SocketAddr, Endpoint>> = vec![BTreeMap::new(); ports.len()];
        for slice_name in self.slices_of.get(key).into_iter().flatten() {
            let Some(slice) = self.slices.get(&(key.0.clone(), slice_name.clone())) else {
                continue;
            };
            for (port_name, target) in &slice.ports {
                let Some(i) = info.ports.iter().position(|p| p.name == *port_name) else {
                    continue;
                };
                for e in &slice.endpoints {
                    let Some(endpoint) = self.endpoint(&key.0, e, *target) else {
                        continue;
                    };
                    let slot = &mut found[i];
                    match slot.get(&endpoint.address) {
                        Some(have) if have.state <= endpoint.state => {}
                        _ => {
                            slot.insert(endpoint.address, endpoint);
                        }
                    }
                }
            }
        }
        for (port, endpoints) in ports.iter_mut().zip(found) {
            // A pod that declares the port it serves opaque makes the whole service port
            // opaque: detection would stall on a server that speaks first.
            let opaque = endpoints.values().any(|e| {
                e.workload.as_ref().is_some_and(|w| {
                    self.pods
                        .get(&(w.namespace.clone(), w.name.clone()))
                        .is_some_and(|p| p.opaque_ports.contains(&e.address.port()))
                })
            });
            if opaque {
                port.protocol = Protocol::Opaque;
            }
            port.endpoints = endpoints.into_values().collect();
        }
        Some(Service {
            name: name.clone(),
            virtual_ips: info.virtual_ips.clone(),
            ports,
        })
    }

    /// One endpoint, with its pod's identity. An endpoint naming a pod the watch has not seen
    /// yet is left out until it has: reaching a meshed pod in plaintext would be refused.
    fn endpoint(&self, ns: &str, e: &SliceEndpoint, port: u16) -> Option<Endpoint> {
        let address = SocketAddr::new(e.ip, port);
        let Some(pod_name) = &e.pod else {
            return Some(Endpoint {
                address,
                identity: None,
                meshed: false,
                workload: None,
                state: e.state,
            });
        };
        let pod = self.pods.get(&(ns.to_string(), pod_name.clone()))?;
        let identity = match Identity::new(self.trust_domain.clone(), ns, &pod.account) {
            Ok(id) => Some(id),
            Err(error) => {
                tracing::debug!(namespace = ns, pod = %pod_name, %error, "no mesh identity for this ServiceAccount");
                None
            }
        };
        Some(Endpoint {
            address,
            meshed: pod.meshed && identity.is_some(),
            identity,
            workload: Some(WorkloadKey {
                namespace: ns.to_string(),
                name: pod_name.clone(),
            }),
            state: e.state,
        })
    }
}

fn service_name(key: &Key) -> Option<ServiceName> {
    match ServiceName::new(&key.0, &key.1) {
        Ok(n) => Some(n),
        Err(error) => {
            tracing::warn!(namespace = %key.0, service = %key.1, %error, "Service name not usable in the mesh; skipped");
            None
        }
    }
}

#[cfg(test)]
mod tests;
