//! The tap listener (`--tap-addr`): `Tap.Watch` over mutual TLS, to the identities the mesh
//! allows to tap this proxy, by default the control plane alone ([`crate::observe::tap`] holds
//! the watches).
//!
//! Any mesh identity may complete the handshake; a caller the mesh does not allow gets
//! `PERMISSION_DENIED`. The listener holds at most [`MAX_CONNECTIONS`] connections, and one
//! that has not finished its handshake within [`HANDSHAKE_TIMEOUT`] is closed.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::{Request, Response, Status};
use weft_api::v1::tap_server::{Tap, TapServer};
use weft_api::{TapEvent, TapRequest};
use weft_ca::tls::peer_identity;
use weft_core::Identity;
use weft_core::listener::ConnectionLimits;

use crate::Runtime;
use crate::observe::tap::Filter;

/// Connections the tap listener holds at once.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `Tap` on `listener` until the proxy stops.
pub async fn serve(listener: TcpListener, shared: Arc<Runtime>) {
    let limits = ConnectionLimits::new(MAX_CONNECTIONS, MAX_CONNECTIONS / 4);
    let stop = shared.drain.closing.clone();
    loop {
        let (tcp, remote) = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "tap accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = limits.try_admit(remote.ip()) else {
            tracing::debug!(%remote, "tap connection over the listener's bounds; closed");
            continue;
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Some(creds) = shared.credentials.borrow().clone() else {
                return;
            };
            let acceptor = TlsAcceptor::from(creds.server_config());
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "tap handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let Some(caller) = peer_identity(tls.get_ref().1.peer_certificates()) else {
                return;
            };
            let svc = TapServer::new(TapService {
                shared: shared.clone(),
                caller,
            });
            let hyper_svc =
                hyper::service::service_fn(move |req| tower::ServiceExt::oneshot(svc.clone(), req));
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), hyper_svc);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

/// `Tap` for one connection's caller.
#[derive(Debug)]
struct TapService {
    shared: Arc<Runtime>,
    caller: Identity,
}

type Events = Pin<Box<dyn Stream<Item = Result<TapEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Tap for TapService {
    type WatchStream = Events;

    async fn watch(&self, request: Request<TapRequest>) -> Result<Response<Events>, Status> {
        if !self.shared.observer.may_tap(&self.caller) {
            tracing::info!(caller = %self.caller, "tap refused: the mesh does not allow this identity to tap");
            return Err(Status::permission_denied(format!(
                "{} may not tap this proxy",
                self.caller
            )));
        }
        let r = request.into_inner();
        let rx = self
            .shared
            .observer
            .taps
            .watch(Filter::from(&r), r.max_per_second)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        tracing::info!(caller = %self.caller, "tap started");
        let events = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(futures_util::StreamExt::map(
            events, Ok,
        ))))
    }
}
