//! The policy engine: pure functions from configuration and identities to decisions.

pub mod authz;
pub mod authz_spec;
pub mod backend;
pub mod fault;
pub mod ratelimit;
pub mod resilience;
pub mod route;
pub mod route_policy;
pub mod route_spec;
pub mod traffic;

pub use authz::{AuthorizationRule, Decision, IdentityMatch, InboundPolicy};
