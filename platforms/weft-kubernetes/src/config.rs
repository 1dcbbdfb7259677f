//! `[platforms.kubernetes]`: the Kubernetes adapter's section of the mesh config file.
//! `configs/mesh.toml` documents every key.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;
use weft_core::config::{MeshConfig, PlatformSettings, SectionCheck, SectionError};
use weft_core::model::{CONTROL_NAMESPACE, check_name};

use crate::inject::InjectSettings;

/// The audience proxies' ServiceAccount tokens must carry, unless the section names another.
pub const DEFAULT_AUDIENCE: &str = "weft";

/// `[platforms.kubernetes]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSettings {
    /// Whether the Kubernetes adapter runs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The kubeconfig file to use. Without it the client config is found the way every
    /// Kubernetes tool finds it: `KUBECONFIG`, then `~/.kube/config`, then the in-cluster
    /// ServiceAccount.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use; default its current context.
    #[serde(default)]
    pub context: Option<String>,
    /// The namespaces to watch; empty (the default) watches all of them.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// The audience a proxy's projected ServiceAccount token must be issued for.
    #[serde(default = "default_audience")]
    pub token_audience: String,
    /// `[platforms.kubernetes.inject]`: what sidecar injection adds to a pod.
    #[serde(default)]
    pub inject: InjectSettings,
    /// `[platforms.kubernetes.webhook]`: the admission webhook that injects pods.
    #[serde(default)]
    pub webhook: WebhookSettings,
}

/// `[platforms.kubernetes.webhook]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Where the webhook listens (TLS); without it, there is no webhook.
    #[serde(default)]
    pub addr: Option<std::net::SocketAddr>,
    /// Its serving certificate chain (PEM), the one the MutatingWebhookConfiguration's
    /// `caBundle` verifies.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

fn default_audience() -> String {
    DEFAULT_AUDIENCE.to_string()
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            kubeconfig: None,
            context: None,
            namespaces: Vec::new(),
            token_audience: default_audience(),
            inject: InjectSettings::default(),
            webhook: WebhookSettings::default(),
        }
    }
}

impl KubernetesSettings {
    /// The Kubernetes section of `cfg`, if it has one.
    pub fn of(cfg: &MeshConfig) -> Option<&Self> {
        cfg.platforms.get::<Self>()
    }
}

impl PlatformSettings for KubernetesSettings {
    const NAME: &'static str = crate::NAME;

    fn validate(&self, check: &mut SectionCheck<'_>) -> Result<(), SectionError> {
        let mut seen = BTreeSet::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let key = format!("namespaces[{i}]");
            check_name(ns).map_err(|e| SectionError::new(&key, e.to_string()))?;
            if !seen.insert(ns) {
                return Err(SectionError::new(
                    key,
                    format!("namespace {ns} is listed twice"),
                ));
            }
            if ns == CONTROL_NAMESPACE {
                check.warn(
                    &key,
                    format!(
                        "namespace {CONTROL_NAMESPACE} is reserved for the control plane's own identity: \
                         its workloads are discovered but never issued certificates"
                    ),
                );
            }
        }
        if self.token_audience.is_empty() || self.token_audience.len() > 253 {
            return Err(SectionError::new(
                "token_audience",
                "the audience must be 1 to 253 characters",
            ));
        }
        let i = &self.inject;
        for (key, value) in [
            ("inject.proxy_image", &i.proxy_image),
            ("inject.image_pull_policy", &i.image_pull_policy),
            ("inject.control_addr", &i.control_addr),
            ("inject.proxy_cpu_request", &i.proxy_cpu_request),
            ("inject.proxy_memory_request", &i.proxy_memory_request),
            ("inject.proxy_memory_limit", &i.proxy_memory_limit),
        ] {
            if value.trim().is_empty() {
                return Err(SectionError::new(key, "must not be empty"));
            }
        }
        if !matches!(
            i.image_pull_policy.as_str(),
            "Always" | "IfNotPresent" | "Never"
        ) {
            return Err(SectionError::new(
                "inject.image_pull_policy",
                "expected Always, IfNotPresent or Never",
            ));
        }
        if i.proxy_uid == 0 {
            return Err(SectionError::new(
                "inject.proxy_uid",
                "the proxy must not run as root: its traffic is exempt from interception",
            ));
        }
        let ports = [
            ("inject.inbound_port", i.inbound_port),
            ("inject.outbound_port", i.outbound_port),
            ("inject.admin_port", i.admin_port),
            ("inject.probe_port", i.probe_port),
            ("inject.tap_port", i.tap_port),
        ];
        for (n, (key, port)) in ports.iter().enumerate() {
            if *port == 0 {
                return Err(SectionError::new(*key, "port 0 is not allowed"));
            }
            if let Some((other, _)) = ports[..n].iter().find(|(_, p)| p == port) {
                return Err(SectionError::new(
                    *key,
                    format!("port {port} is already {other}"),
                ));
            }
        }
        if !(600..=86_400).contains(&i.token_expiration_seconds) {
            return Err(SectionError::new(
                "inject.token_expiration_seconds",
                "expected 600 (the least Kubernetes accepts) to 86400 seconds",
            ));
        }
        if let Some(addr) = self.webhook.addr {
            if addr.port() == 0 {
                return Err(SectionError::new("webhook.addr", "port 0 is not allowed"));
            }
            check.claim(addr.ip(), addr.port(), "webhook.addr")?;
            for (key, file) in [
                ("webhook.cert_file", &self.webhook.cert_file),
                ("webhook.key_file", &self.webhook.key_file),
            ] {
                if file.as_ref().is_none_or(|f| f.as_os_str().is_empty()) {
                    return Err(SectionError::new(key, "required with webhook.addr"));
                }
            }
        }
        if let Some(context) = &self.context
            && context.is_empty()
        {
            return Err(SectionError::new("context", "the context name is empty"));
        }
        if let Some(path) = &self.kubeconfig
            && path.as_os_str().is_empty()
        {
            return Err(SectionError::new("kubeconfig", "the path is empty"));
        }
        Ok(())
    }
}
