//! The client of an endpoint outside the mesh (plaintext): a [`PlainPool`] of its own,
//! always ready unless it is resting after a failed connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};

use super::Rest;
use crate::discovery::EndpointView;
use crate::errors::{HttpError, Kind, Who};
use crate::http::{Body, BoxError, PlainPool, PoolError, PoolLimits, resend};

/// See the module docs.
pub struct PlainClient {
    pool: PlainPool,
    /// Fed by what the last requests learnt of the endpoint; read by `poll_ready`.
    rest: Rest,
}

impl std::fmt::Debug for PlainClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainClient")
            .field("address", &self.pool.addr())
            .finish()
    }
}

impl PlainClient {
    /// The client of `ep`, connecting within `connect_timeout`.
    pub fn new(ep: &EndpointView, connect_timeout: Duration) -> Self {
        Self {
            pool: PlainPool::new(
                ep.address,
                PoolLimits {
                    connect_timeout,
                    ..PoolLimits::default()
                },
            ),
            rest: Rest::default(),
        }
    }
}

/// The error a pool's failure becomes on the outbound side: the peer failed, unless the
/// request could not be carried at all.
pub fn pool_error(e: &PoolError, who: Who) -> HttpError {
    let who = match e {
        PoolError::Target(_) => Who::Caller,
        _ => who,
    };
    HttpError::new(Kind::BadGateway, who, e.retry_safe(), e.to_string())
}

impl tower::Service<Request<Body>> for PlainClient {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.rest.poll_ready(cx, self.pool.addr()).map(Ok)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let pool = self.pool.clone();
        let health = self.rest.health.clone();
        Box::pin(async move {
            let rsp = resend::send(&pool, req).await;
            match &rsp {
                Ok(_) => health.record(true),
                Err(e) if e.is_connect() => health.record(false),
                Err(_) => {}
            }
            rsp.map_err(|e| pool_error(&e, Who::Peer).into())
        })
    }
}
