//! What two nodes say to each other in the link handshake to make or
//! confirm an agreement (DESIGN.md §4), and the statement both sign.
//!
//! Message 1 (dialer → listener, inside Noise):
//! `kind u8 | bytes_per_period u64 | period_secs u64 | signature [64] | secret [16] (invite only)`.
//! The listener's reply in message 2: `signature [64]`.
//! Both signatures cover [`statement`], so each side stores the other's
//! signature of the same terms.

use umbra_config::Terms;
use umbra_routing::crypto::{self, Identity, SIGNATURE_LEN};
use umbra_transport::proto::invite::INVITE_SECRET_LEN;

/// Label that starts every signed agreement statement.
const STATEMENT_LABEL: &[u8] = b"umbra agreement v1";

/// Why the dialer asks for a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ask {
    /// An agreement both sides already have (stored, or both `[[peer]]`).
    Agreement,
    /// `umbra accept`: the invite's one-time secret.
    Invite([u8; INVITE_SECRET_LEN]),
}

/// The dialer's message-1 payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkAsk {
    pub(crate) ask: Ask,
    pub(crate) terms: Terms,
    pub(crate) signature: [u8; SIGNATURE_LEN],
}

const KIND_AGREEMENT: u8 = 1;
const KIND_INVITE: u8 = 2;
const ASK_LEN: usize = 1 + 8 + 8 + SIGNATURE_LEN;

/// The bytes both sides sign: the two keys in order, then the terms.
pub(crate) fn statement(a: &[u8; 32], b: &[u8; 32], terms: Terms) -> Vec<u8> {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut s = Vec::with_capacity(STATEMENT_LABEL.len() + 64 + 16);
    s.extend_from_slice(STATEMENT_LABEL);
    s.extend_from_slice(lo);
    s.extend_from_slice(hi);
    s.extend_from_slice(&terms.bytes_per_period.to_be_bytes());
    s.extend_from_slice(&terms.period_secs.to_be_bytes());
    s
}

/// Signs the agreement between `me` and `peer` on `terms`.
pub(crate) fn sign(me: &Identity, peer: &[u8; 32], terms: Terms) -> [u8; SIGNATURE_LEN] {
    me.sign(&statement(&me.public(), peer, terms))
}

/// Whether `signature` is `signer`'s signature of the agreement with `other`.
pub(crate) fn verify(signer: &[u8; 32], other: &[u8; 32], terms: Terms, signature: &[u8]) -> bool {
    let Ok(sig) = <[u8; SIGNATURE_LEN]>::try_from(signature) else {
        return false;
    };
    crypto::verify(signer, &statement(signer, other, terms), &sig)
}

impl LinkAsk {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ASK_LEN + INVITE_SECRET_LEN);
        out.push(match self.ask {
            Ask::Agreement => KIND_AGREEMENT,
            Ask::Invite(_) => KIND_INVITE,
        });
        out.extend_from_slice(&self.terms.bytes_per_period.to_be_bytes());
        out.extend_from_slice(&self.terms.period_secs.to_be_bytes());
        out.extend_from_slice(&self.signature);
        if let Ask::Invite(secret) = &self.ask {
            out.extend_from_slice(secret);
        }
        out
    }

    /// Parses a payload; `None` for anything malformed.
    pub(crate) fn decode(b: &[u8]) -> Option<LinkAsk> {
        if b.len() < ASK_LEN {
            return None;
        }
        let u64_at = |i: usize| -> Option<u64> {
            Some(u64::from_be_bytes(b.get(i..i + 8)?.try_into().ok()?))
        };
        let terms = Terms {
            bytes_per_period: u64_at(1)?,
            period_secs: u64_at(9)?,
        };
        if terms.bytes_per_period == 0 || terms.period_secs == 0 {
            return None;
        }
        let signature: [u8; SIGNATURE_LEN] = b.get(17..ASK_LEN)?.try_into().ok()?;
        let rest = &b[ASK_LEN..];
        let ask = match (b[0], rest.len()) {
            (KIND_AGREEMENT, 0) => Ask::Agreement,
            (KIND_INVITE, INVITE_SECRET_LEN) => Ask::Invite(rest.try_into().ok()?),
            _ => return None,
        };
        Some(LinkAsk {
            ask,
            terms,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn signatures_cross_verify() {
        let a = Identity::generate();
        let b = Identity::generate();
        let t: Terms = "1TB/7d".parse().expect("terms");
        let sa = sign(&a, &b.public(), t);
        let sb = sign(&b, &a.public(), t);
        assert!(verify(&a.public(), &b.public(), t, &sa));
        assert!(verify(&b.public(), &a.public(), t, &sb));
        let other: Terms = "2TB/7d".parse().expect("terms");
        assert!(!verify(&a.public(), &b.public(), other, &sa));
        assert!(!verify(&b.public(), &b.public(), t, &sa));
    }

    #[test]
    fn ask_round_trips() {
        for ask in [Ask::Agreement, Ask::Invite([9; 16])] {
            let a = LinkAsk {
                ask,
                terms: Terms::default(),
                signature: [5; 64],
            };
            assert_eq!(LinkAsk::decode(&a.encode()), Some(a));
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = LinkAsk::decode(&b);
        }
    }
}
