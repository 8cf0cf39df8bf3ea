//! Checks of files: the config, the state directory and the identity
//! (`docs/architecture.md, "State on disk"`), the control socket.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use umbra_config::{Config, ConfigError, keyfile};
use umbra_routing::{Identity, address};

use super::{Check, Context};

/// The state directory's mode (`docs/architecture.md, "State on disk"`).
const STATE_DIR_MODE: u32 = keyfile::STATE_DIR_MODE;
/// The identity file's mode.
const KEY_FILE_MODE: u32 = keyfile::KEY_FILE_MODE;

/// The config: loads and validates, with `umbra-config`'s own message
/// (file, line or key, reason) as the detail.
pub(super) fn config(path: &Path) -> (Option<Config>, Check) {
    const NAME: &str = "config";
    match Config::load(path) {
        Ok(c) if path.exists() => (
            Some(c),
            Check::ok(NAME, format!("{} parses and validates", path.display())),
        ),
        Ok(c) => (
            Some(c),
            Check::ok(
                NAME,
                format!(
                    "{} does not exist, so the defaults apply (`umbra init` writes a commented one)",
                    path.display()
                ),
            ),
        ),
        Err(e) => {
            let fix = match &e {
                ConfigError::Read { .. } => format!(
                    "make {} a readable file (`ls -l {}`), or point --config at the right one",
                    path.display(),
                    path.display()
                ),
                ConfigError::UnknownKey { key, .. } => format!(
                    "remove or rename the key `{key}` in {} (docs/config.md lists every key)",
                    path.display()
                ),
                _ => format!(
                    "edit {} where the message says (docs/config.md lists every key and its values)",
                    path.display()
                ),
            };
            (None, Check::fail(NAME, e.to_string(), fix))
        }
    }
}

/// The state directory (exists, owned by this user, mode 0700) and the
/// identity in it (owned by this user, mode 0600, a valid key).
pub(super) fn state_dir(ctx: &Context) -> Vec<Check> {
    let Some(config) = &ctx.config else {
        return vec![
            Check::skip("state directory", "the config does not load"),
            Check::skip("identity", "the config does not load"),
        ];
    };
    let dir = &config.state_dir;
    let dir_check = owned_with_mode(ctx, "state directory", dir, STATE_DIR_MODE, true);
    let unreadable =
        fs::metadata(config.identity_path()).is_err_and(|e| e.kind() != ErrorKind::NotFound);
    let id_check = if dir_check.status == super::Status::Fail && (!dir.is_dir() || unreadable) {
        Check::skip(
            "identity",
            format!(
                "cannot look into {} until the state directory is fixed",
                dir.display()
            ),
        )
    } else {
        identity(ctx, config)
    };
    vec![dir_check, id_check]
}

/// `path` exists, is owned by this user and has exactly `mode`; the fix is
/// the `chown` and `chmod` that make it so.
fn owned_with_mode(ctx: &Context, name: &str, path: &Path, mode: u32, dir: bool) -> Check {
    let shown = path.display();
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let what = if dir {
                "`umbra init` or the first `umbra run` creates it, mode 0700"
            } else {
                "`umbra init` or the first `umbra run` creates it, mode 0600"
            };
            return Check::warn(
                name,
                format!("{shown} does not exist yet; {what}"),
                "run `umbra init`",
            );
        }
        Err(e) => {
            return Check::fail(
                name,
                format!("cannot look at {shown}: {e}"),
                format!(
                    "run umbra doctor as the user that runs umbra, or let it into the parent directory of {shown}"
                ),
            );
        }
    };
    if meta.is_dir() != dir {
        let kind = if dir { "a directory" } else { "a regular file" };
        return Check::fail(
            name,
            format!("{shown} is not {kind}"),
            format!("move {shown} away and run `umbra init`"),
        );
    }
    let actual = meta.permissions().mode() & 0o7777;
    let mut wrong = Vec::new();
    let mut fixes = Vec::new();
    if let Some((uid, source)) = &ctx.owner
        && meta.uid() != *uid
    {
        let user = ctx.user_name();
        wrong.push(format!(
            "is owned by uid {} but umbra runs as {user} (uid {uid}, {source})",
            meta.uid()
        ));
        let recursive = if dir { "-R " } else { "" };
        fixes.push(format!("chown {recursive}{user} {shown}"));
    }
    if actual != mode {
        let why = if actual & 0o077 != 0 {
            "which lets other users in"
        } else {
            "which keeps its owner out"
        };
        wrong.push(format!("has mode {actual:04o}, not {mode:04o}, {why}"));
        fixes.push(format!("chmod {mode:o} {shown}"));
    }
    if wrong.is_empty() {
        Check::ok(
            name,
            format!("{shown}: mode {mode:04o}, owned by {}", ctx.user_name()),
        )
    } else {
        Check::fail(
            name,
            format!("{shown} {}", wrong.join(" and ")),
            format!("run `{}`", fixes.join(" && ")),
        )
    }
}

/// The identity: owned by this user, mode 0600, one valid key.
fn identity(ctx: &Context, config: &Config) -> Check {
    const NAME: &str = "identity";
    let path = config.identity_path();
    let check = owned_with_mode(ctx, NAME, &path, KEY_FILE_MODE, false);
    if check.status != super::Status::Ok {
        return check;
    }
    match keyfile::read_seed(&path) {
        Ok(seed) => {
            let id = Identity::from_seed(&seed);
            let addr = address::address_for_key(&id.public(), config.address_prefix);
            Check::ok(
                NAME,
                format!(
                    "{}: mode 0600, owned by {}, the key of {addr}",
                    path.display(),
                    ctx.user_name()
                ),
            )
        }
        Err(e) => Check::fail(
            NAME,
            e.to_string(),
            format!(
                "restore {} from a backup, or move it away and run `umbra init` for a new identity (a new address: partners must make new agreements)",
                path.display()
            ),
        ),
    }
}

/// The control socket: it answers, or `umbra run` can bind it (its
/// directory, or the nearest existing parent, is writable).
pub(super) fn control_socket(ctx: &Context) -> Check {
    const NAME: &str = "control socket";
    let socket = &ctx.socket;
    let shown = socket.display();
    if ctx.running.is_some() {
        return Check::ok(NAME, format!("the daemon answers on {shown}"));
    }
    let set_it =
        "or set `control_socket` in the config to a path in a directory this user can write";
    match fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            return match std::os::unix::net::UnixStream::connect(socket) {
                Err(e) if e.kind() == ErrorKind::PermissionDenied => Check::fail(
                    NAME,
                    format!("{shown} exists but this user may not use it"),
                    "run umbra doctor as the daemon's user or root",
                ),
                _ => Check::ok(
                    NAME,
                    format!("{shown} is a stale socket nobody answers on; `umbra run` replaces it"),
                ),
            };
        }
        Ok(_) => {
            return Check::fail(
                NAME,
                format!("{shown} exists and is not a socket, so `umbra run` refuses to start"),
                format!("remove it (`rm {shown}`), {set_it}"),
            );
        }
        Err(_) => {}
    }
    let Some(dir) = socket.parent() else {
        return Check::fail(
            NAME,
            format!("{shown} has no directory"),
            "set `control_socket` to an absolute path like /run/umbra/control.sock",
        );
    };
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p,
            None => break,
        }
    }
    match writable(existing) {
        Ok(()) if existing == dir => Check::ok(
            NAME,
            format!(
                "{} is writable, so `umbra run` can bind {shown}",
                dir.display()
            ),
        ),
        Ok(()) => Check::ok(
            NAME,
            format!(
                "{} does not exist; `umbra run` creates it (mode 0755) in {}",
                dir.display(),
                existing.display()
            ),
        ),
        Err(e) => Check::fail(
            NAME,
            format!(
                "{} is not writable by this user ({e}), so `umbra run` cannot bind {shown}",
                existing.display()
            ),
            format!(
                "run `mkdir -p {d} && chown {} {d}` (the unit's RuntimeDirectory=umbra makes /run/umbra), {set_it}",
                ctx.user_name(),
                d = dir.display()
            ),
        ),
    }
}

/// Whether this process can create a file in `dir`: it makes one and
/// removes it at once (the only way to know without `access(2)`).
fn writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".umbra-doctor-{}", std::process::id()));
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    fn ctx(uid: Option<u32>) -> Context {
        Context {
            config: None,
            socket: "/nonexistent/control.sock".into(),
            running: None,
            uid,
            owner: uid.map(|u| (u, "the test".to_string())),
        }
    }

    #[test]
    fn modes_and_their_fixes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uid = fs::metadata(dir.path()).expect("meta").uid();
        let c = ctx(Some(uid));
        let path = dir.path();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
        let check = owned_with_mode(&c, "state directory", path, 0o700, true);
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("mode 0755"), "{check:?}");
        assert_eq!(
            check.fix.as_deref(),
            Some(format!("run `chmod 700 {}`", path.display()).as_str())
        );
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).expect("chmod");
        assert_eq!(
            owned_with_mode(&c, "d", path, 0o700, true).status,
            Status::Ok
        );

        let key = path.join("identity.key");
        fs::write(&key, "00").expect("write");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
        let check = owned_with_mode(&ctx(Some(uid + 1)), "identity", &key, 0o600, false);
        assert_eq!(check.status, Status::Fail);
        let fix = check.fix.unwrap_or_default();
        assert!(
            fix.contains(&format!(" {}", key.display())) && fix.contains("chown "),
            "{fix}"
        );
        assert!(
            fix.contains(&format!("chown {} {}", uid + 1, key.display())) || fix.contains("chown "),
            "{fix}"
        );
        assert!(
            fix.contains(&format!("chmod 600 {}", key.display())),
            "{fix}"
        );
        // A file where a directory belongs, and a missing one.
        assert_eq!(
            owned_with_mode(&c, "d", &key, 0o700, true).status,
            Status::Fail
        );
        let missing = owned_with_mode(&c, "d", &path.join("none"), 0o700, true);
        assert_eq!(missing.status, Status::Warn);
        assert_eq!(missing.fix.as_deref(), Some("run `umbra init`"));
    }

    #[test]
    fn a_bad_config_fails_with_its_own_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("umbra.toml");
        fs::write(&path, "[tun]\nmtu = 100\n").expect("write");
        let (loaded, check) = config(&path);
        assert!(loaded.is_none());
        assert_eq!(check.status, Status::Fail);
        assert!(
            check
                .detail
                .contains("[tun] mtu = 100 is below the minimum 1280"),
            "{check:?}"
        );
        fs::write(&path, "[tun]\nbogus = 1\n").expect("write");
        let (_, check) = config(&path);
        assert!(check.fix.is_some_and(|f| f.contains("`bogus`")));
        let (loaded, check) = config(&dir.path().join("absent.toml"));
        assert!(loaded.is_some());
        assert_eq!(check.status, Status::Ok);
    }
}
