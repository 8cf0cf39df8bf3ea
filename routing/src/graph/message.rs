//! Graph messages: the wire format of what [`super::flood`] sends (the
//! payload of a graph-record frame; docs/protocol.md, "Flooding"):
//!
//! ```text
//! version u8 = 1 | kind u8 | body
//! kind 1, records: count u16 | count × (len u16 | node record)
//! kind 2, summary: flags u8 (1 = first chunk, 2 = last chunk) | count u16 |
//!                  count × (key [u8; 32] | seq u64), keys strictly ascending
//! kind 3, request: count u16 | count × key [u8; 32]
//! ```

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use super::codec::Reader;
use super::record::{NodeRecord, RecordError};
use crate::crypto::KEY_LEN;

/// Largest graph message, encoded. It fits one transport frame (`len u16`)
/// with room for the frame header and padding. Larger messages are dropped.
pub const MAX_MESSAGE_LEN: usize = 64_000;
pub(super) const MESSAGE_VERSION: u8 = 1;
const KIND_RECORDS: u8 = 1;
pub(super) const KIND_SUMMARY: u8 = 2;
const KIND_REQUEST: u8 = 3;
pub(super) const RECORDS_HEADER_LEN: usize = 4;
const SUMMARY_HEADER_LEN: usize = 5;
pub(super) const SUMMARY_ENTRY_LEN: usize = KEY_LEN + 8;
const REQUEST_HEADER_LEN: usize = 4;
/// Most `(key, seq)` entries in one summary chunk (1,599).
pub const SUMMARY_MAX_ENTRIES: usize = (MAX_MESSAGE_LEN - SUMMARY_HEADER_LEN) / SUMMARY_ENTRY_LEN;
/// Most keys in one request (1,999).
pub const REQUEST_MAX_KEYS: usize = (MAX_MESSAGE_LEN - REQUEST_HEADER_LEN) / KEY_LEN;
const FLAG_FIRST: u8 = 1;
const FLAG_LAST: u8 = 2;

/// Why bytes are not a graph message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Cut short.
    #[error("graph message is truncated")]
    Truncated,
    /// Longer than [`MAX_MESSAGE_LEN`].
    #[error("graph message is {0} bytes, longer than the maximum {MAX_MESSAGE_LEN}")]
    TooLong(usize),
    /// A version this code does not know.
    #[error("graph message version {0} is unknown (this node knows {MESSAGE_VERSION})")]
    UnknownVersion(u8),
    /// A kind this code does not know.
    #[error("graph message kind {0} is unknown")]
    UnknownKind(u8),
    /// Bytes follow the last item.
    #[error("graph message has {0} bytes after its last item")]
    TrailingBytes(usize),
    /// A record inside is malformed.
    #[error("graph message record {index}: {error}")]
    Record {
        /// Position of the record in the message.
        index: usize,
        /// What is wrong with it.
        error: RecordError,
    },
    /// Summary flags with unknown bits.
    #[error("graph summary has unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// Summary keys not strictly ascending.
    #[error("graph summary keys are not strictly ascending")]
    BadSummary,
}

/// One chunk of a link-up summary: the `(key, seq)` of every record the
/// sender holds in a range of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The first chunk of a summary.
    pub first: bool,
    /// The last chunk of a summary.
    pub last: bool,
    /// `(key, seq)`, keys strictly ascending.
    pub entries: Vec<([u8; KEY_LEN], u64)>,
}

impl Summary {
    pub(super) fn is_well_formed(&self) -> bool {
        self.entries
            .windows(2)
            .all(|w| matches!(w, [a, b] if a.0 < b.0))
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Summary, MessageError> {
        let flags = r.u8().ok_or(MessageError::Truncated)?;
        if flags & !(FLAG_FIRST | FLAG_LAST) != 0 {
            return Err(MessageError::UnknownFlags(flags));
        }
        let count = usize::from(r.u16().ok_or(MessageError::Truncated)?);
        if r.remaining() < count * SUMMARY_ENTRY_LEN {
            return Err(MessageError::Truncated);
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let key = r.array::<KEY_LEN>().ok_or(MessageError::Truncated)?;
            let seq = r.u64().ok_or(MessageError::Truncated)?;
            entries.push((key, seq));
        }
        let s = Summary {
            first: flags & FLAG_FIRST != 0,
            last: flags & FLAG_LAST != 0,
            entries,
        };
        if !s.is_well_formed() {
            return Err(MessageError::BadSummary);
        }
        Ok(s)
    }
}

fn decode_request_body(r: &mut Reader<'_>) -> Result<Vec<[u8; KEY_LEN]>, MessageError> {
    let count = usize::from(r.u16().ok_or(MessageError::Truncated)?);
    if r.remaining() < count * KEY_LEN {
        return Err(MessageError::Truncated);
    }
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        keys.push(r.array::<KEY_LEN>().ok_or(MessageError::Truncated)?);
    }
    Ok(keys)
}

/// A graph message, decoded. Records are shared (`Arc`), so a message can
/// be handed to many nodes of a simulation without copying them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphMessage {
    /// Node records, flooded or answering a request.
    Records(Vec<Arc<NodeRecord>>),
    /// A chunk of a link-up summary.
    Summary(Summary),
    /// Keys whose records the sender wants.
    Request(Vec<[u8; KEY_LEN]>),
}

impl GraphMessage {
    /// Length of the encoding.
    pub fn encoded_len(&self) -> usize {
        match self {
            GraphMessage::Records(recs) => {
                RECORDS_HEADER_LEN + recs.iter().map(|r| 2 + r.encoded_len()).sum::<usize>()
            }
            GraphMessage::Summary(s) => SUMMARY_HEADER_LEN + s.entries.len() * SUMMARY_ENTRY_LEN,
            GraphMessage::Request(keys) => REQUEST_HEADER_LEN + keys.len() * KEY_LEN,
        }
    }

    /// The encoding (see the module documentation). Messages that
    /// [`super::GraphCore`] makes always fit [`MAX_MESSAGE_LEN`]; a longer list
    /// built by hand is cut at 65,535 items.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(MESSAGE_VERSION);
        match self {
            GraphMessage::Records(recs) => {
                let count = u16::try_from(recs.len()).unwrap_or(u16::MAX);
                out.push(KIND_RECORDS);
                out.extend_from_slice(&count.to_be_bytes());
                for rec in recs.iter().take(usize::from(count)) {
                    let len = u16::try_from(rec.encoded_len()).unwrap_or(u16::MAX);
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(rec.as_bytes());
                }
            }
            GraphMessage::Summary(s) => {
                let count = u16::try_from(s.entries.len()).unwrap_or(u16::MAX);
                let mut flags = 0;
                if s.first {
                    flags |= FLAG_FIRST;
                }
                if s.last {
                    flags |= FLAG_LAST;
                }
                out.push(KIND_SUMMARY);
                out.push(flags);
                out.extend_from_slice(&count.to_be_bytes());
                for (key, seq) in s.entries.iter().take(usize::from(count)) {
                    out.extend_from_slice(key);
                    out.extend_from_slice(&seq.to_be_bytes());
                }
            }
            GraphMessage::Request(keys) => {
                let count = u16::try_from(keys.len()).unwrap_or(u16::MAX);
                out.push(KIND_REQUEST);
                out.extend_from_slice(&count.to_be_bytes());
                for key in keys.iter().take(usize::from(count)) {
                    out.extend_from_slice(key);
                }
            }
        }
        out
    }

    /// Decodes a message, records included (signatures are not checked).
    /// Total: never panics. The flood path does not use this; it reads
    /// records lazily so that duplicates cost no decoding.
    pub fn decode(bytes: &[u8]) -> Result<GraphMessage, MessageError> {
        Ok(match Lazy::decode(bytes)? {
            Lazy::Records(mut bodies) => {
                let mut recs =
                    Vec::with_capacity(usize::from(bodies.left).min(MAX_MESSAGE_LEN / 64));
                while let Some(body) = bodies.next_body() {
                    let index = recs.len();
                    let rec = NodeRecord::decode(body?)
                        .map_err(|error| MessageError::Record { index, error })?;
                    recs.push(Arc::new(rec));
                }
                bodies.finish()?;
                GraphMessage::Records(recs)
            }
            Lazy::Summary(summary) => GraphMessage::Summary(summary),
            Lazy::Request(keys) => GraphMessage::Request(keys),
        })
    }
}

/// Checks length and version; returns the kind and a reader at the body.
fn envelope(bytes: &[u8]) -> Result<(u8, Reader<'_>), MessageError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(MessageError::TooLong(bytes.len()));
    }
    let mut r = Reader::new(bytes);
    let version = r.u8().ok_or(MessageError::Truncated)?;
    if version != MESSAGE_VERSION {
        return Err(MessageError::UnknownVersion(version));
    }
    let kind = r.u8().ok_or(MessageError::Truncated)?;
    Ok((kind, r))
}

/// A graph message as the flood path reads it: summaries and requests
/// decoded, records left as bodies to read one at a time, so that a
/// duplicate costs no decoding.
pub(super) enum Lazy<'a> {
    /// Record bodies, not read yet.
    Records(RecordBodies<'a>),
    /// A summary chunk with nothing after it.
    Summary(Summary),
    /// A request with nothing after it.
    Request(Vec<[u8; KEY_LEN]>),
}

impl<'a> Lazy<'a> {
    /// Checks the envelope and decodes all but the records. Total.
    pub(super) fn decode(bytes: &'a [u8]) -> Result<Lazy<'a>, MessageError> {
        let (kind, mut r) = envelope(bytes)?;
        let msg = match kind {
            KIND_RECORDS => {
                let left = r.u16().ok_or(MessageError::Truncated)?;
                return Ok(Lazy::Records(RecordBodies { r, left }));
            }
            KIND_SUMMARY => Lazy::Summary(Summary::decode_body(&mut r)?),
            KIND_REQUEST => Lazy::Request(decode_request_body(&mut r)?),
            other => return Err(MessageError::UnknownKind(other)),
        };
        if r.remaining() != 0 {
            return Err(MessageError::TrailingBytes(r.remaining()));
        }
        Ok(msg)
    }
}

/// The records of a records message, one body at a time.
pub(super) struct RecordBodies<'a> {
    r: Reader<'a>,
    left: u16,
}

impl<'a> RecordBodies<'a> {
    /// The next record's bytes, `None` after the last, or an error if the
    /// message is cut short (nothing more can be read then).
    pub(super) fn next_body(&mut self) -> Option<Result<&'a [u8], MessageError>> {
        self.left = self.left.checked_sub(1)?;
        let body = self.r.u16().and_then(|len| self.r.take(usize::from(len)));
        if body.is_none() {
            self.left = 0;
        }
        Some(body.ok_or(MessageError::Truncated))
    }

    /// After the last record: whether bytes follow it.
    pub(super) fn finish(self) -> Result<(), MessageError> {
        match self.r.remaining() {
            0 => Ok(()),
            n => Err(MessageError::TrailingBytes(n)),
        }
    }
}
