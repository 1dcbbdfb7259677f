//! The proxy's golden metrics, in one OpenMetrics registry, durations in seconds.
//!
//! - `weft_requests_total{direction, service, peer}`
//! - `weft_responses_total{direction, service, peer, status_code, classification}`
//! - `weft_response_latency_seconds{direction, service, peer}` (to response headers)
//! - `weft_route_requests_total{route, rule, backend}`, `weft_route_responses_total{route,
//!   rule, backend, status_code, classification}`, `weft_route_response_latency_seconds{route,
//!   rule, backend}`: outbound requests a route sent (redirects are under backend `-`)
//! - `weft_route_retries_total{route, rule}`, `weft_route_retry_budget_exhausted_total{route,
//!   rule}`: retries a rule sent, and retries its budget refused;
//!   `weft_route_limited_total{route, rule}`: calls its concurrency limit refused;
//!   `weft_service_limited_total{service}`: calls a service's concurrency limit refused
//! - `weft_tcp_open_connections{direction, peer}`, `weft_tcp_connections_total`,
//!   `weft_tcp_read_bytes_total`, `weft_tcp_write_bytes_total`
//! - `weft_inbound_tls_rejected_total{reason}`, `weft_inbound_authz_denied_total{client, rule}`,
//!   `weft_inbound_authz_audited_total{client, rule}`, `weft_inbound_rate_limited_total`,
//!   `weft_inbound_policy_invalid_total`, `weft_outbound_refused_total{reason}`,
//!   `weft_outbound_policy_invalid_total`
//! - `weft_admin_connections_refused_total{listener, reason}` (`admin` or `probe`; `full` or
//!   `per_address`)
//! - `weft_trace_spans_total{outcome}` (`exported`, `dropped`: the export buffer was full,
//!   `failed`: the collector refused or did not answer), `weft_access_log_dropped_total`
//!
//! The latency histograms carry, per bucket, an exemplar with the `trace_id` of the last
//! sampled request that fell in it (OpenMetrics), so a slow bucket leads to a trace.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;

use http::Response;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::http::classify::{grpc_failed, is_failure};
use crate::http::{Body, BoxError};

/// Inbound (peers to the local app) or outbound (the local app to peers).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Direction {
    /// Traffic to the local application.
    #[allow(non_camel_case_types)]
    inbound,
    /// Traffic from the local application.
    #[allow(non_camel_case_types)]
    outbound,
}

/// Labels of request counters and latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Direction.
    pub direction: Direction,
    /// Outbound: the target service. Inbound: the local workload's service, or `-`.
    pub service: String,
    /// The peer's SPIFFE ID (the server outbound, the client inbound), or `-`.
    pub peer: String,
}

/// Labels of response counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    /// Direction.
    pub direction: Direction,
    /// See [`RequestLabels::service`].
    pub service: String,
    /// See [`RequestLabels::peer`].
    pub peer: String,
    /// HTTP status code, or empty when no response came.
    pub status_code: String,
    /// `success` or `failure` (5xx, a gRPC error status, or no response).
    pub classification: String,
}

/// Labels of route metrics: bounded by the routes the mesh sends (never a path).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route, `namespace/name`.
    pub route: String,
    /// The rule: its name, or its index.
    pub rule: String,
    /// The backend service (`name.namespace`, with `:port` when the route names one).
    pub backend: String,
}

/// Labels of a route rule's counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// See [`RouteLabels::route`].
    pub route: String,
    /// See [`RouteLabels::rule`].
    pub rule: String,
}

/// Labels of route response counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteResponseLabels {
    /// See [`RouteLabels::route`].
    pub route: String,
    /// See [`RouteLabels::rule`].
    pub rule: String,
    /// See [`RouteLabels::backend`].
    pub backend: String,
    /// HTTP status code, or empty when no response came.
    pub status_code: String,
    /// `success` or `failure`.
    pub classification: String,
}

/// Labels of TCP metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// Direction.
    pub direction: Direction,
    /// The peer's SPIFFE ID, or `-`.
    pub peer: String,
}

/// Labels of inbound rejections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// Why.
    pub reason: String,
}

/// Labels of connections the admin or probe listener refused on accept.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminRefusedLabels {
    /// `admin` or `probe`.
    pub listener: &'static str,
    /// `full` or `per_address` ([`weft_core::listener::Refusal`]).
    pub reason: &'static str,
}

/// Labels of a destination service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The service, `name.namespace`.
    pub service: String,
}

/// Labels of authorization denials.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenyLabels {
    /// The client's identity.
    pub client: String,
    /// The rule that decided (`default`: the server's default), from the control plane's
    /// policy: a bounded set.
    pub rule: String,
}

/// The exemplar of a latency bucket: the trace of a sampled request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    /// The trace ID, 32 hex digits.
    pub trace_id: String,
}

/// A latency histogram with exemplars.
pub type LatencyHistogram = HistogramWithExemplars<TraceExemplar>;

fn latency_histogram() -> LatencyHistogram {
    HistogramWithExemplars::new(latency_buckets())
}

/// Labels of span counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanLabels {
    /// `exported`, `dropped` or `failed`.
    pub outcome: &'static str,
}

/// Every metric of one proxy.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Requests.
    pub requests: Family<RequestLabels, Counter>,
    /// Responses.
    pub responses: Family<ResponseLabels, Counter>,
    /// Latency to response headers.
    pub latency: Family<RequestLabels, LatencyHistogram>,
    /// Requests per route rule and backend.
    pub route_requests: Family<RouteLabels, Counter>,
    /// Responses per route rule and backend.
    pub route_responses: Family<RouteResponseLabels, Counter>,
    /// Latency per route rule and backend.
    pub route_latency: Family<RouteLabels, LatencyHistogram>,
    /// Retries per route rule.
    pub route_retries: Family<RuleLabels, Counter>,
    /// Retries refused by a route rule's budget.
    pub route_retry_budget_exhausted: Family<RuleLabels, Counter>,
    /// Calls refused by a route rule's concurrency limit.
    pub route_limited: Family<RuleLabels, Counter>,
    /// Calls a service's concurrency limit refused.
    pub service_limited: Family<ServiceLabels, Counter>,
    /// Open TCP connections.
    pub tcp_open: Family<TcpLabels, Gauge>,
    /// TCP connections accepted.
    pub tcp_total: Family<TcpLabels, Counter>,
    /// Bytes read from clients and peers.
    pub tcp_read: Family<TcpLabels, Counter>,
    /// Bytes written to clients and peers.
    pub tcp_write: Family<TcpLabels, Counter>,
    /// Inbound connections refused at the TLS layer.
    pub tls_rejected: Family<RejectLabels, Counter>,
    /// Inbound connections or requests refused by authorization.
    pub authz_denied: Family<DenyLabels, Counter>,
    /// Inbound requests refused by a server's rate limit.
    pub inbound_rate_limited: Counter,
    /// Inbound connections or requests let through by an `audit` policy that a deny would
    /// have refused.
    pub authz_audited: Family<DenyLabels, Counter>,
    /// Snapshots whose inbound policy could not be used (the proxy then denies every client).
    pub policy_invalid: Counter,
    /// Outbound connections refused before any destination was chosen.
    pub outbound_refused: Family<RejectLabels, Counter>,
    /// Route updates that could not be used (the destination keeps its last good routes).
    pub outbound_policy_invalid: Counter,
    /// Connections the admin or probe listener closed on accept, over its bounds.
    pub admin_refused: Family<AdminRefusedLabels, Counter>,
    /// What became of the spans.
    pub spans: crate::observe::export::SpanCounters,
    /// Access log lines dropped because the writer was behind.
    pub access_log_dropped: Counter,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let responses = Family::<ResponseLabels, Counter>::default();
        let latency = Family::<RequestLabels, LatencyHistogram>::new_with_constructor(
            latency_histogram as fn() -> LatencyHistogram,
        );
        let route_requests = Family::<RouteLabels, Counter>::default();
        let route_responses = Family::<RouteResponseLabels, Counter>::default();
        let route_latency = Family::<RouteLabels, LatencyHistogram>::new_with_constructor(
            latency_histogram as fn() -> LatencyHistogram,
        );
        registry.register(
            "weft_route_requests",
            "HTTP requests per route rule and backend",
            route_requests.clone(),
        );
        let route_retries = Family::<RuleLabels, Counter>::default();
        let route_retry_budget_exhausted = Family::<RuleLabels, Counter>::default();
        registry.register(
            "weft_route_retries",
            "Retries a route rule sent",
            route_retries.clone(),
        );
        registry.register(
            "weft_route_retry_budget_exhausted",
            "Retries a route rule's budget refused",
            route_retry_budget_exhausted.clone(),
        );
        let service_limited = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "weft_service_limited",
            "Calls to a service its concurrency limit refused, by the caller's proxy",
            service_limited.clone(),
        );
        let route_limited = Family::<RuleLabels, Counter>::default();
        registry.register(
            "weft_route_limited",
            "Calls a route rule's concurrency limit refused",
            route_limited.clone(),
        );
        registry.register(
            "weft_route_responses",
            "HTTP responses per route rule and backend",
            route_responses.clone(),
        );
        registry.register_with_unit(
            "weft_route_response_latency",
            "Time from request to response headers, per route rule and backend",
            prometheus_client::registry::Unit::Seconds,
            route_latency.clone(),
        );
        let tcp_open = Family::<TcpLabels, Gauge>::default();
        let tcp_total = Family::<TcpLabels, Counter>::default();
        let tcp_read = Family::<TcpLabels, Counter>::default();
        let tcp_write = Family::<TcpLabels, Counter>::default();
        let tls_rejected = Family::<RejectLabels, Counter>::default();
        let authz_denied = Family::<DenyLabels, Counter>::default();
        let policy_invalid = Counter::default();
        let outbound_refused = Family::<RejectLabels, Counter>::default();
        let outbound_policy_invalid = Counter::default();
        let admin_refused = Family::<AdminRefusedLabels, Counter>::default();
        registry.register("weft_requests", "HTTP requests", requests.clone());
        registry.register("weft_responses", "HTTP responses", responses.clone());
        registry.register_with_unit(
            "weft_response_latency",
            "Time from request to response headers",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        registry.register(
            "weft_tcp_open_connections",
            "Open TCP connections",
            tcp_open.clone(),
        );
        registry.register(
            "weft_tcp_connections",
            "TCP connections accepted",
            tcp_total.clone(),
        );
        registry.register("weft_tcp_read_bytes", "Bytes read", tcp_read.clone());
        registry.register("weft_tcp_write_bytes", "Bytes written", tcp_write.clone());
        registry.register(
            "weft_inbound_tls_rejected",
            "Inbound connections refused during the TLS handshake",
            tls_rejected.clone(),
        );
        registry.register(
            "weft_inbound_authz_denied",
            "Inbound connections or requests refused by authorization policy",
            authz_denied.clone(),
        );
        let authz_audited = Family::<DenyLabels, Counter>::default();
        registry.register(
            "weft_inbound_authz_audited",
            "Inbound connections or requests an audit policy let through that a deny would refuse",
            authz_audited.clone(),
        );
        let inbound_rate_limited = Counter::default();
        registry.register(
            "weft_inbound_rate_limited",
            "Inbound requests refused by a server's rate limit",
            inbound_rate_limited.clone(),
        );
        registry.register(
            "weft_inbound_policy_invalid",
            "Settings whose inbound policy could not be used; the clients it governs are denied",
            policy_invalid.clone(),
        );
        registry.register(
            "weft_outbound_refused",
            "Outbound connections refused before a destination was chosen",
            outbound_refused.clone(),
        );
        registry.register(
            "weft_outbound_policy_invalid",
            "Route updates from the control plane that could not be used; the destination keeps its last good routes",
            outbound_policy_invalid.clone(),
        );
        registry.register(
            "weft_admin_connections_refused",
            "Connections the admin or probe listener closed on accept: it was full, or the client's address held its share",
            admin_refused.clone(),
        );
        let span_family = Family::<SpanLabels, Counter>::default();
        registry.register(
            "weft_trace_spans",
            "Spans this proxy recorded, by what became of them: exported, dropped (the export buffer was full) or failed (the collector refused or did not answer)",
            span_family.clone(),
        );
        let outcome = |outcome| span_family.get_or_create(&SpanLabels { outcome }).clone();
        let spans = crate::observe::export::SpanCounters {
            exported: outcome("exported"),
            dropped: outcome("dropped"),
            failed: outcome("failed"),
        };
        let access_log_dropped = Counter::default();
        registry.register(
            "weft_access_log_dropped",
            "Access log lines dropped because stderr was behind",
            access_log_dropped.clone(),
        );
        Self {
            registry: Arc::new(registry),
            spans,
            access_log_dropped,
            requests,
            responses,
            latency,
            route_requests,
            route_responses,
            route_latency,
            route_retries,
            route_retry_budget_exhausted,
            route_limited,
            service_limited,
            tcp_open,
            tcp_total,
            tcp_read,
            tcp_write,
            tls_rejected,
            authz_denied,
            inbound_rate_limited,
            authz_audited,
            policy_invalid,
            outbound_refused,
            outbound_policy_invalid,
            admin_refused,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }

    /// Marks a TCP connection open until the guard drops.
    pub fn open_connection(&self, labels: TcpLabels) -> ConnectionGuard {
        self.tcp_total.get_or_create(&labels).inc();
        let gauge = self.tcp_open.get_or_create(&labels).clone();
        gauge.inc();
        ConnectionGuard { gauge }
    }
}

/// The metric handles of one stream of requests (one endpoint outbound, one client connection
/// inbound), looked up once so the data path does not hash labels per request. Clones share
/// the handles: a clone costs one reference count.
#[derive(Clone, Debug)]
pub struct RequestMetrics(Arc<Handles>);

struct Handles {
    /// The peer label (empty for route metrics).
    peer: Arc<str>,
    requests: Counter,
    latency: LatencyHistogram,
    responses: Mutex<Vec<ResponseCounter>>,
    /// Makes the response counter of a status (`None`: no response) and classification.
    make: Box<dyn Fn(Option<u16>, bool) -> Counter + Send + Sync>,
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles").finish_non_exhaustive()
    }
}

fn status_label(status: Option<u16>) -> String {
    status.map(|s| s.to_string()).unwrap_or_default()
}

fn classification(failed: bool) -> String {
    if failed { "failure" } else { "success" }.to_string()
}

/// A response counter by status (`None`: no response) and failure classification.
type ResponseCounter = (Option<u16>, bool, Counter);

impl RequestMetrics {
    /// Handles for `labels`.
    pub fn new(metrics: &Metrics, labels: RequestLabels) -> Self {
        let family = metrics.responses.clone();
        Self(Arc::new(Handles {
            peer: Arc::from(labels.peer.as_str()),
            requests: metrics.requests.get_or_create(&labels).clone(),
            latency: metrics.latency.get_or_create(&labels).clone(),
            responses: Mutex::default(),
            make: Box::new(move |status, failed| {
                family
                    .get_or_create(&ResponseLabels {
                        status_code: status_label(status),
                        classification: classification(failed),
                        direction: labels.direction,
                        service: labels.service.clone(),
                        peer: labels.peer.clone(),
                    })
                    .clone()
            }),
        }))
    }

    /// Handles for one backend of one route rule (`weft_route_*`).
    pub fn for_route(metrics: &Metrics, labels: RouteLabels) -> Self {
        let family = metrics.route_responses.clone();
        Self(Arc::new(Handles {
            peer: Arc::from(""),
            requests: metrics.route_requests.get_or_create(&labels).clone(),
            latency: metrics.route_latency.get_or_create(&labels).clone(),
            responses: Mutex::default(),
            make: Box::new(move |status, failed| {
                family
                    .get_or_create(&RouteResponseLabels {
                        route: labels.route.clone(),
                        rule: labels.rule.clone(),
                        backend: labels.backend.clone(),
                        status_code: status_label(status),
                        classification: classification(failed),
                    })
                    .clone()
            }),
        }))
    }

    /// The peer these requests go to or come from (its SPIFFE ID, or `-`).
    pub fn peer(&self) -> &Arc<str> {
        &self.0.peer
    }

    /// Counts a request.
    pub fn request(&self) {
        self.0.requests.inc();
    }

    /// Records a response: its latency now, its outcome once the body has ended, so that a
    /// gRPC error status sent in trailers counts as a failure.
    pub fn observe(&self, rsp: Response<Body>, started: tokio::time::Instant) -> Response<Body> {
        self.observe_traced(rsp, started, None)
    }

    /// As [`Self::observe`], for a request of the trace `trace` (the bucket's exemplar).
    pub fn observe_traced(
        &self,
        rsp: Response<Body>,
        started: tokio::time::Instant,
        trace: Option<crate::observe::context::TraceId>,
    ) -> Response<Body> {
        let exemplar = trace.map(|t| TraceExemplar { trace_id: t.hex() });
        self.0
            .latency
            .observe(started.elapsed().as_secs_f64(), exemplar, None);
        let status = rsp.status().as_u16();
        let failed = is_failure(&rsp);
        let (parts, body) = rsp.into_parts();
        Response::from_parts(
            parts,
            Body::new(MeteredBody {
                inner: body,
                outcome: Some((self.clone(), status, failed)),
            }),
        )
    }

    /// Records a request that got no response.
    pub fn no_response(&self, started: tokio::time::Instant) {
        self.0
            .latency
            .observe(started.elapsed().as_secs_f64(), None, None);
        self.count_response(None, true);
    }

    fn count_response(&self, status: Option<u16>, failed: bool) {
        let h = &self.0;
        let mut cache = h.responses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, c)) = cache.iter().find(|(s, f, _)| *s == status && *f == failed) {
            c.inc();
            return;
        }
        let counter = (h.make)(status, failed);
        counter.inc();
        cache.push((status, failed, counter));
    }
}

/// A response body that counts its response once it has ended: a failure if the head said so,
/// if its trailers carry a gRPC error status, or if the body failed. A body dropped early
/// counts as its head said.
struct MeteredBody {
    inner: Body,
    /// The handles, the status, and whether the head already said failure; taken at the end.
    outcome: Option<(RequestMetrics, u16, bool)>,
}

impl MeteredBody {
    fn finish(&mut self, failed_later: bool) {
        if let Some((metrics, status, failed)) = self.outcome.take() {
            metrics.count_response(Some(status), failed || failed_later);
        }
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        self.finish(false);
    }
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let failed = grpc_failed(trailers);
                    self.finish(failed);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(true),
            Poll::Ready(None) => self.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Decrements the open-connections gauge when dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    gauge: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
