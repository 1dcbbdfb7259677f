//! A finished span as the proxy records it, and its OTLP form.

use std::time::SystemTime;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span, status};

use super::context::{SpanId, TraceId};

/// What a span is, in OpenTelemetry's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The inbound side of a hop: a request a peer sent to this proxy's workload.
    Server,
    /// The outbound side: a call this proxy's workload made, or one attempt of it.
    Client,
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

/// A finished span.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    /// Its trace.
    pub trace: TraceId,
    /// Its own ID.
    pub span: SpanId,
    /// Its parent, if any.
    pub parent: Option<SpanId>,
    /// Its name (`GET`, `GET /users`, `pkg.Service/Method`).
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// When it began and ended.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its attributes, keyed by OpenTelemetry's semantic conventions where they have a name
    /// (`http.request.method`, `rpc.service`, ...) and by `weft.*` where they do not.
    pub attributes: Vec<(&'static str, Value)>,
    /// Why it failed, if it did (a 5xx, a gRPC error status, no response).
    pub error: Option<String>,
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// An OTLP attribute.
pub fn key_value(key: &str, value: Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s),
        Value::Int(n) => any_value::Value::IntValue(n),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

/// The span's OTLP form.
pub fn to_otlp(r: SpanRecord) -> Span {
    // Bit 8 of the flags says whether the parent is remote (bit 9); W3C's sampled flag is bit 0.
    let remote_parent = r.kind == Kind::Server;
    let flags = 0x1 | 0x100 | if remote_parent { 0x200 } else { 0 };
    Span {
        trace_id: r.trace.0.to_vec(),
        span_id: r.span.0.to_vec(),
        parent_span_id: r.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags,
        name: r.name,
        kind: match r.kind {
            Kind::Server => span::SpanKind::Server,
            Kind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: nanos(r.start),
        end_time_unix_nano: nanos(r.end),
        attributes: r
            .attributes
            .into_iter()
            .map(|(k, v)| key_value(k, v))
            .collect(),
        status: Some(match r.error {
            Some(message) => Status {
                message,
                code: status::StatusCode::Error as i32,
            },
            None => Status::default(),
        }),
        ..Span::default()
    }
}
