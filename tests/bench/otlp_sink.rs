//! An OTLP/gRPC trace receiver for the request-path benchmark (`tests/bench/run.sh`): it
//! accepts `TraceService/Export` on the address given as its only argument, answers every
//! export at once and keeps nothing but a count of the spans received, which it prints to
//! stdout on SIGTERM (or SIGINT), then exits. The proxies' own
//! `weft_trace_spans_total` counters say what they exported and dropped; this count confirms
//! that the exported spans arrived. Loopback only, as the bench's traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, ensure};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .context("usage: otlp-sink 127.0.0.1:PORT")?
        .parse()
        .context("the address is not IP:PORT")?;
    ensure!(
        addr.ip().is_loopback(),
        "otlp-sink listens on loopback only"
    );
    let sink = Sink::default();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let mut term = signal(SignalKind::terminate()).context("SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT")?;
    tokio::select! {
        served = server => served.context("serving OTLP")?,
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    println!("{}", sink.spans.load(Ordering::Relaxed));
    Ok(())
}
