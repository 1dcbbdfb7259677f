//! The control plane's HTTP listener: `/ready`, `/metrics`, `/api/state`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::State;

pub(crate) async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let state = state.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req)) }
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

fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, ctype: &'static str| {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    match req.uri().path() {
        "/ready" | "/live" => text(StatusCode::OK, "ready\n".into(), "text/plain"),
        "/metrics" => text(
            StatusCode::OK,
            state.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/api/state" => {
            let snap = state.registry.snapshot();
            let workloads: Vec<_> = snap
                .workloads()
                .map(|w| {
                    serde_json::json!({
                        "namespace": w.key.namespace,
                        "name": w.key.name,
                        "identity": w.identity.spiffe_id(),
                        "service": w.service.as_ref().map(|s| s.to_string()),
                        "address": w.address.to_string(),
                        "protocol": w.protocol.as_str(),
                        "meshed": w.meshed,
                    })
                })
                .collect();
            let body = serde_json::json!({
                "version": snap.version(),
                "workloads": workloads,
            });
            text(StatusCode::OK, body.to_string(), "application/json")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}
