//! `Identity.Certify`: attest the credential with its platform, then sign the CSR for the
//! proven identity only.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use tonic::{Request, Response, Status};
use weft_api::v1::identity_server::Identity as IdentityApi;
use weft_api::{CertifyRequest, CertifyResponse};
use weft_core::platform::{AttestError, Credential};

use crate::State;
use crate::metrics::CertifyLabels;

/// The Identity service.
#[derive(Debug, Clone)]
pub(crate) struct IdentityService(pub(crate) Arc<State>);

#[tonic::async_trait]
impl IdentityApi for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let req = request.into_inner();
        let cred = req
            .credential
            .ok_or_else(|| Status::invalid_argument("credential is required"))?;
        let platform_name = cred.platform.clone();
        let count = |result: &str| {
            self.0
                .metrics
                .certify
                .get_or_create(&CertifyLabels {
                    platform: platform_name.clone(),
                    result: result.to_string(),
                })
                .inc();
        };
        let platform = self
            .0
            .platforms
            .iter()
            .find(|p| p.name() == cred.platform)
            .ok_or_else(|| {
                count("attest_failed");
                Status::unauthenticated(format!("no platform {:?} in this mesh", cred.platform))
            })?;
        let credential = Credential {
            platform: cred.platform.clone(),
            token: cred.token,
            workload: (!cred.workload.is_empty()).then_some(cred.workload),
        };
        let identity = platform.attest(&credential).await.map_err(|e| {
            count("attest_failed");
            tracing::warn!(platform = %cred.platform, workload = ?credential.workload, error = %e, "attestation failed");
            match e {
                AttestError::Unavailable(_) => Status::unavailable(e.to_string()),
                _ => Status::permission_denied(e.to_string()),
            }
        })?;
        let leaf = self.0.ca.sign_csr(&req.csr, &identity).map_err(|e| {
            count("csr_rejected");
            tracing::warn!(%identity, error = %e, "CSR rejected");
            Status::invalid_argument(e.to_string())
        })?;
        count("issued");
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
