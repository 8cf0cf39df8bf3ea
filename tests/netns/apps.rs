//! Apps without the TUN (docs/architecture.md, "Apps without the TUN"):
//! curl through the SOCKS5 proxy by `.umbra` name, from a node with no TUN,
//! fetches 20 MB from a stock nginx on another node's overlay address; and
//! a node with no TUN serves nginx on a loopback socket to the overlay
//! through `[[expose]]`, reached straight over a TUN and through SOCKS.
//! Bad SOCKS requests get the RFC's replies and are counted; the proxy
//! never reaches outside the overlay.

use std::path::Path;

use serde_json::Value;
use umbra_netlab::{NginxConfig, Proc};
use umbra_tests::netns::overlay::Overlay;
use umbra_tests::netns::require_root;

/// The file fetched: 20 MB of bytes that do not compress.
const FILE_BYTES: usize = 20 << 20;
const SOCKS: &str = "127.0.0.1:1080";

/// Writes `FILE_BYTES` of xorshift output to `dir/www/file` and returns
/// the `www` directory and the bytes.
fn file(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..FILE_BYTES / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    std::fs::write(www.join("file"), &bytes).expect("write the file");
    (www, bytes)
}

/// nginx in node `i`'s namespace on `listen` (port 8080 or 8081).
fn nginx(o: &Overlay, i: usize, listen: &str, port: u16, www: &Path) -> Proc {
    let dir = o.dir.path().join(format!("nginx{i}"));
    std::fs::create_dir_all(&dir).expect("nginx dir");
    NginxConfig::new(&dir)
        .http(listen, www)
        .start(&o.ns[i], port)
        .expect("nginx starts")
}

/// curl in node `i`'s namespace, `args` then `url`, the body to `out`;
/// returns whether it succeeded, what `-w` printed, and its stderr.
fn curl(o: &Overlay, i: usize, args: &[&str], url: &str, out: &Path) -> (bool, String, String) {
    let out = out.display().to_string();
    let mut full = vec![
        "curl",
        "-sS",
        "--max-time",
        "120",
        "-o",
        &out,
        "-w",
        "%{http_code} %{size_download} %{time_total}",
    ];
    full.extend_from_slice(args);
    full.push(url);
    let r = o.ns[i].run(&full).expect("run curl");
    (
        r.status.success(),
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
    )
}

/// Asserts that the fetch to `out` brought exactly `want`, and prints its
/// rate.
fn assert_fetched(what: &str, got: (bool, String, String), out: &Path, want: &[u8], o: &Overlay) {
    let (ok, w, err) = got;
    assert!(ok, "{what}: curl failed: {err} ({w})\nlogs:\n{}", o.logs());
    let body = std::fs::read(out).expect("curl's output");
    assert!(
        body == want,
        "{what}: {} bytes arrived, not the file's {}",
        body.len(),
        want.len()
    );
    let secs: f64 = w
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    eprintln!(
        "{what}: {} MB in {secs:.2} s ({:.1} Mbit/s)",
        want.len() >> 20,
        want.len() as f64 * 8.0 / secs.max(1e-9) / 1e6
    );
}

/// Bytes `printf` writes into the proxy from node `i`, and the first
/// `n` bytes that come back, in hex (bash's `/dev/tcp`).
fn raw_socks(o: &Overlay, i: usize, bytes: &str, n: usize) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/1080; printf '{bytes}' >&3; timeout 5 head -c {n} <&3 | od -An -tx1"
    );
    let out = o.ns[i].run(&["bash", "-c", &script]).expect("bash");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn socks_status(o: &Overlay, i: usize) -> Value {
    o.status(i)["socks"].clone()
}

#[test]
fn curl_fetches_20_mb_by_name_through_socks_on_a_node_without_tun() {
    require_root();
    // Two relays between the ends; node 0 has no TUN, only the proxy.
    let o = Overlay::build("so", 4, &[(0, 1), (1, 2), (2, 3)], |i, _| match i {
        0 => "anonymity = \"fast\"\n[tun]\nenabled = false\n[socks]\nlisten = \"127.0.0.1:1080\"\n"
            .to_string(),
        _ => "anonymity = \"fast\"\n".to_string(),
    });
    let (www, want) = file(o.dir.path());
    let _nginx = nginx(&o, 3, &format!("[{}]:8080", o.addrs[3]), 8080, &www);
    let name = o.status(3)["name"].as_str().expect("name").to_string();
    let out = o.dir.path().join("got");
    let socks = ["--socks5-hostname", SOCKS];
    let got = curl(&o, 0, &socks, &format!("http://{name}:8080/file"), &out);
    assert_fetched("SOCKS by name, no TUN", got, &out, &want, &o);
    assert!(o.status(0)["tun"].is_null(), "node 0 runs without a TUN");

    // Never outside the overlay, and never a name umbra does not know.
    let (ok, _, err) = curl(&o, 0, &socks, "http://example.com/", &out);
    assert!(!ok, "the proxy reached example.com: {err}");
    let (ok, _, err) = curl(&o, 0, &socks, "http://198.18.0.1:8080/", &out);
    assert!(!ok, "the proxy reached an IPv4 address: {err}");
    let (ok, _, err) = curl(&o, 0, &socks, "http://nobody.umbra:8080/", &out);
    assert!(!ok, "nobody.umbra resolved: {err}");
    // A command other than CONNECT (BIND): the RFC's reply 7. The
    // greeting's answer (05 00), then VER REP RSV ATYP and six zero bytes.
    let reply = raw_socks(
        &o,
        0,
        "\\x05\\x01\\x00\\x05\\x02\\x00\\x01\\x7f\\x00\\x00\\x01\\x00\\x50",
        12,
    );
    assert_eq!(reply, "05 00 05 07 00 01 00 00 00 00 00 00");
    // Not SOCKS at all: the connection just closes.
    let reply = raw_socks(&o, 0, "GET / HTTP/1.0\\r\\n\\r\\n", 12);
    assert_eq!(reply, "");
    let s = socks_status(&o, 0);
    eprintln!("socks: {s}");
    assert_eq!(s["connected"], 1, "{s}");
    assert_eq!(s["refused"], 3, "example.com, 198.18.0.1 and BIND: {s}");
    assert_eq!(s["unknown_names"], 1, "{s}");
    assert!(s["malformed"].as_u64() >= Some(1), "{s}");
    // Still serving after all that.
    let got = curl(&o, 0, &socks, &format!("http://{name}:8080/file"), &out);
    assert_fetched("SOCKS again", got, &out, &want, &o);
}

#[test]
fn an_exposed_port_serves_the_overlay_from_a_node_without_tun() {
    require_root();
    // Node 3 has no TUN: its nginx listens on loopback, exposed on 8080.
    // Node 0 has both a TUN and the proxy.
    let o = Overlay::build("ex", 4, &[(0, 1), (1, 2), (2, 3)], |i, _| {
        match i {
        0 => "anonymity = \"fast\"\n[socks]\nlisten = \"127.0.0.1:1080\"\n".to_string(),
        3 => "anonymity = \"fast\"\n[tun]\nenabled = false\n[[expose]]\nport = 8080\nto = \"127.0.0.1:8081\"\n"
            .to_string(),
        _ => "anonymity = \"fast\"\n".to_string(),
    }
    });
    let (www, want) = file(o.dir.path());
    let _nginx = nginx(&o, 3, "127.0.0.1:8081", 8081, &www);
    let out = o.dir.path().join("got");
    let url = format!("http://[{}]:8080/file", o.addrs[3]);
    let got = curl(&o, 0, &[], &url, &out);
    assert_fetched("over the TUN to an exposed port", got, &out, &want, &o);
    let name = o.status(3)["name"].as_str().expect("name").to_string();
    let got = curl(
        &o,
        0,
        &["--socks5-hostname", SOCKS],
        &format!("http://{name}:8080/file"),
        &out,
    );
    assert_fetched("SOCKS to an exposed port", got, &out, &want, &o);
    // The userspace stack answers ping for the node, and a port nobody
    // exposed gets a reset (curl: connection refused), not silence.
    assert!(o.ping(0, 3, 3), "ping to the node without a TUN");
    let t = std::time::Instant::now();
    let (ok, _, err) = curl(&o, 0, &[], &format!("http://[{}]:8081/", o.addrs[3]), &out);
    let refused_in = t.elapsed();
    assert!(
        !ok && err.contains("Couldn't connect") && refused_in.as_secs() < 5,
        "port 8081 over the overlay, after {refused_in:?}: {err}"
    );
    let stack = &o.status(3)["stack"];
    eprintln!("node 3's stack: {stack}");
    assert_eq!(stack["accepted"], 2, "{stack}");
}
