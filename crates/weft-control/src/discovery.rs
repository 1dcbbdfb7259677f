//! `Discovery.Resolve` and `Discovery.Proxy`: discovery on demand.
//!
//! A proxy resolves a destination when it first uses it and follows it over one stream: the
//! whole state first, then only the changes. Each stream follows the registry topic of its
//! target, so a registry write costs work for the streams of the services it changed and for
//! no other. A second stream per proxy carries the proxy's own settings: the inbound policy of
//! each of its servers and the trust bundle.
//!
//! Both wait for every platform's first full sync before the first answer, so a proxy never
//! hears "not in the mesh" for a service that a platform has simply not listed yet.
//!
//! Each stream costs the control plane memory for as long as it is open, so one identity may
//! hold only so many of each kind (`[control.limits]`, shared by every proxy of that
//! identity); beyond them a new stream is refused with RESOURCE_EXHAUSTED.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use weft_api::convert::route::traffic_to_wire;
use weft_api::convert::{endpoint_to_wire, policy_to_wire, protocol_to_wire, target_from_wire};
use weft_api::v1::discovery_server::Discovery;
use weft_api::v1::resolve_update::Update;
use weft_api::{
    Denied, Endpoint, EndpointChanges, NotInMesh, ProxyRequest, ProxySettings, ResolveRequest,
    ResolveUpdate, Resolved, ServerPolicy, ServiceMeta, TrafficPolicy,
};
use weft_core::config::MeshConfig;
use weft_core::model::check_name;
use weft_core::policy::traffic::{SourcePolicies, for_service};
use weft_core::policy::{Decision, InboundPolicy as Policy};
use weft_core::policy::{backend, ratelimit};
use weft_core::{
    AddressKind, EndpointState, Identity, Protocol, RegistrySnapshot, Target, Topic, TopicWatch,
    WorkloadKey, WorkloadRef,
};

use crate::State;
use crate::limits::{KeyPermit, Limit};
use crate::metrics::StreamLabels;
use crate::transport::PeerInfo;

/// Endpoints per message: a service of any size is sent in messages well under the gRPC
/// message limit (about 100 bytes an endpoint).
pub const ENDPOINTS_PER_MESSAGE: usize = 1000;

/// The Discovery service.
#[derive(Debug, Clone)]
pub(crate) struct DiscoveryService(pub(crate) Arc<State>);

/// What a target resolves to, for one caller, at one registry version.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// A service port, with the endpoints the caller may use (all of them, or only the one an
    /// endpoint address names), and the routes it applies.
    Resolved {
        /// Name, port and protocol.
        meta: ServiceMeta,
        /// The endpoints, by address.
        endpoints: BTreeMap<SocketAddr, Endpoint>,
        /// The routes of the port for this caller.
        policy: TrafficPolicy,
    },
    /// Nothing in the mesh answers to the target.
    NotInMesh,
    /// The caller may not reach the target.
    Denied(String),
}

/// Resolves `target` for a proxy proving `identity`.
///
/// A proxy may resolve a service only if the service's policy admits its identity; a service
/// whose endpoints are all unmeshed has no proxy to enforce a policy and is open to all. An
/// endpoint address resolves to that endpoint alone, within its service.
pub fn answer(
    identity: &Identity,
    registry: &RegistrySnapshot,
    cfg: &MeshConfig,
    target: &Target,
) -> Answer {
    let (name, port, only) = match target {
        Target::Service { name, port } => (name.clone(), *port, None),
        Target::Address(addr) => match registry.lookup_address(*addr).next() {
            None => return Answer::NotInMesh,
            Some(r) => (
                weft_core::ServiceName::clone(&r.service),
                Some(r.port),
                (r.kind == AddressKind::Endpoint).then_some(*addr),
            ),
        },
    };
    let Some(service) = registry.service(&name) else {
        return Answer::NotInMesh;
    };
    let service_port = match port {
        Some(p) => service.port(p),
        None => service.ports.first(),
    };
    let Some(service_port) = service_port else {
        return Answer::NotInMesh;
    };
    // Refused when no server of the service could admit any request of the caller.
    let mut ports: Vec<u16> = service_port
        .endpoints
        .iter()
        .filter(|e| e.meshed)
        .map(|e| e.address.port())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    let refused = !ports.is_empty()
        && ports.iter().all(|&port| {
            let policy = Policy::for_server(
                cfg.policy.default_inbound,
                &authorizations(cfg, registry),
                [&name],
                port,
            );
            !policy.on_connection(Some(identity)).admits()
        });
    if refused {
        // The target as the caller gave it: an address does not learn the service's name.
        return Answer::Denied(format!("{identity} may not call {target}"));
    }
    // Endpoints that are not ready take no connections: they are in the registry only so
    // that their workloads keep their inbound policy.
    let endpoints = service_port
        .endpoints
        .iter()
        .filter(|e| e.state != EndpointState::NotReady)
        .filter(|e| only.is_none_or(|a| a == e.address))
        .map(|e| (e.address, endpoint_to_wire(e)))
        .collect();
    // Routes bind to the service (its name and virtual addresses), never to a direct call to
    // one endpoint's own address.
    let policy = if only.is_some() {
        TrafficPolicy::default()
    } else {
        traffic_to_wire(&traffic_policy(
            cfg,
            registry,
            &name,
            service_port.port,
            identity.namespace(),
        ))
    };
    Answer::Resolved {
        meta: ServiceMeta {
            name: name.name.clone(),
            namespace: name.namespace.clone(),
            port: u32::from(service_port.port),
            protocol: protocol_to_wire(service_port.protocol) as i32,
        },
        endpoints,
        policy,
    }
}

/// What a Resolve stream keeps of the last answer it sent, to send only what changes: per
/// endpoint its address and a keyed hash of its wire form, not the endpoint itself. A control
/// plane holds one per open stream, so this is most of what an idle stream costs.
#[derive(Debug, PartialEq)]
pub enum Sent {
    /// A service port: its description, its endpoints (by address), its routes.
    Resolved {
        /// Name, port and protocol.
        meta: ServiceMeta,
        /// Each endpoint's address and [`fingerprint`], by address.
        endpoints: Vec<(SocketAddr, u64)>,
        /// The routes.
        policy: TrafficPolicy,
    },
    /// Not in the mesh.
    NotInMesh,
    /// Denied, for this reason.
    Denied(String),
}

/// The keys of every endpoint fingerprint: random per process, so that no one can choose
/// endpoint data whose change would go unseen.
static FINGERPRINT_KEYS: std::sync::LazyLock<std::hash::RandomState> =
    std::sync::LazyLock::new(std::hash::RandomState::new);

/// A keyed hash of an endpoint's wire form: two forms that differ get different ones, but
/// for a 64-bit chance.
fn fingerprint(e: &Endpoint) -> u64 {
    use std::hash::BuildHasher;
    FINGERPRINT_KEYS.hash_one(prost::Message::encode_to_vec(e))
}

impl Sent {
    /// What a stream keeps of `answer` once sent.
    pub fn of(answer: &Answer) -> Self {
        match answer {
            Answer::Resolved {
                meta,
                endpoints,
                policy,
            } => Sent::Resolved {
                meta: meta.clone(),
                endpoints: endpoints
                    .iter()
                    .map(|(a, e)| (*a, fingerprint(e)))
                    .collect(),
                policy: policy.clone(),
            },
            Answer::NotInMesh => Sent::NotInMesh,
            Answer::Denied(reason) => Sent::Denied(reason.clone()),
        }
    }
}

/// [`updates_for`] a proxy that reads every update kind.
pub fn updates(last: Option<&Answer>, next: &Answer) -> Vec<ResolveUpdate> {
    updates_for(last, next, true)
}

/// [`updates_since`] what was sent of `last`.
pub fn updates_for(last: Option<&Answer>, next: &Answer, reads_policy: bool) -> Vec<ResolveUpdate> {
    updates_since(last.map(Sent::of).as_ref(), next, reads_policy).0
}

/// The updates that take a proxy that last heard `last` to `next`: nothing when nothing
/// changed, endpoint changes when only endpoints changed, the routes alone when only they
/// changed (to a proxy that reads `policy` updates: `reads_policy`), else the whole new state.
/// Large endpoint sets are split into messages of at most [`ENDPOINTS_PER_MESSAGE`] endpoints.
/// Also returns what to keep of `next` once sent, its endpoints' fingerprints computed once for
/// both.
pub fn updates_since(
    last: Option<&Sent>,
    next: &Answer,
    reads_policy: bool,
) -> (Vec<ResolveUpdate>, Sent) {
    let sent = Sent::of(next);
    (changes_since(last, next, &sent, reads_policy), sent)
}

/// The updates of [`updates_since`]; `sent` is what is kept of `next`.
fn changes_since(
    last: Option<&Sent>,
    next: &Answer,
    sent: &Sent,
    reads_policy: bool,
) -> Vec<ResolveUpdate> {
    let wrap = |u| ResolveUpdate { update: Some(u) };
    match (last, next) {
        (Some(Sent::NotInMesh), Answer::NotInMesh) => Vec::new(),
        (Some(Sent::Denied(a)), Answer::Denied(b)) if a == b => Vec::new(),
        (
            Some(Sent::Resolved {
                meta: old_meta,
                endpoints: old,
                policy: old_policy,
            }),
            Answer::Resolved {
                meta,
                endpoints,
                policy,
            },
        ) if old_meta == meta && (reads_policy || old_policy == policy) => {
            let was = |addr: &SocketAddr| {
                old.binary_search_by_key(addr, |(a, _)| *a)
                    .ok()
                    .map(|i| old[i].1)
            };
            // `sent` lists `next`'s endpoints in the same (address) order, with their
            // fingerprints (what is kept of a resolved answer is always `Sent::Resolved`).
            let now: &[(SocketAddr, u64)] = match sent {
                Sent::Resolved { endpoints, .. } => endpoints,
                _ => &[],
            };
            let upserted: Vec<_> = endpoints
                .values()
                .zip(now)
                .filter(|(_, (addr, print))| was(addr) != Some(*print))
                .map(|(e, _)| e.clone())
                .collect();
            let removed: Vec<_> = old
                .iter()
                .filter(|(addr, _)| !endpoints.contains_key(addr))
                .map(|(a, _)| a.to_string())
                .collect();
            let mut out: Vec<_> = changes(upserted, removed).into_iter().map(wrap).collect();
            // A weight change does not resend the endpoints.
            if old_policy != policy {
                out.push(wrap(Update::Policy(policy.clone())));
            }
            out
        }
        (
            _,
            Answer::Resolved {
                meta,
                endpoints,
                policy,
            },
        ) => {
            let mut all: Vec<_> = endpoints.values().cloned().collect();
            let rest = all.split_off(all.len().min(ENDPOINTS_PER_MESSAGE));
            let mut out = vec![wrap(Update::Resolved(Resolved {
                service: Some(meta.clone()),
                endpoints: all,
                policy: Some(policy.clone()),
            }))];
            out.extend(changes(rest, Vec::new()).into_iter().map(wrap));
            out
        }
        (_, Answer::NotInMesh) => vec![wrap(Update::NotInMesh(NotInMesh {}))],
        (_, Answer::Denied(reason)) => vec![wrap(Update::Denied(Denied {
            reason: reason.clone(),
        }))],
    }
}

/// Endpoint changes in messages of at most [`ENDPOINTS_PER_MESSAGE`] entries.
fn changes(mut upserted: Vec<Endpoint>, mut removed: Vec<String>) -> Vec<Update> {
    let mut out = Vec::new();
    while !upserted.is_empty() || !removed.is_empty() {
        let up_rest = upserted.split_off(upserted.len().min(ENDPOINTS_PER_MESSAGE));
        let room = ENDPOINTS_PER_MESSAGE - upserted.len();
        let rm_rest = removed.split_off(removed.len().min(room));
        out.push(Update::Changes(EndpointChanges {
            upserted: std::mem::replace(&mut upserted, up_rest),
            removed: std::mem::replace(&mut removed, rm_rest),
        }));
    }
    out
}

/// The policies of one kind in force: the mesh file's (`file`), then each platform's objects'
/// (`of`), borrowed when no platform has any.
fn in_force<'a, T: Clone>(
    file: &'a [T],
    registry: &RegistrySnapshot,
    of: impl Fn(&SourcePolicies) -> &[T],
) -> Cow<'a, [T]> {
    let platforms = registry.policies();
    if platforms.iter().all(|p| of(p).is_empty()) {
        return Cow::Borrowed(file);
    }
    let mut all = file.to_vec();
    all.extend(platforms.iter().flat_map(|p| of(p).iter().cloned()));
    Cow::Owned(all)
}

/// The authorization rules in force: the mesh file's, then each platform's objects'.
pub fn authorizations<'a>(
    cfg: &'a MeshConfig,
    registry: &RegistrySnapshot,
) -> Cow<'a, [weft_core::policy::AuthorizationRule]> {
    in_force(&cfg.authorization_rules, registry, |p| &p.authorizations)
}

/// The rate limits in force: the mesh file's, then each platform's objects'; for a service
/// both limit for every request, the first.
pub fn rate_limits<'a>(
    cfg: &'a MeshConfig,
    registry: &RegistrySnapshot,
) -> Cow<'a, [ratelimit::RateLimitRule]> {
    in_force(&cfg.rate_limit_rules, registry, |p| &p.rate_limits)
}

/// The backend policies in force: the mesh file's, then each platform's objects'; for a
/// service several name, the first.
pub fn backends<'a>(
    cfg: &'a MeshConfig,
    registry: &RegistrySnapshot,
) -> Cow<'a, [backend::BackendRule]> {
    in_force(&cfg.backend_rules, registry, |p| &p.backends)
}

/// The settings of the proxy proving `identity` beside `workload`: the policy of each port its
/// workload serves, the policy of any other port, and the trust bundle.
///
/// The workload's servers are the service ports it serves in any of `sources`, whatever the
/// state of its endpoints there: a workload that is starting or fails its readiness checks
/// keeps the rules of the services that name it. A workload of which no source knows any
/// server gets a policy that denies every client on every port (fail closed: an unknown
/// workload must not fall back to the mesh default); one with known servers gets the mesh
/// default on its other ports.
///
/// The workload's endpoints must carry the proxy's identity: a proxy claiming a workload
/// certified as someone else gets an error, and then denies every client.
pub fn proxy_settings(
    identity: &Identity,
    workload: &WorkloadKey,
    sources: &[Arc<str>],
    registry: &RegistrySnapshot,
    cfg: &MeshConfig,
    bundle: &weft_ca::TrustBundle,
) -> Result<ProxySettings, Status> {
    let default = cfg.policy.default_inbound;
    let rules = &authorizations(cfg, registry);
    let limits = rate_limits(cfg, registry);
    // Port -> (protocol, services).
    let mut ports: BTreeMap<u16, (Protocol, Vec<weft_core::ServiceName>)> = BTreeMap::new();
    let refs = sources.iter().map(|source| WorkloadRef {
        source: source.clone(),
        key: workload.clone(),
    });
    for wl in refs {
        for server in registry.servers_of(&wl) {
            let Some(service) = registry.service(&server.service) else {
                continue;
            };
            let Some(port) = service.port(server.port) else {
                continue;
            };
            let Some(endpoint) = port.endpoints.iter().find(|e| e.address == server.address) else {
                continue;
            };
            if let Some(other) = endpoint.identity.as_ref().filter(|i| *i != identity) {
                return Err(Status::permission_denied(format!(
                    "workload {workload} runs as {other}, not as {identity}"
                )));
            }
            let entry = ports
                .entry(server.address.port())
                .or_insert_with(|| (port.protocol, Vec::new()));
            if !entry.1.contains(&server.service) {
                entry.1.push(weft_core::ServiceName::clone(&server.service));
            }
        }
    }
    let default_policy = if ports.is_empty() {
        Policy {
            default: Decision::Deny,
            rules: Vec::new(),
            rate_limits: Vec::new(),
        }
    } else {
        let none: [&weft_core::ServiceName; 0] = [];
        Policy::for_server(default, rules, none, 0)
    };
    let mut served: Vec<weft_core::ServiceName> = Vec::new();
    for (_, services) in ports.values() {
        for s in services {
            if !served.contains(s) {
                served.push(s.clone());
            }
        }
    }
    let servers = ports
        .into_iter()
        .map(|(port, (protocol, services))| ServerPolicy {
            port: u32::from(port),
            policy: Some(policy_to_wire(
                &Policy {
                    rate_limits: ratelimit::for_server(&limits, &services, port),
                    ..Policy::for_server(default, rules, &services, port)
                },
                protocol,
            )),
        })
        .collect();
    Ok(ProxySettings {
        identity: identity.spiffe_id(),
        servers,
        default_policy: Some(policy_to_wire(&default_policy, Protocol::Auto)),
        trust_bundle: bundle.roots().iter().map(|r| r.to_vec()).collect(),
        observability: Some(observability(cfg, workload, &served)),
    })
}

/// What a caller in `caller_namespace` applies to `name`'s `port`: the routes that bind
/// (the mesh file's first, then each platform's), the service's backend policy, and where
/// its routes start traces.
pub(crate) fn traffic_policy(
    cfg: &MeshConfig,
    registry: &RegistrySnapshot,
    name: &weft_core::ServiceName,
    port: u16,
    caller_namespace: &str,
) -> weft_core::policy::traffic::TrafficPolicy {
    let platform = registry.routes();
    let http = cfg
        .http_routes
        .iter()
        .chain(platform.iter().flat_map(|r| r.http.iter()));
    let grpc = cfg
        .grpc_routes
        .iter()
        .chain(platform.iter().flat_map(|r| r.grpc.iter()));
    let mut policy = for_service(http, grpc, name, port, caller_namespace, |s| {
        registry.service(s).is_some()
    });
    policy.backend = backend::for_service(&backends(cfg, registry), name);
    policy.trace_starts = route_trace_starts(cfg, &policy);
    policy
}

/// The routes of `policy` whose matching requests the caller starts traces for.
fn route_trace_starts(
    cfg: &MeshConfig,
    policy: &weft_core::policy::traffic::TrafficPolicy,
) -> Vec<(String, u32)> {
    let names = policy
        .http
        .iter()
        .map(|r| &r.meta.name)
        .chain(policy.grpc.iter().map(|r| &r.meta.name));
    names
        .filter_map(|n| {
            let share = cfg.observability.route_trace_start(n)?;
            Some((n.clone(), millionths(share)))
        })
        .collect()
}

/// A share from 0 to 1 in millionths.
fn millionths(share: f64) -> u32 {
    // Validation keeps shares within 0..=1; the clamp keeps a bad one from wrapping.
    (share.clamp(0.0, 1.0) * 1e6).round() as u32
}

/// What `workload`'s proxy is told about spans and access logs.
fn observability(
    cfg: &MeshConfig,
    workload: &WorkloadKey,
    services: &[weft_core::ServiceName],
) -> weft_api::Observability {
    use weft_core::observability::{AccessLogFormat as Format, WorkloadView};
    let o = &cfg.observability;
    let view = WorkloadView {
        key: workload,
        services,
    };
    let access_log = match o.access_log(view) {
        Format::Off => weft_api::AccessLogFormat::Off,
        Format::Common => weft_api::AccessLogFormat::Common,
        Format::Json => weft_api::AccessLogFormat::Json,
    };
    let Some(collector) = &o.tracing.collector else {
        return weft_api::Observability {
            access_log: access_log.into(),
            tap_clients: o.tap.clients.clone(),
            ..Default::default()
        };
    };
    let service_name = services
        .first()
        .map_or_else(|| workload.name.clone(), |s| s.name.clone());
    weft_api::Observability {
        trace_collector: collector.clone(),
        trace_collector_identity: o.tracing.collector_identity.clone().unwrap_or_default(),
        trace_buffer: u32::try_from(o.tracing.buffer).unwrap_or(u32::MAX),
        trace_start_millionths: millionths(o.trace_start(view)),
        access_log: access_log.into(),
        service_name,
        tap_clients: o.tap.clients.clone(),
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<ResolveUpdate, Status>> + Send>>;
type SettingsStream = Pin<Box<dyn Stream<Item = Result<ProxySettings, Status>> + Send>>;

/// The identity of the proxy calling, which every Discovery call needs.
fn caller<T>(request: &Request<T>, call: &str) -> Result<(Identity, SocketAddr), Status> {
    let peer = request
        .extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(|| Status::internal("connection without peer information"))?;
    let remote = peer.remote;
    let identity = peer.identity.ok_or_else(|| {
        tracing::info!(%remote, call, "Discovery call without a mesh certificate refused");
        Status::unauthenticated(format!("{call} needs the proxy's mesh certificate"))
    })?;
    Ok((identity, remote))
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type ResolveStream = UpdateStream;
    type ProxyStream = SettingsStream;

    async fn resolve(
        &self,
        request: Request<ResolveRequest>,
    ) -> Result<Response<Self::ResolveStream>, Status> {
        let (identity, remote) = caller(&request, "Resolve")?;
        let target = target_from_wire(request.get_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let reads_policy = request
            .get_ref()
            .capabilities
            .iter()
            .any(|c| c == weft_api::CAPABILITY_TRAFFIC_POLICY);
        let slot = stream_slot(&self.0, &identity, Limit::IdentityResolveStreams)?;
        tracing::debug!(%identity, %remote, %target, "resolving");
        Ok(Response::new(follow_target(
            self.0.clone(),
            identity,
            target,
            reads_policy,
            slot,
        )))
    }

    async fn proxy(
        &self,
        request: Request<ProxyRequest>,
    ) -> Result<Response<Self::ProxyStream>, Status> {
        let (identity, remote) = caller(&request, "Proxy")?;
        let req = request.get_ref();
        let key = req
            .workload
            .split_once('/')
            .filter(|(ns, name)| check_name(ns).is_ok() && check_name(name).is_ok())
            .map(|(ns, name)| WorkloadKey {
                namespace: ns.to_string(),
                name: name.to_string(),
            })
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "workload {:?}: expected namespace/name",
                    req.workload
                ))
            })?;
        // The platform is one of the configured ones; its workloads are found in the registry
        // sources it names.
        let sources = workload_sources(&self.0, &req.platform).ok_or_else(|| {
            Status::invalid_argument(format!(
                "platform {:?} is not configured",
                weft_core::platform::clip(&req.platform, 64)
            ))
        })?;
        let workload = key;
        let slot = stream_slot(&self.0, &identity, Limit::IdentityProxyStreams)?;
        tracing::info!(%identity, %remote, %workload, "proxy following its settings");
        Ok(Response::new(follow_settings(
            self.0.clone(),
            identity,
            workload,
            sources,
            slot,
            remote,
        )))
    }
}

/// A slot for one more stream of `identity` (held by the stream's task, so given back when
/// the stream ends), or RESOURCE_EXHAUSTED, counted, when the identity holds its bound.
fn stream_slot(
    state: &State,
    identity: &Identity,
    limit: Limit,
) -> Result<KeyPermit<Identity>, Status> {
    let (streams, kind) = match limit {
        Limit::IdentityProxyStreams => (&state.limits.proxy_streams, "Proxy"),
        _ => (&state.limits.resolve_streams, "Resolve"),
    };
    streams.try_acquire(identity).ok_or_else(|| {
        state.metrics.count_limited(limit);
        tracing::info!(%identity, max = streams.max(), "{kind} stream refused: the identity holds its bound");
        Status::resource_exhausted(format!(
            "{identity} holds {} {kind} streams, the most one identity may (control.limits)",
            streams.max()
        ))
    })
}

/// The registry sources that report the workloads of a configured platform's proxies.
fn workload_sources(state: &State, name: &str) -> Option<Vec<Arc<str>>> {
    state
        .platforms
        .iter()
        .find(|p| p.name() == name)
        .map(|p| p.workload_sources().into_iter().map(Arc::from).collect())
}

/// One Discovery stream's inputs and metrics (open while this lives, updates sent).
///
/// A stream is the response body itself, computed as the transport polls it: no task or queue
/// of its own, so an idle stream costs its state and little else. When the proxy goes away,
/// the transport drops the body, and with it this.
struct Follow<'a> {
    state: &'a State,
    changed: TopicWatch,
    config: watch::Receiver<Arc<MeshConfig>>,
    open: Gauge,
    sent: Counter,
}

impl<'a> Follow<'a> {
    /// Follows `topic` for a stream of `kind`, once every platform has completed its first
    /// full sync; `None` if the control plane stopped meanwhile.
    async fn start(state: &'a State, topic: Topic, kind: &'static str) -> Option<Self> {
        let labels = StreamLabels { kind };
        let open = state.metrics.streams.get_or_create(&labels).clone();
        open.inc();
        let follow = Self {
            state,
            // Subscribed before the first read, so no change falls in between.
            changed: state.registry.watch_topic(topic),
            config: state.config.clone(),
            sent: state.metrics.updates.get_or_create(&labels).clone(),
            open,
        };
        let names: Vec<String> = state
            .platforms
            .iter()
            .map(|p| p.name().to_string())
            .collect();
        tokio::select! {
            _ = state.registry.wait_synced(&names) => Some(follow),
            _ = state.shutdown.cancelled() => None,
        }
    }

    /// The registry and config to compute the next message from. Drop them before waiting:
    /// a snapshot held by an idle stream keeps alive every node that later versions replaced,
    /// so streams that each held the version they last read made the control plane's memory
    /// grow with every change (23 KB a change in the scale bench).
    fn inputs(&mut self) -> (Arc<RegistrySnapshot>, Arc<MeshConfig>) {
        (
            self.state.registry.snapshot(),
            self.config.borrow_and_update().clone(),
        )
    }

    /// Waits for a change of the topic or the config; false when the stream should end.
    async fn next_change(&mut self) -> bool {
        tokio::select! {
            _ = self.state.shutdown.cancelled() => false,
            _ = self.changed.changed() => true,
            r = self.config.changed() => r.is_ok(),
        }
    }
}

impl Drop for Follow<'_> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// The target's state, then its changes, until the proxy goes away or the control plane stops.
fn follow_target(
    state: Arc<State>,
    identity: Identity,
    target: Target,
    reads_policy: bool,
    slot: KeyPermit<Identity>,
) -> UpdateStream {
    Box::pin(async_stream::stream! {
        let _slot = slot;
        let topic = match &target {
            Target::Service { name, .. } => Topic::Service(name.clone()),
            // Every change of a service touches all of its addresses.
            Target::Address(addr) => Topic::Address(*addr),
        };
        let Some(mut follow) = Follow::start(&state, topic, "resolve").await else {
            return;
        };
        let mut last: Option<Sent> = None;
        loop {
            let next = {
                let (reg, cfg) = follow.inputs();
                answer(&identity, &reg, &cfg, &target)
            };
            if matches!(next, Answer::Denied(_)) && !matches!(last, Some(Sent::Denied(_))) {
                state.metrics.denied.inc();
                tracing::info!(%identity, %target, "resolve denied by policy");
            }
            let (updates, sent) = updates_since(last.as_ref(), &next, reads_policy);
            last = Some(sent);
            drop(next);
            for u in updates {
                follow.sent.inc();
                yield Ok(u);
            }
            if !follow.next_change().await {
                return;
            }
        }
    })
}

/// The proxy's settings, then again whenever they change.
fn follow_settings(
    state: Arc<State>,
    identity: Identity,
    workload: WorkloadKey,
    sources: Vec<Arc<str>>,
    slot: KeyPermit<Identity>,
    remote: SocketAddr,
) -> SettingsStream {
    Box::pin(async_stream::stream! {
        let _slot = slot;
        // Logged when the stream ends, however it ends (the proxy going away drops it).
        let _stopped = Stopped { identity: &identity, remote };
        let topic = Topic::Workload(workload.clone());
        let Some(mut follow) = Follow::start(&state, topic, "proxy").await else {
            return;
        };
        let mut last: Option<ProxySettings> = None;
        loop {
            let settings = {
                let (reg, cfg) = follow.inputs();
                proxy_settings(&identity, &workload, &sources, &reg, &cfg, state.ca.trust_bundle())
            };
            match settings {
                Err(status) => {
                    tracing::warn!(%identity, %workload, reason = status.message(), "proxy settings refused");
                    yield Err(status);
                    return;
                }
                Ok(next) if last.as_ref() != Some(&next) => {
                    follow.sent.inc();
                    yield Ok(next.clone());
                    last = Some(next);
                }
                Ok(_) => {}
            }
            if !follow.next_change().await {
                return;
            }
        }
    })
}

/// Logs the end of a proxy's settings stream.
struct Stopped<'a> {
    identity: &'a Identity,
    remote: SocketAddr,
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let (identity, remote) = (self.identity, self.remote);
        tracing::info!(%identity, %remote, "proxy stopped following its settings");
    }
}

#[cfg(test)]
mod tests;
