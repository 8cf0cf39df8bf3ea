//! The agreement ask of message 1: it reads back as itself, and anything
//! malformed is an error, never a panic.

use proptest::prelude::*;
use umbra_transport::proto::agreement::{Ask, LinkAsk, LinkAskError, statement};

/// 50GiB/30d, the default terms.
const BYTES_PER_PERIOD: u64 = 50 << 30;
const PERIOD_SECS: u64 = 30 * 24 * 3600;

#[test]
fn ask_round_trips() {
    for ask in [Ask::Agreement, Ask::Invite([9; 16])] {
        let a = LinkAsk {
            ask,
            bytes_per_period: BYTES_PER_PERIOD,
            period_secs: PERIOD_SECS,
            signature: [5; 64],
        };
        assert_eq!(LinkAsk::decode(&a.encode()), Ok(a));
    }
}

#[test]
fn malformed_asks_are_refused() {
    let good = LinkAsk {
        ask: Ask::Agreement,
        bytes_per_period: BYTES_PER_PERIOD,
        period_secs: PERIOD_SECS,
        signature: [5; 64],
    }
    .encode();
    assert_eq!(
        LinkAsk::decode(&good[..good.len() - 1]),
        Err(LinkAskError::Truncated)
    );
    let mut zero = good.clone();
    zero[1..9].fill(0);
    assert_eq!(LinkAsk::decode(&zero), Err(LinkAskError::ZeroTerms));
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        LinkAsk::decode(&long),
        Err(LinkAskError::BadKind { kind: 1, extra: 1 })
    );
    let mut invite_without_secret = good;
    invite_without_secret[0] = 2;
    assert_eq!(
        LinkAsk::decode(&invite_without_secret),
        Err(LinkAskError::BadKind { kind: 2, extra: 0 })
    );
}

#[test]
fn the_statement_is_the_same_from_both_sides() {
    let (a, b) = ([1; 32], [2; 32]);
    assert_eq!(statement(&a, &b, 1, 2), statement(&b, &a, 1, 2));
    assert_ne!(statement(&a, &b, 1, 2), statement(&a, &b, 2, 1));
    assert!(statement(&a, &b, 1, 2).starts_with(b"umbra agreement v1"));
}

proptest! {
    #[test]
    fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(ask) = LinkAsk::decode(&b) {
            prop_assert_eq!(ask.encode(), b);
        }
    }
}
