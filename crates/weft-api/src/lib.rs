//! Weft's control-plane API: `Identity.Certify` and `Discovery.Watch`.
//!
//! The messages and services are generated from `proto/weft.proto` at build time (protox
//! compiles the protos, so no `protoc` is required).

pub mod convert;

/// Version 1 of the API.
pub mod v1 {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("weft.api.v1");
}

pub use v1::{
    CertifyRequest, CertifyResponse, Credential, Decision, Endpoint, IdentityPattern,
    InboundPolicy, Protocol, Service, Snapshot, WatchRequest,
};
