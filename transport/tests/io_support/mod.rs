//! Shared helpers of the `io_*` tests: a listener on 127.0.0.1 with a
//! self-signed certificate, and small TLS + HTTP clients that show exactly
//! what a prober would see.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use umbra_routing::crypto::Identity;
use umbra_transport::io::{
    AdmissionLimits, Authorizer, CertSource, CoverSite, DialTarget, Dialer, LINK_EXPORTER_LABEL,
    LINK_EXPORTER_LEN, Link, LinkListener, LinkSettings, ListenerConfig, TlsSettings,
    client_tls_config, serve, server_tls_config,
};

/// How long any single test step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(20);

/// A running listener.
pub struct TestListener {
    pub addr: SocketAddr,
    pub listener: Arc<LinkListener>,
    pub links: mpsc::Receiver<Link>,
    pub identity: Identity,
    pub _dir: tempfile::TempDir,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for TestListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A link to `l` dialed by a fresh identity with an empty payload: the
/// dialer's end and the listener's.
pub async fn link_pair(l: &mut TestListener) -> (Link, Link) {
    let dialer = Dialer::new(Identity::generate(), LinkSettings::default()).unwrap();
    let target = DialTarget {
        peer: l.identity.public(),
        endpoint: l.addr.to_string(),
        server_name: None,
    };
    let out = dialer.dial(&target, b"").await.unwrap();
    let inb = tokio::time::timeout(STEP, l.links.recv())
        .await
        .unwrap()
        .unwrap();
    (out, inb)
}

/// An authorizer that accepts everyone and replies `reply`.
pub fn accept_all(reply: &'static [u8]) -> Authorizer {
    Arc::new(move |_info| Some(reply.to_vec()))
}

/// An authorizer that refuses everyone.
pub fn refuse_all() -> Authorizer {
    Arc::new(|_info| None)
}

/// The modification time of the files of [`built_in_cover`].
pub const COVER_MTIME: Duration = Duration::from_secs(1_700_000_000);

/// The built-in cover with a fixed modification time.
pub fn built_in_cover() -> CoverSite {
    CoverSite::built_in("notes.example.org", SystemTime::UNIX_EPOCH + COVER_MTIME)
}

/// Starts a listener on 127.0.0.1 with a fresh identity and a self-signed
/// certificate.
pub async fn start_listener(
    cover: CoverSite,
    authorizer: Authorizer,
    link: LinkSettings,
) -> TestListener {
    start_listener_with(cover, authorizer, link, AdmissionLimits::default()).await
}

/// [`start_listener`] with limits on connections that are not links.
pub async fn start_listener_with(
    cover: CoverSite,
    authorizer: Authorizer,
    link: LinkSettings,
    admission: AdmissionLimits,
) -> TestListener {
    let dir = tempfile::tempdir().unwrap();
    let tls = server_tls_config(&TlsSettings {
        cert: CertSource::SelfSigned {
            dir: dir.path().to_path_buf(),
        },
        server_name: String::new(),
    })
    .unwrap();
    let identity = Identity::generate();
    let listener = Arc::new(LinkListener::new(ListenerConfig {
        identity: identity.clone(),
        tls,
        cover,
        authorizer,
        link,
        admission,
    }));
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (tx, links) = mpsc::channel(16);
    let task = tokio::spawn(serve(tcp, listener.clone(), tx));
    TestListener {
        addr,
        listener,
        links,
        identity,
        _dir: dir,
        task,
    }
}

/// A TLS connection to `addr` offering `alpn`, with its exporter value.
pub async fn tls_connect(addr: SocketAddr, alpn: &[&[u8]]) -> (TlsStream<TcpStream>, [u8; 32]) {
    let mut config = (*client_tls_config().unwrap()).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap();
    let exporter = tls
        .get_ref()
        .1
        .export_keying_material([0u8; LINK_EXPORTER_LEN], LINK_EXPORTER_LABEL, None)
        .unwrap();
    (tls, exporter)
}

/// A certificate verifier that takes any certificate and signature: a
/// client that only wants to reach the listener.
#[derive(Debug)]
pub struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a client saw of one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub status: u16,
    /// Header names and values in order, `date` values blanked.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Seen {
    pub fn names(&self) -> Vec<&str> {
        self.headers.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/2 client on one TLS connection.
pub struct H2Client {
    send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    pub exporter: [u8; 32],
}

impl H2Client {
    pub async fn connect(addr: SocketAddr) -> H2Client {
        let (tls, exporter) = tls_connect(addr, &[b"h2", b"http/1.1"]).await;
        H2Client::over(tls, exporter).await
    }

    /// An HTTP/2 client on a TLS connection of one of `versions`, which
    /// checks no certificate, and the version the server chose.
    pub async fn connect_with_versions(
        addr: SocketAddr,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (H2Client, rustls::ProtocolVersion) {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .unwrap();
        let conn = tls.get_ref().1;
        let version = conn.protocol_version().unwrap();
        let exporter = conn
            .export_keying_material([0u8; LINK_EXPORTER_LEN], LINK_EXPORTER_LABEL, None)
            .unwrap();
        (H2Client::over(tls, exporter).await, version)
    }

    async fn over(tls: TlsStream<TcpStream>, exporter: [u8; 32]) -> H2Client {
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        H2Client { send, exporter }
    }

    /// Sends one request and reads the whole response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Seen {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("https://notes.example.org{path}"));
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
        let resp = tokio::time::timeout(STEP, self.send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| {
                let v = if n == "date" {
                    String::new()
                } else {
                    v.to_str().unwrap().to_string()
                };
                (n.as_str().to_string(), v)
            })
            .collect();
        let body = tokio::time::timeout(STEP, resp.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        Seen {
            status,
            headers,
            body,
        }
    }
}

/// Sends raw bytes over TLS with ALPN `http/1.1` and reads until the server
/// closes (send `Connection: close`). Returns the raw response.
pub async fn h1_raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let (mut tls, _) = tls_connect(addr, &[b"http/1.1"]).await;
    tls.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(STEP, tls.read_to_end(&mut out))
        .await
        .unwrap()
        .ok();
    out
}

/// A raw HTTP/1.1 response split into the status line, header lines
/// (names in their case, `Date` values blanked) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSeen {
    pub status_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawSeen {
    pub fn names(&self) -> Vec<&str> {
        self.headers.iter().map(|(n, _)| n.as_str()).collect()
    }
}

pub fn parse_raw(raw: &[u8]) -> RawSeen {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap().to_string();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap();
            let v = if n.eq_ignore_ascii_case("date") {
                ""
            } else {
                v
            };
            (n.to_string(), v.to_string())
        })
        .collect();
    RawSeen {
        status_line,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// Sends raw bytes to `addr` over plain TCP and reads what comes back
/// until the server closes or `wait` passes. Returns the bytes and whether
/// the server closed.
pub async fn tcp_probe(addr: SocketAddr, data: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    let (out, end) = tcp_probe_end(addr, data, wait).await;
    (out, end != "open")
}

/// Like [`tcp_probe`], but says how the connection ended: a FIN
/// (`closed`), a reset, another read error (`error`), or not at all
/// (`open`).
pub async fn tcp_probe_end(
    addr: SocketAddr,
    data: &[u8],
    wait: Duration,
) -> (Vec<u8>, &'static str) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(data).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) => return (out, "closed"),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (out, "reset");
            }
            Ok(Err(_)) => return (out, "error"),
            Err(_) => return (out, "open"),
        }
    }
}
