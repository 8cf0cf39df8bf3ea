//! The cover site (DESIGN.md §5): what anyone without a node's key sees.
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
//! - idle keep-alive connections are not closed after nginx's 75 s.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::ext::ReasonPhrase;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::Extensions;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;

use super::body::{FileBody, ServerBody};
use super::time::{http_date, unix_secs};

/// The `Server` header value: nginx with `server_tokens off`.
pub const SERVER_HEADER: &str = "nginx";

/// How long to wait for the upstream to accept a connection (nginx's
/// `proxy_connect_timeout` default).
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait for the upstream's response headers (nginx's
/// `proxy_read_timeout` default).
pub const UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// The built-in site's files.
const BUILT_IN_INDEX: &[u8] = include_bytes!("../../cover/index.html");
const BUILT_IN_CSS: &[u8] = include_bytes!("../../cover/style.css");
const BUILT_IN_ROBOTS: &[u8] = include_bytes!("../../cover/robots.txt");
const BUILT_IN_FAVICON: &[u8] = include_bytes!("../../cover/favicon.ico");

/// The placeholder in the built-in `index.html` replaced by the site name.
const SITE_NAME_PLACEHOLDER: &str = "{{name}}";

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
    /// The built-in site. `site_name` replaces the page title (use the
    /// certificate's server name). `modified` is every file's
    /// `Last-Modified` and `ETag` time: pick something stable per node and
    /// different between nodes, such as the identity key file's mtime, so
    /// the `ETag`s of every umbra node are not the same.
    pub fn built_in(site_name: &str, modified: SystemTime) -> CoverSite {
        let index = String::from_utf8_lossy(BUILT_IN_INDEX)
            .replace(SITE_NAME_PLACEHOLDER, &html_escape(site_name));
        let files = vec![
            EmbeddedFile {
                path: "/index.html",
                body: Bytes::from(index),
                content_type: "text/html",
            },
            EmbeddedFile {
                path: "/style.css",
                body: Bytes::from_static(BUILT_IN_CSS),
                content_type: "text/css",
            },
            EmbeddedFile {
                path: "/robots.txt",
                body: Bytes::from_static(BUILT_IN_ROBOTS),
                content_type: "text/plain",
            },
            EmbeddedFile {
                path: "/favicon.ico",
                body: Bytes::from_static(BUILT_IN_FAVICON),
                content_type: "image/x-icon",
            },
        ];
        CoverSite {
            kind: Kind::BuiltIn {
                files,
                modified_unix: unix_secs(modified),
            },
        }
    }

    /// An operator's directory. Files are served only from inside `root`
    /// (after resolving symlinks); `index.html` serves a directory.
    pub fn directory(root: impl AsRef<Path>) -> Result<CoverSite, CoverError> {
        let path = root.as_ref();
        let root = std::fs::canonicalize(path).map_err(|source| CoverError::Root {
            path: path.to_path_buf(),
            source,
        })?;
        if !root.is_dir() {
            return Err(CoverError::Root {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Ok(CoverSite {
            kind: Kind::Directory { root },
        })
    }

    /// An operator's upstream, `http://host:port` (no path; HTTPS upstreams
    /// are not supported). Every request is proxied to it.
    pub fn upstream(url: &str) -> Result<CoverSite, CoverError> {
        let err = |why| CoverError::Upstream {
            url: url.to_string(),
            why,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| err("only http://host:port upstreams are supported"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains('/') {
            return Err(err("expected http://host:port with no path"));
        }
        let authority = if has_port(authority) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(CoverSite {
            kind: Kind::Upstream { authority },
        })
    }

    /// Answers `req` as the cover site.
    pub(crate) async fn respond(
        &self,
        req: Request<Incoming>,
        ctx: RequestCtx,
    ) -> Response<ServerBody> {
        match &self.kind {
            Kind::Upstream { authority } => proxy(authority, req).await,
            _ => {
                let (parts, _body) = req.into_parts();
                self.respond_static(&parts, ctx).await
            }
        }
    }

    /// Serves a built-in or directory file for a request head.
    async fn respond_static(
        &self,
        req: &hyper::http::request::Parts,
        ctx: RequestCtx,
    ) -> Response<ServerBody> {
        let resp = StaticResponder::new(req).await;
        // nginx refuses an HTTP/1.1 request without Host.
        let missing_host =
            req.version == Version::HTTP_11 && !req.headers.contains_key(header::HOST);
        let Some(segments) = normalize_path(req.uri.path()).filter(|_| !missing_host) else {
            return resp.error(StatusCode::BAD_REQUEST);
        };
        let readable = req.method == Method::GET || req.method == Method::HEAD;
        if !readable && req.method != Method::POST {
            return resp.error(StatusCode::METHOD_NOT_ALLOWED);
        }
        let found = match &self.kind {
            Kind::BuiltIn {
                files,
                modified_unix,
            } => lookup_built_in(files, *modified_unix, &segments, req.uri.path()),
            Kind::Directory { root } => lookup_dir(root, &segments, req.uri.path()).await,
            Kind::Upstream { .. } => Found::Missing,
        };
        match found {
            Found::Missing => resp.error(StatusCode::NOT_FOUND),
            Found::Forbidden => resp.error(StatusCode::FORBIDDEN),
            Found::AddSlash if !readable => resp.error(StatusCode::METHOD_NOT_ALLOWED),
            Found::AddSlash => {
                let location = redirect_location(req, ctx);
                resp.redirect(&location)
            }
            Found::File(_) if !readable => resp.error(StatusCode::METHOD_NOT_ALLOWED),
            Found::File(file) => resp.file(file).await,
        }
    }
}

/// Whether `authority` ends in `:port` (an IPv6 literal is bracketed).
fn has_port(authority: &str) -> bool {
    match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']') && authority[i + 1..].parse::<u16>().is_ok(),
        None => false,
    }
}

/// The path's segments after percent-decoding and resolving `.` and `..`,
/// or `None` (answered `400`, as nginx does) for a bad escape, a NUL, or a
/// `..` above the root. The last element is empty when the path ends in
/// `/`.
fn normalize_path(path: &str) -> Option<Vec<String>> {
    let decoded = percent_decode(path.as_bytes())?;
    if decoded.contains(&0) || decoded.first() != Some(&b'/') {
        return None;
    }
    let mut out: Vec<String> = Vec::new();
    let raw: Vec<&[u8]> = decoded.split(|&b| b == b'/').skip(1).collect();
    let last = raw.len().saturating_sub(1);
    for (i, seg) in raw.iter().enumerate() {
        match *seg {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            s => out.push(String::from_utf8_lossy(s).into_owned()),
        }
        // Keep "ends in a slash" (or in /. or /..) as an empty last segment.
        if i == last && matches!(*seg, b"" | b"." | b"..") {
            out.push(String::new());
        }
    }
    Some(out)
}

fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            let hex = input.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    Some(out)
}

/// What a path names.
enum Found {
    Missing,
    Forbidden,
    /// A directory asked for without its trailing slash.
    AddSlash,
    File(FoundFile),
}

/// A file to serve.
struct FoundFile {
    content_type: &'static str,
    len: u64,
    modified_unix: u64,
    source: FileSource,
}

enum FileSource {
    Memory(Bytes),
    Disk(PathBuf),
}

fn lookup_built_in(
    files: &[EmbeddedFile],
    modified_unix: u64,
    segments: &[String],
    raw_path: &str,
) -> Found {
    let mut path = String::new();
    for s in segments {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() && !raw_path.ends_with('/') {
        path.push('/');
    }
    if path.ends_with('/') {
        path.push_str("index.html");
    }
    match files.iter().find(|f| f.path == path) {
        Some(f) => Found::File(FoundFile {
            content_type: f.content_type,
            len: f.body.len() as u64,
            modified_unix,
            source: FileSource::Memory(f.body.clone()),
        }),
        None => Found::Missing,
    }
}

async fn lookup_dir(root: &Path, segments: &[String], raw_path: &str) -> Found {
    let mut path = root.to_path_buf();
    for s in segments.iter().filter(|s| !s.is_empty()) {
        path.push(s);
    }
    let wants_dir = segments.last().is_none_or(|s| s.is_empty());
    // Resolve symlinks, then refuse anything that left the root.
    let Ok(real) = tokio::fs::canonicalize(&path).await else {
        return Found::Missing;
    };
    if !real.starts_with(root) {
        return Found::Missing;
    }
    let Ok(meta) = tokio::fs::metadata(&real).await else {
        return Found::Missing;
    };
    if meta.is_dir() {
        if !wants_dir && !raw_path.ends_with('/') {
            return Found::AddSlash;
        }
        let index = real.join("index.html");
        let Ok(index_real) = tokio::fs::canonicalize(&index).await else {
            return Found::Forbidden;
        };
        if !index_real.starts_with(root) {
            return Found::Missing;
        }
        return match tokio::fs::metadata(&index_real).await {
            Ok(m) if m.is_file() => Found::File(disk_file(index_real, &m)),
            _ => Found::Forbidden,
        };
    }
    if !meta.is_file() || wants_dir {
        return Found::Missing;
    }
    Found::File(disk_file(real, &meta))
}

fn disk_file(path: PathBuf, meta: &std::fs::Metadata) -> FoundFile {
    FoundFile {
        content_type: content_type(&path),
        len: meta.len(),
        modified_unix: meta.modified().map(unix_secs).unwrap_or(0),
        source: FileSource::Disk(path),
    }
}

/// The content type for a file name, from nginx 1.22's `mime.types`
/// (the common part), `application/octet-stream` otherwise.
fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" | "shtml" => "text/html",
        "css" => "text/css",
        "xml" => "text/xml",
        "gif" => "image/gif",
        "jpeg" | "jpg" => "image/jpeg",
        "js" => "application/javascript",
        "atom" => "application/atom+xml",
        "rss" => "application/rss+xml",
        "txt" => "text/plain",
        "png" => "image/png",
        "svg" | "svgz" => "image/svg+xml",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "wasm" => "application/wasm",
        "xhtml" => "application/xhtml+xml",
        "zip" => "application/zip",
        "mp3" => "audio/mpeg",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

/// The `Location` of nginx's trailing-slash redirect:
/// `https://host[:port]/path/[?query]` (`absolute_redirect on`,
/// `port_in_redirect on`, the host from the request).
fn redirect_location(req: &hyper::http::request::Parts, ctx: RequestCtx) -> String {
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri.host().map(str::to_string))
        .unwrap_or_else(|| "localhost".to_string());
    let host = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => host[..i].to_string(),
        _ => host,
    };
    let port = if ctx.local_port == 443 {
        String::new()
    } else {
        format!(":{}", ctx.local_port)
    };
    let query = req.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    format!("https://{host}{port}{}/{query}", req.uri.path())
}

/// nginx's reason phrase where it differs from hyper's canonical one.
fn nginx_reason(status: StatusCode) -> Option<&'static [u8]> {
    Some(match status.as_u16() {
        405 => b"Not Allowed",
        408 => b"Request Time-out",
        413 => b"Request Entity Too Large",
        414 => b"Request-URI Too Large",
        416 => b"Requested Range Not Satisfiable",
        503 => b"Service Temporarily Unavailable",
        504 => b"Gateway Time-out",
        _ => return None,
    })
}

/// nginx's built-in error page for `status` (`server_tokens off`).
pub(crate) fn error_page(status: StatusCode) -> String {
    let reason = nginx_reason(status)
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .or_else(|| status.canonical_reason().map(str::to_string))
        .unwrap_or_default();
    let code = status.as_u16();
    format!(
        "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n\
         <center><h1>{code} {reason}</h1></center>\r\n<hr><center>{SERVER_HEADER}</center>\r\n\
         </body>\r\n</html>\r\n"
    )
}

/// Builds responses to one static request, with nginx's header order.
struct StaticResponder {
    version: Version,
    head: bool,
    /// `keep-alive` or `close`, for HTTP/1.x.
    connection: &'static str,
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
    range: Option<HeaderValue>,
    case_template: &'static Extensions,
}

impl StaticResponder {
    async fn new(req: &hyper::http::request::Parts) -> StaticResponder {
        StaticResponder {
            version: req.version,
            head: req.method == Method::HEAD,
            connection: connection_value(req.version, &req.headers),
            if_none_match: req.headers.get(header::IF_NONE_MATCH).cloned(),
            if_modified_since: req.headers.get(header::IF_MODIFIED_SINCE).cloned(),
            range: req.headers.get(header::RANGE).cloned(),
            case_template: header_case_template().await,
        }
    }

    fn is_h1(&self) -> bool {
        self.version != Version::HTTP_2
    }

    /// A response with the leading headers nginx always sends.
    fn start(&self, status: StatusCode) -> (Response<ServerBody>, HeaderMap) {
        let mut resp = Response::new(ServerBody::empty());
        *resp.status_mut() = status;
        if self.is_h1() {
            *resp.extensions_mut() = self.case_template.clone();
            if let Some(reason) = nginx_reason(status) {
                resp.extensions_mut()
                    .insert(ReasonPhrase::from_static(reason));
            }
        }
        let mut h = HeaderMap::new();
        h.insert(header::SERVER, HeaderValue::from_static(SERVER_HEADER));
        h.insert(header::DATE, date_now());
        (resp, h)
    }

    fn connection(&self, h: &mut HeaderMap) {
        if self.is_h1() {
            h.insert(
                header::CONNECTION,
                HeaderValue::from_static(self.connection),
            );
        }
    }

    fn finish(
        &self,
        (mut resp, h): (Response<ServerBody>, HeaderMap),
        body: ServerBody,
    ) -> Response<ServerBody> {
        *resp.headers_mut() = h;
        *resp.body_mut() = if self.head { ServerBody::empty() } else { body };
        resp
    }

    fn error(&self, status: StatusCode) -> Response<ServerBody> {
        self.error_with(status, None)
    }

    fn redirect(&self, location: &str) -> Response<ServerBody> {
        self.error_with(StatusCode::MOVED_PERMANENTLY, Some(location))
    }

    fn error_with(&self, status: StatusCode, location: Option<&str>) -> Response<ServerBody> {
        let page = error_page(status);
        let (resp, mut h) = self.start(status);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(page.len()));
        if let Some(loc) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
            h.insert(header::LOCATION, loc);
        }
        self.connection(&mut h);
        self.finish((resp, h), ServerBody::full(page))
    }

    async fn file(&self, file: FoundFile) -> Response<ServerBody> {
        let etag = format!("\"{:x}-{:x}\"", file.modified_unix, file.len);
        let last_modified = http_date(file.modified_unix);
        let not_modified = match (&self.if_none_match, &self.if_modified_since) {
            (Some(inm), _) => etag_matches(inm, &etag),
            (None, Some(ims)) => ims.as_bytes() == last_modified.as_bytes(),
            (None, None) => false,
        };
        if not_modified {
            let (resp, mut h) = self.start(StatusCode::NOT_MODIFIED);
            insert_str(&mut h, header::LAST_MODIFIED, &last_modified);
            self.connection(&mut h);
            insert_str(&mut h, header::ETAG, &etag);
            return self.finish((resp, h), ServerBody::empty());
        }
        let range = self
            .range
            .as_ref()
            .and_then(|r| parse_single_range(r.as_bytes(), file.len));
        if let Some(RangeSpec::Unsatisfiable) = range {
            let page = error_page(StatusCode::RANGE_NOT_SATISFIABLE);
            let (resp, mut h) = self.start(StatusCode::RANGE_NOT_SATISFIABLE);
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(page.len()));
            self.connection(&mut h);
            insert_str(
                &mut h,
                header::CONTENT_RANGE,
                &format!("bytes */{}", file.len),
            );
            return self.finish((resp, h), ServerBody::full(page));
        }
        let (status, start, len) = match range {
            Some(RangeSpec::Bytes { start, end }) => {
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            _ => (StatusCode::OK, 0, file.len),
        };
        let body = match file.source {
            FileSource::Memory(b) => {
                let s = usize::try_from(start).unwrap_or(0);
                let e = usize::try_from(start + len).unwrap_or(b.len()).min(b.len());
                ServerBody::full(b.slice(s.min(e)..e))
            }
            FileSource::Disk(path) if !self.head => match open_at(&path, start).await {
                Some(f) => ServerBody::File(FileBody::new(f, len)),
                None => return self.error(StatusCode::NOT_FOUND),
            },
            FileSource::Disk(_) => ServerBody::empty(),
        };
        let (resp, mut h) = self.start(status);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(file.content_type),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        insert_str(&mut h, header::LAST_MODIFIED, &last_modified);
        self.connection(&mut h);
        insert_str(&mut h, header::ETAG, &etag);
        if status == StatusCode::PARTIAL_CONTENT {
            let range = format!("bytes {}-{}/{}", start, start + len - 1, file.len);
            insert_str(&mut h, header::CONTENT_RANGE, &range);
        } else {
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        }
        self.finish((resp, h), body)
    }
}

async fn open_at(path: &Path, start: u64) -> Option<tokio::fs::File> {
    use tokio::io::AsyncSeekExt as _;
    let mut f = tokio::fs::File::open(path).await.ok()?;
    if start > 0 {
        f.seek(std::io::SeekFrom::Start(start)).await.ok()?;
    }
    Some(f)
}

fn insert_str(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn etag_matches(header: &HeaderValue, etag: &str) -> bool {
    header
        .to_str()
        .map(|v| {
            v.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t == etag || t.strip_prefix("W/") == Some(etag)
            })
        })
        .unwrap_or(false)
}

enum RangeSpec {
    Bytes { start: u64, end: u64 },
    Unsatisfiable,
}

/// A single `bytes=` range; `None` (serve the whole file) for anything
/// else, including several ranges.
fn parse_single_range(value: &[u8], len: u64) -> Option<RangeSpec> {
    let v = std::str::from_utf8(value)
        .ok()?
        .strip_prefix("bytes=")?
        .trim();
    if v.contains(',') {
        return None;
    }
    let (a, b) = v.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let suffix: u64 = b.parse().ok()?;
        if suffix == 0 {
            return Some(RangeSpec::Unsatisfiable);
        }
        (len.saturating_sub(suffix), len.checked_sub(1)?)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse::<u64>().ok()?.min(len.saturating_sub(1))
        };
        (start, end)
    };
    if len == 0 || start >= len || end < start {
        return Some(RangeSpec::Unsatisfiable);
    }
    Some(RangeSpec::Bytes { start, end })
}

/// `close` if the client asked for it (or spoke HTTP/1.0 without
/// keep-alive), else `keep-alive`.
fn connection_value(version: Version, headers: &HeaderMap) -> &'static str {
    let tokens = |want: &str| {
        headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
                .unwrap_or(false)
        })
    };
    let close = match version {
        Version::HTTP_10 | Version::HTTP_09 => !tokens("keep-alive"),
        _ => tokens("close"),
    };
    if close { "close" } else { "keep-alive" }
}

fn date_now() -> HeaderValue {
    HeaderValue::from_str(&http_date(unix_secs(SystemTime::now())))
        .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Response extensions that make hyper's HTTP/1 server write header names
/// in nginx's case (`ETag`, not `Etag`).
///
/// hyper keeps the case of header names it parsed in a private extension
/// and writes responses with it (`preserve_header_case`). There is no
/// public constructor, so this parses one canned nginx-style response head
/// with hyper's own HTTP/1 client over an in-memory pipe, once, and keeps
/// its extensions. If that ever fails, the server's title-case fallback
/// applies and only `ETag` comes out as `Etag`.
pub(crate) async fn header_case_template() -> &'static Extensions {
    static TEMPLATE: OnceCell<Extensions> = OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async { parse_case_template().await.unwrap_or_default() })
        .await
}

/// The response head whose header-name case the template keeps.
const CASE_TEMPLATE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: x\r\nDate: x\r\nContent-Type: x\r\nContent-Length: 0\r\nLast-Modified: x\r\n\
Location: x\r\nConnection: keep-alive\r\nETag: x\r\nAccept-Ranges: x\r\nContent-Range: x\r\n\r\n";

/// The in-memory pipe's buffer, in bytes.
const CASE_TEMPLATE_PIPE_LEN: usize = 4096;

async fn parse_case_template() -> Option<Extensions> {
    let (client_io, mut server_io) = tokio::io::duplex(CASE_TEMPLATE_PIPE_LEN);
    let (mut send, conn) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(client_io))
        .await
        .ok()?;
    let conn_task = tokio::spawn(conn);
    let server = async move {
        let mut buf = [0u8; CASE_TEMPLATE_PIPE_LEN];
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = server_io.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        server_io.write_all(CASE_TEMPLATE_HEAD).await.ok()?;
        Some(server_io)
    };
    let req = Request::get("/").body(http_body_util::Empty::new()).ok()?;
    let (resp, _server_io) = tokio::join!(send.send_request(req), server);
    conn_task.abort();
    Some(resp.ok()?.extensions().clone())
}

/// Hop-by-hop headers: a proxy must not forward them in a request, and
/// HTTP/2 forbids them in a response.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// `headers` in their order without the hop-by-hop ones and those the
/// `Connection` header names, which HTTP/2 forbids.
///
/// hyper's HTTP/2 server would strip them itself, but with
/// `HeaderMap::remove`, which moves the last header into the removed one's
/// place: nginx's `last-modified, connection, etag, accept-ranges` would
/// go out as `last-modified, accept-ranges, etag`.
fn without_hop_by_hop(headers: HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    let mut last = None;
    for (name, value) in headers {
        // `None` repeats the previous name.
        if let Some(name) = name {
            last = Some(name);
        }
        let Some(name) = &last else { continue };
        if HOP_BY_HOP.contains(&name.as_str()) || named.iter().any(|n| n == name.as_str()) {
            continue;
        }
        out.append(name.clone(), value);
    }
    out
}

/// Forwards `req` to the upstream and passes its answer back: status,
/// reason phrase, headers in order and in their case, and body, streamed.
/// An unreachable upstream gets nginx's `502` page.
async fn proxy(authority: &str, req: Request<Incoming>) -> Response<ServerBody> {
    let (parts, body) = req.into_parts();
    let bad_gateway = |parts: &hyper::http::request::Parts| {
        let status = StatusCode::BAD_GATEWAY;
        let page = error_page(status);
        let mut resp = Response::new(ServerBody::full(page.clone()));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::SERVER, HeaderValue::from_static(SERVER_HEADER));
        h.insert(header::DATE, date_now());
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(page.len()));
        if parts.version != Version::HTTP_2 {
            h.insert(
                header::CONNECTION,
                HeaderValue::from_static(connection_value(parts.version, &parts.headers)),
            );
        }
        resp
    };
    let stream =
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(authority)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(upstream = authority, error = %e, "cover upstream connect failed");
                return bad_gateway(&parts);
            }
            Err(_) => {
                tracing::debug!(upstream = authority, "cover upstream connect timed out");
                return bad_gateway(&parts);
            }
        };
    let _ = stream.set_nodelay(true);
    let handshake = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .handshake::<_, Incoming>(TokioIo::new(stream))
        .await;
    let (mut send, conn) = match handshake {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(upstream = authority, error = %e, "cover upstream handshake failed");
            return bad_gateway(&parts);
        }
    };
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "cover upstream connection ended");
        }
    });

    // HTTP/2 requests carry no Host; an HTTP/1.1 upstream needs one first.
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 1);
    if !parts.headers.contains_key(header::HOST) {
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| authority.to_string());
        insert_str(&mut headers, header::HOST, &host);
    }
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) || parts.version != Version::HTTP_2 {
            headers.append(name.clone(), value.clone());
        }
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut upstream_req = match Request::builder()
        .method(parts.method.clone())
        .uri(path)
        .version(Version::HTTP_11)
        .body(body)
    {
        Ok(r) => r,
        Err(_) => return bad_gateway(&parts),
    };
    *upstream_req.headers_mut() = headers;
    // Carries hyper's record of the request's header-name case.
    *upstream_req.extensions_mut() = parts.extensions.clone();

    let resp = match tokio::time::timeout(
        UPSTREAM_RESPONSE_TIMEOUT,
        send.send_request(upstream_req),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(upstream = authority, error = %e, "cover upstream request failed");
            return bad_gateway(&parts);
        }
        Err(_) => {
            tracing::debug!(upstream = authority, "cover upstream response timed out");
            let mut r = bad_gateway(&parts);
            *r.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            return r;
        }
    };
    let (mut resp_parts, resp_body) = resp.into_parts();
    if parts.version == Version::HTTP_2 {
        resp_parts.headers = without_hop_by_hop(std::mem::take(&mut resp_parts.headers));
    }
    let mut out = Response::from_parts(resp_parts, ServerBody::Proxied(resp_body));
    // The upstream spoke HTTP/1.1 to us; let hyper pick the client's version.
    *out.version_mut() = Version::HTTP_11;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_like_nginx() {
        assert_eq!(normalize_path("/"), Some(vec![String::new()]));
        assert_eq!(normalize_path("/a/../b"), Some(vec!["b".to_string()]));
        assert_eq!(
            normalize_path("/a/./b/"),
            Some(vec!["a".into(), "b".into(), String::new()])
        );
        assert_eq!(normalize_path("/%2e%2e/etc/passwd"), None);
        assert_eq!(normalize_path("/../x"), None);
        assert_eq!(normalize_path("/a%00b"), None);
        assert_eq!(normalize_path("/a%zz"), None);
        assert_eq!(normalize_path("/a/.."), Some(vec![String::new()]));
    }

    #[test]
    fn error_pages_match_nginx_bytes() {
        // Captured from nginx 1.22.1 with server_tokens off.
        let nginx_404 = "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n\
            <center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n\
            </body>\r\n</html>\r\n";
        assert_eq!(error_page(StatusCode::NOT_FOUND), nginx_404);
        assert_eq!(error_page(StatusCode::NOT_FOUND).len(), 146);
        assert_eq!(error_page(StatusCode::METHOD_NOT_ALLOWED).len(), 150);
    }

    #[test]
    fn ranges_parse() {
        assert!(matches!(
            parse_single_range(b"bytes=0-3", 29),
            Some(RangeSpec::Bytes { start: 0, end: 3 })
        ));
        assert!(matches!(
            parse_single_range(b"bytes=-5", 29),
            Some(RangeSpec::Bytes { start: 24, end: 28 })
        ));
        assert!(matches!(
            parse_single_range(b"bytes=40-", 29),
            Some(RangeSpec::Unsatisfiable)
        ));
        assert!(parse_single_range(b"bytes=0-1,3-4", 29).is_none());
    }

    #[test]
    fn hop_by_hop_headers_leave_the_order_alone() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("server", "nginx"),
            ("last-modified", "x"),
            ("connection", "keep-alive, x-private"),
            ("etag", "\"1\""),
            ("x-private", "y"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("keep-alive", "timeout=5"),
            ("accept-ranges", "bytes"),
        ] {
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let out = without_hop_by_hop(h);
        let seen: Vec<_> = out
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
            .collect();
        assert_eq!(
            seen,
            [
                "server: nginx",
                "last-modified: x",
                "etag: \"1\"",
                "set-cookie: a=1",
                "set-cookie: b=2",
                "accept-ranges: bytes",
            ]
        );
    }

    #[test]
    fn upstream_urls_parse() {
        assert!(CoverSite::upstream("http://127.0.0.1:8080").is_ok());
        assert!(CoverSite::upstream("https://127.0.0.1:8080").is_err());
        assert!(CoverSite::upstream("http://127.0.0.1:8080/app").is_err());
        assert!(has_port("[::1]:80"));
        assert!(!has_port("[::1]"));
    }
}
