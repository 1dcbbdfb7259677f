//! The gRPC backend of the request-path benchmark's gRPC cases (`tests/bench/run.sh`).
//!
//! `grpc-backend serve 127.0.0.1:PORT` answers the standard health service's unary call,
//! `grpc.health.v1.Health/Check`: a real gRPC method whose messages and client come with
//! tonic-health, so the bench needs no protobuf code of its own. The request must name the
//! service `bench`; the answer is one message (`SERVING`) and `grpc-status: 0` in the
//! trailers. Any other name is answered `NOT_FOUND` in a trailers-only response, so a request
//! body a path mangled shows as a gRPC error and as a response without data. It counts the
//! calls it answered and prints the count to stdout on SIGTERM (or SIGINT), then exits.
//!
//! `grpc-backend check http://127.0.0.1:PORT` makes one such call with tonic's client, which
//! reads the message and the trailers' status, and fails unless the call succeeded with
//! `SERVING`: run.sh checks every gRPC path with it before measuring, since h2load counts an
//! HTTP 200 as a success whatever `grpc-status` says.
//!
//! Loopback only, as the bench's traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail, ensure};
use tokio::signal::unix::{SignalKind, signal};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The service name the bench's request carries (`tests/bench/run.sh` writes the same
/// message into h2load's data file).
const SERVICE: &str = "bench";

/// The most streams a client may have open on one connection, as the bench's nginx HTTP/2
/// backend allows (`http2_max_concurrent_streams`), so that a proxy's one shared connection is
/// not held to fewer than the load generator opens.
const MAX_STREAMS: u32 = 1024;

/// Answers `Check` and counts the calls answered.
#[derive(Clone, Debug, Default)]
struct Backend {
    answered: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl Health for Backend {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        if request.get_ref().service != SERVICE {
            return Err(tonic::Status::not_found(
                "the bench asks for the service `bench`",
            ));
        }
        self.answered.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(HealthCheckResponse {
            status: ServingStatus::Serving.into(),
        }))
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the bench makes unary calls only",
        ))
    }
}

/// Serves on `addr` until SIGTERM or SIGINT, then prints the count of calls answered.
async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    ensure!(
        addr.ip().is_loopback(),
        "grpc-backend listens on loopback only"
    );
    let backend = Backend::default();
    let mut term = signal(SignalKind::terminate()).context("SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT")?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    // `serve_with_shutdown` binds the listener itself, with TCP_NODELAY as nginx sets it.
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS)
        .add_service(HealthServer::new(backend.clone()))
        .serve_with_shutdown(addr, stop)
        .await
        .with_context(|| format!("serving gRPC on {addr}"))?;
    println!("{}", backend.answered.load(Ordering::Relaxed));
    Ok(())
}

/// One `Check` through `url`; an error unless it succeeded with `SERVING`.
async fn check(url: String) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .with_context(|| format!("the URL {url}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SERVICE.to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("gRPC {:?}: {}", s.code(), s.message()))
        .with_context(|| format!("Check through {url}"))?;
    let status = answer.into_inner().status;
    ensure!(
        status == i32::from(ServingStatus::Serving),
        "Check through {url} answered status {status}, not SERVING"
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    const USAGE: &str = "usage: grpc-backend serve 127.0.0.1:PORT | check http://127.0.0.1:PORT";
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("serve"), Some(addr)) => {
            serve(addr.parse().context("the address is not IP:PORT")?).await
        }
        (Some("check"), Some(url)) => check(url).await,
        _ => bail!(USAGE),
    }
}
