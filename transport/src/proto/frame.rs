//! Link framing (`docs/protocol.md, "Link framing"`): `len u16 | type u8 | payload`,
//! where `len` counts the type byte and the payload.
//!
//! - [`FrameDecoder`] takes received bytes in any split and yields whole
//!   frames, skipping padding and (counting them) unknown types.
//! - [`FrameEncoder`] queues frames and hands out coalesced write buffers.
//!   Its first few buffers each start with a random-length padding frame,
//!   and every later buffer under [`PADDED_FLUSH_BELOW_LEN`] that empties
//!   the queue ends with one, so no TLS record size repeats with the cell
//!   size: a lone cell is a 1206–1461-byte write, never a constant 1203
//!   (the sender rules of `docs/protocol.md, "Link framing"`).
//!
//! Cells are opaque here: a frame carries exactly [`CELL_LEN`] bytes from the
//! routing core and back, uninterpreted.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use rand_core::RngCore;

/// The size of every cell on a link, header included (`docs/protocol.md, "Cells"`).
pub const CELL_LEN: usize = 1200;

/// Bytes before a frame's payload: `len u16 | type u8`.
pub const FRAME_HEADER_LEN: usize = 3;

/// Length of the `len` field, in bytes.
const FRAME_LEN_FIELD_LEN: usize = 2;

/// The largest frame payload, in bytes (`len` is a `u16` and counts the type
/// byte too).
pub const FRAME_PAYLOAD_MAX_LEN: usize = u16::MAX as usize - 1;

/// The largest frame on the wire, header included, in bytes.
pub const FRAME_WIRE_MAX_LEN: usize = FRAME_HEADER_LEN + FRAME_PAYLOAD_MAX_LEN;

/// The most bytes a [`FrameDecoder`] buffers. A reader that pops every whole
/// frame before pushing again never reaches it with chunks of up to
/// [`FRAME_WIRE_MAX_LEN`] bytes.
pub const DECODER_BUFFER_MAX_LEN: usize = 2 * FRAME_WIRE_MAX_LEN;

/// The fewest flushes a new [`FrameEncoder`] pads.
pub const PADDED_FLUSHES_MIN: u32 = 4;

/// The most flushes a new [`FrameEncoder`] pads.
pub const PADDED_FLUSHES_MAX: u32 = 16;

/// The longest payload of an automatic padding frame, in bytes. Its length is
/// drawn uniformly from 0 to this.
pub const PADDING_PAYLOAD_MAX_LEN: usize = 255;

/// A flush shorter than this, in bytes, that empties the queue ends with a
/// padding frame (on every flush, not only the first few). Without it a
/// quiet link writes exactly `k × 1203` bytes for a burst of `k` cells, a
/// record size that repeats; with the link writer's 2–16 KiB writes, every
/// burst of up to 13 cells ends in such a flush, so the bound is one full
/// write. Larger flushes are already cut at random sizes. The cost is at
/// most `FRAME_HEADER_LEN + PADDING_PAYLOAD_MAX_LEN` bytes per flush
/// (130.5 on average).
pub const PADDED_FLUSH_BELOW_LEN: usize = 16 * 1024;

/// The shortest interval between keepalive frames.
pub const LINK_KEEPALIVE_MIN: Duration = Duration::from_secs(15);

/// The longest interval between keepalive frames. Below typical NAT
/// timeouts (`docs/protocol.md, "Link framing"`).
pub const LINK_KEEPALIVE_MAX: Duration = Duration::from_secs(25);

/// Length of the token a [`FrameType::Ping`] carries and its
/// [`FrameType::Pong`] echoes, in bytes.
pub const PING_TOKEN_LEN: usize = 8;

/// The least the decoder and the encoder grow their buffer by, in bytes.
/// Frames split off a buffer share it, so while any is alive the buffer
/// cannot be reused and growing it means a new allocation: growing by this
/// much at once makes that one allocation per 64 KiB of frames, not one per
/// read or per flush.
const BUFFER_GROWTH_LEN: usize = 64 * 1024;

/// Makes room for `additional` more bytes in `buf`, growing it by at least
/// [`BUFFER_GROWTH_LEN`] when it must grow.
fn reserve(buf: &mut BytesMut, additional: usize) {
    if buf.capacity() - buf.len() < additional {
        buf.reserve(additional.max(BUFFER_GROWTH_LEN));
    }
}

/// The token of a ping and of the pong that answers it.
pub type PingToken = [u8; PING_TOKEN_LEN];

/// The kinds of frame this version knows. Any other type byte is skipped by
/// the receiver and counted, so later versions can add kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Random bytes that the receiver discards.
    Padding = 0x00,
    /// One cell of exactly [`CELL_LEN`] bytes.
    Cell = 0x01,
    /// Link-level control messages (opaque here).
    LinkControl = 0x02,
    /// A signed graph record being flooded (opaque here).
    GraphRecord = 0x03,
    /// Ledger counters (opaque here).
    Ledger = 0x04,
    /// An empty frame that keeps the link and NAT mappings alive.
    Keepalive = 0x05,
    /// A keepalive that asks for an echo: a [`PING_TOKEN_LEN`]-byte token
    /// that the receiver sends back in a [`FrameType::Pong`], so the sender
    /// measures the link's round-trip time. A peer that does not know the
    /// type skips it as unknown; its bytes still keep the link alive.
    Ping = 0x06,
    /// The answer to a [`FrameType::Ping`]: the same token.
    Pong = 0x07,
    /// Bytes of a relayed stream: a link between two other nodes that this
    /// link carries for them (`proto::relay`; opaque here).
    Relay = 0x08,
}

impl FrameType {
    /// The type for a wire byte, or `None` for a type this version does not
    /// know.
    pub fn from_byte(b: u8) -> Option<FrameType> {
        Some(match b {
            0x00 => FrameType::Padding,
            0x01 => FrameType::Cell,
            0x02 => FrameType::LinkControl,
            0x03 => FrameType::GraphRecord,
            0x04 => FrameType::Ledger,
            0x05 => FrameType::Keepalive,
            0x06 => FrameType::Ping,
            0x07 => FrameType::Pong,
            0x08 => FrameType::Relay,
            _ => return None,
        })
    }

    /// The wire byte of this type.
    pub fn to_byte(self) -> u8 {
        self as u8
    }
}

/// A received frame. Payloads borrow the decoder's buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A cell of exactly [`CELL_LEN`] bytes, for the routing core.
    Cell(Bytes),
    /// A link control message.
    LinkControl(Bytes),
    /// A graph record.
    GraphRecord(Bytes),
    /// Ledger counters.
    Ledger(Bytes),
    /// A keepalive.
    Keepalive,
    /// A keepalive that asks for a [`Frame::Pong`] with the same token.
    Ping(PingToken),
    /// The echo of a [`Frame::Ping`]'s token.
    Pong(PingToken),
    /// Bytes of a relayed stream (`proto::relay`).
    Relay(Bytes),
}

impl Frame {
    /// This frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Cell(_) => FrameType::Cell,
            Frame::LinkControl(_) => FrameType::LinkControl,
            Frame::GraphRecord(_) => FrameType::GraphRecord,
            Frame::Ledger(_) => FrameType::Ledger,
            Frame::Keepalive => FrameType::Keepalive,
            Frame::Ping(_) => FrameType::Ping,
            Frame::Pong(_) => FrameType::Pong,
            Frame::Relay(_) => FrameType::Relay,
        }
    }

    /// This frame's payload (empty for a keepalive, the token for a ping or
    /// pong).
    pub fn payload(&self) -> &[u8] {
        match self {
            Frame::Cell(b)
            | Frame::LinkControl(b)
            | Frame::GraphRecord(b)
            | Frame::Ledger(b)
            | Frame::Relay(b) => b,
            Frame::Keepalive => &[],
            Frame::Ping(t) | Frame::Pong(t) => t,
        }
    }

    /// Bytes this frame takes on the link: its payload and the
    /// [`FRAME_HEADER_LEN`]-byte header.
    pub fn wire_len(&self) -> usize {
        FRAME_HEADER_LEN + self.payload().len()
    }
}

/// A framing error. Any of these from the decoder means the peer broke the
/// protocol, and the link should close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame's `len` was 0, so it has no type byte.
    #[error("link frame has length 0")]
    EmptyFrame,
    /// A cell frame's payload was not [`CELL_LEN`] bytes.
    #[error("cell frame has {0} bytes, not {CELL_LEN}")]
    BadCellLength(usize),
    /// A keepalive frame had a payload.
    #[error("keepalive frame has a {0}-byte payload")]
    KeepaliveNotEmpty(usize),
    /// A ping or pong frame's payload was not [`PING_TOKEN_LEN`] bytes.
    #[error("ping or pong frame has {0} bytes, not {PING_TOKEN_LEN}")]
    BadPingLength(usize),
    /// The decoder would buffer more than [`DECODER_BUFFER_MAX_LEN`] bytes.
    #[error("link frame decoder buffer is full; pop frames before pushing more")]
    BufferFull,
    /// A payload to send is over [`FRAME_PAYLOAD_MAX_LEN`] bytes.
    #[error("frame payload of {0} bytes is over the maximum")]
    PayloadTooLong(usize),
}

/// Checks what both sides require of a frame's payload length.
fn check_payload(ty: FrameType, len: usize) -> Result<(), FrameError> {
    match ty {
        FrameType::Cell if len != CELL_LEN => Err(FrameError::BadCellLength(len)),
        FrameType::Keepalive if len != 0 => Err(FrameError::KeepaliveNotEmpty(len)),
        FrameType::Ping | FrameType::Pong if len != PING_TOKEN_LEN => {
            Err(FrameError::BadPingLength(len))
        }
        _ if len > FRAME_PAYLOAD_MAX_LEN => Err(FrameError::PayloadTooLong(len)),
        _ => Ok(()),
    }
}

/// The token of a ping or pong payload that [`check_payload`] passed.
fn token(payload: &[u8]) -> Result<PingToken, FrameError> {
    payload
        .try_into()
        .map_err(|_| FrameError::BadPingLength(payload.len()))
}

/// Turns received bytes into frames.
///
/// Push bytes as they arrive ([`FrameDecoder::push`]), then call
/// [`FrameDecoder::next_frame`] until it returns `Ok(None)`. Never panics;
/// buffers at most [`DECODER_BUFFER_MAX_LEN`] bytes.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    unknown_frames: u64,
    padding_frames: u64,
    padding_bytes: u64,
    cover_frames: u64,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Appends received bytes. Fails, buffering nothing, if that would hold
    /// more than [`DECODER_BUFFER_MAX_LEN`] bytes.
    pub fn push(&mut self, data: &[u8]) -> Result<(), FrameError> {
        if self.buf.len().saturating_add(data.len()) > DECODER_BUFFER_MAX_LEN {
            return Err(FrameError::BufferFull);
        }
        reserve(&mut self.buf, data.len());
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next whole frame, or `Ok(None)` if more bytes are needed. Padding
    /// and unknown frame types are skipped here (and counted).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            let Some(&len_bytes) = self.buf.first_chunk::<FRAME_LEN_FIELD_LEN>() else {
                return Ok(None);
            };
            let len = usize::from(u16::from_be_bytes(len_bytes));
            if len == 0 {
                return Err(FrameError::EmptyFrame);
            }
            if self.buf.len() < FRAME_LEN_FIELD_LEN + len {
                return Ok(None);
            }
            // Present: the length check above covers the type byte.
            let Some(&type_byte) = self.buf.get(FRAME_LEN_FIELD_LEN) else {
                return Ok(None);
            };
            let payload_len = len - 1;
            let ty = FrameType::from_byte(type_byte);
            if let Some(ty) = ty {
                check_payload(ty, payload_len)?;
            }
            self.buf.advance(FRAME_HEADER_LEN);
            let payload = self.buf.split_to(payload_len).freeze();
            return Ok(Some(match ty {
                Some(FrameType::Cell) => Frame::Cell(payload),
                Some(FrameType::LinkControl) => Frame::LinkControl(payload),
                Some(FrameType::GraphRecord) => Frame::GraphRecord(payload),
                Some(FrameType::Ledger) => Frame::Ledger(payload),
                Some(FrameType::Keepalive) => Frame::Keepalive,
                Some(FrameType::Ping) => Frame::Ping(token(&payload)?),
                Some(FrameType::Pong) => Frame::Pong(token(&payload)?),
                Some(FrameType::Relay) => Frame::Relay(payload),
                Some(FrameType::Padding) => {
                    self.padding_frames += 1;
                    self.padding_bytes += (FRAME_HEADER_LEN + payload_len) as u64;
                    if payload_len == CELL_LEN {
                        self.cover_frames += 1;
                    }
                    continue;
                }
                None => {
                    self.unknown_frames += 1;
                    continue;
                }
            }));
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Frames of unknown type skipped so far.
    pub fn unknown_frames(&self) -> u64 {
        self.unknown_frames
    }

    /// Padding frames skipped so far.
    pub fn padding_frames(&self) -> u64 {
        self.padding_frames
    }

    /// Bytes of the padding frames skipped so far, headers included.
    pub fn padding_bytes(&self) -> u64 {
        self.padding_bytes
    }

    /// Of [`FrameDecoder::padding_frames`], those the size of a cell frame: the link
    /// padding of `anonymity = "strong"` (`proto::padding`), as opposed to the short
    /// padding the encoder adds to writes.
    pub fn cover_frames(&self) -> u64 {
        self.cover_frames
    }
}

/// Queues frames and hands out coalesced write buffers.
///
/// The driver calls [`FrameEncoder::queue`] for each frame, then
/// [`FrameEncoder::flush`] for one contiguous buffer of at most its chosen
/// size, and writes that buffer in one call (one TLS record or a few). A
/// buffer may end in the middle of a frame; the next one continues it.
///
/// Padding, as a link uses it ([`FrameEncoder::new`]):
/// - while [`FrameEncoder::padded_flushes_left`] is above zero, every flush
///   that starts on a frame boundary begins with a padding frame of random
///   length;
/// - after that, every flush shorter than [`PADDED_FLUSH_BELOW_LEN`] that
///   empties the queue ends with a padding frame of random length (if
///   `max_len` leaves room for one).
///
/// The queue is not bounded here: the driver applies back-pressure from
/// [`FrameEncoder::pending_len`].
#[derive(Debug)]
pub struct FrameEncoder {
    pending: BytesMut,
    /// Bytes of a frame that an earlier flush cut, at the front of `pending`.
    cut_frame_left: usize,
    padded_flushes_left: u32,
    /// Whether short flushes that empty the queue end with padding.
    pad_short_flushes: bool,
    /// Padding frames queued or added so far, and their bytes.
    padding_frames: u64,
    padding_bytes: u64,
}

impl FrameEncoder {
    /// An encoder for a link: it pads its first 4–16 flushes (drawn from
    /// `rng`) and every later short flush.
    pub fn new<R: RngCore + ?Sized>(rng: &mut R) -> FrameEncoder {
        let span = u64::from(PADDED_FLUSHES_MAX - PADDED_FLUSHES_MIN) + 1;
        let extra = u32::try_from(rng.next_u64() % span).unwrap_or(0);
        FrameEncoder {
            pad_short_flushes: true,
            ..FrameEncoder::with_padded_flushes(PADDED_FLUSHES_MIN + extra)
        }
    }

    /// An encoder that pads exactly its first `padded_flushes` flushes and
    /// nothing else, so flush sizes are predictable (tests, fuzzing).
    pub fn with_padded_flushes(padded_flushes: u32) -> FrameEncoder {
        FrameEncoder {
            pending: BytesMut::new(),
            cut_frame_left: 0,
            padded_flushes_left: padded_flushes,
            pad_short_flushes: false,
            padding_frames: 0,
            padding_bytes: 0,
        }
    }

    /// Queues one frame. A cell must be exactly [`CELL_LEN`] bytes, a
    /// keepalive empty, and a ping or pong [`PING_TOKEN_LEN`] bytes.
    pub fn queue(&mut self, frame_type: FrameType, payload: &[u8]) -> Result<(), FrameError> {
        check_payload(frame_type, payload.len())?;
        put_frame(&mut self.pending, frame_type.to_byte(), payload)?;
        if frame_type == FrameType::Padding {
            self.count_padding(payload.len());
        }
        Ok(())
    }

    fn count_padding(&mut self, payload_len: usize) {
        self.padding_frames += 1;
        self.padding_bytes += (FRAME_HEADER_LEN + payload_len) as u64;
    }

    /// Padding frames sent so far: those queued with
    /// [`FrameType::Padding`] and those the encoder added to flushes.
    pub fn padding_frames(&self) -> u64 {
        self.padding_frames
    }

    /// Bytes of [`FrameEncoder::padding_frames`], headers included.
    pub fn padding_bytes(&self) -> u64 {
        self.padding_bytes
    }

    /// Queued bytes not yet handed out by [`FrameEncoder::flush`].
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// How many more flushes will start with a padding frame.
    pub fn padded_flushes_left(&self) -> u32 {
        self.padded_flushes_left
    }

    /// One write buffer of at most `max_len` bytes taken from the queue, or
    /// `None` if nothing is queued (or `max_len` is 0). Padding alone is
    /// never sent.
    pub fn flush<R: RngCore + ?Sized>(&mut self, max_len: usize, rng: &mut R) -> Option<Bytes> {
        if self.pending.is_empty() || max_len == 0 {
            return None;
        }
        // A padding frame must start on a frame boundary, and at least one
        // queued byte must still fit after it.
        let room_for_padding = max_len.saturating_sub(FRAME_HEADER_LEN + 1);
        if self.padded_flushes_left > 0 && self.cut_frame_left == 0 && max_len > FRAME_HEADER_LEN {
            self.padded_flushes_left -= 1;
            let pad_len = padding_len(rng).min(room_for_padding);
            let take = self.pending.len().min(max_len - FRAME_HEADER_LEN - pad_len);
            let mut out = BytesMut::with_capacity(FRAME_HEADER_LEN + pad_len + take);
            let mut pad = [0u8; PADDING_PAYLOAD_MAX_LEN];
            let pad = pad.get_mut(..pad_len).unwrap_or_default();
            rng.fill_bytes(pad);
            // Cannot fail: pad_len is far below the maximum payload.
            let _ = put_frame(&mut out, FrameType::Padding.to_byte(), pad);
            self.count_padding(pad_len);
            out.extend_from_slice(&self.take_pending(take));
            return Some(out.freeze());
        }
        let mut take = self.pending.len().min(max_len);
        // This flush empties the queue, so it ends on a frame boundary and
        // a padding frame can follow. It goes into `pending` itself: no
        // second buffer, no copy.
        if self.pad_short_flushes
            && take == self.pending.len()
            && take < PADDED_FLUSH_BELOW_LEN
            && max_len - take >= FRAME_HEADER_LEN
        {
            let pad_len = padding_len(rng).min(max_len - take - FRAME_HEADER_LEN);
            let payload_start = self.pending.len() + FRAME_HEADER_LEN;
            // pad_len + 1 is at most 256, far below u16::MAX.
            self.pending
                .put_u16(u16::try_from(pad_len + 1).unwrap_or(1));
            self.pending.put_u8(FrameType::Padding.to_byte());
            self.pending.resize(payload_start + pad_len, 0);
            if let Some(pad) = self.pending.get_mut(payload_start..) {
                rng.fill_bytes(pad);
            }
            self.count_padding(pad_len);
            take = self.pending.len();
        }
        Some(self.take_pending(take).freeze())
    }

    /// Removes the first `take` queued bytes, keeping track of where the
    /// next frame starts.
    fn take_pending(&mut self, take: usize) -> BytesMut {
        // Walk the frame headers inside the taken range. Frames are queued
        // whole, so every header we reach lies within `pending`.
        let mut boundary = self.cut_frame_left;
        while boundary < take {
            let len = match self
                .pending
                .get(boundary..)
                .and_then(<[u8]>::first_chunk::<FRAME_LEN_FIELD_LEN>)
            {
                Some(&b) => usize::from(u16::from_be_bytes(b)),
                None => break,
            };
            boundary += FRAME_LEN_FIELD_LEN + len;
        }
        self.cut_frame_left = boundary.saturating_sub(take);
        self.pending.split_to(take)
    }
}

/// A padding payload length, uniform from 0 to [`PADDING_PAYLOAD_MAX_LEN`].
fn padding_len<R: RngCore + ?Sized>(rng: &mut R) -> usize {
    usize::try_from(rng.next_u32()).unwrap_or(0) % (PADDING_PAYLOAD_MAX_LEN + 1)
}

/// Appends one frame to `out`.
fn put_frame(out: &mut BytesMut, type_byte: u8, payload: &[u8]) -> Result<(), FrameError> {
    let len =
        u16::try_from(payload.len() + 1).map_err(|_| FrameError::PayloadTooLong(payload.len()))?;
    reserve(out, FRAME_HEADER_LEN + payload.len());
    out.put_u16(len);
    out.put_u8(type_byte);
    out.extend_from_slice(payload);
    Ok(())
}

/// When to send the next keepalive: uniform from [`LINK_KEEPALIVE_MIN`] to
/// [`LINK_KEEPALIVE_MAX`] inclusive, at millisecond resolution, so
/// keepalives do not form a fixed beat.
pub fn keepalive_interval<R: RngCore + ?Sized>(rng: &mut R) -> Duration {
    jittered(LINK_KEEPALIVE_MIN, LINK_KEEPALIVE_MAX, rng)
}

/// A duration drawn uniformly from `[min, max]` inclusive at millisecond
/// resolution (the bounds may come in either order). Keepalives and
/// redial backoff use it so their timing forms no fixed beat.
pub fn jittered<R: RngCore + ?Sized>(min: Duration, max: Duration, rng: &mut R) -> Duration {
    let (lo, hi) = if min <= max { (min, max) } else { (max, min) };
    let span_ms = u64::try_from((hi - lo).as_millis()).unwrap_or(u64::MAX - 1);
    lo + Duration::from_millis(rng.next_u64() % (span_ms + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jittered_stays_within_bounds_in_either_order() {
        let mut rng = rand_core::OsRng;
        let (a, b) = (Duration::from_millis(500), Duration::from_secs(1));
        for _ in 0..1000 {
            let d = jittered(a, b, &mut rng);
            assert!(d >= a && d <= b, "{d:?}");
            let d = jittered(b, a, &mut rng);
            assert!(d >= a && d <= b, "{d:?}");
        }
        assert_eq!(jittered(a, a, &mut rng), a);
    }

    #[test]
    fn frame_type_bytes_round_trip_and_unknown_is_none() {
        for b in 0..=u8::MAX {
            match FrameType::from_byte(b) {
                Some(t) => assert_eq!(t.to_byte(), b),
                None => assert!(b > 0x07),
            }
        }
    }

    #[test]
    fn pings_and_pongs_round_trip_and_keep_their_token() {
        let mut rng = rand_core::OsRng;
        let mut enc = FrameEncoder::with_padded_flushes(0);
        let token = [1, 2, 3, 4, 5, 6, 7, 8];
        for f in [Frame::Ping(token), Frame::Pong(token), Frame::Keepalive] {
            enc.queue(f.frame_type(), f.payload()).expect("queue");
        }
        let buf = enc.flush(usize::MAX, &mut rng).expect("flush");
        assert_eq!(
            buf.len(),
            2 * (FRAME_HEADER_LEN + PING_TOKEN_LEN) + FRAME_HEADER_LEN
        );
        assert_eq!(buf.get(..3), Some(&[0, 9, 0x06][..]));
        let mut dec = FrameDecoder::new();
        dec.push(&buf).expect("push");
        assert_eq!(dec.next_frame(), Ok(Some(Frame::Ping(token))));
        assert_eq!(dec.next_frame(), Ok(Some(Frame::Pong(token))));
        // An empty keepalive, as older peers send, still decodes.
        assert_eq!(dec.next_frame(), Ok(Some(Frame::Keepalive)));
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(Frame::Ping(token).wire_len(), 11);
    }

    #[test]
    fn a_ping_or_pong_of_another_length_is_refused() {
        for (ty, len) in [(0x06u8, 7usize), (0x07, 9), (0x06, 0)] {
            let mut dec = FrameDecoder::new();
            let mut wire = vec![0, u8::try_from(len + 1).expect("small"), ty];
            wire.resize(3 + len, 0xaa);
            dec.push(&wire).expect("push");
            assert_eq!(dec.next_frame(), Err(FrameError::BadPingLength(len)));
        }
        let mut enc = FrameEncoder::with_padded_flushes(0);
        assert_eq!(
            enc.queue(FrameType::Pong, &[0; 3]),
            Err(FrameError::BadPingLength(3))
        );
    }

    #[test]
    fn padding_is_counted_on_both_sides() {
        let mut rng = rand_core::OsRng;
        let mut enc = FrameEncoder::new(&mut rng);
        let mut dec = FrameDecoder::new();
        let mut total = 0usize;
        for _ in 0..20 {
            enc.queue(FrameType::Cell, &[3; CELL_LEN]).expect("queue");
            enc.queue(FrameType::Padding, &[0; CELL_LEN])
                .expect("queue");
            while let Some(buf) = enc.flush(4000, &mut rng) {
                total += buf.len();
                dec.push(&buf).expect("push");
                while dec.next_frame().expect("valid").is_some() {}
            }
        }
        assert_eq!(enc.padding_frames(), dec.padding_frames());
        assert_eq!(enc.padding_bytes(), dec.padding_bytes());
        assert_eq!(dec.cover_frames(), 20);
        let cells = 20 * (FRAME_HEADER_LEN + CELL_LEN);
        assert_eq!(total as u64, cells as u64 + enc.padding_bytes());
    }

    #[test]
    fn a_cut_frame_is_never_interrupted_by_padding() {
        let mut rng = rand_core::OsRng;
        let mut enc = FrameEncoder::with_padded_flushes(16);
        enc.queue(FrameType::Cell, &[7; CELL_LEN]).expect("queue");
        enc.queue(FrameType::Cell, &[8; CELL_LEN]).expect("queue");
        let mut dec = FrameDecoder::new();
        let mut frames = Vec::new();
        while let Some(buf) = enc.flush(500, &mut rng) {
            dec.push(&buf).expect("push");
            while let Some(f) = dec.next_frame().expect("valid stream") {
                frames.push(f);
            }
        }
        assert_eq!(
            frames,
            vec![
                Frame::Cell(Bytes::from(vec![7; CELL_LEN])),
                Frame::Cell(Bytes::from(vec![8; CELL_LEN]))
            ]
        );
        // With 500-byte buffers every flush after the first starts inside a
        // cell, so only the first was padded.
        assert_eq!(dec.padding_frames(), 1);
        assert_eq!(enc.padded_flushes_left(), 15);
    }
}
