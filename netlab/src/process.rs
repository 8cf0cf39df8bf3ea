//! [`Proc`]: a process the lab started, its output in a log file.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result, cmd};

/// A process (usually in a namespace, from [`crate::Netns::command`]) with
/// stdout and stderr in a log file. In its own process group, so a Ctrl-C
/// in the terminal reaches only the program that runs the lab. Killed on
/// drop.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    pid: u32,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr into `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> Result<Proc> {
        let out = fs::File::create(log).map_err(Error::io(log))?;
        let err = out.try_clone().map_err(Error::io(log))?;
        let what = format!("{cmd:?}");
        let child = crate::registry::making(|_| {
            cmd.stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .map_err(|source| Error::Spawn { cmd: what, source })
        })?;
        Ok(Proc {
            pid: child.id(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Whether it has exited, from a shared reference (reads /proc).
    pub fn exited(&self) -> bool {
        self.child.is_none() || cmd::exited(self.pid)
    }

    /// Waits up to `limit` for it to exit on its own; `None` if it still
    /// runs.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_wait() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends signal `sig` (`TERM`, `HUP`, `INT`, …).
    pub fn signal(&self, sig: &str) -> Result<()> {
        cmd::signal(self.pid, sig)
    }

    /// Stops it: SIGTERM, then SIGKILL after `grace`. Its exit status, if
    /// it was still ours to reap.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.child.as_ref()?;
        let _ = self.signal("TERM");
        if let Some(s) = self.wait(grace) {
            return Some(s);
        }
        self.kill()
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = c.kill();
        c.wait().ok()
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
