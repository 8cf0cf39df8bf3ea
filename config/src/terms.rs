//! Agreement terms as written by people: `50GiB/30d`, or with limits,
//! `50GiB/30d, debt 2GiB, cutoff 8GiB, circuits 20/s, rate 10MiB/s, carry 10GiB`
//! (`docs/config.md, "Value types"`; `docs/protocol.md, "Agreements"` and
//! "Ledgers").

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{ByteRate, ParseError};

/// Bytes a peer may send through us per period, each way, and the period; and this
/// side's limits toward the peer.
///
/// Written `<number><unit>/<number><period>`, for example `50GiB/30d` or `1TB/7d`.
/// Units are `B`, `KB`, `MB`, `GB`, `TB` (powers of 1000) and `KiB`, `MiB`, `GiB`, `TiB`
/// (powers of 1024); periods are `s`, `m`, `h`, `d`. Both are case-sensitive, and both
/// numbers must be whole and above zero.
///
/// Limits may follow, comma-separated, each once and in any order:
/// - `debt <bytes>`: past this balance owed to us, the peer's cells lose priority;
/// - `cutoff <bytes>`: past this, its new circuits are refused (at least `debt`);
/// - `circuits <n>/s`: new circuits it may open through us per second;
/// - `rate <bytes>/s`: the most its circuits may push through us per second (unset:
///   no ceiling beyond fair queueing);
/// - `carry <bytes>`: the most of a balance (either way) a new period starts with.
///
/// Only the amount and the period are signed by both sides (the agreement
/// statement); the limits are each side's own toward the other, and an unset one is
/// its default ([`Terms::debt_bytes`] and the others).
///
/// `Display` gives the canonical form: the largest binary unit that divides the bytes
/// exactly (else `B`) and the largest period unit that divides the period exactly, so
/// `1TB/7d` prints as `976562500KiB/7d`; then the limits that are set, in the order
/// above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Terms {
    /// Bytes allowed per period, each way.
    pub bytes_per_period: u64,
    /// Length of the period, in seconds.
    pub period_secs: u64,
    /// `debt`, if set.
    pub debt: Option<u64>,
    /// `cutoff`, if set.
    pub cutoff: Option<u64>,
    /// `circuits`, per second, if set.
    pub circuits_per_sec: Option<u32>,
    /// `rate`, if set.
    pub rate: Option<ByteRate>,
    /// `carry`, if set.
    pub carry: Option<u64>,
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

const MINUTE_SECS: u64 = 60;
const HOUR_SECS: u64 = 60 * MINUTE_SECS;
const DAY_SECS: u64 = 24 * HOUR_SECS;

/// Byte units accepted when parsing, with their size in bytes.
const BYTE_UNITS: [(&str, u64); 9] = [
    ("B", 1),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", KIB),
    ("MiB", MIB),
    ("GiB", GIB),
    ("TiB", TIB),
];

/// The byte units, as error messages list them.
const BYTE_UNIT_LIST: &str = "B, KB, MB, GB, TB, KiB, MiB, GiB or TiB";

/// Byte units used by `Display`, largest first.
const CANONICAL_BYTE_UNITS: [(&str, u64); 4] =
    [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)];

/// Period units, largest first, with their length in seconds.
const PERIOD_UNITS: [(&str, u64); 4] = [
    ("d", DAY_SECS),
    ("h", HOUR_SECS),
    ("m", MINUTE_SECS),
    ("s", 1),
];

impl Terms {
    /// New circuits a peer may open through us per second unless the terms say.
    pub const DEFAULT_CIRCUITS_PER_SEC: u32 = 20;

    /// The default terms: 50 GiB every 30 days.
    pub const DEFAULT: Terms = Terms::quota(50 * GIB, 30 * DAY_SECS);

    /// Terms of `bytes_per_period` per `period_secs`, with the default limits.
    pub const fn quota(bytes_per_period: u64, period_secs: u64) -> Terms {
        Terms {
            bytes_per_period,
            period_secs,
            debt: None,
            cutoff: None,
            circuits_per_sec: None,
            rate: None,
            carry: None,
        }
    }

    /// Whether `other` is the same agreement: the same amount and period (the part
    /// both sides sign; the limits are each side's own).
    pub fn same_quota(&self, other: &Terms) -> bool {
        (self.bytes_per_period, self.period_secs) == (other.bytes_per_period, other.period_secs)
    }

    /// The balance owed to us past which the peer loses priority: `debt`, else a
    /// tenth of the amount.
    pub fn debt_bytes(&self) -> u64 {
        self.debt.unwrap_or(self.bytes_per_period / 10)
    }

    /// The balance owed to us past which the peer's new circuits are refused:
    /// `cutoff`, else half the amount (never below [`Terms::debt_bytes`]).
    pub fn cutoff_bytes(&self) -> u64 {
        self.cutoff
            .unwrap_or(self.bytes_per_period / 2)
            .max(self.debt_bytes())
    }

    /// New circuits the peer may open through us per second.
    pub fn circuits_per_sec(&self) -> u32 {
        self.circuits_per_sec
            .unwrap_or(Self::DEFAULT_CIRCUITS_PER_SEC)
    }

    /// The most of a balance a new period starts with: `carry`, else the amount.
    pub fn carry_bytes(&self) -> u64 {
        self.carry.unwrap_or(self.bytes_per_period)
    }

    /// The period as a [`Duration`].
    pub fn period(&self) -> Duration {
        Duration::from_secs(self.period_secs)
    }

    /// The average rate the terms allow, in bytes per second each way: the bytes per
    /// period spread evenly over the period (`50GiB/30d` is 20,712 B/s). Link padding
    /// with `anonymity = "strong"` never goes above it (`docs/protocol.md, "Link
    /// control"`).
    pub fn average_bytes_per_sec(&self) -> u64 {
        self.bytes_per_period / self.period_secs.max(1)
    }
}

impl Default for Terms {
    fn default() -> Self {
        Terms::DEFAULT
    }
}

impl fmt::Display for Terms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_bytes(self.bytes_per_period, f)?;
        let secs = self.period_secs;
        let (period_unit, period_len) = PERIOD_UNITS
            .into_iter()
            .find(|&(_, len)| secs.is_multiple_of(len))
            .unwrap_or(("s", 1));
        write!(f, "/{}{period_unit}", secs / period_len)?;
        for (name, bytes) in [("debt", self.debt), ("cutoff", self.cutoff)] {
            if let Some(b) = bytes {
                write!(f, ", {name} ")?;
                fmt_bytes(b, f)?;
            }
        }
        if let Some(n) = self.circuits_per_sec {
            write!(f, ", circuits {n}/s")?;
        }
        if let Some(r) = self.rate {
            write!(f, ", rate {r}")?;
        }
        if let Some(b) = self.carry {
            f.write_str(", carry ")?;
            fmt_bytes(b, f)?;
        }
        Ok(())
    }
}

impl FromStr for Terms {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let mut clauses = s.split(',');
        let base = clauses.next().unwrap_or_default();
        let Some((amount, period)) = base.split_once('/') else {
            return Err(ParseError(format!(
                "{s:?} is not terms: expected <amount>/<period>, such as \"50GiB/30d\""
            )));
        };
        let bytes_per_period = parse_quantity(amount, &BYTE_UNITS, "amount", BYTE_UNIT_LIST)?;
        let period_secs = parse_quantity(period, &PERIOD_UNITS, "period", "s, m, h or d")?;
        let mut terms = Terms::quota(bytes_per_period, period_secs);
        for clause in clauses {
            let clause = clause.trim();
            let Some((name, value)) = clause.split_once(' ') else {
                return Err(ParseError(format!(
                    "the limit {clause:?} has no value; write one of \"debt 2GiB\", \"cutoff 8GiB\", \"circuits 20/s\", \"rate 10MiB/s\", \"carry 10GiB\", separated by commas"
                )));
            };
            let value = value.trim();
            let twice = || ParseError(format!("the limit {name:?} is given twice"));
            let bytes = |what: &str| parse_quantity(value, &BYTE_UNITS, what, BYTE_UNIT_LIST);
            match name {
                "debt" if terms.debt.is_some() => return Err(twice()),
                "debt" => terms.debt = Some(bytes("debt")?),
                "cutoff" if terms.cutoff.is_some() => return Err(twice()),
                "cutoff" => terms.cutoff = Some(bytes("cutoff")?),
                "carry" if terms.carry.is_some() => return Err(twice()),
                "carry" => terms.carry = Some(parse_bytes_or_zero(value, "carry")?),
                "circuits" if terms.circuits_per_sec.is_some() => return Err(twice()),
                "circuits" => {
                    let n = value.strip_suffix("/s").ok_or_else(|| {
                        ParseError(format!(
                            "the circuit rate {value:?} is not a rate: write it like \"20/s\""
                        ))
                    })?;
                    let n: u32 = n.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                        ParseError(format!(
                            "the circuit rate {value:?} must be a whole number above zero, per second"
                        ))
                    })?;
                    terms.circuits_per_sec = Some(n);
                }
                "rate" if terms.rate.is_some() => return Err(twice()),
                "rate" => {
                    let rate: ByteRate = value.parse().map_err(|e: ParseError| {
                        ParseError(format!("the rate {value:?}: {}", e.0))
                    })?;
                    if rate.is_zero() {
                        return Err(ParseError(format!(
                            "the rate {value:?} is zero; leave it out for no ceiling"
                        )));
                    }
                    terms.rate = Some(rate);
                }
                other => {
                    return Err(ParseError(format!(
                        "unknown limit {other:?}; use debt, cutoff, circuits, rate or carry"
                    )));
                }
            }
        }
        if let (Some(debt), Some(cutoff)) = (terms.debt, terms.cutoff)
            && cutoff < debt
        {
            return Err(ParseError(format!(
                "the cutoff ({}) is below the debt limit ({}); a peer loses priority before its circuits are refused, so cutoff must be at least debt",
                Bytes(cutoff),
                Bytes(debt)
            )));
        }
        Ok(terms)
    }
}

/// Parses `<digits><unit>` and multiplies out the unit; zero is an error.
fn parse_quantity(
    text: &str,
    units: &[(&str, u64)],
    what: &str,
    unit_list: &str,
) -> Result<u64, ParseError> {
    let value = parse_quantity_or_zero(text, units, what, unit_list)?;
    if value == 0 {
        return Err(ParseError(format!(
            "the {what} {text:?} is zero; it must be above zero"
        )));
    }
    Ok(value)
}

/// Parses a byte amount such as `32KiB` (the units of [`Terms`]); zero is allowed.
pub(crate) fn parse_bytes_or_zero(text: &str, what: &str) -> Result<u64, ParseError> {
    parse_quantity_or_zero(text, &BYTE_UNITS, what, BYTE_UNIT_LIST)
}

/// Parses a duration in whole seconds such as `60s`, `5m` or `2h` (the units of a
/// [`Terms`] period); zero is allowed.
pub(crate) fn parse_secs_or_zero(text: &str, what: &str) -> Result<u64, ParseError> {
    parse_quantity_or_zero(text, &PERIOD_UNITS, what, "s, m, h or d")
}

/// Bytes shown as [`fmt_bytes`] writes them.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_bytes(self.0, f)
    }
}

/// Writes `bytes` with the largest binary unit that divides it exactly (else `B`).
pub(crate) fn fmt_bytes(bytes: u64, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let (unit, size) = CANONICAL_BYTE_UNITS
        .into_iter()
        .find(|&(_, size)| bytes != 0 && bytes.is_multiple_of(size))
        .unwrap_or(("B", 1));
    write!(f, "{}{unit}", bytes / size)
}

/// Parses `<digits><unit>` and multiplies out the unit.
fn parse_quantity_or_zero(
    text: &str,
    units: &[(&str, u64)],
    what: &str,
    unit_list: &str,
) -> Result<u64, ParseError> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(ParseError(format!(
            "the {what} {text:?} does not start with a whole number"
        )));
    }
    let Some(&(_, scale)) = units.iter().find(|&&(name, _)| name == unit) else {
        let shown = if unit.is_empty() {
            "no unit".to_owned()
        } else {
            format!("unknown unit {unit:?}")
        };
        return Err(ParseError(format!(
            "the {what} {text:?} has {shown}; use one of {unit_list}"
        )));
    };
    let too_large = || ParseError(format!("the {what} {text:?} is too large (above 2^64)"));
    let value = number
        .parse::<u64>()
        .map_err(|_| too_large())?
        .checked_mul(scale)
        .ok_or_else(too_large)?;
    Ok(value)
}

impl Serialize for Terms {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Terms {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn terms(bytes_per_period: u64, period_secs: u64) -> Terms {
        Terms::quota(bytes_per_period, period_secs)
    }

    fn parse_err(text: &str) -> String {
        match text.parse::<Terms>() {
            Ok(t) => panic!("{text:?} parsed as {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn default_is_50_gib_per_30_days() {
        assert_eq!(Terms::default(), terms(50 << 30, 30 * 86_400));
        assert_eq!(Terms::default().to_string(), "50GiB/30d");
    }

    #[test]
    fn average_rate_spreads_the_amount_over_the_period() {
        assert_eq!(Terms::default().average_bytes_per_sec(), 20_712);
        assert_eq!(
            terms(1_000_000_000_000, 30 * 86_400).average_bytes_per_sec(),
            385_802
        );
        assert_eq!(terms(7, 1).average_bytes_per_sec(), 7);
        assert_eq!(terms(1, 2).average_bytes_per_sec(), 0);
    }

    #[test]
    fn parses_every_unit() {
        let cases = [
            ("7B/1s", terms(7, 1)),
            ("2KB/1m", terms(2_000, 60)),
            ("3MB/2h", terms(3_000_000, 7_200)),
            ("1GB/1d", terms(1_000_000_000, 86_400)),
            ("1TB/7d", terms(1_000_000_000_000, 7 * 86_400)),
            ("1KiB/1s", terms(1024, 1)),
            ("1MiB/1s", terms(1 << 20, 1)),
            ("50GiB/30d", terms(50 << 30, 30 * 86_400)),
            ("2TiB/90m", terms(2 << 40, 5_400)),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Terms>(), Ok(want), "{text}");
        }
    }

    #[test]
    fn display_uses_largest_exact_units() {
        assert_eq!(
            terms(1_000_000_000_000, 604_800).to_string(),
            "976562500KiB/7d"
        );
        assert_eq!(terms(3072, 90).to_string(), "3KiB/90s");
        assert_eq!(terms(1536, 86_399).to_string(), "1536B/86399s");
        assert_eq!(terms(1000, 7_200).to_string(), "1000B/2h");
        assert_eq!(terms(3 << 40, 120).to_string(), "3TiB/2m");
    }

    #[test]
    fn rejects_bad_units_case_and_shape() {
        assert!(parse_err("50gib/30d").contains("unknown unit \"gib\""));
        assert!(parse_err("50GiB/30D").contains("unknown unit \"D\""));
        assert!(parse_err("50XB/30d").contains("use one of B, KB"));
        assert!(parse_err("50/30d").contains("has no unit"));
        assert!(parse_err("50GiB").contains("expected <amount>/<period>"));
        assert!(parse_err("GiB/30d").contains("does not start with a whole number"));
        assert!(parse_err("1.5GiB/30d").contains("unknown unit \".5GiB\""));
        assert!(parse_err(" 50GiB/30d").contains("does not start with a whole number"));
        assert!(parse_err("50GiB/30d/1s").contains("unknown unit \"d/1s\""));
    }

    #[test]
    fn rejects_zero() {
        assert!(parse_err("0GiB/30d").contains("amount \"0GiB\" is zero"));
        assert!(parse_err("50GiB/0d").contains("period \"0d\" is zero"));
    }

    #[test]
    fn rejects_overflow() {
        assert!(parse_err("16777216TiB/1d").contains("too large"));
        assert!(parse_err("99999999999999999999B/1d").contains("too large"));
        assert!(
            parse_err("1B/213503982334602d").contains("period \"213503982334602d\" is too large")
        );
        // The largest values still parse.
        assert_eq!(
            "18446744073709551615B/18446744073709551615s".parse::<Terms>(),
            Ok(terms(u64::MAX, u64::MAX))
        );
    }

    #[test]
    fn limits_parse_in_any_order_and_print_in_one() {
        let t: Terms = "50GiB/30d, circuits 5/s, rate 2MiB/s, cutoff 8GiB, debt 2GiB, carry 10GiB"
            .parse()
            .expect("terms");
        assert_eq!(t.debt, Some(2 << 30));
        assert_eq!(t.cutoff, Some(8 << 30));
        assert_eq!(t.circuits_per_sec, Some(5));
        assert_eq!(t.carry, Some(10 << 30));
        assert_eq!(
            t.to_string(),
            "50GiB/30d, debt 2GiB, cutoff 8GiB, circuits 5/s, rate 2MiB/s, carry 10GiB"
        );
        assert!(t.same_quota(&Terms::DEFAULT));
        assert_ne!(t, Terms::DEFAULT);
        // Unset limits are the defaults.
        let d = Terms::DEFAULT;
        assert_eq!(d.debt_bytes(), 5 << 30);
        assert_eq!(d.cutoff_bytes(), 25 << 30);
        assert_eq!(d.circuits_per_sec(), 20);
        assert_eq!(d.carry_bytes(), 50 << 30);
        // A debt above half the amount lifts the default cutoff with it.
        let high: Terms = "10GiB/30d, debt 8GiB".parse().expect("terms");
        assert_eq!(high.cutoff_bytes(), 8 << 30);
        // Old strings are unchanged.
        assert_eq!(
            "1TB/7d".parse::<Terms>(),
            Ok(terms(1_000_000_000_000, 7 * 86_400))
        );
        assert_eq!(
            "50GiB/30d,carry 0B".parse::<Terms>().map(|t| t.carry),
            Ok(Some(0))
        );
    }

    #[test]
    fn bad_limits_are_named() {
        assert!(parse_err("50GiB/30d, debt").contains("the limit \"debt\" has no value"));
        assert!(parse_err("50GiB/30d, debt 2XB").contains("the debt \"2XB\" has unknown unit"));
        assert!(parse_err("50GiB/30d, debt 0B").contains("the debt \"0B\" is zero"));
        assert!(parse_err("50GiB/30d, speed 3MiB").contains("unknown limit \"speed\""));
        assert!(parse_err("50GiB/30d, debt 1GiB, debt 2GiB").contains("given twice"));
        assert!(parse_err("50GiB/30d, circuits 20").contains("like \"20/s\""));
        assert!(parse_err("50GiB/30d, circuits 0/s").contains("above zero"));
        assert!(parse_err("50GiB/30d, rate 0B/s").contains("zero; leave it out"));
        assert!(
            parse_err("50GiB/30d, rate 5MiB").contains("the rate \"5MiB\": expected <amount>/s")
        );
        assert!(
            parse_err("50GiB/30d, debt 8GiB, cutoff 2GiB")
                .contains("cutoff (2GiB) is below the debt limit (8GiB)")
        );
    }

    proptest! {
        #[test]
        fn terms_with_limits_round_trip(
            bytes in 1..=u64::MAX,
            secs in 1..=u64::MAX,
            debt in proptest::option::of(1..=u64::MAX / 2),
            extra in 0..=u64::MAX / 2,
            circuits in proptest::option::of(1..=u32::MAX),
            rate in proptest::option::of(1..=u32::MAX),
            carry in proptest::option::of(0..=u64::MAX),
            with_cutoff in any::<bool>(),
        ) {
            let cutoff = with_cutoff.then(|| debt.unwrap_or(1).saturating_add(extra));
            let t = Terms {
                debt,
                cutoff,
                circuits_per_sec: circuits,
                rate: rate.map(ByteRate::per_sec),
                carry,
                ..terms(bytes, secs)
            };
            prop_assert_eq!(t.to_string().parse::<Terms>(), Ok(t));
        }

        #[test]
        fn display_then_parse_round_trips(bytes in 1..=u64::MAX, secs in 1..=u64::MAX) {
            let original = terms(bytes, secs);
            prop_assert_eq!(original.to_string().parse::<Terms>(), Ok(original));
        }

        #[test]
        fn round_trips_with_round_units(
            n in 1u64..=1_000_000,
            byte_unit in 0usize..BYTE_UNITS.len(),
            p in 1u64..=10_000,
            period_unit in 0usize..PERIOD_UNITS.len(),
        ) {
            // Random u64s almost never divide by 1024, so also try values made of units.
            let original = terms(n * BYTE_UNITS[byte_unit].1, p * PERIOD_UNITS[period_unit].1);
            prop_assert_eq!(original.to_string().parse::<Terms>(), Ok(original));
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,24}") {
            let _ = text.parse::<Terms>();
        }
    }
}
