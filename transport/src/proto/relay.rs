//! Relayed streams (docs/protocol.md, "Relayed links"): a link between two
//! partners that cannot reach each other directly, carried as a byte stream
//! through a partner both have a link to.
//!
//! The two ends run an ordinary link over the stream (TLS 1.3, HTTP/2 and
//! the link handshake, exactly as over TCP), so the relay in the middle
//! forwards only TLS records it cannot read. On each of the two links the
//! stream crosses it has an id, chosen by whoever opened it on that link
//! ([`StreamId`]); its bytes travel in Relay frames (`id u32 | bytes`), and
//! `relay-open`, `relay-in` and `relay-close` link control messages
//! (`proto::control`) open and close it.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use std::fmt;

use bytes::{BufMut as _, Bytes, BytesMut};

use super::frame::Frame;

/// A relayed stream's number on one link.
pub type StreamId = u32;

/// Length of the stream id at the start of a Relay frame, in bytes.
pub const STREAM_ID_LEN: usize = 4;

/// The most stream bytes one Relay frame carries. Smaller than a frame can
/// be, so a relayed stream's frames interleave with the cells of the link
/// that carries them instead of holding it for 64 KiB at a time.
pub const RELAY_CHUNK_MAX_LEN: usize = 16 * 1024;

/// Which of a link's two ends picks a stream id: the end with the lower
/// key picks even ids, the other odd ones, so both may open streams at
/// once without a clash.
pub fn id_parity(me: &[u8; 32], peer: &[u8; 32]) -> u32 {
    u32::from(me > peer)
}

/// The `n`th stream id this end of a link may pick (`n` from 0), given
/// [`id_parity`]. Wraps after 2^31 streams.
pub fn nth_stream_id(parity: u32, n: u32) -> StreamId {
    n.wrapping_mul(2) | parity
}

/// Why a relayed stream ended or was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// An end closed it (its link ended or moved elsewhere).
    Closed,
    /// The node asked for is not a partner of the one that asked (it has no
    /// agreement with it).
    NotPartner,
    /// The relay has no live link to the node asked for.
    NoLink,
    /// The stream reached the relay's byte total for one relayed link.
    TotalExceeded,
    /// The relay carries as many streams for the asking partner as it
    /// allows.
    TooManyStreams,
    /// The relay does not relay (`[nat] relay = false`).
    Disabled,
    /// The stream id is already in use on this link.
    IdInUse,
    /// A reason this version does not know.
    Other(u8),
}

impl CloseReason {
    /// The wire byte.
    pub fn to_u8(self) -> u8 {
        match self {
            CloseReason::Closed => 0,
            CloseReason::NotPartner => 1,
            CloseReason::NoLink => 2,
            CloseReason::TotalExceeded => 3,
            CloseReason::TooManyStreams => 4,
            CloseReason::Disabled => 5,
            CloseReason::IdInUse => 6,
            CloseReason::Other(b) => b,
        }
    }

    /// The reason for a wire byte; unknown bytes are kept as
    /// [`CloseReason::Other`].
    pub fn from_u8(b: u8) -> CloseReason {
        match b {
            0 => CloseReason::Closed,
            1 => CloseReason::NotPartner,
            2 => CloseReason::NoLink,
            3 => CloseReason::TotalExceeded,
            4 => CloseReason::TooManyStreams,
            5 => CloseReason::Disabled,
            6 => CloseReason::IdInUse,
            b => CloseReason::Other(b),
        }
    }

    /// A short name for logs and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Closed => "closed",
            CloseReason::NotPartner => "not_partner",
            CloseReason::NoLink => "no_link",
            CloseReason::TotalExceeded => "total_exceeded",
            CloseReason::TooManyStreams => "too_many_streams",
            CloseReason::Disabled => "disabled",
            CloseReason::IdInUse => "id_in_use",
            CloseReason::Other(_) => "other",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Closed => f.write_str("closed"),
            CloseReason::NotPartner => {
                f.write_str("refused: the node asked for has no agreement with the asker")
            }
            CloseReason::NoLink => f.write_str("refused: the relay has no live link to that node"),
            CloseReason::TotalExceeded => {
                f.write_str("closed: the relay's byte total for one relayed link was reached")
            }
            CloseReason::TooManyStreams => {
                f.write_str("refused: the relay carries as many relayed links for us as it allows")
            }
            CloseReason::Disabled => f.write_str("refused: that node does not relay"),
            CloseReason::IdInUse => f.write_str("refused: stream id already in use"),
            CloseReason::Other(b) => write!(f, "closed for reason {b}"),
        }
    }
}

/// Why a Relay frame's payload is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelayFrameError {
    /// Shorter than the stream id, or no bytes after it.
    #[error("relay frame of {0} bytes is too short")]
    TooShort(usize),
    /// More than [`RELAY_CHUNK_MAX_LEN`] bytes after the id.
    #[error("relay frame carries {0} bytes, over the maximum")]
    TooLong(usize),
}

/// The Relay frame for `data` (1 to [`RELAY_CHUNK_MAX_LEN`] bytes) of stream
/// `id`; `None` for an empty or longer chunk.
pub fn relay_frame(id: StreamId, data: &[u8]) -> Option<Frame> {
    if data.is_empty() || data.len() > RELAY_CHUNK_MAX_LEN {
        return None;
    }
    let mut b = BytesMut::with_capacity(STREAM_ID_LEN + data.len());
    b.put_u32(id);
    b.extend_from_slice(data);
    Some(Frame::Relay(b.freeze()))
}

/// Reads a Relay frame's payload: the stream id and its bytes (a slice of
/// `payload`, not a copy).
pub fn decode_relay(payload: &Bytes) -> Result<(StreamId, Bytes), RelayFrameError> {
    let Some((id, _)) = payload.split_first_chunk::<STREAM_ID_LEN>() else {
        return Err(RelayFrameError::TooShort(payload.len()));
    };
    let data = payload.slice(STREAM_ID_LEN..);
    if data.is_empty() {
        return Err(RelayFrameError::TooShort(payload.len()));
    }
    if data.len() > RELAY_CHUNK_MAX_LEN {
        return Err(RelayFrameError::TooLong(data.len()));
    }
    Ok((u32::from_be_bytes(*id), data))
}

/// The first byte of an end-to-end routing-core message that carries a piece
/// of a relayed stream over a circuit: the relay of last resort, when two
/// partners share no partner with live links to both (docs/protocol.md,
/// "Relayed links").
pub const APP_CIRCUIT_STREAM: u8 = 0x02;

/// The most stream bytes one circuit-stream message carries: a message takes
/// at most 8 cells of the circuit's window of 1,000.
pub const CIRCUIT_STREAM_CHUNK_MAX_LEN: usize = 8 * 1024;

/// One piece of a relayed stream carried over a circuit: `APP_CIRCUIT_STREAM
/// | kind u8 | stream u32 | fields`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CircuitStream {
    /// Kind 0: the sender opens stream `id` and is its TLS client.
    Open {
        /// The stream, numbered by the opener ([`id_parity`]).
        id: StreamId,
    },
    /// Kind 1: `seq u64 | data`: the stream's `seq`th chunk (from 0),
    /// 1 to [`CIRCUIT_STREAM_CHUNK_MAX_LEN`] bytes. Chunks may arrive out of
    /// order when the circuit changes; `seq` puts them back.
    Data {
        /// The stream.
        id: StreamId,
        /// The chunk's number.
        seq: u64,
        /// The bytes.
        data: Bytes,
    },
    /// Kind 2: `reason u8`: the stream ends.
    Close {
        /// The stream.
        id: StreamId,
        /// Why.
        reason: CloseReason,
    },
}

/// Why a circuit-stream message is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CircuitStreamError {
    /// Not a circuit-stream message, too short, or bytes left over.
    #[error("circuit-stream message is malformed")]
    Malformed,
    /// An unknown kind.
    #[error("circuit-stream message of unknown kind {0}")]
    UnknownKind(u8),
    /// A data chunk that is empty or longer than the maximum.
    #[error("circuit-stream chunk of {0} bytes")]
    BadChunk(usize),
}

impl CircuitStream {
    /// The message's bytes, [`APP_CIRCUIT_STREAM`] first.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![APP_CIRCUIT_STREAM];
        match self {
            CircuitStream::Open { id } => {
                out.push(0);
                out.extend_from_slice(&id.to_be_bytes());
            }
            CircuitStream::Data { id, seq, data } => {
                out.push(1);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(data);
            }
            CircuitStream::Close { id, reason } => {
                out.push(2);
                out.extend_from_slice(&id.to_be_bytes());
                out.push(reason.to_u8());
            }
        }
        out
    }

    /// Reads a message, [`APP_CIRCUIT_STREAM`] first. Only canonical bytes
    /// decode.
    pub fn decode(bytes: &[u8]) -> Result<CircuitStream, CircuitStreamError> {
        let malformed = CircuitStreamError::Malformed;
        let Some((&APP_CIRCUIT_STREAM, rest)) = bytes.split_first() else {
            return Err(malformed);
        };
        let Some((&kind, rest)) = rest.split_first() else {
            return Err(malformed);
        };
        let Some((id, rest)) = rest.split_first_chunk::<STREAM_ID_LEN>() else {
            return Err(malformed);
        };
        let id = u32::from_be_bytes(*id);
        match kind {
            0 if rest.is_empty() => Ok(CircuitStream::Open { id }),
            1 => {
                let Some((seq, data)) = rest.split_first_chunk::<8>() else {
                    return Err(malformed);
                };
                if data.is_empty() || data.len() > CIRCUIT_STREAM_CHUNK_MAX_LEN {
                    return Err(CircuitStreamError::BadChunk(data.len()));
                }
                Ok(CircuitStream::Data {
                    id,
                    seq: u64::from_be_bytes(*seq),
                    data: Bytes::copy_from_slice(data),
                })
            }
            2 => match rest {
                [reason] => Ok(CircuitStream::Close {
                    id,
                    reason: CloseReason::from_u8(*reason),
                }),
                _ => Err(malformed),
            },
            0 => Err(malformed),
            k => Err(CircuitStreamError::UnknownKind(k)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_ends_of_a_link_never_pick_the_same_id() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let (pa, pb) = (id_parity(&a, &b), id_parity(&b, &a));
        assert_ne!(pa, pb);
        for n in 0..100 {
            for m in 0..100 {
                assert_ne!(nth_stream_id(pa, n), nth_stream_id(pb, m));
            }
        }
    }

    #[test]
    fn circuit_stream_messages_round_trip_and_bad_ones_are_refused() {
        for m in [
            CircuitStream::Open { id: 3 },
            CircuitStream::Data {
                id: 3,
                seq: 9,
                data: Bytes::from_static(b"tls"),
            },
            CircuitStream::Close {
                id: 3,
                reason: CloseReason::NoLink,
            },
        ] {
            assert_eq!(CircuitStream::decode(&m.encode()), Ok(m.clone()), "{m:?}");
        }
        let bad: [&[u8]; 6] = [
            b"",
            &[APP_CIRCUIT_STREAM, 0, 0, 0, 0],
            &[APP_CIRCUIT_STREAM, 0, 0, 0, 0, 1, 9],
            &[APP_CIRCUIT_STREAM, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            &[APP_CIRCUIT_STREAM, 2, 0, 0, 0, 1],
            &[0x01, 0, 0, 0, 0, 1],
        ];
        for b in bad {
            assert!(CircuitStream::decode(b).is_err(), "{b:?}");
        }
        assert_eq!(
            CircuitStream::decode(&[APP_CIRCUIT_STREAM, 7, 0, 0, 0, 1]),
            Err(CircuitStreamError::UnknownKind(7))
        );
    }

    #[test]
    fn reasons_keep_their_byte() {
        for b in 0..=255u8 {
            assert_eq!(CloseReason::from_u8(b).to_u8(), b);
        }
    }

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        let Some(Frame::Relay(p)) = relay_frame(7, b"hello") else {
            panic!("no frame");
        };
        assert_eq!(decode_relay(&p), Ok((7, Bytes::from_static(b"hello"))));
        assert!(relay_frame(1, b"").is_none());
        assert!(relay_frame(1, &vec![0; RELAY_CHUNK_MAX_LEN + 1]).is_none());
        assert_eq!(
            decode_relay(&Bytes::from_static(b"\0\0\0")),
            Err(RelayFrameError::TooShort(3))
        );
        assert_eq!(
            decode_relay(&Bytes::from_static(b"\0\0\0\x01")),
            Err(RelayFrameError::TooShort(4))
        );
        let long = Bytes::from(vec![0; STREAM_ID_LEN + RELAY_CHUNK_MAX_LEN + 1]);
        assert_eq!(
            decode_relay(&long),
            Err(RelayFrameError::TooLong(RELAY_CHUNK_MAX_LEN + 1))
        );
    }
}
