//! The listener: a web server first (`docs/protocol.md, "Link setup"`;
//! `docs/threat-model.md, "What a prober sees"`).
//!
//! Every TCP connection is handled as nginx 1.22 would handle it:
//! - bytes that are not a TLS handshake record get nginx's plain-HTTP `400`
//!   ([`super::plain`]); a record header that is not TLS (`0x16` followed by
//!   a version byte other than 3, or a first byte of `0x80` or more, which
//!   nginx takes for SSLv2) is closed silently, and a record whose first
//!   message is not a ClientHello gets `unexpected_message`, as OpenSSL
//!   does (rustls would stay silent);
//! - a connection given up on before or during the TLS handshake is read
//!   to the end of what has arrived before it is closed, so the close is a
//!   FIN as from nginx, not a reset;
//! - otherwise a TLS handshake (rustls, [`TLS_HANDSHAKE_TIMEOUT`]), then
//!   HTTP/2 if ALPN chose `h2`, else HTTP/1.1;
//! - every request goes to the cover site unless it is a valid link
//!   request: `POST` [`LINK_PATH`] over HTTP/2 and TLS 1.3, `content-type:
//!   application/grpc`, `authorization: Bearer <message 1>`, whose Noise
//!   handshake (bound to this connection's TLS exporter) succeeds and which
//!   the daemon's [`Authorizer`] accepts.
//!
//! A refused link request is answered by the cover exactly as the same
//! request without a valid token would be; the reason goes to the debug
//! log and to [`ListenerStats`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_rustls::TlsAcceptor;
use umbra_routing::crypto::Identity;

use super::acme::ACME_TLS_ALPN;
use super::body::{ChannelBody, ServerBody};
use super::cover::{CoverSite, RequestCtx};
use super::link::{
    BODY_QUEUE_BUFFERS, Direction, LINK_CLOSE_GRACE, Link, LinkSettings, LinkStart,
    OBSERVED_ADDR_LEN, encode_observed_addr, start_link,
};
use super::time::unix_secs;
use super::tls::{ALPN_H2, link_exporter};
use crate::proto::handshake::{
    HandshakeError, LinkResponder, MSG2_APP_PAYLOAD_MAX_LEN, decode_bearer,
};

/// The path of link requests: an ordinary-looking API streaming endpoint.
pub const LINK_PATH: &str = "/api/v2/stream";

/// The content type of link requests and responses (gRPC's).
pub const LINK_CONTENT_TYPE: &str = "application/grpc";

/// How long a TLS handshake may take before the connection is closed
/// silently (nginx 1.22 closes a half ClientHello after its 60 s
/// `client_header_timeout`, measured here).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an HTTP/1.1 request head may take (nginx's
/// `client_header_timeout`).
pub const HTTP1_HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause after a failed `accept` (for example out of file descriptors)
/// before trying again.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Streams one HTTP/2 connection may open (nginx's
/// `http2_max_concurrent_streams` default).
const H2_MAX_CONCURRENT_STREAMS: u32 = 128;

/// How often to look again for the rest of a TLS record header that
/// arrived in pieces.
const PEEK_RETRY: Duration = Duration::from_millis(10);

/// The TLS handshake record type, the first byte of every ClientHello.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The major version byte of every TLS record.
const TLS_RECORD_MAJOR_VERSION: u8 = 0x03;

/// The bit that marks an SSLv2 record header in a connection's first byte;
/// nginx gives such a connection to OpenSSL instead of answering it as
/// plain HTTP.
const SSL2_HEADER_BIT: u8 = 0x80;

/// The most bytes read and thrown away before closing a connection the
/// listener gives up on.
const DRAIN_MAX_LEN: usize = 64 * 1024;

/// How long to wait for more bytes while draining a connection the
/// listener gives up on (segments of one write that are still in flight).
const DRAIN_IDLE: Duration = Duration::from_millis(10);

/// The most reply payload the authorizer may return, in bytes: message 2's
/// payload minus the observed address in front of it.
pub const AUTHORIZER_REPLY_MAX_LEN: usize = MSG2_APP_PAYLOAD_MAX_LEN - OBSERVED_ADDR_LEN;

/// What the daemon's [`Authorizer`] sees of a link request whose handshake
/// succeeded.
#[derive(Debug, Clone, Copy)]
pub struct IncomingLinkInfo<'a> {
    /// The dialer's Ed25519 identity, proven by the handshake.
    pub peer: [u8; 32],
    /// What the dialer sent in message 1 (for example an invite secret).
    pub app_payload: &'a [u8],
    /// The address the connection came from.
    pub remote: SocketAddr,
}

/// The daemon's decision on an authenticated link request: `Some(reply)`
/// accepts and sends `reply` (at most [`AUTHORIZER_REPLY_MAX_LEN`] bytes)
/// in message 2 after the observed address; `None` refuses, and the
/// dialer gets the cover site. Called on a tokio worker thread: keep it
/// quick.
pub type Authorizer = Arc<dyn Fn(&IncomingLinkInfo<'_>) -> Option<Vec<u8>> + Send + Sync>;

/// Everything the listener needs.
pub struct ListenerConfig {
    /// This node's identity (the Noise static key).
    pub identity: Identity,
    /// From [`super::server_tls_config`].
    pub tls: Arc<rustls::ServerConfig>,
    /// What everyone without the key sees.
    pub cover: CoverSite,
    /// Decides which authenticated peers may link.
    pub authorizer: Authorizer,
    /// Tunables of accepted links.
    pub link: LinkSettings,
}

impl std::fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("identity", &self.identity)
            .field("cover", &self.cover)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

/// Why a link request was refused (and answered by the cover).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// Not over HTTP/2 and TLS 1.3.
    WrongProtocol,
    /// The `authorization` value is not a Bearer token of a plausible
    /// message 1.
    BadToken,
    /// Message 1 did not authenticate (wrong key, another TLS connection,
    /// altered bytes, bad payload).
    BadHandshake,
    /// Message 1's timestamp was outside the allowed clock skew.
    StaleTimestamp,
    /// Message 1 was already seen.
    Replay,
    /// The authorizer said no.
    NotAuthorized,
    /// This connection already carries a link.
    DuplicateLink,
    /// The daemon stopped taking links, or a reply was too long.
    Internal,
}

impl RefuseReason {
    fn from_handshake(e: &HandshakeError) -> RefuseReason {
        match e {
            HandshakeError::BadBase64 | HandshakeError::TooLong | HandshakeError::TooShort => {
                RefuseReason::BadToken
            }
            HandshakeError::StaleTimestamp => RefuseReason::StaleTimestamp,
            HandshakeError::Replay => RefuseReason::Replay,
            HandshakeError::Internal | HandshakeError::PayloadTooLong(_) => RefuseReason::Internal,
            _ => RefuseReason::BadHandshake,
        }
    }
}

/// A snapshot of the listener's counters, for metrics and `umbra status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// `accept` calls that failed.
    pub accept_errors: u64,
    /// Connections that did not start with a TLS record and got the
    /// plain-HTTP answer.
    pub plain_connections: u64,
    /// Connections closed because their first record was not a TLS
    /// ClientHello.
    pub not_tls_closed: u64,
    /// TLS handshakes that failed or timed out.
    pub tls_failures: u64,
    /// Requests answered by the cover site (including refused link
    /// requests).
    pub cover_requests: u64,
    /// Links accepted.
    pub links_accepted: u64,
    /// Refused link requests: not HTTP/2 over TLS 1.3.
    pub refused_wrong_protocol: u64,
    /// Refused link requests: unreadable token.
    pub refused_bad_token: u64,
    /// Refused link requests: the handshake did not authenticate.
    pub refused_bad_handshake: u64,
    /// Refused link requests: stale timestamp.
    pub refused_stale: u64,
    /// Refused link requests: replayed message 1.
    pub refused_replay: u64,
    /// Refused link requests: the authorizer said no.
    pub refused_not_authorized: u64,
    /// Refused link requests: a second link on one connection.
    pub refused_duplicate: u64,
    /// Refused link requests: the daemon stopped taking links, or another
    /// local failure.
    pub refused_internal: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    accept_errors: AtomicU64,
    plain_connections: AtomicU64,
    not_tls_closed: AtomicU64,
    tls_failures: AtomicU64,
    cover_requests: AtomicU64,
    links_accepted: AtomicU64,
    refused: [AtomicU64; 8],
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl RefuseReason {
    fn index(self) -> usize {
        self as usize
    }
}

/// The listener's shared state: TLS, the cover, the link responder with its
/// replay cache, the authorizer and the counters. One per node.
pub struct LinkListener {
    tls: TlsAcceptor,
    cover: CoverSite,
    authorizer: Authorizer,
    responder: Mutex<LinkResponder>,
    link: LinkSettings,
    counters: Counters,
}

impl std::fmt::Debug for LinkListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkListener")
            .field("cover", &self.cover)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl LinkListener {
    /// The listener for `config`.
    pub fn new(config: ListenerConfig) -> LinkListener {
        LinkListener {
            tls: TlsAcceptor::from(config.tls),
            cover: config.cover,
            authorizer: config.authorizer,
            responder: Mutex::new(LinkResponder::new(config.identity)),
            link: config.link,
            counters: Counters::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ListenerStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let refused = |r: RefuseReason| get(&c.refused[r.index()]);
        ListenerStats {
            connections: get(&c.connections),
            accept_errors: get(&c.accept_errors),
            plain_connections: get(&c.plain_connections),
            not_tls_closed: get(&c.not_tls_closed),
            tls_failures: get(&c.tls_failures),
            cover_requests: get(&c.cover_requests),
            links_accepted: get(&c.links_accepted),
            refused_wrong_protocol: refused(RefuseReason::WrongProtocol),
            refused_bad_token: refused(RefuseReason::BadToken),
            refused_bad_handshake: refused(RefuseReason::BadHandshake),
            refused_stale: refused(RefuseReason::StaleTimestamp),
            refused_replay: refused(RefuseReason::Replay),
            refused_not_authorized: refused(RefuseReason::NotAuthorized),
            refused_duplicate: refused(RefuseReason::DuplicateLink),
            refused_internal: refused(RefuseReason::Internal),
        }
    }

    /// The number of message-1 ephemeral keys in the replay cache.
    pub fn replay_cache_len(&self) -> usize {
        self.responder
            .lock()
            .map(|r| r.replay_cache_len())
            .unwrap_or(0)
    }
}

/// Accepts connections on `tcp` forever, serving each as a web server and
/// sending every accepted link to `links`. Nothing a client sends stops it:
/// failed accepts, TLS failures and garbage are counted and the loop goes
/// on. Abort its task to stop listening (live links keep running).
pub async fn serve(tcp: TcpListener, listener: Arc<LinkListener>, links: mpsc::Sender<Link>) {
    loop {
        match tcp.accept().await {
            Ok((stream, remote)) => {
                bump(&listener.counters.connections);
                let listener = listener.clone();
                let links = links.clone();
                tokio::spawn(async move {
                    handle_connection(stream, remote, listener, links).await;
                });
            }
            Err(e) => {
                bump(&listener.counters.accept_errors);
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// What the first bytes of a connection say, read as OpenSSL 3 reads a
/// server's first record (`ssl3_get_record`, with nginx's read-ahead).
enum FirstBytes {
    Tls,
    Plain,
    /// `0x16` and then no TLS version, or a first byte of `0x80` or more
    /// that is no SSLv2 ClientHello header: OpenSSL closes without a word.
    NotTls,
    /// A TLS record whose first handshake message is not a ClientHello,
    /// `len` bytes long after its header: OpenSSL waits for all of it and
    /// answers `unexpected_message`; rustls would say nothing.
    NotClientHello {
        len: usize,
    },
    /// An SSLv2 ClientHello header with a record `len` bytes long: OpenSSL
    /// waits for all of it.
    Sslv2Hello {
        len: usize,
    },
    /// A record header that OpenSSL refuses at once with this alert
    /// (too long, or an SSLv2 record too short).
    Refused {
        alert: u8,
    },
    Gone,
}

/// Bytes peeked to classify a connection: the record header and the
/// handshake message type.
const PEEK_LEN: usize = 6;

/// The length of a TLS record header.
const TLS_RECORD_HEADER_LEN: usize = 5;

/// The length of an SSLv2 record header.
const SSL2_RECORD_HEADER_LEN: usize = 2;

/// The handshake message type of a ClientHello (in TLS and SSLv2 alike).
const CLIENT_HELLO: u8 = 0x01;

/// The longest first record OpenSSL waits for, in bytes after the header
/// (`SSL3_RT_MAX_ENCRYPTED_LENGTH`: 16384 of plaintext and 320 of
/// encryption overhead, measured from nginx for TLS and SSLv2 headers
/// alike); a longer one gets `record_overflow` at once.
const OPENSSL_RECORD_MAX_LEN: usize = 16_704;

/// The shortest SSLv2 ClientHello record OpenSSL reads
/// (`MIN_SSL2_RECORD_LEN`); a shorter one gets `decode_error`.
const SSL2_RECORD_MIN_LEN: usize = 9;

/// TLS alert descriptions OpenSSL sends to a bad first record.
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_RECORD_OVERFLOW: u8 = 22;
const ALERT_ILLEGAL_PARAMETER: u8 = 47;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_PROTOCOL_VERSION: u8 = 70;

const ALERT_HANDSHAKE_FAILURE: u8 = 40;

/// Versions in an SSLv2-form hello that OpenSSL answers differently.
const SSL3_VERSION: usize = 0x0300;
const TLS13_VERSION: usize = 0x0304;

/// The longest session ID in a ClientHello, in bytes.
const SSL_SESSION_ID_MAX_LEN: usize = 32;

/// A fatal alert as OpenSSL 3 sends it before the version is negotiated
/// (record version TLS 1.2), measured from nginx.
fn fatal_alert(description: u8) -> [u8; 7] {
    [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description]
}

/// Looks at the first bytes without consuming them.
async fn classify(stream: &TcpStream) -> FirstBytes {
    let mut head = [0u8; PEEK_LEN];
    let deadline = tokio::time::Instant::now() + TLS_HANDSHAKE_TIMEOUT;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut head)).await {
            Ok(Ok(n)) => n,
            _ => return FirstBytes::Gone,
        };
        if n == 0 {
            return FirstBytes::Gone;
        }
        if let Some(first) = classify_head(&head[..n]) {
            return first;
        }
        // Part of a record header so far; peek returns at once while any
        // byte is buffered, so wait a little before looking again.
        if tokio::time::Instant::now() >= deadline {
            return FirstBytes::Gone;
        }
        tokio::time::sleep(PEEK_RETRY).await;
    }
}

/// What `head` (the first bytes, at least one) says, or `None` if it takes
/// more bytes to tell.
fn classify_head(head: &[u8]) -> Option<FirstBytes> {
    let first = *head.first()?;
    if first & SSL2_HEADER_BIT != 0 {
        if head.len() < SSL2_RECORD_HEADER_LEN + 1 {
            return None;
        }
        if head[2] != CLIENT_HELLO {
            return Some(FirstBytes::NotTls);
        }
        let len = usize::from(first & !SSL2_HEADER_BIT) << 8 | usize::from(head[1]);
        return Some(if len > OPENSSL_RECORD_MAX_LEN {
            FirstBytes::Refused {
                alert: ALERT_RECORD_OVERFLOW,
            }
        } else if len < SSL2_RECORD_MIN_LEN {
            FirstBytes::Refused {
                alert: ALERT_DECODE_ERROR,
            }
        } else {
            FirstBytes::Sslv2Hello { len }
        });
    }
    if first != TLS_HANDSHAKE_RECORD {
        return Some(FirstBytes::Plain);
    }
    if head.len() >= 2 && head[1] != TLS_RECORD_MAJOR_VERSION {
        return Some(FirstBytes::NotTls);
    }
    if head.len() < TLS_RECORD_HEADER_LEN {
        return None;
    }
    let len = usize::from(head[3]) << 8 | usize::from(head[4]);
    if len > OPENSSL_RECORD_MAX_LEN {
        return Some(FirstBytes::Refused {
            alert: ALERT_RECORD_OVERFLOW,
        });
    }
    match head.get(5) {
        None if len > 0 => None,
        Some(&CLIENT_HELLO) => Some(FirstBytes::Tls),
        _ => Some(FirstBytes::NotClientHello { len }),
    }
}

/// Reads the first `len` bytes of `stream` (a whole first record, at most
/// [`OPENSSL_RECORD_MAX_LEN`] and its header); `None` if the client closed
/// or [`TLS_HANDSHAKE_TIMEOUT`] passed first.
async fn read_record(stream: &mut TcpStream, len: usize) -> Option<Vec<u8>> {
    let mut record = vec![0u8; len];
    let read = tokio::io::AsyncReadExt::read_exact(stream, &mut record);
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, read).await {
        Ok(Ok(_)) => Some(record),
        _ => None,
    }
}

/// The alert OpenSSL 3 (TLS 1.3 only, as the listener) sends to a whole
/// SSLv2 ClientHello, `body` being the record after its 2-byte header.
/// The checks of `tls_process_client_hello` come first, then version
/// negotiation, which no SSLv2 hello passes; its alert carries the
/// hello's version as record version. Measured from nginx.
fn sslv2_hello_alert(body: &[u8]) -> [u8; 7] {
    let u16_at = |i: usize| {
        body.get(i..i + 2)
            .map_or(0, |b| usize::from(b[0]) << 8 | usize::from(b[1]))
    };
    if body.len() < SSL2_RECORD_MIN_LEN {
        return fatal_alert(ALERT_DECODE_ERROR);
    }
    let (version, ciphers, session_id, challenge) = (u16_at(1), u16_at(3), u16_at(5), u16_at(7));
    if session_id > SSL_SESSION_ID_MAX_LEN {
        return fatal_alert(ALERT_ILLEGAL_PARAMETER);
    }
    if SSL2_RECORD_MIN_LEN + ciphers + session_id + challenge != body.len() {
        return fatal_alert(ALERT_DECODE_ERROR);
    }
    let mut alert = fatal_alert(ALERT_PROTOCOL_VERSION);
    match version {
        SSL3_VERSION => {
            alert[1..3].copy_from_slice(&[0x03, 0x00]);
            alert[6] = ALERT_HANDSHAKE_FAILURE;
        }
        TLS13_VERSION => {}
        v if v >> 8 == usize::from(TLS_RECORD_MAJOR_VERSION) => {
            alert[2] = (v & 0xff) as u8;
        }
        _ => {}
    }
    alert
}

/// Reads and throws away what the client has sent so far (at most
/// [`DRAIN_MAX_LEN`] bytes, until nothing more arrives for
/// [`DRAIN_IDLE`]), then drops the connection. Closing a socket with
/// unread bytes sends a reset; nginx has read them all by the time it
/// gives up (OpenSSL reads ahead), so its close is a FIN.
async fn drain(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < DRAIN_MAX_LEN {
        match tokio::time::timeout(
            DRAIN_IDLE,
            tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

/// Per-connection state shared by its requests.
struct ConnState {
    listener: Arc<LinkListener>,
    links: mpsc::Sender<Link>,
    /// This node's end of the connection.
    local: SocketAddr,
    remote: SocketAddr,
    ctx: RequestCtx,
    /// The TLS exporter value, on TLS 1.3 connections only.
    binding: Option<[u8; 32]>,
    /// Whether the connection negotiated HTTP/2.
    h2: bool,
    has_link: AtomicBool,
    /// Fired when a link on this connection ends: closes the connection.
    close: Arc<Notify>,
}

/// Serves one TCP connection as a web server first: what a listening socket
/// accepted, or a hole-punched connection on which the peer is the TLS
/// client (`docs/architecture.md, "NAT"`). Accepted links go to `links`.
pub async fn serve_connection(
    stream: TcpStream,
    listener: Arc<LinkListener>,
    links: mpsc::Sender<Link>,
) {
    let remote = match stream.peer_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    bump(&listener.counters.connections);
    handle_connection(stream, remote, listener, links).await;
}

async fn handle_connection(
    stream: TcpStream,
    remote: SocketAddr,
    listener: Arc<LinkListener>,
    links: mpsc::Sender<Link>,
) {
    super::socket::tune(&stream);
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 443)));
    match classify(&stream).await {
        FirstBytes::Tls => {}
        FirstBytes::Plain => {
            bump(&listener.counters.plain_connections);
            tracing::debug!(%remote, "not TLS: plain HTTP answer");
            super::plain::serve_plain(stream).await;
            return;
        }
        FirstBytes::NotTls => {
            bump(&listener.counters.not_tls_closed);
            tracing::debug!(%remote, "not a TLS record: closed");
            drain(stream).await;
            return;
        }
        FirstBytes::NotClientHello { len } => {
            bump(&listener.counters.not_tls_closed);
            tracing::debug!(%remote, "TLS record is not a ClientHello: alert and close");
            let mut stream = stream;
            if read_record(&mut stream, TLS_RECORD_HEADER_LEN + len)
                .await
                .is_some()
            {
                let alert = fatal_alert(ALERT_UNEXPECTED_MESSAGE);
                let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &alert).await;
            }
            drain(stream).await;
            return;
        }
        FirstBytes::Sslv2Hello { len } => {
            bump(&listener.counters.not_tls_closed);
            tracing::debug!(%remote, "SSLv2 ClientHello: alert and close");
            let mut stream = stream;
            if let Some(record) = read_record(&mut stream, SSL2_RECORD_HEADER_LEN + len).await {
                let alert = sslv2_hello_alert(&record[SSL2_RECORD_HEADER_LEN..]);
                let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &alert).await;
            }
            drain(stream).await;
            return;
        }
        FirstBytes::Refused { alert } => {
            bump(&listener.counters.not_tls_closed);
            tracing::debug!(%remote, alert, "first record refused: alert and close");
            let mut stream = stream;
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &fatal_alert(alert)).await;
            drain(stream).await;
            return;
        }
        FirstBytes::Gone => {
            drain(stream).await;
            return;
        }
    }
    let accept = listener.tls.accept(stream).into_fallible();
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err((e, stream))) => {
            bump(&listener.counters.tls_failures);
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            drain(stream).await;
            return;
        }
        Err(_) => {
            bump(&listener.counters.tls_failures);
            tracing::debug!(%remote, "TLS handshake timed out");
            return;
        }
    };
    serve_tls(tls, local, remote, listener, links).await;
}

/// Serves an already connected stream that was not accepted from a listening
/// socket: a relayed stream a partner opened through another
/// (`docs/protocol.md, "Relayed links"`). It takes the same path as a TCP
/// connection after its first bytes were found to be TLS: the TLS handshake,
/// then HTTP, where only a valid link request becomes a link (sent to
/// `links`) and anything else gets the cover site. `local` and `remote` are
/// what an accepted link reports as its two ends.
pub async fn serve_stream<S>(
    stream: S,
    (local, remote): (SocketAddr, SocketAddr),
    listener: Arc<LinkListener>,
    links: mpsc::Sender<Link>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    bump(&listener.counters.connections);
    let accept = listener.tls.accept(stream);
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            bump(&listener.counters.tls_failures);
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            bump(&listener.counters.tls_failures);
            tracing::debug!(%remote, "TLS handshake timed out");
            return;
        }
    };
    serve_tls(tls, local, remote, listener, links).await;
}

/// Serves one connection whose TLS handshake is done: HTTP/2 or HTTP/1.1 as
/// ALPN chose, with every request going to the link handshake or the cover.
async fn serve_tls<S>(
    tls: tokio_rustls::server::TlsStream<S>,
    local: SocketAddr,
    remote: SocketAddr,
    listener: Arc<LinkListener>,
    links: mpsc::Sender<Link>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let local_port = local.port();
    // Send the session tickets that rustls queued at the end of the
    // handshake now, as OpenSSL does, not with the first response: an HTTP/1
    // client that sends nothing would otherwise see none (an nginx tells).
    let mut tls = tls;
    let _ = tokio::io::AsyncWriteExt::flush(&mut tls).await;
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() == Some(ACME_TLS_ALPN) {
        // A CA validating TLS-ALPN-01: the handshake was the answer (RFC 8737).
        tracing::debug!(%remote, "ACME validation handshake: closed");
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        return;
    }
    let h2 = conn.alpn_protocol() == Some(ALPN_H2);
    let binding = if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
        link_exporter(conn).ok()
    } else {
        None
    };
    let state = Arc::new(ConnState {
        listener,
        links,
        local,
        remote,
        ctx: RequestCtx { local_port },
        binding,
        h2,
        has_link: AtomicBool::new(false),
        close: Arc::new(Notify::new()),
    });
    let close = state.close.clone();
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle_request(req, &state).await) }
    });
    let io = TokioIo::new(tls);
    let result = if h2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .auto_date_header(false)
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .max_send_buf_size(super::link::H2_SEND_BUFFER);
        serve_until_closed(b.serve_connection(io, service), &close).await
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(HTTP1_HEADER_TIMEOUT)
            .auto_date_header(false)
            .preserve_header_case(true)
            .title_case_headers(true);
        serve_until_closed(b.serve_connection(io, service), &close).await
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "HTTP connection ended with an error");
    }
}

/// Serves one HTTP connection until it ends or `close` is notified (its link
/// closed); then shuts it down gracefully, waiting at most
/// [`LINK_CLOSE_GRACE`].
async fn serve_until_closed<C>(conn: C, close: &Notify) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        () = close.notified() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(LINK_CLOSE_GRACE, conn).await.unwrap_or(Ok(()))
        }
    }
}

/// Whether a request has the shape of a link request (method, path,
/// content type, a Bearer header). Anything else is simply a cover
/// request.
fn looks_like_link(req: &Request<Incoming>) -> bool {
    req.method() == Method::POST
        && req.uri().path() == LINK_PATH
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == LINK_CONTENT_TYPE.as_bytes())
        && req.headers().contains_key(header::AUTHORIZATION)
}

async fn handle_request(req: Request<Incoming>, state: &ConnState) -> Response<ServerBody> {
    let listener = &state.listener;
    if looks_like_link(&req) {
        match accept_link(req, state).await {
            Ok(resp) => {
                bump(&listener.counters.links_accepted);
                return resp;
            }
            Err(refused) => {
                let (reason, req) = *refused;
                bump(&listener.counters.refused[reason.index()]);
                tracing::debug!(remote = %state.remote, ?reason, "link request refused; cover answers");
                bump(&listener.counters.cover_requests);
                return listener.cover.respond(req, state.ctx).await;
            }
        }
    }
    bump(&listener.counters.cover_requests);
    listener.cover.respond(req, state.ctx).await
}

/// Runs the link handshake for a request of the right shape. On refusal the
/// untouched request comes back for the cover.
async fn accept_link(
    req: Request<Incoming>,
    state: &ConnState,
) -> Result<Response<ServerBody>, Box<(RefuseReason, Request<Incoming>)>> {
    let refuse = |reason, req| Err(Box::new((reason, req)));
    let Some(binding) = state
        .binding
        .filter(|_| state.h2 && req.version() == Version::HTTP_2)
    else {
        return refuse(RefuseReason::WrongProtocol, req);
    };
    if state.has_link.load(Ordering::Relaxed) {
        return refuse(RefuseReason::DuplicateLink, req);
    }
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let msg1 = match decode_bearer(auth) {
        Ok(m) => m,
        Err(e) => return refuse(RefuseReason::from_handshake(&e), req),
    };
    let now = unix_secs(SystemTime::now());
    let read = match state.listener.responder.lock() {
        Ok(mut r) => r.read_msg1(&msg1, &binding, now),
        Err(_) => Err(HandshakeError::Internal),
    };
    let incoming = match read {
        Ok(i) => i,
        Err(e) => return refuse(RefuseReason::from_handshake(&e), req),
    };
    let info = IncomingLinkInfo {
        peer: incoming.peer,
        app_payload: &incoming.app_payload,
        remote: state.remote,
    };
    let Some(reply) = (state.listener.authorizer)(&info) else {
        return refuse(RefuseReason::NotAuthorized, req);
    };
    if reply.len() > AUTHORIZER_REPLY_MAX_LEN {
        tracing::warn!(len = reply.len(), "authorizer reply too long for message 2");
        return refuse(RefuseReason::Internal, req);
    }
    // Reserve the daemon's slot first, so a stopped daemon still leaves the
    // request for the cover.
    let Ok(permit) = state.links.reserve().await else {
        return refuse(RefuseReason::Internal, req);
    };
    let mut payload = Vec::with_capacity(OBSERVED_ADDR_LEN + reply.len());
    payload.extend_from_slice(&encode_observed_addr(state.remote));
    payload.extend_from_slice(&reply);
    let (msg2, established) = match incoming.accept(&payload) {
        Ok(x) => x,
        Err(_) => return refuse(RefuseReason::Internal, req),
    };
    state.has_link.store(true, Ordering::Relaxed);

    let (out_tx, body) = ChannelBody::new(BODY_QUEUE_BUFFERS);
    // Capacity is at least one, so message 2 always fits.
    let _ = out_tx.try_send(Bytes::from(msg2));
    let close = state.close.clone();
    let link = start_link(
        LinkStart {
            peer: established.peer,
            local: state.local,
            remote: state.remote,
            observed: None,
            app_payload: established.app_payload,
            handshake_hash: established.handshake_hash,
            direction: Direction::Inbound,
            incoming: req.into_body(),
            already_read: Bytes::new(),
            outgoing: out_tx,
            close_connection: Box::new(move || close.notify_one()),
        },
        &state.listener.link,
    );
    tracing::debug!(remote = %state.remote, peer = %hex::encode(link.peer), "link accepted");
    permit.send(link);

    let mut resp = Response::new(ServerBody::Link(body));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(LINK_CONTENT_TYPE),
    );
    Ok(resp)
}
