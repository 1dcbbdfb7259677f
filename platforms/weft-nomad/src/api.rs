//! A small client for the HTTP APIs of Nomad and Consul: our own types over reqwest, the ACL
//! token in the API's header, bounded reads, and the blocking-query index rules both APIs
//! document.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use weft_core::platform::error_chain;

use crate::config::{Connection, TokenSource};

/// The most a list or read answer may hold; an API that sends more is treated as failing.
pub const MAX_BODY: usize = 64 << 20;

/// The longest line of an event stream.
pub const MAX_LINE: usize = 16 << 20;

/// How long a plain request may take; a blocking query gets its wait on top.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Which API: its token and index headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Nomad,
    Consul,
}

impl Flavor {
    fn token_header(self) -> &'static str {
        match self {
            Flavor::Nomad => "X-Nomad-Token",
            Flavor::Consul => "X-Consul-Token",
        }
    }

    fn index_header(self) -> &'static str {
        match self {
            Flavor::Nomad => "X-Nomad-Index",
            Flavor::Consul => "X-Consul-Index",
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The settings cannot make a client (unreadable TLS files, a bad token file).
    #[error("{0}")]
    Setup(String),
    /// The request did not get an answer.
    #[error("{url}: {reason}")]
    Transport {
        /// What was asked.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The API answered with an error status.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// What was asked.
        url: String,
        /// The status.
        status: u16,
        /// The start of the answer.
        body: String,
    },
    /// The answer could not be read as expected.
    #[error("{url}: {reason}")]
    Invalid {
        /// What was asked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ApiError {
    /// Whether the API refused the token (403) or does not know it (401).
    pub fn is_denied(&self) -> bool {
        matches!(
            self,
            ApiError::Status {
                status: 401 | 403,
                ..
            }
        )
    }

    /// Whether the API answered 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Status { status: 404, .. })
    }
}

/// A client of one API.
#[derive(Clone, Debug)]
pub struct Api {
    http: reqwest::Client,
    conn: Connection,
    flavor: Flavor,
}

/// The index of a blocking query, kept by the rules both APIs give: an index that goes
/// backwards is reset (the cluster's state was restored or rebuilt, so everything must be read
/// again), and an index is never 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Index(pub u64);

impl Index {
    /// Takes the index of an answer. Returns `false` when it went backwards: the caller must
    /// read everything again.
    pub fn advance(&mut self, answered: u64) -> bool {
        let forward = answered >= self.0;
        self.0 = answered.max(1);
        forward
    }
}

impl Api {
    /// A client for `conn`.
    pub fn new(conn: Connection, flavor: Flavor) -> Result<Self, ApiError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("weft-control/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &conn.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| ApiError::Setup(format!("ca_file {}: {e}", ca.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ApiError::Setup(format!("ca_file {}: {e}", ca.display())))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &conn.client {
            let mut pem = std::fs::read(cert)
                .map_err(|e| ApiError::Setup(format!("client_cert {}: {e}", cert.display())))?;
            pem.push(b'\n');
            pem.extend(
                std::fs::read(key)
                    .map_err(|e| ApiError::Setup(format!("client_key {}: {e}", key.display())))?,
            );
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| ApiError::Setup(format!("client certificate: {e}")))?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| ApiError::Setup(format!("HTTP client: {e}")))?;
        Ok(Api { http, conn, flavor })
    }

    /// The API's base URL.
    pub fn base(&self) -> &url::Url {
        &self.conn.base
    }

    /// The URL of `path` (which starts with `/`) with `query`.
    pub fn url(&self, path: &str, query: &[(&str, &str)]) -> url::Url {
        let mut url = self.conn.base.clone();
        let prefix = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{prefix}{path}"));
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    fn token(&self) -> Result<Option<String>, ApiError> {
        match &self.conn.token {
            TokenSource::None => Ok(None),
            TokenSource::Value(t) => Ok(Some(t.clone())),
            TokenSource::File(f) => std::fs::read_to_string(f)
                .map(|t| Some(t.trim().to_string()))
                .map_err(|e| ApiError::Setup(format!("token_file {}: {e}", f.display()))),
        }
    }

    /// Sends a GET, bounded by `timeout` (a stream has none), and turns an error status into
    /// an error that carries the start of the answer.
    async fn send(
        &self,
        url: &url::Url,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ApiError> {
        let mut req = self.http.get(url.clone());
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(token) = self.token()? {
            req = req.header(self.flavor.token_header(), token);
        }
        let rsp = req.send().await.map_err(|e| ApiError::Transport {
            url: redact(url),
            reason: error_chain(&e),
        })?;
        if !rsp.status().is_success() {
            let status = rsp.status().as_u16();
            let body = read_limited(rsp, 512).await.unwrap_or_default();
            return Err(ApiError::Status {
                url: redact(url),
                status,
                body: String::from_utf8_lossy(&body).trim().to_string(),
            });
        }
        Ok(rsp)
    }

    /// GETs `path` and reads the answer as JSON, with the API's index.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<(T, u64), ApiError> {
        self.get_url(self.url(path, query), Duration::ZERO).await
    }

    /// A blocking query: answers once the state behind `path` is newer than `index`, or after
    /// `wait` with the same index.
    pub async fn block<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        index: Index,
        wait: Duration,
    ) -> Result<(T, u64), ApiError> {
        let index = index.0.to_string();
        let wait_s = format!("{}s", wait.as_secs().max(1));
        let mut q: Vec<(&str, &str)> = query.to_vec();
        q.push(("index", &index));
        q.push(("wait", &wait_s));
        // Both APIs add up to a sixteenth of the wait as jitter.
        self.get_url(self.url(path, &q), wait + wait / 16).await
    }

    async fn get_url<T: DeserializeOwned>(
        &self,
        url: url::Url,
        wait: Duration,
    ) -> Result<(T, u64), ApiError> {
        // `wait` is the blocking time the server may take on top of a plain request's.
        let rsp = self.send(&url, Some(REQUEST_TIMEOUT + wait)).await?;
        let index = rsp
            .headers()
            .get(self.flavor.index_header())
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let body = read_limited(rsp, MAX_BODY)
            .await
            .map_err(|reason| ApiError::Invalid {
                url: redact(&url),
                reason,
            })?;
        let value = serde_json::from_slice(&body).map_err(|e| ApiError::Invalid {
            url: redact(&url),
            reason: format!("unexpected answer: {e}"),
        })?;
        Ok((value, index))
    }

    /// Opens a stream of newline-delimited JSON (Nomad's event stream).
    pub async fn stream(&self, path: &str, query: &[(&str, &str)]) -> Result<Lines, ApiError> {
        let url = self.url(path, query);
        let rsp = self.send(&url, None).await?;
        Ok(Lines {
            rsp,
            buf: BytesMut::new(),
            url: redact(&url),
        })
    }
}

/// The lines of a streamed answer.
#[derive(Debug)]
pub struct Lines {
    rsp: reqwest::Response,
    buf: BytesMut,
    url: String,
}

impl Lines {
    /// The next non-empty line; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ApiError> {
        loop {
            if let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(at + 1).freeze();
                let line = line.slice(..at);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_LINE {
                return Err(ApiError::Invalid {
                    url: self.url.clone(),
                    reason: format!("a line longer than {MAX_LINE} bytes"),
                });
            }
            match self.rsp.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(ApiError::Transport {
                        url: self.url.clone(),
                        reason: error_chain(&e),
                    });
                }
            }
        }
    }
}

/// Reads at most `max` bytes of an answer; more is an error.
async fn read_limited(mut rsp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = rsp.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > max {
            if max <= 512 {
                body.extend_from_slice(&chunk[..max - body.len()]);
                return Ok(body);
            }
            return Err(format!("an answer larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A URL for errors and logs: without a password, should the configured address carry one.
fn redact(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_password(None).ok();
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_going_backwards_is_reset() {
        let mut i = Index::default();
        assert!(i.advance(10));
        assert_eq!(i, Index(10));
        assert!(i.advance(10));
        assert!(!i.advance(3), "backwards");
        assert_eq!(i, Index(3));
        assert!(!i.advance(0));
        assert_eq!(i, Index(1), "never 0");
    }
}
