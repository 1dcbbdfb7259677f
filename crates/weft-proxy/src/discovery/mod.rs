//! Discovery on demand.
//!
//! - [`settings`]: the proxy's own settings from `Discovery.Proxy` (the inbound policy of each
//!   of its servers and the trust bundle), followed for the proxy's whole life.
//! - [`resolve`]: one `Discovery.Resolve` stream per destination in use, opened at first use
//!   and closed once the destination has been idle for a while.
//!
//! Both keep what they last heard while the control plane is away, and resync on reconnect.

pub mod resolve;
pub mod settings;

pub use resolve::{EndpointView, Resolution, ResolvedService};
pub use settings::{PolicyError, ProxySettings, ServerSettings};
