//! Loading: file (+ environment overrides) -> serde -> validation, with errors that point at
//! the file, line and key.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};

use super::schema::MeshConfig;
use super::validate;

/// Why a mesh config file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line where the offending key or value stands, when it can be found.
    pub line: Option<usize>,
    /// The dotted key path, e.g. `platforms.local.workloads[1].port`.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Loads, overrides from `WEFT_*__*` environment variables, and validates a mesh config file.
pub fn load(path: &Path) -> Result<MeshConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: None,
        message: format!("cannot read: {e}"),
    })?;
    load_text(&text, path)
}

/// Like [`load`], for text already read from `path`.
pub(super) fn load_text(text: &str, path: &Path) -> Result<MeshConfig, ConfigError> {
    let env = weft_env_overrides(std::env::vars());
    let mut cfg = parse(text, format_of(path), path, env)?;
    cfg.source = Some(path.to_path_buf());
    Ok(cfg)
}

/// Parses and validates config text as if read from `path` (which picks the format), without
/// environment overrides.
pub fn load_from_str(text: &str, path: &Path) -> Result<MeshConfig, ConfigError> {
    parse(text, format_of(path), path, HashMap::new())
}

fn format_of(path: &Path) -> FileFormat {
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => FileFormat::Yaml,
        _ => FileFormat::Toml,
    }
}

/// Only `WEFT_SECTION__KEY` variables override the file; single-underscore `WEFT_PROXY_*`
/// variables belong to the proxy's flags.
fn weft_env_overrides(vars: impl Iterator<Item = (String, String)>) -> HashMap<String, String> {
    vars.filter(|(k, _)| k.starts_with("WEFT_") && k.contains("__"))
        .collect()
}

fn parse(
    text: &str,
    format: FileFormat,
    path: &Path,
    env: HashMap<String, String>,
) -> Result<MeshConfig, ConfigError> {
    let err_at = |key: Option<String>, message: String, line: Option<usize>| {
        let line = line.or_else(|| key.as_deref().and_then(|k| locate(text, format, k)));
        ConfigError {
            file: path.to_path_buf(),
            line,
            key,
            message,
        }
    };
    let built = Config::builder()
        .add_source(File::from_str(text, format))
        .add_source(
            Environment::with_prefix("WEFT")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        )
        .build()
        .map_err(|e| {
            let (key, msg, line) = explain(&e);
            err_at(key, msg, line)
        })?;
    let mut cfg: MeshConfig = built.try_deserialize().map_err(|e| {
        let (key, msg, line) = explain(&e);
        err_at(key, msg, line)
    })?;
    validate::validate(&mut cfg).map_err(|(key, msg)| err_at(Some(key), msg, None))?;
    Ok(cfg)
}

/// Splits a `config` error into key, message and (for syntax errors) line.
fn explain(e: &config::ConfigError) -> (Option<String>, String, Option<usize>) {
    match e {
        config::ConfigError::At { error, key, .. } => {
            let (inner_key, msg, line) = explain(error);
            let key = key.as_deref().map(normalize_key).or(inner_key);
            // Point at the offending key itself, not at its table.
            let key = match (key, unknown_field(&msg)) {
                (Some(k), Some(field)) => Some(format!("{k}.{field}")),
                (k, _) => k,
            };
            (key, msg, line)
        }
        config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => (
            key.as_deref().map(normalize_key),
            format!("invalid type: {unexpected}, expected {expected}"),
            None,
        ),
        config::ConfigError::FileParse { cause, .. } => {
            let msg = cause.to_string();
            let line = syntax_error_line(&msg);
            let first = msg
                .lines()
                .last()
                .unwrap_or("syntax error")
                .trim()
                .to_string();
            (None, format!("syntax error: {first}"), line)
        }
        config::ConfigError::NotFound(key) => {
            (Some(key.clone()), "required but missing".to_string(), None)
        }
        other => {
            let msg = other.to_string();
            // serde's "missing field `x`" / "unknown field `x`" carry the key in backticks.
            let key = msg
                .split('`')
                .nth(1)
                .filter(|_| msg.contains("field `"))
                .map(str::to_string);
            (key, msg, None)
        }
    }
}

/// `config` writes `a[0]b` for `a[0].b`.
fn normalize_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut prev = ' ';
    for c in key.chars() {
        if prev == ']' && c != '.' && c != '[' {
            out.push('.');
        }
        out.push(c);
        prev = c;
    }
    out
}

fn unknown_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("unknown field `")?.split('`').next()
}

/// Finds "line N" in a parser's message (TOML and YAML parsers both say it).
fn syntax_error_line(msg: &str) -> Option<usize> {
    let idx = msg.find("line ")?;
    msg[idx + 5..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Finds the 1-based line of a dotted key path (`a.b[2].c`) in the file.
pub(super) fn locate(text: &str, format: FileFormat, key: &str) -> Option<usize> {
    let segments = split_key(key);
    match format {
        FileFormat::Toml => locate_toml(text, &segments),
        _ => locate_by_scan(text, &segments),
    }
}

enum Segment {
    Key(String),
    Index(usize),
}

fn split_key(key: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            let name = &rest[..open];
            if !name.is_empty() {
                out.push(Segment::Key(name.to_string()));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else {
                    break;
                };
                if let Ok(i) = stripped[..close].parse() {
                    out.push(Segment::Index(i));
                }
                rest = &stripped[close + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Segment::Key(rest.to_string()));
        }
    }
    out
}

fn locate_toml(text: &str, segments: &[Segment]) -> Option<usize> {
    let doc = toml_edit::Document::parse(text).ok()?;
    find_in_item(doc.as_item(), segments, None).map(|s| line_of(text, s))
}

type Span = std::ops::Range<usize>;

/// Walks `segments` down from `item`, returning the span of the deepest key found.
fn find_in_item(item: &toml_edit::Item, segments: &[Segment], best: Option<Span>) -> Option<Span> {
    let Some((seg, rest)) = segments.split_first() else {
        return best;
    };
    match (item, seg) {
        (toml_edit::Item::Table(t), Segment::Key(k)) => match t.get_key_value(k) {
            Some((key, value)) => find_in_item(value, rest, key.span().or(best)),
            None => best,
        },
        (toml_edit::Item::ArrayOfTables(a), Segment::Index(i)) => match a.get(*i) {
            Some(t) => {
                let here = t.span().or_else(|| {
                    t.iter()
                        .next()
                        .and_then(|(k, _)| t.key(k))
                        .and_then(|k| k.span())
                });
                find_in_item_table(t, rest, here.or(best))
            }
            None => best,
        },
        (toml_edit::Item::Value(v), _) => find_in_value(v, segments, best),
        _ => best,
    }
}

fn find_in_item_table(
    t: &toml_edit::Table,
    segments: &[Segment],
    best: Option<Span>,
) -> Option<Span> {
    match segments.split_first() {
        Some((Segment::Key(k), rest)) => match t.get_key_value(k) {
            Some((key, value)) => find_in_item(value, rest, key.span().or(best)),
            None => best,
        },
        _ => best,
    }
}

fn find_in_value(v: &toml_edit::Value, segments: &[Segment], best: Option<Span>) -> Option<Span> {
    let Some((seg, rest)) = segments.split_first() else {
        return best;
    };
    match (v, seg) {
        (toml_edit::Value::InlineTable(t), Segment::Key(k)) => match t.get_key_value(k) {
            Some((key, value)) => find_in_item(value, rest, key.span().or(best)),
            None => best,
        },
        (toml_edit::Value::Array(a), Segment::Index(i)) => match a.get(*i) {
            Some(value) => find_in_value(value, rest, value.span().or(best)),
            None => best,
        },
        _ => best,
    }
}

fn line_of(text: &str, span: std::ops::Range<usize>) -> usize {
    text[..span.start.min(text.len())].matches('\n').count() + 1
}

/// For YAML: walks the key path by indentation-agnostic scanning for `key:` lines in order.
fn locate_by_scan(text: &str, segments: &[Segment]) -> Option<usize> {
    let mut from = 0;
    let mut found = None;
    let lines: Vec<&str> = text.lines().collect();
    for seg in segments {
        let Segment::Key(k) = seg else { continue };
        let needle = format!("{k}:");
        let pos = lines[from..].iter().position(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(&needle)
        })?;
        from += pos;
        found = Some(from + 1);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[mesh]
name = "dev"
trust_domain = "weft.test"

[[platforms.local.workloads]]
name = "api"
namespace = "demo"
service = "api"
port = 7143
"#;

    fn err(text: &str) -> ConfigError {
        load_from_str(text, Path::new("mesh.toml")).unwrap_err()
    }

    #[test]
    fn good_file_loads() {
        let cfg = load_from_str(GOOD, Path::new("mesh.toml")).unwrap();
        assert_eq!(cfg.mesh.trust_domain.as_str(), "weft.test");
        let local = cfg.platforms.local.unwrap();
        assert_eq!(local.workloads[0].port, 7143);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err(&GOOD.replace("port = 7143", "port = 7143\nprot = 1"));
        assert!(e.message.contains("prot"), "{e}");
        assert_eq!(
            e.key.as_deref(),
            Some("platforms.local.workloads[0].prot"),
            "{e}"
        );
        assert_eq!(e.line, Some(11), "{e}");
        assert!(e.to_string().starts_with("mesh.toml"), "{e}");
    }

    #[test]
    fn bad_value_names_key_and_line() {
        let e = err(&GOOD.replace("port = 7143", "port = \"lots\""));
        assert_eq!(
            e.key.as_deref(),
            Some("platforms.local.workloads[0].port"),
            "{e}"
        );
        assert_eq!(e.line, Some(10), "{e}");
    }

    #[test]
    fn syntax_error_has_line() {
        let e = err("[mesh]\nname = \"dev\"\ntrust_domain = \n");
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn env_overrides_apply() {
        let env = HashMap::from([("WEFT_MESH__NAME".to_string(), "prod".to_string())]);
        let cfg = parse(GOOD, FileFormat::Toml, Path::new("m.toml"), env).unwrap();
        assert_eq!(cfg.mesh.name, "prod");
        let only = weft_env_overrides(
            [
                ("WEFT_PROXY_ADMIN_ADDR".to_string(), "x".to_string()),
                ("WEFT_MESH__NAME".to_string(), "y".to_string()),
            ]
            .into_iter(),
        );
        assert_eq!(only.len(), 1);
    }
}

#[cfg(test)]
mod example_file {
    /// The commented example that `weft dev` embeds must stay valid.
    #[test]
    fn configs_mesh_toml_is_valid() {
        let path = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../configs/mesh.toml"
        ));
        let cfg = super::load_from_str(&std::fs::read_to_string(path).unwrap(), path).unwrap();
        assert_eq!(cfg.platforms.local.unwrap().workloads.len(), 3);
        assert_eq!(cfg.authorization_rules.len(), 1);
    }
}
