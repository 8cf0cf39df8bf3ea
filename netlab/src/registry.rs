//! The process-wide record of what the lab made, so a signal or a panic can
//! remove it all. Everything is recorded before it is made, under the
//! record's lock; once a cleanup has begun, nothing more is made.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{Error, Result, cmd};

/// How long stopped daemons get to exit before they are killed.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) namespaces: Vec<String>,
    pub(crate) daemons: Vec<u32>,
    pub(crate) dirs: Vec<PathBuf>,
    pub(crate) cancelled: bool,
    pub(crate) done: Cleanup,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    namespaces: Vec::new(),
    daemons: Vec::new(),
    dirs: Vec::new(),
    cancelled: false,
    done: Cleanup {
        daemons_stopped: 0,
        namespaces_deleted: 0,
        dirs_removed: Vec::new(),
        left: Vec::new(),
    },
});

pub(crate) fn lock() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` under the record's lock unless a cleanup has begun.
pub(crate) fn making<T>(f: impl FnOnce(&mut Registry) -> Result<T>) -> Result<T> {
    let mut r = lock();
    if r.cancelled {
        return Err(Error::Cancelled);
    }
    f(&mut r)
}

/// What a cleanup removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleanup {
    /// Daemons stopped.
    pub daemons_stopped: usize,
    /// Namespaces deleted.
    pub namespaces_deleted: usize,
    /// Directories removed.
    pub dirs_removed: Vec<PathBuf>,
    /// Namespaces that could not be deleted.
    pub left: Vec<String>,
}

impl std::fmt::Display for Cleanup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped {} daemons, deleted {} namespaces",
            self.daemons_stopped, self.namespaces_deleted
        )?;
        for d in &self.dirs_removed {
            write!(f, ", removed {}", d.display())?;
        }
        if !self.left.is_empty() {
            write!(
                f,
                "\nwarning: could not delete {}: remove with `ip netns del NAME`",
                self.left.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Kills what runs in namespace `name` and deletes it; whether it is gone.
pub(crate) fn delete_namespace(name: &str) -> bool {
    if let Ok(out) = cmd::run(&["ip", "netns", "pids", name]) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = cmd::run(&["kill", "-KILL", pid]);
        }
    }
    let deleted = cmd::run(&["ip", "netns", "del", name]).is_ok_and(|o| o.status.success());
    deleted || !std::path::Path::new("/run/netns").join(name).exists()
}

/// Stops the daemons `pids`: SIGTERM to all, then SIGKILL to those still
/// running after [`STOP_GRACE`].
pub(crate) fn stop_pids(pids: &[u32]) {
    for pid in pids {
        let _ = cmd::run(&["kill", "-TERM", &pid.to_string()]);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && !pids.iter().all(|&p| cmd::exited(p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in pids.iter().filter(|&&p| !cmd::exited(p)) {
        let _ = cmd::run(&["kill", "-KILL", &pid.to_string()]);
    }
}

/// Stops every daemon, deletes every namespace and directory the lab still
/// holds in this process, and returns what was removed since the process
/// started (by handles dropping too). With `cancel`, nothing more is made
/// afterwards.
pub(crate) fn cleanup_all(cancel: bool) -> Cleanup {
    cleanup_locked(&mut lock(), cancel)
}

fn cleanup_locked(r: &mut Registry, cancel: bool) -> Cleanup {
    r.cancelled |= cancel;
    let daemons = std::mem::take(&mut r.daemons);
    stop_pids(&daemons);
    r.done.daemons_stopped += daemons.len();
    for ns in std::mem::take(&mut r.namespaces) {
        if delete_namespace(&ns) {
            r.done.namespaces_deleted += 1;
        } else {
            r.done.left.push(ns);
        }
    }
    for dir in std::mem::take(&mut r.dirs) {
        if std::fs::remove_dir_all(&dir).is_ok() {
            r.done.dirs_removed.push(dir);
        }
    }
    r.done.clone()
}

/// On any of `signals`: a cleanup of everything (nothing more is made),
/// then `report` with the signal and what was removed, then exit 130.
pub fn cleanup_on_signals(
    signals: &[i32],
    report: impl Fn(i32, &Cleanup) + Send + 'static,
) -> Result<()> {
    let mut sigs = signal_hook::iterator::Signals::new(signals).map_err(|source| Error::Spawn {
        cmd: "a signal handler".into(),
        source,
    })?;
    std::thread::Builder::new()
        .name("netlab-signals".into())
        .spawn(move || {
            if let Some(sig) = sigs.forever().next() {
                // The record stays locked until the exit: the program's
                // other threads make and remove nothing in between.
                let mut r = lock();
                let done = cleanup_locked(&mut r, true);
                report(sig, &done);
                std::process::exit(130);
            }
        })
        .map_err(|source| Error::Spawn {
            cmd: "the signal thread".into(),
            source,
        })?;
    Ok(())
}

/// On a panic anywhere in the process: a cleanup of everything, then the
/// usual panic message. For programs (a test process shares itself among
/// tests: there the handles' `Drop` cleans up instead).
pub fn cleanup_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        cleanup_all(true);
        default(info);
    }));
}
