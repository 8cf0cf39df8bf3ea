//! Invite tokens (`docs/protocol.md, "Invites"`; `docs/cli.md, "umbra invite"`).
//!
//! A token is one line: `umbra1` followed by base64url without padding
//! (only `A-Za-z0-9_-`) of
//!
//! ```text
//! version u8 | inviter Ed25519 key [32] |
//! endpoint count u8 | (len u8 | "host:port" UTF-8)* |
//! bytes_per_period u64 | period_secs u64 | expiry_unix u64 |
//! secret [16] | checksum [4]
//! ```
//!
//! The checksum is the first 4 bytes of BLAKE2s-256 of everything before it,
//! so a mistyped or cut token says so instead of decoding to garbage. It is
//! not a signature: the secret and the inviter's key, checked in the link
//! handshake, are what make a token trustworthy.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::codec::Reader;
use crate::crypto;

/// What every token starts with. The `1` is the token family, not the
/// binary version inside.
pub const INVITE_PREFIX: &str = "umbra1";

/// The binary version this code writes and reads.
pub const INVITE_VERSION: u8 = 1;

/// The most endpoints one invite may list.
pub const INVITE_MAX_ENDPOINTS: usize = 8;

/// The longest endpoint string, in bytes.
pub const INVITE_ENDPOINT_MAX_LEN: usize = 255;

/// Length of the one-time secret, in bytes.
pub const INVITE_SECRET_LEN: usize = 16;

/// Length of the checksum, in bytes.
const INVITE_CHECKSUM_LEN: usize = 4;

/// The binary length with no endpoints, checksum included, in bytes.
const INVITE_MIN_LEN: usize = 1 + 32 + 1 + 3 * 8 + INVITE_SECRET_LEN + INVITE_CHECKSUM_LEN;

/// The binary length with the most and longest endpoints, in bytes.
const INVITE_MAX_LEN: usize = INVITE_MIN_LEN + INVITE_MAX_ENDPOINTS * (1 + INVITE_ENDPOINT_MAX_LEN);

/// The longest token, prefix included, in characters. Longer input is
/// rejected before decoding.
pub const INVITE_TOKEN_MAX_LEN: usize = INVITE_PREFIX.len() + (INVITE_MAX_LEN * 4).div_ceil(3);

/// Why a token could not be read, or an invite not made. One line each, for
/// `umbra accept`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// The text does not start with [`INVITE_PREFIX`].
    #[error("not an umbra invite token (it should start with \"umbra1\")")]
    NotAnInvite,
    /// The text holds characters that a token never has.
    #[error("token is damaged (it has characters other than A-Z a-z 0-9 _ -)")]
    BadCharacters,
    /// The text is longer than any token.
    #[error("token is too long to be an umbra invite")]
    TooLong,
    /// The token is shorter than any valid token: probably cut when copied.
    #[error("token is truncated; copy the whole line")]
    Truncated,
    /// The checksum does not match: a character was changed or lost.
    #[error("token is damaged (checksum mismatch)")]
    Damaged,
    /// The token was made by a version of umbra this one cannot read.
    #[error("token version {0} is not supported by this umbra; upgrade it")]
    UnsupportedVersion(u8),
    /// The checksum matched but the fields do not add up: the inviter's
    /// software is broken.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// More than [`INVITE_MAX_ENDPOINTS`] endpoints.
    #[error("an invite lists at most 8 endpoints, not {0}")]
    TooManyEndpoints(usize),
    /// An endpoint is not `host:port` of at most
    /// [`INVITE_ENDPOINT_MAX_LEN`] bytes.
    #[error("endpoint {0:?} is not host:port of at most 255 bytes")]
    BadEndpoint(String),
}

/// An invitation to make an agreement: who invites, where to dial it, the
/// proposed terms, until when, and the secret that proves the acceptor holds
/// this token.
#[derive(Clone, PartialEq, Eq)]
pub struct Invite {
    inviter: [u8; 32],
    endpoints: Vec<String>,
    bytes_per_period: u64,
    period_secs: u64,
    expiry_unix: u64,
    secret: [u8; INVITE_SECRET_LEN],
}

impl std::fmt::Debug for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is what makes the token usable; keep it out of logs.
        f.debug_struct("Invite")
            .field("inviter", &hex::encode(self.inviter))
            .field("endpoints", &self.endpoints)
            .field("bytes_per_period", &self.bytes_per_period)
            .field("period_secs", &self.period_secs)
            .field("expiry_unix", &self.expiry_unix)
            .finish_non_exhaustive()
    }
}

impl Invite {
    /// An invite, checked so that it can always be encoded: at most
    /// [`INVITE_MAX_ENDPOINTS`] endpoints, each `host:port` of at most
    /// [`INVITE_ENDPOINT_MAX_LEN`] bytes.
    pub fn new(
        inviter: [u8; 32],
        endpoints: Vec<String>,
        bytes_per_period: u64,
        period_secs: u64,
        expiry_unix: u64,
        secret: [u8; INVITE_SECRET_LEN],
    ) -> Result<Invite, InviteError> {
        if endpoints.len() > INVITE_MAX_ENDPOINTS {
            return Err(InviteError::TooManyEndpoints(endpoints.len()));
        }
        if let Some(bad) = endpoints.iter().find(|e| !is_endpoint(e)) {
            return Err(InviteError::BadEndpoint(bad.clone()));
        }
        Ok(Invite {
            inviter,
            endpoints,
            bytes_per_period,
            period_secs,
            expiry_unix,
            secret,
        })
    }

    /// A fresh random one-time secret.
    pub fn random_secret() -> [u8; INVITE_SECRET_LEN] {
        let mut s = [0u8; INVITE_SECRET_LEN];
        crypto::random_bytes(&mut s);
        s
    }

    /// The inviter's Ed25519 public key.
    pub fn inviter(&self) -> &[u8; 32] {
        &self.inviter
    }

    /// Where the inviter can be dialed, in the order to try, as `host:port`.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Proposed terms: bytes relayed per period, each way.
    pub fn bytes_per_period(&self) -> u64 {
        self.bytes_per_period
    }

    /// Proposed terms: the period, in seconds.
    pub fn period_secs(&self) -> u64 {
        self.period_secs
    }

    /// The unix time (seconds) from which the token is no longer valid.
    pub fn expiry_unix(&self) -> u64 {
        self.expiry_unix
    }

    /// The one-time secret the acceptor proves inside the link handshake.
    pub fn secret(&self) -> &[u8; INVITE_SECRET_LEN] {
        &self.secret
    }

    /// Whether `candidate` is this invite's secret, compared in constant
    /// time.
    pub fn secret_matches(&self, candidate: &[u8]) -> bool {
        crypto::ct_eq(&self.secret, candidate)
    }

    /// Whether the token has expired at `now_unix` (seconds).
    pub fn is_expired(&self, now_unix: u64) -> bool {
        now_unix >= self.expiry_unix
    }

    /// The token: one line, `umbra1` and then only `A-Za-z0-9_-`.
    pub fn encode(&self) -> String {
        let mut bin = Vec::with_capacity(INVITE_MAX_LEN);
        bin.push(INVITE_VERSION);
        bin.extend_from_slice(&self.inviter);
        // `new` and `decode` bound both counts, so these never saturate.
        bin.push(u8::try_from(self.endpoints.len()).unwrap_or(u8::MAX));
        for e in &self.endpoints {
            bin.push(u8::try_from(e.len()).unwrap_or(u8::MAX));
            bin.extend_from_slice(e.as_bytes());
        }
        bin.extend_from_slice(&self.bytes_per_period.to_be_bytes());
        bin.extend_from_slice(&self.period_secs.to_be_bytes());
        bin.extend_from_slice(&self.expiry_unix.to_be_bytes());
        bin.extend_from_slice(&self.secret);
        let checksum: [u8; INVITE_CHECKSUM_LEN] = crypto::blake2s_prefix(&bin);
        bin.extend_from_slice(&checksum);

        let mut token = String::with_capacity(INVITE_TOKEN_MAX_LEN);
        token.push_str(INVITE_PREFIX);
        URL_SAFE_NO_PAD.encode_string(&bin, &mut token);
        token
    }

    /// Reads a token. Surrounding whitespace (a pasted newline) is ignored.
    /// Expiry is not checked here: see [`Invite::is_expired`].
    pub fn decode(token: &str) -> Result<Invite, InviteError> {
        let body = token
            .trim()
            .strip_prefix(INVITE_PREFIX)
            .ok_or(InviteError::NotAnInvite)?;
        if body.len() > INVITE_TOKEN_MAX_LEN - INVITE_PREFIX.len() {
            return Err(InviteError::TooLong);
        }
        if !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(InviteError::BadCharacters);
        }
        // A failed check on input shorter than any token is most likely a
        // token cut short when copied.
        let damaged = if body.len() < (INVITE_MIN_LEN * 4).div_ceil(3) {
            InviteError::Truncated
        } else {
            InviteError::Damaged
        };
        let bin = URL_SAFE_NO_PAD.decode(body).map_err(|_| damaged.clone())?;
        let Some(split) = bin.len().checked_sub(INVITE_CHECKSUM_LEN) else {
            return Err(InviteError::Truncated);
        };
        let (content, checksum) = bin.split_at(split);
        if content.is_empty() {
            return Err(InviteError::Truncated);
        }
        if crypto::blake2s_prefix::<INVITE_CHECKSUM_LEN>(content) != checksum {
            return Err(damaged);
        }

        let mut r = Reader::new(content);
        let version = r.u8().ok_or(InviteError::Truncated)?;
        if version != INVITE_VERSION {
            return Err(InviteError::UnsupportedVersion(version));
        }
        let ended = InviteError::Malformed("fields end early");
        let inviter = r.array().ok_or(ended.clone())?;
        let count = usize::from(r.u8().ok_or(ended.clone())?);
        if count > INVITE_MAX_ENDPOINTS {
            return Err(InviteError::Malformed("too many endpoints"));
        }
        let mut endpoints = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(r.u8().ok_or(ended.clone())?);
            let raw = r.take(len).ok_or(ended.clone())?;
            let endpoint = std::str::from_utf8(raw)
                .ok()
                .filter(|e| is_endpoint(e))
                .ok_or(InviteError::Malformed("an endpoint is not host:port"))?;
            endpoints.push(endpoint.to_owned());
        }
        let bytes_per_period = r.u64().ok_or(ended.clone())?;
        let period_secs = r.u64().ok_or(ended.clone())?;
        let expiry_unix = r.u64().ok_or(ended.clone())?;
        let secret = r.array().ok_or(ended)?;
        if !r.is_empty() {
            return Err(InviteError::Malformed("bytes after the secret"));
        }
        // The count and every endpoint are checked above already, so `new`'s
        // checks pass.
        Invite::new(
            inviter,
            endpoints,
            bytes_per_period,
            period_secs,
            expiry_unix,
            secret,
        )
    }
}

/// Whether `e` is a plausible `host:port`: a non-empty host without spaces
/// or control characters, and a decimal port from 1 to 65535. Names are not
/// resolved here.
fn is_endpoint(e: &str) -> bool {
    let Some((host, port)) = e.rsplit_once(':') else {
        return false;
    };
    e.len() <= INVITE_ENDPOINT_MAX_LEN
        && !host.is_empty()
        && !host.chars().any(|c| c.is_whitespace() || c.is_control())
        && !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Invite {
        Invite::new(
            [0x3b; 32],
            vec!["relay.example.org:443".into(), "[2001:db8::1]:443".into()],
            50 << 30,
            30 * 86_400,
            1_700_086_400,
            [9; INVITE_SECRET_LEN],
        )
        .expect("valid invite")
    }

    #[test]
    fn a_changed_character_reports_a_checksum_mismatch() {
        let token = sample().encode();
        let mut chars: Vec<char> = token.chars().collect();
        let i = INVITE_PREFIX.len() + 20;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let typo: String = chars.into_iter().collect();
        assert_eq!(Invite::decode(&typo), Err(InviteError::Damaged));
        assert_eq!(
            InviteError::Damaged.to_string(),
            "token is damaged (checksum mismatch)"
        );
    }

    #[test]
    fn a_token_cut_short_reports_truncation() {
        let token = sample().encode();
        assert_eq!(Invite::decode(&token[..40]), Err(InviteError::Truncated));
        assert_eq!(Invite::decode("umbra1"), Err(InviteError::Truncated));
    }

    #[test]
    fn other_text_is_not_an_invite() {
        assert_eq!(Invite::decode("hello"), Err(InviteError::NotAnInvite));
        let token = sample().encode();
        let spaced = format!("{} {}", &token[..30], &token[30..]);
        assert_eq!(Invite::decode(&spaced), Err(InviteError::BadCharacters));
    }

    #[test]
    fn a_newer_version_is_named() {
        let mut bin = vec![INVITE_VERSION + 1, 1, 2, 3];
        let checksum: [u8; INVITE_CHECKSUM_LEN] = crypto::blake2s_prefix(&bin);
        bin.extend_from_slice(&checksum);
        let token = format!("{INVITE_PREFIX}{}", URL_SAFE_NO_PAD.encode(&bin));
        assert_eq!(
            Invite::decode(&token),
            Err(InviteError::UnsupportedVersion(INVITE_VERSION + 1))
        );
    }

    #[test]
    fn the_secret_stays_out_of_debug_output() {
        let shown = format!("{:?}", sample());
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("relay.example.org:443"), "{shown}");
    }

    #[test]
    fn invalid_endpoints_are_refused_with_their_text() {
        let err = Invite::new([1; 32], vec!["no-port".into()], 1, 1, 1, [0; 16]);
        assert_eq!(err, Err(InviteError::BadEndpoint("no-port".into())));
        let many = vec!["a:1".to_string(); INVITE_MAX_ENDPOINTS + 1];
        let err = Invite::new([1; 32], many, 1, 1, 1, [0; 16]);
        assert_eq!(err, Err(InviteError::TooManyEndpoints(9)));
    }
}
