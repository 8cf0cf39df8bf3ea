//! Link authentication: two nodes complete the handshake, and anything else
//! (altered bytes, another TLS connection, a replay, a stale clock, garbage)
//! is refused without a panic.

use proptest::prelude::*;
use umbra_routing::crypto::Identity;
use umbra_transport::proto::handshake::{
    BEARER_MAX_LEN, HANDSHAKE_MAX_CLOCK_SKEW_SECS, HandshakeError, IncomingLink, LinkEstablished,
    LinkInitiator, LinkResponder, MSG1_APP_PAYLOAD_MAX_LEN, MSG1_MAX_LEN, MSG2_APP_PAYLOAD_MAX_LEN,
    decode_bearer, decode_msg2, encode_bearer,
};

const NOW: u64 = 1_750_000_000;

/// Runs message 1 through the header encoding, as the I/O side does.
fn through_header(msg1: &[u8]) -> Vec<u8> {
    let header = encode_bearer(msg1);
    decode_bearer(header.as_bytes()).expect("own header decodes")
}

/// One full handshake; returns both ends' view.
fn handshake(
    dialer: &Identity,
    listener: Identity,
    prologue: &[u8],
    request: &[u8],
    reply: &[u8],
) -> (LinkEstablished, LinkEstablished) {
    let (initiator, msg1) =
        LinkInitiator::start(dialer, &listener.public(), prologue, NOW, request).expect("start");
    let mut responder = LinkResponder::new(listener);
    let incoming = responder
        .read_msg1(&through_header(&msg1), prologue, NOW)
        .expect("listener reads msg1");
    let (body, at_listener) = incoming.accept(reply).expect("accept");
    let (msg2, used) = decode_msg2(&body).expect("msg2").expect("whole msg2");
    assert_eq!(used, body.len());
    let at_dialer = initiator.finish(msg2).expect("dialer reads msg2");
    (at_dialer, at_listener)
}

/// Message 1 from a dialer made from `seed` to the listener made from seed 7,
/// at [`NOW`]. Returns the dialer's state, message 1 and the listener.
fn dial(seed: &[u8; 32], prologue: &[u8], request: &[u8]) -> (LinkInitiator, Vec<u8>, Identity) {
    let listener = Identity::from_seed(&[7; 32]);
    let (initiator, msg1) = LinkInitiator::start(
        &Identity::from_seed(seed),
        &listener.public(),
        prologue,
        NOW,
        request,
    )
    .expect("start");
    (initiator, msg1, listener)
}

fn identity() -> impl Strategy<Value = Identity> {
    any::<[u8; 32]>().prop_map(|seed| Identity::from_seed(&seed))
}

fn flip(bytes: &[u8], index: usize, bit: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let i = index % out.len();
    out[i] ^= 1 << (bit % 8);
    out
}

proptest! {
    #[test]
    fn handshake_authenticates_both_nodes_and_carries_payloads(
        dialer in identity(),
        listener in identity(),
        prologue in proptest::collection::vec(any::<u8>(), 0..64),
        request in proptest::collection::vec(any::<u8>(), 0..=MSG1_APP_PAYLOAD_MAX_LEN),
        reply in proptest::collection::vec(any::<u8>(), 0..=300),
    ) {
        let listener_key = listener.public();
        let (at_dialer, at_listener) = handshake(&dialer, listener, &prologue, &request, &reply);
        prop_assert_eq!(at_listener.peer, dialer.public());
        prop_assert_eq!(at_dialer.peer, listener_key);
        prop_assert_eq!(at_listener.app_payload, request);
        prop_assert_eq!(at_dialer.app_payload, reply);
        prop_assert_eq!(at_dialer.handshake_hash, at_listener.handshake_hash);
    }

    #[test]
    fn any_flipped_bit_in_msg1_is_refused(
        seed in any::<[u8; 32]>(),
        index in any::<usize>(),
        bit in any::<u8>(),
    ) {
        let (_, msg1, listener) = dial(&seed, b"tls", b"secret");
        let mut responder = LinkResponder::new(listener);
        let altered = flip(&msg1, index, bit);
        prop_assert!(responder.read_msg1(&altered, b"tls", NOW).is_err());
        // The unaltered message still works: the failure left no state behind.
        prop_assert!(responder.read_msg1(&msg1, b"tls", NOW).is_ok());
    }

    #[test]
    fn any_flipped_bit_in_msg2_is_refused(
        seed in any::<[u8; 32]>(),
        index in any::<usize>(),
        bit in any::<u8>(),
    ) {
        let (initiator, msg1, listener) = dial(&seed, b"tls", b"");
        let incoming = LinkResponder::new(listener)
            .read_msg1(&msg1, b"tls", NOW)
            .expect("msg1");
        let (body, _) = incoming.accept(b"198.18.0.7:51234").expect("accept");
        let altered = flip(&body, index, bit);
        let finished = match decode_msg2(&altered) {
            Ok(Some((msg2, _))) => initiator.finish(msg2).is_ok(),
            // A longer length asks for bytes that never come: the dialer
            // times out. A shorter or absurd one fails here.
            Ok(None) | Err(_) => false,
        };
        prop_assert!(!finished);
    }

    #[test]
    fn a_replayed_msg1_is_refused(seed in any::<[u8; 32]>(), later in 0..=HANDSHAKE_MAX_CLOCK_SKEW_SECS) {
        let (_, msg1, listener) = dial(&seed, b"", b"");
        let mut responder = LinkResponder::new(listener);
        prop_assert!(responder.read_msg1(&msg1, b"", NOW).is_ok());
        let again = responder.read_msg1(&msg1, b"", NOW + later).map(|_| ());
        prop_assert_eq!(again, Err(HandshakeError::Replay));
    }

    #[test]
    fn a_different_prologue_is_refused(
        seed in any::<[u8; 32]>(),
        ours in proptest::collection::vec(any::<u8>(), 0..48),
        theirs in proptest::collection::vec(any::<u8>(), 0..48),
    ) {
        prop_assume!(ours != theirs);
        let (_, msg1, listener) = dial(&seed, &ours, b"");
        let got = LinkResponder::new(listener).read_msg1(&msg1, &theirs, NOW).map(|_| ());
        prop_assert_eq!(got, Err(HandshakeError::DecryptFailed));
    }

    #[test]
    fn arbitrary_msg1_bytes_never_panic_or_pass(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
        let mut responder = LinkResponder::new(Identity::from_seed(&[7; 32]));
        prop_assert!(responder.read_msg1(&data, b"", NOW).is_err());
        prop_assert_eq!(responder.replay_cache_len(), 0);
    }

    #[test]
    fn arbitrary_header_values_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2200)) {
        if let Ok(msg1) = decode_bearer(&data) {
            prop_assert!(msg1.len() <= MSG1_MAX_LEN);
        }
        let mut prefixed = b"Bearer ".to_vec();
        prefixed.extend_from_slice(&data);
        let _ = decode_bearer(&prefixed);
    }

    #[test]
    fn arbitrary_header_tokens_round_trip_or_fail(msg1 in proptest::collection::vec(any::<u8>(), 0..=MSG1_MAX_LEN + 8)) {
        match decode_bearer(encode_bearer(&msg1).as_bytes()) {
            Ok(back) => prop_assert_eq!(back, msg1),
            Err(e) => prop_assert!(matches!(e, HandshakeError::TooShort | HandshakeError::TooLong)),
        }
    }

    #[test]
    fn arbitrary_response_bodies_never_panic(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
        if let Ok(Some((msg2, used))) = decode_msg2(&data) {
            prop_assert_eq!(used, msg2.len() + 2);
            prop_assert!(used <= data.len());
            let (initiator, _, _) = dial(&[8; 32], b"", b"");
            prop_assert!(initiator.finish(msg2).is_err());
        }
    }
}

#[test]
fn msg2_decoder_waits_for_the_whole_message_then_leaves_the_frames() {
    let listener = Identity::from_seed(&[1; 32]);
    let dialer = Identity::from_seed(&[2; 32]);
    let (initiator, msg1) =
        LinkInitiator::start(&dialer, &listener.public(), b"x", NOW, b"hello").expect("start");
    let incoming: IncomingLink = LinkResponder::new(listener)
        .read_msg1(&msg1, b"x", NOW)
        .expect("msg1");
    let (mut body, _) = incoming.accept(b"observed").expect("accept");
    let msg2_len = body.len();
    body.extend_from_slice(b"first frames");
    for cut in 0..msg2_len {
        assert_eq!(decode_msg2(&body[..cut]), Ok(None), "cut at {cut}");
    }
    let (msg2, used) = decode_msg2(&body).expect("valid").expect("complete");
    assert_eq!(&body[used..], b"first frames");
    let link = initiator.finish(msg2).expect("finish");
    assert_eq!(link.app_payload, b"observed");
}

#[test]
fn clock_skew_of_120_seconds_is_allowed_and_121_is_not() {
    let listener = Identity::from_seed(&[1; 32]);
    let dialer = Identity::from_seed(&[2; 32]);
    let mut responder = LinkResponder::new(listener.clone());
    // Message 1 from a dialer whose clock is `skew` seconds off.
    let msg1_with_skew = |skew: i64| {
        let then = NOW.saturating_add_signed(skew);
        let (_, msg1) =
            LinkInitiator::start(&dialer, &listener.public(), b"", then, b"").expect("start");
        msg1
    };
    for skew in [-120i64, 0, 120] {
        let msg1 = msg1_with_skew(skew);
        assert!(responder.read_msg1(&msg1, b"", NOW).is_ok(), "skew {skew}");
    }
    for skew in [-121i64, 121, -100_000] {
        let msg1 = msg1_with_skew(skew);
        let got = responder.read_msg1(&msg1, b"", NOW).map(|_| ());
        assert_eq!(got, Err(HandshakeError::StaleTimestamp), "skew {skew}");
    }
}

#[test]
fn a_dialer_that_targets_another_node_is_refused() {
    let dialer = Identity::from_seed(&[2; 32]);
    let intended = Identity::from_seed(&[3; 32]);
    let (_, msg1) =
        LinkInitiator::start(&dialer, &intended.public(), b"", NOW, b"").expect("start");
    let got = LinkResponder::new(Identity::from_seed(&[4; 32]))
        .read_msg1(&msg1, b"", NOW)
        .map(|_| ());
    assert_eq!(got, Err(HandshakeError::DecryptFailed));
}

#[test]
fn header_parsing_follows_http_rules_and_limits() {
    let listener = Identity::from_seed(&[1; 32]);
    let (_, msg1) = LinkInitiator::start(
        &Identity::from_seed(&[2; 32]),
        &listener.public(),
        b"",
        NOW,
        b"",
    )
    .expect("start");
    let header = encode_bearer(&msg1);
    assert!(header.starts_with("Bearer "));
    let token = &header["Bearer ".len()..];
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    // The scheme is case-insensitive.
    assert_eq!(
        decode_bearer(format!("bearer {token}").as_bytes()),
        Ok(msg1.clone())
    );
    assert_eq!(
        decode_bearer(format!("Basic {token}").as_bytes()),
        Err(HandshakeError::BadBase64)
    );
    assert_eq!(
        decode_bearer(format!("Bearer {token}=").as_bytes()),
        Err(HandshakeError::BadBase64)
    );
    assert_eq!(
        decode_bearer(&vec![b'A'; BEARER_MAX_LEN + 1]),
        Err(HandshakeError::TooLong)
    );
    assert_eq!(decode_bearer(b"Bearer AAAA"), Err(HandshakeError::TooShort));
}

#[test]
fn payloads_over_the_limits_are_caller_errors() {
    let listener = Identity::from_seed(&[1; 32]);
    let dialer = Identity::from_seed(&[2; 32]);
    let too_big = vec![0u8; MSG1_APP_PAYLOAD_MAX_LEN + 1];
    let got = LinkInitiator::start(&dialer, &listener.public(), b"", NOW, &too_big).map(|_| ());
    assert_eq!(got, Err(HandshakeError::PayloadTooLong(too_big.len())));

    let (_, msg1) =
        LinkInitiator::start(&dialer, &listener.public(), b"", NOW, b"").expect("start");
    let incoming = LinkResponder::new(listener)
        .read_msg1(&msg1, b"", NOW)
        .expect("msg1");
    let got = incoming
        .accept(&vec![0u8; MSG2_APP_PAYLOAD_MAX_LEN + 1])
        .map(|_| ());
    assert_eq!(
        got,
        Err(HandshakeError::PayloadTooLong(MSG2_APP_PAYLOAD_MAX_LEN + 1))
    );
}

#[test]
fn the_largest_payloads_fit() {
    let listener = Identity::from_seed(&[1; 32]);
    let dialer = Identity::from_seed(&[2; 32]);
    let request = vec![0xAB; MSG1_APP_PAYLOAD_MAX_LEN];
    let reply = vec![0xCD; MSG2_APP_PAYLOAD_MAX_LEN];
    let (at_dialer, at_listener) = handshake(&dialer, listener, b"tls", &request, &reply);
    assert_eq!(at_listener.app_payload, request);
    assert_eq!(at_dialer.app_payload, reply);
}
