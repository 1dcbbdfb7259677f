//! Sending again what a [`PlainPool`] connection handed back unsent: at most [`RETRIES`]
//! times, each attempt one [`PlainPool::try_send`], so nothing is hidden from the caller;
//! when every attempt came back unsent, the error says so ([`PoolError::NotSent`], safe to
//! retry anywhere).

use http::{Request, Response};

use super::pool::{RETRIES, TrySendError};
use super::{Body, PlainPool, PoolError};

/// Sends `req` on `pool`, again while it comes back unsent, at most [`RETRIES`] more times.
pub async fn send(pool: &PlainPool, mut req: Request<Body>) -> Result<Response<Body>, PoolError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match pool.try_send(req).await {
            Ok(rsp) => return Ok(rsp),
            Err(TrySendError::Failed(e)) => return Err(e),
            Err(TrySendError::NotSent { request, cause }) if attempts <= RETRIES => {
                tracing::debug!(addr = %pool.addr(), error = %cause, attempts, "request not sent; sending it again");
                req = request;
            }
            Err(TrySendError::NotSent { cause, .. }) => {
                return Err(PoolError::NotSent {
                    attempts,
                    source: cause,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{StatusCode, Version};
    use tokio::net::TcpListener;

    use super::*;
    use crate::errors::RetrySafe;
    use crate::http::PoolLimits;
    use crate::http::classify::empty_body;

    /// An HTTP/2 server that refuses the first `refuse` streams (RST_STREAM REFUSED_STREAM)
    /// and answers the rest with 200; counts the streams it saw.
    async fn refusing(refuse: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let mut conn = h2::server::handshake(tcp).await.unwrap();
            while let Some(Ok((_, mut respond))) = conn.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                if n < refuse {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                } else {
                    let rsp = http::Response::new(());
                    respond.send_response(rsp, true).unwrap();
                }
            }
        });
        (addr, seen)
    }

    fn get() -> Request<Body> {
        Request::get("http://app.test/")
            .version(Version::HTTP_2)
            .body(empty_body())
            .unwrap()
    }

    /// A refused request comes back from one attempt, whole, and goes through on the next:
    /// every attempt is visible to the caller.
    #[tokio::test]
    async fn a_refused_request_is_handed_back_then_sent_again() {
        let (addr, seen) = refusing(1).await;
        let pool = PlainPool::new(addr, PoolLimits::default());
        let again = match pool.try_send(get()).await {
            Err(TrySendError::NotSent { request, .. }) => request,
            other => panic!("not handed back: {other:?}"),
        };
        assert_eq!(again.uri(), "http://app.test/");
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        let rsp = pool.try_send(again).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }

    /// `send` tries at most 1 + RETRIES times, then reports the request as not sent.
    #[tokio::test]
    async fn send_gives_up_after_its_retries_and_says_not_sent() {
        let (addr, seen) = refusing(usize::MAX).await;
        let pool = PlainPool::new(addr, PoolLimits::default());
        let e = send(&pool, get()).await.unwrap_err();
        assert!(matches!(e, PoolError::NotSent { attempts: 3, .. }), "{e}");
        assert_eq!(e.retry_safe(), RetrySafe::NotSent);
        assert_eq!(seen.load(Ordering::SeqCst), 1 + RETRIES);

        let (addr, _) = refusing(RETRIES).await;
        let pool = PlainPool::new(addr, PoolLimits::default());
        assert_eq!(send(&pool, get()).await.unwrap().status(), StatusCode::OK);
    }
}
