//! A fake Consul HTTP API for tests, faithful on the wire to what a client of Consul's catalog
//! relies on, written from Consul's published API documentation: the service list
//! `/v1/catalog/services` and the health of a service's instances `/v1/health/service/:name`
//! (with `passing`, `tag` and `ns`), both with blocking queries (`index`, `wait`,
//! `X-Consul-Index`), and ACL tokens (`X-Consul-Token`, `Authorization: Bearer` or `token=`).
//!
//! The catalog holds nodes, each with its `serfHealth` check, and service instances on them,
//! each with its own checks; it changes only through [`FakeConsul::register`],
//! [`FakeConsul::deregister`], [`FakeConsul::set_check`] and the like, each change taking the
//! next index of one Raft-like counter. As in a real cluster, the catalog starts with the
//! `consul` service of the server itself (node `consul-server-1`, port 8300).
//!
//! Behaviour taken from the documentation, and choices where it is silent:
//! - Blocking queries as in [`crate::fake_nomad`] (default wait 5 minutes, at most 10, no
//!   jitter). The index of `/v1/catalog/services` is that of the last registration or
//!   deregistration; that of `/v1/health/service/:name` is the last change to that service's
//!   instances, their checks or their nodes, or, for a name never registered, the former.
//!   `X-Consul-Index` is never below 1.
//! - `passing` keeps the instances whose checks, the node's included, all pass (`warning`
//!   does not pass). An unknown service reads as `[]` with 200.
//! - Namespaces (Consul Enterprise): an instance registered without one is in `default` and is
//!   written without a `Namespace` field, as Consul CE writes it; `ns=` (or
//!   `X-Consul-Namespace`) selects one, `*` all.
//! - ACLs ([`FakeConsul::require_token`]): a token other than the required one is refused with
//!   403 `ACL not found`. A request without a token is the anonymous token, which may read
//!   nothing: as Consul does for reads, the answer leaves out what it may not see (here,
//!   everything) and says so with `X-Consul-Results-Filtered-By-ACLs: true` when that left
//!   something out. (Consul answers 403 `Permission denied` only where it cannot filter; the
//!   two endpoints served here always can.)
//! - An injected failure ([`FakeConsul::fail`]) answers 500 `No cluster leader` or the status
//!   asked for.
//! - A restart keeps the catalog and the index. Moving the index back
//!   ([`FakeConsul::set_index`]) lowers every stored index above it to it; open blocking
//!   queries stay parked and answer the lower index when their wait ends, the case Consul's
//!   documentation tells clients to handle ("reset the index if it goes backwards").
//!
//! Not modelled: writes through the API, the agent endpoints, other catalog and health
//! endpoints, `filter`, `near`, `node-meta`, hash-based blocking, caching, consistency modes,
//! peers, partitions, TLS and HTTP/2.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::fake_http::{
    Blocking, Body, Failure, Gauge, Handler, Query, Server, block, failure, json_response,
    percent_decode, query_meta, request_token, take_failure, text,
};
pub use crate::fake_nomad::RequestLog;
use crate::jwt::random_uuid;

/// The index of the empty catalog.
const FIRST_INDEX: u64 = 1;
/// How many requests [`FakeConsul::requests`] remembers.
const REQUEST_LOG: usize = 10_000;
/// The node of the Consul server itself.
pub const SERVER_NODE: &str = "consul-server-1";

/// The status of a health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckStatus {
    /// `passing`.
    Passing,
    /// `warning`.
    Warning,
    /// `critical`.
    Critical,
}

impl CheckStatus {
    /// As Consul writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }
}

/// A health check of a service instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsulCheck {
    /// Unique on its node.
    pub check_id: String,
    /// Its name.
    pub name: String,
    /// Its status.
    pub status: CheckStatus,
}

/// A service instance on a node, as registered in the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsulService {
    /// The node's name.
    pub node: String,
    /// The node's address.
    pub node_address: String,
    /// The instance's ID, unique on its node.
    pub id: String,
    /// The service's name.
    pub name: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// The address to dial; empty means the node's, as in Consul.
    pub address: String,
    /// The port to dial.
    pub port: u16,
    /// Its namespace (Consul Enterprise); `None` is `default`, written without the field.
    pub namespace: Option<String>,
    /// Its checks (besides the node's `serfHealth`).
    pub checks: Vec<ConsulCheck>,
}

impl ConsulService {
    /// Instance `name` (its ID too) of service `name` on `node` (at `node_address`), at
    /// `address:port`, with no tags and no checks of its own.
    pub fn new(node: &str, node_address: &str, name: &str, address: &str, port: u16) -> Self {
        Self {
            node: node.to_owned(),
            node_address: node_address.to_owned(),
            id: name.to_owned(),
            name: name.to_owned(),
            tags: Vec::new(),
            address: address.to_owned(),
            port,
            namespace: None,
            checks: Vec::new(),
        }
    }

    /// Sets the ID.
    pub fn id(mut self, id: &str) -> Self {
        id.clone_into(&mut self.id);
        self
    }

    /// Sets the tags.
    pub fn tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        self
    }

    /// Sets the namespace.
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.to_owned());
        self
    }

    /// Adds a check `check_id` with `status`.
    pub fn check(mut self, check_id: &str, status: CheckStatus) -> Self {
        self.checks.push(ConsulCheck {
            check_id: check_id.to_owned(),
            name: format!("Service '{}' check", self.name),
            status,
        });
        self
    }

    fn namespace_or_default(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// A fake Consul HTTP API on 127.0.0.1, plain HTTP/1.1. Dropping it stops the server and ends
/// every blocking query.
pub struct FakeConsul {
    inner: Arc<Inner>,
    server: Server,
}

struct Inner {
    state: Mutex<State>,
    /// Bumped on every change; blocking queries wait on it.
    changes: watch::Sender<u64>,
    /// Blocking queries holding for a change.
    parked: Gauge,
}

struct State {
    index: u64,
    /// The index of the last registration or deregistration.
    services_index: u64,
    nodes: BTreeMap<String, Node>,
    /// Instances by node and ID.
    instances: BTreeMap<(String, String), Instance>,
    /// The index of the last change to an instance of a service, by service name.
    service_index: HashMap<String, u64>,
    token: Option<String>,
    failures: Vec<Failure>,
    requests: std::collections::VecDeque<RequestLog>,
}

struct Node {
    id: String,
    address: String,
    serf: CheckStatus,
    create_index: u64,
    modify_index: u64,
    serf_modify_index: u64,
}

struct Instance {
    spec: ConsulService,
    create_index: u64,
    modify_index: u64,
    /// The ModifyIndex of each check, as `spec.checks`.
    check_indexes: Vec<u64>,
}

/// What a request's token may do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Allowed,
    /// No token: the anonymous token, which may read nothing.
    Anonymous,
    /// A token that is not the required one.
    NotFound,
}

// === impl FakeConsul ===

impl FakeConsul {
    /// Starts the server on 127.0.0.1, on a port of its own, with the `consul` service of its
    /// own node registered.
    pub async fn start() -> FakeConsul {
        let mut state = State::new();
        state.register(ConsulService::new(
            SERVER_NODE,
            "127.0.0.1",
            "consul",
            "",
            8300,
        ));
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            changes: watch::Sender::new(0),
            parked: Gauge::default(),
        });
        let handler_inner = inner.clone();
        let handler: Handler = Arc::new(move |req| {
            let inner = handler_inner.clone();
            Box::pin(async move { handle(inner, req).await })
        });
        let server = Server::start("fake Consul", handler);
        FakeConsul { inner, server }
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Creates or replaces (same node and ID) an instance, creating its node (with a passing
    /// `serfHealth`) or updating the node's address. Returns the new index.
    pub fn register(&self, service: ConsulService) -> u64 {
        let index = self.inner.state().register(service);
        self.inner.changed();
        index
    }

    /// Deletes instance `id` of `node`, if there is one (the node stays).
    pub fn deregister(&self, node: &str, id: &str) -> bool {
        let done = self.inner.state().deregister(node, id);
        if done {
            self.inner.changed();
        }
        done
    }

    /// Deletes `node` and every instance on it.
    pub fn deregister_node(&self, node: &str) -> bool {
        let done = self.inner.state().deregister_node(node);
        if done {
            self.inner.changed();
        }
        done
    }

    /// Sets the status of check `check_id` of an instance on `node`; `false` if there is no
    /// such check.
    pub fn set_check(&self, node: &str, check_id: &str, status: CheckStatus) -> bool {
        let done = self.inner.state().set_check(node, check_id, status);
        if done {
            self.inner.changed();
        }
        done
    }

    /// Sets the status of `node`'s `serfHealth` check (a node that stops answering gossip
    /// turns `critical`); `false` if there is no such node.
    pub fn set_node_health(&self, node: &str, status: CheckStatus) -> bool {
        let done = self.inner.state().set_node_health(node, status);
        if done {
            self.inner.changed();
        }
        done
    }

    /// The index of the last change.
    pub fn index(&self) -> u64 {
        self.inner.state().index
    }

    /// Sets the index; the next change takes the one after. Moving it back lowers every stored
    /// index above it to it.
    pub fn set_index(&self, index: u64) {
        self.inner.state().set_index(index);
        self.inner.changed();
    }

    /// Moves the index back to that of an empty catalog; the catalog stays.
    pub fn reset_index(&self) {
        self.set_index(FIRST_INDEX);
    }

    /// Closes every connection at once, idle ones included, with no final byte: open blocking
    /// queries get no answer. New connections are served as before.
    pub fn cut_connections(&self) {
        self.server.cut_connections();
    }

    /// Restarts the server: closes the listener and every connection, then listens again on
    /// the same port. The catalog and the index survive.
    pub async fn restart(&self) {
        self.server.restart(|| {}).await;
    }

    /// The requests received so far (the last 10 000), oldest first.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.inner.state().requests.iter().cloned().collect()
    }

    /// With `Some(token)`, requests need that token (see the module documentation for what
    /// others get); `None` (the default) is a cluster without ACLs.
    pub fn require_token(&self, token: Option<&str>) {
        self.inner.state().token = token.map(str::to_owned);
    }

    /// Makes requests whose path starts with `path_prefix` fail with `status` (500 answers
    /// `No cluster leader`): the next `times` of them, or all of them until
    /// [`FakeConsul::heal`] with `None`.
    pub fn fail(&self, path_prefix: &str, status: u16, times: Option<usize>) {
        self.inner
            .state()
            .failures
            .push(Failure::new(path_prefix, status, times));
    }

    /// Ends every failure [`FakeConsul::fail`] set up.
    pub fn heal(&self) {
        self.inner.state().failures.clear();
    }

    /// Resolves once at least `n` blocking queries are holding for a change. Bound it with a
    /// timeout.
    pub async fn blocked(&self, n: usize) {
        self.inner.parked.at_least(n).await;
    }
}

impl std::fmt::Debug for FakeConsul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeConsul")
            .field("addr", &self.addr())
            .finish_non_exhaustive()
    }
}

// === impl Inner, State ===

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}

impl State {
    fn new() -> Self {
        Self {
            index: FIRST_INDEX,
            services_index: FIRST_INDEX,
            nodes: BTreeMap::new(),
            instances: BTreeMap::new(),
            service_index: HashMap::new(),
            token: None,
            failures: Vec::new(),
            requests: std::collections::VecDeque::new(),
        }
    }

    fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// Marks every service with an instance on `node` changed at `index`.
    fn touch_node_services(&mut self, node: &str, index: u64) {
        let names: Vec<String> = self
            .instances
            .values()
            .filter(|i| i.spec.node == node)
            .map(|i| i.spec.name.clone())
            .collect();
        for name in names {
            self.service_index.insert(name, index);
        }
    }

    fn register(&mut self, spec: ConsulService) -> u64 {
        let index = self.next_index();
        match self.nodes.get_mut(&spec.node) {
            Some(node) if node.address != spec.node_address => {
                node.address.clone_from(&spec.node_address);
                node.modify_index = index;
                let name = spec.node.clone();
                self.touch_node_services(&name, index);
            }
            Some(_) => {}
            None => {
                self.nodes.insert(
                    spec.node.clone(),
                    Node {
                        id: random_uuid(),
                        address: spec.node_address.clone(),
                        serf: CheckStatus::Passing,
                        create_index: index,
                        modify_index: index,
                        serf_modify_index: index,
                    },
                );
            }
        }
        let key = (spec.node.clone(), spec.id.clone());
        let create_index = match self.instances.get(&key) {
            Some(old) => {
                // Renamed: readers of the old name see it go.
                self.service_index.insert(old.spec.name.clone(), index);
                old.create_index
            }
            None => index,
        };
        self.services_index = index;
        self.service_index.insert(spec.name.clone(), index);
        let check_indexes = vec![index; spec.checks.len()];
        self.instances.insert(
            key,
            Instance {
                spec,
                create_index,
                modify_index: index,
                check_indexes,
            },
        );
        index
    }

    fn deregister(&mut self, node: &str, id: &str) -> bool {
        let Some(old) = self.instances.remove(&(node.to_owned(), id.to_owned())) else {
            return false;
        };
        let index = self.next_index();
        self.services_index = index;
        self.service_index.insert(old.spec.name, index);
        true
    }

    fn deregister_node(&mut self, node: &str) -> bool {
        if self.nodes.remove(node).is_none() {
            return false;
        }
        let index = self.next_index();
        self.touch_node_services(node, index);
        self.instances.retain(|(n, _), _| n != node);
        self.services_index = index;
        true
    }

    fn set_check(&mut self, node: &str, check_id: &str, status: CheckStatus) -> bool {
        let found = self.instances.iter().find_map(|(key, inst)| {
            let i = inst
                .spec
                .checks
                .iter()
                .position(|c| c.check_id == check_id)?;
            (key.0 == node).then(|| (key.clone(), i))
        });
        let Some((key, i)) = found else {
            return false;
        };
        let index = self.next_index();
        if let Some(inst) = self.instances.get_mut(&key) {
            if let Some(c) = inst.spec.checks.get_mut(i) {
                c.status = status;
            }
            if let Some(m) = inst.check_indexes.get_mut(i) {
                *m = index;
            }
            self.service_index.insert(inst.spec.name.clone(), index);
        }
        true
    }

    fn set_node_health(&mut self, node: &str, status: CheckStatus) -> bool {
        let index = self.index + 1;
        let Some(n) = self.nodes.get_mut(node) else {
            return false;
        };
        n.serf = status;
        n.serf_modify_index = index;
        self.index = index;
        self.touch_node_services(node, index);
        true
    }

    fn set_index(&mut self, index: u64) {
        let index = index.max(FIRST_INDEX);
        if index < self.index {
            self.services_index = self.services_index.min(index);
            for i in self.service_index.values_mut() {
                *i = (*i).min(index);
            }
            for n in self.nodes.values_mut() {
                n.create_index = n.create_index.min(index);
                n.modify_index = n.modify_index.min(index);
                n.serf_modify_index = n.serf_modify_index.min(index);
            }
            for inst in self.instances.values_mut() {
                inst.create_index = inst.create_index.min(index);
                inst.modify_index = inst.modify_index.min(index);
                for c in &mut inst.check_indexes {
                    *c = (*c).min(index);
                }
            }
        }
        self.index = index;
    }

    fn log(&mut self, req: RequestLog) {
        if self.requests.len() >= REQUEST_LOG {
            self.requests.pop_front();
        }
        self.requests.push_back(req);
    }

    fn access(&self, token: Option<&str>) -> Access {
        match (&self.token, token) {
            (None, _) => Access::Allowed,
            (Some(required), Some(t)) if required == t => Access::Allowed,
            (Some(_), Some(_)) => Access::NotFound,
            (Some(_), None) => Access::Anonymous,
        }
    }

    /// The instances in namespace `ns` (`*`: all).
    fn in_namespace<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.instances
            .values()
            .filter(move |i| ns == "*" || i.spec.namespace_or_default() == ns)
    }

    /// `/v1/catalog/services`: service names and their tags.
    fn catalog_services(&self, ns: &str) -> Value {
        let mut services: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for inst in self.in_namespace(ns) {
            services
                .entry(&inst.spec.name)
                .or_default()
                .extend(inst.spec.tags.iter().map(String::as_str));
        }
        let map: Map<String, Value> = services
            .into_iter()
            .map(|(name, tags)| (name.to_owned(), json!(tags)))
            .collect();
        Value::Object(map)
    }

    /// The index of `/v1/health/service/:name`.
    fn health_index(&self, name: &str) -> u64 {
        self.service_index
            .get(name)
            .copied()
            .unwrap_or(self.services_index)
            .max(FIRST_INDEX)
    }

    /// `/v1/health/service/:name` entries.
    fn health(&self, name: &str, ns: &str, passing: bool, tags: &[String]) -> Vec<Value> {
        self.in_namespace(ns)
            .filter(|i| i.spec.name == name)
            .filter(|i| tags.iter().all(|t| i.spec.tags.contains(t)))
            .filter_map(|i| {
                let node = self.nodes.get(&i.spec.node)?;
                let all_pass = node.serf == CheckStatus::Passing
                    && i.spec
                        .checks
                        .iter()
                        .all(|c| c.status == CheckStatus::Passing);
                (!passing || all_pass).then(|| health_entry(&i.spec.node, node, i))
            })
            .collect()
    }
}

/// One entry of `/v1/health/service/:name`: the node, the instance and their checks.
fn health_entry(node_name: &str, node: &Node, inst: &Instance) -> Value {
    let spec = &inst.spec;
    let with_namespace = |mut v: Value| {
        if let (Some(ns), Some(o)) = (&spec.namespace, v.as_object_mut()) {
            o.insert("Namespace".into(), json!(ns));
        }
        v
    };
    let mut checks = vec![with_namespace(json!({
        "Node": node_name,
        "CheckID": "serfHealth",
        "Name": "Serf Health Status",
        "Status": node.serf.as_str(),
        "Notes": "",
        "Output": if node.serf == CheckStatus::Passing { "Agent alive and reachable" } else { "Agent not live or unreachable" },
        "ServiceID": "",
        "ServiceName": "",
        "ServiceTags": [],
        "Type": "",
        "Interval": "",
        "Timeout": "",
        "CreateIndex": node.create_index,
        "ModifyIndex": node.serf_modify_index,
    }))];
    for (c, modify) in spec.checks.iter().zip(&inst.check_indexes) {
        checks.push(with_namespace(json!({
            "Node": node_name,
            "CheckID": c.check_id,
            "Name": c.name,
            "Status": c.status.as_str(),
            "Notes": "",
            "Output": "",
            "ServiceID": spec.id,
            "ServiceName": spec.name,
            "ServiceTags": spec.tags,
            "Type": "",
            "Interval": "",
            "Timeout": "",
            "CreateIndex": inst.create_index,
            "ModifyIndex": modify,
        })));
    }
    let service = with_namespace(json!({
        "ID": spec.id,
        "Service": spec.name,
        "Tags": spec.tags,
        "Address": spec.address,
        "Meta": {},
        "Port": spec.port,
        "Weights": { "Passing": 1, "Warning": 1 },
        "EnableTagOverride": false,
        "CreateIndex": inst.create_index,
        "ModifyIndex": inst.modify_index,
    }));
    json!({
        "Node": {
            "ID": node.id,
            "Node": node_name,
            "Address": node.address,
            "Datacenter": "dc1",
            "TaggedAddresses": {
                "lan": node.address,
                "lan_ipv4": node.address,
                "wan": node.address,
                "wan_ipv4": node.address,
            },
            "Meta": { "consul-network-segment": "" },
            "CreateIndex": node.create_index,
            "ModifyIndex": node.modify_index,
        },
        "Service": service,
        "Checks": checks,
    })
}

// === the handler ===

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or_default().to_owned();
    let query = Query::parse(&raw_query);
    let token = request_token(req.headers(), "x-consul-token").or_else(|| {
        query
            .get("token")
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    });
    let header_ns = req
        .headers()
        .get("x-consul-namespace")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let access = {
        let mut st = inner.state();
        st.log(RequestLog {
            method: req.method().to_string(),
            path: path.clone(),
            query: raw_query.clone(),
            token: token.clone(),
        });
        if let Some(status) = take_failure(&mut st.failures, &path) {
            return failure(status);
        }
        st.access(token.as_deref())
    };
    let service = path.strip_prefix("/v1/health/service/").map(percent_decode);
    if path != "/v1/catalog/services" && service.as_deref().is_none_or(str::is_empty) {
        return text(StatusCode::NOT_FOUND, "404 page not found");
    }
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("method {} not allowed", req.method()),
        );
    }
    if access == Access::NotFound {
        return text(StatusCode::FORBIDDEN, "ACL not found");
    }
    let blocking = match Blocking::parse(&query) {
        Ok(b) => b,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e),
    };
    let ns = query
        .get("ns")
        .map(str::to_owned)
        .or(header_ns)
        .unwrap_or_else(|| "default".to_owned());
    let anonymous = access == Access::Anonymous;
    let (index, (body, filtered)) = match service {
        None => {
            block(&inner.changes, &inner.parked, &blocking, || {
                let st = inner.state();
                let all = st.catalog_services(&ns);
                let filtered = anonymous && all.as_object().is_some_and(|m| !m.is_empty());
                let body = if anonymous { json!({}) } else { all };
                (st.services_index.max(FIRST_INDEX), (body, filtered))
            })
            .await
        }
        Some(name) => {
            let passing = match query.get("passing") {
                None => false,
                Some(v) => match parse_bool(v) {
                    Some(b) => b,
                    None => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            &format!("Invalid value for ?passing: {v:?}"),
                        );
                    }
                },
            };
            let tags: Vec<String> = query.all("tag").map(str::to_owned).collect();
            block(&inner.changes, &inner.parked, &blocking, || {
                let st = inner.state();
                let all = st.health(&name, &ns, passing, &tags);
                let filtered = anonymous && !all.is_empty();
                let body = if anonymous {
                    Value::Array(Vec::new())
                } else {
                    Value::Array(all)
                };
                (st.health_index(&name), (body, filtered))
            })
            .await
        }
    };
    let mut rsp = query_meta(json_response(StatusCode::OK, &body), "X-Consul", index);
    if filtered {
        rsp.headers_mut().insert(
            "X-Consul-Results-Filtered-By-ACLs",
            HeaderValue::from_static("true"),
        );
    }
    rsp
}

/// A query flag as Consul reads it: present without a value is true.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}
