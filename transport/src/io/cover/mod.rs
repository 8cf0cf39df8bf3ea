//! The cover site (`docs/threat-model.md, "What a prober sees"`): what anyone
//! without a node's key sees.
//!
//! Three kinds:
//! - **built-in**: the small static site in `transport/cover/`, embedded in
//!   the binary, served with nginx 1.22's headers and error pages;
//! - **directory**: an operator's directory, served the same way;
//! - **upstream**: every request reverse-proxied to an operator's HTTP
//!   server, its answer passed back unchanged.
//!
//! The static kinds copy nginx 1.22.1 (`server_tokens off`), measured here
//! against Debian's nginx: the same status lines (`405 Not Allowed`), the
//! same header names, case and order, the same error page bodies (CRLF
//! line ends), `ETag` as `"<mtime hex>-<size hex>"`, `304` for
//! `If-None-Match`/`If-Modified-Since`, single-range `206`, `301` to add a
//! trailing slash, `403` for a directory with no index, `400` for a path
//! that climbs above the root.
//!
//! Header order, HTTP/1.1, static file (nginx and this module):
//! `Server, Date, Content-Type, Content-Length, Last-Modified, Connection,
//! ETag, Accept-Ranges`; HTTP/2: the same without `connection`, lower
//! case. Error page: `Server, Date, Content-Type, Content-Length,
//! [Location,] Connection`.
//!
//! `tests/io_nginx.rs` runs a real nginx on the same files and compares the
//! raw answers to 58 probes over HTTP/1.1, HTTP/2, plain TCP, broken TLS
//! and SSLv2 hellos; they are byte for byte the same, `Date` aside, and
//! end the same way (FIN, reset or still open). Known differences
//! (measured the same way):
//! - a request hyper itself rejects (malformed HTTP/1 inside TLS) gets
//!   hyper's bare `400` with `Connection: close` and `Content-Length: 0`,
//!   not nginx's page;
//! - an HTTP/1.0 request gets an `HTTP/1.0` status line (nginx always says
//!   `HTTP/1.1`); hyper forces it;
//! - a multi-range request gets the whole file (nginx sends
//!   `multipart/byteranges`);
//! - HTTP/2 `SETTINGS` values, window updates and HPACK encoding are the
//!   `h2` crate's, not nginx's;
//! - idle keep-alive connections are not closed after nginx's 75 s;
//! - a connection whose ALPN chose `http/0.9` is served as HTTP/1.x.
//!
//! The TLS below the cover is OpenSSL set up as nginx's (`server_tls`); its
//! remaining differences are in docs/threat-model.md ("What a prober sees").
//!
//! The parts: [`site`] finds what a path names (built-in files, an
//! operator's directory), [`nginx`] answers as nginx does (status lines,
//! header order and case, error pages, conditional and range requests), and
//! [`proxy`] passes requests to an upstream.

mod nginx;
mod proxy;
mod site;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::body::ServerBody;

pub(crate) use nginx::error_page;

/// The `Server` header value: nginx with `server_tokens off`.
pub const SERVER_HEADER: &str = "nginx";

/// How long to wait for the upstream to accept a connection (nginx's
/// `proxy_connect_timeout` default).
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait for the upstream's response headers (nginx's
/// `proxy_read_timeout` default).
pub const UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// A cover site setup failure.
#[derive(Debug, thiserror::Error)]
pub enum CoverError {
    /// The cover directory cannot be used.
    #[error("cover site root {path}: {source}")]
    Root {
        /// The configured root.
        path: PathBuf,
        /// Why it cannot be used.
        source: std::io::Error,
    },
    /// The upstream is not `http://host:port`.
    #[error("cover site upstream {url:?}: {why}")]
    Upstream {
        /// The configured value.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// One embedded file.
#[derive(Debug)]
struct EmbeddedFile {
    path: &'static str,
    body: Bytes,
    content_type: &'static str,
}

/// A file the site found for a request, for the nginx-like responder to
/// serve.
struct FoundFile {
    content_type: &'static str,
    len: u64,
    modified_unix: u64,
    source: FileSource,
}

/// Where a found file's bytes are.
enum FileSource {
    Memory(Bytes),
    Disk(PathBuf),
}

#[derive(Debug)]
enum Kind {
    BuiltIn {
        files: Vec<EmbeddedFile>,
        modified_unix: u64,
    },
    Directory {
        root: PathBuf,
    },
    Upstream {
        /// `host:port` to connect to.
        authority: String,
    },
}

/// The cover site that answers every request that is not a valid link
/// request. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct CoverSite {
    kind: Kind,
}

/// What the cover needs to know about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestCtx {
    /// The listener's local port, for `Location` headers.
    pub(crate) local_port: u16,
}

impl CoverSite {
    /// Answers `req` as the cover site.
    pub(crate) async fn respond(
        &self,
        req: Request<Incoming>,
        ctx: RequestCtx,
    ) -> Response<ServerBody> {
        match &self.kind {
            Kind::Upstream { authority } => proxy::proxy(authority, req).await,
            _ => {
                let (parts, _body) = req.into_parts();
                self.respond_static(&parts, ctx).await
            }
        }
    }
}
