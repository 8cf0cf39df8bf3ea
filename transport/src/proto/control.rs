//! Link control messages: what a LinkControl frame carries
//! (docs/protocol.md, "Link control").
//!
//! A message is an ASCII tag, then its fields. No tag is a prefix of
//! another, so the tag alone says which message it is:
//!
//! ```text
//! "revoke"                          the sender revoked the agreement; the link ends
//! "padding" | bytes_per_sec u32     pad toward the sender at this rate; 0 stops
//! "moved" | hash [32]               the sender's frames on this connection end here;
//!                                   they go on on the connection whose link
//!                                   handshake hash is `hash`
//! "nat-msg" | body                  a traversal message between the two ends of
//!                                   this link (proto::traversal)
//! "fwd-to" | to [32] | envelope     pass the envelope to `to`, a partner of the
//!                                   receiver's with a live link
//! "fwd-from" | from [32] | envelope `from` asked the sender to pass this envelope
//! "relay-open" | id u32 | to [32]   open relayed stream `id` to `to`
//! "relay-in" | id u32 | from [32]   relayed stream `id` from `from` starts here
//! "relay-close" | id u32 | why u8   relayed stream `id` ends, or is refused
//! ```
//!
//! The rate counts bytes of cell frames per second. Bodies and envelopes run
//! to the end of the frame and may not be empty. Anything else, including a
//! known tag with fields of the wrong length, is malformed; a receiver
//! ignores it and counts it.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use bytes::Bytes;

use super::codec::Reader;
use super::frame::Frame;
use super::relay::{CloseReason, StreamId};

/// The tag of [`LinkControl::Revoke`]: the whole message.
pub const CONTROL_REVOKE: &[u8] = b"revoke";

/// The tag of [`LinkControl::Padding`], followed by the rate.
pub const CONTROL_PADDING: &[u8] = b"padding";

/// The tag of [`LinkControl::Moved`], followed by the new connection's link
/// handshake hash.
pub const CONTROL_MOVED: &[u8] = b"moved";

/// The tag of [`LinkControl::Traversal`], followed by the message.
pub const CONTROL_TRAVERSAL: &[u8] = b"nat-msg";

/// The tag of [`LinkControl::ForwardTo`].
pub const CONTROL_FORWARD_TO: &[u8] = b"fwd-to";

/// The tag of [`LinkControl::ForwardFrom`].
pub const CONTROL_FORWARD_FROM: &[u8] = b"fwd-from";

/// The tag of [`LinkControl::RelayOpen`].
pub const CONTROL_RELAY_OPEN: &[u8] = b"relay-open";

/// The tag of [`LinkControl::RelayIn`].
pub const CONTROL_RELAY_IN: &[u8] = b"relay-in";

/// The tag of [`LinkControl::RelayClose`].
pub const CONTROL_RELAY_CLOSE: &[u8] = b"relay-close";

/// Every tag, for the check that none is a prefix of another.
pub const CONTROL_TAGS: [&[u8]; 9] = [
    CONTROL_REVOKE,
    CONTROL_PADDING,
    CONTROL_MOVED,
    CONTROL_TRAVERSAL,
    CONTROL_FORWARD_TO,
    CONTROL_FORWARD_FROM,
    CONTROL_RELAY_OPEN,
    CONTROL_RELAY_IN,
    CONTROL_RELAY_CLOSE,
];

/// One link control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkControl {
    /// The sender revoked the agreement; the link ends.
    Revoke,
    /// "Pad toward me at this rate", in bytes of cell frames per second;
    /// 0 stops.
    Padding {
        /// The rate asked for.
        bytes_per_sec: u32,
    },
    /// The sender moved the link to a new connection: every frame it sent on
    /// this connection before this one came first, everything after goes on
    /// the new one, named by its link handshake hash (the same at both ends
    /// and unique to it; docs/protocol.md, "Link moves").
    Moved {
        /// The new connection's link handshake hash.
        to: [u8; 32],
    },
    /// A traversal message (`proto::traversal`) between the two ends of the
    /// link, which is how two partners on a relayed link talk about a better
    /// one.
    Traversal {
        /// The message.
        body: Bytes,
    },
    /// "Pass this envelope to `to`": a traversal message sealed to `to`,
    /// sent through a partner both ends share.
    ForwardTo {
        /// The node the envelope is for.
        to: [u8; 32],
        /// The sealed envelope (`proto::traversal::seal`).
        envelope: Bytes,
    },
    /// An envelope `from` asked the sender (a partner of both) to pass on.
    ForwardFrom {
        /// Who asked.
        from: [u8; 32],
        /// The sealed envelope.
        envelope: Bytes,
    },
    /// Open relayed stream `id` to the receiver's partner `to`.
    RelayOpen {
        /// The stream, numbered by the sender (`proto::relay`).
        id: StreamId,
        /// The node at the other end.
        to: [u8; 32],
    },
    /// Relayed stream `id`, numbered by the sender, starts here: `from`
    /// opened it through the sender.
    RelayIn {
        /// The stream.
        id: StreamId,
        /// The node at the other end.
        from: [u8; 32],
    },
    /// Relayed stream `id` ends, or is refused, and why.
    RelayClose {
        /// The stream.
        id: StreamId,
        /// Why.
        reason: CloseReason,
    },
}

/// Why a LinkControl payload is not a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkControlError {
    /// A [`CONTROL_PADDING`] tag followed by `len` bytes, not four.
    #[error("padding request with {len} bytes after the tag, not 4")]
    MalformedPadding {
        /// How many bytes followed the tag.
        len: usize,
    },
    /// A known tag whose fields have the wrong length.
    #[error("link control message {tag:?} with malformed fields")]
    Malformed {
        /// The tag.
        tag: &'static str,
    },
    /// No known tag.
    #[error("unknown link control message")]
    Unknown,
}

impl LinkControl {
    /// The message's bytes, the payload of a LinkControl frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            LinkControl::Revoke => out.extend_from_slice(CONTROL_REVOKE),
            LinkControl::Padding { bytes_per_sec } => {
                out.extend_from_slice(CONTROL_PADDING);
                out.extend_from_slice(&bytes_per_sec.to_be_bytes());
            }
            LinkControl::Moved { to } => {
                out.extend_from_slice(CONTROL_MOVED);
                out.extend_from_slice(to);
            }
            LinkControl::Traversal { body } => {
                out.extend_from_slice(CONTROL_TRAVERSAL);
                out.extend_from_slice(body);
            }
            LinkControl::ForwardTo { to: key, envelope }
            | LinkControl::ForwardFrom {
                from: key,
                envelope,
            } => {
                out.extend_from_slice(if matches!(self, LinkControl::ForwardTo { .. }) {
                    CONTROL_FORWARD_TO
                } else {
                    CONTROL_FORWARD_FROM
                });
                out.extend_from_slice(key);
                out.extend_from_slice(envelope);
            }
            LinkControl::RelayOpen { id, to: key } | LinkControl::RelayIn { id, from: key } => {
                out.extend_from_slice(if matches!(self, LinkControl::RelayOpen { .. }) {
                    CONTROL_RELAY_OPEN
                } else {
                    CONTROL_RELAY_IN
                });
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(key);
            }
            LinkControl::RelayClose { id, reason } => {
                out.extend_from_slice(CONTROL_RELAY_CLOSE);
                out.extend_from_slice(&id.to_be_bytes());
                out.push(reason.to_u8());
            }
        }
        out
    }

    /// The LinkControl frame that carries this message.
    pub fn frame(&self) -> Frame {
        Frame::LinkControl(Bytes::from(self.encode()))
    }

    /// Reads a LinkControl frame's payload. Only the canonical bytes of a
    /// message decode, so `decode(m.encode()) == Ok(m)` and nothing else
    /// decodes to `m`.
    pub fn decode(body: &[u8]) -> Result<LinkControl, LinkControlError> {
        if body == CONTROL_REVOKE {
            return Ok(LinkControl::Revoke);
        }
        if let Some(rest) = body.strip_prefix(CONTROL_PADDING) {
            return <[u8; 4]>::try_from(rest)
                .map(|b| LinkControl::Padding {
                    bytes_per_sec: u32::from_be_bytes(b),
                })
                .map_err(|_| LinkControlError::MalformedPadding { len: rest.len() });
        }
        let malformed = |tag: &'static str| LinkControlError::Malformed { tag };
        if let Some(rest) = body.strip_prefix(CONTROL_MOVED) {
            return <[u8; 32]>::try_from(rest)
                .map(|to| LinkControl::Moved { to })
                .map_err(|_| malformed("moved"));
        }
        if let Some(rest) = body.strip_prefix(CONTROL_TRAVERSAL) {
            if rest.is_empty() {
                return Err(malformed("nat-msg"));
            }
            return Ok(LinkControl::Traversal {
                body: Bytes::copy_from_slice(rest),
            });
        }
        for (tag, name, to) in [
            (CONTROL_FORWARD_TO, "fwd-to", true),
            (CONTROL_FORWARD_FROM, "fwd-from", false),
        ] {
            if let Some(rest) = body.strip_prefix(tag) {
                let Some((key, envelope)) = rest.split_first_chunk::<32>() else {
                    return Err(malformed(name));
                };
                if envelope.is_empty() {
                    return Err(malformed(name));
                }
                let (key, envelope) = (*key, Bytes::copy_from_slice(envelope));
                return Ok(if to {
                    LinkControl::ForwardTo { to: key, envelope }
                } else {
                    LinkControl::ForwardFrom {
                        from: key,
                        envelope,
                    }
                });
            }
        }
        for (tag, name, open) in [
            (CONTROL_RELAY_OPEN, "relay-open", true),
            (CONTROL_RELAY_IN, "relay-in", false),
        ] {
            if let Some(rest) = body.strip_prefix(tag) {
                let mut r = Reader::new(rest);
                let (Some(id), Some(key), true) = (r.u32(), r.array::<32>(), r.is_empty()) else {
                    return Err(malformed(name));
                };
                return Ok(if open {
                    LinkControl::RelayOpen { id, to: key }
                } else {
                    LinkControl::RelayIn { id, from: key }
                });
            }
        }
        if let Some(rest) = body.strip_prefix(CONTROL_RELAY_CLOSE) {
            let mut r = Reader::new(rest);
            let (Some(id), Some(reason), true) = (r.u32(), r.u8(), r.is_empty()) else {
                return Err(malformed("relay-close"));
            };
            return Ok(LinkControl::RelayClose {
                id,
                reason: CloseReason::from_u8(reason),
            });
        }
        Err(LinkControlError::Unknown)
    }
}
