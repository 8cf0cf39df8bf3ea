//! Messages between whole routing layers in the simulation
//! (`docs/protocol.md, "Sessions"`): routers in a chain flood their graph
//! over simulated links (20 ms each way) and send each other messages inside
//! the end-to-end session, with fast and balanced paths and real crypto.
//!
//! [`RouterCore`]: umbra_routing::router::RouterCore

use std::time::{Duration, Instant};

use proptest::prelude::*;
use umbra_routing::Identity;
use umbra_routing::circuit::{CircuitRole, MAX_INBOX_MESSAGES};
use umbra_routing::path::{Anonymity, PathError};
use umbra_routing::router::{AVOID_FOR, MAX_MESSAGE_LEN, MessageError, RouteError};
use umbra_tests::sim::router_node::{RouterNode, tag_of, udp_packet};
use umbra_tests::sim::{LinkParams, Rng, Sim, seed};

/// Routers `0 - 1 - … - n-1` in a line, each with `anonymity`; a node's home
/// is its lowest-numbered neighbour. The graph converges and the pools fill.
/// Returns the simulation, the keys and the links (link `i` joins node `i`
/// and node `i + 1`).
fn chain(seed: u64, n: usize, anonymity: Anonymity) -> (Sim<RouterNode>, Vec<[u8; 32]>) {
    let mut sim = Sim::new(seed);
    let mut rng = Rng::new(seed);
    let ids: Vec<Identity> = (0..n)
        .map(|_| Identity::from_seed(&rng.bytes32()))
        .collect();
    let keys: Vec<[u8; 32]> = ids.iter().map(Identity::public).collect();
    let base = Instant::now();
    for (i, id) in ids.into_iter().enumerate() {
        let neighbours: Vec<usize> = [i.checked_sub(1), (i + 1 < n).then_some(i + 1)]
            .into_iter()
            .flatten()
            .collect();
        let peers: Vec<[u8; 32]> = neighbours.iter().map(|&j| keys[j]).collect();
        let home = neighbours.iter().min().map(|&j| keys[j]);
        sim.add_node(RouterNode::new(
            id,
            &peers,
            anonymity,
            home,
            rng.fork(),
            base,
        ));
    }
    for i in 0..n - 1 {
        let l = sim.add_link(i, i + 1, LinkParams::default());
        assert_eq!(l, i);
        sim.set_link_up(l);
    }
    assert!(
        sim.run_until_quiet(Duration::from_secs(1), Duration::from_secs(60)),
        "graph did not converge; {}",
        sim.context()
    );
    // Two sweeps: pools fill once the graph is known.
    sim.run_for(Duration::from_secs(12));
    (sim, keys)
}

/// The five-node chain of most tests: A = node 0, D = node 4, three relays
/// between them (as many as a balanced path needs).
const NODES: usize = 5;
const A: usize = 0;
const D: usize = 4;

fn node(sim: &Sim<RouterNode>, i: usize) -> &RouterNode {
    sim.node(i).expect("node")
}

/// Messages node `i` took, without their times.
fn got(sim: &Sim<RouterNode>, i: usize) -> Vec<([u8; 32], Vec<u8>)> {
    node(sim, i)
        .messages
        .iter()
        .map(|(_, from, m)| (*from, m.clone()))
        .collect()
}

/// Origin circuits node `i` has to `peer`.
fn origin_circuits_to(sim: &Sim<RouterNode>, i: usize, peer: &[u8; 32]) -> usize {
    node(sim, i)
        .core
        .circuits()
        .filter(|c| c.role == CircuitRole::Origin && !c.prefix && c.peer == Some(*peer))
        .count()
}

#[test]
fn a_message_crosses_the_chain_and_the_reply_takes_the_same_circuit() {
    for (anonymity, seed_default) in [
        (Anonymity::Fast, 0x3e55_0001),
        (Anonymity::Balanced, 0x3e55_0002),
    ] {
        let (mut sim, keys) = chain(seed(seed_default), NODES, anonymity);
        let ask = b"my endpoint: 198.51.100.7:44321 (udp)".to_vec();
        let asked = sim.now();
        sim.with_node(A, |n, t| n.message(t, &keys[D], &ask))
            .expect("node A")
            .unwrap_or_else(|e| panic!("{anonymity:?}: {e}; {}", sim.context()));
        sim.run_for(Duration::from_secs(3));
        assert_eq!(
            got(&sim, D),
            vec![(keys[A], ask.clone())],
            "{anonymity:?}: once, intact, from A; {}",
            sim.context()
        );
        assert_eq!(origin_circuits_to(&sim, A, &keys[D]), 1, "{anonymity:?}");
        let hops = node(&sim, A)
            .core
            .circuits()
            .find(|c| c.role == CircuitRole::Origin && c.peer == Some(keys[D]))
            .map(|c| c.path.len());
        assert_eq!(hops, Some(4), "{anonymity:?}: 1 → 2 → 3 → 4");

        // D answers at once, over the circuit A built: no build of its own.
        let builds = node(&sim, D).core.counters().builds;
        let answer = b"mine: 203.0.113.9:51000 (udp)".to_vec();
        let answered = sim.now();
        sim.with_node(D, |n, t| n.message(t, &keys[A], &answer))
            .expect("node D")
            .unwrap_or_else(|e| panic!("{anonymity:?}: reply: {e}"));
        sim.run_for(Duration::from_secs(1));
        assert_eq!(
            got(&sim, A),
            vec![(keys[D], answer)],
            "{anonymity:?}; {}",
            sim.context()
        );
        assert_eq!(
            node(&sim, D).core.counters().builds,
            builds,
            "{anonymity:?}"
        );
        assert_eq!(origin_circuits_to(&sim, D, &keys[A]), 0, "{anonymity:?}");

        // Counted at the ends; the relays carried cells and saw no message.
        let (ma, md) = (
            &node(&sim, A).core.circuit_metrics().messages,
            &node(&sim, D).core.circuit_metrics().messages,
        );
        assert_eq!((ma.sent, ma.received, ma.dropped()), (1, 1, 0));
        assert_eq!((md.sent, md.received, md.dropped()), (1, 1, 0));
        for r in 1..D {
            let m = node(&sim, r).core.circuit_metrics();
            assert_eq!((m.messages.sent, m.messages.received), (0, 0));
            assert!(
                m.cells_relayed > 0,
                "{anonymity:?}: relay {r} carried nothing"
            );
            assert!(got(&sim, r).is_empty());
        }
        // Nothing reached a TUN.
        assert!(node(&sim, D).tun.is_empty() && node(&sim, A).tun.is_empty());
        eprintln!(
            "{anonymity:?}, links 20 ms one way: the message reached D after {:?} \
             (with the circuit's build), the reply reached A after {:?}",
            node(&sim, D).messages[0].0 - asked,
            node(&sim, A).messages[0].0 - answered
        );
    }
}

#[test]
fn messages_that_cannot_go_are_errors_at_once() {
    let (mut sim, keys) = chain(seed(0x3e55_0003), NODES, Anonymity::Balanced);
    let mut send = |to: &[u8; 32], payload: &[u8]| {
        sim.with_node(A, |n, t| n.message(t, to, payload))
            .expect("node A")
    };
    assert_eq!(send(&keys[A], b"hi"), Err(MessageError::ToSelf));
    let nobody = Identity::from_seed(&[0xee; 32]).public();
    assert_eq!(send(&nobody, b"hi"), Err(MessageError::NoNode(nobody)));
    // Node 2 is one relay away: a balanced path needs three.
    match send(&keys[2], b"hi") {
        Err(MessageError::Route(RouteError::Path(e @ PathError::NoPath { .. }))) => {
            assert!(e.too_few_relays());
        }
        other => panic!("balanced to node 2: {other:?}"),
    }
    // Asked again within the retry time: the same error, at once.
    assert!(matches!(
        send(&keys[2], b"hi"),
        Err(MessageError::Route(RouteError::Path(
            PathError::NoPath { .. }
        )))
    ));
    let long = vec![0u8; MAX_MESSAGE_LEN + 1];
    assert_eq!(
        send(&keys[D], &long),
        Err(MessageError::TooLong(MAX_MESSAGE_LEN + 1))
    );
    // The longest that may go, goes.
    assert_eq!(send(&keys[D], &long[..MAX_MESSAGE_LEN]), Ok(()));
    sim.run_for(Duration::from_secs(3));
    assert_eq!(
        got(&sim, D),
        vec![(keys[A], long[..MAX_MESSAGE_LEN].to_vec())]
    );
    let m = &node(&sim, A).core.circuit_metrics().messages;
    assert_eq!(
        (m.sent, m.dropped()),
        (1, 0),
        "errors are not counted as sent"
    );
}

#[test]
fn the_message_queue_bound_drops_and_counts() {
    let (mut sim, keys) = chain(seed(0x3e55_0004), NODES, Anonymity::Fast);
    sim.with_node(D, |n, _| n.read_messages = false);
    let extra = 6;
    for i in 0..MAX_INBOX_MESSAGES + extra {
        sim.with_node(A, |n, t| n.message(t, &keys[D], &(i as u32).to_be_bytes()))
            .expect("node A")
            .expect("queued");
    }
    sim.run_for(Duration::from_secs(3));
    let m = node(&sim, D).core.circuit_metrics().messages.clone();
    assert_eq!(
        (m.received, m.inbox_full, m.dropped()),
        (MAX_INBOX_MESSAGES as u64, extra as u64, extra as u64),
        "{}",
        sim.context()
    );
    sim.with_node(D, |n, t| n.read_messages_now(t));
    let payloads: Vec<Vec<u8>> = got(&sim, D).into_iter().map(|(_, p)| p).collect();
    let first: Vec<Vec<u8>> = (0..MAX_INBOX_MESSAGES as u32)
        .map(|i| i.to_be_bytes().to_vec())
        .collect();
    assert_eq!(payloads, first, "the first ones are kept, in order");
    // Read, the queue takes more.
    sim.with_node(A, |n, t| n.message(t, &keys[D], b"later"))
        .expect("node A")
        .expect("queued");
    sim.run_for(Duration::from_secs(1));
    sim.with_node(D, |n, t| n.read_messages_now(t));
    assert_eq!(
        got(&sim, D).last().map(|(_, p)| p.clone()),
        Some(b"later".to_vec())
    );
}

#[test]
fn a_message_queued_when_the_build_fails_is_counted_as_dropped() {
    let (mut sim, keys) = chain(seed(0x3e55_0005), NODES, Anonymity::Fast);
    sim.with_node(A, |n, t| n.message(t, &keys[D], b"lost"))
        .expect("node A")
        .expect("queued while the circuit builds");
    // The last link goes down before the build gets there: node 3 cannot
    // extend to D.
    sim.set_link_down(3);
    sim.run_for(Duration::from_secs(3));
    let m = &node(&sim, A).core.circuit_metrics().messages;
    assert_eq!(
        (m.sent, m.lost_on_close, m.dropped()),
        (1, 1, 1),
        "{}",
        sim.context()
    );
    assert_eq!(node(&sim, A).core.circuit_metrics().drops.lost_on_close, 0);
    assert!(got(&sim, D).is_empty());
    // Once the link is back and the router no longer avoids the edge it
    // could not pass, a new message gets through (the lost one is not
    // resent).
    sim.set_link_up(3);
    sim.run_for(AVOID_FOR);
    sim.with_node(A, |n, t| n.message(t, &keys[D], b"again"))
        .expect("node A")
        .expect("queued");
    sim.run_for(Duration::from_secs(3));
    assert_eq!(
        got(&sim, D),
        vec![(keys[A], b"again".to_vec())],
        "{}",
        sim.context()
    );
}

#[test]
fn a_tun_packet_that_starts_with_0x00_never_arrives_as_a_message() {
    let (mut sim, keys) = chain(seed(0x3e55_0006), NODES, Anonymity::Fast);
    // A circuit to D exists and carries packets.
    let p = udp_packet(&keys[A], &keys[D], (5000, 6000), 1);
    sim.with_node(A, |n, t| n.send(t, &p));
    sim.run_for(Duration::from_secs(2));
    assert_eq!(
        node(&sim, D)
            .tun
            .iter()
            .filter(|(_, q)| tag_of(q) == Some(1))
            .count(),
        1
    );
    let before = node(&sim, A).core.counters().not_overlay;
    let cells = node(&sim, A).core.circuit_metrics().cells_out;
    // The same packet with its first byte 0x00, and a few other packets an
    // app could write that start with it: the TUN hands them to the router.
    let mut forged = udp_packet(&keys[A], &keys[D], (5000, 6000), 2);
    forged[0] = 0x00;
    let bare = [0x00u8];
    let short = [0x00u8, 1, 2, 3];
    for q in [&forged[..], &bare[..], &short[..]] {
        sim.with_node(A, |n, t| n.send(t, q));
    }
    sim.run_for(Duration::from_secs(2));
    assert_eq!(node(&sim, A).core.counters().not_overlay, before + 3);
    assert_eq!(
        node(&sim, A).core.circuit_metrics().cells_out,
        cells,
        "nothing left the origin"
    );
    assert!(got(&sim, D).is_empty());
    assert_eq!(node(&sim, D).core.circuit_metrics().messages.received, 0);
    assert_eq!(node(&sim, D).tun.len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any payload the API takes goes from one router to its neighbour and
    /// back, whole, once, with the sender's key.
    #[test]
    fn any_message_round_trips_between_two_routers(
        payload in proptest::collection::vec(any::<u8>(), 0..=MAX_MESSAGE_LEN),
        sim_seed in any::<u64>(),
    ) {
        let (mut sim, keys) = chain(sim_seed, 2, Anonymity::Fast);
        sim.with_node(0, |n, t| n.message(t, &keys[1], &payload))
            .expect("node 0")
            .expect("queued");
        sim.run_for(Duration::from_secs(1));
        prop_assert_eq!(got(&sim, 1), vec![(keys[0], payload.clone())]);
        sim.with_node(1, |n, t| n.message(t, &keys[0], &payload))
            .expect("node 1")
            .expect("reply");
        sim.run_for(Duration::from_secs(1));
        prop_assert_eq!(got(&sim, 0), vec![(keys[1], payload)]);
    }
}

/// Three fast routers A, B, C with agreements all round, the A–B and B–C
/// links up and converged. The A–C link (returned) is up only when
/// `carried`, and then as carried over a circuit at both ends.
fn triangle(seed: u64, carried: bool) -> (Sim<RouterNode>, Vec<[u8; 32]>, usize) {
    let mut sim = Sim::new(seed);
    let mut rng = Rng::new(seed);
    let ids: Vec<Identity> = (0..3)
        .map(|_| Identity::from_seed(&rng.bytes32()))
        .collect();
    let keys: Vec<[u8; 32]> = ids.iter().map(Identity::public).collect();
    let base = Instant::now();
    for (i, id) in ids.into_iter().enumerate() {
        let peers: Vec<[u8; 32]> = (0..3).filter(|&j| j != i).map(|j| keys[j]).collect();
        sim.add_node(RouterNode::new(
            id,
            &peers,
            Anonymity::Fast,
            None,
            rng.fork(),
            base,
        ));
    }
    let (ab, bc, ac) = (
        sim.add_link(0, 1, LinkParams::default()),
        sim.add_link(1, 2, LinkParams::default()),
        sim.add_link(0, 2, LinkParams::default()),
    );
    let mut up = vec![ab, bc];
    if carried {
        for n in [0, 2] {
            sim.node_mut(n).expect("node").carried_links.push(ac);
        }
        up.push(ac);
    }
    for l in up {
        sim.set_link_up(l);
    }
    assert!(sim.run_until_quiet(Duration::from_secs(1), Duration::from_secs(60)));
    (sim, keys, ac)
}

/// The hop counts of A's built circuits to `dest`.
fn paths_to(sim: &Sim<RouterNode>, dest: &[u8; 32]) -> Vec<usize> {
    node(sim, 0)
        .core
        .circuits()
        .filter(|c| c.role == CircuitRole::Origin && c.built && c.peer == Some(*dest))
        .map(|c| c.path.len())
        .collect()
}

/// With the fast setting, a destination that becomes a neighbour (a link to
/// it comes up, as after NAT traversal) gets that link for new flows and
/// messages, not the longer circuit built before (which closes once nothing
/// uses it; docs/architecture.md, "NAT traversal").
#[test]
fn a_fast_destination_that_becomes_a_neighbour_gets_the_link() {
    // The A–C link starts down.
    let (mut sim, keys, ac) = triangle(seed(0x3e55_0077), false);
    let path_to_c = |sim: &Sim<RouterNode>| paths_to(sim, &keys[2]);
    sim.with_node(0, |n, t| n.message(t, &keys[2], b"first"))
        .expect("node")
        .expect("sent");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(got(&sim, 2).len(), 1, "{}", sim.context());
    assert_eq!(path_to_c(&sim), vec![2], "through B while A–C is down");
    sim.set_link_up(ac);
    sim.run_for(Duration::from_secs(1));
    sim.with_node(0, |n, t| n.message(t, &keys[2], b"second"))
        .expect("node")
        .expect("sent");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(got(&sim, 2).len(), 2, "{}", sim.context());
    assert_eq!(
        path_to_c(&sim),
        vec![1],
        "a one-hop circuit over the new link"
    );
}

/// A link that rides circuits to its own peer (a relayed link over a
/// circuit, in the daemon) is never the first hop of a circuit to that peer,
/// even with the fast setting, or its cells would carry themselves; once it
/// is a connection of its own, new circuits take it.
#[test]
fn a_link_carried_over_a_circuit_is_no_first_hop_to_its_peer() {
    let (mut sim, keys, ac) = triangle(seed(0x3e55_0078), true);
    let paths = |sim: &Sim<RouterNode>| paths_to(sim, &keys[2]);
    sim.with_node(0, |n, t| n.message(t, &keys[2], b"over B"))
        .expect("node")
        .expect("sent");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(got(&sim, 2).len(), 1, "{}", sim.context());
    assert_eq!(paths(&sim), vec![2], "not over the carried A–C link");
    sim.with_node(0, |n, _| n.core.link_uncarried(ac as u64));
    sim.with_node(0, |n, t| n.message(t, &keys[2], b"direct"))
        .expect("node")
        .expect("sent");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(got(&sim, 2).len(), 2, "{}", sim.context());
    assert!(
        paths(&sim).contains(&1),
        "over A–C once it is a link of its own: {:?}",
        paths(&sim)
    );
}
