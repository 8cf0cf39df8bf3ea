//! The few IPv6 and ICMPv6 packet operations the router needs: reading a
//! packet's addresses, and writing an ICMPv6 "destination unreachable" back to
//! the app (RFC 4443 §3.1) when the overlay cannot reach an address.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use std::net::Ipv6Addr;

use crate::session::IPV6_HEADER_LEN;

/// ICMPv6 message type "destination unreachable".
pub const DEST_UNREACHABLE: u8 = 1;
/// Code 0: no route to destination (the address is in no known node).
pub const CODE_NO_ROUTE: u8 = 0;
/// Code 3: address unreachable (the node is known, no circuit reaches it).
pub const CODE_ADDRESS_UNREACHABLE: u8 = 3;
/// The IPv6 minimum MTU; an ICMPv6 error never exceeds it (RFC 4443 §2.4).
pub const MIN_MTU: usize = 1280;
const ICMPV6: u8 = 58;
const ICMP_HEADER_LEN: usize = 8;

/// The source and destination of an IPv6 packet, or `None` if `packet` is
/// not one.
pub fn ipv6_addresses(packet: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr)> {
    let header = packet.get(..IPV6_HEADER_LEN)?;
    if header.first()? >> 4 != 6 {
        return None;
    }
    let src: [u8; 16] = header.get(8..24)?.try_into().ok()?;
    let dst: [u8; 16] = header.get(24..40)?.try_into().ok()?;
    Some((src.into(), dst.into()))
}

/// Whether an ICMPv6 error may be sent about `packet`: never about another
/// ICMPv6 error, nor to an unspecified or multicast source (RFC 4443 §2.4 e).
fn may_answer(packet: &[u8], src: &Ipv6Addr) -> bool {
    if src.is_unspecified() || src.is_multicast() {
        return false;
    }
    // Only a directly following ICMPv6 header is checked; an error behind
    // extension headers is answered, which is harmless.
    let is_icmp_error =
        packet.get(6) == Some(&ICMPV6) && packet.get(IPV6_HEADER_LEN).is_some_and(|&t| t < 128);
    !is_icmp_error
}

/// Writes into `out` an ICMPv6 destination unreachable with `code`, from
/// `from` to the source of `packet`, quoting as much of `packet` as fits in
/// [`MIN_MTU`]. Returns `false` (and leaves `out` empty) when no error may be
/// sent about `packet`.
pub fn destination_unreachable(packet: &[u8], from: Ipv6Addr, code: u8, out: &mut Vec<u8>) -> bool {
    out.clear();
    let Some((src, _)) = ipv6_addresses(packet) else {
        return false;
    };
    if !may_answer(packet, &src) {
        return false;
    }
    let quoted = packet
        .len()
        .min(MIN_MTU - IPV6_HEADER_LEN - ICMP_HEADER_LEN);
    let icmp_len = ICMP_HEADER_LEN + quoted;
    out.reserve(IPV6_HEADER_LEN + icmp_len);
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(icmp_len as u16).to_be_bytes());
    out.extend_from_slice(&[ICMPV6, 64]);
    out.extend_from_slice(&from.octets());
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&[DEST_UNREACHABLE, code, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(packet.get(..quoted).unwrap_or(packet));
    let sum = checksum(&from, &src, out.get(IPV6_HEADER_LEN..).unwrap_or_default());
    if let Some(field) = out.get_mut(IPV6_HEADER_LEN + 2..IPV6_HEADER_LEN + 4) {
        field.copy_from_slice(&sum.to_be_bytes());
    }
    true
}

/// The ICMPv6 checksum of `msg` (its checksum field zero) between `src` and
/// `dst`: the ones' complement sum over the pseudo-header and the message.
pub fn checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = pair.first().copied().map_or(0, u64::from) << 8;
            let lo = pair.get(1).copied().map_or(0, u64::from);
            sum += hi | lo;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(msg);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next, 64]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn unreachable_answers_the_source_and_verifies() {
        let me: Ipv6Addr = "600::1".parse().unwrap();
        let app: Ipv6Addr = "600::2".parse().unwrap();
        let far: Ipv6Addr = "600::3".parse().unwrap();
        // An echo request (type 128) is answered.
        let p = packet(app, far, ICMPV6, &[128, 0, 0, 0, 1, 2, 3, 4]);
        let mut out = Vec::new();
        assert!(destination_unreachable(&p, me, CODE_NO_ROUTE, &mut out));
        assert_eq!(ipv6_addresses(&out), Some((me, app)));
        assert_eq!(out[IPV6_HEADER_LEN], DEST_UNREACHABLE);
        assert_eq!(&out[IPV6_HEADER_LEN + 8..], &p[..]);
        // A correct checksum sums to zero over the message as sent.
        assert_eq!(checksum(&me, &app, &out[IPV6_HEADER_LEN..]), 0);
    }

    #[test]
    fn errors_are_not_answered() {
        let a: Ipv6Addr = "600::1".parse().unwrap();
        let mut out = Vec::new();
        let err = packet(a, a, ICMPV6, &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert!(!destination_unreachable(&err, a, 0, &mut out));
        let multi = packet("ff02::1".parse().unwrap(), a, 17, &[0; 8]);
        assert!(!destination_unreachable(&multi, a, 0, &mut out));
        assert!(!destination_unreachable(&[0x60; 20], a, 0, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn big_packets_are_quoted_to_the_minimum_mtu() {
        let a: Ipv6Addr = "600::1".parse().unwrap();
        let p = packet(a, a, 17, &vec![7; 9000]);
        let mut out = Vec::new();
        assert!(destination_unreachable(&p, a, 0, &mut out));
        assert_eq!(out.len(), MIN_MTU);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut out = Vec::new();
            if destination_unreachable(&bytes, Ipv6Addr::LOCALHOST, 3, &mut out) {
                prop_assert!(out.len() <= MIN_MTU);
            }
        }
    }
}
