//! `Identity.Certify`: attest the credential with its platform, then sign the CSR for the
//! proven identity only.
//!
//! Anyone who reaches the port may call it, so each call is checked from the cheapest test
//! to the dearest: calls in flight without a client certificate (bounded), the credential's
//! platform and the CSR (read before any platform is asked), the caller's rate (per client
//! address without a certificate, per identity with one: `[control.limits]`), and only then
//! attestation, whose answers are cached ([`crate::attestation`]) so that a credential
//! presented again costs the platform nothing.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use tonic::{Request, Response, Status};
use weft_api::v1::identity_server::Identity as IdentityApi;
use weft_api::{CertifyRequest, CertifyResponse};
use weft_core::platform::{AttestError, Credential};

use crate::State;
use crate::attestation::Source;
use crate::limits::{Limit, address_key};
use crate::transport::PeerInfo;

/// The `platform` label of Certify calls naming no configured platform.
const UNKNOWN_PLATFORM: &str = "unknown";

/// At most this much of a peer-supplied string goes into a log line or an error.
const MAX_ECHO: usize = 64;

/// A peer-supplied string cut to [`MAX_ECHO`] characters for logs and errors.
fn truncate(s: &str) -> &str {
    weft_core::platform::clip(s, MAX_ECHO)
}

/// The Identity service.
#[derive(Debug, Clone)]
pub(crate) struct IdentityService(pub(crate) Arc<State>);

#[tonic::async_trait]
impl IdentityApi for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        // Certify is reachable without a client certificate, so what a stranger may hold at
        // once is bounded: calls beyond the limit are refused at once, not queued.
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let caller = peer.as_ref().and_then(|p| p.identity.clone());
        let anonymous = caller.is_none();
        let _permit = if anonymous {
            match self.0.anonymous_certify.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    self.0.metrics.count_certify(UNKNOWN_PLATFORM, "throttled");
                    return Err(Status::resource_exhausted(
                        "too many concurrent Certify calls without a client certificate; retry later",
                    ));
                }
            }
        } else {
            None
        };
        let req = request.into_inner();
        let Some(cred) = req.credential else {
            self.0
                .metrics
                .count_certify(UNKNOWN_PLATFORM, "attest_failed");
            return Err(Status::invalid_argument("credential is required"));
        };
        // The label comes from the configured platforms, never from the request: a peer must
        // not be able to mint metric series.
        let platform = self.0.platforms.iter().find(|p| p.name() == cred.platform);
        let label = platform.map_or(UNKNOWN_PLATFORM, |p| p.name());
        let count = |result: &'static str| self.0.metrics.count_certify(label, result);
        let Some(platform) = platform else {
            count("attest_failed");
            tracing::warn!(platform = %truncate(&cred.platform), "Certify for a platform this mesh does not run");
            return Err(Status::unauthenticated(format!(
                "no platform {:?} in this mesh",
                truncate(&cred.platform)
            )));
        };
        // The CSR is checked before the platform is asked: a junk request costs no
        // TokenReview or key-set fetch. The name it asks for tells platforms whose workloads
        // may run under several accounts which one the proxy wants; the CA signs it only if
        // attestation proves exactly that identity.
        let csr = weft_ca::CheckedCsr::parse(&req.csr).map_err(|e| {
            count("csr_rejected");
            tracing::warn!(platform = label, error = %e, "CSR rejected before attestation");
            Status::invalid_argument(e.to_string())
        })?;
        // Only calls that would reach the platform or the CA use up the caller's rate.
        let limit = match (&caller, &peer) {
            (Some(id), _) => {
                (!self.0.limits.certify_by_identity.allow(id)).then_some(Limit::CertifyIdentityRate)
            }
            (None, p) => {
                // The transport always attaches the peer; without it, all such calls share
                // one bucket.
                let addr = p
                    .as_ref()
                    .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| {
                        address_key(p.remote.ip())
                    });
                (!self.0.limits.certify_by_address.allow(&addr))
                    .then_some(Limit::CertifyAddressRate)
            }
        };
        if let Some(limit) = limit {
            count("throttled");
            self.0.metrics.count_limited(limit);
            let remote = peer.as_ref().map(|p| p.remote);
            tracing::debug!(?remote, caller = ?caller.as_ref().map(|c| c.to_string()), reason = limit.reason(), "Certify call over its rate refused");
            return Err(Status::resource_exhausted(match limit {
                Limit::CertifyIdentityRate => {
                    "too many Certify calls by this identity; retry later"
                }
                _ => "too many Certify calls from this address; retry later",
            }));
        }
        let credential = Credential {
            platform: cred.platform.clone(),
            token: cred.token,
            workload: (!cred.workload.is_empty()).then_some(cred.workload),
            account: Some(csr.identity().name().to_string()),
        };
        let (outcome, source) = self
            .0
            .attestations
            .get_or_attest(&credential, || platform.attest(&credential))
            .await;
        self.0.metrics.count_attest_cache(source == Source::Cache);
        let identity = outcome.map_err(|e| {
            count("attest_failed");
            self.0.metrics.count_attest_refused(label, e.reason());
            tracing::warn!(platform = label, workload = ?credential.workload.as_deref().map(truncate), error = %e, "attestation failed");
            match e {
                AttestError::Unavailable(_) => Status::unavailable(e.to_string()),
                _ => Status::permission_denied(e.to_string()),
            }
        })?;
        let leaf = self.0.ca.sign_checked(&csr, &identity).map_err(|e| {
            count("csr_rejected");
            tracing::warn!(%identity, error = %e, "CSR rejected");
            Status::invalid_argument(e.to_string())
        })?;
        count("issued");
        self.0.leaves.record(&identity, leaf.not_after);
        tracing::info!(%identity, "certificate issued");
        Ok(Response::new(CertifyResponse {
            identity: identity.spiffe_id(),
            leaf: leaf.leaf.to_vec(),
            chain: leaf.chain.iter().map(|c| c.to_vec()).collect(),
            valid_until: leaf
                .not_after
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default(),
            trust_bundle: self
                .0
                .ca
                .trust_bundle()
                .roots()
                .iter()
                .map(|r| r.to_vec())
                .collect(),
        }))
    }
}
