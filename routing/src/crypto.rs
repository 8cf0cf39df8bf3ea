//! The only module of `routing` that touches crypto crates (STYLE.md: one
//! crypto module per crate). Everything else uses the types defined here.

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use rand_core::{OsRng, RngCore};

/// Length of an identity's public key and of its secret seed.
pub const KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// A node's identity: an Ed25519 key pair (DESIGN.md §3). Its X25519 form is
/// the static key for Noise.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Identity")
            .field("public", &hex::encode(self.public()))
            .finish()
    }
}

impl Identity {
    /// A fresh random identity.
    pub fn generate() -> Identity {
        Identity {
            signing: SigningKey::generate(&mut OsRng),
        }
    }

    /// The identity with this secret seed (RFC 8032).
    pub fn from_seed(seed: &[u8; KEY_LEN]) -> Identity {
        Identity {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// A random identity whose public key has at least `strength` leading
    /// zero bits (`umbra keygen --strength N`). Expect about 2^N tries; the
    /// caller bounds N. `tries` counts the keys made.
    pub fn mine(strength: u32, tries: &mut u64) -> Identity {
        let mut seed = [0u8; KEY_LEN];
        loop {
            OsRng.fill_bytes(&mut seed);
            *tries += 1;
            let id = Identity::from_seed(&seed);
            if crate::address::leading_zero_bits(&id.public()) >= strength {
                return id;
            }
        }
    }

    /// The secret seed, for the identity key file.
    pub fn seed(&self) -> [u8; KEY_LEN] {
        self.signing.to_bytes()
    }

    /// The public key: the node's name everywhere.
    pub fn public(&self) -> [u8; KEY_LEN] {
        self.signing.verifying_key().to_bytes()
    }

    /// The X25519 secret for Noise: the Ed25519 secret scalar, as Yggdrasil
    /// and libsodium convert it.
    pub fn x25519_secret(&self) -> [u8; KEY_LEN] {
        self.signing.to_scalar_bytes()
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(msg).to_bytes()
    }
}

/// The X25519 public key of an Ed25519 public key (the birational map), or
/// `None` if the bytes are not a valid Ed25519 point.
pub fn x25519_public(ed_public: &[u8; KEY_LEN]) -> Option<[u8; KEY_LEN]> {
    let vk = VerifyingKey::from_bytes(ed_public).ok()?;
    Some(vk.to_montgomery().to_bytes())
}

/// Whether `sig` is `key`'s signature of `msg`.
pub fn verify(key: &[u8; KEY_LEN], msg: &[u8], sig: &[u8; SIGNATURE_LEN]) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(key) else {
        return false;
    };
    vk.verify(msg, &ed25519_dalek::Signature::from_bytes(sig))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8032_seed_gives_known_public_key() {
        // Yggdrasil vector: seed 00×32.
        let id = Identity::from_seed(&[0u8; 32]);
        assert_eq!(
            hex::encode(id.public()),
            "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
        );
    }

    #[test]
    fn x25519_forms_agree() {
        // The X25519 public of the converted secret equals the mapped public.
        let id = Identity::generate();
        let secret = x25519_dalek::StaticSecret::from(id.x25519_secret());
        let public = x25519_dalek::PublicKey::from(&secret);
        assert_eq!(Some(public.to_bytes()), x25519_public(&id.public()));
    }

    #[test]
    fn sign_and_verify() {
        let id = Identity::generate();
        let sig = id.sign(b"record");
        assert!(verify(&id.public(), b"record", &sig));
        assert!(!verify(&id.public(), b"recorD", &sig));
    }

    #[test]
    fn mining_meets_strength() {
        let mut tries = 0;
        let id = Identity::mine(6, &mut tries);
        assert!(crate::address::leading_zero_bits(&id.public()) >= 6);
        assert!(tries >= 1);
    }
}
