//! The state directory: the identity key, the single-daemon lock.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use umbra_config::{Config, ConfigError, keyfile};
use umbra_routing::Identity;

/// Name of the lock file in the state directory; held while a daemon runs.
const LOCK_FILE: &str = "umbra.lock";

/// Creates the state directory (mode 0700) if it is missing.
pub(crate) fn ensure_state_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
    }
    Ok(())
}

/// Loads the identity, or `None` if the state directory has none yet.
pub(crate) fn load_identity(config: &Config) -> Result<Option<Identity>> {
    match keyfile::read_seed(&config.identity_path()) {
        Ok(seed) => Ok(Some(Identity::from_seed(&seed))),
        Err(ConfigError::KeyMissing { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Loads the identity, creating and storing a new one if there is none.
/// Returns the identity and whether it was created now.
pub(crate) fn load_or_create_identity(config: &Config) -> Result<(Identity, bool)> {
    if let Some(id) = load_identity(config)? {
        return Ok((id, false));
    }
    ensure_state_dir(&config.state_dir)?;
    let id = Identity::generate();
    keyfile::write_seed(&config.identity_path(), &id.seed())?;
    Ok((id, true))
}

/// The identity, or a clear error saying how to make one.
pub(crate) fn require_identity(config: &Config) -> Result<Identity> {
    match load_identity(config)? {
        Some(id) => Ok(id),
        None => bail!(
            "no identity in {}: run `umbra init` or `umbra run` first",
            config.state_dir.display()
        ),
    }
}

/// An exclusive lock on the state directory, held for the daemon's life so a
/// second daemon on the same state is refused.
#[derive(Debug)]
pub(crate) struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes the lock or fails with a clear error.
    pub(crate) fn acquire(state_dir: &Path) -> Result<StateLock> {
        let path = state_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| not_writable(state_dir, e))
            .with_context(|| format!("opening lock file {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).ok();
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => bail!(
                "another umbra daemon is already running on state directory {} (it holds {})",
                state_dir.display(),
                path.display()
            ),
            Err(fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

/// Says what to do when the state directory refuses a write: the daemon
/// runs as a user who does not own it, or it is on a read-only mount.
fn not_writable(dir: &Path, e: std::io::Error) -> anyhow::Error {
    /// `EROFS`.
    const READ_ONLY_FS: i32 = 30;
    if e.kind() == std::io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(READ_ONLY_FS) {
        anyhow::anyhow!(
            "the state directory {} is not writable here ({e}): run umbra as the user that \
             owns it (`ls -ld {}`), or point state_dir at a writable directory",
            dir.display(),
            dir.display()
        )
    } else {
        e.into()
    }
}
