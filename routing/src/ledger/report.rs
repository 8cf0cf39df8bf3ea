//! The ledger report: one side's signed counters, sent on the link
//! itself in a `ledger` frame (docs/protocol.md, "Ledger reports").
//!
//! ```text
//! version u8 = 1 | seq u64 | period u64
//! | sent_own u64 | sent_other u64 | recv_own u64 | recv_other u64
//! | for_peer u64 | by_peer u64 | balance i64 | verdict u8 | signature [64]
//! ```
//!
//! All integers big-endian. `sent` and `recv` count cells on this
//! connection since the link came up, from the sender's view: `own` on
//! circuits the sender created on the link, `other` on circuits the
//! receiver created. `for_peer`, `by_peer` and `balance` are the sender's
//! running ledger (bytes; `balance` positive when the receiver owes).
//! `verdict` is how the sender's last check of the receiver's report came
//! out. The signature is Ed25519 by the sender over
//! `"umbra ledger v1" | sender key | receiver key | link session | the
//! report before the signature`, so a report copied from another link or an
//! earlier connection does not verify.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use crate::crypto::{self, Identity, KEY_LEN, SIGNATURE_LEN};

/// The report version this code writes and reads.
pub const REPORT_VERSION: u8 = 1;
/// A report's length: every field is fixed.
pub const REPORT_LEN: usize = 1 + 8 + 8 + 4 * 8 + 3 * 8 + 1 + SIGNATURE_LEN;
/// The signature's domain separation.
const DOMAIN: &[u8] = b"umbra ledger v1";

/// Cells counted on one connection, from one side's view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// On circuits this side created on the link (its own debt).
    pub own: u64,
    /// On circuits the other side created (its credit).
    pub other: u64,
}

/// How a side's last check of the other's report came out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Verdict {
    /// No report checked yet on this connection.
    #[default]
    None,
    /// The counts agreed.
    Agreed,
    /// They did not.
    Disagreed,
}

impl Verdict {
    fn to_u8(self) -> u8 {
        match self {
            Verdict::None => 0,
            Verdict::Agreed => 1,
            Verdict::Disagreed => 2,
        }
    }

    fn from_u8(b: u8) -> Option<Verdict> {
        Some(match b {
            0 => Verdict::None,
            1 => Verdict::Agreed,
            2 => Verdict::Disagreed,
            _ => return None,
        })
    }

    /// `Some(agreed)` once a check ran.
    pub fn agreed(self) -> Option<bool> {
        match self {
            Verdict::None => None,
            Verdict::Agreed => Some(true),
            Verdict::Disagreed => Some(false),
        }
    }
}

/// One side's report. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Per connection, from 1, strictly increasing.
    pub seq: u64,
    /// The sender's period number (unix seconds / period length).
    pub period: u64,
    /// Cells the sender sent on the connection before this report.
    pub sent: Counts,
    /// Cells the sender had received on it when it wrote the report.
    pub recv: Counts,
    /// Bytes the sender relayed for the receiver since the agreement began.
    pub for_peer: u64,
    /// Bytes the receiver relayed for the sender.
    pub by_peer: u64,
    /// The sender's balance: positive when the receiver owes it.
    pub balance: i64,
    /// How the sender's last check of the receiver's report came out.
    pub verdict: Verdict,
}

/// Why bytes are not a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// Not [`REPORT_LEN`] bytes.
    #[error("a ledger report is {REPORT_LEN} bytes, not {0}")]
    Length(usize),
    /// A version this code does not read.
    #[error("ledger report version {0} is not known")]
    Version(u8),
    /// A verdict byte that means nothing.
    #[error("ledger report verdict {0} is not known")]
    Verdict(u8),
    /// The signature does not verify for this sender, receiver and link.
    #[error("the ledger report's signature does not verify")]
    Signature,
}

fn signed_message(
    sender: &[u8; KEY_LEN],
    receiver: &[u8; KEY_LEN],
    session: &[u8; 32],
    body: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 3 * 32 + body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(sender);
    m.extend_from_slice(receiver);
    m.extend_from_slice(session);
    m.extend_from_slice(body);
    m
}

impl Report {
    /// The report's bytes, signed by `identity` for `receiver` on the link
    /// whose session is `session`.
    pub fn encode(
        &self,
        identity: &Identity,
        receiver: &[u8; KEY_LEN],
        session: &[u8; 32],
    ) -> Vec<u8> {
        let mut b = Vec::with_capacity(REPORT_LEN);
        b.push(REPORT_VERSION);
        for v in [
            self.seq,
            self.period,
            self.sent.own,
            self.sent.other,
            self.recv.own,
            self.recv.other,
            self.for_peer,
            self.by_peer,
        ] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&self.balance.to_be_bytes());
        b.push(self.verdict.to_u8());
        let sig = identity.sign(&signed_message(&identity.public(), receiver, session, &b));
        b.extend_from_slice(&sig);
        b
    }

    /// Reads a report's fields and signature without checking the
    /// signature.
    pub fn parse(bytes: &[u8]) -> Result<(Report, [u8; SIGNATURE_LEN]), ReportError> {
        let Ok(b) = <&[u8; REPORT_LEN]>::try_from(bytes) else {
            return Err(ReportError::Length(bytes.len()));
        };
        let Some((&[version], rest)) = b.split_first_chunk::<1>() else {
            return Err(ReportError::Length(bytes.len()));
        };
        if version != REPORT_VERSION {
            return Err(ReportError::Version(version));
        }
        let mut fields = [[0u8; 8]; 9];
        let mut rest = rest;
        for f in &mut fields {
            let Some((x, tail)) = rest.split_first_chunk::<8>() else {
                return Err(ReportError::Length(bytes.len()));
            };
            *f = *x;
            rest = tail;
        }
        let n = |i: usize| fields.get(i).map_or(0, |x| u64::from_be_bytes(*x));
        let (Some((&[v], sig_bytes)), Some(balance)) =
            (rest.split_first_chunk::<1>(), fields.get(8))
        else {
            return Err(ReportError::Length(bytes.len()));
        };
        let verdict = Verdict::from_u8(v).ok_or(ReportError::Verdict(v))?;
        let sig: [u8; SIGNATURE_LEN] = sig_bytes
            .try_into()
            .map_err(|_| ReportError::Length(bytes.len()))?;
        Ok((
            Report {
                seq: n(0),
                period: n(1),
                sent: Counts {
                    own: n(2),
                    other: n(3),
                },
                recv: Counts {
                    own: n(4),
                    other: n(5),
                },
                for_peer: n(6),
                by_peer: n(7),
                balance: i64::from_be_bytes(*balance),
                verdict,
            },
            sig,
        ))
    }

    /// Reads a report from `sender` to `receiver` on the link whose session
    /// is `session`, and checks its signature.
    pub fn decode(
        bytes: &[u8],
        sender: &[u8; KEY_LEN],
        receiver: &[u8; KEY_LEN],
        session: &[u8; 32],
    ) -> Result<Report, ReportError> {
        let (report, sig) = Report::parse(bytes)?;
        // `parse` checked the length.
        let body = bytes.get(..REPORT_LEN - SIGNATURE_LEN).unwrap_or_default();
        if !crypto::verify(
            sender,
            &signed_message(sender, receiver, session, body),
            &sig,
        ) {
            return Err(ReportError::Signature);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Report {
        Report {
            seq: 3,
            period: 678,
            sent: Counts { own: 10, other: 20 },
            recv: Counts { own: 30, other: 40 },
            for_peer: 1 << 40,
            by_peer: 5,
            balance: -77,
            verdict: Verdict::Agreed,
        }
    }

    #[test]
    fn a_report_verifies_only_for_its_sender_receiver_and_link() {
        let a = Identity::from_seed(&[1; 32]);
        let b = Identity::from_seed(&[2; 32]);
        let session = [9; 32];
        let bytes = sample().encode(&a, &b.public(), &session);
        assert_eq!(bytes.len(), REPORT_LEN);
        assert_eq!(
            Report::decode(&bytes, &a.public(), &b.public(), &session),
            Ok(sample())
        );
        // Another link, the reverse direction, another sender: all fail.
        for (s, r, sess) in [
            (a.public(), b.public(), [8; 32]),
            (b.public(), a.public(), session),
            (b.public(), b.public(), session),
        ] {
            assert_eq!(
                Report::decode(&bytes, &s, &r, &sess),
                Err(ReportError::Signature)
            );
        }
        // One changed bit anywhere fails.
        let mut bent = bytes.clone();
        bent[20] ^= 1;
        assert_eq!(
            Report::decode(&bent, &a.public(), &b.public(), &session),
            Err(ReportError::Signature)
        );
    }

    #[test]
    fn bad_shapes_are_named() {
        let a = Identity::from_seed(&[1; 32]);
        let bytes = sample().encode(&a, &[2; 32], &[0; 32]);
        assert_eq!(
            Report::parse(&bytes[1..]),
            Err(ReportError::Length(REPORT_LEN - 1))
        );
        let mut v = bytes.clone();
        v[0] = 2;
        assert_eq!(Report::parse(&v), Err(ReportError::Version(2)));
        let mut w = bytes;
        w[REPORT_LEN - SIGNATURE_LEN - 1] = 7;
        assert_eq!(Report::parse(&w), Err(ReportError::Verdict(7)));
    }

    proptest! {
        #[test]
        fn any_report_round_trips(
            seq in any::<u64>(), period in any::<u64>(),
            c in any::<[u64; 6]>(), balance in any::<i64>(), verdict in 0u8..3,
        ) {
            let r = Report {
                seq,
                period,
                sent: Counts { own: c[0], other: c[1] },
                recv: Counts { own: c[2], other: c[3] },
                for_peer: c[4],
                by_peer: c[5],
                balance,
                verdict: Verdict::from_u8(verdict).expect("verdict"),
            };
            let id = Identity::from_seed(&[4; 32]);
            let bytes = r.encode(&id, &[5; 32], &[6; 32]);
            prop_assert_eq!(Report::decode(&bytes, &id.public(), &[5; 32], &[6; 32]), Ok(r));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Report::parse(&data);
            let _ = Report::decode(&data, &[1; 32], &[2; 32], &[3; 32]);
        }
    }
}
