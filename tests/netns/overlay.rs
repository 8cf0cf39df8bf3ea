//! A small overlay of real daemons for tests: namespaces joined by veth
//! pairs along a graph's edges, a `[[peer]]` agreement on each edge, and
//! helpers to drive and read them (docs/architecture.md, "Testing").

use std::time::Duration;

use serde_json::Value;
use umbra_netlab::{Identity, IperfOptions, IperfServer, Links, Peer, PingOptions, UmbraConfig};

use super::{Daemon, Netns, netns, prepare, temp_dir, wait_for};

/// How long links and the graph may take to come up.
const CONVERGE: Duration = Duration::from_secs(30);

/// Real daemons with their TUN, joined by veth pairs and `[[peer]]`
/// agreements along `edges`.
pub struct Overlay {
    // Daemons first: they stop before their namespaces go.
    /// The daemons, by node index.
    pub daemons: Vec<Daemon>,
    /// Their configs.
    pub configs: Vec<UmbraConfig>,
    /// Their public keys (hex).
    pub keys: Vec<String>,
    /// Their overlay addresses.
    pub addrs: Vec<String>,
    /// Their namespaces.
    pub ns: Vec<Netns>,
    /// The veth pairs between them.
    pub links: Links,
    /// Where their files are.
    pub dir: tempfile::TempDir,
}

impl Overlay {
    /// `extra(i, keys)` is more config for node `i`, put before `[listen]`.
    /// Every agreement's terms are `1TB/30d`.
    pub fn build(
        tag: &str,
        n: usize,
        edges: &[(usize, usize)],
        extra: impl Fn(usize, &[String]) -> String,
    ) -> Overlay {
        Overlay::build_with(tag, n, edges, extra, |_, _| "1TB/30d".to_string())
    }

    /// [`Overlay::build`] with `terms(i, j)`: node `i`'s terms for its
    /// agreement with node `j` (the amount and period must match `j`'s).
    pub fn build_with(
        tag: &str,
        n: usize,
        edges: &[(usize, usize)],
        extra: impl Fn(usize, &[String]) -> String,
        terms: impl Fn(usize, usize) -> String,
    ) -> Overlay {
        let ns: Vec<Netns> = (0..n).map(|i| netns(&format!("{tag}{i}"))).collect();
        let dir = temp_dir(tag);
        let links = Links::new(&ns, edges, 40, umbra_netlab::numbered).expect("veth pairs");
        let node_dir = |i: usize| dir.path().join(format!("n{i}"));
        let mut daemons: Vec<Daemon> = (0..n).map(|i| prepare(&node_dir(i), "")).collect();
        let ids: Vec<Identity> = daemons
            .iter()
            .map(|d| d.init().expect("umbra init"))
            .collect();
        let keys: Vec<String> = ids.iter().map(|id| id.key.clone()).collect();
        let addrs: Vec<String> = ids.iter().map(|id| id.address.clone()).collect();
        let mut configs = Vec::new();
        for (i, d) in daemons.iter_mut().enumerate() {
            let mut config = UmbraConfig::new(&node_dir(i));
            config.top = format!("{}\n", extra(i, &keys));
            config.listen = Some(links.listen_on(i, 443));
            config.peers = links.peers[i]
                .iter()
                .map(|&(j, ip)| Peer::new(&keys[j], format!("{ip}:443"), Some(&terms(i, j))))
                .collect();
            d.rewrite(&config).expect("write the config");
            d.start(&ns[i]).expect("umbra run starts");
            configs.push(config);
        }
        let o = Overlay {
            daemons,
            configs,
            keys,
            addrs,
            ns,
            links,
            dir,
        };
        // Every node holds the whole graph, with every edge counted.
        let refs: Vec<&Daemon> = o.daemons.iter().collect();
        wait_for(CONVERGE, "the graph to converge", &refs, || {
            o.daemons
                .iter()
                .all(|d| {
                    let s = d.cli_json(&["status", "--json"]).expect("umbra cli");
                    s["graph"]["nodes"] == n && s["graph"]["edges"] == edges.len()
                })
                .then_some(())
        });
        o
    }

    /// Every daemon's log, one after the other.
    pub fn logs(&self) -> String {
        self.daemons
            .iter()
            .map(Daemon::log_text)
            .collect::<Vec<_>>()
            .join("\n-----\n")
    }

    /// `ping -6` from node `from` to node `to`'s address; true if replies came.
    pub fn ping(&self, from: usize, to: usize, count: usize) -> bool {
        let opts = PingOptions {
            wait_secs: 5,
            ..PingOptions::new(count, 0.2)
        };
        umbra_netlab::ping(&self.ns[from], &self.addrs[to], opts)
            .expect("run ping")
            .success
    }

    /// Runs `ping -6 -n ARGS` in node `from`'s namespace.
    pub fn ping_with(&self, from: usize, args: &[&str]) -> std::process::Output {
        let mut full = vec!["ping", "-6", "-n"];
        full.extend_from_slice(args);
        self.ns[from].run(&full).expect("run ping")
    }

    /// The nodes (by index) of the circuit `umbra path` shows from `from` to
    /// `to`, and its JSON.
    pub fn path(&self, from: usize, to: usize) -> (Vec<usize>, serde_json::Value) {
        let path = self.daemons[from]
            .cli_json(&["path", &self.addrs[to], "--json"])
            .expect("umbra cli");
        let hops = path["hops"]
            .as_array()
            .expect("hops")
            .iter()
            .map(|h| index_of(self, h))
            .collect();
        (hops, path)
    }

    /// Node `i`'s ledger with node `j`, from `umbra agreements --json`.
    pub fn ledger(&self, i: usize, j: usize) -> Value {
        let list = self.daemons[i]
            .cli_json(&["agreements", "--json"])
            .expect("umbra cli");
        list.as_array()
            .and_then(|a| a.iter().find(|x| x["peer_key"] == self.keys[j].as_str()))
            .map_or(Value::Null, |a| a["ledger"].clone())
    }

    /// Limits what node `i` sends to node `j` over their veth to `mbit`
    /// Mbit/s (a token bucket filter on `i`'s side).
    pub fn limit(&self, i: usize, j: usize, mbit: u32) {
        let dev = umbra_netlab::numbered(i, j).0;
        self.ns[i].limit_egress(&dev, mbit).expect("tc");
    }

    /// `umbra status --json` of node `i`.
    pub fn status(&self, i: usize) -> serde_json::Value {
        self.daemons[i]
            .cli_json(&["status", "--json"])
            .expect("umbra cli")
    }
}

/// Runs an iperf3 client in `ns` against `server` for `secs` seconds with
/// 1 s intervals, and returns its JSON report.
pub fn iperf3(ns: &Netns, server: &str, secs: u32) -> serde_json::Value {
    let opts = IperfOptions {
        interval_secs: Some(1),
        connect_timeout_ms: 10_000,
        ..IperfOptions::new(secs)
    };
    umbra_netlab::iperf3(ns, server, opts)
        .expect("run iperf3 (is it installed? .ci/run installs it)")
        .report
}

/// Starts a one-shot iperf3 server in `ns` on `addr`.
pub fn iperf3_server(ns: &Netns, addr: &str, log: &std::path::Path) -> IperfServer {
    IperfServer::start(ns, addr, log, true).expect("start iperf3 server")
}

/// The index in `o` of the node a JSON hop names by its key.
pub fn index_of(o: &Overlay, node: &serde_json::Value) -> usize {
    let key = node["key"].as_str().expect("key");
    o.keys
        .iter()
        .position(|k| k == key)
        .expect("a node of the overlay")
}
