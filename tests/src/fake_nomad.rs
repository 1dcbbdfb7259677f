//! A fake Nomad HTTP API for tests, faithful on the wire to what a client of Nomad's native
//! service discovery and workload identities relies on, written from Nomad's published API
//! documentation: service registrations read through `/v1/services`, `/v1/service/:name` and
//! `/v1/allocation/:alloc_id/services`
//! with blocking queries (`index`, `wait`, `X-Nomad-Index`), the event stream
//! `/v1/event/stream` (newline-delimited JSON, `{}` heartbeats, resuming from an index out of
//! a bounded buffer), the workload-identity keys at `/.well-known/jwks.json`, and ACL tokens
//! (`X-Nomad-Token` or `Authorization: Bearer`).
//!
//! The registrations change only through [`FakeNomad::register`] and
//! [`FakeNomad::deregister`]; every change takes the next index of one Raft-like counter, as
//! every write to Nomad's state store does. What a test does to the server itself (cut the
//! connections, restart, move the index back, fail requests) mirrors what a real cluster does
//! to its clients.
//!
//! Behaviour taken from the documentation, and choices where it is silent:
//! - A blocking query answers at once when the index it is about is above the request's
//!   `index` (or when there is no `index`), and otherwise holds until it is, or until `wait`
//!   ends (default 5 minutes, at most 10; Go duration syntax such as `500ms`, `5s`, `1m30s`).
//!   Nomad adds up to `wait / 16` of random jitter; the fake adds none, so waits in tests are
//!   exact. The index of `/v1/services` is that of the last change to any registration; that
//!   of `/v1/service/:name` is the last change to a registration of that name in the
//!   namespace, or, for a name never registered there, the former. `X-Nomad-Index` is never
//!   below 1.
//! - An unknown service reads as an empty list with 200, as Nomad answers.
//! - `/v1/services` lists only namespaces that have services; `namespace=*` lists all.
//! - The event stream sends the events of index `index` and later (`0`, the default: all the
//!   buffer holds), then new ones as they happen, one line `{"Index":N,"Events":[...]}` per
//!   change, and a `{}` line every heartbeat interval (10 s as Nomad, [`FakeNomad::set_heartbeat`]
//!   for tests). When `index` is older than the oldest event the buffer holds, the stream starts
//!   at the oldest one it holds (the documentation: "If the requested index is no longer in the
//!   buffer the stream will start at the next available index"), so a client sees the gap as a
//!   jump between the index it asked for and the first it gets. A stream that falls behind the
//!   buffer's end jumps the same way. Service events carry `Topic` `Service`, `Type`
//!   `ServiceRegistration` or `ServiceDeregistration`, `Key` the registration's ID,
//!   `FilterKeys` its job ID and service name, and `Payload.Service` the registration (its
//!   last state, for a deregistration); `topic=Service:<key>` matches the key or a filter key.
//! - ACLs ([`FakeNomad::require_token`]): a request without a token is the anonymous token,
//!   which may do nothing: 403 `Permission denied` (text/plain), except that listing services
//!   in every namespace (`namespace=*`) filters out what it may not see and answers an empty
//!   list, as the documentation says of the wildcard. A token other than the required one is
//!   refused with the same 403 (what Nomad 1.10.1 and later answer for an unknown token). The
//!   JWKS needs no token.
//! - A slow key set ([`FakeNomad::hold_jwks`]): JWKS requests are held unanswered until the
//!   test releases them, and the test can wait until a given number is being held.
//! - An injected failure ([`FakeNomad::fail`]) answers 500 `No cluster leader` (text/plain) or
//!   the status asked for.
//! - A restart empties the event buffer (Nomad keeps it in memory); the registrations and the
//!   index survive. Moving the index back ([`FakeNomad::set_index`]) clamps every stored
//!   index to the new one, empties the event buffer and ends the open event streams, as the
//!   restore or the new cluster that causes it would; open blocking queries stay parked and,
//!   when their wait ends, answer the lower index.
//!
//! Not modelled: writes through the API (registering, deleting registrations), other topics
//! and endpoints, `filter`, `choose`, paging, consistency modes, regions, TLS and HTTP/2.
//!
//! The server plumbing at the end of this file (listener generations, cut connections,
//! blocking-query waits, query and duration parsing) also serves [`crate::fake_consul`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::fake_http::{
    Blocking, Body, Failure, Gauge, GaugeGuard, Handler, Query, Server, block, failure,
    json_response, percent_decode, query_meta, request_token, take_failure, text,
};
use crate::jwt::{TestKey, jwks, random_uuid};

/// The index of the empty store.
const FIRST_INDEX: u64 = 1;
/// How often an event stream sends `{}` unless told otherwise (Nomad's interval).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// How many events the buffer holds unless told otherwise (Nomad's default
/// `event_buffer_size`).
pub const DEFAULT_EVENT_BUFFER: usize = 100;
/// How many requests [`FakeNomad::requests`] remembers.
const REQUEST_LOG: usize = 10_000;
/// The path of the workload-identity keys.
const JWKS_PATH: &str = "/.well-known/jwks.json";

/// One service registration, as `/v1/service/:name` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRegistration {
    /// Unique within the namespace.
    pub id: String,
    /// The service's name.
    pub service_name: String,
    /// The namespace of its job.
    pub namespace: String,
    /// The client node running the allocation.
    pub node_id: String,
    /// The node's datacenter.
    pub datacenter: String,
    /// The job that registered it.
    pub job_id: String,
    /// The allocation that registered it.
    pub alloc_id: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// The address to dial.
    pub address: String,
    /// The port to dial.
    pub port: u16,
    /// Set by the server: the index that created it.
    pub create_index: u64,
    /// Set by the server: the index that last changed it.
    pub modify_index: u64,
}

impl ServiceRegistration {
    /// A registration of `service` in `namespace` at `address:port`, by job `service` in a new
    /// allocation on a new node of datacenter `dc1`, with an ID made as Nomad makes them
    /// (`_nomad-task-<alloc>-<job>-<service>-<port>`).
    pub fn new(namespace: &str, service: &str, address: &str, port: u16) -> Self {
        let mut reg = Self {
            id: String::new(),
            service_name: service.to_owned(),
            namespace: namespace.to_owned(),
            node_id: random_uuid(),
            datacenter: "dc1".to_owned(),
            job_id: service.to_owned(),
            alloc_id: random_uuid(),
            tags: Vec::new(),
            address: address.to_owned(),
            port,
            create_index: 0,
            modify_index: 0,
        };
        reg.id = reg.generated_id();
        reg
    }

    /// Sets the job (and the ID, if it was the generated one).
    pub fn job(self, job: &str) -> Self {
        self.renamed(|r| job.clone_into(&mut r.job_id))
    }

    /// Sets the allocation (and the ID, if it was the generated one).
    pub fn alloc(self, alloc: &str) -> Self {
        self.renamed(|r| alloc.clone_into(&mut r.alloc_id))
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

    /// Sets the node.
    pub fn node(mut self, node_id: &str) -> Self {
        node_id.clone_into(&mut self.node_id);
        self
    }

    /// Sets the datacenter.
    pub fn datacenter(mut self, dc: &str) -> Self {
        dc.clone_into(&mut self.datacenter);
        self
    }

    /// The registration as Nomad writes it.
    pub fn to_json(&self) -> Value {
        json!({
            "ID": self.id,
            "ServiceName": self.service_name,
            "Namespace": self.namespace,
            "NodeID": self.node_id,
            "Datacenter": self.datacenter,
            "JobID": self.job_id,
            "AllocID": self.alloc_id,
            "Tags": self.tags,
            "Address": self.address,
            "Port": self.port,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        })
    }

    fn generated_id(&self) -> String {
        format!(
            "_nomad-task-{}-{}-{}-{}",
            self.alloc_id, self.job_id, self.service_name, self.port
        )
    }

    /// Applies `change`, keeping the ID generated if it was.
    fn renamed(mut self, change: impl FnOnce(&mut Self)) -> Self {
        let generated = self.id == self.generated_id();
        change(&mut self);
        if generated {
            self.id = self.generated_id();
        }
        self
    }
}

/// One request a fake server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLog {
    /// `GET`, `PUT`...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string (percent-encoded), empty when there is none.
    pub query: String,
    /// The ACL token the request carried (in the product's token header or as a bearer
    /// token), if any.
    pub token: Option<String>,
}

/// A fake Nomad HTTP API on 127.0.0.1, plain HTTP/1.1. Dropping it stops the server and ends
/// every blocking query and event stream.
pub struct FakeNomad {
    inner: Arc<Inner>,
    server: Server,
}

struct Inner {
    state: Mutex<State>,
    /// Bumped on every change; blocking queries and event streams wait on it.
    changes: watch::Sender<u64>,
    /// Blocking queries holding for a change.
    parked: Gauge,
    /// Open event streams.
    streams: Gauge,
    /// `true` while JWKS requests are held ([`FakeNomad::hold_jwks`]).
    jwks_hold: watch::Sender<bool>,
    /// JWKS requests being held.
    jwks_held: Gauge,
}

/// Everything the server knows; one lock, never held across an await.
struct State {
    /// The index of the last change.
    index: u64,
    /// The index of the last change to any registration.
    table_index: u64,
    /// Registrations by namespace and ID.
    regs: BTreeMap<(String, String), ServiceRegistration>,
    /// The index of the last change to a registration, by namespace and service name.
    service_index: HashMap<(String, String), u64>,
    /// The last events, oldest first.
    events: VecDeque<Event>,
    event_cap: usize,
    /// Bumped each time the index goes back: open event streams end.
    resets: u64,
    heartbeat: Duration,
    token: Option<String>,
    jwks: Value,
    jwks_fetches: u64,
    failures: Vec<Failure>,
    requests: VecDeque<RequestLog>,
}

/// One event of topic `Service`.
struct Event {
    index: u64,
    ty: &'static str,
    namespace: String,
    key: String,
    filter_keys: [String; 2],
    service: Value,
}

/// Which events a stream wants.
struct EventFilter {
    namespace: String,
    /// `(topic, key)`; empty for every topic.
    topics: Vec<(String, String)>,
}

/// What a request's ACL token may do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Allowed,
    /// No token: the anonymous token, which may do nothing.
    Anonymous,
    /// A token that is not the required one.
    Denied,
}

// === impl FakeNomad ===

impl FakeNomad {
    /// Starts the server on 127.0.0.1, on a port of its own.
    pub async fn start() -> FakeNomad {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::new()),
            changes: watch::Sender::new(0),
            parked: Gauge::default(),
            streams: Gauge::default(),
            jwks_hold: watch::Sender::new(false),
            jwks_held: Gauge::default(),
        });
        let handler_inner = inner.clone();
        let handler: Handler = Arc::new(move |req| {
            let inner = handler_inner.clone();
            Box::pin(async move { handle(inner, req).await })
        });
        let server = Server::start("fake Nomad", handler);
        FakeNomad { inner, server }
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Creates or replaces (same namespace and ID) a registration: it takes the next index as
    /// its ModifyIndex (and its CreateIndex, unless it replaces one), the event streams get a
    /// `ServiceRegistration` event, and the blocking queries about it answer. Returns the new
    /// index.
    pub fn register(&self, reg: ServiceRegistration) -> u64 {
        let index = self.inner.state().register(reg);
        self.inner.changed();
        index
    }

    /// Deletes the registration `id` of `namespace`, if there is one: the event streams get a
    /// `ServiceDeregistration` event carrying its last state, with the new index.
    pub fn deregister(&self, namespace: &str, id: &str) -> bool {
        let done = self.inner.state().deregister(namespace, id);
        if done {
            self.inner.changed();
        }
        done
    }

    /// The registrations, ordered by namespace and ID.
    pub fn registrations(&self) -> Vec<ServiceRegistration> {
        self.inner.state().regs.values().cloned().collect()
    }

    /// The index of the last change.
    pub fn index(&self) -> u64 {
        self.inner.state().index
    }

    /// Sets the index; the next change takes the one after. Moving it back (as a restore from
    /// an older snapshot does) lowers every stored index above it to it, empties the event
    /// buffer and ends the open event streams; see the module documentation.
    pub fn set_index(&self, index: u64) {
        self.inner.state().set_index(index);
        self.inner.changed();
    }

    /// Moves the index back to that of an empty store, as a new cluster would have
    /// ([`FakeNomad::set_index`]); the registrations stay.
    pub fn reset_index(&self) {
        self.set_index(FIRST_INDEX);
    }

    /// Closes every connection at once, idle ones included, with no final byte: open blocking
    /// queries get no answer and event streams end mid-stream, as a network failure would
    /// have it. New connections are served as before.
    pub fn cut_connections(&self) {
        self.server.cut_connections();
    }

    /// Restarts the server: closes the listener and every connection, empties the event
    /// buffer, then listens again on the same port. The registrations and the index survive.
    pub async fn restart(&self) {
        self.server
            .restart(|| self.inner.state().events.clear())
            .await;
    }

    /// How often event streams opened from now on send a `{}` heartbeat line.
    pub fn set_heartbeat(&self, every: Duration) {
        self.inner.state().heartbeat = every;
    }

    /// How many events the buffer holds (at least one); older ones are dropped at once.
    pub fn set_event_buffer(&self, events: usize) {
        let mut st = self.inner.state();
        st.event_cap = events.max(1);
        st.trim_events();
    }

    /// The requests received so far (the last 10 000), oldest first.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.inner.state().requests.iter().cloned().collect()
    }

    /// How many times `/.well-known/jwks.json` was requested.
    pub fn jwks_fetches(&self) -> u64 {
        self.inner.state().jwks_fetches
    }

    /// Publishes `keys` at `/.well-known/jwks.json` (initially none: `{"keys":[]}`).
    pub fn set_keys(&self, keys: &[&TestKey]) {
        self.inner.state().jwks = jwks(keys);
    }

    /// Serves `doc` as it is at `/.well-known/jwks.json`, malformed or not.
    pub fn set_jwks(&self, doc: Value) {
        self.inner.state().jwks = doc;
    }

    /// Holds every `/.well-known/jwks.json` request from now on without an answer until
    /// [`FakeNomad::release_jwks`], as a slow or overloaded server would: the request is
    /// received, logged and counted at once, and answered with the key set published at the
    /// moment of release.
    pub fn hold_jwks(&self) {
        self.inner.jwks_hold.send_replace(true);
    }

    /// Answers the JWKS requests [`FakeNomad::hold_jwks`] held, and the next ones at once.
    pub fn release_jwks(&self) {
        self.inner.jwks_hold.send_replace(false);
    }

    /// Resolves once at least `n` JWKS requests are being held (received, not answered).
    /// Bound it with a timeout.
    pub async fn jwks_held(&self, n: usize) {
        self.inner.jwks_held.at_least(n).await;
    }

    /// With `Some(token)`, every API request except the JWKS needs that token; `None` (the
    /// default) is a cluster without ACLs.
    pub fn require_token(&self, token: Option<&str>) {
        self.inner.state().token = token.map(str::to_owned);
    }

    /// Makes requests whose path starts with `path_prefix` fail with `status` (500 answers
    /// `No cluster leader`): the next `times` of them, or all of them until
    /// [`FakeNomad::heal`] with `None`. A failing request is still logged (and a JWKS fetch
    /// counted).
    pub fn fail(&self, path_prefix: &str, status: u16, times: Option<usize>) {
        self.inner
            .state()
            .failures
            .push(Failure::new(path_prefix, status, times));
    }

    /// Ends every failure [`FakeNomad::fail`] set up.
    pub fn heal(&self) {
        self.inner.state().failures.clear();
    }

    /// Resolves once at least `n` blocking queries are holding for a change (so that a change
    /// made after this resolves reaches them). Bound it with a timeout.
    pub async fn blocked(&self, n: usize) {
        self.inner.parked.at_least(n).await;
    }

    /// Resolves once at least `n` event streams are open (so that a change made after this
    /// resolves reaches them). Bound it with a timeout.
    pub async fn streams(&self, n: usize) {
        self.inner.streams.at_least(n).await;
    }
}

impl std::fmt::Debug for FakeNomad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeNomad")
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
            table_index: FIRST_INDEX,
            regs: BTreeMap::new(),
            service_index: HashMap::new(),
            events: VecDeque::new(),
            event_cap: DEFAULT_EVENT_BUFFER,
            resets: 0,
            heartbeat: DEFAULT_HEARTBEAT,
            token: None,
            jwks: jwks(&[]),
            jwks_fetches: 0,
            failures: Vec::new(),
            requests: VecDeque::new(),
        }
    }

    fn register(&mut self, mut reg: ServiceRegistration) -> u64 {
        self.index += 1;
        let index = self.index;
        let key = (reg.namespace.clone(), reg.id.clone());
        reg.create_index = index;
        if let Some(old) = self.regs.get(&key) {
            reg.create_index = old.create_index;
            // Renamed: readers of the old name see it go.
            self.service_index
                .insert((old.namespace.clone(), old.service_name.clone()), index);
        }
        reg.modify_index = index;
        self.table_index = index;
        self.service_index
            .insert((reg.namespace.clone(), reg.service_name.clone()), index);
        self.push_event("ServiceRegistration", &reg);
        self.regs.insert(key, reg);
        index
    }

    fn deregister(&mut self, namespace: &str, id: &str) -> bool {
        let Some(reg) = self.regs.remove(&(namespace.to_owned(), id.to_owned())) else {
            return false;
        };
        self.index += 1;
        let index = self.index;
        self.table_index = index;
        self.service_index
            .insert((reg.namespace.clone(), reg.service_name.clone()), index);
        self.push_event("ServiceDeregistration", &reg);
        true
    }

    fn push_event(&mut self, ty: &'static str, reg: &ServiceRegistration) {
        self.events.push_back(Event {
            index: self.index,
            ty,
            namespace: reg.namespace.clone(),
            key: reg.id.clone(),
            filter_keys: [reg.job_id.clone(), reg.service_name.clone()],
            service: reg.to_json(),
        });
        self.trim_events();
    }

    fn trim_events(&mut self) {
        while self.events.len() > self.event_cap {
            self.events.pop_front();
        }
    }

    fn set_index(&mut self, index: u64) {
        let index = index.max(FIRST_INDEX);
        if index < self.index {
            self.table_index = self.table_index.min(index);
            for i in self.service_index.values_mut() {
                *i = (*i).min(index);
            }
            for reg in self.regs.values_mut() {
                reg.create_index = reg.create_index.min(index);
                reg.modify_index = reg.modify_index.min(index);
            }
            self.events.clear();
            self.resets += 1;
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
            (Some(_), Some(_)) => Access::Denied,
            (Some(_), None) => Access::Anonymous,
        }
    }

    /// The body of `/v1/services` for `namespace` (`*`: all).
    fn services(&self, namespace: &str) -> Value {
        let mut by_ns: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
        for reg in self
            .regs
            .values()
            .filter(|r| namespace == "*" || r.namespace == namespace)
        {
            by_ns
                .entry(&reg.namespace)
                .or_default()
                .entry(&reg.service_name)
                .or_default()
                .extend(reg.tags.iter().map(String::as_str));
        }
        let list: Vec<Value> = by_ns
            .into_iter()
            .map(|(ns, services)| {
                let services: Vec<Value> = services
                    .into_iter()
                    .map(|(name, tags)| json!({ "ServiceName": name, "Tags": tags }))
                    .collect();
                json!({ "Namespace": ns, "Services": services })
            })
            .collect();
        Value::Array(list)
    }

    /// The index and body of `/v1/service/:name` in `namespace` (`*`: all).
    fn service(&self, namespace: &str, name: &str) -> (u64, Value) {
        let index = self
            .service_index
            .iter()
            .filter(|((ns, n), _)| n == name && (namespace == "*" || ns == namespace))
            .map(|(_, i)| *i)
            .max()
            .unwrap_or(self.table_index);
        let regs: Vec<Value> = self
            .regs
            .values()
            .filter(|r| r.service_name == name && (namespace == "*" || r.namespace == namespace))
            .map(ServiceRegistration::to_json)
            .collect();
        (index.max(FIRST_INDEX), Value::Array(regs))
    }
}

// === impl EventFilter ===

impl EventFilter {
    fn parse(query: &Query) -> Result<Self, String> {
        let mut topics = Vec::new();
        for t in query.all("topic") {
            let (topic, key) = t.split_once(':').unwrap_or((t, "*"));
            if topic.is_empty() || key.is_empty() || key.contains(':') {
                return Err(format!("Invalid topic format: {t:?}"));
            }
            topics.push((topic.to_owned(), key.to_owned()));
        }
        Ok(Self {
            namespace: query.get("namespace").unwrap_or("default").to_owned(),
            topics,
        })
    }

    fn matches(&self, e: &Event) -> bool {
        let namespace = self.namespace == "*" || self.namespace == e.namespace;
        let topic = self.topics.is_empty()
            || self.topics.iter().any(|(t, k)| {
                (t == "*" || t == "Service")
                    && (k == "*" || *k == e.key || e.filter_keys.contains(k))
            });
        namespace && topic
    }
}

impl Event {
    /// The stream line carrying this event.
    fn line(&self) -> Bytes {
        let event = json!({
            "Topic": "Service",
            "Type": self.ty,
            "Key": self.key,
            "Namespace": self.namespace,
            "FilterKeys": self.filter_keys,
            "Index": self.index,
            "Payload": { "Service": self.service },
        });
        let mut line = json!({ "Index": self.index, "Events": [event] }).to_string();
        line.push('\n');
        Bytes::from(line)
    }
}

// === the handler ===

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or_default().to_owned();
    let token = request_token(req.headers(), "x-nomad-token");
    let access = {
        let mut st = inner.state();
        st.log(RequestLog {
            method: req.method().to_string(),
            path: path.clone(),
            query: raw_query.clone(),
            token: token.clone(),
        });
        if path == JWKS_PATH {
            st.jwks_fetches += 1;
        }
        if let Some(status) = take_failure(&mut st.failures, &path) {
            return failure(status);
        }
        st.access(token.as_deref())
    };
    let query = Query::parse(&raw_query);
    let service = path.strip_prefix("/v1/service/").map(percent_decode);
    // `/v1/allocation/:alloc_id/services`: the registrations of one allocation.
    let allocation = path
        .strip_prefix("/v1/allocation/")
        .and_then(|rest| rest.strip_suffix("/services"))
        .map(percent_decode)
        .filter(|a| !a.is_empty() && !a.contains('/'));
    let known = path == JWKS_PATH
        || path == "/v1/services"
        || path == "/v1/event/stream"
        || allocation.is_some()
        || service.as_deref().is_some_and(|s| !s.is_empty());
    if !known {
        return text(StatusCode::NOT_FOUND, "404 page not found");
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Invalid method");
    }
    if path == JWKS_PATH {
        let mut hold = inner.jwks_hold.subscribe();
        if *hold.borrow_and_update() {
            let _held = inner.jwks_held.enter();
            // The sender lives as long as `inner`, so this cannot fail.
            let _ = hold.wait_for(|held| !held).await;
        }
        let doc = inner.state().jwks.clone();
        return json_response(StatusCode::OK, &doc);
    }
    if access == Access::Denied
        || (access == Access::Anonymous
            && !(path == "/v1/services" && query.get("namespace") == Some("*")))
    {
        return text(StatusCode::FORBIDDEN, "Permission denied");
    }
    if path == "/v1/event/stream" {
        return event_stream(&inner, &query);
    }
    if let Some(alloc) = allocation {
        let st = inner.state();
        let regs: Vec<Value> = st
            .regs
            .values()
            .filter(|r| r.alloc_id == alloc)
            .map(ServiceRegistration::to_json)
            .collect();
        let index = st.table_index.max(1);
        drop(st);
        let mut rsp = json_response(StatusCode::OK, &Value::Array(regs));
        if let Ok(v) = index.to_string().parse() {
            rsp.headers_mut().insert("x-nomad-index", v);
        }
        return rsp;
    }
    let blocking = match Blocking::parse(&query) {
        Ok(b) => b,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e),
    };
    let namespace = query.get("namespace").unwrap_or("default").to_owned();
    let (index, body) = match service {
        Some(name) => {
            block(&inner.changes, &inner.parked, &blocking, || {
                inner.state().service(&namespace, &name)
            })
            .await
        }
        None => {
            block(&inner.changes, &inner.parked, &blocking, || {
                let st = inner.state();
                let body = if access == Access::Anonymous {
                    // The wildcard filters out every namespace the anonymous token cannot
                    // read: all of them.
                    Value::Array(Vec::new())
                } else {
                    st.services(&namespace)
                };
                (st.table_index.max(FIRST_INDEX), body)
            })
            .await
        }
    };
    query_meta(json_response(StatusCode::OK, &body), "X-Nomad", index)
}

/// State of one event stream between two chunks.
struct StreamState {
    inner: Arc<Inner>,
    /// The first index not looked at yet.
    next: u64,
    filter: EventFilter,
    changes: watch::Receiver<u64>,
    heartbeat: tokio::time::Interval,
    resets: u64,
    pending: VecDeque<Bytes>,
    done: bool,
    _open: GaugeGuard,
}

fn event_stream(inner: &Arc<Inner>, query: &Query) -> Response<Body> {
    let next = match query.get("index").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(i)) => i,
        Some(Err(_)) => return text(StatusCode::BAD_REQUEST, "Invalid index"),
    };
    let filter = match EventFilter::parse(query) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e),
    };
    let (every, resets) = {
        let st = inner.state();
        (st.heartbeat.max(Duration::from_millis(1)), st.resets)
    };
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = StreamState {
        inner: inner.clone(),
        next,
        filter,
        changes: inner.changes.subscribe(),
        heartbeat,
        resets,
        pending: VecDeque::new(),
        done: false,
        _open: inner.streams.enter(),
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            if let Some(line) = s.pending.pop_front() {
                return Some((Ok(Frame::data(line)), s));
            }
            s.changes.borrow_and_update();
            {
                let st = s.inner.state();
                if st.resets != s.resets {
                    drop(st);
                    s.done = true;
                    let reset = std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "the index went back: the stream ends",
                    );
                    return Some((Err(reset), s));
                }
                let from = s.next;
                for e in st.events.iter().filter(|e| e.index >= from) {
                    if s.filter.matches(e) {
                        s.pending.push_back(e.line());
                    }
                    s.next = e.index + 1;
                }
            }
            if !s.pending.is_empty() {
                continue;
            }
            tokio::select! {
                changed = s.changes.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = s.heartbeat.tick() => s.pending.push_back(Bytes::from_static(b"{}\n")),
            }
        }
    });
    let mut rsp = Response::new(StreamBody::new(stream).boxed_unsync());
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rsp
}
