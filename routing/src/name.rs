//! Names of nodes (`docs/protocol.md`, "Names"): `<label>.umbra`, where the
//! label is the node's public key and a 2-byte checksum in lowercase base32
//! (RFC 4648, no padding): 55 characters, within DNS's 63 per label. The
//! name maps to the node's address as its key does, so only the holder of
//! the key is that name; a mistyped one fails its checksum.
//!
//! ```text
//! label = base32(key[32] ‖ checksum[2]),  checksum = BLAKE2s("umbra name v1" ‖ key)[..2]
//! ```
//!
//! An operator's petnames (`[names]` in the config, whose rules keep them
//! from ever looking like a key label) are other labels that stand for a key
//! on one node only.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use data_encoding::BASE32_NOPAD;

use crate::crypto::{KEY_LEN, name_checksum};

/// The top-level domain of node names.
pub const TLD: &str = "umbra";

/// Length of a node's key label.
pub const KEY_LABEL_LEN: usize = 55;

/// The name of the node with `key`: `<label>.umbra`.
pub fn name_for_key(key: &[u8; KEY_LEN]) -> String {
    format!("{}.{TLD}", label_for_key(key))
}

/// The key label of `key`, lowercase.
pub fn label_for_key(key: &[u8; KEY_LEN]) -> String {
    let mut raw = [0u8; KEY_LEN + 2];
    let (k, c) = raw.split_at_mut(KEY_LEN);
    k.copy_from_slice(key);
    c.copy_from_slice(&name_checksum(key));
    BASE32_NOPAD.encode(&raw).to_ascii_lowercase()
}

/// Why a label is not a node's key label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not 55 characters.
    #[error("a node's name label is {KEY_LABEL_LEN} characters, not {0}")]
    Length(usize),
    /// Not base32.
    #[error("a node's name label is base32 (a to z, 2 to 7)")]
    Alphabet,
    /// The checksum does not match: a mistyped name.
    #[error("the name's checksum does not match (a typo?)")]
    Checksum,
}

/// The key a key label stands for (any case).
pub fn key_for_label(label: &str) -> Result<[u8; KEY_LEN], NameError> {
    if label.len() != KEY_LABEL_LEN {
        return Err(NameError::Length(label.len()));
    }
    let upper = label.to_ascii_uppercase();
    let raw = BASE32_NOPAD
        .decode(upper.as_bytes())
        .map_err(|_| NameError::Alphabet)?;
    let (Some(key), Some(sum)) = (raw.get(..KEY_LEN), raw.get(KEY_LEN..)) else {
        return Err(NameError::Length(label.len()));
    };
    let key: [u8; KEY_LEN] = key.try_into().map_err(|_| NameError::Alphabet)?;
    if sum != name_checksum(&key) {
        return Err(NameError::Checksum);
    }
    // Base32 of 34 bytes leaves 3 spare bits; only the canonical encoding
    // (zeros there) is the name.
    if label_for_key(&key) != label.to_ascii_lowercase() {
        return Err(NameError::Alphabet);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_name_is_55_characters_and_a_tld() {
        let key = [7u8; 32];
        let name = name_for_key(&key);
        assert_eq!(name.len(), KEY_LABEL_LEN + 1 + TLD.len());
        assert!(name.ends_with(".umbra"));
        let label = name.trim_end_matches(".umbra");
        assert_eq!(key_for_label(label), Ok(key));
        assert_eq!(key_for_label(&label.to_ascii_uppercase()), Ok(key));
    }

    #[test]
    fn the_documented_vector() {
        // docs/protocol.md, "Names" (computed independently with Python's
        // hashlib.blake2s and base64.b32encode).
        let key: [u8; 32] =
            hex::decode("3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29")
                .ok()
                .and_then(|v| v.try_into().ok())
                .unwrap_or_default();
        assert_eq!(
            name_for_key(&key),
            "hnvcppgow2sc2yvdvdicu3ynonsteflxdxrehjr2ybekdc2z3iuyqii.umbra"
        );
    }

    #[test]
    fn typos_and_junk_are_refused() {
        let label = label_for_key(&[9u8; 32]);
        let mut typo = label.clone().into_bytes();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap_or_default();
        assert_eq!(key_for_label(&typo), Err(NameError::Checksum));
        assert_eq!(key_for_label("chat"), Err(NameError::Length(4)));
        assert_eq!(
            key_for_label(&"1".repeat(KEY_LABEL_LEN)),
            Err(NameError::Alphabet)
        );
    }

    proptest! {
        #[test]
        fn every_key_round_trips(key in any::<[u8; 32]>()) {
            let label = label_for_key(&key);
            prop_assert_eq!(label.len(), KEY_LABEL_LEN);
            prop_assert_eq!(key_for_label(&label), Ok(key));
        }

        #[test]
        fn any_label_decodes_or_is_refused(label in "[a-z2-7]{0,70}") {
            let _ = key_for_label(&label);
        }
    }
}
