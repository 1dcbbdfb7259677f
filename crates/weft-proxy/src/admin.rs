//! The admin listener: `/live`, `/ready`, `/metrics`, `/shutdown`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Serves the admin endpoints until `stop`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let rsp = handle(&shared, &shutdown, req);
                async move { Ok::<_, Infallible>(rsp) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Whether the proxy can serve: it holds a certificate and a first snapshot.
pub fn is_ready(shared: &Shared) -> bool {
    shared.credentials.borrow().is_some() && shared.discovery.borrow().is_some()
}

fn handle(
    shared: &Shared,
    shutdown: &CancellationToken,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String, ctype: &'static str| {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    match (req.method(), req.uri().path()) {
        (_, "/live") => reply(StatusCode::OK, "live\n".into(), "text/plain"),
        (_, "/ready") => {
            if is_ready(shared) && !shared.draining.is_cancelled() {
                reply(StatusCode::OK, "ready\n".into(), "text/plain")
            } else {
                let why = if shared.draining.is_cancelled() {
                    "draining"
                } else if shared.credentials.borrow().is_none() {
                    "no certificate yet"
                } else {
                    "no discovery snapshot yet"
                };
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                    "text/plain",
                )
            }
        }
        (_, "/metrics") => reply(
            StatusCode::OK,
            shared.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        (&Method::POST, "/shutdown") => {
            shutdown.cancel();
            reply(StatusCode::OK, "shutting down\n".into(), "text/plain")
        }
        (_, "/shutdown") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST\n".into(),
            "text/plain",
        ),
        _ => reply(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}
