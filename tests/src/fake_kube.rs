//! A fake Kubernetes API server for tests, faithful on the wire to what a client such as
//! `kube` relies on, written from the published API conventions: one global resourceVersion
//! counter as etcd keeps, consistent paged lists with opaque continue tokens, watches that
//! resume from a resourceVersion (or answer 410 Expired once it is compacted away), bookmarks,
//! streaming lists, label and field selectors, `metav1.Status` errors, bearer-token
//! authentication, TokenReview and legacy discovery.
//!
//! The store holds Namespaces, Pods, Services, EndpointSlices, Secrets, ConfigMaps,
//! ServiceAccounts, Deployments and MutatingWebhookConfigurations; the Gateway API's
//! HTTPRoutes and GRPCRoutes (`gateway.networking.k8s.io/v1`); and Weft's own
//! AuthorizationPolicies, RateLimitPolicies, BackendPolicies and RoutePolicies
//! (`weft.dev/v1alpha1`, namespaced, in the
//! category `weft`). The last four are custom resources, served as their
//! CustomResourceDefinitions are. Each group is served at one version only (`v1`, and
//! `v1alpha1` for `weft.dev`): paths, discovery and the `apiVersion` of objects, lists and
//! watch events name it, and a path with any other version answers 404. The store changes
//! only through [`FakeKube::apply`] and [`FakeKube::delete`] (the server answers `get`, `list`
//! and `watch`, and refuses writes with 405), with one exception: the custom resources'
//! `status` subresource takes PATCHes, as a controller writes what it made of a route or a
//! policy. What a test does to the server itself (expire or cut watches, restart) mirrors what
//! a real control plane does to clients.
//!
//! The custom resources have a status subresource: they carry `metadata.generation` (1 on
//! create, one more whenever something outside `metadata` and `status` changes), and
//! `PATCH .../{name}/status` (a JSON merge patch, or a server-side apply patch) changes only
//! `.status`: it ignores every other field, as the real subresource does, keeps the
//! generation, and answers 409 Conflict when it names a `metadata.resourceVersion` other than
//! the object's. A patch that changes nothing writes nothing (no new resourceVersion, no watch
//! event), as on a real server; [`FakeKube::status_patches`] counts every accepted one, so
//! that a test can tell that a controller does not rewrite an unchanged status. A dry run
//! (`dryRun=All`) answers what the patch would make and stores nothing.
//! [`FakeKube::set_gateway_api`] uninstalls (and reinstalls) the Gateway API, and
//! [`FakeKube::set_weft_crds`] Weft's CRDs: while a group is uninstalled it is absent from
//! discovery and every path under `/apis/{group}` answers 404 NotFound, as for a group with
//! no CRDs. Both are installed when the server starts.
//!
//! Access reviews (SubjectAccessReview, SelfSubjectAccessReview) allow everything except what
//! [`FakeKube::deny_access`] names, and [`FakeKube::forbid_access_reviews`] makes creating a
//! SubjectAccessReview itself forbidden, as for a caller without that permission.
//!
//! Pods have the `portforward` subresource as a client reaches it over WebSocket
//! (`GET .../pods/{name}/portforward?ports=P`, upgraded with the subprotocol
//! `v4.channel.k8s.io`, the kubelet's binary channel protocol): for the i-th port asked,
//! channel 2i carries its bytes both ways and channel 2i+1 its error, every binary message
//! starts with its channel's number, and the server's first message on each channel is the
//! port, 2 bytes little-endian. Each port is one TCP connection to the address the test gave
//! with [`FakeKube::set_pod_port`], as the kubelet dials the pod's loopback; one it cannot dial
//! gets its reason on its error channel, and once every port is done the server closes the
//! WebSocket. The request is authorized as Kubernetes 1.35 authorizes a WebSocket upgrade:
//! `get` and `create` of `pods/portforward` ([`FakeKube::deny_access`] with the resource
//! `pods/portforward` denies either, 403); a pod that does not exist is 404, one not
//! scheduled to a node 400. SPDY, the other transport, is not served.
//!
//! Not modelled: writes through the API other than status PATCHes, finalizers and
//! deletionTimestamp, the cascade of a Namespace's deletion, admission and RBAC (the one token
//! may do everything; access reviews only answer), aggregated discovery, protobuf, HTTP/2 and
//! TLS. A resourceVersion from the future is refused at once where the real server first
//! waits a few seconds for its cache. The generation of the built-in kinds is not kept. The
//! custom resources' schema is not validated, and none has a second version to convert to.
//! Status PATCHes take a JSON merge patch (RFC 7386) or a server-side apply patch written as
//! JSON; a server-side apply patch is merged into `.status` as a merge patch would be, with no
//! field ownership (no `managedFields`, no conflicts between managers, and fields the manager
//! stops naming are kept); JSON patches (RFC 6902) are answered 415 as other media types are.
//! Uninstalling a group of CRDs ends the open watches of its kinds cleanly, as removing a CRD
//! does, but hides the stored objects instead of deleting them: reinstalling shows them
//! again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_TYPE, HeaderMap, HeaderValue, SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fake_http::percent_decode;

/// The bearer token every request must carry.
const ADMIN_TOKEN: &str = "fake-admin-token";
/// The user [`ADMIN_TOKEN`] authenticates as.
pub const ADMIN_USER: &str = "fake-admin";
/// The resourceVersion of the empty store; the first write gets the next one.
const FIRST_RV: u64 = 1;
/// How many changes the server remembers for watches that resume and for paged lists.
const HISTORY: usize = 10_000;
/// Events a watch may have queued before the server ends it as a slow consumer.
const WATCH_QUEUE: usize = 1024;
/// How many requests [`FakeKube::requests`] remembers.
const REQUEST_LOG: usize = 100_000;
/// The largest request body read (the real server's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;
/// The annotation on the bookmark that ends a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";
/// The media type of a JSON merge patch (RFC 7386).
const MERGE_PATCH: &str = "application/merge-patch+json";
/// The media type of a server-side apply patch.
const APPLY_PATCH: &str = "application/apply-patch+yaml";
/// The verbs discovery lists for a custom resource, in the real server's order.
const CRD_VERBS: [&str; 8] = [
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "create",
    "update",
    "watch",
];
/// The verbs discovery lists for the status subresource of a custom resource.
const STATUS_VERBS: [&str; 3] = ["get", "patch", "update"];

/// A response body: a whole JSON document or a watch stream (whose error aborts the
/// connection mid-response).
type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A fake Kubernetes API server on 127.0.0.1, plain HTTP/1.1. Dropping it stops the server
/// and ends every watch.
pub struct FakeKube {
    inner: Arc<Inner>,
    addr: SocketAddr,
    /// Cancelled on drop: stops whichever generation of the listener is serving.
    root: CancellationToken,
    serving: tokio::sync::Mutex<Serving>,
}

/// What TokenReview answers for one token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenInfo {
    /// `system:serviceaccount:<namespace>:<name>` for a service account token.
    pub username: String,
    /// The user's UID.
    pub uid: String,
    /// The audiences the token was issued for.
    pub audiences: Vec<String>,
    /// Extra user attributes (pod name and UID, credential ID...).
    pub extra: BTreeMap<String, Vec<String>>,
    /// Whether the token has expired: reviews of it fail.
    pub expired: bool,
}

/// One request the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLog {
    /// `GET`, `POST`...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string (percent-encoded), empty when there is none.
    pub query: String,
}

/// The listener of one server generation and its connections.
struct Serving {
    generation: CancellationToken,
    tracker: TaskTracker,
}

struct Inner {
    state: Mutex<State>,
    addr: SocketAddr,
}

/// Everything the server knows; one lock, never held across an await.
struct State {
    /// The resourceVersion of the last write.
    rv: u64,
    /// Objects by kind, then by key (`namespace/name`, or `name` when cluster-scoped), in the
    /// order etcd lists them.
    objects: HashMap<&'static str, BTreeMap<String, Value>>,
    /// The last changes, oldest first.
    history: VecDeque<Change>,
    /// Every change after this resourceVersion is in `history`.
    history_floor: u64,
    /// [`FakeKube::expire_watches`]: resourceVersions before this one are compacted away.
    compacted: u64,
    watches: Vec<Watch>,
    next_watch: u64,
    /// The paths of the open watches, for [`FakeKube::watchers`].
    open: watch::Sender<Vec<String>>,
    next_uid: u64,
    uid_seed: u64,
    page_limit: Option<usize>,
    /// [`FakeKube::set_partitioned`]: changes reach no open watch.
    partitioned: bool,
    tokens: HashMap<String, TokenInfo>,
    requests: VecDeque<RequestLog>,
    /// [`FakeKube::deny_access`]: `(user, verb, group, resource)` that access reviews deny.
    denied: Vec<(String, String, String, String)>,
    /// [`FakeKube::forbid_access_reviews`].
    reviews_forbidden: bool,
    /// [`FakeKube::set_version`]: the `major` and `minor` that `/version` answers.
    version: (String, String),
    /// [`FakeKube::set_gateway_api`] and [`FakeKube::set_weft_crds`]: which groups of
    /// custom resources are served.
    crds: Crds,
    /// [`FakeKube::status_patches`]: the status PATCHes accepted.
    status_patches: usize,
    /// [`FakeKube::set_pod_port`]: where a port-forward to `(namespace, pod, port)` connects.
    pod_ports: HashMap<(String, String, u16), SocketAddr>,
}

/// One write to the store.
struct Change {
    rv: u64,
    res: &'static Resource,
    key: String,
    /// The object before the change; `None` when it was created.
    before: Option<Value>,
    /// The object after the change; `None` when it was deleted.
    after: Option<Value>,
}

/// An open watch stream.
struct Watch {
    id: u64,
    path: String,
    filter: Filter,
    bookmarks: bool,
    /// The resourceVersion of the last event sent, for the message of a 410.
    last_rv: u64,
    tx: mpsc::Sender<Bytes>,
    /// The connection carrying the stream, cut by [`FakeKube::drop_watches`].
    conn: CancellationToken,
}

/// Removes its watch from the state when the response body is dropped (the client went
/// away, the stream ended or the connection was cut).
struct WatchGuard {
    inner: Weak<Inner>,
    id: u64,
}

/// A watch response body: the initial events, then what the store sends, until the timeout.
struct WatchBody {
    initial: VecDeque<Bytes>,
    rx: Option<mpsc::Receiver<Bytes>>,
    deadline: Option<tokio::time::Instant>,
    /// The connection's token: once it is cancelled the body fails rather than ending, so
    /// that no last chunk goes out even if the queue closes first.
    cut: CancellationToken,
    done: bool,
    _guard: Option<WatchGuard>,
}

/// A kind of object the server stores.
#[derive(Debug)]
struct Resource {
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    /// Its API group, which also says the one version it is served at.
    group: &'static Group,
    namespaced: bool,
    short_names: &'static [&'static str],
    /// Field-selector labels besides `metadata.name` and `metadata.namespace`.
    fields: &'static [&'static str],
    /// Served as a CustomResourceDefinition with a status subresource: the CRD verbs in
    /// discovery, `metadata.generation`, and PATCHes of `.../{name}/status`.
    custom: bool,
    /// The categories discovery lists (`kubectl get gateway-api`, `kubectl get weft`).
    categories: &'static [&'static str],
}

/// A kind that is only ever created, to ask a question (TokenReview and the access reviews).
#[derive(Debug)]
struct Review {
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    group: &'static Group,
}

/// An API group and the one version of it the server serves.
#[derive(Debug)]
struct Group {
    /// Empty for the core group.
    name: &'static str,
    version: &'static str,
}

/// Which groups of custom resources are installed (served), as their
/// CustomResourceDefinitions are.
#[derive(Clone, Copy, Debug)]
struct Crds {
    /// [`FakeKube::set_gateway_api`]: the Gateway API's group.
    gateway_api: bool,
    /// [`FakeKube::set_weft_crds`]: Weft's own group.
    weft: bool,
}

/// The core group: `/api/v1`.
static CORE_GROUP: Group = Group {
    name: "",
    version: "v1",
};
/// `apps/v1`: Deployments.
static APPS_GROUP: Group = Group {
    name: "apps",
    version: "v1",
};
/// `discovery.k8s.io/v1`: EndpointSlices.
static DISCOVERY_GROUP: Group = Group {
    name: "discovery.k8s.io",
    version: "v1",
};
/// `admissionregistration.k8s.io/v1`: MutatingWebhookConfigurations.
static ADMISSION_GROUP: Group = Group {
    name: "admissionregistration.k8s.io",
    version: "v1",
};
/// `authentication.k8s.io/v1`: TokenReviews.
static AUTHENTICATION_GROUP: Group = Group {
    name: "authentication.k8s.io",
    version: "v1",
};
/// `authorization.k8s.io/v1`: the access reviews.
static AUTHORIZATION_GROUP: Group = Group {
    name: "authorization.k8s.io",
    version: "v1",
};
/// The Gateway API's group, served as its CustomResourceDefinitions are, while installed.
static GATEWAY_GROUP: Group = Group {
    name: "gateway.networking.k8s.io",
    version: "v1",
};
/// Weft's own group, served as its CustomResourceDefinitions are, while installed.
static WEFT_GROUP: Group = Group {
    name: "weft.dev",
    version: "v1alpha1",
};

static RESOURCES: [Resource; 15] = [
    Resource {
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        group: &CORE_GROUP,
        namespaced: false,
        short_names: &["ns"],
        fields: &["status.phase"],
        custom: false,
        categories: &[],
    },
    Resource {
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        group: &CORE_GROUP,
        namespaced: true,
        short_names: &["po"],
        fields: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        custom: false,
        categories: &[],
    },
    Resource {
        kind: "Service",
        plural: "services",
        singular: "service",
        group: &CORE_GROUP,
        namespaced: true,
        short_names: &["svc"],
        fields: &["spec.clusterIP", "spec.type"],
        custom: false,
        categories: &[],
    },
    Resource {
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        group: &CORE_GROUP,
        namespaced: true,
        short_names: &[],
        fields: &["type"],
        custom: false,
        categories: &[],
    },
    Resource {
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        group: &CORE_GROUP,
        namespaced: true,
        short_names: &["cm"],
        fields: &[],
        custom: false,
        categories: &[],
    },
    Resource {
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        group: &DISCOVERY_GROUP,
        namespaced: true,
        short_names: &[],
        fields: &[],
        custom: false,
        categories: &[],
    },
    Resource {
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        group: &CORE_GROUP,
        namespaced: true,
        short_names: &["sa"],
        fields: &[],
        custom: false,
        categories: &[],
    },
    Resource {
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        group: &APPS_GROUP,
        namespaced: true,
        short_names: &["deploy"],
        fields: &[],
        custom: false,
        categories: &[],
    },
    Resource {
        kind: "MutatingWebhookConfiguration",
        plural: "mutatingwebhookconfigurations",
        singular: "mutatingwebhookconfiguration",
        group: &ADMISSION_GROUP,
        namespaced: false,
        short_names: &[],
        fields: &[],
        custom: false,
        categories: &[],
    },
    Resource {
        kind: "HTTPRoute",
        plural: "httproutes",
        singular: "httproute",
        group: &GATEWAY_GROUP,
        namespaced: true,
        short_names: &[],
        fields: &[],
        custom: true,
        categories: &["gateway-api"],
    },
    Resource {
        kind: "GRPCRoute",
        plural: "grpcroutes",
        singular: "grpcroute",
        group: &GATEWAY_GROUP,
        namespaced: true,
        short_names: &[],
        fields: &[],
        custom: true,
        categories: &["gateway-api"],
    },
    Resource {
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        singular: "authorizationpolicy",
        group: &WEFT_GROUP,
        namespaced: true,
        short_names: &["authz"],
        fields: &[],
        custom: true,
        categories: &["weft"],
    },
    Resource {
        kind: "RateLimitPolicy",
        plural: "ratelimitpolicies",
        singular: "ratelimitpolicy",
        group: &WEFT_GROUP,
        namespaced: true,
        short_names: &[],
        fields: &[],
        custom: true,
        categories: &["weft"],
    },
    Resource {
        kind: "BackendPolicy",
        plural: "backendpolicies",
        singular: "backendpolicy",
        group: &WEFT_GROUP,
        namespaced: true,
        short_names: &[],
        fields: &[],
        custom: true,
        categories: &["weft"],
    },
    Resource {
        kind: "RoutePolicy",
        plural: "routepolicies",
        singular: "routepolicy",
        group: &WEFT_GROUP,
        namespaced: true,
        short_names: &[],
        fields: &[],
        custom: true,
        categories: &["weft"],
    },
];

static REVIEWS: [Review; 3] = [
    Review {
        kind: "TokenReview",
        plural: "tokenreviews",
        singular: "tokenreview",
        group: &AUTHENTICATION_GROUP,
    },
    Review {
        kind: "SelfSubjectAccessReview",
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        group: &AUTHORIZATION_GROUP,
    },
    Review {
        kind: "SubjectAccessReview",
        plural: "subjectaccessreviews",
        singular: "subjectaccessreview",
        group: &AUTHORIZATION_GROUP,
    },
];

/// The named API groups built in, as `/apis` lists them (before the Gateway API's and
/// Weft's, while they are installed).
static GROUPS: [&Group; 5] = [
    &APPS_GROUP,
    &DISCOVERY_GROUP,
    &ADMISSION_GROUP,
    &AUTHENTICATION_GROUP,
    &AUTHORIZATION_GROUP,
];

/// What a request path names.
enum Route {
    Version,
    Health,
    /// `/api`.
    CoreVersions,
    /// `/apis`.
    Groups,
    /// `/apis/{group}`.
    Group(&'static Group),
    /// `/api/v1` (the core group) or `/apis/{group}/{version}`.
    Resources(&'static Group),
    Collection {
        res: &'static Resource,
        namespace: Option<String>,
    },
    Object {
        res: &'static Resource,
        namespace: Option<String>,
        name: String,
    },
    Review(&'static Review),
    /// `.../{name}/status` of a kind with a status subresource.
    Status {
        res: &'static Resource,
        namespace: Option<String>,
        name: String,
    },
    /// `/api/v1/namespaces/{namespace}/pods/{name}/portforward`.
    PortForward {
        namespace: String,
        name: String,
    },
}

/// The query parameters of a list or watch.
#[derive(Debug, Default)]
struct Options {
    watch: bool,
    resource_version: Option<String>,
    version_match: Option<String>,
    limit: Option<usize>,
    continue_token: Option<String>,
    label_selector: Vec<LabelReq>,
    field_selector: Option<String>,
    timeout: Option<Duration>,
    bookmarks: bool,
    send_initial_events: Option<bool>,
}

/// Which objects a list or watch is about.
#[derive(Debug)]
struct Filter {
    res: &'static Resource,
    namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

/// One requirement of a label selector.
#[derive(Debug, Clone)]
enum LabelReq {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// One requirement of a field selector.
#[derive(Debug)]
struct FieldReq {
    field: String,
    value: String,
    equals: bool,
}

/// A failed request, answered as a `metav1.Status`.
#[derive(Debug)]
struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
    details: Option<Value>,
    /// For an expired continue token: a token that continues the list inconsistently.
    continue_token: Option<String>,
}

// === impl FakeKube ===

impl FakeKube {
    /// Starts the server on 127.0.0.1, on a port of its own.
    pub async fn start() -> FakeKube {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind the fake API server to 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("the fake API server's address");
        let inner = Arc::new(Inner {
            state: Mutex::new(State::new()),
            addr,
        });
        let root = CancellationToken::new();
        let serving = serve(&inner, listener, root.child_token());
        FakeKube {
            inner,
            addr,
            root,
            serving: tokio::sync::Mutex::new(serving),
        }
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes `dir/kubeconfig`: one cluster at [`FakeKube::url`], a user with the bearer token
    /// [`FakeKube::client_token`], a current context joining them (namespace `default`).
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: fake-admin\n  user:\n    token: {ADMIN_TOKEN}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: fake-admin\n    namespace: default\n\
             current-context: fake\n",
            url = self.url(),
        );
        std::fs::write(&path, text).expect("write the fake API server's kubeconfig");
        path
    }

    /// The bearer token requests must carry; any other (or none) gets 401.
    pub fn client_token(&self) -> &str {
        ADMIN_TOKEN
    }

    /// Creates or replaces an object (`apiVersion`, `kind`, `metadata.name`, and
    /// `metadata.namespace` for a namespaced kind): assigns it the next resourceVersion, a UID
    /// (kept on replace) and a creationTimestamp (kept on replace), tells the watches
    /// (ADDED or MODIFIED), and returns the new resourceVersion.
    ///
    /// The `apiVersion` stored is the one the server serves for the kind (as
    /// `weft.dev/v1alpha1`), whatever the object says.
    ///
    /// A custom resource (an HTTPRoute, GRPCRoute, AuthorizationPolicy, RateLimitPolicy,
    /// BackendPolicy or RoutePolicy)
    /// also gets its `metadata.generation`: 1 when created, one more when the replacement
    /// changes anything outside `metadata` and `status` (its `spec`), the same otherwise. A
    /// replacement without a `status` keeps the stored one, as an update of a custom resource
    /// with a status subresource does; one with a `status` sets it. Custom resources are
    /// stored (and [`FakeKube::get`] finds them) even while their group is uninstalled
    /// ([`FakeKube::set_gateway_api`], [`FakeKube::set_weft_crds`]); the API server shows
    /// them once it is installed again.
    ///
    /// Panics on an object of a kind the server does not store, or without a name, or with a
    /// namespace that does not fit its kind: those are mistakes in the test.
    pub fn apply(&self, mut obj: Value) -> String {
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        let res = resource_by_kind(kind)
            .unwrap_or_else(|| panic!("the fake API server does not store kind {kind:?}"));
        let (namespace, name) = object_name(&obj);
        let name = name.unwrap_or_else(|| panic!("a {kind} without metadata.name"));
        assert_eq!(
            namespace.is_some(),
            res.namespaced,
            "{kind} {name}: metadata.namespace must be set exactly for namespaced kinds"
        );
        let key = object_key(namespace.as_deref(), &name);
        let mut st = self.inner.state();
        st.rv += 1;
        let rv = st.rv;
        let before = st.objects.get(res.kind).and_then(|m| m.get(&key)).cloned();
        let uid = before
            .as_ref()
            .and_then(|b| b.pointer("/metadata/uid"))
            .or_else(|| obj.pointer("/metadata/uid"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| st.new_uid());
        let created = before
            .as_ref()
            .and_then(|b| b.pointer("/metadata/creationTimestamp"))
            .or_else(|| obj.pointer("/metadata/creationTimestamp"))
            .filter(|t| t.is_string())
            .cloned()
            .unwrap_or_else(|| Value::String(rfc3339(SystemTime::now())));
        let generation = res.custom.then(|| match &before {
            None => 1,
            Some(b) => {
                let last = b
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                if spec_changed(b, &obj) {
                    last + 1
                } else {
                    last
                }
            }
        });
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".into(), Value::String(res.api_version()));
            if res.custom
                && !o.contains_key("status")
                && let Some(status) = before.as_ref().and_then(|b| b.get("status"))
            {
                o.insert("status".into(), status.clone());
            }
        }
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
            meta.insert("uid".into(), Value::String(uid));
            meta.insert("creationTimestamp".into(), created);
            if let Some(generation) = generation {
                meta.insert("generation".into(), Value::from(generation));
            }
        }
        st.objects
            .entry(res.kind)
            .or_default()
            .insert(key.clone(), obj.clone());
        st.record(Change {
            rv,
            res,
            key,
            before,
            after: Some(obj),
        });
        rv.to_string()
    }

    /// Deletes an object, if there is one: the watches get DELETED carrying its last state
    /// with the deletion's resourceVersion.
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let Some(res) = resource_by_kind(kind) else {
            return false;
        };
        let key = object_key(namespace, name);
        let mut st = self.inner.state();
        let Some(before) = st.objects.get_mut(res.kind).and_then(|m| m.remove(&key)) else {
            return false;
        };
        st.rv += 1;
        let rv = st.rv;
        st.record(Change {
            rv,
            res,
            key,
            before: Some(before),
            after: None,
        });
        true
    }

    /// The object as stored (with `kind` and `apiVersion`).
    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let res = resource_by_kind(kind)?;
        let key = object_key(namespace, name);
        self.inner
            .state()
            .objects
            .get(res.kind)
            .and_then(|m| m.get(&key))
            .cloned()
    }

    /// Waits (up to [`crate::WAIT`]) until the object `kind` `namespace`/`name` exists and
    /// satisfies `f`, and returns it; fails the test naming `what` otherwise.
    pub async fn wait_object(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        tokio::time::timeout(crate::WAIT, async {
            loop {
                if let Some(obj) = self.get(kind, Some(namespace), name)
                    && f(&obj)
                {
                    return obj;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{kind} {namespace}/{name}: {what}: {:?}",
                self.get(kind, Some(namespace), name)
            )
        })
    }

    /// Caps the page size of lists that ask for pages (`limit`): a page holds at most
    /// `min(limit, n)` items, and a continue token when more remain. `None` lifts the cap.
    /// Lists without `limit` are never paged, as on a real server.
    pub fn set_page_limit(&self, n: Option<usize>) {
        self.inner.state().page_limit = n;
    }

    /// While partitioned, changes reach no open watch, as when the network between the
    /// clients and the server fails without cutting the connections. Followed by
    /// [`FakeKube::expire_watches`], the watchers learn the changes only by relisting.
    pub fn set_partitioned(&self, on: bool) {
        self.inner.state().partitioned = on;
    }

    /// Compacts the history, as etcd does: every open watch gets an ERROR event carrying a
    /// 410 Expired Status and ends; later watches from an older resourceVersion get the same,
    /// and continuing a list begun at an older resourceVersion, or listing exactly at one,
    /// answers 410 Expired.
    pub fn expire_watches(&self) {
        let mut st = self.inner.state();
        st.compacted = st.rv;
        let oldest = st.oldest();
        let watches = st.take_watches();
        drop(st);
        for w in watches {
            let status = ApiError::expired(format!(
                "too old resource version: {} ({oldest})",
                w.last_rv
            ));
            if w.tx
                .try_send(event_line("ERROR", &status.status()))
                .is_err()
            {
                // No room for the error: end it the hard way rather than cleanly.
                w.conn.cancel();
            }
        }
    }

    /// Cuts the connection of every open watch, with no final event, as a network failure
    /// would.
    pub fn drop_watches(&self) {
        let watches = self.inner.state().take_watches();
        for w in watches {
            w.conn.cancel();
        }
    }

    /// Ends every open watch cleanly (the last chunk is sent), as a watch timeout does.
    pub fn end_watches(&self) {
        drop(self.inner.state().take_watches());
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch that allows them.
    pub fn bookmark(&self) {
        let mut st = self.inner.state();
        let rv = st.rv;
        let mut slow = Vec::new();
        for w in st.watches.iter_mut().filter(|w| w.bookmarks) {
            if w.tx
                .try_send(bookmark_line(w.filter.res, rv, false))
                .is_ok()
            {
                w.last_rv = rv;
            } else {
                slow.push(w.id);
            }
        }
        for id in slow {
            st.remove_watch(id);
        }
    }

    /// Restarts the API server: closes the listener and every connection, then listens again
    /// on the same port. The store and its history survive, as they do in etcd.
    pub async fn restart(&self) {
        let mut serving = self.serving.lock().await;
        serving.generation.cancel();
        serving.tracker.close();
        serving.tracker.wait().await;
        drop(self.inner.state().take_watches());
        let listener = listen(self.addr).expect("listen again on the fake API server's port");
        *serving = serve(&self.inner, listener, self.root.child_token());
    }

    /// Makes SubjectAccessReviews asking whether `user` may `verb` the `resource` (plural,
    /// or `plural/subresource`) of API `group` (empty for the core group) answer
    /// `allowed: false`, with a reason, in any namespace. For the client's own user
    /// (`ADMIN_USER`) and `pods/portforward`, the port-forward itself is refused 403.
    /// Everything else stays allowed.
    pub fn deny_access(&self, user: &str, verb: &str, group: &str, resource: &str) {
        self.inner.state().denied.push((
            user.to_owned(),
            verb.to_owned(),
            group.to_owned(),
            resource.to_owned(),
        ));
    }

    /// While on, creating a SubjectAccessReview is answered 403 Forbidden (a Status naming the
    /// caller), as for a user whose role does not grant it.
    pub fn forbid_access_reviews(&self, on: bool) {
        self.inner.state().reviews_forbidden = on;
    }

    /// Makes `/version` answer Kubernetes `major.minor` (default 1.33).
    pub fn set_version(&self, major: &str, minor: &str) {
        self.inner.state().version = (major.to_owned(), minor.to_owned());
    }

    /// Installs or uninstalls the Gateway API (installed when the server starts). Uninstalled,
    /// `gateway.networking.k8s.io` is absent from `/apis` and every path under
    /// `/apis/gateway.networking.k8s.io` answers 404 NotFound, as for a group with no CRDs;
    /// uninstalling ends the open watches of routes cleanly, as removing a CRD does. The
    /// stored routes stay (hidden) and show again once it is reinstalled.
    pub fn set_gateway_api(&self, installed: bool) {
        let mut st = self.inner.state();
        st.crds.gateway_api = installed;
        if !installed {
            let ended = st.take_watches_of(&GATEWAY_GROUP);
            drop(st);
            drop(ended);
        }
    }

    /// Installs or uninstalls Weft's own CustomResourceDefinitions, AuthorizationPolicy,
    /// RateLimitPolicy, BackendPolicy and RoutePolicy of `weft.dev/v1alpha1` (installed when the server starts).
    /// Uninstalled, `weft.dev` is absent from `/apis` and every path under `/apis/weft.dev`
    /// answers 404 NotFound, as for a group with no CRDs; uninstalling ends the open watches
    /// of those kinds cleanly, as removing a CRD does. The stored objects stay (hidden) and
    /// show again once they are reinstalled.
    pub fn set_weft_crds(&self, installed: bool) {
        let mut st = self.inner.state();
        st.crds.weft = installed;
        if !installed {
            let ended = st.take_watches_of(&WEFT_GROUP);
            drop(st);
            drop(ended);
        }
    }

    /// How many status PATCHes the server has accepted (answered 200), those that changed
    /// nothing included; dry runs are not counted.
    pub fn status_patches(&self) -> usize {
        self.inner.state().status_patches
    }

    /// Makes a port-forward to `port` of pod `namespace`/`pod` connect to `target`, as the
    /// kubelet connects to that port on the pod's loopback. A port not set refuses, as a port
    /// nothing listens on does.
    pub fn set_pod_port(&self, namespace: &str, pod: &str, port: u16, target: SocketAddr) {
        self.inner
            .state()
            .pod_ports
            .insert((namespace.to_owned(), pod.to_owned(), port), target);
    }

    /// Makes TokenReview know `token`.
    pub fn add_token(&self, token: &str, review: TokenInfo) {
        self.inner.state().tokens.insert(token.to_owned(), review);
    }

    /// The requests received so far (the last 100 000), oldest first.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.inner.state().requests.iter().cloned().collect()
    }

    /// Resolves once at least `n` watch streams whose path starts with `path_prefix` are open
    /// (a watch of every pod is on `/api/v1/pods`, of namespace `a`'s on
    /// `/api/v1/namespaces/a/pods`). A watch counts from before its response goes out, so an
    /// [`FakeKube::apply`] after this resolves reaches it. It waits for as long as it takes:
    /// bound it with a timeout.
    pub async fn watchers(&self, path_prefix: &str, n: usize) {
        let mut open = self.inner.state().open.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = open
            .wait_for(|paths| paths.iter().filter(|p| p.starts_with(path_prefix)).count() >= n)
            .await;
    }
}

impl std::fmt::Debug for FakeKube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKube")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        drop(self.inner.state().take_watches());
        self.root.cancel();
    }
}

// === impl Inner ===

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl State ===

impl State {
    fn new() -> Self {
        let uid_seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            rv: FIRST_RV,
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_floor: FIRST_RV,
            compacted: FIRST_RV,
            watches: Vec::new(),
            next_watch: 0,
            open: watch::Sender::new(Vec::new()),
            next_uid: 0,
            uid_seed,
            page_limit: None,
            partitioned: false,
            tokens: HashMap::new(),
            requests: VecDeque::new(),
            denied: Vec::new(),
            reviews_forbidden: false,
            version: ("1".to_owned(), "33".to_owned()),
            crds: Crds {
                gateway_api: true,
                weft: true,
            },
            status_patches: 0,
            pod_ports: HashMap::new(),
        }
    }

    /// The oldest resourceVersion whose state the server can still reconstruct.
    fn oldest(&self) -> u64 {
        self.history_floor.max(self.compacted)
    }

    fn new_uid(&mut self) -> String {
        self.next_uid += 1;
        let (s, n) = (self.uid_seed, self.next_uid);
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            s >> 32,
            (s >> 16) & 0xffff,
            s & 0xfff,
            (n >> 48) & 0xfff,
            n & 0xffff_ffff_ffff
        )
    }

    fn log(&mut self, req: RequestLog) {
        if self.requests.len() >= REQUEST_LOG {
            self.requests.pop_front();
        }
        self.requests.push_back(req);
    }

    /// Tells the watches about `change` and remembers it.
    fn record(&mut self, change: Change) {
        let mut slow = Vec::new();
        let open = if self.partitioned {
            &mut [][..]
        } else {
            &mut self.watches[..]
        };
        for w in open {
            let Some((ty, obj)) = w.filter.event(&change) else {
                continue;
            };
            if w.tx.try_send(event_line(ty, &obj)).is_ok() {
                w.last_rv = change.rv;
            } else {
                // A full queue is a slow consumer: the real server ends its watch too. The
                // client resumes from the last event it saw, which the history still holds.
                slow.push(w.id);
            }
        }
        for id in slow {
            self.remove_watch(id);
        }
        self.history.push_back(change);
        if self.history.len() > HISTORY
            && let Some(old) = self.history.pop_front()
        {
            self.history_floor = old.rv;
        }
    }

    /// The objects of `res` as they were at `rv`, which must not be older than
    /// [`State::oldest`].
    fn objects_at(&self, res: &Resource, rv: u64) -> BTreeMap<String, Value> {
        let mut objects = self.objects.get(res.kind).cloned().unwrap_or_default();
        for change in self.history.iter().rev().take_while(|c| c.rv > rv) {
            if change.res.kind != res.kind {
                continue;
            }
            match &change.before {
                Some(before) => objects.insert(change.key.clone(), before.clone()),
                None => objects.remove(&change.key),
            };
        }
        objects
    }

    fn remove_watch(&mut self, id: u64) {
        let before = self.watches.len();
        self.watches.retain(|w| w.id != id);
        if self.watches.len() != before {
            self.publish();
        }
    }

    /// Forgets every watch; the caller ends or cuts them.
    fn take_watches(&mut self) -> Vec<Watch> {
        let watches = std::mem::take(&mut self.watches);
        self.publish();
        watches
    }

    /// Forgets the watches of the kinds of API `group`; the caller ends them.
    fn take_watches_of(&mut self, group: &Group) -> Vec<Watch> {
        let (ended, kept): (Vec<Watch>, Vec<Watch>) = std::mem::take(&mut self.watches)
            .into_iter()
            .partition(|w| w.filter.res.group.name == group.name);
        self.watches = kept;
        if !ended.is_empty() {
            self.publish();
        }
        ended
    }

    /// Applies a PATCH of the status subresource of an object: `patch` is merged into the
    /// object (RFC 7386), and only the `.status` of the result is kept, as the real
    /// subresource does. A patch that changes nothing writes nothing; a dry run stores
    /// nothing. Answers the object as it is (or would be) after the patch.
    fn patch_status(
        &mut self,
        res: &'static Resource,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let key = object_key(namespace, name);
        let Some(before) = self
            .objects
            .get(res.kind)
            .and_then(|m| m.get(&key))
            .cloned()
        else {
            return Err(ApiError::not_found(res, name));
        };
        // A resourceVersion in the patch is a precondition.
        if let Some(wanted) = patch
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|rv| !rv.is_empty())
            && before
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                != Some(wanted)
        {
            return Err(ApiError::conflict(res, name));
        }
        let mut patched = before.clone();
        merge_patch(&mut patched, patch);
        let mut after = before.clone();
        if let Some(o) = after.as_object_mut() {
            match patched.get_mut("status").map(Value::take) {
                Some(status) => o.insert("status".into(), status),
                None => o.remove("status"),
            };
        }
        if dry_run {
            return Ok(after);
        }
        self.status_patches += 1;
        if after == before {
            return Ok(before);
        }
        self.rv += 1;
        let rv = self.rv;
        if let Some(meta) = after.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        self.objects
            .entry(res.kind)
            .or_default()
            .insert(key.clone(), after.clone());
        self.record(Change {
            rv,
            res,
            key,
            before: Some(before),
            after: Some(after.clone()),
        });
        Ok(after)
    }

    fn publish(&self) {
        let paths = self.watches.iter().map(|w| w.path.clone()).collect();
        self.open.send_replace(paths);
    }

    /// Answers a list.
    fn list(&self, filter: &Filter, opts: &Options) -> Result<Value, ApiError> {
        let res = filter.res;
        let exact = match opts.version_match.as_deref() {
            None | Some("NotOlderThan") => false,
            Some("Exact") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                )));
            }
        };
        if opts.version_match.is_some() {
            if opts.resource_version.is_none() {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            if opts.continue_token.is_some() {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided",
                ));
            }
        }
        let current = self.rv;
        let (at, start) = if let Some(token) = &opts.continue_token {
            if opts.resource_version.as_deref().is_some_and(|rv| rv != "0") {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let (rv, start) = decode_continue(token)?;
            // A token from an expired list continues at the latest state (rv -1).
            let at = u64::try_from(rv)
                .ok()
                .filter(|rv| *rv > 0)
                .unwrap_or(current);
            if at > current {
                return Err(ApiError::bad_request(
                    "continue key is not valid: the resource version is in the future",
                ));
            }
            if at < self.oldest() {
                return Err(ApiError::expired_continue(encode_continue(-1, &start)));
            }
            (at, Some(start))
        } else {
            match opts.resource_version.as_deref() {
                None => (current, None),
                Some("0") if exact => {
                    return Err(ApiError::bad_request(
                        "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
                    ));
                }
                Some("0") => (current, None),
                Some(rv) => {
                    let rv = parse_rv(rv)?;
                    if rv > current {
                        return Err(ApiError::too_large_rv(rv, current));
                    }
                    if exact && rv < self.oldest() {
                        return Err(ApiError::expired(format!(
                            "too old resource version: {rv} ({})",
                            self.oldest()
                        )));
                    }
                    (if exact { rv } else { current }, None)
                }
            }
        };
        let objects = if at == current {
            self.objects.get(res.kind).cloned().unwrap_or_default()
        } else {
            self.objects_at(res, at)
        };
        let matching: Vec<(String, Value)> = objects
            .into_iter()
            .filter(|(key, _)| start.as_deref().is_none_or(|s| key.as_str() >= s))
            .filter(|(_, obj)| filter.matches(obj))
            .collect();
        let limit = opts
            .limit
            .map(|l| self.page_limit.map_or(l, |p| l.min(p)).max(1));
        let take = limit.unwrap_or(matching.len()).min(matching.len());
        let remaining = matching.len() - take;
        let mut meta = Map::new();
        meta.insert("resourceVersion".into(), Value::String(at.to_string()));
        if remaining > 0
            && let Some((last, _)) = take.checked_sub(1).and_then(|i| matching.get(i))
        {
            let rv = i64::try_from(at).unwrap_or(i64::MAX);
            meta.insert(
                "continue".into(),
                Value::String(encode_continue(rv, &format!("{last}\u{0}"))),
            );
            // The real server counts what remains only when nothing is filtered out.
            if !filter.selective() {
                meta.insert("remainingItemCount".into(), Value::from(remaining));
            }
        }
        let items: Vec<Value> = matching
            .into_iter()
            .take(take)
            .map(|(_, mut obj)| {
                // Items of a typed list carry no type information on the wire.
                if let Some(o) = obj.as_object_mut() {
                    o.remove("kind");
                    o.remove("apiVersion");
                }
                obj
            })
            .collect();
        Ok(json!({
            "kind": format!("{}List", res.kind),
            "apiVersion": res.api_version(),
            "metadata": meta,
            "items": items,
        }))
    }

    /// Opens a watch: the events it starts with, and (unless it ends right there) its id and
    /// the queue the store feeds.
    #[allow(clippy::type_complexity, reason = "a private helper's two results")]
    fn watch(
        &mut self,
        filter: Filter,
        opts: &Options,
        path: &str,
        conn: &CancellationToken,
    ) -> Result<(VecDeque<Bytes>, Option<(u64, mpsc::Receiver<Bytes>)>), ApiError> {
        let streaming = opts.send_initial_events;
        if opts.version_match.is_some() && streaming.is_none() {
            return Err(ApiError::bad_request(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        if streaming.is_some() && opts.version_match.as_deref() != Some("NotOlderThan") {
            return Err(ApiError::bad_request(
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if streaming == Some(true) && !opts.bookmarks {
            return Err(ApiError::bad_request(
                "allowWatchBookmarks: Required value: sendInitialEvents requires setting allowWatchBookmarks to true",
            ));
        }
        let res = filter.res;
        let mut initial = VecDeque::new();
        let current_objects = |initial: &mut VecDeque<Bytes>| {
            for obj in self
                .objects
                .get(res.kind)
                .into_iter()
                .flat_map(|m| m.values())
            {
                if filter.matches(obj) {
                    initial.push_back(event_line("ADDED", obj));
                }
            }
        };
        match (streaming, opts.resource_version.as_deref()) {
            (Some(true), rv) => {
                if let Some(rv) = rv.filter(|rv| *rv != "0") {
                    let rv = parse_rv(rv)?;
                    if rv > self.rv {
                        return Err(ApiError::too_large_rv(rv, self.rv));
                    }
                }
                current_objects(&mut initial);
                initial.push_back(bookmark_line(res, self.rv, true));
            }
            (None, None | Some("0")) => current_objects(&mut initial),
            (Some(false), None | Some("0")) => {}
            (_, Some(rv)) => {
                let rv = parse_rv(rv)?;
                if rv > self.rv {
                    // The real server waits a few seconds for its cache to catch up first.
                    return Err(ApiError::too_large_rv(rv, self.rv));
                }
                if rv < self.oldest() {
                    let status = ApiError::expired(format!(
                        "too old resource version: {rv} ({})",
                        self.oldest()
                    ));
                    initial.push_back(event_line("ERROR", &status.status()));
                    return Ok((initial, None));
                }
                for change in self.history.iter().filter(|c| c.rv > rv) {
                    if let Some((ty, obj)) = filter.event(change) {
                        initial.push_back(event_line(ty, &obj));
                    }
                }
            }
        }
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        self.next_watch += 1;
        let id = self.next_watch;
        self.watches.push(Watch {
            id,
            path: path.to_owned(),
            filter,
            bookmarks: opts.bookmarks,
            last_rv: self.rv,
            tx,
            conn: conn.clone(),
        });
        self.publish();
        Ok((initial, Some((id, rx))))
    }

    /// Answers an access review: the request, with its status. Allowed unless
    /// [`FakeKube::deny_access`] named its user (the caller, for a SelfSubjectAccessReview),
    /// verb, group and resource.
    fn access_review(&self, mut review: Value) -> Value {
        let attr = |k: &str| {
            review
                .pointer(&format!("/spec/resourceAttributes/{k}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let user = review
            .pointer("/spec/user")
            .and_then(Value::as_str)
            .unwrap_or(ADMIN_USER)
            .to_owned();
        // A subresource is named as RBAC rules name it: `pods/portforward`.
        let resource = match attr("subresource") {
            sub if sub.is_empty() => attr("resource"),
            sub => format!("{}/{sub}", attr("resource")),
        };
        let asked = (user, attr("verb"), attr("group"), resource);
        let status = if self.denied.contains(&asked) {
            json!({ "allowed": false, "reason": "no RBAC policy matched" })
        } else {
            json!({ "allowed": true, "reason": "the fake API server allows every request" })
        };
        if let Some(o) = review.as_object_mut() {
            o.insert("metadata".into(), json!({ "creationTimestamp": null }));
            o.insert("status".into(), status);
        }
        review
    }

    /// Answers a TokenReview: the request, with its status.
    fn token_review(&self, mut review: Value) -> Result<Value, ApiError> {
        let spec = review.get("spec").and_then(Value::as_object);
        let token = spec
            .and_then(|s| s.get("token"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request("token is required for TokenReview in authentication")
            })?;
        let wanted: Vec<String> = match spec.and_then(|s| s.get("audiences")) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| ApiError::bad_request("spec.audiences must be strings"))?,
            Some(_) => return Err(ApiError::bad_request("spec.audiences must be a list")),
        };
        let failed = |error: String| json!({ "user": {}, "error": error });
        let status = match self.tokens.get(token) {
            None => failed("[invalid bearer token, token lookup failed]".into()),
            Some(info) if info.expired => {
                failed("[invalid bearer token, service account token has expired]".into())
            }
            Some(info) => {
                let granted: Vec<String> = if wanted.is_empty() {
                    info.audiences.clone()
                } else {
                    wanted
                        .iter()
                        .filter(|a| info.audiences.contains(a))
                        .cloned()
                        .collect()
                };
                if granted.is_empty() && !wanted.is_empty() {
                    failed(format!(
                        "[invalid bearer token, token audiences {} is invalid for the target audiences {}]",
                        go_quoted(&info.audiences),
                        go_quoted(&wanted)
                    ))
                } else {
                    let mut user = Map::new();
                    user.insert("username".into(), Value::String(info.username.clone()));
                    if !info.uid.is_empty() {
                        user.insert("uid".into(), Value::String(info.uid.clone()));
                    }
                    user.insert("groups".into(), json!(groups_of(&info.username)));
                    if !info.extra.is_empty() {
                        user.insert("extra".into(), json!(info.extra));
                    }
                    let mut status = Map::new();
                    status.insert("authenticated".into(), Value::Bool(true));
                    status.insert("user".into(), Value::Object(user));
                    if !granted.is_empty() {
                        status.insert("audiences".into(), json!(granted));
                    }
                    Value::Object(status)
                }
            }
        };
        // `authenticated: false` is left out on the wire (omitempty), as the real server does.
        if let Some(o) = review.as_object_mut() {
            o.insert("metadata".into(), json!({ "creationTimestamp": null }));
            o.insert("status".into(), status);
        }
        Ok(review)
    }
}

// === impl Change, Filter ===

impl Filter {
    fn new(
        res: &'static Resource,
        namespace: Option<String>,
        name: Option<String>,
        opts: &Options,
    ) -> Result<Self, ApiError> {
        let mut fields = match &opts.field_selector {
            Some(sel) => parse_fields(res, sel)?,
            None => Vec::new(),
        };
        if let Some(name) = name {
            fields.push(FieldReq {
                field: "metadata.name".into(),
                value: name,
                equals: true,
            });
        }
        Ok(Self {
            res,
            namespace,
            labels: opts.label_selector.clone(),
            fields,
        })
    }

    /// Whether the selectors may leave objects out.
    fn selective(&self) -> bool {
        !self.labels.is_empty() || !self.fields.is_empty()
    }

    fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && obj.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns.as_str())
        {
            return false;
        }
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.labels.iter().all(|r| r.matches(label))
            && self
                .fields
                .iter()
                .all(|f| (field_value(obj, &f.field) == f.value) == f.equals)
    }

    /// The event a watch with this filter gets for `change`, if any. An object that starts
    /// matching is ADDED and one that stops matching is DELETED, as the watch cache does.
    fn event(&self, change: &Change) -> Option<(&'static str, Value)> {
        if change.res.kind != self.res.kind {
            return None;
        }
        let before = change.before.as_ref().filter(|o| self.matches(o));
        let after = change.after.as_ref().filter(|o| self.matches(o));
        match (before, after) {
            (None, None) => None,
            (None, Some(after)) => Some(("ADDED", after.clone())),
            (Some(_), Some(after)) => Some(("MODIFIED", after.clone())),
            (Some(before), None) => {
                let mut last = before.clone();
                if let Some(meta) = last.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert(
                        "resourceVersion".into(),
                        Value::String(change.rv.to_string()),
                    );
                }
                Some(("DELETED", last))
            }
        }
    }
}

// === impl LabelReq ===

impl LabelReq {
    fn matches<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            LabelReq::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
        }
    }
}

// === impl Options ===

impl Options {
    fn parse(query: &str) -> Result<Self, ApiError> {
        let mut o = Options::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (percent_decode(k), percent_decode(v));
            let non_empty = |v: String| (!v.is_empty()).then_some(v);
            match k.as_str() {
                "watch" => o.watch = parse_bool(&k, &v)?.unwrap_or(false),
                "allowWatchBookmarks" => o.bookmarks = parse_bool(&k, &v)?.unwrap_or(false),
                "sendInitialEvents" => o.send_initial_events = parse_bool(&k, &v)?,
                "resourceVersion" => o.resource_version = non_empty(v),
                "resourceVersionMatch" => o.version_match = non_empty(v),
                "continue" => o.continue_token = non_empty(v),
                "labelSelector" => o.label_selector = parse_labels(&v)?,
                "fieldSelector" => o.field_selector = non_empty(v),
                "limit" => {
                    let limit: i64 = parse_number(&k, &v)?;
                    o.limit = usize::try_from(limit).ok().filter(|l| *l > 0);
                }
                "timeoutSeconds" => {
                    let secs: i64 = parse_number(&k, &v)?;
                    o.timeout = u64::try_from(secs)
                        .ok()
                        .filter(|s| *s > 0)
                        .map(Duration::from_secs);
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

// === impl ApiError ===

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            continue_token: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    fn no_such_path() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    fn not_found(res: &Resource, name: &str) -> Self {
        let mut details = json!({ "name": name, "kind": res.plural });
        if !res.group.name.is_empty()
            && let Some(d) = details.as_object_mut()
        {
            d.insert("group".into(), Value::String(res.group.name.into()));
        }
        Self {
            details: Some(details),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} {name:?} not found", res.qualified()),
            )
        }
    }

    /// A write whose resourceVersion precondition no longer holds.
    fn conflict(res: &Resource, name: &str) -> Self {
        let mut details = json!({ "name": name, "kind": res.plural });
        if !res.group.name.is_empty()
            && let Some(d) = details.as_object_mut()
        {
            d.insert("group".into(), Value::String(res.group.name.into()));
        }
        Self {
            details: Some(details),
            ..Self::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} {name:?}: the object has been \
                     modified; please apply your changes to the latest version and try again",
                    res.qualified()
                ),
            )
        }
    }

    /// A PATCH whose body is of a media type the server does not take.
    fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types \
                 include: {MERGE_PATCH}, {APPLY_PATCH}"
            ),
        )
    }

    /// Invalid PATCH query parameters: one `field` error of type `cause` (as
    /// `FieldValueRequired`) whose text is `detail` (as `Required value: ...`).
    fn invalid_patch_options(field: &str, cause: &str, detail: &str) -> Self {
        Self {
            details: Some(json!({
                "group": "meta.k8s.io",
                "kind": "PatchOptions",
                "causes": [{ "reason": cause, "message": detail, "field": field }],
            })),
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("PatchOptions.meta.k8s.io \"\" is invalid: {field}: {detail}"),
            )
        }
    }

    /// What RBAC answers a `user` who may not create `review`s.
    fn forbidden(review: &Review, user: &str) -> Self {
        Self {
            details: Some(json!({ "group": review.group.name, "kind": review.plural })),
            ..Self::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "{}.{} is forbidden: User {user:?} cannot create resource {:?} in API group \
                     {:?} at the cluster scope",
                    review.plural, review.group.name, review.plural, review.group.name
                ),
            )
        }
    }

    /// What RBAC answers the caller when it may not `verb` the subresource `resource` (as
    /// `pods/portforward`) of pod `name` in `namespace`.
    fn forbidden_pod_subresource(verb: &str, resource: &str, namespace: &str, name: &str) -> Self {
        Self {
            details: Some(json!({ "name": name, "kind": "pods" })),
            ..Self::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "pods {name:?} is forbidden: User {ADMIN_USER:?} cannot {verb} resource \
                     {resource:?} in API group \"\" in the namespace {namespace:?}"
                ),
            )
        }
    }

    fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    fn expired(message: String) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    fn expired_continue(token: String) -> Self {
        Self {
            continue_token: Some(token),
            ..Self::expired(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter, or use the continue \
                 token in this response to retrieve the remainder of the results. Continuing \
                 with the provided token results in an inconsistent list - objects that were \
                 created, modified, or deleted between the time the first chunk was returned \
                 and now may show up in the list."
                    .into(),
            )
        }
    }

    fn too_large_rv(rv: u64, current: u64) -> Self {
        Self {
            details: Some(json!({
                "causes": [{
                    "reason": "ResourceVersionTooLarge",
                    "message": "Too large resource version",
                }],
                "retryAfterSeconds": 1,
            })),
            ..Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                format!("Too large resource version: {rv}, current: {current}"),
            )
        }
    }

    /// The `metav1.Status`.
    fn status(&self) -> Value {
        let mut meta = Map::new();
        if let Some(token) = &self.continue_token {
            meta.insert("continue".into(), Value::String(token.clone()));
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": meta,
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let (Some(details), Some(o)) = (&self.details, status.as_object_mut()) {
            o.insert("details".into(), details.clone());
        }
        status
    }

    fn response(&self) -> Response<Body> {
        json_response(self.code, &self.status())
    }
}

// === impl Group, Resource, Review ===

impl Group {
    /// `v1` for the core group, `apps/v1`, `weft.dev/v1alpha1`.
    fn group_version(&self) -> String {
        if self.name.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.name, self.version)
        }
    }

    /// Its entry in `/apis` (and the body of `/apis/{group}`, with the type fields): its one
    /// version, preferred.
    fn discovery(&self) -> Value {
        let gv = json!({ "groupVersion": self.group_version(), "version": self.version });
        json!({ "name": self.name, "versions": [gv.clone()], "preferredVersion": gv })
    }
}

impl Resource {
    /// `v1`, `apps/v1`, `weft.dev/v1alpha1`: its group's served version.
    fn api_version(&self) -> String {
        self.group.group_version()
    }

    /// The resource as errors name it: `pods`, `deployments.apps`.
    fn qualified(&self) -> String {
        if self.group.name.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group.name)
        }
    }

    /// Its entries in its group's APIResourceList: itself, then its status subresource for a
    /// custom resource, as the real server lists a CRD with one. Empty lists are left out, as
    /// on the wire.
    fn discovery(&self) -> Vec<Value> {
        let mut entry = Map::new();
        entry.insert("name".into(), Value::String(self.plural.into()));
        entry.insert("singularName".into(), Value::String(self.singular.into()));
        entry.insert("namespaced".into(), Value::Bool(self.namespaced));
        entry.insert("kind".into(), Value::String(self.kind.into()));
        let verbs: &[&str] = if self.custom {
            &CRD_VERBS
        } else {
            &["get", "list", "watch"]
        };
        entry.insert("verbs".into(), json!(verbs));
        if !self.short_names.is_empty() {
            entry.insert("shortNames".into(), json!(self.short_names));
        }
        if !self.categories.is_empty() {
            entry.insert("categories".into(), json!(self.categories));
        }
        if self.kind == "Pod" {
            let portforward = json!({
                "name": "pods/portforward",
                "singularName": "",
                "namespaced": true,
                "kind": "PodPortForwardOptions",
                "verbs": ["create", "get"],
            });
            return vec![Value::Object(entry), portforward];
        }
        if !self.custom {
            return vec![Value::Object(entry)];
        }
        entry.insert(
            "storageVersionHash".into(),
            Value::String(storage_version_hash(self.group, self.kind)),
        );
        let status = json!({
            "name": format!("{}/status", self.plural),
            "singularName": "",
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": STATUS_VERBS,
        });
        vec![Value::Object(entry), status]
    }
}

impl Review {
    /// `authentication.k8s.io/v1`: its group's served version.
    fn api_version(&self) -> String {
        self.group.group_version()
    }

    fn discovery(&self) -> Value {
        json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": false,
            "kind": self.kind,
            "verbs": ["create"],
        })
    }
}

// === impl WatchGuard ===

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.state().remove_watch(self.id);
        }
    }
}

// === the server ===

/// A listening socket on `addr`, reusable at once after a restart.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves `listener` until `generation` is cancelled.
fn serve(inner: &Arc<Inner>, listener: TcpListener, generation: CancellationToken) -> Serving {
    let tracker = TaskTracker::new();
    let connections = tracker.clone();
    let inner = inner.clone();
    let stop = generation.clone();
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, _)) => {
                    connections.spawn(serve_connection(inner.clone(), tcp, stop.child_token()));
                }
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted: back
                    // off a little rather than spin.
                    tracing::debug!(error = %e, "fake API server: accept failed");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(10)) => {}
                    }
                }
            }
        }
    });
    Serving {
        generation,
        tracker,
    }
}

/// Serves one connection until the client closes it or `cut` is cancelled, which drops it
/// mid-response.
async fn serve_connection(inner: Arc<Inner>, tcp: TcpStream, cut: CancellationToken) {
    let conn_token = cut.clone();
    let service = hyper::service::service_fn(move |req| {
        let inner = inner.clone();
        let conn = conn_token.clone();
        async move { Ok::<_, Infallible>(handle(&inner, &conn, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::select! {
        biased;
        () = cut.cancelled() => {}
        _ = conn => {}
    }
}

async fn handle(
    inner: &Arc<Inner>,
    conn: &CancellationToken,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    inner.state().log(RequestLog {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
    });
    if !authorized(req.headers()) {
        return ApiError::unauthorized().response();
    }
    let crds = inner.state().crds;
    let Some(route) = route(&path, crds) else {
        return ApiError::no_such_path().response();
    };
    let get = method == Method::GET;
    match route {
        Route::Review(review) if method == Method::POST => {
            handle_review(inner, review, req.into_body()).await
        }
        Route::Collection { res, namespace } if get => {
            collection(inner, conn, res, namespace, None, &path, &query)
        }
        Route::Object {
            res,
            namespace,
            name,
        } if get => {
            let opts = match Options::parse(&query) {
                Ok(o) => o,
                Err(e) => return e.response(),
            };
            if opts.watch {
                // The deprecated watch of one object: a watch of its collection by name.
                return collection(inner, conn, res, namespace, Some(name), &path, &query);
            }
            get_object(inner, res, namespace.as_deref(), &name)
        }
        // The status subresource answers the whole object.
        Route::Status {
            res,
            namespace,
            name,
        } if get => get_object(inner, res, namespace.as_deref(), &name),
        Route::Status {
            res,
            namespace,
            name,
        } if method == Method::PATCH => {
            let content_type = req
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let target = (res, namespace, name);
            patch_status(inner, target, &content_type, &query, req.into_body()).await
        }
        Route::PortForward { namespace, name } if get => {
            port_forward(inner, conn, &namespace, &name, &query, &mut req)
        }
        Route::Version if get => {
            let (major, minor) = inner.state().version.clone();
            json_response(StatusCode::OK, &version(&major, &minor))
        }
        Route::Health if get => Response::new(full(Bytes::from_static(b"ok"))),
        Route::CoreVersions if get => json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions",
                "versions": [CORE_GROUP.version],
                "serverAddressByClientCIDRs": [
                    { "clientCIDR": "0.0.0.0/0", "serverAddress": inner.addr.to_string() }
                ],
            }),
        ),
        Route::Groups if get => json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": served_groups(crds).map(Group::discovery).collect::<Vec<_>>(),
            }),
        ),
        Route::Group(group) if get => {
            let mut doc = group.discovery();
            if let Some(o) = doc.as_object_mut() {
                o.insert("kind".into(), Value::String("APIGroup".into()));
                o.insert("apiVersion".into(), Value::String("v1".into()));
            }
            json_response(StatusCode::OK, &doc)
        }
        Route::Resources(group) if get => {
            let resources: Vec<Value> = RESOURCES
                .iter()
                .filter(|r| r.group.name == group.name)
                .flat_map(Resource::discovery)
                .chain(
                    REVIEWS
                        .iter()
                        .filter(|r| r.group.name == group.name)
                        .map(Review::discovery),
                )
                .collect();
            let mut doc = json!({
                "kind": "APIResourceList",
                "groupVersion": group.group_version(),
                "resources": resources,
            });
            if !group.name.is_empty()
                && let Some(o) = doc.as_object_mut()
            {
                o.insert("apiVersion".into(), Value::String("v1".into()));
            }
            json_response(StatusCode::OK, &doc)
        }
        _ => ApiError::method_not_allowed().response(),
    }
}

/// A GET of one object.
fn get_object(
    inner: &Arc<Inner>,
    res: &'static Resource,
    namespace: Option<&str>,
    name: &str,
) -> Response<Body> {
    let key = object_key(namespace, name);
    let obj = inner
        .state()
        .objects
        .get(res.kind)
        .and_then(|m| m.get(&key))
        .cloned();
    match obj {
        Some(obj) => json_response(StatusCode::OK, &obj),
        None => ApiError::not_found(res, name).response(),
    }
}

/// A PATCH of `.../{name}/status`: a JSON merge patch, or a server-side apply patch written
/// as JSON (merged the same way), checked in the real server's order: media type, query
/// parameters, body, then the object.
async fn patch_status(
    inner: &Arc<Inner>,
    (res, namespace, name): (&'static Resource, Option<String>, String),
    content_type: &str,
    query: &str,
    body: Incoming,
) -> Response<Body> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let apply = match media {
        MERGE_PATCH => false,
        APPLY_PATCH => true,
        _ => return ApiError::unsupported_media_type().response(),
    };
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return ApiError::bad_request("unable to read the request body").response(),
    };
    let dry_run = match patch_options(query, apply) {
        Ok(dry_run) => dry_run,
        Err(e) => return e.response(),
    };
    let Ok(patch @ Value::Object(_)) = serde_json::from_slice::<Value>(&bytes) else {
        let what = if apply {
            "the apply patch is not a JSON object (the fake API server reads no YAML)"
        } else {
            "the merge patch is not a JSON object"
        };
        return ApiError::bad_request(what).response();
    };
    if apply {
        let given = patch
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let expected = res.api_version();
        if given != expected {
            return ApiError::bad_request(format!(
                "Incorrect version specified in apply patch. Specified patch version: {given}, \
                 expected: {expected}"
            ))
            .response();
        }
    }
    let patched = inner
        .state()
        .patch_status(res, namespace.as_deref(), &name, &patch, dry_run);
    match patched {
        Ok(obj) => json_response(StatusCode::OK, &obj),
        Err(e) => e.response(),
    }
}

/// The query parameters of a PATCH, checked as the real server checks PatchOptions: whether
/// it is a dry run.
fn patch_options(query: &str, apply: bool) -> Result<bool, ApiError> {
    let mut field_manager = String::new();
    let mut force = None;
    let mut dry_run = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k), percent_decode(v));
        match k.as_str() {
            "fieldManager" => field_manager = v,
            "force" => force = parse_bool(&k, &v)?,
            "dryRun" if v == "All" => dry_run = true,
            "dryRun" => {
                return Err(ApiError::invalid_patch_options(
                    "dryRun",
                    "FieldValueNotSupported",
                    &format!("Unsupported value: [{v:?}]: supported values: \"All\""),
                ));
            }
            _ => {}
        }
    }
    if apply && field_manager.is_empty() {
        return Err(ApiError::invalid_patch_options(
            "fieldManager",
            "FieldValueRequired",
            "Required value: is required for apply patch",
        ));
    }
    if !apply && force.is_some() {
        return Err(ApiError::invalid_patch_options(
            "force",
            "FieldValueForbidden",
            "Forbidden: may not be specified for non-apply patch",
        ));
    }
    Ok(dry_run)
}

/// A list or a watch of `res`.
fn collection(
    inner: &Arc<Inner>,
    conn: &CancellationToken,
    res: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    path: &str,
    query: &str,
) -> Response<Body> {
    let opts = match Options::parse(query) {
        Ok(o) => o,
        Err(e) => return e.response(),
    };
    let filter = match Filter::new(res, namespace, name, &opts) {
        Ok(f) => f,
        Err(e) => return e.response(),
    };
    if !opts.watch {
        return match inner.state().list(&filter, &opts) {
            Ok(list) => json_response(StatusCode::OK, &list),
            Err(e) => e.response(),
        };
    }
    // The lock is released at the end of this statement: the body (whose guard takes the
    // lock when dropped) is built after it.
    let started = inner.state().watch(filter, &opts, path, conn);
    let (initial, queue) = match started {
        Ok(s) => s,
        Err(e) => return e.response(),
    };
    let guard = queue.as_ref().map(|(id, _)| WatchGuard {
        inner: Arc::downgrade(inner),
        id: *id,
    });
    let body = WatchBody {
        initial,
        rx: queue.map(|(_, rx)| rx),
        deadline: opts.timeout.map(|t| tokio::time::Instant::now() + t),
        cut: conn.clone(),
        done: false,
        _guard: guard,
    };
    let stream = futures_util::stream::unfold(body, |mut body| async move {
        if body.done {
            return None;
        }
        if let Some(line) = body.initial.pop_front() {
            return Some((Ok(Frame::data(line)), body));
        }
        let rx = body.rx.as_mut()?;
        let deadline = body.deadline;
        let timeout = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let line = tokio::select! {
            biased;
            () = body.cut.cancelled() => None,
            line = rx.recv() => line,
            () = timeout => None,
        };
        match line {
            Some(line) => Some((Ok(Frame::data(line)), body)),
            None if body.cut.is_cancelled() => {
                body.done = true;
                let cut = std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the watch's connection was cut",
                );
                Some((Err(cut), body))
            }
            None => None,
        }
    });
    let mut rsp = Response::new(StreamBody::new(stream).boxed_unsync());
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rsp
}

/// A TokenReview or an access review.
async fn handle_review(inner: &Arc<Inner>, review: &Review, body: Incoming) -> Response<Body> {
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return ApiError::bad_request("unable to read the request body").response(),
    };
    let Ok(obj @ Value::Object(_)) = serde_json::from_slice::<Value>(&bytes) else {
        return ApiError::bad_request("the request body is not a JSON object").response();
    };
    let api_version = review.api_version();
    if obj["kind"] != review.kind || obj["apiVersion"] != api_version.as_str() {
        return ApiError::bad_request(format!(
            "the object provided is not a {api_version} {}",
            review.kind
        ))
        .response();
    }
    let answer = match review.kind {
        "TokenReview" => inner.state().token_review(obj),
        "SubjectAccessReview" if inner.state().reviews_forbidden => {
            Err(ApiError::forbidden(review, ADMIN_USER))
        }
        _ => Ok(inner.state().access_review(obj)),
    };
    match answer {
        Ok(answer) => json_response(StatusCode::CREATED, &answer),
        Err(e) => e.response(),
    }
}

// === port-forward ===

/// The one subprotocol a port-forward's WebSocket speaks: the kubelet's binary channel
/// protocol, version 4.
const PORT_FORWARD_PROTOCOL: &str = "v4.channel.k8s.io";
/// The most bytes one data message carries from a pod's port.
const PORT_FORWARD_CHUNK: usize = 32 * 1024;
/// How long the server waits for the client's answer to its closing message.
const PORT_FORWARD_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// One port of a port-forward: the port asked for, and where the test said it leads.
type ForwardedPort = (u16, Option<SocketAddr>);

/// `GET /api/v1/namespaces/{ns}/pods/{name}/portforward?ports=...`: checked in the real
/// server's order (authorization, the pod, the query, the WebSocket handshake), then answered
/// 101 Switching Protocols and relayed by [`relay_ports`] once the connection is upgraded.
fn port_forward(
    inner: &Arc<Inner>,
    conn: &CancellationToken,
    namespace: &str,
    name: &str,
    query: &str,
    req: &mut Request<Incoming>,
) -> Response<Body> {
    let checked = check_port_forward(inner, namespace, name, query, req.headers());
    let (ports, uid, accept, protocol) = match checked {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    let upgrade = hyper::upgrade::on(&mut *req);
    let pod = format!("{namespace}/{name}");
    tokio::spawn(relay_ports(upgrade, conn.clone(), pod, uid, ports));
    let mut rsp = Response::new(full(Bytes::new()));
    *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = rsp.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = protocol {
        headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    rsp
}

/// The checks of a port-forward request. Answers its ports with where each leads, the pod's
/// UID, the `Sec-WebSocket-Accept` of its key and the subprotocol chosen (none when the client
/// offered none: the kubelet then speaks the binary protocol unversioned).
#[allow(clippy::type_complexity, reason = "one private call site")]
fn check_port_forward(
    inner: &Arc<Inner>,
    namespace: &str,
    name: &str,
    query: &str,
    headers: &HeaderMap,
) -> Result<(Vec<ForwardedPort>, String, String, Option<&'static str>), ApiError> {
    let st = inner.state();
    // A WebSocket upgrade is a GET, which RBAC reads as `get`; Kubernetes 1.35 asks for
    // `create` as well, as for the SPDY transport's POST.
    for verb in ["get", "create"] {
        let asked = (
            ADMIN_USER.to_owned(),
            verb.to_owned(),
            String::new(),
            "pods/portforward".to_owned(),
        );
        if st.denied.contains(&asked) {
            return Err(ApiError::forbidden_pod_subresource(
                verb,
                "pods/portforward",
                namespace,
                name,
            ));
        }
    }
    let pods = resource_by_kind("Pod").ok_or_else(ApiError::no_such_path)?;
    let pod = st
        .objects
        .get(pods.kind)
        .and_then(|m| m.get(&object_key(Some(namespace), name)))
        .ok_or_else(|| ApiError::not_found(pods, name))?;
    if pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut ports = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k) != "ports" {
            continue;
        }
        for p in percent_decode(v).split(',') {
            match p.trim().parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "ports: {p:?} is not a port number between 1 and 65535"
                    )));
                }
            }
        }
    }
    if ports.is_empty() {
        return Err(ApiError::bad_request(
            "at least one port must be given in ports",
        ));
    }
    // Two channels a port, each numbered by one byte.
    if ports.len() > 127 {
        return Err(ApiError::bad_request("at most 127 ports at once"));
    }
    let targets = ports
        .into_iter()
        .map(|port| {
            let key = (namespace.to_owned(), name.to_owned(), port);
            (port, st.pod_ports.get(&key).copied())
        })
        .collect();
    drop(st);
    let header = |h: &http::header::HeaderName| {
        headers
            .get_all(h)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
    };
    let is_upgrade = header(&UPGRADE).eq_ignore_ascii_case("websocket")
        && header(&CONNECTION)
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let key = header(&SEC_WEBSOCKET_KEY);
    if !is_upgrade || key.is_empty() || header(&SEC_WEBSOCKET_VERSION) != "13" {
        return Err(ApiError::bad_request(
            "Upgrade request required: this server forwards ports over WebSocket only",
        ));
    }
    let offered = header(&SEC_WEBSOCKET_PROTOCOL);
    let offered: Vec<&str> = offered
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let protocol = if offered.is_empty() {
        None
    } else if offered.contains(&PORT_FORWARD_PROTOCOL) {
        Some(PORT_FORWARD_PROTOCOL)
    } else {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade: none of the subprotocols {offered:?} is {PORT_FORWARD_PROTOCOL}"
        )));
    };
    let accept = derive_accept_key(key.as_bytes());
    Ok((targets, uid, accept, protocol))
}

/// Relays the channels of an upgraded port-forward until every port is done, the client goes
/// or the connection is cut.
async fn relay_ports(
    upgrade: hyper::upgrade::OnUpgrade,
    cut: CancellationToken,
    pod: String,
    uid: String,
    ports: Vec<ForwardedPort>,
) {
    let upgraded = tokio::select! {
        () = cut.cancelled() => return,
        upgraded = upgrade => match upgraded {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "fake API server: the port-forward was not upgraded");
                return;
            }
        },
    };
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    tokio::select! {
        () = cut.cancelled() => {}
        () = relay_channels(ws, &pod, &uid, ports) => {}
    }
}

/// The kubelet's side of the channel protocol: each port's number first on both its
/// channels, then its bytes both ways (or its error), then the closing message.
async fn relay_channels<S>(
    mut ws: WebSocketStream<S>,
    pod: &str,
    uid: &str,
    ports: Vec<ForwardedPort>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let channel =
        |i: usize, error: bool| u8::try_from(2 * i + usize::from(error)).unwrap_or(u8::MAX);
    let message = |channel: u8, bytes: &[u8]| {
        let mut m = Vec::with_capacity(bytes.len() + 1);
        m.push(channel);
        m.extend_from_slice(bytes);
        Message::binary(m)
    };
    for (i, (port, _)) in ports.iter().enumerate() {
        for error in [false, true] {
            if ws
                .send(message(channel(i, error), &port.to_le_bytes()))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let (from_ports, mut from_pod) = mpsc::channel::<(u8, Bytes)>(16);
    let mut to_pod = Vec::with_capacity(ports.len());
    for (i, (port, target)) in ports.into_iter().enumerate() {
        let dialed = match target {
            Some(addr) => TcpStream::connect(addr).await.map_err(|e| e.to_string()),
            None => Err("connect: connection refused".to_owned()),
        };
        match dialed {
            Ok(tcp) => {
                let (read, write) = tcp.into_split();
                to_pod.push(Some(write));
                tokio::spawn(read_port(read, channel(i, false), from_ports.clone()));
            }
            Err(why) => {
                to_pod.push(None);
                let text = format!(
                    "error forwarding port {port} to pod {pod}, uid {uid}: failed to connect to \
                     localhost:{port} inside the pod's network namespace: {why}"
                );
                if ws
                    .send(message(channel(i, true), text.as_bytes()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    // Once every reader is done (or none started), the receiver ends.
    drop(from_ports);
    loop {
        tokio::select! {
            out = from_pod.recv() => match out {
                Some((ch, bytes)) => {
                    if ws.send(message(ch, &bytes)).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    // Bytes for a port on its data channel; the error channels are the server's.
                    let Some((&ch, data)) = b.split_first() else { continue };
                    let slot = to_pod.get_mut(usize::from(ch / 2)).filter(|_| ch % 2 == 0);
                    if let Some(writer @ Some(_)) = slot
                        && let Some(w) = writer.as_mut()
                        && w.write_all(data).await.is_err()
                    {
                        *writer = None;
                    }
                }
                Some(Ok(Message::Close(_))) => {
                    // The client is done with every port: the pods' ends see their peer go,
                    // and reading on sends the answer tungstenite queued for the client.
                    drop(to_pod);
                    let _ = tokio::time::timeout(PORT_FORWARD_CLOSE_WAIT, async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    return;
                }
                Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
    // Every port is done: close, and give the client a moment to answer.
    drop(to_pod);
    if ws.close(None).await.is_ok() {
        let _ = tokio::time::timeout(PORT_FORWARD_CLOSE_WAIT, async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

/// Reads a pod's port until it ends, for the data channel `channel`.
async fn read_port(
    mut read: tokio::net::tcp::OwnedReadHalf,
    channel: u8,
    out: mpsc::Sender<(u8, Bytes)>,
) {
    let mut buf = vec![0u8; PORT_FORWARD_CHUNK];
    loop {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                if out.send((channel, chunk)).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, token)| {
            scheme.eq_ignore_ascii_case("bearer") && token.trim() == ADMIN_TOKEN
        })
}

/// What `path` names; `crds` is which groups of custom resources are installed. A group is
/// served at its one version only: any other answers 404.
fn route(path: &str, crds: Crds) -> Option<Route> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    let known = |group: &str| served_groups(crds).find(|g| g.name == group);
    let known_at = |group: &str, version: &str| known(group).filter(|g| g.version == version);
    match segments.as_slice() {
        ["version"] => Some(Route::Version),
        ["healthz" | "livez" | "readyz"] => Some(Route::Health),
        ["api"] => Some(Route::CoreVersions),
        ["apis"] => Some(Route::Groups),
        ["api", version] if *version == CORE_GROUP.version => Some(Route::Resources(&CORE_GROUP)),
        ["apis", group] => known(group).map(Route::Group),
        ["apis", group, version] => known_at(group, version).map(Route::Resources),
        ["api", version, rest @ ..] if *version == CORE_GROUP.version => {
            resource_route(&CORE_GROUP, rest)
        }
        ["apis", group, version, rest @ ..] => resource_route(known_at(group, version)?, rest),
        _ => None,
    }
}

fn resource_route(group: &'static Group, rest: &[&str]) -> Option<Route> {
    let find = |plural: &str| {
        RESOURCES
            .iter()
            .find(|r| r.group.name == group.name && r.plural == plural)
    };
    match rest {
        [plural] => {
            if let Some(review) = REVIEWS
                .iter()
                .find(|r| r.group.name == group.name && r.plural == *plural)
            {
                return Some(Route::Review(review));
            }
            Some(Route::Collection {
                res: find(plural)?,
                namespace: None,
            })
        }
        [plural, name] => {
            let res = find(plural).filter(|r| !r.namespaced)?;
            Some(Route::Object {
                res,
                namespace: None,
                name: (*name).to_owned(),
            })
        }
        ["namespaces", ns, plural] => Some(Route::Collection {
            res: find(plural).filter(|r| r.namespaced)?,
            namespace: Some((*ns).to_owned()),
        }),
        ["namespaces", ns, plural, name] => Some(Route::Object {
            res: find(plural).filter(|r| r.namespaced)?,
            namespace: Some((*ns).to_owned()),
            name: (*name).to_owned(),
        }),
        [plural, name, "status"] => Some(Route::Status {
            res: find(plural).filter(|r| r.custom && !r.namespaced)?,
            namespace: None,
            name: (*name).to_owned(),
        }),
        ["namespaces", ns, "pods", name, "portforward"] if group.name.is_empty() => {
            Some(Route::PortForward {
                namespace: (*ns).to_owned(),
                name: (*name).to_owned(),
            })
        }
        ["namespaces", ns, plural, name, "status"] => Some(Route::Status {
            res: find(plural).filter(|r| r.custom && r.namespaced)?,
            namespace: Some((*ns).to_owned()),
            name: (*name).to_owned(),
        }),
        _ => None,
    }
}

/// The named groups served, in the order `/apis` lists them: the built-in ones, then the
/// Gateway API's and Weft's while they are installed.
fn served_groups(crds: Crds) -> impl Iterator<Item = &'static Group> {
    GROUPS
        .iter()
        .copied()
        .chain(crds.gateway_api.then_some(&GATEWAY_GROUP))
        .chain(crds.weft.then_some(&WEFT_GROUP))
}

fn resource_by_kind(kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

/// The storageVersionHash discovery gives a custom resource: the first 8 bytes of the SHA-256
/// of `group/version/kind` (its group's served version, which is also the one stored), in
/// standard base64.
fn storage_version_hash(group: &Group, kind: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{}/{}/{kind}", group.name, group.version).as_bytes(),
    );
    let prefix = digest.as_ref().get(..8).unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(prefix)
}

fn version(major: &str, minor: &str) -> Value {
    json!({
        "major": major,
        "minor": minor,
        "emulationMajor": major,
        "emulationMinor": minor,
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": format!("v{major}.{minor}.0"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn json_response(code: StatusCode, doc: &Value) -> Response<Body> {
    let mut rsp = Response::new(full(Bytes::from(doc.to_string())));
    *rsp.status_mut() = code;
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rsp
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

// === wire encodings ===

/// One line of a watch stream.
fn event_line(ty: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": ty, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// A BOOKMARK: an object of the watched kind with only its resourceVersion (and, ending a
/// streaming list's initial events, the annotation that says so).
fn bookmark_line(res: &Resource, rv: u64, initial_events_end: bool) -> Bytes {
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    if initial_events_end {
        meta.insert("annotations".into(), json!({ INITIAL_EVENTS_END: "true" }));
    }
    event_line(
        "BOOKMARK",
        &json!({ "kind": res.kind, "apiVersion": res.api_version(), "metadata": meta }),
    )
}

/// Applies the JSON merge patch `patch` to `target` (RFC 7386): an object patch merges
/// member by member, `null` removing a member; anything else replaces the target.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in members {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Whether `a` and `b` differ outside `metadata`, `status` and the type fields: what makes
/// a custom resource with a status subresource a new generation.
fn spec_changed(a: &Value, b: &Value) -> bool {
    let rest = |v: &Value| -> BTreeMap<String, Value> {
        v.as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    rest(a) != rest(b)
}

fn object_name(obj: &Value) -> (Option<String>, Option<String>) {
    let field = |f: &str| {
        obj.pointer(f)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    (field("/metadata/namespace"), field("/metadata/name"))
}

/// Where an object sits in the store, as in etcd's key space.
fn object_key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// The groups of a user: a service account's namespace groups, and `system:authenticated`.
fn groups_of(username: &str) -> Vec<String> {
    let namespace = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, _)| ns);
    let mut groups = Vec::new();
    if let Some(ns) = namespace {
        groups.push("system:serviceaccounts".to_owned());
        groups.push(format!("system:serviceaccounts:{ns}"));
    }
    groups.push("system:authenticated".to_owned());
    groups
}

/// A list of strings as Go's `%q` prints it: `["a" "b"]`.
fn go_quoted(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

fn field_value(obj: &Value, field: &str) -> String {
    let pointer = format!("/{}", field.replace('.', "/"));
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

fn parse_number(name: &str, value: &str) -> Result<i64, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{name}: invalid value {value:?}")))
}

/// A query boolean as Go's `strconv.ParseBool` reads it; empty is unset.
fn parse_bool(name: &str, value: &str) -> Result<Option<bool>, ApiError> {
    match value {
        "" => Ok(None),
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(Some(true)),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(Some(false)),
        _ => Err(ApiError::bad_request(format!(
            "{name}: invalid boolean {value:?}"
        ))),
    }
}

fn parse_labels(selector: &str) -> Result<Vec<LabelReq>, ApiError> {
    let mut reqs = Vec::new();
    if selector.trim().is_empty() {
        return Ok(reqs);
    }
    // Commas separate requirements, except inside the parentheses of a set.
    let mut depth = 0usize;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    for part in parts {
        reqs.push(parse_label_req(part.trim())?);
    }
    Ok(reqs)
}

fn parse_label_req(req: &str) -> Result<LabelReq, ApiError> {
    let bad = || ApiError::bad_request(format!("unable to parse requirement: {req:?}"));
    let key = |k: &str| {
        let k = k.trim();
        let ok = !k.is_empty()
            && k.len() <= 317
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        ok.then(|| k.to_owned()).ok_or_else(bad)
    };
    let value = |v: &str| {
        let v = v.trim();
        let ok = v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        ok.then(|| v.to_owned()).ok_or_else(bad)
    };
    if let Some(k) = req.strip_prefix('!') {
        return Ok(LabelReq::NotExists(key(k)?));
    }
    if let Some((k, v)) = req.split_once("!=") {
        return Ok(LabelReq::NotEquals(key(k)?, value(v)?));
    }
    if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
        return Ok(LabelReq::Equals(key(k)?, value(v)?));
    }
    if let Some((k, rest)) = req.split_once(char::is_whitespace) {
        let rest = rest.trim_start();
        let (is_in, set) = if let Some(set) = rest.strip_prefix("notin") {
            (false, set)
        } else if let Some(set) = rest.strip_prefix("in") {
            (true, set)
        } else {
            return Err(bad());
        };
        let set = set
            .trim()
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(bad)?;
        let values = set.split(',').map(value).collect::<Result<Vec<_>, _>>()?;
        let k = key(k)?;
        return Ok(if is_in {
            LabelReq::In(k, values)
        } else {
            LabelReq::NotIn(k, values)
        });
    }
    Ok(LabelReq::Exists(key(req)?))
}

fn parse_fields(res: &Resource, selector: &str) -> Result<Vec<FieldReq>, ApiError> {
    let mut reqs = Vec::new();
    for part in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (field, value, equals) = if let Some((f, v)) = part.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            (f, v, true)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid selector: '{part}'; can't understand '{part}'"
            )));
        };
        let field = field.trim();
        if !matches!(field, "metadata.name" | "metadata.namespace") && !res.fields.contains(&field)
        {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {field}"
            )));
        }
        reqs.push(FieldReq {
            field: field.to_owned(),
            value: value.trim().to_owned(),
            equals,
        });
    }
    Ok(reqs)
}

/// A continue token as the real server makes one: unpadded URL-safe base64 of
/// `{"v":"meta.k8s.io/v1","rv":N,"start":"<key>\u0000"}`.
fn encode_continue(rv: i64, start: &str) -> String {
    let doc = json!({ "v": "meta.k8s.io/v1", "rv": rv, "start": start });
    URL_SAFE_NO_PAD.encode(doc.to_string())
}

fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    let invalid = || ApiError::bad_request("continue key is not valid: incorrect encoding");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if doc["v"] != "meta.k8s.io/v1" {
        return Err(ApiError::bad_request(
            "continue key is not valid: server does not recognize this encoded version",
        ));
    }
    let rv = doc["rv"].as_i64().ok_or_else(invalid)?;
    let start = doc["start"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(invalid)?;
    Ok((rv, start.to_owned()))
}

/// `t` as RFC 3339 in UTC, to the second, as `metav1.Time` is written.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), in 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}
