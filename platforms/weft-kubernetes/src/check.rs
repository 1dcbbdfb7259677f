//! `weft check` against a cluster: whether the control plane installed in a namespace (by the
//! Helm chart in `deploy-k8s/weft`, or an equivalent) can work, found out by asking the API
//! server what an operator would look at with kubectl.
//!
//! [`check_cluster`] runs the checks of [`CHECKS`] in order and returns one [`Check`] for each:
//! the API server and its version, the control plane's permissions (SubjectAccessReviews for
//! its ServiceAccount), its Deployment, Service and ServiceAccount, the mesh config file in its
//! ConfigMap, the mesh's root in the CA Secret, the MutatingWebhookConfiguration and the
//! webhook's serving certificate, and the pods of the namespaces that ask for injection. A
//! check that needs what an earlier one could not find is [`Outcome::Skipped`] with the
//! reason. Nothing the API server answers makes this panic: a missing field, bad base64, PEM
//! that does not parse, a key that is not the certificate's are each a failed check that
//! names the object and the field.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use kube::Client;
use ring::signature::KeyPair as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

use crate::inject::{self, Skip};
use crate::{INJECT_ANNOTATION, PROXY_CONTAINER};
use weft_core::platform::error_chain;

/// The API server answers and its version.
pub const API: &str = "kubernetes-api";
/// The control plane's ServiceAccount may do what the adapter does.
pub const RBAC: &str = "control-plane-rbac";
/// The control plane's Deployment is ready; its Service and ServiceAccount exist.
pub const CONTROL_PLANE: &str = "control-plane";
/// The mesh config file in the ConfigMap loads.
pub const MESH_CONFIG: &str = "mesh-config";
/// The mesh's root in the CA Secret.
pub const CA_ROOT: &str = "ca-root";
/// The MutatingWebhookConfiguration.
pub const WEBHOOK: &str = "webhook";
/// The webhook's serving certificate.
pub const WEBHOOK_CERTIFICATE: &str = "webhook-certificate";
/// The pods of the namespaces that ask for injection.
pub const DATA_PLANE: &str = "data-plane";

/// Every check, in the order [`check_cluster`] runs and returns them.
pub const CHECKS: [&str; 8] = [
    API,
    RBAC,
    CONTROL_PLANE,
    MESH_CONFIG,
    CA_ROOT,
    WEBHOOK,
    WEBHOOK_CERTIFICATE,
    DATA_PLANE,
];

/// The namespace the chart is installed in unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "weft";
/// The name of the control plane's Deployment, Service and ServiceAccount.
pub const CONTROL_NAME: &str = "weft-control";
/// The ConfigMap holding the mesh config file.
pub const CONFIG_MAP: &str = "weft-config";
/// The ConfigMap's key holding the mesh config file.
pub const CONFIG_KEY: &str = "mesh.toml";
/// The Deployment's volume that mounts the mesh's root.
pub const CA_VOLUME: &str = "ca";
/// The Secret holding the webhook's serving certificate.
pub const WEBHOOK_SECRET: &str = "weft-webhook-tls";
/// The webhook's name in the MutatingWebhookConfiguration.
pub const WEBHOOK_NAME: &str = "inject.weft.dev";
/// The path the API server calls the webhook on.
pub const WEBHOOK_PATH: &str = "/inject";
/// The oldest Kubernetes minor version Weft supports (1.x).
pub const MIN_MINOR: u32 = 29;
/// How many pod names a failed data-plane check lists before it only counts.
const NAMES_SHOWN: usize = 5;
/// The page size of lists.
const PAGE: usize = 500;

/// The MutatingWebhookConfiguration of the control plane installed in `namespace`.
pub fn webhook_configuration_name(namespace: &str) -> String {
    format!("weft-inject-{namespace}")
}

/// How one check ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All is well; what was found.
    Ok(String),
    /// Works, but will not for long or not fully; what to look at. Does not fail the run.
    Warn(String),
    /// Broken; what is wrong.
    Fail(String),
    /// Not run, because an earlier check found what this one needs missing; why.
    Skipped(String),
}

impl Outcome {
    /// The word printed before the check's name.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok(_) => "ok",
            Outcome::Warn(_) => "warn",
            Outcome::Fail(_) => "FAIL",
            Outcome::Skipped(_) => "skip",
        }
    }

    /// What the check says.
    pub fn message(&self) -> &str {
        match self {
            Outcome::Ok(m) | Outcome::Warn(m) | Outcome::Fail(m) | Outcome::Skipped(m) => m,
        }
    }

    /// Whether the check failed.
    pub fn is_fail(&self) -> bool {
        matches!(self, Outcome::Fail(_))
    }
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// One of [`CHECKS`].
    pub name: &'static str,
    /// How it ended.
    pub outcome: Outcome,
}

impl fmt::Display for Check {
    /// `ok    name: message`, the label padded so that the names line up.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<6}{}: {}",
            self.outcome.label(),
            self.name,
            self.outcome.message()
        )
    }
}

/// How many checks ended each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Passed.
    pub ok: usize,
    /// Passed with a warning.
    pub warnings: usize,
    /// Failed.
    pub failed: usize,
    /// Not run.
    pub skipped: usize,
}

impl Summary {
    /// Counts `checks`.
    pub fn of(checks: &[Check]) -> Self {
        let mut s = Self::default();
        for c in checks {
            match c.outcome {
                Outcome::Ok(_) => s.ok += 1,
                Outcome::Warn(_) => s.warnings += 1,
                Outcome::Fail(_) => s.failed += 1,
                Outcome::Skipped(_) => s.skipped += 1,
            }
        }
        s
    }

    /// Whether no check failed (warnings pass).
    pub fn passed(&self) -> bool {
        self.failed == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ok, {}, {} failed, {} skipped",
            count(
                self.ok + self.warnings + self.failed + self.skipped,
                "check"
            ),
            self.ok,
            count(self.warnings, "warning"),
            self.failed,
            self.skipped
        )
    }
}

/// What a mesh config file that loads says, for the `mesh-config` check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidMesh {
    /// One line about it (its name and trust domain, say).
    pub summary: String,
    /// Its warnings, one line each.
    pub warnings: Vec<String>,
    /// The namespaces the Kubernetes adapter watches (and so the webhook injects); empty for
    /// all of them.
    pub namespaces: Vec<String>,
}

/// Loads the text of a mesh config file, or says why it does not load. The caller brings it:
/// the loader that knows every platform's section lives above this crate.
pub type MeshValidator = Arc<dyn Fn(&str) -> Result<ValidMesh, String> + Send + Sync>;

/// What to check, and how.
#[derive(Clone)]
pub struct CheckOptions {
    /// The namespace the control plane is installed in.
    pub namespace: String,
    /// Certificates that expire within this many days are warned about.
    pub ca_min_days: u32,
    /// How long each request to the API server may take.
    pub request_timeout: Duration,
    /// The API server's address, for messages.
    pub server: String,
    /// Loads the ConfigMap's mesh config file; without it the file is only found.
    pub validate_mesh: Option<MeshValidator>,
}

impl fmt::Debug for CheckOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckOptions")
            .field("namespace", &self.namespace)
            .field("ca_min_days", &self.ca_min_days)
            .field("request_timeout", &self.request_timeout)
            .field("server", &self.server)
            .field("validate_mesh", &self.validate_mesh.is_some())
            .finish()
    }
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.into(),
            ca_min_days: 30,
            request_timeout: Duration::from_secs(5),
            server: String::new(),
            validate_mesh: None,
        }
    }
}

/// Why a request to the API server failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The API server refused the request with a Status.
    #[error("{message} ({code} {reason})")]
    Status {
        /// The HTTP status code.
        code: u16,
        /// The Status reason (`Forbidden`, `NotFound`...).
        reason: String,
        /// The Status message.
        message: String,
    },
    /// The request did not get an answer the client could read: connection refused, TLS,
    /// authentication setup, a body that is not JSON...
    #[error("{0}")]
    Transport(String),
}

impl ApiError {
    fn code(&self) -> Option<u16> {
        match self {
            ApiError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) => ApiError::Status {
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            other => ApiError::Transport(error_chain(&other)),
        }
    }
}

/// A client for [`check_cluster`]: the configuration found as [`crate::client_config`] finds
/// it, connections and reads bounded by `timeout`; with the API server's address.
pub async fn client(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
    timeout: Duration,
) -> Result<(Client, String), crate::KubernetesError> {
    let mut config = crate::client_config(kubeconfig, context).await?;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    let server = config.cluster_url.to_string();
    let server = server.trim_end_matches('/').to_owned();
    Ok((Client::try_from(config)?, server))
}

/// The checks when the API server cannot be asked at all: `kubernetes-api` fails with
/// `reason`, and every other check is skipped.
pub fn unreachable(reason: String) -> Vec<Check> {
    let mut checks = vec![Check {
        name: API,
        outcome: Outcome::Fail(reason),
    }];
    checks.extend(CHECKS[1..].iter().map(|name| Check {
        name,
        outcome: Outcome::Skipped("the Kubernetes API cannot be reached".into()),
    }));
    checks
}

/// Runs every check of [`CHECKS`] against the cluster `client` talks to.
pub async fn check_cluster(client: Client, opts: &CheckOptions) -> Vec<Check> {
    let api = Reader {
        client: &client,
        timeout: opts.request_timeout,
    };
    let ns = opts.namespace.as_str();
    let now = unix_now();
    let version = match api.get("/version").await {
        Ok(Some(v)) => v,
        Ok(None) => return unreachable(format!("{}: /version is not served", opts.server)),
        Err(e) => return unreachable(format!("cannot reach {}: {e}", opts.server)),
    };
    let mut checks = vec![Check {
        name: API,
        outcome: version_outcome(&version, &opts.server),
    }];
    let mut push = |name, outcome| checks.push(Check { name, outcome });

    push(RBAC, rbac(&api, ns).await);

    let deployment = api
        .get(&format!(
            "/apis/apps/v1/namespaces/{ns}/deployments/{CONTROL_NAME}"
        ))
        .await;
    let service = api
        .get(&format!("/api/v1/namespaces/{ns}/services/{CONTROL_NAME}"))
        .await;
    let account = api
        .get(&format!(
            "/api/v1/namespaces/{ns}/serviceaccounts/{CONTROL_NAME}"
        ))
        .await;
    push(
        CONTROL_PLANE,
        control_plane_outcome(ns, &deployment, &service, &account),
    );

    let (outcome, mesh) = mesh_config(&api, ns, opts.validate_mesh.as_ref()).await;
    push(MESH_CONFIG, outcome);

    push(
        CA_ROOT,
        ca_root(&api, ns, &deployment, now, opts.ca_min_days).await,
    );

    let configuration = webhook_configuration_name(ns);
    let (outcome, bundle) = match api
        .get(&format!(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{configuration}"
        ))
        .await
    {
        Ok(Some(mwc)) => {
            let service = service.as_ref().ok().and_then(Option::as_ref);
            webhook_outcome(ns, &mwc, service)
        }
        Ok(None) => (
            Outcome::Fail(format!(
                "MutatingWebhookConfiguration {configuration} not found: no pod is injected"
            )),
            None,
        ),
        Err(e) => (
            Outcome::Fail(format!("MutatingWebhookConfiguration {configuration}: {e}")),
            None,
        ),
    };
    push(WEBHOOK, outcome);
    let outcome = match bundle {
        None => Outcome::Skipped(format!(
            "MutatingWebhookConfiguration {configuration} has no caBundle to verify against"
        )),
        Some(bundle) => {
            let what = format!("Secret {ns}/{WEBHOOK_SECRET}");
            match api
                .get(&format!("/api/v1/namespaces/{ns}/secrets/{WEBHOOK_SECRET}"))
                .await
            {
                Ok(Some(secret)) => webhook_cert_outcome(
                    &what,
                    &secret,
                    &bundle,
                    &format!("{CONTROL_NAME}.{ns}.svc"),
                    now,
                    opts.ca_min_days,
                ),
                Ok(None) => Outcome::Fail(format!("{what} not found")),
                Err(e) => Outcome::Fail(format!("{what}: {e}")),
            }
        }
    };
    push(WEBHOOK_CERTIFICATE, outcome);

    push(DATA_PLANE, data_plane(&api, mesh.as_ref()).await);
    checks
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

// === requests ===

/// Requests to the API server, each bounded by the timeout, answers as JSON.
struct Reader<'a> {
    client: &'a Client,
    timeout: Duration,
}

impl Reader<'_> {
    async fn send(&self, req: http::Request<Vec<u8>>) -> Result<Value, ApiError> {
        let what = format!("{} {}", req.method(), req.uri());
        let answer = tokio::time::timeout(self.timeout, self.client.request::<Value>(req)).await;
        let result = match answer {
            Err(_) => Err(ApiError::Timeout(self.timeout)),
            Ok(r) => r.map_err(ApiError::from),
        };
        match &result {
            Ok(_) => tracing::debug!(request = %what, "answered"),
            Err(e) => tracing::debug!(request = %what, error = %e, "failed"),
        }
        result
    }

    /// The object at `path`, `None` when there is none (404).
    async fn get(&self, path: &str) -> Result<Option<Value>, ApiError> {
        let req = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| ApiError::Transport(format!("GET {path}: {e}")))?;
        match self.send(req).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.code() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every item of the collection at `path`, read in pages.
    async fn list(&self, path: &str) -> Result<Vec<Value>, ApiError> {
        let mut items = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut url = format!("{path}?limit={PAGE}");
            if let Some(token) = &next {
                url.push_str("&continue=");
                url.push_str(&query_escape(token));
            }
            let page = self
                .get(&url)
                .await?
                .ok_or_else(|| ApiError::Transport(format!("{path}: not served")))?;
            match page.get("items") {
                Some(Value::Array(a)) => items.extend(a.iter().cloned()),
                None | Some(Value::Null) => {}
                Some(_) => {
                    return Err(ApiError::Transport(format!(
                        "{path}: the list's items are not an array"
                    )));
                }
            }
            next = page
                .pointer("/metadata/continue")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if next.is_none() {
                return Ok(items);
            }
        }
    }

    /// Creates `body` at `path` (a review) and returns the answer.
    async fn create(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        let req = http::Request::post(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string().into_bytes())
            .map_err(|e| ApiError::Transport(format!("POST {path}: {e}")))?;
        self.send(req).await
    }
}

/// Percent-encodes everything but the unreserved characters of RFC 3986.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// === findings ===

/// What a check found wrong, gathered before it decides its outcome.
#[derive(Debug, Default)]
struct Findings {
    fails: Vec<String>,
    warns: Vec<String>,
}

impl Findings {
    fn fail(&mut self, m: impl Into<String>) {
        self.fails.push(m.into());
    }

    fn warn(&mut self, m: impl Into<String>) {
        self.warns.push(m.into());
    }

    /// Failed if anything failed (the warnings said too), else warned, else `ok`.
    fn outcome(self, ok: String) -> Outcome {
        if !self.fails.is_empty() {
            let mut all = self.fails;
            all.extend(self.warns);
            Outcome::Fail(all.join("; "))
        } else if !self.warns.is_empty() {
            Outcome::Warn(self.warns.join("; "))
        } else {
            Outcome::Ok(ok)
        }
    }
}

/// A string field at `pointer`; `None` when absent.
fn str_at<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer).and_then(Value::as_str)
}

/// An integer field at `pointer` (written `field` in messages): `None` when absent or null,
/// an error when it is something else than an integer.
fn int_at(obj: &Value, pointer: &str, field: &str) -> Result<Option<i64>, String> {
    match obj.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{field} is not an integer: {v}")),
    }
}

/// `"a, b, c and 4 more"`.
fn some_names(names: &[String]) -> String {
    let shown = names
        .iter()
        .take(NAMES_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match names.len().saturating_sub(NAMES_SHOWN) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// `1 pod`, `2 pods`.
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

// === kubernetes-api ===

/// The `kubernetes-api` verdict on the API server's `/version` answer.
pub fn version_outcome(version: &Value, server: &str) -> Outcome {
    let git = str_at(version, "/gitVersion").unwrap_or_default();
    let number = |field: &str| {
        let digits: String = str_at(version, field)?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse::<u32>().ok()
    };
    let (Some(major), Some(minor)) = (number("/major"), number("/minor")) else {
        return Outcome::Warn(format!(
            "reachable at {server}, but its /version answer has no numeric major and minor \
             (gitVersion {git:?}): cannot tell whether Kubernetes 1.{MIN_MINOR} or later runs"
        ));
    };
    let shown = if git.is_empty() {
        format!("v{major}.{minor}")
    } else {
        git.to_owned()
    };
    if (major, minor) < (1, MIN_MINOR) {
        Outcome::Fail(format!(
            "Kubernetes {shown} at {server} is older than 1.{MIN_MINOR}, the oldest Weft supports"
        ))
    } else {
        Outcome::Ok(format!("reachable at {server}, Kubernetes {shown}"))
    }
}

// === control-plane-rbac ===

/// One permission the control plane needs, cluster-wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    /// `get`, `list`, `watch`, `create`.
    pub verb: &'static str,
    /// The API group; empty for the core group.
    pub group: &'static str,
    /// The resource (plural).
    pub resource: &'static str,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{} {}", self.verb, self.resource)
        } else {
            write!(f, "{} {}.{}", self.verb, self.resource, self.group)
        }
    }
}

const fn permission(verb: &'static str, group: &'static str, resource: &'static str) -> Permission {
    Permission {
        verb,
        group,
        resource,
    }
}

/// What the Kubernetes adapter does with the API: watch (list, then watch) namespaces,
/// Services, pods, EndpointSlices, Gateway API routes and Weft's policy objects, get the pod
/// of a proxy that attests, and review its token. (It also writes the routes' and the policy
/// objects' status subresource.)
pub const CONTROL_PLANE_PERMISSIONS: [Permission; 22] = [
    permission("list", "", "namespaces"),
    permission("watch", "", "namespaces"),
    permission("list", "", "services"),
    permission("watch", "", "services"),
    permission("get", "", "pods"),
    permission("list", "", "pods"),
    permission("watch", "", "pods"),
    permission("list", "discovery.k8s.io", "endpointslices"),
    permission("watch", "discovery.k8s.io", "endpointslices"),
    permission("create", "authentication.k8s.io", "tokenreviews"),
    permission("list", "gateway.networking.k8s.io", "httproutes"),
    permission("watch", "gateway.networking.k8s.io", "httproutes"),
    permission("list", "gateway.networking.k8s.io", "grpcroutes"),
    permission("watch", "gateway.networking.k8s.io", "grpcroutes"),
    permission("list", "weft.dev", "authorizationpolicies"),
    permission("watch", "weft.dev", "authorizationpolicies"),
    permission("list", "weft.dev", "ratelimitpolicies"),
    permission("watch", "weft.dev", "ratelimitpolicies"),
    permission("list", "weft.dev", "backendpolicies"),
    permission("watch", "weft.dev", "backendpolicies"),
    permission("list", "weft.dev", "routepolicies"),
    permission("watch", "weft.dev", "routepolicies"),
];

/// The SubjectAccessReview asking whether the control plane's ServiceAccount in `ns` may do
/// `p`.
fn access_review(ns: &str, p: &Permission) -> Value {
    json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": format!("system:serviceaccount:{ns}:{CONTROL_NAME}"),
            "groups": [
                "system:serviceaccounts",
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated",
            ],
            "resourceAttributes": {
                "verb": p.verb,
                "group": p.group,
                "resource": p.resource,
            },
        },
    })
}

/// What one review answered: allowed, or denied with the API server's reason if it gave one.
fn review_answer(answer: &Value) -> Result<Result<(), Option<String>>, String> {
    match answer.pointer("/status/allowed") {
        Some(Value::Bool(true)) => Ok(Ok(())),
        // `allowed: false` may be left out on the wire.
        Some(Value::Bool(false)) | None if answer.get("status").is_some() => {
            let reason = ["/status/reason", "/status/evaluationError"]
                .iter()
                .filter_map(|p| str_at(answer, p))
                .filter(|r| !r.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            Ok(Err((!reason.is_empty()).then_some(reason)))
        }
        _ => Err("a SubjectAccessReview answer without status.allowed".into()),
    }
}

async fn rbac(api: &Reader<'_>, ns: &str) -> Outcome {
    const PATH: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    let reviews = CONTROL_PLANE_PERMISSIONS.iter().map(|p| async move {
        let answer = api.create(PATH, &access_review(ns, p)).await;
        (p, answer)
    });
    let answers = futures_util::future::join_all(reviews).await;
    let user = format!("system:serviceaccount:{ns}:{CONTROL_NAME}");
    let mut denied = Vec::new();
    for (p, answer) in answers {
        let answer = match answer {
            Ok(a) => a,
            Err(e) if e.code() == Some(403) => {
                return Outcome::Fail(format!(
                    "cannot check: you may not create \
                     subjectaccessreviews.authorization.k8s.io: {e}"
                ));
            }
            Err(e) => return Outcome::Fail(format!("cannot check ({p}): {e}")),
        };
        match review_answer(&answer) {
            Ok(Ok(())) => {}
            Ok(Err(None)) => denied.push(p.to_string()),
            Ok(Err(Some(reason))) => denied.push(format!("{p} ({reason})")),
            Err(e) => return Outcome::Fail(format!("cannot check ({p}): {e}")),
        }
    }
    if denied.is_empty() {
        Outcome::Ok(format!(
            "{user} may do all {} things the control plane does",
            CONTROL_PLANE_PERMISSIONS.len()
        ))
    } else {
        Outcome::Fail(format!(
            "{user} is missing {}: {} (the chart's ClusterRole weft-control-{ns} grants them)",
            count(denied.len(), "permission"),
            denied.join(", ")
        ))
    }
}

// === control-plane ===

/// The `control-plane` verdict on what reading the Deployment, Service and ServiceAccount
/// `weft-control` in `ns` gave.
pub fn control_plane_outcome(
    ns: &str,
    deployment: &Result<Option<Value>, ApiError>,
    service: &Result<Option<Value>, ApiError>,
    account: &Result<Option<Value>, ApiError>,
) -> Outcome {
    let mut f = Findings::default();
    let what = format!("Deployment {ns}/{CONTROL_NAME}");
    let mut ready_text = String::new();
    match deployment {
        Err(e) => f.fail(format!("{what}: {e}")),
        Ok(None) => f.fail(format!(
            "{what} not found: is Weft installed in namespace {ns}?"
        )),
        Ok(Some(d)) => {
            let numbers = (|| {
                let wanted = int_at(d, "/spec/replicas", "spec.replicas")?.unwrap_or(1);
                // Zero counts are left out of a status on the wire.
                let ready =
                    int_at(d, "/status/readyReplicas", "status.readyReplicas")?.unwrap_or(0);
                let generation = int_at(d, "/metadata/generation", "metadata.generation")?;
                let observed =
                    int_at(d, "/status/observedGeneration", "status.observedGeneration")?;
                Ok::<_, String>((wanted, ready, generation, observed))
            })();
            match numbers {
                Err(e) => f.fail(format!("{what}: {e}")),
                Ok((wanted, ready, generation, observed)) => {
                    ready_text = format!("{ready} of {wanted} replicas ready");
                    if wanted == 0 {
                        f.fail(format!("{what} is scaled to 0 replicas"));
                    } else if ready <= 0 {
                        f.fail(format!("{what} has 0 of {wanted} replicas ready"));
                    } else if ready < wanted {
                        f.warn(format!("{what} has {ready_text}"));
                    }
                    if let Some(generation) = generation
                        && observed.is_none_or(|o| o < generation)
                    {
                        f.warn(format!(
                            "{what} is rolling out: generation {generation} not yet observed \
                             (observed {})",
                            observed.map_or("none".into(), |o| o.to_string())
                        ));
                    }
                }
            }
        }
    }
    for (kind, found) in [("Service", service), ("ServiceAccount", account)] {
        match found {
            Ok(Some(_)) => {}
            Ok(None) => f.fail(format!("{kind} {ns}/{CONTROL_NAME} not found")),
            Err(e) => f.fail(format!("{kind} {ns}/{CONTROL_NAME}: {e}")),
        }
    }
    f.outcome(format!(
        "{what}: {ready_text}; Service and ServiceAccount {CONTROL_NAME} present"
    ))
}

// === mesh-config ===

async fn mesh_config(
    api: &Reader<'_>,
    ns: &str,
    validate: Option<&MeshValidator>,
) -> (Outcome, Option<ValidMesh>) {
    let what = format!("ConfigMap {ns}/{CONFIG_MAP}");
    match api
        .get(&format!("/api/v1/namespaces/{ns}/configmaps/{CONFIG_MAP}"))
        .await
    {
        Ok(Some(cm)) => mesh_config_outcome(&what, &cm, validate),
        Ok(None) => (Outcome::Fail(format!("{what} not found")), None),
        Err(e) => (Outcome::Fail(format!("{what}: {e}")), None),
    }
}

/// The `mesh-config` verdict on the ConfigMap `what`, and what its file says when it loads.
pub fn mesh_config_outcome(
    what: &str,
    configmap: &Value,
    validate: Option<&MeshValidator>,
) -> (Outcome, Option<ValidMesh>) {
    let Some(text) = configmap.get("data").and_then(|d| d.get(CONFIG_KEY)) else {
        return (
            Outcome::Fail(format!("{what} has no data.{CONFIG_KEY}")),
            None,
        );
    };
    let Some(text) = text.as_str() else {
        return (
            Outcome::Fail(format!("{what} data.{CONFIG_KEY} is not a string")),
            None,
        );
    };
    let Some(validate) = validate else {
        return (
            Outcome::Ok(format!("{what} holds {CONFIG_KEY} (not loaded)")),
            None,
        );
    };
    match validate(text) {
        Err(e) => (
            Outcome::Fail(format!("{what} data.{CONFIG_KEY} does not load: {e}")),
            None,
        ),
        Ok(mesh) if mesh.warnings.is_empty() => {
            (Outcome::Ok(format!("{what}: {}", mesh.summary)), Some(mesh))
        }
        Ok(mesh) => (
            Outcome::Warn(format!(
                "{what}: {}; {}: {}",
                mesh.summary,
                count(mesh.warnings.len(), "warning"),
                mesh.warnings.join("; ")
            )),
            Some(mesh),
        ),
    }
}

// === ca-root ===

/// The name of the Secret mounted as the Deployment's `ca` volume.
pub fn ca_secret_name(deployment: &Value) -> Option<&str> {
    deployment
        .pointer("/spec/template/spec/volumes")?
        .as_array()?
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(CA_VOLUME))?
        .pointer("/secret/secretName")?
        .as_str()
        .filter(|s| !s.is_empty())
}

async fn ca_root(
    api: &Reader<'_>,
    ns: &str,
    deployment: &Result<Option<Value>, ApiError>,
    now: i64,
    min_days: u32,
) -> Outcome {
    let dep = format!("Deployment {ns}/{CONTROL_NAME}");
    let d = match deployment {
        Ok(Some(d)) => d,
        Ok(None) => {
            return Outcome::Skipped(format!(
                "the CA Secret is named by {dep}, which was not found"
            ));
        }
        Err(_) => {
            return Outcome::Skipped(format!(
                "the CA Secret is named by {dep}, which could not be read"
            ));
        }
    };
    let Some(name) = ca_secret_name(d) else {
        return Outcome::Fail(format!(
            "{dep} has no volume {CA_VOLUME:?} with a secret.secretName: the control plane has \
             no root"
        ));
    };
    let what = format!("Secret {ns}/{name}");
    match api
        .get(&format!("/api/v1/namespaces/{ns}/secrets/{name}"))
        .await
    {
        Ok(Some(secret)) => ca_root_outcome(&what, &secret, now, min_days),
        Ok(None) => Outcome::Fail(format!("{what} (the mesh's root) not found")),
        Err(e) => Outcome::Fail(format!("{what}: {e}")),
    }
}

/// The `ca-root` verdict on the CA Secret `what` at unix time `now`.
pub fn ca_root_outcome(what: &str, secret: &Value, now: i64, min_days: u32) -> Outcome {
    let crt = match secret_pem_certs(secret, what, "tls.crt") {
        Ok(c) => c,
        Err(e) => return Outcome::Fail(e),
    };
    let key = match secret_field(secret, what, "tls.key") {
        Ok(k) => k,
        Err(e) => return Outcome::Fail(e),
    };
    let Some(der) = crt.first() else {
        return Outcome::Fail(format!("{what} data.tls.crt holds no certificate"));
    };
    let cert = match parse_cert(der, &format!("{what} data.tls.crt")) {
        Ok(c) => c,
        Err(e) => return Outcome::Fail(e),
    };
    let mut f = Findings::default();
    let subject = cert.subject().to_string();
    let label = format!("{what} data.tls.crt ({subject})");
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => f.fail(format!(
            "{label} is not a CA certificate (no basicConstraints CA:TRUE): it cannot sign \
             the control plane's intermediates"
        )),
        Err(e) => f.fail(format!("{label}: bad basicConstraints: {e}")),
    }
    let until = validity(&cert, &label, now, min_days, &mut f);
    let key_note = key_findings(&cert, &key, what, &mut f);
    f.outcome(format!("{what}: {subject}, {until}{key_note}"))
}

// === webhook ===

/// The `webhook` verdict on the MutatingWebhookConfiguration `mwc` of the control plane in
/// `ns`, given its Service if found; with the certificates of its caBundle (DER) when it has
/// any that parse.
pub fn webhook_outcome(
    ns: &str,
    mwc: &Value,
    service: Option<&Value>,
) -> (Outcome, Option<Vec<Vec<u8>>>) {
    let what = format!(
        "MutatingWebhookConfiguration {}",
        webhook_configuration_name(ns)
    );
    let hook = mwc
        .get("webhooks")
        .and_then(Value::as_array)
        .and_then(|hooks| {
            hooks
                .iter()
                .find(|h| h.get("name").and_then(Value::as_str) == Some(WEBHOOK_NAME))
        });
    let Some(hook) = hook else {
        return (
            Outcome::Fail(format!("{what} has no webhook {WEBHOOK_NAME}")),
            None,
        );
    };
    let mut f = Findings::default();
    let client = hook.get("clientConfig").unwrap_or(&Value::Null);
    let target = format!("service {ns}/{CONTROL_NAME}");
    let mut port = 443;
    match (client.get("service"), str_at(client, "/url")) {
        (_, Some(url)) => f.fail(format!(
            "{what} calls url {url} instead of {target} path {WEBHOOK_PATH}"
        )),
        (None | Some(Value::Null), None) => {
            f.fail(format!("{what} has no clientConfig.service"));
        }
        (Some(svc), None) => {
            let name = str_at(svc, "/name").unwrap_or_default();
            let namespace = str_at(svc, "/namespace").unwrap_or_default();
            if (name, namespace) != (CONTROL_NAME, ns) {
                f.fail(format!(
                    "{what} calls service {namespace}/{name} instead of {target}"
                ));
            }
            match str_at(svc, "/path") {
                Some(WEBHOOK_PATH) => {}
                other => f.fail(format!(
                    "{what} calls path {} instead of {WEBHOOK_PATH}",
                    other.unwrap_or("/")
                )),
            }
            match int_at(svc, "/port", "clientConfig.service.port") {
                Ok(p) => port = p.unwrap_or(443),
                Err(e) => f.fail(format!("{what}: {e}")),
            }
        }
    }
    if let Some(svc) = service {
        let ports = svc.pointer("/spec/ports").and_then(Value::as_array);
        let served = ports.is_some_and(|ps| {
            ps.iter()
                .any(|p| p.get("port").and_then(Value::as_i64) == Some(port))
        });
        if !served {
            f.fail(format!(
                "Service {ns}/{CONTROL_NAME} has no port {port}, which {what} calls"
            ));
        }
    }
    let mut bundle = None;
    match str_at(client, "/caBundle").filter(|b| !b.is_empty()) {
        None => f.fail(format!(
            "{what} has no clientConfig.caBundle: the API server cannot verify the webhook"
        )),
        Some(b64) => match decode_bundle(b64, &what) {
            Ok(ders) => bundle = Some(ders),
            Err(e) => f.fail(e),
        },
    }
    let policy = str_at(hook, "/failurePolicy").unwrap_or("Fail");
    let certs = bundle.as_ref().map_or(0, Vec::len);
    let outcome = f.outcome(format!(
        "{what} calls {target}:{port}{WEBHOOK_PATH} (failurePolicy {policy}), caBundle of {}",
        count(certs, "certificate")
    ));
    (outcome, bundle)
}

/// The certificates of a base64 caBundle, each checked to parse.
fn decode_bundle(b64: &str, what: &str) -> Result<Vec<Vec<u8>>, String> {
    let field = format!("{what} clientConfig.caBundle");
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("{field} is not base64: {e}"))?;
    let ders = pem_certs(&pem, &field)?;
    for der in &ders {
        parse_cert(der, &field)?;
    }
    Ok(ders)
}

// === webhook-certificate ===

/// The `webhook-certificate` verdict on the Secret `what` holding the webhook's serving
/// certificate: it chains to `bundle` (the caBundle's certificates, DER), covers `dns`, is
/// valid at unix time `now` for more than `min_days`, and its key is the certificate's.
pub fn webhook_cert_outcome(
    what: &str,
    secret: &Value,
    bundle: &[Vec<u8>],
    dns: &str,
    now: i64,
    min_days: u32,
) -> Outcome {
    let chain = match secret_pem_certs(secret, what, "tls.crt") {
        Ok(c) => c,
        Err(e) => return Outcome::Fail(e),
    };
    let key = match secret_field(secret, what, "tls.key") {
        Ok(k) => k,
        Err(e) => return Outcome::Fail(e),
    };
    let field = format!("{what} data.tls.crt");
    let parsed: Result<Vec<X509Certificate<'_>>, String> =
        chain.iter().map(|der| parse_cert(der, &field)).collect();
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => return Outcome::Fail(e),
    };
    let Some((leaf, intermediates)) = parsed.split_first() else {
        return Outcome::Fail(format!("{field} holds no certificate"));
    };
    let roots: Vec<X509Certificate<'_>> = bundle
        .iter()
        .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c))
        .collect();
    let mut f = Findings::default();
    let label = format!("{field} ({})", leaf.subject());
    let issuer = match chains_to(leaf, intermediates, &roots) {
        Some(root) => {
            let root_label = format!("the caBundle's {}", root.subject());
            validity(root, &root_label, now, 0, &mut f);
            format!("signed by the caBundle's {}", root.subject())
        }
        None => {
            f.fail(format!(
                "{label} is not signed by the MutatingWebhookConfiguration's caBundle ({}): \
                 the API server will refuse the webhook's TLS",
                roots
                    .iter()
                    .map(|r| r.subject().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            String::new()
        }
    };
    let names = dns_names(leaf);
    if !names.iter().any(|n| dns_matches(n, dns)) {
        let covered = if names.is_empty() {
            "no DNS name".to_owned()
        } else {
            names.join(", ")
        };
        f.fail(format!(
            "{label} covers {covered}, not {dns}: the API server will refuse the webhook's TLS"
        ));
    }
    let until = validity(leaf, &label, now, min_days, &mut f);
    let key_note = key_findings(leaf, &key, what, &mut f);
    f.outcome(format!("{what}: {dns}, {issuer}, {until}{key_note}"))
}

/// The caBundle certificate that `leaf` chains to, through `intermediates` if need be.
fn chains_to<'r, 'a>(
    leaf: &X509Certificate<'a>,
    intermediates: &[X509Certificate<'a>],
    roots: &'r [X509Certificate<'a>],
) -> Option<&'r X509Certificate<'a>> {
    let mut current = leaf;
    for _ in 0..=intermediates.len() {
        if let Some(root) = roots
            .iter()
            .find(|r| current.verify_signature(Some(r.public_key())).is_ok())
        {
            return Some(root);
        }
        current = intermediates
            .iter()
            .find(|c| current.verify_signature(Some(c.public_key())).is_ok())?;
    }
    None
}

/// The DNS names of a certificate's subjectAltName.
fn dns_names(cert: &X509Certificate<'_>) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether the certificate name `pattern` (perhaps `*.` and a domain) covers `name`.
fn dns_matches(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    match pattern.strip_prefix("*.") {
        Some(domain) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == domain),
        None => pattern == name,
    }
}

// === certificates ===

/// The bytes of a Secret's `data.<key>`.
fn secret_field(secret: &Value, what: &str, key: &str) -> Result<Vec<u8>, String> {
    let value = secret
        .get("data")
        .and_then(|d| d.get(key))
        .ok_or_else(|| format!("{what} has no data.{key}"))?;
    let text = value
        .as_str()
        .ok_or_else(|| format!("{what} data.{key} is not a string"))?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("{what} data.{key} is not base64: {e}"))
}

/// The PEM certificates of a Secret's `data.<key>`, as DER.
fn secret_pem_certs(secret: &Value, what: &str, key: &str) -> Result<Vec<Vec<u8>>, String> {
    let pem = secret_field(secret, what, key)?;
    pem_certs(&pem, &format!("{what} data.{key}"))
}

/// The CERTIFICATE blocks of `pem`, as DER; at least one.
fn pem_certs(pem: &[u8], field: &str) -> Result<Vec<Vec<u8>>, String> {
    let ders = CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{field} is not PEM: {e}"))?;
    if ders.is_empty() {
        return Err(format!("{field} holds no PEM CERTIFICATE"));
    }
    Ok(ders)
}

fn parse_cert<'a>(der: &'a [u8], field: &str) -> Result<X509Certificate<'a>, String> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| format!("{field} holds a certificate that does not parse: {e}"))
}

/// Checks that `cert` (called `label`) is valid at `now` and for more than `min_days` after,
/// and says until when.
fn validity(
    cert: &X509Certificate<'_>,
    label: &str,
    now: i64,
    min_days: u32,
    f: &mut Findings,
) -> String {
    let v = cert.validity();
    let (from, until) = (v.not_before.timestamp(), v.not_after.timestamp());
    let until_date = v.not_after.to_datetime().date();
    let days = (until - now).div_euclid(86_400);
    if now < from {
        f.fail(format!(
            "{label} is not valid before {}",
            v.not_before.to_datetime().date()
        ));
    } else if now > until {
        f.fail(format!("{label} expired on {until_date}"));
    } else if days < i64::from(min_days) {
        f.warn(format!(
            "{label} expires on {until_date}, in {}, within the {min_days}-day margin: renew it",
            count(usize::try_from(days).unwrap_or(0), "day")
        ));
    }
    format!(
        "valid until {until_date} ({})",
        count(usize::try_from(days.max(0)).unwrap_or(0), "day")
    )
}

/// Checks that the key in `key_pem` (from `what`'s `data.tls.key`) is `cert`'s, and returns
/// a note for the ok line.
fn key_findings(
    cert: &X509Certificate<'_>,
    key_pem: &[u8],
    what: &str,
    f: &mut Findings,
) -> String {
    match public_key_of(key_pem) {
        Err(KeyProblem::Unreadable(e)) => {
            f.fail(format!("{what} data.tls.key: {e}"));
            String::new()
        }
        Err(KeyProblem::Unchecked(why)) => format!(", key not checked ({why})"),
        Ok(public) if public == cert.public_key().subject_public_key.data.as_ref() => {
            ", key matches".into()
        }
        Ok(_) => {
            f.fail(format!(
                "{what} data.tls.key is not the key of data.tls.crt"
            ));
            String::new()
        }
    }
}

/// Why a private key's public half could not be found.
#[derive(Debug)]
enum KeyProblem {
    /// There is no private key there.
    Unreadable(String),
    /// There is one, of a form this check does not read.
    Unchecked(String),
}

/// The public key (as a certificate's subjectPublicKey holds it) of the private key in `pem`:
/// RSA in PKCS#1 (Helm's `genCA`) or PKCS#8, ECDSA P-256 or P-384 and Ed25519 in PKCS#8.
fn public_key_of(pem: &[u8]) -> Result<Vec<u8>, KeyProblem> {
    use ring::signature::{
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
        Ed25519KeyPair, RsaKeyPair,
    };
    let key = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| KeyProblem::Unreadable(format!("holds no PEM private key: {e}")))?;
    let rejected = |e: ring::error::KeyRejected| KeyProblem::Unchecked(format!("{e}"));
    match key {
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der())
            .map(|k| k.public_key().as_ref().to_vec())
            .map_err(rejected),
        PrivateKeyDer::Pkcs8(k) => {
            let der = k.secret_pkcs8_der();
            let rng = ring::rand::SystemRandom::new();
            let ecdsa = |alg| EcdsaKeyPair::from_pkcs8(alg, der, &rng);
            if let Ok(k) = ecdsa(&ECDSA_P256_SHA256_ASN1_SIGNING) {
                return Ok(k.public_key().as_ref().to_vec());
            }
            if let Ok(k) = ecdsa(&ECDSA_P384_SHA384_ASN1_SIGNING) {
                return Ok(k.public_key().as_ref().to_vec());
            }
            if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                return Ok(k.public_key().as_ref().to_vec());
            }
            RsaKeyPair::from_pkcs8(der)
                .map(|k| k.public_key().as_ref().to_vec())
                .map_err(rejected)
        }
        PrivateKeyDer::Sec1(_) => Err(KeyProblem::Unchecked("a SEC1 EC key".into())),
        _ => Err(KeyProblem::Unchecked("an unknown key form".into())),
    }
}

// === data-plane ===

async fn data_plane(api: &Reader<'_>, mesh: Option<&ValidMesh>) -> Outcome {
    let namespaces = match api.list("/api/v1/namespaces").await {
        Ok(n) => n,
        Err(e) => return Outcome::Fail(format!("cannot list namespaces: {e}")),
    };
    let mut annotated = Vec::new();
    for ns in &namespaces {
        let annotation = ns
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(INJECT_ANNOTATION))
            .and_then(Value::as_str);
        if annotation != Some("enabled") {
            continue;
        }
        let Some(name) = str_at(ns, "/metadata/name") else {
            continue;
        };
        let pods = match api.list(&format!("/api/v1/namespaces/{name}/pods")).await {
            Ok(p) => p,
            Err(e) => return Outcome::Fail(format!("cannot list the pods of {name}: {e}")),
        };
        annotated.push((name.to_owned(), pods));
    }
    let watched = mesh.map(|m| m.namespaces.as_slice()).unwrap_or_default();
    data_plane_outcome(&annotated, watched)
}

/// The `data-plane` verdict on the namespaces annotated `weft.dev/inject: enabled`, each with
/// its pods. `watched` is the mesh's `[platforms.kubernetes] namespaces` (empty for all):
/// the webhook injects no other.
pub fn data_plane_outcome(annotated: &[(String, Vec<Value>)], watched: &[String]) -> Outcome {
    if annotated.is_empty() {
        return Outcome::Ok(format!("no namespace has {INJECT_ANNOTATION}: enabled"));
    }
    let mut f = Findings::default();
    let (mut ready, mut unmeshed, mut not_ready, mut refused) = (0, vec![], vec![], vec![]);
    let mut outside = Vec::new();
    for (ns, pods) in annotated {
        if !watched.is_empty() && !watched.contains(ns) {
            outside.push(ns.clone());
            continue;
        }
        for pod in pods {
            let name = str_at(pod, "/metadata/name").unwrap_or("(unnamed)");
            let running = str_at(pod, "/status/phase") == Some("Running")
                && pod.pointer("/metadata/deletionTimestamp").is_none();
            if !running {
                continue;
            }
            match inject::decide(ns, Some("enabled"), pod) {
                Ok(None) => unmeshed.push(format!("{ns}/{name}")),
                Ok(Some(Skip::AlreadyInjected)) => {
                    if proxy_ready(pod) {
                        ready += 1;
                    } else {
                        not_ready.push(format!("{ns}/{name}"));
                    }
                }
                Ok(Some(_)) => {}
                Err(e) => refused.push(format!("{ns}/{name} ({e})")),
            }
        }
    }
    if !unmeshed.is_empty() {
        f.fail(format!(
            "{} without {PROXY_CONTAINER}, created before injection was enabled; restart \
             them: {}",
            count(unmeshed.len(), "pod"),
            some_names(&unmeshed)
        ));
    }
    if !not_ready.is_empty() {
        f.fail(format!(
            "{} whose {PROXY_CONTAINER} is not ready: {}",
            count(not_ready.len(), "pod"),
            some_names(&not_ready)
        ));
    }
    if !refused.is_empty() {
        f.warn(format!(
            "{} the webhook refuses to inject: {}",
            count(refused.len(), "pod"),
            some_names(&refused)
        ));
    }
    if !outside.is_empty() {
        f.warn(format!(
            "{} annotated {INJECT_ANNOTATION}: enabled but not in the mesh's \
             [platforms.kubernetes] namespaces, so never injected: {}",
            count(outside.len(), "namespace"),
            some_names(&outside)
        ));
    }
    let names: Vec<String> = annotated.iter().map(|(n, _)| n.clone()).collect();
    f.outcome(format!(
        "{} ready in {} with {INJECT_ANNOTATION}: enabled ({})",
        count(ready, "meshed pod"),
        count(annotated.len(), "namespace"),
        some_names(&names)
    ))
}

/// Whether the pod's `weft-proxy` (a native sidecar or a classic container) reports ready.
fn proxy_ready(pod: &Value) -> bool {
    ["/status/initContainerStatuses", "/status/containerStatuses"]
        .iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten()
        .any(|s| {
            s.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER)
                && s.get("ready").and_then(Value::as_bool) == Some(true)
        })
}

#[cfg(test)]
mod tests;
