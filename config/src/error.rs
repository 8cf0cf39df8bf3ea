//! The one error type of this crate, and how its messages are written: the
//! table and key a message names ([`Scope`], [`Key`]), the file
//! ([`Reporter`]), and a user's text quoted on one line. `parse` and
//! `validate` both build their errors from these.

use std::io;
use std::path::{Path, PathBuf};

/// Why a config file or a key file could not be used.
///
/// `Display` is always one line that names the file, and for a bad config the key, and
/// says what is wrong. The daemon prints it as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file is not valid TOML.
    #[error("config {}: line {line}, column {column}: {reason}", path.display())]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// What the TOML parser expected, flattened to one line.
        reason: String,
    },

    /// The config file has a key that the schema does not know.
    #[error(
        "config {}: unknown key `{key}` {}; {}",
        path.display(),
        table_phrase(table),
        expected_phrase(expected)
    )]
    UnknownKey {
        /// The config file.
        path: PathBuf,
        /// The table the key is in, as written in the file (`[tun]`, `[[peer]] #2`), or
        /// empty for the top level.
        table: String,
        /// The unknown key.
        key: String,
        /// The keys that table accepts.
        expected: Vec<String>,
    },

    /// A value has the wrong type or breaks a rule.
    #[error("config {}: {message}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The key, dotted (`tun.mtu`, `peer[2].endpoints`); empty if the problem is the
        /// whole file.
        key: String,
        /// The message, which names the key as written in the file and the reason.
        message: String,
    },

    /// A file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: io::Error,
    },

    /// A file or its directory could not be written.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: io::Error,
    },

    /// The identity key file does not exist.
    #[error(
        "identity key {} does not exist; run `umbra init` to create it",
        path.display()
    )]
    KeyMissing {
        /// The key file.
        path: PathBuf,
    },

    /// The identity key file can be read or written by users other than its owner.
    #[error(
        "identity key {} has mode {mode:04o}, which gives other users access to the secret key; run chmod 600 {}",
        path.display(),
        path.display()
    )]
    KeyMode {
        /// The key file.
        path: PathBuf,
        /// The permission bits of the file.
        mode: u32,
    },

    /// The identity key file does not hold one line of 64 hex characters.
    #[error("identity key {} is corrupt: expected 64 hex characters, {found}", path.display())]
    KeyCorrupt {
        /// The key file.
        path: PathBuf,
        /// What the file holds instead (never the secret itself).
        found: String,
    },

    /// The identity key file already exists, and key files are never overwritten.
    #[error(
        "identity key {} already exists; refusing to overwrite it",
        path.display()
    )]
    KeyExists {
        /// The key file.
        path: PathBuf,
    },
}

fn table_phrase(table: &str) -> String {
    if table.is_empty() {
        "at the top level".to_owned()
    } else {
        format!("in {table}")
    }
}

fn expected_phrase(expected: &[String]) -> String {
    let quoted: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
    match quoted.as_slice() {
        [] => "this table takes no keys".to_owned(),
        [one] => format!("expected {one}"),
        many => format!("expected one of {}", many.join(", ")),
    }
}

/// A table as the user wrote it (`[tun]`, `[[peer]] #2`, or the top level).
pub(crate) struct Scope {
    /// As written in the file; empty for the top level.
    pub(crate) shown: String,
    /// Dotted prefix for [`ConfigError::Invalid::key`].
    pub(crate) dotted: String,
}

/// A key inside a [`Scope`].
pub(crate) struct Key {
    /// As people read it: `[tun] mtu`, `address_prefix`.
    pub(crate) shown: String,
    /// Dotted: `tun.mtu`, `peer[2].key`.
    pub(crate) dotted: String,
}

impl Scope {
    pub(crate) fn top() -> Scope {
        Scope {
            shown: String::new(),
            dotted: String::new(),
        }
    }

    pub(crate) fn table(name: &str) -> Scope {
        Scope {
            shown: format!("[{name}]"),
            dotted: name.to_owned(),
        }
    }

    /// The `number`th entry of an array of tables such as `[[peer]]`, counted
    /// from 1 as people count.
    pub(crate) fn entry(name: &str, number: usize) -> Scope {
        Scope {
            shown: format!("[[{name}]] #{number}"),
            dotted: format!("{name}[{number}]"),
        }
    }

    pub(crate) fn key(&self, name: &str) -> Key {
        if self.shown.is_empty() {
            Key {
                shown: name.to_owned(),
                dotted: name.to_owned(),
            }
        } else {
            Key {
                shown: format!("{} {name}", self.shown),
                dotted: format!("{}.{name}", self.dotted),
            }
        }
    }
}

/// Builds errors that name the config file.
pub(crate) struct Reporter<'a> {
    pub(crate) path: &'a Path,
}

impl Reporter<'_> {
    /// An error about `key`; `message` must name the key itself.
    pub(crate) fn invalid(&self, key: &Key, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key: key.dotted.clone(),
            message,
        }
    }
}

/// Longest user string quoted in full in a message, in characters.
pub(crate) const QUOTE_MAX_CHARS: usize = 80;

/// Quotes a user's string for a one-line message: escaped, and shortened if long.
pub(crate) fn quote(text: &str) -> String {
    if text.chars().count() <= QUOTE_MAX_CHARS {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(QUOTE_MAX_CHARS).collect();
        format!("{head:?}…")
    }
}

/// Makes a message one line: newlines become "; " and other control characters are
/// escaped.
pub(crate) fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text
        .trim()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
    {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&escape_controls(line.trim()));
    }
    out
}

/// Escapes control characters (`\n`, `\t`, …) so a user's text stays on one line.
pub(crate) fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_flattens_and_escapes() {
        assert_eq!(one_line("a\n  b\n\nc\r\n"), "a; b; c");
        assert_eq!(one_line("tab\there"), "tab\\there");
    }

    #[test]
    fn quote_shortens_long_strings() {
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
        let long = "x".repeat(200);
        assert_eq!(
            quote(&long),
            format!("\"{}\"…", "x".repeat(QUOTE_MAX_CHARS))
        );
    }
}
