//! Invite tokens: what `umbra invite` prints, `umbra accept` reads back
//! exactly; the token is one line of URL-safe characters; any other text
//! gets an error, never a panic.

use proptest::prelude::*;
use umbra_transport::proto::invite::{
    INVITE_MAX_ENDPOINTS, INVITE_PREFIX, INVITE_SECRET_LEN, INVITE_TOKEN_MAX_LEN, Invite,
    InviteError,
};

fn endpoint() -> impl Strategy<Value = String> {
    prop_oneof![
        ("[a-z0-9.-]{1,60}", 1u16..).prop_map(|(h, p)| format!("{h}:{p}")),
        (any::<[u16; 8]>(), 1u16..)
            .prop_map(|(a, p)| { format!("[{}]:{p}", std::net::Ipv6Addr::from(a)) }),
        (any::<[u8; 4]>(), 1u16..)
            .prop_map(|(a, p)| { format!("{}:{p}", std::net::Ipv4Addr::from(a)) }),
        // Host names may be internationalised: any UTF-8 (at most 240 bytes
        // here, so within the limit).
        ("[^\\s:[:cntrl:]]{1,60}", 1u16..).prop_map(|(h, p)| format!("{h}:{p}")),
    ]
}

fn invite() -> impl Strategy<Value = Invite> {
    (
        any::<[u8; 32]>(),
        proptest::collection::vec(endpoint(), 0..=INVITE_MAX_ENDPOINTS),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<[u8; INVITE_SECRET_LEN]>(),
    )
        .prop_filter_map("valid endpoints", |(k, e, b, p, x, s)| {
            Invite::new(k, e, b, p, x, s).ok()
        })
}

proptest! {
    #[test]
    fn tokens_round_trip_and_are_one_url_safe_line(inv in invite()) {
        let token = inv.encode();
        prop_assert!(token.starts_with(INVITE_PREFIX));
        prop_assert!(token.len() <= INVITE_TOKEN_MAX_LEN);
        prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        prop_assert_eq!(Invite::decode(&token), Ok(inv.clone()));
        // A pasted trailing newline is fine.
        prop_assert_eq!(Invite::decode(&format!("{token}\n")), Ok(inv));
    }

    #[test]
    fn a_changed_character_is_caught(inv in invite(), at in any::<usize>(), to in "[A-Za-z0-9_-]") {
        let token = inv.encode();
        let i = INVITE_PREFIX.len() + at % (token.len() - INVITE_PREFIX.len());
        let mut altered = token.clone();
        altered.replace_range(i..=i, &to);
        prop_assume!(altered != token);
        // Either the checksum catches it, or the change only touched the
        // unused low bits of the last character (rejected as non-canonical).
        let got = Invite::decode(&altered);
        prop_assert!(
            matches!(got, Err(InviteError::Damaged)),
            "{:?}", got
        );
    }

    #[test]
    fn arbitrary_text_never_panics(s in ".{0,400}") {
        let _ = Invite::decode(&s);
        let _ = Invite::decode(&format!("{INVITE_PREFIX}{s}"));
    }

    #[test]
    fn arbitrary_token_bodies_never_panic_or_decode_to_garbage(
        body in proptest::collection::vec(any::<u8>(), 0..2200),
    ) {
        use base64::Engine as _;
        let token = format!(
            "{INVITE_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&body)
        );
        // Random bytes pass the checksum about once in 2^32 tries; if they
        // do, what comes out must re-encode to the same token.
        if let Ok(inv) = Invite::decode(&token) {
            prop_assert_eq!(inv.encode(), token);
        }
    }
}

#[test]
fn errors_say_what_is_wrong_in_one_line() {
    let cases = [
        ("", InviteError::NotAnInvite),
        ("umbra2AAAA", InviteError::NotAnInvite),
        ("umbra1AAAA", InviteError::Truncated),
        ("umbra1AA+A", InviteError::BadCharacters),
    ];
    for (text, want) in cases {
        let got = Invite::decode(text);
        assert_eq!(got, Err(want), "{text:?}");
    }
    let long = format!("{INVITE_PREFIX}{}", "A".repeat(INVITE_TOKEN_MAX_LEN));
    assert_eq!(Invite::decode(&long), Err(InviteError::TooLong));
    for e in [
        InviteError::NotAnInvite,
        InviteError::Truncated,
        InviteError::Damaged,
        InviteError::UnsupportedVersion(2),
    ] {
        assert!(!e.to_string().contains('\n'));
    }
}

#[test]
fn expiry_is_the_first_invalid_second() {
    let inv =
        Invite::new([1; 32], vec!["198.18.0.1:443".into()], 1, 1, 1000, [0; 16]).expect("valid");
    assert!(!inv.is_expired(999));
    assert!(inv.is_expired(1000));
}

#[test]
fn the_secret_is_checked_exactly() {
    let secret = Invite::random_secret();
    let inv = Invite::new([1; 32], vec![], 1, 1, 1, secret).expect("valid");
    assert!(inv.secret_matches(&secret));
    let mut other = secret;
    other[15] ^= 1;
    assert!(!inv.secret_matches(&other));
    assert!(!inv.secret_matches(&secret[..15]));
    assert_ne!(Invite::random_secret(), secret);
}

#[test]
fn endpoints_may_be_up_to_255_bytes() {
    let at_limit = format!("{}:443", "h".repeat(251));
    assert_eq!(at_limit.len(), 255);
    let inv = Invite::new([1; 32], vec![at_limit.clone()], 1, 1, 1, [0; 16]).expect("valid");
    assert_eq!(Invite::decode(&inv.encode()), Ok(inv));
    let over = format!("h{at_limit}");
    assert_eq!(
        Invite::new([1; 32], vec![over.clone()], 1, 1, 1, [0; 16]),
        Err(InviteError::BadEndpoint(over))
    );
}
