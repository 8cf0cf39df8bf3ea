//! Circuit cores ([`CircuitCore`]) as simulation nodes (`docs/protocol.md,
//! "Circuits"` and `docs/architecture.md, "Testing"`), each with a small app
//! on top that plays the TUN and a TCP-like transport: it sends numbered
//! IPv6 packets to another node over a circuit, acknowledges what it
//! receives, and when a circuit fails builds another and sends again what
//! was not acknowledged.
//!
//! - Every node holds the same [`Graph`] of signed records (what the graph
//!   simulation shows every node converges to) and picks paths with
//!   [`Graph::shortest_path`], skipping nodes it has seen fail: the hop an
//!   [`CircuitEvent::Unreachable`] names, or a first hop with no link. It is
//!   told nothing else about failures.
//! - A packet's bytes are a function of its flow and sequence number, so the
//!   receiver checks every byte, the IPv6 source and destination, and the
//!   origin identity the circuit authenticated.
//! - The receiver checks two orders. On one circuit, packets must arrive
//!   consecutively, each once: that is the circuit layer's promise. Across
//!   circuits it keeps the app's stream, as TCP does: a packet already
//!   received (a resend from before the last acknowledgement reached the
//!   origin) is counted as a duplicate and discarded, and a packet after a
//!   gap is a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv6Addr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use umbra_routing::address::address_for_key;
use umbra_routing::cell::{CELL_LEN, Reason};
use umbra_routing::circuit::{
    BuildError, CircuitConfig, CircuitCore, CircuitEvent, CircuitId, Delivered, SendError,
};
use umbra_routing::graph::Graph;
use umbra_routing::session::{IPV6_HEADER_LEN, MAX_PACKET_LEN};
use umbra_routing::{Identity, address};

use super::graph_node::to_time;
use super::{Rng, SimNode, SimTime};

/// The address prefix of every simulated node (the default of
/// `docs/protocol.md, "Identity and addresses"`).
pub const PREFIX: u8 = address::DEFAULT_PREFIX;
/// IPv6 next-header value of the app's packets (253: for experiments,
/// RFC 3692).
const NEXT_HEADER_EXPERIMENT: u8 = 253;
/// The app's header after the IPv6 header: `kind u8 | flow u32 | seq u32`.
const APP_HEADER_LEN: usize = 9;
const KIND_DATA: u8 = 1;
const KIND_ACK: u8 = 2;
/// The receiver acknowledges every this many in-order packets (and the last
/// one, and every duplicate).
const ACK_EVERY_PACKETS: u32 = 4;
/// How long an origin waits before it looks for a path again when its graph
/// has none.
const NO_PATH_RETRY: Duration = Duration::from_secs(1);
/// Builds of one flow's circuits, past which the flow gives up (a failure of
/// the test, not a normal outcome).
const MAX_BUILDS_PER_FLOW: u32 = 20;

/// One app flow: `packets` numbered packets from `origin` to `dest`, one
/// every `interval` from `start`.
#[derive(Debug, Clone)]
pub struct FlowSpec {
    /// Its number, carried in every packet.
    pub id: u32,
    /// The sending node.
    pub origin: usize,
    /// The receiving node.
    pub dest: usize,
    /// Packets to deliver.
    pub packets: u32,
    /// When the origin builds its first circuit and starts sending.
    pub start: SimTime,
    /// Time between two new packets.
    pub interval: Duration,
}

/// What every node knows of the run: the nodes' keys and all flows.
#[derive(Debug)]
pub struct Plan {
    /// Each node's public key.
    pub keys: Vec<[u8; 32]>,
    /// The flows, indexed by id.
    pub flows: Vec<FlowSpec>,
}

/// The length of packet `seq` of `flow`: mostly 60–1400 bytes, one in ten
/// 4000–9000 bytes, so packets share cells and span several.
pub fn packet_len(flow: u32, seq: u32) -> usize {
    let mut r = Rng::new((u64::from(flow) << 32) | u64::from(seq));
    if r.below(10) == 0 {
        4000 + r.index(5001)
    } else {
        60 + r.index(1341)
    }
}

/// Writes an IPv6 header from `src`'s node address to `dst`'s and the app
/// header; returns the header length.
fn write_headers(
    out: &mut Vec<u8>,
    src: &[u8; 32],
    dst: &[u8; 32],
    total: usize,
    kind: u8,
    flow: u32,
    seq: u32,
) {
    let payload_len = u16::try_from(total - IPV6_HEADER_LEN).unwrap_or(u16::MAX);
    out.clear();
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&payload_len.to_be_bytes());
    out.push(NEXT_HEADER_EXPERIMENT);
    out.push(64);
    out.extend_from_slice(&address_for_key(src, PREFIX).octets());
    out.extend_from_slice(&address_for_key(dst, PREFIX).octets());
    out.push(kind);
    out.extend_from_slice(&flow.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
}

/// Packet `seq` of `flow`, from `src` to `dst`: headers, then bytes that
/// depend on `(flow, seq)` only.
pub fn data_packet(out: &mut Vec<u8>, src: &[u8; 32], dst: &[u8; 32], flow: u32, seq: u32) {
    let total = packet_len(flow, seq);
    write_headers(out, src, dst, total, KIND_DATA, flow, seq);
    let mut r = Rng::new(!((u64::from(flow) << 32) | u64::from(seq)));
    while out.len() < total {
        let word = r.next_u64().to_le_bytes();
        let n = (total - out.len()).min(8);
        out.extend_from_slice(&word[..n]);
    }
}

/// An acknowledgement: the receiver of `flow` has every packet before
/// `next`.
fn ack_packet(out: &mut Vec<u8>, src: &[u8; 32], dst: &[u8; 32], flow: u32, next: u32) {
    write_headers(
        out,
        src,
        dst,
        IPV6_HEADER_LEN + APP_HEADER_LEN,
        KIND_ACK,
        flow,
        next,
    );
}

/// The app header of a packet: kind, flow, sequence number.
fn parse_app(p: &[u8]) -> Option<(u8, u32, u32)> {
    let h = p.get(IPV6_HEADER_LEN..IPV6_HEADER_LEN + APP_HEADER_LEN)?;
    let flow = u32::from_be_bytes(h[1..5].try_into().ok()?);
    let seq = u32::from_be_bytes(h[5..9].try_into().ok()?);
    Some((h[0], flow, seq))
}

fn ipv6_dst(p: &[u8]) -> Option<Ipv6Addr> {
    let b: [u8; 16] = p.get(24..40)?.try_into().ok()?;
    Some(Ipv6Addr::from(b))
}

/// One circuit build by an origin, for the figures.
#[derive(Debug, Clone)]
pub struct BuildRecord {
    /// The flow it was for.
    pub flow: u32,
    /// The circuit.
    pub circuit: CircuitId,
    /// Its path (node indices), destination last.
    pub path: Vec<usize>,
    /// Whether the flow had a circuit before (this one replaces it).
    pub rebuild: bool,
    /// When `build_circuit` was called.
    pub started: SimTime,
    /// When it was built, if it was.
    pub built: Option<SimTime>,
    /// How it ended, if it did: when, and the event.
    pub ended: Option<(SimTime, CircuitEvent)>,
}

/// An origin's side of a flow.
#[derive(Debug, Clone)]
pub struct Sender {
    /// The flow.
    pub spec: FlowSpec,
    /// Its current circuit, and the index of its record in
    /// [`CircuitNode::builds`].
    pub circuit: Option<(CircuitId, usize)>,
    /// Whether `start` has passed.
    pub started: bool,
    /// The next packet to hand to the circuit.
    pub next_seq: u32,
    /// One past the highest packet ever handed to a circuit.
    pub high_water: u32,
    /// The receiver has every packet before this (from its acks).
    pub acked: u32,
    /// When the next new packet is due.
    pub next_send: SimTime,
    /// When to look for a path again, if the graph had none.
    pub retry_at: Option<SimTime>,
    /// Circuits built for this flow, successful or not.
    pub builds: u32,
    /// When the last ack arrived.
    pub acked_at: SimTime,
}

/// A destination's side of a flow.
#[derive(Debug, Clone, Default)]
pub struct Receiver {
    /// Every packet before this has been received.
    pub next_expected: u32,
    /// The last packet each circuit delivered.
    pub last_on_circuit: BTreeMap<CircuitId, u32>,
    /// Packets received again on a later circuit and discarded.
    pub duplicates: u64,
    /// When the first packet arrived.
    pub first_at: Option<SimTime>,
    /// When the last new packet arrived.
    pub last_at: SimTime,
}

/// What went wrong at a node: any entry fails the test.
#[derive(Debug, Clone, Default)]
pub struct Violations(pub Vec<String>);

impl Violations {
    fn push(&mut self, now: SimTime, what: String) {
        self.0.push(format!("at {now:?}: {what}"));
    }
}

/// A [`CircuitCore`] and its app, driven by the simulation.
pub struct CircuitNode {
    /// The circuit layer.
    pub core: CircuitCore,
    /// This node's index.
    pub index: usize,
    /// This node's key.
    pub key: [u8; 32],
    /// The instant of virtual time zero (the core reads `Instant`s).
    base: Instant,
    plan: Rc<Plan>,
    /// The graph this node picks paths in.
    graph: Rc<Graph>,
    /// Nodes this node has seen fail; paths avoid them.
    pub suspects: BTreeSet<[u8; 32]>,
    /// Flows this node sends.
    pub senders: Vec<Sender>,
    /// Flows this node receives, by flow id.
    pub receivers: BTreeMap<u32, Receiver>,
    /// Every circuit this node built.
    pub builds: Vec<BuildRecord>,
    /// Circuits that ended here as the destination, with the reason.
    pub dest_closes: Vec<(SimTime, CircuitId, Reason)>,
    /// Packets the core refused because the send queue was full.
    pub queue_full: u64,
    /// Times the graph had no path to a flow's destination.
    pub no_path: u64,
    /// Builds refused at once because the first hop's link was down.
    pub first_hop_down: u64,
    /// Broken promises.
    pub violations: Violations,
    spare: Option<Box<[u8; CELL_LEN]>>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
}

impl fmt::Debug for CircuitNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitNode")
            .field("index", &self.index)
            .field("senders", &self.senders.len())
            .field("receivers", &self.receivers.len())
            .finish_non_exhaustive()
    }
}

impl CircuitNode {
    /// Node `index` of `plan`, with `identity`, picking paths in `graph`;
    /// its core draws its keys from `rng`; `base` is the `Instant` of
    /// virtual time zero.
    pub fn new(
        index: usize,
        identity: Identity,
        plan: Rc<Plan>,
        graph: Rc<Graph>,
        rng: Rng,
        base: Instant,
    ) -> CircuitNode {
        let key = identity.public();
        let senders = plan
            .flows
            .iter()
            .filter(|f| f.origin == index)
            .map(|f| Sender {
                spec: f.clone(),
                circuit: None,
                started: false,
                next_seq: 0,
                high_water: 0,
                acked: 0,
                next_send: f.start,
                retry_at: None,
                builds: 0,
                acked_at: Duration::ZERO,
            })
            .collect();
        let receivers = plan
            .flows
            .iter()
            .filter(|f| f.dest == index)
            .map(|f| (f.id, Receiver::default()))
            .collect();
        CircuitNode {
            core: CircuitCore::new(identity, PREFIX, CircuitConfig::default(), Box::new(rng)),
            index,
            key,
            base,
            plan,
            graph,
            suspects: BTreeSet::new(),
            senders,
            receivers,
            builds: Vec::new(),
            dest_closes: Vec::new(),
            queue_full: 0,
            no_path: 0,
            first_hop_down: 0,
            violations: Violations::default(),
            spare: None,
            rx_buf: vec![0u8; MAX_PACKET_LEN],
            tx_buf: Vec::with_capacity(MAX_PACKET_LEN),
        }
    }

    fn instant(&self, t: SimTime) -> Instant {
        self.base + t
    }

    fn sim_time(&self, i: Instant) -> SimTime {
        i.saturating_duration_since(self.base)
    }

    fn node_of(&self, key: &[u8; 32]) -> usize {
        self.plan
            .keys
            .iter()
            .position(|k| k == key)
            .unwrap_or(usize::MAX)
    }

    /// Whether every flow this node sends is acknowledged in full and every
    /// flow it receives is complete.
    pub fn done(&self) -> bool {
        self.senders.iter().all(|s| s.acked == s.spec.packets)
            && self.receivers.iter().all(|(id, r)| {
                self.plan
                    .flows
                    .get(*id as usize)
                    .is_some_and(|f| r.next_expected == f.packets)
            })
    }

    /// Closes every circuit this node's flows use (the end of the run).
    pub fn close_all(&mut self, now: SimTime) {
        let at = self.instant(now);
        for s in &mut self.senders {
            if let Some((c, _)) = s.circuit.take() {
                self.core.close_circuit(at, c);
            }
        }
    }

    /// A shortest path from here to `dest` that avoids the suspects, without
    /// this node.
    fn path_to(&self, dest: &[u8; 32]) -> Option<Vec<[u8; 32]>> {
        let path = if self.suspects.is_empty() {
            self.graph.shortest_path(&self.key, dest)?
        } else {
            let mut g = (*self.graph).clone();
            for s in &self.suspects {
                g.remove(s);
            }
            g.shortest_path(&self.key, dest)?
        };
        Some(path[1..].to_vec())
    }

    /// Gives flow `i` a new circuit and hands it every packet the receiver
    /// has not acknowledged (as TCP resends after a timeout).
    fn rebuild(&mut self, now: SimTime, i: usize) {
        let at = self.instant(now);
        let Some(s) = self.senders.get_mut(i) else {
            return;
        };
        s.circuit = None;
        s.next_seq = s.acked;
        s.retry_at = None;
        if s.acked == s.spec.packets {
            return;
        }
        let dest = self.plan.keys[s.spec.dest];
        let flow = s.spec.id;
        loop {
            if self.senders[i].builds >= MAX_BUILDS_PER_FLOW {
                self.violations.push(
                    now,
                    format!("flow {flow}: gave up after {MAX_BUILDS_PER_FLOW} builds"),
                );
                return;
            }
            let Some(path) = self.path_to(&dest) else {
                self.no_path += 1;
                self.senders[i].retry_at = Some(now + NO_PATH_RETRY);
                return;
            };
            match self.core.build_circuit(at, &path) {
                Ok(c) => {
                    let rebuild = self.senders[i].builds > 0;
                    self.senders[i].builds += 1;
                    self.builds.push(BuildRecord {
                        flow,
                        circuit: c,
                        path: path.iter().map(|k| self.node_of(k)).collect(),
                        rebuild,
                        started: now,
                        built: None,
                        ended: None,
                    });
                    self.senders[i].circuit = Some((c, self.builds.len() - 1));
                    break;
                }
                Err(BuildError::NoLink(first)) => {
                    // The first hop's link is down: it failed, or we did.
                    self.first_hop_down += 1;
                    self.suspects.insert(first);
                }
                Err(e) => {
                    self.violations
                        .push(now, format!("flow {flow}: build_circuit: {e}"));
                    return;
                }
            }
        }
        let high = self.senders[i].high_water;
        while self.senders[i].next_seq < high {
            if !self.send_next(now, i) {
                break;
            }
        }
    }

    /// Hands flow `i`'s next packet to its circuit; returns whether it went.
    fn send_next(&mut self, now: SimTime, i: usize) -> bool {
        let at = self.instant(now);
        let s = &self.senders[i];
        let Some((c, _)) = s.circuit else {
            return false;
        };
        let (flow, seq) = (s.spec.id, s.next_seq);
        let dst = self.plan.keys[s.spec.dest];
        data_packet(&mut self.tx_buf, &self.key, &dst, flow, seq);
        match self.core.send_packet(at, c, &self.tx_buf) {
            Ok(()) => {
                let s = &mut self.senders[i];
                s.next_seq += 1;
                s.high_water = s.high_water.max(s.next_seq);
                true
            }
            Err(SendError::QueueFull) => {
                self.queue_full += 1;
                false
            }
            Err(e) => {
                self.violations
                    .push(now, format!("flow {flow}: send_packet: {e}"));
                false
            }
        }
    }

    /// The app's timers: flows that start, paths to look for again, packets
    /// due.
    fn app_tick(&mut self, now: SimTime) {
        for i in 0..self.senders.len() {
            let s = &mut self.senders[i];
            if !s.started {
                if s.spec.start > now {
                    continue;
                }
                s.started = true;
                self.rebuild(now, i);
            }
            if self.senders[i].retry_at.is_some_and(|t| t <= now) {
                self.rebuild(now, i);
            }
            let s = &self.senders[i];
            if s.circuit.is_some() && s.next_send <= now && s.next_seq < s.spec.packets {
                // A new packet (or the next resend) each interval.
                self.send_next(now, i);
                let s = &mut self.senders[i];
                s.next_send = now + s.spec.interval;
            }
        }
    }

    fn app_next_wakeup(&self) -> Option<SimTime> {
        self.senders
            .iter()
            .filter_map(|s| {
                if !s.started {
                    Some(s.spec.start)
                } else if let Some(t) = s.retry_at {
                    Some(t)
                } else if s.circuit.is_some() && s.next_seq < s.spec.packets {
                    Some(s.next_send)
                } else {
                    None
                }
            })
            .min()
    }

    /// Takes the core's events and packets and lets the app answer them.
    fn drain(&mut self, now: SimTime) {
        loop {
            let mut any = false;
            while let Some(e) = self.core.poll_event() {
                any = true;
                self.on_event(now, e);
            }
            while let Some(d) = self.core.poll_packet(&mut self.rx_buf) {
                any = true;
                self.on_packet(now, d);
            }
            if !any {
                return;
            }
        }
    }

    fn sender_of(&self, c: CircuitId) -> Option<usize> {
        self.senders
            .iter()
            .position(|s| s.circuit.is_some_and(|(id, _)| id == c))
    }

    fn on_event(&mut self, now: SimTime, e: CircuitEvent) {
        match e {
            CircuitEvent::Built { circuit, .. } => {
                if let Some(b) = self
                    .sender_of(circuit)
                    .and_then(|i| self.senders[i].circuit)
                    .and_then(|(_, b)| self.builds.get_mut(b))
                {
                    b.built = Some(now);
                }
            }
            CircuitEvent::Unreachable {
                circuit,
                failed_hop,
                ..
            } => {
                let Some(i) = self.sender_of(circuit) else {
                    return;
                };
                if let Some((_, b)) = self.senders[i].circuit {
                    let rec = &mut self.builds[b];
                    rec.ended = Some((now, e.clone()));
                    if let Some(&n) = failed_hop.and_then(|h| rec.path.get(h)) {
                        let k = self.plan.keys[n];
                        self.suspects.insert(k);
                    }
                }
                self.rebuild(now, i);
            }
            CircuitEvent::Closed {
                circuit, reason, ..
            } => match self.sender_of(circuit) {
                Some(i) => {
                    if let Some((_, b)) = self.senders[i].circuit {
                        self.builds[b].ended = Some((now, e.clone()));
                    }
                    self.rebuild(now, i);
                }
                None => self.dest_closes.push((now, circuit, reason)),
            },
            CircuitEvent::Incoming { .. } | CircuitEvent::PrefixBuilt { .. } => {}
            CircuitEvent::TagFailure { circuit, role } => self
                .violations
                .push(now, format!("tag failure on {circuit} as {role:?}")),
        }
    }

    fn on_packet(&mut self, now: SimTime, d: Delivered) {
        let p = &self.rx_buf[..d.len];
        let Some((kind, flow, seq)) = parse_app(p) else {
            self.violations
                .push(now, format!("unparsable packet of {} bytes", d.len));
            return;
        };
        let Some(spec) = self.plan.flows.get(flow as usize).cloned() else {
            self.violations.push(now, format!("unknown flow {flow}"));
            return;
        };
        if ipv6_dst(p) != Some(address_for_key(&self.key, PREFIX)) {
            self.violations
                .push(now, format!("flow {flow}: packet for another address"));
            return;
        }
        match kind {
            KIND_DATA => self.on_data(now, d, &spec, seq),
            KIND_ACK => {
                let Some(s) = self.senders.iter_mut().find(|s| s.spec.id == flow) else {
                    self.violations.push(
                        now,
                        format!("flow {flow}: ack at a node that does not send it"),
                    );
                    return;
                };
                if d.peer != self.plan.keys[spec.dest] || seq > s.high_water {
                    self.violations.push(
                        now,
                        format!(
                            "flow {flow}: bad ack {seq} from {}",
                            hex::encode(&d.peer[..4])
                        ),
                    );
                    return;
                }
                if seq > s.acked {
                    s.acked = seq;
                    s.acked_at = now;
                }
            }
            other => self
                .violations
                .push(now, format!("flow {flow}: packet of kind {other}")),
        }
    }

    fn on_data(&mut self, now: SimTime, d: Delivered, spec: &FlowSpec, seq: u32) {
        let flow = spec.id;
        let origin = self.plan.keys[spec.origin];
        if d.peer != origin {
            self.violations.push(
                now,
                format!(
                    "flow {flow}: packet from the wrong identity {}",
                    hex::encode(&d.peer[..4])
                ),
            );
            return;
        }
        data_packet(&mut self.tx_buf, &origin, &self.key, flow, seq);
        if self.rx_buf[..d.len] != self.tx_buf[..] {
            self.violations
                .push(now, format!("flow {flow}: packet {seq} is corrupt"));
            return;
        }
        let Some(r) = self.receivers.get_mut(&flow) else {
            self.violations.push(
                now,
                format!("flow {flow}: data at a node that does not receive it"),
            );
            return;
        };
        // The circuit's promise: consecutive, each once.
        if let Some(last) = r.last_on_circuit.insert(d.circuit, seq)
            && seq != last + 1
        {
            self.violations.push(
                now,
                format!(
                    "flow {flow}: circuit {} delivered {seq} after {last}",
                    d.circuit
                ),
            );
        }
        // The app's stream, as TCP keeps it.
        let ack = if seq == r.next_expected {
            r.next_expected += 1;
            r.first_at.get_or_insert(now);
            r.last_at = now;
            r.next_expected % ACK_EVERY_PACKETS == 0 || r.next_expected == spec.packets
        } else if seq < r.next_expected {
            r.duplicates += 1;
            true
        } else {
            let expected = r.next_expected;
            self.violations.push(
                now,
                format!("flow {flow}: packet {seq} arrived before {expected} (a gap)"),
            );
            false
        };
        if ack {
            let next = r.next_expected;
            ack_packet(&mut self.tx_buf, &self.key, &origin, flow, next);
            let at = self.instant(now);
            // A closed circuit cannot carry the ack; the next one will.
            let _ = self.core.send_packet(at, d.circuit, &self.tx_buf);
        }
    }
}

impl SimNode for CircuitNode {
    type Id = [u8; 32];
    type Message = Box<[u8; CELL_LEN]>;

    fn id(&self) -> [u8; 32] {
        self.key
    }

    fn link_up(&mut self, now: SimTime, link: usize, peer: &[u8; 32]) {
        let at = self.instant(now);
        self.core.link_up(at, link as u64, *peer);
    }

    fn link_down(&mut self, now: SimTime, link: usize) {
        let at = self.instant(now);
        self.core.link_down(at, link as u64);
        self.drain(now);
    }

    fn handle_message(&mut self, now: SimTime, link: usize, msg: Box<[u8; CELL_LEN]>) {
        let at = self.instant(now);
        self.core.handle_cell(at, link as u64, &msg);
        self.spare = Some(msg);
        self.drain(now);
    }

    fn poll_transmit(&mut self, _now: SimTime) -> Option<(usize, Box<[u8; CELL_LEN]>)> {
        let mut out = self
            .spare
            .take()
            .unwrap_or_else(|| Box::new([0u8; CELL_LEN]));
        match self.core.poll_transmit(&mut out) {
            Some(link) => Some((usize::try_from(link).ok()?, out)),
            None => {
                self.spare = Some(out);
                None
            }
        }
    }

    fn poll_timeout(&self) -> Option<SimTime> {
        let core = self.core.poll_timeout().map(|i| self.sim_time(i));
        match (core, self.app_next_wakeup()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, now: SimTime) {
        let at = self.instant(now);
        self.core.handle_timeout(at);
        self.drain(now);
        self.app_tick(now);
        self.drain(now);
    }

    fn wire_len(_msg: &Box<[u8; CELL_LEN]>) -> usize {
        CELL_LEN
    }
}

/// The graph every node holds: each node's record, signed by its identity,
/// listing its agreements in `topology` (node index pairs).
pub fn signed_graph(identities: &[Identity], topology: &[(usize, usize)]) -> Graph {
    Graph::from_topology(identities, topology, to_time(Duration::ZERO))
        .expect("simulated edges are valid")
}
