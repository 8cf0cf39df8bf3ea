//! Helpers for tests that run real `umbra` daemons in network namespaces
//! (DESIGN.md §12). They need root; without it they fail and say so.
//!
//! Every namespace a test makes is deleted when its guard drops, also when
//! the test fails. Test hosts use `198.18.0.0/15`; hosts behind a NAT use
//! `100.64.0.0/10`. No test traffic goes anywhere else.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Fails the test with a clear message unless it runs as root.
pub fn require_root() {
    // /proc/self/status names the effective uid; no libc call needed.
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        euid, "0",
        "this test runs real daemons in network namespaces and needs root (CI runs it as root); \
         run `sudo -E cargo nextest run` or skip it with `-E 'not binary(/netns/)'`"
    );
    assert!(
        Path::new("/dev/net/tun").exists(),
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

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short name for a namespace or interface (interface names are at
/// most 15 bytes).
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("u{}{}{}", std::process::id() % 100_000, tag, n)
}

/// Runs a command and returns its output; panics with the command and its
/// stderr if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and returns its whole output, whatever its exit status.
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

/// A network namespace, deleted (with every process in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes a new namespace with its loopback up.
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace; panics if it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill what still runs inside, then delete the namespace.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// One running `umbra run`, with its files in a temporary directory.
#[derive(Debug)]
pub struct Daemon {
    /// The config file it runs with.
    pub config: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Its control socket.
    pub socket: PathBuf,
    /// Where its stderr (the log) goes.
    pub log: PathBuf,
    /// Extra environment for `umbra run` (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Daemon {
    /// Writes a config into `dir` (state and socket inside `dir`, plus
    /// `extra` TOML appended) without starting anything.
    pub fn prepare(dir: &Path, extra: &str) -> Daemon {
        fs::create_dir_all(dir).expect("daemon dir");
        let state_dir = dir.join("state");
        let socket = dir.join("control.sock");
        let config = dir.join("umbra.toml");
        let text = format!(
            "state_dir = \"{}\"\ncontrol_socket = \"{}\"\n{extra}\n",
            state_dir.display(),
            socket.display()
        );
        fs::write(&config, text).expect("write config");
        Daemon {
            config,
            state_dir,
            socket,
            log: dir.join("umbra.log"),
            env: Vec::new(),
            child: None,
        }
    }

    /// Starts `umbra run` in `ns` and waits until its control socket answers.
    pub fn start(&mut self, ns: &Netns) {
        let log = fs::File::create(&self.log).expect("log file");
        let child = ns
            .command(&umbra_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .env("RUST_LOG", "info,umbra=debug")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn umbra run");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "umbra run exited early ({status}); log:\n{}",
                    self.log_text()
                );
            }
            if self.request(r#"{"cmd":"status"}"#).is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "umbra run did not answer on {} within 20 s; log:\n{}",
                self.socket.display(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs an `umbra` CLI command against this daemon's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(umbra_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run umbra cli")
    }

    /// Runs a CLI command that prints JSON, and parses it; panics on failure.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "umbra {args:?} failed: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "umbra {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Sends one raw line to the control socket and returns the raw answer
    /// line, or `None` if the socket does not answer.
    pub fn request(&self, line: &str) -> Option<String> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(line.as_bytes()).ok()?;
        s.write_all(b"\n").ok()?;
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).ok()?;
        (!answer.is_empty()).then_some(answer)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("started").id()
    }

    /// Sends a signal (`TERM`, `HUP`, `KILL`, …) to the daemon.
    pub fn signal(&self, sig: &str) {
        sh(&["kill", &format!("-{sig}"), &self.pid().to_string()]);
    }

    /// Whether it has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits up to `limit` for it to exit.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait() {
                self.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh temporary directory, removed when the returned guard drops.
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("umbra-test-{tag}-"))
        .tempdir()
        .expect("temp dir")
}

/// Joins two namespaces with a veth pair on `198.18.<subnet>.0/24`: `a`
/// gets `.1`, `b` gets `.2`. Returns the two addresses. The pair goes away
/// with either namespace.
pub fn veth(a: &Netns, b: &Netns, subnet: u8) -> (String, String) {
    let ia = unique("va");
    let ib = unique("vb");
    sh(&[
        "ip",
        "link",
        "add",
        &ia,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &ib,
        "netns",
        b.name(),
    ]);
    let ip_a = format!("198.18.{subnet}.1");
    let ip_b = format!("198.18.{subnet}.2");
    a.exec(&["ip", "addr", "add", &format!("{ip_a}/24"), "dev", &ia]);
    b.exec(&["ip", "addr", "add", &format!("{ip_b}/24"), "dev", &ib]);
    a.exec(&["ip", "link", "set", &ia, "up"]);
    b.exec(&["ip", "link", "set", &ib, "up"]);
    (ip_a, ip_b)
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after
/// `limit` with `what` and the daemons' logs.
pub fn wait_for<T>(
    limit: Duration,
    what: &str,
    logs: &[&Daemon],
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|d| d.log_text()).collect();
            panic!(
                "timed out after {limit:?} waiting for {what}; logs:\n{}",
                logs.join("\n-----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Daemon {
    /// The node's public key, from `status --json`.
    pub fn key(&self) -> String {
        self.cli_json(&["status", "--json"])["public_key"]
            .as_str()
            .expect("public_key")
            .to_string()
    }

    /// Whether `peers --json` shows a link to `key` that is up.
    pub fn link_up_to(&self, key: &str) -> bool {
        let out = self.cli(&["peers", "--json"]);
        if !out.status.success() {
            return false;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array()
            .is_some_and(|a| a.iter().any(|p| p["key"] == key && p["state"] == "up"))
    }
}

/// The name of the interface in `ns` that holds `ip` (for example one end
/// of a [`veth`] pair).
pub fn iface_with_addr(ns: &Netns, ip: &str) -> String {
    let out = ns.exec(&["ip", "-o", "-4", "addr", "show", "to", ip]);
    out.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no interface holds {ip} in {}: {out:?}", ns.name()))
        .to_string()
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
            .command(Path::new("tcpdump"))
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
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
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
/// `env`), and returns it running. Its stdout and stderr go to `log`.
pub fn spawn_test_helper(
    ns: &Netns,
    test_name: &str,
    role: &str,
    env: &[(&str, &str)],
    log: &Path,
) -> Child {
    let exe = std::env::current_exe().expect("current_exe");
    let out = fs::File::create(log).expect("helper log");
    let err = out.try_clone().expect("helper log");
    ns.command(&exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads", "1"])
        .env("UMBRA_TEST_ROLE", role)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn test helper")
}

/// The helper role this process was started in by [`spawn_test_helper`],
/// if any.
pub fn test_role() -> Option<String> {
    std::env::var("UMBRA_TEST_ROLE").ok()
}
