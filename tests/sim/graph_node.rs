//! The graph core ([`GraphCore`]) as a simulation node, a memoizing
//! signature verifier, and a builder for whole simulated networks of them.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use umbra_routing::Identity;
use umbra_routing::graph::{
    Ed25519Verifier, Edge, Graph, GraphCore, GraphCounters, GraphMemory, GraphMessage, LinkId,
    NodeRecord, RecordVerifier, Time,
};

use super::topology::{is_connected, neighbours, ring_with_chords};
use super::{LinkParams, Rng, Sim, SimNode, SimTime};

/// The wall-clock time at which every simulation starts (2025-06-15): the
/// graph core works in unix time, since records expire at absolute times.
pub const SIM_EPOCH: Time = Time::from_unix_secs(1_750_000_000);

/// The wall-clock time of virtual time `t`.
pub fn to_time(t: SimTime) -> Time {
    SIM_EPOCH + t
}

/// The virtual time of wall-clock time `t`.
pub fn from_time(t: Time) -> SimTime {
    t.saturating_duration_since(SIM_EPOCH)
}

/// What a graph node sends on a link.
#[derive(Debug, Clone)]
pub enum GraphWire {
    /// The decoded message; its records are shared with the sender, not
    /// copied. Bytes are accounted by `encoded_len`.
    Typed(GraphMessage),
    /// The encoded bytes, which the receiver decodes as the daemon would.
    Bytes(Vec<u8>),
}

/// A [`GraphCore`] driven by the simulation.
pub struct GraphNode {
    /// The core.
    pub core: GraphCore,
    /// Send encoded bytes (the real decoder runs on every message) instead
    /// of shared decoded messages.
    pub wire_bytes: bool,
    /// When this node last took a record into its graph.
    pub last_accept: SimTime,
    accepted: u64,
}

impl fmt::Debug for GraphNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphNode")
            .field("core", &self.core)
            .field("last_accept", &self.last_accept)
            .finish()
    }
}

impl GraphNode {
    /// A node around `core`.
    pub fn new(core: GraphCore, wire_bytes: bool) -> GraphNode {
        let accepted = core.counters().accepted;
        GraphNode {
            core,
            wire_bytes,
            last_accept: Duration::ZERO,
            accepted,
        }
    }

    fn note(&mut self, now: SimTime) {
        let accepted = self.core.counters().accepted;
        if accepted != self.accepted {
            self.accepted = accepted;
            self.last_accept = now;
        }
    }
}

fn link_id(link: usize) -> LinkId {
    LinkId(link as u64)
}

impl SimNode for GraphNode {
    type Id = [u8; 32];
    type Message = GraphWire;

    fn id(&self) -> [u8; 32] {
        *self.core.key()
    }

    fn link_up(&mut self, now: SimTime, link: usize, peer: &[u8; 32]) {
        self.core.link_up(to_time(now), link_id(link), *peer);
    }

    fn link_down(&mut self, now: SimTime, link: usize) {
        self.core.link_down(to_time(now), link_id(link));
    }

    fn handle_message(&mut self, now: SimTime, link: usize, msg: GraphWire) {
        match msg {
            GraphWire::Typed(m) => self.core.handle(to_time(now), link_id(link), m),
            GraphWire::Bytes(b) => self.core.handle_message(to_time(now), link_id(link), &b),
        }
        self.note(now);
    }

    fn poll_transmit(&mut self, _now: SimTime) -> Option<(usize, GraphWire)> {
        let (link, msg) = self.core.poll_message()?;
        let link = usize::try_from(link.0).ok()?;
        let wire = if self.wire_bytes {
            GraphWire::Bytes(msg.encode())
        } else {
            GraphWire::Typed(msg)
        };
        Some((link, wire))
    }

    fn poll_timeout(&self) -> Option<SimTime> {
        self.core.poll_timeout().map(from_time)
    }

    fn handle_timeout(&mut self, now: SimTime) {
        self.core.handle_timeout(to_time(now));
        self.note(now);
    }

    fn wire_len(msg: &GraphWire) -> usize {
        match msg {
            GraphWire::Typed(m) => m.encoded_len(),
            GraphWire::Bytes(b) => b.len(),
        }
    }
}

/// A fast, unkeyed hash for the verifier's memo (its keys are records,
/// mostly random bytes, and nobody attacks a test).
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A signature verifier shared by every node of a simulation: it runs the
/// real Ed25519 check once per distinct record (compared by its exact
/// bytes) and remembers the answer. Identical bytes verify identically, so
/// this changes no outcome, only the run time. The memo is indexed by the
/// record's signature, so a lookup hashes 64 bytes, not the whole record.
#[derive(Default)]
pub struct MemoVerifier {
    memo: Mutex<Memo>,
    verified: AtomicU64,
    lookups: AtomicU64,
}

/// Verified records by signature: each signature's records (almost always
/// one) with their verdicts.
type Memo = HashMap<[u8; 64], Vec<(Box<[u8]>, bool)>, BuildHasherDefault<WordHasher>>;

impl fmt::Debug for MemoVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoVerifier")
            .field("verified", &self.verified())
            .field("lookups", &self.lookups())
            .finish()
    }
}

impl MemoVerifier {
    /// Distinct records verified with Ed25519.
    pub fn verified(&self) -> u64 {
        self.verified.load(Ordering::Relaxed)
    }

    /// Verifications asked for, memoized or not.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }
}

impl RecordVerifier for MemoVerifier {
    fn verify(&self, record: &NodeRecord) -> bool {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        let seen = memo.entry(record.signature()).or_default();
        if let Some((_, ok)) = seen.iter().find(|(bytes, _)| **bytes == *record.as_bytes()) {
            return *ok;
        }
        let ok = Ed25519Verifier.verify(record);
        seen.push((record.as_bytes().into(), ok));
        self.verified.fetch_add(1, Ordering::Relaxed);
        ok
    }
}

/// How to build a simulated network of graph nodes.
#[derive(Debug, Clone)]
pub struct GraphNetConfig {
    /// Number of nodes.
    pub nodes: usize,
    /// Random chords per node on top of a ring: 3 gives mean degree 8.
    pub chords_per_node: usize,
    /// One-way latency of each link, uniform in this range.
    pub latency: (Duration, Duration),
    /// Per-transmission loss probability (seen as TCP retransmission delay).
    pub loss: f64,
    /// Bytes per second each way on each link.
    pub bandwidth: Option<u64>,
    /// Links come up at random times in `0..=link_up_spread`.
    pub link_up_spread: Duration,
    /// Send encoded bytes rather than shared decoded messages.
    pub wire_bytes: bool,
}

impl GraphNetConfig {
    /// `nodes` nodes of mean degree 8, links of 5–80 ms with 1% loss at
    /// 100 Mbit/s, all coming up within the first second.
    pub fn new(nodes: usize) -> GraphNetConfig {
        GraphNetConfig {
            nodes,
            chords_per_node: 3,
            latency: (Duration::from_millis(5), Duration::from_millis(80)),
            loss: 0.01,
            bandwidth: Some(12_500_000),
            link_up_spread: Duration::from_secs(1),
            wire_bytes: false,
        }
    }
}

/// A simulated network of graph nodes with real Ed25519 identities. Link
/// `i` of the simulation is agreement `topology[i]`.
pub struct GraphNet {
    /// The simulation.
    pub sim: Sim<GraphNode>,
    /// Each node's identity (made from the seed).
    pub identities: Vec<Identity>,
    /// Each node's public key.
    pub keys: Vec<[u8; 32]>,
    /// The agreements, as node index pairs `(a, b)` with `a < b`.
    pub topology: Vec<(usize, usize)>,
    /// The peers each node's record lists now.
    pub listed: Vec<Vec<usize>>,
    /// The verifier all nodes share.
    pub verifier: Arc<MemoVerifier>,
    wire_bytes: bool,
}

impl fmt::Debug for GraphNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphNet")
            .field("sim", &self.sim)
            .finish_non_exhaustive()
    }
}

/// The capacity class an agreement between `a` and `b` gets: a fixed
/// function of the pair, so both ends list the same class.
fn capacity(a: usize, b: usize) -> u8 {
    ((a.min(b) * 31 + a.max(b)) % 4 + 1) as u8
}

impl GraphNet {
    /// Builds the network: keys, topology, one core per node, and links that
    /// come up within the configured spread. Nothing has run yet.
    pub fn build(cfg: &GraphNetConfig, seed: u64) -> GraphNet {
        let mut sim: Sim<GraphNode> = Sim::new(seed);
        let mut rng: Rng = sim.rng().fork();
        let identities: Vec<Identity> = (0..cfg.nodes)
            .map(|_| Identity::from_seed(&rng.bytes32()))
            .collect();
        let keys: Vec<[u8; 32]> = identities.iter().map(Identity::public).collect();
        let topology = ring_with_chords(cfg.nodes, cfg.chords_per_node, &mut rng);
        assert!(
            is_connected(cfg.nodes, &topology),
            "topology not connected (seed {seed:#x})"
        );
        let listed = neighbours(cfg.nodes, &topology);
        let verifier = Arc::new(MemoVerifier::default());
        let mut net = GraphNet {
            sim,
            identities,
            keys,
            topology,
            listed,
            verifier,
            wire_bytes: cfg.wire_bytes,
        };
        for i in 0..cfg.nodes {
            let core = net.new_core(i, Duration::ZERO);
            net.sim.add_node(GraphNode::new(core, cfg.wire_bytes));
        }
        for &(a, b) in &net.topology.clone() {
            let params = LinkParams {
                latency: rng.duration(cfg.latency.0, cfg.latency.1),
                loss: cfg.loss,
                rto: Duration::from_millis(200),
                bandwidth: cfg.bandwidth,
            };
            let link = net.sim.add_link(a, b, params);
            let at = rng.duration(Duration::ZERO, cfg.link_up_spread);
            net.sim.link_up_at(at, link);
        }
        net
    }

    /// The edges node `i`'s record lists now.
    pub fn edges_of(&self, i: usize) -> Vec<Edge> {
        self.listed[i]
            .iter()
            .map(|&p| Edge {
                peer: self.keys[p],
                capacity: capacity(i, p),
            })
            .collect()
    }

    /// A fresh core for node `i` at virtual time `now`, listing its edges.
    pub fn new_core(&self, i: usize, now: SimTime) -> GraphCore {
        GraphCore::new(self.identities[i].clone(), to_time(now), &self.edges_of(i))
            .expect("simulated edges are valid")
            .with_verifier(self.verifier.clone())
    }

    /// Node `i`'s record lists `peers` from now on (it re-signs and floods).
    pub fn set_listed(&mut self, i: usize, peers: Vec<usize>) {
        self.listed[i] = peers;
        let edges = self.edges_of(i);
        self.sim.with_node(i, |n, now| {
            n.core.set_local_edges(to_time(now), &edges).expect("edges")
        });
    }

    /// Node `i` fails.
    pub fn fail(&mut self, i: usize) {
        self.sim.fail_node(i);
    }

    /// Node `i` restarts with a fresh core, seeded from `cache` (a graph
    /// export) if given.
    pub fn restart(&mut self, i: usize, cache: Option<&[u8]>) {
        let now = self.sim.now();
        let mut core = self.new_core(i, now);
        if let Some(bytes) = cache {
            let (graph, _) =
                Graph::import_with(bytes, to_time(now), self.verifier.as_ref()).expect("cache");
            core = core.with_graph(to_time(now), graph);
        }
        self.sim
            .restart_node(i, GraphNode::new(core, self.wire_bytes));
    }

    /// The current record of every live node: what every graph should hold.
    pub fn expected(&self) -> Vec<Arc<NodeRecord>> {
        self.sim
            .nodes()
            .map(|(_, n)| n.core.own_record().clone())
            .collect()
    }

    /// A graph of exactly the expected records, built from scratch.
    pub fn reference(&self) -> Graph {
        let now = to_time(self.sim.now());
        let mut g = Graph::new();
        for rec in self.expected() {
            g.insert(rec, now, self.verifier.as_ref())
                .expect("own records are valid");
        }
        g
    }

    /// Whether every live node holds exactly the expected records (same
    /// key, sequence number and bytes) and nothing else. The counted edges
    /// are compared with the reference graph's on `edge_sample` nodes spread
    /// over the network (all of them if it is at least the node count):
    /// they are a function of the records, so equal records give equal
    /// edges, but the sample checks that function too.
    pub fn check_converged(&self, edge_sample: usize) -> Result<(), String> {
        let expected = self.expected();
        let reference = self.reference();
        let ref_edges = reference.counted_edges();
        let live: Vec<usize> = self.sim.nodes().map(|(i, _)| i).collect();
        let step = (live.len() / edge_sample.max(1)).max(1);
        for (pos, &i) in live.iter().enumerate() {
            let g = self
                .sim
                .node(i)
                .map(|n| n.core.graph())
                .ok_or("node vanished")?;
            if g.node_count() != expected.len() {
                return Err(format!(
                    "node {i} holds {} records, expected {}",
                    g.node_count(),
                    expected.len()
                ));
            }
            for rec in &expected {
                match g.get(rec.key()) {
                    Some(held) if Arc::ptr_eq(held, rec) || held.as_bytes() == rec.as_bytes() => {}
                    Some(held) => {
                        return Err(format!(
                            "node {i} holds seq {} of {}, expected seq {}",
                            held.seq(),
                            hex::encode(&rec.key()[..4]),
                            rec.seq()
                        ));
                    }
                    None => {
                        return Err(format!("node {i} lacks {}", hex::encode(&rec.key()[..4])));
                    }
                }
            }
            if pos % step == 0 && g.counted_edges() != ref_edges {
                return Err(format!(
                    "node {i} counts {} edges, the reference {}",
                    g.edge_count(),
                    ref_edges.len()
                ));
            }
        }
        Ok(())
    }

    /// When the last live node last took a record into its graph.
    pub fn convergence_time(&self) -> SimTime {
        self.sim
            .nodes()
            .map(|(_, n)| n.last_accept)
            .max()
            .unwrap_or_default()
    }

    /// The figures of the run so far.
    pub fn figures(&self) -> Figures {
        let live: Vec<usize> = self.sim.nodes().map(|(i, _)| i).collect();
        let stats: Vec<_> = live.iter().map(|&i| self.sim.node_stats(i)).collect();
        let n = stats.len().max(1) as f64;
        let memory = self
            .sim
            .nodes()
            .next()
            .map(|(_, node)| {
                let _ = node.core.graph().edge_count(); // build the adjacency, so it is counted
                node.core.memory()
            })
            .unwrap_or_default();
        let counters: Vec<_> = self
            .sim
            .nodes()
            .map(|(_, node)| *node.core.counters())
            .collect();
        let mean = |f: fn(&GraphCounters) -> u64| counters.iter().map(f).sum::<u64>() as f64 / n;
        Figures {
            nodes: live.len(),
            counted_edges: self.reference().edge_count(),
            convergence: self.convergence_time(),
            msgs_sent_mean: stats.iter().map(|s| s.sent_msgs as f64).sum::<f64>() / n,
            msgs_sent_max: stats.iter().map(|s| s.sent_msgs).max().unwrap_or(0),
            msgs_recv_max: stats.iter().map(|s| s.recv_msgs).max().unwrap_or(0),
            bytes_sent_mean: stats.iter().map(|s| s.sent_bytes as f64).sum::<f64>() / n,
            bytes_sent_max: stats.iter().map(|s| s.sent_bytes).max().unwrap_or(0),
            bytes_recv_max: stats.iter().map(|s| s.recv_bytes).max().unwrap_or(0),
            memory,
            sim_unshared_memory: self
                .sim
                .nodes()
                .map(|(_, node)| node.core.memory().unshared())
                .sum(),
            records_in_mean: mean(|c| c.records_in),
            keys_requested_mean: mean(|c| c.keys_requested),
            ed25519_verifications: self.verifier.verified(),
            verifier_lookups: self.verifier.lookups(),
            events: self.sim.stats().events,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// Live nodes.
    pub nodes: usize,
    /// Counted edges in the expected graph.
    pub counted_edges: usize,
    /// Virtual time of the last record any node accepted.
    pub convergence: SimTime,
    /// Messages sent per node, mean.
    pub msgs_sent_mean: f64,
    /// Messages sent per node, most.
    pub msgs_sent_max: u64,
    /// Messages received per node, most.
    pub msgs_recv_max: u64,
    /// Bytes sent per node, mean.
    pub bytes_sent_mean: f64,
    /// Bytes sent per node, most.
    pub bytes_sent_max: u64,
    /// Bytes received per node, most.
    pub bytes_recv_max: u64,
    /// One node's graph memory (its adjacency built, its flooding state
    /// included).
    pub memory: GraphMemory,
    /// What all nodes hold but share no part of, summed: their indexes,
    /// slots and flooding state (and adjacencies, where built).
    pub sim_unshared_memory: usize,
    /// Records received per node, mean (each node accepts each record
    /// once; the rest were duplicates).
    pub records_in_mean: f64,
    /// Keys requested per node after link-up summaries, mean.
    pub keys_requested_mean: f64,
    /// Distinct records verified with Ed25519 in the whole run.
    pub ed25519_verifications: u64,
    /// Verifications the nodes asked for (the unmemoized cost).
    pub verifier_lookups: u64,
    /// Events the loop processed.
    pub events: u64,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.nodes.max(1);
        writeln!(
            f,
            "nodes {}, counted edges {} (mean degree {:.1})",
            self.nodes,
            self.counted_edges,
            2.0 * self.counted_edges as f64 / n as f64
        )?;
        writeln!(
            f,
            "convergence (simulated) {:.3} s",
            self.convergence.as_secs_f64()
        )?;
        writeln!(
            f,
            "messages/node sent mean {:.1}, max {}; received max {}",
            self.msgs_sent_mean, self.msgs_sent_max, self.msgs_recv_max
        )?;
        writeln!(
            f,
            "bytes/node sent mean {:.0} ({:.2} MB), max {}; received max {}",
            self.bytes_sent_mean,
            self.bytes_sent_mean / 1e6,
            self.bytes_sent_max,
            self.bytes_recv_max
        )?;
        writeln!(
            f,
            "records received/node mean {:.0} ({:.2} per distinct record); keys requested/node mean {:.1}",
            self.records_in_mean,
            self.records_in_mean / n as f64,
            self.keys_requested_mean
        )?;
        let m = self.memory;
        writeln!(
            f,
            "graph memory/node: {:.2} MB = index {} + slots {} + adjacency {} + records {} + flooding state {} ({} B per graph node)",
            m.total() as f64 / 1e6,
            m.index,
            m.slots,
            m.adjacency,
            m.records,
            m.flood,
            m.total() / n,
        )?;
        writeln!(
            f,
            "simulation: {:.2} MB per node not shared with other nodes; {:.0} MB over all nodes",
            m.unshared() as f64 / 1e6,
            self.sim_unshared_memory as f64 / 1e6
        )?;
        write!(
            f,
            "ed25519 verifications {} (of {} asked), events {}",
            self.ed25519_verifications, self.verifier_lookups, self.events
        )
    }
}
