//! What path selection hides (`docs/threat-model.md, "Path selection,
//! measured"`): 10,000
//! balanced circuits on a 200-node random agreement graph of mean degree 8,
//! built with `umbra_routing::path::choose` on signed records (only edges
//! that both ends list count). No daemons and no network: path selection
//! runs on the node's own copy of the graph, so the graph is all it needs.
//!
//! Every origin has a home node, one of its neighbours drawn once and then
//! fixed, as an operator pins it. What must hold on every balanced circuit:
//! - the home node is the first hop, so no other relay is adjacent to the
//!   origin;
//! - at least 3 relays stand between the ends, so the first relay after the
//!   home and the relay before the destination are different nodes, and no
//!   single relay is adjacent to both ends;
//! - no node repeats, and every hop is an edge that both ends list.
//!
//! What is measured (printed, and written as JSON to
//! `target/tmp/sim-anonymity.json`):
//! - **Path entropy**: for a fixed (origin, destination) pair, the Shannon
//!   entropy in bits of the empirical distribution of whole paths over
//!   2,000 draws, and of the first relay after the home and of the last
//!   relay alone; averaged over 100 pairs. 0 bits means the path is fixed.
//! - **Random attacker**: the attacker holds k random nodes (neither end);
//!   the fraction of circuits whose *exposed first relay* (the first relay
//!   the origin did not pin: the one after the home on a balanced path, the
//!   first hop on a fast path) and last relay are both the attacker's, the
//!   pair that end-to-end correlation needs. Mean and worst over 50 sets,
//!   and the k relays that carry the most circuits as a well-informed
//!   attacker's choice.
//! - **Sybil attacker**: 20 Sybils of mean degree 8 among themselves,
//!   attached to the honest graph by 1, 3 or 10 agreement edges that honest
//!   operators made. Homes stay as they were pinned before the Sybils came.
//! - The same for `"fast"` (the shortest path, no home), to show what
//!   balanced buys.
//!
//! Read the figures with
//! `cargo nextest run -p umbra-tests --test sim_anonymity --no-capture`.
//! The test prints its seed; `UMBRA_SIM_SEED=0x… cargo nextest run …`
//! replays a run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use serde_json::{Value, json};
use umbra_routing::Identity;
use umbra_routing::graph::Graph;
use umbra_routing::path::{Anonymity, PathRequest, choose, choose_prefix, complete};
use umbra_routing::router::POOL_SIZE;
use umbra_tests::sim::circuit_node::signed_graph;
use umbra_tests::sim::topology::{is_connected, neighbours, ring_with_chords};
use umbra_tests::sim::{self, Rng};

/// Honest nodes.
const HONEST: usize = 200;
/// Random chords per node on top of a ring: 3 give mean degree 8.
const CHORDS_PER_NODE: usize = 3;
/// Circuits per setting and graph.
const CIRCUITS: usize = 10_000;
/// Attacker sizes (nodes held) of the random-attacker table.
const ATTACKER_SIZES: [usize; 4] = [1, 5, 10, 20];
/// Random attacker sets per size.
const ATTACKER_SETS: usize = 50;
/// Sybil nodes.
const SYBILS: usize = 20;
/// Chords per Sybil on top of a ring among the Sybils: mean degree 8, so
/// the walk's bias against high degree neither helps nor hurts them.
const SYBIL_CHORDS_PER_NODE: usize = 3;
/// Agreement edges between honest nodes and Sybils, per Sybil scenario.
const ATTACK_EDGES: [usize; 3] = [1, 3, 10];
/// (origin, destination) pairs whose path distribution is measured.
const ENTROPY_PAIRS: usize = 100;
/// Paths drawn per pair.
const ENTROPY_DRAWS: usize = 2_000;
/// Relays a balanced circuit has at least (`docs/architecture.md, "Path
/// selection"`).
const MIN_RELAYS: usize = 3;

type Key = [u8; 32];

/// A signed graph and the node numbering the test uses.
struct Net {
    graph: Graph,
    keys: Vec<Key>,
    index: HashMap<Key, usize>,
    /// The agreements, as node index pairs `(a, b)` with `a < b`.
    edges: HashSet<(usize, usize)>,
    /// Sybil nodes are those numbered `HONEST..`.
    nodes: usize,
}

impl Net {
    fn new(identities: &[Identity], topology: &[(usize, usize)]) -> Net {
        let graph = signed_graph(identities, topology);
        let keys: Vec<Key> = identities.iter().map(Identity::public).collect();
        let index = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        assert_eq!(graph.node_count(), identities.len());
        assert_eq!(graph.edge_count(), topology.len());
        Net {
            graph,
            keys,
            index,
            edges: topology.iter().copied().collect(),
            nodes: identities.len(),
        }
    }

    fn is_sybil(&self, i: usize) -> bool {
        i >= HONEST
    }

    /// What the router asks for a path from `origin` to `destination` with
    /// `home` as the home node: every link is live, no edge is avoided.
    fn request(
        &self,
        origin: usize,
        destination: usize,
        home: usize,
        anonymity: Anonymity,
    ) -> PathRequest<'static> {
        PathRequest {
            origin: self.keys[origin],
            destination: self.keys[destination],
            anonymity,
            home: Some(self.keys[home]),
            live: &|_| true,
            avoid: &|_, _| false,
        }
    }
}

/// One circuit: its ends, and the hops after the origin (destination last),
/// as node indices.
struct Circuit {
    origin: usize,
    destination: usize,
    path: Vec<usize>,
}

impl Circuit {
    /// The relays: the hops between the ends.
    fn relays(&self) -> &[usize] {
        &self.path[..self.path.len() - 1]
    }

    /// The first relay the origin did not pin (after the home on a balanced
    /// path; the first hop on a fast one), and the last relay. `None` when
    /// there is no such relay.
    fn exposed_ends(&self, anonymity: Anonymity) -> Option<(usize, usize)> {
        let relays = self.relays();
        let skip = usize::from(anonymity != Anonymity::Fast);
        Some((*relays.get(skip)?, *relays.last()?))
    }
}

/// Chooses one path, as node indices.
fn path(
    net: &Net,
    origin: usize,
    destination: usize,
    home: usize,
    anonymity: Anonymity,
    rng: &mut Rng,
    seed: u64,
) -> Vec<usize> {
    let req = net.request(origin, destination, home, anonymity);
    let keys = choose(&net.graph, &req, rng).unwrap_or_else(|e| {
        panic!(
            "no {anonymity:?} path from node {origin} (home {home}) to node {destination}: {e} \
             (seed {seed:#x})"
        )
    });
    keys.iter().map(|k| net.index[k]).collect()
}

/// Chooses one balanced path as the router does with its pool: prefixes
/// (home and walk) drawn before the destination is known, the first that can
/// be completed for it, else a path from scratch.
fn pooled_path(
    net: &Net,
    origin: usize,
    destination: usize,
    home: usize,
    rng: &mut Rng,
    seed: u64,
) -> Vec<usize> {
    let req = net.request(origin, destination, home, Anonymity::Balanced);
    for _ in 0..POOL_SIZE {
        let prefix = choose_prefix(&net.graph, req.origin, req.home, req.live, req.avoid, rng)
            .unwrap_or_else(|e| panic!("no prefix from node {origin}: {e} (seed {seed:#x})"));
        if let Some(rest) = complete(&net.graph, &req, &prefix, rng) {
            return prefix.iter().chain(&rest).map(|k| net.index[k]).collect();
        }
    }
    path(
        net,
        origin,
        destination,
        home,
        Anonymity::Balanced,
        rng,
        seed,
    )
}

/// One circuit per (origin, destination) pair, its path from `path_of`.
fn circuits(
    pairs: &[(usize, usize)],
    mut path_of: impl FnMut(usize, usize) -> Vec<usize>,
) -> Vec<Circuit> {
    pairs
        .iter()
        .map(|&(origin, destination)| Circuit {
            origin,
            destination,
            path: path_of(origin, destination),
        })
        .collect()
}

/// One circuit per pair with balanced paths, then one with fast paths (in
/// that order, from `rng`), each set checked.
fn balanced_and_fast(
    net: &Net,
    pairs: &[(usize, usize)],
    homes: &[usize],
    rng: &mut Rng,
    seed: u64,
) -> (Vec<Circuit>, Vec<Circuit>) {
    let mut checked = |anonymity| {
        let set = circuits(pairs, |o, d| {
            path(net, o, d, homes[o], anonymity, rng, seed)
        });
        check(net, &set, homes, anonymity, seed);
        set
    };
    let balanced = checked(Anonymity::Balanced);
    (balanced, checked(Anonymity::Fast))
}

/// Checks what every circuit must satisfy: balanced paths start at the home
/// node and have at least [`MIN_RELAYS`] relays; no path repeats a node or
/// uses an edge that is not an agreement.
fn check(net: &Net, circuits: &[Circuit], homes: &[usize], anonymity: Anonymity, seed: u64) {
    for (n, c) in circuits.iter().enumerate() {
        let what = || {
            format!(
                "{anonymity:?} circuit {n}, node {} (home {}) to node {}: path {:?} (seed {seed:#x})",
                c.origin, homes[c.origin], c.destination, c.path
            )
        };
        assert_eq!(c.path.last(), Some(&c.destination), "{}", what());
        let mut seen = HashSet::from([c.origin]);
        let mut prev = c.origin;
        for &hop in &c.path {
            assert!(seen.insert(hop), "node {hop} repeats: {}", what());
            let edge = (prev.min(hop), prev.max(hop));
            assert!(
                net.edges.contains(&edge),
                "{prev}–{hop} is not an agreement: {}",
                what()
            );
            assert!(
                net.graph.edge(&net.keys[prev], &net.keys[hop]).is_some(),
                "{prev}–{hop} is not a counted edge: {}",
                what()
            );
            prev = hop;
        }
        if anonymity == Anonymity::Fast {
            continue;
        }
        // No relay but the home node is adjacent to the origin.
        assert_eq!(
            c.path[0],
            homes[c.origin],
            "first hop is not the home: {}",
            what()
        );
        // No single relay is adjacent to both ends.
        let relays = c.relays();
        assert!(
            relays.len() >= MIN_RELAYS,
            "{} relays: {}",
            relays.len(),
            what()
        );
        let (first, last) = c.exposed_ends(anonymity).expect("3 relays");
        assert_ne!(
            relays[0],
            last,
            "the home is adjacent to both ends: {}",
            what()
        );
        assert_ne!(
            first,
            last,
            "one relay after the home sees both ends: {}",
            what()
        );
    }
}

/// Shannon entropy in bits of a distribution given by counts.
fn entropy<T>(counts: &BTreeMap<T, usize>) -> f64 {
    let total: usize = counts.values().sum();
    counts
        .values()
        .filter(|&&c| c > 0)
        .map(|&c| c as f64 / total as f64 * (total as f64 / c as f64).log2())
        .sum()
}

/// The fraction of `circuits` whose exposed first relay and last relay are
/// both in `held`, among those whose ends are not in it.
fn both_held(circuits: &[Circuit], anonymity: Anonymity, held: &[bool]) -> f64 {
    let mut counted = 0usize;
    let mut hits = 0usize;
    for c in circuits {
        if held[c.origin] || held[c.destination] {
            continue;
        }
        counted += 1;
        if let Some((first, last)) = c.exposed_ends(anonymity)
            && held[first]
            && held[last]
        {
            hits += 1;
        }
    }
    hits as f64 / counted.max(1) as f64
}

/// One row of the random-attacker table.
struct AttackerRow {
    k: usize,
    mean: f64,
    worst: f64,
    busiest: f64,
}

/// The random-attacker table: for each k, `ATTACKER_SETS` random sets of k
/// honest nodes, and the k relays that are most often an exposed end.
fn attacker_table(
    net: &Net,
    circuits: &[Circuit],
    anonymity: Anonymity,
    rng: &mut Rng,
) -> Vec<AttackerRow> {
    let mut load = vec![0usize; net.nodes];
    for c in circuits {
        if let Some((first, last)) = c.exposed_ends(anonymity) {
            load[first] += 1;
            if last != first {
                load[last] += 1;
            }
        }
    }
    let mut by_load: Vec<usize> = (0..HONEST).collect();
    by_load.sort_by_key(|&i| (std::cmp::Reverse(load[i]), i));
    ATTACKER_SIZES
        .iter()
        .map(|&k| {
            let mut sum = 0.0;
            let mut worst: f64 = 0.0;
            for _ in 0..ATTACKER_SETS {
                let mut nodes: Vec<usize> = (0..HONEST).collect();
                rng.shuffle(&mut nodes);
                let mut held = vec![false; net.nodes];
                for &i in &nodes[..k] {
                    held[i] = true;
                }
                let f = both_held(circuits, anonymity, &held);
                sum += f;
                worst = worst.max(f);
            }
            let mut held = vec![false; net.nodes];
            for &i in &by_load[..k] {
                held[i] = true;
            }
            AttackerRow {
                k,
                mean: sum / ATTACKER_SETS as f64,
                worst,
                busiest: both_held(circuits, anonymity, &held),
            }
        })
        .collect()
}

/// What Sybils see of a set of circuits.
struct SybilRow {
    attack_edges: usize,
    both_ends: f64,
    last_relay: f64,
    any_relay: f64,
}

fn sybil_row(net: &Net, circuits: &[Circuit], anonymity: Anonymity, edges: usize) -> SybilRow {
    let held: Vec<bool> = (0..net.nodes).map(|i| net.is_sybil(i)).collect();
    let n = circuits.len() as f64;
    let last = circuits
        .iter()
        .filter(|c| c.relays().last().is_some_and(|&r| held[r]))
        .count();
    let any = circuits
        .iter()
        .filter(|c| c.relays().iter().any(|&r| held[r]))
        .count();
    SybilRow {
        attack_edges: edges,
        both_ends: both_held(circuits, anonymity, &held),
        last_relay: last as f64 / n,
        any_relay: any as f64 / n,
    }
}

/// Path shape: relays per circuit, and circuits where one relay is adjacent
/// to both ends or none stands between them.
struct Shape {
    mean_relays: f64,
    relays: BTreeMap<usize, usize>,
    one_relay: usize,
    no_relay: usize,
}

fn shape(circuits: &[Circuit]) -> Shape {
    let mut relays = BTreeMap::new();
    for c in circuits {
        *relays.entry(c.relays().len()).or_insert(0) += 1;
    }
    let total: usize = relays.iter().map(|(r, n)| r * n).sum();
    Shape {
        mean_relays: total as f64 / circuits.len() as f64,
        one_relay: relays.get(&1).copied().unwrap_or(0),
        no_relay: relays.get(&0).copied().unwrap_or(0),
        relays,
    }
}

/// Per-pair path entropy.
struct PairEntropy {
    origin: usize,
    destination: usize,
    paths: usize,
    /// The path drawn most often.
    commonest: Vec<usize>,
    path_bits: f64,
    first_bits: f64,
    last_bits: f64,
}

fn pair_entropy(
    net: &Net,
    origin: usize,
    destination: usize,
    home: usize,
    rng: &mut Rng,
    seed: u64,
) -> PairEntropy {
    let mut paths = BTreeMap::new();
    let mut firsts = BTreeMap::new();
    let mut lasts = BTreeMap::new();
    for _ in 0..ENTROPY_DRAWS {
        let p = path(
            net,
            origin,
            destination,
            home,
            Anonymity::Balanced,
            rng,
            seed,
        );
        *firsts.entry(p[1]).or_insert(0usize) += 1;
        *lasts.entry(p[p.len() - 2]).or_insert(0usize) += 1;
        *paths.entry(p).or_insert(0usize) += 1;
    }
    PairEntropy {
        origin,
        destination,
        paths: paths.len(),
        commonest: paths
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(p, _)| p.clone())
            .unwrap_or_default(),
        path_bits: entropy(&paths),
        first_bits: entropy(&firsts),
        last_bits: entropy(&lasts),
    }
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    sum / n.max(1) as f64
}

fn pct(f: f64) -> String {
    format!("{:.3}%", f * 100.0)
}

/// Prints an attacker table. The last column is what any choice of two
/// distinct relays gives against a random set: k(k−1) / (M(M−1)), with M
/// the nodes that are neither end.
fn print_attackers(title: &str, rows: &[AttackerRow]) {
    eprintln!("{title}");
    eprintln!(
        "  {:>3}  {:>9}  {:>9}  {:>9}  {:>14}",
        "k", "mean", "worst", "busiest", "2 distinct"
    );
    let m = (HONEST - 2) as f64;
    for r in rows {
        let k = r.k as f64;
        eprintln!(
            "  {:>3}  {:>9}  {:>9}  {:>9}  {:>14}",
            r.k,
            pct(r.mean),
            pct(r.worst),
            pct(r.busiest),
            pct(k * (k - 1.0) / (m * (m - 1.0)))
        );
    }
}

fn attackers_json(rows: &[AttackerRow]) -> Value {
    rows.iter()
        .map(|r| json!({"k": r.k, "mean": r.mean, "worst": r.worst, "busiest": r.busiest}))
        .collect()
}

fn sybils_json(rows: &[SybilRow]) -> Value {
    rows.iter()
        .map(|r| {
            json!({
                "attack_edges": r.attack_edges,
                "both_ends": r.both_ends,
                "last_relay": r.last_relay,
                "any_relay": r.any_relay,
            })
        })
        .collect()
}

fn shape_json(s: &Shape) -> Value {
    json!({
        "mean_relays": s.mean_relays,
        "relays": s.relays.iter().map(|(r, n)| (r.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "one_relay_sees_both_ends": s.one_relay,
        "no_relay": s.no_relay,
    })
}

#[test]
fn balanced_paths_hide_the_origin_and_never_show_both_ends() {
    let seed = sim::seed(0xA11_0005);
    let started = Instant::now();
    let mut rng = Rng::new(seed);

    // The honest graph, with real identities and signed records.
    let identities: Vec<Identity> = (0..HONEST + SYBILS)
        .map(|_| Identity::from_seed(&rng.bytes32()))
        .collect();
    let honest = ring_with_chords(HONEST, CHORDS_PER_NODE, &mut rng);
    assert!(is_connected(HONEST, &honest));
    let net = Net::new(&identities[..HONEST], &honest);
    let adjacency = neighbours(HONEST, &honest);
    let degree = 2.0 * honest.len() as f64 / HONEST as f64;

    // Each origin's home: one of its neighbours, drawn once and kept.
    let homes: Vec<usize> = adjacency
        .iter()
        .map(|peers| peers[rng.index(peers.len())])
        .collect();

    // Random (origin, destination) pairs; the destination is neither the
    // origin nor its home (a balanced path to the home itself is refused).
    let pairs: Vec<(usize, usize)> = (0..CIRCUITS)
        .map(|_| {
            let origin = rng.index(HONEST);
            loop {
                let destination = rng.index(HONEST);
                if destination != origin && destination != homes[origin] {
                    return (origin, destination);
                }
            }
        })
        .collect();

    let mut path_rng = rng.fork();
    let (balanced, fast) = balanced_and_fast(&net, &pairs, &homes, &mut path_rng, seed);
    let balanced_shape = shape(&balanced);
    let fast_shape = shape(&fast);
    let fast_home_first = fast.iter().filter(|c| c.path[0] == homes[c.origin]).count();

    // Path entropy over repeated draws for a few fixed pairs.
    let entropies: Vec<PairEntropy> = pairs[..ENTROPY_PAIRS]
        .iter()
        .map(|&(o, d)| pair_entropy(&net, o, d, homes[o], &mut path_rng, seed))
        .collect();
    let fixed_pairs = entropies.iter().filter(|e| e.paths == 1).count();
    // The walk's random steps make every pair's path vary (path::WALK_STEPS).
    assert_eq!(fixed_pairs, 0, "pairs with one path only (seed {seed:#x})");
    let random_pairs = || entropies.iter().filter(|e| e.paths > 1);

    // Random attackers.
    let mut attacker_rng = rng.fork();
    let balanced_attackers =
        attacker_table(&net, &balanced, Anonymity::Balanced, &mut attacker_rng);
    let fast_attackers = attacker_table(&net, &fast, Anonymity::Fast, &mut attacker_rng);

    // Sybils: a dense group attached by a few agreements honest operators
    // made. The attachment points are nested (the 3 include the 1).
    let sybil_inner: Vec<(usize, usize)> =
        ring_with_chords(SYBILS, SYBIL_CHORDS_PER_NODE, &mut rng)
            .into_iter()
            .map(|(a, b)| (HONEST + a, HONEST + b))
            .collect();
    let mut attack: Vec<(usize, usize)> = Vec::new();
    while attack.len() < ATTACK_EDGES[ATTACK_EDGES.len() - 1] {
        let edge = (rng.index(HONEST), HONEST + rng.index(SYBILS));
        if !attack.contains(&edge) {
            attack.push(edge);
        }
    }
    let mut sybil_balanced = Vec::new();
    let mut sybil_fast = Vec::new();
    for &edges in &ATTACK_EDGES {
        let mut topology = honest.clone();
        topology.extend_from_slice(&sybil_inner);
        topology.extend_from_slice(&attack[..edges]);
        let net = Net::new(&identities, &topology);
        let (b, f) = balanced_and_fast(&net, &pairs, &homes, &mut path_rng, seed);
        sybil_balanced.push(sybil_row(&net, &b, Anonymity::Balanced, edges));
        sybil_fast.push(sybil_row(&net, &f, Anonymity::Fast, edges));
    }

    // Balanced circuits as the router builds them from its pool. Their own
    // RNGs, so the figures above stay what they were.
    let mut pool_rng = Rng::new(seed ^ 0x9001);
    let pooled = circuits(&pairs, |o, d| {
        pooled_path(&net, o, d, homes[o], &mut pool_rng, seed)
    });
    check(&net, &pooled, &homes, Anonymity::Balanced, seed);
    let pooled_shape = shape(&pooled);
    let pooled_attackers = attacker_table(
        &net,
        &pooled,
        Anonymity::Balanced,
        &mut Rng::new(seed ^ 0x9002),
    );

    // Report.
    let n = CIRCUITS as f64;
    let mean_path_bits = mean(entropies.iter().map(|e| e.path_bits));
    let mean_first_bits = mean(entropies.iter().map(|e| e.first_bits));
    let mean_last_bits = mean(entropies.iter().map(|e| e.last_bits));
    eprintln!(
        "graph: {HONEST} honest nodes, {} agreements (mean degree {degree:.1}); \
         {CIRCUITS} circuits per setting",
        honest.len()
    );
    eprintln!(
        "balanced: first hop is the home on {CIRCUITS}/{CIRCUITS}; relays mean {:.2} {:?}; \
         one relay adjacent to both ends: {}; no relay: {}",
        balanced_shape.mean_relays,
        balanced_shape.relays,
        balanced_shape.one_relay,
        balanced_shape.no_relay
    );
    eprintln!(
        "fast:     first hop is the home on {fast_home_first}/{CIRCUITS}; relays mean {:.2} {:?}; \
         one relay adjacent to both ends: {} ({}); no relay (destination adjacent): {} ({})",
        fast_shape.mean_relays,
        fast_shape.relays,
        fast_shape.one_relay,
        pct(fast_shape.one_relay as f64 / n),
        fast_shape.no_relay,
        pct(fast_shape.no_relay as f64 / n)
    );
    eprintln!(
        "path entropy, balanced, {ENTROPY_PAIRS} pairs × {ENTROPY_DRAWS} draws: whole path \
         {mean_path_bits:.2} bits, first relay after the home {mean_first_bits:.2} bits, \
         last relay {mean_last_bits:.2} bits (fast: 0 bits, its path is fixed); \
         pairs with one path only: {fixed_pairs}/{ENTROPY_PAIRS}; over the other pairs, \
         whole path {:.2} bits, first relay {:.2} bits, last relay {:.2} bits",
        mean(random_pairs().map(|e| e.path_bits)),
        mean(random_pairs().map(|e| e.first_bits)),
        mean(random_pairs().map(|e| e.last_bits)),
    );
    if let Some(e) = entropies.iter().find(|e| e.paths == 1) {
        eprintln!(
            "  e.g. node {} (home {}) to node {}: {ENTROPY_DRAWS} times the path {:?}",
            e.origin, homes[e.origin], e.destination, e.commonest
        );
    }
    for e in entropies.iter().filter(|e| e.paths > 1) {
        eprintln!(
            "  {:>3} → {:>3}: {:>4} paths, {:.2} bits; first {:.2} bits, last {:.2} bits",
            e.origin, e.destination, e.paths, e.path_bits, e.first_bits, e.last_bits
        );
    }
    print_attackers(
        "random attacker with k nodes, balanced: circuits whose first relay after the home \
         and last relay are both held",
        &balanced_attackers,
    );
    print_attackers(
        "random attacker with k nodes, fast: circuits whose first and last relay are both held",
        &fast_attackers,
    );
    eprintln!(
        "balanced from the pool: relays mean {:.2} {:?}; one relay adjacent to both ends: {}",
        pooled_shape.mean_relays, pooled_shape.relays, pooled_shape.one_relay
    );
    print_attackers(
        "random attacker with k nodes, balanced from the pool: circuits whose first relay \
         after the home and last relay are both held",
        &pooled_attackers,
    );
    eprintln!(
        "{SYBILS} Sybils, {} agreements among themselves (mean degree {:.1}); fraction of \
         circuits whose exposed first and last relay are both Sybils, whose last relay is one, \
         and with any Sybil relay:",
        sybil_inner.len(),
        2.0 * sybil_inner.len() as f64 / SYBILS as f64
    );
    eprintln!(
        "  {:>5}  {:>16} {:>10} {:>10}  {:>16} {:>10} {:>10}",
        "edges", "balanced: both", "last", "any", "fast: both", "last", "any"
    );
    for (b, f) in sybil_balanced.iter().zip(&sybil_fast) {
        eprintln!(
            "  {:>5}  {:>16} {:>10} {:>10}  {:>16} {:>10} {:>10}",
            b.attack_edges,
            pct(b.both_ends),
            pct(b.last_relay),
            pct(b.any_relay),
            pct(f.both_ends),
            pct(f.last_relay),
            pct(f.any_relay)
        );
    }

    let report = json!({
        "seed": seed,
        "graph": {
            "honest_nodes": HONEST,
            "agreements": honest.len(),
            "mean_degree": degree,
            "circuits": CIRCUITS,
        },
        "balanced": {
            "shape": shape_json(&balanced_shape),
            "attackers": attackers_json(&balanced_attackers),
            "sybils": sybils_json(&sybil_balanced),
        },
        "fast": {
            "shape": shape_json(&fast_shape),
            "first_hop_is_home": fast_home_first,
            "attackers": attackers_json(&fast_attackers),
            "sybils": sybils_json(&sybil_fast),
        },
        "entropy": {
            "pairs": ENTROPY_PAIRS,
            "draws": ENTROPY_DRAWS,
            "mean_path_bits": mean_path_bits,
            "mean_first_relay_bits": mean_first_bits,
            "mean_last_relay_bits": mean_last_bits,
            "pairs_with_one_path": fixed_pairs,
            "per_pair": entropies.iter().map(|e| json!({
                "origin": e.origin,
                "destination": e.destination,
                "paths": e.paths,
                "commonest_path": e.commonest,
                "path_bits": e.path_bits,
                "first_relay_bits": e.first_bits,
                "last_relay_bits": e.last_bits,
            })).collect::<Vec<_>>(),
        },
        "attacker_sets_per_k": ATTACKER_SETS,
        "sybil_nodes": SYBILS,
    });
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sim-anonymity.json");
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&report).expect("json") + "\n",
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
    eprintln!(
        "figures written to {} in {:.1} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );

    // What balanced buys: against every attacker size, fewer circuits
    // whose exposed ends are both held than fast gives.
    for (b, f) in balanced_attackers.iter().zip(&fast_attackers) {
        assert!(
            b.mean <= f.mean,
            "k = {}: balanced {} of circuits exposed, fast {} (seed {seed:#x})",
            b.k,
            pct(b.mean),
            pct(f.mean)
        );
    }
    // The pool changes when the walk is drawn, not what it is: its circuits
    // expose their ends about as often as paths drawn whole, and far less
    // than fast ones.
    for ((p, b), f) in pooled_attackers
        .iter()
        .zip(&balanced_attackers)
        .zip(&fast_attackers)
    {
        assert!(
            p.mean <= 1.5 * b.mean + 0.001 && p.mean <= f.mean,
            "k = {}: from the pool {} of circuits exposed, drawn whole {}, fast {} \
             (seed {seed:#x})",
            p.k,
            pct(p.mean),
            pct(b.mean),
            pct(f.mean)
        );
    }
}
