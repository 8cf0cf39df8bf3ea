//! The identity key file, `STATE_DIR/identity.key` (`docs/architecture.md, "State on
//! disk"`).
//!
//! It holds one line: the Ed25519 secret seed as 64 hex characters. This module only
//! stores and loads the 32 bytes; what they mean is the crypto code's business.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use crate::ConfigError;

/// Mode of the key file: read and write for its owner only.
pub const KEY_FILE_MODE: u32 = 0o600;
/// Mode of a state directory this module creates.
pub const STATE_DIR_MODE: u32 = 0o700;

/// Length of the seed in bytes.
pub const SEED_LEN: usize = 32;

/// Longest file read, in bytes: the line plus room for a CRLF. Anything longer is corrupt,
/// and this stops a huge file being read into memory.
const MAX_FILE_LEN: u64 = 2 * SEED_LEN as u64 + 2;

/// Reads the secret seed from a key file: one line of 64 hex characters, with an optional
/// trailing newline.
///
/// Errors, each naming the file: [`ConfigError::KeyMissing`] if there is no file,
/// [`ConfigError::KeyMode`] if the mode grants any group or other permission (the message
/// says to run `chmod 600`), and [`ConfigError::KeyCorrupt`] if the content is not 64 hex
/// characters.
pub fn read_seed(path: &Path) -> Result<[u8; SEED_LEN], ConfigError> {
    let read_err = |error| ConfigError::Read {
        path: path.to_owned(),
        error,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ConfigError::KeyMissing {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(read_err(e)),
    };
    // Check the file we opened, not the path again, so nothing can swap it in between.
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(ConfigError::KeyCorrupt {
            path: path.to_owned(),
            found: "found something that is not a regular file".to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::KeyMode {
            path: path.to_owned(),
            mode,
        });
    }

    let mut bytes = Vec::with_capacity(MAX_FILE_LEN as usize + 1);
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    let corrupt = |found: String| ConfigError::KeyCorrupt {
        path: path.to_owned(),
        found,
    };
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(corrupt(format!("found more than {MAX_FILE_LEN} bytes")));
    }
    let line = bytes
        .strip_suffix(b"\n")
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .unwrap_or(&bytes);
    if line.len() != 2 * SEED_LEN {
        // Say only the length: the content is a secret, even when damaged.
        return Err(corrupt(format!("found {} bytes", line.len())));
    }
    let mut seed = [0u8; SEED_LEN];
    hex::decode_to_slice(line, &mut seed)
        .map_err(|_| corrupt("found a character that is not hex".to_owned()))?;
    Ok(seed)
}

/// Writes the seed to a new key file with mode 0600, creating the parent directory with
/// mode 0700 if it is missing.
///
/// Never overwrites: if the file exists this fails with [`ConfigError::KeyExists`] and
/// leaves it as it was.
pub fn write_seed(path: &Path, seed: &[u8; SEED_LEN]) -> Result<(), ConfigError> {
    let write_err = |error| ConfigError::Write {
        path: path.to_owned(),
        error,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        DirBuilder::new()
            .recursive(true)
            .mode(STATE_DIR_MODE)
            .create(parent)
            .map_err(write_err)?;
    }
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(KEY_FILE_MODE)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(ConfigError::KeyExists {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(write_err(e)),
    };
    let mut line = hex::encode(seed);
    line.push('\n');
    if let Err(e) = file
        .write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
    {
        // A half-written key would be reported as corrupt forever; remove it so the next
        // run can try again.
        drop(file);
        let _ = fs::remove_file(path);
        return Err(write_err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn key_path() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("identity.key");
        (dir, path)
    }

    fn write_with_mode(path: &Path, content: &[u8], mode: u32) {
        fs::write(path, content).expect("write");
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn round_trip() {
        let (_dir, path) = key_path();
        let seed: [u8; 32] = std::array::from_fn(|i| (i * 7 + 1) as u8);
        write_seed(&path, &seed).expect("write");
        assert_eq!(read_seed(&path).expect("read"), seed);

        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).expect("read text");
        assert_eq!(text, format!("{}\n", hex::encode(seed)));
    }

    #[test]
    fn accepts_no_newline_crlf_and_uppercase() {
        let (_dir, path) = key_path();
        let seed = [0xab; 32];
        for content in ["ab".repeat(32), format!("{}\r\n", "AB".repeat(32))] {
            let _ = fs::remove_file(&path);
            write_with_mode(&path, content.as_bytes(), 0o600);
            assert_eq!(read_seed(&path).expect("read"), seed, "{content:?}");
        }
    }

    #[test]
    fn creates_the_state_dir_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/umbra/identity.key");
        write_seed(&path, &[1; 32]).expect("write");
        let parent = path.parent().expect("parent");
        let mode = fs::metadata(parent).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn mode_0644_is_rejected_with_chmod_advice() {
        let (_dir, path) = key_path();
        write_with_mode(&path, "ab".repeat(32).as_bytes(), 0o644);
        let err = read_seed(&path).expect_err("0644 must be rejected");
        assert!(
            matches!(err, ConfigError::KeyMode { mode: 0o644, .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("0644"), "{message}");
        assert!(
            message.contains(&format!("run chmod 600 {}", path.display())),
            "{message}"
        );
        assert!(!message.contains('\n'));

        // Group read alone is enough to refuse.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(matches!(
            read_seed(&path),
            Err(ConfigError::KeyMode { mode: 0o640, .. })
        ));
        // Owner read-only is fine.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).expect("chmod");
        assert_eq!(read_seed(&path).expect("0400 is private"), [0xab; 32]);
    }

    #[test]
    fn corrupt_content_is_rejected_without_echoing_it() {
        let (_dir, path) = key_path();
        let cases: [(Vec<u8>, &str); 5] = [
            (b"abcd\n".to_vec(), "found 4 bytes"),
            (Vec::new(), "found 0 bytes"),
            (format!("{}zz\n", "ab".repeat(31)).into_bytes(), "not hex"),
            (
                format!("{}\n\n", "ab".repeat(32)).into_bytes(),
                "found 65 bytes",
            ),
            ("ab".repeat(100).into_bytes(), "more than"),
        ];
        for (content, why) in cases {
            let _ = fs::remove_file(&path);
            write_with_mode(&path, &content, 0o600);
            let err = read_seed(&path).expect_err("corrupt");
            assert!(matches!(err, ConfigError::KeyCorrupt { .. }), "{err:?}");
            let message = err.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(
                message.contains("is corrupt: expected 64 hex characters"),
                "{message}"
            );
            assert!(message.contains(why), "{message}");
            assert!(!message.contains("abab"), "the secret leaked: {message}");
        }
    }

    #[test]
    fn missing_file_is_key_missing() {
        let (_dir, path) = key_path();
        let err = read_seed(&path).expect_err("missing");
        assert!(matches!(err, ConfigError::KeyMissing { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(err.to_string().contains("umbra init"));
    }

    #[test]
    fn write_seed_never_overwrites() {
        let (_dir, path) = key_path();
        write_seed(&path, &[1; 32]).expect("first write");
        let err = write_seed(&path, &[2; 32]).expect_err("second write must fail");
        assert!(matches!(err, ConfigError::KeyExists { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
        assert_eq!(read_seed(&path).expect("read"), [1; 32]);
    }
}
