//! `umbra doctor`: checks what an operator gets wrong and says, for each
//! item, whether it passed and, if not, how to fix it (`docs/cli.md, "umbra
//! doctor"`).
//!
//! It works offline and without a daemon; when one answers on the control
//! socket, what it reports (its listeners, its TUN, its links) counts as
//! proof, so the port it holds is not "in use by another process".
//!
//! `mod.rs` is the runner and the report types; the checks are grouped by
//! what they look at: `system.rs` (the TUN device, capabilities, the
//! clock), `files.rs` (the config, the state directory, the identity, the
//! control socket), `network.rs` (the listen addresses, the NAT type, the
//! partners); `report.rs` prints the result for people.

mod files;
mod network;
mod report;
mod system;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::Value;
use umbra_config::Config;

use crate::control::{self, Request};
use crate::output;

/// How long doctor waits for a running daemon's answer: it should say
/// something quickly even when the daemon hangs.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(3);

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// It passed.
    Ok,
    /// Something may be wrong, or doctor cannot tell; the exit code stays 0.
    Warn,
    /// It is wrong; the exit code is 1.
    Fail,
    /// Not checked (not needed with this config, or it cannot be told now).
    Skip,
}

/// One line of the report: `{check, status, detail, fix}` in `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Check {
    /// What was checked, like `state directory` or `listen 198.18.0.1:443`.
    pub(crate) check: String,
    /// How it went.
    pub(crate) status: Status,
    /// What doctor found, one sentence.
    pub(crate) detail: String,
    /// One concrete sentence (a command to run or a config key to set);
    /// `None` when there is nothing to fix.
    pub(crate) fix: Option<String>,
}

impl Check {
    fn new(check: impl Into<String>, status: Status, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status,
            detail: detail.into(),
            fix: None,
        }
    }

    pub(crate) fn ok(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(check, Status::Ok, detail)
    }

    pub(crate) fn skip(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(check, Status::Skip, detail)
    }

    pub(crate) fn warn(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(check, Status::Warn, detail).with_fix(fix)
    }

    pub(crate) fn fail(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(check, Status::Fail, detail).with_fix(fix)
    }

    fn with_fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// A daemon that answered on the control socket: what it said.
#[derive(Debug, Clone)]
pub(crate) struct Running {
    /// Its `status` result.
    pub(crate) status: Value,
    /// Its `peers` result.
    pub(crate) peers: Value,
}

/// What every check may look at.
#[derive(Debug)]
pub(crate) struct Context {
    /// The config, if it loads.
    pub(crate) config: Option<Config>,
    /// The control socket (`--control`, else the config's).
    pub(crate) socket: PathBuf,
    /// The daemon on that socket, if one answers.
    pub(crate) running: Option<Running>,
    /// The user this runs as (effective uid).
    pub(crate) uid: Option<u32>,
    /// Who should own the state: the unit's `User=` if it sets one, else
    /// the user this runs as; and where that comes from, for the detail.
    pub(crate) owner: Option<(u32, String)>,
}

impl Context {
    /// The owner's name for a `chown` fix (the uid if it has none).
    pub(crate) fn user_name(&self) -> String {
        match &self.owner {
            Some((uid, _)) => system::user_name(*uid).unwrap_or_else(|| uid.to_string()),
            None => "the user that runs umbra".into(),
        }
    }
}

/// Who should own the state directory: the unit's `User=`, else the user
/// doctor runs as.
fn state_owner(uid: Option<u32>) -> Option<(u32, String)> {
    if let Some((user, unit)) = system::unit_user()
        && let Some(owner) = system::uid_of(&user)
    {
        return Some((owner, format!("the User= of {unit}")));
    }
    uid.map(|u| (u, "the user doctor runs as".to_string()))
}

/// Runs every check and prints the report: a table for people, or with
/// `json` an array of `{check, status, detail, fix}`. An error (exit 1)
/// when any check fails.
pub(crate) fn run(config_path: &Path, control_flag: Option<PathBuf>, json: bool) -> Result<()> {
    let (config, config_check) = files::config(config_path);
    let socket = control_flag.unwrap_or_else(|| {
        config
            .as_ref()
            .map(|c| c.control_socket.clone())
            .unwrap_or_else(|| PathBuf::from(umbra_config::DEFAULT_CONTROL_SOCKET))
    });
    let uid = system::effective_uid();
    let ctx = Context {
        config,
        running: ask_daemon(&socket),
        socket,
        uid,
        owner: state_owner(uid),
    };
    let mut checks = vec![config_check];
    checks.push(system::tun(&ctx));
    checks.push(system::capabilities(&ctx));
    checks.push(system::clock());
    checks.extend(files::state_dir(&ctx));
    checks.push(files::control_socket(&ctx));
    checks.extend(network::listen(&ctx));
    checks.push(network::nat(&ctx));
    checks.extend(network::partners(&ctx));

    if json {
        output::json(&serde_json::to_value(&checks)?)?;
    } else {
        report::print(&checks, ctx.running.is_some())?;
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        bail!(
            "{failed} of {} checks failed; each says how to fix it",
            checks.len()
        );
    }
    Ok(())
}

/// The running daemon's status and peers, if one answers on `socket`.
fn ask_daemon(socket: &Path) -> Option<Running> {
    if !socket.exists() {
        return None;
    }
    let status = control::call_within(socket, &Request::Status, DAEMON_TIMEOUT).ok()?;
    let peers = control::call_within(socket, &Request::Peers, DAEMON_TIMEOUT)
        .unwrap_or(Value::Array(Vec::new()));
    Some(Running { status, peers })
}
