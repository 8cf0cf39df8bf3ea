//! [`UmbraConfig`]: writing a daemon's `umbra.toml`, `[[peer]]` entries
//! included (docs/config.md).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One `[[peer]]` entry: an agreement with another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's public key, hex.
    pub key: String,
    /// Where to reach it, `ip:port`.
    pub endpoints: Vec<String>,
    /// The agreement's terms (`1TB/30d`); `None` leaves the default.
    pub terms: Option<String>,
}

impl Peer {
    /// An agreement with `key` at `ip:port`, with `terms`.
    pub fn new(key: &str, endpoint: impl std::fmt::Display, terms: Option<&str>) -> Peer {
        Peer {
            key: key.to_string(),
            endpoints: vec![endpoint.to_string()],
            terms: terms.map(str::to_string),
        }
    }

    /// An agreement with `key` that names no endpoint: the peer is reached
    /// by NAT traversal.
    pub fn unreachable(key: &str, terms: Option<&str>) -> Peer {
        Peer {
            key: key.to_string(),
            endpoints: Vec::new(),
            terms: terms.map(str::to_string),
        }
    }

    /// Its `[[peer]]` table as TOML.
    pub fn toml(&self) -> String {
        let mut t = format!(
            "[[peer]]\nkey = \"{}\"\nendpoints = [{}]\n",
            self.key,
            quoted(&self.endpoints)
        );
        if let Some(terms) = &self.terms {
            let _ = writeln!(t, "terms = \"{terms}\"");
        }
        t
    }
}

/// A daemon's config: its files live in one directory (`state/`,
/// `control.sock`, `umbra.toml`, `umbra.log`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UmbraConfig {
    /// The daemon's directory.
    pub dir: PathBuf,
    /// A first comment line, if any.
    pub comment: Option<String>,
    /// Top-level keys (`anonymity = "fast"`, …), as TOML text, put right
    /// after `state_dir` and `control_socket`.
    pub top: String,
    /// The home node's key (`[home]`).
    pub home: Option<String>,
    /// `[listen] https`, `ip:port` each; `None` writes no `[listen]`.
    pub listen: Option<Vec<String>>,
    /// More TOML, put after `[listen]` and before the peers.
    pub extra: String,
    /// The `[[peer]]` entries.
    pub peers: Vec<Peer>,
}

impl UmbraConfig {
    /// A config in `dir` with nothing but its files set.
    pub fn new(dir: &Path) -> UmbraConfig {
        UmbraConfig {
            dir: dir.to_path_buf(),
            ..UmbraConfig::default()
        }
    }

    /// `<dir>/umbra.toml`.
    pub fn path(&self) -> PathBuf {
        self.dir.join("umbra.toml")
    }

    /// `<dir>/state`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// `<dir>/control.sock`.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// `<dir>/umbra.log`.
    pub fn log(&self) -> PathBuf {
        self.dir.join("umbra.log")
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        let mut t = String::new();
        if let Some(c) = &self.comment {
            let _ = writeln!(t, "# {c}");
        }
        let _ = write!(
            t,
            "state_dir = \"{}\"\ncontrol_socket = \"{}\"\n{}",
            self.state_dir().display(),
            self.socket().display(),
            self.top
        );
        if let Some(home) = &self.home {
            let _ = write!(t, "\n[home]\nkey = \"{home}\"\n");
        }
        if let Some(listen) = &self.listen {
            let _ = write!(t, "\n[listen]\nhttps = [{}]\n", quoted(listen));
        }
        t.push_str(&self.extra);
        for p in &self.peers {
            t.push('\n');
            t.push_str(&p.toml());
        }
        t
    }

    /// Makes the directory and writes `umbra.toml`.
    pub fn write(&self) -> crate::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir).map_err(crate::Error::io(&self.dir))?;
        let path = self.path();
        std::fs::write(&path, self.render()).map_err(crate::Error::io(&path))?;
        Ok(path)
    }
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_with_home_listen_and_peers() {
        let mut c = UmbraConfig::new(Path::new("/tmp/n0"));
        c.top = "anonymity = \"fast\"\n".into();
        c.home = Some("ab".into());
        c.listen = Some(vec!["198.18.10.1:443".into()]);
        c.peers = vec![
            Peer::new("cd", "198.18.10.2:443", Some("1TB/30d")),
            Peer::new("ef", "198.18.11.2:443", None),
        ];
        assert_eq!(
            c.render(),
            "state_dir = \"/tmp/n0/state\"\ncontrol_socket = \"/tmp/n0/control.sock\"\n\
             anonymity = \"fast\"\n\n[home]\nkey = \"ab\"\n\n[listen]\nhttps = [\"198.18.10.1:443\"]\n\
             \n[[peer]]\nkey = \"cd\"\nendpoints = [\"198.18.10.2:443\"]\nterms = \"1TB/30d\"\n\
             \n[[peer]]\nkey = \"ef\"\nendpoints = [\"198.18.11.2:443\"]\n"
        );
    }
}
