//! ACME certificates (docs/config.md, "[listen]"): a node with `acme = true`
//! gets its certificate from a real ACME server, Debian's `pebble`, by the
//! TLS-ALPN-01 challenge on its own port 443; a web client that trusts
//! pebble's root then sees the cover site; the certificate is kept in the
//! state directory and served again after a restart without a new order.
//!
//! Hosts: `ca` (198.18.60.1) runs pebble and `pebble-challtestsrv`, whose
//! mock DNS answers every name with the node's address; `node`
//! (198.18.60.2) runs `umbra run`.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use umbra_tests::netns::{Netns, Proc, netns, prepare, require_root, temp_dir, veth, wait_for};

/// The domain the node gets a certificate for (`.test` is reserved, RFC 2606).
const DOMAIN: &str = "node.umbra.test";

/// How long issuance may take: pebble validates at once (PEBBLE_VA_NOSLEEP),
/// and rustls-acme polls after 1, 2, 4… seconds.
const ISSUE_WAIT: Duration = Duration::from_secs(60);

/// Runs `openssl` in `dir` with space-separated `args`; panics if it fails.
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args.split(' '))
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a test CA and, signed by it, the certificate pebble's own HTTPS
/// (the ACME directory) serves for `ip`. Returns the CA file.
fn make_wfe_cert(dir: &Path, ip: &str) -> String {
    const P256: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    openssl(
        dir,
        &format!(
            "req -x509 {P256} -keyout ca.key -out ca.pem -days 2 -subj /CN=umbra-test-ACME-CA \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
        ),
    );
    openssl(
        dir,
        &format!("req {P256} -keyout wfe.key -out wfe.csr -subj /CN={ip}"),
    );
    fs::write(
        dir.join("wfe.ext"),
        format!(
            "subjectAltName=IP:{ip}\nbasicConstraints=critical,CA:FALSE\n\
             extendedKeyUsage=serverAuth\n"
        ),
    )
    .expect("write wfe.ext");
    openssl(
        dir,
        "x509 -req -in wfe.csr -CA ca.pem -CAkey ca.key -set_serial 1 -days 2 \
         -extfile wfe.ext -out wfe.pem",
    );
    dir.join("ca.pem").display().to_string()
}

/// Starts pebble and its mock DNS in `ns`; validation connects to port 443.
fn start_pebble(ns: &Netns, dir: &Path, ca_ip: &str, node_ip: &str) -> (Proc, Proc) {
    let dns = format!("{ca_ip}:8053");
    let mut challtestsrv = Command::new("ip");
    challtestsrv
        .args(["netns", "exec", ns.name(), "pebble-challtestsrv"])
        .args(["-defaultIPv4", node_ip, "-defaultIPv6", ""])
        .args([
            "-dns01",
            &dns,
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
        ])
        .args(["-management", &format!("{ca_ip}:8055")]);
    let challtestsrv = Proc::spawn(challtestsrv, &dir.join("challtestsrv.log"))
        .expect("spawn pebble-challtestsrv");
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("{ca_ip}:14000"),
        "managementListenAddress": format!("{ca_ip}:15000"),
        "certificate": dir.join("wfe.pem"),
        "privateKey": dir.join("wfe.key"),
        "httpPort": 80,
        "tlsPort": 443,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    fs::write(dir.join("pebble.json"), config.to_string()).expect("write pebble config");
    let mut pebble = Command::new("ip");
    pebble
        .args(["netns", "exec", ns.name(), "pebble", "-config"])
        .arg(dir.join("pebble.json"))
        .args(["-dnsserver", &dns])
        // Validate at once, and never reject a good nonce: fast and the same every run.
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0");
    let pebble = Proc::spawn(pebble, &dir.join("pebble.log")).expect("spawn pebble");
    (pebble, challtestsrv)
}

/// The leaf certificate the node serves for [`DOMAIN`], verified by
/// OpenSSL against `root`: its serial and issuer, or `None` while it does
/// not verify (the self-signed certificate before issuance).
fn served_cert(ns: &Netns, node_ip: &str, root: &str) -> Option<(String, String)> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "openssl", "s_client"])
        .args(["-connect", &format!("{node_ip}:443"), "-servername", DOMAIN])
        .args([
            "-verify_hostname",
            DOMAIN,
            "-CAfile",
            root,
            "-verify_return_error",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-issuer"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl x509");
    std::io::Write::write_all(
        x509.stdin.as_mut().expect("stdin"),
        text[begin..end].as_bytes(),
    )
    .expect("write cert");
    let out = x509.wait_with_output().expect("openssl x509");
    let info = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    Some((field("serial=")?, field("issuer=")?))
}

/// How many orders pebble has taken and certificates it has issued so far.
fn orders_and_issued(dir: &Path) -> (usize, usize) {
    let log = fs::read_to_string(dir.join("pebble.log")).unwrap_or_default();
    (
        log.matches("Added order").count(),
        log.matches("Issued certificate serial").count(),
    )
}

#[test]
fn acme_certificate_from_pebble_is_served_and_survives_a_restart() {
    require_root();
    for bin in ["pebble", "pebble-challtestsrv", "openssl", "curl"] {
        assert!(
            umbra_netlab::has_tool(bin),
            "this test needs `{bin}` (apt-get install pebble openssl curl)"
        );
    }
    let (ca, node) = (netns("ca"), netns("an"));
    let (ca_ip, node_ip) = veth(&ca, &node, 60);
    let dir = temp_dir("acme");
    let test_ca = make_wfe_cert(dir.path(), &ca_ip);
    let (_pebble, _dns) = start_pebble(&ca, dir.path(), &ca_ip, &node_ip);
    let pebble_log = || fs::read_to_string(dir.path().join("pebble.log")).unwrap_or_default();

    // Pebble makes a new root at every start; fetch it over its management port.
    let root = dir.path().join("pebble-root.pem").display().to_string();
    wait_for(Duration::from_secs(20), "pebble's root CA", &[], || {
        let mgmt = format!("https://{ca_ip}:15000/roots/0");
        let out = umbra_netlab::run(&[
            "ip",
            "netns",
            "exec",
            node.name(),
            "curl",
            "-sf",
            "--cacert",
            &test_ca,
            "-o",
            &root,
            &mgmt,
        ])
        .expect("run curl");
        out.status.success().then_some(())
    });

    let mut d = prepare(
        &dir.path().join("node"),
        &format!(
            "[tun]\nenabled = false\n[listen]\nhttps = [\"{node_ip}:443\"]\n\
             server_name = \"{DOMAIN}\"\nacme = true\n\
             acme_directory = \"https://{ca_ip}:14000/dir\"\n\
             acme_email = \"ops@umbra.test\"\nacme_ca = \"{test_ca}\"\n"
        ),
    );
    d.start(&node).expect("umbra run starts");

    let (serial, issuer) = wait_for(
        ISSUE_WAIT,
        "the node to serve a certificate from pebble",
        &[&d],
        || served_cert(&ca, &node_ip, &root),
    );
    assert!(
        issuer.contains("Pebble Intermediate CA"),
        "issuer {issuer:?}; pebble log:\n{}",
        pebble_log()
    );
    assert_eq!(
        orders_and_issued(dir.path()),
        (1, 1),
        "pebble log:\n{}",
        pebble_log()
    );

    // An ordinary web client that trusts pebble's root sees the cover site.
    let url = format!("https://{DOMAIN}/");
    let resolve = format!("{DOMAIN}:443:{node_ip}");
    let status = ca
        .exec(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "--cacert",
            &root,
            "--resolve",
            &resolve,
            &url,
        ])
        .expect("command in the namespace");
    assert_eq!(status, "200 2", "curl with pebble's root: {status}");

    // The certificate and the account are kept in the state directory, private.
    let cache = d.state_dir.join("acme");
    let files: Vec<String> = fs::read_dir(&cache)
        .expect("state_dir/acme")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.iter().any(|f| f.starts_with("cached_cert_"))
            && files.iter().any(|f| f.starts_with("cached_account_")),
        "state_dir/acme holds {files:?}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &fs::metadata(&cache).expect("metadata").permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "state_dir/acme mode {mode:o}");

    // After a restart the same certificate is served at once, with no new order.
    d.signal("TERM").expect("signal the daemon");
    assert!(
        d.wait(Duration::from_secs(10)).is_some(),
        "umbra run did not stop on SIGTERM; log:\n{}",
        d.log_text()
    );
    d.start(&node).expect("umbra run starts");
    let again = wait_for(
        Duration::from_secs(10),
        "the restarted node to serve pebble's certificate",
        &[&d],
        || served_cert(&ca, &node_ip, &root),
    );
    assert_eq!(again, (serial, issuer), "log:\n{}", d.log_text());
    assert!(
        d.log_text()
            .contains("ACME certificate loaded from the state directory"),
        "log:\n{}",
        d.log_text()
    );
    assert_eq!(
        orders_and_issued(dir.path()),
        (1, 1),
        "a new order after the restart; pebble log:\n{}",
        pebble_log()
    );
}
