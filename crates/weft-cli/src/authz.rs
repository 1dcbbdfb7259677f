//! `weft authz`: explains an authorization decision without sending traffic. Given a client,
//! a service and a request, it prints the decision, the rule that made it (with the file and
//! line, or the platform object, where it was written), why, and what each rule of the
//! service made of the request. The rules come from a mesh file, or from a running control
//! plane's `/api/authz`, which decides with the policy it is enforcing.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use weft_core::policy::authz::{ExplainRequest, Explanation, decision_name, explain};

/// Where the rules come from.
#[derive(Debug)]
pub enum Source {
    /// A mesh config file.
    File(PathBuf),
    /// A running control plane's HTTP listener, with the token its non-loopback listeners
    /// require.
    Control {
        /// `host:port`.
        addr: SocketAddr,
        /// The file holding the token, if one is needed.
        token_file: Option<PathBuf>,
    },
}

/// Explains `question` against `source` and prints it, as text or as JSON.
pub async fn run(source: Source, question: ExplainRequest, json: bool) -> anyhow::Result<()> {
    let answer = match source {
        Source::File(path) => {
            let cfg = weft_control::platforms::loader()
                .load(&path)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            explain(
                cfg.policy.default_inbound,
                &cfg.authorization_rules,
                &cfg.mesh.trust_domain,
                &question,
            )?
        }
        Source::Control { addr, token_file } => ask(addr, token_file, &question).await?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", render(&answer));
    }
    Ok(())
}

/// Asks the control plane at `addr`.
async fn ask(
    addr: SocketAddr,
    token_file: Option<PathBuf>,
    question: &ExplainRequest,
) -> anyhow::Result<Explanation> {
    let token = token_file
        .as_deref()
        .map(crate::viz::read_token)
        .transpose()?;
    let control = crate::viz::Control::tcp(addr, token);
    let req = control
        .request(http::Method::POST, "/api/authz")
        .header(http::header::CONTENT_TYPE, "application/json");
    let body = Full::new(Bytes::from(serde_json::to_vec(question)?));
    let rsp = control.send(req.body(body)?).await?;
    let status = rsp.status();
    let bytes = rsp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "the control plane answered {status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        );
    }
    serde_json::from_slice(&bytes).context("reading the control plane's answer")
}

/// The explanation as text: the decision line, the reason, then the service's rules.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let port = e.port.map_or_else(String::new, |p| format!(" port {p}"));
    let _ = writeln!(
        out,
        "{}: {} -> {}{port}: {}",
        decision_name(e.decision).to_uppercase(),
        e.client,
        e.service,
        e.request
    );
    match &e.decided_by {
        Some(rule) => {
            let at = e
                .rules
                .iter()
                .find(|r| &r.name == rule)
                .map_or(String::new(), |r| format!(" ({})", r.source));
            let _ = writeln!(out, "decided by rule {rule}{at}");
        }
        None => {
            let _ = writeln!(out, "decided by the default ({})", decision_name(e.default));
        }
    }
    let _ = writeln!(out, "why: {}", e.reason);
    if e.rules.is_empty() {
        let _ = writeln!(out, "no rule names {}", e.service);
        return out;
    }
    let _ = writeln!(out, "rules of {}:", e.service);
    let width = e.rules.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in &e.rules {
        let kind = if r.audit {
            format!("{} (audit)", r.action)
        } else {
            r.action.to_string()
        };
        let mark = if e.decided_by.as_ref() == Some(&r.name) {
            "  <- decided"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {:width$}  {kind:13}  {}: {}{mark}",
            r.name, r.source, r.outcome
        );
    }
    out
}
