//! Link authentication (`docs/protocol.md, "Link setup"`): `Noise_IK_25519_ChaChaPoly_BLAKE2s`
//! between the two nodes' identities, bound to the TLS connection.
//!
//! - The Noise static keys are the X25519 forms of the Ed25519 identities.
//! - The prologue is [`LINK_PROLOGUE_LABEL`] followed by a caller-supplied
//!   value: the TLS exporter output on direct links.
//! - Message 1 (dialer to listener) travels in `Authorization: Bearer <b64>`
//!   ([`encode_bearer`], [`decode_bearer`]). Its payload is
//!   `version u8 | initiator Ed25519 key [32] | timestamp u64 | nonce [16] |
//!   app_len u16 | app payload`.
//! - Message 2 (listener to dialer) is the first bytes of the response body,
//!   as `len u16 | Noise message` ([`decode_msg2`]). Its payload is
//!   `version u8 | app_len u16 | app payload`.
//!
//! The listener checks the timestamp against its clock (±
//! [`HANDSHAKE_MAX_CLOCK_SKEW_SECS`]) and keeps a replay cache of message-1
//! ephemeral keys. The I/O side answers every [`HandshakeError`] in the same
//! way (with the cover site); the variants exist for logs and counters.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use umbra_routing::crypto::{Identity, x25519_public};

use super::codec::Reader;
use crate::crypto::{self, KEY_LEN, NOISE_TAG_LEN, NoiseError, NoiseHandshake};

/// The fixed label that starts every link's Noise prologue, so a link
/// handshake can never be confused with another use of the same keys.
pub const LINK_PROLOGUE_LABEL: &[u8] = b"umbra link v1";

/// The handshake payload version this code speaks, in both messages.
pub const LINK_VERSION: u8 = 1;

/// How far message 1's timestamp may be from the listener's clock, in
/// seconds, either way.
pub const HANDSHAKE_MAX_CLOCK_SKEW_SECS: u64 = 120;

/// At most this many message-1 ephemeral keys are remembered; past it the
/// oldest are forgotten first.
pub const REPLAY_CACHE_MAX_ENTRIES: usize = 65_536;

/// Length of the random nonce in message 1, in bytes.
pub const MSG1_NONCE_LEN: usize = 16;

/// The longest `Authorization` header value [`decode_bearer`] accepts, in
/// bytes. Longer values are rejected before any decoding.
pub const BEARER_MAX_LEN: usize = 2048;

/// The auth scheme of the header that carries message 1.
const BEARER_SCHEME: &[u8] = b"Bearer";

/// Fixed part of message 1's payload: version, key, timestamp, nonce, app
/// length.
const MSG1_PAYLOAD_FIXED_LEN: usize = 1 + KEY_LEN + 8 + MSG1_NONCE_LEN + 2;

/// The shortest possible message 1, in bytes: ephemeral key, encrypted static
/// key with its tag, the fixed payload and its tag.
pub const MSG1_MIN_LEN: usize =
    KEY_LEN + (KEY_LEN + NOISE_TAG_LEN) + MSG1_PAYLOAD_FIXED_LEN + NOISE_TAG_LEN;

/// The longest message 1, in bytes. Its base64 form plus `Bearer ` stays well
/// under [`BEARER_MAX_LEN`], about the size of an ordinary JWT.
pub const MSG1_MAX_LEN: usize = 1024;

/// The largest application payload message 1 can carry, in bytes.
pub const MSG1_APP_PAYLOAD_MAX_LEN: usize = MSG1_MAX_LEN - MSG1_MIN_LEN;

/// Fixed part of message 2's payload: version and app length.
const MSG2_PAYLOAD_FIXED_LEN: usize = 1 + 2;

/// The shortest possible message 2 (without its length prefix), in bytes:
/// ephemeral key, the fixed payload and its tag.
pub const MSG2_MIN_LEN: usize = KEY_LEN + MSG2_PAYLOAD_FIXED_LEN + NOISE_TAG_LEN;

/// The longest message 2 (without its length prefix), in bytes.
pub const MSG2_MAX_LEN: usize = 4096;

/// The largest application payload message 2 can carry, in bytes.
pub const MSG2_APP_PAYLOAD_MAX_LEN: usize = MSG2_MAX_LEN - MSG2_MIN_LEN;

/// Length of message 2's length prefix on the wire, in bytes.
pub const MSG2_PREFIX_LEN: usize = 2;

/// Why a link handshake failed. The listener answers every one of these the
/// same way (the cover site); the variants are for logs and counters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The header value is not `Bearer` and base64url without padding.
    #[error("link token is not a Bearer token in base64url")]
    BadBase64,
    /// Message 1 is over [`MSG1_MAX_LEN`], message 2 over [`MSG2_MAX_LEN`],
    /// or the header over [`BEARER_MAX_LEN`].
    #[error("handshake message is longer than the maximum")]
    TooLong,
    /// Shorter than the shortest valid message.
    #[error("handshake message is too short")]
    TooShort,
    /// The Noise message did not authenticate: wrong listener key, wrong
    /// prologue (another TLS connection), or altered bytes.
    #[error("handshake message failed to decrypt")]
    DecryptFailed,
    /// The payload's version is not [`LINK_VERSION`].
    #[error("handshake version {0} is not supported")]
    WrongVersion(u8),
    /// The decrypted payload's fields do not add up.
    #[error("handshake payload is malformed")]
    Malformed,
    /// The Ed25519 key in message 1 does not map to its Noise static key.
    #[error("initiator's Ed25519 key does not match its Noise static key")]
    KeyMismatch,
    /// An Ed25519 key is not a usable identity key (not a point, or small
    /// order).
    #[error("peer's Ed25519 key is not a valid identity key")]
    BadPeerKey,
    /// Message 1's timestamp is more than [`HANDSHAKE_MAX_CLOCK_SKEW_SECS`]
    /// from the listener's clock.
    #[error("handshake timestamp is outside the allowed clock skew")]
    StaleTimestamp,
    /// This message 1 was already seen.
    #[error("handshake message 1 is a replay")]
    Replay,
    /// The application payload is too long for its message (a caller error).
    #[error("application payload of {0} bytes is too long for the handshake")]
    PayloadTooLong(usize),
    /// The Noise library refused a call: a bug in this crate, not bad input.
    #[error("noise handshake failed internally")]
    Internal,
}

impl From<NoiseError> for HandshakeError {
    fn from(e: NoiseError) -> HandshakeError {
        match e {
            NoiseError::Decrypt => HandshakeError::DecryptFailed,
            NoiseError::Internal => HandshakeError::Internal,
        }
    }
}

/// The dialer's side, between sending message 1 and reading message 2.
#[derive(Debug)]
pub struct LinkInitiator {
    noise: NoiseHandshake,
    remote: [u8; KEY_LEN],
}

impl LinkInitiator {
    /// Starts a handshake with the node whose identity is `remote_ed25519`
    /// and returns message 1 (raw bytes; see [`encode_bearer`]).
    ///
    /// `prologue` is the TLS exporter value on direct links. `app_payload`
    /// (for example an invite secret) is at most
    /// [`MSG1_APP_PAYLOAD_MAX_LEN`] bytes and only the listener can read it.
    pub fn start(
        local: &Identity,
        remote_ed25519: &[u8; KEY_LEN],
        prologue: &[u8],
        now_unix: u64,
        app_payload: &[u8],
    ) -> Result<(LinkInitiator, Vec<u8>), HandshakeError> {
        let app_len = u16::try_from(app_payload.len())
            .ok()
            .filter(|&n| usize::from(n) <= MSG1_APP_PAYLOAD_MAX_LEN)
            .ok_or(HandshakeError::PayloadTooLong(app_payload.len()))?;
        if crypto::is_weak_ed25519(remote_ed25519) {
            return Err(HandshakeError::BadPeerKey);
        }
        let remote_static = x25519_public(remote_ed25519).ok_or(HandshakeError::BadPeerKey)?;
        let mut noise = NoiseHandshake::initiator(
            &local.x25519_secret(),
            &remote_static,
            &link_prologue(prologue),
        )?;

        let mut nonce = [0u8; MSG1_NONCE_LEN];
        crypto::random_bytes(&mut nonce);
        let mut payload = Vec::with_capacity(MSG1_PAYLOAD_FIXED_LEN + app_payload.len());
        payload.push(LINK_VERSION);
        payload.extend_from_slice(&local.public());
        payload.extend_from_slice(&now_unix.to_be_bytes());
        payload.extend_from_slice(&nonce);
        payload.extend_from_slice(&app_len.to_be_bytes());
        payload.extend_from_slice(app_payload);

        let msg1 = noise.write(&payload)?;
        let initiator = LinkInitiator {
            noise,
            remote: *remote_ed25519,
        };
        Ok((initiator, msg1))
    }

    /// Reads message 2 (without its length prefix: see [`decode_msg2`]) and
    /// completes the handshake.
    pub fn finish(mut self, msg2: &[u8]) -> Result<LinkEstablished, HandshakeError> {
        if msg2.len() < MSG2_MIN_LEN {
            return Err(HandshakeError::TooShort);
        }
        if msg2.len() > MSG2_MAX_LEN {
            return Err(HandshakeError::TooLong);
        }
        let payload = self.noise.read(msg2)?;
        let mut r = Reader::new(&payload);
        let version = r.u8().ok_or(HandshakeError::Malformed)?;
        if version != LINK_VERSION {
            return Err(HandshakeError::WrongVersion(version));
        }
        let app_payload = read_app_payload(&mut r)?;
        Ok(LinkEstablished {
            peer: self.remote,
            app_payload,
            handshake_hash: self.noise.handshake_hash(),
        })
    }
}

/// The listener's side: its identity and the replay cache. One per node,
/// shared by every incoming connection.
#[derive(Debug)]
pub struct LinkResponder {
    local: Identity,
    replay: ReplayCache,
}

impl LinkResponder {
    /// A responder for the node `local`, with an empty replay cache.
    pub fn new(local: Identity) -> LinkResponder {
        LinkResponder {
            local,
            replay: ReplayCache::new(REPLAY_CACHE_MAX_ENTRIES),
        }
    }

    /// Reads message 1 (raw bytes; see [`decode_bearer`]).
    ///
    /// On success the initiator has proven its identity, which
    /// [`IncomingLink::peer`] names. The caller decides (from its
    /// agreements, or the invite secret in [`IncomingLink::app_payload`])
    /// whether to accept; only then does it call [`IncomingLink::accept`].
    /// Dropping the `IncomingLink` rejects it.
    pub fn read_msg1(
        &mut self,
        msg1: &[u8],
        prologue: &[u8],
        now_unix: u64,
    ) -> Result<IncomingLink, HandshakeError> {
        if msg1.len() < MSG1_MIN_LEN {
            return Err(HandshakeError::TooShort);
        }
        if msg1.len() > MSG1_MAX_LEN {
            return Err(HandshakeError::TooLong);
        }
        let mut noise =
            NoiseHandshake::responder(&self.local.x25519_secret(), &link_prologue(prologue))?;
        let payload = noise.read(msg1)?;

        let mut r = Reader::new(&payload);
        let version = r.u8().ok_or(HandshakeError::Malformed)?;
        if version != LINK_VERSION {
            return Err(HandshakeError::WrongVersion(version));
        }
        let peer: [u8; KEY_LEN] = r.array().ok_or(HandshakeError::Malformed)?;
        let timestamp = r.u64().ok_or(HandshakeError::Malformed)?;
        let _nonce: [u8; MSG1_NONCE_LEN] = r.array().ok_or(HandshakeError::Malformed)?;
        let app_payload = read_app_payload(&mut r)?;

        if crypto::is_weak_ed25519(&peer) {
            return Err(HandshakeError::BadPeerKey);
        }
        if x25519_public(&peer).is_none() || x25519_public(&peer) != noise.remote_static() {
            return Err(HandshakeError::KeyMismatch);
        }
        if timestamp.abs_diff(now_unix) > HANDSHAKE_MAX_CLOCK_SKEW_SECS {
            return Err(HandshakeError::StaleTimestamp);
        }
        // Only an authenticated, fresh message 1 enters the cache, so junk
        // cannot push real entries out. The ephemeral key is message 1's
        // first (cleartext) field.
        let ephemeral: [u8; KEY_LEN] = Reader::new(msg1).array().ok_or(HandshakeError::TooShort)?;
        if !self.replay.insert(ephemeral, timestamp, now_unix) {
            return Err(HandshakeError::Replay);
        }
        Ok(IncomingLink {
            peer,
            app_payload,
            noise,
        })
    }

    /// The number of message-1 ephemeral keys remembered now, for metrics.
    pub fn replay_cache_len(&self) -> usize {
        self.replay.len()
    }
}

/// A message 1 that authenticated, waiting for the caller's decision.
pub struct IncomingLink {
    /// The initiator's Ed25519 identity, proven by the handshake.
    pub peer: [u8; KEY_LEN],
    /// What the initiator sent along (for example an invite secret).
    pub app_payload: Vec<u8>,
    noise: NoiseHandshake,
}

impl std::fmt::Debug for IncomingLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The app payload may be an invite secret: show only its length.
        f.debug_struct("IncomingLink")
            .field("peer", &hex::encode(self.peer))
            .field("app_payload_len", &self.app_payload.len())
            .finish_non_exhaustive()
    }
}

impl IncomingLink {
    /// Accepts the link: returns the bytes to send as the start of the
    /// response body (message 2 with its `u16` length prefix) and the
    /// established link. `reply_payload` (for example the address the
    /// initiator was observed from) is at most [`MSG2_APP_PAYLOAD_MAX_LEN`]
    /// bytes.
    pub fn accept(
        mut self,
        reply_payload: &[u8],
    ) -> Result<(Vec<u8>, LinkEstablished), HandshakeError> {
        let app_len = u16::try_from(reply_payload.len())
            .ok()
            .filter(|&n| usize::from(n) <= MSG2_APP_PAYLOAD_MAX_LEN)
            .ok_or(HandshakeError::PayloadTooLong(reply_payload.len()))?;
        let mut payload = Vec::with_capacity(MSG2_PAYLOAD_FIXED_LEN + reply_payload.len());
        payload.push(LINK_VERSION);
        payload.extend_from_slice(&app_len.to_be_bytes());
        payload.extend_from_slice(reply_payload);

        let msg2 = self.noise.write(&payload)?;
        let len = u16::try_from(msg2.len()).map_err(|_| HandshakeError::Internal)?;
        let mut wire = Vec::with_capacity(MSG2_PREFIX_LEN + msg2.len());
        wire.extend_from_slice(&len.to_be_bytes());
        wire.extend_from_slice(&msg2);
        let established = LinkEstablished {
            peer: self.peer,
            app_payload: self.app_payload,
            handshake_hash: self.noise.handshake_hash(),
        };
        Ok((wire, established))
    }
}

/// A finished handshake. Link frames now travel inside the TLS connection
/// the prologue named, with no second AEAD (`docs/protocol.md, "Link setup"`).
#[derive(Clone, PartialEq, Eq)]
pub struct LinkEstablished {
    /// The other node's Ed25519 identity.
    pub peer: [u8; KEY_LEN],
    /// What the other side sent in its handshake message.
    pub app_payload: Vec<u8>,
    /// The Noise handshake hash: the same on both sides and unique to this
    /// session, so either side can sign it to bind a statement (an
    /// agreement, an invite acceptance) to this link.
    pub handshake_hash: [u8; KEY_LEN],
}

impl std::fmt::Debug for LinkEstablished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The app payload may be an invite secret: show only its length.
        f.debug_struct("LinkEstablished")
            .field("peer", &hex::encode(self.peer))
            .field("app_payload_len", &self.app_payload.len())
            .field("handshake_hash", &hex::encode(self.handshake_hash))
            .finish()
    }
}

/// The `Authorization` header value that carries message 1:
/// `Bearer <base64url without padding>`.
pub fn encode_bearer(msg1: &[u8]) -> String {
    let mut s = String::with_capacity(BEARER_SCHEME.len() + 1 + msg1.len().div_ceil(3) * 4);
    s.push_str("Bearer ");
    URL_SAFE_NO_PAD.encode_string(msg1, &mut s);
    s
}

/// Message 1 from an `Authorization` header value. The scheme is matched
/// case-insensitively (RFC 9110 §11.1), and values over [`BEARER_MAX_LEN`]
/// bytes are rejected before decoding. Total: never panics.
pub fn decode_bearer(header_value: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    if header_value.len() > BEARER_MAX_LEN {
        return Err(HandshakeError::TooLong);
    }
    let Some((scheme, token)) = header_value
        .iter()
        .position(|&b| b == b' ')
        .map(|i| header_value.split_at(i))
    else {
        return Err(HandshakeError::BadBase64);
    };
    if !scheme.eq_ignore_ascii_case(BEARER_SCHEME) {
        return Err(HandshakeError::BadBase64);
    }
    let token = token.trim_ascii();
    let msg1 = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| HandshakeError::BadBase64)?;
    if msg1.len() > MSG1_MAX_LEN {
        return Err(HandshakeError::TooLong);
    }
    if msg1.len() < MSG1_MIN_LEN {
        return Err(HandshakeError::TooShort);
    }
    Ok(msg1)
}

/// Message 2 from the start of a response body that may be partly received.
///
/// Returns `Ok(None)` while more bytes are needed, and otherwise the Noise
/// message (for [`LinkInitiator::finish`]) and how many bytes of `buf` it
/// used, prefix included: the bytes after that are the first link frames.
pub fn decode_msg2(buf: &[u8]) -> Result<Option<(&[u8], usize)>, HandshakeError> {
    let Some(&prefix) = buf.first_chunk::<MSG2_PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes(prefix));
    if len < MSG2_MIN_LEN {
        return Err(HandshakeError::TooShort);
    }
    if len > MSG2_MAX_LEN {
        return Err(HandshakeError::TooLong);
    }
    let end = MSG2_PREFIX_LEN + len;
    Ok(buf.get(MSG2_PREFIX_LEN..end).map(|msg2| (msg2, end)))
}

/// The Noise prologue: the fixed label, then the caller's binding value.
fn link_prologue(binding: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(LINK_PROLOGUE_LABEL.len() + binding.len());
    p.extend_from_slice(LINK_PROLOGUE_LABEL);
    p.extend_from_slice(binding);
    p
}

/// `app_len u16 | app payload`, which must end the handshake payload.
fn read_app_payload(r: &mut Reader<'_>) -> Result<Vec<u8>, HandshakeError> {
    let len = r.u16().ok_or(HandshakeError::Malformed)?;
    let app = r.take(usize::from(len)).ok_or(HandshakeError::Malformed)?;
    if !r.is_empty() {
        return Err(HandshakeError::Malformed);
    }
    Ok(app.to_vec())
}

/// Message-1 ephemeral keys seen recently. An entry lives until its message's
/// timestamp leaves the skew window, after which the timestamp check alone
/// rejects a replay; past `cap` entries the oldest timestamp goes first.
///
/// The cache is in memory. On direct links the TLS exporter in the prologue
/// already stops a replay on another connection; the cache matters when
/// that binding is off.
struct ReplayCache {
    cap: usize,
    /// Ephemeral key to the unix second after which it may be forgotten.
    by_key: HashMap<[u8; KEY_LEN], u64>,
    /// The same entries ordered by expiry, for eviction.
    by_expiry: BTreeSet<(u64, [u8; KEY_LEN])>,
}

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache")
            .field("len", &self.by_key.len())
            .field("cap", &self.cap)
            .finish()
    }
}

impl ReplayCache {
    fn new(cap: usize) -> ReplayCache {
        ReplayCache {
            cap,
            by_key: HashMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Remembers `key`, from a message stamped `timestamp`. Returns false if
    /// it was already remembered (a replay).
    fn insert(&mut self, key: [u8; KEY_LEN], timestamp: u64, now_unix: u64) -> bool {
        self.evict_expired(now_unix);
        if self.by_key.contains_key(&key) {
            return false;
        }
        while self.by_key.len() >= self.cap.max(1) {
            let Some(oldest) = self.by_expiry.pop_first() else {
                break;
            };
            self.by_key.remove(&oldest.1);
        }
        let expiry = timestamp.saturating_add(HANDSHAKE_MAX_CLOCK_SKEW_SECS);
        self.by_key.insert(key, expiry);
        self.by_expiry.insert((expiry, key));
        true
    }

    fn evict_expired(&mut self, now_unix: u64) {
        while let Some(&(expiry, key)) = self.by_expiry.first() {
            if expiry >= now_unix {
                break;
            }
            self.by_expiry.pop_first();
            self.by_key.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn replay_cache_forgets_entries_once_their_timestamp_is_stale() {
        let mut c = ReplayCache::new(16);
        assert!(c.insert([1; 32], NOW, NOW));
        assert!(!c.insert([1; 32], NOW, NOW + HANDSHAKE_MAX_CLOCK_SKEW_SECS));
        // One second later a replay would fail the timestamp check anyway.
        assert!(c.insert([2; 32], NOW + 200, NOW + HANDSHAKE_MAX_CLOCK_SKEW_SECS + 1));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn replay_cache_is_bounded_and_evicts_the_oldest() {
        let mut c = ReplayCache::new(3);
        for i in 0..3u8 {
            assert!(c.insert([i; 32], NOW + u64::from(i), NOW));
        }
        assert!(c.insert([9; 32], NOW + 10, NOW));
        assert_eq!(c.len(), 3);
        // The oldest (key 0) went; the others are still replays.
        assert!(!c.insert([1; 32], NOW + 1, NOW));
        assert!(!c.insert([9; 32], NOW + 10, NOW));
        assert!(c.insert([0; 32], NOW, NOW));
    }

    /// A message 1 whose payload names a different Ed25519 key than the
    /// Noise static key that sent it.
    #[test]
    fn message1_naming_another_identity_is_rejected() {
        let listener = Identity::from_seed(&[1; 32]);
        let sender = Identity::from_seed(&[2; 32]);
        let claimed = Identity::from_seed(&[3; 32]);
        let remote_static = x25519_public(&listener.public()).expect("valid key");
        let mut noise = NoiseHandshake::initiator(
            &sender.x25519_secret(),
            &remote_static,
            &link_prologue(b"tls"),
        )
        .expect("noise");
        let mut payload = vec![LINK_VERSION];
        payload.extend_from_slice(&claimed.public());
        payload.extend_from_slice(&NOW.to_be_bytes());
        payload.extend_from_slice(&[0; MSG1_NONCE_LEN]);
        payload.extend_from_slice(&0u16.to_be_bytes());
        let msg1 = noise.write(&payload).expect("write");

        let mut responder = LinkResponder::new(listener);
        let err = responder.read_msg1(&msg1, b"tls", NOW).map(|_| ());
        assert_eq!(err, Err(HandshakeError::KeyMismatch));
        assert_eq!(responder.replay_cache_len(), 0);
    }

    #[test]
    fn message1_with_another_version_is_rejected() {
        let listener = Identity::from_seed(&[1; 32]);
        let sender = Identity::from_seed(&[2; 32]);
        let remote_static = x25519_public(&listener.public()).expect("valid key");
        let mut noise =
            NoiseHandshake::initiator(&sender.x25519_secret(), &remote_static, &link_prologue(b""))
                .expect("noise");
        let mut payload = vec![LINK_VERSION + 1];
        payload.extend_from_slice(&[0; MSG1_PAYLOAD_FIXED_LEN - 1]);
        let msg1 = noise.write(&payload).expect("write");
        let err = LinkResponder::new(listener)
            .read_msg1(&msg1, b"", NOW)
            .map(|_| ());
        assert_eq!(err, Err(HandshakeError::WrongVersion(LINK_VERSION + 1)));
    }

    #[test]
    fn small_order_peer_keys_are_refused() {
        // The Ed25519 identity point (y = 1) has order 1.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        let local = Identity::from_seed(&[5; 32]);
        let err = LinkInitiator::start(&local, &identity_point, b"", NOW, b"").map(|_| ());
        assert_eq!(err, Err(HandshakeError::BadPeerKey));
    }
}
