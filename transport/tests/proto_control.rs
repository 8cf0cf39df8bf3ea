//! Link control messages: every message reads back as itself from exactly
//! the bytes it was written as, and anything else is an error, never a
//! panic.

use bytes::Bytes;
use proptest::prelude::*;
use umbra_transport::proto::control::{
    CONTROL_PADDING, CONTROL_REVOKE, CONTROL_TAGS, LinkControl, LinkControlError,
};
use umbra_transport::proto::frame::Frame;
use umbra_transport::proto::relay::CloseReason;

fn message() -> impl Strategy<Value = LinkControl> {
    let body = || proptest::collection::vec(any::<u8>(), 1..300).prop_map(Bytes::from);
    prop_oneof![
        Just(LinkControl::Revoke),
        any::<u32>().prop_map(|bytes_per_sec| LinkControl::Padding { bytes_per_sec }),
        any::<[u8; 32]>().prop_map(|to| LinkControl::Moved { to }),
        body().prop_map(|body| LinkControl::Traversal { body }),
        (any::<[u8; 32]>(), body())
            .prop_map(|(to, envelope)| LinkControl::ForwardTo { to, envelope }),
        (any::<[u8; 32]>(), body())
            .prop_map(|(from, envelope)| LinkControl::ForwardFrom { from, envelope }),
        (any::<u32>(), any::<[u8; 32]>()).prop_map(|(id, to)| LinkControl::RelayOpen { id, to }),
        (any::<u32>(), any::<[u8; 32]>()).prop_map(|(id, from)| LinkControl::RelayIn { id, from }),
        (any::<u32>(), any::<u8>()).prop_map(|(id, r)| LinkControl::RelayClose {
            id,
            reason: CloseReason::from_u8(r)
        }),
    ]
}

#[test]
fn no_tag_is_a_prefix_of_another() {
    for a in CONTROL_TAGS {
        for b in CONTROL_TAGS {
            if a != b {
                assert!(!b.starts_with(a), "{:?} starts {:?}", a, b);
            }
        }
    }
}

#[test]
fn known_tags_with_bad_fields_are_malformed() {
    for bad in [
        &b"nat-msg"[..],
        b"moved",
        &[&b"moved"[..], &[0; 33]].concat(),
        b"fwd-to",
        b"fwd-from\x01",
        &[&b"fwd-to"[..], &[0; 32]].concat(),
        b"relay-open\0\0\0\x01",
        &[&b"relay-in"[..], &[0; 37]].concat(),
        b"relay-close\0\0\0\x01",
    ] {
        assert!(
            matches!(
                LinkControl::decode(bad),
                Err(LinkControlError::Malformed { .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn the_bytes_on_the_wire_are_the_tag_and_a_big_endian_rate() {
    assert_eq!(LinkControl::Revoke.encode(), b"revoke");
    assert_eq!(
        LinkControl::Padding {
            bytes_per_sec: 32 * 1024
        }
        .encode(),
        b"padding\x00\x00\x80\x00"
    );
    let Frame::LinkControl(body) = LinkControl::Revoke.frame() else {
        panic!("not a LinkControl frame");
    };
    assert_eq!(&body[..], CONTROL_REVOKE);
}

#[test]
fn malformed_messages_are_refused() {
    for (rest, len) in [
        (&b""[..], 0),
        (b"\x00", 1),
        (b"\x00\x00\x80", 3),
        (b"\x00\x00\x80\x00\x00", 5),
    ] {
        let body = [CONTROL_PADDING, rest].concat();
        assert_eq!(
            LinkControl::decode(&body),
            Err(LinkControlError::MalformedPadding { len }),
            "{body:?}"
        );
    }
    for unknown in [
        &b""[..],
        b"revok",
        b"revoke\x00",
        b"REVOKE",
        b"paddin",
        b"ledger",
    ] {
        assert_eq!(
            LinkControl::decode(unknown),
            Err(LinkControlError::Unknown),
            "{unknown:?}"
        );
    }
    // The revoke message is not a padding request.
    assert!(CONTROL_REVOKE.strip_prefix(CONTROL_PADDING).is_none());
}

proptest! {
    #[test]
    fn messages_round_trip(m in message()) {
        prop_assert_eq!(LinkControl::decode(&m.encode()), Ok(m.clone()));
        let Frame::LinkControl(body) = m.frame() else {
            panic!("not a LinkControl frame");
        };
        prop_assert_eq!(&body[..], &m.encode()[..]);
    }

    #[test]
    fn what_decodes_is_canonical(body in proptest::collection::vec(any::<u8>(), 0..40)) {
        if let Ok(m) = LinkControl::decode(&body) {
            prop_assert_eq!(m.encode(), body);
        }
    }
}
