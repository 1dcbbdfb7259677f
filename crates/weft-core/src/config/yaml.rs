//! The one check every YAML file Weft reads goes through before it is parsed into values: no
//! anchors (`&a`) and no aliases (`*a`, `<<: *a`).
//!
//! YAML loaders expand an alias into a copy of its anchor, so a few hundred bytes of nested
//! aliases (a "billion laughs") grow into gigabytes and the process dies for want of memory.
//! The mesh config file, Kubernetes manifests given to `weft inject` and values files given to
//! `weft install -f` never need them, so they are refused, with the place where the first one
//! stands, instead of being expanded under a limit.

use std::path::{Path, PathBuf};

use yaml_rust2::scanner::{Scanner, Token, TokenType};

/// What is wrong, after `file:line:column: `.
pub(super) const REFUSAL: &str =
    "YAML anchors and aliases are not supported: write the value out in full";

/// A YAML anchor or alias in a text that may not have one: the first, where it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {REFUSAL}", file.display())]
pub struct YamlAnchorError {
    /// The file the text was read from, as the user named it.
    pub file: PathBuf,
    /// The 1-based line of the `&` or `*`.
    pub line: usize,
    /// The 1-based column (in characters) of the `&` or `*`.
    pub column: usize,
}

/// Refuses a YAML text (one document or several) that has an anchor or an alias, naming
/// `file` and the line and column of the first one.
///
/// It only tokenizes the text, which expands nothing and takes memory in proportion to the
/// text. A `&` or `*` inside a quoted string, a plain scalar (`a*b`) or a comment is not an
/// anchor or alias and passes. A syntax error ends the check with `Ok`: the parser that reads
/// the text next reports it, and it cannot read past it either.
pub fn refuse_yaml_anchors(text: &str, file: &Path) -> Result<(), YamlAnchorError> {
    for Token(mark, token) in Scanner::new(text.chars()) {
        if matches!(token, TokenType::Anchor(_) | TokenType::Alias(_)) {
            return Err(YamlAnchorError {
                file: file.to_path_buf(),
                line: mark.line(),
                // The scanner counts columns from 0.
                column: mark.col() + 1,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    fn at(text: &str) -> Option<(usize, usize)> {
        refuse_yaml_anchors(text, Path::new("f.yaml"))
            .err()
            .map(|e| (e.line, e.column))
    }

    #[test]
    fn the_first_anchor_or_alias_is_located() {
        assert_eq!(at("a: &x 1\nb: *x\n"), Some((1, 4)));
        assert_eq!(at("a: 1\nb: [1, *x]\n"), Some((2, 8)));
        assert_eq!(at("a:\n  - &s\n    k: v\n"), Some((2, 5)));
        assert_eq!(at("a: !!str &x 1\n"), Some((1, 10)));
        // A merge key's value is an alias.
        assert_eq!(at("a: {k: v}\nb:\n  <<: *a\n"), Some((3, 7)));
        // In a later document.
        assert_eq!(at("a: 1\n---\nb: 2\n---\nc: *z\n"), Some((5, 4)));
        // Columns count characters, not bytes.
        assert_eq!(at("é: &x 1\n"), Some((1, 4)));
        let e = refuse_yaml_anchors("a: *x\n", Path::new("dir/v.yaml")).unwrap_err();
        assert_eq!(e.to_string(), format!("dir/v.yaml:1:4: {REFUSAL}"));
    }

    #[test]
    fn stars_and_ampersands_that_are_not_anchors_pass() {
        let text = "# &a *b in a comment\n\
                    a: \"*x &y\"\n\
                    b: '&z'\n\
                    c: a*b&c\n\
                    d: [\"*\", '*']\n\
                    e: |\n  *literal &block\n\
                    f: {k: \"&v\"}\n";
        assert_eq!(at(text), None);
        assert_eq!(at(""), None);
    }

    #[test]
    fn a_syntax_error_is_left_to_the_parser() {
        assert_eq!(at("a: [1, 2\n"), None);
        // Before the error, an alias is still found.
        assert_eq!(at("a: *x\nb: [1, 2\n"), Some((1, 4)));
    }
}
