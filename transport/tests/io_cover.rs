//! The cover site as a prober sees it: nginx's headers and order for the
//! built-in site, a directory served safely, and an upstream proxied with
//! its headers in order.

#![allow(clippy::unwrap_used)]

mod io_support;

use std::net::SocketAddr;

use io_support::*;
use tokio::net::TcpListener;
use umbra_transport::io::{CoverSite, LinkSettings};

const NGINX_STATIC_H1: [&str; 8] = [
    "Server",
    "Date",
    "Content-Type",
    "Content-Length",
    "Last-Modified",
    "Connection",
    "ETag",
    "Accept-Ranges",
];
const NGINX_ERROR_H1: [&str; 5] = [
    "Server",
    "Date",
    "Content-Type",
    "Content-Length",
    "Connection",
];

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: notes.example.org\r\nConnection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_site_answers_like_nginx() {
    let l = start_listener(built_in_cover(), refuse_all(), LinkSettings::default()).await;

    let index = parse_raw(&h1_raw(l.addr, get("/").as_bytes()).await);
    assert_eq!(index.status_line, "HTTP/1.1 200 OK");
    assert_eq!(index.names(), NGINX_STATIC_H1);
    let h = |name: &str| {
        index
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(h("Server"), "nginx");
    assert_eq!(h("Content-Type"), "text/html");
    assert_eq!(h("Last-Modified"), "Tue, 14 Nov 2023 22:13:20 GMT");
    assert_eq!(h("Connection"), "close");
    assert_eq!(h("Accept-Ranges"), "bytes");
    assert_eq!(h("Content-Length"), index.body.len().to_string());
    let etag = h("ETag");
    assert_eq!(etag, format!("\"6553f100-{:x}\"", index.body.len()));
    let html = String::from_utf8(index.body.clone()).unwrap();
    assert!(html.contains("<title>notes.example.org</title>"));

    // 404 and 405 with nginx's pages and reason phrases.
    let missing = parse_raw(&h1_raw(l.addr, get("/wp-login.php").as_bytes()).await);
    assert_eq!(missing.status_line, "HTTP/1.1 404 Not Found");
    assert_eq!(missing.names(), NGINX_ERROR_H1);
    assert_eq!(missing.body.len(), 146);
    let post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let not_allowed = parse_raw(&h1_raw(l.addr, post).await);
    assert_eq!(not_allowed.status_line, "HTTP/1.1 405 Not Allowed");
    assert_eq!(not_allowed.names(), NGINX_ERROR_H1);

    // Conditional request: 304 with nginx's headers.
    let cond =
        format!("GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n");
    let nm = parse_raw(&h1_raw(l.addr, cond.as_bytes()).await);
    assert_eq!(nm.status_line, "HTTP/1.1 304 Not Modified");
    assert_eq!(
        nm.names(),
        ["Server", "Date", "Last-Modified", "Connection", "ETag"]
    );
    assert!(nm.body.is_empty());

    // Range.
    let range =
        b"GET /robots.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=0-3\r\nConnection: close\r\n\r\n";
    let part = parse_raw(&h1_raw(l.addr, range).await);
    assert_eq!(part.status_line, "HTTP/1.1 206 Partial Content");
    assert_eq!(part.body, b"User");
    assert_eq!(part.names().last(), Some(&"Content-Range"));

    // HEAD: the headers of GET, no body.
    let head = parse_raw(
        &h1_raw(
            l.addr,
            b"HEAD /style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await,
    );
    assert_eq!(head.names(), NGINX_STATIC_H1);
    assert!(head.body.is_empty());

    // HTTP/2: the same order, lower case, no connection header.
    let mut c = H2Client::connect(l.addr).await;
    let seen = c.request("GET", "/favicon.ico", &[], b"").await;
    assert_eq!(seen.status, 200);
    assert_eq!(
        seen.names(),
        [
            "server",
            "date",
            "content-type",
            "content-length",
            "last-modified",
            "etag",
            "accept-ranges"
        ]
    );
    assert_eq!(seen.header("content-type"), Some("image/x-icon"));
    let seen = c.request("GET", "/.env", &[], b"").await;
    assert_eq!(seen.status, 404);
    assert_eq!(
        seen.names(),
        ["server", "date", "content-type", "content-length"]
    );
    assert_eq!(l.listener.stats().cover_requests, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_cover_serves_files_and_refuses_traversal() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "do not serve").unwrap();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::write(r.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::create_dir(r.join("docs")).unwrap();
    std::fs::write(r.join("docs/index.html"), "<h1>docs</h1>").unwrap();
    std::fs::write(r.join("docs/app.js"), "console.log(1)").unwrap();
    std::fs::create_dir(r.join("empty")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), r.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path(), r.join("out")).unwrap();

    let cover = CoverSite::directory(r).unwrap();
    let l = start_listener(cover, refuse_all(), LinkSettings::default()).await;
    let fetch =
        |path: &'static str| async move { parse_raw(&h1_raw(l.addr, get(path).as_bytes()).await) };

    let home = fetch("/").await;
    assert_eq!(home.status_line, "HTTP/1.1 200 OK");
    assert_eq!(home.body, b"<h1>home</h1>");
    assert_eq!(home.names(), NGINX_STATIC_H1);

    let js = fetch("/docs/app.js").await;
    assert_eq!(js.body, b"console.log(1)");
    assert!(
        js.headers
            .contains(&("Content-Type".into(), "application/javascript".into()))
    );

    let docs = fetch("/docs/").await;
    assert_eq!(docs.body, b"<h1>docs</h1>");

    // A directory without its slash: nginx's 301 with an absolute Location.
    let redirect = fetch("/docs").await;
    assert_eq!(redirect.status_line, "HTTP/1.1 301 Moved Permanently");
    assert_eq!(
        redirect.names(),
        [
            "Server",
            "Date",
            "Content-Type",
            "Content-Length",
            "Location",
            "Connection"
        ]
    );
    assert_eq!(
        redirect.headers[4].1,
        format!("https://notes.example.org:{}/docs/", l.addr.port())
    );

    assert!(
        fetch("/empty/")
            .await
            .status_line
            .ends_with("403 Forbidden")
    );
    assert!(fetch("/nope").await.status_line.ends_with("404 Not Found"));
    // Symlinks that leave the root.
    for path in ["/leak.txt", "/out/secret.txt"] {
        let seen = fetch(path).await;
        assert!(
            seen.status_line.ends_with("404 Not Found"),
            "{path}: {}",
            seen.status_line
        );
    }
    // Traversal: nginx answers 400 to a path above the root.
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/docs/../../secret.txt",
    ] {
        let seen = fetch(path).await;
        assert!(
            seen.status_line.ends_with("400 Bad Request"),
            "{path}: {}",
            seen.status_line
        );
        assert!(!String::from_utf8_lossy(&seen.body).contains("do not serve"));
    }
    // Dot segments that stay inside are resolved.
    assert_eq!(fetch("/docs/../index.html").await.body, b"<h1>home</h1>");
}

/// A tiny upstream written byte by byte: answers with headers in a fixed,
/// unsorted order and odd case, and echoes the request head and body.
async fn start_upstream() -> SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tcp.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "client closed early");
                    buf.extend_from_slice(&chunk[..n]);
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = s.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
                let echo = format!("{head}|{body}");
                let resp = format!(
                    "HTTP/1.1 418 I'm a teapot\r\nX-Zeta: 1\r\ncontent-type: text/plain\r\n\
                     X-ALPHA: 2\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nServer: Apache\r\n\
                     Content-Length: {}\r\n\r\n{echo}",
                    echo.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cover_proxies_with_headers_in_order() {
    let upstream = start_upstream().await;
    let cover = CoverSite::upstream(&format!("http://{upstream}")).unwrap();
    let l = start_listener(cover, refuse_all(), LinkSettings::default()).await;

    let req = b"POST /form?x=1 HTTP/1.1\r\nHost: forum.example.org\r\nX-Probe: yes\r\n\
Content-Length: 5\r\nConnection: close\r\n\r\nhello";
    let seen = parse_raw(&h1_raw(l.addr, req).await);
    assert_eq!(seen.status_line, "HTTP/1.1 418 I'm a teapot");
    assert_eq!(
        seen.names(),
        // hyper adds the Connection: close the client asked for.
        [
            "X-Zeta",
            "content-type",
            "X-ALPHA",
            "Set-Cookie",
            "Set-Cookie",
            "Server",
            "Content-Length",
            "Connection"
        ]
    );
    // The upstream saw the request head as sent (case and order), and the
    // body.
    assert_eq!(
        String::from_utf8_lossy(&seen.body),
        "POST /form?x=1 HTTP/1.1\r\nHost: forum.example.org\r\nX-Probe: yes\r\n\
Content-Length: 5\r\nConnection: close\r\n\r\n|hello"
    );

    // Over HTTP/2 the upstream gets a Host from :authority first; headers
    // keep their order.
    let mut c = H2Client::connect(l.addr).await;
    let seen = c.request("GET", "/a/b", &[("x-probe", "h2")], b"").await;
    assert_eq!(seen.status, 418);
    assert_eq!(
        seen.names(),
        [
            "x-zeta",
            "content-type",
            "x-alpha",
            "set-cookie",
            "set-cookie",
            "server",
            "content-length"
        ]
    );
    let echoed = String::from_utf8_lossy(&seen.body).to_string();
    assert!(
        echoed.starts_with("GET /a/b HTTP/1.1\r\nhost: notes.example.org\r\nx-probe: h2\r\n"),
        "{echoed}"
    );

    // A refused link request is proxied like any other request.
    let seen = c
        .request(
            "POST",
            umbra_transport::io::LINK_PATH,
            &[
                ("content-type", "application/grpc"),
                ("authorization", "Bearer AAAA"),
            ],
            b"",
        )
        .await;
    assert_eq!(seen.status, 418);
    let echoed = String::from_utf8_lossy(&seen.body).to_string();
    assert!(
        echoed.starts_with("POST /api/v2/stream HTTP/1.1\r\n"),
        "{echoed}"
    );
    assert!(echoed.contains("authorization: Bearer AAAA"), "{echoed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_gets_nginx_502() {
    // A port nothing listens on: bind, note it, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cover = CoverSite::upstream(&format!("http://127.0.0.1:{port}")).unwrap();
    let l = start_listener(cover, refuse_all(), LinkSettings::default()).await;
    let seen = parse_raw(&h1_raw(l.addr, get("/").as_bytes()).await);
    assert_eq!(seen.status_line, "HTTP/1.1 502 Bad Gateway");
    assert_eq!(seen.names(), NGINX_ERROR_H1);
}
