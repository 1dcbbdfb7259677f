//! `[platforms.nomad]` and `[platforms.consul]`: the adapters' sections of the mesh config
//! file. `configs/mesh.toml` documents every key.
//!
//! What a section leaves out is found the way Nomad's and Consul's own tools find it:
//! `NOMAD_ADDR`, `NOMAD_TOKEN`, `NOMAD_CACERT`, `NOMAD_CLIENT_CERT`, `NOMAD_CLIENT_KEY`;
//! `CONSUL_HTTP_ADDR` (with `CONSUL_HTTP_SSL`), `CONSUL_HTTP_TOKEN`, `CONSUL_HTTP_TOKEN_FILE`,
//! `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`. The environment is read when the
//! adapter starts, never while the file is validated.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;
use weft_core::config::{MeshConfig, PlatformSettings, SectionCheck, SectionError};
use weft_core::model::check_name;

/// The audience proxies' workload-identity JWTs must carry, unless the section names another.
pub const DEFAULT_AUDIENCE: &str = "weft";

/// Nomad's API when neither the section nor `NOMAD_ADDR` names one.
pub const DEFAULT_NOMAD_ADDR: &str = "http://127.0.0.1:4646";

/// Consul's API when neither the section nor `CONSUL_HTTP_ADDR` names one.
pub const DEFAULT_CONSUL_ADDR: &str = "http://127.0.0.1:8500";

/// `[platforms.nomad]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NomadSettings {
    /// Whether the Nomad adapter runs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The HTTP API (`http://` or `https://`); default `NOMAD_ADDR`, else
    /// [`DEFAULT_NOMAD_ADDR`].
    #[serde(default)]
    pub address: Option<String>,
    /// An ACL token; default `NOMAD_TOKEN`.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the ACL token (such as the control plane's own workload identity),
    /// read again at every reconnect, since workload identities are renewed.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The Nomad namespaces whose services join the mesh; empty (the default) means all.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// The CA bundle that signs the API's certificate; default `NOMAD_CACERT`, else the
    /// system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate for mutual TLS with the API; default `NOMAD_CLIENT_CERT`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Its key; default `NOMAD_CLIENT_KEY`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// The audience a proxy's workload-identity JWT must be issued for.
    #[serde(default = "default_audience")]
    pub token_audience: String,
}

/// `[platforms.consul]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulSettings {
    /// Whether the Consul adapter runs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The HTTP API; default `CONSUL_HTTP_ADDR`, else [`DEFAULT_CONSUL_ADDR`].
    #[serde(default)]
    pub address: Option<String>,
    /// An ACL token; default `CONSUL_HTTP_TOKEN`.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the ACL token; default `CONSUL_HTTP_TOKEN_FILE`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The CA bundle that signs the API's certificate; default `CONSUL_CACERT`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate for mutual TLS with the API; default `CONSUL_CLIENT_CERT`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Its key; default `CONSUL_CLIENT_KEY`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// The most services watched at once (one blocking query each); more are left out with
    /// a warning.
    #[serde(default = "default_max_services")]
    pub max_services: usize,
}

fn yes() -> bool {
    true
}

fn default_audience() -> String {
    DEFAULT_AUDIENCE.to_string()
}

fn default_max_services() -> usize {
    2000
}

impl Default for NomadSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            address: None,
            token: None,
            token_file: None,
            namespaces: Vec::new(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            token_audience: default_audience(),
        }
    }
}

impl Default for ConsulSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            address: None,
            token: None,
            token_file: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            max_services: default_max_services(),
        }
    }
}

// Tokens are secrets: never in a log line.
impl std::fmt::Debug for NomadSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NomadSettings")
            .field("enabled", &self.enabled)
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("namespaces", &self.namespaces)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("token_audience", &self.token_audience)
            .finish()
    }
}

impl std::fmt::Debug for ConsulSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulSettings")
            .field("enabled", &self.enabled)
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("max_services", &self.max_services)
            .finish()
    }
}

impl NomadSettings {
    /// The Nomad section of `cfg`, if it has one.
    pub fn of(cfg: &MeshConfig) -> Option<&Self> {
        cfg.platforms.get::<Self>()
    }
}

impl ConsulSettings {
    /// The Consul section of `cfg`, if it has one.
    pub fn of(cfg: &MeshConfig) -> Option<&Self> {
        cfg.platforms.get::<Self>()
    }
}

/// The checks both sections share: the address, the token and the TLS files.
fn check_connection(
    address: Option<&str>,
    token: Option<&str>,
    token_file: Option<&PathBuf>,
    client: (Option<&PathBuf>, Option<&PathBuf>),
) -> Result<(), SectionError> {
    if let Some(address) = address {
        check_address(address).map_err(|e| SectionError::new("address", e))?;
    }
    if token.is_some() && token_file.is_some() {
        return Err(SectionError::new(
            "token_file",
            "give the token or a token file, not both",
        ));
    }
    if token.is_some_and(|t| t.trim().is_empty()) {
        return Err(SectionError::new("token", "the token is empty"));
    }
    match client {
        (Some(_), None) => Err(SectionError::new("client_key", "required with client_cert")),
        (None, Some(_)) => Err(SectionError::new("client_cert", "required with client_key")),
        _ => Ok(()),
    }
}

/// An API address: an `http://` or `https://` URL with a host and nothing after the port
/// but an optional path prefix.
pub fn check_address(address: &str) -> Result<url::Url, String> {
    if !address.contains("://") {
        return Err(format!("{address:?}: expected http:// or https://"));
    }
    let url = url::Url::parse(address).map_err(|e| format!("{address:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{address:?}: expected http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{address:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{address:?} must not have a query or fragment"));
    }
    Ok(url)
}

impl PlatformSettings for NomadSettings {
    const NAME: &'static str = crate::NOMAD;

    fn validate(&self, _check: &mut SectionCheck<'_>) -> Result<(), SectionError> {
        check_connection(
            self.address.as_deref(),
            self.token.as_deref(),
            self.token_file.as_ref(),
            (self.client_cert.as_ref(), self.client_key.as_ref()),
        )?;
        let mut seen = BTreeSet::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let key = format!("namespaces[{i}]");
            check_name(ns).map_err(|e| SectionError::new(&key, e.to_string()))?;
            if !seen.insert(ns) {
                return Err(SectionError::new(
                    key,
                    format!("namespace {ns} is listed twice"),
                ));
            }
        }
        if self.token_audience.is_empty() || self.token_audience.len() > 253 {
            return Err(SectionError::new(
                "token_audience",
                "the audience must be 1 to 253 characters",
            ));
        }
        Ok(())
    }
}

impl PlatformSettings for ConsulSettings {
    const NAME: &'static str = crate::CONSUL;

    fn validate(&self, _check: &mut SectionCheck<'_>) -> Result<(), SectionError> {
        check_connection(
            self.address.as_deref(),
            self.token.as_deref(),
            self.token_file.as_ref(),
            (self.client_cert.as_ref(), self.client_key.as_ref()),
        )?;
        if !(1..=100_000).contains(&self.max_services) {
            return Err(SectionError::new(
                "max_services",
                "expected 1 to 100000 services",
            ));
        }
        Ok(())
    }
}

/// Where and how to reach an API, once the environment has filled in what the section left
/// out.
#[derive(Clone)]
pub struct Connection {
    /// The API's base URL.
    pub base: url::Url,
    /// The ACL token, or the file to read it from at each reconnect.
    pub token: TokenSource,
    /// A CA bundle to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("base", &self.base.as_str())
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// Where the ACL token comes from.
#[derive(Clone)]
pub enum TokenSource {
    /// No token (an API without ACLs).
    None,
    /// A fixed token.
    Value(String),
    /// A file, read again at each reconnect.
    File(PathBuf),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::None => f.write_str("None"),
            TokenSource::Value(_) => f.write_str("Value(<redacted>)"),
            TokenSource::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// Reads an environment variable, treating an empty one as unset.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl NomadSettings {
    /// The connection, with the environment's `NOMAD_*` variables for what the section leaves
    /// out.
    pub fn connection(&self) -> Result<Connection, String> {
        let address = self
            .address
            .clone()
            .or_else(|| env("NOMAD_ADDR"))
            .unwrap_or_else(|| DEFAULT_NOMAD_ADDR.to_string());
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => TokenSource::Value(t.clone()),
            (None, Some(f)) => TokenSource::File(f.clone()),
            (None, None) => env("NOMAD_TOKEN").map_or(TokenSource::None, TokenSource::Value),
        };
        connection(
            &address,
            token,
            self.ca_file
                .clone()
                .or_else(|| env("NOMAD_CACERT").map(PathBuf::from)),
            self.client_cert
                .clone()
                .or_else(|| env("NOMAD_CLIENT_CERT").map(PathBuf::from)),
            self.client_key
                .clone()
                .or_else(|| env("NOMAD_CLIENT_KEY").map(PathBuf::from)),
        )
    }
}

impl ConsulSettings {
    /// The connection, with the environment's `CONSUL_*` variables for what the section leaves
    /// out. `CONSUL_HTTP_ADDR` may omit the scheme, as Consul's CLI allows: then it is
    /// `https://` when `CONSUL_HTTP_SSL` is true, else `http://`.
    pub fn connection(&self) -> Result<Connection, String> {
        let address = match (&self.address, env("CONSUL_HTTP_ADDR")) {
            (Some(a), _) => a.clone(),
            (None, Some(a)) if a.contains("://") => a,
            (None, Some(a)) => {
                let tls = env("CONSUL_HTTP_SSL").is_some_and(|v| v == "true" || v == "1");
                format!("{}://{a}", if tls { "https" } else { "http" })
            }
            (None, None) => DEFAULT_CONSUL_ADDR.to_string(),
        };
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => TokenSource::Value(t.clone()),
            (None, Some(f)) => TokenSource::File(f.clone()),
            (None, None) => match (env("CONSUL_HTTP_TOKEN"), env("CONSUL_HTTP_TOKEN_FILE")) {
                (Some(t), _) => TokenSource::Value(t),
                (None, Some(f)) => TokenSource::File(f.into()),
                (None, None) => TokenSource::None,
            },
        };
        connection(
            &address,
            token,
            self.ca_file
                .clone()
                .or_else(|| env("CONSUL_CACERT").map(PathBuf::from)),
            self.client_cert
                .clone()
                .or_else(|| env("CONSUL_CLIENT_CERT").map(PathBuf::from)),
            self.client_key
                .clone()
                .or_else(|| env("CONSUL_CLIENT_KEY").map(PathBuf::from)),
        )
    }
}

fn connection(
    address: &str,
    token: TokenSource,
    ca_file: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Connection, String> {
    let base = check_address(address)?;
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("a client certificate needs its key, and a key its certificate".into()),
    };
    Ok(Connection {
        base,
        token,
        ca_file,
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(check_address("http://127.0.0.1:4646").is_ok());
        assert!(check_address("https://nomad.service.consul:4646/").is_ok());
        for bad in [
            "127.0.0.1:4646",
            "ftp://x",
            "http://",
            "http://x/?a=1",
            "not a url",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_never_print() {
        let s = NomadSettings {
            token: Some("s3cr3t".into()),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("s3cr3t"));
        let c = s.connection().unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let s = ConsulSettings {
            token: Some("s3cr3t".into()),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }
}
