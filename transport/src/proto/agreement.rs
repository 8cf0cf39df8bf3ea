//! What two nodes say to each other in the link handshake to make or
//! confirm an agreement, and the statement both sign (docs/protocol.md,
//! "Agreements").
//!
//! Message 1's payload (dialer to listener, inside Noise):
//!
//! ```text
//! kind u8 | bytes_per_period u64 | period_secs u64 | signature [64] | secret [16] (invite only)
//! ```
//!
//! `kind` is 1 for an agreement both sides already have and 2 for an invite.
//! The listener's reply in message 2 is its `signature [64]`. Both
//! signatures cover [`statement`], so each side keeps the other's signature
//! of the same terms.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use umbra_routing::crypto::SIGNATURE_LEN;

use super::codec::Reader;
use super::invite::INVITE_SECRET_LEN;

/// Label that starts every signed agreement statement.
pub const AGREEMENT_STATEMENT_LABEL: &[u8] = b"umbra agreement v1";

/// `kind` of an ask for an agreement both sides have.
const KIND_AGREEMENT: u8 = 1;
/// `kind` of an ask that uses an invite's secret.
const KIND_INVITE: u8 = 2;
/// Length of an ask without the invite secret.
const ASK_LEN: usize = 1 + 8 + 8 + SIGNATURE_LEN;

/// Why the dialer asks for a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// An agreement both sides already have (stored, or both configured).
    Agreement,
    /// `umbra accept`: the invite's one-time secret.
    Invite([u8; INVITE_SECRET_LEN]),
}

/// The dialer's message-1 payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAsk {
    /// Why it asks.
    pub ask: Ask,
    /// The terms: bytes per period (never 0).
    pub bytes_per_period: u64,
    /// The terms: the period in seconds (never 0).
    pub period_secs: u64,
    /// The dialer's signature of [`statement`] on these terms.
    pub signature: [u8; SIGNATURE_LEN],
}

/// Why a message-1 payload is not a [`LinkAsk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkAskError {
    /// Shorter than an ask.
    #[error("link ask is truncated")]
    Truncated,
    /// Bytes per period or the period is 0.
    #[error("link ask has zero terms")]
    ZeroTerms,
    /// An unknown kind, or a length that does not fit the kind.
    #[error("link ask of kind {kind} with {extra} bytes after the signature")]
    BadKind {
        /// The kind byte.
        kind: u8,
        /// Bytes after the signature.
        extra: usize,
    },
}

/// The bytes both sides sign: the label, the two keys in order, then the
/// terms.
pub fn statement(a: &[u8; 32], b: &[u8; 32], bytes_per_period: u64, period_secs: u64) -> Vec<u8> {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut s = Vec::with_capacity(AGREEMENT_STATEMENT_LABEL.len() + 64 + 16);
    s.extend_from_slice(AGREEMENT_STATEMENT_LABEL);
    s.extend_from_slice(lo);
    s.extend_from_slice(hi);
    s.extend_from_slice(&bytes_per_period.to_be_bytes());
    s.extend_from_slice(&period_secs.to_be_bytes());
    s
}

impl LinkAsk {
    /// The payload's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ASK_LEN + INVITE_SECRET_LEN);
        out.push(match self.ask {
            Ask::Agreement => KIND_AGREEMENT,
            Ask::Invite(_) => KIND_INVITE,
        });
        out.extend_from_slice(&self.bytes_per_period.to_be_bytes());
        out.extend_from_slice(&self.period_secs.to_be_bytes());
        out.extend_from_slice(&self.signature);
        if let Ask::Invite(secret) = &self.ask {
            out.extend_from_slice(secret);
        }
        out
    }

    /// Parses a payload. What decodes is canonical: it encodes back to the
    /// same bytes.
    pub fn decode(b: &[u8]) -> Result<LinkAsk, LinkAskError> {
        let mut r = Reader::new(b);
        let (Some(kind), Some(bytes_per_period), Some(period_secs), Some(signature)) =
            (r.u8(), r.u64(), r.u64(), r.array::<SIGNATURE_LEN>())
        else {
            return Err(LinkAskError::Truncated);
        };
        if bytes_per_period == 0 || period_secs == 0 {
            return Err(LinkAskError::ZeroTerms);
        }
        let extra = b.len() - ASK_LEN;
        let ask = match (kind, extra) {
            (KIND_AGREEMENT, 0) => Ask::Agreement,
            (KIND_INVITE, INVITE_SECRET_LEN) => {
                Ask::Invite(r.array().ok_or(LinkAskError::Truncated)?)
            }
            _ => return Err(LinkAskError::BadKind { kind, extra }),
        };
        Ok(LinkAsk {
            ask,
            bytes_per_period,
            period_secs,
            signature,
        })
    }
}
