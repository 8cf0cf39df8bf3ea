//! TLS for links (docs/protocol.md, "Link setup"): the rustls configs of
//! the listener and the dialer, with the aws-lc-rs provider, TLS 1.3 and
//! ALPN `h2` and `http/1.1`. Where the certificate comes from is `pki`.
//!
//! **Why TLS 1.3 only.** Links are TLS 1.3 and nothing else (docs/protocol.md, "Link setup"),
//! and the Noise prologue is the TLS 1.3 exporter. The cost is one probe: a
//! ClientHello that offers only TLS 1.2 gets a `protocol_version` alert,
//! where most web servers would answer with TLS 1.2 (Debian's packaged
//! nginx 1.22 enables TLS 1.0–1.3; a bare nginx 1.22 with no
//! `ssl_protocols` line even offers only TLS 1.0–1.2, measured here).
//! [`TlsSettings::allow_tls12_for_cover`] turns TLS 1.2 on for the cover
//! site only: link requests on a TLS 1.2 connection are always answered by
//! the cover, so links stay TLS 1.3.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::acme::{ACME_TLS_ALPN, acme_resolver};
use super::pki::{
    CertSource, TlsError, load_certs, load_key, load_or_generate_self_signed, provider,
};

/// The ALPN protocols the listener offers, in its order of preference
/// (as a stock nginx with `http2` on: `h2`, then `http/1.1`).
pub const ALPN_H2: &[u8] = b"h2";
/// The HTTP/1.1 ALPN protocol id.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The TLS exporter label whose output is the Noise prologue binding
/// (RFC 8446 §7.5). No context is used.
pub const LINK_EXPORTER_LABEL: &[u8] = b"EXPORTER-umbra-link";

/// Length of the TLS exporter output used as the Noise prologue, in bytes.
pub const LINK_EXPORTER_LEN: usize = 32;

/// The listener's TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Where the certificate comes from.
    pub cert: CertSource,
    /// The name a generated certificate is made for (config `server_name`);
    /// empty means [`DEFAULT_SERVER_NAME`](super::DEFAULT_SERVER_NAME). Ignored for
    /// [`CertSource::Files`]; for [`CertSource::Acme`], the domain to get a
    /// certificate for, which must not be empty.
    pub server_name: String,
    /// Also accept TLS 1.2, for the cover site only (see the module docs).
    pub allow_tls12_for_cover: bool,
}

/// Builds the listener's rustls config: the certificate from `settings`,
/// TLS 1.3 (and 1.2 if allowed), ALPN `h2` then `http/1.1`.
///
/// With [`CertSource::Acme`] it also offers ALPN `acme-tls/1` (chosen only
/// by a client that offers nothing else, as a validating CA does) and
/// starts the ACME client on the current tokio runtime; the client stops
/// when the returned config is dropped.
pub fn server_tls_config(settings: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let versions: &[&rustls::SupportedProtocolVersion] = if settings.allow_tls12_for_cover {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth();
    let mut alpn = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    let mut config = match &settings.cert {
        CertSource::SelfSigned { dir } => {
            let (certs, key) = load_or_generate_self_signed(dir, &settings.server_name)?;
            builder.with_single_cert(certs, key)?
        }
        CertSource::Files { cert, key } => {
            builder.with_single_cert(load_certs(cert)?, load_key(key)?)?
        }
        CertSource::Acme(acme) => {
            let domain = settings.server_name.trim();
            if domain.is_empty() {
                return Err(TlsError::Acme {
                    domain: String::new(),
                    what: "no domain: set server_name".to_string(),
                });
            }
            let (certs, key) = load_or_generate_self_signed(&acme.state_dir, domain)?;
            let key = provider().key_provider.load_private_key(key)?;
            let fallback = Arc::new(rustls::sign::CertifiedKey::new(certs, key));
            alpn.push(ACME_TLS_ALPN.to_vec());
            builder.with_cert_resolver(acme_resolver(acme, domain, fallback)?)
        }
    };
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// Builds the dialer's rustls config: TLS 1.3 only, ALPN `h2` then
/// `http/1.1` (what curl and browsers offer; the dialer then insists on
/// `h2`), and no CA verification (see [`NoCaVerification`]).
pub fn client_tls_config() -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = NoCaVerification {
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// The Noise prologue binding of a TLS connection: its exporter output for
/// [`LINK_EXPORTER_LABEL`], no context, [`LINK_EXPORTER_LEN`] bytes. Both
/// ends compute the same value only when they share one TLS session.
pub(crate) fn link_exporter<D>(
    conn: &rustls::ConnectionCommon<D>,
) -> Result<[u8; LINK_EXPORTER_LEN], rustls::Error> {
    conn.export_keying_material([0u8; LINK_EXPORTER_LEN], LINK_EXPORTER_LABEL, None)
}

/// Accepts any server certificate, but still checks the TLS 1.3
/// handshake signature against the certificate's key.
///
/// This is safe for links because the certificate does not authenticate
/// anything here; the Noise IK handshake does, and it is bound to this TLS
/// connection:
/// - The dialer knows the listener's static key in advance (from the
///   agreement or the invite). A man in the middle who terminates TLS with
///   its own certificate cannot produce the responder's message 2 without
///   the listener's private key, so the dialer's `finish` fails and no link
///   forms.
/// - The Noise prologue is the TLS exporter of this connection. If the man
///   in the middle relays message 1 to the real listener over a second TLS
///   connection, the two connections have different exporter values, the
///   prologues differ, and the listener cannot decrypt message 1: relaying
///   the handshake across two TLS connections fails.
/// - Frames then travel inside this TLS connection only. Whoever holds the
///   TLS keys on the dialer's side of the connection is the dialer itself,
///   so the frames are as confidential as the Noise handshake is
///   authentic.
///
/// What a man in the middle does learn is that the dialer attempted a link
/// (the request shape); it never learns message 1's contents, since it
/// sees only the ciphertext the dialer sent it.
#[derive(Debug)]
pub struct NoCaVerification {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoCaVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
