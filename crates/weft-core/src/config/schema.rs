//! The schema of the mesh config file. `configs/mesh.toml` documents every key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::load::{ConfigWarning, DataHome};
use super::platforms::Platforms;
use crate::model::TrustDomain;
use crate::policy::route::{GrpcRoute, HttpRoute};
use crate::policy::route_spec::{Bound, GrpcRouteSpec, HttpRouteSpec};
use crate::policy::{AuthorizationRule, Decision};

/// The whole mesh config file, after validation.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// `[mesh]`: name and trust domain.
    pub mesh: MeshSection,
    /// `[ca]`: the certificate authority.
    #[serde(default)]
    pub ca: CaSection,
    /// `[control]`: where the control plane listens.
    #[serde(default)]
    pub control: ControlSection,
    /// `[policy]`: default inbound policy and authorization rules.
    #[serde(default)]
    pub policy: PolicySection,
    /// `[[routes.http]]`, `[[routes.grpc]]`: routes bound to services.
    #[serde(default)]
    pub routes: RoutesSection,
    /// `[observability]`: span export, where traces start, access logs.
    #[serde(default)]
    pub observability: crate::observability::ObservabilitySection,
    /// `[platforms.*]`: one section per platform adapter, owned and checked by that adapter.
    #[serde(default)]
    pub platforms: Platforms,
    /// Authorization rules, parsed and checked from `policy.authorizations`.
    #[serde(skip)]
    pub authorization_rules: Vec<AuthorizationRule>,
    /// Backend policies, parsed and checked from `policy.backends`.
    #[serde(skip)]
    pub backend_rules: Vec<crate::policy::backend::BackendRule>,
    /// Rate limits, parsed and checked from `policy.rate_limits`.
    #[serde(skip)]
    pub rate_limit_rules: Vec<crate::policy::ratelimit::RateLimitRule>,
    /// HTTP routes, checked and built from `routes.http`, in file order.
    #[serde(skip)]
    pub http_routes: Vec<Bound<HttpRoute>>,
    /// gRPC routes, checked and built from `routes.grpc`, in file order.
    #[serde(skip)]
    pub grpc_routes: Vec<Bound<GrpcRoute>>,
    /// The file this configuration was read from.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// What validation found suspicious without refusing the file: keys with no effect,
    /// patterns that can match nothing.
    #[serde(skip)]
    pub warnings: Vec<ConfigWarning>,
    /// The data directory, resolved once by validation so that it never changes under a
    /// running process and never falls back to a shared temporary directory.
    #[serde(skip)]
    pub(super) resolved_data_dir: Option<PathBuf>,
}

/// `[mesh]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshSection {
    /// A name for the mesh, shown by the CLI and dashboard.
    pub name: String,
    /// The trust domain of every identity the mesh issues.
    pub trust_domain: TrustDomain,
}

/// `[ca]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSection {
    /// Where a generated root and intermediate are kept (mode 0700). Defaults to
    /// `$XDG_DATA_HOME/weft/<mesh name>` or `~/.local/share/weft/<mesh name>`; when neither
    /// variable is set it must be given. Must not be empty.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Lifetime of proxy leaf certificates, e.g. `24h`.
    #[serde(default = "default_leaf_ttl", with = "humantime_serde_compat")]
    pub leaf_ttl: Duration,
    /// How far back a leaf's `notBefore` is set, to tolerate clock skew.
    #[serde(default = "default_skew", with = "humantime_serde_compat")]
    pub clock_skew: Duration,
    /// PEM file of an existing root certificate (with `root_key`, `intermediate_cert` and
    /// `intermediate_key`) instead of a generated one.
    #[serde(default)]
    pub root_cert: Option<PathBuf>,
    /// PEM file of the root's private key. Optional even with `root_cert`: the root key is only
    /// needed to re-issue the intermediate.
    #[serde(default)]
    pub root_key: Option<PathBuf>,
    /// PEM file of the intermediate certificate that signs leaves.
    #[serde(default)]
    pub intermediate_cert: Option<PathBuf>,
    /// PEM file of the intermediate's private key.
    #[serde(default)]
    pub intermediate_key: Option<PathBuf>,
    /// Extra PEM files of roots to trust besides the signing root, for rotation with overlap.
    #[serde(default)]
    pub extra_roots: Vec<PathBuf>,
}

/// `[control]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// The gRPC API (Identity, Discovery), TLS.
    #[serde(default = "default_grpc_addr")]
    pub grpc_addr: SocketAddr,
    /// The HTTP API: `/ready`, `/metrics`, JSON state.
    #[serde(default = "default_http_addr")]
    pub http_addr: SocketAddr,
    /// A listener serving only `/live` and `/ready`, with connection slots of its own, for
    /// platform probes (the Helm chart's kubelet probes); none when absent.
    #[serde(default)]
    pub probe_addr: Option<SocketAddr>,
    /// A second listener for the HTTP API, on a loopback address only, where no token is
    /// asked: only what shares the host's (or the pod's) network namespace reaches it, which on
    /// Kubernetes means the pod's containers and the API server's port-forward (the
    /// `pods/portforward` permission), as `weft stat --kubernetes` uses it. None when absent.
    #[serde(default)]
    pub local_http_addr: Option<SocketAddr>,
    /// `[control.limits]`: what one caller may hold or ask of the gRPC API.
    #[serde(default)]
    pub limits: ControlLimits,
}

/// `[control.limits]`: bounds per caller on the gRPC API, so that one workload (or anything
/// that reaches the port) cannot take what the others need. Calls beyond them are refused with
/// `RESOURCE_EXHAUSTED` and counted.
///
/// Every replica of a Kubernetes Deployment (every allocation of a Nomad group) shares one
/// identity, so the per-identity defaults leave room for large deployments: a proxy holds one
/// connection and one settings stream, plus, for a while after each renewal, the connection
/// its new certificate opened (streams begun on the old one stay there).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlLimits {
    /// Connections presenting one identity's certificate at once; more are closed after their
    /// TLS handshake. 4,096: two thousand replicas with two connections each.
    #[serde(default = "default_connections_per_identity")]
    pub connections_per_identity: usize,
    /// `Discovery.Resolve` streams of one identity at once. 16,384: a thousand replicas
    /// following 16 destinations each (about 15 KB of control-plane memory per stream, so
    /// about 240 MB for one identity at the bound).
    #[serde(default = "default_resolve_streams_per_identity")]
    pub resolve_streams_per_identity: usize,
    /// `Discovery.Proxy` streams of one identity at once (one per proxy). 4,096.
    #[serde(default = "default_proxy_streams_per_identity")]
    pub proxy_streams_per_identity: usize,
    /// `Identity.Certify` calls per second, on average, from one client address without a
    /// client certificate (an IPv6 address counts by its /64). 5.
    #[serde(default = "default_certify_rate_per_address")]
    pub certify_rate_per_address: f64,
    /// How many such calls one address may make at once before the rate applies. 20.
    #[serde(default = "default_certify_burst_per_address")]
    pub certify_burst_per_address: u32,
    /// `Identity.Certify` calls per second, on average, by one identity presenting its
    /// certificate: a proxy's renewals, which present the certificate they replace. 1.
    #[serde(default = "default_certify_rate_per_identity")]
    pub certify_rate_per_identity: f64,
    /// How many such calls one identity may make at once before the rate applies. 10.
    #[serde(default = "default_certify_burst_per_identity")]
    pub certify_burst_per_identity: u32,
}

/// `[policy]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// What a workload that no authorization names accepts from mesh clients.
    #[serde(default)]
    pub default_inbound: Decision,
    /// `[[policy.authorizations]]`: allow and deny rules per service.
    #[serde(default)]
    pub authorizations: Vec<AuthorizationEntry>,
    /// `[[policy.rate_limits]]`: per-service inbound rate limits.
    #[serde(default)]
    pub rate_limits: Vec<crate::policy::ratelimit::RateLimitSpec>,
    /// `[[policy.backends]]`: what callers apply to every call to a service (retry budget,
    /// failure accrual, concurrency limit).
    #[serde(default)]
    pub backends: Vec<crate::policy::backend::BackendPolicySpec>,
}

/// `[routes]`: the mesh file's routes, with the fields of Gateway API `HTTPRoute` and
/// `GRPCRoute` (snake_case) beside their name and namespace.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesSection {
    /// `[[routes.http]]`.
    #[serde(default)]
    pub http: Vec<MeshRoute<HttpRouteSpec>>,
    /// `[[routes.grpc]]`.
    #[serde(default)]
    pub grpc: Vec<MeshRoute<GrpcRouteSpec>>,
}

/// One route of the mesh file: `name`, `namespace`, and the keys of the route's `spec`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct MeshRoute<S> {
    /// Its name, unique in its namespace among routes of its kind.
    pub name: String,
    /// Its namespace (`default` when absent): backends and parents without a namespace are
    /// in it, and so are the callers a consumer route applies to.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The spec.
    #[serde(flatten)]
    pub spec: S,
}

/// `[[policy.authorizations]]`: an authorization rule, with the keys of an
/// `AuthorizationPolicy` spec beside its name.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AuthorizationEntry {
    /// Its name, unique among the rules of its service's namespace (default:
    /// `<service>-<index>`); the rule's label in logs and metrics is `namespace/name`.
    #[serde(default)]
    pub name: Option<String>,
    /// The rule.
    #[serde(flatten)]
    pub spec: crate::policy::authz_spec::AuthorizationSpec,
}

// === defaults ===

fn default_leaf_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_skew() -> Duration {
    Duration::from_secs(60)
}

fn default_grpc_addr() -> SocketAddr {
    ([127, 0, 0, 1], 7443).into()
}

fn default_http_addr() -> SocketAddr {
    ([127, 0, 0, 1], 7080).into()
}

fn default_connections_per_identity() -> usize {
    4096
}

fn default_resolve_streams_per_identity() -> usize {
    16_384
}

fn default_proxy_streams_per_identity() -> usize {
    4096
}

fn default_certify_rate_per_address() -> f64 {
    5.0
}

fn default_certify_burst_per_address() -> u32 {
    20
}

fn default_certify_rate_per_identity() -> f64 {
    1.0
}

fn default_certify_burst_per_identity() -> u32 {
    10
}

impl Default for CaSection {
    fn default() -> Self {
        Self {
            data_dir: None,
            leaf_ttl: default_leaf_ttl(),
            clock_skew: default_skew(),
            root_cert: None,
            root_key: None,
            intermediate_cert: None,
            intermediate_key: None,
            extra_roots: Vec::new(),
        }
    }
}

impl Default for ControlSection {
    fn default() -> Self {
        Self {
            grpc_addr: default_grpc_addr(),
            http_addr: default_http_addr(),
            probe_addr: None,
            local_http_addr: None,
            limits: ControlLimits::default(),
        }
    }
}

impl Default for ControlLimits {
    fn default() -> Self {
        Self {
            connections_per_identity: default_connections_per_identity(),
            resolve_streams_per_identity: default_resolve_streams_per_identity(),
            proxy_streams_per_identity: default_proxy_streams_per_identity(),
            certify_rate_per_address: default_certify_rate_per_address(),
            certify_burst_per_address: default_certify_burst_per_address(),
            certify_rate_per_identity: default_certify_rate_per_identity(),
            certify_burst_per_identity: default_certify_burst_per_identity(),
        }
    }
}

impl MeshConfig {
    /// The mesh's data directory (the CA's keys, and whatever adapters keep there): `ca.data_dir`, or the default under
    /// `XDG_DATA_HOME` or `HOME`, as resolved when the file was loaded.
    ///
    /// Loading refuses a file when neither variable is set and `ca.data_dir` is not given, so a
    /// loaded config always has one. A `MeshConfig` deserialized without `config::load` resolves it
    /// on each call and, failing that, gets the relative path `weft/<mesh name>`; never a
    /// shared temporary directory, which other users could write to first.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.resolved_data_dir {
            return dir.clone();
        }
        self.resolve_data_dir(&DataHome::from_env())
            .unwrap_or_else(|| PathBuf::from("weft").join(&self.mesh.name))
    }

    /// `ca.data_dir`, or `<base>/weft/<mesh name>` when a base directory is known.
    pub(super) fn resolve_data_dir(&self, home: &DataHome) -> Option<PathBuf> {
        if let Some(dir) = &self.ca.data_dir {
            return Some(dir.clone());
        }
        Some(home.base()?.join("weft").join(&self.mesh.name))
    }
}

/// Durations written as `24h`, `90s`, `500ms`.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}
