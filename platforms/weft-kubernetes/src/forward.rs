//! Reaching a port inside the control plane's pod through the API server, as
//! `kubectl port-forward` does: the CLI (`weft stat --kubernetes`, `weft dashboard
//! --kubernetes`, ...) opens one `pods/portforward` WebSocket per TCP connection it needs, to
//! the loopback-only HTTP listener of `control.local_http_addr` (port
//! [`CONTROL_LOCAL_HTTP_PORT`] in the Helm chart). What the caller may do is what RBAC grants
//! its kubeconfig user: `pods/portforward` in the control plane's namespace.

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::KubernetesError;

/// The port of the control plane's loopback HTTP listener in the Helm chart
/// (`control.local_http_addr = "127.0.0.1:7082"`).
pub const CONTROL_LOCAL_HTTP_PORT: u16 = 7082;

/// How long finding the pod, or opening one port-forward, may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The labels the Helm chart gives the control plane's pods.
const CONTROL_PLANE_PODS: &str =
    "app.kubernetes.io/name=weft,app.kubernetes.io/component=control-plane";

/// One port of one pod, reached through the API server.
#[derive(Clone)]
pub struct PodPort {
    pods: Api<Pod>,
    pod: String,
    port: u16,
}

impl std::fmt::Debug for PodPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodPort")
            .field("pod", &self.pod)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// A connection through a port-forward: its bytes, and what the kubelet says if it cannot
/// reach the port (resolves `None` when the forward ends without an error).
pub struct Forwarded {
    /// The port's bytes, both ways.
    pub io: tokio::io::DuplexStream,
    /// The error the kubelet reports for the port, if any.
    pub error: std::pin::Pin<Box<dyn Future<Output = Option<String>> + Send>>,
}

impl std::fmt::Debug for Forwarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarded").finish_non_exhaustive()
    }
}

impl PodPort {
    /// Port `port` of a Ready control-plane pod in `namespace` (the first by name, so that
    /// repeated calls pick the same one while it stays Ready), through the cluster that
    /// `kubeconfig` and `context` name ([`crate::client_config`]).
    ///
    /// Only connecting is bounded in time ([`CONNECT_TIMEOUT`]): a forwarded stream (a tap)
    /// may stay quiet for as long as it likes.
    pub async fn control_plane(
        kubeconfig: Option<&std::path::Path>,
        context: Option<&str>,
        namespace: &str,
        port: u16,
    ) -> Result<Self, KubernetesError> {
        let mut config = crate::client_config(kubeconfig, context).await?;
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config)?;
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        let list = tokio::time::timeout(
            CONNECT_TIMEOUT,
            pods.list(&ListParams::default().labels(CONTROL_PLANE_PODS)),
        )
        .await
        .map_err(|_| {
            KubernetesError::Forward(format!(
                "{server} did not list the pods of {namespace} within {CONNECT_TIMEOUT:?}"
            ))
        })??;
        let mut ready: Vec<String> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        ready.sort();
        let Some(pod) = ready.into_iter().next() else {
            return Err(KubernetesError::Forward(format!(
                "{server}: no Ready control-plane pod in namespace {namespace} ({} pods \
                 labelled {CONTROL_PLANE_PODS}); is Weft installed there? `weft check` tells",
                list.items.len()
            )));
        };
        Ok(Self { pods, pod, port })
    }

    /// The pod's name.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// The port inside the pod.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Opens a new connection to the port: one WebSocket to the API server, which the kubelet
    /// connects to the port on the pod's loopback.
    pub async fn connect(&self) -> Result<Forwarded, KubernetesError> {
        let mut forward = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.pods.portforward(&self.pod, &[self.port]),
        )
        .await
        .map_err(|_| {
            KubernetesError::Forward(format!(
                "no port-forward to {} within {CONNECT_TIMEOUT:?}",
                self.pod
            ))
        })??;
        let (Some(io), Some(error)) = (
            forward.take_stream(self.port),
            forward.take_error(self.port),
        ) else {
            // Both are there once for each port asked.
            return Err(KubernetesError::Forward(format!(
                "the port-forward to {} has no stream for port {}",
                self.pod, self.port
            )));
        };
        let pod = self.pod.clone();
        // The forward's own task ends when both sides are done; its failure says why a
        // connection broke.
        tokio::spawn(async move {
            if let Err(e) = forward.join().await {
                tracing::debug!(%pod, error = %e, "port-forward ended");
            }
        });
        Ok(Forwarded {
            io,
            error: Box::pin(error),
        })
    }
}

/// Whether the pod's `Ready` condition is `True`.
fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
