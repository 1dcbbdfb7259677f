//! The Nomad workload-identity JWT verifier against a fixed key set
//! (`weft_nomad::jwt::verify_with_key_set`). The first byte picks what the rest is:
//!
//! - 0: a whole token, checked against the key set of the test key `tests/keys/
//!   workload-identity-1.pem`;
//! - 1: a JWT header and claims (JSON, split at the first NUL byte), signed here with that
//!   key, so that the claims checks behind the signature are reached; the token with one
//!   signature byte changed must then be refused;
//! - 2: a key set (JWKS JSON) against which a well-signed token is checked.
//!
//! Whatever it gets, the verifier answers and never panics; a token it accepts has every
//! required claim and an `RS256` header.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents};

const KID: &str = "weft-test-key-1";
const AUDIENCE: &str = "weft";
/// The verifier's clock: fixed, so that a run is reproducible.
const NOW: f64 = 1_700_000_000.0;

struct Key {
    pair: RsaKeyPair,
    jwks: Vec<u8>,
}

fn key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let pem = include_str!("../../keys/workload-identity-1.pem");
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = STANDARD.decode(body).expect("the test key's PEM body");
        let pair = RsaKeyPair::from_pkcs8(&der).expect("the test key");
        let public = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        let trim = |v: &[u8]| -> Vec<u8> { v.iter().copied().skip_while(|b| *b == 0).collect() };
        let jwks = serde_json::json!({"keys": [{
            "kty": "RSA", "kid": KID, "alg": "RS256", "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(trim(&public.n)),
            "e": URL_SAFE_NO_PAD.encode(trim(&public.e)),
        }]});
        Key {
            pair,
            jwks: serde_json::to_vec(&jwks).expect("JSON"),
        }
    })
}

fn sign(header: &[u8], claims: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let pair = &key().pair;
    let mut signature = vec![0; pair.public().modulus_len()];
    pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut signature)
        .expect("RSA signing");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn good_token() -> String {
    let header = format!(r#"{{"alg":"RS256","typ":"JWT","kid":"{KID}"}}"#);
    let claims = r#"{"aud":["weft"],"exp":1700003600,"nbf":1699999990,"nomad_namespace":"default","nomad_job_id":"web","nomad_allocation_id":"5f2a9c1e-0b7d-4e3a-9f61-2c8d4b7a1e90","nomad_task":"weft-proxy"}"#;
    sign(header.as_bytes(), claims.as_bytes())
}

fn check_accepted(claims: &weft_nomad::jwt::Claims) {
    assert!(!claims.namespace.is_empty());
    assert!(!claims.job.is_empty());
    assert!(!claims.allocation.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let key = key();
    match mode % 3 {
        0 => {
            let token = String::from_utf8_lossy(rest);
            if let Ok(claims) =
                weft_nomad::jwt::verify_with_key_set(&token, AUDIENCE, &key.jwks, NOW)
            {
                check_accepted(&claims);
            }
        }
        1 => {
            let (header, claims) = match rest.iter().position(|b| *b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b""[..]),
            };
            let token = sign(header, claims);
            let got = weft_nomad::jwt::verify_with_key_set(&token, AUDIENCE, &key.jwks, NOW);
            if let Ok(claims) = &got {
                check_accepted(claims);
                let header: serde_json::Value =
                    serde_json::from_slice(header).expect("an accepted header is JSON");
                assert_eq!(header["alg"], "RS256", "only RS256 is accepted");
                // The same token with its last signature character changed is refused.
                let mut forged = token.clone();
                let last = forged.pop().expect("a signature");
                forged.push(if last == 'A' { 'Q' } else { 'A' });
                assert!(
                    weft_nomad::jwt::verify_with_key_set(&forged, AUDIENCE, &key.jwks, NOW)
                        .is_err(),
                    "a changed signature is refused"
                );
            }
        }
        _ => {
            if let Ok(claims) =
                weft_nomad::jwt::verify_with_key_set(&good_token(), AUDIENCE, rest, NOW)
            {
                check_accepted(&claims);
            }
        }
    }
});
