//! JSON Web Tokens as Nomad issues them to workloads (workload identities), minted in tests:
//! RS256 JWS in compact form, signed with ring by fixed test keys, and the JSON Web Key Set a
//! Nomad server publishes for them at `/.well-known/jwks.json`
//! ([`crate::fake_nomad::FakeNomad::set_keys`]).
//!
//! The claims follow Nomad's workload identities: the registered claims `aud` (a string or a
//! list), `iat`, `nbf`, `exp`, `jti` and `sub`, and `nomad_namespace`, `nomad_job_id`,
//! `nomad_allocation_id`, with `nomad_task` for a task's identity or `nomad_service` for a
//! service's. [`Claims`] builds them with defaults (audience `["weft"]`, valid from now for an
//! hour); its setters and the functions below make the tokens a verifier must refuse: `alg`
//! `none`, a wrong signature, an unknown key ID, expired, not yet valid, another audience.
//!
//! The keys are 2048-bit RSA keys in PKCS#8 PEM under `tests/keys/`, generated once with
//! `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`. They are test fixtures
//! only, public in this repository: nothing may ever trust them outside tests. (ring verifies
//! and signs RSA but cannot generate RSA keys, hence fixed files.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents};
use serde_json::{Map, Value, json};

/// The PEM fixtures, test-only keys (see the module documentation).
const FIXTURES: [&str; 3] = [
    include_str!("../keys/workload-identity-1.pem"),
    include_str!("../keys/workload-identity-2.pem"),
    include_str!("../keys/workload-identity-3.pem"),
];

/// The audience [`Claims`] sets unless told otherwise.
pub const DEFAULT_AUDIENCE: &str = "weft";

/// An RSA signing key with its key ID (`kid`), for minting tokens and publishing its public
/// half in a JWKS.
pub struct TestKey {
    kid: String,
    pair: RsaKeyPair,
    /// The public modulus, big-endian without leading zeros.
    n: Vec<u8>,
    /// The public exponent, big-endian without leading zeros.
    e: Vec<u8>,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TestKey {
    /// Fixture key `i` (1, 2 or 3), with key ID `weft-test-key-<i>`.
    ///
    /// Panics for any other `i`.
    pub fn fixture(i: usize) -> TestKey {
        let pem = i
            .checked_sub(1)
            .and_then(|j| FIXTURES.get(j))
            .unwrap_or_else(|| panic!("there is no test key {i} (1 to {})", FIXTURES.len()));
        TestKey::from_pem(&format!("weft-test-key-{i}"), pem)
    }

    /// Key `kid` from an unencrypted PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) RSA key.
    ///
    /// Panics if the PEM does not hold such a key.
    pub fn from_pem(kid: &str, pem: &str) -> TestKey {
        let body: String = pem
            .lines()
            .map(str::trim)
            .skip_while(|l| *l != "-----BEGIN PRIVATE KEY-----")
            .skip(1)
            .take_while(|l| *l != "-----END PRIVATE KEY-----")
            .collect();
        let der = STANDARD
            .decode(body)
            .expect("the PEM body is base64 of a PKCS#8 key");
        let pair = RsaKeyPair::from_pkcs8(&der).expect("an RSA PKCS#8 key that ring accepts");
        let public = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        TestKey {
            kid: kid.to_owned(),
            pair,
            n: strip_zeros(public.n),
            e: strip_zeros(public.e),
        }
    }

    /// The same key under another key ID.
    pub fn with_kid(mut self, kid: &str) -> TestKey {
        kid.clone_into(&mut self.kid);
        self
    }

    /// The key ID tokens name in their header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public modulus and exponent, big-endian without leading zeros.
    pub fn public_components(&self) -> (&[u8], &[u8]) {
        (&self.n, &self.e)
    }

    /// The public key as a JSON Web Key, as Nomad publishes it:
    /// `{"kty":"RSA","kid":..,"alg":"RS256","use":"sig","n":..,"e":..}` with `n` and `e`
    /// base64url without padding.
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "kid": self.kid,
            "alg": "RS256",
            "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(&self.n),
            "e": URL_SAFE_NO_PAD.encode(&self.e),
        })
    }

    /// Signs `message` with RSASSA-PKCS1-v1_5 and SHA-256 (JWS `RS256`).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let mut signature = vec![0; self.pair.public().modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut signature,
            )
            .expect("RSA signing");
        signature
    }
}

/// The JSON Web Key Set of `keys`: `{"keys":[...]}`.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

/// An RS256 token of `claims` signed by `key`, whose header is
/// `{"alg":"RS256","typ":"JWT","kid":<key's kid>}`.
pub fn mint(key: &TestKey, claims: &Value) -> String {
    mint_with_header(
        key,
        &json!({ "alg": "RS256", "typ": "JWT", "kid": key.kid() }),
        claims,
    )
}

/// A token of `claims` with the given `header`, signed by `key` over both as they are encoded
/// whatever the header says.
pub fn mint_with_header(key: &TestKey, header: &Value, claims: &Value) -> String {
    let signing_input = format!("{}.{}", segment(header), segment(claims));
    let signature = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// An unsigned token (`{"alg":"none","typ":"JWT"}`, empty signature), which a verifier must
/// refuse whatever its claims.
pub fn alg_none(claims: &Value) -> String {
    format!(
        "{}.{}.",
        segment(&json!({ "alg": "none", "typ": "JWT" })),
        segment(claims)
    )
}

/// A token naming `key` whose signature does not match its content: signed by `key`, then the
/// claims are replaced by `forged` (a payload swap, as an attacker would try).
pub fn wrong_signature(key: &TestKey, signed: &Value, forged: &Value) -> String {
    let token = mint(key, signed);
    let mut parts = token.split('.');
    let (header, _, signature) = (parts.next(), parts.next(), parts.next());
    format!(
        "{}.{}.{}",
        header.unwrap_or_default(),
        segment(forged),
        signature.unwrap_or_default()
    )
}

/// A token signed by `signer` whose header claims it was signed by the key `kid`: with `kid`
/// in the JWKS and `signer` not, the signature fails against the key it names.
pub fn signed_by_other_key(signer: &TestKey, kid: &str, claims: &Value) -> String {
    mint_with_header(
        signer,
        &json!({ "alg": "RS256", "typ": "JWT", "kid": kid }),
        claims,
    )
}

/// A correctly signed token whose header names a key ID no JWKS of these tests holds.
pub fn unknown_kid(key: &TestKey, claims: &Value) -> String {
    signed_by_other_key(key, "weft-test-key-unknown", claims)
}

/// Splits a compact token into its decoded header and claims, for tests that inspect what
/// they minted. `None` if it is not three base64url segments of JSON (the signature is not
/// checked).
pub fn decode_unverified(token: &str) -> Option<(Value, Value)> {
    let mut parts = token.split('.');
    let (header, claims, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let decode = |s: &str| -> Option<Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).ok()?).ok()
    };
    Some((decode(header)?, decode(claims)?))
}

/// The claims of a workload identity. Defaults: audience `["weft"]`, issued and valid from
/// now, expiring in an hour, a random `jti`, region `global` and group `group` in `sub`.
#[derive(Clone, Debug)]
pub struct Claims {
    namespace: String,
    job: String,
    group: String,
    allocation: String,
    workload: Workload,
    identity: String,
    aud: Value,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
    extra: Map<String, Value>,
}

/// Whom an identity was issued to.
#[derive(Clone, Debug)]
enum Workload {
    Task(String),
    Service(String),
}

impl Claims {
    /// The identity of task `task` of allocation `allocation` of job `job` in `namespace`.
    pub fn task(namespace: &str, job: &str, allocation: &str, task: &str) -> Claims {
        Claims::new(namespace, job, allocation, Workload::Task(task.to_owned()))
    }

    /// The identity of service `service` of allocation `allocation` of job `job` in
    /// `namespace`.
    pub fn service(namespace: &str, job: &str, allocation: &str, service: &str) -> Claims {
        Claims::new(
            namespace,
            job,
            allocation,
            Workload::Service(service.to_owned()),
        )
    }

    fn new(namespace: &str, job: &str, allocation: &str, workload: Workload) -> Claims {
        let now = unix_now();
        Claims {
            namespace: namespace.to_owned(),
            job: job.to_owned(),
            group: "group".to_owned(),
            allocation: allocation.to_owned(),
            workload,
            identity: "default".to_owned(),
            aud: json!([DEFAULT_AUDIENCE]),
            iat: now,
            nbf: now,
            exp: now + 3600,
            jti: random_uuid(),
            extra: Map::new(),
        }
    }

    /// Sets the audience to a list.
    pub fn audiences(mut self, aud: &[&str]) -> Claims {
        self.aud = json!(aud);
        self
    }

    /// Sets the audience to a single string (JWT allows either form).
    pub fn audience(mut self, aud: &str) -> Claims {
        self.aud = Value::String(aud.to_owned());
        self
    }

    /// The task group named in `sub`.
    pub fn group(mut self, group: &str) -> Claims {
        group.clone_into(&mut self.group);
        self
    }

    /// The identity's name (the last part of `sub`; `default` unless set).
    pub fn identity_name(mut self, name: &str) -> Claims {
        name.clone_into(&mut self.identity);
        self
    }

    /// Sets `iat`, `nbf` and `exp` (seconds since the Unix epoch).
    pub fn times(mut self, iat: i64, nbf: i64, exp: i64) -> Claims {
        (self.iat, self.nbf, self.exp) = (iat, nbf, exp);
        self
    }

    /// Expires `ttl` after it was issued.
    pub fn ttl(mut self, ttl: Duration) -> Claims {
        self.exp = self.iat + secs(ttl);
        self
    }

    /// Issued two hours ago, expired an hour ago.
    pub fn expired(self) -> Claims {
        let now = unix_now();
        self.times(now - 7200, now - 7200, now - 3600)
    }

    /// Issued now but valid only from an hour from now (`nbf` in the future).
    pub fn not_yet_valid(self) -> Claims {
        let now = unix_now();
        self.times(now, now + 3600, now + 7200)
    }

    /// Sets `jti`.
    pub fn jti(mut self, jti: &str) -> Claims {
        jti.clone_into(&mut self.jti);
        self
    }

    /// Adds (or replaces) any claim, e.g. `iss` or `vault_role`.
    pub fn claim(mut self, name: &str, value: Value) -> Claims {
        self.extra.insert(name.to_owned(), value);
        self
    }

    /// The claims as a JSON object.
    pub fn build(&self) -> Value {
        let (kind, name) = match &self.workload {
            Workload::Task(t) => ("nomad_task", t),
            Workload::Service(s) => ("nomad_service", s),
        };
        let mut claims = Map::new();
        claims.insert("aud".into(), self.aud.clone());
        claims.insert("iat".into(), json!(self.iat));
        claims.insert("nbf".into(), json!(self.nbf));
        claims.insert("exp".into(), json!(self.exp));
        claims.insert("jti".into(), json!(self.jti));
        claims.insert(
            "sub".into(),
            json!(format!(
                "global:{}:{}:{}:{name}:{}",
                self.namespace, self.job, self.group, self.identity
            )),
        );
        claims.insert("nomad_namespace".into(), json!(self.namespace));
        claims.insert("nomad_job_id".into(), json!(self.job));
        claims.insert("nomad_allocation_id".into(), json!(self.allocation));
        claims.insert(kind.into(), json!(name));
        for (k, v) in &self.extra {
            claims.insert(k.clone(), v.clone());
        }
        Value::Object(claims)
    }

    /// Mints these claims with `key` ([`mint`]).
    pub fn mint(&self, key: &TestKey) -> String {
        mint(key, &self.build())
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, secs)
}

/// A random version-4 UUID, as Nomad writes allocation IDs and `jti`s.
pub fn random_uuid() -> String {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// One base64url segment of a compact JWS.
fn segment(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn strip_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros.min(bytes.len().saturating_sub(1)));
    bytes
}
