//! Circuits: telescoping onion paths from an origin to a destination
//! (`docs/protocol.md, "Circuits"`), as a sans-IO state machine.
//!
//! [`CircuitCore`] is one node's whole circuit layer: it originates circuits,
//! relays cells for others, and terminates circuits as a destination. It does
//! no I/O and reads no clock. The driver passes `now`, the link a cell came
//! on and the cell; it takes back cells to write (`poll_transmit`), packets
//! for the TUN (`poll_packet`), events (`poll_event`) and the next wake-up
//! (`poll_timeout`), as quinn-proto does.
//!
//! # Building
//!
//! The origin runs a Noise handshake with each hop in turn:
//! `Noise_NK_25519_ChaChaPoly_BLAKE2s` with each relay's static key (the X25519
//! form of its identity), and `Noise_IK` with the last hop, which is always the
//! destination node, so that the destination learns and authenticates the
//! origin and one AEAD is both the circuit's end-to-end tag and the session
//! (`docs/protocol.md, "Sessions"`). Message 1 goes in CREATE to the first hop and in an EXTEND
//! message to the current last hop, which sends CREATE over its live link to
//! the named node and answers EXTENDED. Message 1's payload offers
//! relay-crypto versions (a bitmask); message 2's payload carries the chosen
//! version (the highest both offer) and a fresh 32-byte hop secret from
//! which the hop's layer keys are derived (BLAKE2s, bound to the handshake
//! hash). Message 2 is encrypted under the ephemeral–ephemeral DH, so the keys
//! are forward secret.
//!
//! # Relay crypto
//!
//! See [`crate::crypto`]'s `LayerKey`: per hop and direction one stream-cipher
//! layer, nonce = an implicit 64-bit cell counter; the end that terminates a
//! cell checks the AEAD's tag (ChaCha20-Poly1305 in version 1, AES-256-GCM in
//! version 2, both through aws-lc-rs, whose keystream *is* that hop's layer,
//! so terminating costs one pass). Each hop negotiates its own version. A hop
//! terminates a forward cell exactly when it has no open outgoing leg for the
//! circuit: during building that is the current last hop, afterwards the
//! destination. Backward, only the last hop originates cells, and the origin
//! strips every layer and checks the last hop's tag. **Version 1 is
//! malleable**: two colluding relays on one path can tag a circuit, as in tor1.
//! A failed tag destroys the circuit, counts in
//! [`CircuitMetrics::tag_failures`] and raises [`CircuitEvent::TagFailure`].
//!
//! # What each hop can see
//!
//! | who | knows |
//! |---|---|
//! | origin | the whole path, every hop's keys |
//! | relay | the link neighbour before it and the one after it (by key), the circuit ids on both links, cell counts and timing. Not its position, not the origin, not the destination (unless a neighbour is one) |
//! | the hop before the destination | additionally that the next hop is the last: the EXTEND it forwards says `IK` |
//! | destination | the origin's identity (from IK), the previous hop, the packets |
//!
//! # Flow control and back-pressure
//!
//! Windows are end to end, in cells, both ways: a sender may have at most
//! [`CIRCUIT_WINDOW_CELLS`] data cells unacknowledged; the receiver sends a
//! SENDME after every [`SENDME_INCREMENT_CELLS`] data cells *once the packets
//! in them have been taken* by `poll_packet` (or dropped), so a slow reader
//! slows the sender. A SENDME carries the tag of the data cell that earned it
//! (Tor proposal 289) and a wrong one destroys the circuit. The ends queue
//! packets (bounded, [`CircuitConfig::send_queue_bytes`]) while the window is
//! closed and refuse more with [`SendError::QueueFull`], counted as a drop at
//! the origin's ingress.
//!
//! # Messages
//!
//! Besides IPv6 packets, the ends carry *messages*: opaque payloads of up to
//! [`crate::session::MAX_MESSAGE_LEN`] bytes from one node to the other, in
//! the same session stream, under the same window and queue bound
//! (`docs/protocol.md, "Sessions"`). [`CircuitCore::send_message`] queues
//! one; the receiving end takes it out of the stream as it completes and
//! keeps it, with the peer the handshake authenticated, for
//! [`CircuitCore::poll_message`] in one queue for the node, bounded by
//! [`CircuitConfig::inbox_messages`] and [`CircuitConfig::inbox_bytes`].
//! A message that finds that queue full is dropped and counted; it does not
//! hold up the packets behind it. Relays cannot tell messages from packets.
//!
//! **Relays never drop a cell**: they switch every cell they get. What waits
//! for a slow link is the driver's to hold, and the windows bound it: an
//! honest end keeps at most [`CIRCUIT_WINDOW_CELLS`] cells of a circuit in
//! flight, so no more of them can wait at any relay. The driver holds each
//! link's cells in a queue of its own, so a slow link does not stall
//! circuits on other links, and closes a whole circuit whose end ignores its
//! window (docs/architecture.md, "Tasks and data flow").

mod node;
mod state;

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

pub use node::CircuitCore;

use crate::cell::Reason;
use crate::crypto::CryptoError;

/// A link, as the driver names it. Local to one node.
pub type LinkId = u64;

/// A circuit as this node names it (never reused; never sent on the wire,
/// where circuits are named by per-link circuit ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CircuitId(pub u64);

impl std::fmt::Display for CircuitId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// End-to-end flow-control window: data cells a sender may have
/// unacknowledged (Tor's circuit window).
pub const CIRCUIT_WINDOW_CELLS: u32 = 1000;
/// Data cells acknowledged by one SENDME.
pub const SENDME_INCREMENT_CELLS: u32 = 100;
/// Default bound on the packet bytes an end queues while its window is closed.
pub const SEND_QUEUE_BYTES: usize = 512 * 1024;
/// Default bound on the messages received and not yet taken by
/// [`CircuitCore::poll_message`], for the whole node. The daemon takes them
/// every turn; only a peer that floods fills it.
pub const MAX_INBOX_MESSAGES: usize = 64;
/// Default bound on the payload bytes of those messages: 16 messages of the
/// longest kind ([`crate::session::MAX_MESSAGE_LEN`]), so that both bounds
/// matter (64 of the longest would be 1 MiB).
pub const MAX_INBOX_BYTES: usize = 256 * 1024;
/// Default time a circuit may take to build before it is abandoned.
pub const CIRCUIT_BUILD_TIMEOUT: Duration = Duration::from_secs(30);
/// Most hops a path may have, destination included.
pub const MAX_PATH_HOPS: usize = 8;
/// Default bound on circuits (of all roles) one node holds.
pub const MAX_CIRCUITS: usize = 65_536;
/// Default bound on circuits one neighbour holds open through this node
/// (those it created on its links here): an eighth of [`MAX_CIRCUITS`], so
/// no one neighbour takes the node's whole table.
pub const MAX_CIRCUITS_PER_NEIGHBOUR: usize = MAX_CIRCUITS / 8;
pub use crate::crypto::{RELAY_CRYPTO_V1, RELAY_CRYPTO_V2, relay_version_bit, relay_versions_here};

/// Local settings of a node's circuit layer. Protocol constants (cell size,
/// windows) are not settings: both ends must agree on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitConfig {
    /// Packet bytes an end queues per circuit while its window is closed.
    pub send_queue_bytes: usize,
    /// Time a circuit may take to build.
    pub build_timeout: Duration,
    /// Circuits (of all roles) this node holds at most; past it CREATE is
    /// refused.
    pub max_circuits: usize,
    /// Circuits one neighbour may hold open that it created here; past it
    /// its CREATE is refused with [`Reason::TooManyCircuits`].
    pub max_circuits_per_neighbour: usize,
    /// Messages received and not yet taken that the node keeps, at most;
    /// past it a message is dropped and counted
    /// ([`MessageCounters::inbox_full`]).
    pub inbox_messages: usize,
    /// Payload bytes of those messages, at most.
    pub inbox_bytes: usize,
    /// Relay-crypto versions this node offers and accepts, as the
    /// handshake's bitmask (bit `v - 1` for version `v`); of those both ends
    /// of a hop share, the highest is used. By default
    /// [`relay_versions_here`].
    pub relay_crypto_versions: u8,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        CircuitConfig {
            send_queue_bytes: SEND_QUEUE_BYTES,
            build_timeout: CIRCUIT_BUILD_TIMEOUT,
            max_circuits: MAX_CIRCUITS,
            max_circuits_per_neighbour: MAX_CIRCUITS_PER_NEIGHBOUR,
            inbox_messages: MAX_INBOX_MESSAGES,
            inbox_bytes: MAX_INBOX_BYTES,
            relay_crypto_versions: relay_versions_here(),
        }
    }
}

/// This node's part in a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitRole {
    /// This node built it and knows the whole path.
    Origin,
    /// This node switches its cells between two links.
    Relay,
    /// This node is its last hop and the other end of its session.
    Destination,
}

/// Something the driver should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CircuitEvent {
    /// An origin circuit is built; packets sent on it now flow.
    Built {
        /// The circuit.
        circuit: CircuitId,
        /// Its destination's identity.
        destination: [u8; 32],
    },
    /// A prefix ([`CircuitCore::build_prefix`]) is built and may be
    /// extended to a destination.
    PrefixBuilt {
        /// The circuit.
        circuit: CircuitId,
    },
    /// A circuit from `origin` ended here: this node is its destination.
    /// Replies to `origin` go with `send_packet` on `circuit`.
    Incoming {
        /// The circuit.
        circuit: CircuitId,
        /// The origin's identity, authenticated by the IK handshake.
        origin: [u8; 32],
    },
    /// A built circuit (or built prefix) ended (this node is its origin or
    /// destination). The driver may build another over a different path.
    Closed {
        /// The circuit.
        circuit: CircuitId,
        /// The other end's identity.
        peer: [u8; 32],
        /// Why.
        reason: Reason,
    },
    /// A circuit this node was building failed: the destination is
    /// unreachable over this path. The driver may try another path, or answer
    /// the app with ICMPv6 destination unreachable.
    Unreachable {
        /// The circuit.
        circuit: CircuitId,
        /// The destination it was meant for.
        destination: [u8; 32],
        /// Index in the path of the hop that could not be reached: the hop
        /// being extended to when the last hop answered EXTEND_FAILED or the
        /// build timed out, 0 when the link to the first hop went down.
        /// `None` when a DESTROY came back from inside the path (a link
        /// between two relays went down): the origin cannot tell where.
        failed_hop: Option<usize>,
        /// Why.
        reason: Reason,
    },
    /// An end-to-end tag did not verify here: a cell was changed on the way.
    /// The circuit is destroyed; the driver should log this.
    TagFailure {
        /// The circuit.
        circuit: CircuitId,
        /// This node's role in it.
        role: CircuitRole,
    },
}

/// A packet handed to the driver by [`CircuitCore::poll_packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The circuit it came on.
    pub circuit: CircuitId,
    /// The identity of the node that sent it (its IPv6 source is checked
    /// against this identity's address and /64).
    pub peer: [u8; 32],
    /// Its length in the caller's buffer.
    pub len: usize,
}

/// Why a circuit could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The path is empty.
    #[error("empty path")]
    EmptyPath,
    /// The path is longer than [`MAX_PATH_HOPS`].
    #[error("path of {0} hops is longer than {MAX_PATH_HOPS}")]
    PathTooLong(usize),
    /// A key in the path is not a valid Ed25519 public key.
    #[error("hop {0} of the path is not a valid node key")]
    InvalidKey(usize),
    /// A node appears twice in the path, or the path contains this node.
    #[error("hop {0} of the path repeats a node or is this node")]
    RepeatedNode(usize),
    /// There is no live link to the first hop.
    #[error("no live link to the first hop {}", hex::encode(.0))]
    NoLink([u8; 32]),
    /// This node holds [`CircuitConfig::max_circuits`] circuits already.
    #[error("too many circuits")]
    TooManyCircuits,
    /// No free circuit id on the first link.
    #[error("no free circuit id on the first link")]
    NoCircuitId,
    /// `extend_prefix` was given a circuit that is not a built prefix.
    #[error("not a built prefix")]
    NotAPrefix,
    /// The handshake could not be started.
    #[error("handshake: {0}")]
    Crypto(#[from] CryptoError),
}

/// Why a packet was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No open circuit with this id.
    #[error("no such circuit")]
    UnknownCircuit,
    /// This node only relays the circuit.
    #[error("this node is not an end of the circuit")]
    NotAnEnd,
    /// The packet is empty.
    #[error("empty packet")]
    Empty,
    /// The packet is longer than [`crate::session::MAX_PACKET_LEN`], or the
    /// message payload longer than [`crate::session::MAX_MESSAGE_LEN`].
    #[error("{0} bytes is too long")]
    TooLong(usize),
    /// The packet starts with [`crate::session::MESSAGE_TYPE_BYTE`] (0x00, no
    /// IPv6 packet does): it would arrive as a message, so it is refused.
    /// Only [`CircuitCore::send_message`] sends messages.
    #[error("a packet may not start with 0x00, the message type byte")]
    NotAPacket,
    /// The window is closed and the send queue is full: the packet is dropped
    /// (and counted in [`DropCounters::send_queue_full`]).
    #[error("send queue full")]
    QueueFull,
}

/// Packets dropped, by reason. Relays never drop; all of these happen at the
/// ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// At the receiving end: the IPv6 source is not the peer's address or /64.
    pub forged_source: u64,
    /// At the receiving end: the session sequence number was replayed.
    pub replayed: u64,
    /// At the receiving end: not an IPv6 packet.
    pub not_ipv6: u64,
    /// At the receiving end: malformed fragment sequences.
    pub malformed: u64,
    /// At the sending end's ingress: the send queue was full.
    pub send_queue_full: u64,
    /// Packets queued or half-received when their circuit closed (messages
    /// are counted in [`MessageCounters::lost_on_close`]).
    pub lost_on_close: u64,
    /// `poll_packet` was given a buffer shorter than the packet.
    pub buffer_too_small: u64,
}

/// Messages sent and received at this node's ends (`docs/protocol.md,
/// "Sessions"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageCounters {
    /// Messages accepted by [`CircuitCore::send_message`].
    pub sent: u64,
    /// Payload bytes of those messages.
    pub sent_bytes: u64,
    /// Messages received and kept for [`CircuitCore::poll_message`].
    pub received: u64,
    /// Payload bytes of those messages.
    pub received_bytes: u64,
    /// Dropped: messages queued to send, or half received, when their
    /// circuit closed or failed to build.
    pub lost_on_close: u64,
    /// Dropped: messages received while the node's message queue was full.
    pub inbox_full: u64,
    /// Dropped: messages received with a payload longer than
    /// [`crate::session::MAX_MESSAGE_LEN`].
    pub too_long: u64,
}

impl MessageCounters {
    /// Messages dropped, for every reason.
    pub fn dropped(&self) -> u64 {
        self.lost_on_close + self.inbox_full + self.too_long
    }
}

/// Counters of one node's circuit layer (for Prometheus and `umbra status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CircuitMetrics {
    /// Cells received from links.
    pub cells_in: u64,
    /// Cells handed to the driver to send.
    pub cells_out: u64,
    /// Cells switched from one link to another (relay role).
    pub cells_relayed: u64,
    /// Padding cells received.
    pub padding_cells_in: u64,
    /// Packets accepted by `send_packet`.
    pub packets_sent: u64,
    /// Bytes of those packets.
    pub packet_bytes_sent: u64,
    /// Packets handed out by `poll_packet`.
    pub packets_delivered: u64,
    /// Bytes of those packets.
    pub packet_bytes_delivered: u64,
    /// Origin circuits built.
    pub circuits_built: u64,
    /// CREATEs answered (relay and destination roles).
    pub circuits_accepted: u64,
    /// CREATEs refused for the neighbour's ledger: past its cutoff, or over
    /// its circuit rate ([`CircuitCore::refuse_create`]).
    pub circuits_refused: u64,
    /// Circuits closed, of any role.
    pub circuits_closed: u64,
    /// Origin circuits that failed to build.
    pub build_failures: u64,
    /// EXTEND_FAILED messages sent (relay) or received (origin).
    pub extend_failures: u64,
    /// End-to-end tags that did not verify.
    pub tag_failures: u64,
    /// Handshakes that did not verify.
    pub handshake_failures: u64,
    /// Protocol violations by a peer (bad message, bad SENDME, window overrun,
    /// bad circuit id).
    pub protocol_errors: u64,
    /// Cells for circuit ids this node does not know (late cells after a
    /// DESTROY, mostly).
    pub unknown_circuit_cells: u64,
    /// Cells on links the driver never announced with `link_up`.
    pub unknown_link_cells: u64,
    /// Relay messages of unknown types (skipped).
    pub unknown_messages: u64,
    /// Open circuits this node originated (gauge).
    pub origin_circuits: u64,
    /// Open circuits this node relays (gauge).
    pub relay_circuits: u64,
    /// Open circuits that end at this node (gauge).
    pub destination_circuits: u64,
    /// Dropped packets, by reason.
    pub drops: DropCounters,
    /// Messages sent, received and dropped.
    pub messages: MessageCounters,
}

/// What this node knows of one circuit (for `umbra status` and `umbra path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitInfo {
    /// The circuit.
    pub id: CircuitId,
    /// This node's role.
    pub role: CircuitRole,
    /// Whether it carries packets yet (relays: whether it is extended).
    pub built: bool,
    /// A pooled prefix not yet extended to a destination (origin only).
    pub prefix: bool,
    /// The whole path, origin only; empty elsewhere.
    pub path: Vec<[u8; 32]>,
    /// Hops with keys (origin only; equals `path.len()` when built).
    pub hops_built: usize,
    /// The link neighbour toward the origin (none at the origin).
    pub prev: Option<[u8; 32]>,
    /// The link neighbour toward the destination (none at the destination, or
    /// at a relay that is the last hop so far).
    pub next: Option<[u8; 32]>,
    /// The session peer: the destination at the origin, the origin at the
    /// destination; none at a relay.
    pub peer: Option<[u8; 32]>,
    /// The negotiated relay-crypto version of each hop with keys: one per
    /// hop at the origin, this node's own hop at a relay or destination.
    pub relay_crypto_versions: Vec<u8>,
    /// When this node created its state for the circuit.
    pub created: Instant,
    /// Cells received on this circuit.
    pub cells_in: u64,
    /// Cells sent on this circuit.
    pub cells_out: u64,
    /// Packets queued to send (ends only).
    pub queued_packets: usize,
}
