//! What the TUN is created with, and its validation (pure logic).

use std::net::Ipv6Addr;

use crate::TunError;

/// The smallest MTU the TUN accepts. IPv6 requires every link to carry
/// 1280-byte packets, and Linux turns IPv6 off on a device whose MTU is lower.
pub const MIN_MTU: u32 = 1280;

/// The largest MTU the TUN accepts: the Linux TUN driver's maximum.
pub const MAX_MTU: u32 = 65535;

/// Longest interface name Linux accepts (`IFNAMSIZ` minus the NUL byte).
pub const MAX_NAME_LEN: usize = 15;

/// What [`crate::Tun::create`] sets up (`docs/architecture.md, "The service"`: the
/// TUN at start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunSettings {
    /// Interface name, for example `umbra0`.
    pub name: String,
    /// Link MTU in bytes, from [`MIN_MTU`] to [`MAX_MTU`].
    pub mtu: u32,
    /// The node's address. It is added as a /128.
    pub address: Ipv6Addr,
    /// The overlay prefix routed into the TUN, for example `(600::, 7)`.
    /// Host bits are ignored.
    pub route: (Ipv6Addr, u8),
}

impl TunSettings {
    /// Checks the settings; the error names the bad field and the accepted
    /// values.
    pub fn validate(&self) -> Result<(), TunError> {
        let invalid = |reason: String| TunError::InvalidSettings {
            name: self.name.clone(),
            reason,
        };
        check_name(&self.name).map_err(invalid)?;
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(invalid(format!(
                "mtu = {} is outside {MIN_MTU}..={MAX_MTU}",
                self.mtu
            )));
        }
        let a = self.address;
        if a.is_unspecified() || a.is_loopback() || a.is_multicast() || is_link_local(a) {
            return Err(invalid(format!(
                "address = {a} is not a global unicast address"
            )));
        }
        let (prefix, len) = self.route;
        if len > 128 {
            return Err(invalid(format!("route prefix length /{len} is above 128")));
        }
        if len == 0 {
            return Err(invalid(format!(
                "route {prefix}/0 would send all IPv6 traffic into the overlay"
            )));
        }
        Ok(())
    }

    /// The route with its host bits cleared, as the kernel stores it.
    pub fn route_network(&self) -> (Ipv6Addr, u8) {
        let (prefix, len) = self.route;
        (mask_prefix(prefix, len), len.min(128))
    }
}

/// Checks an interface name the way the kernel's `dev_valid_name` does, and
/// also rejects `%` (a name pattern would leave us not knowing the real name).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is empty".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name is {} bytes long, the limit is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("name cannot be \".\" or \"..\"".to_owned());
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || *c == '%' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("name contains the character {c:?}"));
    }
    Ok(())
}

/// Clears every bit after the first `len` bits.
pub(crate) fn mask_prefix(addr: Ipv6Addr, len: u8) -> Ipv6Addr {
    let len = u32::from(len.min(128));
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    Ipv6Addr::from(u128::from(addr) & mask)
}

/// `fe80::/10`.
fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().expect("valid test address")
    }

    fn good() -> TunSettings {
        TunSettings {
            name: "umbra0".to_owned(),
            mtu: 65535,
            address: ip("600:1234::1"),
            route: (ip("600::"), 7),
        }
    }

    fn reason(s: &TunSettings) -> String {
        match s.validate() {
            Err(TunError::InvalidSettings { reason, .. }) => reason,
            other => panic!("expected InvalidSettings, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert!(good().validate().is_ok());
    }

    #[test]
    fn names() {
        assert!(check_name("umbra0").is_ok());
        assert!(check_name("a23456789012345").is_ok());
        assert!(check_name("a234567890123456").is_err());
        for bad in ["", ".", "..", "a/b", "a:b", "um bra", "tun%d", "a\tb"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn mtu_bounds() {
        let mut s = good();
        for ok in [MIN_MTU, 1500, MAX_MTU] {
            s.mtu = ok;
            assert!(s.validate().is_ok(), "{ok}");
        }
        s.mtu = 1279;
        assert!(reason(&s).contains("1280..=65535"));
        s.mtu = 70000;
        assert!(reason(&s).contains("mtu = 70000"));
    }

    #[test]
    fn addresses() {
        let mut s = good();
        for bad in ["::", "::1", "ff02::1", "fe80::1", "febf::1"] {
            s.address = ip(bad);
            assert!(reason(&s).contains("global unicast"), "{bad}");
        }
        s.address = ip("fec0::1");
        assert!(s.validate().is_ok());
    }

    #[test]
    fn route_lengths() {
        let mut s = good();
        s.route.1 = 129;
        assert!(reason(&s).contains("above 128"));
        s.route.1 = 0;
        assert!(reason(&s).contains("all IPv6 traffic"));
        s.route.1 = 128;
        assert!(s.validate().is_ok());
    }

    #[test]
    fn masking() {
        let a: Ipv6Addr = ip("7ff:ffff::1");
        assert_eq!(mask_prefix(a, 7).to_string(), "600::");
        assert_eq!(mask_prefix(a, 8).to_string(), "700::");
        assert_eq!(mask_prefix(a, 128), a);
        assert_eq!(mask_prefix(a, 0), Ipv6Addr::UNSPECIFIED);
        let mut s = good();
        s.route = (a, 7);
        assert_eq!(s.route_network(), (ip("600::"), 7));
    }
}
