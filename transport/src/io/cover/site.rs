//! The static site: the built-in files and an operator's directory, and
//! what a request path names in them (nginx's path rules: percent-decoding,
//! `.` and `..`, the trailing-slash redirect, `index.html`).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use hyper::header;
use hyper::{Method, Response, StatusCode, Version};

use super::nginx::{StaticResponder, html_escape};
use super::{CoverError, CoverSite, EmbeddedFile, FileSource, FoundFile, Kind, RequestCtx};
use crate::io::body::ServerBody;
use crate::io::time::unix_secs;

/// The built-in site's files.
const BUILT_IN_INDEX: &[u8] = include_bytes!("../../../cover/index.html");

const BUILT_IN_CSS: &[u8] = include_bytes!("../../../cover/style.css");

const BUILT_IN_ROBOTS: &[u8] = include_bytes!("../../../cover/robots.txt");

const BUILT_IN_FAVICON: &[u8] = include_bytes!("../../../cover/favicon.ico");

/// The placeholder in the built-in `index.html` replaced by the site name.
const SITE_NAME_PLACEHOLDER: &str = "{{name}}";

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

    /// Serves a built-in or directory file for a request head.
    pub(super) async fn respond_static(
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
}
