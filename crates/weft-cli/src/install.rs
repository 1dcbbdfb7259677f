//! `weft install`: the control plane's Kubernetes manifests, rendered from the Helm chart in
//! `deploy-k8s/weft` (its templates, values and values schema, embedded at build time) by
//! [`crate::gotmpl`], so that Helm is not needed and there is no second copy of the templates.
//!
//! It renders as `helm template` would for a first install (`lookup` finds nothing), with
//! these differences: the output starts with the release's Namespace (as `helm install
//! --create-namespace` would create it), objects are labelled `managed-by: weft`, and the
//! generated certificates have ECDSA P-256 keys where Helm's `genCA` makes RSA ones, and a
//! values file with YAML anchors or aliases is refused (`crate::inject::load_yaml`) where
//! Helm would expand them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Map, Value, json};
use yaml_rust2::Yaml;

use crate::gotmpl::{Funcs, Set, kind_of, object, print, truthy};
use crate::inject::{load_yaml, to_json, to_yaml};

macro_rules! chart_file {
    ($path:literal) => {
        (
            $path,
            include_str!(concat!("../../../deploy-k8s/weft/", $path)),
        )
    };
}

const CHART_YAML: &str = include_str!("../../../deploy-k8s/weft/Chart.yaml");
const VALUES: &str = include_str!("../../../deploy-k8s/weft/values.yaml");
const VALUES_HA: &str = include_str!("../../../deploy-k8s/weft/values-ha.yaml");
const SCHEMA: &str = include_str!("../../../deploy-k8s/weft/values.schema.json");

/// Every file of the chart's `templates/` (a test keeps this list equal to the directory).
const TEMPLATES: [(&str, &str); 10] = [
    chart_file!("templates/_helpers.tpl"),
    chart_file!("templates/configmap.yaml"),
    chart_file!("templates/crds.yaml"),
    chart_file!("templates/deployment.yaml"),
    chart_file!("templates/pdb.yaml"),
    chart_file!("templates/rbac.yaml"),
    chart_file!("templates/secrets.yaml"),
    chart_file!("templates/service.yaml"),
    chart_file!("templates/serviceaccount.yaml"),
    chart_file!("templates/webhook.yaml"),
];

/// The order Helm installs kinds in; `kubectl apply` creates objects in the order given.
const KIND_ORDER: [&str; 13] = [
    "Namespace",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "Deployment",
    "MutatingWebhookConfiguration",
];

/// What `weft install` was asked.
#[derive(Debug)]
pub struct Args {
    pub namespace: String,
    pub values: Vec<PathBuf>,
    pub set: Vec<String>,
    pub ha: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let values = load_values(args)?;
    validate(&values)?;
    let out = render(&args.namespace, &values)?;
    print!("{out}");
    Ok(())
}

/// What `weft install -n <namespace> -f <file>` prints when `file` holds `text`: the chart's
/// defaults with that values file merged over them, checked against the chart's schema, then
/// rendered. The fuzz target of `weft install` calls this; `file` only names the file in errors.
pub fn render_values_text(namespace: &str, text: &str, file: &Path) -> anyhow::Result<String> {
    let mut values = parse_yaml_map(VALUES, Path::new("deploy-k8s/weft/values.yaml"))?;
    merge(&mut values, parse_yaml_map(text, file)?);
    validate(&values)?;
    render(namespace, &values)
}

/// The chart's defaults, then values-ha.yaml with `--ha`, the files and the `--set`s.
fn load_values(args: &Args) -> anyhow::Result<Value> {
    let mut values = parse_yaml_map(VALUES, Path::new("deploy-k8s/weft/values.yaml"))?;
    if args.ha {
        let ha = parse_yaml_map(VALUES_HA, Path::new("deploy-k8s/weft/values-ha.yaml"))?;
        merge(&mut values, ha);
    }
    for file in &args.values {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        merge(&mut values, parse_yaml_map(&text, file)?);
    }
    for set in &args.set {
        for (path, value) in parse_set(set).with_context(|| format!("--set {set}"))? {
            set_path(&mut values, &path, value).with_context(|| format!("--set {set}"))?;
        }
    }
    Ok(values)
}

fn parse_yaml_map(text: &str, file: &Path) -> anyhow::Result<Value> {
    let docs = load_yaml(text, file)?;
    match docs.as_slice() {
        [] | [Yaml::Null] => Ok(Value::Object(Map::new())),
        [doc] => match to_json(doc).with_context(|| file.display().to_string())? {
            v @ Value::Object(_) => Ok(v),
            other => bail!(
                "{}: values must be a mapping, not {}",
                file.display(),
                kind_of(&other)
            ),
        },
        _ => bail!("{}: values must be one YAML document", file.display()),
    }
}

/// Helm's merge of values: maps merge key by key, anything else replaces, and null deletes.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(&k);
                } else if let Some(slot) = b.get_mut(&k).filter(|s| s.is_object() && v.is_object())
                {
                    merge(slot, v);
                } else {
                    b.insert(k, v);
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// `--set a.b=1,c=x`: paths and values, typed as Helm types them (integers, `true`/`false`,
/// `null`, `{x,y}` lists; anything else a string). A backslash escapes `,`, `.` and `=`.
fn parse_set(s: &str) -> anyhow::Result<Vec<(Vec<String>, Value)>> {
    let mut out = Vec::new();
    for item in split_unescaped(s, ',', true) {
        let parts = split_unescaped(&item, '=', false);
        let [key, value] = parts.as_slice() else {
            bail!("expected key=value, got {item:?}");
        };
        let path: Vec<String> = split_unescaped(key, '.', false)
            .into_iter()
            .map(|p| unescape(&p))
            .collect();
        if path.iter().any(String::is_empty) {
            bail!("bad key {key:?}");
        }
        let value = match value.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
            Some(list) if !list.is_empty() => Value::Array(
                split_unescaped(list, ',', false)
                    .iter()
                    .map(|v| typed(&unescape(v)))
                    .collect(),
            ),
            Some(_) => Value::Array(Vec::new()),
            None => typed(&unescape(value)),
        };
        out.push((path, value));
    }
    Ok(out)
}

fn typed(s: &str) -> Value {
    match s {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" => Value::Null,
        _ => match s.parse::<i64>() {
            // Helm keeps a leading zero as a string.
            Ok(n) if !(s.len() > 1 && s.starts_with('0')) => Value::from(n),
            _ => Value::String(s.to_string()),
        },
    }
}

/// Splits on `sep` outside `{...}` (when `braces`) and not after a backslash; escapes stay.
fn split_unescaped(s: &str, sep: char, braces: bool) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut depth = 0usize;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let part = parts.last_mut().expect("parts is never empty");
        match c {
            '\\' => {
                part.push(c);
                if let Some(n) = chars.next() {
                    part.push(n);
                }
            }
            '{' if braces => {
                depth += 1;
                part.push(c);
            }
            '}' if braces => {
                depth = depth.saturating_sub(1);
                part.push(c);
            }
            c if c == sep && depth == 0 => parts.push(String::new()),
            c => part.push(c),
        }
    }
    parts
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

fn set_path(values: &mut Value, path: &[String], value: Value) -> anyhow::Result<()> {
    let mut at = values;
    for (i, key) in path.iter().enumerate() {
        let Value::Object(map) = at else {
            bail!("{} is not a map", path[..i].join("."));
        };
        if i + 1 == path.len() {
            if value.is_null() {
                map.remove(key);
            } else {
                map.insert(key.clone(), value);
            }
            return Ok(());
        }
        at = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(())
}

/// The values against the chart's values.schema.json, as Helm checks them: every problem,
/// each at its key.
fn validate(values: &Value) -> anyhow::Result<()> {
    let schema: Value = serde_json::from_str(SCHEMA).context("the chart's values.schema.json")?;
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource("values.schema.json", schema)
        .map_err(|e| anyhow::anyhow!("the chart's values.schema.json: {e}"))?;
    let index = compiler
        .compile("values.schema.json", &mut schemas)
        .map_err(|e| anyhow::anyhow!("the chart's values.schema.json: {e}"))?;
    let Err(e) = schemas.validate(values, index) else {
        return Ok(());
    };
    let mut problems = Vec::new();
    leaf_errors(&e, &mut problems);
    bail!(
        "the values do not fit the chart's schema:\n  {}",
        problems.join("\n  ")
    )
}

fn leaf_errors(e: &boon::ValidationError<'_, '_>, out: &mut Vec<String>) {
    if e.causes.is_empty() {
        let at = e.instance_location.to_string();
        let at = if at.is_empty() { "/".to_string() } else { at };
        out.push(format!("{at}: {}", e.kind));
    }
    for c in &e.causes {
        leaf_errors(c, out);
    }
}

/// Renders every template of the chart: the manifests, each headed by its source.
pub fn render(namespace: &str, values: &Value) -> anyhow::Result<String> {
    if !is_dns_label(namespace) {
        bail!("--namespace {namespace:?} is not a Kubernetes namespace name (a DNS label)");
    }
    let chart = parse_yaml_map(CHART_YAML, Path::new("deploy-k8s/weft/Chart.yaml"))?;
    let data = json!({
        "Values": values,
        "Release": {
            "Name": "weft",
            "Namespace": namespace,
            "Service": "weft",
            "IsInstall": true,
            "IsUpgrade": false,
            "Revision": 1,
        },
        "Chart": {
            "Name": chart["name"],
            "Version": chart["version"],
            "AppVersion": chart["appVersion"],
            "Description": chart["description"],
        },
    });
    let mut set = Set::new(helm_funcs());
    for (file, src) in TEMPLATES {
        set.parse(file, src)?;
    }
    let mut docs: Vec<(usize, String, String)> = vec![(
        0,
        "weft install".to_string(),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n  labels:\n    app.kubernetes.io/name: weft\n    app.kubernetes.io/managed-by: weft\n"
        ),
    )];
    for (file, _) in TEMPLATES {
        if file.rsplit('/').next().is_some_and(|f| f.starts_with('_')) {
            continue;
        }
        let text = set.render(file, &data)?;
        for doc in split_documents(&text) {
            // Values are pasted into templates as text, so a values string could carry
            // anchors and aliases into what is parsed here.
            let parsed = load_yaml(&doc, Path::new(file))
                .with_context(|| format!("{file} rendered YAML that cannot be read:\n{doc}"))?;
            let Some(first) = parsed.first().filter(|d| !d.is_null()) else {
                continue;
            };
            let kind = first["kind"].as_str().unwrap_or_default();
            let rank = KIND_ORDER
                .iter()
                .position(|k| *k == kind)
                .unwrap_or(KIND_ORDER.len());
            docs.push((rank, format!("weft/{file}"), doc));
        }
    }
    docs.sort_by_key(|d| d.0);
    let mut out = String::new();
    for (_, source, doc) in docs {
        let _ = write!(out, "---\n# Source: {source}\n{}\n", doc.trim_matches('\n'));
    }
    Ok(out)
}

/// A template's output cut into YAML documents at `---` lines, the empty ones dropped.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.retain(|d| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The Helm (and Sprig) functions the chart uses, with Helm's meaning: what `weft install`
/// renders the chart with, public for the template renderer's fuzz target.
pub fn helm_funcs() -> Funcs {
    let mut f = Funcs::default();
    f.add("quote", |a| {
        let quoted: Vec<String> = a
            .iter()
            .filter(|v| !v.is_null())
            .map(|v| go_quote(&print(v)))
            .collect();
        Ok(Value::String(quoted.join(" ")))
    });
    f.add("indent", |a| {
        let (n, s) = two(a)?;
        Ok(Value::String(indent(to_int(n)?, &print(s))))
    });
    f.add("nindent", |a| {
        let (n, s) = two(a)?;
        Ok(Value::String(format!(
            "\n{}",
            indent(to_int(n)?, &print(s))
        )))
    });
    f.add("toYaml", |a| {
        let [v] = a else {
            return Err("takes one value".into());
        };
        to_yaml_text(v)
    });
    f.add("default", |a| match a {
        [d] => Ok(d.clone()),
        [d, given] => Ok(if truthy(given) {
            given.clone()
        } else {
            d.clone()
        }),
        _ => Err("takes a default and a value".into()),
    });
    f.add("required", |a| {
        let (msg, v) = two(a)?;
        if v.is_null() || v.as_str() == Some("") {
            return Err(print(msg));
        }
        Ok(v.clone())
    });
    f.add("empty", |a| {
        let [v] = a else {
            return Err("takes one value".into());
        };
        Ok(Value::Bool(!truthy(v)))
    });
    f.add("eq", |a| {
        let (first, rest) = a.split_first().ok_or("takes two values or more")?;
        if rest.is_empty() {
            return Err("takes two values or more".into());
        }
        Ok(Value::Bool(rest.iter().any(|v| same(first, v))))
    });
    f.add("ne", |a| {
        let (x, y) = two(a)?;
        Ok(Value::Bool(!same(x, y)))
    });
    for (name, want) in [
        ("lt", [std::cmp::Ordering::Less; 2]),
        ("le", [std::cmp::Ordering::Less, std::cmp::Ordering::Equal]),
        ("gt", [std::cmp::Ordering::Greater; 2]),
        (
            "ge",
            [std::cmp::Ordering::Greater, std::cmp::Ordering::Equal],
        ),
    ] {
        f.add(name, move |a| {
            let (x, y) = two(a)?;
            let order = match (x, y) {
                (Value::Number(x), Value::Number(y)) => x
                    .as_f64()
                    .partial_cmp(&y.as_f64())
                    .ok_or("incomparable numbers")?,
                (Value::String(x), Value::String(y)) => x.cmp(y),
                _ => return Err(format!("can't compare {} with {}", kind_of(x), kind_of(y))),
            };
            Ok(Value::Bool(want.contains(&order)))
        });
    }
    f.add("int", |a| {
        let [v] = a else {
            return Err("takes one value".into());
        };
        Ok(Value::from(match v {
            Value::Number(n) => n
                .as_i64()
                .unwrap_or_else(|| n.as_f64().map_or(0, |f| f.trunc() as i64)),
            Value::String(s) => s.trim().parse().unwrap_or(0),
            Value::Bool(b) => i64::from(*b),
            _ => 0,
        }))
    });
    f.add("not", |a| {
        let [v] = a else {
            return Err("takes one value".into());
        };
        Ok(Value::Bool(!truthy(v)))
    });
    f.add("and", |a| {
        Ok(a.iter()
            .find(|v| !truthy(v))
            .or(a.last())
            .cloned()
            .unwrap_or(Value::Null))
    });
    f.add("or", |a| {
        Ok(a.iter()
            .find(|v| truthy(v))
            .or(a.last())
            .cloned()
            .unwrap_or(Value::Null))
    });
    f.add("index", |a| {
        let (base, keys) = a.split_first().ok_or("takes a map or list and keys")?;
        let mut v = base.clone();
        for k in keys {
            v = match (&v, k) {
                (Value::Object(m), Value::String(k)) => m.get(k).cloned().unwrap_or(Value::Null),
                (Value::Array(l), Value::Number(i)) => {
                    let i = i
                        .as_u64()
                        .and_then(|i| usize::try_from(i).ok())
                        .ok_or("bad index")?;
                    l.get(i)
                        .cloned()
                        .ok_or_else(|| format!("index {i} out of range"))?
                }
                (Value::Null, _) => Value::Null,
                (v, k) => return Err(format!("can't index {} with {}", kind_of(v), kind_of(k))),
            };
        }
        Ok(v)
    });
    f.add("printf", |a| {
        let (format, args) = a.split_first().ok_or("takes a format")?;
        sprintf(&print(format), args).map(Value::String)
    });
    f.add("list", |a| Ok(Value::Array(a.to_vec())));
    f.add("toString", |a| {
        let [v] = a else {
            return Err("takes one value".into());
        };
        Ok(Value::String(print(v)))
    });
    // `helm template` and a first install find nothing in the cluster.
    f.add("lookup", |a| {
        if a.len() != 4 {
            return Err("takes apiVersion, kind, namespace and name".into());
        }
        Ok(Value::Object(Map::new()))
    });
    f.add("b64enc", |a| {
        let [v] = a else {
            return Err("takes one value".into());
        };
        Ok(Value::String(
            base64::engine::general_purpose::STANDARD.encode(print(v)),
        ))
    });
    f.add("randAlphaNum", |a| {
        let [n] = a else {
            return Err("takes a length".into());
        };
        random_alphanumeric(to_int(n)?).map(Value::String)
    });
    f.add("genCA", |a| {
        let (cn, days) = two(a)?;
        gen_ca(&print(cn), to_int(days)?).map_err(|e| e.to_string())
    });
    f.add("genSignedCert", |a| {
        let [cn, ips, names, days, ca] = a else {
            return Err("takes a common name, IPs, DNS names, days and a CA".into());
        };
        gen_signed_cert(&print(cn), ips, names, to_int(days)?, ca).map_err(|e| e.to_string())
    });
    f
}

fn two(a: &[Value]) -> Result<(&Value, &Value), String> {
    match a {
        [x, y] => Ok((x, y)),
        _ => Err(format!("takes two values, got {}", a.len())),
    }
}

fn to_int(v: &Value) -> Result<usize, String> {
    v.as_f64()
        .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1e9)
        .map(|f| f as usize)
        .ok_or_else(|| format!("expected a count, got {}", print(v)))
}

/// Go's `eq` on basic values: numbers by value, the rest by equality.
fn same(x: &Value, y: &Value) -> bool {
    match (x, y) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => x == y,
    }
}

fn indent(n: usize, s: &str) -> String {
    let pad = " ".repeat(n);
    format!("{pad}{}", s.replace('\n', &format!("\n{pad}")))
}

/// Go's `%q`: a double-quoted string with Go escapes.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `printf` with the verbs the chart needs: `%s`, `%d`, `%v`, `%q` and `%%`.
fn sprintf(format: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let verb = chars.next().ok_or("a format ending in %")?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let arg = args
            .next()
            .ok_or_else(|| format!("missing argument for %{verb}"))?;
        match verb {
            's' | 'v' | 'd' => out.push_str(&print(arg)),
            'q' => out.push_str(&go_quote(&print(arg))),
            other => return Err(format!("unsupported verb %{other}")),
        }
    }
    if args.next().is_some() {
        return Err("more arguments than verbs".into());
    }
    Ok(out)
}

/// Helm's `toYaml`: the value as YAML, without the final newline.
fn to_yaml_text(v: &Value) -> Result<Value, String> {
    let mut text = String::new();
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut text);
    emitter.multiline_strings(true);
    emitter.dump(&to_yaml(v)).map_err(|e| e.to_string())?;
    // The emitter opens the document with `---`.
    let body = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("--- "))
        .unwrap_or(&text);
    Ok(Value::String(body.trim_end_matches('\n').to_string()))
}

fn random_alphanumeric(n: usize) -> Result<String, String> {
    use ring::rand::{SecureRandom, SystemRandom};
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(n);
    let mut byte = [0u8; 1];
    while out.len() < n {
        rng.fill(&mut byte)
            .map_err(|_| "no randomness".to_string())?;
        // 248 = 4 * 62: rejecting the rest keeps every character equally likely.
        if byte[0] < 248 {
            out.push(char::from(ALPHABET[usize::from(byte[0]) % ALPHABET.len()]));
        }
    }
    Ok(out)
}

/// From an hour ago to `days` from now; a certificate that would end past what a date can
/// hold (the year 9999) is an error, as asking for it is a mistake.
fn validity(params: &mut CertificateParams, days: usize) -> Result<(), rcgen::Error> {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = i64::try_from(days)
        .ok()
        .filter(|d| *d <= i64::MAX / 86_400)
        .and_then(|d| now.checked_add(time::Duration::days(d)))
        .ok_or(rcgen::Error::Time)?;
    Ok(())
}

/// `genCA`: a self-signed CA valid for `days`, as `{Cert, Key}` PEM (an ECDSA P-256 key).
fn gen_ca(cn: &str, days: usize) -> Result<Value, rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days)?;
    let cert = params.self_signed(&key)?;
    Ok(object([
        ("Cert", Value::String(cert.pem())),
        ("Key", Value::String(key.serialize_pem())),
    ]))
}

/// `genSignedCert`: a serving and client certificate for `cn` and the DNS names, signed by a
/// `genCA` result.
fn gen_signed_cert(
    cn: &str,
    ips: &Value,
    names: &Value,
    days: usize,
    ca: &Value,
) -> Result<Value, Box<dyn std::error::Error>> {
    let list = |v: &Value| -> Vec<String> {
        match v {
            Value::Array(a) => a.iter().map(print).collect(),
            _ => Vec::new(),
        }
    };
    let mut params = CertificateParams::new(list(names))?;
    for ip in list(ips) {
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(ip.parse()?));
    }
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, days)?;
    let (Some(ca_cert), Some(ca_key)) = (ca["Cert"].as_str(), ca["Key"].as_str()) else {
        return Err("the CA is not a genCA result".into());
    };
    let issuer = Issuer::from_ca_cert_pem(ca_cert, KeyPair::from_pem(ca_key)?)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(object([
        ("Cert", Value::String(cert.pem())),
        ("Key", Value::String(key.serialize_pem())),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use yaml_rust2::YamlLoader;

    fn args(values: Vec<PathBuf>, set: &[&str], ha: bool) -> Args {
        Args {
            namespace: "weft".into(),
            values,
            set: set.iter().map(|s| s.to_string()).collect(),
            ha,
        }
    }

    fn objects(text: &str) -> Vec<Value> {
        YamlLoader::load_from_str(text)
            .unwrap()
            .iter()
            .map(|d| to_json(d).unwrap())
            .collect()
    }

    #[test]
    fn the_embedded_templates_are_the_charts() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy-k8s/weft/templates");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| format!("templates/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = TEMPLATES.iter().map(|(f, _)| *f).collect();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn renders_every_object_of_the_chart_in_install_order() {
        let values = load_values(&args(Vec::new(), &[], false)).unwrap();
        validate(&values).unwrap();
        let out = render("mesh-system", &values).unwrap();
        let objs = objects(&out);
        let kinds: Vec<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ServiceAccount",
                "Secret",
                "Secret",
                "ConfigMap",
                "CustomResourceDefinition",
                "CustomResourceDefinition",
                "CustomResourceDefinition",
                "CustomResourceDefinition",
                "ClusterRole",
                "ClusterRoleBinding",
                "Service",
                "Deployment",
                "MutatingWebhookConfiguration"
            ]
        );
        for o in &objs[1..] {
            if o["kind"] != "ClusterRole"
                && o["kind"] != "ClusterRoleBinding"
                && o["kind"] != "CustomResourceDefinition"
                && o["kind"] != "MutatingWebhookConfiguration"
            {
                assert_eq!(o["metadata"]["namespace"], "mesh-system", "{o}");
            }
            assert_eq!(
                o["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                "weft"
            );
        }
        let config = objs[4]["data"]["mesh.toml"].as_str().unwrap();
        assert!(
            config.contains("control_addr = \"weft-control.mesh-system.svc:7443\""),
            "{config}"
        );
        assert!(
            config.contains("proxy_image = \"ghcr.io/weft-mesh/weft-proxy:0.1.0\""),
            "{config}"
        );
        assert!(config.contains("namespaces = []"), "{config}");
        let resources = &objs[12]["spec"]["template"]["spec"]["containers"][0]["resources"];
        assert_eq!(resources["requests"]["cpu"], "100m");
        assert_eq!(objs[12]["spec"]["replicas"], 1);
        let rollout = objs[12]["spec"]["template"]["metadata"]["annotations"]["weft.dev/rollout"]
            .as_str()
            .unwrap();
        assert!(rollout.len() == 8 && rollout.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn values_files_sets_and_ha_layer_like_helm() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.yaml");
        std::fs::write(
            &file,
            "mesh:\n  namespaces: [shop, pay]\ncontrolPlane:\n  nodeSelector:\n    pool: system\n",
        )
        .unwrap();
        let values = load_values(&args(
            vec![file],
            &[
                "controlPlane.replicas=5,webhook.failurePolicy=Fail",
                "mesh.namespaces={a,b}",
            ],
            true,
        ))
        .unwrap();
        validate(&values).unwrap();
        assert_eq!(values["controlPlane"]["replicas"], 5);
        assert_eq!(values["controlPlane"]["minAvailable"], 2, "from --ha");
        assert_eq!(
            values["controlPlane"]["antiAffinity"], "required",
            "from --ha"
        );
        assert_eq!(values["mesh"]["namespaces"], json!(["a", "b"]));
        assert_eq!(
            values["mesh"]["trustDomain"], "cluster.local",
            "defaults stay"
        );
        let objs = objects(&render("weft", &values).unwrap());
        let by_kind = |k: &str| objs.iter().find(|o| o["kind"] == k).unwrap();
        assert_eq!(by_kind("PodDisruptionBudget")["spec"]["minAvailable"], 2);
        let pod = &by_kind("Deployment")["spec"]["template"]["spec"];
        assert_eq!(pod["nodeSelector"], json!({"pool": "system"}));
        assert!(
            pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                .is_array()
        );
        assert_eq!(
            by_kind("MutatingWebhookConfiguration")["webhooks"][0]["failurePolicy"],
            "Fail"
        );
        let config = by_kind("ConfigMap")["data"]["mesh.toml"].as_str().unwrap();
        assert!(config.contains("namespaces = [\"a\", \"b\"]"), "{config}");
        // An existing root: no Secret generated, the named one mounted.
        let mut values = values;
        set_path(
            &mut values,
            &["ca".into(), "existingSecret".into()],
            json!("corp-root"),
        )
        .unwrap();
        let objs = objects(&render("weft", &values).unwrap());
        assert!(!objs.iter().any(|o| o["metadata"]["name"] == "weft-ca"));
        assert!(
            serde_json::to_string(&objs)
                .unwrap()
                .contains("\"secretName\":\"corp-root\"")
        );
    }

    #[test]
    fn an_anchor_a_value_pastes_into_a_template_is_refused_with_its_place() {
        // A value the template pastes without quoting it: the rendered YAML carries the
        // anchor, which is refused before the rendered document is parsed.
        let mut values = load_values(&args(Vec::new(), &[], false)).unwrap();
        set_path(
            &mut values,
            &["controlPlane".into(), "image".into(), "pullPolicy".into()],
            json!("&a IfNotPresent"),
        )
        .unwrap();
        let e = format!("{:#}", render("weft", &values).unwrap_err());
        assert!(
            e.contains("templates/deployment.yaml rendered YAML that cannot be read"),
            "{e}"
        );
        assert!(
            e.contains("templates/deployment.yaml:")
                && e.contains(": YAML anchors and aliases are not supported"),
            "{e}"
        );
    }

    #[test]
    fn set_syntax() {
        assert_eq!(
            parse_set(r"a.b=1,c=true,d=null,e=007,f=x\,y,g\.h=2,i={}").unwrap(),
            vec![
                (vec!["a".into(), "b".into()], json!(1)),
                (vec!["c".into()], json!(true)),
                (vec!["d".into()], Value::Null),
                (vec!["e".into()], json!("007")),
                (vec!["f".into()], json!("x,y")),
                (vec!["g.h".into()], json!(2)),
                (vec!["i".into()], json!([])),
            ]
        );
        assert!(parse_set("novalue").is_err());
        assert!(parse_set("a..b=1").is_err());
        let mut v = json!({"a": "x"});
        assert!(
            set_path(&mut v, &["a".into(), "b".into()], json!(1))
                .unwrap_err()
                .to_string()
                .contains("a is not a map")
        );
    }

    #[test]
    fn bad_values_are_refused_naming_each_key() {
        let e = load_values(&args(
            Vec::new(),
            &[
                "controlPlane.replicas=0",
                "mesh.trust_domain=x",
                "proxy.uid=0",
            ],
            false,
        ))
        .and_then(|v| validate(&v))
        .unwrap_err()
        .to_string();
        assert!(e.contains("/controlPlane/replicas: must be >=1"), "{e}");
        assert!(e.contains("/proxy/uid: must be >=1"), "{e}");
        assert!(e.contains("trust_domain"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.yaml");
        std::fs::write(&file, "mesh:\n  name: [unclosed\n").unwrap();
        let e = load_values(&args(vec![file.clone()], &[], false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("v.yaml") && e.contains("line"), "{e}");
        std::fs::write(&file, "- a list\n").unwrap();
        let e = load_values(&args(vec![file], &[], false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("values must be a mapping"), "{e}");
        assert!(
            render("Bad_Name", &json!({}))
                .unwrap_err()
                .to_string()
                .contains("namespace")
        );
    }

    #[test]
    fn certificates_past_the_calendar_are_an_error_not_a_panic() {
        // `genCA "x" 9200000000` asked for a certificate ending after the year 9999, and
        // adding that many days to now panicked. Found by the gotmpl fuzz target.
        for days in [9_200_000_000, 3_000_000, usize::MAX] {
            assert!(gen_ca("weft-webhook-ca", days).is_err(), "{days}");
        }
        let ca = gen_ca("weft-webhook-ca", 3650).unwrap();
        let leaf = gen_signed_cert("a", &Value::Null, &json!([]), 3_000_000, &ca);
        assert!(leaf.is_err());
        let mut set = Set::new(helm_funcs());
        set.parse("t.yaml", "{{ genCA \"x\" 9200000000 }}").unwrap();
        assert!(set.render("t.yaml", &json!({})).is_err());
    }

    #[test]
    fn generated_certificates_chain_and_name_the_service() {
        use x509_parser::prelude::*;
        let ca = gen_ca("weft-webhook-ca", 3650).unwrap();
        let leaf = gen_signed_cert(
            "weft-control.weft.svc",
            &Value::Null,
            &json!(["weft-control.weft.svc", "weft-control.weft"]),
            365,
            &ca,
        )
        .unwrap();
        let ca_pem = ::pem::parse(ca["Cert"].as_str().unwrap()).unwrap();
        let leaf_pem = ::pem::parse(leaf["Cert"].as_str().unwrap()).unwrap();
        let (_, ca_x509) = X509Certificate::from_der(ca_pem.contents()).unwrap();
        let (_, leaf_x509) = X509Certificate::from_der(leaf_pem.contents()).unwrap();
        assert!(ca_x509.is_ca());
        leaf_x509
            .verify_signature(Some(ca_x509.public_key()))
            .unwrap();
        let names: Vec<String> = leaf_x509
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "DNSName(weft-control.weft.svc)",
                "DNSName(weft-control.weft)"
            ]
        );
        let days = (leaf_x509.validity().not_after.timestamp()
            - ::time::OffsetDateTime::now_utc().unix_timestamp())
            / 86_400;
        assert!((364..=365).contains(&days), "{days}");
        // The key is one the CA loads: PKCS#8.
        assert!(
            ca["Key"]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
    }

    #[test]
    fn helm_functions() {
        assert_eq!(go_quote("a\"b\\\n"), r#""a\"b\\\n""#);
        assert_eq!(indent(2, "a\nb"), "  a\n  b");
        assert_eq!(
            sprintf("x %s %d %%", &[json!("a"), json!(3)]).unwrap(),
            "x a 3 %"
        );
        assert!(sprintf("%s", &[]).is_err());
        assert_eq!(
            to_yaml_text(&json!({"b": [1, {"c": "d"}], "a": "x"}))
                .unwrap()
                .as_str()
                .unwrap()
                .lines()
                .count(),
            4
        );
        assert_eq!(random_alphanumeric(32).unwrap().len(), 32);
        assert_ne!(
            random_alphanumeric(16).unwrap(),
            random_alphanumeric(16).unwrap()
        );
    }
}
