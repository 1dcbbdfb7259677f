//! The span exporter: a task that sends the proxy's spans to the mesh's OTLP/gRPC collector in
//! batches, over mutual TLS when the collector is in the mesh.
//!
//! Requests never wait for it. They hand their spans to a bounded buffer
//! ([`Exporter::send`]); when the buffer is full the span is dropped and counted
//! (`weft_trace_spans_total{outcome="dropped"}`). The task sends a batch when it holds
//! [`MAX_BATCH`] spans or [`FLUSH_EVERY`] after the batch's first span, one export at a time,
//! each bounded by [`EXPORT_TIMEOUT`]; a batch the collector refuses or does not answer is
//! counted as `failed`, and the next waits a backoff.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::either::Either;
use tonic::transport::Endpoint;
use weft_core::Identity;

use super::span::{SpanRecord, key_value, to_otlp};
use crate::runtime::CredentialsWatch;

/// The most spans one export carries.
pub const MAX_BATCH: usize = 512;
/// How long a span waits for its batch to fill.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long one export may take.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where spans go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collector {
    /// `host:port`.
    pub address: String,
    /// The identity it proves: mutual TLS. None: plaintext HTTP/2.
    pub identity: Option<Identity>,
    /// Spans held for export at most.
    pub buffer: usize,
}

/// What the spans say about their source (OTLP resource attributes).
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// `service.name`: the service the workload serves, else the workload's name.
    pub service: String,
    /// `service.namespace`.
    pub namespace: String,
    /// `service.instance.id`: the workload instance.
    pub instance: String,
    /// `weft.identity`: the proxy's SPIFFE ID, if known.
    pub identity: Option<String>,
}

/// Counters of what became of the spans.
#[derive(Clone, Debug, Default)]
pub struct SpanCounters {
    /// Sent to the collector and accepted.
    pub exported: Counter,
    /// Dropped because the buffer was full.
    pub dropped: Counter,
    /// In a batch the collector refused or did not answer.
    pub failed: Counter,
}

/// The handle requests send their spans to. Dropping it ends the task once it has tried to
/// send what it holds.
#[derive(Debug)]
pub struct Exporter {
    tx: mpsc::Sender<SpanRecord>,
    counters: SpanCounters,
}

impl Exporter {
    /// Starts the task for `collector`.
    pub fn spawn(
        collector: &Collector,
        source: Source,
        credentials: CredentialsWatch,
        counters: SpanCounters,
    ) -> Self {
        let (tx, rx) = mpsc::channel(collector.buffer.max(1));
        let connector = Connector {
            address: Arc::from(collector.address.as_str()),
            identity: collector.identity.clone(),
            credentials,
        };
        let endpoint = Endpoint::from_shared(format!("http://{}", collector.address))
            .unwrap_or_else(|_| Endpoint::from_static("http://collector"))
            .connect_timeout(Duration::from_secs(5))
            .timeout(EXPORT_TIMEOUT);
        let client = TraceServiceClient::new(endpoint.connect_with_connector_lazy(connector));
        tokio::spawn(run(rx, client, resource(&source), counters.clone()));
        Self { tx, counters }
    }

    /// Hands a finished span over; drops it (and counts it) if the buffer is full.
    pub fn send(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.counters.dropped.inc();
        }
    }
}

fn resource(s: &Source) -> Resource {
    let mut attributes = vec![
        key_value("service.name", s.service.clone().into()),
        key_value("service.namespace", s.namespace.clone().into()),
        key_value("service.instance.id", s.instance.clone().into()),
        key_value("telemetry.sdk.name", "weft-proxy".into()),
        key_value("telemetry.sdk.version", env!("CARGO_PKG_VERSION").into()),
    ];
    if let Some(id) = &s.identity {
        attributes.push(key_value("weft.identity", id.clone().into()));
    }
    Resource {
        attributes,
        ..Resource::default()
    }
}

type Client = TraceServiceClient<tonic::transport::Channel>;

async fn run(
    mut rx: mpsc::Receiver<SpanRecord>,
    mut client: Client,
    resource: Resource,
    counters: SpanCounters,
) {
    let mut backoff = crate::control::Backoff::default();
    loop {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let Some(first) = rx.recv().await else {
            return;
        };
        batch.push(first);
        let flush_at = tokio::time::Instant::now() + FLUSH_EVERY;
        let mut closed = false;
        while batch.len() < MAX_BATCH {
            let room = MAX_BATCH - batch.len();
            tokio::select! {
                n = rx.recv_many(&mut batch, room) => if n == 0 {
                    closed = true;
                    break;
                },
                () = tokio::time::sleep_until(flush_at) => break,
            }
        }
        let n = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    spans: batch.into_iter().map(to_otlp).collect(),
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        };
        match tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await {
            Ok(Ok(rsp)) => {
                let rejected = rsp
                    .get_ref()
                    .partial_success
                    .as_ref()
                    .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0).min(n));
                counters.exported.inc_by(n - rejected);
                counters.failed.inc_by(rejected);
                backoff = crate::control::Backoff::default();
            }
            Ok(Err(status)) => {
                tracing::debug!(error = %status, spans = n, "span export refused");
                counters.failed.inc_by(n);
                if !closed {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
            Err(_) => {
                tracing::debug!(spans = n, "span export timed out");
                counters.failed.inc_by(n);
                if !closed {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
        if closed {
            return;
        }
    }
}

/// Opens TCP to the collector, then TLS when it is in the mesh.
#[derive(Clone)]
struct Connector {
    address: Arc<str>,
    identity: Option<Identity>,
    credentials: CredentialsWatch,
}

type Io = TokioIo<Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>>;

impl tower::Service<http::Uri> for Connector {
    type Response = Io;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Io>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host(&*this.address).await?;
            let tcp = crate::control::connect_first(addrs, &this.address).await?;
            let _ = tcp.set_nodelay(true);
            let Some(identity) = &this.identity else {
                return Ok(TokioIo::new(Either::Left(tcp)));
            };
            let creds = this.credentials.borrow().clone().ok_or_else(|| {
                std::io::Error::other("no certificate yet to reach the collector with")
            })?;
            let tls =
                tokio_rustls::TlsConnector::from(creds.client_config(identity, weft_ca::ALPN_H2))
                    .connect(weft_ca::tls::server_name(), tcp)
                    .await?;
            Ok(TokioIo::new(Either::Right(tls)))
        })
    }
}
