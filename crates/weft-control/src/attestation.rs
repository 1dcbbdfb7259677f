//! What platforms answered about credentials, kept for a while so that a credential presented
//! again is not checked again: each attestation may cost the platform a call (a Kubernetes
//! TokenReview and a pod read, a Nomad allocation read), and anyone may call `Identity.Certify`.
//!
//! Entries are keyed by a SHA-256 of the platform, the token, the claimed workload and the
//! account (the secret itself is not kept). A success is kept until the token expires, read
//! from the `exp` claim of a JWT (Kubernetes projected tokens and Nomad workload identities are
//! JWTs; the claim is read without checking the signature, only to bound how long the
//! platform's answer is kept), and at most [`MAX_SUCCESS_TTL`]; a token whose expiry cannot be
//! read is not kept on success. A refusal is kept for [`FAILURE_TTL`]; `Unavailable` (the
//! platform could not be asked) is not kept. Calls that present the same credential while its
//! attestation runs wait for that one. At most [`MAX_ENTRIES`] are kept; the oldest goes first.
//!
//! A cached success still goes through the CA: the CSR is new each time, and the CA signs it
//! only for the identity the platform proved.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use weft_core::Identity;
use weft_core::platform::{AttestError, Credential};

/// The longest a success is kept, whatever the token's expiry: a pod deleted meanwhile could
/// otherwise still be certified with its token until it expires.
pub(crate) const MAX_SUCCESS_TTL: Duration = Duration::from_secs(10 * 60);

/// How long a refusal is kept: long enough that repeating a bad credential costs the platform
/// nothing, short enough that a proxy that started before its workload was known soon passes.
pub(crate) const FAILURE_TTL: Duration = Duration::from_secs(5);

/// Entries kept at most (each a few hundred bytes).
pub(crate) const MAX_ENTRIES: usize = 4096;

/// The answer of an attestation.
pub(crate) type Outcome = Result<Identity, AttestError>;

/// A SHA-256 of what the platform was asked.
type Key = [u8; 32];

/// Platform answers by credential.
#[derive(Debug)]
pub(crate) struct AttestationCache {
    max_entries: usize,
    inner: Mutex<Entries>,
}

/// The entries, and their order of arrival for eviction.
#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<Key, (u64, Arc<Entry>)>,
    by_age: BTreeMap<u64, Key>,
    next: u64,
}

/// One credential's answer, filled by the first call that asks, and until when it holds.
#[derive(Debug, Default)]
struct Entry {
    answer: OnceCell<(Outcome, Option<Instant>)>,
}

/// Whether an answer came from the cache (or from an attestation another call ran) or from
/// the platform itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// Asked the platform.
    Platform,
    /// Answered from what the platform said before.
    Cache,
}

// === impl AttestationCache ===

impl Default for AttestationCache {
    fn default() -> Self {
        Self::new(MAX_ENTRIES)
    }
}

impl AttestationCache {
    /// At most `max_entries` answers.
    pub(crate) fn new(max_entries: usize) -> Self {
        Self {
            max_entries: max_entries.max(1),
            inner: Mutex::default(),
        }
    }

    /// The platform's answer for `credential`: kept, or from `attest`, which runs once for
    /// calls that present the same credential at once.
    pub(crate) async fn get_or_attest<F, Fut>(
        &self,
        credential: &Credential,
        attest: F,
    ) -> (Outcome, Source)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Outcome>,
    {
        let key = key_of(credential);
        let entry = self.entry(key);
        let mut asked = false;
        let (outcome, until) = entry
            .answer
            .get_or_init(|| {
                asked = true;
                async {
                    let outcome = attest().await;
                    let until = keep_for(&outcome, &credential.token, SystemTime::now())
                        .map(|ttl| Instant::now() + ttl);
                    (outcome, until)
                }
            })
            .await
            .clone();
        // An answer not to keep was still shared with the calls that waited for it.
        if asked && until.is_none() {
            self.forget(&key, &entry);
        }
        let source = if asked {
            Source::Platform
        } else {
            Source::Cache
        };
        (outcome, source)
    }

    /// The entry of `key`: the one kept if it still holds (or is being filled), else a new one.
    fn entry(&self, key: Key) -> Arc<Entry> {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some((_, e)) = inner.by_key.get(&key) {
            let fresh = match e.answer.get() {
                None => true,
                Some((_, until)) => until.is_some_and(|t| t > now),
            };
            if fresh {
                return e.clone();
            }
        }
        let entry = Arc::new(Entry::default());
        let seq = inner.next;
        inner.next += 1;
        if let Some((old, _)) = inner.by_key.insert(key, (seq, entry.clone())) {
            inner.by_age.remove(&old);
        }
        inner.by_age.insert(seq, key);
        while inner.by_key.len() > self.max_entries {
            let Some((_, oldest)) = inner.by_age.pop_first() else {
                break;
            };
            inner.by_key.remove(&oldest);
        }
        entry
    }

    /// Drops `key` if it still names `entry` (an answer not to keep).
    fn forget(&self, key: &Key, entry: &Arc<Entry>) {
        let mut inner = self.lock();
        if let Some((seq, e)) = inner.by_key.get(key)
            && Arc::ptr_eq(e, entry)
        {
            let seq = *seq;
            inner.by_key.remove(key);
            inner.by_age.remove(&seq);
        }
    }

    /// Answers kept now (or being asked for).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // The maps stay consistent whatever panicked while holding the lock.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The cache key: a SHA-256 of each field, length-prefixed so that no two credentials run
/// together into the same input.
fn key_of(c: &Credential) -> Key {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let fields = [
        Some(c.platform.as_str()),
        Some(c.token.as_str()),
        c.workload.as_deref(),
        c.account.as_deref(),
    ];
    for field in fields {
        match field {
            None => ctx.update(&[0]),
            Some(s) => {
                ctx.update(&[1]);
                ctx.update(&(s.len() as u64).to_be_bytes());
                ctx.update(s.as_bytes());
            }
        }
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// How long to keep `outcome` for `token`, seen at `now`; `None` to not keep it.
fn keep_for(outcome: &Outcome, token: &str, now: SystemTime) -> Option<Duration> {
    match outcome {
        Err(AttestError::Unavailable(_)) => None,
        Err(_) => Some(FAILURE_TTL),
        Ok(_) => {
            let exp = UNIX_EPOCH + Duration::from_secs(jwt_expiry(token)?);
            let left = exp.duration_since(now).ok()?;
            Some(left.min(MAX_SUCCESS_TTL))
        }
    }
}

/// The `exp` claim of a JWT, in seconds since the Unix epoch, read without verifying anything:
/// it only bounds how long a platform's answer about the token is kept.
fn jwt_expiry(token: &str) -> Option<u64> {
    let mut parts = token.trim().split('.');
    let (_, payload) = (parts.next()?, parts.next()?);
    parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<serde_json::Number>,
    }
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.exp?;
    // Integral seconds, or a fraction (allowed by RFC 7519) rounded down.
    exp.as_u64()
        .or_else(|| exp.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn jwt(claims: &serde_json::Value) -> String {
        let enc = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.c2lnbmF0dXJl",
            enc(&serde_json::json!({"alg": "RS256"})),
            enc(claims)
        )
    }

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn credential(token: &str) -> Credential {
        Credential {
            platform: "kubernetes".into(),
            token: token.into(),
            workload: Some("shop/web-0".into()),
            account: Some("web".into()),
        }
    }

    fn web() -> Identity {
        Identity::new(
            weft_core::TrustDomain::new("weft.test").unwrap(),
            "shop",
            "web",
        )
        .unwrap()
    }

    /// A platform answering `answer`, counting how often it is asked.
    struct Counting {
        asked: AtomicUsize,
        answer: Outcome,
    }

    impl Counting {
        fn new(answer: Outcome) -> Self {
            Self {
                asked: AtomicUsize::new(0),
                answer,
            }
        }

        async fn ask(&self, cache: &AttestationCache, c: &Credential) -> (Outcome, Source) {
            cache
                .get_or_attest(c, || async {
                    self.asked.fetch_add(1, Ordering::SeqCst);
                    self.answer.clone()
                })
                .await
        }

        fn asked(&self) -> usize {
            self.asked.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn the_expiry_of_a_jwt_is_read_and_anything_else_has_none() {
        assert_eq!(
            jwt_expiry(&jwt(&serde_json::json!({"exp": 1700}))),
            Some(1700)
        );
        assert_eq!(
            jwt_expiry(&jwt(&serde_json::json!({"exp": 1700.9}))),
            Some(1700)
        );
        for no in [
            jwt(&serde_json::json!({"sub": "x"})),
            jwt(&serde_json::json!({"exp": "soon"})),
            jwt(&serde_json::json!({"exp": -5})),
            "a-local-token".into(),
            "a.b".into(),
            "a.!!!.c".into(),
            format!("{}.d", jwt(&serde_json::json!({"exp": 1700}))),
        ] {
            assert_eq!(jwt_expiry(&no), None, "{no}");
        }
    }

    #[test]
    fn every_field_of_the_credential_is_in_the_key() {
        let base = credential("t");
        let mut other = Vec::new();
        for change in 0..5 {
            let mut c = base.clone();
            match change {
                0 => c.platform = "nomad".into(),
                1 => c.token = "u".into(),
                2 => c.workload = None,
                3 => c.account = Some("api".into()),
                _ => c.account = None,
            }
            other.push(key_of(&c));
        }
        assert!(other.iter().all(|k| *k != key_of(&base)));
        // Fields do not run together.
        let mut a = base.clone();
        a.workload = Some("ab".into());
        a.account = Some("c".into());
        let mut b = base.clone();
        b.workload = Some("a".into());
        b.account = Some("bc".into());
        assert_ne!(key_of(&a), key_of(&b));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_is_kept_until_the_token_expires() {
        let cache = AttestationCache::default();
        let platform = Counting::new(Ok(web()));
        let token = jwt(&serde_json::json!({"exp": unix_now() + 120}));
        let c = credential(&token);
        assert_eq!(
            platform.ask(&cache, &c).await,
            (Ok(web()), Source::Platform)
        );
        for _ in 0..5 {
            assert_eq!(platform.ask(&cache, &c).await, (Ok(web()), Source::Cache));
        }
        assert_eq!(platform.asked(), 1);
        // The token's expiry, 2 minutes away, ends it (a second of slack for the wall clock
        // having moved on since the token was made).
        tokio::time::advance(Duration::from_secs(121)).await;
        assert_eq!(platform.ask(&cache, &c).await.1, Source::Platform);
        assert_eq!(platform.asked(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_is_kept_ten_minutes_at_most_and_not_at_all_without_an_expiry() {
        let cache = AttestationCache::default();
        let platform = Counting::new(Ok(web()));
        let c = credential(&jwt(&serde_json::json!({"exp": unix_now() + 86_400})));
        let _ = platform.ask(&cache, &c).await;
        tokio::time::advance(MAX_SUCCESS_TTL - Duration::from_secs(1)).await;
        assert_eq!(platform.ask(&cache, &c).await.1, Source::Cache);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(platform.ask(&cache, &c).await.1, Source::Platform);

        // Neither an opaque token nor an expired JWT is kept.
        let expired = jwt(&serde_json::json!({"exp": unix_now() - 10}));
        for token in ["opaque", expired.as_str()] {
            let c = credential(token);
            let before = platform.asked();
            let _ = platform.ask(&cache, &c).await;
            let _ = platform.ask(&cache, &c).await;
            assert_eq!(platform.asked(), before + 2, "{token}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_kept_briefly_and_an_unavailable_platform_not_at_all() {
        let cache = AttestationCache::default();
        let refusing = Counting::new(Err(AttestError::Rejected("no".into())));
        let c = credential("made-up");
        for _ in 0..10 {
            assert_eq!(
                refusing.ask(&cache, &c).await.0,
                Err(AttestError::Rejected("no".into()))
            );
        }
        assert_eq!(refusing.asked(), 1);
        tokio::time::advance(FAILURE_TTL).await;
        let _ = refusing.ask(&cache, &c).await;
        assert_eq!(refusing.asked(), 2);

        let down = Counting::new(Err(AttestError::Unavailable("API down".into())));
        let c = credential("during-an-outage");
        for _ in 0..3 {
            assert_eq!(down.ask(&cache, &c).await.1, Source::Platform);
        }
        assert_eq!(down.asked(), 3);
        assert_eq!(cache.len(), 1, "only the refusal is kept");
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_bounded_and_the_oldest_goes_first() {
        let cache = AttestationCache::new(8);
        let platform = Counting::new(Err(AttestError::Rejected("no".into())));
        for i in 0..100 {
            let _ = platform.ask(&cache, &credential(&format!("t{i}"))).await;
            assert!(cache.len() <= 8);
        }
        assert_eq!(cache.len(), 8);
        // The last eight are kept; the ones before are gone.
        let before = platform.asked();
        for i in 92..100 {
            assert_eq!(
                platform.ask(&cache, &credential(&format!("t{i}"))).await.1,
                Source::Cache
            );
        }
        assert_eq!(
            platform.ask(&cache, &credential("t91")).await.1,
            Source::Platform
        );
        assert_eq!(platform.asked(), before + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_with_one_credential_at_once_share_one_attestation() {
        let cache = Arc::new(AttestationCache::default());
        let asked = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let mut calls = Vec::new();
        for _ in 0..20 {
            let (cache, asked, release) = (cache.clone(), asked.clone(), release.clone());
            calls.push(tokio::spawn(async move {
                cache
                    .get_or_attest(&credential("slow"), || async move {
                        asked.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        Err(AttestError::Rejected("no".into()))
                    })
                    .await
                    .1
            }));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        release.notify_one();
        let mut sources = Vec::new();
        for c in calls {
            sources.push(c.await.unwrap());
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert_eq!(
            sources.iter().filter(|s| **s == Source::Platform).count(),
            1
        );
    }
}
