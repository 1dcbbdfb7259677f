//! The control plane's built-in dashboard, served under `/dashboard` by its HTTP listener with
//! the rules of `/api/state`: open on loopback, the bearer token anywhere else (`weft
//! dashboard --token-file` runs a local forwarder that adds it).
//!
//! Views, each a page rendered on the server ([`pages`], askama templates that escape every
//! value) with a live region that follows the control plane:
//! - `/dashboard?q=&page=`: every platform with its sync state, and the services (searched by
//!   name, [`views::PAGE_SIZE`] a page) with their golden metrics, platforms and the share
//!   of their endpoints that are meshed;
//! - `/dashboard/service?name=name.namespace`: a service's traffic, routes with their
//!   backends, weights and traffic, endpoints, the authorization rules that name it and its
//!   callers;
//! - `/dashboard/topology`: who calls whom across platforms, an SVG laid out on the server
//!   ([`topology`]), and the same calls as a table;
//! - `/dashboard/tap?to=&from=&method=&path=`: requests as they happen ([`crate::tap`]);
//! - `/dashboard/certificates`: the roots, the intermediate, the control plane's own
//!   certificate, and the leaves issued that expire soonest.
//!
//! `/dashboard/fragment?view=...` answers a view's live region alone, and
//! `/dashboard/events?view=...` streams it as server-sent events: rendered every [`REFRESH`],
//! sent when it changed (a comment otherwise, so a client that went away is noticed).
//! `/dashboard/tap-events?...` streams each request the tap sees as a table row. At most
//! [`MAX_STREAMS`] streams are open at once (more get 503); each ends when its client goes
//! away or the control plane stops. The script (`/dashboard/app.js`) and stylesheet
//! (`/dashboard/style.css`) are our own, compiled in; every answer carries a
//! Content-Security-Policy that admits scripts and styles from the dashboard alone.

mod pages;
mod topology;
mod views;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::sync::OwnedSemaphorePermit;

pub use topology::MAX_NODES;
pub use views::PAGE_SIZE;

use crate::State;
use pages::{Frame as PageFrame, TapFilters};

/// Live streams (views and taps) open at once at most; more are refused with 503.
pub const MAX_STREAMS: usize = 32;
/// How often a live view is rendered again.
pub const REFRESH: Duration = Duration::from_secs(2);
/// Rows the tap view keeps at most.
pub const MAX_TAP_ROWS: usize = 200;
/// Characters of a query parameter read at most.
const MAX_PARAM: usize = 256;

/// Scripts and styles from the dashboard alone, no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

const APP_JS: &str = include_str!("../assets/dashboard/app.js");
const STYLE_CSS: &str = include_str!("../assets/dashboard/style.css");
const FAVICON_SVG: &str = include_str!("../assets/dashboard/favicon.svg");

type Body = BoxBody<Bytes, Infallible>;

/// Why a page could not be shown.
#[derive(Debug, thiserror::Error)]
enum DashboardError {
    /// A template failed to render.
    #[error("rendering the dashboard: {0}")]
    Render(#[from] askama::Error),
}

/// A message in place of a view's live region.
#[derive(Debug, Template)]
#[template(source = "<p class=\"notice\">{{ message }}</p>", ext = "html")]
struct Notice<'a> {
    message: &'a str,
}

/// Whether `path` is the dashboard's.
pub(crate) fn serves(path: &str) -> bool {
    path == "/dashboard" || path.starts_with("/dashboard/")
}

/// A view with a live region.
#[derive(Clone, Debug, PartialEq, Eq)]
enum View {
    /// Page `page` of the services whose name contains `q`.
    Overview { q: String, page: usize },
    /// One service.
    Service { name: String },
    /// The topology.
    Topology,
    /// The certificates.
    Certificates,
}

// === impl View ===

impl View {
    /// The view `kind` names, with its parameters from `query`.
    fn parse(kind: &str, query: &Query) -> Option<Self> {
        match kind {
            "overview" => Some(View::Overview {
                q: query.arg("q").unwrap_or_default(),
                page: query.arg("page").and_then(|p| p.parse().ok()).unwrap_or(1),
            }),
            "service" => Some(View::Service {
                name: query.arg("name")?,
            }),
            "topology" => Some(View::Topology),
            "certificates" => Some(View::Certificates),
            _ => None,
        }
    }

    /// The query that names this view.
    fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        match self {
            View::Overview { q: search, page } => {
                q.append_pair("view", "overview");
                if !search.is_empty() {
                    q.append_pair("q", search);
                }
                if *page > 1 {
                    q.append_pair("page", &page.to_string());
                }
            }
            View::Service { name } => {
                q.append_pair("view", "service");
                q.append_pair("name", name);
            }
            View::Topology => {
                q.append_pair("view", "topology");
            }
            View::Certificates => {
                q.append_pair("view", "certificates");
            }
        }
        q.finish()
    }

    /// Where this view's updates stream from.
    fn events(&self) -> String {
        format!("/dashboard/events?{}", self.query())
    }

    /// The whole page, or none when what it shows is not there.
    fn page(&self, state: &State) -> Result<Option<String>, DashboardError> {
        let events = self.events();
        Ok(Some(match self {
            View::Overview { q, page } => {
                let view = views::overview(state, q, *page);
                pages::OverviewPage {
                    frame: frame("The mesh", "overview"),
                    view: &view,
                    events,
                }
                .render()?
            }
            View::Service { name } => {
                let Some(view) = views::service(state, name) else {
                    return Ok(None);
                };
                pages::ServicePage {
                    frame: frame(&view.name, ""),
                    view: &view,
                    events,
                }
                .render()?
            }
            View::Topology => {
                let view = topology::topology(state);
                pages::TopologyPage {
                    frame: frame("Topology", "topology"),
                    view: &view,
                    events,
                }
                .render()?
            }
            View::Certificates => {
                let view = views::certificates(state);
                pages::CertificatesPage {
                    frame: frame("Certificates", "certificates"),
                    view: &view,
                    events,
                }
                .render()?
            }
        }))
    }

    /// The live region alone.
    fn fragment(&self, state: &State) -> Result<String, DashboardError> {
        Ok(match self {
            View::Overview { q, page } => pages::OverviewLive {
                view: &views::overview(state, q, *page),
            }
            .render()?,
            View::Service { name } => match views::service(state, name) {
                Some(view) => pages::ServiceLive { view: &view }.render()?,
                None => Notice {
                    message: &format!("No platform reports a service {name} now."),
                }
                .render()?,
            },
            View::Topology => pages::TopologyLive {
                view: &topology::topology(state),
            }
            .render()?,
            View::Certificates => pages::CertificatesLive {
                view: &views::certificates(state),
            }
            .render()?,
        })
    }
}

fn frame(title: &str, active: &'static str) -> PageFrame {
    PageFrame {
        title: title.to_string(),
        active,
    }
}

/// A request's query parameters.
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

// === impl Query ===

impl Query {
    fn of<B>(req: &Request<B>) -> Self {
        Self(crate::admin::query_pairs(req))
    }

    /// The parameter `name`, trimmed and cut to [`MAX_PARAM`] characters; none if empty.
    fn arg(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().chars().take(MAX_PARAM).collect::<String>())
            .filter(|v| !v.is_empty())
    }

    fn tap_filters(&self) -> TapFilters {
        TapFilters {
            to: self.arg("to").unwrap_or_default(),
            from: self.arg("from").unwrap_or_default(),
            method: self.arg("method").unwrap_or_default(),
            path: self.arg("path").unwrap_or_default(),
        }
    }
}

/// Answers a dashboard request; `hold` is kept while a stream is open (it keeps the
/// connection from counting as idle) and dropped with any other answer.
pub(crate) fn respond<B>(
    state: &Arc<State>,
    req: &Request<B>,
    hold: impl Send + Sync + 'static,
) -> Response<Body> {
    if !crate::admin::authorized(state, req) {
        return text(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <token from <data_dir>/http-token>, or run \
             `weft dashboard --token-file <file>`\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut rsp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the dashboard answers GET\n",
        );
        rsp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return rsp;
    }
    let query = Query::of(req);
    let result = match req.uri().path() {
        "/dashboard" | "/dashboard/" => page(state, View::parse("overview", &query)),
        "/dashboard/service" => page(state, View::parse("service", &query)),
        "/dashboard/topology" => page(state, Some(View::Topology)),
        "/dashboard/certificates" => page(state, Some(View::Certificates)),
        "/dashboard/tap" => tap_page(&query),
        "/dashboard/fragment" => fragment(state, &query),
        "/dashboard/events" => return view_events(state, &query, hold),
        "/dashboard/tap-events" => return tap_events(state, &query, hold),
        "/dashboard/app.js" => Ok(asset(APP_JS, "text/javascript; charset=utf-8")),
        "/dashboard/style.css" => Ok(asset(STYLE_CSS, "text/css; charset=utf-8")),
        "/dashboard/favicon.svg" => Ok(asset(FAVICON_SVG, "image/svg+xml")),
        _ => missing("Not found", "The dashboard has no such page."),
    };
    result.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "dashboard page failed");
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the page failed to render\n",
        )
    })
}

/// The page of `view`; none: a service page that names no service.
fn page(state: &State, view: Option<View>) -> Result<Response<Body>, DashboardError> {
    let Some(view) = view else {
        return missing("No service", "Name a service: ?name=name.namespace.");
    };
    match view.page(state)? {
        Some(body) => Ok(html(StatusCode::OK, body)),
        None => missing(
            "No such service",
            &match &view {
                View::Service { name } => format!("No platform reports a service {name}."),
                _ => "Nothing to show.".into(),
            },
        ),
    }
}

fn tap_page(query: &Query) -> Result<Response<Body>, DashboardError> {
    let filters = query.tap_filters();
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("to", &filters.to),
        ("from", &filters.from),
        ("method", &filters.method),
        ("path", &filters.path),
    ] {
        if !v.is_empty() {
            q.append_pair(k, v);
        }
    }
    let body = pages::TapPage {
        frame: frame("Live tap", "tap"),
        filters,
        events: format!("/dashboard/tap-events?{}", q.finish()),
        max_rows: MAX_TAP_ROWS,
    }
    .render()?;
    Ok(html(StatusCode::OK, body))
}

fn fragment(state: &State, query: &Query) -> Result<Response<Body>, DashboardError> {
    let kind = query.arg("view").unwrap_or_default();
    match View::parse(&kind, query) {
        Some(view) => Ok(html(StatusCode::OK, view.fragment(state)?)),
        None => Ok(text(
            StatusCode::BAD_REQUEST,
            "view: overview, service (with name), topology or certificates\n",
        )),
    }
}

fn missing(title: &str, message: &str) -> Result<Response<Body>, DashboardError> {
    let body = pages::MissingPage {
        frame: frame(title, ""),
        message: message.to_string(),
    }
    .render()?;
    Ok(html(StatusCode::NOT_FOUND, body))
}

/// One of the [`MAX_STREAMS`], or the answer refusing it.
fn stream_slot(state: &State) -> Result<OwnedSemaphorePermit, Box<Response<Body>>> {
    state
        .dashboard_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            tracing::debug!("dashboard stream refused: {MAX_STREAMS} are open");
            Box::new(text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{MAX_STREAMS} dashboard streams are open already; try again later\n"),
            ))
        })
}

/// A server-sent event: `data` split into lines (a carriage return ends a line too).
fn sse(event: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 64);
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    for line in data.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// How long the browser waits before it connects again, sent first on every stream.
fn retry() -> Bytes {
    Bytes::from(format!("retry: {}\n\n", REFRESH.as_millis()))
}

/// `/dashboard/events?view=...`: the view's live region, re-rendered every [`REFRESH`].
fn view_events(
    state: &Arc<State>,
    query: &Query,
    hold: impl Send + Sync + 'static,
) -> Response<Body> {
    let kind = query.arg("view").unwrap_or_default();
    let Some(view) = View::parse(&kind, query) else {
        return text(
            StatusCode::BAD_REQUEST,
            "view: overview, service (with name), topology or certificates\n",
        );
    };
    let slot = match stream_slot(state) {
        Ok(slot) => slot,
        Err(refusal) => return *refusal,
    };
    struct Follow<H> {
        state: Arc<State>,
        view: View,
        last: Option<String>,
        tick: tokio::time::Interval,
        started: bool,
        _slot: OwnedSemaphorePermit,
        _hold: H,
    }
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let follow = Follow {
        state: state.clone(),
        view,
        last: None,
        tick,
        started: false,
        _slot: slot,
        _hold: hold,
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        if !f.started {
            f.started = true;
            return Some((Ok::<_, Infallible>(Frame::data(retry())), f));
        }
        tokio::select! {
            _ = f.tick.tick() => {}
            () = f.state.shutdown.cancelled() => return None,
        }
        let chunk = match f.view.fragment(&f.state) {
            Ok(html) if f.last.as_deref() != Some(html.as_str()) => {
                let chunk = sse("fragment", &html);
                f.last = Some(html);
                chunk
            }
            // Unchanged: a comment, so a client that went away is noticed.
            Ok(_) => Bytes::from_static(b": unchanged\n\n"),
            Err(e) => {
                tracing::warn!(error = %e, "dashboard view failed");
                Bytes::from_static(b": the view failed to render\n\n")
            }
        };
        Some((Ok(Frame::data(chunk)), f))
    });
    event_stream(BoxBody::new(StreamBody::new(stream)))
}

/// `/dashboard/tap-events?to=&from=&method=&path=`: each request the tap sees, as a row.
/// When no proxy can be tapped yet, or [`crate::tap::MAX_TAPS`] taps run, it says so and
/// ends; the browser connects again after [`REFRESH`].
fn tap_events(
    state: &Arc<State>,
    query: &Query,
    hold: impl Send + Sync + 'static,
) -> Response<Body> {
    let slot = match stream_slot(state) {
        Ok(slot) => slot,
        Err(refusal) => return *refusal,
    };
    let filters = query.tap_filters();
    let some = |s: String| (!s.is_empty()).then_some(s);
    let q = crate::tap::Query {
        to: some(filters.to),
        from: some(filters.from),
        method: some(filters.method),
        path: some(filters.path),
        authority: None,
        rate: 0,
        max: None,
    };
    let tap = match crate::tap::start(state, &q) {
        Ok(tap) => tap,
        Err(refused) => {
            let mut chunk = retry().to_vec();
            chunk.extend_from_slice(&sse(
                "status",
                &format!("Not tapping: {refused}; trying again."),
            ));
            drop(slot);
            return event_stream(Full::new(Bytes::from(chunk)).boxed());
        }
    };
    struct Follow<H> {
        tap: crate::tap::Tap,
        tick: tokio::time::Interval,
        started: bool,
        _slot: OwnedSemaphorePermit,
        _hold: H,
    }
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let follow = Follow {
        tap,
        tick,
        started: false,
        _slot: slot,
        _hold: hold,
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        if !f.started {
            f.started = true;
            let mut chunk = retry().to_vec();
            chunk.extend_from_slice(&sse("status", "Tapping."));
            return Some((Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))), f));
        }
        let chunk = tokio::select! {
            event = f.tap.next() => {
                let event = event?;
                let row = views::TapRow::of(&event);
                match (pages::TapRowFragment { row: &row }).render() {
                    Ok(html) => sse("tap", &html),
                    Err(e) => {
                        tracing::warn!(error = %e, "tap row failed to render");
                        Bytes::from_static(b": a row failed to render\n\n")
                    }
                }
            }
            // Quiet: a comment, so a client that went away is noticed.
            _ = f.tick.tick() => Bytes::from_static(b": waiting\n\n"),
        };
        Some((Ok(Frame::data(chunk)), f))
    });
    event_stream(BoxBody::new(StreamBody::new(stream)))
}

/// Headers every dashboard answer carries.
fn secured(builder: http::response::Builder) -> http::response::Builder {
    builder
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::X_FRAME_OPTIONS, "DENY")
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    secured(Response::builder().status(status))
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_default()
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    secured(Response::builder().status(status))
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap_or_default()
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    secured(Response::builder().status(StatusCode::OK))
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Full::new(Bytes::from_static(body.as_bytes())).boxed())
        .unwrap_or_default()
}

fn event_stream(body: Body) -> Response<Body> {
    secured(Response::builder().status(StatusCode::OK))
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
