//! The listener: a web server first (`docs/protocol.md, "Link setup"`;
//! `docs/threat-model.md, "What a prober sees"`).
//!
//! Every TCP connection is handled as nginx 1.22 on Debian handles it:
//! - it looks at the first byte as nginx does: `0x16` (a TLS record) or
//!   `0x80` and above (an SSLv2 header) go to TLS, anything else gets
//!   nginx's plain-HTTP `400` ([`super::plain`]);
//! - TLS is the system's OpenSSL set up as nginx's ([`super::server_tls`]),
//!   so every ClientHello, good or broken, gets the answer a stock nginx
//!   gives it; the first byte, the handshake and nothing else share nginx's
//!   60 s ([`TLS_HANDSHAKE_TIMEOUT`]);
//! - a connection whose handshake failed is read to the end of what has
//!   arrived before it is closed, so the close is a FIN as from nginx (whose
//!   OpenSSL reads ahead), not a reset;
//! - then HTTP/2 if ALPN chose `h2`, else HTTP/1.1;
//! - every request goes to the cover site unless it is a valid link
//!   request: `POST` [`LINK_PATH`] over HTTP/2 and TLS 1.3, `content-type:
//!   application/grpc`, `authorization: Bearer <message 1>`, whose Noise
//!   handshake (bound to this connection's TLS exporter) succeeds and which
//!   the daemon's [`Authorizer`] accepts.
//!
//! With ACME on, a ClientHello offering only `acme-tls/1` for a name whose
//! challenge is pending goes to the ACME client's rustls instead
//! ([`super::acme`]); the listener reads the first record itself to tell.
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
use std::pin::Pin;
use std::task::{Context, Poll};

use openssl::ssl::SslVersion;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_openssl::SslStream;
use umbra_routing::crypto::Identity;

use super::acme::AcmeChallenges;
use super::admission::{Admission, AdmissionLimits, Ticket};
use super::body::{ChannelBody, ServerBody};
use super::cover::{CoverSite, RequestCtx};
use super::link::{
    BODY_QUEUE_BUFFERS, Direction, LINK_CLOSE_GRACE, Link, LinkSettings, LinkStart,
    OBSERVED_ADDR_LEN, encode_observed_addr, start_link,
};
use super::server_tls::ServerTls;
use super::time::unix_secs;
use super::tls::{ALPN_H2, openssl_link_exporter};
use super::tls_stream::ServerTlsStream;
use crate::proto::handshake::{
    HandshakeError, LinkResponder, MSG2_APP_PAYLOAD_MAX_LEN, decode_bearer,
};

/// The path of link requests: an ordinary-looking API streaming endpoint.
pub const LINK_PATH: &str = "/api/v2/stream";

/// The content type of link requests and responses (gRPC's).
pub const LINK_CONTENT_TYPE: &str = "application/grpc";

/// How long a connection may take from its accept to the end of the TLS
/// handshake before it is closed silently (nginx 1.22's 60 s
/// `client_header_timeout`, one timer from the accept through the
/// handshake; a half ClientHello is closed after it, measured here).
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

/// The TLS handshake record type, the first byte of every ClientHello.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The major version byte of every TLS record.
const TLS_RECORD_MAJOR_VERSION: u8 = 0x03;

/// The bit that marks an SSLv2 record header in a connection's first byte;
/// nginx gives such a connection to OpenSSL instead of answering it as
/// plain HTTP.
const SSL2_HEADER_BIT: u8 = 0x80;

/// The length of a TLS record header.
const TLS_RECORD_HEADER_LEN: usize = 5;

/// The longest TLS record a ClientHello comes in (`SSL3_RT_MAX_PLAIN_LENGTH`);
/// with ACME on, the listener reads a first record up to this long before
/// choosing the TLS library.
const TLS_RECORD_MAX_LEN: usize = 16_384;

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
    pub tls: Arc<ServerTls>,
    /// What everyone without the key sees.
    pub cover: CoverSite,
    /// Decides which authenticated peers may link.
    pub authorizer: Authorizer,
    /// Tunables of accepted links.
    pub link: LinkSettings,
    /// Limits on connections that are not links.
    pub admission: AdmissionLimits,
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
    /// Times the listener stopped accepting because every slot for
    /// connections that are not links was held.
    pub accept_paused: u64,
    /// Connections closed at once: their source held its limit.
    pub refused_per_source: u64,
    /// Connections that are not links, now.
    pub unauthenticated: u64,
    /// Connections that did not start with a TLS record and got the
    /// plain-HTTP answer.
    pub plain_connections: u64,
    /// TLS handshakes that failed or timed out (broken or refused
    /// ClientHellos and bytes that only looked like TLS included).
    pub tls_failures: u64,
    /// ACME validation handshakes answered (with ACME on).
    pub acme_validations: u64,
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
    accept_paused: AtomicU64,
    refused_per_source: AtomicU64,
    plain_connections: AtomicU64,
    tls_failures: AtomicU64,
    acme_validations: AtomicU64,
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
    tls: Arc<ServerTls>,
    cover: CoverSite,
    authorizer: Authorizer,
    responder: Mutex<LinkResponder>,
    link: LinkSettings,
    admission: Admission,
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
            tls: config.tls,
            cover: config.cover,
            authorizer: config.authorizer,
            responder: Mutex::new(LinkResponder::new(config.identity)),
            link: config.link,
            admission: Admission::new(config.admission),
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
            accept_paused: get(&c.accept_paused),
            refused_per_source: get(&c.refused_per_source),
            unauthenticated: self.admission.held() as u64,
            plain_connections: get(&c.plain_connections),
            tls_failures: get(&c.tls_failures),
            acme_validations: get(&c.acme_validations),
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
        // With every slot held, stop accepting until one is free
        // (`admission`).
        let (slot, waited) = listener.admission.slot().await;
        if waited {
            bump(&listener.counters.accept_paused);
        }
        match tcp.accept().await {
            Ok((stream, remote)) => {
                bump(&listener.counters.connections);
                let Some(ticket) = listener.admission.admit(slot, remote.ip()) else {
                    bump(&listener.counters.refused_per_source);
                    tracing::debug!(%remote, "its source holds its limit of connections: closed");
                    drop(stream);
                    continue;
                };
                let listener = listener.clone();
                let links = links.clone();
                tokio::spawn(async move {
                    handle_connection(stream, remote, listener, links, Some(ticket)).await;
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

/// What the first byte of a connection says, read as nginx reads it
/// (`ngx_http_ssl_handshake`).
enum FirstBytes {
    /// A TLS record or an SSLv2 header: OpenSSL's to answer.
    Tls,
    /// Anything else: the plain-HTTP answer.
    Plain,
    /// Closed, or nothing within the deadline.
    Gone,
}

/// Looks at the first byte without consuming it.
async fn classify(stream: &TcpStream, deadline: Instant) -> FirstBytes {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD || first[0] & SSL2_HEADER_BIT != 0 => {
            FirstBytes::Tls
        }
        Ok(Ok(1)) => FirstBytes::Plain,
        _ => FirstBytes::Gone,
    }
}

/// Reads a connection's first TLS record (with ACME on, to see whether it
/// is a CA's validation hello before choosing the TLS library): its header
/// and then the whole record if the header announces a handshake record
/// OpenSSL would read whole; stops early at the end of the stream or the
/// deadline. Whatever was read is given back, to be read again.
async fn read_first_record(stream: &mut TcpStream, deadline: Instant) -> Vec<u8> {
    let mut first = Vec::with_capacity(TLS_RECORD_HEADER_LEN);
    let mut want = TLS_RECORD_HEADER_LEN;
    let mut chunk = [0u8; 4096];
    while first.len() < want {
        let room = (want - first.len()).min(chunk.len());
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..room])).await {
            Ok(Ok(n)) if n > 0 => first.extend_from_slice(&chunk[..n]),
            _ => break,
        }
        if first.len() == TLS_RECORD_HEADER_LEN && want == TLS_RECORD_HEADER_LEN {
            let len = usize::from(first[3]) << 8 | usize::from(first[4]);
            if first[0] != TLS_HANDSHAKE_RECORD
                || first[1] != TLS_RECORD_MAJOR_VERSION
                || len > TLS_RECORD_MAX_LEN
            {
                break;
            }
            want += len;
        }
    }
    first
}

/// A stream that gives back `prefix` (bytes already read from `inner`)
/// before reading on from `inner`; writes go to `inner`.
struct Prefixed<S> {
    prefix: Vec<u8>,
    read: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.read < this.prefix.len() {
            let n = (this.prefix.len() - this.read).min(buf.remaining());
            buf.put_slice(&this.prefix[this.read..this.read + n]);
            this.read += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reads and throws away what the client has sent so far (at most
/// [`DRAIN_MAX_LEN`] bytes, until nothing more arrives for
/// [`DRAIN_IDLE`]). Closing a socket with unread bytes sends a reset;
/// nginx has read them all by the time it gives up (OpenSSL reads ahead),
/// so its close is a FIN.
async fn drain<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < DRAIN_MAX_LEN {
        match tokio::time::timeout(DRAIN_IDLE, stream.read(&mut buf)).await {
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
    /// The admission slot, given back when the connection becomes a link.
    ticket: Mutex<Option<Ticket>>,
    /// The TCP socket, when there is one, for the options of a link.
    socket: Option<socket2::Socket>,
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
    handle_connection(stream, remote, listener, links, None).await;
}

/// `ticket` holds the connection's admission slot until it becomes a link.
async fn handle_connection(
    mut stream: TcpStream,
    remote: SocketAddr,
    listener: Arc<LinkListener>,
    links: mpsc::Sender<Link>,
    ticket: Option<Ticket>,
) {
    // nginx's one timer from the accept to the end of the handshake.
    let deadline = Instant::now() + TLS_HANDSHAKE_TIMEOUT;
    super::socket::tune(&stream);
    // A second handle on the socket, to make it a link's once it is one.
    let socket = std::os::fd::AsFd::as_fd(&stream)
        .try_clone_to_owned()
        .ok()
        .map(socket2::Socket::from);
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 443)));
    match classify(&stream, deadline).await {
        FirstBytes::Tls => {}
        FirstBytes::Plain => {
            bump(&listener.counters.plain_connections);
            tracing::debug!(%remote, "not TLS: plain HTTP answer");
            super::plain::serve_plain(stream).await;
            return;
        }
        FirstBytes::Gone => {
            drain(&mut stream).await;
            return;
        }
    }
    let stream = match listener.tls.acme() {
        None => Prefixed {
            prefix: Vec::new(),
            read: 0,
            inner: stream,
        },
        Some(acme) => {
            let first = read_first_record(&mut stream, deadline).await;
            let stream = Prefixed {
                prefix: first,
                read: 0,
                inner: stream,
            };
            if acme.is_pending_challenge(&stream.prefix) {
                answer_acme_validation(acme, stream, remote, &listener, deadline).await;
                return;
            }
            stream
        }
    };
    let Some(tls) = accept_tls(stream, remote, &listener, deadline).await else {
        return;
    };
    serve_tls(tls, local, remote, listener, links, (ticket, socket)).await;
}

/// The TLS handshake with OpenSSL, by `deadline`; on failure the connection
/// is drained and closed (a timeout closes it at once), and `None`.
async fn accept_tls<S>(
    stream: S,
    remote: SocketAddr,
    listener: &LinkListener,
    deadline: Instant,
) -> Option<SslStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut tls = match listener
        .tls
        .ssl()
        .and_then(|ssl| SslStream::new(ssl, stream))
    {
        Ok(t) => t,
        Err(e) => {
            bump(&listener.counters.tls_failures);
            tracing::warn!(%remote, error = %e, "OpenSSL could not start a connection");
            return None;
        }
    };
    match tokio::time::timeout_at(deadline, Pin::new(&mut tls).accept()).await {
        Ok(Ok(())) => Some(tls),
        Ok(Err(e)) => {
            bump(&listener.counters.tls_failures);
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            drain(tls.get_mut()).await;
            None
        }
        Err(_) => {
            bump(&listener.counters.tls_failures);
            tracing::debug!(%remote, "TLS handshake timed out");
            None
        }
    }
}

/// A CA validating TLS-ALPN-01: the handshake (rustls, the challenge
/// certificate) is the answer (RFC 8737); then the connection closes.
async fn answer_acme_validation<S>(
    acme: &AcmeChallenges,
    stream: S,
    remote: SocketAddr,
    listener: &LinkListener,
    deadline: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout_at(deadline, acme.acceptor().accept(stream)).await {
        Ok(Ok(mut tls)) => {
            bump(&listener.counters.acme_validations);
            tracing::debug!(%remote, "ACME validation handshake: closed");
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        }
        _ => {
            bump(&listener.counters.tls_failures);
            tracing::debug!(%remote, "ACME validation handshake failed");
        }
    }
}

/// Serves an already connected stream that was not accepted from a listening
/// socket: a relayed stream a partner opened through another
/// (`docs/protocol.md, "Relayed links"`). It takes the same path as a TCP
/// connection after its first byte was found to be TLS: the TLS handshake,
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
    let deadline = Instant::now() + TLS_HANDSHAKE_TIMEOUT;
    let Some(tls) = accept_tls(stream, remote, &listener, deadline).await else {
        return;
    };
    serve_tls(tls, local, remote, listener, links, (None, None)).await;
}

/// Serves one connection whose TLS handshake is done: HTTP/2 or HTTP/1.1 as
/// ALPN chose, with every request going to the link handshake or the cover.
async fn serve_tls<S>(
    tls: SslStream<S>,
    local: SocketAddr,
    remote: SocketAddr,
    listener: Arc<LinkListener>,
    links: mpsc::Sender<Link>,
    (ticket, socket): (Option<Ticket>, Option<socket2::Socket>),
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let local_port = local.port();
    let tls = ServerTlsStream::new(tls);
    let ssl = tls.ssl();
    let h2 = ssl.selected_alpn_protocol() == Some(ALPN_H2);
    // Links are TLS 1.3 only: no binding, no link on anything older.
    let binding = if ssl.version2() == Some(SslVersion::TLS1_3) {
        openssl_link_exporter(ssl).ok()
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
        ticket: Mutex::new(ticket),
        socket,
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
    drop(state.ticket.lock().map(|mut t| t.take()));
    if let Some(s) = &state.socket {
        super::socket::tune_link(socket2::SockRef::from(s));
    }

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
