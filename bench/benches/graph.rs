//! The graph at 10,000 nodes (docs/protocol.md, "Node records", and
//! docs/architecture.md, "Path selection"): taking in every record, one
//! record's update, and shortest paths.
//!
//! `cargo bench -p umbra-bench --bench graph`
//!
//! The fixture signs 10,000 records once (a ring plus 3 random chords per
//! node, mean degree about 8, as the simulation's `ring_with_chords`).

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use divan::Bencher;
use divan::counter::ItemsCount;
use umbra_routing::Identity;
use umbra_routing::graph::{Ed25519Verifier, Edge, Graph, NodeRecord, RECORD_LIFETIME, Time};

fn main() {
    divan::main();
}

const NODES: usize = 10_000;
const CHORDS_PER_NODE: usize = 3;

struct Fixture {
    ids: Vec<Identity>,
    keys: Vec<[u8; 32]>,
    edges: Vec<Vec<Edge>>,
    records: Vec<Arc<NodeRecord>>,
    now: Time,
    expiry: u64,
}

/// A graph holding every record of the fixture, its adjacency built. (A
/// `Graph` caches its adjacency in a `OnceCell`, so it is not `Sync` and
/// each benchmark makes its own.)
fn full_graph(f: &Fixture) -> Graph {
    let mut graph = Graph::new();
    for r in &f.records {
        graph
            .insert(Arc::clone(r), f.now, &Ed25519Verifier)
            .expect("insert");
    }
    assert!(graph.edge_count() >= NODES);
    graph
}

/// A small deterministic generator (xorshift64*), so every run benches the
/// same graph.
struct Rng(u64);

impl Rng {
    fn index(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let now = Time::from_unix_secs(secs);
        let expiry = secs + RECORD_LIFETIME.as_secs();
        let ids: Vec<Identity> = (0..NODES)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                Identity::from_seed(&seed)
            })
            .collect();
        let keys: Vec<[u8; 32]> = ids.iter().map(Identity::public).collect();
        let mut pairs = BTreeSet::new();
        for i in 0..NODES {
            let j = (i + 1) % NODES;
            pairs.insert((i.min(j), i.max(j)));
        }
        let mut rng = Rng(0x5eed);
        for i in 0..NODES {
            for _ in 0..CHORDS_PER_NODE {
                for _ in 0..16 {
                    let j = rng.index(NODES);
                    if j != i && pairs.insert((i.min(j), i.max(j))) {
                        break;
                    }
                }
            }
        }
        let mut edges: Vec<Vec<Edge>> = vec![Vec::new(); NODES];
        for &(a, b) in &pairs {
            edges[a].push(Edge {
                peer: keys[b],
                capacity: 1,
            });
            edges[b].push(Edge {
                peer: keys[a],
                capacity: 1,
            });
        }
        let records: Vec<Arc<NodeRecord>> = ids
            .iter()
            .zip(&edges)
            .map(|(id, e)| Arc::new(NodeRecord::sign(id, 1, expiry, 0, e).expect("sign")))
            .collect();
        Fixture {
            ids,
            keys,
            edges,
            records,
            now,
            expiry,
        }
    })
}

/// Takes all 10,000 records into an empty graph, each signature verified
/// (what a new node does with a full graph export), then counts the edges
/// (which builds the adjacency).
#[divan::bench(sample_count = 10, sample_size = 1)]
fn take_in_all_10k(b: Bencher<'_, '_>) {
    let f = fixture();
    b.counter(ItemsCount::new(NODES)).bench_local(|| {
        let mut g = Graph::new();
        for r in &f.records {
            g.insert(Arc::clone(r), f.now, &Ed25519Verifier)
                .expect("insert");
        }
        g.edge_count()
    });
}

/// One node re-signs its record (a new sequence number) and the graph of
/// 10,000 takes it in: the flood path's work per update (checks, Ed25519
/// verification, index).
#[divan::bench(sample_count = 50, sample_size = 1)]
fn update_one_record(b: Bencher<'_, '_>) {
    let f = fixture();
    let mut g = full_graph(f);
    let mut seq = 1;
    let who = 4321;
    b.with_inputs(|| {
        seq += 1;
        Arc::new(NodeRecord::sign(&f.ids[who], seq, f.expiry, 0, &f.edges[who]).expect("sign"))
    })
    .bench_local_values(|rec| g.insert(rec, f.now, &Ed25519Verifier).expect("newer"));
}

/// An update, then the next path: the update invalidates the adjacency, so
/// the path search first rebuilds it over all 10,000 nodes.
#[divan::bench(sample_count = 30, sample_size = 1)]
fn update_then_path(b: Bencher<'_, '_>) {
    let f = fixture();
    let mut g = full_graph(f);
    let mut seq = 1;
    let who = 1234;
    let mut rng = Rng(7);
    b.with_inputs(|| {
        seq += 1;
        let rec = NodeRecord::sign(&f.ids[who], seq, f.expiry, 0, &f.edges[who]).expect("sign");
        (Arc::new(rec), rng.index(NODES), rng.index(NODES))
    })
    .bench_local_values(|(rec, a, z)| {
        g.insert(rec, f.now, &Ed25519Verifier).expect("newer");
        g.shortest_path(&f.keys[a], &f.keys[z])
    });
}

/// A shortest path (breadth-first) between random nodes of the 10,000, the
/// adjacency already built.
#[divan::bench]
fn shortest_path_10k(b: Bencher<'_, '_>) {
    let f = fixture();
    let g = full_graph(f);
    let mut rng = Rng(99);
    b.with_inputs(|| (rng.index(NODES), rng.index(NODES)))
        .bench_local_values(|(a, z)| g.shortest_path(&f.keys[a], &f.keys[z]));
}
