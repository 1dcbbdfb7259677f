//! Real servers on loopback for the proxies to front: HTTP/1.1 + HTTP/2 echo, gRPC (unary and
//! server streaming, with trailers), WebSocket echo, TCP echo, and a server-speaks-first TCP
//! service.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::{Status, Streaming};
use weft_api::v1::discovery_server::{Discovery, DiscoveryServer};
use weft_api::v1::identity_server::{Identity, IdentityServer};
use weft_api::{CertifyRequest, CertifyResponse, Snapshot, WatchRequest};

async fn listen() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// Binds a loopback port and runs `conn` on each accepted connection in a task of its own.
async fn serve_each<F, Fut>(conn: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (l, addr) = listen().await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(conn(tcp));
        }
    });
    addr
}

/// An HTTP/1.1 and HTTP/2 server that answers with what it received: a `x-backend: <name>`
/// header, and a body of `METHOD URI VERSION`, the headers (one per line), a blank line and
/// the request body.
pub async fn http_echo(name: &'static str) -> SocketAddr {
    serve_each(move |tcp| async move {
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut out = format!("{} {} {:?}\n", parts.method, parts.uri, parts.version);
            for (k, v) in &parts.headers {
                out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            out.push('\n');
            let mut out = out.into_bytes();
            out.extend_from_slice(&body);
            Ok::<_, Infallible>(
                Response::builder()
                    .header("x-backend", name)
                    .body(Full::new(Bytes::from(out)))
                    .unwrap(),
            )
        });
        let builder = auto::Builder::new(TokioExecutor::new());
        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
    })
    .await
}

/// A gRPC server reusing the API's generated services as a test protocol: `Certify` echoes
/// the CSR bytes back as the leaf (unary); `Watch` streams three snapshots, versions 1 to 3, or
/// with `x-fail-midway` metadata one snapshot and then an error status in the trailers.
pub async fn grpc_backend() -> SocketAddr {
    #[derive(Debug)]
    struct Echo;
    #[tonic::async_trait]
    impl Identity for Echo {
        async fn certify(
            &self,
            req: tonic::Request<CertifyRequest>,
        ) -> Result<tonic::Response<CertifyResponse>, Status> {
            let r = req.into_inner();
            if r.csr == b"fail" {
                return Err(Status::failed_precondition("asked to fail"));
            }
            Ok(tonic::Response::new(CertifyResponse {
                identity: "echo".into(),
                leaf: r.csr,
                ..Default::default()
            }))
        }
    }
    type Snapshots = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send>>;
    #[tonic::async_trait]
    impl Discovery for Echo {
        type WatchStream = Snapshots;
        async fn watch(
            &self,
            req: tonic::Request<WatchRequest>,
        ) -> Result<tonic::Response<Snapshots>, Status> {
            // `x-fail-midway` asks for one message, then an error in the trailers.
            let fail = req.metadata().contains_key("x-fail-midway");
            let items = (1..=3).map(move |v| {
                if fail && v == 2 {
                    return Err(Status::aborted("failed midway"));
                }
                Ok(Snapshot {
                    version: v,
                    ..Default::default()
                })
            });
            let items: Vec<_> = if fail {
                items.take(2).collect()
            } else {
                items.collect()
            };
            Ok(tonic::Response::new(Box::pin(futures_util::stream::iter(
                items,
            ))))
        }
    }
    let (l, addr) = listen().await;
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(IdentityServer::new(Echo))
            .add_service(DiscoveryServer::new(Echo))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
            .unwrap();
    });
    addr
}

/// A WebSocket server that echoes every message.
pub async fn ws_echo() -> SocketAddr {
    serve_each(|tcp| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() || ws.send(msg).await.is_err() {
                break;
            }
        }
    })
    .await
}

/// A TCP server that echoes bytes.
pub async fn tcp_echo() -> SocketAddr {
    serve_each(|mut tcp| async move {
        let (mut r, mut w) = tcp.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

/// A TCP server that speaks first (like SMTP or MySQL): it greets, then echoes one line.
pub async fn server_first() -> SocketAddr {
    serve_each(|mut tcp| async move {
        let _ = tcp.write_all(b"220 hello from the server\r\n").await;
        let mut buf = [0u8; 256];
        if let Ok(n) = tcp.read(&mut buf).await {
            let _ = tcp.write_all(&buf[..n]).await;
        }
    })
    .await
}

/// Drains a gRPC server stream into its messages.
pub async fn collect<T>(mut s: Streaming<T>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        out.push(m);
    }
    out
}
