//! Trace contexts as requests carry them: W3C `traceparent` (with `tracestate`, which the
//! proxy never touches), B3 in its multi-header form (`X-B3-TraceId`, `X-B3-SpanId`,
//! `X-B3-ParentSpanId`, `X-B3-Sampled`, `X-B3-Flags`) and its single-header form (`b3`).
//!
//! A proxy that records a span for a request rewrites every form the request carried so that
//! the next hop's parent is that span: the application keeps reading the headers it knows. A
//! header that does not parse is left as it is and the request counts as carrying no context
//! of that form; nothing a client sends makes the proxy fail a request.

use std::fmt::Write as _;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// A trace's 16-byte ID (a 64-bit B3 ID sits in the low 8 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span's 8-byte ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random, non-zero ID.
    pub fn random() -> Self {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&nonzero_u64().to_be_bytes());
        id[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
        Self(id)
    }

    /// Lowercase hex, 32 digits.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl SpanId {
    /// A random, non-zero ID.
    pub fn random() -> Self {
        Self(nonzero_u64().to_be_bytes())
    }

    /// Lowercase hex, 16 digits.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

/// Lowercase hex of `bytes`, by table: every traced request writes several IDs, and the
/// formatter's `{:02x}` costs some hundred instructions a byte.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Reads exactly `N` bytes from `2N` hex digits.
fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// A 64- or 128-bit B3 trace ID; `short` says it was 64 bits.
fn b3_trace_id(s: &str) -> Option<(TraceId, bool)> {
    let id = match s.len() {
        16 => {
            let low = unhex::<8>(s)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            (TraceId(id), true)
        }
        32 => (TraceId(unhex::<16>(s)?), false),
        _ => return None,
    };
    (id.0.0 != [0; 16]).then_some(id)
}

fn span_id(s: &str) -> Option<SpanId> {
    unhex::<8>(s).filter(|b| *b != [0; 8]).map(SpanId)
}

/// The forms of context a request carried (each is rewritten when the proxy records a span).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forms {
    /// `traceparent`.
    pub w3c: bool,
    /// `X-B3-*`.
    pub b3_multi: bool,
    /// `b3`.
    pub b3_single: bool,
    /// The B3 trace ID was 64 bits (written back as it came).
    pub b3_short: bool,
}

/// The context a request carried, or the one the proxy started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    /// The trace.
    pub trace: TraceId,
    /// The span that sent the request; `None` when the proxy starts the trace.
    pub parent: Option<SpanId>,
    /// Whether the trace is recorded.
    pub sampled: bool,
    /// The forms it came in.
    pub forms: Forms,
}

impl Context {
    /// A new sampled trace, to be propagated as W3C `traceparent`.
    pub fn start() -> Self {
        Self {
            trace: TraceId::random(),
            parent: None,
            sampled: true,
            forms: Forms {
                w3c: true,
                ..Forms::default()
            },
        }
    }
}

/// The context `headers` carry: W3C's when it parses, else B3's (single header first).
pub fn extract(headers: &HeaderMap) -> Option<Context> {
    let w3c = headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let single = headers
        .get(&B3)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_b3_single);
    let multi = parse_b3_multi(headers);
    let b3 = single.or(multi);
    let (trace, parent, sampled) = match (w3c, b3) {
        (Some(c), _) => c,
        (None, Some((t, _, p, s))) => (t, p, s),
        (None, None) => return None,
    };
    let forms = Forms {
        w3c: w3c.is_some(),
        b3_single: single.is_some(),
        b3_multi: multi.is_some(),
        // B3 headers are written back with the ID width they came with.
        b3_short: b3.is_some_and(|(t, short, ..)| short && t == trace),
    };
    Some(Context {
        trace,
        parent,
        sampled,
        forms,
    })
}

/// `version-traceid-parentid-flags`; a version above 00 may carry more fields after them.
fn parse_traceparent(v: &str) -> Option<(TraceId, Option<SpanId>, bool)> {
    let mut parts = v.trim().split('-');
    let version = unhex::<1>(parts.next()?)?[0];
    let trace = TraceId(unhex::<16>(parts.next()?)?);
    let parent = span_id(parts.next()?)?;
    let flags = unhex::<1>(parts.next()?.get(..2)?)?[0];
    if version == 0xff || trace.0 == [0; 16] || (version == 0 && v.trim().len() != 55) {
        return None;
    }
    Some((trace, Some(parent), flags & 1 == 1))
}

/// `b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`. A lone sampling state
/// (`0`, `1`, `d`) carries no trace and reads as none.
fn parse_b3_single(v: &str) -> Option<(TraceId, bool, Option<SpanId>, bool)> {
    let mut parts = v.trim().split('-');
    let (trace, short) = b3_trace_id(parts.next()?)?;
    let span = span_id(parts.next()?)?;
    let sampled = match parts.next() {
        Some("1" | "d") => true,
        Some("0") | None => false,
        Some(_) => return None,
    };
    if let Some(p) = parts.next() {
        span_id(p)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some((trace, short, Some(span), sampled))
}

/// The `X-B3-*` headers. A missing sampling decision reads as not sampled: the proxy passes
/// such a request on as it came.
fn parse_b3_multi(headers: &HeaderMap) -> Option<(TraceId, bool, Option<SpanId>, bool)> {
    let get = |n: &HeaderName| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let (trace, short) = b3_trace_id(get(&B3_TRACE_ID)?)?;
    let span = span_id(get(&B3_SPAN_ID)?)?;
    let sampled = get(&B3_FLAGS) == Some("1")
        || matches!(get(&B3_SAMPLED), Some("1" | "true" | "True" | "TRUE"));
    Some((trace, short, Some(span), sampled))
}

/// Rewrites the forms `ctx` came in so that `span` is the next hop's parent.
pub fn inject(headers: &mut HeaderMap, ctx: &Context, span: SpanId) {
    let trace = ctx.trace.hex();
    let b3_trace = if ctx.forms.b3_short {
        trace[16..].to_string()
    } else {
        trace.clone()
    };
    let span_hex = span.hex();
    let put = |headers: &mut HeaderMap, name: HeaderName, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    if ctx.forms.w3c {
        let flags = if ctx.sampled { "01" } else { "00" };
        put(
            headers,
            TRACEPARENT,
            format!("00-{trace}-{span_hex}-{flags}"),
        );
    }
    if ctx.forms.b3_single {
        let mut v = format!("{b3_trace}-{span_hex}-{}", if ctx.sampled { 1 } else { 0 });
        if let Some(p) = ctx.parent {
            let _ = write!(v, "-{}", p.hex());
        }
        put(headers, B3, v);
    }
    if ctx.forms.b3_multi {
        put(headers, B3_TRACE_ID, b3_trace);
        put(headers, B3_SPAN_ID, span_hex);
        match ctx.parent {
            Some(p) => put(headers, B3_PARENT, p.hex()),
            None => {
                headers.remove(&B3_PARENT);
            }
        }
        put(
            headers,
            B3_SAMPLED,
            if ctx.sampled { "1" } else { "0" }.into(),
        );
        headers.remove(&B3_FLAGS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    #[test]
    fn w3c_is_continued_and_rewritten_with_the_new_parent() {
        let mut h = headers(&[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("tracestate", "vendor=opaque"),
        ]);
        let ctx = extract(&h).expect("context");
        assert!(ctx.sampled);
        assert_eq!(ctx.trace.hex(), TRACE);
        assert_eq!(ctx.parent.map(|p| p.hex()).as_deref(), Some(PARENT));
        let span = SpanId([1, 2, 3, 4, 5, 6, 7, 8]);
        inject(&mut h, &ctx, span);
        assert_eq!(h["traceparent"], format!("00-{TRACE}-0102030405060708-01"));
        assert_eq!(
            h["tracestate"], "vendor=opaque",
            "tracestate is never touched"
        );
    }

    #[test]
    fn unsampled_and_malformed_contexts() {
        let unsampled = headers(&[("traceparent", &format!("00-{TRACE}-{PARENT}-00"))]);
        assert!(!extract(&unsampled).expect("context").sampled);
        for bad in [
            format!("00-{TRACE}-{PARENT}-01-extra"),
            format!("ff-{TRACE}-{PARENT}-01"),
            format!("00-{}-{PARENT}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{TRACE}-{PARENT}"),
            "00-zz".to_string(),
            String::new(),
        ] {
            assert_eq!(extract(&headers(&[("traceparent", &bad)])), None, "{bad}");
        }
        // A later version may append fields.
        let later = headers(&[("traceparent", &format!("01-{TRACE}-{PARENT}-01-more"))]);
        assert!(extract(&later).expect("context").sampled);
    }

    #[test]
    fn b3_multi_keeps_its_id_width() {
        let mut h = headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", PARENT),
            ("x-b3-sampled", "1"),
        ]);
        let ctx = extract(&h).expect("context");
        assert!(ctx.sampled && ctx.forms.b3_multi && ctx.forms.b3_short);
        assert_eq!(
            ctx.trace.hex(),
            format!("{}a3ce929d0e0e4736", "0".repeat(16))
        );
        inject(&mut h, &ctx, SpanId([0xab; 8]));
        assert_eq!(h["x-b3-traceid"], "a3ce929d0e0e4736");
        assert_eq!(h["x-b3-spanid"], "abababababababab");
        assert_eq!(h["x-b3-parentspanid"], PARENT);
        assert_eq!(h["x-b3-sampled"], "1");
        // Debug implies sampled; no decision reads as not sampled.
        let debug = headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", PARENT),
            ("x-b3-flags", "1"),
        ]);
        assert!(extract(&debug).expect("context").sampled);
        let deferred = headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", PARENT)]);
        assert!(!extract(&deferred).expect("context").sampled);
    }

    #[test]
    fn b3_single() {
        let mut h = headers(&[("b3", &format!("{TRACE}-{PARENT}-1-05e3ac9a4f6e3b90"))]);
        let ctx = extract(&h).expect("context");
        assert!(ctx.sampled && ctx.forms.b3_single && !ctx.forms.w3c);
        inject(&mut h, &ctx, SpanId([0x11; 8]));
        assert_eq!(h["b3"], format!("{TRACE}-1111111111111111-1-{PARENT}"));
        for bad in ["0", "1", "d", "xyz-abc", &format!("{TRACE}-{PARENT}-2")] {
            assert_eq!(extract(&headers(&[("b3", bad)])), None, "{bad}");
        }
    }

    #[test]
    fn a_started_trace_goes_out_as_w3c() {
        let ctx = Context::start();
        let mut h = HeaderMap::new();
        let span = SpanId::random();
        inject(&mut h, &ctx, span);
        let back = extract(&h).expect("context");
        assert_eq!(back.trace, ctx.trace);
        assert_eq!(back.parent, Some(span));
        assert!(back.sampled);
    }
}
