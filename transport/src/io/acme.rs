//! ACME certificates (docs/protocol.md, "Link setup") with rustls-acme, answered by the
//! TLS-ALPN-01 challenge on the listener's own port.
//!
//! - The ACME client runs as one tokio task per TLS config. It loads the
//!   certificate cached in `state_dir/acme/` (so a restart does not order
//!   again), orders a new one when there is none, and renews when two
//!   thirds of its lifetime have passed. The task ends when the TLS config
//!   is dropped.
//! - Until the first certificate arrives, the listener serves the
//!   self-signed certificate of the state directory, so the cover site is
//!   up from the first second.
//! - The CA validates by connecting to port 443 with ALPN `acme-tls/1` only
//!   (RFC 8737). Such a handshake gets the challenge certificate; the
//!   listener then closes the connection (see [`ACME_TLS_ALPN`]).

use std::fs;
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt as _;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_acme::caches::DirCache;
use rustls_acme::{AcmeConfig, EventOk, ResolvesServerCertAcme, is_tls_alpn_challenge};

use super::pki::{AcmeSettings, TlsError, load_certs, provider};

/// Let's Encrypt's production directory, the default ACME server.
pub const LETS_ENCRYPT_DIRECTORY: &str = rustls_acme::acme::LETS_ENCRYPT_PRODUCTION_DIRECTORY;

/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737 §6.2).
/// A connection that negotiated it carries no HTTP: the listener closes it
/// right after the handshake.
pub const ACME_TLS_ALPN: &[u8] = rustls_acme::acme::ACME_TLS_ALPN_NAME;

/// The directory under the state directory that holds the ACME account key
/// and the certificate with its key (mode 0700, as they are secrets).
pub const ACME_CACHE_DIR: &str = "acme";

/// Sets up ACME for `domain` and starts its client task on the current
/// tokio runtime. The returned resolver answers challenge handshakes,
/// serves the ACME certificate once there is one, and `fallback` before.
pub(crate) fn acme_resolver(
    settings: &AcmeSettings,
    domain: &str,
    fallback: Arc<CertifiedKey>,
) -> Result<Arc<dyn ResolvesServerCert>, TlsError> {
    let acme_err = |what: String| TlsError::Acme {
        domain: domain.to_string(),
        what,
    };
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| acme_err("the ACME client needs a tokio runtime".to_string()))?;
    let cache_dir = settings.state_dir.join(ACME_CACHE_DIR);
    create_private_dir(&cache_dir)?;

    let mut config =
        AcmeConfig::new_with_provider([domain], provider()).directory(&settings.directory);
    if let Some(path) = &settings.ca_roots {
        config = config.client_tls_config(client_config_trusting(path)?);
    }
    let mut state = config
        .contact(&settings.contact)
        .cache(DirCache::new(cache_dir))
        .state();
    let acme = state.resolver();

    let domain_owned = domain.to_string();
    let directory = settings.directory.clone();
    let task = runtime.spawn(async move {
        let domain = domain_owned;
        while let Some(event) = state.next().await {
            match event {
                Ok(EventOk::DeployedCachedCert) => {
                    tracing::info!(%domain, "ACME certificate loaded from the state directory");
                }
                Ok(EventOk::DeployedNewCert) => {
                    tracing::info!(%domain, %directory, "ACME certificate issued");
                }
                Ok(EventOk::CertCacheStore) => {
                    tracing::debug!(%domain, "ACME certificate stored in the state directory");
                }
                Ok(EventOk::AccountCacheStore) => {
                    tracing::debug!(%domain, "ACME account key stored in the state directory");
                }
                // rustls-acme retries with exponential backoff by itself.
                Err(e) => tracing::warn!(%domain, %directory, error = %e, "ACME failed; retrying"),
            }
        }
    });
    Ok(Arc::new(AcmeResolver {
        acme,
        fallback,
        _task: AbortOnDrop(task),
    }))
}

/// Challenge handshakes go to rustls-acme; everything else gets the ACME
/// certificate, or the fallback until there is one.
struct AcmeResolver {
    acme: Arc<ResolvesServerCertAcme>,
    fallback: Arc<CertifiedKey>,
    /// The ACME client lives as long as the TLS config that uses it.
    _task: AbortOnDrop,
}

impl std::fmt::Debug for AcmeResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for AcmeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if is_tls_alpn_challenge(&hello) {
            // No certificate (a failed handshake) unless a challenge for
            // this SNI is pending.
            return self.acme.resolve(hello);
        }
        Some(
            self.acme
                .resolve(hello)
                .unwrap_or_else(|| self.fallback.clone()),
        )
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A client config for the ACME directory that trusts only the CA
/// certificates in `path`.
fn client_config_trusting(path: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = load_certs(path)?;
    for cert in certs {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("holds a certificate that cannot be a trust anchor ({e})"),
        })?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Creates `dir` with mode 0700, or narrows an existing one to 0700:
/// rustls-acme writes the account key and the certificate's key there with
/// default permissions.
fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let err = |source| TlsError::File {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}
