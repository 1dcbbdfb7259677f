//! Authorization on the inbound side: the policy of the server (the port the client dialed)
//! decides on the client's identity, or on its lack of one. A connection is decided once when
//! it is admitted ([`Authorizer::authorize`]), and each of its HTTP requests again by the
//! [`Authorize`] layer, so a policy edit applies to connections already open. Without settings
//! the policy is unknown and every client is denied. Denials are logged and counted in
//! `weft_inbound_authz_denied_total`.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::{Request, Response};
use weft_core::Identity;
use weft_core::policy::Decision;

use super::UNAUTHENTICATED;
use super::ratelimit::RateLimits;
use crate::errors::HttpError;
use crate::http::{Body, BoxError};
use crate::metrics::{DenyLabels, Metrics};
use crate::runtime::SettingsWatch;

/// The policies, the counter of what they deny, and the servers' rate-limit buckets.
#[derive(Clone, Debug)]
pub struct Authorizer {
    settings: SettingsWatch,
    metrics: Metrics,
    limits: Arc<RateLimits>,
}

impl Authorizer {
    /// Decides by the policies in `settings`, counting denials in `metrics`, with the
    /// proxy's rate-limit buckets `limits`.
    pub fn new(settings: SettingsWatch, metrics: Metrics, limits: Arc<RateLimits>) -> Self {
        Self {
            settings,
            metrics,
            limits,
        }
    }

    /// Admits a request of `client` under the rate limit of the server on `port`, if it has
    /// one, or says how long until it would be admitted.
    pub fn rate_limit(&self, client: Option<&Identity>, port: u16) -> Result<(), Duration> {
        let settings = self.settings.borrow();
        match settings
            .as_ref()
            .and_then(|s| s.policy(port).rate_limit.as_ref())
        {
            None => Ok(()),
            Some(limit) => self.limits.admit(port, limit, client),
        }
    }

    /// What the policy of the server on `port` says of `client` (`None`: a client without a
    /// mesh identity), without counting it.
    pub fn decide(&self, client: Option<&Identity>, port: u16) -> Decision {
        match (self.settings.borrow().as_ref(), client) {
            (Some(settings), Some(client)) => settings.policy(port).authorize(client),
            (Some(settings), None) => settings.policy(port).authorize_unauthenticated(),
            // Without settings the policy is unknown: fail closed.
            (None, _) => Decision::Deny,
        }
    }

    /// Applies the policy of the server on `port` to `client`, counting a denial, and under
    /// `audit` a client a denial would have refused (it is let through).
    pub fn authorize(&self, client: Option<&Identity>, port: u16) -> Decision {
        let decision = self.decide(client, port);
        let family = match decision {
            Decision::Deny => &self.metrics.authz_denied,
            Decision::Audit => &self.metrics.authz_audited,
            Decision::Allow | Decision::AllowUnauthenticated => return decision,
        };
        let who = client.map_or_else(|| UNAUTHENTICATED.to_string(), Identity::spiffe_id);
        if decision == Decision::Deny {
            tracing::info!(client = %who, port, "inbound denied by policy");
        } else {
            tracing::info!(client = %who, port, "inbound audit: a deny would refuse this client");
        }
        family.get_or_create(&DenyLabels { client: who }).inc();
        decision
    }
}

/// Who is calling, on which server: fixed for a connection.
#[derive(Debug)]
pub struct Caller {
    /// The policies.
    pub authorizer: Authorizer,
    /// The client's identity (`None`: none).
    pub client: Option<Arc<Identity>>,
    /// The port the client dialed.
    pub server_port: u16,
}

/// The per-request check. See the module docs.
#[derive(Clone, Debug)]
pub struct Authorize<S> {
    inner: S,
    caller: Arc<Caller>,
}

impl<S> Authorize<S> {
    /// Checks each request of `caller` before `inner`.
    pub fn new(inner: S, caller: Arc<Caller>) -> Self {
        Self { inner, caller }
    }
}

impl<S> tower::Service<Request<Body>> for Authorize<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<Ready<Result<Response<Body>, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let c = &self.caller;
        if !c
            .authorizer
            .authorize(c.client.as_deref(), c.server_port)
            .admits()
        {
            let who = c.client.as_deref().map_or_else(
                || "a client without a mesh identity".to_string(),
                |c| c.to_string(),
            );
            let e = HttpError::denied(format!("{who} is not authorized to call this workload"));
            return Either::Left(ready(Err(e.into())));
        }
        Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::watch;
    use tower::ServiceExt;
    use weft_core::policy::{IdentityMatch, InboundPolicy};

    use super::*;
    use crate::discovery::ProxySettings;
    use crate::errors::{Kind, Who};
    use crate::http::classify::empty_body;

    /// Answers 200 to whatever reaches it.
    fn ok() -> impl tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = BoxError,
        Future = std::future::Ready<Result<Response<Body>, BoxError>>,
    > + Clone {
        tower::service_fn(|_: Request<Body>| std::future::ready(Ok(Response::new(empty_body()))))
    }

    fn only(allowed: &str) -> Option<Arc<ProxySettings>> {
        Some(Arc::new(ProxySettings {
            default: InboundPolicy {
                default: Decision::Deny,
                allow: vec![allowed.parse::<IdentityMatch>().unwrap()],
                rate_limit: None,
            },
            ..ProxySettings::default()
        }))
    }

    fn caller(
        settings: &watch::Sender<Option<Arc<ProxySettings>>>,
        metrics: &Metrics,
        id: &str,
    ) -> Arc<Caller> {
        Arc::new(Caller {
            authorizer: Authorizer::new(settings.subscribe(), metrics.clone(), Arc::default()),
            client: Some(Arc::new(id.parse().unwrap())),
            server_port: 8080,
        })
    }

    /// Each request is decided by the policy in force when it comes, so an edit reaches a
    /// connection already open; the denial is typed and counted; no settings means deny.
    #[tokio::test]
    async fn each_request_is_decided_by_the_current_policy() {
        let metrics = Metrics::default();
        let (tx, _) = watch::channel(None);
        let web = "spiffe://weft.test/ns/demo/sa/web";
        let svc = Authorize::new(ok(), caller(&tx, &metrics, web));

        let e = svc
            .clone()
            .oneshot(Request::new(empty_body()))
            .await
            .unwrap_err();
        let e = HttpError::from_box(e);
        assert_eq!((e.kind(), e.who()), (Kind::Denied, Who::Caller));

        tx.send_replace(only("demo/web"));
        let rsp = svc
            .clone()
            .oneshot(Request::new(empty_body()))
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);

        tx.send_replace(only("demo/api"));
        let e = svc
            .clone()
            .oneshot(Request::new(empty_body()))
            .await
            .unwrap_err();
        assert!(HttpError::from_box(e).reason().contains(web));
        let text = metrics.encode();
        assert!(
            text.contains(&format!(
                "weft_inbound_authz_denied_total{{client=\"{web}\"}} 2"
            )),
            "{text}"
        );
    }
}
