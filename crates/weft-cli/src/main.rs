//! `weft`: the command-line interface.

mod authz;
mod dev;
mod kube_check;
mod viz;

use weft_cli::{inject, install};

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

/// Weft service mesh.
#[derive(Debug, Parser)]
#[command(name = "weft", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole mesh locally: control plane, workloads with their proxies, traffic, and a
    /// line of golden metrics per service every few seconds.
    Dev {
        /// A mesh config file; without it, the demo in configs/mesh.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seconds between metric lines.
        #[arg(long, default_value_t = 5)]
        interval: u64,
    },
    /// Add the Weft proxy to the pods of Kubernetes manifests (Pods, Deployments, StatefulSets,
    /// DaemonSets, ReplicaSets, Jobs, CronJobs; other kinds pass through) and print them, for
    /// `kubectl apply -f -`; comments are not kept. With `--platform nomad`, add it to the
    /// groups of a Nomad job spec that have a group-level service and print the job for
    /// `nomad job run -`, the rest of the file kept byte for byte.
    Inject {
        /// The manifests (YAML, several documents allowed) or the job spec (HCL), or `-` for
        /// standard input.
        file: PathBuf,
        /// What the file holds.
        #[arg(long, value_enum, default_value_t = inject::Platform::Kubernetes)]
        platform: inject::Platform,
        /// The mesh's trust bundle (PEM): the roots proxies trust the control plane with.
        /// Kubernetes only (required there); Nomad proxies read them from the Nomad Variable
        /// nomad/jobs.
        #[arg(long)]
        trust_bundle: Option<PathBuf>,
        /// The mesh config file: its trust domain and, for Kubernetes, its
        /// `[platforms.kubernetes.inject]` settings.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The mesh's trust domain, when no `--config` is given.
        #[arg(long, default_value = "weft.local", conflicts_with = "config")]
        trust_domain: String,
        /// Nomad: explicit mode. No interception and no init task; the group gets a port
        /// `weft` for the proxy's inbound listener, and the application calls its upstreams on
        /// loopback.
        #[arg(long)]
        explicit: bool,
        /// Nomad, explicit mode: an upstream `service=127.0.0.1:port` (repeatable), where the
        /// application reaches that service.
        #[arg(long = "upstream", requires = "explicit")]
        upstreams: Vec<String>,
        /// Nomad: mesh only the groups that have a service of this name (repeatable); the
        /// proxy takes that service's identity.
        #[arg(long = "service")]
        services: Vec<String>,
        /// Nomad: the proxy image; default that of this release.
        #[arg(long)]
        proxy_image: Option<String>,
    },
    /// Print the control plane's Kubernetes manifests for `kubectl apply -f -`: the Helm chart
    /// deploy-k8s/weft rendered from its own templates and values, without Helm. Each run
    /// generates a new mesh root unless `ca.existingSecret` names one (see the README).
    Install {
        /// The namespace of the control plane; the output creates it.
        #[arg(long, short = 'n', default_value = "weft")]
        namespace: String,
        /// A values file, as for `helm install -f`; later files win.
        #[arg(long = "values", short = 'f')]
        values: Vec<PathBuf>,
        /// Values as `helm install --set` takes them (`controlPlane.replicas=3,webhook.failurePolicy=Fail`),
        /// applied after the files.
        #[arg(long)]
        set: Vec<String>,
        /// Three replicas on three nodes: the chart's values-ha.yaml, before any --values.
        #[arg(long)]
        ha: bool,
    },
    /// Explain an authorization decision without sending traffic: which rule decides a
    /// request of a client to a service, where it was written, and why; against a mesh file
    /// (`--config`) or a running control plane (`--control`).
    Authz {
        /// The client: `<namespace>/<name>`, a SPIFFE ID, or `unauthenticated`.
        #[arg(long)]
        from: String,
        /// The service called: `name.namespace`.
        #[arg(long)]
        to: String,
        /// The port the workload serves on; without it, rules with port conditions are left
        /// out.
        #[arg(long)]
        port: Option<u16>,
        /// The method (default GET, or POST with --grpc).
        #[arg(long)]
        method: Option<String>,
        /// The path (default /).
        #[arg(long, conflicts_with = "grpc")]
        path: Option<String>,
        /// A gRPC call: `package.Service/Method`.
        #[arg(long)]
        grpc: Option<String>,
        /// A request header, `name: value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// Decide a TCP connection instead of an HTTP request.
        #[arg(long, conflicts_with_all = ["path", "grpc", "method", "headers"])]
        tcp: bool,
        /// A mesh config file holding the rules.
        #[arg(long, required_unless_present = "control", conflicts_with = "control")]
        config: Option<PathBuf>,
        /// A running control plane's HTTP listener (`host:port`).
        #[arg(long)]
        control: Option<std::net::SocketAddr>,
        /// The file with the control plane's HTTP token (`<data_dir>/http-token`), when its
        /// listener is not on loopback.
        #[arg(long, requires = "control")]
        token_file: Option<PathBuf>,
        /// `text` or `json`.
        #[arg(long, short = 'o', default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Golden metrics (success rate, requests a second, latency percentiles, connections) by
    /// workload, service or route, over the last minute, from a running control plane.
    Stat {
        /// `workload`, `service` or `route`.
        #[arg(default_value = "workload", value_parser = ["workload", "service", "route"])]
        by: String,
        /// Only requests from this client (`namespace/account` or a SPIFFE ID); for routes,
        /// from this caller.
        #[arg(long)]
        from: Option<String>,
        /// Only this workload (`namespace/name`), service (`name.namespace`) or route
        /// (`namespace/name`).
        #[arg(long)]
        to: Option<String>,
        /// `text` or `json`.
        #[arg(long, short = 'o', default_value = "text", value_parser = ["text", "json"])]
        output: String,
        #[command(flatten)]
        control: viz::ControlArgs,
    },
    /// Who calls whom: each client identity and the workloads it calls, whether over mutual
    /// TLS, with success rate, rate and latency.
    Edges {
        /// Only calls from this client (`namespace/account`, a SPIFFE ID, or a workload).
        #[arg(long)]
        from: Option<String>,
        /// Only calls to this workload (`namespace/name`) or identity.
        #[arg(long)]
        to: Option<String>,
        /// `text` or `json`.
        #[arg(long, short = 'o', default_value = "text", value_parser = ["text", "json"])]
        output: String,
        #[command(flatten)]
        control: viz::ControlArgs,
    },
    /// The routes, backends and policy a caller's proxy applies to a service right now, with
    /// each route's traffic.
    Routes {
        /// The service, `name.namespace`.
        service: String,
        /// The caller's namespace (default the service's own).
        #[arg(long)]
        from: Option<String>,
        /// `text` or `json`.
        #[arg(long, short = 'o', default_value = "text", value_parser = ["text", "json"])]
        output: String,
        #[command(flatten)]
        control: viz::ControlArgs,
    },
    /// Watch requests live: one line per request (heads only), from the proxies the filter
    /// selects.
    Tap {
        #[command(flatten)]
        filter: viz::TapArgs,
        /// `text` or `json`.
        #[arg(long, short = 'o', default_value = "text", value_parser = ["text", "json"])]
        output: String,
        #[command(flatten)]
        control: viz::ControlArgs,
    },
    /// A live table of the requests tap sees, by source, destination, method and path,
    /// sorted by count.
    Top {
        #[command(flatten)]
        filter: viz::TapArgs,
        /// How often to redraw.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        every: std::time::Duration,
        #[command(flatten)]
        control: viz::ControlArgs,
    },
    /// Open the control plane's dashboard: the mesh at a glance, each service's routes,
    /// endpoints, rules and callers, the topology, live tap and certificates. Prints its
    /// address and opens it with xdg-open when there is a display. With --token-file (a control
    /// plane not on loopback) it serves a forwarder on 127.0.0.1 that adds the token, and opens
    /// that, until Ctrl-C; with --kubernetes it does the same through the API server's
    /// port-forward.
    Dashboard {
        /// Print the address only; do not start a browser.
        #[arg(long)]
        no_browser: bool,
        #[command(flatten)]
        control: viz::ControlArgs,
    },
    /// Check a mesh config file and print what is wrong with it; without a file, check the
    /// control plane installed in a Kubernetes cluster (one line per check, exit status 1 if
    /// any fails).
    Check {
        /// The file.
        config: Option<PathBuf>,
        /// The kubeconfig file; default `KUBECONFIG`, `~/.kube/config`, or in-cluster.
        #[arg(long, conflicts_with = "config")]
        kubeconfig: Option<PathBuf>,
        /// The kubeconfig context; default its current context.
        #[arg(long, conflicts_with = "config")]
        context: Option<String>,
        /// The namespace the control plane is installed in.
        #[arg(long, default_value = weft_kubernetes::check::DEFAULT_NAMESPACE,
              value_parser = kube_check::namespace_arg, conflicts_with = "config")]
        namespace: String,
        /// Warn about the mesh root and the webhook certificate expiring within this many days.
        #[arg(long, default_value_t = 30, conflicts_with = "config")]
        ca_min_days: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Logs go to stderr so that stdout holds only what `weft` prints for the user (golden
    // lines, check results), and are coloured only on a terminal.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
    match cli.command {
        Command::Dev { config, interval } => dev::run(config, interval).await,
        Command::Authz {
            from,
            to,
            port,
            method,
            path,
            grpc,
            headers,
            tcp,
            config,
            control,
            token_file,
            output,
        } => {
            let headers = headers
                .iter()
                .map(|h| {
                    h.split_once(':')
                        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .ok_or_else(|| anyhow::anyhow!("--header {h:?}: expected name: value"))
                })
                .collect::<anyhow::Result<_>>()?;
            let question = weft_core::policy::authz::ExplainRequest {
                from,
                service: to,
                port,
                method,
                path,
                grpc,
                headers,
                tcp,
            };
            let source = match (config, control) {
                (Some(file), _) => authz::Source::File(file),
                (None, Some(addr)) => authz::Source::Control { addr, token_file },
                (None, None) => anyhow::bail!("give --config or --control"),
            };
            authz::run(source, question, output == "json").await
        }
        Command::Stat {
            by,
            from,
            to,
            output,
            control,
        } => {
            viz::stat(
                &control.reach().await?,
                &viz::StatArgs {
                    by,
                    from,
                    to,
                    json: output == "json",
                },
            )
            .await
        }
        Command::Edges {
            from,
            to,
            output,
            control,
        } => {
            viz::edges(
                &control.reach().await?,
                from.as_deref(),
                to.as_deref(),
                output == "json",
            )
            .await
        }
        Command::Routes {
            service,
            from,
            output,
            control,
        } => {
            viz::routes(
                &control.reach().await?,
                &service,
                from.as_deref(),
                output == "json",
            )
            .await
        }
        Command::Tap {
            filter,
            output,
            control,
        } => viz::tap(&control.reach().await?, &filter, output == "json").await,
        Command::Top {
            filter,
            every,
            control,
        } => viz::top(&control.reach().await?, &filter, every).await,
        Command::Dashboard {
            no_browser,
            control,
        } => viz::dashboard(&control.reach().await?, !no_browser).await,
        Command::Check {
            config: Some(config),
            ..
        } => check(&config),
        Command::Check {
            config: None,
            kubeconfig,
            context,
            namespace,
            ca_min_days,
        } => {
            kube_check::run(&kube_check::Args {
                kubeconfig,
                context,
                namespace,
                ca_min_days,
            })
            .await
        }
        Command::Install {
            namespace,
            values,
            set,
            ha,
        } => install::run(&install::Args {
            namespace,
            values,
            set,
            ha,
        }),
        Command::Inject {
            file,
            platform,
            trust_bundle,
            config,
            trust_domain,
            explicit,
            upstreams,
            services,
            proxy_image,
        } => inject::run(&inject::Args {
            file,
            platform,
            config,
            trust_bundle,
            trust_domain,
            explicit,
            upstreams,
            services,
            proxy_image,
        }),
    }
}

/// `weft check`: the verdict on stdout, each warning and the error on stderr. Warnings alone
/// do not fail the check.
fn check(config: &Path) -> anyhow::Result<()> {
    match weft_control::platforms::loader().load(config) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                eprintln!("{w}");
            }
            let workloads = weft_local::LocalSettings::workloads(&cfg).count();
            let warnings = match cfg.warnings.len() {
                0 => String::new(),
                1 => ", 1 warning".to_string(),
                n => format!(", {n} warnings"),
            };
            println!(
                "{}: ok (mesh {}, trust domain {}, {workloads} local workloads{warnings})",
                config.display(),
                cfg.mesh.name,
                cfg.mesh.trust_domain
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
