//! Link control messages: what a LinkControl frame carries
//! (docs/protocol.md, "Link control").
//!
//! A message is an ASCII tag, then its fields:
//!
//! ```text
//! "revoke"                          the sender revoked the agreement; the link ends
//! "padding" | bytes_per_sec u32     pad toward the sender at this rate; 0 stops
//! ```
//!
//! The rate counts bytes of cell frames per second. A `padding` tag followed
//! by anything but exactly four bytes is malformed, and so is any other
//! payload; a receiver ignores both (it may count them).

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use bytes::Bytes;

use super::frame::Frame;

/// The tag of [`LinkControl::Revoke`]: the whole message.
pub const CONTROL_REVOKE: &[u8] = b"revoke";

/// The tag of [`LinkControl::Padding`], followed by the rate.
pub const CONTROL_PADDING: &[u8] = b"padding";

/// One link control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkControl {
    /// The sender revoked the agreement; the link ends.
    Revoke,
    /// "Pad toward me at this rate", in bytes of cell frames per second;
    /// 0 stops.
    Padding {
        /// The rate asked for.
        bytes_per_sec: u32,
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
    /// No known tag.
    #[error("unknown link control message")]
    Unknown,
}

impl LinkControl {
    /// The message's bytes, the payload of a LinkControl frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            LinkControl::Revoke => CONTROL_REVOKE.to_vec(),
            LinkControl::Padding { bytes_per_sec } => {
                let mut body = CONTROL_PADDING.to_vec();
                body.extend_from_slice(&bytes_per_sec.to_be_bytes());
                body
            }
        }
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
        Err(LinkControlError::Unknown)
    }
}
