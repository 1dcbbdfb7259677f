//! The watch loop: one kube watcher per kind (and per namespace, when the settings name
//! some), merged into one stream that updates the [`Cluster`] and, in batches, the registry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{BoxStream, SelectAll};
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use weft_core::RegistryWriter;

use crate::cluster::{Cluster, Key, Kind, Object, Scope};
use crate::policies::{
    self, AuthorizationPolicyObject, BackendPolicyObject, PolicyKind, PolicyStatus,
    RateLimitPolicyObject, RoutePolicyObject,
};
use crate::routes::{self, GrpcRouteObject, HttpRouteObject, RouteKind, StatusUpdate};
use crate::{KubernetesPlatform, RELIST_HOLD};

/// At most this many events that are ready at once go into one registry write.
const MAX_BATCH: usize = 4096;

/// The longest delay between retries of a failing list or watch.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// After this long without a failure, retries start again from the shortest delay.
const RETRY_RESET: Duration = Duration::from_secs(120);

type Item = (usize, Result<Event<Object>, watcher::Error>);

/// Whether writes are held back for a relist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// No relist under way.
    None,
    /// A relist is under way; writes wait until it completes or until then.
    Until(Instant),
    /// A relist took too long; writes go ahead until it completes.
    Expired,
}

/// Feeds `registry` until `shutdown`.
pub(crate) async fn run(
    platform: &KubernetesPlatform,
    registry: RegistryWriter,
    shutdown: CancellationToken,
) {
    let mut routes = group_kinds(&platform.client, &ROUTE_GROUP, &shutdown).await;
    let mut policies = group_kinds(&platform.client, &POLICY_GROUP, &shutdown).await;
    let statuses = Arc::new(StatusQueue::default());
    tokio::spawn(write_statuses(
        platform.client.clone(),
        statuses.clone(),
        shutdown.clone(),
    ));
    let custom: Vec<Kind> = routes.iter().chain(&policies).copied().collect();
    let (mut specs, mut streams) = streams(platform, &custom);
    // Without the Gateway API or Weft's CRDs, ask again now and then: CRDs installed later
    // are picked up without a restart.
    let mut recheck = tokio::time::interval(platform.retry_floor * CRD_RECHECK_FLOORS);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recheck.reset();
    let mut cluster = Cluster::new(platform.trust_domain.clone(), platform.namespaces.clone());
    let mut lists: HashMap<usize, Vec<Object>> = HashMap::new();
    // Streams that have not completed their first list, and those relisting now.
    let mut unlisted: BTreeSet<usize> = (0..specs.len()).collect();
    let mut relisting: BTreeSet<usize> = BTreeSet::new();
    let mut hold = Hold::None;
    let mut synced = false;
    loop {
        let deadline = async {
            match hold {
                Hold::Until(t) => tokio::time::sleep_until(t).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            item = streams.next() => {
                // The watchers retry for ever, so the merged stream does not end.
                let Some(item) = item else { return };
                let mut step = Step { errors: &platform.watch_errors, specs: &specs, cluster: &mut cluster, lists: &mut lists, unlisted: &mut unlisted, relisting: &mut relisting };
                step.handle(item);
                for _ in 0..MAX_BATCH {
                    match streams.next().now_or_never() {
                        Some(Some(item)) => step.handle(item),
                        _ => break,
                    }
                }
            }
            _ = recheck.tick(), if routes.is_empty() || policies.is_empty() => {
                for (group, kinds) in [(&ROUTE_GROUP, &mut routes), (&POLICY_GROUP, &mut policies)] {
                    if !kinds.is_empty() {
                        continue;
                    }
                    if let Ok(list) = platform
                        .client
                        .list_api_group_resources(&group.api_version())
                        .await
                    {
                        *kinds = group.served(&list);
                        if !kinds.is_empty() {
                            tracing::info!(platform = crate::NAME, kinds = ?kinds, "{} installed now; watching it", group.what);
                            add_streams(platform, kinds, &mut specs, &mut streams);
                        }
                    }
                }
            }
            _ = deadline => {
                tracing::warn!(platform = crate::NAME, "a relist is taking longer than {RELIST_HOLD:?}; applying the changes seen so far");
                hold = Hold::Expired;
            }
        }
        hold = match (hold, relisting.is_empty()) {
            (_, true) => Hold::None,
            (Hold::None, false) if synced => Hold::Until(Instant::now() + RELIST_HOLD),
            (h, false) => h,
        };
        if !synced {
            if unlisted.is_empty() {
                let services = cluster.all_services();
                tracing::info!(
                    platform = crate::NAME,
                    services = services.len(),
                    "initial list complete"
                );
                // Routes and policies first: a reader that sees the source synced sees them
                // too.
                if let Some((routes, updates)) = cluster.take_routes() {
                    registry.replace_routes(routes);
                    statuses.push(updates.into_iter().map(Into::into).collect());
                }
                if let Some((policies, updates)) = cluster.take_policies() {
                    registry.replace_policies(policies);
                    statuses.push(updates.into_iter().map(Into::into).collect());
                }
                registry.replace_all(services);
                synced = true;
            }
            continue;
        }
        if matches!(hold, Hold::Until(_)) {
            continue;
        }
        if cluster.is_dirty() {
            let changes = cluster.take_changes();
            tracing::debug!(
                platform = crate::NAME,
                services = changes.len(),
                "registry update"
            );
            registry.update(changes);
        }
        if let Some((routes, updates)) = cluster.take_routes() {
            registry.replace_routes(routes);
            statuses.push(updates.into_iter().map(Into::into).collect());
        }
        if let Some((policies, updates)) = cluster.take_policies() {
            registry.replace_policies(policies);
            statuses.push(updates.into_iter().map(Into::into).collect());
        }
    }
}

/// A group of custom kinds the adapter watches when the API server serves them.
struct Group {
    /// `group/version`.
    group: &'static str,
    version: &'static str,
    /// What it is, for logs.
    what: &'static str,
    /// The kinds, by plural.
    kinds: &'static [(&'static str, Kind)],
}

/// The Gateway API's route kinds.
const ROUTE_GROUP: Group = Group {
    group: routes::GROUP,
    version: routes::VERSION,
    what: "the Gateway API",
    kinds: &[
        ("httproutes", Kind::HttpRoute),
        ("grpcroutes", Kind::GrpcRoute),
    ],
};

/// Weft's policy kinds.
const POLICY_GROUP: Group = Group {
    group: policies::GROUP,
    version: policies::VERSION,
    what: "Weft's policy CRDs",
    kinds: &[
        ("authorizationpolicies", Kind::AuthorizationPolicy),
        ("ratelimitpolicies", Kind::RateLimitPolicy),
        ("backendpolicies", Kind::BackendPolicy),
        ("routepolicies", Kind::RoutePolicy),
    ],
};

impl Group {
    fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    /// The kinds an API resource list names.
    fn served(
        &self,
        list: &k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList,
    ) -> Vec<Kind> {
        let has = |plural: &str| list.resources.iter().any(|r| r.name == plural);
        self.kinds
            .iter()
            .filter(|(plural, _)| has(plural))
            .map(|(_, kind)| *kind)
            .collect()
    }
}

/// The kinds of `group` the API server serves (their CRDs installed), asked at start, again
/// with backoff while the API server does not answer (its lists would fail anyway): without
/// them the mesh's routes and policies come from the mesh file alone until they are
/// installed.
async fn group_kinds(
    client: &kube::Client,
    group: &Group,
    shutdown: &CancellationToken,
) -> Vec<Kind> {
    let mut delay = Duration::from_millis(100);
    loop {
        match client.list_api_group_resources(&group.api_version()).await {
            Ok(list) => {
                let kinds = group.served(&list);
                tracing::info!(platform = crate::NAME, kinds = ?kinds, "{} watched", group.what);
                return kinds;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                tracing::info!(
                    platform = crate::NAME,
                    "{} not installed; the mesh file alone says what they would",
                    group.what
                );
                return Vec::new();
            }
            Err(e) => {
                tracing::warn!(platform = crate::NAME, error = %e, retry_in = ?delay, "could not ask whether {} is installed", group.what);
                tokio::select! {
                    () = shutdown.cancelled() => return Vec::new(),
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RETRY);
            }
        }
    }
}

/// How often, in retry floors (a minute by default), an adapter without the Gateway API asks
/// again whether it is installed.
const CRD_RECHECK_FLOORS: u32 = 75;

/// A status to write on a route or a policy object.
struct Pending {
    kind: Kind,
    key: Key,
    status: serde_json::Value,
}

impl From<StatusUpdate> for Pending {
    fn from(u: StatusUpdate) -> Self {
        let kind = match u.kind {
            RouteKind::Http => Kind::HttpRoute,
            RouteKind::Grpc => Kind::GrpcRoute,
            RouteKind::Policy => Kind::RoutePolicy,
        };
        Self {
            kind,
            key: u.key,
            status: u.status,
        }
    }
}

impl From<PolicyStatus> for Pending {
    fn from(u: PolicyStatus) -> Self {
        let kind = match u.kind {
            PolicyKind::Authorization => Kind::AuthorizationPolicy,
            PolicyKind::RateLimit => Kind::RateLimitPolicy,
            PolicyKind::Backend => Kind::BackendPolicy,
        };
        Self {
            kind,
            key: u.key,
            status: u.status,
        }
    }
}

/// Statuses waiting to be written; a newer status of an object replaces a pending one.
#[derive(Debug, Default)]
struct StatusQueue {
    pending: Mutex<BTreeMap<(Kind, Key), serde_json::Value>>,
    ready: tokio::sync::Notify,
}

impl StatusQueue {
    fn push(&self, updates: Vec<Pending>) {
        if updates.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for u in updates {
            pending.insert((u.kind, u.key), u.status);
        }
        drop(pending);
        self.ready.notify_one();
    }

    fn take(&self) -> BTreeMap<(Kind, Key), serde_json::Value> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Writes route statuses as they come, until `shutdown`. A failed write is logged; the
/// status is written again when the route next changes.
async fn write_statuses(
    client: kube::Client,
    queue: Arc<StatusQueue>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = queue.ready.notified() => {}
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        for ((kind, (ns, name)), status) in queue.take() {
            let status = routes::stamped(status, &now);
            let c = client.clone();
            let result = match kind {
                Kind::HttpRoute => {
                    let api = Api::<HttpRouteObject>::namespaced(c, &ns);
                    write_status(&api, &name, status, routes::merged_status).await
                }
                Kind::GrpcRoute => {
                    let api = Api::<GrpcRouteObject>::namespaced(c, &ns);
                    write_status(&api, &name, status, routes::merged_status).await
                }
                Kind::AuthorizationPolicy => {
                    let api = Api::<AuthorizationPolicyObject>::namespaced(c, &ns);
                    write_status(&api, &name, status, |_, ours| ours).await
                }
                Kind::RateLimitPolicy => {
                    let api = Api::<RateLimitPolicyObject>::namespaced(c, &ns);
                    write_status(&api, &name, status, |_, ours| ours).await
                }
                Kind::BackendPolicy => {
                    let api = Api::<BackendPolicyObject>::namespaced(c, &ns);
                    write_status(&api, &name, status, |_, ours| ours).await
                }
                Kind::RoutePolicy => {
                    let api = Api::<RoutePolicyObject>::namespaced(c, &ns);
                    write_status(&api, &name, status, |_, ours| ours).await
                }
                Kind::Namespace | Kind::Service | Kind::Slice | Kind::Pod => continue,
            };
            match result {
                Ok(()) => {
                    tracing::debug!(platform = crate::NAME, kind = kind.as_str(), %ns, %name, "status written")
                }
                Err(e) => {
                    tracing::warn!(platform = crate::NAME, kind = kind.as_str(), %ns, %name, error = %e, "status not written")
                }
            }
        }
    }
}

/// Writes the mesh's status on object `name`, `merge`d with what it holds (a route keeps other
/// controllers' entries; a policy object's status is the mesh's alone): read the object,
/// merge, and patch at the version read; a conflict (someone wrote in between) starts over,
/// a few times.
async fn write_status<K>(
    api: &Api<K>,
    name: &str,
    ours: serde_json::Value,
    merge: fn(&serde_json::Value, serde_json::Value) -> serde_json::Value,
) -> Result<(), kube::Error>
where
    K: kube::Resource + routes::StatusOf + Clone + serde::de::DeserializeOwned + Debug,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = api.get_status(name).await?;
        let status = merge(current.status(), ours.clone());
        let patch = kube::api::Patch::Merge(serde_json::json!({
            "metadata": {"resourceVersion": current.meta().resource_version},
            "status": status,
        }));
        match api
            .patch_status(name, &kube::api::PatchParams::default(), &patch)
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What handling one watch event may change.
struct Step<'a> {
    errors: &'a tokio::sync::watch::Sender<u64>,
    specs: &'a [(Kind, Scope)],
    cluster: &'a mut Cluster,
    lists: &'a mut HashMap<usize, Vec<Object>>,
    unlisted: &'a mut BTreeSet<usize>,
    relisting: &'a mut BTreeSet<usize>,
}

impl Step<'_> {
    fn handle(&mut self, (i, item): Item) {
        let Some((kind, scope)) = self.specs.get(i) else {
            return;
        };
        match item {
            Ok(Event::Init) => {
                self.lists.insert(i, Vec::new());
                self.relisting.insert(i);
            }
            Ok(Event::InitApply(object)) => self.lists.entry(i).or_default().push(object),
            Ok(Event::InitDone) => {
                let listed = self.lists.remove(&i).unwrap_or_default();
                tracing::debug!(
                    platform = crate::NAME,
                    kind = kind.as_str(),
                    ?scope,
                    objects = listed.len(),
                    "listed"
                );
                self.cluster.replace(*kind, scope, listed);
                self.relisting.remove(&i);
                self.unlisted.remove(&i);
            }
            Ok(Event::Apply(object)) => self.cluster.apply(object),
            Ok(Event::Delete(object)) => self.cluster.delete_object(&object),
            Err(error) => {
                self.errors.send_modify(|n| *n += 1);
                if is_gone(&error) {
                    tracing::info!(
                        platform = crate::NAME,
                        kind = kind.as_str(),
                        ?scope,
                        "resourceVersion expired; relisting"
                    );
                    self.relisting.insert(i);
                } else {
                    tracing::warn!(platform = crate::NAME, kind = kind.as_str(), ?scope, %error, "list or watch failed; retrying");
                }
            }
        }
    }
}

/// Whether the API server said the watch's resourceVersion is too old (410 Gone): the
/// watcher relists next.
fn is_gone(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

/// The scopes the settings call for: every namespace, or each one named.
fn scopes(p: &KubernetesPlatform) -> Vec<Scope> {
    if p.settings.namespaces.is_empty() {
        vec![Scope::All]
    } else {
        p.settings
            .namespaces
            .iter()
            .map(|ns| Scope::Namespace(ns.clone()))
            .collect()
    }
}

/// Every watch the settings call for, with the kind and scope of each.
fn streams(
    p: &KubernetesPlatform,
    custom: &[Kind],
) -> (Vec<(Kind, Scope)>, SelectAll<BoxStream<'static, Item>>) {
    let mut specs = Vec::new();
    let mut all = SelectAll::new();
    let kinds = [Kind::Namespace, Kind::Service, Kind::Slice, Kind::Pod];
    let kinds: Vec<Kind> = kinds.into_iter().chain(custom.iter().copied()).collect();
    add_streams(p, &kinds, &mut specs, &mut all);
    (specs, all)
}

/// Adds a watch of each of `kinds` in every scope, numbered after those in `specs`.
fn add_streams(
    p: &KubernetesPlatform,
    kinds: &[Kind],
    specs: &mut Vec<(Kind, Scope)>,
    all: &mut SelectAll<BoxStream<'static, Item>>,
) {
    for scope in scopes(p) {
        for kind in kinds {
            let i = specs.len();
            all.push(stream_for(p, *kind, &scope, i));
            specs.push((*kind, scope.clone()));
        }
    }
}

/// The watch of `kind` in `scope`, its events numbered `i`.
fn stream_for(
    p: &KubernetesPlatform,
    kind: Kind,
    scope: &Scope,
    i: usize,
) -> BoxStream<'static, Item> {
    let client = p.client.clone();
    let config = watcher::Config::default();
    let floor = p.retry_floor;
    match (scope, kind) {
        (Scope::All, Kind::Namespace) => watch::<Namespace>(Api::all(client), config, i, floor),
        (Scope::Namespace(ns), Kind::Namespace) => watch::<Namespace>(
            Api::all(client),
            config.fields(&format!("metadata.name={ns}")),
            i,
            floor,
        ),
        (Scope::All, Kind::Service) => watch::<Service>(Api::all(client), config, i, floor),
        (Scope::Namespace(ns), Kind::Service) => {
            watch::<Service>(Api::namespaced(client, ns), config, i, floor)
        }
        (Scope::All, Kind::Slice) => watch::<EndpointSlice>(Api::all(client), config, i, floor),
        (Scope::Namespace(ns), Kind::Slice) => {
            watch::<EndpointSlice>(Api::namespaced(client, ns), config, i, floor)
        }
        (Scope::All, Kind::Pod) => watch::<Pod>(Api::all(client), config, i, floor),
        (Scope::Namespace(ns), Kind::Pod) => {
            watch::<Pod>(Api::namespaced(client, ns), config, i, floor)
        }
        (Scope::All, Kind::HttpRoute) => {
            watch::<HttpRouteObject>(Api::all(client), config, i, floor)
        }
        (Scope::Namespace(ns), Kind::HttpRoute) => {
            watch::<HttpRouteObject>(Api::namespaced(client, ns), config, i, floor)
        }
        (Scope::All, Kind::GrpcRoute) => {
            watch::<GrpcRouteObject>(Api::all(client), config, i, floor)
        }
        (Scope::Namespace(ns), Kind::GrpcRoute) => {
            watch::<GrpcRouteObject>(Api::namespaced(client, ns), config, i, floor)
        }
        (Scope::All, Kind::AuthorizationPolicy) => {
            watch::<AuthorizationPolicyObject>(Api::all(client), config, i, floor)
        }
        (Scope::Namespace(ns), Kind::AuthorizationPolicy) => {
            watch::<AuthorizationPolicyObject>(Api::namespaced(client, ns), config, i, floor)
        }
        (Scope::All, Kind::RateLimitPolicy) => {
            watch::<RateLimitPolicyObject>(Api::all(client), config, i, floor)
        }
        (Scope::Namespace(ns), Kind::RateLimitPolicy) => {
            watch::<RateLimitPolicyObject>(Api::namespaced(client, ns), config, i, floor)
        }
        (Scope::All, Kind::BackendPolicy) => {
            watch::<BackendPolicyObject>(Api::all(client), config, i, floor)
        }
        (Scope::Namespace(ns), Kind::BackendPolicy) => {
            watch::<BackendPolicyObject>(Api::namespaced(client, ns), config, i, floor)
        }
        (Scope::All, Kind::RoutePolicy) => {
            watch::<RoutePolicyObject>(Api::all(client), config, i, floor)
        }
        (Scope::Namespace(ns), Kind::RoutePolicy) => {
            watch::<RoutePolicyObject>(Api::namespaced(client, ns), config, i, floor)
        }
    }
}

/// One kind's watcher, its objects reduced to what the mesh needs as they arrive.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    i: usize,
    floor: Duration,
) -> BoxStream<'static, Item>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    for<'a> &'a K: Into<Object>,
{
    let backoff = ResetTimerBackoff::new(Retry::new(floor), RETRY_RESET);
    watcher::watcher(api, config)
        .backoff(backoff)
        .map(move |r| {
            let event = r.map(|e| match e {
                Event::Apply(k) => Event::Apply((&k).into()),
                Event::Delete(k) => Event::Delete((&k).into()),
                Event::Init => Event::Init,
                Event::InitApply(k) => Event::InitApply((&k).into()),
                Event::InitDone => Event::InitDone,
            });
            (i, event)
        })
        .boxed()
}

/// Retry delays: doubling from a floor up to [`MAX_RETRY`], each drawn at random from its
/// upper half, so many clients that failed together do not retry together.
#[derive(Debug)]
struct Retry {
    floor: Duration,
    next: Duration,
    seed: u64,
}

impl Retry {
    fn new(floor: Duration) -> Self {
        Self {
            floor,
            next: floor,
            seed: RandomState::new().hash_one(Instant::now()) | 1,
        }
    }
}

impl Iterator for Retry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // xorshift64: enough randomness for jitter.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let d = self.next;
        self.next = (self.next * 2).min(MAX_RETRY);
        let half = d / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
        Some(half + Duration::from_nanos(self.seed % nanos))
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.next = self.floor;
    }
}
