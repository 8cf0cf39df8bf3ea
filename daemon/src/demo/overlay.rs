//! The demo's overlay: its topology, and its nodes (a namespace and a
//! daemon each) in the lab.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde_json::Value;
use umbra_netlab::{Daemon, Lab, Links, Netns, UmbraConfig};

use crate::control::{self, Request};

/// The demo's work directory: configs, state, sockets and logs.
pub(super) fn work_dir(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("umbrademo-{pid}"))
}

/// The nodes, by name; the origin is the first, the destination the last.
pub(super) const NODES: [&str; 7] = ["a", "b", "c", "d", "e", "f", "g"];
/// The agreements. `a`'s only neighbour is its pinned home `b`. From `b`
/// the shortest way to `g` (b–c–g) has too few relays for "balanced", so the
/// random walk decides: b–d–f–g, or b–c–e–g. Every walk succeeds (the unit
/// test below checks it against the real path selection).
pub(super) const EDGES: [(usize, usize); 8] = [
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
pub(super) const ORIGIN: usize = 0;
/// The origin's pinned home node, its first hop.
pub(super) const HOME: usize = 1;
/// The node the traffic goes to.
pub(super) const DESTINATION: usize = 6;
/// The link port every node listens on, on its veth addresses.
const LINK_PORT: u16 = 443;
/// Edge `i` gets the subnet `198.18.(VETH_SUBNET_BASE + i).0/24`.
const VETH_SUBNET_BASE: u8 = 10;
/// Between two polls of the daemons.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Log lines shown per daemon when something fails.
const LOG_TAIL_LINES: usize = 12;

/// One node of the demo overlay.
#[derive(Debug)]
pub(super) struct Node {
    pub(super) name: &'static str,
    pub(super) daemon: Daemon,
    pub(super) key: String,
    pub(super) address: std::net::Ipv6Addr,
}

impl Node {
    pub(super) fn call(&self, request: &Request) -> Result<Value> {
        control::call(&self.daemon.socket, request)
    }

    pub(super) fn status(&self) -> Result<Value> {
        self.call(&Request::Status)
    }

    /// Whether it has a link to `key` that is up.
    pub(super) fn link_up(&self, key: &str) -> bool {
        self.call(&Request::Peers).is_ok_and(|v| {
            v.as_array()
                .is_some_and(|a| a.iter().any(|p| p["key"] == key && p["state"] == "up"))
        })
    }
}

/// The namespaces, their veth pairs, and a node per namespace.
#[derive(Debug)]
pub(super) struct Overlay {
    /// Daemons before namespaces: they stop first.
    pub(super) nodes: Vec<Node>,
    pub(super) netns: Vec<Netns>,
    links: Links,
}

impl Overlay {
    /// The namespaces, joined by veth pairs along [`EDGES`]; each end is
    /// named after the node it leads to, inside its own namespace, so
    /// nothing is made in the host's namespace.
    pub(super) fn wire(lab: &Lab) -> Result<Overlay> {
        let netns = NODES
            .iter()
            .map(|name| lab.netns(name))
            .collect::<Result<Vec<_>, _>>()?;
        let links = Links::new(
            &netns,
            &EDGES,
            VETH_SUBNET_BASE,
            umbra_netlab::named_after_peer(&NODES),
        )?;
        Ok(Overlay {
            nodes: Vec::new(),
            netns,
            links,
        })
    }

    /// Makes each node's identity and config, and starts its daemon.
    pub(super) fn start_daemons(&mut self, lab: &Lab) -> Result<()> {
        let exe = std::env::current_exe().context("finding the umbra binary")?;
        let dir = lab.dir().context("the demo's directory")?;
        let config = |i: usize| {
            let mut c = UmbraConfig::new(&dir.join(NODES[i]));
            c.comment = Some(format!("umbra demo: node {}", NODES[i]));
            c
        };
        for (i, name) in NODES.iter().enumerate() {
            let daemon = Daemon::new(&exe, &config(i))?;
            let id = daemon
                .init()
                .with_context(|| format!("making node {name}'s identity"))?;
            self.nodes.push(Node {
                name,
                daemon,
                key: id.key,
                address: id
                    .address
                    .parse()
                    .with_context(|| format!("node {name}'s address"))?,
            });
        }
        let keys: Vec<String> = self.nodes.iter().map(|n| n.key.clone()).collect();
        for i in 0..NODES.len() {
            let mut c = config(i);
            if i == ORIGIN {
                c.home = Some(keys[HOME].clone());
            }
            c.listen = Some(self.links.listen_on(i, LINK_PORT));
            c.peers = self.links.umbra_peers(i, &keys, LINK_PORT, Some("1TB/30d"));
            let node = &mut self.nodes[i];
            node.daemon.rewrite(&c)?;
            node.daemon
                .spawn(&self.netns[i])
                .with_context(|| format!("starting node {}'s daemon", node.name))?;
        }
        Ok(())
    }

    /// Polls `check` until it gives `Some`, or fails after `limit` saying
    /// what it waited for, the last thing `check` noted, and the daemons'
    /// logs; fails at once if a daemon exits.
    pub(super) fn wait_for<T>(
        &mut self,
        limit: Duration,
        what: &str,
        mut check: impl FnMut(&[Node], &mut String) -> Option<T>,
    ) -> Result<T> {
        let result = umbra_netlab::poll(limit, POLL_INTERVAL, what, |last| {
            for node in &mut self.nodes {
                node.daemon.check_running().map_err(|e| match e {
                    umbra_netlab::Error::Exited { status, log, .. } => {
                        umbra_netlab::Error::Output(format!(
                            "the daemon of node {} exited ({status}); its log:\n{log}",
                            node.name
                        ))
                    }
                    e => e,
                })?;
            }
            Ok(check(&self.nodes, last))
        });
        result.map_err(|e| match e {
            umbra_netlab::Error::Timeout { .. } => anyhow!("{e}\n{}", self.logs()),
            e => anyhow!(e),
        })
    }

    /// The nodes' log tails, for an error message.
    pub(super) fn logs(&self) -> String {
        self.nodes
            .iter()
            .zip(&self.netns)
            .map(|(n, ns)| {
                let tail = n.daemon.log_tail(LOG_TAIL_LINES);
                let tail: Vec<String> = tail.lines().map(|l| format!("    {l}")).collect();
                format!(
                    "--- node {} ({}), last lines of {}:\n{}",
                    n.name,
                    ns.name(),
                    n.daemon.log.display(),
                    tail.join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The index of the node whose key is `key` (a JSON string).
    pub(super) fn index_of(&self, key: &Value) -> Result<usize> {
        let key = key.as_str().unwrap_or_default();
        self.nodes
            .iter()
            .position(|n| n.key == key)
            .ok_or_else(|| anyhow!("the path names a key that is no demo node: {key}"))
    }

    /// Whether a circuit's `prev`/`next` (`{key, address}` or null) is `want`.
    pub(super) fn neighbour_is(&self, v: &Value, want: Option<usize>) -> bool {
        match want {
            None => v.is_null(),
            Some(i) => v["key"] == self.nodes[i].key.as_str(),
        }
    }

    /// `a → b → c`.
    pub(super) fn names(&self, route: &[usize]) -> String {
        route
            .iter()
            .map(|&i| self.nodes[i].name)
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        // SIGTERM to all first, so each removes its TUN and says goodbye on
        // its links; then the namespaces go.
        let mut daemons: Vec<Daemon> = self.nodes.drain(..).map(|n| n.daemon).collect();
        Daemon::stop_all(&mut daemons);
    }
}
