//! Certificates and keys for the listener: where the certificate comes
//! from ([`CertSource`], [`AcmeSettings`]), the self-signed certificate kept
//! in the state directory, PEM files, and the rustls crypto provider of the
//! dialer and the ACME client (docs/protocol.md, "Link setup").
//! `server_tls` builds the listener's OpenSSL context from these; `acme`
//! gets certificates from a CA.
//!
//! **The self-signed certificate** is what Debian's `make-ssl-cert
//! generate-default-snakeoil` makes for a stock nginx (`openssl req -x509
//! -days 3650 -nodes -sha256` with the `ssl-cert` package's template), made
//! by the same library: RSA 2048, `sha256WithRSAEncryption`, a 159-bit
//! random serial, subject and issuer `CN=<name>` as a UTF8String, valid
//! from the second it was made for 3650 days, and the extensions
//! `basicConstraints CA:FALSE`, `subjectAltName DNS:<name>` and a
//! `subjectKeyIdentifier`, in that order. The name is `server_name`, or
//! else the machine's host name as `hostname -f` gives it
//! (docs/threat-model.md, "What a prober sees").

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName, SubjectKeyIdentifier};
use openssl::x509::{X509, X509Builder, X509NameBuilder};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// The name of the built-in cover site when the config's `server_name` is
/// empty (its page title). A generated certificate names the host instead
/// (see the module docs).
pub const DEFAULT_SERVER_NAME: &str = "localhost";

/// How long a generated self-signed certificate is valid, in days: what
/// Debian's `make-ssl-cert` gives its snakeoil certificate.
pub const SELF_SIGNED_VALIDITY_DAYS: u32 = 3650;

/// The size of a generated certificate's RSA key, in bits (`make-ssl-cert`'s
/// `default_bits`).
pub const SELF_SIGNED_RSA_BITS: u32 = 2048;

/// File name of the generated certificate in the state directory.
pub const SELF_SIGNED_CERT_FILE: &str = "tls-cert.pem";

/// File name of the generated private key in the state directory (mode
/// 0600).
pub const SELF_SIGNED_KEY_FILE: &str = "tls-key.pem";

/// Random bits of a generated certificate's serial number: what `openssl
/// req` draws (its `SERIAL_RAND_BITS`), so the serial is at most 20 bytes
/// and positive.
const SERIAL_RANDOM_BITS: i32 = 159;

/// The longest common name a certificate can hold, in characters; a longer
/// host name is cut to its first label there, as `make-ssl-cert` does
/// (the full name stays in the subject alternative name).
const COMMON_NAME_MAX_LEN: usize = 64;

/// Where Linux keeps the host name.
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

/// The hosts file, where `hostname -f` finds the host's full name first.
const HOSTS_FILE: &str = "/etc/hosts";

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
    /// rustls refused the configuration (the dialer's, or the ACME
    /// client's).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// OpenSSL refused the listener's configuration (for example a key that
    /// does not match the certificate).
    #[error("TLS configuration (OpenSSL): {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    /// A certificate chain held no certificate.
    #[error("the certificate chain is empty")]
    NoCertificate,
    /// ACME could not be set up.
    #[error("ACME certificate for {domain:?}: {what}")]
    Acme {
        /// The domain.
        domain: String,
        /// What failed.
        what: String,
    },
}

/// A certificate chain (leaf first) and its private key, as the listener's
/// OpenSSL context takes them.
#[derive(Clone)]
pub(crate) struct CertifiedKey {
    pub(crate) chain: Vec<X509>,
    pub(crate) key: PKey<Private>,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The crypto provider of the dialer's and the ACME client's rustls:
/// aws-lc-rs.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The names a generated certificate carries: the common name and the
/// subject alternative name (`DNS:`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct CertNames {
    common: String,
    alt: String,
}

/// The names for a generated certificate: `configured` (the config's
/// `server_name`), or else this host's name as `make-ssl-cert` takes it.
fn cert_names(configured: &str) -> CertNames {
    let full = if configured.trim().is_empty() {
        host_name(
            &fs::read_to_string(HOSTNAME_FILE).unwrap_or_default(),
            &fs::read_to_string(HOSTS_FILE).unwrap_or_default(),
        )
    } else {
        configured.trim().to_string()
    };
    let common = if full.len() > COMMON_NAME_MAX_LEN {
        full.split('.').next().unwrap_or(&full).to_string()
    } else {
        full.clone()
    };
    CertNames { common, alt: full }
}

/// This host's full name as `hostname -f` finds it without asking DNS:
/// the kernel's host name, and if the hosts file has a line naming it, the
/// first name on that line (glibc's canonical name). `localhost` if the
/// kernel has none.
fn host_name(kernel: &str, hosts: &str) -> String {
    let short = kernel.trim();
    if short.is_empty() {
        return DEFAULT_SERVER_NAME.to_string();
    }
    hosts
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let _address = fields.next()?;
            let names: Vec<&str> = fields.collect();
            names
                .iter()
                .any(|n| n.eq_ignore_ascii_case(short))
                .then(|| names[0].to_string())
        })
        .next()
        .unwrap_or_else(|| short.to_string())
}

/// The state directory's self-signed certificate and key: loaded, or
/// generated first if neither file exists. A certificate an older umbra
/// made (ECDSA P-256, valid from midnight UTC: it told every node apart) is
/// replaced by a new one.
pub(crate) fn load_or_generate_self_signed(
    dir: &Path,
    server_name: &str,
) -> Result<CertifiedKey, TlsError> {
    let cert_path = dir.join(SELF_SIGNED_CERT_FILE);
    let key_path = dir.join(SELF_SIGNED_KEY_FILE);
    let names = cert_names(server_name);
    if cert_path.exists() && key_path.exists() {
        let loaded = CertifiedKey {
            chain: load_chain(&cert_path)?,
            key: load_private_key(&key_path)?,
        };
        if !is_old_umbra_certificate(&loaded) {
            return Ok(loaded);
        }
        tracing::info!(
            path = %cert_path.display(),
            "replacing the self-signed certificate of an older umbra with one like nginx's"
        );
        for path in [&cert_path, &key_path] {
            fs::remove_file(path).map_err(|source| TlsError::File {
                path: path.to_path_buf(),
                source,
            })?;
        }
    }
    if !cert_path.exists() && !key_path.exists() {
        generate_self_signed(&cert_path, &key_path, &names)?;
    }
    Ok(CertifiedKey {
        chain: load_chain(&cert_path)?,
        key: load_private_key(&key_path)?,
    })
}

/// Whether `c` is a self-signed certificate an older umbra generated: an
/// EC key, one certificate, valid from exactly midnight UTC.
fn is_old_umbra_certificate(c: &CertifiedKey) -> bool {
    let [leaf] = c.chain.as_slice() else {
        return false;
    };
    let midnight = leaf.not_before().to_string().contains(" 00:00:00 ");
    let ec = leaf.public_key().is_ok_and(|k| k.id() == Id::EC);
    midnight && ec
}

/// Makes the self-signed certificate and key (see the module docs) and
/// writes them, the key with mode 0600 and created that way, so it is
/// never readable by others.
fn generate_self_signed(
    cert_path: &Path,
    key_path: &Path,
    names: &CertNames,
) -> Result<(), TlsError> {
    let gen_err = |e: openssl::error::ErrorStack| TlsError::Generate {
        name: names.alt.clone(),
        what: e.to_string(),
    };
    let (cert, key) = self_signed(names).map_err(gen_err)?;
    let key_pem = key.private_key_to_pem_pkcs8().map_err(gen_err)?;
    let cert_pem = cert.to_pem().map_err(gen_err)?;
    if let Some(dir) = key_path.parent() {
        fs::create_dir_all(dir).map_err(|source| TlsError::File {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    write_private(key_path, &key_pem)?;
    fs::write(cert_path, cert_pem).map_err(|source| TlsError::File {
        path: cert_path.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// The certificate and key `openssl req -x509` makes from the `ssl-cert`
/// template for `names`.
fn self_signed(names: &CertNames) -> Result<(X509, PKey<Private>), openssl::error::ErrorStack> {
    let key = PKey::from_rsa(Rsa::generate(SELF_SIGNED_RSA_BITS)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, &names.common)?;
    let name = name.build();
    let mut b = X509Builder::new()?;
    // X.509 v3 (the field holds the version minus one).
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(SERIAL_RANDOM_BITS, MsbOption::MAYBE_ZERO, false)?;
    b.set_serial_number(serial.to_asn1_integer()?.as_ref())?;
    b.set_issuer_name(&name)?;
    b.set_not_before(Asn1Time::days_from_now(0)?.as_ref())?;
    b.set_not_after(Asn1Time::days_from_now(SELF_SIGNED_VALIDITY_DAYS)?.as_ref())?;
    b.set_subject_name(&name)?;
    b.set_pubkey(&key)?;
    let basic = BasicConstraints::new().build()?;
    let alt = SubjectAlternativeName::new()
        .dns(&names.alt)
        .build(&b.x509v3_context(None, None))?;
    let key_id = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(basic)?;
    b.append_extension(alt)?;
    b.append_extension(key_id)?;
    b.sign(&key, MessageDigest::sha256())?;
    Ok((b.build(), key))
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

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// A PEM certificate chain (leaf first) for the listener.
pub(crate) fn load_chain(path: &Path) -> Result<Vec<X509>, TlsError> {
    chain_from_pem(&read_file(path)?).map_err(|what| TlsError::Pem {
        path: path.to_path_buf(),
        what,
    })
}

/// A PEM private key (PKCS#8, PKCS#1 or SEC1) for the listener.
pub(crate) fn load_private_key(path: &Path) -> Result<PKey<Private>, TlsError> {
    key_from_pem(&read_file(path)?).map_err(|what| TlsError::Pem {
        path: path.to_path_buf(),
        what,
    })
}

/// The `CERTIFICATE` blocks of `pem`, in order; other blocks are skipped.
pub(crate) fn chain_from_pem(pem: &[u8]) -> Result<Vec<X509>, String> {
    let chain =
        X509::stack_from_pem(pem).map_err(|e| format!("not a PEM certificate chain ({e})"))?;
    if chain.is_empty() {
        return Err("holds no CERTIFICATE block".to_string());
    }
    Ok(chain)
}

/// The first private key block of `pem`.
pub(crate) fn key_from_pem(pem: &[u8]) -> Result<PKey<Private>, String> {
    PKey::private_key_from_pem(pem).map_err(|e| format!("holds no PEM private key ({e})"))
}

/// PEM certificates for rustls (the ACME client's own trust anchors).
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = read_file(path)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_name_is_what_hostname_f_would_say() {
        let hosts = "127.0.0.1 localhost\n127.0.1.1 web1.example.org web1 # installer\n";
        assert_eq!(host_name("web1\n", hosts), "web1.example.org");
        assert_eq!(host_name("WEB1", hosts), "web1.example.org");
        assert_eq!(host_name("db2\n", hosts), "db2");
        assert_eq!(host_name("", hosts), DEFAULT_SERVER_NAME);
        assert_eq!(host_name("vm", "# vm only in a comment\n"), "vm");
    }

    #[test]
    fn a_long_host_name_is_cut_in_the_common_name_only() {
        let long = format!("{}.example.org", "a".repeat(60));
        let names = cert_names(&long);
        assert_eq!(names.common, "a".repeat(60));
        assert_eq!(names.alt, long);
        let short = cert_names(" notes.example.org ");
        assert_eq!(short.common, "notes.example.org");
        assert_eq!(short.alt, "notes.example.org");
    }

    /// What an older umbra made: ECDSA P-256, valid from midnight UTC.
    fn old_umbra_certificate() -> (X509, PKey<Private>) {
        use openssl::ec::{EcGroup, EcKey};
        let made = || -> Result<(X509, PKey<Private>), openssl::error::ErrorStack> {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
            let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
            let mut b = X509Builder::new()?;
            b.set_version(2)?;
            b.set_not_before(Asn1Time::from_unix(1_709_164_800)?.as_ref())?;
            b.set_not_after(Asn1Time::from_unix(2_024_524_800)?.as_ref())?;
            b.set_pubkey(&key)?;
            b.sign(&key, MessageDigest::sha256())?;
            Ok((b.build(), key))
        };
        made().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_older_umbras_certificate_is_replaced_and_a_new_one_kept() {
        let dir = std::env::temp_dir().join(format!("umbra-pki-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let (old, old_key) = old_umbra_certificate();
        let pem =
            |r: Result<Vec<u8>, openssl::error::ErrorStack>| r.unwrap_or_else(|e| panic!("{e}"));
        fs::write(dir.join(SELF_SIGNED_CERT_FILE), pem(old.to_pem()))
            .unwrap_or_else(|e| panic!("{e}"));
        fs::write(
            dir.join(SELF_SIGNED_KEY_FILE),
            pem(old_key.private_key_to_pem_pkcs8()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let first = load_or_generate_self_signed(&dir, "notes.example.org")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.key.id(), Id::RSA);
        assert!(!is_old_umbra_certificate(&first));
        let again = load_or_generate_self_signed(&dir, "notes.example.org")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            pem(again.chain[0].to_der()),
            pem(first.chain[0].to_der()),
            "a certificate of this umbra is kept"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_generated_certificate_has_the_snakeoil_shape() {
        let names = cert_names("notes.example.org");
        let (cert, key) = self_signed(&names).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(key.bits(), SELF_SIGNED_RSA_BITS);
        assert_eq!(cert.version(), 2);
        assert_eq!(
            cert.signature_algorithm().object().nid(),
            Nid::SHA256WITHRSAENCRYPTION
        );
        let serial = cert
            .serial_number()
            .to_bn()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(serial.num_bits() <= SERIAL_RANDOM_BITS && !serial.is_negative());
        let validity = cert
            .not_before()
            .diff(cert.not_after())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (validity.days, validity.secs),
            (i32::try_from(SELF_SIGNED_VALIDITY_DAYS).unwrap_or(0), 0)
        );
        let cn: Vec<String> = cert
            .subject_name()
            .entries()
            .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
            .collect();
        assert_eq!(cn, ["notes.example.org"]);
        assert!(!is_old_umbra_certificate(&CertifiedKey {
            chain: vec![cert],
            key,
        }));
    }
}
