//! [`Lab`]: names, a work directory, and the teardown of one program's lab.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::registry::{self, Cleanup};
use crate::{Error, Netns, Result, cmd};

/// One program's lab: its namespaces are named `<prefix><pid>-<tag>`, so
/// [`Lab::sweep_stale`] can tell those of a dead earlier run; its optional
/// work directory holds configs, state and logs.
///
/// Namespaces and daemons clean up after themselves when dropped;
/// [`Lab::cleanup`] (also run on drop) removes whatever is left in this
/// process and says what was removed. The record behind it is
/// process-wide: use one lab per process.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    dir: Option<PathBuf>,
}

impl Lab {
    /// A lab whose namespaces are named `<prefix><pid>-<tag>`.
    pub fn new(prefix: &str) -> Lab {
        Lab {
            prefix: prefix.to_string(),
            dir: None,
        }
    }

    /// Makes `dir` (mode 0700, which must not exist yet) the lab's work
    /// directory, removed at cleanup.
    pub fn make_dir(&mut self, dir: impl Into<PathBuf>) -> Result<&Path> {
        let dir = dir.into();
        registry::making(|r| {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(Error::io(&dir))?;
            r.dirs.push(dir.clone());
            Ok(())
        })?;
        Ok(self.dir.insert(dir))
    }

    /// The work directory, if [`Lab::make_dir`] made one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The name the namespace `tag` gets.
    pub fn name(&self, tag: &str) -> String {
        format!("{}{}-{tag}", self.prefix, std::process::id())
    }

    /// A new namespace `<prefix><pid>-<tag>` with loopback up.
    pub fn netns(&self, tag: &str) -> Result<Netns> {
        Netns::create(&self.name(tag))
    }

    /// Deletes namespaces `<prefix><pid>-…` whose process is gone (killed
    /// with SIGKILL, it could not clean up), with what runs in them, and
    /// the work directories `work_dir(pid)` names. Returns their names.
    pub fn sweep_stale(&self, work_dir: impl Fn(u32) -> Option<PathBuf>) -> Vec<String> {
        let list = cmd::sh(&["ip", "netns", "list"]).unwrap_or_default();
        let mut removed = Vec::new();
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(pid) = name
                .strip_prefix(&self.prefix)
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            // A zombie has an empty command line; a live run has one.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if !cmdline.is_empty() {
                continue;
            }
            if registry::delete_namespace(name) {
                removed.push(name.to_string());
            }
            if let Some(dir) = work_dir(pid) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        removed.sort();
        removed
    }

    /// Stops every daemon and deletes every namespace and directory still
    /// held, and says what was removed in this process (including what
    /// handles removed as they dropped). Safe to call twice.
    pub fn cleanup(&self) -> Cleanup {
        registry::cleanup_all(false)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}
