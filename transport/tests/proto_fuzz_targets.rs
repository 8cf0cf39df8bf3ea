//! The fuzz targets of `tests/fuzz` run here as property tests over
//! arbitrary bytes, so the normal suite builds them and checks their
//! invariants without cargo-fuzz.

use proptest::prelude::*;

#[allow(unreachable_pub)]
#[path = "../../tests/fuzz/src/lib.rs"]
mod fuzz_bodies;

proptest! {
    #[test]
    fn link_frame_target(data in proptest::collection::vec(any::<u8>(), 0..8000)) {
        fuzz_bodies::link_frame(&data);
    }

    #[test]
    fn link_frame_target_on_frame_shaped_input(
        frames in proptest::collection::vec(
            (0u8..8, proptest::collection::vec(any::<u8>(), 0..300)), 0..20),
        piece in any::<u8>(),
    ) {
        // Mostly well-formed streams, so the re-encode check is reached.
        let mut data = vec![piece];
        for (ty, payload) in frames {
            let payload = match ty {
                0x01 => vec![0xC0; 1200],
                0x05 => Vec::new(),
                _ => payload,
            };
            data.extend_from_slice(&u16::try_from(payload.len() + 1).unwrap_or(1).to_be_bytes());
            data.push(ty);
            data.extend_from_slice(&payload);
        }
        fuzz_bodies::link_frame(&data);
    }

    #[test]
    fn link_handshake_msg1_target(data in proptest::collection::vec(any::<u8>(), 0..2200)) {
        fuzz_bodies::link_handshake_msg1(&data);
    }

    #[test]
    fn invite_token_target(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
        fuzz_bodies::invite_token(&data);
    }

    #[test]
    fn invite_token_target_on_token_shaped_text(s in "umbra1[A-Za-z0-9_-]{0,300}") {
        fuzz_bodies::invite_token(s.as_bytes());
    }

    #[test]
    fn link_control_target(data in proptest::collection::vec(any::<u8>(), 0..40)) {
        fuzz_bodies::link_control(&data);
    }

    #[test]
    fn link_control_target_on_tagged_input(
        tag in proptest::sample::select(umbra_transport::proto::control::CONTROL_TAGS.to_vec()),
        rest in proptest::collection::vec(any::<u8>(), 0..48),
    ) {
        // Mostly a known tag, so the decoders' length checks are reached.
        fuzz_bodies::link_control(&[tag, &rest[..]].concat());
    }

    #[test]
    fn link_ask_target(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        fuzz_bodies::link_ask(&data);
    }

    #[test]
    fn link_ask_target_on_ask_shaped_input(
        kind in 0u8..4,
        terms in any::<[u8; 16]>(),
        signature in any::<[u8; 64]>(),
        secret in proptest::collection::vec(any::<u8>(), 0..20),
    ) {
        let data = [&[kind][..], &terms, &signature, &secret].concat();
        fuzz_bodies::link_ask(&data);
    }

    #[test]
    fn traversal_message_target(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
        fuzz_bodies::traversal_message(&data);
    }

    #[test]
    fn traversal_message_target_on_message_shaped_input(
        kind in 0u8..7,
        fields in proptest::collection::vec(any::<u8>(), 0..120),
        count in 0u8..10,
    ) {
        // Version 1, a kind near the known ones, and small counts, so the
        // field checks are reached.
        let mut data = vec![1, kind];
        data.extend_from_slice(&fields);
        if let Some(b) = data.get_mut(8) {
            *b = count;
        }
        fuzz_bodies::traversal_message(&data);
    }

    #[test]
    fn proposal_message_target(data in proptest::collection::vec(any::<u8>(), 0..700)) {
        fuzz_bodies::proposal_message(&data);
    }

    #[test]
    fn proposal_message_target_on_message_shaped_input(
        seed in any::<[u8; 32]>(),
        kind in 0u8..4,
        note in "[ -~]{0,40}",
        flip in any::<(u16, u8)>(),
        cut in any::<u16>(),
    ) {
        // Real messages, signed, then one byte changed or the end cut, so
        // the field checks and the signature paths are reached.
        use umbra_routing::crypto::Identity;
        use umbra_transport::proto::proposal::{Answer, AnswerKind, Proposal, Refusal};
        let (a, c) = (Identity::from_seed(&seed), Identity::from_seed(&[3; 32]));
        let p = Proposal::sign(&a, &c.public(), [kind; 16], (1 << 30, 86_400), 1, 2, &note)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut data = match kind {
            0 => p.encode(),
            1 => Answer::sign(&c, &p, AnswerKind::Accept).encode(),
            2 => Answer::sign(&c, &p, AnswerKind::Refuse(Refusal::Busy)).encode(),
            _ => Answer::sign(&c, &p, AnswerKind::Received).encode(),
        };
        fuzz_bodies::proposal_message(&data);
        let at = usize::from(flip.0) % data.len();
        data[at] ^= flip.1;
        fuzz_bodies::proposal_message(&data);
        data.truncate(usize::from(cut) % (data.len() + 1));
        fuzz_bodies::proposal_message(&data);
    }

    #[test]
    fn relay_frame_target(data in proptest::collection::vec(any::<u8>(), 0..17_000)) {
        fuzz_bodies::relay_frame_payload(&data);
    }
}
