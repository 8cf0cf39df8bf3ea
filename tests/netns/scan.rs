//! The scan test (docs/threat-model.md, "What a prober sees"): what an
//! internet-wide TLS scan learns from a node must be what it learns from a
//! stock nginx 1.22 on Debian 12 with Debian's TLS settings.
//!
//! One test per certificate source (self-signed, files, ACME). Each runs
//! three nodes, one per cover mode (built-in, `[cover] root`, `[cover]
//! upstream`), and one nginx process with
//! - the reference site: a stock nginx with Debian's `ssl_protocols` and
//!   `ssl_prefer_server_ciphers on`, serving the same files, with the
//!   certificate such an nginx would have: the snakeoil certificate
//!   `make-ssl-cert` makes for the host (self-signed), the operator's
//!   files, or the ACME certificate;
//! - for each node a site with that node's own certificate and key, for
//!   the byte comparisons;
//! - the plain-HTTP site the upstream node proxies to.
//!
//! From a prober namespace it then runs, against each node and the
//! reference, and compares field by field:
//! - `sslscan`, without and with SNI, all of its report but the
//!   certificate's own values (names, dates);
//! - `testssl.sh`, its whole JSON report but the certificate's own values
//!   (names, dates, key, serial, fingerprints) and the known differences
//!   ([`KNOWN_TESTSSL_DIFFERENCES`]);
//! - a fixed set of crafted ClientHellos, good, odd and broken
//!   (`scan_hello.rs`): the first answer byte for byte, apart from random
//!   fields, and how the connection ends;
//! - with a self-signed certificate, the certificate's ASN.1 structure
//!   against the snakeoil's.
//!
//! Hosts (`198.18.<subnet>.x`): `.1`, `.4`, `.5` the nodes (built-in, root,
//! upstream), `.3` the reference, `.6`, `.7`, `.8` the nodes' certificates
//! on nginx, `.2` the prober. With ACME, pebble and its mock DNS run in the
//! nodes' namespace on 127.0.0.1.

#[path = "scan_hello.rs"]
mod scan_hello;

use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use umbra_netlab::NginxConfig;
use umbra_tests::netns::{
    Daemon, Netns, Proc, netns, prepare, require_root, spawn_test_helper, succeeds_within,
    temp_dir, test_role, veth, wait_for,
};

/// The nodes' cover modes and their last address byte.
const COVERS: [(&str, u8); 3] = [("built-in", 1), ("root", 4), ("upstream", 5)];

/// The reference nginx's last address byte.
const REFERENCE_HOST: u8 = 3;

/// The last address byte of the nginx site with node `i`'s certificate.
const SAME_CERT_HOST_BASE: u8 = 6;

/// The port the upstream node proxies to (nginx, plain HTTP, loopback).
const UPSTREAM: &str = "127.0.0.1:8080";

/// ACME domains, one per node (`.test` is reserved, RFC 2606).
const ACME_DOMAINS: [&str; 3] = ["n1.umbra.test", "n4.umbra.test", "n5.umbra.test"];

/// The name in the operator's certificate files.
const FILES_NAME: &str = "www.umbra.test";

/// How long ACME issuance may take.
const ISSUE_WAIT: Duration = Duration::from_secs(90);

/// How long the crafted-hello helper may take.
const HELLOS_WAIT: Duration = Duration::from_secs(600);

/// How often a testssl finding that depends on timing is measured again
/// on each side before a difference counts.
const RACY_RUNS: usize = 4;

/// testssl findings that are the certificate's own values: blanked on both
/// sides.
const CERT_VALUE_IDS: [&str; 9] = [
    "cert",
    "cert_fingerprintSHA1",
    "cert_fingerprintSHA256",
    "cert_serialNumber",
    "cert_notBefore",
    "cert_notAfter",
    "cert_commonName",
    "cert_subjectAltName",
    "intermediate_cert",
];

/// The testssl sections run again with SNI: server defaults (certificate,
/// extensions, tickets, session resumption) and the header response.
const SNI_SECTIONS: [&str; 2] = ["-S", "-h"];

/// testssl findings about the run itself, not the server: blanked.
const RUN_IDS: [&str; 1] = ["scanTime"];

/// testssl findings whose value is a race of testssl's own client against
/// the server (`openssl s_client` quits as soon as its standard input ends,
/// so whether a session ticket arrived first is timing) or the clock: a
/// difference in one run is measured again, [`RACY_RUNS`] times a side, and
/// counts only if the two sides never gave the same value.
const RACY_IDS: [&str; 3] = [
    "sessionresumption_ID",
    "sessionresumption_ticket",
    "HTTP_clock_skew",
];

/// The known differences from nginx in testssl's report: `(id, nginx's
/// finding, the node's finding, why)`. The test fails if one of them
/// changes (fixed: remove it here and in docs/threat-model.md).
const KNOWN_TESTSSL_DIFFERENCES: [(&str, &str, &str, &str); 0] = [];

/// Which certificate the nodes have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    SelfSigned,
    Files,
    Acme,
}

struct Node {
    cover: &'static str,
    ip: String,
    same_cert_ip: String,
    /// The name its certificate is for (the SNI of the probes with one).
    name: String,
    daemon: Daemon,
}

struct Lab {
    // Drop order: daemons and servers before their namespaces.
    nodes: Vec<Node>,
    _procs: Vec<Proc>,
    reference_ip: String,
    reference_name: String,
    ec_key: bool,
    prober: Netns,
    _node_ns: Netns,
    dir: tempfile::TempDir,
}

/// Runs a command; panics with its output if it fails. Returns stdout.
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    run(
        Command::new("openssl").current_dir(dir).args(args),
        &format!("openssl {args:?}"),
    )
}

/// The cover files with one fixed modification time.
fn write_site(dir: &Path) {
    fs::create_dir_all(dir).expect("www");
    let cover = Path::new(env!("CARGO_MANIFEST_DIR")).join("../transport/cover");
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for entry in fs::read_dir(&cover).expect("transport/cover") {
        let entry = entry.expect("entry");
        let to = dir.join(entry.file_name());
        fs::copy(entry.path(), &to).expect("copy");
        fs::File::options()
            .write(true)
            .open(&to)
            .and_then(|f| f.set_modified(mtime))
            .expect("mtime");
    }
}

/// The common name of the certificate in `pem`.
fn common_name(pem: &Path) -> String {
    let subject = openssl(
        Path::new("/"),
        &[
            "x509",
            "-noout",
            "-subject",
            "-nameopt",
            "multiline",
            "-in",
            &pem.display().to_string(),
        ],
    );
    subject
        .lines()
        .find_map(|l| l.trim().strip_prefix("commonName"))
        .map(|v| v.trim().trim_start_matches('=').trim().to_string())
        .unwrap_or_default()
}

/// What Debian's `make-ssl-cert generate-default-snakeoil` makes for host
/// `name`: `openssl req` with the `ssl-cert` package's template, written
/// to `dir` instead of `/etc/ssl`.
fn make_snakeoil(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let template = fs::read_to_string("/usr/share/ssl-cert/ssleay.cnf")
        .expect("the ssl-cert package's template (apt-get install ssl-cert)");
    let cnf = template
        .replace("@HostName@", name)
        .replace("@SubjectAltName@", &format!("DNS:{name}"));
    fs::write(dir.join("ssleay.cnf"), cnf).expect("write the template");
    openssl(
        dir,
        &[
            "req",
            "-config",
            "ssleay.cnf",
            "-new",
            "-x509",
            "-days",
            "3650",
            "-nodes",
            "-sha256",
            "-out",
            "snakeoil.pem",
            "-keyout",
            "snakeoil.key",
        ],
    );
    (dir.join("snakeoil.pem"), dir.join("snakeoil.key"))
}

/// An operator's certificate files: an RSA 2048 leaf for [`FILES_NAME`]
/// signed by a test CA, the chain leaf first.
fn make_files(dir: &Path) -> (PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=umbra test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            &format!("/CN={FILES_NAME}"),
        ],
    );
    fs::write(
        dir.join("leaf.ext"),
        format!("subjectAltName=DNS:{FILES_NAME}\nextendedKeyUsage=serverAuth\n"),
    )
    .expect("leaf.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ],
    );
    let chain = [
        fs::read(dir.join("leaf.pem")).expect("leaf"),
        fs::read(dir.join("ca.pem")).expect("ca"),
    ]
    .concat();
    fs::write(dir.join("chain.pem"), chain).expect("chain");
    (dir.join("chain.pem"), dir.join("leaf.key"))
}

/// Pebble and its mock DNS in `ns` on 127.0.0.1, every name answered with
/// `default_ip` except the other nodes' domains. Returns the processes, the
/// CA file for pebble's own HTTPS and pebble's root.
fn start_pebble(ns: &Netns, dir: &Path, ips: &[String]) -> (Vec<Proc>, String, String) {
    const P256: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let args = |rest: &[&str]| -> Vec<String> { rest.iter().map(|s| s.to_string()).collect() };
    let mut a = args(&["req", "-x509"]);
    a.extend(args(&P256));
    a.extend(args(&[
        "-nodes",
        "-keyout",
        "wfeca.key",
        "-out",
        "wfeca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=umbra test ACME CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]));
    openssl(dir, &a.iter().map(String::as_str).collect::<Vec<_>>());
    let mut a = args(&["req"]);
    a.extend(args(&P256));
    a.extend(args(&[
        "-nodes",
        "-keyout",
        "wfe.key",
        "-out",
        "wfe.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]));
    openssl(dir, &a.iter().map(String::as_str).collect::<Vec<_>>());
    fs::write(
        dir.join("wfe.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("wfe.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "wfe.csr",
            "-CA",
            "wfeca.pem",
            "-CAkey",
            "wfeca.key",
            "-set_serial",
            "1",
            "-days",
            "2",
            "-extfile",
            "wfe.ext",
            "-out",
            "wfe.pem",
        ],
    );
    let mut dns = ns.command("pebble-challtestsrv");
    dns.args(["-defaultIPv4", &ips[0], "-defaultIPv6", ""])
        .args([
            "-dns01",
            "127.0.0.1:8053",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
        ])
        .args(["-management", "127.0.0.1:8055"]);
    let dns = Proc::spawn(dns, &dir.join("challtestsrv.log")).expect("spawn pebble-challtestsrv");
    let config = serde_json::json!({"pebble": {
        "listenAddress": "127.0.0.1:14000",
        "managementListenAddress": "127.0.0.1:15000",
        "certificate": dir.join("wfe.pem"),
        "privateKey": dir.join("wfe.key"),
        "httpPort": 80,
        "tlsPort": 443,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    fs::write(dir.join("pebble.json"), config.to_string()).expect("pebble.json");
    let mut pebble = ns.command("pebble");
    pebble
        .arg("-config")
        .arg(dir.join("pebble.json"))
        .args(["-dnsserver", "127.0.0.1:8053"])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0");
    let pebble = Proc::spawn(pebble, &dir.join("pebble.log")).expect("spawn pebble");
    let wfe_ca = dir.join("wfeca.pem").display().to_string();
    // The other nodes' names, and pebble's root once it answers.
    let root = dir.join("pebble-root.pem").display().to_string();
    wait_for(
        Duration::from_secs(20),
        "pebble and its mock DNS",
        &[],
        || {
            let mut ok = true;
            for (domain, ip) in ACME_DOMAINS.iter().zip(ips).skip(1) {
                let body = format!("{{\"host\":\"{domain}.\",\"addresses\":[\"{ip}\"]}}");
                ok &= ns
                    .run(&["curl", "-sf", "-d", &body, "http://127.0.0.1:8055/add-a"])
                    .is_ok_and(|o| o.status.success());
            }
            ok &= ns
                .run(&[
                    "curl",
                    "-sf",
                    "--cacert",
                    &wfe_ca,
                    "-o",
                    &root,
                    "https://127.0.0.1:15000/roots/0",
                ])
                .is_ok_and(|o| o.status.success());
            ok.then_some(())
        },
    );
    (vec![pebble, dns], wfe_ca, root)
}

/// Whether the node at `ip` serves a certificate for `domain` that verifies
/// against `root`.
fn serves_verified(ns: &Netns, ip: &str, domain: &str, root: &str) -> bool {
    ns.run(&[
        "openssl",
        "s_client",
        "-connect",
        &format!("{ip}:443"),
        "-servername",
        domain,
        "-verify_hostname",
        domain,
        "-CAfile",
        root,
        "-verify_return_error",
    ])
    .is_ok_and(|o| o.status.success())
}

/// Splits rustls-acme's cached certificate (the key, then the chain) into
/// the two files nginx takes.
fn acme_files(state_dir: &Path, out: &Path) -> (PathBuf, PathBuf) {
    let cache = state_dir.join("acme");
    let cached = fs::read_dir(&cache)
        .expect("state_dir/acme")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("cached_cert_"))
        .expect("a cached certificate");
    let text = fs::read_to_string(cached.path()).expect("read the cached certificate");
    let split = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate block");
    fs::create_dir_all(out).expect("dir");
    fs::write(out.join("key.pem"), &text[..split]).expect("key");
    fs::write(out.join("chain.pem"), &text[split..]).expect("chain");
    (out.join("chain.pem"), out.join("key.pem"))
}

fn setup(source: Source, subnet: u8) -> Lab {
    let (node_ns, prober) = (netns("sn"), netns("sp"));
    let (first_ip, _) = veth(&node_ns, &prober, subnet);
    let ip = |host: u8| format!("198.18.{subnet}.{host}");
    assert_eq!(first_ip, ip(1));
    let iface = node_ns.iface_with_addr(&first_ip).expect("interface");
    let mut extra: Vec<u8> = vec![REFERENCE_HOST, 4, 5];
    extra.extend((0..3).map(|i| SAME_CERT_HOST_BASE + i));
    for host in extra {
        node_ns
            .exec(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", ip(host)),
                "dev",
                &iface,
            ])
            .expect("address");
    }
    let dir = temp_dir("scan");
    let www = dir.path().join("www");
    write_site(&www);
    let node_ips: Vec<String> = COVERS.iter().map(|(_, h)| ip(*h)).collect();

    let mut procs = Vec::new();
    let mut listen_extra = vec![String::new(); 3];
    let files = dir.path().join("files");
    fs::create_dir_all(&files).expect("files dir");
    match source {
        Source::SelfSigned => {}
        Source::Files => {
            let (chain, key) = make_files(&files);
            for l in &mut listen_extra {
                *l = format!(
                    "cert = \"{}\"\nkey = \"{}\"\n",
                    chain.display(),
                    key.display()
                );
            }
        }
        Source::Acme => {
            let (p, wfe_ca, _) = start_pebble(&node_ns, &files, &node_ips);
            procs.extend(p);
            for (l, domain) in listen_extra.iter_mut().zip(ACME_DOMAINS) {
                *l = format!(
                    "server_name = \"{domain}\"\nacme = true\n\
                     acme_directory = \"https://127.0.0.1:14000/dir\"\n\
                     acme_email = \"ops@umbra.test\"\nacme_ca = \"{wfe_ca}\"\n"
                );
            }
        }
    }
    // nginx's plain site first: the upstream node's cover proxies to it.
    let nginx_dir = dir.path().join("nginx");
    fs::create_dir_all(&nginx_dir).expect("nginx dir");

    let mut nodes = Vec::new();
    for (i, ((cover, host), extra)) in COVERS.iter().zip(&listen_extra).enumerate() {
        let cover_toml = match *cover {
            "root" => format!("[cover]\nroot = \"{}\"\n", www.display()),
            "upstream" => format!("[cover]\nupstream = \"http://{UPSTREAM}\"\n"),
            _ => String::new(),
        };
        let mut d = prepare(
            &dir.path().join(format!("node-{cover}")),
            &format!(
                "[tun]\nenabled = false\n[listen]\nhttps = [\"{}:443\"]\n{extra}{cover_toml}",
                ip(*host)
            ),
        );
        d.start(&node_ns).expect("umbra run starts");
        nodes.push(Node {
            cover,
            ip: ip(*host),
            same_cert_ip: ip(SAME_CERT_HOST_BASE + i as u8),
            name: String::new(),
            daemon: d,
        });
    }

    // Each node's certificate and key as files, and its name.
    let mut node_files = Vec::new();
    for (i, n) in nodes.iter_mut().enumerate() {
        let (chain, key) = match source {
            Source::SelfSigned => (
                n.daemon.state_dir.join("tls-cert.pem"),
                n.daemon.state_dir.join("tls-key.pem"),
            ),
            Source::Files => (files.join("chain.pem"), files.join("leaf.key")),
            Source::Acme => {
                let root = files.join("pebble-root.pem").display().to_string();
                let (ip, domain) = (n.ip.clone(), ACME_DOMAINS[i]);
                wait_for(
                    ISSUE_WAIT,
                    &format!("the {} node to serve pebble's certificate", n.cover),
                    &[&n.daemon],
                    || serves_verified(&prober, &ip, domain, &root).then_some(()),
                );
                acme_files(
                    &n.daemon.state_dir,
                    &files.join(format!("acme-{}", n.cover)),
                )
            }
        };
        n.name = common_name(&chain);
        node_files.push((chain, key));
    }
    let ec_key = openssl(
        Path::new("/"),
        &[
            "x509",
            "-noout",
            "-text",
            "-in",
            &node_files[0].0.display().to_string(),
        ],
    )
    .contains("id-ecPublicKey");

    // The reference's certificate: what a stock nginx would have.
    let (ref_chain, ref_key) = match source {
        Source::SelfSigned => make_snakeoil(&files, &nodes[0].name),
        _ => node_files[0].clone(),
    };
    let reference_name = common_name(&ref_chain);
    let mut config = NginxConfig::new(&nginx_dir).http(UPSTREAM, &www).https(
        &format!("{}:443", ip(REFERENCE_HOST)),
        &ref_chain,
        &ref_key,
        &www,
    );
    for (n, (chain, key)) in nodes.iter().zip(&node_files) {
        config = config.https(&format!("{}:443", n.same_cert_ip), chain, key, &www);
    }
    let args = config.write().expect("nginx.conf");
    let mut cmd = node_ns.command("nginx");
    cmd.args(&args);
    procs.push(Proc::spawn(cmd, &nginx_dir.join("nginx.out")).expect("spawn nginx"));
    wait_for(Duration::from_secs(20), "nginx", &[], || {
        node_ns.listens_tcp(443).then_some(())?;
        prober
            .run(&[
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{}/443", ip(REFERENCE_HOST)),
            ])
            .is_ok_and(|o| o.status.success())
            .then_some(())
    });
    Lab {
        nodes,
        _procs: procs,
        reference_ip: ip(REFERENCE_HOST),
        reference_name,
        ec_key,
        prober,
        _node_ns: node_ns,
        dir,
    }
}

// ---- sslscan ----

/// sslscan's report of `ip` (with SNI `name`, or sslscan's default, the
/// address, when `None`), with the target's address and name and the
/// certificate's own values blanked.
fn sslscan(ns: &Netns, ip: &str, name: Option<&str>) -> String {
    let mut args = vec!["sslscan".to_string(), "--no-colour".to_string()];
    if let Some(n) = name {
        args.push(format!("--sni-name={n}"));
    }
    args.push(ip.to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ns.run(&refs).expect("sslscan (apt-get install sslscan)");
    let text = String::from_utf8_lossy(&out.stdout).replace(ip, "<ip>");
    let text = match name {
        Some(n) => text.replace(n, "<name>"),
        None => text,
    };
    text.lines()
        .filter(|l| {
            ![
                "Subject:",
                "Altnames:",
                "Issuer:",
                "Not valid before:",
                "Not valid after:",
            ]
            .iter()
            .any(|p| l.trim_start().starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- testssl.sh ----

/// One testssl finding: `(id, severity, finding)`.
type Finding = (String, String, String);

/// A testssl run in progress: it writes its JSON report to `json`.
struct TestsslRun {
    child: std::process::Child,
    json: PathBuf,
    ip: String,
    name: Option<String>,
}

/// Starts testssl against `ip` (or, with `name`, `--ip ip https://name`, so
/// it sends SNI) with `extra` options, writing `testssl-<tag>.json` in
/// `dir`.
fn spawn_testssl(
    ns: &Netns,
    dir: &Path,
    tag: &str,
    ip: &str,
    name: Option<&str>,
    extra: &[&str],
) -> TestsslRun {
    let json = dir.join(format!("testssl-{tag}.json"));
    let _ = fs::remove_file(&json);
    let mut cmd = ns.command("testssl");
    cmd.args([
        "--quiet",
        "--color",
        "0",
        "--warnings",
        "off",
        "--nodns",
        "none",
    ])
    .args(extra)
    .arg("--jsonfile")
    .arg(&json);
    match name {
        Some(n) => cmd.args(["--ip", ip, &format!("https://{n}")]),
        None => cmd.arg(ip),
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("testssl (apt-get install testssl.sh)");
    TestsslRun {
        child,
        json,
        ip: ip.to_string(),
        name: name.map(str::to_string),
    }
}

/// Waits for a testssl run and returns its findings in order, with the
/// certificate's own values blanked and the target's address and name
/// replaced.
fn finish_testssl(mut run: TestsslRun) -> Vec<Finding> {
    let status = run.child.wait().expect("testssl");
    let text = fs::read_to_string(&run.json)
        .unwrap_or_else(|e| panic!("testssl ({status}) wrote no {}: {e}", run.json.display()));
    let v: serde_json::Value = serde_json::from_str(&text).expect("testssl JSON");
    let findings = v.as_array().cloned().unwrap_or_default();
    let fingerprints: Vec<String> = findings
        .iter()
        .filter(|f| {
            f["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("cert_fingerprint"))
        })
        .filter_map(|f| f["finding"].as_str().map(str::to_string))
        .collect();
    findings
        .iter()
        .map(|f| {
            let id = f["id"].as_str().unwrap_or_default().to_string();
            let severity = f["severity"].as_str().unwrap_or_default().to_string();
            let mut finding = f["finding"].as_str().unwrap_or_default().to_string();
            if CERT_VALUE_IDS.iter().any(|c| id.starts_with(c)) {
                finding = "<certificate value>".to_string();
            }
            if RUN_IDS.contains(&id.as_str()) {
                finding = "<run>".to_string();
            }
            for fp in &fingerprints {
                finding = finding.replace(fp.as_str(), "<fingerprint>");
            }
            finding = finding.replace(&run.ip, "<ip>");
            if let Some(n) = &run.name {
                finding = finding.replace(n.as_str(), "<name>");
            }
            (id, severity, finding)
        })
        .collect()
}

/// What a racy finding gave over several runs: nginx's values, the node's.
type Recheck<'a> = dyn Fn(&str) -> (BTreeSet<String>, BTreeSet<String>) + 'a;

/// The differences between two testssl reports, after the known
/// differences (which must be there exactly) and after measuring racy
/// findings again with `recheck`.
fn testssl_differences(
    what: &str,
    reference: &[Finding],
    node: &[Finding],
    recheck: &Recheck<'_>,
) -> Vec<String> {
    let mut out = Vec::new();
    let ids = |r: &[Finding]| -> Vec<String> { r.iter().map(|(id, _, _)| id.clone()).collect() };
    if ids(reference) != ids(node) {
        out.push(format!(
            "{what}: testssl's findings differ in their ids:\n--- nginx\n{:?}\n--- node\n{:?}",
            ids(reference),
            ids(node)
        ));
        return out;
    }
    for (a, b) in reference.iter().zip(node) {
        if a == b {
            continue;
        }
        let id = a.0.as_str();
        let known = KNOWN_TESTSSL_DIFFERENCES.iter().find(|k| k.0 == id);
        if known.is_some_and(|(_, nginx, ours, _)| a.2 == *nginx && b.2 == *ours) {
            continue;
        }
        if RACY_IDS.contains(&id) {
            let (r, n) = recheck(id);
            if !r.is_disjoint(&n) {
                continue;
            }
            out.push(format!("{what}: {id}: nginx gave {r:?}, the node {n:?}"));
            continue;
        }
        out.push(format!("{what}: {id}:\n  nginx: {a:?}\n  node:  {b:?}"));
    }
    for (id, nginx, _, _) in KNOWN_TESTSSL_DIFFERENCES {
        if let Some(a) = reference.iter().find(|f| f.0 == id) {
            let b = node.iter().find(|f| f.0 == id);
            if a.2 != nginx || b.map(|b| b.2.as_str()) == Some(nginx) {
                out.push(format!(
                    "{what}: the known difference {id} changed (nginx {:?}, node {:?}): \
                     update KNOWN_TESTSSL_DIFFERENCES and docs/threat-model.md",
                    a.2,
                    b.map(|b| &b.2)
                ));
            }
        }
    }
    out
}

/// The values of the racy findings ([`RACY_IDS`]) over [`RACY_RUNS`] runs
/// of testssl's server defaults and headers (`-S -h`) against each of
/// `targets` (`(tag, ip)`), all targets at once: per target, per id, the
/// set of values seen.
fn racy_values(
    ns: &Netns,
    dir: &Path,
    targets: &[(String, String)],
) -> Vec<std::collections::BTreeMap<String, BTreeSet<String>>> {
    let mut seen = vec![std::collections::BTreeMap::new(); targets.len()];
    for i in 0..RACY_RUNS {
        let runs: Vec<TestsslRun> = targets
            .iter()
            .map(|(tag, ip)| {
                spawn_testssl(ns, dir, &format!("{tag}-S{i}"), ip, None, &["-S", "-h"])
            })
            .collect();
        for (run, values) in runs.into_iter().zip(&mut seen) {
            for (id, _, finding) in finish_testssl(run) {
                if RACY_IDS.contains(&id.as_str()) {
                    values
                        .entry(id)
                        .or_insert_with(BTreeSet::new)
                        .insert(finding);
                }
            }
        }
    }
    seen
}

// ---- the certificate ----

/// The ASN.1 structure of a certificate, values and lengths blanked.
fn asn1_shape(pem: &Path) -> String {
    let text = openssl(
        Path::new("/"),
        &["asn1parse", "-in", &pem.display().to_string()],
    );
    text.lines()
        .map(|l| {
            let l = l.split_once(':').map_or(l, |(_, rest)| rest);
            let l = match l.find("hl=") {
                Some(at) => &l[at..],
                None => l,
            };
            let mut parts: Vec<&str> = l.split_whitespace().collect();
            parts.retain(|p| !p.starts_with("l=") && !p.chars().all(|c| c.is_ascii_digit()));
            let mut s = parts.join(" ");
            for kind in [
                "INTEGER",
                "UTCTIME",
                "UTF8STRING",
                "[HEX DUMP]",
                "BIT STRING",
            ] {
                if let Some(at) = s.find(kind) {
                    s.truncate(at + kind.len());
                }
            }
            s
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- the test ----

fn scan_test(source: Source, subnet: u8, test_name: &str) {
    if let Some(role) = test_role() {
        hellos_helper(&role);
        return;
    }
    require_root();
    for bin in ["nginx", "sslscan", "testssl", "openssl", "curl"] {
        assert!(
            umbra_netlab::has_tool(bin),
            "this test needs `{bin}` (scripts/test installs it)"
        );
    }
    let lab = setup(source, subnet);
    let mut differences: Vec<String> = Vec::new();
    let mut seen = String::new();
    let out = lab.dir.path().to_path_buf();

    // The certificate: a self-signed one has the snakeoil's structure.
    if source == Source::SelfSigned {
        let snakeoil = asn1_shape(&lab.dir.path().join("files/snakeoil.pem"));
        for n in &lab.nodes {
            let ours = asn1_shape(&n.daemon.state_dir.join("tls-cert.pem"));
            if ours != snakeoil {
                differences.push(format!(
                    "{} node's certificate:\n--- snakeoil\n{snakeoil}\n--- node\n{ours}",
                    n.cover
                ));
            }
        }
    }

    // The crafted hellos, from a helper in the prober's namespace, all
    // three nodes at once.
    let pairs: Vec<String> = lab
        .nodes
        .iter()
        .map(|n| format!("{},{},{},{}", n.cover, n.ip, n.same_cert_ip, n.name))
        .collect();
    let report = out.join("hellos.txt");
    let log = out.join("hellos.log");
    let mut helper = spawn_test_helper(
        &lab.prober,
        test_name,
        "hellos",
        &[
            ("UMBRA_SCAN_PAIRS", pairs.join(";").as_str()),
            ("UMBRA_SCAN_EC", if lab.ec_key { "1" } else { "0" }),
            ("UMBRA_SCAN_OUT", &report.display().to_string()),
        ],
        &log,
    );

    // testssl, all at once: the whole default run against the reference
    // and each node, and with SNI the server defaults and headers (the
    // sections that SNI and the certificate can change) against the
    // reference and the built-in node.
    let mut runs = vec![
        (
            "reference".to_string(),
            spawn_testssl(&lab.prober, &out, "reference", &lab.reference_ip, None, &[]),
        ),
        (
            "reference-sni".to_string(),
            spawn_testssl(
                &lab.prober,
                &out,
                "reference-sni",
                &lab.reference_ip,
                Some(&lab.reference_name),
                &SNI_SECTIONS,
            ),
        ),
    ];
    for (i, n) in lab.nodes.iter().enumerate() {
        runs.push((
            n.cover.to_string(),
            spawn_testssl(&lab.prober, &out, n.cover, &n.ip, None, &[]),
        ));
        if i == 0 {
            runs.push((
                format!("{}-sni", n.cover),
                spawn_testssl(
                    &lab.prober,
                    &out,
                    &format!("{}-sni", n.cover),
                    &n.ip,
                    Some(&n.name),
                    &SNI_SECTIONS,
                ),
            ));
        }
    }

    // Meanwhile sslscan, without SNI (it sends the address) and with the
    // name, one run at a time.
    for n in &lab.nodes {
        for (sni, ref_sni) in [
            (None, None),
            (Some(n.name.as_str()), Some(lab.reference_name.as_str())),
        ] {
            let what = format!(
                "sslscan, {} node, {}",
                n.cover,
                if sni.is_some() { "SNI" } else { "no SNI" }
            );
            let a = sslscan(&lab.prober, &lab.reference_ip, ref_sni);
            let b = sslscan(&lab.prober, &n.ip, sni);
            seen.push_str(&format!("== {what}\n{b}\n"));
            if a != b {
                differences.push(format!("{what}:\n--- nginx\n{a}\n--- node\n{b}"));
            }
        }
    }

    let reports: std::collections::BTreeMap<String, Vec<Finding>> = runs
        .into_iter()
        .map(|(tag, run)| (tag, finish_testssl(run)))
        .collect();
    let pairs: Vec<(String, &str, &str)> = lab
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| {
            let mut p = vec![(
                format!("testssl, {} node, no SNI", n.cover),
                "reference",
                n.cover,
            )];
            if i == 0 {
                p.push((
                    format!("testssl, {} node, SNI", n.cover),
                    "reference-sni",
                    "built-in-sni",
                ));
            }
            p
        })
        .collect();
    // Racy findings that differ are measured again, every side at once.
    let racy_differ = pairs.iter().any(|(_, a, b)| {
        reports[*a]
            .iter()
            .zip(&reports[*b])
            .any(|(x, y)| x != y && RACY_IDS.contains(&x.0.as_str()))
    });
    let mut racy = std::collections::BTreeMap::new();
    if racy_differ {
        let mut targets = vec![("reference".to_string(), lab.reference_ip.clone())];
        targets.extend(
            lab.nodes
                .iter()
                .map(|n| (n.cover.to_string(), n.ip.clone())),
        );
        let values = racy_values(&lab.prober, &out, &targets);
        for ((tag, _), v) in targets.into_iter().zip(values) {
            racy.insert(tag, v);
        }
    }
    for (what, a, b) in &pairs {
        let b_side = b.trim_end_matches("-sni");
        seen.push_str(&format!("== {what}\n{:?}\n", reports[*b]));
        let recheck = |id: &str| {
            let get = |side: &str| {
                racy.get(side)
                    .and_then(|v: &std::collections::BTreeMap<String, BTreeSet<String>>| v.get(id))
                    .cloned()
                    .unwrap_or_default()
            };
            (get("reference"), get(b_side))
        };
        differences.extend(testssl_differences(
            what,
            &reports[*a],
            &reports[*b],
            &recheck,
        ));
    }

    // The crafted hellos' answers.
    assert!(
        succeeds_within(&mut helper, HELLOS_WAIT),
        "the hello helper failed:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    let report = fs::read_to_string(&report).expect("the hello report");
    seen.push_str(&report);
    differences.extend(
        report
            .split("\n=== ")
            .filter(|block| block.contains("\n--- nginx\n"))
            .map(|block| format!("crafted hello {block}")),
    );

    if std::env::var_os("UMBRA_SHOW_PROBES").is_some() {
        eprintln!("{seen}");
    }
    assert!(
        differences.is_empty(),
        "a scanner tells the node from nginx:\n\n{}\n\nnode logs:\n{}",
        differences.join("\n\n"),
        lab.nodes
            .iter()
            .map(|n| n.daemon.log_tail(20))
            .collect::<Vec<_>>()
            .join("\n-----\n")
    );
}

/// The helper in the prober's namespace: every crafted hello to each node
/// and to nginx with that node's certificate. Writes one block per probe
/// that differs (`=== what`, then both answers) and one `ok` line per probe
/// that does not.
fn hellos_helper(role: &str) {
    assert_eq!(role, "hellos", "unknown helper role");
    let pairs = std::env::var("UMBRA_SCAN_PAIRS").expect("pairs");
    let ec_key = std::env::var("UMBRA_SCAN_EC").is_ok_and(|v| v == "1");
    let out = std::env::var("UMBRA_SCAN_OUT").expect("out");
    let threads: Vec<_> = pairs
        .split(';')
        .map(|pair| {
            let fields: Vec<String> = pair.split(',').map(str::to_string).collect();
            std::thread::spawn(move || {
                let [cover, node, reference, name] = fields.as_slice() else {
                    panic!("bad pair {fields:?}");
                };
                let addr = |ip: &str| -> SocketAddr { format!("{ip}:443").parse().expect("addr") };
                let mut report = String::new();
                for (what, bytes, sending) in scan_hello::probes(name) {
                    let ours = scan_hello::probe(addr(node), &bytes, sending, ec_key);
                    let theirs = scan_hello::probe(addr(reference), &bytes, sending, ec_key);
                    if ours == theirs {
                        report.push_str(&format!("ok {cover}: {what}\n{ours}\n"));
                    } else {
                        report.push_str(&format!(
                            "\n=== {cover} node, {what}\n--- nginx\n{theirs}\n--- node\n{ours}\n"
                        ));
                    }
                }
                report
            })
        })
        .collect();
    let report: String = threads
        .into_iter()
        .map(|t| t.join().expect("probe thread"))
        .collect();
    fs::write(out, report).expect("write the report");
}

#[test]
fn a_scan_sees_nginx_with_a_self_signed_certificate() {
    scan_test(
        Source::SelfSigned,
        61,
        "a_scan_sees_nginx_with_a_self_signed_certificate",
    );
}

#[test]
fn a_scan_sees_nginx_with_certificate_files() {
    scan_test(
        Source::Files,
        62,
        "a_scan_sees_nginx_with_certificate_files",
    );
}

#[test]
fn a_scan_sees_nginx_with_an_acme_certificate() {
    scan_test(
        Source::Acme,
        63,
        "a_scan_sees_nginx_with_an_acme_certificate",
    );
}
