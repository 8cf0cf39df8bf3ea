//! The agreement both nodes sign, in the config's [`Terms`]: signing and
//! checking the statement with a node's identity. The bytes (the statement,
//! and the ask carried in message 1) are `umbra_transport::proto::agreement`
//! (docs/protocol.md, "Agreements").

use umbra_config::Terms;
use umbra_routing::crypto::{self, Identity, SIGNATURE_LEN};
use umbra_transport::proto::agreement::{Ask, LinkAsk, statement};

/// The statement on `terms` between `a` and `b` (in either order).
fn statement_on(a: &[u8; 32], b: &[u8; 32], terms: Terms) -> Vec<u8> {
    statement(a, b, terms.bytes_per_period, terms.period_secs)
}

/// Signs the agreement between `me` and `peer` on `terms`.
pub(crate) fn sign(me: &Identity, peer: &[u8; 32], terms: Terms) -> [u8; SIGNATURE_LEN] {
    me.sign(&statement_on(&me.public(), peer, terms))
}

/// Whether `signature` is `signer`'s signature of the agreement with `other`.
pub(crate) fn verify(signer: &[u8; 32], other: &[u8; 32], terms: Terms, signature: &[u8]) -> bool {
    let Ok(sig) = <[u8; SIGNATURE_LEN]>::try_from(signature) else {
        return false;
    };
    crypto::verify(signer, &statement_on(signer, other, terms), &sig)
}

/// The dialer's ask on `terms`, signed by `me` for `peer`.
pub(crate) fn link_ask(me: &Identity, peer: &[u8; 32], ask: Ask, terms: Terms) -> LinkAsk {
    LinkAsk {
        ask,
        bytes_per_period: terms.bytes_per_period,
        period_secs: terms.period_secs,
        signature: sign(me, peer, terms),
    }
}

/// The terms an ask is for.
pub(crate) fn asked_terms(ask: &LinkAsk) -> Terms {
    Terms::quota(ask.bytes_per_period, ask.period_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn an_ask_carries_its_terms_and_a_signature_that_verifies() {
        let a = Identity::generate();
        let b = Identity::generate();
        let t = Terms::default();
        let ask = link_ask(&a, &b.public(), Ask::Agreement, t);
        assert_eq!(asked_terms(&ask), t);
        assert!(verify(&a.public(), &b.public(), t, &ask.signature));
    }
}
