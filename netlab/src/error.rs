//! The lab's one error type.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// What went wrong in the lab. Every message names the command, file or
/// wait that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program could not be started (not installed, not executable).
    #[error("running `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why it could not start.
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// Reading or writing a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// Something did not happen in time.
    #[error("timed out after {} s waiting for {what}{detail}", limit.as_secs_f64())]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        limit: Duration,
        /// More context (the last state seen, logs), may be empty.
        detail: String,
    },
    /// A process the lab started exited when it should run.
    #[error("{what} exited ({status}); its log:\n{log}")]
    Exited {
        /// Which process.
        what: String,
        /// How it exited.
        status: ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// A tool printed something the lab could not read.
    #[error("{0}")]
    Output(String),
    /// The machine lacks something the lab needs (root, a tool).
    #[error("{0}")]
    Missing(String),
    /// A signal arrived and the lab is being torn down: nothing more is made.
    #[error("interrupted: the lab is being cleaned up")]
    Cancelled,
}

/// The lab's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// For programs whose errors are one line of text.
impl From<Error> for String {
    fn from(e: Error) -> String {
        e.to_string()
    }
}
