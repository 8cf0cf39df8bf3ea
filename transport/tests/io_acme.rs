//! ACME certificates without an ACME server: what the listener does before
//! its first certificate arrives, and the setup errors. Issuance itself is
//! tested against pebble in `tests/netns/acme.rs`.

#![allow(clippy::unwrap_used)]

mod io_support;

use std::path::Path;
use std::sync::Arc;

use io_support::*;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use umbra_routing::crypto::Identity;
use umbra_transport::io::{
    ACME_CACHE_DIR, ACME_TLS_ALPN, ALPN_H2, ALPN_HTTP11, AcmeSettings, AdmissionLimits, CertSource,
    LinkListener, LinkSettings, ListenerConfig, SELF_SIGNED_CERT_FILE, TlsError, TlsSettings,
    client_tls_config, serve, server_tls_config,
};

const DOMAIN: &str = "notes.example.org";

fn acme_settings(state_dir: &Path, server_name: &str) -> TlsSettings {
    TlsSettings {
        cert: CertSource::Acme(AcmeSettings {
            // Nothing listens on port 1: every order fails, and no packet
            // leaves the host.
            directory: "https://127.0.0.1:1/dir".to_string(),
            contact: vec!["mailto:ops@example.org".to_string()],
            ca_roots: None,
            state_dir: state_dir.to_path_buf(),
        }),
        server_name: server_name.to_string(),
    }
}

#[test]
fn acme_needs_a_domain_and_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let err = server_tls_config(&acme_settings(dir.path(), " ")).unwrap_err();
    assert!(matches!(err, TlsError::Acme { .. }), "{err:?}");
    assert!(err.to_string().contains("set server_name"), "{err}");

    let err = server_tls_config(&acme_settings(dir.path(), DOMAIN)).unwrap_err();
    assert!(err.to_string().contains("needs a tokio runtime"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_ca_roots_file_must_hold_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("ca.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let mut settings = acme_settings(dir.path(), DOMAIN);
    if let CertSource::Acme(acme) = &mut settings.cert {
        acme.ca_roots = Some(bad.clone());
    }
    let err = server_tls_config(&settings).unwrap_err();
    assert!(err.to_string().contains(&*bad.to_string_lossy()), "{err}");
}

/// Until the first ACME certificate arrives, everyone gets the state
/// directory's self-signed certificate for the domain and the cover site;
/// a validation handshake (ALPN `acme-tls/1` only) with no challenge
/// pending goes to OpenSSL, which refuses it with `no_application_protocol`
/// as nginx does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_issuance_the_self_signed_certificate_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let tls = server_tls_config(&acme_settings(dir.path(), DOMAIN)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(dir.path().join(ACME_CACHE_DIR)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    }

    let listener = Arc::new(LinkListener::new(ListenerConfig {
        identity: Identity::generate(),
        tls,
        cover: built_in_cover(),
        authorizer: refuse_all(),
        link: LinkSettings::default(),
        admission: AdmissionLimits::default(),
    }));
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (tx, _links) = mpsc::channel(1);
    let task = tokio::spawn(serve(tcp, listener.clone(), tx));

    // A browser-like client: h2, and the self-signed certificate.
    let (tls, _) = tls_connect(addr, &[ALPN_H2, ALPN_HTTP11]).await;
    let conn = tls.get_ref().1;
    assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
    let served = conn.peer_certificates().unwrap()[0].to_vec();
    let pem = std::fs::read(dir.path().join(SELF_SIGNED_CERT_FILE)).unwrap();
    let kept = rustls::pki_types::pem::PemObject::from_pem_slice(&pem)
        .map(|c: rustls::pki_types::CertificateDer<'_>| c.to_vec())
        .unwrap();
    assert_eq!(served, kept);
    drop(tls);

    // A validating CA's handshake, with no challenge pending.
    let mut config = (*client_tls_config().unwrap()).clone();
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    let stream = TcpStream::connect(addr).await.unwrap();
    let result = tokio::time::timeout(
        STEP,
        TlsConnector::from(Arc::new(config)).connect(ServerName::try_from(DOMAIN).unwrap(), stream),
    )
    .await
    .unwrap();
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("NoApplicationProtocol"),
        "acme-tls/1 handshake with no challenge: {err}"
    );
    // The client has the alert before the listener has counted it.
    for _ in 0..100 {
        if listener.stats().tls_failures > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(listener.stats().tls_failures, 1, "{:?}", listener.stats());
    assert_eq!(listener.stats().acme_validations, 0);
    task.abort();
}
