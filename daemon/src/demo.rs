//! `umbra demo` (INTERFACE.md): a small overlay of real daemons in network
//! namespaces on this machine, traffic across a balanced circuit, what each
//! relay saw, then a clean teardown (issue 5, item 7).
//!
//! Every node is this same binary running `umbra run` in its own namespace
//! with its own `umbra0`; the namespaces are joined by veth pairs on
//! `198.18.0.0/15` (RFC 2544 benchmarking space, never routed) and the nodes
//! by `[[peer]]` agreements. Namespaces are named `umbrademo<pid>-<node>`.
//!
//! Everything made is recorded in a [`Lab`] before it is made, and the lab
//! tears it all down on success, on error, on a panic (its `Drop`) and on
//! SIGINT/SIGTERM: the steps run on a worker thread while this thread waits
//! for either the worker or a signal.

#![allow(clippy::print_stdout)] // the demo's report is its output

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use umbra_config::Config;
use umbra_routing::address;

use crate::control::{self, Request};
use crate::state;

/// The nodes, by name; the origin is the first, the destination the last.
const NODES: [&str; 7] = ["a", "b", "c", "d", "e", "f", "g"];
/// The agreements. `a`'s only neighbour is its pinned home `b`. From `b`
/// the shortest way to `g` (b–c–g) has too few relays for "balanced", so the
/// random walk decides: b–d–f–g, or b–c–e–g. Every walk succeeds (the unit
/// test below checks it against the real path selection).
const EDGES: [(usize, usize); 8] = [
    (0, 1),
    (1, 2),
    (1, 3),
    (2, 4),
    (2, 6),
    (3, 5),
    (4, 6),
    (5, 6),
];
/// The node that sends the traffic.
const ORIGIN: usize = 0;
/// The origin's pinned home node, its first hop.
const HOME: usize = 1;
/// The node the traffic goes to.
const DESTINATION: usize = 6;
/// The link port every node listens on, on its veth addresses.
const LINK_PORT: u16 = 443;
/// Edge `i` gets the subnet `198.18.(VETH_SUBNET_BASE + i).0/24`.
const VETH_SUBNET_BASE: usize = 10;
/// How long a daemon may take to answer on its control socket.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the links and then the graph may take to come up.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the first circuit may take to build.
const CIRCUIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Between two polls of the daemons.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Pings sent from the origin to the destination.
const PING_COUNT: u32 = 5;
/// Length of the TCP transfer.
const IPERF_SECS: u32 = 3;
/// How long stopped daemons get to exit before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Log lines shown per daemon when something fails.
const LOG_TAIL_LINES: usize = 12;

/// Set when a signal arrived: the worker makes nothing more.
static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Runs `umbra demo`.
pub(crate) fn run() -> Result<()> {
    preflight()?;
    let lab = Arc::new(Mutex::new(Lab::new()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let outcome = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
        let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let worker_lab = lab.clone();
        std::thread::Builder::new()
            .name("demo".into())
            .spawn(move || {
                let _ = tx.send(steps(&worker_lab));
            })
            .context("starting the demo thread")?;
        anyhow::Ok(tokio::select! {
            r = rx => Some(r.unwrap_or_else(|_| Err(anyhow!("the demo thread panicked (a bug)")))),
            _ = int.recv() => None,
            _ = term.recv() => None,
        })
    })?;
    match outcome {
        Some(result) => {
            let said = lock(&lab).cleanup();
            eprintln!("{said}");
            result
        }
        None => {
            CANCELLED.store(true, Ordering::SeqCst);
            eprintln!("\ninterrupted: cleaning up…");
            // Waits for a step that is making something to finish, so it is
            // recorded and torn down too.
            let said = lock(&lab).cleanup();
            eprintln!("{said}");
            std::process::exit(130)
        }
    }
}

/// Root, `/dev/net/tun` and the tools, before anything is made.
fn preflight() -> Result<()> {
    // /proc/self/status names the effective uid; no unsafe libc call needed.
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    if euid != Some("0") {
        bail!(
            "umbra demo needs root: it makes network namespaces, veth pairs and a TUN \
             interface per node; run it as `sudo umbra demo`"
        );
    }
    if !Path::new("/dev/net/tun").exists() {
        bail!("umbra demo needs /dev/net/tun for the nodes' TUN interfaces: run `modprobe tun`");
    }
    for (tool, package, why) in [
        ("ip", "iproute2", "to make the namespaces and veth pairs"),
        ("ping", "iputils-ping", "to ping across the circuit"),
        (
            "iperf3",
            "iperf3",
            "to measure the throughput across the circuit",
        ),
    ] {
        let found = Command::new(tool)
            .arg(if tool == "iperf3" { "-v" } else { "-V" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            bail!(
                "umbra demo needs `{tool}` {why}, and it is not installed: \
                 `apt-get install {package}`"
            );
        }
    }
    Ok(())
}

fn lock(lab: &Mutex<Lab>) -> MutexGuard<'_, Lab> {
    lab.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Everything the demo made, so it can all be removed.
#[derive(Debug)]
struct Lab {
    /// The temporary directory: configs, state, sockets and logs.
    dir: PathBuf,
    dir_made: bool,
    /// Namespaces, recorded before they are added.
    namespaces: Vec<String>,
    /// The `umbra run` processes, with their node's name.
    daemons: Vec<(String, Child)>,
    /// Other processes (the iperf3 server).
    helpers: Vec<Child>,
    cleaned: bool,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            dir: std::env::temp_dir().join(format!("umbrademo-{}", std::process::id())),
            dir_made: false,
            namespaces: Vec::new(),
            daemons: Vec::new(),
            helpers: Vec::new(),
            cleaned: false,
        }
    }

    /// Stops every process, deletes every namespace and the directory, and
    /// says what it did. Safe to call twice.
    fn cleanup(&mut self) -> String {
        if self.cleaned {
            return "already cleaned up".into();
        }
        self.cleaned = true;
        for h in &mut self.helpers {
            let _ = h.kill();
            let _ = h.wait();
        }
        // SIGTERM first, so each daemon removes its TUN and says goodbye on
        // its links; then SIGKILL whatever is left.
        for (_, d) in &self.daemons {
            let _ = Command::new("kill")
                .args(["-TERM", &d.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + STOP_GRACE;
        for (_, d) in &mut self.daemons {
            while d.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        let mut deleted = 0;
        let mut left = Vec::new();
        for ns in &self.namespaces {
            // Anything still running inside (a ping, an iperf3 client).
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let gone = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if gone {
                deleted += 1;
            } else if Path::new("/run/netns").join(ns).exists() {
                left.push(ns.clone());
            }
        }
        let dir_note = if self.dir_made {
            match fs::remove_dir_all(&self.dir) {
                Ok(()) => format!(", removed {}", self.dir.display()),
                Err(e) => format!(", could not remove {} ({e})", self.dir.display()),
            }
        } else {
            String::new()
        };
        let mut said = format!(
            "cleaned up: stopped {} daemons, deleted {deleted} namespaces{dir_note}",
            self.daemons.len()
        );
        if !left.is_empty() {
            let _ = write!(
                said,
                "\nwarning: could not delete {}: remove with `ip netns del NAME`",
                left.join(", ")
            );
        }
        said
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Runs `f` on the lab unless a signal arrived; the lock is held only while
/// something is made, never while waiting.
fn making<T>(lab: &Mutex<Lab>, f: impl FnOnce(&mut Lab) -> Result<T>) -> Result<T> {
    let mut guard = lock(lab);
    if CANCELLED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    f(&mut guard)
}

/// Deletes `umbrademo<pid>-*` namespaces whose demo process is gone (it
/// was killed with SIGKILL and could not clean up), with what runs in them.
fn remove_stale_namespaces() {
    let list = sh(&["ip", "netns", "list"]).unwrap_or_default();
    let mut removed = Vec::new();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("umbrademo")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        // A zombie has an empty command line; a live demo has one.
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !cmdline.is_empty() {
            continue;
        }
        if let Ok(pids) = sh(&["ip", "netns", "pids", name]) {
            for p in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", p]).status();
            }
        }
        if sh(&["ip", "netns", "del", name]).is_ok() {
            removed.push(name.to_string());
        }
        let _ = fs::remove_dir_all(std::env::temp_dir().join(format!("umbrademo-{pid}")));
    }
    removed.sort();
    if !removed.is_empty() {
        eprintln!(
            "removed {} namespaces left by an earlier demo that was killed: {}",
            removed.len(),
            removed.join(", ")
        );
    }
}

/// Runs a command and returns its stdout, or an error naming the command
/// and its stderr.
fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running `{}`", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One node of the demo overlay.
#[derive(Debug)]
struct Node {
    name: &'static str,
    ns: String,
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    key: String,
    address: std::net::Ipv6Addr,
}

impl Node {
    fn call(&self, request: &Request) -> Result<Value> {
        control::call(&self.socket, request)
    }

    fn status(&self) -> Result<Value> {
        self.call(&Request::Status)
    }

    /// The last lines of its log.
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines[from..]
            .iter()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A command run inside this node's namespace.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }
}

/// The nodes' log tails, for an error message.
fn logs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "--- node {} ({}), last lines of {}:\n{}",
                n.name,
                n.ns,
                n.log.display(),
                n.log_tail()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Fails if a daemon has exited, with its log.
fn check_alive(lab: &Mutex<Lab>, nodes: &[Node]) -> Result<()> {
    let mut lab = lock(lab);
    for (name, child) in &mut lab.daemons {
        if let Some(status) = child.try_wait().ok().flatten() {
            let node = nodes.iter().find(|n| n.name == name.as_str());
            bail!(
                "the daemon of node {name} exited ({status}); its log:\n{}",
                node.map(Node::log_tail).unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Polls `check` until it gives `Some`, or fails after `limit` saying what
/// it waited for, the last thing `check` noted, and the daemons' logs.
fn wait_for<T>(
    lab: &Mutex<Lab>,
    nodes: &[Node],
    limit: Duration,
    what: &str,
    mut check: impl FnMut(&mut String) -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        if CANCELLED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        check_alive(lab, nodes)?;
        if let Some(v) = check(&mut last) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            let last = if last.is_empty() {
                String::new()
            } else {
                format!(" (last: {last})")
            };
            bail!(
                "timed out after {} s waiting for {what}{last}\n{}",
                limit.as_secs(),
                logs(nodes)
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The demo's steps; prints progress on stderr and the report on stdout.
fn steps(lab: &Mutex<Lab>) -> Result<()> {
    let started = Instant::now();
    let exe = std::env::current_exe().context("finding the umbra binary")?;
    let pid = std::process::id();
    let total = 6;
    let step = |n: u32, text: &str| eprintln!("[{n}/{total}] {text}");
    println!(
        "umbra demo: {} real umbra daemons in network namespaces on this machine",
        NODES.len()
    );
    remove_stale_namespaces();

    // 1. Namespaces and veth pairs.
    let dir = making(lab, |lab| {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&lab.dir)
            .with_context(|| format!("creating {}", lab.dir.display()))?;
        lab.dir_made = true;
        Ok(lab.dir.clone())
    })?;
    let mut nodes = Vec::new();
    for name in NODES {
        let ns = format!("umbrademo{pid}-{name}");
        making(lab, |lab| {
            lab.namespaces.push(ns.clone());
            sh(&["ip", "netns", "add", &ns])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            Ok(())
        })?;
        let node_dir = dir.join(name);
        nodes.push(Node {
            name,
            ns,
            config: node_dir.join("umbra.toml"),
            socket: node_dir.join("control.sock"),
            log: node_dir.join("umbra.log"),
            dir: node_dir,
            key: String::new(),
            address: std::net::Ipv6Addr::UNSPECIFIED,
        });
    }
    // Per node: its listen addresses, and (peer, peer's address) per edge.
    let mut listen: Vec<Vec<String>> = vec![Vec::new(); NODES.len()];
    let mut peers: Vec<Vec<(usize, String)>> = vec![Vec::new(); NODES.len()];
    for (i, &(a, b)) in EDGES.iter().enumerate() {
        let (ip_a, ip_b) = (
            format!("198.18.{}.1", VETH_SUBNET_BASE + i),
            format!("198.18.{}.2", VETH_SUBNET_BASE + i),
        );
        // Each end is named after the node it leads to, inside its own
        // namespace, so nothing is made in the host's namespace.
        let (if_a, if_b) = (format!("to-{}", NODES[b]), format!("to-{}", NODES[a]));
        let (ns_a, ns_b) = (nodes[a].ns.as_str(), nodes[b].ns.as_str());
        making(lab, |_| {
            sh(&[
                "ip", "link", "add", &if_a, "netns", ns_a, "type", "veth", "peer", "name", &if_b,
                "netns", ns_b,
            ])?;
            for (ns, ifname, ip) in [(ns_a, &if_a, &ip_a), (ns_b, &if_b, &ip_b)] {
                sh(&[
                    "ip",
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{ip}/24"),
                    "dev",
                    ifname,
                ])?;
                sh(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
            }
            Ok(())
        })?;
        listen[a].push(ip_a.clone());
        listen[b].push(ip_b.clone());
        peers[a].push((b, ip_b));
        peers[b].push((a, ip_a));
    }
    step(
        1,
        &format!(
            "namespaces: {} made (umbrademo{pid}-a … -g), joined by {} veth pairs on 198.18.0.0/15",
            NODES.len(),
            EDGES.len()
        ),
    );

    // 2. Identities, configs, daemons.
    for node in &mut nodes {
        let config = Config {
            state_dir: node.dir.join("state"),
            control_socket: node.socket.clone(),
            ..Config::default()
        };
        let (id, _) = state::load_or_create_identity(&config)
            .with_context(|| format!("making node {}'s identity", node.name))?;
        node.key = hex::encode(id.public());
        node.address = address::address_for_key(&id.public(), config.address_prefix);
    }
    for (i, node) in nodes.iter().enumerate() {
        let mut text = format!(
            "# umbra demo: node {}\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\n",
            node.name,
            node.dir.join("state").display(),
            node.socket.display()
        );
        if i == ORIGIN {
            let _ = write!(text, "\n[home]\nkey = \"{}\"\n", nodes[HOME].key);
        }
        let _ = write!(
            text,
            "\n[listen]\nhttps = [{}]\n",
            listen[i]
                .iter()
                .map(|ip| format!("\"{ip}:{LINK_PORT}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (j, ip) in &peers[i] {
            let _ = write!(
                text,
                "\n[[peer]]\nkey = \"{}\"\nendpoints = [\"{ip}:{LINK_PORT}\"]\nterms = \"1TB/30d\"\n",
                nodes[*j].key
            );
        }
        fs::write(&node.config, text)
            .with_context(|| format!("writing {}", node.config.display()))?;
        let log = fs::File::create(&node.log)
            .with_context(|| format!("creating {}", node.log.display()))?;
        making(lab, |lab| {
            let child = Command::new("ip")
                .args(["netns", "exec", &node.ns])
                .arg(&exe)
                .arg("--config")
                .arg(&node.config)
                .arg("run")
                .env("RUST_LOG", "info")
                // Plain logs: their tails are quoted in error messages.
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                // Its own process group: a Ctrl-C in the terminal reaches
                // only the demo, which then stops the daemons in order.
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting node {}'s daemon", node.name))?;
            lab.daemons.push((node.name.to_string(), child));
            Ok(())
        })?;
    }
    wait_for(
        lab,
        &nodes,
        DAEMON_START_TIMEOUT,
        "every daemon to answer on its control socket",
        |last| {
            let silent: Vec<&str> = nodes
                .iter()
                .filter(|n| n.status().is_err())
                .map(|n| n.name)
                .collect();
            *last = format!("not answering yet: {}", silent.join(", "));
            silent.is_empty().then_some(())
        },
    )?;
    step(
        2,
        &format!(
            "daemons: {} running `umbra run`, each with its own umbra0",
            nodes.len()
        ),
    );

    // 3. Links.
    let mut shown = 0;
    wait_for(
        lab,
        &nodes,
        CONVERGE_TIMEOUT,
        "every link to come up",
        |last| {
            let up = EDGES
                .iter()
                .filter(|&&(a, b)| link_up(&nodes[a], &nodes[b].key))
                .count();
            if up > shown {
                shown = up;
                step(3, &format!("links up {up}/{}", EDGES.len()));
            }
            *last = format!("{up}/{} links up", EDGES.len());
            (up == EDGES.len()).then_some(())
        },
    )?;

    // 4. The graph.
    wait_for(
        lab,
        &nodes,
        CONVERGE_TIMEOUT,
        "the graph to converge",
        |last| {
            let views: Vec<(u64, u64)> = nodes
                .iter()
                .map(|n| {
                    let s = n.status().unwrap_or_default();
                    (
                        s["graph"]["nodes"].as_u64().unwrap_or(0),
                        s["graph"]["edges"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            *last = views
                .iter()
                .zip(&nodes)
                .map(|((n, e), node)| format!("{} knows {n} nodes/{e} edges", node.name))
                .collect::<Vec<_>>()
                .join(", ");
            views
                .iter()
                .all(|&(n, e)| n == NODES.len() as u64 && e == EDGES.len() as u64)
                .then_some(())
        },
    )?;
    step(
        4,
        &format!(
            "graph converged: every node knows {} nodes and {} agreement edges",
            NODES.len(),
            EDGES.len()
        ),
    );

    // 5. The circuit.
    let (origin, dest) = (&nodes[ORIGIN], &nodes[DESTINATION]);
    let build_started = Instant::now();
    let path = wait_for(
        lab,
        &nodes,
        CIRCUIT_TIMEOUT,
        &format!("node {}'s circuit to {} to build", origin.name, dest.name),
        |last| match origin.call(&Request::Path {
            address: dest.address,
        }) {
            Ok(v) if v["built"] == true => Some(v),
            Ok(v) => {
                *last = format!(
                    "{} of {} hops built",
                    v["hops_built"],
                    v["hops"].as_array().map_or(0, Vec::len)
                );
                None
            }
            Err(e) => {
                *last = format!("{e:#}");
                None
            }
        },
    )?;
    let hops: Vec<usize> = path["hops"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| index_of(&nodes, &h["key"]))
        .collect::<Result<_>>()?;
    let mut route = vec![ORIGIN];
    route.extend(&hops);
    step(
        5,
        &format!(
            "circuit built: {} ({} relays, {:.1} s)",
            names(&nodes, &route),
            hops.len().saturating_sub(1),
            build_started.elapsed().as_secs_f64()
        ),
    );

    // 6. Traffic.
    step(
        6,
        &format!(
            "traffic: {PING_COUNT} pings and a {IPERF_SECS} s iperf3 TCP transfer from {} to {}",
            origin.name, dest.name
        ),
    );
    let ping = ping(origin, dest)?;
    if ping.received == 0 {
        bail!(
            "no ping from {} to {} was answered:\n{}\n{}",
            origin.name,
            dest.name,
            ping.output.trim(),
            logs(&nodes)
        );
    }
    let iperf = iperf3(lab, origin, dest).map_err(|e| anyhow!("{e:#}\n{}", logs(&nodes)))?;

    // The report.
    println!();
    println!("nodes (one namespace and one umbra daemon each):");
    for (i, n) in nodes.iter().enumerate() {
        let role = match i {
            ORIGIN => format!("origin, home node {}", NODES[HOME]),
            DESTINATION => "destination".to_string(),
            _ => String::new(),
        };
        let links: Vec<&str> = EDGES
            .iter()
            .filter_map(|&(a, b)| match (a == i, b == i) {
                (true, _) => Some(NODES[b]),
                (_, true) => Some(NODES[a]),
                _ => None,
            })
            .collect();
        println!(
            "  {}  {:<20}  {:<40}  agreements with {}{}",
            n.name,
            n.ns,
            n.address,
            links.join(", "),
            if role.is_empty() {
                String::new()
            } else {
                format!("  ({role})")
            }
        );
    }

    println!();
    println!(
        "path from {} to {} (`umbra path {}` on {}), circuit {}:",
        origin.name,
        dest.name,
        dest.address,
        origin.name,
        path["circuit"].as_str().unwrap_or("?")
    );
    for (i, hop) in path["hops"].as_array().into_iter().flatten().enumerate() {
        let sees: Vec<String> = hop["sees"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                if s.is_null() {
                    "-".to_string()
                } else {
                    index_of(&nodes, &s["key"]).map_or("?".into(), |j| NODES[j].to_string())
                }
            })
            .collect();
        println!(
            "  {}. {}  sees {} → {}  {}",
            i + 1,
            NODES[hops[i]],
            sees.first().map_or("-", String::as_str),
            sees.get(1).map_or("-", String::as_str),
            hop["role"].as_str().unwrap_or_default()
        );
    }

    println!();
    println!(
        "what each node's own control socket says about this circuit (`umbra status --json`):"
    );
    println!(
        "  {:<4}  {:<12}  {:<4}  {:<4}  {:<18}  {:>8}  {:>9}",
        "NODE", "ROLE", "PREV", "NEXT", "KNOWS THE PATH?", "CELLS IN", "CELLS OUT"
    );
    let mut relay_knows_more = Vec::new();
    for (pos, &i) in route.iter().enumerate() {
        let prev = pos.checked_sub(1).map(|p| route[p]);
        let next = route.get(pos + 1).copied();
        let want_role = match pos {
            0 => "origin",
            _ if next.is_none() => "destination",
            _ => "relay",
        };
        let status = nodes[i].status()?;
        let view = status["circuit_list"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| {
                c["role"] == want_role
                    && c["pooled"] != true
                    && neighbour_is(&nodes, &c["prev"], prev)
                    && neighbour_is(&nodes, &c["next"], next)
            });
        let Some(view) = view else {
            println!(
                "  {:<4}  no {want_role} circuit from {} to {} in its status",
                nodes[i].name,
                prev.map_or("-", |p| NODES[p]),
                next.map_or("-", |n| NODES[n])
            );
            continue;
        };
        let path_len = view["path"].as_array().map_or(0, Vec::len);
        let knows = match want_role {
            "origin" => format!("yes, all {path_len} hops"),
            "destination" => format!(
                "no; session peer {}",
                if view["peer"].is_null() {
                    "-".to_string()
                } else {
                    index_of(&nodes, &view["peer"]["key"]).map_or("?".into(), |j| NODES[j].into())
                }
            ),
            _ if path_len == 0 && view["peer"].is_null() => "no".to_string(),
            _ => {
                relay_knows_more.push(nodes[i].name);
                format!("yes ({path_len} hops)")
            }
        };
        let role = if pos == 1 {
            "relay (home)".to_string()
        } else {
            want_role.to_string()
        };
        println!(
            "  {:<4}  {:<12}  {:<4}  {:<4}  {:<18}  {:>8}  {:>9}",
            nodes[i].name,
            role,
            prev.map_or("-", |p| NODES[p]),
            next.map_or("-", |n| NODES[n]),
            knows,
            view["cells_in"].to_string(),
            view["cells_out"].to_string()
        );
    }
    if relay_knows_more.is_empty() {
        println!(
            "  Each relay's view names only the node before it and the node after it: no relay holds \
             the path, and none but the destination knows the session's other end."
        );
    } else {
        println!(
            "  warning: relay(s) {} hold more than their two neighbours",
            relay_knows_more.join(", ")
        );
    }

    println!();
    println!(
        "ping -6 -c {PING_COUNT} from {} to {}: {}/{PING_COUNT} answered, round trips {} ms",
        origin.name,
        dest.name,
        ping.received,
        ping.rtts_ms
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(summary) = &ping.summary {
        println!("  rtt min/avg/max/mdev = {summary} ms");
    }
    println!(
        "iperf3 TCP from {} to {}, {IPERF_SECS} s over {} relays: {:.1} Mbit/s ({:.1} MB received, {} retransmits)",
        origin.name,
        dest.name,
        hops.len().saturating_sub(1),
        iperf.bits_per_second / 1e6,
        iperf.bytes as f64 / 1e6,
        iperf.retransmits
    );
    println!();
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Whether `node` has a link to `key` that is up.
fn link_up(node: &Node, key: &str) -> bool {
    node.call(&Request::Peers).is_ok_and(|v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|p| p["key"] == key && p["state"] == "up"))
    })
}

/// The index of the node whose key is `key` (a JSON string).
fn index_of(nodes: &[Node], key: &Value) -> Result<usize> {
    let key = key.as_str().unwrap_or_default();
    nodes
        .iter()
        .position(|n| n.key == key)
        .ok_or_else(|| anyhow!("the path names a key that is no demo node: {key}"))
}

/// Whether a circuit's `prev`/`next` (`{key, address}` or null) is `want`.
fn neighbour_is(nodes: &[Node], v: &Value, want: Option<usize>) -> bool {
    match want {
        None => v.is_null(),
        Some(i) => v["key"] == nodes[i].key.as_str(),
    }
}

/// `a → b → c`.
fn names(nodes: &[Node], route: &[usize]) -> String {
    route
        .iter()
        .map(|&i| nodes[i].name)
        .collect::<Vec<_>>()
        .join(" → ")
}

/// What `ping` measured.
#[derive(Debug)]
struct Ping {
    received: usize,
    rtts_ms: Vec<f64>,
    /// `min/avg/max/mdev`, as ping printed it.
    summary: Option<String>,
    output: String,
}

fn ping(from: &Node, to: &Node) -> Result<Ping> {
    let out = from
        .command("ping")
        .args([
            "-6",
            "-n",
            "-c",
            &PING_COUNT.to_string(),
            "-i",
            "0.2",
            "-W",
            "5",
        ])
        .arg(to.address.to_string())
        .stdin(Stdio::null())
        .output()
        .context("running ping")?;
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    let rtts_ms: Vec<f64> = output
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    let summary = output
        .lines()
        .find_map(|l| l.split(" = ").nth(1).filter(|_| l.starts_with("rtt")))
        .map(|s| s.trim_end_matches(" ms").to_string());
    Ok(Ping {
        received: rtts_ms.len(),
        rtts_ms,
        summary,
        output,
    })
}

/// What iperf3 measured at the receiver.
#[derive(Debug)]
struct Iperf {
    bits_per_second: f64,
    bytes: u64,
    retransmits: u64,
}

fn iperf3(lab: &Mutex<Lab>, from: &Node, to: &Node) -> Result<Iperf> {
    let server_log = from.dir.with_file_name("iperf3-server.log");
    let log = fs::File::create(&server_log)
        .with_context(|| format!("creating {}", server_log.display()))?;
    making(lab, |lab| {
        let child = to
            .command("iperf3")
            .args(["-s", "-1", "-B", &to.address.to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the iperf3 server")?;
        lab.helpers.push(child);
        Ok(())
    })?;
    // Until the server listens (`ss` is in iproute2, like `ip`).
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let listening = to
            .command("ss")
            .args(["-Hltn", "sport = :5201"])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        if listening {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = from
        .command("iperf3")
        .args(["-6", "-J", "-c", &to.address.to_string()])
        .args(["-t", &IPERF_SECS.to_string(), "--connect-timeout", "5000"])
        .stdin(Stdio::null())
        .output()
        .context("running the iperf3 client")?;
    let report: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow!(
            "iperf3 printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(err) = report["error"].as_str() {
        bail!(
            "iperf3 from {} to {} failed: {err}; server said: {}",
            from.name,
            to.name,
            fs::read_to_string(&server_log).unwrap_or_default().trim()
        );
    }
    let end = &report["end"];
    Ok(Iperf {
        bits_per_second: end["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0),
        bytes: end["sum_received"]["bytes"].as_u64().unwrap_or(0),
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand_core::RngCore;
    use umbra_routing::Identity;
    use umbra_routing::graph::{Graph, Time};
    use umbra_routing::path::{Anonymity, MIN_RELAYS_BALANCED, PathRequest, choose};

    use super::{DESTINATION, EDGES, HOME, NODES, ORIGIN};

    /// A small deterministic generator for the random walk.
    struct Lcg(u64);
    impl RngCore for Lcg {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = self.next_u64() as u8;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    /// The demo's overlay always offers a balanced path from the origin to
    /// the destination: home first, at least 3 relays, agreement edges only,
    /// no repeats; and the random walk really chooses between two paths.
    #[test]
    fn demo_overlay_always_has_a_balanced_path() {
        let ids: Vec<Identity> = (0..NODES.len())
            .map(|i| Identity::from_seed(&[i as u8 + 1; 32]))
            .collect();
        let keys: Vec<[u8; 32]> = ids.iter().map(Identity::public).collect();
        let now = Time::from_unix_secs(1_700_000_000);
        let g = Graph::from_topology(&ids, &EDGES, now).expect("graph");
        let live = |_: &[u8; 32]| true;
        let req = PathRequest {
            origin: keys[ORIGIN],
            destination: keys[DESTINATION],
            anonymity: Anonymity::Balanced,
            home: Some(keys[HOME]),
            live: &live,
            avoid: &|_, _| false,
        };
        let mut seen = BTreeSet::new();
        for seed in 0..2000 {
            let p = choose(&g, &req, &mut Lcg(seed)).expect("a balanced path");
            assert_eq!(p[0], keys[HOME], "home first");
            assert_eq!(p.last(), Some(&keys[DESTINATION]));
            assert!(p.len() > MIN_RELAYS_BALANCED, "{} relays", p.len() - 1);
            let mut all = vec![keys[ORIGIN]];
            all.extend(&p);
            for w in all.windows(2) {
                assert!(g.edge(&w[0], &w[1]).is_some(), "not an agreement edge");
            }
            let distinct: BTreeSet<_> = all.iter().collect();
            assert_eq!(distinct.len(), all.len(), "a node repeats");
            seen.insert(p);
        }
        assert_eq!(
            seen.len(),
            2,
            "the walk chooses between b-c-e-g and b-d-f-g"
        );
    }
}
