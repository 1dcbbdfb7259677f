//! The route layer: picks the destination's route for each request and sends it where the
//! route says, after the route's filters.
//!
//! - No routes: straight to the destination's balancer (one pointer load).
//! - Routes, and one matches (gRPC routes for gRPC requests when there are any, HTTP routes
//!   otherwise): the rule's filters apply in order (a redirect answers at once; header
//!   modifiers and rewrites change the request), one backend is drawn by weight, its own
//!   filters apply, and the request goes to its balancer; response header modifiers apply to
//!   the answer.
//! - Routes, and none matches: 404, `UNIMPLEMENTED` for gRPC.
//! - The drawn backend does not exist, or every weight is 0: 500.
//! - The rule's timeouts and a gRPC caller's `grpc-timeout` bound the call
//!   ([`crate::http::timeout`]): 504, or `DEADLINE_EXCEEDED`.
//! - A rule with a retry policy sends failed attempts again ([`crate::http::retry`]), each
//!   attempt drawing its backend anew; the rule's response header modifiers apply to the
//!   answer that stands.
//! - A rule's faults ([`crate::http::fault`]) are drawn for each attempt, inside its retries
//!   and timeouts: a retry may mask an injected abort, a timeout cuts an injected delay.
//! - A rule's concurrency limit ([`crate::http::limit`]) holds a place for each call, from
//!   before its first attempt until its response has ended.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HOST, HeaderName, HeaderValue, LOCATION};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use tokio::time::Instant;
use weft_core::policy::fault::AbortWith;
use weft_core::policy::route::{
    HeaderModifier, HttpFilter, PathMatch, RedirectFrom, RequestView, RouteMatch, Timeouts,
};

use super::destination::Lease;
use super::p2c::Attempted;
use super::router::{BackendTarget, Routes, Split};
use crate::errors::{HttpError, Kind, RetrySafe, Who, is_grpc};
use crate::http::classify::empty_body;
use crate::http::retry::{self, RetryState};
use crate::http::{Body, BoxError, fault, limit, timeout};

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

/// The layer. See the module docs.
#[derive(Clone, Debug)]
pub struct Route {
    dest: Arc<Lease>,
}

impl Route {
    /// Routes the requests to `dest`.
    pub fn new(dest: Arc<Lease>) -> Self {
        Self { dest }
    }
}

/// A request as the matchers see it.
struct View<'a>(&'a Request<Body>);

impl RequestView for View<'_> {
    fn method(&self) -> &str {
        self.0.method().as_str()
    }
    fn path(&self) -> &str {
        self.0.uri().path()
    }
    fn query(&self) -> Option<&str> {
        self.0.uri().query()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.0
            .headers()
            .get_all(name)
            .iter()
            .find_map(|v| v.to_str().ok())
    }
}

impl tower::Service<Request<Body>> for Route {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> BoxFuture {
        let routes = self.dest.routes.borrow().clone();
        if routes.limiter.is_some() {
            // A place under the service's concurrency limit first, held until the response
            // has ended.
            let mut this = self.clone();
            return Box::pin(async move {
                let place = match routes.limiter.as_ref() {
                    Some(l) => Some(l.enter().await?),
                    None => None,
                };
                let rsp = this.unlimited(routes, req).await?;
                Ok(match place {
                    Some(p) => limit::hold(rsp, p),
                    None => rsp,
                })
            });
        }
        self.unlimited(routes, req)
    }
}

impl Route {
    /// Routes `req` by `routes`, once any service limit has let it through.
    fn unlimited(&mut self, routes: Arc<Routes>, req: Request<Body>) -> BoxFuture {
        if routes.is_empty() {
            let http = self.dest.http.clone();
            // A gRPC caller's own deadline holds without routes too.
            if is_grpc(&req)
                && let Some(at) = timeout::deadline(&req, true, None)
            {
                return Box::pin(timeout::within(at, true, req, |r| http.dispatch(r, None)));
            }
            return Box::pin(http.dispatch(req, None));
        }
        match route(&routes, &self.dest, req) {
            Ok(fut) => fut,
            Err(e) => Box::pin(std::future::ready(Err(e.into()))),
        }
    }
}

/// Which rule of which table a request matched.
#[derive(Clone, Copy, Debug)]
struct RuleAt {
    grpc: bool,
    route: usize,
    rule: usize,
}

impl RuleAt {
    fn split(self, routes: &Routes) -> Option<&Split> {
        if self.grpc {
            routes.grpc_split(self.route, self.rule)
        } else {
            routes.http_split(self.route, self.rule)
        }
    }
}

/// The rule `req` matches, with its filters and timeouts.
struct Matched<'a> {
    at: RuleAt,
    filters: &'a [HttpFilter],
    path: Option<&'a PathMatch>,
    timeouts: Timeouts,
}

fn find<'a>(routes: &'a Routes, req: &Request<Body>) -> Option<Matched<'a>> {
    let view = View(req);
    if !routes.grpc.routes().is_empty() && is_grpc(req) {
        let at: RouteMatch = routes.grpc.find(&view)?;
        let rule = routes.grpc.rule(at)?;
        return Some(Matched {
            at: RuleAt {
                grpc: true,
                route: at.route,
                rule: at.rule,
            },
            filters: &rule.filters,
            path: None,
            timeouts: rule.timeouts,
        });
    }
    let at = routes.http.find(&view)?;
    let rule = routes.http.rule(at)?;
    Some(Matched {
        at: RuleAt {
            grpc: false,
            route: at.route,
            rule: at.rule,
        },
        filters: &rule.filters,
        path: routes.http.matched(at).and_then(|m| m.path.as_ref()),
        timeouts: rule.timeouts,
    })
}

/// Of the requests like `req` that carry no trace context, the share (in millionths) its
/// route says the caller starts a trace for, if its route says.
pub fn trace_start(routes: &Routes, req: &Request<Body>) -> Option<u32> {
    if !routes.starts_traces {
        return None;
    }
    find(routes, req)?.at.split(routes)?.trace_start
}

fn route(
    routes: &Arc<Routes>,
    dest: &Arc<Lease>,
    mut req: Request<Body>,
) -> Result<BoxFuture, HttpError> {
    let Some(matched) = find(routes, &req) else {
        return Err(HttpError::new(
            Kind::NotFound,
            Who::Caller,
            RetrySafe::No,
            format!("no route matches {}", req.uri().path()),
        ));
    };
    if let Some(notes) = crate::observe::notes(&req)
        && let Some(split) = matched.at.split(routes)
    {
        notes.route(&split.route);
    }
    let mut response_headers: Vec<&HeaderModifier> = Vec::new();
    for f in matched.filters {
        match f {
            HttpFilter::Redirect(r) => {
                let location = {
                    let from = redirect_from(&req);
                    r.location(matched.path, from.as_ref())
                };
                let mut rsp = Response::new(empty_body());
                *rsp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND);
                if let Ok(v) = HeaderValue::from_str(&location) {
                    rsp.headers_mut().insert(LOCATION, v);
                }
                if let Some(m) = matched
                    .at
                    .split(routes)
                    .and_then(|s| s.local_metrics.as_ref())
                {
                    m.request();
                    rsp = m.observe(rsp, Instant::now());
                }
                return Ok(Box::pin(std::future::ready(Ok(rsp))));
            }
            HttpFilter::RequestHeaders(m) => modify(req.headers_mut(), m),
            HttpFilter::ResponseHeaders(m) => response_headers.push(m),
            HttpFilter::Rewrite(r) => {
                if let Some(p) = &r.path {
                    let path = p.apply(matched.path, req.uri().path());
                    set_path(&mut req, &path);
                }
                if let Some(h) = &r.hostname {
                    set_host(&mut req, h);
                }
            }
        }
    }
    let modifiers: Vec<HeaderModifier> = response_headers.into_iter().cloned().collect();
    let (at, timeouts) = (matched.at, matched.timeouts);
    let grpc = is_grpc(&req);
    let split = at.split(routes);
    let retry = split.and_then(|s| s.retry.clone());
    if split.is_none_or(|s| s.limiter.is_none()) {
        // No limit to wait for: the call is one future in one box, no `async` block.
        let call = call(routes, at, dest, retry, timeouts, grpc, req);
        if modifiers.is_empty() {
            return Ok(Box::pin(call));
        }
        return Ok(Box::pin(futures_util::FutureExt::map(call, move |rsp| {
            let mut rsp = rsp?;
            for m in &modifiers {
                modify(rsp.headers_mut(), m);
            }
            Ok(rsp)
        })));
    }
    let (routes, dest) = (routes.clone(), dest.clone());
    Ok(Box::pin(async move {
        // A place under the rule's concurrency limit, waited for within the call's deadline.
        let place = match at.split(&routes).and_then(|s| s.limiter.as_ref()) {
            None => None,
            Some(l) => match timeout::deadline(&req, grpc, timeouts.request) {
                None => Some(l.enter().await?),
                Some(d) => match tokio::time::timeout_at(d, l.enter()).await {
                    Ok(place) => Some(place?),
                    Err(_) => return Err(timeout::timed_out().into()),
                },
            },
        };
        let mut rsp = call(&routes, at, &dest, retry, timeouts, grpc, req).await?;
        for m in &modifiers {
            modify(rsp.headers_mut(), m);
        }
        Ok(match place {
            Some(p) => limit::hold(rsp, p),
            None => rsp,
        })
    }))
}

/// A routed call: its attempts under the rule's retry policy (`retry`), or its one attempt,
/// within the rule's deadlines.
fn call(
    routes: &Arc<Routes>,
    at: RuleAt,
    dest: &Arc<Lease>,
    retry: Option<Arc<RetryState>>,
    timeouts: Timeouts,
    grpc: bool,
    mut req: Request<Body>,
) -> impl Future<Output = Result<Response<Body>, BoxError>> + Send + use<> {
    use futures_util::future::Either;
    if let Some(state) = retry {
        let deadline = timeout::deadline(&req, grpc, timeouts.request);
        let (routes, dest) = (routes.clone(), dest.clone());
        let send = move |r, attempts: &Attempted| attempt(&routes, at, &dest, r, Some(attempts));
        return Either::Left(retry::run(
            state,
            req,
            grpc,
            deadline,
            timeouts.backend_request,
            send,
        ));
    }
    Either::Right(
        match timeout::deadline(&req, grpc, timeouts.first_attempt()) {
            Some(d) => {
                timeout::stamp(&mut req, d, grpc);
                Either::Left(timeout::bound(
                    d,
                    grpc,
                    attempt(routes, at, dest, req, None),
                ))
            }
            None => Either::Right(attempt(routes, at, dest, req, None)),
        },
    )
}

/// One attempt of a routed request: the rule's faults, a backend drawn by weight, its
/// filters, and the request sent to its balancer.
///
/// All but the sending happens here, before the returned future is first polled, and the
/// future holds only the balancer's dispatch and what the answer needs: an attempt is nested
/// in the retry and deadline futures, which move it whole, so its size counts several times.
fn attempt(
    routes: &Arc<Routes>,
    at: RuleAt,
    dest: &Arc<Lease>,
    req: Request<Body>,
    attempts: Option<&Attempted>,
) -> impl Future<Output = Result<Response<Body>, BoxError>> + Send + use<> {
    use futures_util::future::Either;
    let Some(split) = at.split(routes) else {
        let e = HttpError::new(Kind::Internal, Who::Proxy, RetrySafe::No, "no such rule");
        return Either::Left(std::future::ready(Err(e.into())));
    };
    if let Some(f) = &split.fault {
        let injected = fault::decide(f, fault::draw);
        if let Some(d) = injected.delay {
            // Rare, and boxed so that it does not grow every attempt: the delay, then the
            // abort or the backend.
            let (routes, dest, attempts) = (routes.clone(), dest.clone(), attempts.cloned());
            let delayed: BoxFuture = Box::pin(async move {
                tokio::time::sleep(d).await;
                match (injected.abort, at.split(&routes)) {
                    (Some(with), Some(split)) => Ok(aborted(split, with)),
                    (_, Some(split)) => to_backend(split, &dest, req, attempts.as_ref()).await,
                    (_, None) => Err(HttpError::new(
                        Kind::Internal,
                        Who::Proxy,
                        RetrySafe::No,
                        "no such rule",
                    )
                    .into()),
                }
            });
            return Either::Right(Either::Right(delayed));
        }
        if let Some(with) = injected.abort {
            return Either::Left(std::future::ready(Ok(aborted(split, with))));
        }
    }
    Either::Right(Either::Left(to_backend(split, dest, req, attempts)))
}

/// The answer of an injected abort, counted as the rule's own.
fn aborted(split: &Split, with: AbortWith) -> Response<Body> {
    let mut rsp = fault::abort_response(with);
    if let Some(m) = &split.local_metrics {
        m.request();
        rsp = m.observe(rsp, Instant::now());
    }
    rsp
}

/// Sends `req` to a backend of `split` drawn by weight, after its filters.
fn to_backend(
    split: &Split,
    dest: &Arc<Lease>,
    mut req: Request<Body>,
    attempts: Option<&Attempted>,
) -> impl Future<Output = Result<Response<Body>, BoxError>> + Send + use<> {
    use futures_util::FutureExt;
    use futures_util::future::Either;
    let failed = |e: HttpError| Either::Left(std::future::ready(Err(e.into())));
    let backend = if split.is_parent_only() {
        None
    } else {
        match split.pick(dest.health.all_ejected()) {
            Some(b) => Some(b),
            None => {
                return failed(HttpError::new(
                    Kind::Internal,
                    Who::Proxy,
                    RetrySafe::No,
                    "every backend of the route has weight 0",
                ));
            }
        }
    };
    // The backend's own answer counts as the destination's would: a backend the mesh policy
    // denies this caller is a 403, one with no endpoint a 503.
    let mut other = None;
    let balancer = match backend.map(|b| &b.target) {
        None | Some(BackendTarget::Parent) => dest.http.clone(),
        Some(BackendTarget::Service(lease)) => {
            if let Some(e) = super::gate::unroutable(lease) {
                return failed(e);
            }
            other = Some(lease.clone());
            lease.http.clone()
        }
        Some(BackendTarget::Missing(why)) => {
            return failed(HttpError::new(
                Kind::Internal,
                Who::Proxy,
                RetrySafe::No,
                why.clone(),
            ));
        }
    };
    if let Some(b) = backend
        && let Some(notes) = crate::observe::notes(&req)
    {
        notes.backend(&b.label);
    }
    let mut response_headers: Vec<HeaderModifier> = Vec::new();
    if let Some(b) = backend {
        for f in &b.filters {
            match f {
                HttpFilter::RequestHeaders(m) => modify(req.headers_mut(), m),
                HttpFilter::ResponseHeaders(m) => response_headers.push(m.clone()),
                // Only header modifiers are accepted on backends.
                HttpFilter::Rewrite(_) | HttpFilter::Redirect(_) => {}
            }
        }
    }
    let metrics = match backend {
        Some(b) => b.metrics.clone(),
        None => split.parent_metrics.clone(),
    };
    if let Some(m) = &metrics {
        m.request();
    }
    let started = Instant::now();
    let trace = crate::observe::trace_id(&req);
    Either::Right(balancer.dispatch(req, attempts.cloned()).map(move |rsp| {
        let mut rsp = match (rsp, metrics) {
            (Ok(rsp), Some(m)) => m.observe_traced(rsp, started, trace),
            (Ok(rsp), None) => rsp,
            (Err(e), m) => {
                if let Some(m) = m {
                    m.no_response(started);
                }
                // Its first answer may have come while the request waited for an endpoint.
                let e = HttpError::from_box(e);
                if e.kind() == Kind::Unavailable
                    && let Some(denied) = other
                        .as_deref()
                        .and_then(|l| super::gate::unroutable(l))
                        .filter(|d| d.kind() == Kind::Denied)
                {
                    return Err(denied.into());
                }
                return Err(e.into());
            }
        };
        for m in &response_headers {
            modify(rsp.headers_mut(), m);
        }
        Ok(rsp)
    }))
}

/// Applies a header modifier: remove, then set, then add.
fn modify(headers: &mut HeaderMap, m: &HeaderModifier) {
    for name in &m.remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(n);
        }
    }
    for (name, value) in &m.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    for (name, value) in &m.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
}

/// The parts of a request a redirect keeps, owned.
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
    path: String,
    query: Option<String>,
}

impl Origin {
    fn as_ref(&self) -> RedirectFrom<'_> {
        RedirectFrom {
            scheme: &self.scheme,
            host: &self.host,
            port: self.port,
            path: &self.path,
            query: self.query.as_deref(),
        }
    }
}

fn redirect_from(req: &Request<Body>) -> Origin {
    let authority = req.uri().authority().cloned().or_else(|| {
        req.headers()
            .get(HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
    });
    Origin {
        scheme: req.uri().scheme_str().unwrap_or("http").to_string(),
        host: authority
            .as_ref()
            .map(|a| a.host().to_string())
            .unwrap_or_default(),
        port: authority.as_ref().and_then(Authority::port_u16),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
    }
}

fn set_path(req: &mut Request<Body>, path: &str) {
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let Ok(pq) = PathAndQuery::try_from(pq) else {
        return;
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

fn set_host(req: &mut Request<Body>, host: &str) {
    if let Ok(v) = HeaderValue::from_str(host) {
        req.headers_mut().insert(HOST, v);
    }
    if req.uri().authority().is_some()
        && let Ok(a) = Authority::try_from(host)
    {
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.authority = Some(a);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_modifiers_remove_then_set_then_add() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        let m = HeaderModifier {
            set: vec![("x-a".into(), "new".into())],
            add: vec![("x-a".into(), "more".into()), ("x-b".into(), "1".into())],
            remove: vec!["x-gone".into()],
        };
        modify(&mut h, &m);
        let a: Vec<_> = h.get_all("x-a").iter().collect();
        assert_eq!(a, ["new", "more"]);
        assert_eq!(h["x-b"], "1");
        assert!(h.get("x-gone").is_none());
    }

    #[test]
    fn rewrites_keep_the_query_and_set_the_host() {
        let mut req = Request::get("/v1/users?x=1")
            .header(HOST, "web.demo")
            .body(empty_body())
            .unwrap();
        set_path(&mut req, "/users");
        set_host(&mut req, "web-v2.demo");
        assert_eq!(req.uri(), "/users?x=1");
        assert_eq!(req.headers()[HOST], "web-v2.demo");
        let from = redirect_from(&req);
        assert_eq!(
            (from.scheme.as_str(), from.host.as_str(), from.port),
            ("http", "web-v2.demo", None)
        );
    }
}
