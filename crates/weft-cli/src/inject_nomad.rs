//! `weft inject --platform nomad`: the Weft proxy added to the groups of a Nomad job spec.
//!
//! The job is parsed with `hcl-edit` for its structure and the byte span of every block and
//! attribute, and the change is made of insertions only, at those spans: every byte of the
//! input is in the output, in order, comments and layout included. The output is parsed again
//! before it is printed.
//!
//! A meshed group (one with a group-level `service` and a bridge network) gets:
//! - the `weft` tag on each of its services (and, in explicit mode, `weft-inbound=` with the
//!   host port of the group's new `weft` port, where peers reach the proxy's inbound listener;
//!   in a group of several services, `weft-account=` with the one identity its proxy has), and
//!   `weft-admin=` with the host port of the group's new `weft_admin` port, where Prometheus
//!   scrapes the proxy's `/metrics` (7191 inside, left out of interception, as the admin port
//!   of an injected pod is on its address);
//! - the task `weft-proxy`: a prestart sidecar running as the uid `weft-proxy init` exempts,
//!   with a workload identity for the audience `weft` written to `secrets/nomad_weft.jwt`, the
//!   mesh's roots rendered from the Nomad Variable `nomad/jobs` and the control plane's address
//!   from the Nomad service `weft-control-grpc`, its tap listener on the group port
//!   `weft_tap` (7193 inside, which interception leaves alone), and its access log format from the meta key
//!   `weft_access_log` of the job, group or task, where one is set;
//! - in transparent mode (the default) the task `weft-init`, a prestart task that writes the nat
//!   rules once (NET_ADMIN and NET_RAW) and exits.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::ops::Range;

use anyhow::bail;
use hcl_edit::Span as _;
use hcl_edit::expr::Expression;
use hcl_edit::structure::{Block, Body};

/// The sidecar task's name; a group that has it is already meshed.
pub const PROXY_TASK: &str = "weft-proxy";
/// The transparent-mode init task's name.
pub const INIT_TASK: &str = "weft-init";
/// The tag that marks a service as meshed.
pub const MESH_TAG: &str = "weft";
/// The tag prefix that names the account of a service's identity, when it is not the
/// service's name.
pub const ACCOUNT_TAG: &str = "weft-account=";
/// The tag prefix that tells the mesh where an explicit-mode proxy listens.
pub const INBOUND_TAG: &str = "weft-inbound=";
/// The group port label of the proxy's inbound listener, in explicit mode.
pub const INBOUND_PORT_LABEL: &str = "weft";
/// The group port label of the proxy's tap listener, which the control plane dials.
pub const TAP_PORT_LABEL: &str = "weft_tap";
/// The proxy's tap listener port inside the group's network.
pub const TAP_PORT: u16 = 7193;
/// The group port label of the proxy's admin listener (`/metrics`, probes), which Prometheus
/// scrapes.
pub const ADMIN_PORT_LABEL: &str = "weft_admin";
/// The proxy's admin listener port inside the group's network.
pub const ADMIN_PORT: u16 = 7191;
/// The tag prefix that says at which host port the proxy's admin listener is; the mesh
/// ignores it, Prometheus's service discovery reads it.
pub const ADMIN_TAG: &str = "weft-admin=";
/// The workload identity the proxy presents (`secrets/nomad_<name>.jwt`).
pub const IDENTITY_NAME: &str = "weft";
/// The audience of that identity.
pub const AUDIENCE: &str = "weft";
/// The proxy's user id, which the nat rules exempt.
pub const PROXY_UID: u32 = 2102;
/// The proxy's inbound listener port.
pub const INBOUND_PORT: u16 = 7143;
/// The proxy's transparent outbound listener port.
pub const OUTBOUND_PORT: u16 = 7140;

/// How `weft inject --platform nomad` meshes a job.
#[derive(Clone, Debug)]
pub struct Options {
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// Explicit mode: no interception; the application dials `upstreams` on loopback.
    pub explicit: bool,
    /// `service=ip:port`, explicit mode only.
    pub upstreams: Vec<String>,
    /// Mesh only the groups that have a service of one of these names (all groups with a
    /// service when empty).
    pub services: Vec<String>,
    /// The proxy image (also the init task's).
    pub proxy_image: String,
}

impl Options {
    /// The defaults for a trust domain: transparent mode, every group, the release's image.
    pub fn new(trust_domain: impl Into<String>) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            explicit: false,
            upstreams: Vec::new(),
            services: Vec::new(),
            proxy_image: default_proxy_image(),
        }
    }
}

/// The proxy image of this release.
pub fn default_proxy_image() -> String {
    format!("ghcr.io/weft-mesh/weft-proxy:{}", env!("CARGO_PKG_VERSION"))
}

/// A meshed job: the text to print, and a line per group for stderr.
#[derive(Debug)]
pub struct Injected {
    /// The job spec with the proxy added.
    pub text: String,
    /// One line per group: meshed, or left as it is and why.
    pub report: Vec<String>,
}

/// Meshes the job spec `text` (from `file`, for messages). Everything that cannot be meshed is
/// refused, all in one error, each problem with its file, line, job and group.
pub fn inject(text: &str, file: &str, opts: &Options) -> anyhow::Result<Injected> {
    check_options(opts)?;
    let body = hcl_edit::parser::parse_body(text).map_err(|e| {
        anyhow::anyhow!(
            "{file}:{}:{}: not HCL that can be read: {}",
            e.location().line(),
            e.location().column(),
            e.message()
        )
    })?;
    let src = Source { text, file };
    let jobs: Vec<&Block> = body.get_blocks("job").collect();
    if jobs.is_empty() {
        bail!("{file}: no job block: expected a Nomad job spec (job \"name\" {{ ... }})");
    }
    let mut edits = Edits::default();
    let mut report = Vec::new();
    let mut problems = Vec::new();
    let mut meshed = 0;
    let mut matched_services = BTreeSet::new();
    for job in jobs {
        let job_name = label(job);
        let groups: Vec<&Block> = job.body.get_blocks("group").collect();
        if groups.is_empty() {
            problems.push(format!(
                "{}: job \"{job_name}\": no group block",
                src.at(span(job).start)
            ));
        }
        for group in groups {
            let place = Place {
                job: job_name.clone(),
                group: label(group),
            };
            match plan_group(&src, &place, group, opts, &mut matched_services) {
                Ok(Plan::Skip(why)) => report.push(format!("{place}: left as it is: {why}")),
                Ok(Plan::Mesh(plan)) => {
                    meshed += 1;
                    report.push(format!("{place}: {}", plan.summary(opts)));
                    report.extend(
                        plan.warnings
                            .iter()
                            .map(|w| format!("{place}: warning: {w}")),
                    );
                    plan.edit(&src, opts, &mut edits);
                }
                Err(mut why) => problems.append(&mut why),
            }
        }
    }
    for name in &opts.services {
        if !matched_services.contains(name) {
            problems.push(format!(
                "{file}: no group has a service named {name:?} (--service)"
            ));
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        bail!(
            "{}\n{n} problem{} in {file}: nothing was injected",
            problems.join("\n"),
            if n == 1 { "" } else { "s" }
        );
    }
    if meshed == 0 {
        bail!("{file}: no group has a group-level service: nothing to mesh");
    }
    let out = edits.apply(text);
    if let Err(e) = hcl_edit::parser::parse_body(&out) {
        bail!(
            "{file}: the injected job does not parse ({}:{}: {}); this is a bug in weft inject",
            e.location().line(),
            e.location().column(),
            e.message()
        );
    }
    Ok(Injected { text: out, report })
}

fn check_options(opts: &Options) -> anyhow::Result<()> {
    weft_core::TrustDomain::new(opts.trust_domain.clone())
        .map_err(|e| anyhow::anyhow!("--trust-domain {:?}: {e}", opts.trust_domain))?;
    if !opts.upstreams.is_empty() && !opts.explicit {
        bail!("--upstream needs --explicit: in transparent mode the proxy intercepts every call");
    }
    for u in &opts.upstreams {
        let up: weft_proxy::config::Upstream = u.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        if !up.listen.ip().is_loopback() {
            bail!(
                "upstream {u:?}: listen on loopback (127.0.0.1:PORT): a listener on another address would let whoever reaches it call with the group's identity"
            );
        }
    }
    if opts.proxy_image.is_empty() || opts.proxy_image.chars().any(char::is_whitespace) {
        bail!(
            "--proxy-image {:?}: not an image reference",
            opts.proxy_image
        );
    }
    Ok(())
}

/// The input, for spans and messages.
struct Source<'a> {
    text: &'a str,
    file: &'a str,
}

impl Source<'_> {
    /// `file:line` of a byte offset.
    fn at(&self, offset: usize) -> String {
        format!("{}:{}", self.file, line_of(self.text, offset))
    }

    fn slice(&self, r: Range<usize>) -> &str {
        &self.text[r]
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The job and group a message is about.
struct Place {
    job: String,
    group: String,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {:?} group {:?}", self.job, self.group)
    }
}

fn label(b: &Block) -> String {
    b.labels
        .first()
        .map(|l| l.as_str().to_string())
        .unwrap_or_default()
}

/// A parsed structure's span; the parser sets one on every structure it reads.
fn span(b: &Block) -> Range<usize> {
    b.span().unwrap_or(0..0)
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.get_attribute(key).map(|a| &a.value)
}

/// The value of a literal string attribute.
fn attr_str<'a>(body: &'a Body, key: &str) -> Option<&'a str> {
    attr(body, key).and_then(Expression::as_str)
}

enum Plan<'a> {
    Skip(&'static str),
    Mesh(GroupPlan<'a>),
}

/// What meshing one group takes.
struct GroupPlan<'a> {
    group: &'a Block,
    services: Vec<&'a Block>,
    /// The source text of the account whose identity the proxy takes (the service's name, or
    /// its `weft-account=` tag).
    account: String,
    /// The network block with `mode = "bridge"`.
    network: &'a Block,
    /// Explicit mode: the application's port, as a proxy argument (`${NOMAD_PORT_http}`).
    app_port: Option<String>,
    /// Transparent mode: ports that only health checks use, left out of interception.
    skip_inbound: Vec<String>,
    /// The `weft-account=` tag (HCL text) that the services of a group with several get.
    account_tag: Option<String>,
    warnings: Vec<String>,
}

fn plan_group<'a>(
    src: &Source<'_>,
    place: &Place,
    group: &'a Block,
    opts: &Options,
    matched: &mut BTreeSet<String>,
) -> Result<Plan<'a>, Vec<String>> {
    let services: Vec<&Block> = group.body.get_blocks("service").collect();
    let tasks: Vec<&Block> = group.body.get_blocks("task").collect();
    let task_services: Vec<(&Block, &Block)> = tasks
        .iter()
        .flat_map(|t| t.body.get_blocks("service").map(move |s| (*t, s)))
        .collect();
    if services.is_empty() && task_services.is_empty() {
        return Ok(Plan::Skip("no service"));
    }
    let name_of = |s: &Block| attr_str(&s.body, "name").map(str::to_string);
    if !opts.services.is_empty() {
        let selected: Vec<String> = services
            .iter()
            .chain(task_services.iter().map(|(_, s)| s))
            .filter_map(|s| name_of(s))
            .filter(|n| opts.services.contains(n))
            .collect();
        if selected.is_empty() {
            return Ok(Plan::Skip("no service named by --service"));
        }
        matched.extend(selected);
    }
    let mut problems = Vec::new();
    let mut refuse = |offset: usize, why: String| {
        problems.push(format!("{}: {place}: {why}", src.at(offset)));
    };

    let has_proxy = tasks.iter().any(|t| label(t) == PROXY_TASK);
    for t in &tasks {
        match label(t).as_str() {
            PROXY_TASK => refuse(
                span(t).start,
                format!(
                    "already has the {PROXY_TASK} task: it is meshed (inject the job as it was before, or leave it)"
                ),
            ),
            INIT_TASK if !has_proxy => refuse(
                span(t).start,
                format!("already has a task named {INIT_TASK}, which weft inject adds"),
            ),
            _ => {}
        }
    }
    for (t, s) in &task_services {
        refuse(
            span(s).start,
            format!(
                "task {:?} declares a service: meshing needs group-level services (move the service block from the task to the group)",
                label(t)
            ),
        );
    }

    // The network namespace of the group's own, which the nat rules and the proxy share with
    // the application.
    let networks: Vec<&Block> = group.body.get_blocks("network").collect();
    let mut bridge = None;
    match networks.as_slice() {
        [] => refuse(
            span(group).start,
            "no network block: the proxy needs the group's own network namespace; add network { mode = \"bridge\" }".into(),
        ),
        [n] => match attr(&n.body, "mode") {
            None => refuse(
                span(n).start,
                "the network has the host's namespace (no mode means host): set mode = \"bridge\"".into(),
            ),
            Some(m) => match m.as_str() {
                Some("bridge") => bridge = Some(*n),
                Some(other) => refuse(
                    span(n).start,
                    format!("network mode {other:?}: the proxy needs mode = \"bridge\""),
                ),
                None => refuse(
                    span(n).start,
                    format!(
                        "network mode {}: not a literal; the proxy needs mode = \"bridge\"",
                        src.slice(m.span().unwrap_or(0..0))
                    ),
                ),
            },
        },
        [_, second, ..] => refuse(
            span(second).start,
            "more than one network block: give the group one, with mode = \"bridge\"".into(),
        ),
    }
    let labels: Vec<String> = bridge
        .map(|n| {
            n.body
                .get_blocks("port")
                .map(label)
                .collect::<Vec<String>>()
        })
        .unwrap_or_default();

    let mut workload = None;
    let mut service_ports = Vec::new();
    for s in &services {
        let at = span(s).start;
        if s.body.has_blocks("connect") {
            refuse(
                at,
                "a service with a connect block (Consul service mesh): Weft's proxy takes its place; remove the connect block".into(),
            );
        }
        match attr(&s.body, "provider").map(|p| p.as_str()) {
            None | Some(None) | Some(Some("nomad" | "consul")) => {}
            Some(Some(other)) => refuse(
                at,
                format!("service provider {other:?}: the mesh reads services from nomad or consul"),
            ),
        }
        let Some(name) = attr(&s.body, "name") else {
            refuse(
                at,
                "a service without a name: name it (the proxy takes its name as the mesh identity)"
                    .into(),
            );
            continue;
        };
        let chosen = match (&workload, name.as_str()) {
            (None, Some(n)) => opts.services.is_empty() || opts.services.iter().any(|s| s == n),
            (None, None) => opts.services.is_empty(),
            (Some(_), _) => false,
        };
        if chosen {
            workload = Some(src.slice(name.span().unwrap_or(0..0)).to_string());
        }
        if let Some(p) = attr(&s.body, "port") {
            service_ports.push((at, p));
        }
    }

    // One proxy, one identity: the services of a group with several share an account, named
    // by the tag weft-account (the mesh's identity for each service's instances).
    let existing_accounts: Vec<Option<&str>> = services
        .iter()
        .map(|s| {
            attr(&s.body, "tags")
                .and_then(Expression::as_array)
                .into_iter()
                .flat_map(|a| a.iter())
                .filter_map(Expression::as_str)
                .find_map(|t| t.strip_prefix(ACCOUNT_TAG))
        })
        .collect();
    let mut account_tag = None;
    if existing_accounts.iter().any(Option::is_some) {
        let distinct: BTreeSet<Option<&str>> = existing_accounts.iter().copied().collect();
        match distinct.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(account)] => workload = Some(quote(account)),
            _ => refuse(
                span(group).start,
                format!(
                    "the services' {ACCOUNT_TAG} tags differ or some have none: one proxy has one identity, so give every service of the group the same {ACCOUNT_TAG} tag, or none"
                ),
            ),
        }
    } else if services.len() > 1
        && let Some(w) = &workload
    {
        account_tag = Some(match w.strip_prefix('"') {
            Some(rest) if w.len() > 1 && w.ends_with('"') => format!("\"{ACCOUNT_TAG}{rest}"),
            _ => format!("\"{ACCOUNT_TAG}${{{w}}}\""),
        });
    }

    let port_arg = |p: &Expression| -> Option<String> {
        match p.as_str() {
            Some(l) if l.parse::<u16>().is_ok() => Some(l.to_string()),
            Some(l) if labels.iter().any(|x| x == l) => Some(format!("${{NOMAD_PORT_{l}}}")),
            _ => p.as_number().map(|n| n.to_string()),
        }
    };
    for (label, what) in [
        (TAP_PORT_LABEL, "tap listener"),
        (ADMIN_PORT_LABEL, "admin listener"),
    ] {
        if labels.iter().any(|l| l == label) {
            refuse(
                span(group).start,
                format!(
                    "the network already has a port labelled {label:?}, which weft inject adds for the proxy's {what}"
                ),
            );
        }
    }
    let mut app_port = None;
    if opts.explicit {
        if labels.iter().any(|l| l == INBOUND_PORT_LABEL) {
            refuse(
                span(group).start,
                format!(
                    "the network already has a port labelled {INBOUND_PORT_LABEL:?}, which explicit mode adds for the proxy"
                ),
            );
        }
        let distinct: BTreeSet<&str> = service_ports
            .iter()
            .map(|(_, p)| src.slice(p.span().unwrap_or(0..0)))
            .collect();
        if distinct.len() > 1 {
            refuse(
                span(group).start,
                format!(
                    "explicit mode forwards to one application port, and the services use {}: use transparent mode (no --explicit)",
                    distinct.into_iter().collect::<Vec<_>>().join(", ")
                ),
            );
        } else if let Some((at, p)) = service_ports.first() {
            match port_arg(p) {
                Some(a) => app_port = Some(a),
                None => refuse(
                    *at,
                    format!(
                        "service port {}: not a port number nor a port label of the group's network",
                        src.slice(p.span().unwrap_or(0..0))
                    ),
                ),
            }
        }
    }

    // Health checks reach the group through its network like any client: in transparent mode
    // a check on a service's port meets the proxy, which refuses clients outside the mesh
    // unless policy allows them. A check on a port of its own is left out of interception.
    // The proxy's tap and admin listeners are reached at their own ports, never through
    // interception.
    let mut skip_inbound = vec![TAP_PORT.to_string(), ADMIN_PORT.to_string()];
    let mut warnings = Vec::new();
    if !opts.explicit {
        let service_port_text: Vec<&str> = service_ports
            .iter()
            .map(|(_, p)| src.slice(p.span().unwrap_or(0..0)))
            .collect();
        for s in &services {
            for c in s.body.get_blocks("check") {
                if matches!(attr_str(&c.body, "type"), Some("script")) {
                    continue;
                }
                let port = attr(&c.body, "port").or_else(|| attr(&s.body, "port"));
                let Some(port) = port else { continue };
                let text = src.slice(port.span().unwrap_or(0..0));
                let line = line_of(src.text, span(c).start);
                let check = match (attr_str(&c.body, "name"), attr_str(&c.body, "type")) {
                    (Some(n), _) => format!("check {n:?} (line {line})"),
                    (None, Some(t)) => format!("the {t} check (line {line})"),
                    (None, None) => format!("the check (line {line})"),
                };
                if service_port_text.contains(&text) {
                    warnings.push(format!(
                        "{check} dials the service port {text} through the proxy, which refuses clients outside the mesh unless the mesh's policy allows unauthenticated ones: give the check a port of its own, which interception leaves alone"
                    ));
                } else if let Some(a) = port_arg(port)
                    && !skip_inbound.contains(&a)
                {
                    skip_inbound.push(a);
                }
            }
        }
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    let (Some(network), Some(workload)) = (bridge, workload) else {
        // Every path that leaves either unset has refused above.
        return Err(vec![format!(
            "{}: {place}: cannot be meshed",
            src.at(span(group).start)
        )]);
    };
    Ok(Plan::Mesh(GroupPlan {
        group,
        services,
        account: workload,
        network,
        app_port,
        skip_inbound,
        account_tag,
        warnings,
    }))
}

impl GroupPlan<'_> {
    fn summary(&self, opts: &Options) -> String {
        let mode = if opts.explicit {
            "explicit"
        } else {
            "transparent"
        };
        format!(
            "meshed ({mode}) as spiffe://{}/ns/<namespace>/sa/{}",
            opts.trust_domain,
            self.account.trim_matches('"')
        )
    }

    fn edit(&self, src: &Source<'_>, opts: &Options, edits: &mut Edits) {
        let eol = if src.text.contains("\r\n") {
            "\r\n"
        } else {
            "\n"
        };
        let mut tags = vec![format!("\"{MESH_TAG}\"")];
        tags.extend(self.account_tag.clone());
        tags.push(format!(
            "\"{ADMIN_TAG}${{NOMAD_HOST_PORT_{ADMIN_PORT_LABEL}}}\""
        ));
        // The proxy's ports in the group's network, added in one place.
        let mut ports = Vec::new();
        if opts.explicit && self.app_port.is_some() {
            tags.push(format!(
                "\"{INBOUND_TAG}${{NOMAD_HOST_PORT_{INBOUND_PORT_LABEL}}}\""
            ));
            ports.push(format!(
                "port \"{INBOUND_PORT_LABEL}\" {{ to = {INBOUND_PORT} }} # weft inject: the proxy's inbound listener"
            ));
        }
        ports.push(format!(
            "port \"{TAP_PORT_LABEL}\" {{ to = {TAP_PORT} }} # weft inject: the proxy's tap listener (mutual TLS, for the control plane)"
        ));
        ports.push(format!(
            "port \"{ADMIN_PORT_LABEL}\" {{ to = {ADMIN_PORT} }} # weft inject: the proxy's admin listener (/metrics and probes, for Prometheus)"
        ));
        append_to_block(src, self.network, &ports.join("\n"), false, eol, edits);
        for s in &self.services {
            add_tags(src, s, &tags, eol, edits);
        }
        let mut tasks = String::new();
        if !opts.explicit {
            tasks.push_str(&self.init_task(opts));
            tasks.push('\n');
        }
        tasks.push_str(&self.proxy_task(opts));
        append_to_block(src, self.group, &tasks, true, eol, edits);
    }

    fn init_task(&self, opts: &Options) -> String {
        let mut args: Vec<String> = [
            "init".to_string(),
            "--proxy-uid".into(),
            PROXY_UID.to_string(),
            "--inbound-port".into(),
            INBOUND_PORT.to_string(),
            "--outbound-port".into(),
            OUTBOUND_PORT.to_string(),
        ]
        .iter()
        .map(|a| quote(a))
        .collect();
        if !self.skip_inbound.is_empty() {
            args.push(quote("--skip-inbound-ports"));
            // Port numbers and Nomad's `${NOMAD_PORT_<label>}`, which must stay interpolations.
            args.push(quote_nomad(&self.skip_inbound.join(",")));
        }
        format!(
            r#"# weft inject: writes the nat rules that send the group's TCP through the proxy, then
# exits. It needs NET_ADMIN and NET_RAW: the Docker plugin's allow_caps in the client's
# configuration must include net_admin and net_raw.
task "{INIT_TASK}" {{
  driver = "docker"
  user   = "0"

  lifecycle {{
    hook    = "prestart"
    sidecar = false
  }}

  config {{
    image      = {image}
    entrypoint = ["weft-proxy"]
    args       = [{args}]
    cap_add    = ["NET_ADMIN", "NET_RAW"]
  }}

  resources {{
    cpu    = 20
    memory = 32
  }}
}}
"#,
            image = quote(&opts.proxy_image),
            args = args.join(", "),
        )
    }

    fn proxy_task(&self, opts: &Options) -> String {
        let mut args = vec![
            ("--platform", quote("nomad")),
            (
                "--token-file",
                format!("\"${{NOMAD_SECRETS_DIR}}/nomad_{IDENTITY_NAME}.jwt\""),
            ),
            ("--namespace", "\"${NOMAD_NAMESPACE}\"".to_string()),
            // The workload as the registry keys it (the allocation), and the account the
            // proxy asks for: the control plane finds the allocation's services, and their
            // inbound rules, under the first.
            ("--workload", "\"${NOMAD_ALLOC_ID}\"".to_string()),
            ("--account", self.account.clone()),
            ("--trust-domain", quote(&opts.trust_domain)),
            (
                "--trust-bundle",
                "\"${NOMAD_SECRETS_DIR}/weft-trust-bundle.pem\"".to_string(),
            ),
            // Metrics and probes on every address of the group's network, for the port above.
            ("--admin-addr", quote(&format!("0.0.0.0:{ADMIN_PORT}"))),
            // Tap: listened for inside the group's network, dialled at the host's mapping.
            ("--tap-addr", quote(&format!("0.0.0.0:{TAP_PORT}"))),
            (
                "--tap-advertise",
                format!("\"${{NOMAD_HOST_ADDR_{TAP_PORT_LABEL}}}\""),
            ),
        ];
        if opts.explicit {
            if let Some(p) = &self.app_port {
                args.push(("--app-port", quote_nomad(p)));
            }
            for u in &opts.upstreams {
                args.push(("--upstream", quote(u)));
            }
        }
        let mut arg_lines = String::new();
        for (flag, value) in &args {
            let _ = writeln!(arg_lines, "      {}, {value},", quote(flag));
        }
        if !opts.explicit {
            let _ = writeln!(arg_lines, "      {},", quote("--transparent"));
        }
        let _ = writeln!(arg_lines, "      {},", quote("--log-json"));
        format!(
            r#"# weft inject: the Weft proxy, started before the group's tasks and stopped after them.
task "{PROXY_TASK}" {{
  driver = "docker"
  user   = "{PROXY_UID}"

  lifecycle {{
    hook    = "prestart"
    sidecar = true
  }}

  # The proxy's credential for the control plane, written to secrets/nomad_{IDENTITY_NAME}.jwt.
  identity {{
    name = "{IDENTITY_NAME}"
    aud  = ["{AUDIENCE}"]
    file = true
    ttl  = "1h"
  }}

  config {{
    image      = {image}
    entrypoint = ["weft-proxy"]
    args = [
{arg_lines}    ]
  }}

  # The mesh's roots: the Nomad Variable nomad/jobs, key weft_trust_bundle.
  template {{
    destination          = "secrets/weft-trust-bundle.pem"
    change_mode          = "noop"
    error_on_missing_key = true
    data                 = <<-EOT
      {{{{ with nomadVar "nomad/jobs" }}}}{{{{ .weft_trust_bundle }}}}{{{{ end }}}}
      EOT
  }}

  # The control plane's gRPC address: one instance of the service weft-control-grpc.
  template {{
    destination = "local/weft-control.env"
    env         = true
    data        = <<-EOT
      {{{{ range nomadService 1 (env "NOMAD_ALLOC_ID") "weft-control-grpc" }}}}WEFT_PROXY_CONTROL_ADDR={{{{ .Address }}}}:{{{{ .Port }}}}{{{{ end }}}}
      EOT
  }}

  # The access log, where the job, group or task sets meta {{ weft_access_log = "json" }}
  # ("common", "json" or "off"); without it the mesh file decides.
  template {{
    destination = "local/weft-access-log.env"
    env         = true
    data        = <<-EOT
      {{{{ with env "NOMAD_META_weft_access_log" }}}}WEFT_PROXY_ACCESS_LOG={{{{ . }}}}{{{{ end }}}}
      EOT
  }}

  resources {{
    cpu    = 50
    memory = 128
  }}
}}
"#,
            image = quote(&opts.proxy_image),
        )
    }
}

/// An HCL string literal of `s`, where `${` and `%{` stay literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An HCL string literal of a value that holds a Nomad interpolation (`${NOMAD_PORT_x}`),
/// which must stay one.
fn quote_nomad(s: &str) -> String {
    format!("\"{s}\"")
}

/// Insertions into the input, applied in offset order (insertions at one offset in the order
/// they were made).
#[derive(Default)]
struct Edits(Vec<(usize, String)>);

impl Edits {
    fn insert(&mut self, at: usize, text: String) {
        self.0.push((at, text));
    }

    fn apply(mut self, text: &str) -> String {
        self.0.sort_by_key(|(at, _)| *at);
        let mut out =
            String::with_capacity(text.len() + self.0.iter().map(|e| e.1.len()).sum::<usize>());
        let mut done = 0;
        for (at, ins) in &self.0 {
            out.push_str(&text[done..*at]);
            out.push_str(ins);
            done = *at;
        }
        out.push_str(&text[done..]);
        out
    }
}

/// The whitespace before the first non-blank character of the line holding `offset`.
fn indent_at(text: &str, offset: usize) -> &str {
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = &text[start..];
    let n = line.len() - line.trim_start_matches([' ', '\t']).len();
    &line[..n]
}

/// The indentation one level deeper than `block`'s: that of its first structure when it is on
/// a line of its own, else two spaces more.
fn child_indent(src: &Source<'_>, block: &Block) -> String {
    let outer = indent_at(src.text, span(block).start);
    let first = block.body.iter().find_map(|s| s.span());
    if let Some(r) = first {
        let inner = indent_at(src.text, r.start);
        let line_start = src.text[..r.start].rfind('\n').map_or(0, |i| i + 1);
        if line_start + inner.len() == r.start
            && inner.len() > outer.len()
            && inner.starts_with(outer)
        {
            return inner.to_string();
        }
    }
    format!("{outer}  ")
}

/// Inserts `content` (lines indented two spaces per level) at the end of `block`'s body, one
/// level deeper than the block, after a blank line when `spaced`.
fn append_to_block(
    src: &Source<'_>,
    block: &Block,
    content: &str,
    spaced: bool,
    eol: &str,
    edits: &mut Edits,
) {
    let outer = indent_at(src.text, span(block).start).to_string();
    let inner = child_indent(src, block);
    let unit = inner
        .strip_prefix(outer.as_str())
        .unwrap_or("  ")
        .to_string();
    let mut lines = String::new();
    if spaced {
        lines.push_str(eol);
    }
    for line in content.lines() {
        if line.is_empty() {
            lines.push_str(eol);
            continue;
        }
        let trimmed = line.trim_start_matches(' ');
        let depth = (line.len() - trimmed.len()) / 2;
        lines.push_str(&inner);
        for _ in 0..depth {
            lines.push_str(&unit);
        }
        // Heredoc bodies keep their relative indentation beyond whole levels.
        lines.push_str(&" ".repeat((line.len() - trimmed.len()) % 2));
        lines.push_str(trimmed);
        lines.push_str(eol);
    }
    let close = span(block).end.saturating_sub(1);
    let line_start = src.text[..close].rfind('\n').map_or(0, |i| i + 1);
    if src.text[line_start..close].trim().is_empty() && line_start > span(block).start {
        // The closing brace on a line of its own: the new lines go before that line.
        edits.insert(line_start, lines);
    } else {
        // A block on one line (`network { mode = "bridge" }`): the body moves to lines of its
        // own, which needs a line break after the opening brace too.
        let open = src.text[span(block).start..close]
            .find('{')
            .map_or(close, |i| span(block).start + i + 1);
        let after_open =
            open + (src.text[open..close].len() - src.text[open..close].trim_start().len());
        if after_open < close {
            edits.insert(after_open, format!("{eol}{inner}"));
            edits.insert(
                close,
                format!("{eol}{}{outer}", lines.trim_start_matches(['\r', '\n'])),
            );
        } else {
            edits.insert(
                close,
                format!("{eol}{}{outer}", lines.trim_start_matches(['\r', '\n'])),
            );
        }
    }
}

/// Adds the tags a meshed service carries: into a literal `tags` list, around another `tags`
/// expression (`concat(EXPR, [...])`), or as a new `tags` line.
fn add_tags(src: &Source<'_>, service: &Block, tags: &[String], eol: &str, edits: &mut Edits) {
    let Some(existing) = attr(&service.body, "tags") else {
        // A new attribute after the last attribute's line (its comment stays on it).
        let after = service
            .body
            .attributes()
            .filter_map(|a| a.span())
            .max_by_key(|r| r.end);
        let list = format!("[{}]", tags.join(", "));
        match after {
            Some(r) => {
                // Aligned with the attribute above, as `nomad fmt` aligns a run of them.
                let width = src.text[r.clone()]
                    .find('=')
                    .unwrap_or(0)
                    .max("tags ".len());
                let line = format!("{:<width$}= {list}", "tags");
                let end = r.end;
                let eol_at = src.text[end..]
                    .find('\n')
                    .map_or(src.text.len(), |i| end + i);
                let eol_at = if src.text[..eol_at].ends_with('\r') {
                    eol_at - 1
                } else {
                    eol_at
                };
                let indent = indent_at(src.text, r.start).to_string();
                edits.insert(eol_at, format!("{eol}{indent}{line}"));
            }
            None => append_to_block(src, service, &format!("tags = {list}"), false, eol, edits),
        }
        return;
    };
    let vr = existing.span().unwrap_or(0..0);
    let Some(array) = existing.as_array() else {
        edits.insert(vr.start, "concat(".into());
        edits.insert(vr.end, format!(", [{}])", tags.join(", ")));
        return;
    };
    let present: Vec<&str> = array.iter().filter_map(Expression::as_str).collect();
    let missing: Vec<&String> = tags
        .iter()
        .filter(|t| {
            let t = t.trim_matches('"');
            if t.starts_with(INBOUND_TAG) {
                !present.iter().any(|p| p.starts_with(INBOUND_TAG))
                    && !array.iter().any(|e| {
                        e.as_string_template().is_some()
                            && src
                                .slice(e.span().unwrap_or(0..0))
                                .starts_with(&format!("\"{INBOUND_TAG}"))
                    })
            } else {
                !present.contains(&t)
            }
        })
        .collect();
    if missing.is_empty() {
        return;
    }
    let missing: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
    let Some(last) = array.iter().filter_map(|e| e.span()).map(|r| r.end).max() else {
        edits.insert(vr.start + 1, missing.join(", "));
        return;
    };
    let source = src.slice(vr.clone());
    if !source.contains('\n') {
        edits.insert(last, format!(", {}", missing.join(", ")));
        return;
    }
    // One element per line: the new ones on lines of their own, in the list's style.
    let indent = indent_at(src.text, last).to_string();
    let mut ins = String::new();
    if array.trailing_comma() {
        let comma = after_trivia(src.text, last);
        for m in &missing {
            let _ = write!(ins, "{eol}{indent}{m},");
        }
        edits.insert(comma + 1, ins);
    } else {
        for m in &missing {
            let _ = write!(ins, ",{eol}{indent}{m}");
        }
        edits.insert(last, ins);
    }
}

/// The offset of the first character after `from` that is not whitespace or a comment.
fn after_trivia(text: &str, mut from: usize) -> usize {
    let b = text.as_bytes();
    while from < b.len() {
        match b[from] {
            b' ' | b'\t' | b'\r' | b'\n' => from += 1,
            b'#' => from = text[from..].find('\n').map_or(b.len(), |i| from + i),
            b'/' if b.get(from + 1) == Some(&b'/') => {
                from = text[from..].find('\n').map_or(b.len(), |i| from + i);
            }
            b'/' if b.get(from + 1) == Some(&b'*') => {
                from = text[from + 2..]
                    .find("*/")
                    .map_or(b.len(), |i| from + 2 + i + 2);
            }
            _ => break,
        }
    }
    from
}

#[cfg(test)]
mod tests;
