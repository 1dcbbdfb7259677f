//! The policy engine: pure functions from configuration and identities to decisions.

pub mod authz;

pub use authz::{AuthorizationRule, Decision, IdentityMatch, InboundPolicy};
