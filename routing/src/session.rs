//! Sessions: the end-to-end layer between two node addresses
//! (`docs/protocol.md, "Sessions"`).
//!
//! A session is the `Noise_IK` handshake of a circuit's last hop, which is
//! always the destination node: the destination learns and authenticates the
//! origin's identity, the origin authenticates the destination, and the one
//! AEAD of that hop is both the circuit's end-to-end tag and the session's
//! encryption. TCP flows inside survive circuit rotation because they are
//! addressed by the nodes' stable addresses, not by circuits.
//!
//! This module holds the packet side of a session, with no crypto and no I/O:
//! - [`SessionTx`] queues packets (bounded) and cuts them into DATA_START /
//!   DATA_CONT messages, so small packets share a cell and large ones span
//!   several;
//! - [`Reassembler`] joins those messages back into packets, in order, in a
//!   bounded buffer, and drops (and reports) malformed sequences;
//! - [`ReplayWindow`] drops a packet whose 64-bit sequence number was seen;
//! - [`SessionRx`] combines the two and drops a packet whose IPv6 source is
//!   not the peer's address or inside its /64.
//!
//! **Messages** travel in the same stream: a unit whose first byte is
//! [`MESSAGE_TYPE_BYTE`] (0x00) is a message, the rest its payload. An IPv6
//! packet always starts with version nibble 6, so the two never mix up.
//! [`SessionTx::push_message`] is the only way to queue one ([`SessionTx::push`]
//! refuses a packet that starts with 0x00), and [`SessionRx`] hands a
//! completed message back at once, without the source-address check: its
//! sender is the session's peer, whom the handshake authenticated.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::net::Ipv6Addr;

use crate::cell::{RelayWriter, msg_type};

/// Largest packet a session carries: the TUN's MTU ceiling (an IPv6 packet
/// without jumbograms).
pub const MAX_PACKET_LEN: usize = 65535;
/// Width of the replay window, in sequence numbers (16 words of 64 bits, as
/// boringtun's).
pub const REPLAY_WINDOW_BITS: u64 = 1024;
const REPLAY_WORDS: usize = (REPLAY_WINDOW_BITS / 64) as usize;
/// Length of a fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// The first byte of a message in a session's packet stream
/// (`docs/protocol.md, "Sessions"`). An IPv6 packet starts with its version,
/// 6, in the high nibble, so no packet starts with it.
pub const MESSAGE_TYPE_BYTE: u8 = 0x00;
/// The longest message payload, in bytes. A message is one unit of the
/// packet stream, so it must fit [`MAX_PACKET_LEN`] with its type byte; it
/// is kept far below that so that one message takes at most 14 cells (1.4 %
/// of the end-to-end window) and never holds up the packets queued behind
/// it for long. The messages it is for (endpoints for NAT traversal,
/// agreement proposals) take a few hundred bytes.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024;

const _: () = assert!(MAX_MESSAGE_LEN < MAX_PACKET_LEN);

/// A sliding window over 64-bit sequence numbers: accepts each number once,
/// and rejects numbers more than [`REPLAY_WINDOW_BITS`] behind the highest
/// seen.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// The highest number accepted, if any.
    highest: Option<u64>,
    bits: [u64; REPLAY_WORDS],
}

impl ReplayWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self::default()
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % REPLAY_WINDOW_BITS;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Whether `seq` is new; if it is, it is marked as seen.
    pub fn check_and_mark(&mut self, seq: u64) -> bool {
        match self.highest {
            None => {}
            Some(h) if seq > h => {
                let ahead = seq - h;
                if ahead >= REPLAY_WINDOW_BITS {
                    self.bits = [0; REPLAY_WORDS];
                } else {
                    // Clear the slots that the window slides over; they hold
                    // numbers a whole window older.
                    for s in h + 1..seq {
                        let (w, m) = Self::bit(s);
                        if let Some(word) = self.bits.get_mut(w) {
                            *word &= !m;
                        }
                    }
                }
            }
            Some(h) => {
                if h - seq >= REPLAY_WINDOW_BITS {
                    return false;
                }
                let (w, m) = Self::bit(seq);
                return match self.bits.get_mut(w) {
                    Some(word) if *word & m == 0 => {
                        *word |= m;
                        true
                    }
                    _ => false,
                };
            }
        }
        let (w, m) = Self::bit(seq);
        if let Some(word) = self.bits.get_mut(w) {
            *word |= m;
        }
        self.highest = Some(seq);
        true
    }
}

/// Why a send queue refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The packet is empty.
    #[error("empty packet")]
    Empty,
    /// The packet is longer than [`MAX_PACKET_LEN`].
    #[error("packet of {0} bytes is longer than {MAX_PACKET_LEN}")]
    TooLong(usize),
    /// The queue is full (the flow-control window is closed and the origin's
    /// bounded queue has filled).
    #[error("send queue full")]
    Full,
    /// A packet starts with [`MESSAGE_TYPE_BYTE`]: it would arrive as a
    /// message. Only [`SessionTx::push_message`] queues messages.
    #[error("a packet may not start with the message type byte 0x00")]
    MessageByte,
    /// A message payload is longer than [`MAX_MESSAGE_LEN`].
    #[error("message of {0} bytes is longer than {MAX_MESSAGE_LEN}")]
    MessageTooLong(usize),
}

/// The sending half of a session: a bounded FIFO of packets and messages,
/// cut into relay messages as cells are made. Sequence numbers are assigned
/// as units are first cut, from 0 up; packets and messages share them.
#[derive(Debug, Clone)]
pub struct SessionTx {
    bytes: VecDeque<u8>,
    lens: VecDeque<u16>,
    /// Bytes of the front unit already cut into messages.
    head_sent: usize,
    /// Whether the front unit, once its first byte is cut, is a message.
    head_is_message: bool,
    /// Messages among the queued units.
    queued_messages: usize,
    max_bytes: usize,
    next_seq: u64,
}

impl SessionTx {
    /// An empty queue holding at most `max_bytes` of packets.
    pub fn new(max_bytes: usize) -> Self {
        SessionTx {
            bytes: VecDeque::new(),
            lens: VecDeque::new(),
            head_sent: 0,
            head_is_message: false,
            queued_messages: 0,
            max_bytes,
            next_seq: 0,
        }
    }

    /// Queues a packet. One that starts with [`MESSAGE_TYPE_BYTE`] is
    /// refused: it would arrive as a message.
    pub fn push(&mut self, packet: &[u8]) -> Result<(), QueueError> {
        let Some(&first) = packet.first() else {
            return Err(QueueError::Empty);
        };
        if first == MESSAGE_TYPE_BYTE {
            return Err(QueueError::MessageByte);
        }
        self.push_unit(&[], packet)
    }

    /// Queues a message: [`MESSAGE_TYPE_BYTE`], then `payload` (0 to
    /// [`MAX_MESSAGE_LEN`] bytes). It shares the queue, its bound and the
    /// window with packets.
    pub fn push_message(&mut self, payload: &[u8]) -> Result<(), QueueError> {
        if payload.len() > MAX_MESSAGE_LEN {
            return Err(QueueError::MessageTooLong(payload.len()));
        }
        self.push_unit(&[MESSAGE_TYPE_BYTE], payload)?;
        self.queued_messages += 1;
        Ok(())
    }

    /// Queues `unit` as it is, whatever its first byte (tests of what a
    /// peer that breaks the rules can send).
    #[cfg(test)]
    pub(crate) fn push_raw(&mut self, unit: &[u8]) -> Result<(), QueueError> {
        self.push_unit(&[], unit)
    }

    /// Queues `head` followed by `rest` as one unit.
    fn push_unit(&mut self, head: &[u8], rest: &[u8]) -> Result<(), QueueError> {
        let total = head.len() + rest.len();
        let Ok(len) = u16::try_from(total) else {
            return Err(QueueError::TooLong(total));
        };
        if self.bytes.len() + total > self.max_bytes {
            return Err(QueueError::Full);
        }
        self.bytes.extend(head);
        self.bytes.extend(rest);
        self.lens.push_back(len);
        Ok(())
    }

    /// Whether no packet bytes wait.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Units waiting, packets and messages (including one partly sent).
    pub fn queued_packets(&self) -> usize {
        self.lens.len()
    }

    /// Messages waiting (including one partly sent).
    pub fn queued_messages(&self) -> usize {
        self.queued_messages
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The sequence number the next packet will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    #[cfg(test)]
    pub(crate) fn set_next_seq(&mut self, seq: u64) {
        self.next_seq = seq;
    }

    /// Cuts as many queued bytes as fit into `w` as DATA_START / DATA_CONT
    /// messages. Returns whether anything was written.
    pub fn write_data(&mut self, w: &mut RelayWriter<'_>) -> bool {
        let mut wrote = false;
        while let Some(&len) = self.lens.front() {
            let len = len as usize;
            let left = len - self.head_sent;
            let start = self.head_sent == 0;
            let kind = if start {
                msg_type::DATA_START
            } else {
                msg_type::DATA_CONT
            };
            let room = w.room_for_data(kind);
            if room == 0 {
                break;
            }
            let n = left.min(room);
            let area = if start {
                w.reserve_data_start(self.next_seq, len as u16, n)
            } else {
                w.reserve(msg_type::DATA_CONT, n)
            };
            let Ok(area) = area else { break };
            if start {
                self.head_is_message = self.bytes.front() == Some(&MESSAGE_TYPE_BYTE);
            }
            if !copy_front(&self.bytes, area) {
                break;
            }
            self.bytes.drain(..n);
            wrote = true;
            if start {
                self.next_seq += 1;
            }
            if n == left {
                self.lens.pop_front();
                self.head_sent = 0;
                if self.head_is_message {
                    self.queued_messages = self.queued_messages.saturating_sub(1);
                }
            } else {
                self.head_sent += n;
                break;
            }
        }
        wrote
    }
}

/// Why the reassembler dropped bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    /// DATA_CONT with no packet in progress.
    #[error("continuation without a start")]
    ContinuationWithoutStart,
    /// DATA_START while a packet is still in progress.
    #[error("start while a packet is in progress")]
    StartDuringPacket,
    /// A packet of length zero.
    #[error("zero-length packet")]
    ZeroLength,
    /// More bytes than the packet's announced length.
    #[error("more bytes than the announced length")]
    TooLong,
    /// The buffer bound would be exceeded.
    #[error("reassembly buffer full")]
    Overflow,
}

/// What a fragment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The packet in progress needs more bytes.
    Partial,
    /// A packet completed and waits to be popped.
    Complete,
    /// The bytes were consumed and thrown away (a packet being discarded).
    Discarded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Partial {
    Idle,
    Assembling { total: usize, got: usize },
    Discarding { left: usize },
}

/// Joins DATA_START / DATA_CONT fragments back into packets, in order, in one
/// bounded buffer. Links are in-order and relays never drop, so fragments of
/// one circuit arrive in sequence; anything else is malformed, is dropped and
/// reported, and never panics or grows the buffer past its bound.
#[derive(Debug, Clone)]
pub struct Reassembler {
    /// Complete packets, then the packet in progress.
    buf: VecDeque<u8>,
    /// Lengths of the complete packets.
    complete: VecDeque<u16>,
    partial: Partial,
    max_bytes: usize,
    received: u64,
    released: u64,
}

impl Reassembler {
    /// An empty reassembler holding at most `max_bytes` (complete packets and
    /// the one in progress).
    pub fn new(max_bytes: usize) -> Self {
        Reassembler {
            buf: VecDeque::new(),
            complete: VecDeque::new(),
            partial: Partial::Idle,
            max_bytes,
            received: 0,
            released: 0,
        }
    }

    /// Bytes held.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Complete packets waiting to be popped.
    pub fn ready(&self) -> usize {
        self.complete.len()
    }

    /// Whether a packet is in progress.
    pub fn in_progress(&self) -> bool {
        self.partial != Partial::Idle
    }

    /// Packet bytes received so far (all fragments, kept or not).
    pub fn received_bytes(&self) -> u64 {
        self.received
    }

    /// Packet bytes that have left: popped, dropped or discarded. Flow control
    /// credits the sender only for these, so a slow reader slows the sender.
    pub fn released_bytes(&self) -> u64 {
        self.released
    }

    fn drop_partial(&mut self) {
        if let Partial::Assembling { got, .. } = self.partial {
            self.buf.truncate(self.buf.len() - got);
            self.released += got as u64;
        }
        self.partial = Partial::Idle;
    }

    fn fail(&mut self, data_len: usize, e: ReassemblyError) -> Result<Progress, ReassemblyError> {
        self.drop_partial();
        self.released += data_len as u64;
        Err(e)
    }

    fn append(&mut self, data: &[u8]) -> Result<Progress, ReassemblyError> {
        let Partial::Assembling { total, got } = self.partial else {
            return self.fail(data.len(), ReassemblyError::ContinuationWithoutStart);
        };
        if got + data.len() > total {
            return self.fail(data.len(), ReassemblyError::TooLong);
        }
        if self.buf.len() + data.len() > self.max_bytes {
            return self.fail(data.len(), ReassemblyError::Overflow);
        }
        self.buf.extend(data);
        let got = got + data.len();
        if got == total {
            self.complete.push_back(total as u16);
            self.partial = Partial::Idle;
            Ok(Progress::Complete)
        } else {
            self.partial = Partial::Assembling { total, got };
            Ok(Progress::Partial)
        }
    }

    /// Takes the first fragment of a packet of `total_len` bytes.
    pub fn push_start(&mut self, total_len: u16, data: &[u8]) -> Result<Progress, ReassemblyError> {
        self.received += data.len() as u64;
        if self.partial != Partial::Idle {
            return self.fail(data.len(), ReassemblyError::StartDuringPacket);
        }
        if total_len == 0 {
            return self.fail(data.len(), ReassemblyError::ZeroLength);
        }
        self.partial = Partial::Assembling {
            total: total_len as usize,
            got: 0,
        };
        self.append(data)
    }

    /// Takes the first fragment of a packet that is to be thrown away (a
    /// replay): its bytes, and those of its continuations, are consumed and
    /// released at once.
    pub fn push_discarded_start(
        &mut self,
        total_len: u16,
        data: &[u8],
    ) -> Result<Progress, ReassemblyError> {
        self.received += data.len() as u64;
        if self.partial != Partial::Idle {
            return self.fail(data.len(), ReassemblyError::StartDuringPacket);
        }
        if data.len() > total_len as usize {
            return self.fail(data.len(), ReassemblyError::TooLong);
        }
        self.released += data.len() as u64;
        let left = total_len as usize - data.len();
        self.partial = if left == 0 {
            Partial::Idle
        } else {
            Partial::Discarding { left }
        };
        Ok(Progress::Discarded)
    }

    /// Takes the next fragment of the packet in progress.
    pub fn push_cont(&mut self, data: &[u8]) -> Result<Progress, ReassemblyError> {
        self.received += data.len() as u64;
        if let Partial::Discarding { left } = self.partial {
            if data.len() > left {
                return self.fail(data.len(), ReassemblyError::TooLong);
            }
            self.released += data.len() as u64;
            let left = left - data.len();
            self.partial = if left == 0 {
                Partial::Idle
            } else {
                Partial::Discarding { left }
            };
            return Ok(Progress::Discarded);
        }
        self.append(data)
    }

    /// Byte offset in `buf` of the most recently completed packet.
    fn last_complete_start(&self) -> Option<usize> {
        let len = *self.complete.back()? as usize;
        let partial = match self.partial {
            Partial::Assembling { got, .. } => got,
            _ => 0,
        };
        self.buf.len().checked_sub(partial + len)
    }

    /// Copies the first bytes of the most recently completed packet into
    /// `out`; returns how many (at most `out.len()`).
    pub fn peek_last_complete(&self, out: &mut [u8]) -> usize {
        let (Some(start), Some(&len)) = (self.last_complete_start(), self.complete.back()) else {
            return 0;
        };
        let n = out.len().min(len as usize);
        for (o, b) in out.iter_mut().zip(self.buf.range(start..start + n)) {
            *o = *b;
        }
        n
    }

    /// Length of the most recently completed packet, if any.
    pub fn last_complete_len(&self) -> Option<usize> {
        self.complete.back().map(|&l| l as usize)
    }

    /// Takes the most recently completed packet out, without its first
    /// `skip` bytes, and releases it. Called right after a completion, when
    /// nothing is in progress; `None` otherwise or if nothing is complete.
    pub fn take_last_complete(&mut self, skip: usize) -> Option<Vec<u8>> {
        if self.partial != Partial::Idle {
            return None;
        }
        let start = self.last_complete_start()?;
        let end = start + self.last_complete_len()?;
        let out: Vec<u8> = self
            .buf
            .range((start + skip).min(end)..end)
            .copied()
            .collect();
        self.drop_last_complete();
        Some(out)
    }

    /// The first byte of the packet in progress, once it has one.
    pub fn in_progress_first_byte(&self) -> Option<u8> {
        match self.partial {
            Partial::Assembling { got, .. } if got > 0 => {
                self.buf.get(self.buf.len().checked_sub(got)?).copied()
            }
            _ => None,
        }
    }

    /// Drops the most recently completed packet (it failed a check).
    pub fn drop_last_complete(&mut self) {
        if self.partial != Partial::Idle {
            // Only called right after a completion, when nothing is in progress.
            return;
        }
        if let Some(len) = self.complete.pop_back() {
            self.buf.truncate(self.buf.len() - len as usize);
            self.released += len as u64;
        }
    }

    /// Length of the next complete packet, if any.
    pub fn peek_len(&self) -> Option<usize> {
        self.complete.front().map(|&l| l as usize)
    }

    /// Pops the oldest complete packet into `out`: `Ok(len)`, or `Err(len)` if
    /// `out` is too short (the packet is dropped). `None` if nothing is ready.
    pub fn pop(&mut self, out: &mut [u8]) -> Option<Result<usize, usize>> {
        let len = self.complete.pop_front()? as usize;
        self.released += len as u64;
        let copied = out
            .get_mut(..len)
            .is_some_and(|dst| copy_front(&self.buf, dst));
        let result = if copied { Ok(len) } else { Err(len) };
        self.buf.drain(..len);
        Some(result)
    }
}

/// Why a session dropped a packet at the receiving end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RxDrop {
    /// Its sequence number was seen before (or is a window too old).
    #[error("replayed sequence number")]
    Replayed,
    /// Its IPv6 source is not the peer's address or inside the peer's /64.
    #[error("IPv6 source is not the session peer's address")]
    ForgedSource,
    /// It is not an IPv6 packet (too short, or version is not 6).
    #[error("not an IPv6 packet")]
    NotIpv6,
    /// The fragments were malformed.
    #[error("malformed fragments: {0}")]
    Malformed(#[from] ReassemblyError),
    /// A message's payload is longer than [`MAX_MESSAGE_LEN`].
    #[error("message longer than {MAX_MESSAGE_LEN} bytes")]
    MessageTooLong,
}

/// What a fragment did at a session's receiving end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The packet or message in progress needs more bytes.
    Partial,
    /// The bytes were consumed and thrown away (a replayed packet).
    Discarded,
    /// An IPv6 packet completed, passed its checks and waits for
    /// [`SessionRx::pop`].
    Packet,
    /// A message completed: its payload, without the type byte. It has left
    /// the session already (its bytes count as taken for flow control).
    Message(Vec<u8>),
}

/// The receiving half of a session: reassembly, the replay window, the
/// source-address check against the peer's identity, and messages taken out
/// of the packet stream.
#[derive(Debug, Clone)]
pub struct SessionRx {
    reassembler: Reassembler,
    replay: ReplayWindow,
    /// The peer's /128, derived once (the derivation is a bit loop).
    peer_address: Ipv6Addr,
    /// The first 8 bytes of the peer's /64.
    peer_subnet: [u8; 8],
    prefix: u8,
}

impl SessionRx {
    /// A session receiving from the node `peer`, under address `prefix`,
    /// buffering at most `max_bytes`.
    pub fn new(peer: [u8; 32], prefix: u8, max_bytes: usize) -> Self {
        let mut peer_subnet = [0u8; 8];
        peer_subnet.copy_from_slice(&crate::address::subnet_for_key(&peer, prefix).octets()[..8]);
        SessionRx {
            reassembler: Reassembler::new(max_bytes),
            replay: ReplayWindow::new(),
            peer_address: crate::address::address_for_key(&peer, prefix),
            peer_subnet,
            prefix,
        }
    }

    /// The reassembler (for counters).
    pub fn reassembler(&self) -> &Reassembler {
        &self.reassembler
    }

    /// Whether a message is half received (lost if the circuit closes now).
    pub fn message_in_progress(&self) -> bool {
        self.reassembler.in_progress_first_byte() == Some(MESSAGE_TYPE_BYTE)
    }

    /// Takes a DATA_START fragment.
    pub fn on_start(&mut self, seq: u64, total_len: u16, data: &[u8]) -> Result<Received, RxDrop> {
        if self.reassembler.in_progress() {
            // Malformed whatever the sequence number says.
            let p = self.reassembler.push_start(total_len, data)?;
            return self.check_complete(p);
        }
        if !self.replay.check_and_mark(seq) {
            self.reassembler.push_discarded_start(total_len, data)?;
            return Err(RxDrop::Replayed);
        }
        let p = self.reassembler.push_start(total_len, data)?;
        self.check_complete(p)
    }

    /// Takes a DATA_CONT fragment.
    pub fn on_cont(&mut self, data: &[u8]) -> Result<Received, RxDrop> {
        let p = self.reassembler.push_cont(data)?;
        self.check_complete(p)
    }

    fn check_complete(&mut self, p: Progress) -> Result<Received, RxDrop> {
        match p {
            Progress::Partial => return Ok(Received::Partial),
            Progress::Discarded => return Ok(Received::Discarded),
            Progress::Complete => {}
        }
        let mut head = [0u8; IPV6_HEADER_LEN];
        let n = self.reassembler.peek_last_complete(&mut head);
        if n > 0 && head[0] == MESSAGE_TYPE_BYTE {
            // A message: no source check, its sender is the peer.
            let len = self.reassembler.last_complete_len().unwrap_or(0);
            if len > 1 + MAX_MESSAGE_LEN {
                self.reassembler.drop_last_complete();
                return Err(RxDrop::MessageTooLong);
            }
            return match self.reassembler.take_last_complete(1) {
                Some(payload) => Ok(Received::Message(payload)),
                // Not reached: nothing is in progress right after a
                // completion. Never leave a message among the packets.
                None => {
                    self.reassembler.drop_last_complete();
                    Err(RxDrop::NotIpv6)
                }
            };
        }
        if n < IPV6_HEADER_LEN || head[0] >> 4 != 6 {
            self.reassembler.drop_last_complete();
            return Err(RxDrop::NotIpv6);
        }
        let mut src = [0u8; 16];
        src.copy_from_slice(&head[8..24]);
        // `address::address_belongs_to`, with the peer's addresses cached.
        let ok = if src[0] == self.prefix {
            Ipv6Addr::from(src) == self.peer_address
        } else {
            src[0] == self.prefix | 1 && src[..8] == self.peer_subnet
        };
        if !ok {
            self.reassembler.drop_last_complete();
            return Err(RxDrop::ForgedSource);
        }
        Ok(Received::Packet)
    }

    /// Pops the oldest complete packet; see [`Reassembler::pop`].
    pub fn pop(&mut self, out: &mut [u8]) -> Option<Result<usize, usize>> {
        self.reassembler.pop(out)
    }
}

/// Copies the first `dst.len()` bytes of `q` into `dst`; false (and `dst`
/// untouched) if `q` holds fewer.
fn copy_front(q: &VecDeque<u8>, dst: &mut [u8]) -> bool {
    let (a, b) = q.as_slices();
    let from_a = dst.len().min(a.len());
    let (dst_a, dst_b) = dst.split_at_mut(from_a);
    match (a.get(..from_a), b.get(..dst_b.len())) {
        (Some(src_a), Some(src_b)) => {
            dst_a.copy_from_slice(src_a);
            dst_b.copy_from_slice(src_b);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::{RELAY_PAYLOAD_LEN, RelayMsg, relay_messages};
    use proptest::prelude::*;

    /// Writes one relay payload of data from `tx` and feeds it to `rx`,
    /// passing each packet that completes to `done`.
    fn one_cell(
        tx: &mut SessionTx,
        rx: &mut Reassembler,
        buf: &mut [u8],
        mut done: impl FnMut(&[u8]),
    ) {
        let mut payload = [0u8; RELAY_PAYLOAD_LEN];
        let mut w = RelayWriter::new(&mut payload);
        assert!(tx.write_data(&mut w));
        w.finish();
        for m in relay_messages(&payload) {
            let p = match m.expect("parse") {
                RelayMsg::DataStart {
                    total_len, data, ..
                } => rx.push_start(total_len, data),
                RelayMsg::DataCont { data } => rx.push_cont(data),
                other => panic!("unexpected {other:?}"),
            };
            if p.expect("fragment") == Progress::Complete {
                let n = rx.pop(buf).expect("ready").expect("fits");
                done(&buf[..n]);
            }
        }
    }

    /// Cuts `packets` through a `SessionTx` into payloads and feeds them to a
    /// reassembler; returns what comes out.
    fn through(packets: &[Vec<u8>]) -> (Vec<Vec<u8>>, usize) {
        let mut tx = SessionTx::new(usize::MAX);
        for p in packets {
            // Raw units: these tests are about cutting and joining bytes.
            tx.push_raw(p).expect("push");
        }
        let mut rx = Reassembler::new(1 << 20);
        let mut out = Vec::new();
        let mut cells = 0;
        let mut buf = vec![0u8; MAX_PACKET_LEN];
        while !tx.is_empty() {
            one_cell(&mut tx, &mut rx, &mut buf, |p| out.push(p.to_vec()));
            cells += 1;
        }
        assert_eq!(rx.buffered_bytes(), 0);
        assert_eq!(rx.received_bytes(), rx.released_bytes());
        (out, cells)
    }

    #[test]
    fn small_packets_share_a_cell() {
        let packets: Vec<Vec<u8>> = (1..=20u8).map(|i| vec![i; 40]).collect();
        let (out, cells) = through(&packets);
        assert_eq!(out, packets);
        assert_eq!(cells, 1);
    }

    #[test]
    fn largest_packet_spans_cells() {
        let p: Vec<u8> = (0..MAX_PACKET_LEN).map(|i| (i * 7) as u8).collect();
        let (out, cells) = through(std::slice::from_ref(&p));
        assert_eq!(out, vec![p]);
        assert_eq!(
            cells,
            MAX_PACKET_LEN.div_ceil(crate::cell::MAX_DATA_PER_CELL_BYTES)
        );
    }

    #[test]
    fn every_size_round_trips() {
        // Every size 1..=65535: packet n is a window of a fixed pattern, so
        // each differs from its neighbours without building 2 GB of vectors.
        let pattern: Vec<u8> = (0..2 * MAX_PACKET_LEN).map(|i| (i % 251) as u8).collect();
        let packet = |n: usize| &pattern[n % 1021..n % 1021 + n];
        let mut tx = SessionTx::new(usize::MAX);
        let mut rx = Reassembler::new(1 << 20);
        let mut buf = vec![0u8; MAX_PACKET_LEN];
        let mut next_out = 1;
        let mut next_in = 1;
        while next_out <= MAX_PACKET_LEN {
            while next_in <= MAX_PACKET_LEN && tx.queued_bytes() < 1 << 18 {
                tx.push_raw(packet(next_in)).expect("push");
                next_in += 1;
            }
            one_cell(&mut tx, &mut rx, &mut buf, |p| {
                assert!(p == packet(next_out), "packet of size {next_out}");
                next_out += 1;
            });
        }
        assert!(tx.is_empty());
        assert_eq!(rx.received_bytes(), rx.released_bytes());
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::new();
        assert!(w.check_and_mark(0));
        assert!(!w.check_and_mark(0));
        assert!(w.check_and_mark(5));
        assert!(w.check_and_mark(3));
        assert!(!w.check_and_mark(3));
        assert!(w.check_and_mark(2000));
        assert!(!w.check_and_mark(5), "a window too old");
        assert!(w.check_and_mark(2000 - 1023));
        assert!(!w.check_and_mark(2000 - 1024));
        assert!(w.check_and_mark(u64::MAX));
        assert!(!w.check_and_mark(u64::MAX));
    }

    #[test]
    fn queue_is_bounded() {
        let mut tx = SessionTx::new(100);
        assert_eq!(tx.push(&[]), Err(QueueError::Empty));
        assert_eq!(tx.push(&[1; 65536]), Err(QueueError::TooLong(65536)));
        tx.push(&[1; 60]).expect("fits");
        assert_eq!(tx.push(&[1; 41]), Err(QueueError::Full));
        tx.push(&[1; 40]).expect("fits");
    }

    #[test]
    fn malformed_sequences_are_dropped() {
        let mut r = Reassembler::new(1000);
        assert_eq!(
            r.push_cont(b"x"),
            Err(ReassemblyError::ContinuationWithoutStart)
        );
        assert_eq!(r.push_start(10, b"abc"), Ok(Progress::Partial));
        assert_eq!(
            r.push_start(3, b"abc"),
            Err(ReassemblyError::StartDuringPacket)
        );
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.push_start(2, b"abc"), Err(ReassemblyError::TooLong));
        assert_eq!(r.push_start(0, b""), Err(ReassemblyError::ZeroLength));
        assert_eq!(r.push_start(2000, &[0; 900]), Ok(Progress::Partial));
        assert_eq!(r.push_cont(&[0; 200]), Err(ReassemblyError::Overflow));
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.received_bytes(), r.released_bytes());
    }

    fn ipv6(src: Ipv6Addr, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x60;
        p[8..24].copy_from_slice(&src.octets());
        p
    }

    #[test]
    fn session_checks_source_and_replay() {
        let peer = crate::Identity::generate().public();
        let other = crate::Identity::generate().public();
        let prefix = crate::address::DEFAULT_PREFIX;
        let mut rx = SessionRx::new(peer, prefix, 1 << 16);
        let good = ipv6(crate::address_for_key(&peer, prefix), 60);
        let mut in_subnet = crate::subnet_for_key(&peer, prefix).octets();
        in_subnet[15] = 9;
        let sub = ipv6(Ipv6Addr::from(in_subnet), 60);
        let bad = ipv6(crate::address_for_key(&other, prefix), 60);
        assert_eq!(rx.on_start(0, 60, &good), Ok(Received::Packet));
        assert_eq!(rx.on_start(1, 60, &sub), Ok(Received::Packet));
        assert_eq!(rx.on_start(2, 60, &bad), Err(RxDrop::ForgedSource));
        assert_eq!(rx.on_start(1, 60, &good), Err(RxDrop::Replayed));
        assert_eq!(rx.on_start(3, 10, &good[..10]), Err(RxDrop::NotIpv6));
        // A replayed packet spanning fragments is consumed whole.
        assert_eq!(rx.on_start(0, 60, &good[..30]), Err(RxDrop::Replayed));
        assert_eq!(rx.on_cont(&good[30..]), Ok(Received::Discarded));
        assert_eq!(rx.reassembler().ready(), 2);
        let mut out = [0u8; 100];
        assert_eq!(rx.pop(&mut out), Some(Ok(60)));
        assert_eq!(&out[..60], &good[..]);
        assert_eq!(rx.pop(&mut out[..10]), Some(Err(60)));
        assert_eq!(rx.pop(&mut out), None);
    }

    /// What a session stream carries, in the order it was queued.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Unit {
        Packet(Vec<u8>),
        Message(Vec<u8>),
    }

    /// Queues `units` on a `SessionTx` from `peer`, cuts them into payloads
    /// and feeds them to a `SessionRx`; returns what comes out, packets
    /// popped as soon as they complete, and the receiver.
    fn through_session(peer: [u8; 32], units: &[Unit]) -> (Vec<Unit>, SessionRx) {
        let mut tx = SessionTx::new(usize::MAX);
        for u in units {
            match u {
                Unit::Packet(p) => tx.push(p).expect("packet"),
                Unit::Message(m) => tx.push_message(m).expect("message"),
            }
        }
        assert_eq!(
            tx.queued_messages(),
            units
                .iter()
                .filter(|u| matches!(u, Unit::Message(_)))
                .count()
        );
        let mut rx = SessionRx::new(peer, crate::address::DEFAULT_PREFIX, 1 << 20);
        let mut out = Vec::new();
        let mut buf = vec![0u8; MAX_PACKET_LEN];
        while !tx.is_empty() {
            let mut payload = [0u8; RELAY_PAYLOAD_LEN];
            let mut w = RelayWriter::new(&mut payload);
            assert!(tx.write_data(&mut w));
            w.finish();
            for m in relay_messages(&payload) {
                let r = match m.expect("parse") {
                    RelayMsg::DataStart {
                        seq,
                        total_len,
                        data,
                    } => rx.on_start(seq, total_len, data),
                    RelayMsg::DataCont { data } => rx.on_cont(data),
                    other => panic!("unexpected {other:?}"),
                };
                match r.expect("fragment") {
                    Received::Packet => {
                        let n = rx.pop(&mut buf).expect("ready").expect("fits");
                        out.push(Unit::Packet(buf[..n].to_vec()));
                    }
                    Received::Message(m) => out.push(Unit::Message(m)),
                    Received::Partial | Received::Discarded => {}
                }
            }
        }
        assert_eq!(tx.queued_messages(), 0);
        (out, rx)
    }

    #[test]
    fn messages_and_packets_share_the_stream() {
        let peer = crate::Identity::from_seed(&[3; 32]).public();
        let prefix = crate::address::DEFAULT_PREFIX;
        let from_peer = crate::address_for_key(&peer, prefix);
        let units = vec![
            Unit::Packet(ipv6(from_peer, 100)),
            Unit::Message(Vec::new()),
            Unit::Message(b"endpoint 198.51.100.7:443".to_vec()),
            Unit::Packet(ipv6(from_peer, 3000)),
            Unit::Message((0..MAX_MESSAGE_LEN).map(|i| (i % 253) as u8).collect()),
            Unit::Packet(ipv6(from_peer, 41)),
        ];
        let (out, rx) = through_session(peer, &units);
        assert_eq!(out, units);
        let r = rx.reassembler();
        assert_eq!((r.buffered_bytes(), r.ready()), (0, 0));
        assert_eq!(
            r.received_bytes(),
            r.released_bytes(),
            "messages release their bytes"
        );
    }

    #[test]
    fn a_packet_cannot_be_a_message() {
        let mut tx = SessionTx::new(1 << 20);
        assert_eq!(tx.push(&[0x00; 60]), Err(QueueError::MessageByte));
        assert_eq!(tx.push(&[0x00]), Err(QueueError::MessageByte));
        assert!(tx.is_empty());
        assert_eq!(
            tx.push_message(&vec![1; MAX_MESSAGE_LEN + 1]),
            Err(QueueError::MessageTooLong(MAX_MESSAGE_LEN + 1))
        );
        tx.push_message(&vec![1; MAX_MESSAGE_LEN]).expect("fits");
        tx.push_message(&[]).expect("empty payload");
        assert_eq!(tx.queued_messages(), 2);
        // A message counts against the queue's bound like a packet.
        let mut small = SessionTx::new(10);
        small
            .push_message(&[7; 9])
            .expect("10 bytes with its type byte");
        assert_eq!(small.push_message(&[]), Err(QueueError::Full));
    }

    #[test]
    fn messages_are_counted_until_wholly_cut() {
        let mut tx = SessionTx::new(1 << 20);
        tx.push_message(&[9; 3000]).expect("message");
        tx.push(&[0x60; 50]).expect("packet");
        let mut payload = [0u8; RELAY_PAYLOAD_LEN];
        let mut cut = |tx: &mut SessionTx| {
            let mut w = RelayWriter::new(&mut payload);
            tx.write_data(&mut w);
            w.finish();
        };
        cut(&mut tx);
        // Its type byte has gone out; the message is still queued.
        assert_eq!((tx.queued_packets(), tx.queued_messages()), (2, 1));
        cut(&mut tx);
        assert_eq!((tx.queued_packets(), tx.queued_messages()), (2, 1));
        cut(&mut tx);
        assert_eq!((tx.queued_packets(), tx.queued_messages()), (0, 0));
    }

    #[test]
    fn over_long_and_half_received_messages() {
        let peer = crate::Identity::from_seed(&[4; 32]).public();
        let mut rx = SessionRx::new(peer, crate::address::DEFAULT_PREFIX, 1 << 20);
        // A peer that sends a longer message than this node takes.
        let long = vec![0u8; MAX_MESSAGE_LEN + 2];
        assert_eq!(
            rx.on_start(0, long.len() as u16, &long[..1000]),
            Ok(Received::Partial)
        );
        assert!(rx.message_in_progress());
        let mut r = Ok(Received::Partial);
        for chunk in long[1000..].chunks(1000) {
            r = rx.on_cont(chunk);
        }
        assert_eq!(r, Err(RxDrop::MessageTooLong));
        assert!(!rx.message_in_progress());
        let re = rx.reassembler();
        assert_eq!((re.buffered_bytes(), re.ready()), (0, 0));
        assert_eq!(re.received_bytes(), re.released_bytes());
        // The longest message that may be sent is taken.
        let longest = vec![0u8; MAX_MESSAGE_LEN + 1];
        assert_eq!(
            rx.on_start(1, longest.len() as u16, &longest),
            Ok(Received::Message(vec![0; MAX_MESSAGE_LEN]))
        );
        // A message replayed is dropped as a packet would be.
        assert_eq!(rx.on_start(1, 1, &[0]), Err(RxDrop::Replayed));
        // A packet half received is not a message.
        let src = crate::address_for_key(&peer, crate::address::DEFAULT_PREFIX);
        assert_eq!(
            rx.on_start(2, 100, &ipv6(src, 100)[..50]),
            Ok(Received::Partial)
        );
        assert!(!rx.message_in_progress());
    }

    proptest! {
        #[test]
        fn any_message_round_trips(
            payload in proptest::collection::vec(any::<u8>(), 0..=MAX_MESSAGE_LEN),
            before in 0usize..3,
        ) {
            let peer = crate::Identity::from_seed(&[5; 32]).public();
            let src = crate::address_for_key(&peer, crate::address::DEFAULT_PREFIX);
            let mut units: Vec<Unit> = (0..before).map(|i| Unit::Packet(ipv6(src, 40 + 700 * i))).collect();
            units.push(Unit::Message(payload));
            let (out, _) = through_session(peer, &units);
            prop_assert_eq!(out, units);
        }

        #[test]
        fn source_check_is_address_belongs_to(peer in any::<[u8; 32]>(), src in any::<[u8; 16]>(), prefix in any::<u8>()) {
            let mut rx = SessionRx::new(peer, prefix, 1 << 16);
            let mut packet = [0u8; 40];
            packet[0] = 0x60;
            // Aim half the cases at the peer's own /64 or /128.
            let mut src = src;
            if src[15] & 1 == 0 {
                src[..8].copy_from_slice(&crate::subnet_for_key(&peer, prefix).octets()[..8]);
            }
            if src[15] & 2 == 0 {
                src = crate::address_for_key(&peer, prefix).octets();
            }
            packet[8..24].copy_from_slice(&src);
            let expected = crate::address::address_belongs_to(&Ipv6Addr::from(src), &peer, prefix);
            let got = rx.on_start(0, 40, &packet);
            prop_assert_eq!(got.is_ok(), expected, "{:?}", got);
        }

        #[test]
        fn packets_round_trip(sizes in proptest::collection::vec(1usize..=MAX_PACKET_LEN, 1..6), seed in any::<u8>()) {
            let packets: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(k, &n)| (0..n).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(k as u8)).collect())
                .collect();
            let (out, _) = through(&packets);
            prop_assert_eq!(out, packets);
        }

        /// Arbitrary fragments, many of them messages (first byte 0x00), at a
        /// session's receiving end: nothing panics, the buffer keeps its
        /// bound, no message is longer than the limit, and every byte is
        /// accounted for.
        #[test]
        fn arbitrary_session_fragments_are_total(
            ops in proptest::collection::vec(
                (0u8..3, 0u64..8, (0u8..3, any::<u16>()), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..1200)),
                0..64,
            )
        ) {
            let bound = 1 << 16;
            let peer = crate::Identity::from_seed(&[6; 32]).public();
            let mut rx = SessionRx::new(peer, crate::address::DEFAULT_PREFIX, bound);
            let mut out = vec![0u8; MAX_PACKET_LEN];
            let mut message_bytes = 0u64;
            for (op, seq, (kind, total), message, mut data) in ops {
                if message && !data.is_empty() {
                    data[0] = MESSAGE_TYPE_BYTE;
                }
                // Any total; a whole unit in one fragment; or a total at the
                // message limit (1 + MAX_MESSAGE_LEN) and just past it.
                let total = match kind {
                    0 => total,
                    1 => data.len() as u16,
                    _ => (1 + MAX_MESSAGE_LEN as u16).wrapping_add(total % 3),
                };
                let r = match op {
                    0 => rx.on_start(seq, total, &data),
                    1 => rx.on_cont(&data),
                    _ => { let _ = rx.pop(&mut out); Ok(Received::Partial) }
                };
                if let Ok(Received::Message(m)) = r {
                    prop_assert!(m.len() <= MAX_MESSAGE_LEN);
                    message_bytes += 1 + m.len() as u64;
                }
                let re = rx.reassembler();
                prop_assert!(re.buffered_bytes() <= bound);
                prop_assert!(re.released_bytes() <= re.received_bytes());
            }
            while rx.pop(&mut out).is_some() {}
            let re = rx.reassembler();
            prop_assert!(message_bytes <= re.released_bytes());
            prop_assert_eq!(re.released_bytes() + re.buffered_bytes() as u64, re.received_bytes());
        }

        /// The in-suite twin of the `reassembly` fuzz target: arbitrary
        /// fragment sequences never panic, never exceed the bound, and account
        /// for every byte.
        #[test]
        fn arbitrary_fragments_are_total(
            ops in proptest::collection::vec((0u8..4, any::<u16>(), proptest::collection::vec(any::<u8>(), 0..1200)), 0..64)
        ) {
            let bound = 4096;
            let mut r = Reassembler::new(bound);
            let mut out = vec![0u8; MAX_PACKET_LEN];
            for (op, total, data) in ops {
                let _ = match op {
                    0 => r.push_start(total, &data),
                    1 => r.push_cont(&data),
                    2 => r.push_discarded_start(total, &data),
                    _ => { let _ = r.pop(&mut out[..total as usize % 2048]); Ok(Progress::Partial) }
                };
                prop_assert!(r.buffered_bytes() <= bound);
                prop_assert!(r.released_bytes() <= r.received_bytes());
            }
            while r.pop(&mut out).is_some() {}
            // Discarded bytes are released as they arrive; what is left is
            // the packet in progress.
            prop_assert_eq!(r.released_bytes() + r.buffered_bytes() as u64, r.received_bytes());
        }
    }
}
