//! Nomad workload-identity JWTs: RS256 signatures checked against the cluster's JSON Web Key
//! Set (`/.well-known/jwks.json`), then the time and audience claims.
//!
//! Keys are cached by key ID. A token signed with a key ID the cache does not hold makes the
//! set be fetched again (Nomad rotates its keyring), at most once per [`REFETCH_EVERY`], so a
//! stream of tokens with made-up key IDs cannot make the control plane hammer the API.
//!
//! The cache's lock is never held across a fetch, which may take up to the API client's
//! request timeout: a token of a cached key is checked at once while a fetch is in flight.
//! At most one fetch is in flight; tokens of unknown keys that arrive meanwhile wait for its
//! outcome instead of fetching again. The fetch runs as a task of its own, so it ends and
//! serves its waiters even if the attestation that started it is abandoned.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use weft_core::platform::{AttestError, clip};

use crate::api::Api;

/// The least time between two fetches of the key set.
pub const REFETCH_EVERY: Duration = Duration::from_secs(5);

/// How far clocks may disagree when `exp` and `nbf` are checked.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// The largest token accepted.
const MAX_TOKEN: usize = 16 << 10;

/// The most keys kept from one key set.
const MAX_KEYS: usize = 64;

/// What a workload-identity JWT says, once verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// `nomad_namespace`.
    pub namespace: String,
    /// `nomad_job_id`.
    pub job: String,
    /// `nomad_allocation_id`.
    pub allocation: String,
    /// `nomad_task`, for a task's identity.
    pub task: Option<String>,
    /// `nomad_service`, for a service's identity.
    pub service: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    nomad_namespace: Option<String>,
    #[serde(default)]
    nomad_job_id: Option<String>,
    #[serde(default)]
    nomad_allocation_id: Option<String>,
    #[serde(default)]
    nomad_task: Option<String>,
    #[serde(default)]
    nomad_service: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::One(a) => a == aud,
            Audience::Many(all) => all.iter().any(|a| a == aud),
        }
    }
}

#[derive(Deserialize)]
struct KeySet {
    #[serde(default)]
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    #[serde(default)]
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

/// An RSA public key.
#[derive(Clone, Debug)]
struct RsaKey {
    n: Vec<u8>,
    e: Vec<u8>,
}

/// How a fetch of the key set ended: `Err` with why it failed.
type Fetched = Result<(), String>;

#[derive(Default)]
struct Cache {
    keys: HashMap<String, RsaKey>,
    /// When the last fetch started.
    fetched: Option<Instant>,
    /// The fetch in flight: its outcome, once it ends (the keys are in `keys` by then).
    in_flight: Option<tokio::sync::watch::Receiver<Option<Fetched>>>,
    /// How many fetches were started.
    fetches: u64,
}

/// The cluster's signing keys, fetched as needed.
pub struct Jwks {
    api: Api,
    refetch_every: Duration,
    /// Held only to read or update the cache, never across an await.
    cache: Arc<Mutex<Cache>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("base", &self.api.base().as_str())
            .finish_non_exhaustive()
    }
}

fn rejected(why: impl Into<String>) -> AttestError {
    AttestError::Rejected(why.into())
}

fn decode(part: &str, what: &str) -> Result<Vec<u8>, AttestError> {
    URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| rejected(format!("the token's {what} is not base64url")))
}

/// A JWT part as `T`, if it is JSON text (RFC 7515: UTF-8). Reading a struct skips the fields
/// it does not name without checking them, so the whole part is first read as a JSON value;
/// the struct is then read from the bytes, which keeps serde's refusal of duplicate fields.
fn json_text<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice::<serde_json::Value>(bytes).ok()?;
    serde_json::from_slice(bytes).ok()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A token split into its parts, with a header that names an accepted algorithm and a key.
struct Token<'a> {
    kid: String,
    /// `header.payload`, what the signature covers.
    signed: &'a str,
    payload: &'a str,
    signature: &'a str,
}

impl<'a> Token<'a> {
    /// Splits `token` and reads its header; nothing is verified yet.
    fn parse(token: &'a str) -> Result<Self, AttestError> {
        if token.len() > MAX_TOKEN {
            return Err(rejected("the token is too large"));
        }
        let token = token.trim();
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(rejected("not a JWT (three dot-separated parts)"));
        };
        let header: Header = json_text(&decode(h, "header")?)
            .ok_or_else(|| rejected("the token's header is not a JWT header"))?;
        // Only what Nomad signs with; above all never `none`.
        if header.alg != "RS256" {
            return Err(rejected(format!(
                "algorithm {:?} is not accepted (only RS256)",
                clip(&header.alg, 20)
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| rejected("the token names no key (kid)"))?;
        Ok(Token {
            kid,
            signed: &token[..h.len() + 1 + p.len()],
            payload: p,
            signature: s,
        })
    }

    /// Checks the signature with `key`, then the claims at time `now` (seconds since the
    /// epoch) for `audience`.
    fn check(&self, key: &RsaKey, audience: &str, now: f64) -> Result<Claims, AttestError> {
        let signature = decode(self.signature, "signature")?;
        ring::signature::RsaPublicKeyComponents {
            n: &key.n,
            e: &key.e,
        }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            self.signed.as_bytes(),
            &signature,
        )
        .map_err(|_| rejected("bad signature"))?;
        let payload: Payload = json_text(&decode(self.payload, "payload")?)
            .ok_or_else(|| rejected("the token's claims are not JSON claims"))?;
        let leeway = LEEWAY.as_secs_f64();
        match payload.exp {
            None => return Err(rejected("the token has no expiry (exp)")),
            Some(exp) if exp + leeway <= now => return Err(rejected("the token has expired")),
            Some(_) => {}
        }
        if payload.nbf.is_some_and(|nbf| nbf - leeway > now) {
            return Err(rejected("the token is not valid yet (nbf)"));
        }
        if !payload.aud.as_ref().is_some_and(|a| a.contains(audience)) {
            return Err(rejected(format!(
                "the token is not for the audience {audience:?}"
            )));
        }
        let field = |v: Option<String>, name: &str| {
            v.filter(|s| !s.is_empty())
                .ok_or_else(|| rejected(format!("the token has no {name} claim")))
        };
        Ok(Claims {
            namespace: field(payload.nomad_namespace, "nomad_namespace")?,
            job: field(payload.nomad_job_id, "nomad_job_id")?,
            allocation: field(payload.nomad_allocation_id, "nomad_allocation_id")?,
            task: payload.nomad_task.filter(|s| !s.is_empty()),
            service: payload.nomad_service.filter(|s| !s.is_empty()),
        })
    }
}

/// The RS256 keys of a key set, by key ID: what a fetch keeps.
fn keys_of(set: KeySet) -> HashMap<String, RsaKey> {
    set.keys
        .into_iter()
        .filter(|k| k.kty == "RSA" && k.alg.as_deref().is_none_or(|a| a == "RS256"))
        .filter_map(|k| {
            let n = URL_SAFE_NO_PAD.decode(k.n?.trim_end_matches('=')).ok()?;
            let e = URL_SAFE_NO_PAD.decode(k.e?.trim_end_matches('=')).ok()?;
            Some((k.kid?, RsaKey { n, e }))
        })
        .take(MAX_KEYS)
        .collect()
}

/// Verifies `token` for `audience` against a fixed key set, `jwks` (the JSON Nomad serves at
/// `/.well-known/jwks.json`), at `now` (seconds since the epoch): the checks
/// [`Jwks::verify`] makes, without fetching anything. A key set that cannot be read is
/// `Unavailable`, as a failed fetch is. The fuzz target of the verifier (`tests/fuzz`) calls
/// this.
pub fn verify_with_key_set(
    token: &str,
    audience: &str,
    jwks: &[u8],
    now: f64,
) -> Result<Claims, AttestError> {
    let set: KeySet = serde_json::from_slice(jwks)
        .map_err(|e| AttestError::Unavailable(format!("the key set is not a JWKS: {e}")))?;
    let keys = keys_of(set);
    let parsed = Token::parse(token)?;
    let key = keys
        .get(&parsed.kid)
        .ok_or_else(|| rejected(format!("unknown signing key {:?}", clip(&parsed.kid, 80))))?;
    parsed.check(key, audience, now)
}

impl Jwks {
    /// The key set of the Nomad API behind `api`.
    pub fn new(api: Api, refetch_every: Duration) -> Self {
        Self {
            api,
            refetch_every,
            cache: Arc::new(Mutex::new(Cache::default())),
        }
    }

    /// How many times the key set was fetched.
    pub fn fetches(&self) -> u64 {
        lock(&self.cache).fetches
    }

    /// Verifies `token` and returns its claims, if it is for `audience`.
    pub async fn verify(&self, token: &str, audience: &str) -> Result<Claims, AttestError> {
        let parsed = Token::parse(token)?;
        let key = self.key(&parsed.kid).await?;
        parsed.check(&key, audience, now_secs())
    }

    /// The key `kid`, fetching the set again when it is unknown and the last fetch is old
    /// enough, or waiting for the fetch in flight.
    async fn key(&self, kid: &str) -> Result<RsaKey, AttestError> {
        let unknown = || rejected(format!("unknown signing key {:?}", clip(kid, 80)));
        let mut outcome = {
            let mut cache = lock(&self.cache);
            if let Some(k) = cache.keys.get(kid) {
                return Ok(k.clone());
            }
            // A fetch task that ended without a word (its runtime shut down) leaves nothing
            // to wait for.
            if cache
                .in_flight
                .as_ref()
                .is_some_and(|rx| rx.has_changed().is_err())
            {
                cache.in_flight = None;
            }
            match &cache.in_flight {
                Some(rx) => rx.clone(),
                None => {
                    if cache
                        .fetched
                        .is_some_and(|t| t.elapsed() < self.refetch_every)
                    {
                        return Err(unknown());
                    }
                    cache.fetched = Some(Instant::now());
                    cache.fetches += 1;
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    cache.in_flight = Some(rx.clone());
                    tokio::spawn(fetch(self.api.clone(), self.cache.clone(), tx));
                    rx
                }
            }
        };
        let ended = outcome
            .wait_for(Option::is_some)
            .await
            .map(|o| o.clone())
            .map_err(|_| {
                AttestError::Unavailable(
                    "the cluster's signing keys: the fetch ended without an answer".into(),
                )
            })?;
        if let Some(Err(why)) = ended {
            return Err(AttestError::Unavailable(format!(
                "the cluster's signing keys: {why}"
            )));
        }
        lock(&self.cache).keys.get(kid).cloned().ok_or_else(unknown)
    }
}

fn lock(cache: &Mutex<Cache>) -> MutexGuard<'_, Cache> {
    // The cache is consistent between statements, so a panic elsewhere leaves it usable.
    cache.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fetches the key set into `cache`, then tells the callers waiting on `done` how it went.
/// A failed fetch keeps the keys already cached.
async fn fetch(
    api: Api,
    cache: Arc<Mutex<Cache>>,
    done: tokio::sync::watch::Sender<Option<Fetched>>,
) {
    let got = api
        .get::<KeySet>("/.well-known/jwks.json", &[])
        .await
        .map(|(set, _)| keys_of(set));
    let outcome = {
        let mut cache = lock(&cache);
        cache.in_flight = None;
        match got {
            Ok(keys) => {
                cache.keys = keys;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    platform = crate::NOMAD,
                    error = %e,
                    "cannot fetch the cluster's signing keys"
                );
                Err(e.to_string())
            }
        }
    };
    // No one may be waiting any more; that is fine.
    let _ = done.send(Some(outcome));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn a_header_or_claims_that_are_not_json_text_are_refused() {
        // A JOSE header is UTF-8 JSON (RFC 7515). serde skips fields it does not read without
        // checking them, so bytes that are not UTF-8 in an ignored field (`typ` here) passed.
        // Found by the nomad_jwt fuzz target.
        let header = b"{\"alg\":\"RS256\",\"typ\":\"JWT\xbc\xbc\",\"kid\":\"k\"}";
        let token = format!("{}.{}.{}", segment(header), segment(b"{}"), segment(b"sig"));
        match Token::parse(&token) {
            Err(AttestError::Rejected(why)) => assert!(why.contains("header"), "{why}"),
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(_) => panic!("a header that is not UTF-8 was read"),
        }
        let good = format!(
            "{}.{}.{}",
            segment(b"{\"alg\":\"RS256\",\"kid\":\"k\"}"),
            segment(b"{}"),
            segment(b"sig")
        );
        assert_eq!(
            Token::parse(&good).map(|t| t.kid).ok().as_deref(),
            Some("k")
        );
        // The claims are read with the same rule.
        assert!(json_text::<Payload>(b"{\"nomad_job_id\":\"web\",\"x\":\"\xff\"}").is_none());
        assert!(json_text::<Payload>(b"{\"nomad_job_id\":\"web\"}").is_some());
    }
}
