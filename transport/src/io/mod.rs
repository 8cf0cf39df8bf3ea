//! The tokio side of links (`docs/protocol.md, "Link setup"`): the TLS
//! listener that is a web server first (OpenSSL set up as nginx's), the
//! cover site, the dialer (rustls), and the
//! per-link reader and writer tasks. The protocol itself (handshake,
//! framing) is in [`crate::proto`]; this module only moves bytes and keeps
//! time.
//!
//! The daemon's view:
//! - build a [`LinkListener`] from a [`ListenerConfig`] (TLS from
//!   [`server_tls_config`], a [`CoverSite`], an [`Authorizer`]) and run
//!   [`serve`] on a bound `TcpListener`; accepted links arrive on a channel;
//! - bind listeners with [`bind_listener`];
//! - dial with a [`Dialer`];
//! - punch a hole through two NATs with [`simultaneous_open`];
//! - either way it gets a [`Link`]: the peer's key, addresses, the
//!   handshake payload, a [`LinkSender`] and a [`LinkReceiver`].

mod acme;
mod admission;
mod body;
mod cover;
mod dialer;
mod link;
mod listener;
mod pki;
mod plain;
mod port;
mod punch;
mod server_tls;
mod socket;
mod time;
mod tls;
mod tls_stream;

pub use acme::{ACME_CACHE_DIR, ACME_TLS_ALPN, LETS_ENCRYPT_DIRECTORY};
pub use admission::{AdmissionLimits, MAX_PER_SOURCE, MAX_UNAUTHENTICATED};
pub use cover::{
    CoverError, CoverSite, SERVER_HEADER, UPSTREAM_CONNECT_TIMEOUT, UPSTREAM_RESPONSE_TIMEOUT,
};
pub use dialer::{
    DIAL_CONNECT_TIMEOUT, DIAL_HANDSHAKE_TIMEOUT, DialError, DialTarget, Dialer, probe,
};
pub use link::{
    Direction, FIRST_PING_MAX, LINK_BATCH_MAX_FRAMES, LINK_CLOSE_GRACE, LINK_DEAD_AFTER_KEEPALIVES,
    LINK_RECEIVE_QUEUE_FRAMES, LINK_SEND_QUEUE_FRAMES, Link, LinkEnded, LinkReceiver,
    LinkSendError, LinkSender, LinkSettings, LinkStats, LinkStatsHandle, OBSERVED_ADDR_LEN,
    PaddingStats, decode_observed_addr, encode_observed_addr,
};
pub use listener::{
    ACCEPT_ERROR_PAUSE, AUTHORIZER_REPLY_MAX_LEN, Authorizer, HTTP1_HEADER_TIMEOUT,
    IncomingLinkInfo, LINK_CONTENT_TYPE, LINK_PATH, LinkListener, ListenerConfig, ListenerStats,
    RefuseReason, TLS_HANDSHAKE_TIMEOUT, serve, serve_connection, serve_stream,
};
pub use pki::{
    AcmeSettings, CertSource, DEFAULT_SERVER_NAME, SELF_SIGNED_CERT_FILE, SELF_SIGNED_KEY_FILE,
    SELF_SIGNED_RSA_BITS, SELF_SIGNED_VALIDITY_DAYS, TlsError,
};
pub use plain::PLAIN_HEADER_TIMEOUT;
pub use port::{bind_listener, ephemeral_range};
pub use punch::{Punch, PunchError, simultaneous_open};
pub use server_tls::{ServerTls, TlsSettings, server_tls_config};
pub use socket::{LINK_USER_TIMEOUT, NOTSENT_LOWAT};
pub use tls::{
    ALPN_H2, ALPN_HTTP11, LINK_EXPORTER_LABEL, LINK_EXPORTER_LEN, NoCaVerification,
    client_tls_config,
};
