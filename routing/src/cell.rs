//! Cells: the fixed-size unit that circuits carry (`docs/protocol.md, "Cells"`).
//!
//! Every cell is exactly [`CELL_LEN`] bytes on a link, header included:
//!
//! ```text
//! cell    = circ_id u32 (big-endian) | cmd u8 | body [1195]
//! PADDING = body ignored
//! CREATE  = handshake_type u8 | len u16 | noise msg1 [len] | zeros
//! CREATED = len u16 | noise msg2 [len] | zeros
//! DESTROY = reason u8 | zeros
//! RELAY   = payload [1179] | tag [16]        (onion-encrypted, see circuit)
//! payload = message* | zeros                  (a type-0 byte ends the messages)
//! message = type u8 | len u16 | data [len]
//! ```
//!
//! Relay messages ([`RelayMsg`]):
//!
//! ```text
//! 1 DATA_START    seq u64 | total_len u16 | first bytes of a packet
//! 2 DATA_CONT     next bytes of the packet in progress
//! 3 SENDME        tag [16] of the data cell that earned it
//! 4 EXTEND        node key [32] | handshake_type u8 | noise msg1
//! 5 EXTENDED      noise msg2
//! 6 EXTEND_FAILED reason u8
//! ```
//!
//! The types here are views over byte buffers, parsed once at the edge. The
//! parsers are total: they return an error for any input they do not accept,
//! never index past a length they have not checked, and never panic.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use crate::crypto::{KEY_LEN, RELAY_TAG_LEN};

/// Length of every cell on a link, header included.
pub const CELL_LEN: usize = 1200;
/// Length of the cell header: `circ_id u32 | cmd u8`.
pub const CELL_HEADER_LEN: usize = 5;
/// Length of a cell's body.
pub const CELL_BODY_LEN: usize = CELL_LEN - CELL_HEADER_LEN;
/// Length of a relay cell's message area (the body less the end-to-end tag).
pub const RELAY_PAYLOAD_LEN: usize = CELL_BODY_LEN - RELAY_TAG_LEN;
/// Length of a relay message's header: `type u8 | len u16`.
pub const MSG_HEADER_LEN: usize = 3;
/// Length of DATA_START's own fields before the packet bytes: `seq u64 | total_len u16`.
pub const DATA_START_FIELDS_LEN: usize = 10;
/// Most packet bytes one cell can carry (one DATA_CONT filling the payload).
pub const MAX_DATA_PER_CELL_BYTES: usize = RELAY_PAYLOAD_LEN - MSG_HEADER_LEN;
/// Length of the `len u16` prefix of a handshake in CREATE and CREATED.
const HANDSHAKE_LEN_FIELD: usize = 2;
/// Longest handshake message a CREATE cell can carry.
pub const MAX_CREATE_HANDSHAKE_LEN: usize = CELL_BODY_LEN - 1 - HANDSHAKE_LEN_FIELD;

/// The command byte of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Link padding; the body is ignored.
    Padding,
    /// Opens a circuit on this link: carries a hop's handshake message 1.
    Create,
    /// Answers CREATE: carries handshake message 2.
    Created,
    /// Carries onion-encrypted relay messages along a built circuit.
    Relay,
    /// Tears a circuit down hop by hop, with a reason.
    Destroy,
}

impl Command {
    /// The wire byte.
    pub fn to_u8(self) -> u8 {
        match self {
            Command::Padding => 0,
            Command::Create => 1,
            Command::Created => 2,
            Command::Relay => 3,
            Command::Destroy => 4,
        }
    }

    /// The command for a wire byte, if it is one.
    pub fn from_u8(b: u8) -> Option<Command> {
        Some(match b {
            0 => Command::Padding,
            1 => Command::Create,
            2 => Command::Created,
            3 => Command::Relay,
            4 => Command::Destroy,
            _ => return None,
        })
    }
}

/// Which handshake a CREATE or EXTEND carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeType {
    /// `Noise_NK_25519_ChaChaPoly_BLAKE2s`, to a relay hop.
    Nk,
    /// `Noise_IK_25519_ChaChaPoly_BLAKE2s`, to the destination (the last hop).
    Ik,
}

impl HandshakeType {
    /// The wire byte.
    pub fn to_u8(self) -> u8 {
        match self {
            HandshakeType::Nk => 1,
            HandshakeType::Ik => 2,
        }
    }

    /// The handshake type for a wire byte, if it is one.
    pub fn from_u8(b: u8) -> Option<HandshakeType> {
        match b {
            1 => Some(HandshakeType::Nk),
            2 => Some(HandshakeType::Ik),
            _ => None,
        }
    }
}

/// Why a circuit was destroyed or an extension failed. Carried in DESTROY and
/// EXTEND_FAILED; unknown bytes are kept as [`Reason::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No reason given.
    Unspecified,
    /// A peer broke the protocol (bad message, window overrun, bad SENDME).
    Protocol,
    /// A local failure that is not the peer's fault.
    Internal,
    /// An end closed the circuit on purpose (rotation, shutdown).
    Requested,
    /// A link on the path went down.
    LinkDown,
    /// An end-to-end tag did not verify: the cell was changed on the way.
    TagMismatch,
    /// The circuit was not built in time.
    Timeout,
    /// The hop has no live link to the node it was asked to extend to.
    NoLink,
    /// The hop refused: too many circuits, or an extension to itself or back
    /// to the previous hop.
    Refused,
    /// The next hop's handshake failed (wrong key, bad message).
    HandshakeFailed,
    /// No relay-crypto version in common.
    UnsupportedVersion,
    /// The hop refused a new circuit from the neighbour that asked: it owes
    /// the hop more than the agreement's cutoff (docs/architecture.md,
    /// "Ledgers").
    CutOff,
    /// The hop refused a new circuit: the neighbour that asked opened more
    /// than its agreement's circuit rate, or holds its share of open
    /// circuits already.
    TooManyCircuits,
    /// A reason byte this version does not know.
    Other(u8),
}

impl Reason {
    /// The wire byte.
    pub fn to_u8(self) -> u8 {
        match self {
            Reason::Unspecified => 0,
            Reason::Protocol => 1,
            Reason::Internal => 2,
            Reason::Requested => 3,
            Reason::LinkDown => 4,
            Reason::TagMismatch => 5,
            Reason::Timeout => 6,
            Reason::NoLink => 7,
            Reason::Refused => 8,
            Reason::HandshakeFailed => 9,
            Reason::UnsupportedVersion => 10,
            Reason::CutOff => 11,
            Reason::TooManyCircuits => 12,
            Reason::Other(b) => b,
        }
    }

    /// The reason for a wire byte (total: unknown bytes become `Other`).
    pub fn from_u8(b: u8) -> Reason {
        match b {
            0 => Reason::Unspecified,
            1 => Reason::Protocol,
            2 => Reason::Internal,
            3 => Reason::Requested,
            4 => Reason::LinkDown,
            5 => Reason::TagMismatch,
            6 => Reason::Timeout,
            7 => Reason::NoLink,
            8 => Reason::Refused,
            9 => Reason::HandshakeFailed,
            10 => Reason::UnsupportedVersion,
            11 => Reason::CutOff,
            12 => Reason::TooManyCircuits,
            b => Reason::Other(b),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Unspecified => f.write_str("unspecified"),
            Reason::Protocol => f.write_str("protocol violation"),
            Reason::Internal => f.write_str("internal error"),
            Reason::Requested => f.write_str("closed on request"),
            Reason::LinkDown => f.write_str("a link on the path went down"),
            Reason::TagMismatch => f.write_str("end-to-end tag mismatch (cell tampered)"),
            Reason::Timeout => f.write_str("build timed out"),
            Reason::NoLink => f.write_str("hop has no live link to the next node"),
            Reason::Refused => f.write_str("hop refused the circuit"),
            Reason::HandshakeFailed => f.write_str("hop handshake failed"),
            Reason::UnsupportedVersion => f.write_str("no relay-crypto version in common"),
            Reason::CutOff => f.write_str(
                "cut off: the neighbour that asked owes this hop more than their agreement's cutoff",
            ),
            Reason::TooManyCircuits => f.write_str(
                "too many circuits: the neighbour that asked is over their agreement's circuit rate",
            ),
            Reason::Other(b) => write!(f, "unknown reason {b}"),
        }
    }
}

/// Why bytes are not a valid cell or relay message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CellError {
    /// The command byte is not a known command.
    #[error("unknown cell command {0}")]
    UnknownCommand(u8),
    /// The handshake type byte is not a known handshake.
    #[error("unknown handshake type {0}")]
    UnknownHandshakeType(u8),
    /// A length field points past the end of its container.
    #[error("length {len} exceeds the {room} bytes available")]
    Truncated {
        /// The length the field claims.
        len: usize,
        /// The bytes actually left.
        room: usize,
    },
    /// A message's fields are shorter than its type requires.
    #[error("relay message type {msg_type} has a bad length {len}")]
    BadMessageLength {
        /// The message type.
        msg_type: u8,
        /// Its length field.
        len: usize,
    },
    /// There is no room left for what the writer was asked to add.
    #[error("no room: {need} bytes needed, {room} left")]
    NoRoom {
        /// Bytes needed.
        need: usize,
        /// Bytes left.
        room: usize,
    },
}

/// A parsed cell: a view over a [`CELL_LEN`] buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell<'a> {
    /// The circuit id, local to the link the cell travels on.
    pub circ_id: u32,
    /// The command and its body.
    pub body: CellBody<'a>,
}

/// The body of a [`Cell`], by command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellBody<'a> {
    /// Link padding.
    Padding,
    /// Opens a circuit with a hop handshake.
    Create {
        /// Which handshake.
        handshake_type: HandshakeType,
        /// Noise message 1.
        handshake: &'a [u8],
    },
    /// Answers CREATE.
    Created {
        /// Noise message 2.
        handshake: &'a [u8],
    },
    /// An onion-encrypted relay body (payload and tag).
    Relay(&'a [u8]),
    /// Tears a circuit down.
    Destroy {
        /// Why.
        reason: Reason,
    },
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*s.first()?, *s.get(1)?]))
}

/// The body of a cell buffer (everything after the header).
pub fn body(cell: &[u8; CELL_LEN]) -> &[u8] {
    &cell[CELL_HEADER_LEN..]
}

/// The body of a cell buffer, mutable.
pub fn body_mut(cell: &mut [u8; CELL_LEN]) -> &mut [u8] {
    &mut cell[CELL_HEADER_LEN..]
}

/// Reads the header: `(circ_id, command byte)`.
pub fn read_header(cell: &[u8; CELL_LEN]) -> (u32, u8) {
    let [a, b, c, d, cmd] = [cell[0], cell[1], cell[2], cell[3], cell[4]];
    (u32::from_be_bytes([a, b, c, d]), cmd)
}

/// Writes the header.
pub fn write_header(cell: &mut [u8; CELL_LEN], circ_id: u32, command: Command) {
    cell[..4].copy_from_slice(&circ_id.to_be_bytes());
    cell[4] = command.to_u8();
}

/// Rewrites only the circuit id (what a relay does when it switches a cell).
pub fn set_circ_id(cell: &mut [u8; CELL_LEN], circ_id: u32) {
    cell[..4].copy_from_slice(&circ_id.to_be_bytes());
}

/// Copies `src` into `b` at `at`, or [`CellError::NoRoom`] if it does not
/// fit (callers check the room first; this keeps the writers total).
fn put(b: &mut [u8], at: usize, src: &[u8]) -> Result<(), CellError> {
    let room = b.len().saturating_sub(at);
    at.checked_add(src.len())
        .and_then(|end| b.get_mut(at..end))
        .ok_or(CellError::NoRoom {
            need: src.len(),
            room,
        })?
        .copy_from_slice(src);
    Ok(())
}

fn length_prefixed(b: &[u8], at: usize) -> Result<&[u8], CellError> {
    let len = u16_at(b, at).ok_or(CellError::Truncated {
        len: HANDSHAKE_LEN_FIELD,
        room: b.len().saturating_sub(at),
    })? as usize;
    let start = at + HANDSHAKE_LEN_FIELD;
    b.get(start..start + len).ok_or(CellError::Truncated {
        len,
        room: b.len().saturating_sub(start),
    })
}

impl<'a> Cell<'a> {
    /// Parses a cell buffer.
    pub fn parse(cell: &'a [u8; CELL_LEN]) -> Result<Cell<'a>, CellError> {
        let (circ_id, cmd) = read_header(cell);
        let b = body(cell);
        let body = match Command::from_u8(cmd).ok_or(CellError::UnknownCommand(cmd))? {
            Command::Padding => CellBody::Padding,
            Command::Create => {
                let &t = b.first().ok_or(CellError::Truncated { len: 1, room: 0 })?;
                let handshake_type =
                    HandshakeType::from_u8(t).ok_or(CellError::UnknownHandshakeType(t))?;
                CellBody::Create {
                    handshake_type,
                    handshake: length_prefixed(b, 1)?,
                }
            }
            Command::Created => CellBody::Created {
                handshake: length_prefixed(b, 0)?,
            },
            Command::Relay => CellBody::Relay(b),
            Command::Destroy => CellBody::Destroy {
                reason: Reason::from_u8(
                    *b.first().ok_or(CellError::Truncated { len: 1, room: 0 })?,
                ),
            },
        };
        Ok(Cell { circ_id, body })
    }

    /// Writes the cell into `out`, zero-padding the rest. A relay body must be
    /// exactly [`CELL_BODY_LEN`] bytes.
    pub fn write(&self, out: &mut [u8; CELL_LEN]) -> Result<(), CellError> {
        let cmd = match self.body {
            CellBody::Padding => Command::Padding,
            CellBody::Create { .. } => Command::Create,
            CellBody::Created { .. } => Command::Created,
            CellBody::Relay(_) => Command::Relay,
            CellBody::Destroy { .. } => Command::Destroy,
        };
        // Check before writing anything, so a failed write leaves `out` as it was.
        let need = match self.body {
            CellBody::Create { handshake, .. } => 1 + HANDSHAKE_LEN_FIELD + handshake.len(),
            CellBody::Created { handshake } => HANDSHAKE_LEN_FIELD + handshake.len(),
            CellBody::Relay(r) if r.len() != CELL_BODY_LEN => {
                return Err(CellError::Truncated {
                    len: r.len(),
                    room: CELL_BODY_LEN,
                });
            }
            _ => 0,
        };
        if need > CELL_BODY_LEN {
            return Err(CellError::NoRoom {
                need,
                room: CELL_BODY_LEN,
            });
        }
        write_header(out, self.circ_id, cmd);
        let b = body_mut(out);
        b.fill(0);
        match self.body {
            CellBody::Padding => {}
            CellBody::Create {
                handshake_type,
                handshake,
            } => {
                put(b, 0, &[handshake_type.to_u8()])?;
                put(b, 1, &(handshake.len() as u16).to_be_bytes())?;
                put(b, 3, handshake)?;
            }
            CellBody::Created { handshake } => {
                put(b, 0, &(handshake.len() as u16).to_be_bytes())?;
                put(b, 2, handshake)?;
            }
            CellBody::Relay(r) => b.copy_from_slice(r),
            CellBody::Destroy { reason } => put(b, 0, &[reason.to_u8()])?,
        }
        Ok(())
    }
}

/// Relay message type bytes.
pub mod msg_type {
    /// Padding: ends the message list; the rest of the payload is ignored.
    pub const PADDING: u8 = 0;
    /// The first bytes of a packet, with its session sequence number and length.
    pub const DATA_START: u8 = 1;
    /// More bytes of the packet in progress.
    pub const DATA_CONT: u8 = 2;
    /// Flow control: the receiver took a window increment of cells.
    pub const SENDME: u8 = 3;
    /// Asks the last hop to extend the circuit to a named node.
    pub const EXTEND: u8 = 4;
    /// The new hop's handshake answer.
    pub const EXTENDED: u8 = 5;
    /// The extension failed, with a reason.
    pub const EXTEND_FAILED: u8 = 6;
}

/// One message inside a relay payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMsg<'a> {
    /// The first bytes of a packet.
    DataStart {
        /// The session sequence number of this packet.
        seq: u64,
        /// The packet's whole length.
        total_len: u16,
        /// The bytes carried here.
        data: &'a [u8],
    },
    /// More bytes of the packet in progress.
    DataCont {
        /// The bytes carried here.
        data: &'a [u8],
    },
    /// A window increment, authenticated by the tag of the data cell that
    /// triggered it (Tor proposal 289).
    Sendme {
        /// That cell's end-to-end tag.
        tag: [u8; RELAY_TAG_LEN],
    },
    /// Extend the circuit to `node` over a live link.
    Extend {
        /// The next node's identity key.
        node: [u8; KEY_LEN],
        /// Which handshake `handshake` is.
        handshake_type: HandshakeType,
        /// Noise message 1 for that node.
        handshake: &'a [u8],
    },
    /// The new hop's handshake answer.
    Extended {
        /// Noise message 2.
        handshake: &'a [u8],
    },
    /// The extension failed.
    ExtendFailed {
        /// Why.
        reason: Reason,
    },
    /// A type this version does not know; its length was valid.
    Unknown {
        /// The type byte.
        msg_type: u8,
        /// Its data.
        data: &'a [u8],
    },
}

impl RelayMsg<'_> {
    /// The message's type byte.
    pub fn msg_type(&self) -> u8 {
        match self {
            RelayMsg::DataStart { .. } => msg_type::DATA_START,
            RelayMsg::DataCont { .. } => msg_type::DATA_CONT,
            RelayMsg::Sendme { .. } => msg_type::SENDME,
            RelayMsg::Extend { .. } => msg_type::EXTEND,
            RelayMsg::Extended { .. } => msg_type::EXTENDED,
            RelayMsg::ExtendFailed { .. } => msg_type::EXTEND_FAILED,
            RelayMsg::Unknown { msg_type, .. } => *msg_type,
        }
    }

    /// Length of the message's data on the wire (without the 3-byte header).
    pub fn data_len(&self) -> usize {
        match self {
            RelayMsg::DataStart { data, .. } => DATA_START_FIELDS_LEN + data.len(),
            RelayMsg::DataCont { data } => data.len(),
            RelayMsg::Sendme { .. } => RELAY_TAG_LEN,
            RelayMsg::Extend { handshake, .. } => KEY_LEN + 1 + handshake.len(),
            RelayMsg::Extended { handshake } => handshake.len(),
            RelayMsg::ExtendFailed { .. } => 1,
            RelayMsg::Unknown { data, .. } => data.len(),
        }
    }

    /// Whether this message carries packet bytes (and so counts against the
    /// flow-control window).
    pub fn is_data(&self) -> bool {
        matches!(self, RelayMsg::DataStart { .. } | RelayMsg::DataCont { .. })
    }

    fn parse(t: u8, d: &[u8]) -> Result<RelayMsg<'_>, CellError> {
        let bad = || CellError::BadMessageLength {
            msg_type: t,
            len: d.len(),
        };
        Ok(match t {
            msg_type::DATA_START => {
                let (fields, data) = d
                    .split_first_chunk::<DATA_START_FIELDS_LEN>()
                    .ok_or_else(bad)?;
                let [s0, s1, s2, s3, s4, s5, s6, s7, l0, l1] = *fields;
                RelayMsg::DataStart {
                    seq: u64::from_be_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
                    total_len: u16::from_be_bytes([l0, l1]),
                    data,
                }
            }
            msg_type::DATA_CONT => RelayMsg::DataCont { data: d },
            msg_type::SENDME => RelayMsg::Sendme {
                tag: d.try_into().map_err(|_| bad())?,
            },
            msg_type::EXTEND => {
                let (node, rest) = d.split_first_chunk::<KEY_LEN>().ok_or_else(bad)?;
                let (&ht, handshake) = rest.split_first().ok_or_else(bad)?;
                RelayMsg::Extend {
                    node: *node,
                    handshake_type: HandshakeType::from_u8(ht)
                        .ok_or(CellError::UnknownHandshakeType(ht))?,
                    handshake,
                }
            }
            msg_type::EXTENDED => RelayMsg::Extended { handshake: d },
            msg_type::EXTEND_FAILED => match d {
                [r] => RelayMsg::ExtendFailed {
                    reason: Reason::from_u8(*r),
                },
                _ => return Err(bad()),
            },
            _ => RelayMsg::Unknown {
                msg_type: t,
                data: d,
            },
        })
    }
}

/// The messages of a decrypted relay payload, in order. Stops at the first
/// padding byte or the end; yields one error and then stops on a malformed
/// message.
#[derive(Debug, Clone)]
pub struct RelayMsgs<'a> {
    rest: &'a [u8],
}

/// Iterates the messages of a relay payload (normally [`RELAY_PAYLOAD_LEN`]
/// bytes, but any slice is accepted).
pub fn relay_messages(payload: &[u8]) -> RelayMsgs<'_> {
    RelayMsgs { rest: payload }
}

impl<'a> Iterator for RelayMsgs<'a> {
    type Item = Result<RelayMsg<'a>, CellError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&t, after) = self.rest.split_first()?;
        if t == msg_type::PADDING {
            self.rest = &[];
            return None;
        }
        let result = (|| {
            let len = u16_at(after, 0).ok_or(CellError::Truncated {
                len: 2,
                room: after.len(),
            })? as usize;
            let data = after.get(2..2 + len).ok_or(CellError::Truncated {
                len,
                room: after.len().saturating_sub(2),
            })?;
            let msg = RelayMsg::parse(t, data)?;
            Ok((msg, 2 + len))
        })();
        match result {
            Ok((msg, used)) => {
                self.rest = after.get(used..).unwrap_or(&[]);
                Some(Ok(msg))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// Packs relay messages into a payload buffer. [`RelayWriter::finish`]
/// zero-fills the rest (the padding).
#[derive(Debug)]
pub struct RelayWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> RelayWriter<'a> {
    /// A writer over `buf` (normally a relay cell's [`RELAY_PAYLOAD_LEN`] payload).
    pub fn new(buf: &'a mut [u8]) -> Self {
        RelayWriter { buf, pos: 0 }
    }

    /// Bytes still free.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.pos
    }

    /// Most data bytes a message can still carry after its header (and, for
    /// DATA_START, its fields).
    pub fn room_for_data(&self, msg_type: u8) -> usize {
        let fixed = MSG_HEADER_LEN
            + if msg_type == msg_type::DATA_START {
                DATA_START_FIELDS_LEN
            } else {
                0
            };
        self.remaining().saturating_sub(fixed)
    }

    /// Reserves a message of `msg_type` with `len` data bytes and returns the
    /// data area for the caller to fill.
    pub fn reserve(&mut self, msg_type: u8, len: usize) -> Result<&mut [u8], CellError> {
        let need = MSG_HEADER_LEN + len;
        if need > self.remaining() || len > u16::MAX as usize || msg_type == msg_type::PADDING {
            return Err(CellError::NoRoom {
                need,
                room: self.remaining(),
            });
        }
        let start = self.pos;
        let room = self.remaining();
        let no_room = CellError::NoRoom { need, room };
        let area = self.buf.get_mut(start..start + need).ok_or(no_room)?;
        let (head, data) = area
            .split_first_chunk_mut::<MSG_HEADER_LEN>()
            .ok_or(no_room)?;
        let [hi, lo] = (len as u16).to_be_bytes();
        *head = [msg_type, hi, lo];
        self.pos = start + need;
        Ok(data)
    }

    /// Reserves a DATA_START with `len` packet bytes; returns their area.
    pub fn reserve_data_start(
        &mut self,
        seq: u64,
        total_len: u16,
        len: usize,
    ) -> Result<&mut [u8], CellError> {
        let d = self.reserve(msg_type::DATA_START, DATA_START_FIELDS_LEN + len)?;
        put(d, 0, &seq.to_be_bytes())?;
        put(d, 8, &total_len.to_be_bytes())?;
        Ok(d.get_mut(DATA_START_FIELDS_LEN..).unwrap_or_default())
    }

    /// Appends a whole message.
    pub fn push(&mut self, msg: &RelayMsg<'_>) -> Result<(), CellError> {
        let d = self.reserve(msg.msg_type(), msg.data_len())?;
        match msg {
            RelayMsg::DataStart {
                seq,
                total_len,
                data,
            } => {
                put(d, 0, &seq.to_be_bytes())?;
                put(d, 8, &total_len.to_be_bytes())?;
                put(d, DATA_START_FIELDS_LEN, data)?;
            }
            RelayMsg::DataCont { data } => d.copy_from_slice(data),
            RelayMsg::Sendme { tag } => d.copy_from_slice(tag),
            RelayMsg::Extend {
                node,
                handshake_type,
                handshake,
            } => {
                put(d, 0, node)?;
                put(d, KEY_LEN, &[handshake_type.to_u8()])?;
                put(d, KEY_LEN + 1, handshake)?;
            }
            RelayMsg::Extended { handshake } => d.copy_from_slice(handshake),
            RelayMsg::ExtendFailed { reason } => put(d, 0, &[reason.to_u8()])?,
            RelayMsg::Unknown { data, .. } => d.copy_from_slice(data),
        }
        Ok(())
    }

    /// Zero-fills the rest of the buffer (padding) and returns the bytes used
    /// by messages.
    pub fn finish(self) -> usize {
        if let Some(rest) = self.buf.get_mut(self.pos..) {
            rest.fill(0);
        }
        self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_reason() -> impl Strategy<Value = Reason> {
        any::<u8>().prop_map(Reason::from_u8)
    }

    fn arb_hs_type() -> impl Strategy<Value = HandshakeType> {
        prop_oneof![Just(HandshakeType::Nk), Just(HandshakeType::Ik)]
    }

    /// Owned twin of `RelayMsg`, for generating.
    #[derive(Debug, Clone)]
    enum OwnedMsg {
        DataStart(u64, u16, Vec<u8>),
        DataCont(Vec<u8>),
        Sendme([u8; 16]),
        Extend([u8; 32], HandshakeType, Vec<u8>),
        Extended(Vec<u8>),
        ExtendFailed(Reason),
        Unknown(u8, Vec<u8>),
    }

    impl OwnedMsg {
        fn view(&self) -> RelayMsg<'_> {
            match self {
                OwnedMsg::DataStart(s, t, d) => RelayMsg::DataStart {
                    seq: *s,
                    total_len: *t,
                    data: d,
                },
                OwnedMsg::DataCont(d) => RelayMsg::DataCont { data: d },
                OwnedMsg::Sendme(t) => RelayMsg::Sendme { tag: *t },
                OwnedMsg::Extend(n, h, d) => RelayMsg::Extend {
                    node: *n,
                    handshake_type: *h,
                    handshake: d,
                },
                OwnedMsg::Extended(d) => RelayMsg::Extended { handshake: d },
                OwnedMsg::ExtendFailed(r) => RelayMsg::ExtendFailed { reason: *r },
                OwnedMsg::Unknown(t, d) => RelayMsg::Unknown {
                    msg_type: *t,
                    data: d,
                },
            }
        }
    }

    fn arb_msg() -> impl Strategy<Value = OwnedMsg> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..400);
        prop_oneof![
            (any::<u64>(), any::<u16>(), bytes())
                .prop_map(|(s, t, d)| OwnedMsg::DataStart(s, t, d)),
            bytes().prop_map(OwnedMsg::DataCont),
            any::<[u8; 16]>().prop_map(OwnedMsg::Sendme),
            (any::<[u8; 32]>(), arb_hs_type(), bytes())
                .prop_map(|(n, h, d)| OwnedMsg::Extend(n, h, d)),
            bytes().prop_map(OwnedMsg::Extended),
            arb_reason().prop_map(OwnedMsg::ExtendFailed),
            (7u8.., bytes()).prop_map(|(t, d)| OwnedMsg::Unknown(t, d)),
        ]
    }

    #[test]
    fn layout_constants() {
        assert_eq!(CELL_BODY_LEN, 1195);
        assert_eq!(RELAY_PAYLOAD_LEN, 1179);
        assert_eq!(MAX_DATA_PER_CELL_BYTES, 1176);
    }

    #[test]
    fn padding_ends_messages() {
        let mut p = [0u8; RELAY_PAYLOAD_LEN];
        let mut w = RelayWriter::new(&mut p);
        w.push(&RelayMsg::ExtendFailed {
            reason: Reason::NoLink,
        })
        .expect("push");
        assert_eq!(w.finish(), 4);
        let msgs: Vec<_> = relay_messages(&p).collect();
        assert_eq!(
            msgs,
            vec![Ok(RelayMsg::ExtendFailed {
                reason: Reason::NoLink
            })]
        );
    }

    #[test]
    fn writer_refuses_overflow() {
        let mut p = [0u8; 10];
        let mut w = RelayWriter::new(&mut p);
        assert!(w.reserve(msg_type::DATA_CONT, 8).is_err());
        assert!(w.reserve(msg_type::DATA_CONT, 7).is_ok());
        assert_eq!(w.remaining(), 0);
    }

    proptest! {
        #[test]
        fn cell_round_trip(
            circ_id in any::<u32>(),
            kind in 0u8..5,
            hs in proptest::collection::vec(any::<u8>(), 0..MAX_CREATE_HANDSHAKE_LEN),
            ht in arb_hs_type(),
            reason in arb_reason(),
            relay in proptest::collection::vec(any::<u8>(), CELL_BODY_LEN),
        ) {
            let body = match kind {
                0 => CellBody::Padding,
                1 => CellBody::Create { handshake_type: ht, handshake: &hs },
                2 => CellBody::Created { handshake: &hs },
                3 => CellBody::Relay(&relay),
                _ => CellBody::Destroy { reason },
            };
            let cell = Cell { circ_id, body };
            let mut buf = [0xeeu8; CELL_LEN];
            cell.write(&mut buf).expect("write");
            prop_assert_eq!(Cell::parse(&buf).expect("parse"), cell);
        }

        #[test]
        fn relay_messages_round_trip(msgs in proptest::collection::vec(arb_msg(), 0..8)) {
            let mut p = [0xeeu8; RELAY_PAYLOAD_LEN];
            let mut w = RelayWriter::new(&mut p);
            let mut written = Vec::new();
            for m in &msgs {
                if w.push(&m.view()).is_ok() {
                    written.push(m.view());
                }
            }
            w.finish();
            let parsed: Vec<_> = relay_messages(&p).collect::<Result<_, _>>().expect("parse");
            prop_assert_eq!(parsed, written);
        }

        #[test]
        fn arbitrary_cells_never_panic(bytes in proptest::collection::vec(any::<u8>(), CELL_LEN)) {
            let mut buf = [0u8; CELL_LEN];
            buf.copy_from_slice(&bytes);
            if let Ok(cell) = Cell::parse(&buf) {
                // What parses writes back to a buffer that parses the same.
                let mut again = [0u8; CELL_LEN];
                cell.write(&mut again).expect("write");
                prop_assert_eq!(Cell::parse(&again).expect("reparse"), cell);
                if let CellBody::Relay(r) = cell.body {
                    for m in relay_messages(r) { let _ = m; }
                }
            }
        }

        #[test]
        fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1300)) {
            let mut n = 0;
            for m in relay_messages(&bytes) {
                n += 1;
                prop_assert!(n <= bytes.len());
                if let Ok(m) = m {
                    // Every accepted message fits back into a payload.
                    let mut p = vec![0u8; MSG_HEADER_LEN + m.data_len()];
                    RelayWriter::new(&mut p).push(&m).expect("rewrite");
                }
            }
        }
    }
}
