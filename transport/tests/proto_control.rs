//! Link control messages: every message reads back as itself from exactly
//! the bytes it was written as, and anything else is an error, never a
//! panic.

use proptest::prelude::*;
use umbra_transport::proto::control::{
    CONTROL_PADDING, CONTROL_REVOKE, LinkControl, LinkControlError,
};
use umbra_transport::proto::frame::Frame;

fn message() -> impl Strategy<Value = LinkControl> {
    prop_oneof![
        Just(LinkControl::Revoke),
        any::<u32>().prop_map(|bytes_per_sec| LinkControl::Padding { bytes_per_sec }),
    ]
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
        prop_assert_eq!(LinkControl::decode(&m.encode()), Ok(m));
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
