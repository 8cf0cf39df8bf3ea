//! The upstream kind: every request reverse-proxied to an operator's HTTP
//! server, its answer passed back unchanged (status, reason phrase, headers
//! in order and case, body streamed).

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::nginx::{connection_value, date_now, error_page, insert_str};
use super::{
    CoverError, CoverSite, Kind, SERVER_HEADER, UPSTREAM_CONNECT_TIMEOUT, UPSTREAM_RESPONSE_TIMEOUT,
};
use crate::io::body::ServerBody;

impl CoverSite {
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
}

/// Whether `authority` ends in `:port` (an IPv6 literal is bracketed).
fn has_port(authority: &str) -> bool {
    match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']') && authority[i + 1..].parse::<u16>().is_ok(),
        None => false,
    }
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
pub(super) async fn proxy(authority: &str, req: Request<Incoming>) -> Response<ServerBody> {
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
    use hyper::header::HeaderName;

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
