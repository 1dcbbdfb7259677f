//! The proxy's certificate: a key made in memory, a CSR sent with the platform credential to
//! `Identity.Certify`, renewal at 70 % of the leaf's life. Connections opened before a renewal
//! keep the certificate they started with; new ones take the new one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_api::v1::identity_client::IdentityClient;
use weft_api::{CertifyRequest, Credential};
use weft_ca::tls::{ClientAuth, TlsCredentials, anonymous_client_config};
use weft_ca::{ALPN_H2, ALPN_HTTP1, ALPN_OPAQUE, IssuedLeaf, LeafKey, TrustBundle};
use weft_core::Identity;

use crate::Shared;
use crate::control::{Backoff, ControlError, channel};

/// The share of a leaf's life after which it is renewed.
pub const RENEW_AT: f64 = 0.7;

/// Keeps `tx` holding a valid certificate until `stop`.
pub async fn run(
    shared: Arc<Shared>,
    tx: watch::Sender<Option<Arc<TlsCredentials>>>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut discovery = shared.discovery.clone();
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
                renew_after(life)
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
                changed = discovery.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    adopt_bundle(&discovery, &tx);
                }
            }
        }
    }
}

/// Rebuilds the TLS configuration when discovery announces a different trust bundle (a root
/// being rotated in or out), keeping the certificate.
fn adopt_bundle(
    discovery: &watch::Receiver<Option<Arc<crate::discovery::DiscoveryState>>>,
    tx: &watch::Sender<Option<Arc<TlsCredentials>>>,
) {
    let Some(bundle) = discovery
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

/// When to renew a leaf that has `remaining` life left now.
pub fn renew_after(remaining: Duration) -> Duration {
    remaining.mul_f64(RENEW_AT)
}

/// One Certify round trip.
pub async fn certify(shared: &Shared) -> Result<TlsCredentials, ControlError> {
    let cfg = &shared.config;
    let identity = cfg.identity().map_err(ControlError::Other)?;
    let bundle_pem = std::fs::read(&cfg.trust_bundle).map_err(|e| ControlError::Bundle {
        path: cfg.trust_bundle.clone(),
        reason: e.to_string(),
    })?;
    let bundle = TrustBundle::from_pem(&bundle_pem).map_err(|reason| ControlError::Bundle {
        path: cfg.trust_bundle.clone(),
        reason,
    })?;
    let token = std::fs::read_to_string(&cfg.token_file).map_err(|e| {
        ControlError::Other(format!("token file {}: {e}", cfg.token_file.display()))
    })?;
    let key = LeafKey::generate().map_err(|e| ControlError::Other(e.to_string()))?;
    let csr = key
        .csr(&identity)
        .map_err(|e| ControlError::Other(e.to_string()))?;

    let control = Identity::control_plane(identity.trust_domain());
    let ch = channel(cfg, anonymous_client_config(&bundle, &control)).await?;
    let resp = IdentityClient::new(ch)
        .certify(CertifyRequest {
            credential: Some(Credential {
                platform: cfg.platform.clone(),
                token: token.trim().to_string(),
                workload: format!("{}/{}", cfg.namespace, cfg.workload),
            }),
            csr,
        })
        .await?
        .into_inner();
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
    // The response's bundle supersedes the bootstrap file: it is how a rotated root arrives.
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
        &[ALPN_H2, ALPN_HTTP1, ALPN_OPAQUE],
        ClientAuth::Required,
    )
    .map_err(|e| ControlError::Other(format!("certificate unusable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_seventy_percent() {
        assert_eq!(
            renew_after(Duration::from_secs(24 * 3600)),
            Duration::from_secs_f64(24.0 * 3600.0 * 0.7)
        );
        assert_eq!(renew_after(Duration::ZERO), Duration::ZERO);
    }
}
