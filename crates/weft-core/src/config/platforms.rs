//! The `[platforms.*]` sections: each belongs to the adapter of that name, which owns its
//! schema and its checks. The core keeps a section as the raw value it was written as, hands
//! it to the adapter's [`PlatformSettings`] when the file is loaded, and keeps what the adapter
//! parsed beside it. A name no adapter of the running program claims is refused.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::schema::MeshConfig;

/// What an adapter's section must provide: serde for its shape, [`validate`](Self::validate)
/// for what serde cannot express.
pub trait PlatformSettings: DeserializeOwned + fmt::Debug + Send + Sync + 'static {
    /// The section's name: `[platforms.<NAME>]`.
    const NAME: &'static str;

    /// Checks the parsed section against itself and the rest of the file (which has passed the
    /// core's own checks): names, cross references, ports. Keys are relative to the section.
    fn validate(&self, check: &mut SectionCheck<'_>) -> Result<(), SectionError>;
}

/// What is wrong with a section, at a key relative to it (`workloads[1].port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionError {
    /// The key, relative to `platforms.<name>`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl SectionError {
    /// An error at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A key and what is wrong with it, both as the file names them.
pub(super) type Invalid = (String, String);

/// What validation of one section may look at and record.
#[derive(Debug)]
pub struct SectionCheck<'a> {
    cfg: &'a MeshConfig,
    prefix: String,
    ports: &'a mut Ports,
    warnings: &'a mut Vec<Invalid>,
}

impl<'a> SectionCheck<'a> {
    pub(super) fn new(
        cfg: &'a MeshConfig,
        name: &str,
        ports: &'a mut Ports,
        warnings: &'a mut Vec<Invalid>,
    ) -> Self {
        Self {
            cfg,
            prefix: format!("platforms.{name}"),
            ports,
            warnings,
        }
    }

    /// The rest of the file: mesh, CA, control listeners, policy and its parsed rules.
    pub fn config(&self) -> &'a MeshConfig {
        self.cfg
    }

    /// Claims `addr:port` as a listener for `key`. Refused when the control plane or another
    /// key (of any section) listens on the same port at an overlapping address: the same one,
    /// or the unspecified address, which binds all of them.
    pub fn claim(&mut self, addr: IpAddr, port: u16, key: &str) -> Result<(), SectionError> {
        let full = self.full_key(key);
        self.ports
            .claim(addr, port, full)
            .map_err(|(_, message)| SectionError::new(key, message))
    }

    /// Records a warning at `key` of this section: legal, but probably not what was meant.
    pub fn warn(&mut self, key: &str, message: impl Into<String>) {
        let full = self.full_key(key);
        self.warnings.push((full, message.into()));
    }

    /// Records a warning at a key outside this section, named in full (`policy.authorizations[0].service`).
    pub fn warn_elsewhere(&mut self, full_key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push((full_key.into(), message.into()));
    }

    /// `platforms.<name>.<key>`.
    pub(super) fn full_key(&self, key: &str) -> String {
        if key.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }
}

/// The listening addresses claimed so far, with the key that claimed each.
#[derive(Debug, Default)]
pub(super) struct Ports(Vec<(IpAddr, u16, String)>);

impl Ports {
    /// Claims `addr:port` for `key`, refusing a port another key listens on at an address
    /// that overlaps: the same address, or the unspecified address (0.0.0.0 or ::), which
    /// binds every address of the host.
    pub(super) fn claim(&mut self, addr: IpAddr, port: u16, key: String) -> Result<(), Invalid> {
        let taken = self.0.iter().find(|(other, other_port, _)| {
            *other_port == port
                && (*other == addr || other.is_unspecified() || addr.is_unspecified())
        });
        if let Some((other, _, other_key)) = taken {
            let message = if *other == addr {
                format!("{addr}:{port} is already used by {other_key}")
            } else {
                format!("{addr}:{port} is already used by {other_key} ({other}:{port})")
            };
            return Err((key, message));
        }
        self.0.push((addr, port, key));
        Ok(())
    }
}

/// A parsed section, kept type-erased beside its raw value.
pub(super) trait AnySettings: Any + fmt::Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any + fmt::Debug + Send + Sync> AnySettings for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// One `[platforms.<name>]` section.
#[derive(Clone, Debug)]
struct Section {
    /// As written (after environment overrides); what equality compares.
    raw: config::Value,
    /// What the adapter parsed, once the file passed validation.
    parsed: Option<Arc<dyn AnySettings>>,
}

/// The `[platforms.*]` sections of a file.
#[derive(Clone, Debug, Default)]
pub struct Platforms {
    sections: BTreeMap<String, Section>,
}

impl PartialEq for Platforms {
    fn eq(&self, other: &Self) -> bool {
        self.sections.len() == other.sections.len()
            && self
                .sections
                .iter()
                .zip(&other.sections)
                .all(|((a, x), (b, y))| a == b && x.raw == y.raw)
    }
}

impl<'de> Deserialize<'de> for Platforms {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, config::Value>::deserialize(d)?;
        Ok(Self {
            sections: raw
                .into_iter()
                .map(|(name, raw)| (name, Section { raw, parsed: None }))
                .collect(),
        })
    }
}

impl Platforms {
    /// The section of adapter `T`, parsed, if the file has one.
    pub fn get<T: PlatformSettings>(&self) -> Option<&T> {
        self.sections
            .get(T::NAME)?
            .parsed
            .as_deref()?
            .as_any()
            .downcast_ref()
    }

    /// The names of the sections in the file.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sections.keys().map(String::as_str)
    }

    /// Each section as written, by name.
    pub(super) fn raw(&self) -> impl Iterator<Item = (&str, &config::Value)> {
        self.sections.iter().map(|(k, s)| (k.as_str(), &s.raw))
    }

    /// Keeps what the adapter parsed from section `name`.
    pub(super) fn set_parsed(&mut self, name: &str, parsed: Parsed) {
        if let Some(section) = self.sections.get_mut(name) {
            section.parsed = Some(parsed);
        }
    }
}

/// A section as its adapter parsed it.
pub(super) type Parsed = Arc<dyn AnySettings>;

/// Why a section was refused.
#[derive(Debug)]
pub(super) enum ReadError {
    /// It does not have the adapter's shape (serde refused it).
    Shape(config::ConfigError),
    /// The adapter's checks refused it.
    Invalid(SectionError),
}

/// How the program reads one adapter's section: parse, then validate.
#[derive(Clone, Copy)]
pub(super) struct Reader {
    /// The section's name.
    pub name: &'static str,
    /// Parses and validates a raw section.
    pub read: fn(config::Value, &mut SectionCheck<'_>) -> Result<Parsed, ReadError>,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Reader").field(&self.name).finish()
    }
}

impl Reader {
    /// The reader of `T`'s section.
    pub fn of<T: PlatformSettings>() -> Self {
        Self {
            name: T::NAME,
            read: read::<T>,
        }
    }
}

fn read<T: PlatformSettings>(
    raw: config::Value,
    check: &mut SectionCheck<'_>,
) -> Result<Parsed, ReadError> {
    let parsed: T = raw.try_deserialize().map_err(ReadError::Shape)?;
    parsed.validate(check).map_err(ReadError::Invalid)?;
    Ok(Arc::new(parsed))
}
