//! What tests that run real `umbra` daemons in network namespaces share
//! on top of the lab (`umbra-netlab`, docs/architecture.md, "Testing").
//! They need root; without it they fail and say so.
//!
//! Every namespace a test makes is deleted when its handle drops, also when
//! the test fails. Test hosts use `198.18.0.0/15`; hosts behind a NAT use
//! `100.64.0.0/10`. No test traffic goes anywhere else.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use umbra_netlab::Lab;
pub use umbra_netlab::{Daemon, Netns, Proc, UmbraConfig, Veth};

pub mod hostile;
pub mod overlay;

/// Fails the test with a clear message unless it runs as root.
pub fn require_root() {
    assert!(
        umbra_netlab::is_root(),
        "this test runs real daemons in network namespaces and needs root (CI runs it as root); \
         run `sudo -E cargo nextest run` or skip it with `-E 'not binary_id(/netns/)'`"
    );
    assert!(
        umbra_netlab::has_tun(),
        "this test needs /dev/net/tun (modprobe tun)"
    );
}

/// The `umbra` binary under test: `$UMBRA_BIN`, or the one cargo built next
/// to this test binary (`target/<profile>/umbra`).
pub fn umbra_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("UMBRA_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/umbra
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("umbra");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p umbra`) or set UMBRA_BIN",
        bin.display()
    );
    bin
}

/// The tests' lab: namespaces `u<pid>-<tag><n>`.
fn lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| Lab::new("u"))
}

/// A new namespace named after `tag` (unique in this process), loopback up.
pub fn netns(tag: &str) -> Netns {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    lab()
        .netns(&format!("{tag}{n}"))
        .unwrap_or_else(|e| panic!("making namespace {tag}: {e}"))
}

/// A daemon whose config in `dir` has its state and socket inside `dir`
/// plus `extra` TOML, not started; it logs at `info,umbra=debug`.
pub fn prepare(dir: &Path, extra: &str) -> Daemon {
    let mut config = UmbraConfig::new(dir);
    config.top = format!("{extra}\n");
    let mut d = Daemon::new(&umbra_bin(), &config).expect("write the daemon's config");
    d.env = vec![("RUST_LOG".into(), "info,umbra=debug".into())];
    d
}

/// [`prepare`], then starts it in `ns`.
pub fn start(ns: &Netns, dir: &Path, extra: &str) -> Daemon {
    let mut d = prepare(dir, extra);
    d.start(ns).expect("umbra run starts");
    d
}

/// The keys of fresh nodes `names` under `dir` (`umbra init` in
/// `dir/<name>`), so their configs can name each other.
pub fn init_keys(dir: &Path, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|n| prepare(&dir.join(n), "").init().expect("umbra init").key)
        .collect()
}

/// A `[[peer]]` entry for `key` at `ip:443` with terms `1TB/30d`.
pub fn peer(key: &str, ip: &str) -> String {
    umbra_netlab::Peer::new(key, format!("{ip}:443"), Some("1TB/30d")).toml()
}

/// A fresh temporary directory, removed when the returned guard drops.
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("umbra-test-{tag}-"))
        .tempdir()
        .expect("temp dir")
}

/// Joins two namespaces with a veth pair on `198.18.<subnet>.0/24`: `a`
/// gets `.1`, `b` gets `.2`. Returns the two addresses.
pub fn veth(a: &Netns, b: &Netns, subnet: u8) -> (String, String) {
    Veth::internet(a, b, subnet)
        .unwrap_or_else(|e| panic!("veth {} – {}: {e}", a.name(), b.name()))
        .ips()
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after
/// `limit` with `what` and the daemons' logs.
pub fn wait_for<T>(
    limit: Duration,
    what: &str,
    logs: &[&Daemon],
    mut check: impl FnMut() -> Option<T>,
) -> T {
    umbra_netlab::poll(limit, Duration::from_millis(100), what, |_| Ok(check())).unwrap_or_else(
        |e| {
            let logs: Vec<String> = logs.iter().map(|d| d.log_text()).collect();
            panic!("{e}; logs:\n{}", logs.join("\n-----\n"))
        },
    )
}

/// `/etc/netns/NAME/resolv.conf`, which `ip netns exec` puts in place of
/// `/etc/resolv.conf` for commands it starts in the namespace from then on
/// (so write it before starting them); removed on drop.
pub struct NetnsResolvConf(PathBuf);

impl NetnsResolvConf {
    /// Writes `text` as namespace `ns`'s resolv.conf.
    pub fn new(ns: &str, text: &str) -> NetnsResolvConf {
        let dir = Path::new("/etc/netns").join(ns);
        fs::create_dir_all(&dir).expect("/etc/netns/NAME");
        fs::write(dir.join("resolv.conf"), text).expect("resolv.conf");
        NetnsResolvConf(dir)
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A `tcpdump -w` running in a namespace; stopped (and its file complete)
/// by [`Tcpdump::stop`], killed on drop.
#[derive(Debug)]
pub struct Tcpdump {
    child: Option<Child>,
    /// The capture file.
    pub file: PathBuf,
    said: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Tcpdump {
    /// Starts `tcpdump -i iface -w file filter` in `ns` and waits until it
    /// captures.
    pub fn start(ns: &Netns, iface: &str, filter: &str, file: &Path) -> Tcpdump {
        let mut child = ns
            .command("tcpdump")
            .args(["-i", iface, "-s", "0", "-B", "8192", "-U", "-n", "-w"])
            .arg(file)
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump (apt-get install tcpdump)");
        // tcpdump says "listening on …" once its socket is open.
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(
            first.contains("listening on"),
            "tcpdump did not start: {first:?}"
        );
        // Keep the rest (its closing counts) and never let tcpdump block
        // on a full pipe.
        let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let keep = said.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(mut s) = keep.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        Tcpdump {
            child: Some(child),
            file: file.to_path_buf(),
            said,
        }
    }

    /// What tcpdump printed after it started (after [`Tcpdump::stop`]: how
    /// many packets it captured and how many the kernel dropped).
    pub fn said(&self) -> String {
        self.said.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops the capture (SIGINT, so tcpdump flushes its file) and returns
    /// the file's bytes.
    pub fn stop(&mut self) -> Vec<u8> {
        // tcpdump stops reading at SIGINT, so first let it write out what
        // the kernel already handed it: wait until the file stops growing.
        let size = || fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = size();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(700));
            let now = size();
            if now == last {
                break;
            }
            last = now;
        }
        if let Some(mut c) = self.child.take() {
            let _ = umbra_netlab::signal(c.id(), "INT");
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        fs::read(&self.file).unwrap_or_default()
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the current test binary again inside `ns`, as a helper process
/// for the test `test_name` (which sees `role` in `UMBRA_TEST_ROLE` and
/// `env`), and returns it running. Its stdout and stderr go to `log`; it is
/// killed when the returned [`Proc`] drops, also when the test fails.
pub fn spawn_test_helper(
    ns: &Netns,
    test_name: &str,
    role: &str,
    env: &[(&str, &str)],
    log: &Path,
) -> Proc {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = ns.command(&exe);
    cmd.args(["--exact", test_name, "--nocapture", "--test-threads", "1"])
        .env("UMBRA_TEST_ROLE", role)
        .envs(env.iter().copied());
    Proc::spawn(cmd, log).expect("spawn test helper")
}

/// Whether `p` exited successfully within `limit`.
pub fn succeeds_within(p: &mut Proc, limit: Duration) -> bool {
    p.wait(limit).is_some_and(|s| s.success())
}

/// The helper role this process was started in by [`spawn_test_helper`],
/// if any.
pub fn test_role() -> Option<String> {
    std::env::var("UMBRA_TEST_ROLE").ok()
}
