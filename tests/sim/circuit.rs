//! Circuits in the simulation (`docs/protocol.md, "Circuits"` and
//! "Sessions", `docs/architecture.md, "Testing"`):
//! 40 circuit cores with real crypto (Noise NK/IK handshakes, ChaCha20
//! layers, Poly1305 tags) on a random agreement graph of mean degree 4, 100
//! flows of numbered IPv6 packets over circuits along shortest paths, 1%
//! link loss, and a relay that fails in the middle of the run.
//!
//! **What "1% link loss" means here.** A link is TLS over TCP
//! (`docs/protocol.md, "Link setup"`), and the circuit layer relies on that,
//! as Tor does: a cell is never lost or reordered *inside* a link. So the
//! loss is the TCP segment's, as the harness models it
//! ([`umbra_tests::sim`]): 1% of transmissions on every link are lost and
//! resent after a retransmission timeout (200 ms, doubling), and every cell
//! behind a lost one waits for it. The cores see
//! an ordered, lossless, but delayed and jittery stream of cells. Dropping
//! cells inside a link would only test that a core notices a broken TCP,
//! which cannot happen.
//!
//! **Where data is really lost: the failed relay.** When the relay fails,
//! the cells queued in it and in flight on its links are gone, and the
//! circuits through it are torn down: its neighbours see their links go
//! down, tear down every circuit over them, and DESTROY cells reach both
//! ends (`Closed`, or `Unreachable` for a circuit still being built). The
//! origin's app (see [`umbra_tests::sim::circuit_node`]) then does what a
//! TCP connection inside the overlay does over a new circuit: it builds one
//! along another path and sends again every packet the receiver has not
//! acknowledged. The origin is not told which node failed: its first
//! rebuild takes the same shortest path, the hop before the dead node
//! answers EXTEND_FAILED, and the origin steps around the hop the
//! `Unreachable` event names.
//!
//! What must hold: every flow delivers every packet, byte for byte, with
//! the right source address and origin identity; on each circuit packets
//! arrive consecutively and once; across circuits the app sees a gap-free
//! stream (a resent packet the receiver already had is a counted
//! duplicate); exactly the circuits through the failed relay end; and when
//! the flows close their circuits, no node holds any circuit state.
//!
//! Figures are printed with `eprintln!`; read them with
//! `cargo test -p umbra-tests --test sim_circuit -- --nocapture`. The test
//! prints its seed; `UMBRA_SIM_SEED=0x… cargo test …` replays a run.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::rc::Rc;
use std::time::{Duration, Instant};

use umbra_routing::Identity;
use umbra_routing::circuit::CircuitEvent;
use umbra_tests::sim::circuit_node::{CircuitNode, FlowSpec, Plan, packet_len, signed_graph};
use umbra_tests::sim::topology::{is_connected, neighbours, ring_with_chords};
use umbra_tests::sim::{self, LinkParams, Sim};

/// Nodes in the network.
const NODES: usize = 40;
/// Random chords per node on top of a ring: 1 gives mean degree 4, and
/// paths of two to five hops.
const CHORDS_PER_NODE: usize = 1;
/// Flows, each over its own circuit.
const FLOWS: usize = 100;
/// Packets each flow delivers.
const PACKETS_PER_FLOW: u32 = 200;
/// Time between two new packets of a flow.
const SEND_INTERVAL: Duration = Duration::from_millis(20);
/// Loss per transmission on every link (seen as TCP retransmission delay).
const LINK_LOSS: f64 = 0.01;
/// When the relay fails: every flow has started and none has finished.
const KILL_AT: Duration = Duration::from_secs(4);
/// Relays the flows' endpoints are not drawn from: the failed relay is the
/// one of these that carries the most circuits, so that no flow loses an
/// end.
const RESERVED_RELAYS: usize = 3;
/// Virtual time the whole run may take.
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn spread(mut v: Vec<Duration>) -> String {
    v.sort_unstable();
    format!(
        "median {}, p90 {}, max {} (n = {})",
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.9)),
        ms(v.last().copied().unwrap_or_default()),
        v.len()
    )
}

/// Everything a run's checks and figures need besides the simulation.
struct Setup {
    keys: Vec<[u8; 32]>,
    degree_mean: f64,
    flows: Vec<FlowSpec>,
    victim: usize,
    /// Initial shortest paths through the victim.
    victim_paths: usize,
    hops: Vec<usize>,
}

fn build(seed: u64, loss: f64) -> (Sim<CircuitNode>, Setup) {
    let mut sim: Sim<CircuitNode> = Sim::new(seed);
    let mut rng = sim.rng().fork();
    let identities: Vec<Identity> = (0..NODES)
        .map(|_| Identity::from_seed(&rng.bytes32()))
        .collect();
    let keys: Vec<[u8; 32]> = identities.iter().map(Identity::public).collect();
    let topology = ring_with_chords(NODES, CHORDS_PER_NODE, &mut rng);
    assert!(
        is_connected(NODES, &topology),
        "topology not connected (seed {seed:#x})"
    );
    let adj = neighbours(NODES, &topology);
    let graph = signed_graph(&identities, &topology);

    // The failed relay comes from the best-connected nodes, which carry the
    // most shortest paths; flows run between the others.
    let mut by_degree: Vec<usize> = (0..NODES).collect();
    by_degree.sort_by_key(|&i| (std::cmp::Reverse(adj[i].len()), i));
    let reserved = &by_degree[..RESERVED_RELAYS];
    let pool: Vec<usize> = (0..NODES).filter(|i| !reserved.contains(i)).collect();
    let mut flows = Vec::with_capacity(FLOWS);
    let mut paths = Vec::with_capacity(FLOWS);
    while flows.len() < FLOWS {
        let (origin, dest) = (pool[rng.index(pool.len())], pool[rng.index(pool.len())]);
        // At least one relay between the ends.
        if origin == dest || adj[origin].contains(&dest) {
            continue;
        }
        let path = graph
            .shortest_path(&keys[origin], &keys[dest])
            .expect("the graph is connected");
        paths.push(path);
        flows.push(FlowSpec {
            id: flows.len() as u32,
            origin,
            dest,
            packets: PACKETS_PER_FLOW,
            start: rng.duration(Duration::from_millis(300), Duration::from_millis(1300)),
            interval: SEND_INTERVAL,
        });
    }
    let through = |v: usize| paths.iter().filter(|p| p.contains(&keys[v])).count();
    let victim = *reserved
        .iter()
        .max_by_key(|&&v| (through(v), std::cmp::Reverse(v)))
        .expect("reserved relays");
    let victim_paths = through(victim);
    let hops = paths.iter().map(|p| p.len() - 1).collect();
    // Every flow must still have a path once the victim has failed.
    let mut survivors = graph.clone();
    survivors.remove(&keys[victim]);
    for f in &flows {
        assert!(
            survivors
                .shortest_path(&keys[f.origin], &keys[f.dest])
                .is_some(),
            "flow {} has no path without node {victim} (seed {seed:#x})",
            f.id
        );
    }

    let plan = Rc::new(Plan {
        keys: keys.clone(),
        flows: flows.clone(),
    });
    let graph = Rc::new(graph);
    let base = Instant::now();
    for (i, id) in identities.into_iter().enumerate() {
        let node = CircuitNode::new(i, id, plan.clone(), graph.clone(), rng.fork(), base);
        sim.add_node(node);
    }
    for &(a, b) in &topology {
        let params = LinkParams {
            latency: rng.duration(Duration::from_millis(5), Duration::from_millis(40)),
            loss,
            rto: Duration::from_millis(200),
            bandwidth: Some(12_500_000),
        };
        let link = sim.add_link(a, b, params);
        let at = rng.duration(Duration::ZERO, Duration::from_millis(200));
        sim.link_up_at(at, link);
    }
    let degree_mean = 2.0 * topology.len() as f64 / NODES as f64;
    let setup = Setup {
        keys,
        degree_mean,
        flows,
        victim,
        victim_paths,
        hops,
    };
    (sim, setup)
}

fn violations(sim: &Sim<CircuitNode>) -> Vec<String> {
    sim.nodes()
        .flat_map(|(i, n)| n.violations.0.iter().map(move |v| format!("node {i}: {v}")))
        .collect()
}

fn assert_no_violations(sim: &Sim<CircuitNode>) {
    let v = violations(sim);
    assert!(
        v.is_empty(),
        "{} broken promises, first {:?} ({})",
        v.len(),
        &v[..v.len().min(10)],
        sim.context()
    );
}

/// How a run goes.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    /// Loss per transmission on every link.
    loss: f64,
    /// Whether the busiest reserved relay fails at [`KILL_AT`].
    fail_relay: bool,
}

/// Runs the 100 flows, checks every promise, prints the figures, and
/// returns a fingerprint of everything that happened.
fn run(seed: u64, scenario: Scenario) -> u64 {
    let wall = Instant::now();
    let (mut sim, setup) = build(seed, scenario.loss);
    let victim = setup.victim;
    let victim_key = setup.keys[victim];

    // Up to the failure: every flow has a circuit (a few are still being
    // built: a cell lost twice in a row on TCP waits 600 ms), none has
    // finished, and nothing has ended.
    sim.run_until(KILL_AT);
    assert_no_violations(&sim);
    let mut affected = Vec::new();
    let mut built_at_kill = 0;
    for (i, n) in sim.nodes() {
        for s in &n.senders {
            let (c, b) = s.circuit.unwrap_or_else(|| {
                panic!(
                    "flow {} has no circuit at {KILL_AT:?} ({})",
                    s.spec.id,
                    sim.context()
                )
            });
            let rec = &n.builds[b];
            assert!(
                s.builds == 1 && rec.ended.is_none() && s.acked < s.spec.packets,
                "flow {} is not on its first circuit, mid-transfer, at {KILL_AT:?}: {s:?} {rec:?} ({})",
                s.spec.id,
                sim.context()
            );
            built_at_kill += usize::from(rec.built.is_some());
            if rec.path.contains(&victim) {
                affected.push((i, c, s.spec.id));
            }
        }
    }
    let relayed_by_victim = sim
        .node(victim)
        .map(|n| n.core.metrics().relay_circuits)
        .unwrap_or(0);
    assert!(
        !affected.is_empty() && relayed_by_victim > 0,
        "node {victim} relays {relayed_by_victim} circuits, {} flows cross it ({})",
        affected.len(),
        sim.context()
    );
    if scenario.fail_relay {
        sim.fail_node(victim);
    } else {
        affected.clear();
    }

    // Until every flow is delivered and acknowledged.
    let deadline = sim.now() + RUN_LIMIT;
    while !sim.nodes().all(|(_, n)| n.done()) {
        assert!(
            sim.now() < deadline,
            "not delivered after {RUN_LIMIT:?}: {} flows unfinished; {:?} ({})",
            sim.nodes()
                .flat_map(|(_, n)| n.senders.iter())
                .filter(|s| s.acked < s.spec.packets)
                .count(),
            violations(&sim).first(),
            sim.context()
        );
        sim.run_for(Duration::from_millis(500));
    }
    let delivered_at = sim
        .nodes()
        .flat_map(|(_, n)| n.receivers.values().map(|r| r.last_at))
        .max()
        .unwrap_or_default();
    assert_no_violations(&sim);

    // Exactly the circuits through the failed relay ended, and every one of
    // them did.
    let mut ended_reasons: BTreeMap<String, usize> = BTreeMap::new();
    for (i, n) in sim.nodes() {
        for b in &n.builds {
            let Some((t, e)) = &b.ended else {
                continue;
            };
            assert!(
                scenario.fail_relay && *t >= KILL_AT && b.path.contains(&victim),
                "node {i}: circuit {} of flow {} over {:?} ended at {t:?} ({e:?}), but node {victim} failed at {KILL_AT:?} ({})",
                b.circuit,
                b.flow,
                b.path,
                sim.context()
            );
            let key = match e {
                CircuitEvent::Closed { reason, .. } => format!("Closed({reason:?})"),
                CircuitEvent::Unreachable { reason, .. } => format!("Unreachable({reason:?})"),
                other => format!("{other:?}"),
            };
            *ended_reasons.entry(key).or_default() += 1;
        }
    }
    for &(i, c, flow) in &affected {
        let n = sim.node(i).expect("origins are alive");
        let b = n
            .builds
            .iter()
            .find(|b| b.circuit == c)
            .expect("its build record");
        assert!(
            b.ended.is_some(),
            "flow {flow}: circuit {c} crossed node {victim} but never ended ({})",
            sim.context()
        );
        let current = n.senders.iter().find(|s| s.spec.id == flow);
        assert!(
            current.is_some_and(|s| s.circuit.is_some_and(|(now, _)| now != c)),
            "flow {flow} still uses {c} ({})",
            sim.context()
        );
        assert!(n.suspects.contains(&victim_key));
    }
    // Each end of the failed circuits hears of it.
    let dest_closes: usize = sim.nodes().map(|(_, n)| n.dest_closes.len()).sum();
    assert!(
        dest_closes >= affected.len(),
        "{dest_closes} destinations heard of {} failed circuits ({})",
        affected.len(),
        sim.context()
    );

    // Nothing was dropped at the ends except what the failure lost, and no
    // cell was changed or refused.
    let mut duplicates = 0;
    let mut dup_flows = 0;
    let affected_flows: Vec<u32> = affected.iter().map(|a| a.2).collect();
    for (i, n) in sim.nodes() {
        let m = n.core.metrics();
        let d = &m.drops;
        assert_eq!(
            (
                d.forged_source,
                d.replayed,
                d.not_ipv6,
                d.malformed,
                d.buffer_too_small,
                d.send_queue_full
            ),
            (0, 0, 0, 0, 0, 0),
            "node {i} dropped packets: {d:?} ({})",
            sim.context()
        );
        assert_eq!(
            (m.tag_failures, m.handshake_failures, m.protocol_errors),
            (0, 0, 0),
            "node {i}: {m:?} ({})",
            sim.context()
        );
        assert_eq!(n.queue_full, 0, "node {i} ({})", sim.context());
        for (flow, r) in &n.receivers {
            if r.duplicates > 0 {
                assert!(
                    affected_flows.contains(flow),
                    "flow {flow} got {} duplicates but never changed circuit ({})",
                    r.duplicates,
                    sim.context()
                );
                duplicates += r.duplicates;
                dup_flows += 1;
            }
        }
    }

    // The figures.
    let mut first_builds = Vec::new();
    let mut rebuilds = Vec::new();
    let mut builds_per_affected = Vec::new();
    let mut recovery = Vec::new();
    let mut completion = Vec::new();
    for (_, n) in sim.nodes() {
        for b in &n.builds {
            if let Some(t) = b.built {
                if b.rebuild {
                    rebuilds.push(t - b.started);
                } else {
                    first_builds.push(t - b.started);
                }
            }
        }
        for s in &n.senders {
            completion.push(s.acked_at - s.spec.start);
            if affected_flows.contains(&s.spec.id) {
                builds_per_affected.push(s.builds);
                // From the failure to the replacement circuit being built.
                let back = s
                    .circuit
                    .and_then(|(_, b)| n.builds.get(b))
                    .and_then(|b| b.built);
                if let Some(t) = back {
                    recovery.push(t - KILL_AT);
                }
            }
        }
    }
    let live: Vec<usize> = sim.nodes().map(|(i, _)| i).collect();
    let cells_sent: Vec<u64> = live.iter().map(|&i| sim.node_stats(i).sent_msgs).collect();
    let relayed: Vec<u64> = sim
        .nodes()
        .map(|(_, n)| n.core.metrics().cells_relayed)
        .collect();
    let packets_delivered: u64 = sim
        .nodes()
        .map(|(_, n)| n.core.metrics().packets_delivered)
        .sum();
    let bytes: u64 = setup
        .flows
        .iter()
        .map(|f| {
            (0..f.packets)
                .map(|s| packet_len(f.id, s) as u64)
                .sum::<u64>()
        })
        .sum();
    let lost_on_close: u64 = sim
        .nodes()
        .map(|(_, n)| n.core.metrics().drops.lost_on_close)
        .sum();
    let hops = &setup.hops;
    eprintln!(
        "== circuits: {NODES} nodes (mean degree {:.1}), {FLOWS} flows × {PACKETS_PER_FLOW} packets, {:.0}% link loss, {} ==",
        setup.degree_mean,
        scenario.loss * 100.0,
        if scenario.fail_relay {
            format!("node {victim} fails at {KILL_AT:?}")
        } else {
            "no failure".into()
        }
    );
    eprintln!(
        "paths: {:.2} hops mean, {} max; {built_at_kill} circuits built at {KILL_AT:?}; node {victim} was on {} initial paths and relayed {relayed_by_victim} circuits then",
        hops.iter().sum::<usize>() as f64 / hops.len() as f64,
        hops.iter().max().unwrap_or(&0),
        setup.victim_paths,
    );
    eprintln!(
        "delivered {:.1} MB in {} packets; last packet at {:.2} s simulated; flow completion (start to last ack) {}",
        bytes as f64 / 1e6,
        FLOWS as u64 * u64::from(PACKETS_PER_FLOW),
        delivered_at.as_secs_f64(),
        spread(completion)
    );
    eprintln!("circuit build, first: {}", spread(first_builds));
    eprintln!("circuit build, after the failure: {}", spread(rebuilds));
    let first_hop_down: u64 = sim.nodes().map(|(_, n)| n.first_hop_down).sum();
    eprintln!(
        "failure: {} circuits ended ({ended_reasons:?}); {} flows rebuilt with {:?} builds each; failure to replacement built {}; {first_hop_down} builds refused at once (first hop down)",
        affected.len(),
        affected_flows.len(),
        builds_per_affected,
        spread(recovery)
    );
    eprintln!(
        "resent: {duplicates} duplicate packets discarded on {dup_flows} flows; {lost_on_close} packets lost in closing circuits; {dest_closes} destination-side closes"
    );
    eprintln!(
        "cells sent per node: mean {:.0}, max {}; relayed per node: mean {:.0}, max {}; link retransmissions {}; packets handed to apps {packets_delivered}",
        cells_sent.iter().sum::<u64>() as f64 / cells_sent.len() as f64,
        cells_sent.iter().max().unwrap_or(&0),
        relayed.iter().sum::<u64>() as f64 / relayed.len() as f64,
        relayed.iter().max().unwrap_or(&0),
        sim.stats().retransmissions,
    );

    // The flows close their circuits: no node keeps any circuit state.
    let closing: Vec<usize> = sim.nodes().map(|(i, _)| i).collect();
    for i in closing {
        sim.with_node(i, |n, now| n.close_all(now));
    }
    sim.run_for(Duration::from_secs(10));
    for (i, n) in sim.nodes() {
        let m = n.core.metrics();
        assert_eq!(
            (
                m.origin_circuits,
                m.relay_circuits,
                m.destination_circuits,
                n.core.circuits().count()
            ),
            (0, 0, 0, 0),
            "node {i} still holds circuits after every flow closed ({})",
            sim.context()
        );
    }
    assert_no_violations(&sim);
    let fingerprint = fingerprint(&sim);
    eprintln!(
        "wall {:.2?}, {} events; fingerprint {fingerprint:#018x}",
        wall.elapsed(),
        sim.stats().events,
    );
    fingerprint
}

/// A hash of what happened in a run: every build and its timing, every
/// flow's receiving end, and the simulation's totals.
fn fingerprint(sim: &Sim<CircuitNode>) -> u64 {
    let mut h = DefaultHasher::new();
    for (i, n) in sim.nodes() {
        i.hash(&mut h);
        for b in &n.builds {
            (b.flow, b.circuit.0, &b.path, b.started, b.built).hash(&mut h);
            b.ended
                .as_ref()
                .map(|(t, e)| (t, format!("{e:?}")))
                .hash(&mut h);
        }
        for (flow, r) in &n.receivers {
            (flow, r.next_expected, r.duplicates, r.first_at, r.last_at).hash(&mut h);
        }
        for s in &n.senders {
            (s.acked, s.acked_at, s.builds).hash(&mut h);
        }
    }
    let st = sim.stats();
    (
        st.events,
        st.delivered,
        st.retransmissions,
        st.lost_on_down_link,
        sim.now(),
    )
        .hash(&mut h);
    h.finish()
}

/// The proof that 100 circuits deliver everything in order under 1% link
/// loss and a relay failing mid-run.
#[test]
fn hundred_circuits_deliver_in_order_under_loss_and_a_relay_failure() {
    let seed = sim::seed(0xC1_2C01);
    run(
        seed,
        Scenario {
            loss: LINK_LOSS,
            fail_relay: true,
        },
    );
}

/// The same network without loss or failure: the figures loss and the
/// failure are compared with.
#[test]
fn hundred_circuits_without_loss() {
    let seed = sim::seed(0xC1_2C01);
    run(
        seed,
        Scenario {
            loss: 0.0,
            fail_relay: false,
        },
    );
}

/// A seed replays its run exactly (`docs/architecture.md, "Testing"`): the cores and the
/// simulation depend on nothing but the seed. (Noise's ephemeral keys come
/// from the OS, but they change only the bytes of cells, never what the
/// cores do.)
#[test]
fn a_seed_replays_the_same_run() {
    let seed = sim::seed(0xC1_2C02);
    let scenario = Scenario {
        loss: LINK_LOSS,
        fail_relay: true,
    };
    let (a, b) = (run(seed, scenario), run(seed, scenario));
    assert_eq!(a, b, "two runs of seed {seed:#x} differ");
}
