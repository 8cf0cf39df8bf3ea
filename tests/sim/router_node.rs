//! Whole routing layers ([`RouterCore`]: graph, paths, circuits, the pool)
//! as simulation nodes. The graph is flooded over the simulated links as the
//! daemon floods it, so every node builds its own copy; an app (the test)
//! hands the router IPv6 packets as the TUN would and reads back what the
//! router writes to the TUN.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;
use std::rc::Rc;
use std::time::Instant;

use umbra_routing::address::address_for_key;
use umbra_routing::cell::CELL_LEN;
use umbra_routing::graph::Edge;
use umbra_routing::ledger::report::Counts;
use umbra_routing::ledger::{Classifier, LedgerEvent, circ_id_of};
use umbra_routing::path::Anonymity;
use umbra_routing::router::{MessageError, Now, RouteError, RouterCore};
use umbra_routing::session::MAX_PACKET_LEN;
use umbra_routing::{Identity, address};

use super::graph_node::{from_time, to_time};
use super::{Rng, SimNode, SimTime};

/// The address prefix of every simulated node.
pub const PREFIX: u8 = address::DEFAULT_PREFIX;
/// UDP's IPv6 next-header value.
const UDP: u8 = 17;

/// What travels on a simulated link: a cell, a graph message or a ledger
/// report.
#[derive(Debug)]
pub enum RouterMsg {
    /// A 1200-byte cell.
    Cell(Box<[u8; CELL_LEN]>),
    /// An encoded graph message.
    Graph(Vec<u8>),
    /// A signed ledger report, finished as the daemon's link writer does.
    Ledger(Vec<u8>),
}

/// Every message that routers sharing one log sent, in the order they sent
/// them: a hash of each link index and its bytes, and counts.
#[derive(Debug, Default)]
pub struct WireLog {
    hasher: DefaultHasher,
    /// Messages sent.
    pub messages: u64,
    /// Bytes sent.
    pub bytes: u64,
}

impl WireLog {
    /// A log shared by the nodes of one run.
    pub fn shared() -> Rc<RefCell<WireLog>> {
        Rc::new(RefCell::new(WireLog::default()))
    }

    fn record(&mut self, link: usize, bytes: &[u8]) {
        self.hasher.write_usize(link);
        self.hasher.write(bytes);
        self.messages += 1;
        self.bytes += bytes.len() as u64;
    }

    /// The hash of everything recorded so far.
    pub fn digest(&self) -> u64 {
        self.hasher.finish()
    }
}

/// A [`RouterCore`] driven by the simulation, with a TUN log.
pub struct RouterNode {
    /// The core.
    pub core: RouterCore,
    /// This node's key.
    pub key: [u8; 32],
    /// Packets the router wrote to the TUN, and when.
    pub tun: Vec<(SimTime, Vec<u8>)>,
    /// If set, every message this node sends is recorded here.
    pub wire: Option<Rc<RefCell<WireLog>>>,
    /// What [`RouterCore::poll_failure`] reported, in order.
    pub failures: Vec<([u8; 32], RouteError)>,
    /// Messages [`RouterCore::poll_message`] gave: when, from whom, what.
    pub messages: Vec<(SimTime, [u8; 32], Vec<u8>)>,
    /// Whether messages are taken as they arrive (as the daemon does every
    /// turn); if not, they wait in the core's bounded queue.
    pub read_messages: bool,
    /// Links brought up as carried over a circuit to their peer
    /// ([`RouterCore::carried_link_up`]), as the daemon does for a relayed
    /// link over a circuit.
    pub carried_links: Vec<usize>,
    /// Ledger reports from peers checked, and of those, mismatches.
    pub ledger_checks: (u64, u64),
    identity: Identity,
    /// Each live link's peer and the cells written to it, by who created
    /// their circuit (what a report says was sent before it).
    written: HashMap<usize, (Classifier, Counts)>,
    /// Finished reports, written before the next cells.
    reports: VecDeque<(usize, Vec<u8>)>,
    base: Instant,
    buf: Vec<u8>,
    spare: Option<Box<[u8; CELL_LEN]>>,
}

impl std::fmt::Debug for RouterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterNode")
            .field("key", &hex::encode(&self.key[..4]))
            .finish_non_exhaustive()
    }
}

impl RouterNode {
    /// A router for `identity` whose agreements are `peers`, with
    /// `anonymity` and `home`. `base` is the instant of virtual time zero,
    /// shared by all nodes.
    pub fn new(
        identity: Identity,
        peers: &[[u8; 32]],
        anonymity: Anonymity,
        home: Option<[u8; 32]>,
        rng: Rng,
        base: Instant,
    ) -> RouterNode {
        let edges: Vec<Edge> = peers
            .iter()
            .map(|&peer| Edge { peer, capacity: 1 })
            .collect();
        let key = identity.public();
        let now = Now {
            mono: base,
            wall: to_time(SimTime::ZERO),
        };
        let mut core = RouterCore::new(identity.clone(), PREFIX, now, &edges, None, Box::new(rng))
            .expect("router");
        core.set_policy(anonymity, home);
        RouterNode {
            core,
            key,
            tun: Vec::new(),
            wire: None,
            failures: Vec::new(),
            messages: Vec::new(),
            read_messages: true,
            carried_links: Vec::new(),
            ledger_checks: (0, 0),
            identity,
            written: HashMap::new(),
            reports: VecDeque::new(),
            base,
            buf: vec![0u8; MAX_PACKET_LEN],
            spare: None,
        }
    }

    fn now(&self, t: SimTime) -> Now {
        Now {
            mono: self.base + t,
            wall: to_time(t),
        }
    }

    /// The virtual time of an instant of this node's monotonic clock.
    pub fn sim_time(&self, i: Instant) -> SimTime {
        i.saturating_duration_since(self.base)
    }

    /// A packet from the TUN.
    pub fn send(&mut self, t: SimTime, packet: &[u8]) {
        let now = self.now(t);
        self.core.send_packet(now, packet);
        self.drain(t);
    }

    /// A message to the node `to`, as the daemon would send one.
    pub fn message(
        &mut self,
        t: SimTime,
        to: &[u8; 32],
        payload: &[u8],
    ) -> Result<(), MessageError> {
        let now = self.now(t);
        let r = self.core.send_message(now, to, payload);
        self.drain(t);
        r
    }

    /// Takes the messages waiting in the core into [`Self::messages`].
    pub fn read_messages_now(&mut self, t: SimTime) {
        while let Some((from, payload)) = self.core.poll_message() {
            self.messages.push((t, from, payload));
        }
    }

    fn drain(&mut self, t: SimTime) {
        while let Some(n) = self.core.poll_packet(&mut self.buf) {
            self.tun.push((t, self.buf[..n].to_vec()));
        }
        if self.read_messages {
            self.read_messages_now(t);
        }
        while self.core.poll_event().is_some() {}
        while let Some(f) = self.core.poll_failure() {
            self.failures.push(f);
        }
        let now = self.now(t);
        while let Some((link, draft)) = self.core.poll_report(now) {
            let Ok(link) = usize::try_from(link) else {
                continue;
            };
            let sent = self.written.get(&link).map(|w| w.1).unwrap_or_default();
            self.reports
                .push_back((link, draft.finish(sent, &self.identity)));
        }
        while let Some(ev) = self.core.poll_ledger_event() {
            if let LedgerEvent::Checked { agreed, .. } = ev {
                self.ledger_checks.0 += 1;
                self.ledger_checks.1 += u64::from(!agreed);
            }
        }
    }
}

impl SimNode for RouterNode {
    type Id = [u8; 32];
    type Message = RouterMsg;

    fn id(&self) -> [u8; 32] {
        self.key
    }

    fn link_up(&mut self, t: SimTime, link: usize, peer: &[u8; 32]) {
        let now = self.now(t);
        self.written
            .insert(link, (Classifier::new(&self.key, peer), Counts::default()));
        self.reports.retain(|(l, _)| *l != link);
        if self.carried_links.contains(&link) {
            self.core.carried_link_up(now, link as u64, *peer, [0; 32]);
        } else {
            self.core.link_up(now, link as u64, *peer);
        }
        self.drain(t);
    }

    fn link_down(&mut self, t: SimTime, link: usize) {
        let now = self.now(t);
        self.written.remove(&link);
        self.reports.retain(|(l, _)| *l != link);
        self.core.link_down(now, link as u64);
        self.drain(t);
    }

    fn handle_message(&mut self, t: SimTime, link: usize, msg: RouterMsg) {
        let now = self.now(t);
        match msg {
            RouterMsg::Cell(cell) => {
                self.core.handle_cell(now, link as u64, &cell);
                self.spare = Some(cell);
            }
            RouterMsg::Graph(bytes) => self.core.handle_graph(now, link as u64, &bytes),
            RouterMsg::Ledger(bytes) => self.core.handle_ledger(now, link as u64, &bytes),
        }
        self.drain(t);
    }

    fn poll_transmit(&mut self, _t: SimTime) -> Option<(usize, RouterMsg)> {
        if let Some((link, report)) = self.reports.pop_front() {
            if let Some(w) = &self.wire {
                w.borrow_mut().record(link, &report);
            }
            return Some((link, RouterMsg::Ledger(report)));
        }
        let mut cell = self
            .spare
            .take()
            .unwrap_or_else(|| Box::new([0u8; CELL_LEN]));
        if let Some(link) = self.core.poll_cell(&mut cell) {
            let link = usize::try_from(link).ok()?;
            if let Some(w) = &self.wire {
                w.borrow_mut().record(link, &cell[..]);
            }
            if let Some((classifier, sent)) = self.written.get_mut(&link) {
                classifier.count(sent, circ_id_of(&cell[..]));
            }
            return Some((link, RouterMsg::Cell(cell)));
        }
        self.spare = Some(cell);
        let (link, bytes) = self.core.poll_graph()?;
        let link = usize::try_from(link).ok()?;
        if let Some(w) = &self.wire {
            w.borrow_mut().record(link, &bytes);
        }
        Some((link, RouterMsg::Graph(bytes)))
    }

    fn poll_timeout(&self) -> Option<SimTime> {
        let (mono, wall) = self.core.poll_timeout();
        let mono = mono.map(|i| self.sim_time(i));
        let wall = wall.map(from_time);
        match (mono, wall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, t: SimTime) {
        let now = self.now(t);
        self.core.handle_timeout(now);
        self.drain(t);
    }

    fn wire_len(msg: &RouterMsg) -> usize {
        match msg {
            RouterMsg::Cell(_) => CELL_LEN,
            RouterMsg::Graph(b) | RouterMsg::Ledger(b) => b.len(),
        }
    }
}

/// A UDP packet from `src`'s node address to `dst`'s, between the two
/// ports, whose payload starts with `tag` (so the test can find it).
pub fn udp_packet(src: &[u8; 32], dst: &[u8; 32], ports: (u16, u16), tag: u64) -> Vec<u8> {
    let payload = 64;
    let mut p = Vec::with_capacity(40 + 8 + payload);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    p.push(UDP);
    p.push(64);
    p.extend_from_slice(&address_for_key(src, PREFIX).octets());
    p.extend_from_slice(&address_for_key(dst, PREFIX).octets());
    p.extend_from_slice(&ports.0.to_be_bytes());
    p.extend_from_slice(&ports.1.to_be_bytes());
    p.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&tag.to_be_bytes());
    p.resize(40 + 8 + payload, 0);
    p
}

/// The tag of a packet [`udp_packet`] made, if `p` is one.
pub fn tag_of(p: &[u8]) -> Option<u64> {
    (p.len() >= 56 && p[6] == UDP)
        .then(|| u64::from_be_bytes(p[48..56].try_into().unwrap_or([0; 8])))
}
