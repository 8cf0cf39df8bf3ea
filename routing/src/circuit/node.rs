//! [`CircuitCore`]: one node's circuit layer.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::state::{
    Circuit, Destination, Endpoint, Hop, Leg, Next, Origin, Relay, Role, Side, open_backward,
    seal_forward,
};
use super::{
    BuildError, CircuitConfig, CircuitEvent, CircuitId, CircuitInfo, CircuitMetrics, CircuitRole,
    Delivered, LinkId, MAX_PATH_HOPS, SendError, relay_version_bit,
};
use crate::cell::{
    self, CELL_HEADER_LEN, CELL_LEN, Cell, CellBody, Command, HandshakeType, RELAY_PAYLOAD_LEN,
    Reason, RelayMsg, RelayWriter, relay_messages,
};
use crate::crypto::{
    self, CoreRng, CryptoError, HOP_SECRET_LEN, HandshakeInitiator, HandshakePattern,
    HandshakeResponder, Identity, KEY_LEN,
};
use crate::session::{QueueError, Received, RxDrop, SessionTx};

/// Room for handshake messages and payloads on the stack (IK message 1 is
/// 32 + 48 + 33 + 16 = 129 bytes; message 2 is 32 + 33 + 16 = 81).
const HANDSHAKE_BUF_LEN: usize = 256;
/// The circuit-id bit that tells which end of a link created the circuit: set
/// for ids chosen by the end with the smaller key (as Tor does), so both ends
/// can create circuits without colliding.
const CIRC_ID_HIGH_BIT: u32 = 0x8000_0000;

fn circ_id_space(creator: &[u8; KEY_LEN], other: &[u8; KEY_LEN]) -> u32 {
    if creator < other { CIRC_ID_HIGH_BIT } else { 0 }
}

fn pattern_of(t: HandshakeType) -> HandshakePattern {
    match t {
        HandshakeType::Nk => HandshakePattern::Nk,
        HandshakeType::Ik => HandshakePattern::Ik,
    }
}

/// The core's RNG (never printed).
struct Rng(CoreRng);

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rng")
    }
}

/// The start of the origin's handshake with one hop.
struct HopStart {
    handshake_type: HandshakeType,
    init: HandshakeInitiator,
    msg1: [u8; HANDSHAKE_BUF_LEN],
    len: usize,
}

impl HopStart {
    fn msg1(&self) -> &[u8] {
        &self.msg1[..self.len]
    }
}

/// One node's circuit layer: origin, relay and destination at once. Sans-IO:
/// see the [module docs](super) for the driver's contract.
///
/// The data path allocates nothing per cell once warm: cells to send wait in
/// one ring of inline 1200-byte buffers, packets in per-circuit byte rings,
/// and all of them keep their capacity.
///
/// Its randomness (handshake ephemerals, hop secrets) comes from the RNG its
/// caller gives [`CircuitCore::new`], so a seeded RNG fixes every cell.
#[derive(Debug)]
pub struct CircuitCore {
    identity: Identity,
    rng: Rng,
    public: [u8; KEY_LEN],
    prefix: u8,
    config: CircuitConfig,
    /// Live links and the identity of the node at the other end.
    links: HashMap<LinkId, [u8; KEY_LEN]>,
    /// A live link to each linked node.
    peers: HashMap<[u8; KEY_LEN], LinkId>,
    /// The switching table: `(link, circ_id)` → circuit and side.
    legs: HashMap<Leg, (CircuitId, Side)>,
    /// Circuits each link's neighbour created here and holds open.
    opened_on: HashMap<LinkId, u32>,
    circuits: HashMap<CircuitId, Circuit>,
    next_circuit: u64,
    next_circ_id: u32,
    /// Cells to send, in order (per-circuit order is what the implicit
    /// counters need), with who pays for each: the neighbour the circuit
    /// came from, or this node for its own ([`Self::poll_transmit_paid`]).
    tx: VecDeque<(LinkId, [u8; KEY_LEN], [u8; CELL_LEN])>,
    /// Ends with something to send, served round robin by `poll_transmit`.
    dirty: VecDeque<CircuitId>,
    /// One entry per complete packet waiting for `poll_packet`.
    ready: VecDeque<CircuitId>,
    events: VecDeque<CircuitEvent>,
    /// Messages received, with the peer that sent them, for `poll_message`
    /// (bounded by the config's `inbox_messages` and `inbox_bytes`).
    inbox: VecDeque<([u8; KEY_LEN], Vec<u8>)>,
    /// Payload bytes in `inbox`.
    inbox_bytes: usize,
    /// Origin circuits still building (few; scanned for timeouts).
    building: Vec<CircuitId>,
    /// What builds that failed had queued, none of it sent, with the
    /// destination: for [`Self::requeue_unsent`] (at most
    /// [`MAX_UNSENT`]; [`Self::drop_unsent`] empties it).
    unsent: VecDeque<(CircuitId, [u8; KEY_LEN], SessionTx)>,
    metrics: CircuitMetrics,
}

/// Failed builds whose queues wait for [`CircuitCore::requeue_unsent`]; past
/// this the oldest is dropped (and counted lost).
const MAX_UNSENT: usize = 64;

impl CircuitCore {
    /// A circuit layer for the node `identity`, whose addresses use
    /// `address_prefix` (docs/protocol.md, "Identity and addresses"). Every
    /// random byte it needs is drawn from `rng`.
    pub fn new(
        identity: Identity,
        address_prefix: u8,
        config: CircuitConfig,
        rng: CoreRng,
    ) -> Self {
        CircuitCore {
            public: identity.public(),
            identity,
            rng: Rng(rng),
            prefix: address_prefix,
            config,
            links: HashMap::new(),
            peers: HashMap::new(),
            legs: HashMap::new(),
            opened_on: HashMap::new(),
            circuits: HashMap::new(),
            next_circuit: 0,
            next_circ_id: 0,
            tx: VecDeque::new(),
            dirty: VecDeque::new(),
            ready: VecDeque::new(),
            events: VecDeque::new(),
            inbox: VecDeque::new(),
            inbox_bytes: 0,
            building: Vec::new(),
            unsent: VecDeque::new(),
            metrics: CircuitMetrics::default(),
        }
    }

    /// This node's identity key.
    pub fn public_key(&self) -> [u8; KEY_LEN] {
        self.public
    }

    /// A link to the node `peer` is up (authenticated by the transport). Only
    /// live links are extended over.
    pub fn link_up(&mut self, _now: Instant, link: LinkId, peer: [u8; KEY_LEN]) {
        self.links.insert(link, peer);
        self.peers.insert(peer, link);
    }

    /// A link went down: every circuit over it is torn down. Relays send
    /// DESTROY on their other leg; the ends get [`CircuitEvent::Closed`] (or
    /// [`CircuitEvent::Unreachable`] while building).
    pub fn link_down(&mut self, _now: Instant, link: LinkId) {
        let Some(peer) = self.links.remove(&link) else {
            return;
        };
        if self.peers.get(&peer) == Some(&link) {
            self.peers.remove(&peer);
            if let Some((&other, _)) = self.links.iter().find(|(_, p)| **p == peer) {
                self.peers.insert(peer, other);
            }
        }
        let mut affected: Vec<(Leg, CircuitId)> = self
            .legs
            .iter()
            .filter(|((l, _), _)| *l == link)
            .map(|(leg, (id, _))| (*leg, *id))
            .collect();
        // In a fixed order (not the hash map's), so that the DESTROY cells
        // and events come out the same in every run with the same input.
        affected.sort_unstable();
        for (leg, id) in affected {
            self.close(id, Reason::LinkDown, Some(leg));
        }
    }

    /// Starts building a circuit along `path`: `path[0]` is the first hop (a
    /// node with a live link, normally the home node) and the last element is
    /// the destination. The build continues as cells arrive and ends with
    /// [`CircuitEvent::Built`] or [`CircuitEvent::Unreachable`]. Packets may be
    /// queued on it at once; they flow once it is built.
    pub fn build_circuit(
        &mut self,
        now: Instant,
        path: &[[u8; KEY_LEN]],
    ) -> Result<CircuitId, BuildError> {
        self.start_build(now, path, false)
    }

    /// Starts building a *prefix*: a partial circuit through relays only
    /// (every hop `NK`), kept in a pool until a destination needs it. It ends
    /// with [`CircuitEvent::PrefixBuilt`] or [`CircuitEvent::Unreachable`]
    /// (whose `destination` is then the prefix's last relay).
    /// [`Self::extend_prefix`] later extends it to a destination, so a new
    /// destination waits only for the hops after the prefix. A prefix carries
    /// no packets; a backward cell on it is a protocol error.
    pub fn build_prefix(
        &mut self,
        now: Instant,
        path: &[[u8; KEY_LEN]],
    ) -> Result<CircuitId, BuildError> {
        self.start_build(now, path, true)
    }

    /// Extends a built prefix by `rest`, destination last (the destination's
    /// hop runs `IK`, as in [`Self::build_circuit`]). The circuit then builds
    /// as any other and ends with [`CircuitEvent::Built`] or
    /// [`CircuitEvent::Unreachable`]. Packets may be queued on it at once.
    pub fn extend_prefix(
        &mut self,
        now: Instant,
        circuit: CircuitId,
        rest: &[[u8; KEY_LEN]],
    ) -> Result<(), BuildError> {
        let &destination = rest.last().ok_or(BuildError::EmptyPath)?;
        let existing = match self.circuits.get(&circuit).map(|c| (&c.role, c.closed)) {
            Some((Role::Origin(o), false)) if o.prefix && o.built() => o.path.clone(),
            _ => return Err(BuildError::NotAPrefix),
        };
        let mut path = existing;
        path.extend_from_slice(rest);
        self.check_path(&path)?;
        let (prefix, queue_bytes) = (self.prefix, self.config.send_queue_bytes);
        let deadline = now + self.config.build_timeout;
        if let Some(Role::Origin(o)) = self.circuits.get_mut(&circuit).map(|c| &mut c.role) {
            o.path = path;
            o.prefix = false;
            o.deadline = deadline;
            o.end = Endpoint::new(destination, prefix, queue_bytes);
        }
        self.building.push(circuit);
        self.extend_next(circuit);
        Ok(())
    }

    /// Checks a path an origin is about to build: not too long, valid keys,
    /// no node twice and not this node.
    fn check_path(&self, path: &[[u8; KEY_LEN]]) -> Result<(), BuildError> {
        if path.is_empty() {
            return Err(BuildError::EmptyPath);
        }
        if path.len() > MAX_PATH_HOPS {
            return Err(BuildError::PathTooLong(path.len()));
        }
        for (i, k) in path.iter().enumerate() {
            if crypto::x25519_public(k).is_none() {
                return Err(BuildError::InvalidKey(i));
            }
            if *k == self.public || path[..i].contains(k) {
                return Err(BuildError::RepeatedNode(i));
            }
        }
        Ok(())
    }

    fn start_build(
        &mut self,
        now: Instant,
        path: &[[u8; KEY_LEN]],
        prefix: bool,
    ) -> Result<CircuitId, BuildError> {
        self.check_path(path)?;
        let first = path[0];
        let &link = self.peers.get(&first).ok_or(BuildError::NoLink(first))?;
        if self.live_circuits() >= self.config.max_circuits {
            return Err(BuildError::TooManyCircuits);
        }
        let circ_id = self
            .alloc_circ_id(link, &first)
            .ok_or(BuildError::NoCircuitId)?;
        let hop = self.start_hop(&first, path.len() == 1 && !prefix)?;
        self.push_cell(
            link,
            circ_id,
            CellBody::Create {
                handshake_type: hop.handshake_type,
                handshake: hop.msg1(),
            },
        );
        let id = self.new_circuit_id();
        let destination = path[path.len() - 1];
        self.circuits.insert(
            id,
            Circuit {
                created: now,
                role: Role::Origin(Box::new(Origin {
                    path: path.to_vec(),
                    prefix,
                    first: (link, circ_id),
                    hops: Vec::with_capacity(MAX_PATH_HOPS),
                    pending: Some(hop.init),
                    deadline: now + self.config.build_timeout,
                    end: Endpoint::new(destination, self.prefix, self.config.send_queue_bytes),
                })),
                closed: false,
                cells_in: 0,
                cells_out: 0,
            },
        );
        self.legs.insert((link, circ_id), (id, Side::Out));
        self.building.push(id);
        self.metrics.origin_circuits += 1;
        Ok(id)
    }

    /// Queues an IPv6 packet on a circuit this node is an end of (origin, or
    /// destination replying). It is cut into cells as the window allows. With
    /// the window closed and the queue full, the packet is dropped here, at
    /// the ingress, and counted; relays never drop. A packet that starts with
    /// 0x00 is refused ([`SendError::NotAPacket`]): the far end would take it
    /// for a message.
    pub fn send_packet(
        &mut self,
        _now: Instant,
        circuit: CircuitId,
        packet: &[u8],
    ) -> Result<(), SendError> {
        let queued = self.queue(circuit, |end| end.tx.push(packet));
        if queued == Err(SendError::QueueFull) {
            self.metrics.drops.send_queue_full += 1;
        }
        queued?;
        self.metrics.packets_sent += 1;
        self.metrics.packet_bytes_sent += packet.len() as u64;
        Ok(())
    }

    /// Queues a message (`docs/protocol.md, "Sessions"`) on a circuit this
    /// node is an end of: `payload`, 0 to
    /// [`crate::session::MAX_MESSAGE_LEN`] bytes, goes to the other end in
    /// the session, after the packets queued before it and under the same
    /// window and queue bound ([`SendError::QueueFull`] when it is full, not
    /// counted as a drop: the caller is told). The other end gets it from
    /// [`Self::poll_message`] with this node's key. On a circuit still
    /// building it waits, as packets do; if the circuit closes first, or
    /// its build fails and [`Self::requeue_unsent`] does not move it, it is
    /// lost and counted ([`MessageCounters::lost_on_close`]).
    ///
    /// [`MessageCounters::lost_on_close`]: super::MessageCounters::lost_on_close
    pub fn send_message(
        &mut self,
        _now: Instant,
        circuit: CircuitId,
        payload: &[u8],
    ) -> Result<(), SendError> {
        self.queue(circuit, |end| end.tx.push_message(payload))?;
        self.metrics.messages.sent += 1;
        self.metrics.messages.sent_bytes += payload.len() as u64;
        Ok(())
    }

    /// Queues a packet or message on an end with `push`, and schedules the
    /// end to send if it can.
    fn queue(
        &mut self,
        circuit: CircuitId,
        push: impl FnOnce(&mut Endpoint) -> Result<(), QueueError>,
    ) -> Result<(), SendError> {
        let Some(c) = self.circuits.get_mut(&circuit).filter(|c| !c.closed) else {
            return Err(SendError::UnknownCircuit);
        };
        let (end, ready_to_send) = match &mut c.role {
            Role::Origin(o) if o.prefix => return Err(SendError::NotAnEnd),
            Role::Origin(o) => {
                let built = o.built();
                (&mut o.end, built)
            }
            Role::Destination(d) => (&mut d.end, true),
            Role::Relay(_) => return Err(SendError::NotAnEnd),
        };
        match push(end) {
            Ok(()) => {}
            Err(QueueError::Full) => return Err(SendError::QueueFull),
            Err(QueueError::Empty) => return Err(SendError::Empty),
            Err(QueueError::TooLong(n) | QueueError::MessageTooLong(n)) => {
                return Err(SendError::TooLong(n));
            }
            Err(QueueError::MessageByte) => return Err(SendError::NotAPacket),
        }
        if ready_to_send && !end.in_dirty && end.has_work() {
            end.in_dirty = true;
            self.dirty.push_back(circuit);
        }
        Ok(())
    }

    /// Moves what the origin circuit `from` had queued when its build failed
    /// (none of it was sent, so it has no sequence numbers yet) onto `to`, a
    /// circuit this node builds to the same destination whose queue is
    /// empty. The router calls it when it starts another build at once, so
    /// a build that fails loses no packet. Returns whether it moved.
    pub fn requeue_unsent(&mut self, from: CircuitId, to: CircuitId) -> bool {
        let Some(i) = self.unsent.iter().position(|(id, ..)| *id == from) else {
            return false;
        };
        let Some(Circuit {
            role: Role::Origin(o),
            closed: false,
            ..
        }) = self.circuits.get_mut(&to)
        else {
            return false;
        };
        if o.prefix || o.end.peer != self.unsent[i].1 || !o.end.tx.is_empty() {
            return false;
        }
        let Some((_, _, tx)) = self.unsent.remove(i) else {
            return false;
        };
        o.end.tx = tx;
        if o.built() && !o.end.in_dirty && o.end.has_work() {
            o.end.in_dirty = true;
            self.dirty.push_back(to);
        }
        true
    }

    /// Drops what failed builds queued that [`Self::requeue_unsent`] did not
    /// move, counting it lost on close.
    pub fn drop_unsent(&mut self) {
        while let Some((_, _, tx)) = self.unsent.pop_front() {
            self.count_lost_unsent(&tx);
        }
    }

    fn count_lost_unsent(&mut self, tx: &SessionTx) {
        let messages = tx.queued_messages() as u64;
        self.metrics.drops.lost_on_close += tx.queued_packets() as u64 - messages;
        self.metrics.messages.lost_on_close += messages;
    }

    /// Closes a circuit this node holds (rotation, shutdown): DESTROY goes
    /// both ways with [`Reason::Requested`]. Returns whether it existed.
    pub fn close_circuit(&mut self, _now: Instant, circuit: CircuitId) -> bool {
        match self.circuits.get(&circuit) {
            Some(c) if !c.closed => {
                self.close(circuit, Reason::Requested, None);
                true
            }
            _ => false,
        }
    }

    /// Closes the circuit whose leg on `link` has id `circ_id`: its cells
    /// overran what an honest end can queue there (docs/architecture.md,
    /// "Faults"). DESTROY goes both ways with [`Reason::Protocol`] (a window
    /// overrun). Returns whether it existed.
    pub fn close_leg(&mut self, link: LinkId, circ_id: u32) -> bool {
        match self.legs.get(&(link, circ_id)) {
            Some(&(id, _)) => {
                self.close(id, Reason::Protocol, None);
                true
            }
            None => false,
        }
    }

    /// Takes one cell that arrived on `link`.
    ///
    /// Relays switch every cell they are given; they never drop one for lack
    /// of room. The end-to-end windows bound what can wait for a slow link
    /// (see the module's "Flow control and back-pressure").
    pub fn handle_cell(&mut self, now: Instant, link: LinkId, cell: &[u8; CELL_LEN]) {
        self.metrics.cells_in += 1;
        let Some(&peer) = self.links.get(&link) else {
            self.metrics.unknown_link_cells += 1;
            return;
        };
        let parsed = match Cell::parse(cell) {
            Ok(c) => c,
            Err(_) => {
                self.metrics.protocol_errors += 1;
                return;
            }
        };
        let circ_id = parsed.circ_id;
        match parsed.body {
            CellBody::Padding => self.metrics.padding_cells_in += 1,
            CellBody::Create {
                handshake_type,
                handshake,
            } => self.on_create(now, link, peer, circ_id, handshake_type, handshake),
            CellBody::Created { handshake } => self.on_created(now, (link, circ_id), handshake),
            CellBody::Relay(_) => self.on_relay(now, (link, circ_id), cell),
            CellBody::Destroy { reason } => self.on_destroy((link, circ_id), reason),
        }
    }

    /// The next cell to send: writes it into `out` and returns its link.
    /// Call until `None` after every batch of input. The driver must accept
    /// every cell (queue it on the link); see [`Self::handle_cell`] for
    /// back-pressure.
    pub fn poll_transmit(&mut self, out: &mut [u8; CELL_LEN]) -> Option<LinkId> {
        self.poll_transmit_paid(out).map(|(link, _)| link)
    }

    /// [`Self::poll_transmit`], with who pays for the cell: the neighbour
    /// its circuit came from (the one that extended through this node), or
    /// this node's own key for its own circuits and link control. The
    /// driver's fair queue weighs cells by it (docs/architecture.md,
    /// "Ledgers").
    pub fn poll_transmit_paid(
        &mut self,
        out: &mut [u8; CELL_LEN],
    ) -> Option<(LinkId, [u8; KEY_LEN])> {
        loop {
            if let Some((link, payer, cell)) = self.tx.pop_front() {
                *out = cell;
                self.metrics.cells_out += 1;
                return Some((link, payer));
            }
            let id = self.dirty.pop_front()?;
            if let Some(paid) = self.cut_cell(id, out) {
                self.metrics.cells_out += 1;
                return Some(paid);
            }
        }
    }

    /// Whether a CREATE on `link` with `circ_id` from `peer` is one this
    /// node would act on (the peer's id space, not in use): only such a
    /// CREATE may be answered, even with a refusal.
    pub fn create_is_fresh(&self, link: LinkId, peer: &[u8; KEY_LEN], circ_id: u32) -> bool {
        circ_id & !CIRC_ID_HIGH_BIT != 0
            && circ_id & CIRC_ID_HIGH_BIT == circ_id_space(peer, &self.public)
            && !self.legs.contains_key(&(link, circ_id))
    }

    /// Circuits the neighbour on `link` created here and holds open.
    pub fn opened_by(&self, link: LinkId) -> usize {
        self.opened_on.get(&link).map_or(0, |&n| n as usize)
    }

    /// One circuit the neighbour on `link` created here closed.
    fn closed_on(&mut self, link: LinkId) {
        if let Some(n) = self.opened_on.get_mut(&link) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.opened_on.remove(&link);
            }
        }
    }

    /// Refuses a fresh CREATE ([`Self::create_is_fresh`]) with `reason`,
    /// which the origin hears.
    pub fn refuse_create(&mut self, link: LinkId, circ_id: u32, reason: Reason) {
        self.metrics.circuits_refused += 1;
        self.send_destroy((link, circ_id), reason);
    }

    /// The next packet for the TUN: copies it into `out` (give it
    /// [`crate::session::MAX_PACKET_LEN`] bytes; a shorter buffer drops a
    /// longer packet, counted). Taking packets is what lets SENDMEs go back,
    /// so a reader that stops calling this stops the sender.
    pub fn poll_packet(&mut self, out: &mut [u8]) -> Option<Delivered> {
        loop {
            let id = self.ready.pop_front()?;
            let Some(c) = self.circuits.get_mut(&id) else {
                continue;
            };
            let closed = c.closed;
            let built = match &c.role {
                Role::Origin(o) => o.built(),
                _ => true,
            };
            let Some(end) = c.endpoint_mut() else {
                continue;
            };
            let Some(result) = end.rx.pop(out) else {
                continue;
            };
            let peer = end.peer;
            end.release_sendmes();
            if !closed && built && !end.in_dirty && end.has_work() {
                end.in_dirty = true;
                self.dirty.push_back(id);
            }
            if closed && end.rx.reassembler().ready() == 0 {
                self.circuits.remove(&id);
            }
            match result {
                Ok(len) => {
                    self.metrics.packets_delivered += 1;
                    self.metrics.packet_bytes_delivered += len as u64;
                    return Some(Delivered {
                        circuit: id,
                        peer,
                        len,
                    });
                }
                Err(_) => self.metrics.drops.buffer_too_small += 1,
            }
        }
    }

    /// The next message received (`docs/protocol.md, "Sessions"`): the key
    /// of the node that sent it, which is the session's peer as the circuit's
    /// handshake authenticated it, and the payload. Messages wait in one
    /// bounded queue for the node; take them every turn.
    pub fn poll_message(&mut self) -> Option<([u8; KEY_LEN], Vec<u8>)> {
        let (peer, payload) = self.inbox.pop_front()?;
        self.inbox_bytes = self.inbox_bytes.saturating_sub(payload.len());
        Some((peer, payload))
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<CircuitEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.building
            .iter()
            .filter_map(|id| match self.circuits.get(id).map(|c| &c.role) {
                Some(Role::Origin(o)) => Some(o.deadline),
                _ => None,
            })
            .min()
    }

    /// Abandons circuits that did not build in time
    /// ([`CircuitConfig::build_timeout`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<CircuitId> = self
            .building
            .iter()
            .copied()
            .filter(|id| match self.circuits.get(id).map(|c| &c.role) {
                Some(Role::Origin(o)) => o.deadline <= now,
                _ => false,
            })
            .collect();
        for id in expired {
            self.close(id, Reason::Timeout, None);
        }
    }

    /// Counters.
    pub fn metrics(&self) -> &CircuitMetrics {
        &self.metrics
    }

    /// What this node knows of each open circuit.
    pub fn circuits(&self) -> impl Iterator<Item = CircuitInfo> + '_ {
        self.circuits
            .iter()
            .filter(|(_, c)| !c.closed)
            .map(|(&id, c)| self.info(id, c))
    }

    /// Whether `id` is an open circuit this node originated (or a prefix)
    /// with every hop built. Cheaper than [`Self::circuit`].
    pub fn is_built(&self, id: CircuitId) -> bool {
        matches!(
            self.circuits.get(&id),
            Some(Circuit { role: Role::Origin(o), closed: false, .. }) if o.built()
        )
    }

    /// What this node knows of one open circuit.
    pub fn circuit(&self, id: CircuitId) -> Option<CircuitInfo> {
        self.circuits
            .get(&id)
            .filter(|c| !c.closed)
            .map(|c| self.info(id, c))
    }

    fn info(&self, id: CircuitId, c: &Circuit) -> CircuitInfo {
        let mut info = CircuitInfo {
            id,
            role: CircuitRole::Relay,
            built: false,
            prefix: false,
            path: Vec::new(),
            hops_built: 0,
            prev: None,
            next: None,
            peer: None,
            relay_crypto_versions: Vec::new(),
            created: c.created,
            cells_in: c.cells_in,
            cells_out: c.cells_out,
            queued_packets: 0,
        };
        match &c.role {
            Role::Origin(o) => {
                info.role = CircuitRole::Origin;
                info.built = o.built();
                info.prefix = o.prefix;
                info.path = o.path.clone();
                info.hops_built = o.hops.len();
                info.relay_crypto_versions = o.hops.iter().map(|h| h.keys.version).collect();
                info.next = o.path.first().copied();
                info.peer = o.path.last().copied();
                info.queued_packets = o.end.tx.queued_packets();
            }
            Role::Relay(r) => {
                info.built = matches!(r.next, Next::Open(_));
                info.prev = Some(r.prev_key);
                info.next = r.next_key;
                info.relay_crypto_versions = vec![r.hop.keys.version];
            }
            Role::Destination(d) => {
                info.role = CircuitRole::Destination;
                info.built = true;
                info.prev = Some(d.prev_key);
                info.peer = Some(d.end.peer);
                info.relay_crypto_versions = vec![d.hop.keys.version];
                info.queued_packets = d.end.tx.queued_packets();
            }
        }
        info
    }

    // ----- internals -------------------------------------------------------

    fn live_circuits(&self) -> usize {
        (self.metrics.origin_circuits
            + self.metrics.relay_circuits
            + self.metrics.destination_circuits) as usize
    }

    fn new_circuit_id(&mut self) -> CircuitId {
        self.next_circuit += 1;
        CircuitId(self.next_circuit)
    }

    fn alloc_circ_id(&mut self, link: LinkId, peer: &[u8; KEY_LEN]) -> Option<u32> {
        let space = circ_id_space(&self.public, peer);
        for _ in 0..1024 {
            self.next_circ_id = self.next_circ_id.wrapping_add(1) & !CIRC_ID_HIGH_BIT;
            if self.next_circ_id == 0 {
                continue;
            }
            let id = space | self.next_circ_id;
            if !self.legs.contains_key(&(link, id)) {
                return Some(id);
            }
        }
        None
    }

    /// Starts the handshake with the next hop `node`: `IK` when it is the
    /// destination (`last`), else `NK`. Returns the type, the initiator and
    /// message 1 (its first `n` bytes). Message 1's payload offers the
    /// versions, and for IK carries the origin's Ed25519 identity (its
    /// X25519 form alone does not give the address).
    fn start_hop(&mut self, node: &[u8; KEY_LEN], last: bool) -> Result<HopStart, CryptoError> {
        let (handshake_type, offer_len) = if last {
            (HandshakeType::Ik, 1 + KEY_LEN)
        } else {
            (HandshakeType::Nk, 1)
        };
        let mut offer = [self.config.relay_crypto_versions; 1 + KEY_LEN];
        offer[1..].copy_from_slice(&self.public);
        let mut init = HandshakeInitiator::new(
            pattern_of(handshake_type),
            &self.identity,
            node,
            &mut *self.rng.0,
        )?;
        let mut msg1 = [0u8; HANDSHAKE_BUF_LEN];
        let len = init.write_msg1(&offer[..offer_len], &mut msg1)?;
        Ok(HopStart {
            handshake_type,
            init,
            msg1,
            len,
        })
    }

    fn push_cell(&mut self, link: LinkId, circ_id: u32, body: CellBody<'_>) {
        let mut buf = [0u8; CELL_LEN];
        match (Cell { circ_id, body }).write(&mut buf) {
            Ok(()) => self.tx.push_back((link, self.public, buf)),
            // Only our own oversized handshakes could fail; they are bounded.
            Err(_) => self.metrics.protocol_errors += 1,
        }
    }

    fn send_destroy(&mut self, leg: Leg, reason: Reason) {
        self.push_cell(leg.0, leg.1, CellBody::Destroy { reason });
    }

    fn on_create(
        &mut self,
        now: Instant,
        link: LinkId,
        peer: [u8; KEY_LEN],
        circ_id: u32,
        handshake_type: HandshakeType,
        msg1: &[u8],
    ) {
        let leg = (link, circ_id);
        if !self.create_is_fresh(link, &peer, circ_id) {
            // Not the peer's id space, or in use: answering with DESTROY could
            // kill a live circuit, so drop and count.
            self.metrics.protocol_errors += 1;
            return;
        }
        if self.live_circuits() >= self.config.max_circuits {
            self.send_destroy(leg, Reason::Refused);
            return;
        }
        if self.opened_by(link) >= self.config.max_circuits_per_neighbour {
            self.refuse_create(link, circ_id, Reason::TooManyCircuits);
            return;
        }
        let pattern = pattern_of(handshake_type);
        let mut payload = [0u8; HANDSHAKE_BUF_LEN];
        let Ok((resp, n)) = HandshakeResponder::read_msg1(
            pattern,
            &self.identity,
            msg1,
            &mut payload,
            &mut *self.rng.0,
        ) else {
            self.metrics.handshake_failures += 1;
            self.send_destroy(leg, Reason::HandshakeFailed);
            return;
        };
        let offer = &payload[..n];
        let Some(&versions) = offer.first() else {
            self.metrics.handshake_failures += 1;
            self.send_destroy(leg, Reason::HandshakeFailed);
            return;
        };
        // The highest version both offer.
        let version = match versions & self.config.relay_crypto_versions {
            0 => {
                self.metrics.handshake_failures += 1;
                self.send_destroy(leg, Reason::UnsupportedVersion);
                return;
            }
            common => 8 - common.leading_zeros() as u8,
        };
        let origin = match pattern {
            HandshakePattern::Nk => None,
            HandshakePattern::Ik => {
                let key: Option<[u8; KEY_LEN]> =
                    offer.get(1..1 + KEY_LEN).and_then(|k| k.try_into().ok());
                match (key, resp.remote_static()) {
                    (Some(k), Some(s)) if crypto::identity_matches_static(&k, &s) => Some(k),
                    _ => {
                        self.metrics.handshake_failures += 1;
                        self.send_destroy(leg, Reason::HandshakeFailed);
                        return;
                    }
                }
            }
        };
        let secret = crypto::random_hop_secret(&mut *self.rng.0);
        let mut answer = [0u8; 1 + HOP_SECRET_LEN];
        answer[0] = version;
        answer[1..].copy_from_slice(&secret);
        let mut msg2 = [0u8; HANDSHAKE_BUF_LEN];
        let keys = resp
            .write_msg2(&answer, &mut msg2)
            .and_then(|(n2, hash)| Ok((n2, crypto::derive_hop_keys(version, &secret, &hash)?)));
        let Ok((n2, keys)) = keys else {
            self.send_destroy(leg, Reason::Internal);
            return;
        };
        let id = self.new_circuit_id();
        let role = match origin {
            None => {
                self.metrics.relay_circuits += 1;
                Role::Relay(Relay {
                    prev: leg,
                    prev_key: peer,
                    next: Next::None,
                    next_key: None,
                    hop: Hop::new(keys),
                })
            }
            Some(origin) => {
                self.metrics.destination_circuits += 1;
                self.events.push_back(CircuitEvent::Incoming {
                    circuit: id,
                    origin,
                });
                Role::Destination(Box::new(Destination {
                    prev: leg,
                    prev_key: peer,
                    hop: Hop::new(keys),
                    end: Endpoint::new(origin, self.prefix, self.config.send_queue_bytes),
                }))
            }
        };
        self.circuits.insert(
            id,
            Circuit {
                created: now,
                role,
                closed: false,
                cells_in: 1,
                cells_out: 1,
            },
        );
        self.legs.insert(leg, (id, Side::In));
        *self.opened_on.entry(link).or_insert(0) += 1;
        self.metrics.circuits_accepted += 1;
        self.push_cell(
            link,
            circ_id,
            CellBody::Created {
                handshake: &msg2[..n2],
            },
        );
    }

    fn on_created(&mut self, now: Instant, leg: Leg, msg2: &[u8]) {
        let Some(&(id, side)) = self.legs.get(&leg) else {
            self.metrics.unknown_circuit_cells += 1;
            return;
        };
        let Some(c) = self.circuits.get_mut(&id) else {
            return;
        };
        c.cells_in += 1;
        match (&mut c.role, side) {
            (Role::Origin(o), Side::Out) if o.hops.is_empty() && o.pending.is_some() => {
                self.origin_hop_answered(now, id, msg2);
            }
            (Role::Relay(r), Side::Out) if r.next == Next::Pending(leg) => {
                r.next = Next::Open(leg);
                self.relay_reply(id, &RelayMsg::Extended { handshake: msg2 });
            }
            _ => {
                self.metrics.protocol_errors += 1;
                self.close(id, Reason::Protocol, None);
            }
        }
    }

    /// The origin got message 2 of the pending hop (in CREATED or EXTENDED):
    /// finish that hop, then extend to the next or report the circuit built.
    fn origin_hop_answered(&mut self, _now: Instant, id: CircuitId, msg2: &[u8]) {
        let Some(Role::Origin(o)) = self.circuits.get_mut(&id).map(|c| &mut c.role) else {
            return;
        };
        let Some(init) = o.pending.take() else {
            self.metrics.protocol_errors += 1;
            self.close(id, Reason::Protocol, None);
            return;
        };
        let mut payload = [0u8; HANDSHAKE_BUF_LEN];
        let answer = init.read_msg2(msg2, &mut payload);
        // Only a version this node offered may come back.
        let offered = |v: u8| self.config.relay_crypto_versions & relay_version_bit(v) != 0;
        let keys = match answer {
            Ok((n, hash)) => match payload.get(..n) {
                Some([v, secret @ ..]) if offered(*v) && secret.len() == HOP_SECRET_LEN => {
                    let mut s = [0u8; HOP_SECRET_LEN];
                    s.copy_from_slice(secret);
                    crypto::derive_hop_keys(*v, &s, &hash).map_err(|_| Reason::Internal)
                }
                _ => Err(Reason::UnsupportedVersion),
            },
            Err(_) => Err(Reason::HandshakeFailed),
        };
        let keys = match keys {
            Ok(k) => k,
            Err(reason) => {
                self.metrics.handshake_failures += 1;
                self.close(id, reason, None);
                return;
            }
        };
        o.hops.push(Hop::new(keys));
        if o.built() {
            self.building.retain(|b| *b != id);
            if o.prefix {
                self.events
                    .push_back(CircuitEvent::PrefixBuilt { circuit: id });
                return;
            }
            let destination = o.end.peer;
            let start = !o.end.in_dirty && o.end.has_work();
            if start {
                o.end.in_dirty = true;
            }
            self.metrics.circuits_built += 1;
            self.events.push_back(CircuitEvent::Built {
                circuit: id,
                destination,
            });
            if start {
                self.dirty.push_back(id);
            }
            return;
        }
        self.extend_next(id);
    }

    /// Extends an origin circuit to its next hop through the current last
    /// one: `IK` for the destination, `NK` for a relay.
    fn extend_next(&mut self, id: CircuitId) {
        let Some(Role::Origin(o)) = self.circuits.get(&id).map(|c| &c.role) else {
            return;
        };
        let i = o.hops.len();
        let Some(&node) = o.path.get(i) else {
            return;
        };
        let Ok(HopStart {
            handshake_type,
            init,
            msg1,
            len,
        }) = self.start_hop(&node, i + 1 == o.path.len() && !o.prefix)
        else {
            self.close(id, Reason::Internal, None);
            return;
        };
        if let Some(Role::Origin(o)) = self.circuits.get_mut(&id).map(|c| &mut c.role) {
            o.pending = Some(init);
        }
        self.origin_send_control(
            id,
            &RelayMsg::Extend {
                node,
                handshake_type,
                handshake: &msg1[..len],
            },
        );
    }

    /// The origin sends a control message (EXTEND) to the current last hop.
    fn origin_send_control(&mut self, id: CircuitId, msg: &RelayMsg<'_>) {
        let Some(c) = self.circuits.get_mut(&id) else {
            return;
        };
        let Role::Origin(o) = &mut c.role else {
            return;
        };
        let Some(buf) = control_cell(o.first.1, msg, |body| seal_forward(&mut o.hops, body)) else {
            self.close(id, Reason::Internal, None);
            return;
        };
        c.cells_out += 1;
        self.tx.push_back((o.first.0, self.public, buf));
    }

    /// A relay that is the last hop sends a message back to the origin.
    fn relay_reply(&mut self, id: CircuitId, msg: &RelayMsg<'_>) {
        let Some(c) = self.circuits.get_mut(&id) else {
            return;
        };
        let Role::Relay(r) = &mut c.role else {
            return;
        };
        let Some(buf) = control_cell(r.prev.1, msg, |body| r.hop.seal_backward(body)) else {
            self.close(id, Reason::Internal, None);
            return;
        };
        c.cells_out += 1;
        self.tx.push_back((r.prev.0, r.prev_key, buf));
    }

    fn on_relay(&mut self, now: Instant, leg: Leg, cell: &[u8; CELL_LEN]) {
        let Some(&(id, side)) = self.legs.get(&leg) else {
            self.metrics.unknown_circuit_cells += 1;
            return;
        };
        let Some(c) = self.circuits.get_mut(&id) else {
            return;
        };
        c.cells_in += 1;
        match (&mut c.role, side) {
            (Role::Relay(r), Side::In) => {
                if let Next::Open((next_link, next_id)) = r.next {
                    // Switch forward: strip our layer.
                    self.tx.push_back((next_link, r.prev_key, *cell));
                    if let Some((_, _, out)) = self.tx.back_mut() {
                        cell::set_circ_id(out, next_id);
                        r.hop.strip_forward(cell::body_mut(out));
                    }
                    c.cells_out += 1;
                    self.metrics.cells_relayed += 1;
                    return;
                }
                // No outgoing leg: the cell is for this hop.
                let mut buf = *cell;
                if r.hop.open_forward(cell::body_mut(&mut buf)).is_err() {
                    self.tag_failure(id, CircuitRole::Relay);
                    return;
                }
                self.relay_terminate(id, &buf);
            }
            (Role::Relay(r), Side::Out) => {
                if !matches!(r.next, Next::Open(_)) {
                    self.metrics.protocol_errors += 1;
                    self.close(id, Reason::Protocol, None);
                    return;
                }
                // Switch backward: add our layer.
                let (prev_link, prev_id) = r.prev;
                self.tx.push_back((prev_link, r.prev_key, *cell));
                if let Some((_, _, out)) = self.tx.back_mut() {
                    cell::set_circ_id(out, prev_id);
                    r.hop.add_backward(cell::body_mut(out));
                }
                c.cells_out += 1;
                self.metrics.cells_relayed += 1;
            }
            (Role::Destination(d), Side::In) => {
                let mut buf = *cell;
                let Ok(tag) = d.hop.open_forward(cell::body_mut(&mut buf)) else {
                    self.tag_failure(id, CircuitRole::Destination);
                    return;
                };
                self.end_receive(id, &buf, tag);
            }
            (Role::Origin(o), Side::Out) => {
                let mut buf = *cell;
                let Ok(tag) = open_backward(&mut o.hops, cell::body_mut(&mut buf)) else {
                    self.tag_failure(id, CircuitRole::Origin);
                    return;
                };
                if o.prefix && o.built() {
                    // A prefix's last relay has nothing to say until the
                    // next EXTEND.
                    self.metrics.protocol_errors += 1;
                    self.close(id, Reason::Protocol, None);
                } else if o.built() {
                    self.end_receive(id, &buf, tag);
                } else {
                    self.origin_building_receive(now, id, &buf);
                }
            }
            _ => {
                self.metrics.protocol_errors += 1;
                self.close(id, Reason::Protocol, None);
            }
        }
    }

    fn tag_failure(&mut self, id: CircuitId, role: CircuitRole) {
        self.metrics.tag_failures += 1;
        self.events
            .push_back(CircuitEvent::TagFailure { circuit: id, role });
        self.close(id, Reason::TagMismatch, None);
    }

    /// A forward cell ended at a relay (it is the last hop so far): the only
    /// thing an origin may ask of a relay is EXTEND.
    fn relay_terminate(&mut self, id: CircuitId, buf: &[u8; CELL_LEN]) {
        let payload = &cell::body(buf)[..RELAY_PAYLOAD_LEN];
        let mut extend = None;
        for msg in relay_messages(payload) {
            match msg {
                Ok(RelayMsg::Extend {
                    node,
                    handshake_type,
                    handshake,
                }) if extend.is_none() => extend = Some((node, handshake_type, handshake)),
                Ok(RelayMsg::Unknown { .. }) => self.metrics.unknown_messages += 1,
                _ => {
                    self.metrics.protocol_errors += 1;
                    self.close(id, Reason::Protocol, None);
                    return;
                }
            }
        }
        if let Some((node, handshake_type, handshake)) = extend {
            self.relay_extend(id, node, handshake_type, handshake);
        }
    }

    fn relay_extend(
        &mut self,
        id: CircuitId,
        node: [u8; KEY_LEN],
        handshake_type: HandshakeType,
        msg1: &[u8],
    ) {
        let Some(Role::Relay(r)) = self.circuits.get(&id).map(|c| &c.role) else {
            return;
        };
        if r.next != Next::None {
            self.metrics.protocol_errors += 1;
            self.close(id, Reason::Protocol, None);
            return;
        }
        let refuse = if node == self.public || node == r.prev_key {
            Some(Reason::Refused)
        } else if !self.peers.contains_key(&node) {
            Some(Reason::NoLink)
        } else {
            None
        };
        let link = self.peers.get(&node).copied();
        let circ_id = match (refuse, link) {
            (None, Some(link)) => self.alloc_circ_id(link, &node).map(|c| (link, c)),
            _ => None,
        };
        let Some((link, circ_id)) = circ_id else {
            self.metrics.extend_failures += 1;
            let reason = refuse.unwrap_or(Reason::Refused);
            self.relay_reply(id, &RelayMsg::ExtendFailed { reason });
            return;
        };
        self.push_cell(
            link,
            circ_id,
            CellBody::Create {
                handshake_type,
                handshake: msg1,
            },
        );
        if let Some(c) = self.circuits.get_mut(&id) {
            c.cells_out += 1;
            if let Role::Relay(r) = &mut c.role {
                r.next = Next::Pending((link, circ_id));
                r.next_key = Some(node);
            }
        }
        self.legs.insert((link, circ_id), (id, Side::Out));
    }

    /// A backward cell for an origin circuit that is still building: EXTENDED
    /// or EXTEND_FAILED from the current last hop.
    fn origin_building_receive(&mut self, now: Instant, id: CircuitId, buf: &[u8; CELL_LEN]) {
        let payload = &cell::body(buf)[..RELAY_PAYLOAD_LEN];
        let mut msgs = relay_messages(payload);
        match msgs.next() {
            Some(Ok(RelayMsg::Extended { handshake })) => {
                let pending = matches!(
                    self.circuits.get(&id).map(|c| &c.role),
                    Some(Role::Origin(o)) if o.pending.is_some()
                );
                if pending {
                    self.origin_hop_answered(now, id, handshake);
                    return;
                }
            }
            Some(Ok(RelayMsg::ExtendFailed { reason })) => {
                self.metrics.extend_failures += 1;
                self.close(id, reason, None);
                return;
            }
            _ => {}
        }
        self.metrics.protocol_errors += 1;
        self.close(id, Reason::Protocol, None);
    }

    /// An end (origin when built, or destination) received a cell: packet
    /// fragments and SENDMEs.
    fn end_receive(
        &mut self,
        id: CircuitId,
        buf: &[u8; CELL_LEN],
        tag: [u8; crypto::RELAY_TAG_LEN],
    ) {
        let Some(c) = self.circuits.get_mut(&id) else {
            return;
        };
        let Some(end) = c.endpoint_mut() else {
            return;
        };
        let payload = &cell::body(buf)[..RELAY_PAYLOAD_LEN];
        let m = &mut self.metrics;
        let (inbox, inbox_bytes) = (&mut self.inbox, &mut self.inbox_bytes);
        let peer = end.peer;
        let mut has_data = false;
        let mut violation = false;
        for msg in relay_messages(payload) {
            let rx = match msg {
                Ok(RelayMsg::DataStart {
                    seq,
                    total_len,
                    data,
                }) => {
                    has_data = true;
                    end.rx.on_start(seq, total_len, data)
                }
                Ok(RelayMsg::DataCont { data }) => {
                    has_data = true;
                    end.rx.on_cont(data)
                }
                Ok(RelayMsg::Sendme { tag }) => {
                    if end.on_sendme(&tag).is_err() {
                        violation = true;
                        break;
                    }
                    continue;
                }
                Ok(RelayMsg::Unknown { .. }) => {
                    m.unknown_messages += 1;
                    continue;
                }
                _ => {
                    violation = true;
                    break;
                }
            };
            match rx {
                Ok(Received::Packet) => self.ready.push_back(id),
                Ok(Received::Message(payload)) => {
                    let full = inbox.len() >= self.config.inbox_messages
                        || *inbox_bytes + payload.len() > self.config.inbox_bytes;
                    if full {
                        m.messages.inbox_full += 1;
                    } else {
                        m.messages.received += 1;
                        m.messages.received_bytes += payload.len() as u64;
                        *inbox_bytes += payload.len();
                        inbox.push_back((peer, payload));
                    }
                }
                Ok(Received::Partial | Received::Discarded) => {}
                Err(RxDrop::Replayed) => m.drops.replayed += 1,
                Err(RxDrop::ForgedSource) => m.drops.forged_source += 1,
                Err(RxDrop::NotIpv6) => m.drops.not_ipv6 += 1,
                Err(RxDrop::Malformed(_)) => m.drops.malformed += 1,
                Err(RxDrop::MessageTooLong) => m.messages.too_long += 1,
            }
        }
        if has_data && !violation && end.on_data_cell_received(tag).is_err() {
            violation = true;
        }
        if violation {
            m.protocol_errors += 1;
            self.close(id, Reason::Protocol, None);
            return;
        }
        end.release_sendmes();
        if !end.in_dirty && end.has_work() {
            end.in_dirty = true;
            self.dirty.push_back(id);
        }
    }

    /// Cuts one cell from an end's queue into `out`; returns its link.
    /// Requeues the circuit if it has more to send.
    fn cut_cell(
        &mut self,
        id: CircuitId,
        out: &mut [u8; CELL_LEN],
    ) -> Option<(LinkId, [u8; KEY_LEN])> {
        let c = self.circuits.get_mut(&id).filter(|c| !c.closed)?;
        let (link, sealed) = match &mut c.role {
            Role::Origin(o) => {
                o.end.in_dirty = false;
                if !o.built() || o.prefix {
                    return None;
                }
                cell::write_header(out, o.first.1, Command::Relay);
                let body = cell::body_mut(out);
                let filled = o.end.fill(&mut body[..RELAY_PAYLOAD_LEN]);
                if !filled.any {
                    return None;
                }
                let sealed = seal_forward(&mut o.hops, body);
                if let (Ok(tag), true) = (sealed, filled.data) {
                    o.end.on_data_cell_sent(tag);
                }
                if o.end.has_work() {
                    o.end.in_dirty = true;
                }
                ((o.first.0, self.public), sealed.is_ok())
            }
            Role::Destination(d) => {
                d.end.in_dirty = false;
                cell::write_header(out, d.prev.1, Command::Relay);
                let body = cell::body_mut(out);
                let filled = d.end.fill(&mut body[..RELAY_PAYLOAD_LEN]);
                if !filled.any {
                    return None;
                }
                let sealed = d.hop.seal_backward(body);
                if let (Ok(tag), true) = (sealed, filled.data) {
                    d.end.on_data_cell_sent(tag);
                }
                if d.end.has_work() {
                    d.end.in_dirty = true;
                }
                ((d.prev.0, d.prev_key), sealed.is_ok())
            }
            Role::Relay(_) => return None,
        };
        if !sealed {
            self.close(id, Reason::Internal, None);
            return None;
        }
        c.cells_out += 1;
        if c.endpoint_mut().is_some_and(|e| e.in_dirty) {
            self.dirty.push_back(id);
        }
        Some(link)
    }

    fn on_destroy(&mut self, leg: Leg, reason: Reason) {
        let Some(&(id, side)) = self.legs.get(&leg) else {
            self.metrics.unknown_circuit_cells += 1;
            return;
        };
        if let Some(c) = self.circuits.get_mut(&id) {
            c.cells_in += 1;
            if let (Role::Relay(r), Side::Out) = (&mut c.role, side)
                && r.next == Next::Pending(leg)
            {
                // The next node refused our CREATE: the circuit lives on and
                // the origin hears why.
                r.next = Next::None;
                r.next_key = None;
                self.legs.remove(&leg);
                self.metrics.extend_failures += 1;
                self.relay_reply(id, &RelayMsg::ExtendFailed { reason });
                return;
            }
        }
        self.close(id, reason, Some(leg));
    }

    /// Tears a circuit down: DESTROY on every leg but `from` (where the
    /// teardown came from) whose link is still up, events for the ends.
    fn close(&mut self, id: CircuitId, reason: Reason, from: Option<Leg>) {
        let Some(mut c) = self.circuits.remove(&id) else {
            return;
        };
        if c.closed {
            // Already closed; it was only kept for its packets.
            self.circuits.insert(id, c);
            return;
        }
        for leg in c.legs().into_iter().flatten() {
            if let Some((_, Side::In)) = self.legs.remove(&leg) {
                self.closed_on(leg.0);
            }
            if Some(leg) != from && self.links.contains_key(&leg.0) {
                self.send_destroy(leg, reason);
            }
        }
        self.metrics.circuits_closed += 1;
        let mut unsent = None;
        let m = &mut self.metrics;
        match &mut c.role {
            Role::Origin(o) => {
                m.origin_circuits -= 1;
                if o.built() {
                    let lost = o.end.lost_on_close();
                    m.drops.lost_on_close += lost.packets;
                    m.messages.lost_on_close += lost.messages;
                    self.events.push_back(CircuitEvent::Closed {
                        circuit: id,
                        peer: o.end.peer,
                        reason,
                    });
                } else {
                    m.build_failures += 1;
                    self.building.retain(|b| *b != id);
                    // Nothing was sent before the build ended, and nothing
                    // received: the queue waits for `requeue_unsent`.
                    if !o.end.tx.is_empty() {
                        let tx = std::mem::replace(&mut o.end.tx, SessionTx::new(0));
                        unsent = Some((id, o.end.peer, tx));
                    }
                    // A DESTROY before any hop answered is the first hop
                    // refusing the CREATE.
                    let failed_hop = match from {
                        None => Some(o.hops.len()),
                        Some((link, _)) if !self.links.contains_key(&link) => Some(0),
                        Some(_) if o.hops.is_empty() => Some(0),
                        Some(_) => None,
                    };
                    self.events.push_back(CircuitEvent::Unreachable {
                        circuit: id,
                        destination: o.end.peer,
                        failed_hop,
                        reason,
                    });
                }
            }
            Role::Relay(_) => m.relay_circuits -= 1,
            Role::Destination(d) => {
                m.destination_circuits -= 1;
                let lost = d.end.lost_on_close();
                m.drops.lost_on_close += lost.packets;
                m.messages.lost_on_close += lost.messages;
                self.events.push_back(CircuitEvent::Closed {
                    circuit: id,
                    peer: d.end.peer,
                    reason,
                });
            }
        }
        if let Some(u) = unsent {
            if self.unsent.len() >= MAX_UNSENT
                && let Some((_, _, oldest)) = self.unsent.pop_front()
            {
                self.count_lost_unsent(&oldest);
            }
            self.unsent.push_back(u);
        }
        // Keep an end until the reader has taken the packets that arrived
        // before the teardown.
        if c.endpoint_mut()
            .is_some_and(|e| e.rx.reassembler().ready() > 0)
        {
            c.closed = true;
            self.circuits.insert(id, c);
        }
    }

    /// The send window left on an end (tests and status).
    #[cfg(test)]
    pub(crate) fn package_window(&self, id: CircuitId) -> Option<u32> {
        match &self.circuits.get(&id)?.role {
            Role::Origin(o) => Some(o.end.package_window()),
            Role::Destination(d) => Some(d.end.package_window()),
            Role::Relay(_) => None,
        }
    }

    /// Rewinds an end's next session sequence number (tests of the replay
    /// window: cells themselves cannot be replayed past the relay crypto).
    #[cfg(test)]
    pub(crate) fn set_next_seq(&mut self, id: CircuitId, seq: u64) {
        if let Some(end) = self.circuits.get_mut(&id).and_then(|c| c.endpoint_mut()) {
            end.tx.set_next_seq(seq);
        }
    }

    /// Queues `unit` on an end as it is, bypassing the checks of
    /// `send_packet` and `send_message` (tests of what a peer that breaks
    /// the rules can send).
    #[cfg(test)]
    pub(crate) fn send_raw(&mut self, id: CircuitId, unit: &[u8]) -> Result<(), SendError> {
        self.queue(id, |end| end.tx.push_raw(unit))
    }

    /// Number of cells waiting in the transmit ring.
    pub fn queued_cells(&self) -> usize {
        self.tx.len()
    }
}

// `CELL_HEADER_LEN` documents the layout that `cell::body_mut` slices by.
const _: () = assert!(CELL_HEADER_LEN == 5);

/// A RELAY cell on circuit id `circ_id` carrying the one control message
/// `msg`, sealed by `seal` (forward for the origin, backward for the last
/// hop). `None` if the message does not fit or sealing fails.
fn control_cell<T, E>(
    circ_id: u32,
    msg: &RelayMsg<'_>,
    seal: impl FnOnce(&mut [u8]) -> Result<T, E>,
) -> Option<[u8; CELL_LEN]> {
    let mut buf = [0u8; CELL_LEN];
    cell::write_header(&mut buf, circ_id, Command::Relay);
    let body = cell::body_mut(&mut buf);
    let mut w = RelayWriter::new(&mut body[..RELAY_PAYLOAD_LEN]);
    let pushed = w.push(msg).is_ok();
    w.finish();
    (pushed && seal(body).is_ok()).then_some(buf)
}
