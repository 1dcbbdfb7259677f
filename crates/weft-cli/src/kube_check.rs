//! `weft check` without a file: checks the control plane installed in a Kubernetes cluster
//! (`weft_kubernetes::check`) and prints one line per check, then a summary. The mesh config
//! file found in the cluster is loaded here, with every platform's section known, which the
//! Kubernetes crate cannot do itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use weft_kubernetes::KubernetesSettings;
use weft_kubernetes::check::{self, CheckOptions, MeshValidator, Summary, ValidMesh};

/// How long one request to the API server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What `weft check` against a cluster was given.
#[derive(Debug)]
pub struct Args {
    /// The kubeconfig file; default the usual search.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; default its current one.
    pub context: Option<String>,
    /// The control plane's namespace.
    pub namespace: String,
    /// Certificates expiring within this many days are warned about.
    pub ca_min_days: u32,
}

/// Runs the checks and prints them; the process exits with status 1 if any failed.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let checks = match check::client(
        args.kubeconfig.as_deref(),
        args.context.as_deref(),
        REQUEST_TIMEOUT,
    )
    .await
    {
        Ok((client, server)) => {
            let opts = CheckOptions {
                namespace: args.namespace.clone(),
                ca_min_days: args.ca_min_days,
                request_timeout: REQUEST_TIMEOUT,
                server,
                validate_mesh: Some(validator()),
            };
            check::check_cluster(client, &opts).await
        }
        Err(e) => check::unreachable(e.to_string()),
    };
    for c in &checks {
        println!("{c}");
    }
    let summary = Summary::of(&checks);
    println!("{summary}");
    if !summary.passed() {
        std::process::exit(1);
    }
    Ok(())
}

/// Loads the ConfigMap's mesh config file as the control plane will.
fn validator() -> MeshValidator {
    Arc::new(|text: &str| {
        let cfg = weft_control::platforms::loader()
            .load_str(text, Path::new("mesh.toml"))
            .map_err(|e| e.to_string())?;
        let mut warnings: Vec<String> = cfg.warnings.iter().map(ToString::to_string).collect();
        let namespaces = match KubernetesSettings::of(&cfg) {
            Some(k) if k.enabled => k.namespaces.clone(),
            Some(_) => {
                warnings.push(
                    "[platforms.kubernetes] enabled = false: the control plane does not watch \
                     this cluster"
                        .into(),
                );
                Vec::new()
            }
            None => {
                warnings.push(
                    "no [platforms.kubernetes] section: the control plane does not watch this \
                     cluster"
                        .into(),
                );
                Vec::new()
            }
        };
        Ok(ValidMesh {
            summary: format!(
                "mesh {}, trust domain {}",
                cfg.mesh.name, cfg.mesh.trust_domain
            ),
            warnings,
            namespaces,
        })
    })
}

/// A `--namespace`: a Kubernetes namespace name (an RFC 1123 label).
pub fn namespace_arg(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"
        ))
    }
}
