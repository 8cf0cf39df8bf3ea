//! The probe test (docs/threat-model.md, "What a prober sees": the
//! listener is a web server first): a prober namespace sends the same probes, with real CLI tools,
//! to a node whose cover is an upstream nginx and to that nginx serving
//! the same files over TLS itself. Everything it sees must be the same,
//! `Date` aside: status, header names and order, bodies, TLS handshake
//! parameters, alerts and close behaviour.
//!
//! Hosts: the node on `198.18.60.1:443` (its upstream nginx on
//! `127.0.0.1:8080` in the same namespace), the reference nginx on
//! `198.18.60.3:443` with the node's own certificate, the prober on
//! `198.18.60.2`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use umbra_netlab::NginxConfig;
use umbra_tests::netns::{
    Daemon, Netns, Proc, netns, prepare, require_root, spawn_test_helper, succeeds_within,
    temp_dir, test_role, veth,
};

const NODE_IP: &str = "198.18.60.1";
const REFERENCE_IP: &str = "198.18.60.3";

/// The name the prober asks for (SNI and `Host`).
const SITE: &str = "notes.example.org";

/// How long a raw probe waits for an answer or a close.
const RAW_WAIT_SECS: &str = "3";

/// The link path and content type (transport's `LINK_PATH`,
/// `LINK_CONTENT_TYPE`).
const LINK_PATH: &str = "/api/v2/stream";
const LINK_CONTENT_TYPE: &str = "application/grpc";

/// Blanks `Date` header values (any case) in a printable answer.
fn without_dates(text: &str) -> String {
    text.split('\n')
        .map(|l| {
            if l.to_ascii_lowercase().starts_with("date:") {
                "date: -\r"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The cover files, copied from the built-in site, with one fixed
/// modification time (so `ETag` and `Last-Modified` are stable).
fn write_site(dir: &Path) {
    std::fs::create_dir_all(dir).expect("www");
    let cover = Path::new(env!("CARGO_MANIFEST_DIR")).join("../transport/cover");
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for entry in std::fs::read_dir(&cover).expect("transport/cover") {
        let entry = entry.expect("entry");
        let to = dir.join(entry.file_name());
        std::fs::copy(entry.path(), &to).expect("copy");
        std::fs::File::options()
            .write(true)
            .open(&to)
            .and_then(|f| f.set_modified(mtime))
            .expect("mtime");
    }
}

/// nginx, one process (`master_process off`), with two sites on the same
/// files: plain HTTP on 127.0.0.1:8080 (the node's upstream) and TLS 1.3
/// on the reference address with the node's certificate.
fn start_nginx(ns: &Netns, dir: &Path, www: &Path, cert: &Path, key: &Path) -> Proc {
    let args = NginxConfig::new(dir)
        .http("127.0.0.1:8080", www)
        .https(&format!("{REFERENCE_IP}:443"), cert, key, www)
        .write()
        .expect("nginx.conf");
    let mut cmd = ns.command(Path::new("nginx"));
    cmd.args(&args);
    let child = Proc::spawn(cmd, &dir.join("nginx.out"))
        .expect("spawn nginx (apt-get install nginx-light)");
    // Up when both ports answer.
    for _ in 0..100 {
        let up = ["127.0.0.1:8080", &format!("{REFERENCE_IP}:443")]
            .iter()
            .all(|a| {
                let (h, p) = a.split_once(':').expect("host:port");
                ns.command(Path::new("bash"))
                    .args(["-c", &format!("exec 3<>/dev/tcp/{h}/{p}")])
                    .status()
                    .is_ok_and(|s| s.success())
            });
        if up {
            return child;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "nginx did not start; error log:\n{}",
        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    );
}

/// What one CLI probe printed, as text with dates blanked, plus its exit
/// status.
fn run_in(ns: &Netns, args: &[String]) -> String {
    let out = ns
        .command(Path::new(&args[0]))
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    format!(
        "{}[exit {}]",
        without_dates(&String::from_utf8_lossy(&out.stdout)),
        out.status.code().unwrap_or(-1)
    )
}

/// `curl -i` probes: `(what, args after "curl", url path)`. `{ip}` in an
/// argument is the target's address.
fn curl_probes() -> Vec<(&'static str, Vec<String>)> {
    let forged: String = {
        // A bearer of a plausible message-1 length (base64url), made up.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..150)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let a = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                char::from(a[(x % 64) as usize])
            })
            .collect()
    };
    let site = |rest: &[&str], path: &str| -> Vec<String> {
        let mut v = vec!["--resolve".to_string(), format!("{SITE}:443:{{ip}}")];
        v.extend(rest.iter().map(|s| s.to_string()));
        v.push(format!("https://{SITE}{path}"));
        v
    };
    let link = |version: &str| -> Vec<String> {
        site(
            &[
                version,
                "-X",
                "POST",
                "-H",
                &format!("content-type: {LINK_CONTENT_TYPE}"),
                "-H",
                &format!("authorization: Bearer {forged}"),
                "--data-binary",
                "",
            ],
            LINK_PATH,
        )
    };
    vec![
        ("HTTP/1.1 GET /", site(&["--http1.1"], "/")),
        (
            "HTTP/1.1 GET /robots.txt",
            site(&["--http1.1"], "/robots.txt"),
        ),
        (
            "HTTP/1.1 GET /missing",
            site(&["--http1.1"], "/wp-login.php"),
        ),
        (
            "HTTP/1.1 HEAD /style.css",
            site(&["--http1.1", "-I"], "/style.css"),
        ),
        (
            "HTTP/1.1 POST /",
            site(&["--http1.1", "--data-binary", "hi"], "/"),
        ),
        ("HTTP/2 GET /", site(&["--http2"], "/")),
        (
            "HTTP/2 GET /favicon.ico",
            site(&["--http2"], "/favicon.ico"),
        ),
        ("HTTP/2 GET /missing", site(&["--http2"], "/wp-login.php")),
        ("HTTP/2 HEAD /", site(&["--http2", "-I"], "/")),
        (
            "HTTP/2 range",
            site(&["--http2", "-H", "range: bytes=2-5"], "/robots.txt"),
        ),
        (
            "no SNI, HTTP/2",
            vec!["--http2".to_string(), "https://{ip}/".to_string()],
        ),
        (
            "no SNI, HTTP/1.1",
            vec!["--http1.1".to_string(), "https://{ip}/".to_string()],
        ),
        (
            "wrong SNI",
            vec![
                "--connect-to".to_string(),
                "wrong.example.net:443:{ip}:443".to_string(),
                "https://wrong.example.net/".to_string(),
            ],
        ),
        ("forged token, HTTP/2", link("--http2")),
        ("forged token, HTTP/1.1", link("--http1.1")),
    ]
}

/// The certificate-independent facts `openssl s_client` prints about a
/// handshake.
fn s_client_facts(ns: &Netns, ip: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "openssl".to_string(),
        "s_client".to_string(),
        "-connect".to_string(),
        format!("{ip}:443"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = ns
        .command(Path::new("openssl"))
        .args(&args[1..])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    // Not the session blocks ("Protocol :", "Cipher :"): s_client prints one
    // per session ticket that arrives before it quits, which is timing, on
    // both servers. "New, TLSv1.3, Cipher is …" names both.
    let keep = [
        "New, ",
        "ALPN",
        "Server Temp Key",
        "Peer signature type",
        "Verify return code",
        "Secure Renegotiation",
        "Early data",
    ];
    let mut facts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| keep.iter().any(|k| l.starts_with(k)))
        .map(str::to_string)
        .collect();
    let mut seen = std::collections::HashSet::new();
    facts.retain(|f| seen.insert(f.clone()));
    facts.push(format!(
        "handshake read: {}",
        text.contains("SSL handshake has read")
    ));
    facts.join("\n")
}

/// Sends `file` over plain TCP with bash's `/dev/tcp` and reports what came
/// back (hex, or text with dates blanked) and how the connection ended.
fn raw_probe(ns: &Netns, ip: &str, file: &Path, out: &Path) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/{ip}/443 || exit 99; cat '{}' >&3; timeout {RAW_WAIT_SECS} cat <&3 > '{}'",
        file.display(),
        out.display()
    );
    let status = ns
        .command(Path::new("bash"))
        .args(["-c", &script])
        .stdin(Stdio::null())
        .status()
        .expect("bash");
    let ended = match status.code() {
        Some(0) => "closed".to_string(),
        Some(124) => format!("still open after {RAW_WAIT_SECS} s"),
        Some(1) => "reset".to_string(),
        other => format!("exit {other:?}"),
    };
    let got = std::fs::read(out).unwrap_or_default();
    let shown = if got.is_empty() {
        "nothing".to_string()
    } else if got
        .iter()
        .all(|&b| b == b'\r' || b == b'\n' || (0x20..0x7f).contains(&b))
    {
        without_dates(&String::from_utf8_lossy(&got))
    } else {
        format!("{} bytes: {}", got.len(), hex::encode(&got))
    };
    format!("{shown}\n[{ended}]")
}

/// 2 KiB of random bytes from a seeded generator, starting with `first`.
fn random_bytes(first: u8, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = vec![first];
    v.extend((1..2048).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 24) as u8
    }));
    v
}

struct Setup {
    // Drop order: the daemon and nginx before their namespaces.
    node: Daemon,
    _nginx: Proc,
    prober: Netns,
    _node_ns: Netns,
    dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let (node_ns, prober) = (netns("pn"), netns("pp"));
    let (node_ip, _) = veth(&node_ns, &prober, 60);
    assert_eq!(node_ip, NODE_IP);
    let iface = node_ns.iface_with_addr(NODE_IP).expect("interface");
    node_ns
        .exec(&[
            "ip",
            "addr",
            "add",
            &format!("{REFERENCE_IP}/24"),
            "dev",
            &iface,
        ])
        .expect("command in the namespace");
    let dir = temp_dir("probe");
    let www = dir.path().join("www");
    write_site(&www);
    let mut node = prepare(
        &dir.path().join("node"),
        &format!(
            "[tun]\nenabled = false\n[listen]\nhttps = [\"{NODE_IP}:443\"]\n\
             [cover]\nupstream = \"http://127.0.0.1:8080\"\n"
        ),
    );
    node.start(&node_ns).expect("umbra run starts");
    let cert = node.state_dir.join("tls-cert.pem");
    let key = node.state_dir.join("tls-key.pem");
    assert!(cert.exists(), "the node made no self-signed certificate");
    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).expect("nginx dir");
    let nginx = start_nginx(&node_ns, &nginx_dir, &www, &cert, &key);
    Setup {
        node,
        _nginx: nginx,
        prober,
        _node_ns: node_ns,
        dir,
    }
}

#[test]
fn a_prober_sees_the_same_as_from_nginx_in_upstream_mode() {
    if let Some(role) = test_role() {
        replay::run(&role);
        return;
    }
    require_root();
    let s = setup();
    let mut differences = Vec::new();
    let mut seen = String::new();
    let mut compare = |what: &str, node: String, reference: String| {
        seen.push_str(&format!("== {what}\n{node}\n"));
        if node != reference {
            differences.push(format!(
                "{what}:\n--- node (upstream mode)\n{node}\n--- nginx\n{reference}"
            ));
        }
    };

    // curl: HTTP/1.1, HTTP/2, no SNI, a wrong SNI, a forged token.
    for (what, args) in curl_probes() {
        let for_ip = |ip: &str| {
            let mut full = vec![
                "curl".to_string(),
                "-sk".to_string(),
                "-i".to_string(),
                "--max-time".to_string(),
                "10".to_string(),
            ];
            full.extend(args.iter().map(|a| a.replace("{ip}", ip)));
            run_in(&s.prober, &full)
        };
        compare(what, for_ip(NODE_IP), for_ip(REFERENCE_IP));
    }

    // openssl s_client: that a handshake completes, and with what.
    for (what, extra) in [
        (
            "s_client, SNI and ALPN",
            vec!["-servername", SITE, "-alpn", "h2,http/1.1"],
        ),
        ("s_client, no SNI, no ALPN", vec!["-noservername"]),
        ("s_client, ALPN http/1.1 only", vec!["-alpn", "http/1.1"]),
        ("s_client, TLS 1.2 only", vec!["-tls1_2"]),
    ] {
        compare(
            what,
            s_client_facts(&s.prober, NODE_IP, &extra),
            s_client_facts(&s.prober, REFERENCE_IP, &extra),
        );
    }

    // Raw bytes: 2 KiB of random bytes (three kinds of first byte, as
    // nginx tells them apart: text, a TLS record, an SSLv2 header) and
    // half a ClientHello.
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut half_hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    half_hello.extend(random_bytes(0, seed ^ 0x55).into_iter().take(250));
    for (what, bytes) in [
        ("2 KiB random, first byte '#'", random_bytes(b'#', seed)),
        ("2 KiB random, first byte 0x16", random_bytes(0x16, seed)),
        ("2 KiB random, first byte 0x8f", random_bytes(0x8f, seed)),
        ("half a ClientHello", half_hello),
    ] {
        let file = s.dir.path().join("raw.in");
        std::fs::write(&file, &bytes).expect("raw probe");
        let out = s.dir.path().join("raw.out");
        compare(
            &format!("{what} (seed {seed})"),
            raw_probe(&s.prober, NODE_IP, &file, &out),
            raw_probe(&s.prober, REFERENCE_IP, &file, &out),
        );
    }

    // A valid message 1, then the same bytes replayed, from the transport
    // crate in a helper process in the prober's namespace.
    let log = s.dir.path().join("replay.log");
    let key = s.node.key().expect("the node key");
    let mut helper = spawn_test_helper(
        &s.prober,
        "a_prober_sees_the_same_as_from_nginx_in_upstream_mode",
        "replay",
        &[("UMBRA_PROBE_NODE_KEY", key.as_str())],
        &log,
    );
    let replay_ok = succeeds_within(&mut helper, Duration::from_secs(60));
    let replay_log = std::fs::read_to_string(&log).unwrap_or_default();
    seen.push_str(&format!("== replay helper\n{replay_log}\n"));
    if !replay_ok {
        differences.push(format!("replayed link request:\n{replay_log}"));
    }
    // The node's log says which refusals the helper's requests met (the
    // log is coloured: drop the escape sequences first).
    let node_log = strip_ansi(&s.node.log_text());
    for reason in ["NotAuthorized", "Replay", "BadHandshake"] {
        if !node_log.contains(&format!("reason={reason}")) {
            differences.push(format!(
                "the node never logged a link request refused for {reason}"
            ));
        }
    }

    if std::env::var_os("UMBRA_SHOW_PROBES").is_some() {
        eprintln!("{seen}");
    }
    assert!(
        differences.is_empty(),
        "the node differs from nginx:\n\n{}\n\nnode log:\n{}",
        differences.join("\n\n"),
        s.node.log_text()
    );
}

/// `text` without ANSI escape sequences (`ESC [ … letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The replayed link request, run in the prober's namespace: a message 1
/// that authenticates (Noise IK to the node's key, bound to this TLS
/// connection's exporter, fresh timestamp) from a key the node has no
/// agreement with, sent as a link request over HTTP/2; then the same
/// request again on the same connection (the replay cache refuses it), and
/// on a second connection (the exporter binding refuses it). nginx gets
/// the same three requests. Each answer must equal nginx's, `Date` aside.
mod replay {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::SystemTime;

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls::pki_types::ServerName;
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use umbra_routing::crypto::Identity;
    use umbra_transport::io::{LINK_EXPORTER_LABEL, LINK_EXPORTER_LEN, client_tls_config};
    use umbra_transport::proto::handshake::{LinkInitiator, encode_bearer};

    use super::{LINK_CONTENT_TYPE, LINK_PATH, NODE_IP, REFERENCE_IP, SITE};

    type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

    /// One HTTP/2 connection and its TLS exporter value.
    async fn connect(ip: &str) -> (Sender, [u8; 32]) {
        let mut config = (*client_tls_config().expect("TLS config")).clone();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let addr: SocketAddr = format!("{ip}:443").parse().expect("addr");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(SITE).expect("name"), tcp)
            .await
            .expect("TLS");
        let exporter = tls
            .get_ref()
            .1
            .export_keying_material([0u8; LINK_EXPORTER_LEN], LINK_EXPORTER_LABEL, None)
            .expect("exporter");
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/2");
        tokio::spawn(conn);
        (send, exporter)
    }

    /// Status, headers in order (`date` blanked) and body.
    async fn post(send: &mut Sender, bearer: &str) -> String {
        let req = hyper::Request::builder()
            .method("POST")
            .uri(format!("https://{SITE}{LINK_PATH}"))
            .header("content-type", LINK_CONTENT_TYPE)
            .header("authorization", bearer)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = send.send_request(req).await.expect("response");
        let mut out = format!("{}\n", resp.status());
        for (n, v) in resp.headers() {
            let v = if n == "date" {
                "-"
            } else {
                v.to_str().unwrap_or("?")
            };
            out.push_str(&format!("{n}: {v}\n"));
        }
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        out.push_str(&String::from_utf8_lossy(&body));
        out
    }

    /// The three answers of `ip`: first request, replay on the same
    /// connection, replay on a new one.
    async fn answers(ip: &str, node_key: &[u8; 32]) -> Vec<String> {
        let prober = Identity::generate();
        let (mut first, exporter) = connect(ip).await;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let (_initiator, msg1) =
            LinkInitiator::start(&prober, node_key, &exporter, now, b"").expect("message 1");
        let bearer = encode_bearer(&msg1);
        let a = post(&mut first, &bearer).await;
        let b = post(&mut first, &bearer).await;
        let (mut second, _) = connect(ip).await;
        let c = post(&mut second, &bearer).await;
        vec![a, b, c]
    }

    pub(super) fn run(role: &str) {
        assert_eq!(role, "replay", "unknown helper role");
        let key =
            hex::decode(std::env::var("UMBRA_PROBE_NODE_KEY").expect("node key")).expect("hex key");
        let key: [u8; 32] = key.try_into().expect("32-byte key");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (node, nginx) = rt.block_on(async {
            (
                answers(NODE_IP, &key).await,
                answers(REFERENCE_IP, &key).await,
            )
        });
        let names = [
            "valid message 1 (unknown key)",
            "the same, replayed on its connection",
            "the same, replayed on a new connection",
        ];
        let mut same = true;
        for ((what, n), r) in names.iter().zip(&node).zip(&nginx) {
            eprintln!("-- {what}\n{n}");
            if n != r {
                same = false;
                eprintln!("DIFFERS from nginx:\n{r}");
            }
        }
        assert!(same, "the node answered a replay unlike nginx");
    }
}
