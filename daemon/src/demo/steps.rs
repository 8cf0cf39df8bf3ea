//! The demo's scenario, one function per step; progress goes to stderr.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use serde_json::Value;
use umbra_netlab::{IperfOptions, IperfResult, IperfServer, Lab, PingOptions, PingStats};

use super::overlay::{DESTINATION, EDGES, NODES, ORIGIN, Overlay, work_dir};
use crate::control::Request;

/// How long the daemons may take to answer on their control sockets.
const DAEMON_START_TIMEOUT: Duration = umbra_netlab::START_TIMEOUT;
/// How long the links and then the graph may take to come up.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the first circuit may take to build.
const CIRCUIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Pings sent from the origin to the destination.
pub(super) const PING_COUNT: usize = 5;
/// Length of the TCP transfer.
pub(super) const IPERF_SECS: u32 = 3;
/// The number of steps.
const STEPS: u32 = 6;

fn step(n: u32, text: &str) {
    eprintln!("[{n}/{STEPS}] {text}");
}

/// The circuit the origin built, as `umbra path` shows it.
pub(super) struct Circuit {
    /// `umbra path`'s answer.
    pub(super) path: Value,
    /// Its hops, as node indices.
    pub(super) hops: Vec<usize>,
    /// The origin, then the hops.
    pub(super) route: Vec<usize>,
}

/// Namespaces an earlier demo left when it was killed with SIGKILL.
pub(super) fn remove_stale(lab: &Lab) {
    let removed = lab.sweep_stale(|pid| Some(work_dir(pid)));
    if !removed.is_empty() {
        eprintln!(
            "removed {} namespaces left by an earlier demo that was killed: {}",
            removed.len(),
            removed.join(", ")
        );
    }
}

/// 1. Namespaces and veth pairs.
pub(super) fn namespaces(lab: &Lab) -> Result<Overlay> {
    let o = Overlay::wire(lab)?;
    step(
        1,
        &format!(
            "namespaces: {} made ({} … -g), joined by {} veth pairs on 198.18.0.0/15",
            NODES.len(),
            lab.name("a"),
            EDGES.len()
        ),
    );
    Ok(o)
}

/// 2. Identities, configs, daemons.
pub(super) fn daemons(lab: &Lab, o: &mut Overlay) -> Result<()> {
    o.start_daemons(lab)?;
    o.wait_for(
        DAEMON_START_TIMEOUT,
        "every daemon to answer on its control socket",
        |nodes, last| {
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
            NODES.len()
        ),
    );
    Ok(())
}

/// 3. Links, with progress as they come up.
pub(super) fn links(o: &mut Overlay) -> Result<()> {
    let mut shown = 0;
    o.wait_for(CONVERGE_TIMEOUT, "every link to come up", |nodes, last| {
        let up = EDGES
            .iter()
            .filter(|&&(a, b)| nodes[a].link_up(&nodes[b].key))
            .count();
        if up > shown {
            shown = up;
            step(3, &format!("links up {up}/{}", EDGES.len()));
        }
        *last = format!("{up}/{} links up", EDGES.len());
        (up == EDGES.len()).then_some(())
    })
}

/// 4. Every node holds the whole graph.
pub(super) fn graph(o: &mut Overlay) -> Result<()> {
    o.wait_for(CONVERGE_TIMEOUT, "the graph to converge", |nodes, last| {
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
            .zip(nodes)
            .map(|((n, e), node)| format!("{} knows {n} nodes/{e} edges", node.name))
            .collect::<Vec<_>>()
            .join(", ");
        views
            .iter()
            .all(|&(n, e)| n == NODES.len() as u64 && e == EDGES.len() as u64)
            .then_some(())
    })?;
    step(
        4,
        &format!(
            "graph converged: every node knows {} nodes and {} agreement edges",
            NODES.len(),
            EDGES.len()
        ),
    );
    Ok(())
}

/// 5. The origin's circuit to the destination.
pub(super) fn circuit(o: &mut Overlay) -> Result<Circuit> {
    let build_started = Instant::now();
    let (origin, dest) = (NODES[ORIGIN], NODES[DESTINATION]);
    let address = o.nodes[DESTINATION].address;
    let path = o.wait_for(
        CIRCUIT_TIMEOUT,
        &format!("node {origin}'s circuit to {dest} to build"),
        |nodes, last| match nodes[ORIGIN].call(&Request::Path { address }) {
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
        .map(|h| o.index_of(&h["key"]))
        .collect::<Result<_>>()?;
    let mut route = vec![ORIGIN];
    route.extend(&hops);
    step(
        5,
        &format!(
            "circuit built: {} ({} relays, {:.1} s)",
            o.names(&route),
            hops.len().saturating_sub(1),
            build_started.elapsed().as_secs_f64()
        ),
    );
    Ok(Circuit { path, hops, route })
}

/// 6. Pings and a TCP transfer from the origin to the destination.
pub(super) fn traffic(lab: &Lab, o: &Overlay) -> Result<(PingStats, IperfResult)> {
    let (origin, dest) = (NODES[ORIGIN], NODES[DESTINATION]);
    step(
        6,
        &format!(
            "traffic: {PING_COUNT} pings and a {IPERF_SECS} s iperf3 TCP transfer from {origin} to {dest}"
        ),
    );
    let (from, to) = (&o.netns[ORIGIN], &o.netns[DESTINATION]);
    let to_addr = o.nodes[DESTINATION].address.to_string();
    let opts = PingOptions {
        wait_secs: 5,
        ..PingOptions::new(PING_COUNT, 0.2)
    };
    let ping = umbra_netlab::ping(from, &to_addr, opts)?;
    if ping.received() == 0 {
        bail!(
            "no ping from {origin} to {dest} was answered:\n{}\n{}",
            ping.output.trim(),
            o.logs()
        );
    }
    let dir = lab.dir().unwrap_or(std::path::Path::new("."));
    let server_log = dir.join("iperf3-server.log");
    let _server = IperfServer::start(to, &to_addr, &server_log, true)?;
    let iperf =
        umbra_netlab::iperf3(from, &to_addr, IperfOptions::new(IPERF_SECS)).map_err(|e| {
            anyhow!(
                "iperf3 from {origin} to {dest} failed: {e}; server said: {}\n{}",
                std::fs::read_to_string(&server_log)
                    .unwrap_or_default()
                    .trim(),
                o.logs()
            )
        })?;
    Ok((ping, iperf))
}
