//! What `umbra doctor` prints for people: one row per check, its fix
//! under it, and a summary on stderr (`docs/cli.md, "Output"`).

use anyhow::Result;

use super::{Check, Status};
use crate::output;

/// Prints the checks as an aligned table, each fix indented under its row.
pub(super) fn print(checks: &[Check], running: bool) -> Result<()> {
    let width = checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
    for c in checks {
        output::line(&format!(
            "{:4}  {:width$}  {}",
            label(c.status),
            c.check,
            c.detail
        ))?;
        if let Some(fix) = &c.fix {
            output::line(&format!("{:4}  {:width$}  fix: {fix}", "", ""))?;
        }
    }
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    eprintln!(
        "{} ok, {} warnings, {} failed, {} skipped ({})",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail),
        count(Status::Skip),
        if running {
            "a daemon answers on the control socket"
        } else {
            "no daemon answers on the control socket"
        }
    );
    Ok(())
}

/// The row's first column: failures stand out.
fn label(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Warn => "warn",
        Status::Fail => "FAIL",
        Status::Skip => "skip",
    }
}
