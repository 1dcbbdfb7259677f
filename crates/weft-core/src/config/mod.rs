//! The shared mesh config file: one file, read by the control plane on every platform.
//!
//! TOML by default (YAML accepted by extension), loaded with the `config` crate, overridden by
//! `WEFT_<SECTION>__<KEY>` environment variables (double underscore between levels), and
//! validated: unknown keys, bad values and dangling references are refused with an error that
//! names the file, the line where it can be found, and the key. Keys that are legal but have no
//! effect load with a [`ConfigWarning`] in [`MeshConfig::warnings`].
//!
//! The core reads `[mesh]`, `[ca]`, `[control]` and `[policy]`. Each `[platforms.<name>]`
//! section belongs to the platform adapter of that name, which defines its keys and checks
//! them ([`PlatformSettings`]); a program says which adapters it runs by building its
//! [`Loader`] with them.
//!
//! A YAML file's anchors and aliases are refused before anything parses it
//! ([`refuse_yaml_anchors`]); the CLI puts the other YAML files it reads (Kubernetes
//! manifests, chart values) through the same check.

mod load;
mod platforms;
mod schema;
mod validate;
mod watch;
mod yaml;

pub use load::{ConfigError, ConfigWarning, Loader};
pub use platforms::{PlatformSettings, Platforms, SectionCheck, SectionError};
pub use schema::*;
pub use watch::ConfigWatcher;
pub use yaml::{YamlAnchorError, refuse_yaml_anchors};
