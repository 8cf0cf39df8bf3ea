//! TLS for links (DESIGN.md §5): rustls with the aws-lc-rs provider, TLS 1.3,
//! ALPN `h2` and `http/1.1`, and the certificate sources.
//!
//! **Why TLS 1.3 only.** DESIGN.md says links are TLS 1.3 and nothing else,
//! and the Noise prologue is the TLS 1.3 exporter. The cost is one probe: a
//! ClientHello that offers only TLS 1.2 gets a `protocol_version` alert,
//! where most web servers would answer with TLS 1.2 (Debian's packaged
//! nginx 1.22 enables TLS 1.0–1.3; a bare nginx 1.22 with no
//! `ssl_protocols` line even offers only TLS 1.0–1.2, measured here).
//! [`TlsSettings::allow_tls12_for_cover`] turns TLS 1.2 on for the cover
//! site only: link requests on a TLS 1.2 connection are always answered by
//! the cover, so links stay TLS 1.3.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::acme::{ACME_TLS_ALPN, AcmeSettings, acme_resolver};
use super::time::civil_from_unix;

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

/// The certificate name used when the config's `server_name` is empty.
///
/// `localhost` is what countless appliances, development servers and
/// quick `openssl req -x509` certificates carry, so it says nothing about
/// the node, and it does not leak the machine's host name (which Debian's
/// snakeoil certificate would).
pub const DEFAULT_SERVER_NAME: &str = "localhost";

/// How long a generated self-signed certificate is valid, in days. Ten
/// years, like Debian's `make-ssl-cert` snakeoil certificate.
pub const SELF_SIGNED_VALIDITY_DAYS: u64 = 3650;

/// File name of the generated certificate in the state directory.
pub const SELF_SIGNED_CERT_FILE: &str = "tls-cert.pem";

/// File name of the generated private key in the state directory (mode
/// 0600).
pub const SELF_SIGNED_KEY_FILE: &str = "tls-key.pem";

/// Length of a generated certificate's random serial number, in bytes
/// (what OpenSSL uses).
const SERIAL_LEN: usize = 20;

/// Seconds in a day.
const SECS_PER_DAY: u64 = 86_400;

/// Where the listener's certificate comes from (DESIGN.md §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// A self-signed certificate generated once and kept as
    /// `dir/tls-cert.pem` and `dir/tls-key.pem` (mode 0600), reused on
    /// every later start.
    SelfSigned {
        /// The state directory.
        dir: PathBuf,
    },
    /// PEM files the operator points to: a certificate chain and its key.
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// ACME for [`TlsSettings::server_name`], answered by TLS-ALPN-01 on
    /// the listener's port (see [`super::acme`]). Until the first
    /// certificate arrives, the self-signed one of the state directory is
    /// served.
    Acme(AcmeSettings),
}

/// The listener's TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Where the certificate comes from.
    pub cert: CertSource,
    /// The name a generated certificate is made for (config `server_name`);
    /// empty means [`DEFAULT_SERVER_NAME`]. Ignored for
    /// [`CertSource::Files`]; for [`CertSource::Acme`], the domain to get a
    /// certificate for, which must not be empty.
    pub server_name: String,
    /// Also accept TLS 1.2, for the cover site only (see the module docs).
    pub allow_tls12_for_cover: bool,
}

/// A TLS setup failure, naming the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A file did not hold the expected PEM item.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        what: String,
    },
    /// Generating the self-signed certificate failed.
    #[error("generating the self-signed TLS certificate for {name:?} failed: {what}")]
    Generate {
        /// The name it was for.
        name: String,
        /// What failed.
        what: String,
    },
    /// rustls refused the configuration (for example a key that does not
    /// match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// ACME could not be set up.
    #[error("ACME certificate for {domain:?}: {what}")]
    Acme {
        /// The domain.
        domain: String,
        /// What failed.
        what: String,
    },
}

/// The crypto provider every TLS config here uses: aws-lc-rs.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
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

/// The name a generated certificate is made for.
pub(crate) fn effective_server_name(configured: &str) -> &str {
    if configured.trim().is_empty() {
        DEFAULT_SERVER_NAME
    } else {
        configured.trim()
    }
}

/// Loads `dir/tls-cert.pem` and `dir/tls-key.pem`, generating them first if
/// neither exists.
fn load_or_generate_self_signed(
    dir: &Path,
    server_name: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_path = dir.join(SELF_SIGNED_CERT_FILE);
    let key_path = dir.join(SELF_SIGNED_KEY_FILE);
    if !cert_path.exists() && !key_path.exists() {
        generate_self_signed(&cert_path, &key_path, effective_server_name(server_name))?;
    }
    Ok((load_certs(&cert_path)?, load_key(&key_path)?))
}

/// Makes an ECDSA P-256 certificate for `name` (CN and SAN), valid from
/// today for [`SELF_SIGNED_VALIDITY_DAYS`], with a random serial, and
/// writes it and its key (the key with mode 0600, created that way so it
/// is never readable by others).
fn generate_self_signed(cert_path: &Path, key_path: &Path, name: &str) -> Result<(), TlsError> {
    let gen_err = |what: String| TlsError::Generate {
        name: name.to_string(),
        what,
    };
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
        .map_err(|e| gen_err(e.to_string()))?;
    // rcgen's defaults (CN "rcgen self signed cert", valid 1975–4096) would
    // mark every umbra node; use what `openssl req -x509` would make.
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, name);
    params.distinguished_name = dn;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_unix(now);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_unix(now + SELF_SIGNED_VALIDITY_DAYS * SECS_PER_DAY);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let mut serial = [0u8; SERIAL_LEN];
    crate::crypto::random_bytes(&mut serial);
    serial[0] &= 0x7f; // a positive INTEGER
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let key = rcgen::KeyPair::generate().map_err(|e| gen_err(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| gen_err(e.to_string()))?;

    if let Some(dir) = key_path.parent() {
        fs::create_dir_all(dir).map_err(|source| TlsError::File {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    write_private(key_path, key.serialize_pem().as_bytes())?;
    fs::write(cert_path, cert.pem()).map_err(|source| TlsError::File {
        path: cert_path.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// Writes a secret file readable only by its owner.
fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    let err = |source| TlsError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)
}

pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = fs::read(path).map_err(|source| TlsError::File {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("not a PEM certificate chain ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "holds no CERTIFICATE block".to_string(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = fs::read(path).map_err(|source| TlsError::File {
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: format!("holds no PEM private key ({e})"),
    })
}
