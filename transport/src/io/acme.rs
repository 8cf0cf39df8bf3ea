//! ACME certificates (docs/protocol.md, "Link setup") with rustls-acme, answered by the
//! TLS-ALPN-01 challenge on the listener's own port.
//!
//! - The ACME client runs as one tokio task per listener TLS setup. It loads
//!   the certificate cached in `state_dir/acme/` (so a restart does not
//!   order again), orders a new one when there is none, and renews when two
//!   thirds of its lifetime have passed. The task ends when the listener's
//!   TLS is dropped.
//! - Every certificate it deploys (cached or new) is handed to the
//!   listener's OpenSSL context (`server_tls`). Until the first one, the
//!   listener serves the self-signed certificate of the state directory,
//!   so the cover site is up from the first second.
//! - The CA validates by connecting to port 443 with ALPN `acme-tls/1` only
//!   (RFC 8737). The listener reads such a ClientHello before any TLS
//!   library sees it ([`AcmeChallenges::is_pending_challenge`]); only when a
//!   challenge is pending for its server name does it go to rustls and the
//!   challenge certificate, and the listener closes the connection after
//!   the handshake. Any other `acme-tls/1` hello goes to OpenSSL, which
//!   refuses it with `no_application_protocol` as nginx does.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey as RustlsCertifiedKey;
use rustls_acme::caches::DirCache;
use rustls_acme::{
    AccountCache, AcmeConfig, CertCache, EventError, EventOk, ResolvesServerCertAcme,
    is_tls_alpn_challenge,
};

use super::pki::{
    AcmeSettings, CertifiedKey, TlsError, chain_from_pem, key_from_pem, load_certs, provider,
};

/// Let's Encrypt's production directory, the default ACME server.
pub const LETS_ENCRYPT_DIRECTORY: &str = rustls_acme::acme::LETS_ENCRYPT_PRODUCTION_DIRECTORY;

/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737 §6.2).
/// A connection that negotiated it carries no HTTP: the listener closes it
/// right after the handshake.
pub const ACME_TLS_ALPN: &[u8] = rustls_acme::acme::ACME_TLS_ALPN_NAME;

/// The directory under the state directory that holds the ACME account key
/// and the certificate with its key (mode 0700, as they are secrets).
pub const ACME_CACHE_DIR: &str = "acme";

/// Where the ACME client's certificates go once deployed: the listener's
/// OpenSSL context.
pub(crate) type Deploy = Box<dyn Fn(CertifiedKey) + Send + Sync>;

/// The running ACME client and what answers its CA's validation
/// handshakes.
pub(crate) struct AcmeChallenges {
    acme: Arc<ResolvesServerCertAcme>,
    acceptor: tokio_rustls::TlsAcceptor,
    /// The ACME client lives as long as this.
    _task: AbortOnDrop,
}

impl std::fmt::Debug for AcmeChallenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeChallenges").finish_non_exhaustive()
    }
}

impl AcmeChallenges {
    /// Whether `first` (a connection's first bytes, a whole TLS record) is
    /// a ClientHello offering only `acme-tls/1` for a name whose challenge
    /// is pending right now.
    pub(crate) fn is_pending_challenge(&self, first: &[u8]) -> bool {
        let mut acceptor = Acceptor::default();
        let mut bytes = first;
        if acceptor.read_tls(&mut bytes).is_err() {
            return false;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                is_tls_alpn_challenge(&hello) && self.acme.resolve(hello).is_some()
            }
            _ => false,
        }
    }

    /// The rustls acceptor for validation handshakes: TLS 1.3 and 1.2,
    /// ALPN `acme-tls/1`, the challenge certificate.
    pub(crate) fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }
}

/// Sets up ACME for `domain` and starts its client task on the current
/// tokio runtime; every certificate it deploys goes to `deploy`.
pub(crate) fn start_acme(
    settings: &AcmeSettings,
    domain: &str,
    deploy: Deploy,
) -> Result<AcmeChallenges, TlsError> {
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
    let cache = Arc::new(DeployingCache {
        dir: DirCache::new(cache_dir),
        last: Mutex::new(None),
    });
    let mut state = config
        .contact(&settings.contact)
        .cache(SharedCache(cache.clone()))
        .state();
    let acme = state.resolver();

    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ChallengeOnly(acme.clone())));
    tls.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];

    let domain_owned = domain.to_string();
    let directory = settings.directory.clone();
    let task = runtime.spawn(async move {
        let domain = domain_owned;
        while let Some(event) = state.next().await {
            let deployed = match &event {
                Ok(EventOk::DeployedCachedCert) => {
                    tracing::info!(%domain, "ACME certificate loaded from the state directory");
                    true
                }
                Ok(EventOk::DeployedNewCert) => {
                    tracing::info!(%domain, %directory, "ACME certificate issued");
                    false
                }
                Ok(EventOk::CertCacheStore) => {
                    tracing::debug!(%domain, "ACME certificate stored in the state directory");
                    true
                }
                Ok(EventOk::AccountCacheStore) => {
                    tracing::debug!(%domain, "ACME account key stored in the state directory");
                    false
                }
                Err(e @ EventError::CertCacheStore(_)) => {
                    tracing::warn!(%domain, error = %e, "ACME certificate not stored; serving it anyway");
                    true
                }
                // rustls-acme retries with exponential backoff by itself.
                Err(e) => {
                    tracing::warn!(%domain, %directory, error = %e, "ACME failed; retrying");
                    false
                }
            };
            // A new certificate reaches the cache right after it is
            // deployed in rustls-acme; a cached one was read from it.
            if deployed {
                match cache.last_certificate() {
                    Ok(c) => deploy(c),
                    Err(what) => {
                        tracing::warn!(%domain, %what, "ACME certificate unusable for the listener");
                    }
                }
            }
        }
    });
    Ok(AcmeChallenges {
        acme,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        _task: AbortOnDrop(task),
    })
}

/// Answers validation handshakes only: the challenge certificate for a
/// name with a challenge pending, and no certificate (a failed handshake)
/// otherwise.
#[derive(Debug)]
struct ChallengeOnly(Arc<ResolvesServerCertAcme>);

impl ResolvesServerCert for ChallengeOnly {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<RustlsCertifiedKey>> {
        if is_tls_alpn_challenge(&hello) {
            self.0.resolve(hello)
        } else {
            None
        }
    }
}

/// The ACME client's cache (files in the state directory), which also keeps
/// the certificate last loaded or stored (PEM: its key, then its chain) for
/// the listener.
struct DeployingCache {
    dir: DirCache<PathBuf>,
    last: Mutex<Option<Vec<u8>>>,
}

impl DeployingCache {
    fn remember(&self, pem: Option<&[u8]>) {
        if let Some(pem) = pem {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(pem.to_vec());
        }
    }

    /// The certificate last loaded or stored, for OpenSSL.
    fn last_certificate(&self) -> Result<CertifiedKey, String> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let pem = last.as_deref().ok_or("no certificate seen")?;
        Ok(CertifiedKey {
            chain: chain_from_pem(pem)?,
            key: key_from_pem(pem)?,
        })
    }
}

/// [`DeployingCache`] behind an `Arc`, as rustls-acme takes its cache by
/// value and the deploying task reads it too.
struct SharedCache(Arc<DeployingCache>);

#[async_trait::async_trait]
impl CertCache for SharedCache {
    type EC = std::io::Error;

    async fn load_cert(
        &self,
        domains: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EC> {
        let pem = self.0.dir.load_cert(domains, directory_url).await?;
        self.0.remember(pem.as_deref());
        Ok(pem)
    }

    async fn store_cert(
        &self,
        domains: &[String],
        directory_url: &str,
        cert: &[u8],
    ) -> Result<(), Self::EC> {
        self.0.remember(Some(cert));
        self.0.dir.store_cert(domains, directory_url, cert).await
    }
}

#[async_trait::async_trait]
impl AccountCache for SharedCache {
    type EA = std::io::Error;

    async fn load_account(
        &self,
        contact: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EA> {
        self.0.dir.load_account(contact, directory_url).await
    }

    async fn store_account(
        &self,
        contact: &[String],
        directory_url: &str,
        account: &[u8],
    ) -> Result<(), Self::EA> {
        self.0
            .dir
            .store_account(contact, directory_url, account)
            .await
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
