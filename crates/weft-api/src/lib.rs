//! Weft's control-plane API: `Identity.Certify`, `Discovery.Resolve` and
//! `Discovery.Proxy`.
//!
//! The messages and services are generated from `proto/weft.proto` at build time (protox
//! compiles the protos, so no `protoc` is required).

pub mod codec;
pub mod convert;

/// Version 1 of the API.
pub mod v1 {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("weft.api.v1");
}

pub use v1::{
    AccessLogFormat, CertifyRequest, CertifyResponse, Credential, Decision, Denied, Endpoint,
    EndpointChanges, EndpointState, IdentityPattern, InboundPolicy, Label, MetricSample, NotInMesh,
    Observability, Protocol, ProxyRequest, ProxySettings, ResolveRequest, ResolveUpdate, Resolved,
    ServerPolicy, ServiceMeta, ServiceTarget, TapEvent, TapRequest, TelemetryAck, TelemetryReport,
    TrafficPolicy,
};

/// What a proxy announces it can read on its Resolve streams: the `policy` update.
pub const CAPABILITY_TRAFFIC_POLICY: &str = "traffic-policy";
