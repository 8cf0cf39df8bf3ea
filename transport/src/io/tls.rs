//! The dialer's TLS (docs/protocol.md, "Link setup"): rustls with the
//! aws-lc-rs provider, TLS 1.3 only, ALPN `h2` and `http/1.1`, no CA
//! check ([`NoCaVerification`]); and the exporter value both ends bind the
//! link handshake to. The listener's TLS is OpenSSL set up as nginx's
//! (`server_tls`); where certificates come from is `pki`.
//!
//! **Why the dialer stays on rustls.** A scanner meets the listener, never
//! the dialer, so the dialer's TLS stack does not decide what a scan lists;
//! what the dialer needs is TLS 1.3, the exporter and a certificate
//! verifier that checks only the handshake signature, which rustls gives
//! safely. The RFC 8446 exporter is the same in every TLS 1.3 library, so
//! a rustls dialer and an OpenSSL listener compute the same binding.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::pki::{TlsError, provider};

/// The ALPN protocols the listener offers, in its order of preference
/// (as a stock nginx with `http2` on: `h2`, then `http/1.1`).
pub const ALPN_H2: &[u8] = b"h2";
/// The HTTP/1.1 ALPN protocol id.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// [`LINK_EXPORTER_LABEL`] as text (OpenSSL takes the label as a string).
const LINK_EXPORTER_LABEL_STR: &str = "EXPORTER-umbra-link";

/// The TLS exporter label whose output is the Noise prologue binding
/// (RFC 8446 §7.5). No context is used.
pub const LINK_EXPORTER_LABEL: &[u8] = LINK_EXPORTER_LABEL_STR.as_bytes();

/// Length of the TLS exporter output used as the Noise prologue, in bytes.
pub const LINK_EXPORTER_LEN: usize = 32;

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

/// [`link_exporter`] on the listener's OpenSSL side of a connection.
pub(crate) fn openssl_link_exporter(
    ssl: &openssl::ssl::SslRef,
) -> Result<[u8; LINK_EXPORTER_LEN], openssl::error::ErrorStack> {
    let mut out = [0u8; LINK_EXPORTER_LEN];
    ssl.export_keying_material(&mut out, LINK_EXPORTER_LABEL_STR, None)?;
    Ok(out)
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
