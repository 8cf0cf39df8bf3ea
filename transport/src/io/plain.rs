//! What the listener does with bytes that are not TLS, copied from nginx
//! 1.22 on an `ssl` port (measured here):
//! - a plain HTTP request gets `400` with "The plain HTTP request was sent
//!   to HTTPS port", then the connection closes;
//! - bytes that cannot start an HTTP request get `400 Bad Request`, then
//!   the connection closes;
//! - a request that never completes is closed silently after
//!   [`PLAIN_HEADER_TIMEOUT`].

use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::cover::{SERVER_HEADER, error_page};
use super::time::{http_date, unix_secs};

/// How long a plain request may take to arrive (nginx's
/// `client_header_timeout` default).
pub const PLAIN_HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// The most request bytes read before answering `400` anyway (nginx's
/// `large_client_header_buffers` default is 4 × 8 KiB).
const PLAIN_MAX_REQUEST_LEN: usize = 32 * 1024;

/// The body nginx sends for a plain request on an HTTPS port.
const PLAIN_ON_HTTPS_PAGE: &str = "<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The plain HTTP request was sent to HTTPS port</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

/// How a plain request parsed so far.
#[derive(Debug, PartialEq, Eq)]
enum Parse {
    /// Valid so far; need more bytes.
    Partial,
    /// A whole request head.
    Complete,
    /// Cannot be HTTP.
    Invalid,
}

/// Answers a connection whose first byte was not a TLS handshake record.
pub(crate) async fn serve_plain(mut stream: TcpStream) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PLAIN_HEADER_TIMEOUT;
    let outcome = loop {
        match parse(&buf) {
            Parse::Partial if buf.len() < PLAIN_MAX_REQUEST_LEN => {}
            Parse::Partial | Parse::Invalid => break Parse::Invalid,
            Parse::Complete => break Parse::Complete,
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            // EOF, error or timeout: nginx closes without a word.
            _ => return,
        }
    };
    let body = match outcome {
        Parse::Complete => PLAIN_ON_HTTPS_PAGE.to_string(),
        _ => error_page(hyper::StatusCode::BAD_REQUEST),
    };
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\nServer: {SERVER_HEADER}\r\nDate: {}\r\n\
         Content-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        http_date(unix_secs(SystemTime::now())),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// A loose version of nginx's request-line parser: a method of `A-Z`, `_`
/// or `-`, a space, a target starting with `/` or a letter (absolute
/// form), a space, `HTTP/d.d`, then header lines up to an empty line.
fn parse(buf: &[u8]) -> Parse {
    // nginx skips empty lines before the request line.
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n');
    let Some(start) = start else {
        return Parse::Partial;
    };
    let line = &buf[start..];
    let mut i = 0;
    // Method.
    while let Some(&b) = line.get(i) {
        match b {
            b'A'..=b'Z' | b'_' | b'-' => i += 1,
            b' ' if i > 0 => break,
            _ => return Parse::Invalid,
        }
    }
    if i >= line.len() {
        return Parse::Partial;
    }
    i += 1;
    // Target.
    match line.get(i) {
        None => return Parse::Partial,
        Some(b'/') | Some(b'a'..=b'z') | Some(b'A'..=b'Z') => {}
        Some(_) => return Parse::Invalid,
    }
    while let Some(&b) = line.get(i) {
        match b {
            b' ' => break,
            // HTTP/0.9 ("GET /"): still plain HTTP on an HTTPS port.
            b'\r' | b'\n' => return Parse::Complete,
            0..=0x1f | 0x7f => return Parse::Invalid,
            _ => i += 1,
        }
    }
    if i >= line.len() {
        return Parse::Partial;
    }
    i += 1;
    // Version.
    let version = &line[i..];
    let want = b"HTTP/";
    let n = version.len().min(want.len());
    if version[..n] != want[..n] {
        return Parse::Invalid;
    }
    if version.len() < want.len() {
        return Parse::Partial;
    }
    let mut j = want.len();
    let mut digits = 0;
    while let Some(&b) = version.get(j) {
        match b {
            b'0'..=b'9' | b'.' => {
                digits += 1;
                j += 1;
            }
            b'\r' | b'\n' if digits > 0 => break,
            _ => return Parse::Invalid,
        }
    }
    if j >= version.len() {
        return Parse::Partial;
    }
    // Headers: look for the empty line.
    let rest = &version[j..];
    if rest.windows(4).any(|w| w == b"\r\n\r\n") || rest.windows(2).any(|w| w == b"\n\n") {
        Parse::Complete
    } else {
        Parse::Partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_classify_like_nginx() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Parse::Complete);
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n"), Parse::Partial);
        assert_eq!(parse(b"GE"), Parse::Partial);
        assert_eq!(parse(b"\x42\x00garbage"), Parse::Invalid);
        assert_eq!(parse(b"get / HTTP/1.1\r\n\r\n"), Parse::Invalid);
        assert_eq!(parse(b"GET / FTP/1.0\r\n\r\n"), Parse::Invalid);
        assert_eq!(parse(b"\r\nPOST /x HTTP/1.0\n\n"), Parse::Complete);
    }
}
