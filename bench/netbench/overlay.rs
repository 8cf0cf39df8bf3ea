//! The same topology of namespaces, run by umbra or by Yggdrasil: a chain of
//! `n` nodes joined by veth pairs, one overlay daemon per node.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use umbra_netlab::{Daemon, Links, Netns, Proc, UmbraConfig};

use crate::{R, lab};

/// Which overlay runs the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum System {
    /// This project's daemon.
    Umbra,
    /// Debian's Yggdrasil 0.4.7.
    Yggdrasil,
}

impl System {
    /// The key used in the JSON results.
    pub(crate) fn key(self) -> &'static str {
        match self {
            System::Umbra => "umbra",
            System::Yggdrasil => "yggdrasil",
        }
    }
}

/// Where the two daemons' binaries are.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    /// `umbra`.
    pub(crate) umbra: PathBuf,
    /// `yggdrasil`.
    pub(crate) yggdrasil: PathBuf,
}

/// The port Yggdrasil listens on for TLS peering; umbra uses 443.
const YGG_TLS_PORT: u16 = 7443;
/// How long the links and routing may take to come up.
const CONVERGE: Duration = Duration::from_secs(45);
/// How long a stopped daemon gets to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A running chain of overlay daemons.
#[derive(Debug)]
pub(crate) struct Overlay {
    /// Which overlay.
    pub(crate) system: System,
    // Daemons come before the namespaces: they stop first on drop.
    /// One daemon per node; `None` while stopped.
    pub(crate) daemons: Vec<Option<Proc>>,
    /// Each node's overlay IPv6 address.
    pub(crate) addrs: Vec<String>,
    /// Each node's config file.
    configs: Vec<PathBuf>,
    bins: Binaries,
    dir: PathBuf,
    /// One namespace per node.
    pub(crate) ns: Vec<Netns>,
}

impl Overlay {
    /// Builds a chain of `n` nodes in fresh namespaces and starts `system`
    /// on each; returns once routing works end to end (umbra: every node
    /// holds the whole graph; Yggdrasil: every peering is up).
    pub(crate) fn build(system: System, n: usize, bins: &Binaries, dir: &Path) -> R<Overlay> {
        let tag = match system {
            System::Umbra => "u",
            System::Yggdrasil => "y",
        };
        let ns: Vec<Netns> = (0..n)
            .map(|i| lab().netns(&format!("{tag}{i}")))
            .collect::<Result<_, _>>()?;
        let links = Links::new(&ns, &Links::chain(n), 10, umbra_netlab::numbered)?;
        let dir = dir.join(format!("{}-{n}", system.key()));
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (configs, addrs) = match system {
            System::Umbra => umbra_configs(&bins.umbra, &dir, &links)?,
            System::Yggdrasil => ygg_configs(&bins.yggdrasil, &dir, &links)?,
        };
        let mut o = Overlay {
            system,
            daemons: (0..n).map(|_| None).collect(),
            addrs,
            configs,
            bins: bins.clone(),
            dir,
            ns,
        };
        o.start_all()?;
        Ok(o)
    }

    /// Number of nodes.
    pub(crate) fn len(&self) -> usize {
        self.ns.len()
    }

    /// Process ids of the running daemons.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.daemons.iter().flatten().map(Proc::pid).collect()
    }

    /// Daemon `i`'s log so far.
    pub(crate) fn log(&self, i: usize) -> String {
        self.daemons[i]
            .as_ref()
            .map(Proc::log_text)
            .unwrap_or_default()
    }

    /// Every daemon's log, for error messages.
    pub(crate) fn logs(&self) -> String {
        (0..self.len())
            .map(|i| format!("--- node {i} ---\n{}", tail(&self.log(i), 40)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops every daemon and starts them again (fresh circuits and
    /// sessions), and waits until routing works.
    pub(crate) fn restart(&mut self) -> R<()> {
        for d in self.daemons.iter_mut().flatten() {
            d.stop(STOP_GRACE);
        }
        self.daemons.iter_mut().for_each(|d| *d = None);
        self.start_all()
    }

    fn start_all(&mut self) -> R<()> {
        // Highest first: each Yggdrasil node dials its higher neighbour, and
        // 0.4.7 waits about a minute before redialling a refused peer.
        for i in (0..self.len()).rev() {
            let log = self.dir.join(format!("n{i}.log"));
            let cmd = match self.system {
                System::Umbra => {
                    let mut c = self.ns[i].command(&self.bins.umbra);
                    c.arg("--config")
                        .arg(&self.configs[i])
                        .arg("run")
                        .env("RUST_LOG", "info")
                        .env("NO_COLOR", "1");
                    c
                }
                System::Yggdrasil => {
                    let mut c = self.ns[i].command(&self.bins.yggdrasil);
                    c.arg("-useconffile").arg(&self.configs[i]);
                    c
                }
            };
            self.daemons[i] = Some(Proc::spawn(cmd, &log)?);
            if self.system == System::Yggdrasil {
                self.wait_listening(i)?;
            }
        }
        self.wait_ready()
    }

    /// Waits until Yggdrasil on node `i` accepts peerings.
    fn wait_listening(&self, i: usize) -> R<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ns[i].listens_tcp(YGG_TLS_PORT) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "yggdrasil on node {i} does not listen on :{YGG_TLS_PORT}; log:\n{}",
            self.log(i)
        ))
    }

    fn wait_ready(&mut self) -> R<()> {
        let deadline = Instant::now() + CONVERGE;
        loop {
            for (i, d) in self.daemons.iter_mut().enumerate() {
                if let Some(d) = d.as_mut().filter(|d| d.exited()) {
                    return Err(format!(
                        "{} on node {i} exited early; log:\n{}",
                        self.system.key(),
                        d.log_text()
                    ));
                }
            }
            if self.ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not converge within {CONVERGE:?}; logs:\n{}",
                    self.system.key(),
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn ready(&self) -> bool {
        let n = self.len();
        match self.system {
            System::Umbra => (0..n).all(|i| {
                self.umbra_status(i).is_some_and(|s| {
                    s["graph"]["nodes"] == n && s["graph"]["edges"] == n.saturating_sub(1)
                })
            }),
            System::Yggdrasil => (0..n).all(|i| {
                // The TUN holds the address and every peering is established
                // (one TCP connection per neighbour).
                let neighbours = usize::from(i > 0) + usize::from(i + 1 < n);
                let addr_ok = self.ns[i]
                    .exec(&["ip", "-6", "-o", "addr", "show", "dev", "ygg0"])
                    .is_ok_and(|o| o.contains(&self.addrs[i]));
                let conns = self.ns[i]
                    .exec(&["ss", "-Htn", "state", "established"])
                    .map(|o| o.lines().count())
                    .unwrap_or(0);
                addr_ok && conns >= neighbours
            }),
        }
    }

    /// `umbra status --json` of node `i`.
    pub(crate) fn umbra_status(&self, i: usize) -> Option<serde_json::Value> {
        let out = std::process::Command::new(&self.bins.umbra)
            .arg("--config")
            .arg(&self.configs[i])
            .args(["status", "--json"])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    umbra_netlab::tail(text, n)
}

/// Where node 0 of an umbra topology accepts SOCKS5, for the fetches
/// through the userspace stack.
pub(crate) const UMBRA_SOCKS: &str = "127.0.0.1:1080";

/// Writes each node's umbra.toml (`anonymity = "fast"`, listening on its
/// veth addresses, a `[[peer]]` per neighbour; node 0 also runs the SOCKS5
/// proxy) and returns the config files and overlay addresses.
fn umbra_configs(umbra: &Path, dir: &Path, links: &Links) -> R<(Vec<PathBuf>, Vec<String>)> {
    let n = links.listen.len();
    let config = |i: usize| {
        let mut c = UmbraConfig::new(&dir.join(format!("n{i}")));
        c.top = "anonymity = \"fast\"\n".into();
        if i == 0 {
            c.top += &format!("[socks]\nlisten = \"{UMBRA_SOCKS}\"\n");
        }
        c
    };
    let ids = (0..n)
        .map(|i| Daemon::new(umbra, &config(i))?.init())
        .collect::<Result<Vec<_>, _>>()?;
    let keys: Vec<String> = ids.iter().map(|id| id.key.clone()).collect();
    let mut configs = Vec::new();
    for i in 0..n {
        let mut c = config(i);
        c.listen = Some(links.listen_on(i, 443));
        c.peers = links.umbra_peers(i, &keys, 443, Some("1TB/30d"));
        configs.push(c.write()?);
    }
    Ok((configs, ids.into_iter().map(|id| id.address).collect()))
}

fn ygg_configs(ygg: &Path, dir: &Path, links: &Links) -> R<(Vec<PathBuf>, Vec<String>)> {
    let n = links.listen.len();
    let mut configs = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..n {
        let out = std::process::Command::new(ygg)
            .args(["-genconf", "-json"])
            .output()
            .map_err(|e| format!("running {} -genconf: {e}", ygg.display()))?;
        let mut conf: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("yggdrasil -genconf -json printed no JSON: {e}"))?;
        // TLS peering: the lower-numbered node of each link dials the other.
        let peers: Vec<String> = links
            .edges
            .iter()
            .zip(&links.veths)
            .filter(|((a, _), _)| *a == i)
            .map(|(_, v)| format!("tls://{}:{YGG_TLS_PORT}", v.b.ip))
            .collect();
        let listen: Vec<String> = links
            .listen_on(i, YGG_TLS_PORT)
            .iter()
            .map(|ep| format!("tls://{ep}"))
            .collect();
        conf["Peers"] = serde_json::json!(peers);
        conf["Listen"] = serde_json::json!(listen);
        conf["MulticastInterfaces"] = serde_json::json!([]);
        conf["AdminListen"] = serde_json::json!("none");
        conf["IfName"] = serde_json::json!("ygg0");
        let path = dir.join(format!("ygg{i}.conf"));
        fs::write(&path, conf.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
        let out = std::process::Command::new(ygg)
            .arg("-useconffile")
            .arg(&path)
            .arg("-address")
            .output()
            .map_err(|e| format!("running {} -address: {e}", ygg.display()))?;
        let addr = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("yggdrasil -address printed {addr:?}"));
        }
        configs.push(path);
        addrs.push(addr);
    }
    Ok((configs, addrs))
}
