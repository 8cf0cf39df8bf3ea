//! The only module of `transport` that touches crypto crates
//! (`docs/architecture.md, "Crates"`: one crypto module per crate). `proto`
//! calls the wrappers here; it never names snow, blake2 or curve25519-dalek
//! itself.

use blake2::{Blake2s256, Digest};
use curve25519_dalek::edwards::CompressedEdwardsY;
use rand_core::{OsRng, RngCore};

/// The Noise protocol of link authentication (`docs/protocol.md, "Link setup"`).
const LINK_NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

/// Length of an X25519 key and of a BLAKE2s hash.
pub(crate) const KEY_LEN: usize = 32;

/// Bytes a Noise message adds to its payload for the AEAD tag.
pub(crate) const NOISE_TAG_LEN: usize = 16;

/// Why a Noise step failed. Only the distinction the caller logs is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoiseError {
    /// The message did not authenticate (wrong key, wrong prologue, altered
    /// bytes) or was too short for its pattern.
    Decrypt,
    /// snow refused a call it should not have refused: a bug here, not input.
    Internal,
}

/// One side of a `Noise_IK_25519_ChaChaPoly_BLAKE2s` handshake.
pub(crate) struct NoiseHandshake {
    state: snow::HandshakeState,
}

impl std::fmt::Debug for NoiseHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The state holds secrets; show only where it is.
        f.debug_struct("NoiseHandshake")
            .field("initiator", &self.state.is_initiator())
            .field("finished", &self.state.is_handshake_finished())
            .finish_non_exhaustive()
    }
}

impl NoiseHandshake {
    /// The initiator, who knows the responder's static key in advance (IK).
    pub(crate) fn initiator(
        local_secret: &[u8; KEY_LEN],
        remote_public: &[u8; KEY_LEN],
        prologue: &[u8],
    ) -> Result<NoiseHandshake, NoiseError> {
        let state = builder()?
            .local_private_key(local_secret)
            .and_then(|b| b.remote_public_key(remote_public))
            .and_then(|b| b.prologue(prologue))
            .and_then(|b| b.build_initiator())
            .map_err(|_| NoiseError::Internal)?;
        Ok(NoiseHandshake { state })
    }

    /// The responder, who learns the initiator's static key from message 1.
    pub(crate) fn responder(
        local_secret: &[u8; KEY_LEN],
        prologue: &[u8],
    ) -> Result<NoiseHandshake, NoiseError> {
        let state = builder()?
            .local_private_key(local_secret)
            .and_then(|b| b.prologue(prologue))
            .and_then(|b| b.build_responder())
            .map_err(|_| NoiseError::Internal)?;
        Ok(NoiseHandshake { state })
    }

    /// Writes the next handshake message carrying `payload`.
    pub(crate) fn write(&mut self, payload: &[u8]) -> Result<Vec<u8>, NoiseError> {
        // Two keys and two tags at most precede the payload's own tag in IK.
        let mut out = vec![0u8; payload.len() + 2 * KEY_LEN + 2 * NOISE_TAG_LEN];
        let n = self
            .state
            .write_message(payload, &mut out)
            .map_err(|_| NoiseError::Internal)?;
        out.truncate(n);
        Ok(out)
    }

    /// Reads the peer's next handshake message and returns its payload.
    pub(crate) fn read(&mut self, message: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let mut payload = vec![0u8; message.len()];
        match self.state.read_message(message, &mut payload) {
            Ok(n) => {
                payload.truncate(n);
                Ok(payload)
            }
            Err(snow::Error::Decrypt | snow::Error::Input | snow::Error::Dh) => {
                Err(NoiseError::Decrypt)
            }
            Err(_) => Err(NoiseError::Internal),
        }
    }

    /// The peer's static X25519 key, once a message has carried it.
    pub(crate) fn remote_static(&self) -> Option<[u8; KEY_LEN]> {
        self.state.get_remote_static()?.try_into().ok()
    }

    /// The Noise handshake hash `h`: equal on both sides once the handshake is
    /// finished, and unique to this session.
    pub(crate) fn handshake_hash(&self) -> [u8; KEY_LEN] {
        let mut h = [0u8; KEY_LEN];
        let src = self.state.get_handshake_hash();
        let n = src.len().min(KEY_LEN);
        h[..n].copy_from_slice(&src[..n]);
        h
    }
}

fn builder<'a>() -> Result<snow::Builder<'a>, NoiseError> {
    let params = LINK_NOISE_PARAMS
        .parse()
        .map_err(|_| NoiseError::Internal)?;
    Ok(snow::Builder::new(params))
}

/// Whether an Ed25519 public key is unusable as an identity: not a curve
/// point, or of small order. A small-order key has a Noise static key whose
/// DH results everyone knows, so anyone could claim it.
pub(crate) fn is_weak_ed25519(key: &[u8; KEY_LEN]) -> bool {
    CompressedEdwardsY(*key)
        .decompress()
        .is_none_or(|p| p.is_small_order())
}

/// The first `N` bytes of BLAKE2s-256 of `data`: a checksum against typos,
/// not a MAC.
pub(crate) fn blake2s_prefix<const N: usize>(data: &[u8]) -> [u8; N] {
    let digest = Blake2s256::digest(data);
    let mut out = [0u8; N];
    let n = N.min(digest.len());
    out[..n].copy_from_slice(&digest[..n]);
    out
}

/// Fills `buf` from the operating system's RNG.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    OsRng.fill_bytes(buf);
}

/// Whether `a` equals `b`, in time that depends only on their lengths.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}
