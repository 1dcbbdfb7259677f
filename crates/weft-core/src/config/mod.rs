//! The shared mesh config file: one file, read by the control plane on every platform.
//!
//! TOML by default (YAML accepted by extension), loaded with the `config` crate, overridden by
//! `WEFT_<SECTION>__<KEY>` environment variables (double underscore between levels), and
//! validated: unknown keys, bad values and dangling references are refused with an error that
//! names the file, the line where it can be found, and the key. Keys that are legal but have no
//! effect load with a [`ConfigWarning`] in [`MeshConfig::warnings`].

mod load;
mod schema;
mod validate;
mod watch;

pub use load::{ConfigError, ConfigWarning, load, load_from_str};
pub use schema::*;
pub use watch::ConfigWatcher;
