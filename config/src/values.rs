//! Value types that appear in the config and elsewhere: public keys and anonymity levels.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value written as text (a public key, terms, an anonymity level) did not parse.
///
/// `Display` is a short phrase such as `expected 64 hex characters, found 12`; callers put
/// the file and key in front of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub(crate) String);

/// An Ed25519 public key: a node's name everywhere (`docs/protocol.md, "Identity and
/// addresses"`).
///
/// Written as 64 hex characters; `Display` prints lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

/// Length of a [`PublicKey`] in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;

impl PublicKey {
    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        Ok(Self(parse_hex32(s)?))
    }
}

/// Parses exactly 64 hex characters (either case) into 32 bytes.
pub(crate) fn parse_hex32(s: &str) -> Result<[u8; 32], ParseError> {
    let len = s.chars().count();
    if len != 2 * PUBLIC_KEY_LEN {
        return Err(ParseError(format!(
            "expected 64 hex characters, found {len} characters"
        )));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| {
        ParseError("expected 64 hex characters, found a character that is not hex".to_owned())
    })?;
    Ok(out)
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How hard circuits work to hide who talks to whom (`docs/architecture.md, "Path
/// selection"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anonymity {
    /// The shortest path. Still onion-encrypted, but a relay can guess more.
    Fast,
    /// A random walk over the graph from the home node. The default.
    #[default]
    Balanced,
    /// More relays, plus link padding paid from unused agreement quota.
    Strong,
}

impl Anonymity {
    /// Every level, in the order the config documents them.
    pub const ALL: [Anonymity; 3] = [Anonymity::Fast, Anonymity::Balanced, Anonymity::Strong];

    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Anonymity::Fast => "fast",
            Anonymity::Balanced => "balanced",
            Anonymity::Strong => "strong",
        }
    }
}

impl fmt::Display for Anonymity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Anonymity {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        Anonymity::ALL
            .into_iter()
            .find(|level| level.as_str() == s)
            .ok_or_else(|| ParseError(r#"expected one of "fast", "balanced", "strong""#.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_round_trips_through_hex() {
        let key = PublicKey([0xab; 32]);
        let text = key.to_string();
        assert_eq!(text, "ab".repeat(32));
        assert_eq!(text.parse::<PublicKey>(), Ok(key));
        assert_eq!(text.to_uppercase().parse::<PublicKey>(), Ok(key));
    }

    #[test]
    fn public_key_rejects_wrong_length_and_non_hex() {
        let short = "ab".repeat(31).parse::<PublicKey>();
        assert!(short.is_err_and(|e| e.to_string().contains("found 62 characters")));
        let bad = format!("{}zz", "ab".repeat(31)).parse::<PublicKey>();
        assert!(bad.is_err_and(|e| e.to_string().contains("not hex")));
        // Multi-byte characters are counted as characters, and never split.
        let wide = "é".repeat(64).parse::<PublicKey>();
        assert!(wide.is_err_and(|e| e.to_string().contains("not hex")));
    }

    #[test]
    fn anonymity_parses_its_names_only() {
        for level in Anonymity::ALL {
            assert_eq!(level.as_str().parse::<Anonymity>(), Ok(level));
        }
        assert!("Fast".parse::<Anonymity>().is_err());
        assert_eq!(Anonymity::default(), Anonymity::Balanced);
    }
}
