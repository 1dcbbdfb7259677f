//! Loading: file (+ environment overrides) -> serde -> validation, with errors that point at
//! the file, line and key.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};

use super::platforms::{PlatformSettings, ReadError, Reader, SectionCheck};
use super::schema::MeshConfig;
use super::validate;
use super::yaml::{REFUSAL, YamlAnchorError, refuse_yaml_anchors};

/// Why a mesh config file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line where the offending key or value stands, when it can be found.
    pub line: Option<usize>,
    /// The 1-based column on that line, when the error is about one place rather than a key.
    pub column: Option<usize>,
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
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl From<YamlAnchorError> for ConfigError {
    fn from(e: YamlAnchorError) -> Self {
        ConfigError {
            file: e.file,
            line: Some(e.line),
            column: Some(e.column),
            key: None,
            message: REFUSAL.into(),
        }
    }
}

/// A key that is accepted but has no effect, or a value that cannot do what it seems to say.
/// The file still loads; `weft check` prints these and the control plane logs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line where the key stands, when it can be found.
    pub line: Option<usize>,
    /// The dotted key path, e.g. `platforms.local.workloads[1].app_port`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": key `{}`: warning: {}", self.key, self.message)
    }
}

/// Reads mesh config files for a program that runs a given set of platform adapters: the core's
/// sections, then each `[platforms.<name>]` section by the adapter of that name. A section no
/// adapter claims is refused, so a misspelt platform never passes for a disabled one.
#[derive(Clone, Debug, Default)]
pub struct Loader {
    platforms: Vec<Reader>,
}

impl Loader {
    /// A loader that knows no platform: any `[platforms.*]` section is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the adapter whose section type is `T`.
    #[must_use]
    pub fn with_platform<T: PlatformSettings>(mut self) -> Self {
        self.platforms.retain(|r| r.name != T::NAME);
        self.platforms.push(Reader::of::<T>());
        self
    }

    /// The names of the platforms this loader knows.
    pub fn platforms(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.platforms.iter().map(|r| r.name)
    }

    /// Loads, overrides from `WEFT_*__*` environment variables, and validates a mesh config file.
    pub fn load(&self, path: &Path) -> Result<MeshConfig, ConfigError> {
        // Checked before reading so that a `.json` file is refused for what it is, not for the
        // TOML syntax error its content would cause.
        format_of(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        self.load_text(&text, path)
    }

    /// Like [`load`](Self::load), for text already read from `path`.
    pub(super) fn load_text(&self, text: &str, path: &Path) -> Result<MeshConfig, ConfigError> {
        let env = weft_env_overrides(std::env::vars());
        let mut cfg = self.parse(text, format_of(path)?, path, env, &DataHome::from_env())?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses and validates config text as if read from `path` (which picks the format),
    /// without environment overrides. The default data directory still comes from
    /// `XDG_DATA_HOME` or `HOME`.
    pub fn load_str(&self, text: &str, path: &Path) -> Result<MeshConfig, ConfigError> {
        self.parse(
            text,
            format_of(path)?,
            path,
            HashMap::new(),
            &DataHome::from_env(),
        )
    }

    fn parse(
        &self,
        text: &str,
        format: FileFormat,
        path: &Path,
        env: HashMap<String, String>,
        data_home: &DataHome,
    ) -> Result<MeshConfig, ConfigError> {
        let err_at = |key: Option<String>, message: String, line: Option<usize>| {
            let line = line.or_else(|| key.as_deref().and_then(|k| locate(text, format, k)));
            ConfigError {
                file: path.to_path_buf(),
                line,
                column: None,
                key,
                message,
            }
        };
        // Before `config` parses the text, which would expand every alias.
        if format == FileFormat::Yaml {
            refuse_yaml_anchors(text, path)?;
        }
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
        let mut warnings = Vec::new();
        let mut ports = validate::validate(&mut cfg, data_home, &mut warnings)
            .map_err(|(key, msg)| err_at(Some(key), msg, None))?;
        // Each route and rule names the file and the line of its section.
        let sources = cfg
            .http_routes
            .iter_mut()
            .enumerate()
            .map(|(i, r)| (format!("routes.http[{i}]"), &mut r.route.meta.source))
            .chain(
                cfg.grpc_routes
                    .iter_mut()
                    .enumerate()
                    .map(|(i, r)| (format!("routes.grpc[{i}]"), &mut r.route.meta.source)),
            );
        let rules = cfg
            .authorization_rules
            .iter_mut()
            .enumerate()
            .map(|(i, r)| (format!("policy.authorizations[{i}]"), &mut r.source));
        let limits = cfg
            .rate_limit_rules
            .iter_mut()
            .enumerate()
            .map(|(i, r)| (format!("policy.rate_limits[{i}]"), &mut r.source));
        let backends = cfg
            .backend_rules
            .iter_mut()
            .enumerate()
            .map(|(i, r)| (format!("policy.backends[{i}]"), &mut r.source));
        for (key, source) in sources.chain(rules).chain(limits).chain(backends) {
            *source = crate::policy::route::RouteSource::MeshFile {
                path: path.to_path_buf(),
                line: locate(text, format, &key),
            };
        }
        let mut parsed = Vec::new();
        for (name, raw) in cfg.platforms.raw() {
            let Some(reader) = self.platforms.iter().find(|r| r.name == name) else {
                let known: Vec<_> = self.platforms().collect();
                let known = match known.as_slice() {
                    [] => "this program runs no platform adapter".to_string(),
                    names => format!("this program knows {}", names.join(", ")),
                };
                return Err(err_at(
                    Some(format!("platforms.{name}")),
                    format!("unknown platform `{name}`: {known}"),
                    None,
                ));
            };
            let mut check = SectionCheck::new(&cfg, name, &mut ports, &mut warnings);
            match (reader.read)(raw.clone(), &mut check) {
                Ok(settings) => parsed.push((name.to_string(), settings)),
                Err(ReadError::Shape(e)) => {
                    let (key, msg, line) = explain(&e);
                    let key = check.full_key(key.as_deref().unwrap_or(""));
                    return Err(err_at(Some(key), msg, line));
                }
                Err(ReadError::Invalid(e)) => {
                    return Err(err_at(Some(check.full_key(&e.key)), e.message, None));
                }
            }
        }
        for (name, settings) in parsed {
            cfg.platforms.set_parsed(&name, settings);
        }
        cfg.warnings = warnings
            .into_iter()
            .map(|(key, message)| ConfigWarning {
                file: path.to_path_buf(),
                line: locate(text, format, &key),
                key,
                message,
            })
            .collect();
        Ok(cfg)
    }
}

/// The format a path's extension names. A file without an extension is read as TOML, the
/// default format; any other extension is refused rather than parsed as TOML by mistake.
fn format_of(path: &Path) -> Result<FileFormat, ConfigError> {
    let Some(ext) = path.extension() else {
        return Ok(FileFormat::Toml);
    };
    match ext.to_string_lossy().to_ascii_lowercase().as_str() {
        "toml" => Ok(FileFormat::Toml),
        "yaml" | "yml" => Ok(FileFormat::Yaml),
        _ => Err(ConfigError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            key: None,
            message: format!(
                "unsupported file extension `.{}`: use .toml, .yaml or .yml",
                ext.to_string_lossy()
            ),
        }),
    }
}

/// Where the default data directory comes from, read once from the environment (and given
/// explicitly by tests, which cannot safely change the process environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct DataHome {
    /// `$XDG_DATA_HOME`, when set and not empty.
    pub xdg_data_home: Option<PathBuf>,
    /// `$HOME`, when set and not empty.
    pub home: Option<PathBuf>,
}

impl DataHome {
    /// Reads both variables. Empty values count as unset, as the XDG spec says for
    /// `XDG_DATA_HOME`; an empty `HOME` would otherwise make a relative path.
    pub fn from_env() -> Self {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            xdg_data_home: var("XDG_DATA_HOME"),
            home: var("HOME"),
        }
    }

    /// The base under which `weft/<mesh name>` is made, if either variable is set.
    pub fn base(&self) -> Option<PathBuf> {
        self.xdg_data_home
            .clone()
            .or_else(|| self.home.as_ref().map(|h| h.join(".local/share")))
    }
}

/// Only `WEFT_SECTION__KEY` variables override the file; single-underscore `WEFT_PROXY_*`
/// variables belong to the proxy's flags.
fn weft_env_overrides(vars: impl Iterator<Item = (String, String)>) -> HashMap<String, String> {
    vars.filter(|(k, _)| k.starts_with("WEFT_") && k.contains("__"))
        .collect()
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
    use serde::Deserialize;

    use super::*;
    use crate::config::{PlatformSettings, SectionCheck, SectionError};

    /// A platform adapter's section, as small as the checks need.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Toy {
        port: u16,
        #[serde(default)]
        note: Option<String>,
    }

    impl PlatformSettings for Toy {
        const NAME: &'static str = "toy";

        fn validate(&self, check: &mut SectionCheck<'_>) -> Result<(), SectionError> {
            if self.port == 0 {
                return Err(SectionError::new("port", "port 0 is not allowed"));
            }
            check.claim(std::net::Ipv4Addr::LOCALHOST.into(), self.port, "port")?;
            if self.note.is_some() {
                check.warn("note", "notes do nothing");
            }
            Ok(())
        }
    }

    const GOOD: &str = r#"
[mesh]
name = "dev"
trust_domain = "weft.test"

[platforms.toy]
port = 7143
"#;

    fn loader() -> Loader {
        Loader::new().with_platform::<Toy>()
    }

    fn err(text: &str) -> ConfigError {
        load_toml(text).unwrap_err()
    }

    /// A fixed home, so that tests do not depend on the environment they run in.
    fn home() -> DataHome {
        DataHome {
            xdg_data_home: None,
            home: Some(PathBuf::from("/home/someone")),
        }
    }

    fn load_with(text: &str, file: &str, home: &DataHome) -> Result<MeshConfig, ConfigError> {
        let path = Path::new(file);
        loader().parse(text, format_of(path)?, path, HashMap::new(), home)
    }

    fn load_toml(text: &str) -> Result<MeshConfig, ConfigError> {
        load_with(text, "mesh.toml", &home())
    }

    /// 9 levels of 9 aliases each: 9^9 (about 387 million) leaves once expanded.
    const ALIAS_BOMB: &str = "mesh:\n  name: t\n  trust_domain: weft.test\n\
a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n\
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n\
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n\
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n\
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n\
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n\
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n\
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n";

    #[test]
    fn yaml_alias_bomb_is_refused_before_expansion() {
        assert!(ALIAS_BOMB.len() < 400, "{}", ALIAS_BOMB.len());
        let e = load_with(ALIAS_BOMB, "mesh.yaml", &home()).unwrap_err();
        assert_eq!((e.line, e.column), (Some(4), Some(4)), "{e}");
        assert!(
            e.to_string()
                .starts_with("mesh.yaml:4:4: YAML anchors and aliases are not supported"),
            "{e}"
        );
    }

    #[test]
    fn yaml_anchors_and_aliases_are_refused_where_they_stand() {
        let base = "mesh:\n  name: t\n  trust_domain: weft.test\n";
        assert!(load_with(base, "m.yml", &home()).is_ok());
        // An anchor alone, on a value that is otherwise fine.
        let e = load_with(&base.replace("name: t", "name: &n t"), "m.yml", &home()).unwrap_err();
        assert_eq!((e.line, e.column), (Some(2), Some(9)), "{e}");
        assert_eq!(
            e.message,
            "YAML anchors and aliases are not supported: write the value out in full"
        );
        // A merge key: an alias of a mapping.
        let text = format!(
            "{base}policy:\n  authorizations:\n      - &w\n        service: a\n        allow: [\"*\"]\n      - <<: *w\n        service: b\n"
        );
        let e = load_with(&text, "m.yaml", &home()).unwrap_err();
        assert!(e.message.contains("anchors and aliases"), "{e}");
        assert_eq!((e.line, e.column), (Some(6), Some(9)), "{e}");
    }

    #[test]
    fn yaml_ampersands_and_stars_in_strings_are_fine() {
        let text = r#"mesh:
  name: "a&b"
  trust_domain: weft.test
policy:
  authorizations:
    - service: api.demo
      allow: ["*", '*']
"#;
        let e = load_with(text, "mesh.yaml", &home()).unwrap_err();
        // Parsed past the anchor check: the refusal is the invalid name.
        assert!(e.to_string().contains("invalid name \"a&b\""), "{e}");
        let ok = text.replace("name: \"a&b\"", "name: t # &anchor *alias in a comment");
        let cfg = load_with(&ok, "mesh.yaml", &home()).unwrap();
        assert_eq!(cfg.authorization_rules[0].from.len(), 2);
    }

    #[test]
    fn unsupported_extensions_are_refused_by_name() {
        let e = load_with("{}", "mesh.json", &home()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mesh.json: unsupported file extension `.json`: use .toml, .yaml or .yml"
        );
        let e = loader()
            .load(Path::new("/nonexistent/mesh.conf"))
            .unwrap_err();
        assert!(
            e.message.contains("unsupported file extension `.conf`"),
            "{e}"
        );
        // Without an extension the file is TOML; upper case extensions count as theirs.
        assert!(load_with(GOOD, "mesh", &home()).is_ok());
        assert!(load_with(GOOD, "MESH.TOML", &home()).is_ok());
    }

    #[test]
    fn dot_names_cannot_move_the_data_dir() {
        for name in [".", ".."] {
            let e = load_toml(&GOOD.replace("name = \"dev\"", &format!("name = \"{name}\"")))
                .unwrap_err();
            assert_eq!(e.key.as_deref(), Some("mesh.name"), "{e}");
            assert_eq!(e.line, Some(3), "{e}");
        }
        let cfg = load_toml(&GOOD.replace("name = \"dev\"", "name = \"dev.1\"")).unwrap();
        assert_eq!(
            cfg.data_dir(),
            Path::new("/home/someone/.local/share/weft/dev.1")
        );
    }

    #[test]
    fn data_dir_is_resolved_once_and_never_a_temp_dir() {
        let xdg = DataHome {
            xdg_data_home: Some(PathBuf::from("/xdg")),
            home: Some(PathBuf::from("/home/someone")),
        };
        let cfg = load_with(GOOD, "mesh.toml", &xdg).unwrap();
        assert_eq!(cfg.data_dir(), Path::new("/xdg/weft/dev"));
        let cfg = load_toml(GOOD).unwrap();
        assert_eq!(
            cfg.data_dir(),
            Path::new("/home/someone/.local/share/weft/dev")
        );

        let e = load_with(GOOD, "mesh.toml", &DataHome::default()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("ca.data_dir"), "{e}");
        assert!(
            e.to_string().ends_with(
                "key `ca.data_dir`: set ca.data_dir: neither XDG_DATA_HOME nor HOME is set"
            ),
            "{e}"
        );
        let explicit = format!("{GOOD}\n[ca]\ndata_dir = \"/var/lib/weft\"\n");
        let cfg = load_with(&explicit, "mesh.toml", &DataHome::default()).unwrap();
        assert_eq!(cfg.data_dir(), Path::new("/var/lib/weft"));

        let e = load_toml(&format!("{GOOD}\n[ca]\ndata_dir = \"\"\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("ca.data_dir"), "{e}");
        assert_eq!(e.line, Some(10), "{e}");
        assert!(e.message.contains("must not be empty"), "{e}");
    }

    #[test]
    fn control_limits_have_defaults_and_refuse_zero_and_non_positive_rates() {
        let cfg = load_toml(GOOD).unwrap();
        assert_eq!(cfg.control.limits, super::super::ControlLimits::default());
        assert_eq!(cfg.control.limits.connections_per_identity, 4096);
        assert_eq!(cfg.control.limits.resolve_streams_per_identity, 16_384);
        let set = format!(
            "{GOOD}\n[control.limits]\nresolve_streams_per_identity = 3\ncertify_rate_per_address = 0.5\ncertify_burst_per_identity = 2\n"
        );
        let cfg = load_toml(&set).unwrap();
        assert_eq!(cfg.control.limits.resolve_streams_per_identity, 3);
        assert_eq!(cfg.control.limits.certify_rate_per_address, 0.5);
        assert_eq!(cfg.control.limits.certify_burst_per_identity, 2);
        assert_eq!(cfg.control.limits.connections_per_identity, 4096);
        // A whole number is a rate too.
        let whole = format!("{GOOD}\n[control.limits]\ncertify_rate_per_identity = 2\n");
        assert_eq!(
            load_toml(&whole)
                .unwrap()
                .control
                .limits
                .certify_rate_per_identity,
            2.0
        );
        for (line, key) in [
            (
                "connections_per_identity = 0",
                "control.limits.connections_per_identity",
            ),
            (
                "proxy_streams_per_identity = 0",
                "control.limits.proxy_streams_per_identity",
            ),
            (
                "certify_burst_per_address = 0",
                "control.limits.certify_burst_per_address",
            ),
            (
                "certify_rate_per_address = 0.0",
                "control.limits.certify_rate_per_address",
            ),
            (
                "certify_rate_per_identity = -1.0",
                "control.limits.certify_rate_per_identity",
            ),
            (
                "certify_rate_per_identity = nan",
                "control.limits.certify_rate_per_identity",
            ),
        ] {
            let e = err(&format!("{GOOD}\n[control.limits]\n{line}\n"));
            assert_eq!(e.key.as_deref(), Some(key), "{line}: {e}");
        }
        let e = err(&format!("{GOOD}\n[control.limits]\nstreams = 1\n"));
        assert!(e.to_string().contains("streams"), "{e}");
    }

    #[test]
    fn control_listeners_clash_with_each_other_and_with_platform_ports() {
        // The default control listeners are 127.0.0.1:7443 and 127.0.0.1:7080.
        let e = err(&GOOD.replace("port = 7143", "port = 7443"));
        assert_eq!(e.key.as_deref(), Some("platforms.toy.port"), "{e}");
        assert_eq!(e.line, Some(7), "{e}");
        assert!(
            e.message.contains("already used by control.grpc_addr"),
            "{e}"
        );
        // Control listening on every address clashes with a port on any one of them.
        let wild = format!("{GOOD}\n[control]\ngrpc_addr = \"0.0.0.0:7143\"\n");
        let e = err(&wild);
        assert_eq!(e.key.as_deref(), Some("platforms.toy.port"), "{e}");
        assert!(
            e.message.contains("control.grpc_addr (0.0.0.0:7143)"),
            "{e}"
        );
        // And the two control listeners with each other.
        let e = err(&format!(
            "{GOOD}\n[control]\ngrpc_addr = \"0.0.0.0:7500\"\nhttp_addr = \"127.0.0.1:7500\"\n"
        ));
        assert_eq!(e.key.as_deref(), Some("control.http_addr"), "{e}");
        // Port 0 (any free port) is fine.
        let zero = format!(
            "{GOOD}\n[control]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n"
        );
        assert!(load_toml(&zero).is_ok());
    }

    #[test]
    fn the_local_http_listener_is_on_loopback_only() {
        // GOOD ends at line 8; `[control]` is line 9, the key line 10.
        let local = |addr: &str| format!("{GOOD}\n[control]\nlocal_http_addr = \"{addr}\"\n");
        for addr in [
            "127.0.0.1:7082",
            "[::1]:7082",
            "127.0.0.2:7082",
            "127.0.0.1:0",
        ] {
            let cfg = load_toml(&local(addr)).unwrap();
            assert_eq!(
                cfg.control.local_http_addr,
                Some(addr.parse().unwrap()),
                "{addr}"
            );
        }
        assert_eq!(load_toml(GOOD).unwrap().control.local_http_addr, None);
        for addr in ["0.0.0.0:7082", "[::]:7082", "10.1.2.3:7082"] {
            let e = err(&local(addr));
            assert_eq!(e.key.as_deref(), Some("control.local_http_addr"), "{e}");
            assert_eq!(e.line, Some(10), "{e}");
            assert!(e.message.contains("is not a loopback address"), "{e}");
            assert!(e.to_string().starts_with("mesh.toml:10: "), "{e}");
        }
        // It claims its port like the other listeners: not the HTTP listener's, nor one the
        // probe listener takes on every address.
        let e = err(&format!(
            "{GOOD}\n[control]\nhttp_addr = \"127.0.0.1:7600\"\nlocal_http_addr = \"127.0.0.1:7600\"\n"
        ));
        assert_eq!(e.key.as_deref(), Some("control.local_http_addr"), "{e}");
        assert!(
            e.message.contains("already used by control.http_addr"),
            "{e}"
        );
        let e = err(&format!(
            "{GOOD}\n[control]\nprobe_addr = \"0.0.0.0:7081\"\nlocal_http_addr = \"127.0.0.1:7081\"\n"
        ));
        assert!(
            e.message
                .contains("already used by control.probe_addr (0.0.0.0:7081)"),
            "{e}"
        );
        // And no workload may take it.
        let e = err(&format!(
            "{GOOD}\n[control]\nlocal_http_addr = \"127.0.0.1:7143\"\n"
        ));
        assert_eq!(e.key.as_deref(), Some("platforms.toy.port"), "{e}");
        assert!(
            e.message
                .contains("already used by control.local_http_addr"),
            "{e}"
        );
    }

    #[test]
    fn platform_sections_belong_to_their_adapter() {
        let cfg = load_toml(GOOD).unwrap();
        assert_eq!(cfg.platforms.get::<Toy>().unwrap().port, 7143);
        assert_eq!(cfg.platforms.names().collect::<Vec<_>>(), ["toy"]);
        // A section no adapter of this program claims is refused, naming what it knows.
        let e = err(&format!("{GOOD}\n[platforms.kubernets]\nenabled = true\n"));
        assert_eq!(e.key.as_deref(), Some("platforms.kubernets"), "{e}");
        assert_eq!(e.line, Some(9), "{e}");
        assert_eq!(
            e.message,
            "unknown platform `kubernets`: this program knows toy"
        );
        let e = Loader::new()
            .load_str(GOOD, Path::new("mesh.toml"))
            .unwrap_err();
        assert_eq!(
            e.message,
            "unknown platform `toy`: this program runs no platform adapter"
        );
        // The adapter's own checks, at their key and line.
        let e = err(&GOOD.replace("port = 7143", "port = 0"));
        assert_eq!(
            e.to_string(),
            "mesh.toml:7: key `platforms.toy.port`: port 0 is not allowed"
        );
        let cfg = load_toml(&GOOD.replace("port = 7143", "port = 7143\nnote = \"x\"")).unwrap();
        assert_eq!(
            cfg.warnings[0].to_string(),
            "mesh.toml:8: key `platforms.toy.note`: warning: notes do nothing"
        );
        // Equality follows the section as written.
        let same = load_toml(&format!("{GOOD}\n")).unwrap();
        assert_eq!(load_toml(GOOD).unwrap(), same);
        assert_ne!(cfg, same);
    }

    /// Rate limits are checked with the key at fault; a good one defaults its burst to one
    /// second's worth.
    #[test]
    fn rate_limits_are_checked_and_located() {
        let limit = |rest: &str| {
            format!("{GOOD}\n[[policy.rate_limits]]\nservice = \"api.demo\"\n{rest}\n")
        };
        for (entry, key) in [
            (
                "requests_per_second = 0.0",
                "policy.rate_limits[0].requests_per_second",
            ),
            (
                "requests_per_second = -1.0",
                "policy.rate_limits[0].requests_per_second",
            ),
            (
                "requests_per_second = 5.0\nburst = 0",
                "policy.rate_limits[0].burst",
            ),
            (
                "requests_per_second = 5.0\n[[policy.rate_limits.overrides]]\nclients = \"bad pattern\"\nrequests_per_second = 1.0",
                "policy.rate_limits[0].overrides[0].clients",
            ),
        ] {
            let e = err(&limit(entry));
            assert_eq!(e.key.as_deref(), Some(key), "{entry}: {e}");
            assert!(e.line.is_some(), "{e}");
        }
        let cfg = load_toml(&limit("requests_per_second = 2.5")).unwrap();
        let limit = &cfg.rate_limit_rules[0].limit;
        assert_eq!((limit.rate.per_second, limit.rate.burst), (2.5, 3));
    }

    /// Faults other settings make pointless are warned about, at their keys.
    #[test]
    fn pointless_faults_are_warned_about() {
        let text = format!(
            "{GOOD}\n[[routes.http]]\nname = \"web\"\nparent_refs = [{{ name = \"web\" }}]\n\
             [[routes.http.rules]]\n\
             fault = {{ delay = {{ fixed = \"2s\" }}, sources = [\"spiffe://other.test/ns/a/sa/b\"] }}\n\
             timeouts = {{ request = \"1s\" }}\n\
             [[routes.http.rules]]\n\
             matches = [{{ path = {{ value = \"/x\" }} }}]\n\
             fault = {{ abort = {{ http_status = 503, percent = 10 }}, delay = {{ fixed = \"1ms\", percent = 0 }} }}\n\
             retry = {{ codes = [503], attempts = 3 }}\n"
        );
        let cfg = load_toml(&text).unwrap();
        let keys: Vec<&str> = cfg.warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "routes.http[0].rules[0].fault.delay.fixed",
                "routes.http[0].rules[0].fault.sources[0]",
                "routes.http[0].rules[1].fault.delay.percent",
                "routes.http[0].rules[1].fault.abort",
            ],
            "{:?}",
            cfg.warnings
        );
        assert!(
            cfg.warnings.iter().all(|w| w.line.is_some()),
            "{:?}",
            cfg.warnings
        );
    }

    #[test]
    fn foreign_trust_domain_patterns_are_warned_about() {
        let text = format!(
            "{GOOD}\n[[policy.authorizations]]\nservice = \"api.demo\"\n\
             allow = [\"demo/web\", \"spiffe://other.test/ns/demo/sa/web\", \"spiffe://weft.test/ns/demo/sa/x\"]\n"
        );
        let cfg = load_toml(&text).unwrap();
        assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
        let w = &cfg.warnings[0];
        assert_eq!(w.key, "policy.authorizations[0].allow[1]");
        assert_eq!(w.line, Some(11));
        assert!(
            w.message
                .contains("trust domain other.test, not in mesh.trust_domain weft.test"),
            "{w}"
        );
        assert!(load_toml(GOOD).unwrap().warnings.is_empty());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err(&GOOD.replace("port = 7143", "port = 7143\nprot = 1"));
        assert!(e.message.contains("prot"), "{e}");
        assert_eq!(e.key.as_deref(), Some("platforms.toy.prot"), "{e}");
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.to_string().starts_with("mesh.toml"), "{e}");
        let e = err(&GOOD.replace("[mesh]\n", "[mesh]\nnmae = 1\n"));
        assert_eq!(e.key.as_deref(), Some("mesh.nmae"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn bad_value_names_key_and_line() {
        let e = err(&GOOD.replace("port = 7143", "port = \"lots\""));
        assert_eq!(e.key.as_deref(), Some("platforms.toy.port"), "{e}");
        assert_eq!(e.line, Some(7), "{e}");
        let e = err(&GOOD.replace("port = 7143", "port = 70000"));
        assert_eq!(e.key.as_deref(), Some("platforms.toy.port"), "{e}");
    }

    const CANARY: &str = r#"
[[routes.http]]
name = "web-canary"
namespace = "shop"
parent_refs = [{ name = "web", port = 80 }]

[[routes.http.rules]]
matches = [{ path = { type = "PathPrefix", value = "/v2" }, headers = [{ name = "x-version", value = "2" }] }]
backend_refs = [{ name = "web-v2", port = 80, weight = 90 }, { name = "web-v1", port = 80, weight = 10 }]

[[routes.grpc]]
name = "users-get"
namespace = "shop"
parent_refs = [{ name = "users" }]

[[routes.grpc.rules]]
matches = [{ method = { service = "pkg.Users", method = "Get" } }]
backend_refs = [{ name = "users-v2" }]
"#;

    /// Routes in the file are built with their file and line; a bad one is refused at its
    /// key and line.
    #[test]
    fn routes_are_read_and_located() {
        let cfg = load_toml(&format!("{GOOD}{CANARY}")).unwrap();
        assert_eq!(cfg.http_routes.len(), 1);
        let route = &cfg.http_routes[0].route;
        assert_eq!(route.meta.name, "shop/web-canary");
        assert_eq!(
            route.meta.source,
            crate::policy::route::RouteSource::MeshFile {
                path: PathBuf::from("mesh.toml"),
                line: Some(9),
            }
        );
        assert_eq!(route.rules[0].backends[0].weight, 90);
        assert_eq!(
            cfg.grpc_routes[0].parents[0].service,
            crate::model::ServiceName::new("shop", "users").unwrap()
        );

        let e = err(&format!(
            "{GOOD}{}",
            CANARY.replace("value = \"/v2\"", "value = \"v2\"")
        ));
        assert_eq!(
            e.key.as_deref(),
            Some("routes.http[0].rules[0].matches[0].path.value"),
            "{e}"
        );
        assert_eq!(e.line, Some(15), "{e}");
        let e = err(&format!(
            "{GOOD}{}",
            CANARY.replace("weight = 90", "wieght = 90")
        ));
        assert!(e.message.contains("wieght"), "{e}");
        let e = err(&format!(
            "{GOOD}{}",
            CANARY.replace(
                "weight = 90 }, { name = \"web-v1\", port = 80, weight = 10",
                "weight = 0 }, { name = \"web-v1\", port = 80, weight = 0"
            )
        ));
        assert_eq!(
            e.key.as_deref(),
            Some("routes.http[0].rules[0].backend_refs"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_has_line() {
        let e = err("[mesh]\nname = \"dev\"\ntrust_domain = \n");
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn env_overrides_apply() {
        let env = HashMap::from([
            ("WEFT_MESH__NAME".to_string(), "prod".to_string()),
            ("WEFT_PLATFORMS__TOY__PORT".to_string(), "7200".to_string()),
        ]);
        let path = Path::new("m.toml");
        let cfg = loader()
            .parse(GOOD, FileFormat::Toml, path, env, &home())
            .unwrap();
        assert_eq!(cfg.mesh.name, "prod");
        assert_eq!(cfg.platforms.get::<Toy>().unwrap().port, 7200);
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
