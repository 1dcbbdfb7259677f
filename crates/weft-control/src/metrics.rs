//! The control plane's metrics, in one registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `weft_control_certify_total`. Both come from bounded sets chosen by the control
/// plane, never from what a peer sent.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertifyLabels {
    /// A configured platform (`local`, `kubernetes`, ...) or `unknown`.
    pub platform: String,
    /// `issued`, `attest_failed`, `csr_rejected`, `throttled`.
    pub result: &'static str,
}

/// Labels of `weft_control_attest_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttestLabels {
    /// A configured platform.
    pub platform: String,
    /// `wrong_platform`, `rejected`, `unknown_workload` or `unavailable`.
    pub reason: &'static str,
}

/// Labels of `weft_control_tls_rejected_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsRejectLabels {
    /// A fixed reason: `not_tls`, `client_unknown_ca`, `peer_distrusts_control_plane`, ...
    pub reason: &'static str,
}

/// Labels of `weft_control_connections_closed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionCloseLabels {
    /// A fixed reason: `anonymous_limit`, `preface_timeout`, `not_http2` or
    /// `anonymous_idle`.
    pub reason: &'static str,
}

/// Labels of `weft_control_http_connections_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRefusedLabels {
    /// `http`, `local_http` or `probe`.
    pub listener: &'static str,
    /// `full` or `per_address` ([`weft_core::listener::Refusal`]).
    pub reason: &'static str,
}

/// Labels of `weft_control_limited_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// The bound: `identity_connections`, `identity_resolve_streams`,
    /// `identity_proxy_streams`, `certify_address_rate` or `certify_identity_rate`.
    pub reason: &'static str,
}

/// Labels of `weft_control_attest_cache_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttestCacheLabels {
    /// `hit` (answered from what a platform said before, or by an attestation another call
    /// ran) or `miss` (the platform was asked).
    pub result: &'static str,
}

/// Labels of the Discovery stream metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// `resolve` or `proxy`.
    pub kind: &'static str,
}

/// Counters and gauges the control plane exports on `/metrics`.
#[derive(Debug)]
pub struct ControlMetrics {
    registry: Registry,
    /// Certify calls by platform and outcome.
    pub certify: Family<CertifyLabels, Counter>,
    /// Credentials a platform refused, by platform and reason.
    pub attest_refused: Family<AttestLabels, Counter>,
    /// Open Discovery streams, by kind (`resolve`, `proxy`).
    pub streams: Family<StreamLabels, Gauge>,
    /// Series the telemetry windows hold, over every proxy.
    pub telemetry_series: Gauge,
    /// Values the telemetry windows hold, over every proxy and report.
    pub telemetry_values: Gauge,
    /// Updates sent on Discovery streams, by kind.
    pub updates: Family<StreamLabels, Counter>,
    /// Resolve calls answered "denied".
    pub denied: Counter,
    /// gRPC connections whose TLS handshake failed, by reason.
    pub tls_rejected: Family<TlsRejectLabels, Counter>,
    /// gRPC connections closed after their handshake by a bound on strangers, by reason.
    pub connections_closed: Family<ConnectionCloseLabels, Counter>,
    /// Open gRPC connections without a client certificate.
    pub anonymous_connections: Gauge,
    /// HTTP connections closed on accept, over the listener's bounds, by reason.
    pub http_refused: Family<HttpRefusedLabels, Counter>,
    /// Connections, streams and calls refused by a bound per caller, by bound.
    pub limited: Family<LimitLabels, Counter>,
    /// Attestations answered from the cache or by the platform.
    pub attest_cache: Family<AttestCacheLabels, Counter>,
    /// When the signing intermediate expires, in seconds since the Unix epoch.
    pub intermediate_expiry: Gauge,
    /// 1 while the intermediate can be renewed here (root key at hand, not failing), else 0.
    pub intermediate_renewable: Gauge,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let certify = Family::<CertifyLabels, Counter>::default();
        let attest_refused = Family::<AttestLabels, Counter>::default();
        let streams = Family::<StreamLabels, Gauge>::default();
        let updates = Family::<StreamLabels, Counter>::default();
        let denied = Counter::default();
        let tls_rejected = Family::<TlsRejectLabels, Counter>::default();
        let connections_closed = Family::<ConnectionCloseLabels, Counter>::default();
        let anonymous_connections = Gauge::default();
        let http_refused = Family::<HttpRefusedLabels, Counter>::default();
        let limited = Family::<LimitLabels, Counter>::default();
        let attest_cache = Family::<AttestCacheLabels, Counter>::default();
        let intermediate_expiry = Gauge::default();
        let intermediate_renewable = Gauge::default();
        registry.register(
            "weft_control_intermediate_expiry_timestamp_seconds",
            "When the signing intermediate CA expires (Unix time); no leaf outlives it",
            intermediate_expiry.clone(),
        );
        registry.register(
            "weft_control_intermediate_renewable",
            "1 when the control plane can renew the intermediate CA itself, 0 when an operator must",
            intermediate_renewable.clone(),
        );
        registry.register(
            "weft_control_tls_rejected",
            "gRPC connections whose TLS handshake failed, by reason",
            tls_rejected.clone(),
        );
        registry.register(
            "weft_control_connections_closed",
            "gRPC connections closed after their TLS handshake by a bound on clients without a certificate, by reason",
            connections_closed.clone(),
        );
        registry.register(
            "weft_control_anonymous_connections",
            "Open gRPC connections without a client certificate",
            anonymous_connections.clone(),
        );
        registry.register(
            "weft_control_http_connections_refused",
            "HTTP connections closed on accept: the listener was full, or the client's address held its share",
            http_refused.clone(),
        );
        registry.register(
            "weft_control_limited",
            "gRPC connections, Discovery streams and Certify calls refused by a bound per caller ([control.limits]), by bound",
            limited.clone(),
        );
        registry.register(
            "weft_control_attest_cache",
            "Certify attestations answered from the cache of platform answers (hit) or by the platform (miss)",
            attest_cache.clone(),
        );
        registry.register(
            "weft_control_certify",
            "Identity.Certify calls by platform and result",
            certify.clone(),
        );
        registry.register(
            "weft_control_attest_refused",
            "Credentials a platform refused, by platform and reason",
            attest_refused.clone(),
        );
        registry.register(
            "weft_control_discovery_streams",
            "Open Discovery streams, by kind (resolve, proxy)",
            streams.clone(),
        );
        let telemetry_series = Gauge::default();
        let telemetry_values = Gauge::default();
        registry.register(
            "weft_control_telemetry_series",
            "Series the proxies' telemetry windows hold (names and labels, once per proxy)",
            telemetry_series.clone(),
        );
        registry.register(
            "weft_control_telemetry_values",
            "Values the proxies' telemetry windows hold (one per series and report kept)",
            telemetry_values.clone(),
        );
        registry.register(
            "weft_control_discovery_updates",
            "Updates sent on Discovery streams, by kind",
            updates.clone(),
        );
        registry.register(
            "weft_control_resolve_denied",
            "Resolve answers of denied: the caller's identity may not reach the target",
            denied.clone(),
        );
        Self {
            telemetry_series,
            telemetry_values,
            registry,
            certify,
            attest_refused,
            streams,
            updates,
            denied,
            tls_rejected,
            connections_closed,
            anonymous_connections,
            http_refused,
            limited,
            attest_cache,
            intermediate_expiry,
            intermediate_renewable,
        }
    }
}

impl ControlMetrics {
    /// Records the intermediate's end and whether it can be renewed here.
    pub fn set_intermediate(&self, not_after: std::time::SystemTime, renewable: bool) {
        let secs = not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        self.intermediate_expiry
            .set(i64::try_from(secs).unwrap_or(i64::MAX));
        self.intermediate_renewable.set(i64::from(renewable));
    }

    /// Counts one failed TLS handshake.
    pub fn count_tls_rejected(&self, reason: &'static str) {
        self.tls_rejected
            .get_or_create(&TlsRejectLabels { reason })
            .inc();
    }

    /// Counts one connection closed by a bound on clients without a certificate.
    pub fn count_connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ConnectionCloseLabels { reason })
            .inc();
    }

    /// Counts one connection, stream or call refused by a bound per caller.
    pub(crate) fn count_limited(&self, limit: crate::limits::Limit) {
        self.limited
            .get_or_create(&LimitLabels {
                reason: limit.reason(),
            })
            .inc();
    }

    /// Counts one attestation, answered from the cache or not.
    pub(crate) fn count_attest_cache(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.attest_cache
            .get_or_create(&AttestCacheLabels { result })
            .inc();
    }

    /// Counts one credential refused by `platform` (a configured one).
    pub fn count_attest_refused(&self, platform: &str, reason: &'static str) {
        self.attest_refused
            .get_or_create(&AttestLabels {
                platform: platform.to_string(),
                reason,
            })
            .inc();
    }

    /// Counts one Certify call.
    pub fn count_certify(&self, platform: &str, result: &'static str) {
        self.certify
            .get_or_create(&CertifyLabels {
                platform: platform.to_string(),
                result,
            })
            .inc();
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}
