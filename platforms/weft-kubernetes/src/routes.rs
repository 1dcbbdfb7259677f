//! Gateway API routes in the mesh (the GAMMA profile): `HTTPRoute` and `GRPCRoute`
//! (`gateway.networking.k8s.io/v1`) whose `parentRefs` name a Service.
//!
//! The adapter watches both kinds when the API server serves the group (the Gateway API CRDs
//! are installed), keeps each route's `spec`, `generation` and creation time, and turns them
//! into the mesh's route model with the same types as the mesh file's routes
//! ([`weft_core::policy::route_spec`]), oldest first, then by namespace and name, as Gateway
//! API orders ties. Parent references to anything but a Service (a Gateway) are another
//! controller's business: a route with no Service parent is left alone, status included.
//!
//! Weft's `RoutePolicy` objects (`weft.dev/v1alpha1`) add to a route the rule keys Gateway
//! API lacks (timeouts for gRPC, retry conditions, faults, limits;
//! [`weft_core::policy::route_policy`]): each is applied, oldest first, to the translated
//! route it targets, and says in its `Accepted` condition whether it found it.
//!
//! Each route's `status.parents` says, per Service parent, what the mesh made of it:
//! - `Accepted`: `True`/`Accepted`; `False`/`UnsupportedValue` with the key at fault when the
//!   spec cannot be used (the route's last good version stays in force); `False`/
//!   `NoMatchingParent` when the parent Service does not exist;
//! - `ResolvedRefs`: `True`/`ResolvedRefs`, or `False`/`BackendNotFound` naming the backends
//!   that do not exist (they get no traffic if their weight is 0, else 500 for their share).
//!
//! A status is written only when it changes: the route is read, the entries of other
//! controllers (Gateways the route is also bound to) are kept, and the status subresource is
//! patched at the version read (a conflict starts over). When a route stops naming any
//! Service, the mesh takes its entries back.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weft_core::ServiceName;
use weft_core::policy::route::{
    GrpcRoute, HttpRoute, RouteMeta, RouteSource, Routed, WeightedBackend,
};
use weft_core::policy::route_policy::{RouteKindRef, RoutePolicySpec};
use weft_core::policy::route_spec::{Bound, GrpcRouteSpec, HttpRouteSpec, ParentRef};
use weft_core::policy::traffic::SourceRoutes;

use crate::cluster::Key;
use crate::policies::accepted_status;

/// The API group of the route kinds.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// Their version.
pub const VERSION: &str = "v1";
/// What the mesh writes as `controllerName` in route statuses.
pub const CONTROLLER: &str = "weft.dev/mesh";

/// A custom resource as the adapter reads it (metadata, spec, and the status it writes),
/// of `$group`/`$version`.
macro_rules! custom_object {
    ($name:ident, $kind:literal, $plural:literal, $group:expr, $version:expr, $api_version:literal) => {
        #[doc = concat!("A `", $kind, "` as the adapter reads it: metadata and spec.")]
        #[derive(Clone, Debug, Default, Deserialize, Serialize)]
        pub(crate) struct $name {
            pub metadata: ObjectMeta,
            #[serde(default)]
            pub spec: Value,
            /// Read when writing the mesh's status (never serialized back whole).
            #[serde(default, skip_serializing)]
            pub status: Value,
        }

        impl StatusOf for $name {
            fn status(&self) -> &Value {
                &self.status
            }
        }

        impl Resource for $name {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($group)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($version)
            }
            fn api_version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($api_version)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

pub(crate) use custom_object;

custom_object!(
    HttpRouteObject,
    "HTTPRoute",
    "httproutes",
    GROUP,
    VERSION,
    "gateway.networking.k8s.io/v1"
);
custom_object!(
    GrpcRouteObject,
    "GRPCRoute",
    "grpcroutes",
    GROUP,
    VERSION,
    "gateway.networking.k8s.io/v1"
);

/// A route object's status, as read.
pub(crate) trait StatusOf {
    fn status(&self) -> &Value;
}

/// The `status` to write on a route whose current status is `current`: the mesh's entries
/// (`ours`, `{"parents": [...]}`) beside the entries of other controllers (Gateways bound to
/// the same route), which are kept as they are.
pub(crate) fn merged_status(current: &Value, ours: Value) -> Value {
    let mut parents: Vec<Value> = current
        .get("parents")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter(|p| p.get("controllerName").and_then(Value::as_str) != Some(CONTROLLER))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if let Some(mine) = ours.get("parents").and_then(Value::as_array) {
        parents.extend(mine.iter().cloned());
    }
    json!({ "parents": parents })
}

/// Which route kind, or Weft's `RoutePolicy`, which adds rule keys to a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum RouteKind {
    Http,
    Grpc,
    Policy,
}

impl RouteKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Policy => "RoutePolicy",
        }
    }
}

/// What the mesh needs of a route object.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RouteInfo {
    /// `metadata.creationTimestamp` (RFC 3339, which sorts as time does).
    pub created: String,
    /// `metadata.generation`.
    pub generation: i64,
    /// `spec`, as sent.
    pub spec: Value,
}

impl RouteInfo {
    pub(crate) fn of(meta: &ObjectMeta, spec: &Value) -> Self {
        Self {
            created: meta
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            generation: meta.generation.unwrap_or(0),
            spec: spec.clone(),
        }
    }
}

/// A status to write on one route.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StatusUpdate {
    pub kind: RouteKind,
    pub key: Key,
    /// `{"parents": [...]}`.
    pub status: Value,
}

/// Every route the adapter knows, the last good translation of each, and what was last
/// written to each one's status.
#[derive(Debug, Default)]
pub(crate) struct RouteStore {
    objects: BTreeMap<(RouteKind, Key), RouteInfo>,
    last_good_http: HashMap<Key, (i64, Bound<HttpRoute>)>,
    last_good_grpc: HashMap<Key, (i64, Bound<GrpcRoute>)>,
    written: HashMap<(RouteKind, Key), Value>,
    /// Something changed since the last translation.
    pub dirty: bool,
}

/// A translated route, or why it could not be.
enum Translated<R> {
    Ok(Bound<R>),
    Invalid(String),
}

impl RouteStore {
    pub(crate) fn apply(&mut self, kind: RouteKind, key: Key, info: RouteInfo) {
        if self.objects.get(&(kind, key.clone())) != Some(&info) {
            self.objects.insert((kind, key), info);
            self.dirty = true;
        }
    }

    pub(crate) fn delete(&mut self, kind: RouteKind, key: &Key) {
        if self.objects.remove(&(kind, key.clone())).is_some() {
            self.dirty = true;
        }
        match kind {
            RouteKind::Http => {
                self.last_good_http.remove(key);
            }
            RouteKind::Grpc => {
                self.last_good_grpc.remove(key);
            }
            RouteKind::Policy => {}
        }
        self.written.remove(&(kind, key.clone()));
    }

    pub(crate) fn keys(&self, kind: RouteKind) -> Vec<Key> {
        self.objects
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, key)| key.clone())
            .collect()
    }

    /// The routes to serve and the statuses to write, given which services exist.
    pub(crate) fn translate(
        &mut self,
        exists: impl Fn(&ServiceName) -> bool,
    ) -> (SourceRoutes, Vec<StatusUpdate>) {
        self.dirty = false;
        let mut order: Vec<(&(RouteKind, Key), &RouteInfo)> = self.objects.iter().collect();
        // Oldest first, then by namespace and name.
        order.sort_by(|(a, ai), (b, bi)| (&ai.created, &a.1).cmp(&(&bi.created, &b.1)));
        let (policies, order): (Vec<_>, Vec<_>) = order
            .into_iter()
            .partition(|((kind, _), _)| *kind == RouteKind::Policy);
        let mut out = SourceRoutes::default();
        let mut statuses = Vec::new();
        let mut good_http = HashMap::new();
        let mut good_grpc = HashMap::new();
        for ((kind, key), info) in order {
            let refs = parent_refs(&info.spec);
            let services: Vec<&ParentRef> = refs.iter().filter(|r| is_service(r)).collect();
            if services.is_empty() {
                // No longer the mesh's: take back the entries it wrote, once.
                if self.written.remove(&(*kind, key.clone())).is_some() {
                    statuses.push(StatusUpdate {
                        kind: *kind,
                        key: key.clone(),
                        status: json!({ "parents": [] }),
                    });
                }
                continue;
            }
            let meta = RouteMeta {
                name: format!("{}/{}", key.0, key.1),
                source: RouteSource::Object {
                    kind: kind.as_str().to_string(),
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                },
            };
            let (accepted, backends) = match kind {
                RouteKind::Http => {
                    let t = translate_one(&info.spec, meta, &key.0, |s: &HttpRouteSpec, m, ns| {
                        s.compile(m, ns).map_err(|e| e.to_string())
                    });
                    let kept = Kept {
                        last_good: &self.last_good_http,
                        good: &mut good_http,
                        out: &mut out.http,
                    };
                    kept.place(t, key, info.generation, &exists)
                }
                RouteKind::Grpc => {
                    let t = translate_one(&info.spec, meta, &key.0, |s: &GrpcRouteSpec, m, ns| {
                        s.compile(m, ns).map_err(|e| e.to_string())
                    });
                    let kept = Kept {
                        last_good: &self.last_good_grpc,
                        good: &mut good_grpc,
                        out: &mut out.grpc,
                    };
                    kept.place(t, key, info.generation, &exists)
                }
                // Set apart above.
                RouteKind::Policy => continue,
            };
            let status = status(
                &services,
                &key.0,
                info.generation,
                &accepted,
                &backends,
                &exists,
            );
            if self.written.get(&(*kind, key.clone())) != Some(&status) {
                self.written.insert((*kind, key.clone()), status.clone());
                statuses.push(StatusUpdate {
                    kind: *kind,
                    key: key.clone(),
                    status,
                });
            }
        }
        self.last_good_http = good_http;
        self.last_good_grpc = good_grpc;
        // Weft's RoutePolicies, oldest first: each sets its keys on the rules it targets.
        for ((kind, key), info) in policies {
            let status = accepted_status(info.generation, &apply_policy(&mut out, key, info));
            if self.written.get(&(*kind, key.clone())) != Some(&status) {
                self.written.insert((*kind, key.clone()), status.clone());
                statuses.push(StatusUpdate {
                    kind: *kind,
                    key: key.clone(),
                    status,
                });
            }
        }
        (out, statuses)
    }
}

/// Applies the `RoutePolicy` `key` to the route it targets in `out`, or says why not
/// (`Invalid`, `TargetNotFound`).
fn apply_policy(
    out: &mut SourceRoutes,
    key: &Key,
    info: &RouteInfo,
) -> Result<(), (&'static str, String)> {
    let policy = serde_json::from_value::<RoutePolicySpec>(info.spec.clone())
        .map_err(|e| ("Invalid", format!("spec: {e}")))?
        .compile()
        .map_err(|e| ("Invalid", format!("spec.{e}")))?;
    let name = format!("{}/{}", key.0, policy.route);
    let applied = match policy.kind {
        RouteKindRef::Http => out
            .http
            .iter_mut()
            .find(|b| b.route.meta.name == name)
            .map(|b| policy.apply_http(&mut b.route)),
        RouteKindRef::Grpc => out
            .grpc
            .iter_mut()
            .find(|b| b.route.meta.name == name)
            .map(|b| policy.apply_grpc(&mut b.route)),
    };
    let kind = match policy.kind {
        RouteKindRef::Http => "HTTPRoute",
        RouteKindRef::Grpc => "GRPCRoute",
    };
    match applied {
        Some(true) => Ok(()),
        Some(false) => Err((
            "TargetNotFound",
            format!(
                "{kind} {name} has no rule named {}",
                policy.rule.as_deref().unwrap_or_default()
            ),
        )),
        None => Err((
            "TargetNotFound",
            format!("no {kind} {name} bound to a Service"),
        )),
    }
}

/// Where the routes of one kind go during a translation.
struct Kept<'a, R> {
    /// The last good version of each route, from the translation before.
    last_good: &'a HashMap<Key, (i64, Bound<R>)>,
    /// The same, for this translation.
    good: &'a mut HashMap<Key, (i64, Bound<R>)>,
    /// The routes served.
    out: &'a mut Vec<Bound<R>>,
}

impl<R: Routed> Kept<'_, R> {
    /// Serves a translated route (or the last good version of one that could not be), and
    /// says whether it was accepted and which of its backends are missing.
    fn place(
        self,
        t: Translated<R>,
        key: &Key,
        generation: i64,
        exists: &impl Fn(&ServiceName) -> bool,
    ) -> (Result<(), String>, Vec<String>) {
        match t {
            Translated::Ok(b) => {
                let backends = missing_backends(
                    b.route
                        .rule_backends()
                        .into_iter()
                        .flat_map(|r| r.backends.iter()),
                    exists,
                );
                self.good.insert(key.clone(), (generation, b.clone()));
                self.out.push(b);
                (Ok(()), backends)
            }
            Translated::Invalid(why) => {
                if let Some((_, b)) = self.last_good.get(key) {
                    self.good.insert(key.clone(), (0, b.clone()));
                    self.out.push(b.clone());
                }
                (Err(why), Vec::new())
            }
        }
    }
}

fn translate_one<S, R>(
    spec: &Value,
    meta: RouteMeta,
    namespace: &str,
    compile: impl Fn(
        &S,
        RouteMeta,
        &str,
    ) -> Result<(Vec<weft_core::policy::route_spec::Parent>, R), String>,
) -> Translated<R>
where
    S: for<'de> Deserialize<'de>,
{
    // Only the Service parents are the mesh's: the others (Gateways) are left out of the
    // spec the mesh reads.
    let mut spec = spec.clone();
    if let Some(refs) = spec.get_mut("parentRefs").and_then(Value::as_array_mut) {
        refs.retain(|r| {
            serde_json::from_value::<ParentRef>(r.clone()).is_ok_and(|r| is_service(&r))
        });
    }
    let spec: S = match serde_json::from_value(spec) {
        Ok(s) => s,
        Err(e) => return Translated::Invalid(format!("spec: {e}")),
    };
    match compile(&spec, meta, namespace) {
        Ok((parents, route)) => Translated::Ok(Bound { parents, route }),
        Err(e) => Translated::Invalid(e),
    }
}

/// The `parentRefs` of a spec, read leniently (a spec that does not parse still names its
/// parents, so its status can say why).
fn parent_refs(spec: &Value) -> Vec<ParentRef> {
    spec.get("parentRefs")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| serde_json::from_value(r.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a parent reference names a Service (the mesh profile).
fn is_service(r: &ParentRef) -> bool {
    r.group.as_deref().is_some_and(str::is_empty) && r.kind.as_deref() == Some("Service")
}

fn missing_backends<'a>(
    backends: impl Iterator<Item = &'a WeightedBackend>,
    exists: &impl Fn(&ServiceName) -> bool,
) -> Vec<String> {
    let mut missing: Vec<String> = backends
        .filter(|b| !exists(&b.service))
        .map(|b| b.service.to_string())
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

/// The route's `status`: one entry per Service parent, with `Accepted` and `ResolvedRefs`.
fn status(
    parents: &[&ParentRef],
    namespace: &str,
    generation: i64,
    accepted: &Result<(), String>,
    missing: &[String],
    exists: &impl Fn(&ServiceName) -> bool,
) -> Value {
    let condition = |kind: &str, ok: bool, reason: &str, message: &str| {
        json!({
            "type": kind,
            "status": if ok { "True" } else { "False" },
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
        })
    };
    let entries: Vec<Value> = parents
        .iter()
        .map(|p| {
            let ns = p.namespace.as_deref().unwrap_or(namespace);
            let parent_exists = ServiceName::new(ns, &p.name).is_ok_and(|s| exists(&s));
            let accepted = match (accepted, parent_exists) {
                (Err(why), _) => condition("Accepted", false, "UnsupportedValue", why),
                (Ok(()), false) => condition(
                    "Accepted",
                    false,
                    "NoMatchingParent",
                    &format!("no Service {ns}/{}", p.name),
                ),
                (Ok(()), true) => condition("Accepted", true, "Accepted", "the mesh routes it"),
            };
            let resolved = if missing.is_empty() {
                condition("ResolvedRefs", true, "ResolvedRefs", "every backend exists")
            } else {
                condition(
                    "ResolvedRefs",
                    false,
                    "BackendNotFound",
                    &format!("no such Service: {}", missing.join(", ")),
                )
            };
            let mut parent_ref = json!({"group": "", "kind": "Service", "name": p.name});
            if let Some(n) = &p.namespace {
                parent_ref["namespace"] = json!(n);
            }
            if let Some(port) = p.port {
                parent_ref["port"] = json!(port);
            }
            json!({
                "parentRef": parent_ref,
                "controllerName": CONTROLLER,
                "conditions": [accepted, resolved],
            })
        })
        .collect();
    json!({ "parents": entries })
}

/// Adds `lastTransitionTime` (now) to every condition of `status` (a route's, under its
/// parents; a policy object's, at the top), as the API requires.
pub(crate) fn stamped(mut status: Value, now: &str) -> Value {
    if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conditions {
            c["lastTransitionTime"] = json!(now);
        }
    }
    if let Some(parents) = status.get_mut("parents").and_then(Value::as_array_mut) {
        for p in parents {
            if let Some(conditions) = p.get_mut("conditions").and_then(Value::as_array_mut) {
                for c in conditions {
                    c["lastTransitionTime"] = json!(now);
                }
            }
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        ("shop".into(), name.into())
    }

    fn info(created: &str, generation: i64, spec: Value) -> RouteInfo {
        RouteInfo {
            created: created.into(),
            generation,
            spec,
        }
    }

    fn canary(weight: u32, backend: &str) -> Value {
        json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
            "rules": [{"backendRefs": [{"name": "web", "port": 80, "weight": 100 - weight},
                                       {"name": backend, "port": 80, "weight": weight}]}]
        })
    }

    fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
        status["parents"][0]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .unwrap()
    }

    #[test]
    fn routes_are_ordered_translated_and_given_a_status_once() {
        let mut store = RouteStore::default();
        let exists = |s: &ServiceName| s.name != "ghost";
        store.apply(
            RouteKind::Http,
            key("newer"),
            info("2026-01-02T00:00:00Z", 1, canary(10, "web-v2")),
        );
        store.apply(
            RouteKind::Http,
            key("older"),
            info("2026-01-01T00:00:00Z", 1, canary(20, "web-v2")),
        );
        // A route for a Gateway only is another controller's.
        store.apply(
            RouteKind::Http,
            key("ingress"),
            info(
                "2026-01-01T00:00:00Z",
                1,
                json!({"parentRefs": [{"group": GROUP, "kind": "Gateway", "name": "gw"}]}),
            ),
        );
        let (routes, statuses) = store.translate(exists);
        let names: Vec<_> = routes
            .http
            .iter()
            .map(|b| b.route.meta.name.as_str())
            .collect();
        assert_eq!(names, ["shop/older", "shop/newer"]);
        assert_eq!(statuses.len(), 2);
        let s = &statuses[0].status;
        assert_eq!(s["parents"][0]["controllerName"], CONTROLLER);
        assert_eq!(condition(s, "Accepted")["status"], "True");
        assert_eq!(condition(s, "ResolvedRefs")["reason"], "ResolvedRefs");

        // Nothing changed: no status written again.
        let (_, statuses) = store.translate(exists);
        assert!(statuses.is_empty());

        // A missing backend: still accepted, refs not resolved.
        store.apply(
            RouteKind::Http,
            key("newer"),
            info("2026-01-02T00:00:00Z", 2, canary(10, "ghost")),
        );
        let (routes, statuses) = store.translate(exists);
        assert_eq!(routes.http.len(), 2);
        let s = &statuses[0].status;
        assert_eq!(condition(s, "Accepted")["status"], "True");
        assert_eq!(condition(s, "ResolvedRefs")["reason"], "BackendNotFound");
        assert_eq!(condition(s, "ResolvedRefs")["observedGeneration"], 2);

        // An invalid edit: refused with the key, the last good version stays.
        let mut bad = canary(10, "web-v2");
        bad["rules"][0]["matches"] =
            json!([{"path": {"type": "RegularExpression", "value": "(("}}]);
        store.apply(
            RouteKind::Http,
            key("newer"),
            info("2026-01-02T00:00:00Z", 3, bad),
        );
        let (routes, statuses) = store.translate(exists);
        assert_eq!(
            routes.http.len(),
            2,
            "the last good version is still served"
        );
        let kept = &routes.http[1].route.rules[0].backends[1].service;
        assert_eq!(kept.name, "ghost");
        let accepted = condition(&statuses[0].status, "Accepted");
        assert_eq!(accepted["status"], "False");
        assert_eq!(accepted["reason"], "UnsupportedValue");
        assert!(
            accepted["message"]
                .as_str()
                .unwrap()
                .contains("rules[0].matches[0].path.value"),
            "{accepted}"
        );

        // A parent that does not exist.
        let mut lost = canary(10, "web-v2");
        lost["parentRefs"][0]["name"] = json!("ghost");
        store.apply(
            RouteKind::Http,
            key("older"),
            info("2026-01-01T00:00:00Z", 2, lost),
        );
        let (_, statuses) = store.translate(exists);
        let s = statuses.iter().find(|s| s.key == key("older")).unwrap();
        assert_eq!(
            condition(&s.status, "Accepted")["reason"],
            "NoMatchingParent"
        );

        // Rebound to a Gateway only: the mesh takes its entries back, once.
        let mut gateway_only = canary(10, "web-v2");
        gateway_only["parentRefs"] = json!([{"name": "gw"}]);
        store.apply(
            RouteKind::Http,
            key("older"),
            info("2026-01-01T00:00:00Z", 3, gateway_only),
        );
        let (routes, statuses) = store.translate(exists);
        assert_eq!(routes.http.len(), 1);
        let cleared = statuses.iter().find(|s| s.key == key("older")).unwrap();
        assert_eq!(cleared.status, json!({"parents": []}));
        let (_, statuses) = store.translate(exists);
        assert!(statuses.iter().all(|s| s.key != key("older")));

        store.delete(RouteKind::Http, &key("older"));
        store.delete(RouteKind::Http, &key("newer"));
        let (routes, _) = store.translate(exists);
        assert!(routes.http.is_empty());
    }

    /// A route in the caller's namespace bound to a Service in another is a consumer route:
    /// it applies to callers in its own namespace, in place of the producer's routes.
    #[test]
    fn consumer_routes_bind_across_namespaces_for_their_own_callers() {
        let mut store = RouteStore::default();
        store.apply(
            RouteKind::Http,
            key("producer"),
            info("2026-01-01T00:00:00Z", 1, canary(10, "web-v2")),
        );
        let mut consumer = canary(50, "web-v2");
        consumer["parentRefs"][0]["namespace"] = json!("shop");
        consumer["rules"][0]["backendRefs"][0]["namespace"] = json!("shop");
        consumer["rules"][0]["backendRefs"][1]["namespace"] = json!("shop");
        store.apply(
            RouteKind::Http,
            ("tests".into(), "pinned".into()),
            info("2026-01-02T00:00:00Z", 1, consumer),
        );
        let (routes, _) = store.translate(|_| true);
        let web = ServiceName::new("shop", "web").unwrap();
        let policy = |caller: &str| {
            weft_core::policy::traffic::for_service(
                routes.http.iter(),
                routes.grpc.iter(),
                &web,
                80,
                caller,
                |_| true,
            )
        };
        let names = |p: &weft_core::policy::traffic::TrafficPolicy| -> Vec<String> {
            p.http.iter().map(|r| r.meta.name.clone()).collect()
        };
        assert_eq!(names(&policy("tests")), ["tests/pinned"]);
        assert_eq!(names(&policy("shop")), ["shop/producer"]);
        assert_eq!(names(&policy("billing")), ["shop/producer"]);
    }
}
