//! Errors on the data path, typed where they happen, and the one layer per side that turns
//! them into responses.
//!
//! Every layer of a request stack fails with an [`HttpError`] (boxed, as tower's balancer
//! requires): what went wrong ([`Kind`], which fixes the status), who failed ([`Who`]) and
//! whether sending the request again is safe ([`RetrySafe`]). Nothing below [`Respond`]
//! builds a response for an error; [`Respond`] answers
//! - HTTP callers with 403, 404, 429, 500, 502, 503 or 504;
//! - gRPC callers (`content-type: application/grpc…`) with a trailers-only response carrying
//!   `PERMISSION_DENIED`, `UNIMPLEMENTED`, `RESOURCE_EXHAUSTED`, `INTERNAL`, `UNAVAILABLE` or
//!   `DEADLINE_EXCEEDED`, which a gRPC client reads as the call's status.
//!
//! The reason (which names services, addresses and identities) goes only to a trusted caller:
//! the local application on the outbound side, a mesh peer on the inbound side. Anyone else
//! gets the status alone.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use crate::http::{Body, BoxError, PROXY_ERROR};

/// What went wrong, which decides the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The mesh policy does not allow the call: 403, `PERMISSION_DENIED`.
    Denied,
    /// Nothing serves what was asked for: 404, `UNIMPLEMENTED`.
    NotFound,
    /// Over a rate limit: 429, `RESOURCE_EXHAUSTED`.
    RateLimited,
    /// The route sends the request nowhere that exists (a missing backend): 500, `INTERNAL`.
    Internal,
    /// The peer or the application failed to answer: 502, `UNAVAILABLE`.
    BadGateway,
    /// No endpoint can take the request: 503, `UNAVAILABLE`.
    Unavailable,
    /// No answer in time: 504, `DEADLINE_EXCEEDED`.
    Timeout,
}

impl Kind {
    /// The HTTP status of the answer.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Denied => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The gRPC status code of the answer.
    pub fn grpc_code(self) -> u8 {
        match self {
            Self::Denied => 7,       // PERMISSION_DENIED
            Self::NotFound => 12,    // UNIMPLEMENTED
            Self::RateLimited => 8,  // RESOURCE_EXHAUSTED
            Self::Internal => 13,    // INTERNAL
            Self::BadGateway => 14,  // UNAVAILABLE
            Self::Unavailable => 14, // UNAVAILABLE
            Self::Timeout => 4,      // DEADLINE_EXCEEDED
        }
    }
}

/// Who failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    /// The caller asked for something it may not have, or sent what cannot be carried.
    Caller,
    /// This proxy (no certificate yet, an internal limit).
    Proxy,
    /// The peer: the endpoint, or the proxy in front of it.
    Peer,
    /// The local application behind the inbound side.
    Application,
}

/// Whether the request may be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetrySafe {
    /// Nothing of it left this proxy: any request may go again.
    NotSent,
    /// It may have been processed: only an idempotent method may go again.
    IfIdempotent,
    /// It must not go again (the caller's own fault, or an answer already begun).
    No,
}

/// A failed request, typed at its source. See the module docs.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct HttpError {
    kind: Kind,
    who: Who,
    retry: RetrySafe,
    reason: String,
    /// Whether the request metrics of an endpoint already counted it.
    counted: bool,
    /// When the caller may try again (a rate limit's `Retry-After`).
    retry_after: Option<std::time::Duration>,
}

impl HttpError {
    /// An error of `kind`, caused by `who`.
    pub fn new(kind: Kind, who: Who, retry: RetrySafe, reason: impl Into<String>) -> Self {
        Self {
            kind,
            who,
            retry,
            reason: reason.into(),
            counted: false,
            retry_after: None,
        }
    }

    /// The same error, telling the caller to wait `after` before trying again.
    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The mesh policy refuses the call.
    pub fn denied(reason: impl Into<String>) -> Self {
        Self::new(Kind::Denied, Who::Caller, RetrySafe::No, reason)
    }

    /// No endpoint can take the request; nothing was sent.
    pub fn unavailable(who: Who, reason: impl Into<String>) -> Self {
        Self::new(Kind::Unavailable, who, RetrySafe::NotSent, reason)
    }

    /// Takes an error from a stack: an [`HttpError`] as it is, anything else as a failure of
    /// the proxy that must not be retried (a failure no layer typed is a defect).
    pub fn from_box(e: BoxError) -> Self {
        match e.downcast::<Self>() {
            Ok(e) => *e,
            Err(e) if crate::outbound::failfast::is_unavailable(&*e) => {
                Self::unavailable(Who::Peer, e.to_string())
            }
            Err(e) => Self::new(Kind::BadGateway, Who::Proxy, RetrySafe::No, e.to_string()),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Who failed.
    pub fn who(&self) -> Who {
        self.who
    }

    /// Whether the request may go again.
    pub fn retry_safe(&self) -> RetrySafe {
        self.retry
    }

    /// The reason, for logs and trusted callers.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The same error with `context` before its reason.
    pub fn context(mut self, context: &dyn std::fmt::Display) -> Self {
        self.reason = format!("{context}: {}", self.reason);
        self
    }

    /// Marks it counted by request metrics.
    pub fn counted(mut self) -> Self {
        self.counted = true;
        self
    }

    /// Whether request metrics counted it already.
    pub fn was_counted(&self) -> bool {
        self.counted
    }
}

/// Set on a response [`Respond`] made for an error that no request metrics counted, so that
/// the layer above it can count it.
#[derive(Clone, Copy, Debug)]
pub struct Uncounted;

/// Whether the caller speaks gRPC (and reads errors from `grpc-status`).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The answer to `error` for a caller that speaks gRPC or not, with the reason if it is
/// trusted.
pub fn respond(error: &HttpError, grpc: bool, trusted: bool) -> Response<Body> {
    let reason = trusted.then_some(error.reason());
    let mut rsp = if grpc {
        let mut rsp = Response::new(empty());
        let h = rsp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "grpc-status",
            HeaderValue::from(u16::from(error.kind.grpc_code())),
        );
        let message =
            reason.unwrap_or_else(|| error.kind.status().canonical_reason().unwrap_or(""));
        if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(message)) {
            h.insert("grpc-message", v);
        }
        rsp
    } else {
        let text = match reason {
            Some(r) => format!("{r}\n"),
            None => format!(
                "{}\n",
                error.kind.status().canonical_reason().unwrap_or("error")
            ),
        };
        let mut rsp = Response::new(Body::new(
            Full::new(Bytes::from(text)).map_err(|e: Infallible| match e {}),
        ));
        *rsp.status_mut() = error.kind.status();
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    };
    if let Some(reason) = reason
        && let Ok(v) = HeaderValue::from_str(reason)
    {
        rsp.headers_mut().insert(PROXY_ERROR, v);
    }
    if let Some(after) = error.retry_after {
        // Whole seconds, rounded up: never sooner than the limit allows.
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        rsp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    if !error.counted {
        rsp.extensions_mut().insert(Uncounted);
    }
    rsp
}

fn empty() -> Body {
    Body::new(Empty::<Bytes>::new().map_err(|e: Infallible| match e {}))
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%` itself.
fn grpc_percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The layer that answers every error of the stack below it. See the module docs.
#[derive(Clone, Debug)]
pub struct Respond<S> {
    inner: S,
    trusted: bool,
}

impl<S> Respond<S> {
    /// Answers the errors of `inner`, with their reasons if the caller is `trusted`.
    pub fn new(inner: S, trusted: bool) -> Self {
        Self { inner, trusted }
    }
}

impl<S> tower::Service<Request<Body>> for Respond<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RespondFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A stack that cannot take requests fails each call instead.
        let _ = ready!(self.inner.poll_ready(cx));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let grpc = is_grpc(&req);
        RespondFuture {
            inner: self.inner.call(req),
            grpc,
            trusted: self.trusted,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Respond`]'s future.
    pub struct RespondFuture<F> {
        #[pin]
        inner: F,
        grpc: bool,
        trusted: bool,
    }
}

impl<F> Future for RespondFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(Ok(match ready!(this.inner.poll(cx)) {
            Ok(rsp) => rsp,
            Err(e) => {
                let e = HttpError::from_box(e);
                match e.kind {
                    Kind::BadGateway => tracing::info!(error = %e, who = ?e.who, "request failed"),
                    _ => tracing::debug!(error = %e, who = ?e.who, "request refused"),
                }
                respond(&e, *this.grpc, *this.trusted)
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tower::{Service, ServiceExt};

    use super::*;

    fn req(grpc: bool) -> Request<Body> {
        let mut r = Request::new(empty());
        if grpc {
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc+proto"),
            );
        }
        r
    }

    /// A stack that fails every request with `kind`.
    fn failing(
        kind: Kind,
    ) -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = BoxError,
        Future = std::future::Ready<Result<Response<Body>, BoxError>>,
    > + Clone {
        tower::service_fn(move |_: Request<Body>| {
            std::future::ready(Err(HttpError::new(
                kind,
                Who::Peer,
                RetrySafe::NotSent,
                "api.demo: 10.0.0.7:80 refused",
            )
            .into()))
        })
    }

    #[tokio::test]
    async fn each_kind_gets_its_status_and_grpc_code() {
        let cases = [
            (Kind::Denied, 403, "7"),
            (Kind::NotFound, 404, "12"),
            (Kind::RateLimited, 429, "8"),
            (Kind::Internal, 500, "13"),
            (Kind::BadGateway, 502, "14"),
            (Kind::Unavailable, 503, "14"),
            (Kind::Timeout, 504, "4"),
        ];
        for (kind, status, code) in cases {
            let rsp = Respond::new(failing(kind), true)
                .oneshot(req(false))
                .await
                .unwrap();
            assert_eq!(rsp.status(), status);
            assert!(rsp.extensions().get::<Uncounted>().is_some());

            let rsp = Respond::new(failing(kind), true)
                .oneshot(req(true))
                .await
                .unwrap();
            assert_eq!(rsp.status(), 200, "gRPC errors are trailers-only responses");
            assert_eq!(rsp.headers()["grpc-status"], code);
            assert_eq!(rsp.headers()["content-type"], "application/grpc");
            assert!(
                rsp.into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .is_empty()
            );
        }
    }

    #[tokio::test]
    async fn the_reason_goes_only_to_trusted_callers() {
        let rsp = Respond::new(failing(Kind::BadGateway), true)
            .oneshot(req(false))
            .await
            .unwrap();
        assert_eq!(rsp.headers()[PROXY_ERROR], "api.demo: 10.0.0.7:80 refused");
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"api.demo: 10.0.0.7:80 refused\n");

        let rsp = Respond::new(failing(Kind::BadGateway), false)
            .oneshot(req(false))
            .await
            .unwrap();
        assert!(rsp.headers().get(PROXY_ERROR).is_none());
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"Bad Gateway\n");

        let rsp = Respond::new(failing(Kind::BadGateway), false)
            .oneshot(req(true))
            .await
            .unwrap();
        assert!(rsp.headers().get(PROXY_ERROR).is_none());
        assert_eq!(rsp.headers()["grpc-message"], "Bad Gateway");
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(grpc_percent_encode("a b%c\u{e9}"), "a b%25c%C3%A9");
    }

    #[test]
    fn untyped_errors_are_the_proxys_and_not_retried() {
        let e = HttpError::from_box("something odd".into());
        assert_eq!(
            (e.kind(), e.who(), e.retry_safe()),
            (Kind::BadGateway, Who::Proxy, RetrySafe::No)
        );
        let typed: BoxError = HttpError::denied("no").into();
        assert_eq!(HttpError::from_box(typed).kind(), Kind::Denied);
    }
}
