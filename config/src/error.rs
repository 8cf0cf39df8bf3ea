//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

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
