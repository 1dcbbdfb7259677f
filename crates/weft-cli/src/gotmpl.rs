//! The part of Go's `text/template` language that Weft's Helm chart is written in, so that
//! `weft install` renders the chart's own templates without Helm: one set of templates, no copy
//! to drift.
//!
//! Supported: text with `{{- ` / ` -}}` trimming and `{{/* comments */}}`; output actions;
//! pipelines (`a | f b`) and parenthesised sub-pipelines; `.Field` chains on the data and on
//! variables; `$v := ...`, `$v = ...`; `if` / `else if` / `else`, `with` / `else`, `range` (with
//! `$v` or `$i, $v`) / `else`; `define`, `template`; string, raw-string, number, `true`, `false`
//! and `nil` literals. Functions come from the caller (see [`Funcs`]); `include` is built in,
//! since it renders another template. Anything else is refused when the template is parsed,
//! naming the file and line, and so are blocks or parentheses nested more than 32 deep (they
//! are parsed and rendered by recursion).
//!
//! Values are JSON values, as Helm's are. A missing map key reads as nil, a field of nil is an
//! error, and nil prints as nothing (Helm's behaviour outside `--strict`).

use std::collections::HashMap;
use std::fmt;

use serde_json::{Map, Value};

/// A template error: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// `file:line`.
    pub place: String,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

impl std::error::Error for Error {}

/// A function templates may call: it gets the evaluated arguments (a piped value last).
pub type Func = Box<dyn Fn(&[Value]) -> Result<Value, String>>;

/// The functions a [`Set`] offers, by name.
#[derive(Default)]
pub struct Funcs(HashMap<&'static str, Func>);

impl Funcs {
    pub fn add(
        &mut self,
        name: &'static str,
        f: impl Fn(&[Value]) -> Result<Value, String> + 'static,
    ) {
        self.0.insert(name, Box::new(f));
    }

    fn has(&self, name: &str) -> bool {
        name == "include" || self.0.contains_key(name)
    }
}

impl fmt::Debug for Funcs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.0.keys().collect();
        names.sort();
        f.debug_tuple("Funcs").field(&names).finish()
    }
}

/// Parsed templates, named by file and by `define`.
pub struct Set {
    funcs: Funcs,
    templates: HashMap<String, Vec<Node>>,
}

impl fmt::Debug for Set {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.templates.keys().collect();
        names.sort();
        f.debug_struct("Set")
            .field("funcs", &self.funcs)
            .field("templates", &names)
            .finish()
    }
}

/// How deep `include` and `template` may nest: a template that includes itself stops here.
const MAX_DEPTH: usize = 64;

/// How deep blocks (`if`, `with`, `range`, `define`) and parenthesised sub-pipelines may nest
/// within one template: they are parsed and rendered by recursion, so deeper nesting is
/// refused rather than allowed to exhaust the stack. The chart nests a few levels.
const MAX_NESTING: usize = 32;

#[derive(Debug)]
enum Node {
    Text(String),
    Output(Pipe),
    If {
        branches: Vec<(Pipe, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
    With {
        pipe: Pipe,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
    Range {
        pipe: Pipe,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
    Template {
        name: String,
        pipe: Option<Pipe>,
        place: String,
    },
}

#[derive(Debug)]
struct Pipe {
    place: String,
    /// Variables declared (`:=`) or assigned (`=`) from the result.
    vars: Vec<String>,
    assign: bool,
    cmds: Vec<Vec<Arg>>,
}

#[derive(Debug)]
enum Arg {
    Literal(Value),
    Dot(Vec<String>),
    Var(String, Vec<String>),
    Func(String),
    Sub(Pipe, Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `.a.b`; empty for `.` alone.
    Field(Vec<String>),
    /// `$name.a.b`; the name is `$` for the data itself.
    Var(String, Vec<String>),
    Literal(Value),
    Open,
    /// `)`, with the fields that follow it.
    Close(Vec<String>),
    Pipe,
    Declare,
    Assign,
    Comma,
}

/// A piece of the source: text, or the tokens of one action with its line.
enum Piece {
    Text(String),
    Action { line: usize, toks: Vec<Tok> },
}

impl Set {
    pub fn new(funcs: Funcs) -> Self {
        Set {
            funcs,
            templates: HashMap::new(),
        }
    }

    /// Parses `src` as the template `file`, with the templates it defines.
    pub fn parse(&mut self, file: &str, src: &str) -> Result<(), Error> {
        let pieces = split(file, src)?;
        let mut parser = Parser {
            file,
            pieces,
            at: 0,
            funcs: &self.funcs,
            defines: Vec::new(),
            depth: 0,
            line: 1,
        };
        let (body, stop) = parser.list(false)?;
        if let Some((line, word)) = stop {
            return Err(err(file, line, format!("unexpected {{{{{word}}}}}")));
        }
        let defines = std::mem::take(&mut parser.defines);
        self.templates.insert(file.to_string(), body);
        for (name, body) in defines {
            self.templates.insert(name, body);
        }
        Ok(())
    }

    /// Renders the template `name` (a file or a `define`) with `data` as `.` and `$`.
    pub fn render(&self, name: &str, data: &Value) -> Result<String, Error> {
        let mut out = String::new();
        let mut run = Run {
            set: self,
            root: data,
            vars: Vec::new(),
            depth: 0,
        };
        run.template(name, data, &mut out, &format!("{name}:1"))?;
        Ok(out)
    }
}

fn err(file: &str, line: usize, message: impl Into<String>) -> Error {
    Error {
        place: format!("{file}:{line}"),
        message: message.into(),
    }
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Cuts the source into text and actions, applying the trim markers and dropping comments.
fn split(file: &str, src: &str) -> Result<Vec<Piece>, Error> {
    let mut pieces = Vec::new();
    let mut rest = src;
    let mut line = 1;
    let mut trim_next = false;
    while !rest.is_empty() {
        let Some(open) = rest.find("{{") else {
            let text = if trim_next {
                rest.trim_start_matches(is_space)
            } else {
                rest
            };
            pieces.push(Piece::Text(text.to_string()));
            break;
        };
        let mut text = &rest[..open];
        line += text.matches('\n').count();
        if trim_next {
            text = text.trim_start_matches(is_space);
        }
        let after = &rest[open + 2..];
        let trim_left = after.starts_with('-') && after[1..].starts_with(is_space);
        if trim_left {
            text = text.trim_end_matches(is_space);
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text.to_string()));
        }
        let body_start = if trim_left { 2 } else { 0 };
        let end =
            action_end(&after[body_start..]).ok_or_else(|| err(file, line, "unclosed action"))?;
        let mut body = &after[body_start..body_start + end];
        trim_next = body.ends_with(" -")
            || body.ends_with("\t-")
            || body.ends_with("\n-")
            || body.ends_with("\r-");
        if trim_next {
            body = &body[..body.len() - 1];
        }
        let action_line = line;
        line += body.matches('\n').count();
        let trimmed = body.trim_matches(is_space);
        if trimmed.starts_with("/*") {
            if !trimmed.ends_with("*/") {
                return Err(err(file, action_line, "unclosed comment"));
            }
        } else {
            let toks = lex(trimmed).map_err(|m| err(file, action_line, m))?;
            pieces.push(Piece::Action {
                line: action_line,
                toks,
            });
        }
        rest = &after[body_start + end + 2..];
    }
    Ok(pieces)
}

/// Where the action that starts `s` ends (the index of its `}}`), skipping quoted strings and
/// comments.
fn action_end(s: &str) -> Option<usize> {
    let trimmed = s.trim_start_matches(is_space);
    if trimmed.starts_with("/*") {
        let lead = s.len() - trimmed.len();
        let close = trimmed.find("*/")? + 2;
        let tail = &trimmed[close..];
        let skip = tail.len() - tail.trim_start_matches([' ', '\t', '\r', '\n', '-']).len();
        let at = lead + close + skip;
        return s[at..].starts_with("}}").then_some(at);
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' => {
                let q = bytes[i];
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if bytes.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Reads `.a.b.c` from the start of `s`: the names and the bytes read.
fn field_chain(s: &str) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    let mut at = 0;
    while s[at..].starts_with('.') {
        let name: String = s[at + 1..].chars().take_while(|c| is_ident(*c)).collect();
        if name.is_empty() {
            break;
        }
        at += 1 + name.len();
        names.push(name);
    }
    (names, at)
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        let c = rest.chars().next().unwrap_or(' ');
        if is_space(c) {
            i += 1;
            continue;
        }
        match c {
            '(' => {
                toks.push(Tok::Open);
                i += 1;
            }
            ')' => {
                let (names, n) = field_chain(&rest[1..]);
                toks.push(Tok::Close(names));
                i += 1 + n;
            }
            '|' => {
                toks.push(Tok::Pipe);
                i += 1;
            }
            ',' => {
                toks.push(Tok::Comma);
                i += 1;
            }
            '=' => {
                toks.push(Tok::Assign);
                i += 1;
            }
            ':' if rest.starts_with(":=") => {
                toks.push(Tok::Declare);
                i += 2;
            }
            '.' => {
                let (names, n) = field_chain(rest);
                if n == 0 {
                    if rest[1..].starts_with(|c: char| c.is_ascii_digit()) {
                        return Err(format!("unsupported number in {s:?}"));
                    }
                    i += 1;
                } else {
                    i += n;
                }
                toks.push(Tok::Field(names));
            }
            '$' => {
                let name: String = rest[1..].chars().take_while(|c| is_ident(*c)).collect();
                let (names, n) = field_chain(&rest[1 + name.len()..]);
                toks.push(Tok::Var(format!("${name}"), names));
                i += 1 + name.len() + n;
            }
            '"' => {
                let (value, n) = quoted(rest)?;
                toks.push(Tok::Literal(Value::String(value)));
                i += n;
            }
            '`' => {
                let end = rest[1..]
                    .find('`')
                    .ok_or_else(|| "unterminated raw string".to_string())?;
                toks.push(Tok::Literal(Value::String(rest[1..1 + end].to_string())));
                i += end + 2;
            }
            c if c.is_ascii_digit() || c == '-' => {
                let word: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
                    .collect();
                let value = if let Ok(n) = word.parse::<i64>() {
                    Value::from(n)
                } else if let Some(n) = word
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                {
                    Value::Number(n)
                } else {
                    return Err(format!("bad number {word:?}"));
                };
                toks.push(Tok::Literal(value));
                i += word.len();
            }
            c if is_ident(c) => {
                let word: String = rest.chars().take_while(|c| is_ident(*c)).collect();
                i += word.len();
                toks.push(match word.as_str() {
                    "true" => Tok::Literal(Value::Bool(true)),
                    "false" => Tok::Literal(Value::Bool(false)),
                    "nil" => Tok::Literal(Value::Null),
                    _ => Tok::Ident(word),
                });
            }
            other => return Err(format!("unexpected {other:?} in an action")),
        }
    }
    Ok(toks)
}

/// A double-quoted Go string at the start of `s`: its value and the bytes it took.
fn quoted(s: &str) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                Some(other) => return Err(format!("unsupported escape \\{other}")),
                None => break,
            },
            '\n' => break,
            c => out.push(c),
        }
    }
    Err("unterminated string".to_string())
}

struct Parser<'a> {
    file: &'a str,
    pieces: Vec<Piece>,
    at: usize,
    funcs: &'a Funcs,
    defines: Vec<(String, Vec<Node>)>,
    /// How many blocks enclose what is being parsed.
    depth: usize,
    /// The line of the last action read, for errors.
    line: usize,
}

/// What ended a list: `end`, or `else` with the tokens after it.
type Stop = Option<(usize, String)>;

impl Parser<'_> {
    fn err(&self, line: usize, message: impl Into<String>) -> Error {
        err(self.file, line, message)
    }

    /// Parses nodes up to an `end` or `else` (returned with its line), or the end of the
    /// source (`None`); `else` tokens are left in `self.else_toks`.
    /// The nodes up to the end of the template, or (`nested`, in a block) up to its `else`
    /// or `end`.
    fn list(&mut self, nested: bool) -> Result<(Vec<Node>, Stop), Error> {
        if !nested {
            return self.list_within(false);
        }
        if self.depth >= MAX_NESTING {
            return Err(self.err(
                self.line,
                format!("blocks nested more than {MAX_NESTING} deep"),
            ));
        }
        self.depth += 1;
        let listed = self.list_within(true);
        self.depth -= 1;
        listed
    }

    fn list_within(&mut self, nested: bool) -> Result<(Vec<Node>, Stop), Error> {
        let mut nodes = Vec::new();
        while self.at < self.pieces.len() {
            let piece = std::mem::replace(&mut self.pieces[self.at], Piece::Text(String::new()));
            self.at += 1;
            let (line, toks) = match piece {
                Piece::Text(t) => {
                    nodes.push(Node::Text(t));
                    continue;
                }
                Piece::Action { line, toks } => (line, toks),
            };
            self.line = line;
            let keyword = match toks.first() {
                Some(Tok::Ident(w)) if !self.funcs.has(w) => w.clone(),
                _ => String::new(),
            };
            let rest = &toks[toks.len().min(1)..];
            match keyword.as_str() {
                "end" | "else" => {
                    if !nested {
                        return Err(self.err(line, format!("unexpected {{{{{keyword}}}}}")));
                    }
                    if keyword == "end" && !rest.is_empty() {
                        return Err(self.err(line, "end takes no arguments"));
                    }
                    // An `else` hands its tokens back through the pieces, for the caller.
                    if keyword == "else" {
                        self.at -= 1;
                        self.pieces[self.at] = Piece::Action {
                            line,
                            toks: rest.to_vec(),
                        };
                    }
                    return Ok((nodes, Some((line, keyword))));
                }
                "if" => {
                    let mut branches = vec![(self.pipe(line, rest, false)?, Vec::new())];
                    let mut otherwise = Vec::new();
                    loop {
                        let (body, stop) = self.list(true)?;
                        let last = branches.len() - 1;
                        branches[last].1 = body;
                        match self.after_else(line, stop)? {
                            Some(toks) if toks.first() == Some(&Tok::Ident("if".into())) => {
                                branches.push((self.pipe(line, &toks[1..], false)?, Vec::new()));
                            }
                            Some(toks) if toks.is_empty() => {
                                otherwise = self.close(line)?;
                                break;
                            }
                            Some(_) => return Err(self.err(line, "else takes `if` or nothing")),
                            None => break,
                        }
                    }
                    nodes.push(Node::If {
                        branches,
                        otherwise,
                    });
                }
                "with" | "range" => {
                    let pipe = self.pipe(line, rest, keyword == "range")?;
                    let (body, stop) = self.list(true)?;
                    let otherwise = match self.after_else(line, stop)? {
                        Some(toks) if toks.is_empty() => self.close(line)?,
                        Some(_) => return Err(self.err(line, "else takes nothing here")),
                        None => Vec::new(),
                    };
                    nodes.push(if keyword == "with" {
                        Node::With {
                            pipe,
                            body,
                            otherwise,
                        }
                    } else {
                        Node::Range {
                            pipe,
                            body,
                            otherwise,
                        }
                    });
                }
                "define" => {
                    let name = match rest {
                        [Tok::Literal(Value::String(name))] => name.clone(),
                        _ => return Err(self.err(line, "define takes one quoted name")),
                    };
                    if nested {
                        return Err(self.err(line, "define inside a block"));
                    }
                    let body = self.close(line)?;
                    self.defines.push((name, body));
                }
                "template" => {
                    let (name, pipe) = match rest {
                        [Tok::Literal(Value::String(name)), more @ ..] => (name.clone(), more),
                        _ => return Err(self.err(line, "template takes a quoted name")),
                    };
                    let pipe = if pipe.is_empty() {
                        None
                    } else {
                        Some(self.pipe(line, pipe, false)?)
                    };
                    nodes.push(Node::Template {
                        name,
                        pipe,
                        place: format!("{}:{line}", self.file),
                    });
                }
                "block" | "break" | "continue" => {
                    return Err(self.err(line, format!("{keyword} is not supported")));
                }
                _ => nodes.push(Node::Output(self.pipe(line, &toks, false)?)),
            }
        }
        Ok((nodes, None))
    }

    /// After a block's body: the tokens of its `else`, or `None` at its `end`.
    fn after_else(&mut self, line: usize, stop: Stop) -> Result<Option<Vec<Tok>>, Error> {
        match stop {
            Some((_, w)) if w == "end" => Ok(None),
            Some(_) => {
                let Some(Piece::Action { toks, .. }) = self.pieces.get_mut(self.at) else {
                    return Err(self.err(line, "else without its tokens"));
                };
                let toks = std::mem::take(toks);
                self.at += 1;
                Ok(Some(toks))
            }
            None => Err(self.err(line, "missing {{end}}")),
        }
    }

    /// The rest of a block, which must end with `end`.
    fn close(&mut self, line: usize) -> Result<Vec<Node>, Error> {
        match self.list(true)? {
            (body, Some((_, w))) if w == "end" => Ok(body),
            (_, Some((at, _))) => Err(self.err(at, "unexpected {{else}}")),
            (_, None) => Err(self.err(line, "missing {{end}}")),
        }
    }

    fn pipe(&self, line: usize, toks: &[Tok], range: bool) -> Result<Pipe, Error> {
        let mut vars = Vec::new();
        let mut assign = false;
        let mut rest = toks;
        let decl = toks
            .iter()
            .position(|t| matches!(t, Tok::Declare | Tok::Assign));
        if let Some(d) = decl {
            let names: Vec<&Tok> = toks[..d].iter().filter(|t| **t != Tok::Comma).collect();
            let commas = d - names.len();
            let ok = names
                .iter()
                .all(|t| matches!(t, Tok::Var(n, f) if f.is_empty() && n != "$"));
            if !ok || names.is_empty() || names.len() > 2 || commas != names.len() - 1 {
                return Err(self.err(line, "bad variable declaration"));
            }
            if names.len() == 2 && !range {
                return Err(self.err(line, "two variables only in range"));
            }
            vars = names
                .iter()
                .map(|t| match t {
                    Tok::Var(n, _) => n.clone(),
                    _ => String::new(),
                })
                .collect();
            assign = toks[d] == Tok::Assign;
            rest = &toks[d + 1..];
        }
        let (pipe, used) = self.commands(line, rest, vars, assign, 0)?;
        if used != rest.len() {
            return Err(self.err(line, "unexpected )"));
        }
        Ok(pipe)
    }

    /// Commands up to the end or an unmatched `)`: the pipe and the tokens read. `depth`
    /// counts the parentheses around them.
    fn commands(
        &self,
        line: usize,
        toks: &[Tok],
        vars: Vec<String>,
        assign: bool,
        depth: usize,
    ) -> Result<(Pipe, usize), Error> {
        let mut cmds = vec![Vec::new()];
        let mut i = 0;
        while i < toks.len() {
            let arg = match &toks[i] {
                Tok::Close(_) => break,
                Tok::Pipe => {
                    if cmds.last().is_some_and(Vec::is_empty) {
                        return Err(self.err(line, "missing command before |"));
                    }
                    cmds.push(Vec::new());
                    i += 1;
                    continue;
                }
                Tok::Literal(v) => Arg::Literal(v.clone()),
                Tok::Field(f) => Arg::Dot(f.clone()),
                Tok::Var(n, f) => Arg::Var(n.clone(), f.clone()),
                Tok::Ident(name) => {
                    if !self.funcs.has(name) {
                        return Err(self.err(line, format!("function {name:?} not defined")));
                    }
                    Arg::Func(name.clone())
                }
                Tok::Open => {
                    if depth >= MAX_NESTING {
                        return Err(self.err(
                            line,
                            format!("parentheses nested more than {MAX_NESTING} deep"),
                        ));
                    }
                    let (sub, used) =
                        self.commands(line, &toks[i + 1..], Vec::new(), false, depth + 1)?;
                    let Some(Tok::Close(fields)) = toks.get(i + 1 + used) else {
                        return Err(self.err(line, "unclosed ("));
                    };
                    i += used + 1;
                    Arg::Sub(sub, fields.clone())
                }
                Tok::Declare | Tok::Assign | Tok::Comma => {
                    return Err(self.err(line, "unexpected := , or ="));
                }
            };
            if let Some(cmd) = cmds.last_mut() {
                cmd.push(arg);
            }
            i += 1;
        }
        if cmds.iter().any(Vec::is_empty) {
            return Err(self.err(line, "missing value"));
        }
        Ok((
            Pipe {
                place: format!("{}:{line}", self.file),
                vars,
                assign,
                cmds,
            },
            i,
        ))
    }
}

struct Run<'a> {
    set: &'a Set,
    root: &'a Value,
    vars: Vec<(String, Value)>,
    depth: usize,
}

fn fail(place: &str, message: impl Into<String>) -> Error {
    Error {
        place: place.to_string(),
        message: message.into(),
    }
}

/// Go's truth: false, 0, nil and empty strings, lists and maps are false.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// How a value prints, as Go's `fmt` prints Helm's values (nil prints nothing).
pub fn print(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(print).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Object(o) => {
            let mut items: Vec<String> =
                o.iter().map(|(k, v)| format!("{k}:{}", print(v))).collect();
            items.sort();
            format!("map[{}]", items.join(" "))
        }
    }
}

impl Run<'_> {
    fn template(
        &mut self,
        name: &str,
        dot: &Value,
        out: &mut String,
        place: &str,
    ) -> Result<(), Error> {
        let Some(nodes) = self.set.templates.get(name) else {
            return Err(fail(place, format!("no template {name:?}")));
        };
        if self.depth >= MAX_DEPTH {
            return Err(fail(
                place,
                format!("templates nest deeper than {MAX_DEPTH}"),
            ));
        }
        self.depth += 1;
        // A template sees only `$`, the data it was given.
        let saved = std::mem::take(&mut self.vars);
        self.vars.push(("$".into(), dot.clone()));
        let done = self.walk(nodes, dot, out);
        self.vars = saved;
        self.depth -= 1;
        done
    }

    fn walk(&mut self, nodes: &[Node], dot: &Value, out: &mut String) -> Result<(), Error> {
        for node in nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Output(pipe) => {
                    let v = self.pipe(pipe, dot)?;
                    if pipe.vars.is_empty() {
                        out.push_str(&print(&v));
                    }
                }
                Node::If {
                    branches,
                    otherwise,
                } => {
                    let mut taken = false;
                    for (cond, body) in branches {
                        if truthy(&self.pipe_scoped(cond, dot)?) {
                            self.scoped(body, dot, out)?;
                            taken = true;
                            break;
                        }
                    }
                    if !taken {
                        self.scoped(otherwise, dot, out)?;
                    }
                }
                Node::With {
                    pipe,
                    body,
                    otherwise,
                } => {
                    let mark = self.vars.len();
                    let v = self.pipe(pipe, dot)?;
                    if truthy(&v) {
                        self.walk(body, &v, out)?;
                    } else {
                        self.walk(otherwise, dot, out)?;
                    }
                    self.vars.truncate(mark);
                }
                Node::Range {
                    pipe,
                    body,
                    otherwise,
                } => self.range(pipe, body, otherwise, dot, out)?,
                Node::Template { name, pipe, place } => {
                    let data = match pipe {
                        Some(p) => self.pipe_scoped(p, dot)?,
                        None => Value::Null,
                    };
                    self.template(name, &data, out, place)?;
                }
            }
        }
        Ok(())
    }

    fn scoped(&mut self, nodes: &[Node], dot: &Value, out: &mut String) -> Result<(), Error> {
        let mark = self.vars.len();
        let done = self.walk(nodes, dot, out);
        self.vars.truncate(mark);
        done
    }

    fn pipe_scoped(&mut self, pipe: &Pipe, dot: &Value) -> Result<Value, Error> {
        let mark = self.vars.len();
        let v = self.pipe(pipe, dot);
        self.vars.truncate(mark);
        v
    }

    fn range(
        &mut self,
        pipe: &Pipe,
        body: &[Node],
        otherwise: &[Node],
        dot: &Value,
        out: &mut String,
    ) -> Result<(), Error> {
        let mark = self.vars.len();
        let over = self.eval_cmds(pipe, dot)?;
        let items: Vec<(Value, Value)> = match over {
            Value::Array(a) => a
                .into_iter()
                .enumerate()
                .map(|(i, v)| (Value::from(i), v))
                .collect(),
            Value::Object(o) => {
                let mut items: Vec<(Value, Value)> =
                    o.into_iter().map(|(k, v)| (Value::String(k), v)).collect();
                items.sort_by_key(|a| print(&a.0));
                items
            }
            Value::Null => Vec::new(),
            other => {
                return Err(fail(
                    &pipe.place,
                    format!("range can't iterate over {}", print(&other)),
                ));
            }
        };
        if items.is_empty() {
            return self.scoped(otherwise, dot, out);
        }
        for (key, value) in items {
            match pipe.vars.as_slice() {
                [v] => self.vars.push((v.clone(), value.clone())),
                [k, v] => {
                    self.vars.push((k.clone(), key));
                    self.vars.push((v.clone(), value.clone()));
                }
                _ => {}
            }
            self.walk(body, &value, out)?;
            self.vars.truncate(mark);
        }
        Ok(())
    }

    /// Evaluates a pipeline and binds its variables.
    fn pipe(&mut self, pipe: &Pipe, dot: &Value) -> Result<Value, Error> {
        let v = self.eval_cmds(pipe, dot)?;
        if let [name] = pipe.vars.as_slice() {
            if pipe.assign {
                let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| n == name) else {
                    return Err(fail(&pipe.place, format!("undefined variable {name}")));
                };
                slot.1 = v.clone();
            } else {
                self.vars.push((name.clone(), v.clone()));
            }
        }
        Ok(v)
    }

    fn eval_cmds(&mut self, pipe: &Pipe, dot: &Value) -> Result<Value, Error> {
        let mut piped: Option<Value> = None;
        for cmd in &pipe.cmds {
            piped = Some(self.command(&pipe.place, cmd, dot, piped.take())?);
        }
        Ok(piped.unwrap_or(Value::Null))
    }

    fn command(
        &mut self,
        place: &str,
        cmd: &[Arg],
        dot: &Value,
        piped: Option<Value>,
    ) -> Result<Value, Error> {
        let (first, args) = cmd
            .split_first()
            .ok_or_else(|| fail(place, "empty command"))?;
        let Arg::Func(name) = first else {
            if !args.is_empty() || piped.is_some() {
                return Err(fail(place, "can't give an argument to a non-function"));
            }
            return self.arg(place, first, dot);
        };
        let mut values = Vec::with_capacity(args.len() + 1);
        for a in args {
            values.push(self.arg(place, a, dot)?);
        }
        values.extend(piped);
        if name == "include" {
            let [Value::String(tpl), data] = values.as_slice() else {
                return Err(fail(place, "include takes a template name and its data"));
            };
            let mut out = String::new();
            self.template(tpl, data, &mut out, place)?;
            return Ok(Value::String(out));
        }
        let f = self
            .set
            .funcs
            .0
            .get(name.as_str())
            .ok_or_else(|| fail(place, format!("function {name:?} not defined")))?;
        f(&values).map_err(|m| fail(place, format!("{name}: {m}")))
    }

    fn arg(&mut self, place: &str, arg: &Arg, dot: &Value) -> Result<Value, Error> {
        match arg {
            Arg::Literal(v) => Ok(v.clone()),
            Arg::Dot(fields) => fields_of(place, dot, fields),
            Arg::Var(name, fields) => {
                let base = if name == "$" {
                    self.vars
                        .iter()
                        .find(|(n, _)| n == "$")
                        .map_or(self.root, |(_, v)| v)
                        .clone()
                } else {
                    self.vars
                        .iter()
                        .rev()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone())
                        .ok_or_else(|| fail(place, format!("undefined variable {name}")))?
                };
                fields_of(place, &base, fields)
            }
            Arg::Func(name) => self.command(place, &[Arg::Func(name.clone())], dot, None),
            Arg::Sub(pipe, fields) => {
                let v = self.pipe_scoped(pipe, dot)?;
                fields_of(place, &v, fields)
            }
        }
    }
}

fn fields_of(place: &str, base: &Value, fields: &[String]) -> Result<Value, Error> {
    let mut v = base;
    for (i, f) in fields.iter().enumerate() {
        v = match v {
            Value::Object(o) => o.get(f).unwrap_or(&Value::Null),
            Value::Null => {
                return Err(fail(
                    place,
                    format!("nil pointer evaluating .{}", fields[..=i].join(".")),
                ));
            }
            other => {
                return Err(fail(
                    place,
                    format!("can't evaluate field {f} in {}", kind_of(other)),
                ));
            }
        };
    }
    Ok(v.clone())
}

/// A value's kind, for errors.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nil",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// A map from string keys, for functions that return objects (`genCA`).
pub fn object<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<Map<String, Value>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn funcs() -> Funcs {
        let mut f = Funcs::default();
        f.add("quote", |a| {
            Ok(Value::String(format!("{:?}", print(&a[0]))))
        });
        f.add("eq", |a| Ok(Value::Bool(a.len() == 2 && a[0] == a[1])));
        f.add("upper", |a| Ok(Value::String(print(&a[0]).to_uppercase())));
        f.add("list", |a| Ok(Value::Array(a.to_vec())));
        f
    }

    fn render(src: &str, data: Value) -> Result<String, Error> {
        let mut set = Set::new(funcs());
        set.parse("t.yaml", src)?;
        set.render("t.yaml", &data)
    }

    #[test]
    fn text_fields_and_trim_markers() {
        let data = json!({"Values": {"a": {"b": "x"}, "n": 3}});
        assert_eq!(
            render("k: {{ .Values.a.b }}", data.clone()).unwrap(),
            "k: x"
        );
        assert_eq!(
            render(
                "a\n  {{- .Values.n }}  \n {{- /* gone */ -}} \n b",
                data.clone()
            )
            .unwrap(),
            "a3b"
        );
        assert_eq!(render("{{/* only */}}x", data.clone()).unwrap(), "x");
        // A missing key is nil and prints nothing; a field of nil is an error naming the line.
        assert_eq!(render("[{{ .Values.zz }}]", data.clone()).unwrap(), "[]");
        let e = render("\n\n{{ .Values.zz.y }}", data).unwrap_err();
        assert_eq!(e.place, "t.yaml:3");
        assert!(
            e.message.contains("nil pointer evaluating .Values.zz.y"),
            "{e}"
        );
    }

    #[test]
    fn pipelines_variables_and_subexpressions() {
        let data = json!({"v": "abc", "m": {"k": "v"}});
        assert_eq!(
            render("{{ .v | upper | quote }}", data.clone()).unwrap(),
            "\"ABC\""
        );
        assert_eq!(
            render(
                "{{ $x := .v }}{{ $x }}{{ $x = \"z\" }}{{ $x }}",
                data.clone()
            )
            .unwrap(),
            "abcz"
        );
        assert!(render("{{ (list .m 2).k }}", data.clone()).is_err());
        assert_eq!(
            render("{{ $m := .m }}{{ $m.k }}", data.clone()).unwrap(),
            "v"
        );
        assert_eq!(render("{{ quote (upper .v) }}", data).unwrap(), "\"ABC\"");
    }

    #[test]
    fn blocks() {
        let data = json!({"a": "x", "l": ["p", "q"], "m": {"b": 2, "a": 1}, "e": []});
        let src = "{{ if eq .a \"y\" }}1{{ else if eq .a \"x\" }}2{{ else }}3{{ end }}";
        assert_eq!(render(src, data.clone()).unwrap(), "2");
        assert_eq!(
            render("{{ if .e }}1{{ else }}0{{ end }}", data.clone()).unwrap(),
            "0"
        );
        assert_eq!(
            render("{{ with .a }}<{{ . }}>{{ end }}", data.clone()).unwrap(),
            "<x>"
        );
        assert_eq!(
            render("{{ with .e }}x{{ else }}none{{ end }}", data.clone()).unwrap(),
            "none"
        );
        assert_eq!(
            render(
                "{{ range $i, $v := .l }}{{ if $i }},{{ end }}{{ $v }}{{ end }}",
                data.clone()
            )
            .unwrap(),
            "p,q"
        );
        assert_eq!(
            render(
                "{{ range $k, $v := .m }}{{ $k }}={{ $v }};{{ end }}",
                data.clone()
            )
            .unwrap(),
            "a=1;b=2;"
        );
        assert_eq!(
            render("{{ range .e }}x{{ else }}empty{{ end }}", data.clone()).unwrap(),
            "empty"
        );
        // Variables of a block end with it.
        assert!(render("{{ if true }}{{ $x := 1 }}{{ end }}{{ $x }}", data).is_err());
    }

    #[test]
    fn define_include_and_template() {
        let src = "{{- define \"n\" -}}<{{ .a }}>{{- end }}{{ include \"n\" . | upper }}|{{ template \"n\" . }}";
        assert_eq!(render(src, json!({"a": "x"})).unwrap(), "<X>|<x>");
        let looping = "{{ define \"l\" }}{{ include \"l\" . }}{{ end }}{{ include \"l\" . }}";
        assert!(
            render(looping, json!({}))
                .unwrap_err()
                .message
                .contains("nest deeper")
        );
    }

    #[test]
    fn malformed_templates_are_refused_with_their_line() {
        for (src, line, what) in [
            ("a\n{{ if true }}", 2, "missing {{end}}"),
            ("{{ end }}", 1, "unexpected {{end}}"),
            ("\n{{ nope 1 }}", 2, "function \"nope\" not defined"),
            ("{{ .a", 1, "unclosed action"),
            ("{{ \"abc }}", 1, "unclosed action"),
            ("{{ 'a' }}", 1, "unexpected '\\''"),
            ("{{ (upper .a }}", 1, "unclosed ("),
            ("{{ $a, $b := .x }}", 1, "two variables only in range"),
            ("{{ block \"x\" . }}{{ end }}", 1, "not supported"),
        ] {
            let e = render(src, json!({})).unwrap_err();
            assert_eq!(e.place, format!("t.yaml:{line}"), "{src}: {e}");
            assert!(e.message.contains(what), "{src}: {e}");
        }
    }

    #[test]
    fn nesting_is_bounded_not_a_stack_overflow() {
        // Sub-pipelines and blocks are parsed, and rendered, by recursion: a template of a
        // few hundred kilobytes must not exhaust the stack.
        let n = 100_000;
        let parens = format!("{{{{ {}1{} }}}}", "(".repeat(n), ")".repeat(n));
        let blocks = format!("{}x{}", "{{ if true }}".repeat(n), "{{ end }}".repeat(n));
        let ranges = format!("{}x{}", "{{ range .l }}".repeat(n), "{{ end }}".repeat(n));
        for src in [parens, blocks, ranges] {
            let e = render(&src, json!({"l": [1]})).unwrap_err();
            assert!(e.message.contains("nested more than"), "{e}");
        }
        // Up to the bound, nesting still renders; one more level is refused.
        let nested = |n: usize| {
            format!(
                "{}{{{{ {}1{} }}}}{}",
                "{{ if true }}".repeat(n),
                "(".repeat(n),
                ")".repeat(n),
                "{{ end }}".repeat(n)
            )
        };
        assert_eq!(render(&nested(MAX_NESTING), json!({})).unwrap(), "1");
        assert!(render(&nested(MAX_NESTING + 1), json!({})).is_err());
    }
}
