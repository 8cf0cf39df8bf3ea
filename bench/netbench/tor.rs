//! Tor, the third column: a private Tor network (`TestingTorNetwork 1`) in
//! network namespaces, measured through its client's SOCKS port over a
//! 3-hop circuit, once with stock tor (the KIST scheduler) and once with
//! `Schedulers Vanilla`.
//!
//! Seven namespaces on one bridge (in an eighth, `t-sw`), all on
//! `198.18.60.0/24`: three directory authorities that also relay (guard and
//! middle), one exit relay, the client, and the web server the exit reaches.
//! Authority keys come from `tor-gencert`, relay fingerprints from
//! `tor --list-fingerprint`; every torrc names the three authorities. See
//! bench/README.md for the settings and why.

mod control;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use umbra_bench::procfs::{cpu_seconds, rss_kib};
use umbra_bench::stats::{mean, median, percentile};
use umbra_netlab::{Netns, Proc};

use crate::http::{self, HttpServer, Via};
use crate::{Options, R, lab};
use control::{Control, parse_circ};

/// The lab's subnet: `198.18.60.0/24`.
const SUBNET: &str = "198.18.60";
/// Every relay's ORPort.
const OR_PORT: u16 = 5000;
/// Every authority's DirPort.
const DIR_PORT: u16 = 7000;
/// The client's SOCKS port, on its loopback.
const SOCKS: &str = "127.0.0.1:9050";
/// How long the network may take to bootstrap and carry a first fetch.
const BOOTSTRAP_LIMIT: Duration = Duration::from_secs(240);
/// Fetches of the small file for time to first byte, and their spacing.
const TTFB_FETCHES: usize = 20;
const TTFB_INTERVAL_S: f64 = 0.1;
/// Circuits built for the build time.
const BUILDS: usize = 20;
/// How long one circuit build may take before it counts as failed.
const BUILD_LIMIT: Duration = Duration::from_secs(10);
/// How long the client may lack a usable exit (after a relay republished
/// its descriptor) before a measure gives up.
const USABLE_LIMIT: Duration = Duration::from_secs(60);
/// How long a stopped tor gets to exit.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// What a tor in the network does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A directory authority that also relays (guard or middle).
    Authority,
    /// The exit relay.
    Exit,
    /// The client with the SOCKS port.
    Client,
}

/// The tors: nickname, role, host part of the address.
const NODES: [(&str, Role, u8); 5] = [
    ("auth0", Role::Authority, 10),
    ("auth1", Role::Authority, 11),
    ("auth2", Role::Authority, 12),
    ("exit", Role::Exit, 20),
    ("client", Role::Client, 30),
];
/// The web server's host part.
const SERVER_HOST: u8 = 40;

/// One running tor.
#[derive(Debug)]
struct Tor {
    nick: &'static str,
    dir: PathBuf,
    proc: Proc,
}

impl Tor {
    fn control(&self) -> R<Control> {
        Control::connect(&self.dir.join("control"))
    }
    fn notice_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("notice.log")).unwrap_or_default()
    }
}

/// The running network. Processes come before namespaces: they stop first
/// on drop.
#[derive(Debug)]
struct TorNet {
    /// When the tors were started.
    started: Instant,
    tors: Vec<Tor>,
    server: HttpServer,
    /// Per tor in [`NODES`] order, then the server's, then the switch's.
    ns: Vec<Netns>,
}

/// `198.18.60.<host>`.
fn ip(host: u8) -> String {
    format!("{SUBNET}.{host}")
}

/// Makes `dir` with mode 0700 (tor insists on private directories).
fn private_dir(dir: &Path) -> R<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// The lines every torrc shares.
fn common_torrc(dir: &Path, nick: &str, authorities: &str) -> String {
    let d = dir.display();
    format!(
        "TestingTorNetwork 1\n\
         DataDirectory {d}\n\
         Nickname {nick}\n\
         RunAsDaemon 0\n\
         Sandbox 0\n\
         Log notice file {d}/notice.log\n\
         SafeLogging 0\n\
         LogTimeGranularity 1\n\
         ControlSocket {d}/control\n\
         CookieAuthentication 0\n\
         ShutdownWaitLength 0\n\
         PathsNeededToBuildCircuits 0.67\n\
         TestingDirAuthVoteExit *\n\
         TestingDirAuthVoteGuard *\n\
         TestingDirAuthVoteHSDir *\n\
         TestingMinExitFlagThreshold 0\n\
         V3AuthNIntervalsValid 2\n\
         {authorities}"
    )
}

/// The lines of a tor with `role` at `addr`, whose data directory is `dir`.
fn role_torrc(role: Role, nick: &str, addr: &str, dir: &Path) -> String {
    let relay =
        format!("SocksPort 0\nORPort {addr}:{OR_PORT}\nAddress {addr}\nAssumeReachable 1\n");
    match role {
        Role::Authority => format!(
            "{relay}DirPort {addr}:{DIR_PORT}\n\
             AuthoritativeDirectory 1\n\
             V3AuthoritativeDirectory 1\n\
             ContactInfo {nick}@lab.invalid\n\
             ExitRelay 0\n\
             ExitPolicy reject *:*\n\
             TestingV3AuthInitialVotingInterval 20\n\
             TestingV3AuthInitialVoteDelay 4\n\
             TestingV3AuthInitialDistDelay 4\n\
             V3AuthVotingInterval 20\n\
             V3AuthVoteDelay 4\n\
             V3AuthDistDelay 4\n"
        ),
        Role::Exit => format!(
            "{relay}ExitRelay 1\n\
             ExitPolicyRejectPrivate 0\n\
             ExitPolicy accept *:*\n\
             ServerDNSResolvConfFile {}/resolv.conf\n\
             ServerDNSDetectHijacking 0\n",
            dir.display()
        ),
        Role::Client => format!(
            "SocksPort {SOCKS}\n\
             UseMicrodescriptors 0\n\
             ConfluxEnabled 0\n\
             LearnCircuitBuildTimeout 0\n"
        ),
    }
}

/// The `DirAuthority` line of an authority.
fn dir_authority_line(nick: &str, addr: &str, v3ident: &str, fingerprint: &str) -> String {
    format!(
        "DirAuthority {nick} orport={OR_PORT} no-v2 v3ident={v3ident} {addr}:{DIR_PORT} {fingerprint}\n"
    )
}

/// The `fingerprint` line of an authority certificate.
fn cert_fingerprint(cert: &str) -> Option<String> {
    cert.lines()
        .find_map(|l| l.strip_prefix("fingerprint "))
        .map(|f| f.trim().to_string())
}

/// The fingerprint in a data directory's `fingerprint` file (`nick FPR`).
fn relay_fingerprint(file: &str) -> Option<String> {
    file.split_whitespace().nth(1).map(str::to_string)
}

/// Makes an authority's keys with `tor-gencert` in `dir/keys`; its v3
/// identity fingerprint.
fn authority_keys(dir: &Path, addr: &str) -> R<String> {
    let keys = dir.join("keys");
    private_dir(&keys)?;
    let mut child = Command::new("tor-gencert")
        .arg("--create-identity-key")
        .args(["-m", "12", "-a", &format!("{addr}:{DIR_PORT}")])
        .arg("-i")
        .arg(keys.join("authority_identity_key"))
        .arg("-s")
        .arg(keys.join("authority_signing_key"))
        .arg("-c")
        .arg(keys.join("authority_certificate"))
        .args(["--passphrase-fd", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running tor-gencert: {e}"))?;
    // An empty passphrase: the key stays unencrypted.
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, b"\n")
            .map_err(|e| format!("tor-gencert's stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("tor-gencert: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tor-gencert for {addr} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let cert_path = keys.join("authority_certificate");
    let cert =
        std::fs::read_to_string(&cert_path).map_err(|e| format!("{}: {e}", cert_path.display()))?;
    cert_fingerprint(&cert).ok_or_else(|| format!("{} has no fingerprint", cert_path.display()))
}

/// Makes a relay's identity keys with `tor --list-fingerprint` (run in its
/// namespace; it opens no socket); its fingerprint.
fn relay_keys(ns: &Netns, dir: &Path, nick: &str, empty: &Path) -> R<String> {
    let d = dir.display().to_string();
    let e = empty.display().to_string();
    ns.exec(&[
        "tor",
        "--defaults-torrc",
        &e,
        "--list-fingerprint",
        "--DataDirectory",
        &d,
        "--ORPort",
        &OR_PORT.to_string(),
        "--Nickname",
        nick,
        "--Log",
        "err stderr",
    ])?;
    let path = dir.join("fingerprint");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    relay_fingerprint(&text).ok_or_else(|| format!("{} holds no fingerprint", path.display()))
}

/// Joins each of `nodes` to a bridge in `switch` with a veth pair; node `i`
/// gets `198.18.60.<hosts[i]>/24`.
fn bridge(switch: &Netns, nodes: &[&Netns], hosts: &[u8]) -> R<()> {
    switch.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
    switch.exec(&["ip", "link", "set", "br0", "up"])?;
    for (i, (ns, host)) in nodes.iter().zip(hosts).enumerate() {
        let port = format!("port{i}");
        umbra_netlab::sh(&[
            "ip",
            "link",
            "add",
            "tor0",
            "netns",
            ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            switch.name(),
        ])?;
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", ip(*host)),
            "dev",
            "tor0",
        ])?;
        ns.exec(&["ip", "link", "set", "tor0", "up"])?;
        switch.exec(&["ip", "link", "set", &port, "master", "br0"])?;
        switch.exec(&["ip", "link", "set", &port, "up"])?;
    }
    Ok(())
}

impl TorNet {
    /// Builds the namespaces, the keys and the torrcs, starts the server
    /// and every tor; returns at once (see [`TorNet::wait_ready`]).
    fn start(dir: &Path) -> R<TorNet> {
        let mut ns = Vec::new();
        for (nick, _, _) in NODES {
            ns.push(lab().netns(&format!("t-{nick}"))?);
        }
        ns.push(lab().netns("t-server")?);
        ns.push(lab().netns("t-sw")?);
        let hosts: Vec<u8> = NODES.iter().map(|n| n.2).chain([SERVER_HOST]).collect();
        let (switch, nodes) = ns.split_last().ok_or("no namespaces")?;
        bridge(switch, &nodes.iter().collect::<Vec<_>>(), &hosts)?;

        private_dir(dir)?;
        let empty = dir.join("empty-defaults-torrc");
        std::fs::write(&empty, "").map_err(|e| format!("{}: {e}", empty.display()))?;
        let dirs: Vec<PathBuf> = NODES.iter().map(|n| dir.join(n.0)).collect();
        let mut authorities = String::new();
        for (i, (nick, role, host)) in NODES.iter().enumerate() {
            if *role != Role::Authority {
                continue;
            }
            private_dir(&dirs[i])?;
            let v3 = authority_keys(&dirs[i], &ip(*host))?;
            let fp = relay_keys(&ns[i], &dirs[i], nick, &empty)?;
            authorities.push_str(&dir_authority_line(nick, &ip(*host), &v3, &fp));
        }
        let server = HttpServer::start(&ns[NODES.len()], &ip(SERVER_HOST), &dir.join("www"))?;
        let started = Instant::now();
        let mut tors = Vec::new();
        for (i, (nick, role, host)) in NODES.iter().enumerate() {
            private_dir(&dirs[i])?;
            let torrc = dirs[i].join("torrc");
            if *role == Role::Exit {
                // The exit's resolver: its own loopback, never the host's
                // nameserver (the lab fetches by address; nothing resolves).
                let resolv = dirs[i].join("resolv.conf");
                std::fs::write(&resolv, "nameserver 127.0.0.1\n")
                    .map_err(|e| format!("{}: {e}", resolv.display()))?;
            }
            let text = common_torrc(&dirs[i], nick, &authorities)
                + &role_torrc(*role, nick, &ip(*host), &dirs[i]);
            std::fs::write(&torrc, text).map_err(|e| format!("{}: {e}", torrc.display()))?;
            let mut cmd = ns[i].command("tor");
            cmd.arg("--defaults-torrc")
                .arg(&empty)
                .arg("-f")
                .arg(&torrc);
            let proc = Proc::spawn(cmd, &dirs[i].join("stdout.log"))?;
            tors.push(Tor {
                nick,
                dir: dirs[i].clone(),
                proc,
            });
        }
        Ok(TorNet {
            started,
            tors,
            server,
            ns,
        })
    }

    fn client(&self) -> &Tor {
        &self.tors[NODES.len() - 1]
    }
    fn client_ns(&self) -> &Netns {
        &self.ns[NODES.len() - 1]
    }
    fn pids(&self) -> Vec<u32> {
        self.tors.iter().map(|t| t.proc.pid()).collect()
    }

    /// Every tor's last log lines, for error messages.
    fn logs(&self) -> String {
        self.tors
            .iter()
            .map(|t| {
                format!(
                    "--- {} ---\n{}",
                    t.nick,
                    umbra_netlab::tail(&t.notice_log(), 15)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn check_running(&self) -> R<()> {
        match self.tors.iter().find(|t| t.proc.exited()) {
            Some(t) => Err(format!(
                "tor {} exited; its output:\n{}\nlogs:\n{}",
                t.nick,
                umbra_netlab::tail(&t.proc.log_text(), 20),
                self.logs()
            )),
            None => Ok(()),
        }
    }

    /// Waits until the client has bootstrapped (100 %) and a fetch through
    /// its SOCKS port works; (seconds to bootstrap, seconds to the first
    /// fetch), from the tors' start.
    fn wait_ready(&self) -> R<(f64, f64)> {
        let started = self.started;
        let deadline = started + BOOTSTRAP_LIMIT;
        let mut bootstrapped = None;
        loop {
            self.check_running()?;
            if bootstrapped.is_none() && self.client().notice_log().contains("Bootstrapped 100%") {
                bootstrapped = Some(started.elapsed().as_secs_f64());
                eprintln!(
                    "netbench:   client bootstrapped in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            if let Some(b) = bootstrapped
                && http::fetches(self.client_ns(), &self.server, Via::Socks(SOCKS), 5.0)
            {
                return Ok((b, started.elapsed().as_secs_f64()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the Tor network did not carry a fetch within {BOOTSTRAP_LIMIT:?}; logs:\n{}",
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Waits until a fetch through the client works again: a relay that
    /// republishes its descriptor (after a bandwidth change, or a
    /// `SETCONF`) leaves the client without it until it fetches the next
    /// consensus and the descriptor.
    fn wait_usable(&self) -> R<()> {
        let deadline = Instant::now() + USABLE_LIMIT;
        while !http::fetches(self.client_ns(), &self.server, Via::Socks(SOCKS), 5.0) {
            self.check_running()?;
            if Instant::now() > deadline {
                return Err(format!(
                    "no fetch through Tor worked for {USABLE_LIMIT:?}; logs:\n{}",
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }

    /// Sets `Schedulers` on every tor through its control socket.
    fn set_scheduler(&self, scheduler: &str) -> R<()> {
        for t in &self.tors {
            t.control()?
                .command(&format!("SETCONF Schedulers={scheduler}"))?;
        }
        Ok(())
    }

    fn stop(&mut self) {
        for t in &mut self.tors {
            t.proc.stop(STOP_GRACE);
        }
    }
}

/// One bulk transfer through Tor.
#[derive(Debug, Clone)]
pub(crate) struct BulkRun {
    /// Rate from the first byte, Mbit/s.
    pub(crate) mbps: f64,
    /// Bytes received.
    pub(crate) bytes: u64,
    /// CPU seconds of all tors during the run.
    pub(crate) cpu_s: f64,
}

impl BulkRun {
    /// CPU seconds per 10⁹ bytes received.
    pub(crate) fn cpu_s_per_gb(&self) -> Option<f64> {
        umbra_bench::stats::cpu_s_per_gb(self.cpu_s, self.bytes)
    }
}

/// Everything measured with one scheduler.
#[derive(Debug, Clone)]
pub(crate) struct TorSample {
    /// `KIST` (stock) or `Vanilla`.
    pub(crate) scheduler: &'static str,
    /// Time to first byte of the small file on a warm circuit, ms.
    pub(crate) ttfb_ms: Vec<f64>,
    /// Bulk transfers.
    pub(crate) bulk: Vec<BulkRun>,
    /// `EXTENDCIRCUIT 0` to `CIRC BUILT`, ms, 3-hop circuits only.
    pub(crate) builds_ms: Vec<f64>,
    /// Builds that failed, timed out or were not 3 hops.
    pub(crate) build_failures: usize,
}

impl TorSample {
    /// Median throughput of the bulk runs, Mbit/s.
    pub(crate) fn mbps(&self) -> Option<f64> {
        median(&self.bulk.iter().map(|r| r.mbps).collect::<Vec<_>>())
    }
    /// Median CPU seconds per GB of the bulk runs.
    pub(crate) fn cpu_per_gb(&self) -> Option<f64> {
        median(
            &self
                .bulk
                .iter()
                .filter_map(BulkRun::cpu_s_per_gb)
                .collect::<Vec<_>>(),
        )
    }
    fn json(&self) -> Value {
        json!({
            "scheduler": self.scheduler,
            "throughput_1_stream": {
                "median_mbps": self.mbps(),
                "median_cpu_s_per_gb": self.cpu_per_gb(),
                "runs": self.bulk.iter().map(|r| json!({
                    "mbps": r.mbps, "bytes": r.bytes, "cpu_s": r.cpu_s,
                    "cpu_s_per_gb": r.cpu_s_per_gb(),
                })).collect::<Vec<_>>(),
            },
            "time_to_first_byte": {
                "median_ms": median(&self.ttfb_ms),
                "p90_ms": percentile(&self.ttfb_ms, 90.0),
                "samples_ms": self.ttfb_ms,
            },
            "circuit_build": {
                "median_ms": median(&self.builds_ms),
                "p90_ms": percentile(&self.builds_ms, 90.0),
                "failures": self.build_failures,
                "samples_ms": self.builds_ms,
            },
        })
    }
}

/// The whole Tor part of a run.
#[derive(Debug, Clone)]
pub(crate) struct TorResult {
    /// Seconds from starting the tors to the client's 100 %.
    pub(crate) bootstrap_s: f64,
    /// Seconds from starting the tors to the first working fetch.
    pub(crate) ready_s: f64,
    /// Resident memory of each tor once ready, KiB.
    pub(crate) rss_idle_kib: Vec<u64>,
    /// Stock tor (KIST).
    pub(crate) kist: TorSample,
    /// `Schedulers Vanilla`.
    pub(crate) vanilla: TorSample,
    /// Seconds the whole Tor part took.
    pub(crate) elapsed_s: f64,
}

impl TorResult {
    /// Mean resident memory per tor once ready, MiB.
    pub(crate) fn rss_idle_mib(&self) -> Option<f64> {
        mean(
            &self
                .rss_idle_kib
                .iter()
                .map(|&k| k as f64 / 1024.0)
                .collect::<Vec<_>>(),
        )
    }
    /// The JSON under `results.tor`.
    pub(crate) fn json(&self) -> Value {
        json!({
            "version": tor_version(),
            "relays": "3 authorities that relay (guard, middle) + 1 exit; client and server in their own namespaces",
            "bootstrap_s": self.bootstrap_s,
            "first_fetch_s": self.ready_s,
            "elapsed_s": self.elapsed_s,
            "rss_idle_kib": self.rss_idle_kib,
            "rss_idle_mean_mib": self.rss_idle_mib(),
            "kist": self.kist.json(),
            "vanilla": self.vanilla.json(),
        })
    }
}

/// `tor --version`'s first line.
pub(crate) fn tor_version() -> Option<String> {
    let out = Command::new("tor").arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| {
            l.trim()
                .trim_end_matches('.')
                .replacen("Tor version", "Tor", 1)
        })
}

/// `count` circuit builds through the client's control socket: each
/// `EXTENDCIRCUIT 0` (tor picks a 3-hop path) until `CIRC <id> BUILT`. The
/// previous circuit is closed only after the next one is built: a DESTROY
/// just before a CREATE2 on the same TLS link stalls the CREATE2 (Nagle and
/// delayed ACK) by about 40 ms.
fn circuit_builds(client: &Tor, count: usize) -> R<(Vec<f64>, usize)> {
    let mut c = client.control()?;
    c.command("SETEVENTS CIRC")?;
    let mut built = Vec::new();
    let mut failures = 0;
    let mut previous: Option<String> = None;
    for _ in 0..count {
        let (t, reply) = extend_circuit(&mut c)?;
        let id = reply
            .first()
            .and_then(|l| l.strip_prefix("250 EXTENDED "))
            .map(|s| s.trim().to_string())
            .ok_or_else(|| format!("EXTENDCIRCUIT answered {reply:?}"))?;
        let deadline = t + BUILD_LIMIT;
        let mut ok = false;
        while let Some(line) = c.next_event(deadline)? {
            let Some(e) = parse_circ(&line).filter(|e| e.id == id) else {
                continue;
            };
            match e.status.as_str() {
                "BUILT" => {
                    if e.hops == 3 {
                        built.push(t.elapsed().as_secs_f64() * 1000.0);
                        ok = true;
                    }
                    break;
                }
                "FAILED" | "CLOSED" => break,
                _ => {}
            }
        }
        if !ok {
            failures += 1;
        }
        if let Some(p) = previous.take() {
            // Already gone if it failed: its answer does not matter.
            let _ = c.command(&format!("CLOSECIRCUIT {p}"));
        }
        previous = Some(id);
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(p) = previous {
        let _ = c.command(&format!("CLOSECIRCUIT {p}"));
    }
    c.command("SETEVENTS")?;
    Ok((built, failures))
}

/// `EXTENDCIRCUIT 0`, again every 0.5 s while tor answers `551` (no exit
/// usable until it has a relay's new descriptor), for up to
/// [`USABLE_LIMIT`]; when the accepted command was sent, and its reply.
fn extend_circuit(c: &mut Control) -> R<(Instant, Vec<String>)> {
    let deadline = Instant::now() + USABLE_LIMIT;
    loop {
        let t = Instant::now();
        match c.command("EXTENDCIRCUIT 0") {
            Ok(reply) => return Ok((t, reply)),
            Err(e) if e.contains("551") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Every measure with the scheduler now set.
fn sample(opts: &Options, net: &TorNet, scheduler: &'static str) -> R<TorSample> {
    let ns = net.client_ns();
    let via = Via::Socks(SOCKS);
    net.wait_usable()?;
    let ttfb_ms = http::ttfb_series(ns, &net.server, via, TTFB_FETCHES, TTFB_INTERVAL_S)?;
    eprintln!(
        "netbench:   tor ({scheduler}) time to first byte median {:.1} ms p90 {:.1} ms",
        median(&ttfb_ms).unwrap_or(f64::NAN),
        percentile(&ttfb_ms, 90.0).unwrap_or(f64::NAN)
    );
    let pids = net.pids();
    let cpu = || pids.iter().filter_map(|&p| cpu_seconds(p)).sum::<f64>();
    let mut bulk = Vec::new();
    for run in 0..opts.runs {
        net.wait_usable()?;
        let before = cpu();
        let b = http::bulk(ns, &net.server, via, opts.secs)
            .map_err(|e| format!("{e}\nlogs:\n{}", net.logs()))?;
        let r = BulkRun {
            mbps: b.mbps,
            bytes: b.bytes,
            cpu_s: cpu() - before,
        };
        eprintln!(
            "netbench:   tor ({scheduler}) bulk run {}: {:.0} Mbit/s, {:.1} CPU s/GB",
            run + 1,
            r.mbps,
            r.cpu_s_per_gb().unwrap_or(f64::NAN)
        );
        bulk.push(r);
    }
    let (builds_ms, build_failures) = circuit_builds(net.client(), BUILDS)?;
    eprintln!(
        "netbench:   tor ({scheduler}) circuit build median {:.1} ms p90 {:.1} ms ({build_failures} failed)",
        median(&builds_ms).unwrap_or(f64::NAN),
        percentile(&builds_ms, 90.0).unwrap_or(f64::NAN)
    );
    Ok(TorSample {
        scheduler,
        ttfb_ms,
        bulk,
        builds_ms,
        build_failures,
    })
}

/// Builds the Tor network, waits for it, measures stock tor, switches
/// every tor to `Schedulers Vanilla` (a runtime `SETCONF`: the scheduler is
/// chosen again at once) and measures again.
pub(crate) fn measure(opts: &Options, work: &Path) -> R<TorResult> {
    let started = Instant::now();
    eprintln!("netbench: tor: building the network (3 authority relays, 1 exit, client, server)");
    let mut net = TorNet::start(&work.join("tor"))?;
    let (bootstrap_s, ready_s) = net.wait_ready()?;
    eprintln!("netbench:   first fetch through Tor after {ready_s:.1} s");
    let rss_idle_kib = net
        .pids()
        .iter()
        .map(|&p| rss_kib(p).unwrap_or(0))
        .collect();
    let kist = sample(opts, &net, "KIST")?;
    net.set_scheduler("Vanilla")?;
    let vanilla = sample(opts, &net, "Vanilla")?;
    net.stop();
    let elapsed_s = started.elapsed().as_secs_f64();
    eprintln!("netbench:   the Tor part took {elapsed_s:.0} s");
    Ok(TorResult {
        bootstrap_s,
        ready_s,
        rss_idle_kib,
        kist,
        vanilla,
        elapsed_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_read() {
        let cert = "dir-key-certificate-version 3\nfingerprint 5C8762CD3A6064190DC53D5E75A4E89C256900B0\ndir-key-published 2026-12-07 20:09:53\n";
        assert_eq!(
            cert_fingerprint(cert).as_deref(),
            Some("5C8762CD3A6064190DC53D5E75A4E89C256900B0")
        );
        assert_eq!(
            relay_fingerprint("auth0 C7D26F68B0A973996DEDA315D124E2608FD9C2F6\n").as_deref(),
            Some("C7D26F68B0A973996DEDA315D124E2608FD9C2F6")
        );
        assert_eq!(cert_fingerprint("nothing"), None);
    }

    #[test]
    fn torrcs_name_the_authorities_and_roles() {
        let auth = dir_authority_line("auth0", "198.18.60.10", "AA", "BB");
        assert_eq!(
            auth,
            "DirAuthority auth0 orport=5000 no-v2 v3ident=AA 198.18.60.10:7000 BB\n"
        );
        let c = common_torrc(Path::new("/d"), "exit", &auth);
        assert!(c.starts_with("TestingTorNetwork 1\nDataDirectory /d\n"));
        assert!(c.ends_with(&auth));
        let exit = role_torrc(Role::Exit, "exit", "198.18.60.20", Path::new("/x"));
        assert!(exit.contains("ORPort 198.18.60.20:5000\n"));
        assert!(exit.contains("ExitRelay 1\n"));
        assert!(exit.contains("ServerDNSResolvConfFile /x/resolv.conf\n"));
        let client = role_torrc(Role::Client, "client", "198.18.60.30", Path::new("/c"));
        assert!(client.contains("SocksPort 127.0.0.1:9050\nUseMicrodescriptors 0\n"));
        assert!(!client.contains("ORPort"));
    }
}
