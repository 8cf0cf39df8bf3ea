#![doc = include_str!("../README.md")]

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write as _};
use std::net::{Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[cfg(test)]
mod config_tests;
pub mod control;
mod error;
pub mod keyfile;
mod parse;
mod rate;
mod template;
mod terms;
mod validate;
mod values;

pub use error::ConfigError;
pub use rate::ByteRate;
pub use template::default_config_text;
pub use terms::Terms;
pub use validate::KEY_LABEL_LEN as NAME_KEY_LABEL_LEN;
pub use values::{Anonymity, PUBLIC_KEY_LEN, ParseError, PublicKey};

/// Where the daemon and the CLI look for the config file unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/umbra/umbra.toml";
/// The default state directory: the identity key and the database.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/umbra";
/// The default control socket, which the CLI uses to talk to the daemon.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/umbra/control.sock";
/// The default first byte of every address (`docs/protocol.md, "Identity and
/// addresses"`): addresses in `600::/8`, subnets in `700::/8`.
pub const DEFAULT_ADDRESS_PREFIX: u8 = 0x06;

/// Worker threads by default: one, so a cell's whole path through a node (link
/// reader, routing, link writer, TLS) stays on one thread and its hand-offs are
/// not wake-ups of another core (`docs/architecture.md, "Performance"`).
pub const DEFAULT_THREADS: u16 = 1;

/// The most worker threads `threads` may ask for.
pub const MAX_THREADS: u16 = 256;

/// File name of the identity key inside the state directory.
pub const IDENTITY_FILE: &str = "identity.key";
/// File name of the SQLite database inside the state directory.
pub const DATABASE_FILE: &str = "umbra.db";

/// The default TUN interface name.
pub const DEFAULT_TUN_NAME: &str = "umbra0";
/// The longest TUN interface name Linux accepts, in bytes (`IFNAMSIZ` minus the NUL).
pub const MAX_TUN_NAME_LEN: usize = 15;
/// The default TUN MTU, in bytes.
pub const DEFAULT_MTU: u32 = 65535;
/// The smallest TUN MTU, in bytes: the smallest MTU IPv6 allows (RFC 8200).
pub const MIN_MTU: u32 = 1280;
/// The largest TUN MTU, in bytes.
pub const MAX_MTU: u32 = 65535;
/// The default HTTPS listener: every address, port 443.
pub const DEFAULT_HTTPS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V6(Ipv6Addr::UNSPECIFIED), 443);

/// The default link padding rate with `anonymity = "strong"`: 32 KiB/s, about 27 cells a
/// second each way on every link.
pub const DEFAULT_PADDING_RATE: ByteRate = ByteRate::per_sec(32 * 1024);
/// The highest link padding rate: 1 MiB/s. Padding is paced one cell at a time, and
/// timers are not much finer than the 1.1 ms between cells at this rate.
pub const MAX_PADDING_RATE: ByteRate = ByteRate::per_sec(1024 * 1024);

/// The default ACME directory: Let's Encrypt's production server.
pub const DEFAULT_ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The whole config file, with every default filled in.
///
/// Build one with [`Config::load`] or [`Config::from_toml`], which also
/// [validate](Config::validate) it, or start from [`Config::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Directory of the identity key and the database. Absolute.
    pub state_dir: PathBuf,
    /// The control socket the CLI talks to. Absolute.
    pub control_socket: PathBuf,
    /// First byte of every address; even, because `address_prefix | 1` is the subnet
    /// prefix (`docs/protocol.md, "Identity and addresses"`).
    pub address_prefix: u8,
    /// How circuits pick their relays (`docs/architecture.md, "Path selection"`).
    pub anonymity: Anonymity,
    /// Worker threads of the daemon's async runtime, which carries the data path
    /// (`docs/architecture.md, "Performance"`).
    pub threads: u16,
    /// The TUN interface, `[tun]`.
    pub tun: TunConfig,
    /// Where links are accepted, `[listen]`.
    pub listen: ListenConfig,
    /// What non-link HTTPS requests see, `[cover]`.
    pub cover: CoverConfig,
    /// The pinned first hop, `[home]`.
    pub home: HomeConfig,
    /// Half-agreements from the config, the `[[peer]]` tables (`docs/protocol.md,
    /// "Agreements"`).
    pub peers: Vec<PeerConfig>,
    /// Destinations with their own anonymity setting, the `[[route]]` tables.
    pub routes: Vec<RouteConfig>,
    /// Prometheus metrics, `[metrics]`.
    pub metrics: MetricsConfig,
    /// Link padding with `anonymity = "strong"`, `[padding]`.
    pub padding: PaddingConfig,
    /// Behind a NAT, `[nat]`.
    pub nat: NatConfig,
    /// Agreements made over the overlay, `[agreements]`.
    pub agreements: AgreementsConfig,
    /// The `.umbra` DNS responder, `[dns]`.
    pub dns: DnsConfig,
    /// The operator's petnames, `[names]`: `<label>.umbra` stands for the key
    /// on this node only.
    pub names: BTreeMap<String, PublicKey>,
    /// The SOCKS5 proxy into the overlay, `[socks]`.
    pub socks: SocksConfig,
    /// Overlay TCP ports forwarded to local sockets, the `[[expose]]` tables.
    pub expose: Vec<ExposeConfig>,
}

/// The `[socks]` table: a SOCKS5 proxy on loopback whose `CONNECT`s reach
/// overlay nodes through the userspace TCP stack, so apps need no TUN
/// (`docs/architecture.md`, "Apps without the TUN").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SocksConfig {
    /// Loopback address to accept SOCKS5 on; `None` turns it off.
    pub listen: Option<SocketAddr>,
}

/// An `[[expose]]` table: overlay TCP to this node's address on `port` is
/// accepted by the userspace stack and forwarded to `to`, as Tor's
/// `HiddenServicePort` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExposeConfig {
    /// The overlay port, 1 to 65535, outside [`SOCKS_PORTS`].
    pub port: u16,
    /// The local socket connections are forwarded to.
    pub to: SocketAddr,
}

/// The local ports the userspace stack takes for SOCKS connections. They
/// lie above Linux's default ephemeral range (32768 to 60999), so with the
/// TUN up the kernel's own connections do not use them, and an exposed port
/// may not lie among them.
pub const SOCKS_PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;

/// The `[dns]` table: the responder for `.umbra` names (`docs/architecture.md`,
/// "Names").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsConfig {
    /// Loopback address to answer DNS on (UDP and TCP); `None` turns the
    /// responder off.
    pub listen: Option<SocketAddr>,
    /// Services whose SRV records are answered for every node name:
    /// `_service._tcp` (or `._udp`) → port.
    pub srv: BTreeMap<String, u16>,
    /// TXT records answered for every node name: owner labels below the name
    /// (`_xmppconnect`) → the records, one string each, each at most
    /// [`MAX_TXT_STRING_LEN`] bytes. A string in the file is one record.
    pub txt: BTreeMap<String, Vec<String>>,
}

/// The longest string of a `[dns] txt` record, in bytes: a DNS
/// character-string's length is one byte (RFC 1035).
pub const MAX_TXT_STRING_LEN: usize = 255;

/// The most records one `[dns] txt` owner may have, so that every answer fits
/// a DNS message over TCP many times over.
pub const MAX_TXT_RECORDS: usize = 16;

/// The longest `[dns] txt` owner, in characters: with a node's name (56
/// bytes in a DNS name) or a petname (up to 64) and `umbra.`, the whole name
/// stays within DNS's 255 bytes.
pub const MAX_TXT_OWNER_LEN: usize = 180;

/// The `[tun]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// Whether to create the TUN interface at all.
    pub enabled: bool,
    /// Interface name: 1 to 15 bytes, no `/`, `:` or whitespace.
    pub name: String,
    /// MTU in bytes, from [`MIN_MTU`] to [`MAX_MTU`].
    pub mtu: u32,
}

/// The `[listen]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// Addresses for the HTTPS listener. Empty means dial out only (a NATed node).
    pub https: Vec<SocketAddr>,
    /// SNI and certificate name; empty for none.
    pub server_name: String,
    /// Get a certificate for `server_name` by ACME.
    pub acme: bool,
    /// The ACME server's directory URL (`https://`); default Let's Encrypt.
    pub acme_directory: String,
    /// The e-mail address the ACME account gives the CA, if any.
    pub acme_email: Option<String>,
    /// PEM file of CA certificates to trust for the ACME server's HTTPS,
    /// instead of the built-in web PKI roots (a private or test ACME server).
    pub acme_ca: Option<PathBuf>,
    /// Certificate chain file (PEM); set together with `key`.
    pub cert: Option<PathBuf>,
    /// Private key file (PEM) of `cert`.
    pub key: Option<PathBuf>,
}

/// The `[cover]` table: the website anyone without a link token sees
/// (`docs/threat-model.md, "What a prober sees"`).
/// With neither key set, the built-in static site is served.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CoverConfig {
    /// Directory of a static site to serve.
    pub root: Option<PathBuf>,
    /// A local plain-HTTP server to reverse-proxy, such as `http://127.0.0.1:8080`.
    pub upstream: Option<String>,
}

/// The `[home]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HomeConfig {
    /// The pinned home node, the first hop of every circuit. `None` means the first
    /// agreement.
    pub key: Option<PublicKey>,
}

/// One `[[peer]]` table: half of an agreement; the other side must list us too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's public key.
    pub key: PublicKey,
    /// Where the peer can be dialed, tried in order: `host:port` or a socket address.
    /// Empty: the peer is reached by NAT traversal.
    pub endpoints: Vec<String>,
    /// What we offer the peer.
    pub terms: Terms,
}

/// One `[[route]]` table: a destination with its own anonymity setting, such as
/// `anonymity = "fast"` to an operator's own second server while everything else stays
/// balanced (`docs/config.md, "[[route]]"`, and what that gives away in
/// `docs/threat-model.md, "Per-destination settings"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// The destination.
    pub to: RouteTarget,
    /// The setting for circuits to it.
    pub anonymity: Anonymity,
}

/// A `[[route]] to`: a node's public key, or an overlay address of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTarget {
    /// The node with this public key.
    Key(PublicKey),
    /// The node this address belongs to: its /128, or an address in its /64 subnet.
    Address(Ipv6Addr),
}

impl std::fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteTarget::Key(k) => write!(f, "{k}"),
            RouteTarget::Address(a) => write!(f, "{a}"),
        }
    }
}

/// The `[metrics]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// Loopback address to serve Prometheus text on; `None` turns metrics off.
    pub listen: Option<SocketAddr>,
}

/// The `[padding]` table: cover traffic on links (`docs/protocol.md, "Link framing"`
/// and `docs/protocol.md, "Link control"`).
///
/// Only a node with `anonymity = "strong"` pads. It sends padding cells on every link at
/// `rate`, capped by that link's agreement (its terms' average rate), and asks the peer
/// to pad toward it at the same rate. Padding only tops up: cells that carry traffic
/// count toward the rate, so a busy link sends no padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddingConfig {
    /// Bytes per second of cell frames each way on every link; zero turns padding off.
    /// At most [`MAX_PADDING_RATE`].
    pub rate: ByteRate,
}

impl Default for PaddingConfig {
    fn default() -> Self {
        PaddingConfig {
            rate: DEFAULT_PADDING_RATE,
        }
    }
}

/// The `[nat]` table: what a node behind a NAT does about it, and what it does for
/// partners behind one (`docs/architecture.md, "Port mapping"` and "NAT traversal").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// Ask the gateway to forward the link port (UPnP-IGD, NAT-PMP or PCP) while the
    /// node has a `[listen] https` address. `false` sends the gateway nothing.
    pub port_mapping: bool,
    /// Relay links between two partners that cannot reach each other.
    pub relay: bool,
    /// The most one relayed link may carry through this node, both ways together.
    pub relay_rate: ByteRate,
    /// The most bytes one relayed link may carry through this node while it runs;
    /// then it is closed (the two ends may open another).
    pub relay_total: u64,
    /// While a link is relayed, the first wait before trying a direct or punched one
    /// again; it doubles after each try, up to 30 minutes.
    pub retry_direct: Duration,
}

/// [`NatConfig::relay_rate`] unless set: enough for an ordinary server's federation
/// traffic, not only signalling.
pub const DEFAULT_RELAY_RATE: ByteRate = ByteRate::per_sec(8 << 20);

/// [`NatConfig::relay_total`] unless set.
pub const DEFAULT_RELAY_TOTAL_BYTES: u64 = 100 << 30;

/// [`NatConfig::retry_direct`] unless set.
pub const DEFAULT_RETRY_DIRECT: Duration = Duration::from_secs(60);

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            port_mapping: true,
            relay: true,
            relay_rate: DEFAULT_RELAY_RATE,
            relay_total: DEFAULT_RELAY_TOTAL_BYTES,
            retry_direct: DEFAULT_RETRY_DIRECT,
        }
    }
}

/// The `[agreements]` table: agreements other nodes propose over the overlay
/// (`docs/protocol.md, "Proposals"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgreementsConfig {
    /// Take proposals from other nodes for the operator to accept or reject (`umbra
    /// agreements`). `false` refuses every one, and the proposer is told so.
    pub proposals: bool,
}

impl Default for AgreementsConfig {
    fn default() -> Self {
        AgreementsConfig { proposals: true }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            address_prefix: DEFAULT_ADDRESS_PREFIX,
            anonymity: Anonymity::default(),
            threads: DEFAULT_THREADS,
            tun: TunConfig::default(),
            listen: ListenConfig::default(),
            cover: CoverConfig::default(),
            home: HomeConfig::default(),
            peers: Vec::new(),
            routes: Vec::new(),
            metrics: MetricsConfig::default(),
            padding: PaddingConfig::default(),
            nat: NatConfig::default(),
            agreements: AgreementsConfig::default(),
            dns: DnsConfig::default(),
            names: BTreeMap::new(),
            socks: SocksConfig::default(),
            expose: Vec::new(),
        }
    }
}

impl Default for TunConfig {
    fn default() -> Self {
        TunConfig {
            enabled: true,
            name: DEFAULT_TUN_NAME.to_owned(),
            mtu: DEFAULT_MTU,
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            https: vec![DEFAULT_HTTPS_LISTEN],
            server_name: String::new(),
            acme: false,
            acme_directory: DEFAULT_ACME_DIRECTORY.to_owned(),
            acme_email: None,
            acme_ca: None,
            cert: None,
            key: None,
        }
    }
}

impl Config {
    /// Parses and validates TOML text; `origin` is the file name used in error messages.
    ///
    /// Unknown keys are errors, and every key has a default, so empty text gives
    /// [`Config::default`].
    ///
    /// ```
    /// # use std::path::Path;
    /// let config = umbra_config::Config::from_toml("[tun]\nmtu = 1400\n", Path::new("umbra.toml"))?;
    /// assert_eq!(config.tun.mtu, 1400);
    ///
    /// let err = umbra_config::Config::from_toml("[tun]\nmtu = 70000\n", Path::new("umbra.toml"))
    ///     .unwrap_err();
    /// assert_eq!(err.to_string(), "config umbra.toml: [tun] mtu = 70000 is above the maximum 65535");
    /// # Ok::<(), umbra_config::ConfigError>(())
    /// ```
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let config = parse::from_toml(text, origin)?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Reads and validates the config file. A missing file yields [`Config::default`],
    /// because the daemon runs with no config at all.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(error) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    error,
                });
            }
        };
        let text = String::from_utf8(bytes).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            key: String::new(),
            message: format!(
                "the file is not UTF-8 text (bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        })?;
        Config::from_toml(&text, path)
    }

    /// The identity key file: `state_dir/identity.key`.
    pub fn identity_path(&self) -> PathBuf {
        self.state_dir.join(IDENTITY_FILE)
    }

    /// The database file: `state_dir/umbra.db`.
    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join(DATABASE_FILE)
    }
}

/// Writes `text` to `path` only if no file exists there, creating missing parent
/// directories. The file gets `mode` (less the umask).
///
/// Returns `Ok(false)`, and leaves the file alone, if it already existed: this never
/// overwrites.
pub fn write_new(path: &Path, text: &str, mode: u32) -> Result<bool, ConfigError> {
    let write_err = |error| ConfigError::Write {
        path: path.to_owned(),
        error,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(write_err)?;
    }
    let mut file = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(write_err(e)),
    };
    if let Err(e) = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
    {
        // Leave no half-written file behind: the next run would keep it forever.
        drop(file);
        let _ = fs::remove_file(path);
        return Err(write_err(e));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn empty_file_is_the_default() {
        let config = Config::from_toml("", Path::new("/etc/umbra/umbra.toml"));
        assert_eq!(config.ok(), Some(Config::default()));
        let config = Config::from_toml("# only a comment\n\n", Path::new("x.toml"));
        assert_eq!(config.ok(), Some(Config::default()));
    }

    #[test]
    fn default_values_match_the_interface() {
        let config = Config::default();
        assert_eq!(config.state_dir, Path::new("/var/lib/umbra"));
        assert_eq!(config.control_socket, Path::new("/run/umbra/control.sock"));
        assert_eq!(config.address_prefix, 0x06);
        assert_eq!(config.anonymity, Anonymity::Balanced);
        assert_eq!(config.threads, 1);
        assert!(config.tun.enabled);
        assert_eq!(config.tun.name, "umbra0");
        assert_eq!(config.tun.mtu, 65535);
        let any_443: SocketAddr = "[::]:443".parse().expect("socket address");
        assert_eq!(config.listen.https, vec![any_443]);
        assert_eq!(config.listen.server_name, "");
        assert!(!config.listen.acme);
        assert_eq!(
            config.identity_path(),
            Path::new("/var/lib/umbra/identity.key")
        );
        assert_eq!(config.database_path(), Path::new("/var/lib/umbra/umbra.db"));
        assert!(config.validate(Path::new(DEFAULT_CONFIG_PATH)).is_ok());
    }

    #[test]
    fn load_of_a_missing_file_is_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::load(&dir.path().join("absent.toml")).expect("load");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn load_reads_and_validates_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("umbra.toml");
        fs::write(&path, "[tun]\nname = \"ov0\"\n").expect("write");
        assert_eq!(Config::load(&path).expect("load").tun.name, "ov0");

        fs::write(&path, "[tun]\nmtu = 100\n").expect("write");
        let err = Config::load(&path)
            .expect_err("mtu 100 must fail")
            .to_string();
        assert!(
            err.starts_with(&format!("config {}: ", path.display())),
            "{err}"
        );
        assert!(
            err.contains("[tun] mtu = 100 is below the minimum 1280"),
            "{err}"
        );

        fs::write(&path, b"name = \"\xff\"\n").expect("write");
        let err = Config::load(&path).expect_err("not UTF-8").to_string();
        assert!(err.contains("not UTF-8"), "{err}");
    }

    #[test]
    fn load_of_a_directory_says_it_cannot_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Config::load(dir.path()).expect_err("a directory is not a config");
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read {}", dir.path().display()))
        );
    }

    #[test]
    fn write_new_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("etc/umbra/umbra.toml");
        assert!(write_new(&path, "first\n", 0o640).expect("first write"));
        assert_eq!(fs::read_to_string(&path).expect("read"), "first\n");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "mode {mode:o} has bits beyond 0640");

        assert!(!write_new(&path, "second\n", 0o640).expect("second write"));
        assert_eq!(fs::read_to_string(&path).expect("read"), "first\n");
    }
}
