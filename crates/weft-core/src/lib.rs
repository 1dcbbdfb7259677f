//! Weft's platform-agnostic core.
//!
//! This crate knows no platform. It holds:
//! - [`model`]: trust domains, SPIFFE identities, services, workloads and endpoints;
//! - [`registry`]: the versioned, watchable service registry that platform adapters feed;
//! - [`platform`]: the seam every platform adapter implements;
//! - [`policy`]: the policy engine, evaluated as pure functions;
//! - [`config`]: the shared mesh config file (schema, loading, validation, watching);
//! - [`observability`]: where proxies export spans, start traces and log requests;
//! - [`private_fs`]: files only the mesh's user may read (keys, attestation tokens);
//! - [`listener`]: the connection bounds of the plaintext HTTP listeners platforms probe.

pub mod config;
pub mod listener;
pub mod model;
pub mod observability;
pub mod platform;
pub mod policy;
pub mod private_fs;
pub mod registry;

pub use model::{
    AddressKind, Endpoint, EndpointState, Identity, Protocol, Service, ServiceName, ServicePort,
    Target, TrustDomain, WorkloadKey,
};
pub use registry::{Registry, RegistrySnapshot, RegistryWriter, Topic, TopicWatch, WorkloadRef};
