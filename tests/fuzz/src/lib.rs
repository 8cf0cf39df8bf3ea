//! The bodies of umbra's fuzz targets. Each takes arbitrary bytes and panics
//! only if an invariant breaks: a parser panicking on its own, or accepting
//! something it cannot reproduce.
//!
//! This file is also compiled into `transport/tests/proto_fuzz_targets.rs`,
//! which runs the same bodies as property tests, so they build and pass in
//! the normal test suite without cargo-fuzz.

use umbra_routing::crypto::Identity;
use umbra_transport::proto::agreement::LinkAsk;
use umbra_transport::proto::control::LinkControl;
use umbra_transport::proto::frame::{CELL_LEN, Frame, FrameDecoder, FrameEncoder};
use umbra_transport::proto::handshake::{LinkResponder, decode_bearer, decode_msg2};
use umbra_transport::proto::invite::Invite;
use umbra_transport::proto::proposal::{Answer, AnswerKind, Proposal, ProposalMessage, check_note};
use umbra_transport::proto::relay::{
    CircuitStream, RELAY_CHUNK_MAX_LEN, decode_relay, relay_frame,
};
use umbra_transport::proto::traversal::{self, Traversal};

/// A fixed listener clock for the handshake target (unix seconds).
const FUZZ_NOW_UNIX: u64 = 1_750_000_000;

/// Link frames: the first byte picks the size of the pieces the rest is fed
/// in. Every frame that comes out must be well-formed and re-encode to
/// itself.
pub fn link_frame(data: &[u8]) {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let mut dec = FrameDecoder::new();
    let mut frames = Vec::new();
    'feed: for chunk in stream.chunks(piece) {
        if dec.push(chunk).is_err() {
            break;
        }
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }

    let mut enc = FrameEncoder::with_padded_flushes(0);
    // No padding is asked for, so the RNG is never drawn from.
    let mut rng = rand_core::OsRng;
    for f in &frames {
        if let Frame::Cell(c) = f {
            assert_eq!(c.len(), CELL_LEN);
        }
        assert!(enc.queue(f.frame_type(), f.payload()).is_ok());
    }
    let mut again = FrameDecoder::new();
    let mut back = Vec::new();
    while let Some(buf) = enc.flush(4096, &mut rng) {
        assert!(again.push(&buf).is_ok());
        while let Ok(Some(f)) = again.next_frame() {
            back.push(f);
        }
    }
    assert_eq!(back, frames);
}

/// Link authentication: arbitrary bytes as message 1, as an `Authorization`
/// header value, and as the start of a response body.
pub fn link_handshake_msg1(data: &[u8]) {
    let mut responder = LinkResponder::new(Identity::from_seed(&[7; 32]));
    let _ = responder.read_msg1(data, b"", FUZZ_NOW_UNIX);
    if let Ok(msg1) = decode_bearer(data) {
        let _ = responder.read_msg1(&msg1, b"", FUZZ_NOW_UNIX);
    }
    if let Ok(Some((msg2, used))) = decode_msg2(data) {
        assert_eq!(used, msg2.len() + 2);
        assert!(used <= data.len());
    }
}

/// Invite tokens: any text either fails or is a canonical token that
/// encodes back to itself.
pub fn invite_token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(invite) = Invite::decode(text) {
        assert_eq!(invite.encode(), text.trim());
        assert_eq!(Invite::decode(&invite.encode()), Ok(invite));
    }
}

/// Link control messages (a LinkControl frame's payload): any bytes either
/// fail or are a message whose encoding is exactly those bytes.
pub fn link_control(data: &[u8]) {
    if let Ok(msg) = LinkControl::decode(data) {
        assert_eq!(msg.encode(), data);
        assert_eq!(LinkControl::decode(&msg.encode()), Ok(msg));
    }
}

/// The agreement ask in message 1's payload: any bytes either fail or are
/// an ask whose encoding is exactly those bytes.
pub fn link_ask(data: &[u8]) {
    if let Ok(ask) = LinkAsk::decode(data) {
        assert_eq!(ask.encode(), data);
        assert_eq!(LinkAsk::decode(&ask.encode()), Ok(ask));
    }
}

/// NAT traversal messages, and the envelope that carries one through a
/// partner: any bytes either fail or are a message whose encoding is exactly
/// those bytes; an envelope that opens was sealed by a valid key.
pub fn traversal_message(data: &[u8]) {
    if let Ok(msg) = Traversal::decode(data) {
        assert_eq!(msg.encode(), data);
        assert_eq!(Traversal::decode(&msg.encode()), Ok(msg));
    }
    let mut opener = LinkResponder::new(Identity::from_seed(&[9; 32]));
    let _ = traversal::open(&mut opener, data, FUZZ_NOW_UNIX);
}

/// Relay frames' payloads: any bytes either fail or are a stream id and a
/// chunk of 1 to 16 KiB that frame back to the same bytes; and the same bytes
/// as a relayed stream's message over a circuit, canonical when it decodes.
pub fn relay_frame_payload(data: &[u8]) {
    if let Ok(m) = CircuitStream::decode(data) {
        assert_eq!(m.encode(), data);
    }
    let payload = bytes::Bytes::copy_from_slice(data);
    if let Ok((id, chunk)) = decode_relay(&payload) {
        assert!(!chunk.is_empty() && chunk.len() <= RELAY_CHUNK_MAX_LEN);
        let frame = relay_frame(id, &chunk);
        assert_eq!(frame.as_ref().map(|f| f.payload()), Some(data));
    }
}

/// Agreement proposals and their answers: any bytes either fail or are a
/// message whose encoding is exactly those bytes; a proposal's note is one
/// that may travel; checking signatures never panics, and a fixed node's
/// answer to a decoded proposal verifies for it.
pub fn proposal_message(data: &[u8]) {
    let Ok(msg) = ProposalMessage::decode(data) else {
        return;
    };
    assert_eq!(msg.encode(), data);
    assert_eq!(ProposalMessage::decode(&msg.encode()), Ok(msg.clone()));
    let me = Identity::from_seed(&[11; 32]);
    match msg {
        ProposalMessage::Proposal(mut p) => {
            assert!(check_note(&p.note).is_ok());
            let _ = p.verify();
            // As if it were for this node: its own answers verify for it.
            p.target = me.public();
            let a = Answer::sign(&me, &p, AnswerKind::Accept);
            assert!(a.verify_for(&p));
        }
        ProposalMessage::Answer(a) => {
            let p = Proposal::sign(
                &me,
                &a.answerer,
                a.id,
                (1, 1),
                FUZZ_NOW_UNIX,
                FUZZ_NOW_UNIX + 1,
                "",
            );
            if let Ok(p) = p {
                let _ = a.verify_for(&p);
            }
        }
    }
}
