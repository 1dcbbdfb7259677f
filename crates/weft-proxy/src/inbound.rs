//! The inbound side: peers reach the local application through here, over mutual TLS only.
//!
//! The handshake refuses plaintext, unknown CAs, expired and missing client certificates;
//! each refusal is logged with its reason and counted in `weft_inbound_tls_rejected_total`.
//! The client's SPIFFE ID then goes to the authorization policy of the server (the workload's
//! port) it dialed: workloads that share an identity keep their own policies. The ALPN the
//! client proxy chose says what follows: `h2` (all HTTP, with HTTP/1 marked by
//! `weft-orig-proto`), `http/1.1` (connection upgrades) or opaque TCP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HOST, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use weft_ca::tls::peer_identity;
use weft_ca::{ALPN_H2, ALPN_HTTP1};
use weft_core::Identity;
use weft_core::policy::Decision;

use crate::detect::Detected;
use crate::http::{
    Body, ORIG_PROTO, PlainPool, PoolLimits, boxed, error_response, forward_upgrade, is_upgrade,
    strip_hop_by_hop,
};
use crate::io::CountingIo;
use crate::metrics::{
    DenyLabels, Direction, RejectLabels, RequestLabels, RequestMetrics, TcpLabels,
};
use crate::outbound::serve_http;
use crate::{Shared, accept_loop};

/// A handshake slower than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the inbound listener until the proxy drains.
pub async fn serve(listener: TcpListener, app_port: u16, shared: Arc<Shared>) {
    let app_addr: SocketAddr = ([127, 0, 0, 1], app_port).into();
    // One pool per application port, whatever the Host of each request.
    let app = PlainPool::new(
        app_addr,
        PoolLimits {
            connect_timeout: shared.config.connect_timeout,
            ..PoolLimits::default()
        },
    );
    accept_loop(listener, shared.clone(), move |tcp, remote| {
        handle(tcp, remote, app_addr, app.clone(), shared.clone())
    })
    .await;
}

async fn handle(
    tcp: TcpStream,
    remote: SocketAddr,
    app_addr: SocketAddr,
    app: PlainPool,
    shared: Arc<Shared>,
) {
    let reject = |reason: &str, detail: &dyn std::fmt::Display| {
        tracing::warn!(%remote, reason, %detail, "inbound connection refused");
        shared
            .metrics
            .tls_rejected
            .get_or_create(&RejectLabels {
                reason: reason.to_string(),
            })
            .inc();
    };
    // The port the peer dialed names the server whose policy applies.
    let server_port = match tcp.local_addr() {
        Ok(a) => a.port(),
        Err(e) => {
            tracing::debug!(error = %e, "inbound connection gone before it was read");
            return;
        }
    };
    let Some(creds) = shared.credentials.borrow().clone() else {
        reject("no_certificate_yet", &"this proxy has no certificate yet");
        return;
    };
    let acceptor = TlsAcceptor::from(creds.server_config());
    // The big states (handshake, HTTP server, splice) are boxed, so the connection's task holds
    // only the one in use: an idle opaque connection does not pay for an HTTP server's state.
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, Box::pin(acceptor.accept(tcp))).await {
        Ok(Ok(tls)) => Box::new(tls),
        Ok(Err(e)) => {
            reject(tls_failure_reason(&e), &e);
            return;
        }
        Err(_) => {
            reject("handshake_timeout", &"no handshake in time");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    let Some(client) = peer_identity(conn.peer_certificates()) else {
        reject("no_identity", &"client certificate carries no SPIFFE ID");
        return;
    };
    if client.trust_domain() != creds.identity().trust_domain() {
        reject("foreign_trust_domain", &client);
        return;
    }
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let labels = TcpLabels {
        direction: Direction::inbound,
        peer: client.spiffe_id(),
    };
    let _open = shared.metrics.open_connection(labels.clone());
    let io = CountingIo::new(
        tls,
        shared.metrics.tcp_read.get_or_create(&labels).clone(),
        shared.metrics.tcp_write.get_or_create(&labels).clone(),
    );
    let version = match alpn.as_deref() {
        Some(ALPN_H2) => Detected::Http2,
        Some(ALPN_HTTP1) => Detected::Http1,
        _ => Detected::Opaque,
    };
    if version == Detected::Opaque {
        if authorize(&shared, &client, server_port) != Decision::Allow {
            return;
        }
        Box::pin(forward_opaque(io, app_addr)).await;
        return;
    }
    let metrics = RequestMetrics::new(
        &shared.metrics,
        RequestLabels {
            direction: Direction::inbound,
            service: format!("{}/{}", shared.config.namespace, shared.config.workload),
            peer: client.spiffe_id(),
        },
    );
    let client = Arc::new(client);
    let svc = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            let client = client.clone();
            let app = app.clone();
            let metrics = metrics.clone();
            async move {
                Ok::<_, Infallible>(
                    to_app(req, &client, server_port, app_addr, &app, &shared, &metrics).await,
                )
            }
        })
    };
    Box::pin(serve_http(io, version, svc, &shared)).await;
}

/// Names a handshake failure for logs and metrics.
fn tls_failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(err) = e.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return "handshake_failed";
    };
    match err {
        Error::InvalidMessage(_) => "not_tls",
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_ca",
        Error::InvalidCertificate(CertificateError::BadSignature) => "unknown_ca",
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "expired_certificate",
        Error::InvalidCertificate(_) => "bad_certificate",
        Error::PeerIncompatible(_) | Error::NoApplicationProtocol => "incompatible_peer",
        _ => "handshake_failed",
    }
}

/// Applies the policy of the server on `port` to `client`, counting denials.
fn authorize(shared: &Shared, client: &Identity, port: u16) -> Decision {
    let decision = match shared.settings.borrow().as_ref() {
        Some(settings) => settings.policy(port).authorize(client),
        // Without settings the policy is unknown: fail closed.
        None => Decision::Deny,
    };
    if decision == Decision::Deny {
        tracing::info!(%client, port, "inbound denied by policy");
        shared
            .metrics
            .authz_denied
            .get_or_create(&DenyLabels {
                client: client.spiffe_id(),
            })
            .inc();
    }
    decision
}

async fn to_app(
    req: Request<Incoming>,
    client: &Identity,
    server_port: u16,
    app_addr: SocketAddr,
    app: &PlainPool,
    shared: &Shared,
    metrics: &RequestMetrics,
) -> Response<Body> {
    if authorize(shared, client, server_port) == Decision::Deny {
        return error_response(
            StatusCode::FORBIDDEN,
            &format!("{client} is not authorized to call this workload"),
        );
    }
    metrics.request();
    let started = tokio::time::Instant::now();
    let mut req = req.map(boxed);

    let rsp = if is_upgrade(&req) {
        match TcpStream::connect(app_addr).await {
            Ok(tcp) => forward_upgrade(req, tcp, shared)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("application at {app_addr}: {e}")),
        }
    } else {
        // Restore what the client proxy carried over HTTP/2.
        if let Some(orig) = req.headers_mut().remove(ORIG_PROTO) {
            *req.version_mut() = if orig == "HTTP/1.0" {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            if !req.headers().contains_key(HOST)
                && let Some(authority) = req.uri().authority()
                && let Ok(v) = HeaderValue::from_str(authority.as_str())
            {
                req.headers_mut().insert(HOST, v);
            }
        }
        strip_hop_by_hop(req.headers_mut());
        app.send(req)
            .await
            .map_err(|e| format!("application at {app_addr}: {e}"))
    };
    let rsp = match rsp {
        Ok(mut rsp) => {
            if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
                strip_hop_by_hop(rsp.headers_mut());
            }
            rsp
        }
        Err(reason) => {
            tracing::info!(%reason, "inbound request failed");
            error_response(StatusCode::BAD_GATEWAY, &reason)
        }
    };
    metrics.observe(rsp, started)
}

async fn forward_opaque<I>(mut io: I, app_addr: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match TcpStream::connect(app_addr).await {
        Ok(mut app) => {
            let _ = app.set_nodelay(true);
            if let Err(e) = crate::splice::splice(&mut io, &mut app).await {
                tracing::debug!(error = %e, "inbound TCP closed with an error");
            }
        }
        Err(e) => tracing::info!(%app_addr, error = %e, "application unreachable"),
    }
}
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Every connection's task is as large as its future; the heavy states (handshake, HTTP
    /// server, splice) are boxed so an idle connection pays only for what it uses. This keeps
    /// someone from inlining them again unnoticed.
    #[tokio::test]
    async fn connection_futures_stay_small() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = <crate::ProxyConfig as clap::Parser>::try_parse_from([
            "weft-proxy",
            "--trust-bundle",
            &dir.path().join("none.pem").display().to_string(),
            "--token-file",
            &dir.path().join("none").display().to_string(),
            "--workload",
            "web",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .unwrap();
        let proxy = crate::Proxy::start(cfg).await.unwrap();
        let shared = proxy.shared().clone();
        let inbound = handle(
            TcpStream::connect(addr).await.unwrap(),
            addr,
            addr,
            PlainPool::new(addr, PoolLimits::default()),
            shared.clone(),
        );
        let target = Arc::new(weft_core::Target::parse("api.demo", "demo").unwrap());
        let outbound = crate::outbound::handle(
            TcpStream::connect(addr).await.unwrap(),
            addr,
            target,
            shared,
        );
        assert!(
            std::mem::size_of_val(&inbound) <= 2048,
            "{}",
            std::mem::size_of_val(&inbound)
        );
        assert!(
            std::mem::size_of_val(&outbound) <= 512,
            "{}",
            std::mem::size_of_val(&outbound)
        );
    }
}
