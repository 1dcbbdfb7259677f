//! Authorization on the inbound side: the policy of the server (the port the client dialed)
//! decides on the client's identity, or its lack of one, and on each request
//! ([`weft_core::policy::authz`] says in which order rules apply). A connection is decided
//! once when it is admitted ([`Authorizer::authorize`]): opaque TCP in full, an HTTP
//! connection on whether any of its requests could be admitted. Each HTTP request is then
//! decided by the [`Authorize`] layer on its method, path and headers, by the policy in force
//! when it comes, so an edit applies to connections already open. Without settings the policy
//! is unknown and every client is denied. Denials are logged and counted in
//! `weft_inbound_authz_denied_total`, audited requests in `weft_inbound_authz_audited_total`,
//! each with the rule that decided (`default` for the server's default).

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::{Request, Response};
use weft_core::Identity;
use weft_core::policy::Decision;
use weft_core::policy::authz::{AuthzView, NoHttp, Request as Facts};

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

/// A decision, with the rule that made it when it is not a plain allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The decision.
    pub decision: Decision,
    /// The rule's label (`default` for the server's default); empty for an allow.
    pub rule: String,
}

/// An HTTP request as the authorization matchers see it.
struct View<'a, B>(&'a Request<B>);

impl<B> AuthzView for View<'_, B> {
    fn method(&self) -> &str {
        self.0.method().as_str()
    }
    fn path(&self) -> &str {
        self.0.uri().path()
    }
    fn header_values(&self, name: &str) -> Vec<Option<&str>> {
        self.0
            .headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().ok())
            .collect()
    }
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

    /// Admits a request `req` of `client` under the rate limits of the server on `port` that
    /// apply to it, or says how long until it would be admitted.
    pub fn rate_limit<B>(
        &self,
        client: Option<&Identity>,
        port: u16,
        req: &Request<B>,
    ) -> Result<(), Duration> {
        let settings = self.settings.borrow();
        let Some(settings) = settings.as_ref() else {
            return Ok(());
        };
        let view = View(req);
        for (i, limit) in settings.policy(port).rate_limits.iter().enumerate() {
            if limit.applies_to(&view) {
                self.limits.admit((port, i), limit, client)?;
            }
        }
        Ok(())
    }

    /// What the policy of the server on `port` says of `client` (`None`: a client without a
    /// mesh identity) and `req`, without counting it.
    pub fn decide<R: AuthzView>(
        &self,
        client: Option<&Identity>,
        port: u16,
        req: Facts<'_, R>,
    ) -> Outcome {
        let settings = self.settings.borrow();
        let Some(settings) = settings.as_ref() else {
            // Without settings the policy is unknown: fail closed.
            return Outcome {
                decision: Decision::Deny,
                rule: "no_policy".to_string(),
            };
        };
        let v = settings.policy(port).decide(client, req);
        let rule = if v.decision == Decision::Allow {
            String::new()
        } else {
            v.rule_label().to_string()
        };
        Outcome {
            decision: v.decision,
            rule,
        }
    }

    /// Applies the policy of the server on `port` to a connection of `client`, opaque or
    /// carrying HTTP, counting a denial.
    pub fn authorize(&self, client: Option<&Identity>, port: u16, opaque: bool) -> Decision {
        let facts = if opaque {
            Facts::<NoHttp>::Opaque
        } else {
            Facts::Connection
        };
        self.count::<()>(client, port, None, self.decide(client, port, facts))
    }

    /// Applies the policy of the server on `port` to a request of `client`, counting a
    /// denial or an audit.
    fn authorize_request<B>(
        &self,
        client: Option<&Identity>,
        port: u16,
        req: &Request<B>,
    ) -> Decision {
        let outcome = self.decide(client, port, Facts::Http(&View(req)));
        self.count(client, port, Some(req), outcome)
    }

    fn count<B>(
        &self,
        client: Option<&Identity>,
        port: u16,
        req: Option<&Request<B>>,
        outcome: Outcome,
    ) -> Decision {
        let family = match outcome.decision {
            Decision::Deny => &self.metrics.authz_denied,
            Decision::Audit => &self.metrics.authz_audited,
            Decision::Allow | Decision::AllowUnauthenticated => return outcome.decision,
        };
        let who = client.map_or_else(|| UNAUTHENTICATED.to_string(), Identity::spiffe_id);
        let (method, path) = req.map_or(("", ""), |r| (r.method().as_str(), r.uri().path()));
        if outcome.decision == Decision::Deny {
            tracing::info!(client = %who, port, rule = %outcome.rule, method, path, "inbound denied by policy");
        } else {
            tracing::info!(client = %who, port, rule = %outcome.rule, method, path, "inbound audit: enforcing the rule would refuse this");
        }
        family
            .get_or_create(&DenyLabels {
                client: who,
                rule: outcome.rule,
            })
            .inc();
        outcome.decision
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
            .authorize_request(c.client.as_deref(), c.server_port, &req)
            .admits()
        {
            let who = c.client.as_deref().map_or_else(
                || "a client without a mesh identity".to_string(),
                |c| c.to_string(),
            );
            let e = HttpError::denied(format!("{who} is not authorized to make this request"));
            return Either::Left(ready(Err(e.into())));
        }
        Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::watch;
    use tower::ServiceExt;
    use weft_core::policy::{AuthorizationRule, IdentityMatch, InboundPolicy};

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
                rules: vec![Arc::new(AuthorizationRule::allow(
                    weft_core::ServiceName::new("demo", "api").unwrap(),
                    vec![allowed.parse::<IdentityMatch>().unwrap()],
                ))],
                rate_limits: Vec::new(),
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
        for rule in ["no_policy", "default"] {
            assert!(
                text.contains(&format!(
                    "weft_inbound_authz_denied_total{{client=\"{web}\",rule=\"{rule}\"}} 1"
                )),
                "{text}"
            );
        }
    }
}
