//! Per-circuit state: hop keys and counters, the ends' flow control and
//! sessions.

use std::collections::VecDeque;
use std::time::Instant;

use super::{CIRCUIT_WINDOW_CELLS, LinkId, SENDME_INCREMENT_CELLS};
use crate::cell::{RELAY_PAYLOAD_LEN, Reason, RelayMsg, RelayWriter};
use crate::crypto::{CryptoError, HandshakeInitiator, HopKeys, RELAY_TAG_LEN};
use crate::session::{SessionRx, SessionTx};

/// SENDMEs that one window's worth of cells earns.
const SENDMES_PER_WINDOW: usize = (CIRCUIT_WINDOW_CELLS / SENDME_INCREMENT_CELLS) as usize;

/// One end of one link of a circuit: the link and the circuit id on it.
pub(super) type Leg = (LinkId, u32);

/// Which side of this node a leg is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// Toward the origin.
    In,
    /// Toward the destination.
    Out,
}

/// One hop's keys and its two implicit cell counters.
#[derive(Debug)]
pub(super) struct Hop {
    pub(super) keys: HopKeys,
    pub(super) fwd_ctr: u64,
    pub(super) bwd_ctr: u64,
}

impl Hop {
    pub(super) fn new(keys: HopKeys) -> Self {
        Hop {
            keys,
            fwd_ctr: 0,
            bwd_ctr: 0,
        }
    }

    /// Terminating end, backward: seals a payload and writes the tag after it.
    pub(super) fn seal_backward(
        &mut self,
        body: &mut [u8],
    ) -> Result<[u8; RELAY_TAG_LEN], CryptoError> {
        let (payload, tag_area) = body.split_at_mut(RELAY_PAYLOAD_LEN);
        let tag = self.keys.backward.seal(self.bwd_ctr, payload)?;
        self.bwd_ctr += 1;
        tag_area.copy_from_slice(&tag);
        Ok(tag)
    }

    /// Terminating end, forward: checks the tag and decrypts the payload.
    pub(super) fn open_forward(
        &mut self,
        body: &mut [u8],
    ) -> Result<[u8; RELAY_TAG_LEN], CryptoError> {
        let (payload, tag_area) = body.split_at_mut(RELAY_PAYLOAD_LEN);
        let tag: [u8; RELAY_TAG_LEN] =
            (&*tag_area).try_into().map_err(|_| CryptoError::Internal)?;
        let r = self.keys.forward.open(self.fwd_ctr, payload, &tag);
        self.fwd_ctr += 1;
        r.map(|()| tag)
    }

    /// Middle hop, forward: strips this hop's layer.
    pub(super) fn strip_forward(&mut self, body: &mut [u8]) {
        self.keys.forward.apply_layer(self.fwd_ctr, body);
        self.fwd_ctr += 1;
    }

    /// Middle hop, backward: adds this hop's layer.
    pub(super) fn add_backward(&mut self, body: &mut [u8]) {
        self.keys.backward.apply_layer(self.bwd_ctr, body);
        self.bwd_ctr += 1;
    }
}

/// Origin, forward: seals the payload for the last hop, then adds every
/// earlier hop's layer. Returns the tag.
pub(super) fn seal_forward(
    hops: &mut [Hop],
    body: &mut [u8],
) -> Result<[u8; RELAY_TAG_LEN], CryptoError> {
    let (last, rest) = hops.split_last_mut().ok_or(CryptoError::Internal)?;
    let (payload, tag_area) = body.split_at_mut(RELAY_PAYLOAD_LEN);
    let tag = last.keys.forward.seal(last.fwd_ctr, payload)?;
    last.fwd_ctr += 1;
    tag_area.copy_from_slice(&tag);
    for h in rest.iter_mut().rev() {
        h.keys.forward.apply_layer(h.fwd_ctr, body);
        h.fwd_ctr += 1;
    }
    Ok(tag)
}

/// Origin, backward: strips every layer but the last hop's, then checks the
/// last hop's tag and decrypts. Returns the tag.
pub(super) fn open_backward(
    hops: &mut [Hop],
    body: &mut [u8],
) -> Result<[u8; RELAY_TAG_LEN], CryptoError> {
    let (last, rest) = hops.split_last_mut().ok_or(CryptoError::Internal)?;
    for h in rest.iter_mut() {
        h.keys.backward.apply_layer(h.bwd_ctr, body);
        h.bwd_ctr += 1;
    }
    let (payload, tag_area) = body.split_at_mut(RELAY_PAYLOAD_LEN);
    let tag: [u8; RELAY_TAG_LEN] = (&*tag_area).try_into().map_err(|_| CryptoError::Internal)?;
    let r = last.keys.backward.open(last.bwd_ctr, payload, &tag);
    last.bwd_ctr += 1;
    r.map(|()| tag)
}

/// End-to-end flow control of one end, both ways (Tor's circuit window with
/// authenticated SENDMEs, proposal 289).
#[derive(Debug, Default)]
pub(super) struct FlowControl {
    /// Data cells this end may still send.
    package_window: u32,
    sent_data_cells: u64,
    /// Tags of every SENDME_INCREMENT-th data cell sent, oldest first: what
    /// the peer's SENDMEs must carry.
    expected_sendmes: VecDeque<[u8; RELAY_TAG_LEN]>,
    received_data_cells: u64,
    /// (received byte position, tag) of every SENDME_INCREMENT-th data cell
    /// received: its SENDME goes out once the reader has released that many
    /// bytes.
    marks: VecDeque<(u64, [u8; RELAY_TAG_LEN])>,
    /// SENDMEs to send.
    pending_sendmes: VecDeque<[u8; RELAY_TAG_LEN]>,
    sendmes_made: u64,
}

/// The data-plane state of an end (origin or destination): its session and
/// flow control.
#[derive(Debug)]
pub(super) struct Endpoint {
    /// The other end's identity.
    pub(super) peer: [u8; 32],
    pub(super) tx: SessionTx,
    pub(super) rx: SessionRx,
    fc: FlowControl,
    /// Whether the circuit is in the core's round-robin list of circuits with
    /// something to send.
    pub(super) in_dirty: bool,
}

/// What an end loses when its circuit closes.
pub(super) struct Lost {
    pub(super) packets: u64,
    pub(super) messages: u64,
}

/// What `Endpoint::fill` wrote.
pub(super) struct Filled {
    pub(super) any: bool,
    pub(super) data: bool,
}

impl Endpoint {
    pub(super) fn new(peer: [u8; 32], prefix: u8, send_queue_bytes: usize) -> Self {
        // The window bounds what an honest sender can put in flight; the
        // reassembly bound is one cell above it.
        let rx_bound = (CIRCUIT_WINDOW_CELLS as usize + 1) * RELAY_PAYLOAD_LEN;
        Endpoint {
            peer,
            tx: SessionTx::new(send_queue_bytes),
            rx: SessionRx::new(peer, prefix, rx_bound),
            fc: FlowControl {
                package_window: CIRCUIT_WINDOW_CELLS,
                // At most a window's worth of SENDMEs is ever outstanding;
                // allocate them with the circuit, not on the data path.
                expected_sendmes: VecDeque::with_capacity(SENDMES_PER_WINDOW),
                marks: VecDeque::with_capacity(SENDMES_PER_WINDOW),
                pending_sendmes: VecDeque::with_capacity(SENDMES_PER_WINDOW),
                ..FlowControl::default()
            },
            in_dirty: false,
        }
    }

    /// Whether a cell could be made now.
    pub(super) fn has_work(&self) -> bool {
        !self.fc.pending_sendmes.is_empty() || (self.fc.package_window > 0 && !self.tx.is_empty())
    }

    /// Data cells this end may still send.
    #[cfg(test)]
    pub(super) fn package_window(&self) -> u32 {
        self.fc.package_window
    }

    /// Writes pending SENDMEs and, if the window allows, queued packet bytes
    /// into a relay payload; pads the rest.
    pub(super) fn fill(&mut self, payload: &mut [u8]) -> Filled {
        let mut w = RelayWriter::new(payload);
        while let Some(tag) = self.fc.pending_sendmes.front() {
            if w.push(&RelayMsg::Sendme { tag: *tag }).is_err() {
                break;
            }
            self.fc.pending_sendmes.pop_front();
        }
        let data = self.fc.package_window > 0 && self.tx.write_data(&mut w);
        let any = w.written() > 0;
        w.finish();
        Filled { any, data }
    }

    /// Records a data cell sent with `tag`.
    pub(super) fn on_data_cell_sent(&mut self, tag: [u8; RELAY_TAG_LEN]) {
        self.fc.package_window = self.fc.package_window.saturating_sub(1);
        self.fc.sent_data_cells += 1;
        if self
            .fc
            .sent_data_cells
            .is_multiple_of(SENDME_INCREMENT_CELLS as u64)
        {
            self.fc.expected_sendmes.push_back(tag);
        }
    }

    /// Takes a SENDME from the peer.
    pub(super) fn on_sendme(&mut self, tag: &[u8; RELAY_TAG_LEN]) -> Result<(), Reason> {
        match self.fc.expected_sendmes.pop_front() {
            Some(t) if t == *tag => {
                self.fc.package_window += SENDME_INCREMENT_CELLS;
                Ok(())
            }
            _ => Err(Reason::Protocol),
        }
    }

    /// Records a data cell received with `tag`, after its messages were
    /// processed. Errs if the peer overran the window.
    pub(super) fn on_data_cell_received(&mut self, tag: [u8; RELAY_TAG_LEN]) -> Result<(), Reason> {
        self.fc.received_data_cells += 1;
        let allowed =
            CIRCUIT_WINDOW_CELLS as u64 + self.fc.sendmes_made * SENDME_INCREMENT_CELLS as u64;
        if self.fc.received_data_cells > allowed {
            return Err(Reason::Protocol);
        }
        if self
            .fc
            .received_data_cells
            .is_multiple_of(SENDME_INCREMENT_CELLS as u64)
        {
            let pos = self.rx.reassembler().received_bytes();
            self.fc.marks.push_back((pos, tag));
        }
        Ok(())
    }

    /// Turns marks whose bytes the reader has released into pending SENDMEs.
    pub(super) fn release_sendmes(&mut self) {
        let released = self.rx.reassembler().released_bytes();
        while let Some(&(pos, tag)) = self.fc.marks.front() {
            if pos > released {
                break;
            }
            self.fc.marks.pop_front();
            self.fc.pending_sendmes.push_back(tag);
            self.fc.sendmes_made += 1;
        }
    }

    /// Packets and messages lost if the circuit closed now: queued to send,
    /// and half received.
    pub(super) fn lost_on_close(&self) -> Lost {
        let messages = self.tx.queued_messages();
        let half_message = self.rx.message_in_progress();
        let half_packet = self.rx.reassembler().in_progress() && !half_message;
        Lost {
            packets: self.tx.queued_packets().saturating_sub(messages) as u64
                + u64::from(half_packet),
            messages: messages as u64 + u64::from(half_message),
        }
    }
}

/// The origin's state of a circuit it built.
#[derive(Debug)]
pub(super) struct Origin {
    pub(super) path: Vec<[u8; 32]>,
    /// A pooled prefix: every hop a relay, waiting for `extend_prefix`.
    pub(super) prefix: bool,
    pub(super) first: Leg,
    pub(super) hops: Vec<Hop>,
    /// The handshake with `path[hops.len()]`, while it runs.
    pub(super) pending: Option<HandshakeInitiator>,
    pub(super) deadline: Instant,
    pub(super) end: Endpoint,
}

impl Origin {
    pub(super) fn built(&self) -> bool {
        self.hops.len() == self.path.len()
    }
}

/// A relay's outgoing leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Not extended: this relay is the last hop so far.
    None,
    /// CREATE sent, CREATED not yet back. Still the last hop.
    Pending(Leg),
    /// Extended: cells are switched.
    Open(Leg),
}

/// A relay's state of a circuit.
#[derive(Debug)]
pub(super) struct Relay {
    pub(super) prev: Leg,
    pub(super) prev_key: [u8; 32],
    pub(super) next: Next,
    pub(super) next_key: Option<[u8; 32]>,
    pub(super) hop: Hop,
}

/// The destination's state of a circuit that ends here.
#[derive(Debug)]
pub(super) struct Destination {
    pub(super) prev: Leg,
    pub(super) prev_key: [u8; 32],
    pub(super) hop: Hop,
    pub(super) end: Endpoint,
}

/// This node's state of one circuit, by role.
#[derive(Debug)]
// The ends are boxed so that the many relay entries of a busy node stay small
// in the circuit table; relays stay inline (they are the switching hot path).
#[allow(clippy::large_enum_variant)]
pub(super) enum Role {
    Origin(Box<Origin>),
    Relay(Relay),
    Destination(Box<Destination>),
}

/// One circuit.
#[derive(Debug)]
pub(super) struct Circuit {
    pub(super) created: Instant,
    pub(super) role: Role,
    /// Closed, kept only until the reader takes its delivered packets.
    pub(super) closed: bool,
    pub(super) cells_in: u64,
    pub(super) cells_out: u64,
}

impl Circuit {
    pub(super) fn endpoint_mut(&mut self) -> Option<&mut Endpoint> {
        match &mut self.role {
            Role::Origin(o) => Some(&mut o.end),
            Role::Destination(d) => Some(&mut d.end),
            Role::Relay(_) => None,
        }
    }

    /// The legs this circuit holds in the switching table.
    pub(super) fn legs(&self) -> [Option<Leg>; 2] {
        match &self.role {
            Role::Origin(o) => [Some(o.first), None],
            Role::Relay(r) => [
                Some(r.prev),
                match r.next {
                    Next::None => None,
                    Next::Pending(l) | Next::Open(l) => Some(l),
                },
            ],
            Role::Destination(d) => [Some(d.prev), None],
        }
    }
}
