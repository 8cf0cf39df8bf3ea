//! Addresses derived from identity keys, exactly as Yggdrasil derives them
//! (`docs/protocol.md, "Identity and addresses"`); only the prefix byte
//! differs.
//!
//! ```text
//! inv  = bitwise NOT of the 32-byte public key
//! ones = number of leading 1 bits of inv   (= leading 0 bits of the key)
//! rest = bits of inv after those ones and the first 0, packed MSB first
//! address = [P, ones] ++ rest[0..14]       (a /128)
//! subnet  = [P | 1, ones] ++ rest[0..6]    (a /64)
//! ```

use std::net::Ipv6Addr;

/// umbra's default address prefix: addresses in `600::/8`, subnets in `700::/8`.
pub const DEFAULT_PREFIX: u8 = 0x06;
/// Yggdrasil's prefix; with it the derivation gives Yggdrasil's own addresses.
pub const YGGDRASIL_PREFIX: u8 = 0x02;
/// Length of the whole overlay's route: `P::/7` covers both addresses and subnets.
pub const OVERLAY_PREFIX_LEN: u8 = 7;
/// Length of a node's subnet.
pub const SUBNET_PREFIX_LEN: u8 = 64;

/// Number of leading zero bits of a public key: its "strength".
pub fn leading_zero_bits(key: &[u8; 32]) -> u32 {
    let mut n = 0;
    for &b in key {
        if b == 0 {
            n += 8;
        } else {
            n += b.leading_zeros();
            break;
        }
    }
    n
}

/// The bits of `!key` after the leading ones and the first zero, packed MSB
/// first. Returns the count of leading ones and up to 14 bytes of the rest.
fn inverted_tail(key: &[u8; 32]) -> (u8, [u8; 14]) {
    let ones = leading_zero_bits(key);
    let mut tail = [0u8; 14];
    // Bit index into `!key` where `rest` starts; the key is 256 bits, so a key
    // of all zeros has no zero bit to drop and an empty tail.
    let start = ones as usize + 1;
    for (i, out) in tail.iter_mut().enumerate() {
        let mut byte = 0u8;
        for j in 0..8 {
            let bit = start + i * 8 + j;
            let v = if bit < 256 {
                (!key[bit / 8] >> (7 - bit % 8)) & 1
            } else {
                0
            };
            byte = (byte << 1) | v;
        }
        *out = byte;
    }
    // `ones` is at most 256; Yggdrasil stores it in one byte and so do we
    // (a key with 255+ leading zero bits cannot be found by search).
    (ones.min(255) as u8, tail)
}

/// The node's /128 address for `key` under `prefix`.
pub fn address_for_key(key: &[u8; 32], prefix: u8) -> Ipv6Addr {
    let (ones, tail) = inverted_tail(key);
    let mut a = [0u8; 16];
    a[0] = prefix;
    a[1] = ones;
    a[2..].copy_from_slice(&tail);
    Ipv6Addr::from(a)
}

/// The node's /64 subnet for `key` under `prefix` (the network address; the
/// prefix length is [`SUBNET_PREFIX_LEN`]).
pub fn subnet_for_key(key: &[u8; 32], prefix: u8) -> Ipv6Addr {
    let (ones, tail) = inverted_tail(key);
    let mut a = [0u8; 16];
    a[0] = prefix | 1;
    a[1] = ones;
    a[2..8].copy_from_slice(&tail[..6]);
    Ipv6Addr::from(a)
}

/// Whether `addr` is a node address (not a subnet address) under `prefix`.
pub fn is_node_address(addr: &Ipv6Addr, prefix: u8) -> bool {
    addr.octets()[0] == prefix
}

/// Whether `addr` lies in a node subnet (`(P|1)::/8`) under `prefix`.
pub fn is_subnet_address(addr: &Ipv6Addr, prefix: u8) -> bool {
    addr.octets()[0] == prefix | 1
}

/// What an address (or subnet address) tells about the key behind it: the
/// key bits it fixes, and a mask of which bits those are. Used to check that
/// an address belongs to a key without knowing the key in advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialKey {
    /// The known bits of the public key (unknown bits are 0).
    pub bits: [u8; 32],
    /// 1 where a bit of `bits` is known.
    pub mask: [u8; 32],
}

impl PartialKey {
    /// Whether `key` agrees with every known bit.
    pub fn matches(&self, key: &[u8; 32]) -> bool {
        key.iter()
            .zip(self.bits.iter().zip(self.mask.iter()))
            .all(|(k, (b, m))| k & m == b & m)
    }
}

/// The partial key an address fixes. A /128 fixes `ones + 1 + 112` bits of
/// the key; a subnet address fixes `ones + 1 + 48`. The prefix byte is not
/// checked here.
pub fn partial_key(addr: &Ipv6Addr) -> PartialKey {
    let o = addr.octets();
    let ones = o[1] as usize;
    let tail_bits = if o[0] & 1 == 1 { 48 } else { 112 };
    let mut bits = [0u8; 32];
    let mut mask = [0u8; 32];
    let mut set = |idx: usize, inv_bit: u8| {
        if idx < 256 {
            // The address stores bits of `!key`; store the key's bit.
            let key_bit = inv_bit ^ 1;
            bits[idx / 8] |= key_bit << (7 - idx % 8);
            mask[idx / 8] |= 1 << (7 - idx % 8);
        }
    };
    for i in 0..ones {
        set(i, 1);
    }
    set(ones, 0);
    for t in 0..tail_bits {
        let v = (o[2 + t / 8] >> (7 - t % 8)) & 1;
        set(ones + 1 + t, v);
    }
    PartialKey { bits, mask }
}

/// Whether `addr` (a /128 node address or any address inside a node's /64)
/// belongs to `key` under `prefix`.
pub fn address_belongs_to(addr: &Ipv6Addr, key: &[u8; 32], prefix: u8) -> bool {
    if is_node_address(addr, prefix) {
        *addr == address_for_key(key, prefix)
    } else if is_subnet_address(addr, prefix) {
        addr.octets()[..8] == subnet_for_key(key, prefix).octets()[..8]
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(hex_str: &str) -> [u8; 32] {
        let v = hex::decode(hex_str).expect("hex");
        v.try_into().expect("32 bytes")
    }

    /// Yggdrasil 0.4.7's own results (the vectors of `docs/protocol.md,
    /// "Identity and addresses"`).
    const VECTORS: [(&str, &str, &str); 5] = [
        (
            "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29",
            "202:24ae:c219:8a4a:de94:eae2:b97e:ac87",
            "302:24ae:c219:8a4a::",
        ),
        (
            "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c",
            "200:eaee:3845:17ec:1cd4:55a:49a5:868b",
            "300:eaee:3845:17ec::",
        ),
        (
            "000061e7f7535052735bad3efdde9f0ec2662fc1b78a5d12b851eb5d22f01b29",
            "211:7860:22b2:beb6:3291:4b04:885:83c4",
            "311:7860:22b2:beb6::",
        ),
        (
            "6b70fcd5fe37225e709bdc66f4b98db3f2142f315255d0d5196769c5d83e436b",
            "201:523c:ca8:723:7686:3d90:8e64:2d19",
            "301:523c:ca8:723::",
        ),
        (
            "bdbacfd82240de3dcd123924cbb55256fb8dab08aa98e305528ab84f419e6efb",
            "200:848a:604f:bb7e:4384:65db:8db6:6895",
            "300:848a:604f:bb7e::",
        ),
    ];

    #[test]
    fn yggdrasil_vectors() {
        for (k, addr, subnet) in VECTORS {
            let k = key(k);
            assert_eq!(
                address_for_key(&k, YGGDRASIL_PREFIX),
                addr.parse::<Ipv6Addr>().expect("addr"),
                "address of {}",
                hex::encode(k)
            );
            assert_eq!(
                subnet_for_key(&k, YGGDRASIL_PREFIX),
                subnet.parse::<Ipv6Addr>().expect("subnet"),
                "subnet of {}",
                hex::encode(k)
            );
        }
    }

    #[test]
    fn default_prefix_only_changes_first_byte() {
        for (k, _, _) in VECTORS {
            let k = key(k);
            let y = address_for_key(&k, YGGDRASIL_PREFIX).octets();
            let u = address_for_key(&k, DEFAULT_PREFIX).octets();
            assert_eq!(u[0], 0x06);
            assert_eq!(y[1..], u[1..]);
            assert_eq!(subnet_for_key(&k, DEFAULT_PREFIX).octets()[0], 0x07);
        }
    }

    #[test]
    fn mined_key_strength_is_second_byte() {
        let k = key(VECTORS[2].0);
        assert_eq!(leading_zero_bits(&k), 17);
        assert_eq!(address_for_key(&k, DEFAULT_PREFIX).octets()[1], 17);
    }

    #[test]
    fn extreme_keys_do_not_panic() {
        let zero = [0u8; 32];
        let a = address_for_key(&zero, DEFAULT_PREFIX);
        assert_eq!(a.octets()[1], 255);
        let ff = [0xffu8; 32];
        let a = address_for_key(&ff, DEFAULT_PREFIX);
        assert_eq!(a.octets()[1], 0);
        assert!(partial_key(&a).matches(&ff));
    }

    proptest! {
        #[test]
        fn address_and_subnet_agree(k in any::<[u8; 32]>(), p in (0u8..128).prop_map(|p| p * 2)) {
            let a = address_for_key(&k, p).octets();
            let s = subnet_for_key(&k, p).octets();
            prop_assert_eq!(a[0], p);
            prop_assert_eq!(s[0], p | 1);
            prop_assert_eq!(&a[1..8], &s[1..8]);
            prop_assert_eq!(&s[8..], &[0u8; 8][..]);
            prop_assert!(address_belongs_to(&Ipv6Addr::from(a), &k, p));
            prop_assert!(address_belongs_to(&Ipv6Addr::from(s), &k, p));
        }

        #[test]
        fn address_matches_its_partial_key(k in any::<[u8; 32]>(), zeros in 0usize..40) {
            // Force a run of leading zero bits to exercise the `ones` count.
            let mut k = k;
            for i in 0..zeros { k[i / 8] &= !(0x80 >> (i % 8)); }
            let a = address_for_key(&k, DEFAULT_PREFIX);
            prop_assert!(partial_key(&a).matches(&k));
            let s = subnet_for_key(&k, DEFAULT_PREFIX);
            prop_assert!(partial_key(&s).matches(&k));
        }

        #[test]
        fn other_keys_rarely_match(k in any::<[u8; 32]>(), j in any::<[u8; 32]>()) {
            prop_assume!(k[..14] != j[..14]);
            let a = address_for_key(&k, DEFAULT_PREFIX);
            prop_assert!(!partial_key(&a).matches(&j));
            prop_assert!(!address_belongs_to(&a, &j, DEFAULT_PREFIX));
        }
    }
}
