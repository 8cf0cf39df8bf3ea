//! Certificates and keys for the listener: where the certificate comes
//! from ([`CertSource`], [`AcmeSettings`]), the self-signed certificate kept
//! in the state directory, PEM files, and the crypto provider every TLS
//! config uses (docs/protocol.md, "Link setup"). `tls` builds rustls configs
//! from these; `acme` gets certificates from a CA.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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

/// Where the listener's certificate comes from.
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
    /// ACME for [`TlsSettings::server_name`](super::TlsSettings::server_name),
    /// answered by TLS-ALPN-01 on the listener's port (see `acme`). Until the first
    /// certificate arrives, the self-signed one of the state directory is
    /// served.
    Acme(AcmeSettings),
}

/// Where an ACME certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The ACME directory URL, e.g. [`LETS_ENCRYPT_DIRECTORY`](super::LETS_ENCRYPT_DIRECTORY).
    pub directory: String,
    /// Account contacts, as URLs (`mailto:ops@example.org`); may be empty.
    pub contact: Vec<String>,
    /// A PEM file of CA certificates to trust for the directory's HTTPS,
    /// instead of the built-in web PKI roots (for a private or test ACME
    /// server).
    pub ca_roots: Option<PathBuf>,
    /// The state directory: the cache goes to
    /// [`ACME_CACHE_DIR`](super::ACME_CACHE_DIR) inside it,
    /// and the self-signed certificate served until the first ACME
    /// certificate arrives is kept there too.
    pub state_dir: PathBuf,
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
pub(crate) fn load_or_generate_self_signed(
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
    // Both ends at midnight UTC of their day.
    params.not_before = midnight_utc(now);
    params.not_after = midnight_utc(now + SELF_SIGNED_VALIDITY_DAYS * SECS_PER_DAY);
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
/// The last midnight a certificate time can hold here: 9999-12-31 UTC.
const LAST_MIDNIGHT: i64 = 253_402_214_400;

/// Midnight UTC of the day `unix` seconds fall in, as rcgen takes a time
/// (later days are held at [`LAST_MIDNIGHT`]).
fn midnight_utc(unix: u64) -> time::OffsetDateTime {
    let day_start = i64::try_from(unix - unix % SECS_PER_DAY).unwrap_or(LAST_MIDNIGHT);
    time::OffsetDateTime::from_unix_timestamp(day_start.min(LAST_MIDNIGHT))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

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

pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = fs::read(path).map_err(|source| TlsError::File {
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: format!("holds no PEM private key ({e})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_times_are_midnight_utc_of_their_day() {
        // 2024-02-29 01:00:00 UTC, a leap day.
        let t = midnight_utc(1_709_168_400);
        assert_eq!(t.unix_timestamp(), 1_709_164_800);
        assert_eq!((t.year(), u8::from(t.month()), t.day()), (2024, 2, 29));
        assert_eq!(midnight_utc(u64::MAX).unix_timestamp(), LAST_MIDNIGHT);
    }
}
