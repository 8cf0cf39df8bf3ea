//! The dialer: TCP, TLS 1.3 with ALPN `h2`, an HTTP/2 link request, then
//! frames both ways (`docs/protocol.md, "Link setup"`).
//!
//! The TLS client does not verify the listener's certificate against any
//! CA; the Noise IK handshake, bound to this TLS connection by the
//! exporter, authenticates the listener instead (see
//! [`super::NoCaVerification`] for why that is safe).
//!
//! SNI: the peer's configured server name if it has one (so the
//! ClientHello looks like one for that site); otherwise none, which is what
//! any client connecting to a bare IP address sends.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use umbra_routing::crypto::Identity;

use super::body::ChannelBody;
use super::link::{
    BODY_QUEUE_BUFFERS, Direction, LINK_CLOSE_GRACE, Link, LinkSettings, LinkStart,
    OBSERVED_ADDR_LEN, decode_observed_addr, start_link,
};
use super::listener::{LINK_CONTENT_TYPE, LINK_PATH};
use super::pki::TlsError;
use super::port::{choose_dial_port, connect_from};
use super::time::unix_secs;
use super::tls::{ALPN_H2, client_tls_config, link_exporter};
use crate::proto::handshake::{
    HandshakeError, LinkInitiator, MSG2_MAX_LEN, MSG2_PREFIX_LEN, decode_msg2, encode_bearer,
};

/// How long a TCP connect may take, by default.
pub const DIAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the TLS handshake, the HTTP/2 setup and message 2 may take
/// together, by default.
pub const DIAL_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// Where to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialTarget {
    /// The peer's Ed25519 identity, from the agreement or the invite.
    pub peer: [u8; 32],
    /// `host:port` (a name is resolved; every address is tried in order).
    pub endpoint: String,
    /// The name to send as SNI and `:authority`, if the peer has one.
    pub server_name: Option<String>,
}

/// Why a dial failed. The endpoint is in the message.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// TCP connect failed.
    #[error("connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        source: std::io::Error,
    },
    /// Something did not answer in time.
    #[error("{endpoint}: timed out during {stage}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// "connect" or "handshake".
        stage: &'static str,
    },
    /// The configured server name is not a valid DNS name or IP address.
    #[error("server name {0:?} is not a valid DNS name or IP address")]
    BadServerName(String),
    /// The TLS handshake failed.
    #[error("TLS with {endpoint}: {source}")]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server did not choose HTTP/2: not an umbra node.
    #[error("{endpoint} did not negotiate HTTP/2; it is not an umbra node")]
    NotHttp2 {
        /// The endpoint.
        endpoint: String,
    },
    /// HTTP/2 failed.
    #[error("HTTP/2 with {endpoint}: {source}")]
    Http {
        /// The endpoint.
        endpoint: String,
        /// Why.
        source: hyper::Error,
    },
    /// The listener answered like a web server: it is not the node we
    /// expected, or it refused us (no agreement, wrong key, clock skew).
    #[error(
        "{endpoint} answered the link request with HTTP {status}: wrong node key, no agreement, or clock skew over 120 s"
    )]
    Refused {
        /// The endpoint.
        endpoint: String,
        /// The status it gave.
        status: StatusCode,
    },
    /// The link handshake failed.
    #[error("link handshake with {endpoint}: {source}")]
    Handshake {
        /// The endpoint.
        endpoint: String,
        /// Why.
        source: HandshakeError,
    },
    /// The listener's reply did not start with an observed address.
    #[error("{endpoint} sent a malformed handshake reply")]
    MalformedReply {
        /// The endpoint.
        endpoint: String,
    },
}

/// Checks that `endpoint` answers as a listener does, without asking for
/// a link: TCP connect, a TLS 1.3 handshake that picks HTTP/2, then close.
/// To the listener it is a visitor that left after the handshake. Returns
/// the address that answered. `umbra doctor` uses it for each partner.
pub async fn probe(
    endpoint: &str,
    server_name: Option<&str>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
) -> Result<SocketAddr, DialError> {
    let owned = || endpoint.to_string();
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(endpoint)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            return Err(DialError::Connect {
                endpoint: owned(),
                source,
            });
        }
        Err(_) => {
            return Err(DialError::Timeout {
                endpoint: owned(),
                stage: "connect",
            });
        }
    };
    let remote = stream.peer_addr().map_err(|source| DialError::Connect {
        endpoint: owned(),
        source,
    })?;
    let config = client_tls_config().map_err(|e| DialError::Tls {
        endpoint: owned(),
        source: std::io::Error::other(e),
    })?;
    let connector = TlsConnector::from(config);
    let tls = tls_h2(&connector, stream, endpoint, server_name, remote);
    match tokio::time::timeout(handshake_timeout, tls).await {
        Ok(r) => r.map(|_| remote),
        Err(_) => Err(DialError::Timeout {
            endpoint: owned(),
            stage: "handshake",
        }),
    }
}

/// TLS over `stream` as a browser would open it to the listener at
/// `remote`: SNI `server_name` (none for an IP address: rustls sends no
/// SNI extension for one), and HTTP/2 picked by ALPN, else an error.
async fn tls_h2<S: AsyncRead + AsyncWrite + Unpin>(
    connector: &TlsConnector,
    stream: S,
    endpoint: &str,
    server_name: Option<&str>,
    remote: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<S>, DialError> {
    let sni = match server_name {
        Some(name) => ServerName::try_from(name.to_string())
            .map_err(|_| DialError::BadServerName(name.to_string()))?,
        None => ServerName::IpAddress(remote.ip().into()),
    };
    let tls = connector
        .connect(sni, stream)
        .await
        .map_err(|source| DialError::Tls {
            endpoint: endpoint.to_string(),
            source,
        })?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
        return Err(DialError::NotHttp2 {
            endpoint: endpoint.to_string(),
        });
    }
    Ok(tls)
}

/// Dials links for one identity.
pub struct Dialer {
    identity: Identity,
    tls: TlsConnector,
    settings: LinkSettings,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    /// The local port every outgoing link binds (`docs/architecture.md,
    /// "NAT"`); `None`: ephemeral ports.
    dial_port: Option<u16>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("identity", &self.identity)
            .field("settings", &self.settings)
            .field("dial_port", &self.dial_port)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// A dialer for `identity` whose links use `settings`.
    pub fn new(identity: Identity, settings: LinkSettings) -> Result<Dialer, TlsError> {
        Ok(Dialer {
            identity,
            tls: TlsConnector::from(client_tls_config()?),
            settings,
            connect_timeout: DIAL_CONNECT_TIMEOUT,
            handshake_timeout: DIAL_HANDSHAKE_TIMEOUT,
            dial_port: choose_dial_port(),
        })
    }

    /// The local port outgoing links bind: drawn from the ephemeral range
    /// when the dialer was made (`None` if none was free). A dial whose
    /// 4-tuple that port cannot make falls back to an ephemeral port
    /// (`docs/architecture.md, "NAT"`).
    pub fn dial_port(&self) -> Option<u16> {
        self.dial_port
    }

    /// Changes the connect and handshake timeouts.
    pub fn with_timeouts(mut self, connect: Duration, handshake: Duration) -> Dialer {
        self.connect_timeout = connect;
        self.handshake_timeout = handshake;
        self
    }

    /// Dials `target` and runs the link handshake, sending `app_payload`
    /// (for example an invite secret) in message 1.
    pub async fn dial(&self, target: &DialTarget, app_payload: &[u8]) -> Result<Link, DialError> {
        let endpoint = target.endpoint.clone();
        let stream = match tokio::time::timeout(self.connect_timeout, self.connect(&endpoint)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(DialError::Connect { endpoint, source }),
            Err(_) => {
                return Err(DialError::Timeout {
                    endpoint,
                    stage: "connect",
                });
            }
        };
        super::socket::tune(&stream);
        super::socket::tune_link(socket2::SockRef::from(&stream));
        let remote = stream.peer_addr().map_err(|source| DialError::Connect {
            endpoint: endpoint.clone(),
            source,
        })?;
        let local = stream.local_addr().map_err(|source| DialError::Connect {
            endpoint: endpoint.clone(),
            source,
        })?;
        self.dial_stream(stream, (local, remote), target, app_payload)
            .await
    }

    /// Resolves `endpoint` and connects to each address in order from the
    /// dial port, as `TcpStream::connect` would from an ephemeral one.
    async fn connect(&self, endpoint: &str) -> std::io::Result<TcpStream> {
        let mut last = None;
        for addr in tokio::net::lookup_host(endpoint).await? {
            match connect_from(addr, self.dial_port).await {
                Ok((stream, _)) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the name resolves to no address",
            )
        }))
    }

    /// Runs TLS, HTTP/2 and the link handshake with `target.peer` over a
    /// stream that is already connected: a hole-punched TCP connection, or a
    /// relayed stream (`docs/protocol.md, "Relayed links"`). `local` and
    /// `remote` are what the link reports as its two ends. The same timeout
    /// as a dial's handshake applies.
    pub async fn dial_stream<S>(
        &self,
        stream: S,
        (local, remote): (SocketAddr, SocketAddr),
        target: &DialTarget,
        app_payload: &[u8],
    ) -> Result<Link, DialError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match tokio::time::timeout(
            self.handshake_timeout,
            self.handshake(stream, (local, remote), target, app_payload),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(DialError::Timeout {
                endpoint: target.endpoint.clone(),
                stage: "handshake",
            }),
        }
    }

    async fn handshake<S>(
        &self,
        stream: S,
        (local, remote): (SocketAddr, SocketAddr),
        target: &DialTarget,
        app_payload: &[u8],
    ) -> Result<Link, DialError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let endpoint = target.endpoint.clone();
        let tls = tls_h2(
            &self.tls,
            stream,
            &endpoint,
            target.server_name.as_deref(),
            remote,
        )
        .await?;
        let (_, conn) = tls.get_ref();
        let binding = link_exporter(conn).map_err(|e| DialError::Tls {
            endpoint: endpoint.clone(),
            source: std::io::Error::other(e),
        })?;
        let now = unix_secs(SystemTime::now());
        let (initiator, msg1) =
            LinkInitiator::start(&self.identity, &target.peer, &binding, now, app_payload)
                .map_err(|source| DialError::Handshake {
                    endpoint: endpoint.clone(),
                    source,
                })?;

        let http_err = |source| DialError::Http {
            endpoint: endpoint.clone(),
            source,
        };
        let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_send_buf_size(super::link::H2_SEND_BUFFER)
            .handshake::<_, ChannelBody>(TokioIo::new(tls))
            .await
            .map_err(http_err)?;
        let conn_task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "link HTTP/2 connection ended");
            }
        });
        // From here on, any failure must also close the connection.
        let abort = conn_task.abort_handle();
        let result = async {
            let authority = target
                .server_name
                .clone()
                .unwrap_or_else(|| endpoint.clone());
            let (out_tx, body) = ChannelBody::new(BODY_QUEUE_BUFFERS);
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(format!("https://{authority}{LINK_PATH}"))
                .body(body)
                .map_err(|_| DialError::BadServerName(authority.clone()))?;
            let h = req.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(LINK_CONTENT_TYPE),
            );
            h.insert(header::TE, HeaderValue::from_static("trailers"));
            let bearer = HeaderValue::from_str(&encode_bearer(&msg1)).map_err(|_| {
                DialError::MalformedReply {
                    endpoint: endpoint.clone(),
                }
            })?;
            h.insert(header::AUTHORIZATION, bearer);

            let resp = send.send_request(req).await.map_err(http_err)?;
            let ok = resp.status() == StatusCode::OK
                && resp
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes() == LINK_CONTENT_TYPE.as_bytes());
            if !ok {
                return Err(DialError::Refused {
                    endpoint: endpoint.clone(),
                    status: resp.status(),
                });
            }
            let mut incoming = resp.into_body();
            // Message 2 is the first bytes of the body, in any split.
            let mut buf = BytesMut::new();
            let (established, used) = loop {
                let hs_err = |source| DialError::Handshake {
                    endpoint: endpoint.clone(),
                    source,
                };
                if let Some((msg2, used)) = decode_msg2(&buf).map_err(hs_err)? {
                    break (initiator.finish(msg2).map_err(hs_err)?, used);
                }
                if buf.len() > MSG2_PREFIX_LEN + MSG2_MAX_LEN {
                    return Err(hs_err(HandshakeError::TooLong));
                }
                match incoming.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            buf.extend_from_slice(&data);
                        }
                    }
                    Some(Err(source)) => return Err(http_err(source)),
                    None => return Err(hs_err(HandshakeError::TooShort)),
                }
            };
            let already_read: Bytes = buf.split_off(used).freeze();
            let observed = decode_observed_addr(&established.app_payload).ok_or_else(|| {
                DialError::MalformedReply {
                    endpoint: endpoint.clone(),
                }
            })?;
            let app_payload = established.app_payload[OBSERVED_ADDR_LEN..].to_vec();
            let close = abort.clone();
            // Keeping the request handle keeps hyper's connection task from
            // shutting down while the link runs.
            let keep = send;
            Ok(start_link(
                LinkStart {
                    peer: established.peer,
                    local,
                    remote,
                    observed: Some(observed),
                    app_payload,
                    handshake_hash: established.handshake_hash,
                    direction: Direction::Outbound,
                    incoming,
                    already_read,
                    outgoing: out_tx,
                    close_connection: Box::new(move || {
                        // Without a request handle hyper shuts the
                        // connection down once the stream is done.
                        drop(keep);
                        tokio::spawn(async move {
                            tokio::time::sleep(LINK_CLOSE_GRACE).await;
                            close.abort();
                        });
                    }),
                },
                &self.settings,
            ))
        }
        .await;
        if result.is_err() {
            abort.abort();
        }
        result
    }
}
