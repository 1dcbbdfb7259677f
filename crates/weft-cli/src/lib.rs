//! The parts of the `weft` command that read files a user may have been handed, as a library
//! so that they can be exercised without the binary (the fuzz targets under `tests/fuzz/` call
//! them): `weft inject` for Kubernetes manifests ([`inject`]) and Nomad job specs
//! ([`inject_nomad`]), and `weft install` ([`install`]) with the Go-template renderer behind it
//! ([`gotmpl`]). The binary (`src/main.rs`) parses the command line and calls them.

pub mod gotmpl;
pub mod inject;
pub mod inject_nomad;
pub mod install;
