//! The client of the local application, the bottom of the inbound stack: requests go over the
//! application's connection pool (sending again what a connection handed back unsent), and
//! upgrades over a connection of their own. A failure is the application's: 502.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};

use super::forward_source;
use crate::errors::{HttpError, Kind, RetrySafe, Who};
use crate::http::upgrade::forward_upgrade;
use crate::http::{Body, BoxError, PlainPool, is_upgrade, resend};
use crate::outbound::endpoint::plain::pool_error;
use crate::runtime::Drain;

/// See the module docs.
#[derive(Clone, Debug)]
pub struct App {
    addr: SocketAddr,
    pool: PlainPool,
    drain: Drain,
}

impl App {
    /// The application at `addr`, reached through `pool`; spliced upgrades join `drain`.
    pub fn new(addr: SocketAddr, pool: PlainPool, drain: Drain) -> Self {
        Self { addr, pool, drain }
    }
}

impl tower::Service<Request<Body>> for App {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let addr = self.addr;
        if is_upgrade(&req) {
            let drain = self.drain.clone();
            return Box::pin(async move {
                let tcp = crate::io::dial(addr, forward_source(addr))
                    .await
                    .map_err(|e| {
                        HttpError::new(
                            Kind::BadGateway,
                            Who::Application,
                            RetrySafe::NotSent,
                            format!("application at {addr}: {e}"),
                        )
                    })?;
                forward_upgrade(req, tcp, &drain).await.map_err(|e| {
                    let e = HttpError::new(
                        Kind::BadGateway,
                        Who::Application,
                        RetrySafe::IfIdempotent,
                        format!("application at {addr}: {e}"),
                    );
                    BoxError::from(e)
                })
            });
        }
        let pool = self.pool.clone();
        Box::pin(async move {
            resend::send(&pool, req).await.map_err(|e| {
                BoxError::from(
                    pool_error(&e, Who::Application)
                        .context(&format_args!("application at {addr}")),
                )
            })
        })
    }
}
