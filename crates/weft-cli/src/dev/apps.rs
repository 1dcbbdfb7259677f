//! The built-in demo applications of `weft dev`: tiny HTTP servers and a traffic loop, all
//! on 127.0.0.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use weft_local::LocalWorkload;
use weft_local::config::DemoApp;

/// Requests per second of the traffic loop.
const LOAD_RPS: u64 = 20;

/// Starts the demo server `demo` for workload `w` on `127.0.0.1:port`, until `stop`. The
/// returned task ends once the listener is closed, so the port can be bound again.
pub async fn spawn(
    demo: DemoApp,
    port: u16,
    w: &LocalWorkload,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let name = format!("{}/{}", w.namespace, w.name);
    let upstream: Option<SocketAddr> = w
        .upstreams
        .values()
        .next()
        .map(|p| ([127, 0, 0, 1], *p).into());
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    Ok(tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r { Ok((t, _)) => t, Err(_) => continue },
            };
            let name = name.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let name = name.clone();
                    let client = client.clone();
                    async move {
                        Ok::<_, Infallible>(match demo {
                            DemoApp::Echo => echo(req).await,
                            DemoApp::Api => api(&name),
                            DemoApp::Web => web(&name, upstream, &client).await,
                            DemoApp::Load => {
                                text(StatusCode::NOT_FOUND, "load serves nothing".into())
                            }
                        })
                    }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    }))
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

async fn echo(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut out = format!("{} {}\n", parts.method, parts.uri);
    for (k, v) in &parts.headers {
        out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
    }
    out.push('\n');
    out.push_str(&String::from_utf8_lossy(&body));
    text(StatusCode::OK, out)
}

fn api(name: &str) -> Response<Full<Bytes>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    text(
        StatusCode::OK,
        format!("{{\"workload\":\"{name}\",\"unix_ms\":{now}}}"),
    )
}

async fn web(
    name: &str,
    upstream: Option<SocketAddr>,
    client: &Client<HttpConnector, Empty<Bytes>>,
) -> Response<Full<Bytes>> {
    let Some(up) = upstream else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "no upstream".into());
    };
    let uri = format!("http://{up}/data");
    let req = Request::get(uri).body(Empty::new());
    let Ok(req) = req else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "bad request".into());
    };
    match client.request(req).await {
        Ok(rsp) => {
            let status = rsp.status();
            let body = rsp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            text(
                status,
                format!("{name} got: {}", String::from_utf8_lossy(&body)),
            )
        }
        Err(e) => text(
            StatusCode::BAD_GATEWAY,
            format!("{name}: upstream failed: {e}"),
        ),
    }
}

/// Sends `LOAD_RPS` requests a second to `target` until `stop`.
pub fn spawn_load(_demo: DemoApp, target: SocketAddr, stop: CancellationToken) -> JoinHandle<()> {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / LOAD_RPS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Ok(req) = Request::get(format!("http://{target}/")).body(Empty::new()) else {
                return;
            };
            let client = client.clone();
            tokio::spawn(async move {
                if let Ok(rsp) = client.request(req).await {
                    let _ = rsp.into_body().collect().await;
                }
            });
        }
    })
}
