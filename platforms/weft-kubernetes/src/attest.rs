//! Attestation of a proxy's projected ServiceAccount token with a TokenReview.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use weft_core::Identity;
use weft_core::platform::{AttestError, Credential};

use crate::KubernetesPlatform;

/// A token longer than this is refused unread (projected tokens are about 1 KiB).
const MAX_TOKEN: usize = 16 * 1024;

/// The TokenReview `extra` keys naming the pod a bound token was issued for.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// At most this much of a string from the API server goes into an error.
const MAX_ECHO: usize = 160;

fn cut(s: &str) -> &str {
    weft_core::platform::clip(s, MAX_ECHO)
}

pub(crate) async fn attest(
    p: &KubernetesPlatform,
    credential: &Credential,
) -> Result<Identity, AttestError> {
    if credential.platform != crate::NAME {
        return Err(AttestError::WrongPlatform(
            cut(&credential.platform).to_string(),
        ));
    }
    let token = credential.token.trim();
    if token.is_empty() {
        return Err(AttestError::Rejected("the token is empty".into()));
    }
    if token.len() > MAX_TOKEN {
        return Err(AttestError::Rejected(format!(
            "the token is longer than {MAX_TOKEN} bytes"
        )));
    }
    let audience = &p.settings.token_audience;
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: Some(vec![audience.clone()]),
        },
        ..Default::default()
    };
    let reviewed = Api::<TokenReview>::all(p.client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| AttestError::Unavailable(format!("TokenReview failed: {e}")))?;
    let status = reviewed.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status
            .error
            .as_deref()
            .map(cut)
            .unwrap_or("no reason given");
        return Err(AttestError::Rejected(format!(
            "the API server did not authenticate the token: {why}"
        )));
    }
    // An audience-aware API server echoes the audiences it checked; one that does not would
    // accept a token issued for anything.
    if !status.audiences.iter().flatten().any(|a| a == audience) {
        return Err(AttestError::Rejected(format!(
            "the token is not issued for the audience {audience:?}"
        )));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let (namespace, account) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| {
            AttestError::Rejected(format!("{:?} is not a ServiceAccount", cut(&username)))
        })?;
    let extra = user.extra.unwrap_or_default();
    let single = |key: &str| {
        extra
            .get(key)
            .and_then(|v| (v.len() == 1).then(|| v[0].clone()))
    };
    let (Some(pod_name), Some(pod_uid)) = (single(POD_NAME), single(POD_UID)) else {
        return Err(AttestError::Rejected(
            "the token is not bound to a pod (use a projected ServiceAccount token)".into(),
        ));
    };
    if !p.settings.namespaces.is_empty() && !p.settings.namespaces.iter().any(|n| n == namespace) {
        return Err(AttestError::UnknownWorkload(format!(
            "{namespace}/{pod_name} (namespace {namespace} is not part of this mesh)"
        )));
    }
    if let Some(claimed) = &credential.workload {
        let expected = format!("{namespace}/{pod_name}");
        if *claimed != expected {
            return Err(AttestError::Rejected(format!(
                "the token of pod {expected} cannot prove workload {}",
                cut(claimed)
            )));
        }
    }
    let pod = Api::<Pod>::namespaced(p.client.clone(), namespace)
        .get_opt(&pod_name)
        .await
        .map_err(|e| AttestError::Unavailable(format!("reading pod {namespace}/{pod_name}: {e}")))?
        .ok_or_else(|| AttestError::UnknownWorkload(format!("{namespace}/{pod_name}")))?;
    if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
        return Err(AttestError::UnknownWorkload(format!(
            "{namespace}/{pod_name} with uid {}",
            cut(&pod_uid)
        )));
    }
    let runs_as = pod
        .spec
        .and_then(|s| s.service_account_name)
        .unwrap_or_else(|| "default".into());
    if runs_as != account {
        return Err(AttestError::Rejected(format!(
            "pod {namespace}/{pod_name} runs as ServiceAccount {runs_as}, not {account}"
        )));
    }
    Identity::new(p.trust_domain.clone(), namespace, account)
        .map_err(|e| AttestError::Rejected(format!("no mesh identity for {username}: {e}")))
}
