//! Socket addresses on the wire (docs/protocol.md, "Conventions"): a 16-byte
//! IPv6 address, IPv4 as IPv4-mapped, then a big-endian `u16` port. Handshake
//! message 2's observed address and traversal messages' endpoints use it.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Length of an encoded address, in bytes.
pub const ADDR_LEN: usize = 18;

/// Writes `addr` as [`ADDR_LEN`] bytes. IPv6 scope ids and flow labels are
/// not carried.
pub fn encode_addr(addr: SocketAddr) -> [u8; ADDR_LEN] {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut out = [0u8; ADDR_LEN];
    let (a, p) = out.split_at_mut(16);
    a.copy_from_slice(&ip.octets());
    p.copy_from_slice(&addr.port().to_be_bytes());
    out
}

/// Reads [`encode_addr`]'s bytes from the start of `buf`; IPv4-mapped
/// addresses come back as IPv4. `None` if `buf` is shorter.
pub fn decode_addr(buf: &[u8]) -> Option<SocketAddr> {
    let (ip, rest) = buf.split_first_chunk::<16>()?;
    let port = rest.first_chunk::<2>()?;
    let ip = Ipv6Addr::from(*ip);
    let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
    Some(SocketAddr::new(ip, u16::from_be_bytes(*port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for s in ["198.18.1.2:443", "[2001:db8::1]:40000", "0.0.0.0:0"] {
            let a: SocketAddr = s.parse().expect("addr");
            assert_eq!(decode_addr(&encode_addr(a)), Some(a));
        }
        assert_eq!(decode_addr(&[0; ADDR_LEN - 1]), None);
    }
}
