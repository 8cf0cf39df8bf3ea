//! Side by side with a real nginx serving the same files: a prober must
//! see the same status lines, header names in the same case and order, and
//! the same bodies, and no difference in timing (`docs/threat-model.md, "What a
//! prober sees"`). The known differences are listed in `src/io/cover.rs`.
//! Needs the `nginx` binary (Debian's nginx 1.22 was the
//! reference); without it the test says so and does nothing else.

#![allow(clippy::unwrap_used)]

mod io_support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use io_support::*;
use umbra_netlab::NginxConfig;
use umbra_transport::io::{LINK_CONTENT_TYPE, LINK_PATH, LinkSettings};

/// The nginx process. It runs with `master_process off`, as one process,
/// so killing it leaves no workers behind.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx_binary() -> Option<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// Requests over HTTP/1.1 whose answers must match byte for byte (Date
/// aside).
fn h1_probes(etag: &str) -> Vec<(&'static str, String)> {
    let close = "Host: notes.example.org\r\nConnection: close\r\n";
    vec![
        ("index", format!("GET / HTTP/1.1\r\n{close}\r\n")),
        ("css", format!("GET /style.css HTTP/1.1\r\n{close}\r\n")),
        ("head", format!("HEAD /robots.txt HTTP/1.1\r\n{close}\r\n")),
        ("missing", format!("GET /wp-login.php HTTP/1.1\r\n{close}\r\n")),
        ("post root", format!("POST / HTTP/1.1\r\n{close}Content-Length: 2\r\n\r\nhi")),
        ("delete", format!("DELETE /x HTTP/1.1\r\n{close}\r\n")),
        ("above root", format!("GET /../etc/passwd HTTP/1.1\r\n{close}\r\n")),
        ("dot segments", format!("GET /a/../robots.txt HTTP/1.1\r\n{close}\r\n")),
        ("etag", format!("GET / HTTP/1.1\r\n{close}If-None-Match: {etag}\r\n\r\n")),
        ("range", format!("GET /robots.txt HTTP/1.1\r\n{close}Range: bytes=2-5\r\n\r\n")),
        ("unknown method", format!("FOO / HTTP/1.1\r\n{close}\r\n")),
        ("options", format!("OPTIONS * HTTP/1.1\r\n{close}\r\n")),
        ("no host", "GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_string()),
        ("bad escape", format!("GET /%zz HTTP/1.1\r\n{close}\r\n")),
        ("query", format!("GET /robots.txt?a=b HTTP/1.1\r\n{close}\r\n")),
        (
            "if-modified-since",
            format!("GET / HTTP/1.1\r\n{close}If-Modified-Since: Tue, 14 Nov 2023 22:13:20 GMT\r\n\r\n"),
        ),
        ("range unsatisfiable", format!("GET /robots.txt HTTP/1.1\r\n{close}Range: bytes=100-\r\n\r\n")),
        (
            "chunked post",
            format!("POST /x HTTP/1.1\r\n{close}Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"),
        ),
        ("keep-alive", "GET /missing HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string()),
        (
            "link request",
            format!(
                "POST {LINK_PATH} HTTP/1.1\r\n{close}Content-Type: {LINK_CONTENT_TYPE}\r\n\
                 Authorization: Bearer AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n\
                 Content-Length: 0\r\n\r\n"
            ),
        ),
    ]
}

/// Blanks `Date` values in every response of a raw (possibly pipelined)
/// answer.
fn without_dates(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .split("\r\n")
        .map(|l| {
            if l.starts_with("Date: ") {
                "Date: -"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_cover_matches_nginx_serving_the_same_files() {
    let Some(nginx) = nginx_binary() else {
        // CI installs nginx (.ci/run), so there a missing nginx is a failure,
        // not a silent pass.
        assert!(
            std::env::var_os("CI").is_none(),
            "nginx is not installed; .ci/run must install nginx-light"
        );
        eprintln!("nginx is not installed: side-by-side comparison not run");
        return;
    };
    let l = start_listener(built_in_cover(), refuse_all(), LinkSettings::default()).await;

    // The same files, with the same modification time, for nginx.
    let root = tempfile::tempdir().unwrap();
    let mtime = SystemTime::UNIX_EPOCH + COVER_MTIME;
    let mut etag = String::new();
    for name in ["index.html", "style.css", "robots.txt", "favicon.ico"] {
        let raw = h1_raw(l.addr, get(&format!("/{name}")).as_bytes()).await;
        let seen = parse_raw(&raw);
        assert_eq!(seen.status_line, "HTTP/1.1 200 OK");
        if name == "index.html" {
            etag = seen
                .headers
                .iter()
                .find(|(n, _)| n == "ETag")
                .unwrap()
                .1
                .clone();
        }
        let path = root.path().join(name);
        std::fs::write(&path, &seen.body).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }

    let port = free_port().await;
    let d = root.path().display();
    let args = NginxConfig::new(root.path())
        .https(
            &format!("127.0.0.1:{port}"),
            &l._dir.path().join("tls-cert.pem"),
            &l._dir.path().join("tls-key.pem"),
            root.path(),
        )
        .write()
        .unwrap();
    let child = Command::new(nginx)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Nginx(child);
    let nginx_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(nginx_addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "nginx did not start; see {d}/error.log");

    let mut differences = Vec::new();
    for (what, req) in h1_probes(&etag) {
        let ours = without_dates(&h1_raw(l.addr, req.as_bytes()).await);
        let theirs = without_dates(&h1_raw(nginx_addr, req.as_bytes()).await);
        assert!(
            theirs.starts_with("HTTP/1.1 "),
            "nginx gave no answer to {what}: {theirs:?}"
        );
        if std::env::var_os("UMBRA_SHOW_PROBES").is_some() {
            eprintln!("== {what}\n{ours}");
        }
        assert!(
            theirs.starts_with("HTTP/1.1 "),
            "nginx gave no answer to {what}: {theirs:?}"
        );
        if ours != theirs {
            differences.push(format!(
                "HTTP/1.1 {what}:\n--- umbra\n{ours}\n--- nginx\n{theirs}"
            ));
        }
    }

    // HTTP/2: status, header names in order, body.
    let mut ours = H2Client::connect(l.addr).await;
    let mut theirs = H2Client::connect(nginx_addr).await;
    for (method, path, headers) in [
        ("GET", "/", vec![]),
        ("GET", "/favicon.ico", vec![]),
        ("GET", "/nope", vec![]),
        ("POST", "/", vec![]),
        ("HEAD", "/style.css", vec![]),
        ("GET", "/", vec![("if-none-match", etag.as_str())]),
        (
            "POST",
            LINK_PATH,
            vec![
                ("content-type", LINK_CONTENT_TYPE),
                ("authorization", "Bearer AAAA"),
            ],
        ),
    ] {
        let a = ours.request(method, path, &headers, b"").await;
        let b = theirs.request(method, path, &headers, b"").await;
        if a != b {
            differences.push(format!(
                "HTTP/2 {method} {path}:\n--- umbra\n{a:?}\n--- nginx\n{b:?}"
            ));
        }
    }

    // Not TLS at all, and broken TLS: the same bytes back (alerts
    // included) and the same close.
    let junk = |first: &[u8], n: u32| {
        let mut v = first.to_vec();
        v.extend((0..n).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        v
    };
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    for (what, bytes) in [
        (
            "plain request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("junk", junk(&[b'#', (seed & 0x7f) as u8], 510)),
        ("0x16 then junk", junk(&[0x16], 2047)),
        (
            "record of junk",
            junk(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x7e], 511),
        ),
        (
            "ClientHello of junk",
            junk(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc], 508),
        ),
        (
            "tiny ClientHello",
            vec![0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00],
        ),
        ("0x16, 0x03 then junk", junk(&[0x16, 0x03], 2046)),
        ("0x80 then junk", junk(&[0x80, 0x00, 0x00], 2045)),
        ("0xff then junk", junk(&[0xff, 0x00, 0x00], 2045)),
        (
            "SSLv2 hello, incomplete",
            junk(&[0x8f, 0x10, 0x01, 0x03, 0x01], 500),
        ),
        (
            "SSLv2 hello of junk",
            junk(&[0x80, 0x40, 0x01, 0x03, 0x01], 61),
        ),
        (
            "SSLv2 hello, too short",
            junk(&[0x80, 0x04, 0x01, 0x03, 0x01], 1),
        ),
        (
            "SSLv2 hello, huge",
            junk(&[0xff, 0xff, 0x01, 0x03, 0x01], 500),
        ),
        ("SSLv2 longest", junk(&[0xc1, 0x40, 0x01, 0x03, 0x01], 500)),
        (
            "SSLv2 one too long",
            junk(&[0xc1, 0x41, 0x01, 0x03, 0x01], 500),
        ),
        (
            "TLS longest",
            junk(&[0x16, 0x03, 0x01, 0x41, 0x40, 0x02], 500),
        ),
        (
            "TLS one too long",
            junk(&[0x16, 0x03, 0x01, 0x41, 0x41, 0x02], 500),
        ),
        (
            "TLS incomplete",
            junk(&[0x16, 0x03, 0x01, 0x04, 0x00, 0x02], 500),
        ),
        ("SSLv2 hello", sslv2_hello(0x0301, 3, 0, 16, 0)),
        ("SSLv2 hello, SSL 2.0", sslv2_hello(0x0002, 3, 0, 16, 0)),
        ("SSLv2 hello, SSL 3.0", sslv2_hello(0x0300, 3, 0, 16, 0)),
        ("SSLv2 hello, TLS 1.2", sslv2_hello(0x0303, 3, 0, 16, 0)),
        ("SSLv2 hello, TLS 1.3", sslv2_hello(0x0304, 3, 0, 16, 0)),
        (
            "SSLv2 hello, version 3.255",
            sslv2_hello(0x03ff, 3, 0, 16, 0),
        ),
        (
            "SSLv2 hello, short challenge",
            sslv2_hello(0x0301, 3, 0, 8, 0),
        ),
        (
            "SSLv2 hello, long session ID",
            sslv2_hello(0x0303, 3, 33, 16, 0),
        ),
        ("SSLv2 hello, extra byte", sslv2_hello(0x0301, 3, 0, 16, 1)),
        ("SSLv2 hello, no ciphers", sslv2_hello(0x0301, 0, 0, 32, 0)),
        ("SSLv2 hello, odd ciphers", sslv2_hello(0x0301, 4, 0, 32, 0)),
        ("SSLv2 min", junk(&[0x80, 0x09, 0x01, 0x03, 0x01], 500)),
        ("SSLv2 min-1", junk(&[0x80, 0x08, 0x01, 0x03, 0x01], 500)),
    ] {
        let (a, end_a) = tcp_probe_end(l.addr, &bytes, Duration::from_secs(2)).await;
        let (b, end_b) = tcp_probe_end(nginx_addr, &bytes, Duration::from_secs(2)).await;
        let (a, b) = (without_dates(&a), without_dates(&b));
        if std::env::var_os("UMBRA_SHOW_PROBES").is_some() {
            eprintln!("== TCP {what}\n--- umbra ({end_a})\n{a:?}\n--- nginx ({end_b})\n{b:?}");
        }
        if a != b || end_a != end_b {
            differences.push(format!(
                "TCP {what}:\n--- umbra ({end_a})\n{a:?}\n--- nginx ({end_b})\n{b:?}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "umbra differs from nginx:\n{}",
        differences.join("\n\n")
    );
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: notes.example.org\r\nConnection: close\r\n\r\n")
}

/// A whole SSLv2-form ClientHello record with the given version and field
/// lengths (zero-filled), and `extra` bytes after them.
fn sslv2_hello(version: u16, ciphers: u16, session_id: u16, challenge: u16, extra: u16) -> Vec<u8> {
    let mut body = vec![0x01];
    for v in [version, ciphers, session_id, challenge] {
        body.extend(v.to_be_bytes());
    }
    body.resize(
        body.len() + usize::from(ciphers + session_id + challenge + extra),
        0,
    );
    let len = body.len() as u16 | 0x8000;
    let mut record = len.to_be_bytes().to_vec();
    record.extend(body);
    record
}
