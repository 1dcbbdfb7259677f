//! The destination gate: a request goes on to the balancer only if its destination can take
//! it. The mesh policy denying the call is a 403; a name that is not a service of the mesh, or
//! a service without a ready endpoint, a 503. A request that waited for an endpoint until
//! fail-fast gave up is looked at again, since the control plane's answer (a denial) may have
//! come meanwhile; any other failure gets the destination's name before its reason.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use weft_core::Target;

use super::destination::{Destination, Lease};
use crate::discovery::Resolution;
use crate::errors::{HttpError, Kind, Who};
use crate::http::{Body, BoxError};

/// Why `dest` cannot be routed to right now, if its resolution says so.
pub fn unroutable(dest: &Destination) -> Option<HttpError> {
    let target = &dest.target;
    match &*dest.resolution.borrow() {
        // No answer yet: wait for one within the dispatch timeout.
        Resolution::Pending => None,
        Resolution::Denied(reason) => Some(HttpError::denied(format!(
            "{target}: denied by the mesh policy: {reason}"
        ))),
        // An address outside the mesh is reached as it is.
        Resolution::NotInMesh if matches!(target, Target::Address(_)) => None,
        Resolution::NotInMesh => Some(HttpError::unavailable(
            Who::Caller,
            format!("{target} is not a service of the mesh"),
        )),
        Resolution::Resolved(r) if !r.has_usable() => Some(HttpError::unavailable(
            Who::Peer,
            format!("{target} has no ready endpoint"),
        )),
        Resolution::Resolved(_) => None,
    }
}

/// The layer. See the module docs.
#[derive(Clone, Debug)]
pub struct Gate<S> {
    inner: S,
    dest: Arc<Lease>,
}

impl<S> Gate<S> {
    /// Lets requests to `dest` through to `inner` while it can take them.
    pub fn new(inner: S, dest: Arc<Lease>) -> Self {
        Self { inner, dest }
    }
}

impl<S> tower::Service<Request<Body>> for Gate<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = GateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match unroutable(&self.dest) {
            Some(e) => GateFuture::Refused { error: Some(e) },
            None => GateFuture::Called {
                inner: self.inner.call(req),
                dest: self.dest.clone(),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Gate`]'s future.
    #[project = Proj]
    pub enum GateFuture<F> {
        /// Refused before the balancer.
        Refused { error: Option<HttpError> },
        /// Passed to the balancer.
        Called { #[pin] inner: F, dest: Arc<Lease> },
    }
}

impl<F> Future for GateFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| HttpError::denied("polled again"))
                .into())),
            Proj::Called { inner, dest } => {
                let e = match ready!(inner.poll(cx)) {
                    Ok(rsp) => return Poll::Ready(Ok(rsp)),
                    Err(e) => HttpError::from_box(e),
                };
                // The answer may have come while the request waited.
                if e.kind() == Kind::Unavailable
                    && let Some(denied) = unroutable(dest).filter(|d| d.kind() == Kind::Denied)
                {
                    return Poll::Ready(Err(denied.into()));
                }
                Poll::Ready(Err(e.context(&dest.target).into()))
            }
        }
    }
}
