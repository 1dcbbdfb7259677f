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
    let mut routes = route_kinds(&platform.client, &shutdown).await;
    let statuses = Arc::new(StatusQueue::default());
    tokio::spawn(write_statuses(
        platform.client.clone(),
        statuses.clone(),
        shutdown.clone(),
    ));
    let (mut specs, mut streams) = streams(platform, &routes);
    // Without the Gateway API, ask again now and then: CRDs installed later are picked up
    // without a restart.
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
            _ = recheck.tick(), if routes.is_empty() => {
                if let Ok(list) = platform
                    .client
                    .list_api_group_resources(&format!("{}/{}", routes::GROUP, routes::VERSION))
                    .await
                {
                    routes = kinds_served(&list);
                    if !routes.is_empty() {
                        tracing::info!(platform = crate::NAME, kinds = ?routes, "the Gateway API is installed now; watching its routes");
                        add_streams(platform, &routes, &mut specs, &mut streams);
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
                // Routes first: a reader that sees the source synced sees its routes too.
                if let Some((routes, updates)) = cluster.take_routes() {
                    registry.replace_routes(routes);
                    statuses.push(updates);
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
            statuses.push(updates);
        }
    }
}

/// The route kinds the API server serves (the Gateway API CRDs installed), asked at start,
/// again with backoff while the API server does not answer (its lists would fail anyway):
/// without them the mesh's routes come from the mesh file alone until they are installed.
async fn route_kinds(client: &kube::Client, shutdown: &CancellationToken) -> Vec<Kind> {
    let mut delay = Duration::from_millis(100);
    loop {
        let asked = client
            .list_api_group_resources(&format!("{}/{}", routes::GROUP, routes::VERSION))
            .await;
        match asked {
            Ok(list) => {
                let kinds = kinds_served(&list);
                tracing::info!(platform = crate::NAME, kinds = ?kinds, "Gateway API routes watched");
                return kinds;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                tracing::info!(
                    platform = crate::NAME,
                    "no Gateway API routes (the CRDs are not installed); routes come from the mesh file only"
                );
                return Vec::new();
            }
            Err(e) => {
                tracing::warn!(platform = crate::NAME, error = %e, retry_in = ?delay, "could not ask whether the Gateway API is installed");
                tokio::select! {
                    () = shutdown.cancelled() => return Vec::new(),
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RETRY);
            }
        }
    }
}

/// The route kinds an API resource list names.
fn kinds_served(
    list: &k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList,
) -> Vec<Kind> {
    let has = |plural: &str| list.resources.iter().any(|r| r.name == plural);
    [
        ("httproutes", Kind::HttpRoute),
        ("grpcroutes", Kind::GrpcRoute),
    ]
    .into_iter()
    .filter(|(plural, _)| has(plural))
    .map(|(_, kind)| kind)
    .collect()
}

/// How often, in retry floors (a minute by default), an adapter without the Gateway API asks
/// again whether it is installed.
const CRD_RECHECK_FLOORS: u32 = 75;

/// Route statuses waiting to be written; a newer status of a route replaces a pending one.
#[derive(Debug, Default)]
struct StatusQueue {
    pending: Mutex<BTreeMap<(RouteKind, Key), serde_json::Value>>,
    ready: tokio::sync::Notify,
}

impl StatusQueue {
    fn push(&self, updates: Vec<StatusUpdate>) {
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

    fn take(&self) -> BTreeMap<(RouteKind, Key), serde_json::Value> {
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
            let result = match kind {
                RouteKind::Http => {
                    let api = Api::<HttpRouteObject>::namespaced(client.clone(), &ns);
                    write_status(&api, &name, status).await
                }
                RouteKind::Grpc => {
                    let api = Api::<GrpcRouteObject>::namespaced(client.clone(), &ns);
                    write_status(&api, &name, status).await
                }
            };
            match result {
                Ok(()) => {
                    tracing::debug!(platform = crate::NAME, kind = kind.as_str(), %ns, %name, "route status written")
                }
                Err(e) => {
                    tracing::warn!(platform = crate::NAME, kind = kind.as_str(), %ns, %name, error = %e, "route status not written")
                }
            }
        }
    }
}

/// Writes the mesh's status entries on route `name`, keeping other controllers' entries: read
/// the route, merge, and patch at the version read; a conflict (someone wrote in between)
/// starts over, a few times.
async fn write_status<K>(
    api: &Api<K>,
    name: &str,
    ours: serde_json::Value,
) -> Result<(), kube::Error>
where
    K: kube::Resource + routes::StatusOf + Clone + serde::de::DeserializeOwned + Debug,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = api.get_status(name).await?;
        let status = routes::merged_status(current.status(), ours.clone());
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
    routes: &[Kind],
) -> (Vec<(Kind, Scope)>, SelectAll<BoxStream<'static, Item>>) {
    let mut specs = Vec::new();
    let mut all = SelectAll::new();
    let kinds = [Kind::Namespace, Kind::Service, Kind::Slice, Kind::Pod];
    let kinds: Vec<Kind> = kinds.into_iter().chain(routes.iter().copied()).collect();
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
