//! Agreements proposed over the overlay (docs/protocol.md, "Proposals"): the
//! signed proposal one node sends another that it knows only by its key or
//! address, and the signed answer that comes back.
//!
//! Both travel as end-to-end routing-core messages ("Sessions", messages)
//! whose first byte is [`APP_PROPOSAL`], so the relays of the circuit carry
//! cells they cannot read. Neither carries an IP address or an endpoint:
//! endpoints are exchanged only after an accept, by NAT traversal between the
//! two new partners.
//!
//! Messages are `version u8 | kind u8 | fields`. Every length is checked, the
//! note is bounded UTF-8 text without control characters, and only the
//! canonical bytes of a message decode. Each message is signed by its sender
//! with a label of its own ([`PROPOSAL_LABEL`], [`ANSWER_LABEL`]), so a
//! signature over one can never pass for the other, nor for an agreement
//! statement or a node record.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use umbra_routing::crypto::{self, Identity, SIGNATURE_LEN};

use super::agreement::statement;
use super::codec::Reader;
use crate::crypto as tcrypto;

/// The first byte of an end-to-end routing-core message that carries a
/// proposal or an answer (the rest of the message is one).
pub const APP_PROPOSAL: u8 = 0x03;

/// The proposal message version this code speaks.
pub const PROPOSAL_VERSION: u8 = 1;

/// What a proposal's signature covers first, then the message up to the
/// signature.
pub const PROPOSAL_LABEL: &[u8] = b"umbra proposal v1";

/// What an answer's signature covers first, then the message up to the
/// signature.
pub const ANSWER_LABEL: &[u8] = b"umbra proposal answer v1";

/// Length of a proposal's id, in bytes: random, chosen by the proposer.
pub const PROPOSAL_ID_LEN: usize = 16;

/// The longest note, in bytes of UTF-8.
pub const NOTE_MAX_LEN: usize = 256;

/// Length of a proposal without its note, in bytes.
const PROPOSAL_FIXED_LEN: usize = 2 + PROPOSAL_ID_LEN + 32 + 32 + 4 * 8 + 2 + 2 * SIGNATURE_LEN;

/// The longest proposal message, in bytes.
pub const PROPOSAL_MAX_LEN: usize = PROPOSAL_FIXED_LEN + NOTE_MAX_LEN;

/// Length of an answer that is not an accept, in bytes.
const ANSWER_LEN: usize = 2 + PROPOSAL_ID_LEN + 32 + 32 + 2 + SIGNATURE_LEN;

/// Length of an accept, which carries the answerer's agreement signature.
pub const ACCEPT_LEN: usize = ANSWER_LEN + SIGNATURE_LEN;

const KIND_PROPOSAL: u8 = 1;
const KIND_ANSWER: u8 = 2;

const VERDICT_RECEIVED: u8 = 0;
const VERDICT_ACCEPTED: u8 = 1;
const VERDICT_REJECTED: u8 = 2;
const VERDICT_REFUSED: u8 = 3;

/// A proposal id.
pub type ProposalId = [u8; PROPOSAL_ID_LEN];

/// An agreement proposal, signed by its proposer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Random, chosen by the proposer; names the proposal on both nodes.
    pub id: ProposalId,
    /// The proposer's key: the signer, and the only node that may send it.
    pub proposer: [u8; 32],
    /// The node it is for.
    pub target: [u8; 32],
    /// The terms: bytes per period, each way.
    pub bytes_per_period: u64,
    /// The terms: the period, in seconds.
    pub period_secs: u64,
    /// When the proposer made it (unix seconds).
    pub created_unix: u64,
    /// It may not be accepted from this second on (unix seconds).
    pub expiry_unix: u64,
    /// The proposer's words to the other operator: at most
    /// [`NOTE_MAX_LEN`] bytes, no control characters.
    pub note: String,
    /// The proposer's signature of the agreement statement on these terms
    /// (docs/protocol.md, "Agreements"), which the accepting node keeps as
    /// the agreement's.
    pub agreement_signature: [u8; SIGNATURE_LEN],
    /// The proposer's signature of [`PROPOSAL_LABEL`] and every byte of the
    /// message before it.
    pub signature: [u8; SIGNATURE_LEN],
}

/// Why a node refused a proposal without showing it to its operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The node takes no proposals (`[agreements] proposals = false`).
    Disabled,
    /// The amount or the period is zero.
    BadTerms,
    /// It arrived after its expiry, or its expiry is not after its creation.
    Expired,
    /// The two nodes have an agreement already.
    AlreadyPartner,
    /// The proposer sent more proposals than the node takes from one node.
    RateLimited,
    /// As many proposals wait for the node's operator as it keeps.
    Busy,
    /// A reason this version does not know (from a newer node): a code
    /// from 7 to 255.
    Other(u8),
}

impl Refusal {
    fn to_u8(self) -> u8 {
        match self {
            Refusal::Disabled => 1,
            Refusal::BadTerms => 2,
            Refusal::Expired => 3,
            Refusal::AlreadyPartner => 4,
            Refusal::RateLimited => 5,
            Refusal::Busy => 6,
            Refusal::Other(code) => code,
        }
    }

    fn from_u8(code: u8) -> Refusal {
        match code {
            1 => Refusal::Disabled,
            2 => Refusal::BadTerms,
            3 => Refusal::Expired,
            4 => Refusal::AlreadyPartner,
            5 => Refusal::RateLimited,
            6 => Refusal::Busy,
            other => Refusal::Other(other),
        }
    }

    /// `disabled`, `bad_terms`, … (`other` for an unknown code): how logs,
    /// the database and `umbra agreements --json` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Disabled => "disabled",
            Refusal::BadTerms => "bad_terms",
            Refusal::Expired => "expired",
            Refusal::AlreadyPartner => "already_partner",
            Refusal::RateLimited => "rate_limited",
            Refusal::Busy => "busy",
            Refusal::Other(_) => "other",
        }
    }

    /// One sentence for the proposer's operator.
    pub fn explain(self) -> &'static str {
        match self {
            Refusal::Disabled => {
                "that node takes no proposals ([agreements] proposals = false there)"
            }
            Refusal::BadTerms => {
                "the terms are not valid: the amount and the period must be above zero"
            }
            Refusal::Expired => "the proposal had expired when it arrived (are both clocks right?)",
            Refusal::AlreadyPartner => "the two nodes have an agreement already",
            Refusal::RateLimited => {
                "this node sent that node more proposals than it takes; wait and try again later"
            }
            Refusal::Busy => "too many proposals wait for that node's operator; try again later",
            Refusal::Other(_) => "for a reason this version of umbra does not know",
        }
    }
}

/// What an answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The node holds the proposal for its operator: delivered, not yet
    /// decided.
    Received,
    /// The operator accepted it: the two have an agreement.
    Accepted {
        /// The answerer's signature of the agreement statement on the
        /// proposal's terms.
        agreement_signature: [u8; SIGNATURE_LEN],
    },
    /// The operator rejected it.
    Rejected,
    /// The node refused it by its rules, without its operator.
    Refused(Refusal),
}

impl Verdict {
    /// Whether the proposal is settled by it (anything but
    /// [`Verdict::Received`]).
    pub fn is_final(&self) -> bool {
        !matches!(self, Verdict::Received)
    }

    /// `received`, `accepted`, `rejected` or `refused`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Received => "received",
            Verdict::Accepted { .. } => "accepted",
            Verdict::Rejected => "rejected",
            Verdict::Refused(_) => "refused",
        }
    }
}

/// The answer to a proposal, signed by the node it was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The proposal's id.
    pub id: ProposalId,
    /// The proposer.
    pub proposer: [u8; 32],
    /// The node that answers: the proposal's target, and the signer.
    pub answerer: [u8; 32],
    /// What it says.
    pub verdict: Verdict,
    /// The answerer's signature of [`ANSWER_LABEL`] and every byte of the
    /// message before it.
    pub signature: [u8; SIGNATURE_LEN],
}

/// One message of the proposal protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposalMessage {
    /// A proposal.
    Proposal(Proposal),
    /// An answer to one.
    Answer(Answer),
}

/// Why bytes are not a proposal message, or a note not one a proposal can
/// carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProposalError {
    /// Too short for its fields, or bytes left over.
    #[error("proposal message is malformed")]
    Malformed,
    /// A version this code does not speak.
    #[error("proposal message version {0} is not supported")]
    WrongVersion(u8),
    /// A kind this version does not know.
    #[error("unknown proposal message kind {0}")]
    UnknownKind(u8),
    /// The note is longer than [`NOTE_MAX_LEN`].
    #[error("the note is {0} bytes; at most {NOTE_MAX_LEN} are allowed")]
    NoteTooLong(usize),
    /// The note is not UTF-8, or has control characters (a line break, an
    /// escape sequence) or characters that turn the direction of text.
    #[error("the note must be one line of text, without control characters or direction marks")]
    NoteNotText,
    /// An unknown verdict byte.
    #[error("unknown proposal verdict {0}")]
    BadVerdict(u8),
    /// A reason byte that does not fit the verdict: a reason on anything
    /// but a refusal, or a refusal without one.
    #[error("proposal answer with verdict {verdict} has reason {reason}")]
    BadReason {
        /// The verdict byte.
        verdict: u8,
        /// The reason byte.
        reason: u8,
    },
}

/// Checks that `note` may travel in a proposal.
pub fn check_note(note: &str) -> Result<(), ProposalError> {
    if note.len() > NOTE_MAX_LEN {
        return Err(ProposalError::NoteTooLong(note.len()));
    }
    if note
        .chars()
        .any(|c| c.is_control() || BIDI_CONTROLS.contains(&c))
    {
        return Err(ProposalError::NoteNotText);
    }
    Ok(())
}

/// Characters that change the direction text is shown in: a note with one
/// could show the operator other words than it holds, so none may travel.
const BIDI_CONTROLS: [char; 11] = [
    '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}',
    '\u{2067}', '\u{2068}', '\u{2069}',
];

/// Whether terms may make an agreement: the amount and the period above zero.
pub fn terms_valid(bytes_per_period: u64, period_secs: u64) -> bool {
    bytes_per_period > 0 && period_secs > 0
}

impl Proposal {
    /// A fresh random proposal id.
    pub fn random_id() -> ProposalId {
        let mut id = [0u8; PROPOSAL_ID_LEN];
        tcrypto::random_bytes(&mut id);
        id
    }

    /// A proposal from `me` to `target`, signed. Errs only on a note that
    /// cannot travel ([`check_note`]).
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        me: &Identity,
        target: &[u8; 32],
        id: ProposalId,
        (bytes_per_period, period_secs): (u64, u64),
        created_unix: u64,
        expiry_unix: u64,
        note: &str,
    ) -> Result<Proposal, ProposalError> {
        check_note(note)?;
        let proposer = me.public();
        let mut p = Proposal {
            id,
            proposer,
            target: *target,
            bytes_per_period,
            period_secs,
            created_unix,
            expiry_unix,
            note: note.to_owned(),
            agreement_signature: me.sign(&statement(
                &proposer,
                target,
                bytes_per_period,
                period_secs,
            )),
            signature: [0; SIGNATURE_LEN],
        };
        p.signature = me.sign(&signed_bytes(PROPOSAL_LABEL, &p.unsigned()));
        Ok(p)
    }

    /// The message's bytes up to the signature.
    fn unsigned(&self) -> Vec<u8> {
        let note = self.note.as_bytes();
        let note = note.get(..NOTE_MAX_LEN).unwrap_or(note);
        let mut out = Vec::with_capacity(PROPOSAL_FIXED_LEN + note.len());
        out.push(PROPOSAL_VERSION);
        out.push(KIND_PROPOSAL);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.proposer);
        out.extend_from_slice(&self.target);
        for n in [
            self.bytes_per_period,
            self.period_secs,
            self.created_unix,
            self.expiry_unix,
        ] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&(note.len() as u16).to_be_bytes());
        out.extend_from_slice(note);
        out.extend_from_slice(&self.agreement_signature);
        out
    }

    /// Whether both signatures are the proposer's: of the message, and of the
    /// agreement statement on its terms.
    pub fn verify(&self) -> bool {
        let msg = signed_bytes(PROPOSAL_LABEL, &self.unsigned());
        crypto::verify(&self.proposer, &msg, &self.signature)
            && crypto::verify(
                &self.proposer,
                &statement(
                    &self.proposer,
                    &self.target,
                    self.bytes_per_period,
                    self.period_secs,
                ),
                &self.agreement_signature,
            )
    }

    /// The message's bytes (a note over [`NOTE_MAX_LEN`] is cut; [`sign`]
    /// never makes one).
    ///
    /// [`sign`]: Proposal::sign
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.unsigned();
        out.extend_from_slice(&self.signature);
        out
    }

    fn decode_fields(r: &mut Reader<'_>) -> Result<Proposal, ProposalError> {
        let m = ProposalError::Malformed;
        let id = r.array().ok_or(m)?;
        let proposer = r.array().ok_or(m)?;
        let target = r.array().ok_or(m)?;
        let bytes_per_period = r.u64().ok_or(m)?;
        let period_secs = r.u64().ok_or(m)?;
        let created_unix = r.u64().ok_or(m)?;
        let expiry_unix = r.u64().ok_or(m)?;
        let len = usize::from(r.u16().ok_or(m)?);
        if len > NOTE_MAX_LEN {
            return Err(ProposalError::NoteTooLong(len));
        }
        let note = r.take(len).ok_or(m)?;
        let note = std::str::from_utf8(note).map_err(|_| ProposalError::NoteNotText)?;
        check_note(note)?;
        let agreement_signature = r.array().ok_or(m)?;
        let signature = r.array().ok_or(m)?;
        Ok(Proposal {
            id,
            proposer,
            target,
            bytes_per_period,
            period_secs,
            created_unix,
            expiry_unix,
            note: note.to_owned(),
            agreement_signature,
            signature,
        })
    }
}

impl Answer {
    /// `me`'s answer to `proposal` (which must be for `me`), signed. An
    /// accept signs the agreement statement on the proposal's terms too.
    pub fn sign(me: &Identity, proposal: &Proposal, verdict: AnswerKind) -> Answer {
        let verdict = match verdict {
            AnswerKind::Received => Verdict::Received,
            AnswerKind::Accept => Verdict::Accepted {
                agreement_signature: me.sign(&statement(
                    &me.public(),
                    &proposal.proposer,
                    proposal.bytes_per_period,
                    proposal.period_secs,
                )),
            },
            AnswerKind::Reject => Verdict::Rejected,
            AnswerKind::Refuse(why) => Verdict::Refused(why),
        };
        Answer::sign_verdict(me, proposal.id, &proposal.proposer, verdict)
    }

    /// `me`'s refusal of proposal `id` from `proposer`, signed: for a
    /// proposal refused before its own signature was checked (too many from
    /// its sender), where only the session vouches for the sender.
    pub fn refuse(me: &Identity, id: ProposalId, proposer: &[u8; 32], why: Refusal) -> Answer {
        Answer::sign_verdict(me, id, proposer, Verdict::Refused(why))
    }

    fn sign_verdict(
        me: &Identity,
        id: ProposalId,
        proposer: &[u8; 32],
        verdict: Verdict,
    ) -> Answer {
        let mut a = Answer {
            id,
            proposer: *proposer,
            answerer: me.public(),
            verdict,
            signature: [0; SIGNATURE_LEN],
        };
        a.signature = me.sign(&signed_bytes(ANSWER_LABEL, &a.unsigned()));
        a
    }

    fn unsigned(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ACCEPT_LEN);
        out.push(PROPOSAL_VERSION);
        out.push(KIND_ANSWER);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.proposer);
        out.extend_from_slice(&self.answerer);
        let (verdict, reason) = match self.verdict {
            Verdict::Received => (VERDICT_RECEIVED, 0),
            Verdict::Accepted { .. } => (VERDICT_ACCEPTED, 0),
            Verdict::Rejected => (VERDICT_REJECTED, 0),
            // Code 0 means "no reason"; a refusal always has one.
            Verdict::Refused(why) => (VERDICT_REFUSED, why.to_u8().max(1)),
        };
        out.push(verdict);
        out.push(reason);
        if let Verdict::Accepted {
            agreement_signature,
        } = &self.verdict
        {
            out.extend_from_slice(agreement_signature);
        }
        out
    }

    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.unsigned();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Whether this is `proposal`'s target answering `proposal` with its
    /// signature, and, for an accept, with its signature of the agreement
    /// statement on the proposal's terms.
    pub fn verify_for(&self, proposal: &Proposal) -> bool {
        if self.id != proposal.id
            || self.proposer != proposal.proposer
            || self.answerer != proposal.target
        {
            return false;
        }
        let msg = signed_bytes(ANSWER_LABEL, &self.unsigned());
        if !crypto::verify(&self.answerer, &msg, &self.signature) {
            return false;
        }
        match &self.verdict {
            Verdict::Accepted {
                agreement_signature,
            } => crypto::verify(
                &self.answerer,
                &statement(
                    &self.answerer,
                    &self.proposer,
                    proposal.bytes_per_period,
                    proposal.period_secs,
                ),
                agreement_signature,
            ),
            _ => true,
        }
    }

    fn decode_fields(r: &mut Reader<'_>) -> Result<Answer, ProposalError> {
        let m = ProposalError::Malformed;
        let id = r.array().ok_or(m)?;
        let proposer = r.array().ok_or(m)?;
        let answerer = r.array().ok_or(m)?;
        let verdict = r.u8().ok_or(m)?;
        let reason = r.u8().ok_or(m)?;
        let bad_reason = ProposalError::BadReason { verdict, reason };
        let verdict = match (verdict, reason) {
            (VERDICT_REFUSED, 0) => return Err(bad_reason),
            (VERDICT_REFUSED, code) => Verdict::Refused(Refusal::from_u8(code)),
            (VERDICT_RECEIVED | VERDICT_ACCEPTED | VERDICT_REJECTED, r) if r != 0 => {
                return Err(bad_reason);
            }
            (VERDICT_RECEIVED, _) => Verdict::Received,
            (VERDICT_REJECTED, _) => Verdict::Rejected,
            (VERDICT_ACCEPTED, _) => Verdict::Accepted {
                agreement_signature: r.array().ok_or(m)?,
            },
            (other, _) => return Err(ProposalError::BadVerdict(other)),
        };
        let signature = r.array().ok_or(m)?;
        Ok(Answer {
            id,
            proposer,
            answerer,
            verdict,
            signature,
        })
    }
}

/// What [`Answer::sign`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// [`Verdict::Received`].
    Received,
    /// [`Verdict::Accepted`].
    Accept,
    /// [`Verdict::Rejected`].
    Reject,
    /// [`Verdict::Refused`].
    Refuse(Refusal),
}

impl ProposalMessage {
    /// The message's bytes, without the [`APP_PROPOSAL`] byte.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ProposalMessage::Proposal(p) => p.encode(),
            ProposalMessage::Answer(a) => a.encode(),
        }
    }

    /// Reads a message (without the [`APP_PROPOSAL`] byte). Only canonical
    /// bytes decode: `decode(b)` is `Ok(m)` only if `m.encode() == b`.
    /// Signatures are not checked here ([`Proposal::verify`],
    /// [`Answer::verify_for`]).
    pub fn decode(bytes: &[u8]) -> Result<ProposalMessage, ProposalError> {
        let mut r = Reader::new(bytes);
        let version = r.u8().ok_or(ProposalError::Malformed)?;
        if version != PROPOSAL_VERSION {
            return Err(ProposalError::WrongVersion(version));
        }
        let msg = match r.u8().ok_or(ProposalError::Malformed)? {
            KIND_PROPOSAL => ProposalMessage::Proposal(Proposal::decode_fields(&mut r)?),
            KIND_ANSWER => ProposalMessage::Answer(Answer::decode_fields(&mut r)?),
            other => return Err(ProposalError::UnknownKind(other)),
        };
        if !r.is_empty() {
            return Err(ProposalError::Malformed);
        }
        Ok(msg)
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            ProposalMessage::Proposal(_) => "proposal",
            ProposalMessage::Answer(_) => "answer",
        }
    }
}

/// `label | body`: what a signature covers.
fn signed_bytes(label: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(label.len() + body.len());
    m.extend_from_slice(label);
    m.extend_from_slice(body);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TERMS: (u64, u64) = (1 << 40, 30 * 86_400);

    fn proposal(from: &Identity, to: &Identity, note: &str) -> Proposal {
        Proposal::sign(from, &to.public(), [7; 16], TERMS, 1000, 2000, note)
            .unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn decode_proposal(b: &[u8]) -> Option<Proposal> {
        match ProposalMessage::decode(b) {
            Ok(ProposalMessage::Proposal(p)) => Some(p),
            _ => None,
        }
    }

    fn decode_answer(b: &[u8]) -> Option<Answer> {
        match ProposalMessage::decode(b) {
            Ok(ProposalMessage::Answer(a)) => Some(a),
            _ => None,
        }
    }

    #[test]
    fn a_signed_proposal_round_trips_and_verifies() {
        let (a, c) = (Identity::generate(), Identity::generate());
        let p = proposal(&a, &c, "hello from a — ünïcode is fine");
        let bytes = p.encode();
        assert!(bytes.len() <= PROPOSAL_MAX_LEN);
        let back = decode_proposal(&bytes).unwrap_or_else(|| unreachable!());
        assert_eq!(back, p);
        assert!(back.verify());
        // Any change to a signed field breaks it.
        let mut other = back.clone();
        other.bytes_per_period += 1;
        assert!(!other.verify());
        let mut other = back.clone();
        other.target = a.public();
        assert!(!other.verify());
        let mut other = back.clone();
        other.note.push('!');
        assert!(!other.verify());
        let mut other = back;
        other.expiry_unix += 1;
        assert!(!other.verify());
    }

    #[test]
    fn answers_round_trip_and_verify_only_for_their_proposal() {
        let (a, c, x) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let p = proposal(&a, &c, "");
        for kind in [
            AnswerKind::Received,
            AnswerKind::Accept,
            AnswerKind::Reject,
            AnswerKind::Refuse(Refusal::Disabled),
            AnswerKind::Refuse(Refusal::Other(77)),
        ] {
            let ans = Answer::sign(&c, &p, kind);
            let bytes = ans.encode();
            let back = decode_answer(&bytes).unwrap_or_else(|| unreachable!());
            assert_eq!(back, ans);
            assert!(back.verify_for(&p), "{kind:?}");
            // Signed by another node: forged.
            let forged = Answer::sign(&x, &p, kind);
            assert!(!forged.verify_for(&p), "{kind:?}");
            // For another proposal: refused.
            let mut other = p.clone();
            other.id = [8; 16];
            assert!(!back.verify_for(&other), "{kind:?}");
        }
        // An accept's agreement signature is over the proposal's terms.
        let ans = Answer::sign(&c, &p, AnswerKind::Accept);
        let mut cheaper = p.clone();
        cheaper.bytes_per_period /= 2;
        assert!(!ans.verify_for(&cheaper));
        let Verdict::Accepted {
            agreement_signature,
        } = ans.verdict
        else {
            unreachable!()
        };
        assert!(crypto::verify(
            &c.public(),
            &statement(&a.public(), &c.public(), TERMS.0, TERMS.1),
            &agreement_signature
        ));
    }

    #[test]
    fn bad_messages_are_refused_with_their_reason() {
        let (a, c) = (Identity::generate(), Identity::generate());
        let good = proposal(&a, &c, "hi").encode();
        assert_eq!(ProposalMessage::decode(&[]), Err(ProposalError::Malformed));
        assert_eq!(
            ProposalMessage::decode(&[2, 1]),
            Err(ProposalError::WrongVersion(2))
        );
        assert_eq!(
            ProposalMessage::decode(&[1, 9]),
            Err(ProposalError::UnknownKind(9))
        );
        for cut in 0..good.len() {
            assert!(ProposalMessage::decode(&good[..cut]).is_err(), "{cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            ProposalMessage::decode(&long),
            Err(ProposalError::Malformed)
        );
        // The note length field says 300.
        let note_at = 2 + 16 + 64 + 32;
        let mut big = good.clone();
        big[note_at..note_at + 2].copy_from_slice(&300u16.to_be_bytes());
        assert_eq!(
            ProposalMessage::decode(&big),
            Err(ProposalError::NoteTooLong(300))
        );
        // A control character, and bytes that are not UTF-8.
        for bad in [b'\n', 0x1b, 0xff] {
            let mut b = good.clone();
            b[note_at + 2] = bad;
            assert_eq!(
                ProposalMessage::decode(&b),
                Err(ProposalError::NoteNotText),
                "{bad:#x}"
            );
        }
        let p = proposal(&a, &c, "");
        let mut ans = Answer::sign(&c, &p, AnswerKind::Reject).encode();
        let verdict_at = 2 + 16 + 64;
        ans[verdict_at] = 9;
        assert_eq!(
            ProposalMessage::decode(&ans),
            Err(ProposalError::BadVerdict(9))
        );
        ans[verdict_at] = VERDICT_REFUSED;
        assert_eq!(
            ProposalMessage::decode(&ans),
            Err(ProposalError::BadReason {
                verdict: VERDICT_REFUSED,
                reason: 0
            })
        );
        ans[verdict_at] = VERDICT_REJECTED;
        ans[verdict_at + 1] = 2;
        assert_eq!(
            ProposalMessage::decode(&ans),
            Err(ProposalError::BadReason {
                verdict: VERDICT_REJECTED,
                reason: 2
            })
        );
    }

    #[test]
    fn notes_are_bounded_text() {
        let (a, c) = (Identity::generate(), Identity::generate());
        let fits = "é".repeat(NOTE_MAX_LEN / 2);
        assert!(Proposal::sign(&a, &c.public(), [1; 16], TERMS, 1, 2, &fits).is_ok());
        assert_eq!(
            Proposal::sign(&a, &c.public(), [1; 16], TERMS, 1, 2, &"x".repeat(257)),
            Err(ProposalError::NoteTooLong(257))
        );
        for bad in [
            "two\nlines",
            "\u{1b}[31mred",
            "tab\there",
            "\u{7f}",
            "abc\u{202e}fed",
        ] {
            assert_eq!(
                Proposal::sign(&a, &c.public(), [1; 16], TERMS, 1, 2, bad),
                Err(ProposalError::NoteNotText),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn labels_keep_signatures_apart() {
        // A proposal's signature does not verify as an answer's, nor the
        // reverse: the labels differ and neither is a prefix of the other.
        assert!(!PROPOSAL_LABEL.starts_with(ANSWER_LABEL));
        assert!(!ANSWER_LABEL.starts_with(PROPOSAL_LABEL));
        assert!(!PROPOSAL_LABEL.starts_with(super::super::agreement::AGREEMENT_STATEMENT_LABEL));
    }

    #[test]
    fn zero_terms_decode_for_the_receiver_to_refuse() {
        let (a, c) = (Identity::generate(), Identity::generate());
        let p = Proposal::sign(&a, &c.public(), [1; 16], (0, 30), 1, 2, "")
            .unwrap_or_else(|e| unreachable!("{e}"));
        let back = decode_proposal(&p.encode()).unwrap_or_else(|| unreachable!());
        assert!(back.verify());
        assert!(!terms_valid(back.bytes_per_period, back.period_secs));
        assert!(terms_valid(1, 1));
    }

    fn any_refusal() -> impl Strategy<Value = Refusal> {
        (1u8..=255).prop_map(Refusal::from_u8)
    }

    fn any_verdict() -> impl Strategy<Value = Verdict> {
        prop_oneof![
            Just(Verdict::Received),
            any::<[u8; 64]>().prop_map(|s| Verdict::Accepted {
                agreement_signature: s
            }),
            Just(Verdict::Rejected),
            any_refusal().prop_map(Verdict::Refused),
        ]
    }

    proptest! {
        #[test]
        fn any_proposal_round_trips(
            id in any::<[u8; 16]>(),
            keys in any::<([u8; 32], [u8; 32])>(),
            numbers in any::<[u64; 4]>(),
            note in "[^\\p{Cc}\\p{Cf}]{0,80}",
            sigs in any::<([u8; 64], [u8; 64])>(),
        ) {
            prop_assume!(note.len() <= NOTE_MAX_LEN);
            let p = Proposal {
                id,
                proposer: keys.0,
                target: keys.1,
                bytes_per_period: numbers[0],
                period_secs: numbers[1],
                created_unix: numbers[2],
                expiry_unix: numbers[3],
                note,
                agreement_signature: sigs.0,
                signature: sigs.1,
            };
            let msg = ProposalMessage::Proposal(p);
            prop_assert_eq!(ProposalMessage::decode(&msg.encode()), Ok(msg));
        }

        #[test]
        fn any_answer_round_trips(
            id in any::<[u8; 16]>(),
            keys in any::<([u8; 32], [u8; 32])>(),
            verdict in any_verdict(),
            signature in any::<[u8; 64]>(),
        ) {
            let msg = ProposalMessage::Answer(Answer {
                id,
                proposer: keys.0,
                answerer: keys.1,
                verdict,
                signature,
            });
            let bytes = msg.encode();
            prop_assert!(bytes.len() == ANSWER_LEN || bytes.len() == ACCEPT_LEN);
            prop_assert_eq!(ProposalMessage::decode(&bytes), Ok(msg));
        }

        #[test]
        fn only_canonical_bytes_decode(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(m) = ProposalMessage::decode(&data) {
                prop_assert_eq!(m.encode(), data);
            }
        }

        #[test]
        fn a_changed_byte_breaks_the_signature(flip in 0usize..PROPOSAL_FIXED_LEN, bit in 0u8..8) {
            let (a, c) = (Identity::from_seed(&[1; 32]), Identity::from_seed(&[2; 32]));
            let mut bytes = proposal(&a, &c, "").encode();
            if let Some(b) = bytes.get_mut(flip) {
                *b ^= 1 << bit;
            }
            if let Some(p) = decode_proposal(&bytes) {
                prop_assert!(!p.verify());
            }
        }
    }
}
