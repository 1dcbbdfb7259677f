//! The control plane's metrics, in one registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `weft_control_certify_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertifyLabels {
    /// `local`, `kubernetes`, ...
    pub platform: String,
    /// `issued`, `attest_failed`, `csr_rejected`.
    pub result: String,
}

/// Counters and gauges the control plane exports on `/metrics`.
#[derive(Debug)]
pub struct ControlMetrics {
    registry: Registry,
    /// Certify calls by platform and outcome.
    pub certify: Family<CertifyLabels, Counter>,
    /// Open Watch streams.
    pub watches: Gauge,
    /// Snapshots sent on Watch streams.
    pub snapshots: Counter,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let certify = Family::<CertifyLabels, Counter>::default();
        let watches = Gauge::default();
        let snapshots = Counter::default();
        registry.register(
            "weft_control_certify",
            "Identity.Certify calls by platform and result",
            certify.clone(),
        );
        registry.register(
            "weft_control_watch_streams",
            "Open Discovery.Watch streams",
            watches.clone(),
        );
        registry.register(
            "weft_control_snapshots",
            "Snapshots sent to proxies",
            snapshots.clone(),
        );
        Self {
            registry,
            certify,
            watches,
            snapshots,
        }
    }
}

impl ControlMetrics {
    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}
