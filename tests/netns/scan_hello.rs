//! Crafted ClientHellos for the scan test, and the canonical form of a
//! server's first answer to one: its TLS records with the fields a server
//! draws at random blanked (docs/threat-model.md, "What a prober sees").

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long a first answer may stay silent before it counts as complete.
const ANSWER_IDLE: Duration = Duration::from_millis(400);

/// How long a probe waits in all for an answer or a close.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Pause between the pieces of a hello sent in small TCP segments.
const PIECE_GAP: Duration = Duration::from_millis(3);

// TLS numbers (RFC 8446, RFC 5246 and the IANA registries).
const HANDSHAKE: u8 = 0x16;
const ALERT: u8 = 0x15;
const CHANGE_CIPHER_SPEC: u8 = 0x14;
const APPLICATION_DATA: u8 = 0x17;
const CLIENT_HELLO: u8 = 1;
const SERVER_HELLO: u8 = 2;
const CERTIFICATE: u8 = 11;
const SERVER_KEY_EXCHANGE: u8 = 12;
const EXT_SERVER_NAME: u16 = 0;
const EXT_STATUS_REQUEST: u16 = 5;
const EXT_GROUPS: u16 = 10;
const EXT_POINT_FORMATS: u16 = 11;
const EXT_SIG_ALGS: u16 = 13;
const EXT_HEARTBEAT: u16 = 15;
const EXT_ALPN: u16 = 16;
const EXT_SCT: u16 = 18;
const EXT_PADDING: u16 = 21;
const EXT_ETM: u16 = 22;
const EXT_EMS: u16 = 23;
const EXT_TICKET: u16 = 35;
const EXT_VERSIONS: u16 = 43;
const EXT_PSK_MODES: u16 = 45;
const EXT_KEY_SHARE: u16 = 51;
const EXT_RENEGOTIATION: u16 = 0xff01;
/// The random value of a HelloRetryRequest (RFC 8446 §4.1.3).
const HRR_RANDOM_PREFIX: [u8; 4] = [0xcf, 0x21, 0xad, 0x74];

pub(crate) const TLS13: u16 = 0x0304;
pub(crate) const TLS12: u16 = 0x0303;
pub(crate) const TLS11: u16 = 0x0302;
pub(crate) const TLS10: u16 = 0x0301;
pub(crate) const SSL3: u16 = 0x0300;

pub(crate) const X25519: u16 = 0x001d;
pub(crate) const SECP256R1: u16 = 0x0017;
pub(crate) const SECP384R1: u16 = 0x0018;
pub(crate) const SECP521R1: u16 = 0x0019;
pub(crate) const X448: u16 = 0x001e;
pub(crate) const FFDHE2048: u16 = 0x0100;
/// A GREASE value (RFC 8701), for suites, groups, versions and extensions.
pub(crate) const GREASE: u16 = 0x0a0a;

/// TLS 1.3 suites in the order browsers offer them.
pub(crate) const TLS13_SUITES: [u16; 3] = [0x1301, 0x1303, 0x1302];

/// TLS 1.2 suites in Firefox's order: ECDHE with AES-GCM and ChaCha20, then
/// CBC, then static RSA.
pub(crate) const TLS12_SUITES: [u16; 15] = [
    0xc02b, 0xc02f, 0xcca9, 0xcca8, 0xc02c, 0xc030, 0xc00a, 0xc009, 0xc013, 0xc014, 0x009c, 0x009d,
    0x002f, 0x0035, 0x000a,
];

/// CBC suites only (what a TLS 1.0 or 1.1 client has).
pub(crate) const CBC_SUITES: [u16; 6] = [0xc013, 0xc014, 0xc009, 0xc00a, 0x002f, 0x0035];

/// Signature schemes as browsers offer them.
const SIG_ALGS: [u16; 9] = [
    0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601, 0x0201,
];

/// A key share that every server takes: an X25519 public value of 9 (the
/// base point), a P-256 generator, an X448 value of 5, a finite-field value
/// of 2.
fn key_share_value(group: u16) -> Vec<u8> {
    match group {
        X25519 => {
            let mut k = vec![0u8; 32];
            k[0] = 9;
            k
        }
        X448 => {
            let mut k = vec![0u8; 56];
            k[0] = 5;
            k
        }
        SECP256R1 => {
            let mut k = vec![0x04];
            k.extend(hex(
                "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
            ));
            k.extend(hex(
                "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
            ));
            k
        }
        FFDHE2048 => {
            let mut k = vec![0u8; 256];
            k[255] = 2;
            k
        }
        _ => vec![0x42; 32],
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
        .collect()
}

fn u16be(v: u16) -> [u8; 2] {
    v.to_be_bytes()
}

/// `body` behind a 16-bit length.
fn vec16(body: &[u8]) -> Vec<u8> {
    let mut v = u16be(body.len() as u16).to_vec();
    v.extend_from_slice(body);
    v
}

/// `body` behind an 8-bit length.
fn vec8(body: &[u8]) -> Vec<u8> {
    let mut v = vec![body.len() as u8];
    v.extend_from_slice(body);
    v
}

fn list16(items: &[u16]) -> Vec<u8> {
    items.iter().flat_map(|x| u16be(*x)).collect()
}

/// A ClientHello to build, field by field; [`Hello::browser`] is the start
/// of most probes.
#[derive(Debug, Clone)]
pub(crate) struct Hello {
    pub(crate) record_version: u16,
    pub(crate) legacy_version: u16,
    pub(crate) session_id: Vec<u8>,
    pub(crate) suites: Vec<u16>,
    pub(crate) compression: Vec<u8>,
    pub(crate) extensions: Vec<(u16, Vec<u8>)>,
}

impl Hello {
    /// What a browser offers: TLS 1.3 and 1.2, both suite lists, X25519 and
    /// the NIST curves, an X25519 key share, SNI `name` (none if empty),
    /// ALPN `h2` and `http/1.1`, the usual TLS 1.2 extensions.
    pub(crate) fn browser(name: &str) -> Hello {
        let mut suites = TLS13_SUITES.to_vec();
        suites.extend(TLS12_SUITES);
        let mut h = Hello {
            record_version: TLS10,
            legacy_version: TLS12,
            session_id: vec![0x22; 32],
            suites,
            compression: vec![0],
            extensions: Vec::new(),
        };
        if !name.is_empty() {
            h = h.sni(name);
        }
        h.ext(EXT_EMS, vec![])
            .ext(EXT_RENEGOTIATION, vec![0])
            .ext(
                EXT_GROUPS,
                vec16(&list16(&[
                    X25519, SECP256R1, SECP384R1, SECP521R1, FFDHE2048,
                ])),
            )
            .ext(EXT_POINT_FORMATS, vec8(&[0]))
            .ext(EXT_TICKET, vec![])
            .alpn(&[b"h2", b"http/1.1"])
            .ext(EXT_STATUS_REQUEST, vec![1, 0, 0, 0, 0])
            .ext(EXT_SIG_ALGS, vec16(&list16(&SIG_ALGS)))
            .ext(EXT_SCT, vec![])
            .key_shares(&[X25519])
            .ext(EXT_PSK_MODES, vec8(&[1]))
            .versions(&[TLS13, TLS12])
    }

    /// A TLS 1.2 client of before TLS 1.3: no versions, key share or PSK
    /// modes extension, the TLS 1.2 suites.
    pub(crate) fn tls12(name: &str) -> Hello {
        let mut h = Hello::browser(name).without(EXT_VERSIONS);
        h = h.without(EXT_KEY_SHARE).without(EXT_PSK_MODES);
        h.suites = TLS12_SUITES.to_vec();
        h
    }

    /// An older client: `version` as its highest, CBC suites, no TLS 1.3
    /// extensions.
    pub(crate) fn legacy(name: &str, version: u16) -> Hello {
        let mut h = Hello::tls12(name);
        h.legacy_version = version;
        h.suites = CBC_SUITES.to_vec();
        h
    }

    /// Adds an extension at the end.
    pub(crate) fn ext(mut self, kind: u16, body: Vec<u8>) -> Hello {
        self.extensions.push((kind, body));
        self
    }

    /// Replaces the body of extension `kind` (or adds it at the end).
    pub(crate) fn set(mut self, kind: u16, body: Vec<u8>) -> Hello {
        match self.extensions.iter_mut().find(|(k, _)| *k == kind) {
            Some(e) => e.1 = body,
            None => self.extensions.push((kind, body)),
        }
        self
    }

    /// Drops extension `kind`.
    pub(crate) fn without(mut self, kind: u16) -> Hello {
        self.extensions.retain(|(k, _)| *k != kind);
        self
    }

    pub(crate) fn sni(self, name: &str) -> Hello {
        let entry = [&[0u8][..], &vec16(name.as_bytes())].concat();
        self.set(EXT_SERVER_NAME, vec16(&entry))
    }

    pub(crate) fn alpn(self, protocols: &[&[u8]]) -> Hello {
        let list: Vec<u8> = protocols.iter().flat_map(|p| vec8(p)).collect();
        self.set(EXT_ALPN, vec16(&list))
    }

    pub(crate) fn versions(self, versions: &[u16]) -> Hello {
        self.set(EXT_VERSIONS, vec8(&list16(versions)))
    }

    pub(crate) fn groups(self, groups: &[u16]) -> Hello {
        self.set(EXT_GROUPS, vec16(&list16(groups)))
    }

    pub(crate) fn key_shares(self, groups: &[u16]) -> Hello {
        let shares: Vec<u8> = groups
            .iter()
            .flat_map(|g| [&u16be(*g)[..], &vec16(&key_share_value(*g))].concat())
            .collect();
        self.set(EXT_KEY_SHARE, vec16(&shares))
    }

    pub(crate) fn heartbeat(self) -> Hello {
        self.ext(EXT_HEARTBEAT, vec![1])
    }

    pub(crate) fn encrypt_then_mac(self) -> Hello {
        self.ext(EXT_ETM, vec![])
    }

    /// Pads the hello with a padding extension of `len` zero bytes.
    pub(crate) fn padding(self, len: usize) -> Hello {
        self.ext(EXT_PADDING, vec![0; len])
    }

    /// The handshake message: type, 24-bit length, body.
    pub(crate) fn message(&self) -> Vec<u8> {
        let mut body = u16be(self.legacy_version).to_vec();
        body.extend([0x11; 32]);
        body.extend(vec8(&self.session_id));
        body.extend(vec16(&list16(&self.suites)));
        body.extend(vec8(&self.compression));
        let exts: Vec<u8> = self
            .extensions
            .iter()
            .flat_map(|(k, b)| [&u16be(*k)[..], &vec16(b)].concat())
            .collect();
        body.extend(vec16(&exts));
        let len = body.len() as u32;
        let mut m = vec![CLIENT_HELLO];
        m.extend(&len.to_be_bytes()[1..]);
        m.extend(body);
        m
    }

    /// The hello in one record.
    pub(crate) fn record(&self) -> Vec<u8> {
        records(self.record_version, &self.message(), usize::MAX)
    }
}

/// `message` cut into handshake records of at most `piece` bytes each.
pub(crate) fn records(version: u16, message: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in message.chunks(piece.max(1)) {
        out.push(HANDSHAKE);
        out.extend(u16be(version));
        out.extend(u16be(chunk.len() as u16));
        out.extend(chunk);
    }
    out
}

/// An SSLv2-format ClientHello (as old clients sent their first hello)
/// offering `version` with `suites` as three-byte SSLv2 cipher specs.
pub(crate) fn sslv2_hello(version: u16, suites: &[u16]) -> Vec<u8> {
    let specs: Vec<u8> = suites
        .iter()
        .flat_map(|s| [0u8, (s >> 8) as u8, *s as u8])
        .collect();
    let mut body = vec![CLIENT_HELLO];
    body.extend(u16be(version));
    body.extend(u16be(specs.len() as u16));
    body.extend(u16be(0));
    body.extend(u16be(16));
    body.extend(specs);
    body.extend([0x33; 16]);
    let mut rec = u16be(0x8000 | body.len() as u16).to_vec();
    rec.extend(body);
    rec
}

/// How bytes go out: all at once, or in pieces of `n` bytes with a pause.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sending {
    Whole,
    Pieces(usize),
}

/// Sends `bytes` to `addr` and returns the canonical form of what came
/// back before the server went quiet, and how the connection ended.
pub(crate) fn probe(addr: SocketAddr, bytes: &[u8], send: Sending, ec_key: bool) -> String {
    let mut s = match TcpStream::connect_timeout(&addr, ANSWER_WAIT) {
        Ok(s) => s,
        Err(e) => return format!("connect failed: {e}"),
    };
    let _ = s.set_nodelay(true);
    let sent = match send {
        Sending::Whole => s.write_all(bytes),
        Sending::Pieces(n) => bytes.chunks(n.max(1)).try_for_each(|c| {
            std::thread::sleep(PIECE_GAP);
            s.write_all(c)
        }),
    };
    if let Err(e) = sent {
        return format!("send failed: {e}");
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + ANSWER_WAIT;
    let end = loop {
        let _ = s.set_read_timeout(Some(ANSWER_IDLE));
        match s.read(&mut buf) {
            Ok(0) => break "closed",
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
            Err(_) if got.is_empty() && Instant::now() < deadline => {}
            Err(_) => break "open",
        }
        if Instant::now() >= deadline {
            break "open";
        }
    };
    format!("{}\n[{end}]", canonical(&got, ec_key))
}

/// The canonical form of a server's first answer: one line per record,
/// with what a server draws at random blanked: the ServerHello's random
/// and session ID bytes, key share values, the ServerKeyExchange's public
/// value and signature; with an ECDSA key also the length of the record
/// that carries the TLS 1.3 CertificateVerify (an ECDSA signature is 70 to
/// 72 bytes long). Everything else, the certificate included, is kept
/// byte for byte or by length.
pub(crate) fn canonical(answer: &[u8], ec_key: bool) -> String {
    let mut lines = Vec::new();
    let mut rest = answer;
    let mut encrypted = Vec::new();
    while rest.len() >= 5
        && [HANDSHAKE, ALERT, CHANGE_CIPHER_SPEC, APPLICATION_DATA].contains(&rest[0])
    {
        let (kind, version) = (rest[0], u16::from_be_bytes([rest[1], rest[2]]));
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let body = &rest[5..(5 + len).min(rest.len())];
        rest = &rest[(5 + len).min(rest.len())..];
        match kind {
            HANDSHAKE => lines.push(format!(
                "handshake {version:04x}: {}",
                handshake(body).join("; ")
            )),
            APPLICATION_DATA => {
                encrypted.push(lines.len());
                lines.push(format!("encrypted {version:04x} len {len}"));
            }
            _ => lines.push(format!(
                "record {kind} {version:04x} len {len}: {}",
                hexs(body)
            )),
        }
    }
    // The TLS 1.3 flight is EE, Certificate, CertificateVerify, Finished:
    // the CertificateVerify is the second-to-last encrypted record.
    if ec_key && encrypted.len() >= 2 {
        let at = encrypted[encrypted.len() - 2];
        lines[at] = "encrypted (certificate verify)".to_string();
    }
    if !rest.is_empty() {
        lines.push(format!(
            "{} more bytes: {}",
            rest.len(),
            hexs(&rest[..rest.len().min(64)])
        ));
    }
    if lines.is_empty() {
        lines.push("nothing".to_string());
    }
    lines.join("\n")
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The handshake messages of one record, canonical.
fn handshake(mut body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while body.len() >= 4 {
        let kind = body[0];
        let len = usize::from(body[1]) << 16 | usize::from(body[2]) << 8 | usize::from(body[3]);
        let msg = &body[4..(4 + len).min(body.len())];
        body = &body[(4 + len).min(body.len())..];
        out.push(match kind {
            SERVER_HELLO => server_hello(msg),
            SERVER_KEY_EXCHANGE => server_key_exchange(msg),
            CERTIFICATE => format!("certificate len {len} {}", hexs(msg)),
            _ => format!("message {kind} len {len}: {}", hexs(msg)),
        });
    }
    if !body.is_empty() {
        out.push(format!("fragment {}", hexs(body)));
    }
    out
}

/// A ServerHello (or HelloRetryRequest) without its random, its session ID
/// bytes and key share values.
fn server_hello(m: &[u8]) -> String {
    let Some(sid_len) = m.get(34).map(|&l| usize::from(l)) else {
        return format!("short server hello {}", hexs(m));
    };
    let hrr = m.get(2..6) == Some(&HRR_RANDOM_PREFIX[..]);
    let at = 35 + sid_len;
    let (Some(suite), Some(comp)) = (m.get(at..at + 2), m.get(at + 2)) else {
        return format!("short server hello {}", hexs(m));
    };
    let mut s = format!(
        "{} version {} session id {sid_len} suite {} compression {comp}",
        if hrr {
            "hello retry request"
        } else {
            "server hello"
        },
        hexs(&m[..2]),
        hexs(suite)
    );
    let mut exts = m.get(at + 5..).unwrap_or_default();
    s.push_str(" extensions");
    while exts.len() >= 4 {
        let kind = u16::from_be_bytes([exts[0], exts[1]]);
        let len = usize::from(u16::from_be_bytes([exts[2], exts[3]]));
        let body = &exts[4..(4 + len).min(exts.len())];
        exts = &exts[(4 + len).min(exts.len())..];
        if kind == EXT_KEY_SHARE && body.len() > 4 {
            s.push_str(&format!(
                " {kind:04x}[group {} len {}]",
                hexs(&body[..2]),
                body.len() - 4
            ));
        } else {
            s.push_str(&format!(" {kind:04x}[{}]", hexs(body)));
        }
    }
    s
}

/// A TLS 1.2 ServerKeyExchange for ECDHE or DHE: its parameters' shape
/// and the signature scheme, not the values or the signature.
fn server_key_exchange(m: &[u8]) -> String {
    match m.first() {
        // named_curve: curve, point length, point, scheme, signature.
        Some(3) if m.len() >= 4 => {
            let point = usize::from(m[3]);
            let scheme = m.get(4 + point..6 + point).map(hexs).unwrap_or_default();
            format!(
                "key exchange ecdhe curve {} point {point} scheme {scheme}",
                hexs(&m[1..3])
            )
        }
        _ => format!("key exchange len {}", m.len()),
    }
}

/// The fixed set of probes: `(what, bytes, how to send)`. `name` is the
/// SNI of the probes that send one.
pub(crate) fn probes(name: &str) -> Vec<(String, Vec<u8>, Sending)> {
    let whole = |what: &str, h: Hello| (what.to_string(), h.record(), Sending::Whole);
    let raw = |what: &str, b: Vec<u8>| (what.to_string(), b, Sending::Whole);
    let browser = Hello::browser(name);
    let mut reversed13 = browser.clone();
    reversed13.suites.reverse();
    let mut reversed12 = Hello::tls12(name);
    reversed12.suites.reverse();
    let mut chacha_first = Hello::tls12(name);
    chacha_first.suites.insert(0, 0xcca8);
    let mut grease = browser.clone().versions(&[GREASE, TLS13, TLS12]);
    grease.suites.insert(0, GREASE);
    let grease = grease
        .groups(&[GREASE, X25519, SECP256R1])
        .key_shares(&[GREASE, X25519])
        .ext(GREASE, vec![]);
    let mut only_13 = browser.clone().versions(&[TLS13]);
    only_13.suites = TLS13_SUITES.to_vec();
    let mut rsa_kx = Hello::tls12(name);
    rsa_kx.suites = vec![0x009c, 0x009d, 0x002f, 0x0035];
    let mut fallback = Hello::legacy(name, TLS11);
    fallback.suites.push(0x5600);
    let mut deflate = Hello::tls12(name);
    deflate.compression = vec![1, 0];
    let mut deflate_only = Hello::tls12(name);
    deflate_only.compression = vec![1];
    let mut no_suites = browser.clone();
    no_suites.suites = vec![0x00ff];
    let mut no_session_id = browser.clone();
    no_session_id.session_id = Vec::new();
    let mut bare12 = Hello::tls12("");
    bare12.extensions.clear();

    // Malformed hellos.
    let mut overrun = browser.message();
    // The extensions' total length, 5 more than there is.
    let at = 4
        + 2
        + 32
        + 1
        + browser.session_id.len()
        + 2
        + 2 * browser.suites.len()
        + 1
        + browser.compression.len();
    let exts_len = u16::from_be_bytes([overrun[at], overrun[at + 1]]) + 5;
    overrun[at..at + 2].copy_from_slice(&exts_len.to_be_bytes());
    let overrun = records(TLS10, &overrun, usize::MAX);
    let mut duplicate = browser.clone();
    duplicate.extensions.push((EXT_EMS, vec![]));
    let mut bad_hs_len = browser.record();
    bad_hs_len[8] = bad_hs_len[8].wrapping_add(1); // handshake length one more than the record
    let truncated = browser.record()[..120].to_vec();
    let big = browser.clone().padding(15_000);
    let huge = browser.clone().padding(20_000);
    let mut oversized = vec![HANDSHAKE, 0x03, 0x01, 0x41, 0x01, CLIENT_HELLO];
    oversized.extend(vec![0u8; 600]);
    let mut empty_record = vec![HANDSHAKE, 0x03, 0x01, 0x00, 0x00];
    empty_record.extend(browser.record());
    let mut then_ccs = browser.record();
    then_ccs.extend([CHANGE_CIPHER_SPEC, 0x03, 0x03, 0x00, 0x01, 0x01]);
    let alert_first = vec![ALERT, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28];

    vec![
        whole("TLS 1.3 and 1.2, browser order", browser.clone()),
        whole("TLS 1.3 only", only_13.clone()),
        whole("TLS 1.3, suites reversed", reversed13),
        whole("TLS 1.3, AES-128 only", {
            let mut h = only_13.clone();
            h.suites = vec![0x1301];
            h
        }),
        whole("TLS 1.3, ChaCha20 only", {
            let mut h = only_13.clone();
            h.suites = vec![0x1303];
            h
        }),
        whole(
            "TLS 1.3, P-256 key share",
            only_13.clone().key_shares(&[SECP256R1]),
        ),
        whole(
            "TLS 1.3, X448 key share",
            only_13.clone().groups(&[X448]).key_shares(&[X448]),
        ),
        whole(
            "TLS 1.3, ffdhe2048 key share",
            only_13
                .clone()
                .groups(&[FFDHE2048])
                .key_shares(&[FFDHE2048]),
        ),
        whole(
            "TLS 1.3, secp521r1 without a share (retry request)",
            only_13.clone().groups(&[SECP521R1]).key_shares(&[]),
        ),
        whole(
            "TLS 1.3, only unknown groups",
            only_13
                .clone()
                .groups(&[0x0a0b, 0x0b0c])
                .key_shares(&[0x0a0b]),
        ),
        whole("TLS 1.3, GREASE everywhere", grease),
        whole("TLS 1.3, no SNI", Hello::browser("").versions(&[TLS13])),
        whole(
            "TLS 1.3, other SNI",
            only_13.clone().sni("other.example.net"),
        ),
        whole("TLS 1.3, no ALPN", only_13.clone().without(EXT_ALPN)),
        whole(
            "TLS 1.3, ALPN http/1.1",
            only_13.clone().alpn(&[b"http/1.1"]),
        ),
        whole(
            "TLS 1.3, ALPN http/1.1 then h2",
            only_13.clone().alpn(&[b"http/1.1", b"h2"]),
        ),
        whole(
            "TLS 1.3, ALPN http/1.0 only",
            only_13.clone().alpn(&[b"http/1.0"]),
        ),
        whole(
            "TLS 1.3, ALPN spdy/3 and h2c",
            only_13.clone().alpn(&[b"spdy/3", b"h2c"]),
        ),
        whole(
            "TLS 1.3, ALPN acme-tls/1 only",
            only_13.clone().alpn(&[b"acme-tls/1"]),
        ),
        whole(
            "TLS 1.3, ALPN with an empty name",
            only_13.clone().alpn(&[b"", b"h2"]),
        ),
        whole(
            "TLS 1.3, ALPN list empty",
            only_13.clone().set(EXT_ALPN, vec16(&[])),
        ),
        whole("TLS 1.3, no session ID", no_session_id),
        whole(
            "TLS 1.3, heartbeat and encrypt-then-MAC",
            only_13.heartbeat().encrypt_then_mac(),
        ),
        whole("TLS 1.2 only, Firefox order", Hello::tls12(name)),
        whole("TLS 1.2 only, suites reversed", reversed12),
        whole("TLS 1.2 only, ChaCha20 first", chacha_first),
        whole("TLS 1.2 only, RSA key exchange only", rsa_kx),
        whole("TLS 1.2 only, no extensions at all", bare12),
        whole("TLS 1.2 only, no SNI", Hello::tls12("")),
        whole(
            "TLS 1.2 only, ALPN http/1.0 only",
            Hello::tls12(name).alpn(&[b"http/1.0"]),
        ),
        whole("TLS 1.2 only, deflate and null compression", deflate),
        whole("TLS 1.2 only, deflate compression only", deflate_only),
        whole("TLS 1.1 only", Hello::legacy(name, TLS11)),
        whole("TLS 1.0 only", Hello::legacy(name, TLS10)),
        whole("SSL 3.0 only", Hello::legacy(name, SSL3)),
        whole("TLS 1.1 with the fallback SCSV", fallback),
        whole("no usable suite", no_suites),
        whole("TLS 1.3 in a TLS 1.2 record", {
            let mut h = browser.clone();
            h.record_version = TLS12;
            h
        }),
        raw("SSLv2-form hello, TLS 1.0", sslv2_hello(TLS10, &CBC_SUITES)),
        raw(
            "SSLv2-form hello, TLS 1.2",
            sslv2_hello(TLS12, &TLS12_SUITES),
        ),
        // Bad input.
        raw("malformed: an extension runs past the end", overrun),
        whole("malformed: an extension twice", duplicate),
        raw("malformed: handshake longer than its record", bad_hs_len),
        raw("truncated hello", truncated),
        whole("big hello (15 KB in one record)", big),
        (
            "oversized hello (20 KB over two records)".to_string(),
            records(TLS10, &huge.message(), 16_384),
            Sending::Whole,
        ),
        raw("oversized record (16,641 bytes announced)", oversized),
        (
            "hello in 7-byte records".to_string(),
            records(TLS10, &browser.message(), 7),
            Sending::Whole,
        ),
        (
            "hello in 1-byte TCP segments".to_string(),
            browser.record(),
            Sending::Pieces(1),
        ),
        (
            "hello in 40-byte TCP segments".to_string(),
            browser.record(),
            Sending::Pieces(40),
        ),
        raw("an empty record, then the hello", empty_record),
        raw("the hello, then a change cipher spec", then_ccs),
        raw("an alert first", alert_first),
    ]
}
