//! Running host commands, and what the lab needs of the machine.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::{Error, Result};

/// Runs a command and returns its output whatever its exit status; an
/// error only if it cannot start.
pub fn run(args: &[&str]) -> Result<Output> {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            cmd: args.join(" "),
            source,
        })
}

/// Runs a command and returns its stdout; an error names the command and
/// its stderr if it fails.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = run(args)?;
    if !out.status.success() {
        return Err(Error::Failed {
            cmd: args.join(" "),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends signal `sig` (`TERM`, `HUP`, `KILL`, `INT`, …) to `pid`.
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    sh(&["kill", &format!("-{sig}"), &pid.to_string()]).map(drop)
}

/// The `VmRSS` line of a `/proc/<pid>/status` text, in KiB.
pub fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident memory (`VmRSS`) of process `pid`, in KiB; `None` once it is
/// gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    parse_rss_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Whether this process runs as root (effective uid 0, from
/// /proc/self/status: no libc call needed).
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0")
}

/// Whether `/dev/net/tun` exists (the daemons' TUN interfaces need it).
pub fn has_tun() -> bool {
    Path::new("/dev/net/tun").exists()
}

/// Whether `tool` is on PATH.
pub fn has_tool(tool: &str) -> bool {
    run(&["sh", "-c", &format!("command -v {tool}")]).is_ok_and(|o| o.status.success())
}

/// An error naming the first of `tools` (program, Debian package, why)
/// that is not installed.
pub fn require_tools(tools: &[(&str, &str, &str)]) -> Result<()> {
    for (tool, package, why) in tools {
        if !has_tool(tool) {
            return Err(Error::Missing(format!(
                "`{tool}` is needed {why}, and it is not installed: `apt-get install {package}`"
            )));
        }
    }
    Ok(())
}

/// Whether the process `pid` has exited (gone, or a zombie not yet reaped).
pub fn exited(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
