//! Circuits end to end: a deterministic in-test driver wires circuit cores
//! together by link ids and pumps `poll_transmit` into `handle_cell`. No
//! sockets, no clocks, no threads.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

use super::*;
use crate::address::{DEFAULT_PREFIX, address_for_key, subnet_for_key};
use crate::cell::{CELL_LEN, Command, Reason, read_header};
use crate::crypto::Identity;
use crate::session::MAX_PACKET_LEN;

type Tamper = Box<dyn FnMut(usize, usize, &mut [u8; CELL_LEN])>;

/// N cores, links between them, one FIFO per delivery round (so each link is
/// in order, as TLS over TCP is).
struct Net {
    now: Instant,
    nodes: Vec<CircuitCore>,
    keys: Vec<[u8; 32]>,
    links: HashMap<LinkId, (usize, usize)>,
    next_link: LinkId,
    /// Sees (and may change) every cell crossing from node a to node b.
    tamper: Option<Tamper>,
    /// Nodes whose reader is slow: their packets are not taken by `deliver`.
    buf: Box<[u8; MAX_PACKET_LEN]>,
}

impl Net {
    fn new(n: usize) -> Net {
        let nodes: Vec<CircuitCore> = (0..n)
            .map(|i| Self::core(i, CircuitConfig::default()))
            .collect();
        Net {
            now: Instant::now(),
            keys: nodes.iter().map(CircuitCore::public_key).collect(),
            nodes,
            links: HashMap::new(),
            next_link: 100,
            tamper: None,
            buf: vec![0u8; MAX_PACKET_LEN]
                .into_boxed_slice()
                .try_into()
                .expect("len"),
        }
    }

    /// Node `i`'s core with `config`: its identity and RNG seed are fixed
    /// by `i`.
    fn core(i: usize, config: CircuitConfig) -> CircuitCore {
        let rng = Box::new(ChaCha20Rng::seed_from_u64(i as u64));
        CircuitCore::new(
            Identity::from_seed(&[i as u8 + 1; 32]),
            DEFAULT_PREFIX,
            config,
            rng,
        )
    }

    /// Node `i` started again with `config` (before any link or circuit).
    fn restart(&mut self, i: usize, config: CircuitConfig) {
        self.nodes[i] = Self::core(i, config);
    }

    /// Node `i` started again offering only the relay-crypto versions in
    /// `mask`.
    fn offer_versions(&mut self, i: usize, mask: u8) {
        let config = CircuitConfig {
            relay_crypto_versions: mask,
            ..CircuitConfig::default()
        };
        self.restart(i, config);
    }

    /// A chain 0 - 1 - 2 - ... - n-1.
    fn chain(n: usize) -> Net {
        let mut net = Net::new(n);
        for i in 0..n - 1 {
            net.link(i, i + 1);
        }
        net
    }

    fn link(&mut self, a: usize, b: usize) -> LinkId {
        let l = self.next_link;
        self.next_link += 1;
        self.links.insert(l, (a, b));
        let (ka, kb) = (self.keys[a], self.keys[b]);
        self.nodes[a].link_up(self.now, l, kb);
        self.nodes[b].link_up(self.now, l, ka);
        l
    }

    fn link_between(&self, a: usize, b: usize) -> LinkId {
        *self
            .links
            .iter()
            .find(|(_, ends)| **ends == (a, b) || **ends == (b, a))
            .expect("link")
            .0
    }

    fn unlink(&mut self, l: LinkId) {
        let (a, b) = self.links.remove(&l).expect("link");
        self.nodes[a].link_down(self.now, l);
        self.nodes[b].link_down(self.now, l);
    }

    /// Moves cells until no core has anything to send. Returns cells moved.
    fn pump(&mut self) -> usize {
        let mut moved = 0;
        let mut cell = [0u8; CELL_LEN];
        let mut queue = VecDeque::new();
        loop {
            for i in 0..self.nodes.len() {
                while let Some(l) = self.nodes[i].poll_transmit(&mut cell) {
                    if let Some(&(a, b)) = self.links.get(&l) {
                        let to = if a == i { b } else { a };
                        queue.push_back((i, to, l, cell));
                    }
                }
            }
            if queue.is_empty() {
                return moved;
            }
            while let Some((from, to, l, mut c)) = queue.pop_front() {
                if let Some(t) = self.tamper.as_mut() {
                    t(from, to, &mut c);
                }
                self.nodes[to].handle_cell(self.now, l, &c);
                moved += 1;
            }
        }
    }

    fn events(&mut self, i: usize) -> Vec<CircuitEvent> {
        std::iter::from_fn(|| self.nodes[i].poll_event()).collect()
    }

    fn packets(&mut self, i: usize) -> Vec<(Delivered, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(d) = self.nodes[i].poll_packet(&mut self.buf[..]) {
            out.push((d, self.buf[..d.len].to_vec()));
        }
        out
    }

    /// Builds a circuit from `origin` along `path` (node indices); returns
    /// its id at the origin and at the destination.
    fn build(&mut self, origin: usize, path: &[usize]) -> (CircuitId, CircuitId) {
        let keys: Vec<[u8; 32]> = path.iter().map(|&i| self.keys[i]).collect();
        let id = self.nodes[origin]
            .build_circuit(self.now, &keys)
            .expect("build");
        self.pump();
        let dest = *path.last().expect("path");
        assert_eq!(
            self.events(origin),
            vec![CircuitEvent::Built {
                circuit: id,
                destination: self.keys[dest]
            }]
        );
        let ev = self.events(dest);
        let [CircuitEvent::Incoming { circuit, origin: o }] = ev[..] else {
            panic!("destination events {ev:?}");
        };
        assert_eq!(o, self.keys[origin]);
        (id, circuit)
    }

    /// Builds a circuit from node 0 along `path` and asserts that hop
    /// `failed_hop` refuses it for `reason`.
    #[track_caller]
    fn assert_refused(&mut self, path: &[usize], failed_hop: usize, reason: Reason) {
        let keys: Vec<[u8; 32]> = path.iter().map(|&i| self.keys[i]).collect();
        let id = self.nodes[0].build_circuit(self.now, &keys).expect("build");
        self.pump();
        assert_eq!(
            self.events(0),
            vec![CircuitEvent::Unreachable {
                circuit: id,
                destination: *keys.last().expect("path"),
                failed_hop: Some(failed_hop),
                reason
            }]
        );
    }

    /// The event that circuit `circuit` to or from node `peer` closed.
    fn closed(&self, circuit: CircuitId, peer: usize, reason: Reason) -> CircuitEvent {
        CircuitEvent::Closed {
            circuit,
            peer: self.keys[peer],
            reason,
        }
    }

    fn address(&self, i: usize) -> Ipv6Addr {
        address_for_key(&self.keys[i], DEFAULT_PREFIX)
    }

    /// Sends `packets` from node `from` on `circuit`, pumping and taking
    /// packets at `to` whenever the send queue fills. Returns what `to` got.
    fn transfer(
        &mut self,
        from: usize,
        circuit: CircuitId,
        to: usize,
        packets: &[Vec<u8>],
    ) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        for p in packets {
            loop {
                match self.nodes[from].send_packet(self.now, circuit, p) {
                    Ok(()) => break,
                    Err(SendError::QueueFull) => {
                        self.pump();
                        got.extend(self.packets(to).into_iter().map(|(_, p)| p));
                    }
                    Err(e) => panic!("send: {e}"),
                }
            }
        }
        for _ in 0..1000 {
            self.pump();
            let more = self.packets(to);
            if more.is_empty() && self.pump() == 0 {
                break;
            }
            got.extend(more.into_iter().map(|(_, p)| p));
        }
        got
    }

    /// Sends the one packet `p` from node `from` on `circuit` and asserts
    /// that node `to` gets exactly it.
    #[track_caller]
    fn assert_carries(&mut self, from: usize, circuit: CircuitId, to: usize, p: Vec<u8>) {
        let got = self.transfer(from, circuit, to, std::slice::from_ref(&p));
        assert_eq!(got, vec![p]);
    }
}

/// An IPv6 packet of `len` bytes (at least 40) from `src`, with a payload
/// that depends on `len` and `seed`.
fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, len: usize, seed: u8) -> Vec<u8> {
    assert!(len >= 40);
    let mut p = vec![0u8; len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    p[6] = 59; // no next header
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    for (i, b) in p[40..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (len as u8);
    }
    p
}

fn sizes() -> Vec<usize> {
    let mut s: Vec<usize> = (40..=1300).collect();
    for base in [1166, 1176, 2342, 2352, 4096, 9000, 16384, 32768, 65535] {
        s.extend(base - 2..=base.min(MAX_PACKET_LEN - 2) + 2);
    }
    s.retain(|&n| n <= MAX_PACKET_LEN);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..60 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push(40 + (x % (MAX_PACKET_LEN as u64 - 39)) as usize);
    }
    s
}

fn relay_never_dropped(net: &Net, relays: &[usize]) {
    for &r in relays {
        let m = net.nodes[r].metrics();
        // A relay answers every control cell with one cell and switches every
        // relay cell: what comes in goes out.
        assert_eq!(m.cells_in, m.cells_out, "relay {r}: {m:?}");
        assert_eq!(m.drops, DropCounters::default());
    }
}

#[test]
fn four_hop_circuit_carries_every_size_both_ways() {
    // origin 0 → home 1 → relay 2 → relay 3 → destination 4
    let mut net = Net::chain(5);
    let (at_origin, at_dest) = net.build(0, &[1, 2, 3, 4]);
    let (a0, a4) = (net.address(0), net.address(4));

    let forward: Vec<Vec<u8>> = sizes()
        .iter()
        .enumerate()
        .map(|(i, &n)| ipv6(a0, a4, n, i as u8))
        .collect();
    let got = net.transfer(0, at_origin, 4, &forward);
    assert_eq!(got.len(), forward.len());
    assert!(got == forward, "forward packets differ or are out of order");

    let backward: Vec<Vec<u8>> = sizes()
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &n)| ipv6(a4, a0, n, i as u8 ^ 0x55))
        .collect();
    let got = net.transfer(4, at_dest, 0, &backward);
    assert!(
        got == backward,
        "backward packets differ or are out of order"
    );

    relay_never_dropped(&net, &[1, 2, 3]);
    for end in [0, 4] {
        let m = net.nodes[end].metrics();
        // `transfer` pumps and retries when the send queue fills; nothing else
        // may be dropped.
        let drops = DropCounters {
            send_queue_full: 0,
            ..m.drops.clone()
        };
        assert_eq!(drops, DropCounters::default(), "node {end}");
        assert_eq!(m.tag_failures, 0);
    }
    assert_eq!(
        net.nodes[4].metrics().packets_delivered,
        forward.len() as u64
    );
    assert_eq!(
        net.nodes[0].metrics().packets_delivered,
        backward.len() as u64
    );
}

#[test]
fn each_hop_knows_only_its_neighbours() {
    let mut net = Net::chain(5);
    let (id, _) = net.build(0, &[1, 2, 3, 4]);
    let k = net.keys.clone();
    let origin = net.nodes[0].circuit(id).expect("origin circuit");
    assert_eq!(origin.role, CircuitRole::Origin);
    assert_eq!(origin.path, vec![k[1], k[2], k[3], k[4]]);
    assert!(origin.built);
    for r in 1..=3 {
        let infos: Vec<CircuitInfo> = net.nodes[r].circuits().collect();
        assert_eq!(infos.len(), 1);
        let i = &infos[0];
        assert_eq!(i.role, CircuitRole::Relay);
        assert_eq!((i.prev, i.next), (Some(k[r - 1]), Some(k[r + 1])));
        assert!(i.path.is_empty() && i.peer.is_none());
    }
    let d: Vec<CircuitInfo> = net.nodes[4].circuits().collect();
    assert_eq!(d[0].role, CircuitRole::Destination);
    assert_eq!((d[0].prev, d[0].peer), (Some(k[3]), Some(k[0])));
    assert_eq!(net.nodes[2].metrics().relay_circuits, 1);
}

#[test]
fn small_packets_share_a_cell() {
    let mut net = Net::chain(4);
    let (id, _) = net.build(0, &[1, 2, 3]);
    let before = net.nodes[2].metrics().cells_relayed;
    let (a0, a3) = (net.address(0), net.address(3));
    // 10 × (72 + 13 bytes of message header) fit one 1179-byte payload.
    for i in 0..10 {
        net.nodes[0]
            .send_packet(net.now, id, &ipv6(a0, a3, 72, i))
            .expect("send");
    }
    net.pump();
    assert_eq!(net.nodes[2].metrics().cells_relayed - before, 1);
    assert_eq!(net.packets(3).len(), 10);
}

#[test]
fn direct_circuit_to_a_neighbour() {
    let mut net = Net::chain(2);
    let (id, back) = net.build(0, &[1]);
    let (a0, a1) = (net.address(0), net.address(1));
    net.assert_carries(0, id, 1, ipv6(a0, a1, 3000, 1));
    net.assert_carries(1, back, 0, ipv6(a1, a0, 100, 2));
}

#[test]
fn both_ends_of_a_link_create_circuits_without_colliding() {
    let mut net = Net::chain(3);
    let (a, _) = net.build(0, &[1, 2]);
    let (b, _) = net.build(2, &[1, 0]);
    let (c, _) = net.build(1, &[0]);
    let (d, _) = net.build(1, &[2]);
    let (a0, a1, a2) = (net.address(0), net.address(1), net.address(2));
    net.assert_carries(0, a, 2, ipv6(a0, a2, 500, 0));
    net.assert_carries(2, b, 0, ipv6(a2, a0, 500, 1));
    net.assert_carries(1, c, 0, ipv6(a1, a0, 500, 2));
    net.assert_carries(1, d, 2, ipv6(a1, a2, 500, 3));
}

#[test]
fn tampered_cell_at_a_middle_hop_destroys_the_circuit() {
    let mut net = Net::chain(5);
    let (id, _) = net.build(0, &[1, 2, 3, 4]);
    // Relay 2 flips one bit of the next relay cell it passes to relay 3.
    let mut armed = true;
    net.tamper = Some(Box::new(move |from, to, cell| {
        if armed && from == 2 && to == 3 && read_header(cell).1 == Command::Relay.to_u8() {
            cell[100] ^= 0x04;
            armed = false;
        }
    }));
    let (a0, a4) = (net.address(0), net.address(4));
    net.nodes[0]
        .send_packet(net.now, id, &ipv6(a0, a4, 200, 0))
        .expect("send");
    net.pump();
    assert!(net.packets(4).is_empty());
    assert_eq!(net.nodes[4].metrics().tag_failures, 1);
    let ev = net.events(4);
    assert!(
        ev.iter().any(|e| matches!(
            e,
            CircuitEvent::TagFailure {
                role: CircuitRole::Destination,
                ..
            }
        )),
        "{ev:?}"
    );
    assert_eq!(net.events(0), vec![net.closed(id, 4, Reason::TagMismatch)]);
    for n in 0..5 {
        assert_eq!(
            net.nodes[n].circuits().count(),
            0,
            "node {n} still holds a circuit"
        );
    }
}

#[test]
fn tampered_backward_cell_is_caught_at_the_origin() {
    let mut net = Net::chain(4);
    let (id, back) = net.build(0, &[1, 2, 3]);
    net.tamper = Some(Box::new(|from, to, cell| {
        if from == 2 && to == 1 && read_header(cell).1 == Command::Relay.to_u8() {
            cell[700] ^= 0x80;
        }
    }));
    let (a0, a3) = (net.address(0), net.address(3));
    net.nodes[3]
        .send_packet(net.now, back, &ipv6(a3, a0, 300, 0))
        .expect("send");
    net.pump();
    assert!(net.packets(0).is_empty());
    assert_eq!(net.nodes[0].metrics().tag_failures, 1);
    assert_eq!(
        net.events(0),
        vec![
            CircuitEvent::TagFailure {
                circuit: id,
                role: CircuitRole::Origin
            },
            net.closed(id, 3, Reason::TagMismatch)
        ]
    );
    assert!(matches!(
        net.events(3)[..],
        [CircuitEvent::Closed {
            reason: Reason::TagMismatch,
            ..
        }]
    ));
}

#[test]
fn forged_source_is_dropped_at_the_destination() {
    let mut net = Net::chain(4);
    let (id, _) = net.build(0, &[1, 2, 3]);
    let a3 = net.address(3);
    let someone_else = address_for_key(&Identity::from_seed(&[99; 32]).public(), DEFAULT_PREFIX);
    let mut in_subnet = subnet_for_key(&net.keys[0], DEFAULT_PREFIX).octets();
    in_subnet[15] = 7;
    let forged = ipv6(someone_else, a3, 120, 0);
    let from_subnet = ipv6(Ipv6Addr::from(in_subnet), a3, 120, 1);
    let got = net.transfer(0, id, 3, &[forged, from_subnet.clone()]);
    assert_eq!(got, vec![from_subnet]);
    assert_eq!(net.nodes[3].metrics().drops.forged_source, 1);
    // Not an IPv6 packet at all.
    net.nodes[0]
        .send_packet(net.now, id, &[0x45; 30])
        .expect("send");
    net.pump();
    assert!(net.packets(3).is_empty());
    assert_eq!(net.nodes[3].metrics().drops.not_ipv6, 1);
    // The circuit still works.
    net.assert_carries(0, id, 3, ipv6(net.address(0), a3, 99, 9));
}

#[test]
fn replayed_session_messages_are_dropped() {
    let mut net = Net::chain(3);
    let (id, _) = net.build(0, &[1, 2]);
    let (a0, a2) = (net.address(0), net.address(2));
    net.assert_carries(0, id, 2, ipv6(a0, a2, 100, 1));
    // Cells cannot be replayed past the relay crypto (the counter moves on),
    // so replay at the session layer: the origin reuses sequence number 0.
    net.nodes[0].set_next_seq(id, 0);
    let again = ipv6(a0, a2, 3000, 2);
    assert!(net.transfer(0, id, 2, &[again]).is_empty());
    assert_eq!(net.nodes[2].metrics().drops.replayed, 1);
    net.nodes[0].set_next_seq(id, 1);
    net.assert_carries(0, id, 2, ipv6(a0, a2, 100, 3));
}

#[test]
fn link_down_mid_circuit_destroys_both_ways() {
    let mut net = Net::chain(5);
    let (id, at_dest) = net.build(0, &[1, 2, 3, 4]);
    let l = net.link_between(2, 3);
    net.unlink(l);
    net.pump();
    assert_eq!(net.events(0), vec![net.closed(id, 4, Reason::LinkDown)]);
    assert_eq!(
        net.events(4),
        vec![net.closed(at_dest, 0, Reason::LinkDown)]
    );
    for n in 0..5 {
        let m = net.nodes[n].metrics();
        assert_eq!(
            m.origin_circuits + m.relay_circuits + m.destination_circuits,
            0,
            "node {n}"
        );
    }
    let p = ipv6(net.address(0), net.address(4), 50, 0);
    assert_eq!(
        net.nodes[0].send_packet(net.now, id, &p),
        Err(SendError::UnknownCircuit)
    );
}

#[test]
fn extend_without_a_live_link_fails_with_a_reason() {
    let mut net = Net::chain(3);
    let stranger = Net::new(4).keys[3];
    // Node 3 exists but node 2 has no link to it.
    let mut net4 = Net::new(4);
    net4.link(0, 1);
    net4.link(1, 2);
    net4.assert_refused(&[1, 2, 3], 2, Reason::NoLink);
    assert_eq!(net4.nodes[2].metrics().extend_failures, 1);
    assert_eq!(
        net4.nodes[1].metrics().relay_circuits,
        0,
        "DESTROY went forward"
    );
    // With no link to the first hop, the build fails at once.
    assert_eq!(
        net.nodes[0].build_circuit(net.now, &[stranger]),
        Err(BuildError::NoLink(stranger))
    );
    // Bad paths.
    assert_eq!(
        net.nodes[0].build_circuit(net.now, &[]),
        Err(BuildError::EmptyPath)
    );
    let k1 = net.keys[1];
    assert_eq!(
        net.nodes[0].build_circuit(net.now, &[k1, k1]),
        Err(BuildError::RepeatedNode(1))
    );
}

#[test]
fn build_times_out() {
    let mut net = Net::chain(3);
    let id = net.nodes[0]
        .build_circuit(net.now, &[net.keys[1], net.keys[2]])
        .expect("build");
    let deadline = net.nodes[0].poll_timeout().expect("a deadline");
    assert_eq!(deadline, net.now + CIRCUIT_BUILD_TIMEOUT);
    // Never pumped: nothing answers.
    net.nodes[0].handle_timeout(net.now + Duration::from_secs(1));
    assert!(net.events(0).is_empty());
    net.nodes[0].handle_timeout(deadline);
    assert_eq!(
        net.events(0),
        vec![CircuitEvent::Unreachable {
            circuit: id,
            destination: net.keys[2],
            failed_hop: Some(0),
            reason: Reason::Timeout
        }]
    );
    assert_eq!(net.nodes[0].poll_timeout(), None);
}

#[test]
fn slow_reader_stops_the_sender_at_the_window_without_relay_drops() {
    let mut net = Net::chain(5);
    let (id, _) = net.build(0, &[1, 2, 3, 4]);
    let (a0, a4) = (net.address(0), net.address(4));
    // One packet per cell: a DATA_START with 1166 bytes fills the payload.
    let per_cell = crate::cell::MAX_DATA_PER_CELL_BYTES - crate::cell::DATA_START_FIELDS_LEN;
    let total = 1500;
    let packets: Vec<Vec<u8>> = (0..total)
        .map(|i| ipv6(a0, a4, per_cell, i as u8))
        .collect();

    // The destination's reader is asleep: send until the origin refuses.
    let mut sent = 0;
    let mut refused = 0;
    for p in &packets {
        match net.nodes[0].send_packet(net.now, id, p) {
            Ok(()) => sent += 1,
            Err(SendError::QueueFull) => {
                refused += 1;
                net.pump();
                if net.nodes[0].send_packet(net.now, id, p).is_err() {
                    break;
                }
                sent += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    net.pump();
    assert!(refused > 0, "the origin's queue never filled");
    assert_eq!(net.nodes[0].package_window(id), Some(0));
    let m4 = net.nodes[4].metrics();
    assert_eq!(m4.packets_delivered, 0);
    // Exactly one window of data cells reached the destination (+ CREATE and
    // EXTEND-era control cells do not go that far).
    assert_eq!(m4.cells_in, 1 + CIRCUIT_WINDOW_CELLS as u64);
    assert!(net.nodes[0].metrics().drops.send_queue_full > 0);
    relay_never_dropped(&net, &[1, 2, 3]);

    // The reader wakes up: SENDMEs flow back and the rest arrives.
    let mut got = Vec::new();
    for _ in 0..100 {
        let more = net.packets(4);
        let moved = net.pump();
        if more.is_empty() && moved == 0 {
            break;
        }
        got.extend(more.into_iter().map(|(_, p)| p));
    }
    assert_eq!(got.len(), sent);
    assert!(got[..] == packets[..sent]);
    // Every full increment of cells was acknowledged, authenticated.
    let unacked = (sent % SENDME_INCREMENT_CELLS as usize) as u32;
    assert_eq!(
        net.nodes[0].package_window(id),
        Some(CIRCUIT_WINDOW_CELLS - unacked)
    );
    relay_never_dropped(&net, &[1, 2, 3]);
}

#[test]
fn closing_delivers_what_already_arrived() {
    let mut net = Net::chain(3);
    let (id, at_dest) = net.build(0, &[1, 2]);
    let (a0, a2) = (net.address(0), net.address(2));
    let p = ipv6(a0, a2, 5000, 0);
    net.nodes[0].send_packet(net.now, id, &p).expect("send");
    net.pump();
    assert!(net.nodes[0].close_circuit(net.now, id));
    net.pump();
    assert_eq!(
        net.events(2),
        vec![net.closed(at_dest, 0, Reason::Requested)]
    );
    let got = net.packets(2);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, p);
    assert_eq!(net.nodes[2].circuits().count(), 0);
    assert_eq!(net.nodes[1].metrics().relay_circuits, 0);
}

#[test]
fn garbage_cells_are_counted_not_fatal() {
    let mut net = Net::chain(3);
    let (id, _) = net.build(0, &[1, 2]);
    let l = net.link_between(0, 1);
    // Unknown command, unknown circuit, CREATE in the wrong id space.
    let mut junk = [0xffu8; CELL_LEN];
    net.nodes[1].handle_cell(net.now, l, &junk);
    junk[4] = Command::Relay.to_u8();
    net.nodes[1].handle_cell(net.now, l, &junk);
    net.nodes[1].handle_cell(net.now, 12345, &junk);
    let m = net.nodes[1].metrics();
    assert_eq!(m.protocol_errors, 1);
    assert_eq!(m.unknown_circuit_cells, 1);
    assert_eq!(m.unknown_link_cells, 1);
    let (a0, a2) = (net.address(0), net.address(2));
    net.assert_carries(0, id, 2, ipv6(a0, a2, 77, 0));
}

#[test]
fn prefix_waits_in_the_pool_then_extends_to_a_destination() {
    // origin 0 → home 1 → walk 2 (the prefix) → 3 → destination 4
    let mut net = Net::chain(5);
    let k = net.keys.clone();
    let id = net.nodes[0]
        .build_prefix(net.now, &[k[1], k[2]])
        .expect("prefix");
    net.pump();
    assert_eq!(
        net.events(0),
        vec![CircuitEvent::PrefixBuilt { circuit: id }]
    );
    let info = net.nodes[0].circuit(id).expect("prefix");
    assert!(info.built && info.prefix);
    // Both prefix hops are NK relays: neither is an end, nobody got IK.
    assert!(net.events(2).is_empty());
    let at_2: Vec<CircuitInfo> = net.nodes[2].circuits().collect();
    assert_eq!(at_2.len(), 1);
    assert_eq!(
        (at_2[0].role, at_2[0].prev, at_2[0].next),
        (CircuitRole::Relay, Some(k[1]), None)
    );
    let (a0, a4) = (net.address(0), net.address(4));
    assert_eq!(
        net.nodes[0].send_packet(net.now, id, &ipv6(a0, a4, 100, 0)),
        Err(SendError::NotAnEnd)
    );

    // A repeated node is refused before anything is sent.
    assert_eq!(
        net.nodes[0].extend_prefix(net.now, id, &[k[3], k[1]]),
        Err(BuildError::RepeatedNode(3))
    );
    let cells_before = net.nodes[1].metrics().cells_relayed;
    net.nodes[0]
        .extend_prefix(net.now, id, &[k[3], k[4]])
        .expect("extend");
    // Packets queued while it extends flow once it is built.
    net.nodes[0]
        .send_packet(net.now, id, &ipv6(a0, a4, 3000, 1))
        .expect("queue");
    net.pump();
    assert_eq!(
        net.events(0),
        vec![CircuitEvent::Built {
            circuit: id,
            destination: k[4]
        }]
    );
    assert!(matches!(net.events(4)[..], [CircuitEvent::Incoming { origin, .. }] if origin == k[0]));
    let got = net.packets(4);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, ipv6(a0, a4, 3000, 1));
    let info = net.nodes[0].circuit(id).expect("circuit");
    assert!(info.built && !info.prefix);
    assert_eq!(info.path, vec![k[1], k[2], k[3], k[4]]);
    // The home relayed only the two extensions (EXTEND and EXTENDED each)
    // and the packet's 3 cells, not a rebuild of the prefix.
    assert_eq!(
        net.nodes[1].metrics().cells_relayed - cells_before,
        2 * 2 + 3
    );
    assert_eq!(
        net.nodes[0].extend_prefix(net.now, id, &[k[3]]),
        Err(BuildError::NotAPrefix)
    );
    relay_never_dropped(&net, &[1, 2, 3]);
}

#[test]
fn a_prefix_is_not_extended_while_it_builds() {
    let mut net = Net::chain(4);
    let k = net.keys.clone();
    let id = net.nodes[0]
        .build_prefix(net.now, &[k[1], k[2]])
        .expect("prefix");
    assert_eq!(
        net.nodes[0].extend_prefix(net.now, id, &[k[3]]),
        Err(BuildError::NotAPrefix)
    );
    let full = net.nodes[0]
        .build_circuit(net.now, &[k[1], k[2], k[3]])
        .expect("circuit");
    net.pump();
    assert_eq!(
        net.nodes[0].extend_prefix(net.now, full, &[k[3]]),
        Err(BuildError::NotAPrefix)
    );
}

// ----- messages (docs/protocol.md, "Sessions") ------------------------------

impl Net {
    fn messages(&mut self, i: usize) -> Vec<([u8; 32], Vec<u8>)> {
        std::iter::from_fn(|| self.nodes[i].poll_message()).collect()
    }
}

/// A payload that says where a node can be reached, as NAT signalling
/// would, easy to find in a cell.
const ENDPOINT: &[u8] = b"endpoint 198.51.100.7:44321, do not tell the relays";

#[test]
fn messages_go_both_ways_with_the_peer_key_and_relays_cannot_read_them() {
    // origin 0 → 1 → 2 → destination 3
    let mut net = Net::chain(4);
    let (id, at_dest) = net.build(0, &[1, 2, 3]);
    // Every cell any node sends is searched for the payload in clear.
    let seen_in_clear = std::rc::Rc::new(std::cell::Cell::new(0));
    let seen = seen_in_clear.clone();
    net.tamper = Some(Box::new(move |_, _, cell: &mut [u8; CELL_LEN]| {
        if cell.windows(ENDPOINT.len()).any(|w| w == ENDPOINT) {
            seen.set(seen.get() + 1);
        }
    }));
    let longest = vec![0xab; crate::session::MAX_MESSAGE_LEN];
    for payload in [ENDPOINT, &[][..], &longest[..]] {
        net.nodes[0]
            .send_message(net.now, id, payload)
            .expect("message");
    }
    net.pump();
    assert_eq!(
        net.messages(3),
        vec![
            (net.keys[0], ENDPOINT.to_vec()),
            (net.keys[0], Vec::new()),
            (net.keys[0], longest.clone())
        ]
    );
    // A message is not a packet: nothing for the TUN.
    assert!(net.packets(3).is_empty());
    // The reply goes back on the same circuit, with the destination's key.
    net.nodes[3]
        .send_message(net.now, at_dest, ENDPOINT)
        .expect("reply");
    net.pump();
    assert_eq!(net.messages(0), vec![(net.keys[3], ENDPOINT.to_vec())]);
    assert_eq!(
        seen_in_clear.get(),
        0,
        "a cell carried the payload in clear"
    );
    let m0 = &net.nodes[0].metrics().messages;
    assert_eq!((m0.sent, m0.received), (3, 1));
    assert_eq!(
        m0.sent_bytes,
        (ENDPOINT.len() + crate::session::MAX_MESSAGE_LEN) as u64
    );
    let m3 = &net.nodes[3].metrics().messages;
    assert_eq!((m3.sent, m3.received, m3.dropped()), (1, 3, 0));
    for r in [1, 2] {
        assert_eq!(net.nodes[r].metrics().messages, MessageCounters::default());
    }
    relay_never_dropped(&net, &[1, 2]);
    assert_eq!(net.nodes[3].metrics().packets_delivered, 0);
}

#[test]
fn a_message_waits_for_the_build_and_shares_the_window() {
    let mut net = Net::chain(3);
    let k = net.keys.clone();
    let id = net.nodes[0]
        .build_circuit(net.now, &[k[1], k[2]])
        .expect("build");
    // Queued before the build even started to move.
    let longest = vec![7u8; crate::session::MAX_MESSAGE_LEN];
    net.nodes[0]
        .send_message(net.now, id, &longest)
        .expect("queued while building");
    let (a0, a2) = (net.address(0), net.address(2));
    // Small enough to share the message's last cell.
    let p = ipv6(a0, a2, 50, 3);
    net.nodes[0].send_packet(net.now, id, &p).expect("packet");
    net.pump();
    assert_eq!(net.messages(2), vec![(k[0], longest)]);
    assert_eq!(
        net.packets(2)
            .into_iter()
            .map(|(_, p)| p)
            .collect::<Vec<_>>(),
        vec![p]
    );
    // The longest message is 1 + 16,384 bytes: 14 data cells (1,166 bytes
    // in the first, 1,176 in each next), the last one shared with the
    // packet. They count against the window as packets do.
    assert_eq!(
        net.nodes[0].package_window(id),
        Some(CIRCUIT_WINDOW_CELLS - 14)
    );
}

#[test]
fn a_packet_that_starts_with_0x00_is_refused() {
    let mut net = Net::chain(3);
    let (id, at_dest) = net.build(0, &[1, 2]);
    // Otherwise a good IPv6 packet from node 0 to node 2.
    let mut p = ipv6(net.address(0), net.address(2), 80, 0);
    p[0] = 0x00;
    assert_eq!(
        net.nodes[0].send_packet(net.now, id, &p),
        Err(SendError::NotAPacket)
    );
    assert_eq!(
        net.nodes[2].send_packet(net.now, at_dest, &[0x00]),
        Err(SendError::NotAPacket)
    );
    net.pump();
    assert!(net.messages(2).is_empty());
    assert!(net.messages(0).is_empty());
    assert_eq!(net.nodes[0].metrics().packets_sent, 0);
    assert_eq!(net.nodes[2].metrics().messages.received, 0);
}

#[test]
fn the_message_queue_is_bounded_and_counts_what_it_drops() {
    let mut net = Net::chain(3);
    let (id, _) = net.build(0, &[1, 2]);
    // More small messages than the queue holds, while nobody reads them.
    for i in 0..MAX_INBOX_MESSAGES + 6 {
        net.nodes[0]
            .send_message(net.now, id, &i.to_be_bytes())
            .expect("message");
    }
    net.pump();
    let m = &net.nodes[2].metrics().messages;
    assert_eq!((m.received, m.inbox_full), (MAX_INBOX_MESSAGES as u64, 6));
    let got = net.messages(2);
    assert_eq!(got.len(), MAX_INBOX_MESSAGES);
    // The first ones are kept, in order.
    for (i, (from, payload)) in got.iter().enumerate() {
        assert_eq!((*from, &payload[..]), (net.keys[0], &i.to_be_bytes()[..]));
    }
    // Long messages hit the byte bound first.
    let longest = vec![1u8; crate::session::MAX_MESSAGE_LEN];
    let fit = MAX_INBOX_BYTES / longest.len();
    for _ in 0..fit + 1 {
        net.nodes[0]
            .send_message(net.now, id, &longest)
            .expect("message");
    }
    net.pump();
    assert_eq!(net.nodes[2].metrics().messages.inbox_full, 6 + 1);
    assert_eq!(net.messages(2).len(), fit);
    // Taken and dropped messages release their bytes, so the window
    // reopens: packets still flow.
    let (a0, a2) = (net.address(0), net.address(2));
    net.assert_carries(0, id, 2, ipv6(a0, a2, 300, 0));
    assert_eq!(net.nodes[2].metrics().messages.dropped(), 7);
}

#[test]
fn queued_messages_are_counted_when_the_build_fails_or_the_circuit_closes() {
    // Node 2 has no link on to node 3: the build fails at hop 2.
    let mut net = Net::new(4);
    net.link(0, 1);
    net.link(1, 2);
    let k = net.keys.clone();
    let id = net.nodes[0]
        .build_circuit(net.now, &[k[1], k[2], k[3]])
        .expect("build");
    net.nodes[0].send_message(net.now, id, b"one").expect("one");
    net.nodes[0].send_message(net.now, id, b"two").expect("two");
    let p = ipv6(net.address(0), net.address(3), 60, 0);
    net.nodes[0].send_packet(net.now, id, &p).expect("packet");
    net.pump();
    assert!(matches!(
        net.events(0)[..],
        [CircuitEvent::Unreachable { circuit, .. }] if circuit == id
    ));
    // Nothing is lost yet: the router may requeue it, but not onto a
    // circuit to another node.
    let lost = |net: &Net| {
        let m = net.nodes[0].metrics();
        (m.messages.lost_on_close, m.drops.lost_on_close)
    };
    assert_eq!(lost(&net), (0, 0));
    let other = net.nodes[0]
        .build_circuit(net.now, &[k[1], k[2]])
        .expect("build");
    assert!(!net.nodes[0].requeue_unsent(id, other));
    net.nodes[0].drop_unsent();
    assert_eq!(lost(&net), (2, 1));
    assert_eq!(net.nodes[0].metrics().messages.dropped(), 2);
    assert_eq!(
        net.nodes[0].send_message(net.now, id, b"three"),
        Err(SendError::UnknownCircuit)
    );

    // A built circuit closed with a message still queued behind a closed
    // window loses it too; one half received is lost at the other end.
    let mut net = Net::chain(3);
    let (id, _) = net.build(0, &[1, 2]);
    let longest = vec![2u8; crate::session::MAX_MESSAGE_LEN];
    net.nodes[0]
        .send_message(net.now, id, &longest)
        .expect("message");
    // Move only the first cell of it to node 2.
    let mut cell = [0u8; CELL_LEN];
    let l01 = net.link_between(0, 1);
    let l12 = net.link_between(1, 2);
    assert_eq!(net.nodes[0].poll_transmit(&mut cell), Some(l01));
    net.nodes[1].handle_cell(net.now, l01, &cell);
    assert_eq!(net.nodes[1].poll_transmit(&mut cell), Some(l12));
    net.nodes[2].handle_cell(net.now, l12, &cell);
    net.nodes[0]
        .send_message(net.now, id, b"behind")
        .expect("queued");
    assert!(net.nodes[0].close_circuit(net.now, id));
    net.pump();
    assert_eq!(net.nodes[0].metrics().messages.lost_on_close, 2);
    assert_eq!(net.nodes[2].metrics().messages.lost_on_close, 1);
    assert_eq!(net.nodes[2].metrics().drops.lost_on_close, 0);
    assert!(net.messages(2).is_empty());
}

#[test]
fn what_waited_on_a_failed_build_goes_on_the_next_once() {
    // Node 1 has no link to node 3: the build fails at hop 1.
    let mut net = Net::new(4);
    net.link(0, 1);
    net.link(1, 2);
    let k = net.keys.clone();
    let failed = net.nodes[0]
        .build_circuit(net.now, &[k[1], k[3]])
        .expect("build");
    let p = ipv6(net.address(0), net.address(3), 60, 7);
    net.nodes[0]
        .send_packet(net.now, failed, &p)
        .expect("packet");
    net.nodes[0]
        .send_message(net.now, failed, b"one")
        .expect("message");
    net.pump();
    assert!(matches!(
        net.events(0)[..],
        [CircuitEvent::Unreachable { circuit, .. }] if circuit == failed
    ));
    // Around the failure, through node 2.
    net.link(2, 3);
    let next = net.nodes[0]
        .build_circuit(net.now, &[k[1], k[2], k[3]])
        .expect("build");
    assert!(net.nodes[0].requeue_unsent(failed, next));
    assert!(!net.nodes[0].requeue_unsent(failed, next), "only once");
    net.pump();
    let got = net.packets(3);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, p);
    assert_eq!(net.messages(3), [(k[0], b"one".to_vec())]);
    net.nodes[0].drop_unsent();
    let m = net.nodes[0].metrics();
    assert_eq!((m.messages.lost_on_close, m.drops.lost_on_close), (0, 0));
}

#[test]
fn an_over_long_message_from_a_peer_is_dropped_and_counted() {
    let mut net = Net::chain(3);
    let (id, _) = net.build(0, &[1, 2]);
    // A peer that breaks the rules: a message 1 byte longer than allowed.
    let mut unit = vec![0x33u8; 2 + crate::session::MAX_MESSAGE_LEN];
    unit[0] = crate::session::MESSAGE_TYPE_BYTE;
    net.nodes[0].send_raw(id, &unit).expect("raw");
    net.nodes[0]
        .send_message(net.now, id, b"fine")
        .expect("message");
    net.pump();
    assert_eq!(net.messages(2), vec![(net.keys[0], b"fine".to_vec())]);
    let m = &net.nodes[2].metrics().messages;
    assert_eq!((m.too_long, m.received), (1, 1));
    let (a0, a2) = (net.address(0), net.address(2));
    net.assert_carries(0, id, 2, ipv6(a0, a2, 100, 0));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Any payload the API takes arrives whole, once, with the sender's key,
    /// both ways over a circuit between two neighbours.
    #[test]
    fn any_message_round_trips_through_a_pair(
        payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..=crate::session::MAX_MESSAGE_LEN),
    ) {
        let mut net = Net::chain(2);
        let (id, at_dest) = net.build(0, &[1]);
        net.nodes[0].send_message(net.now, id, &payload).expect("message");
        net.pump();
        proptest::prop_assert_eq!(net.messages(1), vec![(net.keys[0], payload.clone())]);
        net.nodes[1].send_message(net.now, at_dest, &payload).expect("reply");
        net.pump();
        proptest::prop_assert_eq!(net.messages(0), vec![(net.keys[1], payload)]);
    }
}

#[test]
fn a_neighbour_holds_at_most_its_share_of_open_circuits() {
    let mut net = Net::new(3);
    net.restart(
        1,
        CircuitConfig {
            max_circuits_per_neighbour: 2,
            ..CircuitConfig::default()
        },
    );
    let first = net.link(0, 1);
    net.link(1, 2);
    let (a, _) = net.build(0, &[1, 2]);
    net.build(0, &[1, 2]);
    assert_eq!(net.nodes[1].opened_by(first), 2);
    net.assert_refused(&[1, 2], 0, Reason::TooManyCircuits);
    assert_eq!(net.nodes[1].metrics().circuits_refused, 1);
    // One closed, the next builds.
    assert!(net.nodes[0].close_circuit(net.now, a));
    net.pump();
    let _ = net.events(0);
    let _ = net.events(2);
    assert_eq!(net.nodes[1].opened_by(first), 1);
    net.build(0, &[1, 2]);
    assert_eq!(net.nodes[1].opened_by(first), 2);
}

/// Each hop runs the highest relay-crypto version both its ends offer, the
/// versions mix on one circuit, and every mix carries packets both ways.
#[test]
fn each_hop_runs_the_highest_version_both_ends_offer() {
    const V1: u8 = 0b01;
    const BOTH: u8 = 0b11;
    // (what each of nodes 0..4 offers, the versions the origin's hops get)
    let cases: [([u8; 4], [u8; 3]); 4] = [
        ([BOTH; 4], [2, 2, 2]),
        ([V1; 4], [1, 1, 1]),
        ([BOTH, BOTH, V1, BOTH], [2, 1, 2]),
        ([V1, BOTH, BOTH, BOTH], [1, 1, 1]),
    ];
    for (offers, want) in cases {
        let mut net = Net::new(4);
        for (i, &mask) in offers.iter().enumerate() {
            net.offer_versions(i, mask);
        }
        for i in 0..3 {
            net.link(i, i + 1);
        }
        let (at_origin, at_dest) = net.build(0, &[1, 2, 3]);
        let info = net.nodes[0].circuit(at_origin).expect("origin's circuit");
        assert_eq!(info.relay_crypto_versions, want, "offers {offers:?}");
        for hop in 1..4 {
            let seen: Vec<Vec<u8>> = net.nodes[hop]
                .circuits()
                .map(|c| c.relay_crypto_versions)
                .collect();
            assert_eq!(
                seen,
                vec![vec![want[hop - 1]]],
                "node {hop}, offers {offers:?}"
            );
        }
        let (a0, a3) = (net.address(0), net.address(3));
        net.assert_carries(0, at_origin, 3, ipv6(a0, a3, 3000, 1));
        net.assert_carries(3, at_dest, 0, ipv6(a3, a0, 3000, 2));
        assert_eq!(net.nodes[0].metrics().tag_failures, 0);
        assert_eq!(net.nodes[3].metrics().tag_failures, 0);
    }
}

/// A hop that shares no version with the origin refuses it, and says why.
#[test]
fn a_hop_without_a_common_version_refuses_the_build() {
    let mut net = Net::new(3);
    net.offer_versions(0, 0b01);
    net.offer_versions(2, 0b10);
    net.link(0, 1);
    net.link(1, 2);
    net.assert_refused(&[1, 2], 1, Reason::UnsupportedVersion);
    assert_eq!(net.nodes[2].metrics().handshake_failures, 1);
}
