//! Answering as nginx 1.22.1 does (`server_tokens off`): reason phrases,
//! error pages, header order and case, `ETag`, `304`, single-range `206`,
//! and `Connection`.

use std::path::Path;
use std::time::SystemTime;

use bytes::Bytes;
use hyper::ext::ReasonPhrase;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::Extensions;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::OnceCell;

use super::{FileSource, FoundFile, SERVER_HEADER};
use crate::io::body::{FileBody, ServerBody};
use crate::io::time::{http_date, unix_secs};

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
pub(super) struct StaticResponder {
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
    pub(super) async fn new(req: &hyper::http::request::Parts) -> StaticResponder {
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

    pub(super) fn error(&self, status: StatusCode) -> Response<ServerBody> {
        self.error_with(status, None)
    }

    pub(super) fn redirect(&self, location: &str) -> Response<ServerBody> {
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

    pub(super) async fn file(&self, file: FoundFile) -> Response<ServerBody> {
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

pub(super) fn insert_str(h: &mut HeaderMap, name: HeaderName, value: &str) {
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
pub(super) fn connection_value(version: Version, headers: &HeaderMap) -> &'static str {
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

pub(super) fn date_now() -> HeaderValue {
    HeaderValue::from_str(&http_date(unix_secs(SystemTime::now())))
        .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

pub(super) fn html_escape(s: &str) -> String {
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
async fn header_case_template() -> &'static Extensions {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
