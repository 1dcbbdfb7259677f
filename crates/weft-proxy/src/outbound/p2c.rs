//! Power-of-two-choices over a destination's endpoints, that can steer a retry away from the
//! endpoint the call's previous attempt went to.
//!
//! Endpoints come from a [`Discover`] stream and wait in tower's [`ReadyCache`] until they
//! are ready. A pick draws two ready endpoints at random and takes the one with the lower
//! load (peak-EWMA latency, from the layer below). An attempt of a call that may be retried
//! is announced with the call's [`Attempted`] (every attempt shares one) before its pick
//! ([`Balance::avoid`]; it travels beside the request rather than in its extensions, which
//! would cost a map per attempt): the pick records where it went, and the next attempt's pick
//! leaves that endpoint out while another is ready, so a retry goes to another endpoint where
//! one exists, and to the same one only when it is the only one ready.

use std::hash::Hash;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use std::future::{Ready, ready};

use futures_util::TryFutureExt;
use futures_util::future::Either;
use tower::Service;
use tower::discover::{Change, Discover};
use tower::load::Load;
use tower::ready_cache::ReadyCache;
use tower::ready_cache::error::Failed;

use crate::discovery::EndpointView;
use crate::http::BoxError;

/// The endpoint the last attempt of a call went to, shared by all its attempts.
#[derive(Clone, Debug, Default)]
pub struct Attempted(Arc<Mutex<Option<SocketAddr>>>);

impl Attempted {
    /// Where the last attempt went, if one was sent.
    pub fn last(&self) -> Option<SocketAddr> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, addr: SocketAddr) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(addr);
    }
}

/// An endpoint key: where it is.
pub trait Located {
    /// The endpoint's address.
    fn address(&self) -> SocketAddr;
}

impl Located for EndpointView {
    fn address(&self) -> SocketAddr {
        self.address
    }
}

/// The balancer. See the module docs.
pub struct Balance<D: Discover, Req>
where
    D::Key: Hash,
{
    discover: D,
    services: ReadyCache<D::Key, D::Service, Req>,
    /// The endpoint picked by the last readiness check, for the next call.
    ready_index: Option<usize>,
    /// The endpoint the next pick leaves out while another is ready.
    avoid: Option<SocketAddr>,
    /// The attempts of the call the next pick is for, which learn where it went.
    attempts: Option<Attempted>,
    _req: PhantomData<fn(Req)>,
}

impl<D: Discover, Req> std::fmt::Debug for Balance<D, Req>
where
    D::Key: Hash,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balance")
            .field("ready", &self.services.ready_len())
            .field("pending", &self.services.pending_len())
            .finish()
    }
}

impl<D, Req> Balance<D, Req>
where
    D: Discover + Unpin,
    D::Key: Hash + Clone + Located,
    D::Error: Into<BoxError>,
    D::Service: Service<Req> + Load,
    <D::Service as Load>::Metric: PartialOrd,
    <D::Service as Service<Req>>::Error: Into<BoxError>,
{
    /// Balances over the endpoints `discover` reports.
    pub fn new(discover: D) -> Self {
        Self {
            discover,
            services: ReadyCache::default(),
            ready_index: None,
            avoid: None,
            attempts: None,
            _req: PhantomData,
        }
    }

    /// Readies the next pick for one attempt of a call that may be retried (`attempts`; `None`
    /// for any other): it leaves out where the last attempt went while another endpoint is
    /// ready, and records where it goes.
    pub fn avoid(&mut self, attempts: Option<&Attempted>) {
        let addr = attempts.and_then(Attempted::last);
        self.attempts = attempts.cloned();
        self.avoid = addr;
        if let (Some(a), Some(i)) = (addr, self.ready_index)
            && self.services.ready_len() > 1
            && self.address_at(i) == Some(a)
        {
            self.ready_index = None;
        }
    }

    fn address_at(&self, index: usize) -> Option<SocketAddr> {
        self.services
            .get_ready_index(index)
            .map(|(k, _)| k.address())
    }

    fn load_at(&self, index: usize) -> Option<<D::Service as Load>::Metric> {
        self.services.get_ready_index(index).map(|(_, s)| s.load())
    }

    /// Takes in what discovery reported.
    fn discover(&mut self, cx: &mut Context<'_>) -> Result<(), BoxError> {
        loop {
            match Pin::new(&mut self.discover).poll_discover(cx) {
                Poll::Pending | Poll::Ready(None) => return Ok(()),
                Poll::Ready(Some(Err(e))) => return Err(e.into()),
                Poll::Ready(Some(Ok(Change::Insert(key, svc)))) => self.services.push(key, svc),
                Poll::Ready(Some(Ok(Change::Remove(key)))) => {
                    self.services.evict(&key);
                }
            }
        }
    }

    /// Moves the endpoints that became ready to the ready set, dropping those that failed.
    fn promote(&mut self, cx: &mut Context<'_>) {
        while let Poll::Ready(Err(e)) = self.services.poll_pending(cx) {
            tracing::debug!(error = %e, "dropping a failed endpoint");
        }
    }

    /// Two ready endpoints drawn at random (leaving out the one to avoid while another is
    /// ready), the less loaded of them.
    fn pick(&self) -> Option<usize> {
        let n = self.services.ready_len();
        let avoid = self.avoid;
        let allowed: Vec<usize> = match avoid {
            Some(a) if n > 1 => (0..n).filter(|&i| self.address_at(i) != Some(a)).collect(),
            _ => Vec::new(),
        };
        let (count, at) = if allowed.is_empty() {
            (n, None)
        } else {
            (allowed.len(), Some(&allowed))
        };
        let index = |k: usize| at.map_or(k, |a| a[k]);
        match count {
            0 => None,
            1 => Some(index(0)),
            _ => {
                let a = fastrand::usize(..count);
                let mut b = fastrand::usize(..count - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (index(a), index(b));
                let better = match (self.load_at(a), self.load_at(b)) {
                    (Some(la), Some(lb)) if lb < la => b,
                    _ => a,
                };
                Some(better)
            }
        }
    }
}

impl<D, Req> Service<Req> for Balance<D, Req>
where
    D: Discover + Unpin,
    D::Key: Hash + Clone + Located,
    D::Error: Into<BoxError>,
    D::Service: Service<Req> + Load,
    <D::Service as Load>::Metric: PartialOrd,
    <D::Service as Service<Req>>::Error: Into<BoxError>,
{
    type Response = <D::Service as Service<Req>>::Response;
    type Error = BoxError;
    type Future = Either<
        Ready<Result<Self::Response, BoxError>>,
        futures_util::future::MapErr<
            <D::Service as Service<Req>>::Future,
            fn(<D::Service as Service<Req>>::Error) -> BoxError,
        >,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.discover(cx)?;
        self.promote(cx);
        loop {
            if let Some(index) = self.ready_index.take() {
                match self.services.check_ready_index(cx, index) {
                    Ok(true) => {
                        self.ready_index = Some(index);
                        return Poll::Ready(Ok(()));
                    }
                    Ok(false) => {}
                    Err(Failed(_, e)) => tracing::debug!(error = %e, "endpoint failed"),
                }
            }
            self.ready_index = self.pick();
            if self.ready_index.is_none() {
                return Poll::Pending;
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(index) = self.ready_index.take() else {
            // A caller that broke the contract: fail its call rather than the proxy.
            return Either::Left(ready(Err("balancer called before it was ready".into())));
        };
        self.avoid = None;
        if let (Some(a), Some(addr)) = (self.attempts.take(), self.address_at(index)) {
            a.record(addr);
        }
        Either::Right(
            self.services
                .call_ready_index(index, req)
                .map_err(Into::into as fn(_) -> BoxError),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use futures_util::{StreamExt, stream};
    use http::Request;

    use super::*;

    /// An endpoint that answers with its address, at a fixed load.
    struct Fixed {
        addr: SocketAddr,
        load: u32,
    }

    impl Service<Request<()>> for Fixed {
        type Response = SocketAddr;
        type Error = BoxError;
        type Future = Ready<Result<SocketAddr, BoxError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            ready(Ok(self.addr))
        }
    }

    impl Load for Fixed {
        type Metric = u32;
        fn load(&self) -> u32 {
            self.load
        }
    }

    fn endpoint(port: u16, load: u32) -> Change<EndpointView, Fixed> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Change::Insert(
            EndpointView {
                address: addr,
                identity: None,
            },
            Fixed { addr, load },
        )
    }

    async fn send(
        b: &mut Balance<
            impl Discover<Key = EndpointView, Service = Fixed, Error = BoxError> + Unpin,
            Request<()>,
        >,
        attempts: Option<&Attempted>,
    ) -> SocketAddr {
        b.avoid(attempts);
        poll_fn(|cx| b.poll_ready(cx)).await.unwrap();
        b.call(Request::new(())).await.unwrap()
    }

    /// Two endpoints, one always less loaded: p2c takes it, except for a retry whose previous
    /// attempt went there; with one endpoint, a retry goes to it again.
    #[tokio::test]
    async fn a_retry_goes_to_another_endpoint_where_one_is_ready() {
        let changes: Vec<Result<_, BoxError>> = vec![Ok(endpoint(1, 1)), Ok(endpoint(2, 9))];
        let mut b = Balance::new(stream::iter(changes).chain(stream::pending()));
        let light = SocketAddr::from(([127, 0, 0, 1], 1));
        let heavy = SocketAddr::from(([127, 0, 0, 1], 2));
        for _ in 0..20 {
            assert_eq!(send(&mut b, None).await, light);
        }
        let attempts = Attempted::default();
        assert_eq!(send(&mut b, Some(&attempts)).await, light);
        assert_eq!(attempts.last(), Some(light));
        for _ in 0..5 {
            // Each attempt leaves out where the one before went.
            assert_eq!(send(&mut b, Some(&attempts)).await, heavy);
            assert_eq!(send(&mut b, Some(&attempts)).await, light);
        }

        let changes: Vec<Result<_, BoxError>> = vec![Ok(endpoint(3, 1))];
        let mut one = Balance::new(stream::iter(changes).chain(stream::pending()));
        let only = SocketAddr::from(([127, 0, 0, 1], 3));
        let attempts = Attempted::default();
        for _ in 0..2 {
            assert_eq!(send(&mut one, Some(&attempts)).await, only);
        }
    }
}
