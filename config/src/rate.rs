//! Byte rates as written by people: `32KiB/s` (the `[padding]` table).

use std::fmt;
use std::str::FromStr;

use crate::ParseError;
use crate::terms::{fmt_bytes, parse_bytes_or_zero};

/// A rate in bytes per second, such as the link padding rate.
///
/// Written `<number><unit>/s`, for example `32KiB/s`, `1MiB/s` or `20000B/s`, with the
/// byte units of [`Terms`](crate::Terms) (`B`, `KB`, `MB`, `GB`, `TB`, `KiB`, `MiB`,
/// `GiB`, `TiB`). The number must be whole; `0B/s` is zero, which `[padding]` reads as
/// "off". `Display` gives the canonical form: the largest binary unit that divides the
/// rate exactly (else `B`), so `64KB/s` prints as `64000B/s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ByteRate {
    /// Bytes per second.
    pub bytes_per_sec: u32,
}

impl ByteRate {
    /// Zero: nothing is sent.
    pub const ZERO: ByteRate = ByteRate { bytes_per_sec: 0 };

    /// A rate of `bytes_per_sec` bytes per second.
    pub const fn per_sec(bytes_per_sec: u32) -> ByteRate {
        ByteRate { bytes_per_sec }
    }

    /// Whether the rate is zero.
    pub fn is_zero(&self) -> bool {
        self.bytes_per_sec == 0
    }
}

impl fmt::Display for ByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_bytes(u64::from(self.bytes_per_sec), f)?;
        f.write_str("/s")
    }
}

impl FromStr for ByteRate {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let Some(amount) = s.strip_suffix("/s") else {
            return Err(ParseError(
                "expected <amount>/s, such as \"32KiB/s\" (\"0B/s\" is zero)".to_owned(),
            ));
        };
        let bytes = parse_bytes_or_zero(amount, "amount")?;
        let bytes_per_sec = u32::try_from(bytes).map_err(|_| {
            ParseError(format!(
                "the amount {amount:?} is too large for a rate (at most 4GiB/s minus one byte)"
            ))
        })?;
        Ok(ByteRate { bytes_per_sec })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_err(text: &str) -> String {
        match text.parse::<ByteRate>() {
            Ok(r) => panic!("{text:?} parsed as {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_the_documented_forms() {
        for (text, bytes) in [
            ("32KiB/s", 32 * 1024),
            ("1MiB/s", 1 << 20),
            ("20000B/s", 20_000),
            ("64KB/s", 64_000),
            ("0B/s", 0),
            ("0KiB/s", 0),
        ] {
            assert_eq!(text.parse(), Ok(ByteRate::per_sec(bytes)), "{text}");
        }
    }

    #[test]
    fn displays_canonical_units() {
        assert_eq!(ByteRate::per_sec(32 * 1024).to_string(), "32KiB/s");
        assert_eq!(ByteRate::per_sec(1 << 20).to_string(), "1MiB/s");
        assert_eq!(ByteRate::per_sec(64_000).to_string(), "64000B/s");
        assert_eq!(ByteRate::ZERO.to_string(), "0B/s");
    }

    #[test]
    fn rejects_bad_units_and_shapes() {
        assert!(parse_err("32kib/s").contains("unknown unit \"kib\""));
        assert!(parse_err("32KiB").contains("expected <amount>/s"));
        assert!(parse_err("32KiB/m").contains("expected <amount>/s"));
        assert!(parse_err("32/s").contains("has no unit"));
        assert!(parse_err("KiB/s").contains("does not start with a whole number"));
        assert!(parse_err("-1KiB/s").contains("does not start with a whole number"));
        assert!(parse_err("4GiB/s").contains("too large for a rate"));
        assert!(parse_err("99999999999999999999B/s").contains("too large"));
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(bytes in any::<u32>()) {
            let rate = ByteRate::per_sec(bytes);
            prop_assert_eq!(rate.to_string().parse::<ByteRate>(), Ok(rate));
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,24}") {
            let _ = text.parse::<ByteRate>();
        }
    }
}
