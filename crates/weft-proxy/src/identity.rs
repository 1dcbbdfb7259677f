//! The proxy's certificate: a key made in memory, a CSR sent with the platform credential to
//! `Identity.Certify`, renewal at 60-70 % of the leaf's life (jittered), retries with jittered
//! backoff. Connections opened before a renewal keep the certificate they started with; new
//! ones take the new one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_api::v1::identity_client::IdentityClient;
use weft_api::{CertifyRequest, Credential};
use weft_ca::tls::{ClientAuth, TlsCredentials, anonymous_client_config};
use weft_ca::{ALPN_MESH_H2, ALPN_MESH_HTTP1, ALPN_OPAQUE, IssuedLeaf, LeafKey, TrustBundle};
use weft_core::Identity;

use crate::Runtime;
use crate::control::{Backoff, ControlError, channel};

/// The share of a leaf's life after which it is renewed, at the latest.
pub const RENEW_AT: f64 = 0.7;

/// Renewal comes up to this share of the leaf's life earlier than [`RENEW_AT`], at random, so
/// proxies certified together (a rollout, a control-plane restart) renew apart.
pub const RENEW_JITTER: f64 = 0.1;

/// Keeps `tx` holding a valid certificate until `stop`.
pub async fn run(
    shared: Arc<Runtime>,
    tx: watch::Sender<Option<Arc<TlsCredentials>>>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut settings = shared.settings.clone();
    loop {
        let wait = match certify(&shared).await {
            Ok(creds) => {
                backoff.reset();
                let now = SystemTime::now();
                let life = creds
                    .not_after()
                    .duration_since(now)
                    .unwrap_or(Duration::ZERO);
                tracing::info!(identity = %creds.identity(), valid_for = ?life, "certificate obtained");
                tx.send_replace(Some(Arc::new(creds)));
                renew_after(life, crate::control::jitter())
            }
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?d, "cannot obtain a certificate");
                d
            }
        };
        let renew_at = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(renew_at) => break,
                _ = shared.renew.notified() => {
                    tracing::info!("renewal requested");
                    break;
                }
                changed = settings.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    adopt_bundle(&settings, &tx);
                }
            }
        }
    }
}

/// Rebuilds the TLS configuration when the settings announce a different trust bundle (a root
/// being rotated in or out), keeping the certificate.
fn adopt_bundle(
    settings: &watch::Receiver<Option<Arc<crate::discovery::ProxySettings>>>,
    tx: &watch::Sender<Option<Arc<TlsCredentials>>>,
) {
    let Some(bundle) = settings
        .borrow()
        .as_ref()
        .and_then(|d| d.trust_bundle.clone())
    else {
        return;
    };
    let Some(current) = tx.borrow().clone() else {
        return;
    };
    if current.trust_bundle() == &bundle {
        return;
    }
    match current.with_bundle(&bundle) {
        Ok(next) => {
            tracing::info!(roots = bundle.roots().len(), "trust bundle updated");
            tx.send_replace(Some(Arc::new(next)));
        }
        Err(e) => tracing::warn!(error = %e, "new trust bundle unusable; keeping the old one"),
    }
}

/// When to renew a leaf that has `remaining` life left now, for a jitter draw in [0, 1):
/// between 60 % (`jitter` near 1) and 70 % (`jitter` 0) of the remaining life.
pub fn renew_after(remaining: Duration, jitter: f64) -> Duration {
    remaining.mul_f64(RENEW_AT - RENEW_JITTER * jitter.clamp(0.0, 1.0))
}

/// The roots used to verify the control plane before this proxy holds a certificate or while
/// renewing it: the bootstrap file's, and those of the current credentials, which discovery
/// keeps up to date. Once a root rotation has finished, the bootstrap file may hold only the
/// retired root; trusting the current bundle too keeps renewal working.
pub fn control_plane_roots(
    bootstrap: &TrustBundle,
    current: Option<&TlsCredentials>,
) -> TrustBundle {
    let mut roots = bootstrap.roots().to_vec();
    if let Some(creds) = current {
        for r in creds.trust_bundle().roots() {
            if !roots.contains(r) {
                roots.push(r.clone());
            }
        }
    }
    TrustBundle::new(roots)
}

/// One Certify round trip.
pub async fn certify(shared: &Runtime) -> Result<TlsCredentials, ControlError> {
    let cfg = &shared.config;
    let identity = cfg.identity().map_err(ControlError::Other)?;
    let bundle_pem = cfg.bundle_pem().map_err(|e| ControlError::Bundle {
        path: cfg.bundle_source(),
        reason: e.to_string(),
    })?;
    let bootstrap = TrustBundle::from_pem(&bundle_pem).map_err(|reason| ControlError::Bundle {
        path: cfg.bundle_source(),
        reason,
    })?;
    let current = shared.credentials.borrow().clone();
    let bundle = control_plane_roots(&bootstrap, current.as_deref());
    let token = std::fs::read_to_string(&cfg.token_file).map_err(|e| {
        ControlError::Other(format!("token file {}: {e}", cfg.token_file.display()))
    })?;
    let key = LeafKey::generate().map_err(|e| ControlError::Other(e.to_string()))?;
    let csr = key
        .csr(&identity)
        .map_err(|e| ControlError::Other(e.to_string()))?;

    let control = Identity::control_plane(identity.trust_domain());
    let request = CertifyRequest {
        credential: Some(Credential {
            platform: cfg.platform.clone(),
            token: token.trim().to_string(),
            workload: format!("{}/{}", cfg.namespace, cfg.workload),
        }),
        csr,
    };
    // A proxy that holds a certificate still valid renews over the connection it already has
    // to the control plane, presenting that certificate: strangers filling the bounds on
    // callers without one (connections, calls in flight, calls per address) cannot hold up a
    // renewal. Should that fail, it asks as a newcomer would.
    if let Some(creds) = current
        .as_ref()
        .filter(|c| c.not_after() > SystemTime::now())
    {
        let ch = shared.control.get(cfg, creds);
        match IdentityClient::new(ch).certify(request.clone()).await {
            Ok(resp) => return credentials_from(identity, &key, resp.into_inner(), bundle),
            Err(status) => tracing::debug!(
                code = ?status.code(),
                reason = status.message(),
                "renewal with the current certificate failed; asking without it"
            ),
        }
    }
    let ch = channel(cfg, anonymous_client_config(&bundle, &control)).await?;
    let resp = IdentityClient::new(ch).certify(request).await?.into_inner();
    credentials_from(identity, &key, resp, bundle)
}

/// The credentials a `Certify` answer makes with `key`: the leaf must prove `identity`, and
/// the answer's trust bundle supersedes `bundle` (the bootstrap one), since that is how a
/// rotated root arrives.
pub fn credentials_from(
    identity: Identity,
    key: &LeafKey,
    resp: weft_api::CertifyResponse,
    bundle: TrustBundle,
) -> Result<TlsCredentials, ControlError> {
    if resp.identity != identity.spiffe_id() {
        return Err(ControlError::Other(format!(
            "control plane certified {}, expected {identity}",
            resp.identity
        )));
    }
    let leaf = IssuedLeaf {
        leaf: CertificateDer::from(resp.leaf),
        chain: resp.chain.into_iter().map(CertificateDer::from).collect(),
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(resp.valid_until.max(0) as u64),
    };
    let bundle = if resp.trust_bundle.is_empty() {
        bundle
    } else {
        TrustBundle::new(
            resp.trust_bundle
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
        )
    };
    TlsCredentials::new(
        identity,
        &leaf,
        key.private_key_der(),
        &bundle,
        &[ALPN_MESH_H2, ALPN_MESH_HTTP1, ALPN_OPAQUE],
        ClientAuth::Required,
    )
    .map_err(|e| ControlError::Other(format!("certificate unusable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_between_sixty_and_seventy_percent() {
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(renew_after(day, 0.0), day.mul_f64(0.7));
        assert_eq!(renew_after(day, 1.0), day.mul_f64(0.6));
        let d = renew_after(day, crate::control::jitter());
        assert!(d >= day.mul_f64(0.6) && d <= day.mul_f64(0.7), "{d:?}");
        assert_eq!(renew_after(Duration::ZERO, 0.5), Duration::ZERO);
    }

    #[test]
    fn the_control_plane_is_verified_with_the_current_roots_too() {
        let td = weft_core::TrustDomain::new("weft.test").unwrap();
        let old = weft_ca::CertificateAuthority::generate_ephemeral(&td, Duration::from_secs(3600))
            .unwrap();
        let new = weft_ca::CertificateAuthority::generate_ephemeral(&td, Duration::from_secs(3600))
            .unwrap();
        // This proxy was certified by the new root; its bootstrap file still holds the old one.
        let id = Identity::new(td, "demo", "web").unwrap();
        let key = LeafKey::generate().unwrap();
        let leaf = new.sign_csr(&key.csr(&id).unwrap(), &id).unwrap();
        let creds = TlsCredentials::new(
            id,
            &leaf,
            key.private_key_der(),
            new.trust_bundle(),
            &[weft_ca::ALPN_H2],
            ClientAuth::Required,
        )
        .unwrap();
        let roots = control_plane_roots(old.trust_bundle(), Some(&creds));
        assert_eq!(roots.roots().len(), 2);
        assert!(roots.roots().contains(&new.trust_bundle().roots()[0]));
        assert!(roots.roots().contains(&old.trust_bundle().roots()[0]));
        // Without credentials, only the bootstrap file counts; duplicates are not repeated.
        assert_eq!(
            control_plane_roots(old.trust_bundle(), None).roots().len(),
            1
        );
        let same = control_plane_roots(new.trust_bundle(), Some(&creds));
        assert_eq!(same.roots().len(), 1);
    }
}
