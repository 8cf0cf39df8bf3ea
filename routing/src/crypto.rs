//! The only module of `routing` that touches crypto crates (one crypto
//! module per crate: `docs/architecture.md, "Crates"`). Everything else uses
//! the types defined here.

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, RngCore, SeedableRng};
use snow::resolvers::{CryptoResolver, DefaultResolver};

pub use rand_core::CryptoRngCore;

/// The randomness a routing core draws from: handshake ephemerals, hop
/// secrets, path choice, rotation times. The caller gives it (the daemon an
/// OS-seeded one, a simulation a seeded one), so a seed fixes every byte a
/// run sends. Cores never draw from the operating system themselves.
pub type CoreRng = Box<dyn CryptoRngCore + Send>;

/// A fresh [`CoreRng`] seeded from `rng`: a core that needs an RNG of its
/// own (the router's circuit layer) gets one this way, without drawing from
/// the operating system.
pub fn fork_rng(rng: &mut dyn CryptoRngCore) -> CoreRng {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    Box::new(ChaCha20Rng::from_seed(seed))
}

/// Length of an identity's public key and of its secret seed.
pub const KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// A node's identity: an Ed25519 key pair (`docs/protocol.md, "Identity and
/// addresses"`). Its X25519 form is the static key for Noise.
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
    /// A fresh random identity from the operating system's RNG: for new
    /// long-term keys (`umbra keygen`, tests). Cores never call it.
    pub fn generate() -> Identity {
        Identity::generate_with(&mut OsRng)
    }

    /// A fresh random identity drawn from `rng`.
    pub fn generate_with(rng: &mut dyn CryptoRngCore) -> Identity {
        let mut seed = [0u8; KEY_LEN];
        rng.fill_bytes(&mut seed);
        Identity::from_seed(&seed)
    }

    /// The identity with this secret seed (RFC 8032).
    pub fn from_seed(seed: &[u8; KEY_LEN]) -> Identity {
        Identity {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// A random identity whose public key has at least `strength` leading
    /// zero bits (`umbra keygen --strength N`). Expect about 2^N tries; the
    /// caller bounds N. `tries` counts the keys made. Draws from the
    /// operating system's RNG, like [`Self::generate`].
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

/// The 2-byte checksum a node's name carries after its key
/// (`crate::name`): BLAKE2s-256 of a domain string and the key, first two
/// bytes. It catches a mistyped name, it is not a secret.
pub fn name_checksum(key: &[u8; KEY_LEN]) -> [u8; 2] {
    use blake2::Digest;
    let mut h = blake2::Blake2s256::new();
    h.update(b"umbra name v1");
    h.update(key);
    let d = h.finalize();
    [d[0], d[1]]
}

/// Whether `sig` is `key`'s signature of `msg`.
pub fn verify(key: &[u8; KEY_LEN], msg: &[u8], sig: &[u8; SIGNATURE_LEN]) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(key) else {
        return false;
    };
    vk.verify(msg, &ed25519_dalek::Signature::from_bytes(sig))
        .is_ok()
}

// ---------------------------------------------------------------------------
// Circuit handshakes (`docs/protocol.md, "Circuits"` and "Sessions"): Noise
// NK to relay hops, Noise IK to the destination, both through snow. Only this module names snow.
// ---------------------------------------------------------------------------

/// A failure in the circuit crypto: a handshake that does not verify, a tag
/// that does not open, or a primitive that refused its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A Noise handshake message did not decrypt or was malformed.
    #[error("handshake message did not verify")]
    Handshake,
    /// An end-to-end tag did not verify.
    #[error("end-to-end tag did not verify")]
    Tag,
    /// A primitive rejected its parameters (a bug, never network input).
    #[error("crypto primitive rejected its parameters")]
    Internal,
}

impl From<snow::Error> for CryptoError {
    fn from(e: snow::Error) -> Self {
        match e {
            snow::Error::Decrypt | snow::Error::Input | snow::Error::Dh => CryptoError::Handshake,
            _ => CryptoError::Internal,
        }
    }
}

/// Which Noise pattern a circuit hop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakePattern {
    /// `Noise_NK`: the hop is authenticated, the origin stays anonymous. For relays.
    Nk,
    /// `Noise_IK`: both sides are authenticated. For the destination, which
    /// learns the origin's identity (the session, `docs/protocol.md, "Sessions"`).
    Ik,
}

const NOISE_NK: &str = "Noise_NK_25519_ChaChaPoly_BLAKE2s";
const NOISE_IK: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Binds every circuit handshake to this protocol, so a transcript cannot be
/// replayed into another Noise protocol that uses the same keys (links use IK
/// with a TLS-exporter prologue; `docs/protocol.md, "Link setup"`).
const CIRCUIT_PROLOGUE: &[u8] = b"umbra circuit handshake 1";
/// Length of a Noise handshake hash with BLAKE2s.
const HANDSHAKE_HASH_LEN: usize = 32;

/// snow's default primitives, but the handshake's randomness (its ephemeral
/// key) comes from a ChaCha20 stream seeded from the core's RNG rather than
/// from the operating system.
struct SeededResolver {
    seed: [u8; 32],
}

/// A [`snow::types::Random`] over a seeded ChaCha20 stream.
struct SeededRandom(ChaCha20Rng);

impl snow::types::Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(self.seed))))
    }

    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(
        &self,
        choice: &snow::params::HashChoice,
    ) -> Option<Box<dyn snow::types::Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(
        &self,
        choice: &snow::params::CipherChoice,
    ) -> Option<Box<dyn snow::types::Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

fn noise_builder(
    pattern: HandshakePattern,
    rng: &mut dyn CryptoRngCore,
) -> Result<snow::Builder<'static>, CryptoError> {
    let name = match pattern {
        HandshakePattern::Nk => NOISE_NK,
        HandshakePattern::Ik => NOISE_IK,
    };
    let params: snow::params::NoiseParams = name.parse().map_err(|_| CryptoError::Internal)?;
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let resolver = Box::new(SeededResolver { seed });
    Ok(snow::Builder::with_resolver(params, resolver).prologue(CIRCUIT_PROLOGUE)?)
}

fn handshake_hash(hs: &snow::HandshakeState) -> Result<[u8; HANDSHAKE_HASH_LEN], CryptoError> {
    hs.get_handshake_hash()
        .try_into()
        .map_err(|_| CryptoError::Internal)
}

/// The origin's side of one hop's handshake: writes message 1, reads message 2.
pub(crate) struct HandshakeInitiator {
    hs: snow::HandshakeState,
}

impl std::fmt::Debug for HandshakeInitiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandshakeInitiator")
    }
}

impl HandshakeInitiator {
    /// Starts a handshake with the hop whose Ed25519 identity is `hop`. With
    /// [`HandshakePattern::Ik`] the origin's `identity` is sent, encrypted.
    /// The ephemeral key is drawn from `rng`.
    pub(crate) fn new(
        pattern: HandshakePattern,
        identity: &Identity,
        hop: &[u8; KEY_LEN],
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Self, CryptoError> {
        let remote = x25519_public(hop).ok_or(CryptoError::Handshake)?;
        let builder = noise_builder(pattern, rng)?;
        let builder = builder.remote_public_key(&remote)?;
        let hs = match pattern {
            HandshakePattern::Nk => builder.build_initiator()?,
            HandshakePattern::Ik => {
                let secret = identity.x25519_secret();
                builder.local_private_key(&secret)?.build_initiator()?
            }
        };
        Ok(HandshakeInitiator { hs })
    }

    /// Writes message 1 carrying `payload` into `out`; returns its length.
    pub(crate) fn write_msg1(
        &mut self,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<usize, CryptoError> {
        Ok(self.hs.write_message(payload, out)?)
    }

    /// Reads message 2, writes its payload into `payload`, and returns the
    /// payload's length and the final handshake hash.
    pub(crate) fn read_msg2(
        mut self,
        msg: &[u8],
        payload: &mut [u8],
    ) -> Result<(usize, [u8; HANDSHAKE_HASH_LEN]), CryptoError> {
        let n = self.hs.read_message(msg, payload)?;
        if !self.hs.is_handshake_finished() {
            return Err(CryptoError::Handshake);
        }
        Ok((n, handshake_hash(&self.hs)?))
    }
}

/// A hop's side of a circuit handshake: reads message 1, writes message 2.
pub(crate) struct HandshakeResponder {
    hs: snow::HandshakeState,
}

impl std::fmt::Debug for HandshakeResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandshakeResponder")
    }
}

impl HandshakeResponder {
    /// Reads message 1 with this node's static key and writes its payload into
    /// `payload`. Returns the responder and the payload's length. The
    /// ephemeral key of message 2 is drawn from `rng`.
    pub(crate) fn read_msg1(
        pattern: HandshakePattern,
        identity: &Identity,
        msg: &[u8],
        payload: &mut [u8],
        rng: &mut dyn CryptoRngCore,
    ) -> Result<(Self, usize), CryptoError> {
        let secret = identity.x25519_secret();
        let mut hs = noise_builder(pattern, rng)?
            .local_private_key(&secret)?
            .build_responder()?;
        let n = hs.read_message(msg, payload)?;
        Ok((HandshakeResponder { hs }, n))
    }

    /// The initiator's static X25519 key, for [`HandshakePattern::Ik`].
    pub(crate) fn remote_static(&self) -> Option<[u8; KEY_LEN]> {
        self.hs.get_remote_static()?.try_into().ok()
    }

    /// Writes message 2 carrying `payload` into `out`. Returns its length and
    /// the final handshake hash.
    pub(crate) fn write_msg2(
        mut self,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, [u8; HANDSHAKE_HASH_LEN]), CryptoError> {
        let n = self.hs.write_message(payload, out)?;
        if !self.hs.is_handshake_finished() {
            return Err(CryptoError::Handshake);
        }
        Ok((n, handshake_hash(&self.hs)?))
    }
}

/// Whether `ed_public`'s X25519 form is `x_public`: ties an Ed25519 identity
/// sent in an IK payload to the static key the handshake authenticated.
pub(crate) fn identity_matches_static(ed_public: &[u8; KEY_LEN], x_public: &[u8; KEY_LEN]) -> bool {
    x25519_public(ed_public).is_some_and(|x| x == *x_public)
}

/// Length of the fresh hop secret that a responder sends in message 2.
pub(crate) const HOP_SECRET_LEN: usize = 32;

/// A fresh random hop secret. The responder sends it inside message 2, which
/// is encrypted under the ephemeral–ephemeral DH, so it is forward secret.
pub(crate) fn random_hop_secret(rng: &mut dyn CryptoRngCore) -> [u8; HOP_SECRET_LEN] {
    let mut s = [0u8; HOP_SECRET_LEN];
    rng.fill_bytes(&mut s);
    s
}

// ---------------------------------------------------------------------------
// Relay crypto, versions 1 and 2 (`docs/protocol.md, "Relay crypto"`).
// ---------------------------------------------------------------------------

/// Relay crypto version 1: ChaCha20 layers and a ChaCha20-Poly1305 end-to-end
/// tag.
pub const RELAY_CRYPTO_V1: u8 = 1;
/// Relay crypto version 2: the same construction on AES-256-GCM, AES-256 in
/// counter mode for the layers and GHASH for the tag. With AES and carry-less
/// multiply in hardware a relay switches a cell in about a third of version
/// 1's time (bench/benches/cell.rs).
pub const RELAY_CRYPTO_V2: u8 = 2;

/// The relay-crypto versions this machine runs well, as the handshake's
/// bitmask (bit `v - 1` for version `v`): version 1 always, version 2 where
/// the CPU has AES and carry-less multiply instructions. Without them
/// AES-GCM is slower than ChaCha20-Poly1305, so such a node neither offers
/// nor picks it.
pub fn relay_versions_here() -> u8 {
    let v1 = relay_version_bit(RELAY_CRYPTO_V1);
    if aes_in_hardware() {
        v1 | relay_version_bit(RELAY_CRYPTO_V2)
    } else {
        v1
    }
}

/// Version `v`'s bit in the handshake's bitmask (bit `v - 1`); 0 for a
/// version the mask cannot hold (0, or above 8).
pub const fn relay_version_bit(v: u8) -> u8 {
    match v {
        1..=8 => 1 << (v - 1),
        _ => 0,
    }
}

/// The AEAD of relay-crypto `version`, or `None` for a version this code
/// does not know.
fn relay_aead(version: u8) -> Option<&'static aws_lc_rs::aead::Algorithm> {
    match version {
        RELAY_CRYPTO_V1 => Some(&aws_lc_rs::aead::CHACHA20_POLY1305),
        RELAY_CRYPTO_V2 => Some(&aws_lc_rs::aead::AES_256_GCM),
        _ => None,
    }
}

fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Length of a relay cell's end-to-end tag (Poly1305 or GHASH).
pub const RELAY_TAG_LEN: usize = 16;
/// Length of one layer key (ChaCha20 or AES-256).
const LAYER_KEY_LEN: usize = 32;
/// ChaCha20 block length; layers start at block 1, as the AEAD's ciphertext
/// does (RFC 8439 §2.8), so a hop's layer and its AEAD use one keystream.
#[cfg(test)]
const CHACHA_BLOCK_LEN: u64 = 64;

/// One hop's key for one direction of relay crypto.
///
/// **Both versions are malleable, like tor1 and Lokinet.** Middle hops apply
/// plain stream-cipher layers (ChaCha20, or AES-256 in counter mode) with no
/// per-hop MAC, so a relay can XOR a pattern
/// into a cell and a colluding relay further along can XOR it out again before
/// the end checks its tag: two colluding relays on one path can
/// confirm that they carry the same circuit ("tagging"), and only the end's
/// tag check notices a change that is not undone. A later relay-crypto
/// version ports Tor's Counter Galois Onion (proposal 359); the version is
/// negotiated in every hop's handshake for that reason.
///
/// Nonces are the implicit 64-bit cell counter of this hop and direction, so
/// links must deliver cells in order (TLS over TCP does).
pub(crate) struct LayerKey {
    /// The raw key, kept for the test against a reference ChaCha20.
    #[cfg(test)]
    key: [u8; LAYER_KEY_LEN],
    aead: aws_lc_rs::aead::LessSafeKey,
}

impl std::fmt::Debug for LayerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LayerKey")
    }
}

fn counter_nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

impl LayerKey {
    fn new(
        algorithm: &'static aws_lc_rs::aead::Algorithm,
        key: [u8; LAYER_KEY_LEN],
    ) -> Result<Self, CryptoError> {
        let unbound =
            aws_lc_rs::aead::UnboundKey::new(algorithm, &key).map_err(|_| CryptoError::Internal)?;
        Ok(LayerKey {
            #[cfg(test)]
            key,
            aead: aws_lc_rs::aead::LessSafeKey::new(unbound),
        })
    }

    /// Adds or strips this layer: XOR with the AEAD's keystream for
    /// `counter` (version 1: ChaCha20 from block 1 on; version 2: AES-256
    /// in counter mode from counter block 2 on, as GCM encrypts).
    ///
    /// The layer is the AEAD's ciphertext with its tag thrown away: aws-lc's
    /// assembly does cipher and MAC in one pass faster than a portable
    /// cipher alone (version 1 switched a cell in 731 ns rather than 818,
    /// bench/benches/cell.rs).
    pub(crate) fn apply_layer(&self, counter: u64, data: &mut [u8]) {
        let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(counter_nonce(counter));
        // Sealing fails only for inputs over 256 GiB (a cell is 1,200
        // bytes); should it ever fail, the data must not go on without its
        // layer, so it is wiped (the end's tag check then drops it).
        if self
            .aead
            .seal_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::empty(), data)
            .is_err()
        {
            data.fill(0);
        }
    }

    /// Encrypts `data` in place as the terminating layer and returns its tag.
    pub(crate) fn seal(
        &self,
        counter: u64,
        data: &mut [u8],
    ) -> Result<[u8; RELAY_TAG_LEN], CryptoError> {
        let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(counter_nonce(counter));
        let tag = self
            .aead
            .seal_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::empty(), data)
            .map_err(|_| CryptoError::Internal)?;
        tag.as_ref().try_into().map_err(|_| CryptoError::Internal)
    }

    /// Checks `tag` and decrypts `data` in place. On failure `data` is garbage.
    pub(crate) fn open(
        &self,
        counter: u64,
        data: &mut [u8],
        tag: &[u8; RELAY_TAG_LEN],
    ) -> Result<(), CryptoError> {
        let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(counter_nonce(counter));
        self.aead
            .open_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::empty(), tag, data)
            .map(|_| ())
            .map_err(|_| CryptoError::Tag)
    }
}

/// Both directions' keys of one hop.
#[derive(Debug)]
pub(crate) struct HopKeys {
    /// The relay-crypto version they are for.
    pub(crate) version: u8,
    /// Origin → destination.
    pub(crate) forward: LayerKey,
    /// Destination → origin.
    pub(crate) backward: LayerKey,
}

/// Expands a hop secret into the hop's two layer keys for relay-crypto
/// `version`, bound to the handshake transcript. The secret is what makes
/// them secret: the handshake hash is public to anyone who saw the
/// transcript and only binds the keys to it. The version is in the label, so
/// the two versions never share a key.
pub(crate) fn derive_hop_keys(
    version: u8,
    secret: &[u8; HOP_SECRET_LEN],
    handshake_hash: &[u8; HANDSHAKE_HASH_LEN],
) -> Result<HopKeys, CryptoError> {
    use blake2::digest::{KeyInit, Mac};
    let algorithm = relay_aead(version).ok_or(CryptoError::Internal)?;
    let expand = |label: &[u8]| -> Result<[u8; LAYER_KEY_LEN], CryptoError> {
        let mut mac = <blake2::Blake2sMac256 as KeyInit>::new_from_slice(secret)
            .map_err(|_| CryptoError::Internal)?;
        mac.update(b"umbra relay crypto ");
        mac.update(&[b'0' + version, b' ']);
        mac.update(label);
        mac.update(handshake_hash);
        Ok(mac.finalize().into_bytes().into())
    };
    Ok(HopKeys {
        version,
        forward: LayerKey::new(algorithm, expand(b"forward")?)?,
        backward: LayerKey::new(algorithm, expand(b"backward")?)?,
    })
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
    #[test]
    fn nk_and_ik_handshakes_agree_on_keys() {
        for pattern in [HandshakePattern::Nk, HandshakePattern::Ik] {
            let origin = Identity::generate();
            let hop = Identity::generate();
            let mut init =
                HandshakeInitiator::new(pattern, &origin, &hop.public(), &mut OsRng).expect("init");
            let mut m1 = [0u8; 256];
            let n1 = init.write_msg1(b"v", &mut m1).expect("msg1");
            let mut p = [0u8; 256];
            let (resp, pn) =
                HandshakeResponder::read_msg1(pattern, &hop, &m1[..n1], &mut p, &mut OsRng)
                    .expect("read1");
            assert_eq!(&p[..pn], b"v");
            if pattern == HandshakePattern::Ik {
                let rs = resp.remote_static().expect("static");
                assert!(identity_matches_static(&origin.public(), &rs));
                assert!(!identity_matches_static(&hop.public(), &rs));
            }
            let secret = random_hop_secret(&mut OsRng);
            let mut m2 = [0u8; 256];
            let (n2, h_resp) = resp.write_msg2(&secret, &mut m2).expect("msg2");
            let (pn2, h_init) = init.read_msg2(&m2[..n2], &mut p).expect("read2");
            assert_eq!(&p[..pn2], &secret);
            assert_eq!(h_resp, h_init);
            let a = derive_hop_keys(RELAY_CRYPTO_V1, &secret, &h_init).expect("keys");
            let b = derive_hop_keys(RELAY_CRYPTO_V1, &secret, &h_resp).expect("keys");
            let mut data = *b"hello relay crypto";
            let tag = a.forward.seal(7, &mut data).expect("seal");
            assert!(b.forward.open(7, &mut data, &tag).is_ok());
            assert_eq!(&data, b"hello relay crypto");
        }
    }

    #[test]
    fn nk_to_the_wrong_key_fails() {
        let origin = Identity::generate();
        let hop = Identity::generate();
        let other = Identity::generate();
        let mut init =
            HandshakeInitiator::new(HandshakePattern::Nk, &origin, &hop.public(), &mut OsRng)
                .expect("init");
        let mut m1 = [0u8; 256];
        let n1 = init.write_msg1(b"v", &mut m1).expect("msg1");
        let mut p = [0u8; 256];
        assert!(
            HandshakeResponder::read_msg1(
                HandshakePattern::Nk,
                &other,
                &m1[..n1],
                &mut p,
                &mut OsRng
            )
            .is_err()
        );
    }

    #[test]
    fn layer_is_chacha20_from_block_1() {
        // The wire format: a layer is RFC 8439 ChaCha20 with the hop's key,
        // the counter as nonce, from block 1 on (the AEAD's keystream),
        // checked against an independent ChaCha20.
        use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
        let keys = derive_hop_keys(RELAY_CRYPTO_V1, &[9u8; 32], &[3u8; 32]).expect("keys");
        let mut ours = [0x5au8; 1200];
        let mut reference = ours;
        keys.forward.apply_layer(42, &mut ours);
        let mut c = chacha20::ChaCha20::new(&keys.forward.key.into(), &counter_nonce(42).into());
        c.seek(CHACHA_BLOCK_LEN);
        c.apply_keystream(&mut reference);
        assert_eq!(ours, reference);
        // And the AEAD's ciphertext is the same bytes.
        let mut sealed = [0x5au8; 1200];
        let _ = keys.forward.seal(42, &mut sealed).expect("seal");
        assert_eq!(ours, sealed);
    }

    #[test]
    fn layer_v2_is_aes_256_ctr_from_counter_block_2() {
        // Version 2's layer is AES-256 in counter mode with the hop's key,
        // counter blocks nonce | 2, nonce | 3, … (big-endian 32-bit), the
        // keystream GCM encrypts with (NIST SP 800-38D), checked against
        // aws-lc's plain AES-CTR.
        use aws_lc_rs::cipher::{AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
        let keys = derive_hop_keys(RELAY_CRYPTO_V2, &[9u8; 32], &[3u8; 32]).expect("keys");
        let mut ours = [0x5au8; 1200];
        let mut reference = ours;
        keys.forward.apply_layer(42, &mut ours);
        let mut iv = [0u8; 16];
        iv[..12].copy_from_slice(&counter_nonce(42));
        iv[15] = 2;
        let ctr = EncryptingKey::ctr(
            UnboundCipherKey::new(&AES_256, &keys.forward.key).expect("AES key"),
        )
        .expect("CTR");
        ctr.less_safe_encrypt(&mut reference, EncryptionContext::Iv128(iv.into()))
            .expect("AES-CTR");
        assert_eq!(ours, reference);
        let mut sealed = [0x5au8; 1200];
        let _ = keys.forward.seal(42, &mut sealed).expect("seal");
        assert_eq!(ours, sealed);
    }

    #[test]
    fn versions_have_their_own_keys() {
        let v1 = derive_hop_keys(RELAY_CRYPTO_V1, &[1u8; 32], &[2u8; 32]).expect("keys");
        let v2 = derive_hop_keys(RELAY_CRYPTO_V2, &[1u8; 32], &[2u8; 32]).expect("keys");
        assert_ne!(v1.forward.key, v2.forward.key);
        assert_ne!(v1.backward.key, v2.backward.key);
        assert_eq!((v1.version, v2.version), (1, 2));
        for bad in [0, 3, 255] {
            assert!(derive_hop_keys(bad, &[1u8; 32], &[2u8; 32]).is_err());
        }
    }

    #[test]
    fn tampered_tag_fails() {
        for version in [RELAY_CRYPTO_V1, RELAY_CRYPTO_V2] {
            let keys = derive_hop_keys(version, &[1u8; 32], &[2u8; 32]).expect("keys");
            let mut data = [7u8; 64];
            let tag = keys.backward.seal(0, &mut data).expect("seal");
            data[10] ^= 1;
            assert_eq!(
                keys.backward.open(0, &mut data, &tag),
                Err(CryptoError::Tag)
            );
        }
    }
}
