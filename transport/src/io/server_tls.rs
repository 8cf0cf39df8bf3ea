//! The listener's TLS (docs/protocol.md, "Link setup"; docs/threat-model.md,
//! "What a prober sees"): the system's OpenSSL, set up call for call as
//! nginx 1.22 sets up a `server` with Debian's `nginx.conf`
//! (`ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3; ssl_prefer_server_ciphers
//! on;`) and `listen 443 ssl http2`. A scanner's ClientHello meets the same
//! library with the same settings as on a stock nginx, so it gets the same
//! answer: versions, suites and their order, groups, ServerHello
//! extensions and their order, alerts, session IDs and tickets.
//!
//! What nginx does, and so this module (`ngx_ssl_create`,
//! `ngx_http_ssl_merge_srv_conf`, `ngx_ssl_session_cache`):
//! - `SSL_CTX_new(TLS_method())`; options `DONT_INSERT_EMPTY_FRAGMENTS`,
//!   `NO_SSLv3`, `NO_COMPRESSION`, `NO_ANTI_REPLAY`, `IGNORE_UNEXPECTED_EOF`,
//!   `CIPHER_SERVER_PREFERENCE`; TLS 1.0 to 1.3 left on, no minimum, 1.3 as
//!   maximum; modes `RELEASE_BUFFERS` and `NO_AUTO_CHAIN`; read-ahead;
//! - cipher list `HIGH:!aNULL:!MD5` (nginx's default `ssl_ciphers`); TLS 1.3
//!   suites and the groups left at OpenSSL's defaults (`ssl_ecdh_curve
//!   auto`); no DH parameters;
//! - a server-name callback that accepts every name, and an ALPN callback
//!   that picks the first of `h2`, `http/1.1`, `http/1.0`, `http/0.9` the
//!   client offers and otherwise ends the handshake with
//!   `no_application_protocol`;
//! - `ssl_session_cache none`: session IDs are handed out but nothing is
//!   stored, with the session ID context `SHA-1("HTTP" ‖ SHA-1(certificate))`;
//!   session tickets on, with OpenSSL's own keys;
//! - renegotiation off on every connection;
//! - `ssl_session_timeout 5m`: `SSL_CTX_set_timeout(ctx, 300)`, which the
//!   `openssl` crate does not bind, so it is the one `unsafe` call in umbra
//!   ([`set_session_timeout`]). It sets the session tickets' lifetime hint,
//!   which a TLS 1.2 handshake shows in clear: OpenSSL's default, 7200 s,
//!   would single the node out to testssl.sh.
//!
//! One thing nginx does cannot be copied (docs/threat-model.md, "What a
//! prober sees"):
//! - it enlarges OpenSSL's handshake write buffer to 16 KiB from an info
//!   callback, which the crate does not bind, so a server flight
//!   longer than 4 KiB leaves in several writes here and in one there: the
//!   TCP segments differ, the bytes do not.
//!
//! Links are served by the same context: a link request is honoured only
//! on a TLS 1.3 connection, bound to its exporter (`listener`). ACME
//! validation handshakes alone go to rustls (`acme`).

use std::sync::{Arc, RwLock};

use openssl::hash::MessageDigest;
use openssl::sha::Sha1;
use openssl::ssl::{
    AlpnError, Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions,
    SslSessionCacheMode, SslVersion, select_next_proto,
};

use super::acme::{AcmeChallenges, start_acme};
use super::pki::{
    CertSource, CertifiedKey, TlsError, load_chain, load_or_generate_self_signed, load_private_key,
};

/// The listener's ALPN protocols in nginx's wire form, in its order of
/// preference: with `http2` on, `h2`, then what its HTTP/1 module names
/// (`http/1.1`, `http/1.0`, `http/0.9`).
const NGINX_ALPN: &[u8] = b"\x02h2\x08http/1.1\x08http/1.0\x08http/0.9";

/// nginx's default `ssl_ciphers`.
const NGINX_CIPHERS: &str = "HIGH:!aNULL:!MD5";

/// The string nginx's HTTP module hashes into the session ID context.
const NGINX_SESSION_ID_CONTEXT: &[u8] = b"HTTP";

/// nginx's default `ssl_session_timeout` (5m), in seconds.
const NGINX_SESSION_TIMEOUT_SECS: i64 = 300;

/// `SSL_OP_NO_ANTI_REPLAY` of OpenSSL 3's `ssl.h`, which the `openssl`
/// crate does not name.
const SSL_OP_NO_ANTI_REPLAY: u64 = 1 << 24;

/// The listener's TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Where the certificate comes from.
    pub cert: CertSource,
    /// The name a generated certificate is made for (config `server_name`);
    /// empty means the host's name, as `hostname -f` gives it. Ignored for
    /// [`CertSource::Files`]; for [`CertSource::Acme`], the domain to get a
    /// certificate for, which must not be empty.
    pub server_name: String,
}

/// The listener's TLS: the OpenSSL context every connection is accepted
/// with (replaced when an ACME certificate arrives), and with ACME on, what
/// answers the CA's validation handshakes. Made by [`server_tls_config`].
pub struct ServerTls {
    context: Arc<RwLock<SslContext>>,
    acme: Option<AcmeChallenges>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("acme", &self.acme.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// A new server-side connection state from the current context.
    pub(crate) fn ssl(&self) -> Result<Ssl, openssl::error::ErrorStack> {
        let context = self.context.read().unwrap_or_else(|p| p.into_inner());
        Ssl::new(&context)
    }

    /// What answers ACME validation handshakes, if ACME is on.
    pub(crate) fn acme(&self) -> Option<&AcmeChallenges> {
        self.acme.as_ref()
    }
}

/// Builds the listener's TLS: the certificate from `settings` in an
/// OpenSSL context set up as nginx's (see the module docs).
///
/// With [`CertSource::Acme`] it also starts the ACME client on the current
/// tokio runtime, serving the state directory's self-signed certificate
/// until the first ACME certificate arrives; the client stops when the
/// returned value is dropped.
pub fn server_tls_config(settings: &TlsSettings) -> Result<Arc<ServerTls>, TlsError> {
    let (cert, acme_settings) = match &settings.cert {
        CertSource::SelfSigned { dir } => (
            load_or_generate_self_signed(dir, &settings.server_name)?,
            None,
        ),
        CertSource::Files { cert, key } => (
            CertifiedKey {
                chain: load_chain(cert)?,
                key: load_private_key(key)?,
            },
            None,
        ),
        CertSource::Acme(acme) => {
            let domain = settings.server_name.trim();
            if domain.is_empty() {
                return Err(TlsError::Acme {
                    domain: String::new(),
                    what: "no domain: set server_name".to_string(),
                });
            }
            (
                load_or_generate_self_signed(&acme.state_dir, domain)?,
                Some((acme, domain)),
            )
        }
    };
    let context = Arc::new(RwLock::new(nginx_context(&cert)?));
    let acme = match acme_settings {
        None => None,
        Some((acme, domain)) => {
            let target = context.clone();
            let name = domain.to_string();
            let deploy = Box::new(move |cert: CertifiedKey| match nginx_context(&cert) {
                Ok(c) => *target.write().unwrap_or_else(|p| p.into_inner()) = c,
                Err(e) => {
                    tracing::warn!(domain = %name, error = %e, "ACME certificate refused by OpenSSL");
                }
            });
            Some(start_acme(acme, domain, deploy)?)
        }
    };
    Ok(Arc::new(ServerTls { context, acme }))
}

/// An OpenSSL context for `cert` set up as nginx 1.22 sets up its server's
/// (see the module docs for each call's origin).
fn nginx_context(cert: &CertifiedKey) -> Result<SslContext, TlsError> {
    let mut b = SslContextBuilder::new(SslMethod::tls())?;
    // ngx_ssl_create: the options OpenSSL 3 still has (the rest are 0).
    b.set_options(SslOptions::DONT_INSERT_EMPTY_FRAGMENTS);
    b.clear_options(SslOptions::NO_SSLV2 | SslOptions::NO_SSLV3 | SslOptions::NO_TLSV1);
    b.set_options(SslOptions::NO_SSLV3);
    b.clear_options(SslOptions::NO_TLSV1_1 | SslOptions::NO_TLSV1_2 | SslOptions::NO_TLSV1_3);
    b.set_min_proto_version(None)?;
    b.set_max_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_options(
        SslOptions::NO_COMPRESSION
            | SslOptions::from_bits_retain(SSL_OP_NO_ANTI_REPLAY)
            | SslOptions::IGNORE_UNEXPECTED_EOF,
    );
    // RELEASE_BUFFERS and NO_AUTO_CHAIN are nginx's; the other two let a
    // non-blocking write be retried from a moved buffer and end at a
    // record, which the wire does not show.
    b.set_mode(
        SslMode::RELEASE_BUFFERS
            | SslMode::NO_AUTO_CHAIN
            | SslMode::ACCEPT_MOVING_WRITE_BUFFER
            | SslMode::ENABLE_PARTIAL_WRITE,
    );
    b.set_read_ahead(true);
    // ngx_http_ssl_merge_srv_conf: SNI and ALPN callbacks, ciphers.
    b.set_servername_callback(|_, _| Ok(()));
    b.set_alpn_select_callback(|_, client| {
        select_next_proto(NGINX_ALPN, client).ok_or(AlpnError::ALERT_FATAL)
    });
    b.set_cipher_list(NGINX_CIPHERS)?;
    b.set_options(SslOptions::CIPHER_SERVER_PREFERENCE);
    // ngx_ssl_certificate.
    let (leaf, chain) = cert.chain.split_first().ok_or(TlsError::NoCertificate)?;
    b.set_certificate(leaf)?;
    for c in chain {
        b.add_extra_chain_cert(c.clone())?;
    }
    b.set_private_key(&cert.key)?;
    b.check_private_key()?;
    // ngx_ssl_session_cache with `none`.
    let mut id_context = Sha1::new();
    id_context.update(NGINX_SESSION_ID_CONTEXT);
    id_context.update(&leaf.digest(MessageDigest::sha1())?);
    b.set_session_id_context(&id_context.finish())?;
    b.set_session_cache_mode(
        SslSessionCacheMode::SERVER
            | SslSessionCacheMode::NO_AUTO_CLEAR
            | SslSessionCacheMode::NO_INTERNAL_STORE,
    );
    b.set_session_cache_size(1);
    set_session_timeout(&mut b, NGINX_SESSION_TIMEOUT_SECS);
    // ngx_ssl_create_connection sets NO_RENEGOTIATION on every connection;
    // on the context it reaches every connection the same way.
    b.set_options(SslOptions::NO_RENEGOTIATION);
    Ok(b.build())
}

/// Sets how long the context's sessions live, and so the lifetime hint of
/// the tickets it issues: `SSL_CTX_set_timeout`, a plain function of
/// OpenSSL 3's libssl that the `openssl` crate does not bind.
#[allow(unsafe_code)]
fn set_session_timeout(b: &mut SslContextBuilder, secs: i64) {
    use std::ffi::{c_long, c_void};
    unsafe extern "C" {
        fn SSL_CTX_set_timeout(ctx: *mut c_void, t: c_long) -> c_long;
    }
    // SAFETY: `b.as_ptr()` is the live `SSL_CTX` the builder owns, borrowed
    // mutably for the call; the function only stores `t` in it and returns
    // the previous value. The symbol is libssl's, which the `openssl` crate
    // already links.
    unsafe {
        SSL_CTX_set_timeout(b.as_ptr().cast(), secs as c_long);
    }
}
