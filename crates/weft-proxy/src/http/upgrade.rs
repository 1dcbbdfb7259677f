//! Connection upgrades (WebSocket and other HTTP/1.1 upgrades, CONNECT): the request goes over
//! a fresh HTTP/1.1 connection of its own, and once both sides have switched protocols the two
//! connections are spliced.

use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::{Body, BoxError, boxed};
use crate::runtime::Drain;

/// Once both sides of an upgrade have switched protocols, copies bytes between them until
/// either closes. The copy is one of the proxy's connections: a drain waits for it and closes
/// it at the grace deadline.
pub fn splice_upgrades(downstream: OnUpgrade, upstream: OnUpgrade, drain: &Drain) {
    drain.spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut down = TokioIo::new(down);
        let mut up = TokioIo::new(up);
        if let Err(e) = crate::splice::splice(&mut down, &mut up).await {
            tracing::debug!(error = %e, "upgraded connection closed with an error");
        }
    });
}

/// Sends an upgrade request over a fresh HTTP/1.1 connection `io`; if the server switches
/// protocols, splices the two upgraded connections.
pub async fn forward_upgrade<T>(
    mut req: Request<Body>,
    io: T,
    drain: &Drain,
) -> Result<Response<Body>, BoxError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let downstream = req.extensions_mut().remove::<OnUpgrade>();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection failed");
        }
    });
    let mut rsp = send.send_request(req).await?;
    if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut rsp);
        match downstream {
            Some(down) => splice_upgrades(down, upstream, drain),
            None => return Err("the client connection cannot be upgraded".into()),
        }
    }
    Ok(rsp.map(boxed))
}
