//! XMPP federation over umbra by name (docs/architecture.md, "Names"):
//! stock Prosody (Debian 12's 0.12) on the two ends of a chain of five
//! nodes, each serving its node's `.umbra` name as its XMPP domain. A user
//! on one server sends a message to a user on the other: the sending server
//! finds the other by the SRV record of its domain from its node's DNS
//! responder, connects to the AAAA address over the TUN across three relays,
//! and the receiving server checks it by dialback the same way back.
//!
//! A second run puts the receiving server on a node without a TUN: Prosody
//! listens on loopback and umbra's `[[expose]]` forwards overlay port 5269
//! to it (docs/architecture.md, "Apps without the TUN"). That node cannot
//! dial back, and stock Prosody cannot dial through SOCKS5, so the servers
//! authenticate each other by certificates (SASL EXTERNAL, from a CA the
//! test makes) instead of dialback.
//!
//! The users are slixmpp clients (Debian's python3-slixmpp), from a small
//! script the test writes. Prosody and the clients are killed when the test
//! ends, failed or not, before the namespaces go.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use umbra_tests::netns::overlay::Overlay;
use umbra_tests::netns::{Netns, NetnsResolvConf, Proc, require_root};

/// How long the message may take from the sender's client to the
/// receiver's: the first one builds the s2s connection (an SRV and AAAA
/// lookup, a circuit across the chain, dialback back the other way).
const DELIVERY: Duration = Duration::from_secs(60);

/// How long Prosody or a client may take to start and log in.
const START: Duration = Duration::from_secs(30);

/// The Python that has Debian's python3-slixmpp; a `python3` earlier in
/// `PATH` (a pyenv, a venv) may not.
const PYTHON: &str = "/usr/bin/python3";

/// A client that logs in and either sends one message (`send`) or waits for
/// one with a given body (`recv`). Plain c2s on loopback: the client and its
/// server share a namespace, so no traffic of theirs leaves the host.
const CLIENT: &str = r#"
import asyncio, sys, time
import slixmpp

# client.py recv JID PASSWORD HOST PORT BODY TIMEOUT
# client.py send JID PASSWORD HOST PORT TO BODY TIMEOUT

class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, role, args):
        super().__init__(jid, password)
        self.role, self.args = role, args
        self.done = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("failed_auth", lambda _: self.finish("login failed"))
        self.add_event_handler("disconnected", lambda _: self.finish("disconnected"))

    def finish(self, result):
        if not self.done.done():
            self.done.set_result(result)

    async def on_start(self, _):
        self.send_presence()
        if self.role == "recv":
            print("ready", flush=True)
            return
        to, body = self.args
        self.send_message(mto=to, mbody=body, mtype="chat")
        print(f"sent at {time.time():.3f}", flush=True)
        # Give the stream time to carry it before closing.
        await asyncio.sleep(2)
        self.finish("ok")

    def on_message(self, msg):
        if self.role != "recv":
            return
        print(f"message type={msg['type']} from={msg['from']} body={msg['body']!r} "
              f"at {time.time():.3f}", flush=True)
        if msg["type"] in ("chat", "normal") and msg["body"] == self.args[0]:
            self.finish("ok")

def main():
    role, jid, password, host, port = sys.argv[1:6]
    rest, timeout = sys.argv[6:-1], float(sys.argv[-1])
    c = Client(jid, password, role, rest)
    c.connect(address=(host, int(port)), use_ssl=False, force_starttls=False,
              disable_starttls=True)
    loop = asyncio.get_event_loop()
    try:
        result = loop.run_until_complete(asyncio.wait_for(c.done, timeout))
    except asyncio.TimeoutError:
        result = "timed out"
    print(result, flush=True)
    c.disconnect()
    sys.exit(0 if result == "ok" else 1)

main()
"#;

/// A Prosody server in a namespace, with its own config, data and pid file
/// under `dir`; killed on drop (its [`Proc`]).
struct Prosody {
    proc: Proc,
    config: PathBuf,
}

impl Prosody {
    /// Writes the config for `domain`, with s2s on `s2s_addr` and c2s on
    /// 127.0.0.1, registers `users` (name, password), and starts Prosody in
    /// `ns` once they exist.
    /// With `ca`, s2s runs over TLS with the domain's certificate from
    /// `ca` ([`Ca::issue`]), and peers are authenticated by theirs.
    fn start(
        ns: &Netns,
        dir: &Path,
        domain: &str,
        s2s_addr: &str,
        users: &[(&str, &str)],
        ca: Option<&Ca>,
    ) -> Prosody {
        let data = dir.join("data");
        let certs = dir.join("certs");
        for d in [&data, &certs] {
            std::fs::create_dir_all(d).expect("prosody dirs");
        }
        let config = dir.join("prosody.cfg.lua");
        let auth = if ca.is_some() {
            "\"tls\""
        } else {
            "\"dialback\""
        };
        let s2s_security = match ca {
            None => NO_TLS.to_string(),
            Some(ca) => {
                ca.issue(domain, &certs);
                format!(
                    "-- Domains authenticated by their certificates (SASL EXTERNAL; no\n\
                     -- dialback module), so the receiving server never connects back.\n\
                     s2s_require_encryption = true\n\
                     s2s_secure_auth = true\n\
                     ssl = {{ cafile = \"{}\" }}\n",
                    ca.cert.display()
                )
            }
        };
        let text = format!(
            r#"-- Written by tests/netns/xmpp.rs.
-- The test runs as root, and Prosody refuses root unless told.
run_as_root = true
pidfile = "{pid}"
data_path = "{data}"
-- The domain's certificate, if any: Prosody looks nowhere else.
certificates = "{certs}"
log = {{ {{ levels = {{ min = "debug" }}, to = "console" }} }}
modules_enabled = {{ "roster", "saslauth", "disco", "ping", {auth} }}
c2s_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ 5222 }}
s2s_interfaces = {{ "{s2s_addr}" }}
s2s_ports = {{ 5269 }}
{s2s_security}-- Clients log in over loopback in the same namespace, without TLS.
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
VirtualHost "{domain}"
"#,
            pid = dir.join("prosody.pid").display(),
            data = data.display(),
            certs = certs.display(),
        );
        std::fs::write(&config, text).expect("write the prosody config");
        let cfg = config.to_str().expect("a UTF-8 path");
        for (user, password) in users {
            let out = ns
                .run(&[
                    "prosodyctl",
                    "--config",
                    cfg,
                    "register",
                    user,
                    domain,
                    password,
                ])
                .expect("run prosodyctl (apt-get install prosody)");
            assert!(
                out.status.success(),
                "prosodyctl register {user}@{domain}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut cmd = ns.command("prosody");
        cmd.args(["--config", cfg, "-F"]);
        let proc = Proc::spawn(cmd, &dir.join("prosody.log")).expect("start prosody");
        let p = Prosody { proc, config };
        let up = Instant::now();
        while !(ns.listens_tcp(5222) && ns.listens_tcp(5269)) {
            assert!(
                up.elapsed() < START && !p.proc.exited(),
                "prosody did not listen on 5222 and 5269 ({}):\n{}",
                p.config.display(),
                p.proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }
}

/// Server to server without TLS, domains authenticated by dialback.
const NO_TLS: &str = "\
-- Server to server without TLS, domains authenticated by dialback. The
-- overlay already encrypts end to end and authenticates the ends: a .umbra
-- name is its key's, the address too, and a packet from an address arrives
-- only over a session that authenticated that key, a forged source being
-- dropped (docs/protocol.md, \"Identity and addresses\" and \"Sessions\"). TLS
-- with self-signed certificates, which Prosody could not verify, would add
-- nothing but a second layer of encryption.
s2s_require_encryption = false
s2s_secure_auth = false
";

/// A certificate authority made with openssl for one test, whose
/// certificates both servers trust.
struct Ca {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Ca {
    fn new(dir: &Path) -> Ca {
        std::fs::create_dir_all(dir).expect("ca dir");
        let ca = Ca {
            dir: dir.to_path_buf(),
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=umbra test CA",
            "-keyout",
            path(&ca.key),
            "-out",
            path(&ca.cert),
        ]);
        ca
    }

    /// `certs/<domain>.crt` and `.key`, where Prosody's `certificates`
    /// directory looks for them: the domain as CN and dNSName.
    fn issue(&self, domain: &str, certs: &Path) {
        let key = certs.join(format!("{domain}.key"));
        let crt = certs.join(format!("{domain}.crt"));
        let csr = self.dir.join(format!("{domain}.csr"));
        let ext = self.dir.join(format!("{domain}.ext"));
        std::fs::write(&ext, format!("subjectAltName = DNS:{domain}\n")).expect("ext");
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={domain}"),
            "-keyout",
            path(&key),
            "-out",
            path(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            path(&csr),
            "-CA",
            path(&self.cert),
            "-CAkey",
            path(&self.key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            path(&ext),
            "-out",
            path(&crt),
        ]);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a federation test varies: the chain, and how each end's umbra and
/// Prosody are set up.
struct Setup {
    /// Namespace tag.
    tag: &'static str,
    /// Nodes in the chain 0-1-…-(n-1); the servers are on the two ends.
    nodes: usize,
    /// More umbra config for node `i` (top level and tables), given whether
    /// it is an end.
    umbra_config: fn(i: usize, end: bool) -> String,
    /// The address Prosody on end node `i` listens on for s2s.
    s2s_addr: fn(o: &Overlay, i: usize) -> String,
    /// Certificates and SASL EXTERNAL instead of dialback: the receiving
    /// server never connects back.
    tls: bool,
}

/// The ends' umbra config of the plain variant: the shortest path, so the
/// circuit is the chain, and a DNS responder on 127.0.0.1:53 answering the
/// XMPP server SRV record for every name.
fn with_tun(_i: usize, end: bool) -> String {
    let dns = if end {
        "\n[dns]\nlisten = \"127.0.0.1:53\"\nsrv = { \"_xmpp-server._tcp\" = 5269 }\n"
    } else {
        ""
    };
    format!("anonymity = \"fast\"{dns}")
}

/// Runs the federation `setup` describes: user `a` on the first end's server
/// sends a message to user `b` on the last end's, which must receive it
/// within [`DELIVERY`]. Returns how long it took, from the sender's client
/// sending to the receiver's client receiving.
fn federate(setup: &Setup) -> Duration {
    let n = setup.nodes;
    let edges: Vec<(usize, usize)> = (1..n).map(|i| (i - 1, i)).collect();
    let ends = [0, n - 1];
    let o = Overlay::build(setup.tag, n, &edges, |i, _| {
        (setup.umbra_config)(i, ends.contains(&i))
    });
    let names: Vec<String> = ends
        .iter()
        .map(|&i| {
            o.status(i)["name"]
                .as_str()
                .expect("status names the node")
                .to_string()
        })
        .collect();
    // Each end's programs resolve through its node's responder.
    let _resolv: Vec<NetnsResolvConf> = ends
        .iter()
        .map(|&i| NetnsResolvConf::new(o.ns[i].name(), "nameserver 127.0.0.1\n"))
        .collect();
    let script = o.dir.path().join("client.py");
    std::fs::write(&script, CLIENT).expect("write the client");
    let script = script.to_str().expect("a UTF-8 path").to_string();
    let users = [("a", "secret-a"), ("b", "secret-b")];
    let ca = setup.tls.then(|| Ca::new(&o.dir.path().join("ca")));
    let servers: Vec<Prosody> = ends
        .iter()
        .zip(&names)
        .zip(users)
        .map(|((&i, domain), user)| {
            let dir = o.dir.path().join(format!("prosody{i}"));
            let addr = (setup.s2s_addr)(&o, i);
            Prosody::start(&o.ns[i], &dir, domain, &addr, &[user], ca.as_ref())
        })
        .collect();
    let diagnostics = |clients: &str| {
        let prosody: Vec<String> = servers
            .iter()
            .map(|p| format!("{}:\n{}", p.config.display(), p.proc.log_text()))
            .collect();
        format!(
            "{clients}\n===== prosody =====\n{}\n===== umbra =====\n{}",
            prosody.join("\n-----\n"),
            o.logs()
        )
    };

    let body = format!("hello from a@{} over umbra", names[0]);
    let secs = DELIVERY.as_secs().to_string();
    let b_jid = format!("b@{}", names[1]);
    let mut recv_cmd = o.ns[ends[1]].command(PYTHON);
    recv_cmd.args([
        &script,
        "recv",
        &b_jid,
        users[1].1,
        "127.0.0.1",
        "5222",
        &body,
        &secs,
    ]);
    let recv_log = o.dir.path().join("recv.log");
    let mut receiver = Proc::spawn(recv_cmd, &recv_log).expect("start the receiving client");
    let up = Instant::now();
    while !receiver.log_text().contains("ready") {
        assert!(
            up.elapsed() < START && !receiver.exited(),
            "b did not log in:\n{}",
            diagnostics(&receiver.log_text())
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let a_jid = format!("a@{}", names[0]);
    let sent = Instant::now();
    let send = o.ns[ends[0]]
        .run(&[
            PYTHON,
            &script,
            "send",
            &a_jid,
            users[0].1,
            "127.0.0.1",
            "5222",
            &b_jid,
            &body,
            &secs,
        ])
        .expect("run the sending client");
    let send_out =
        String::from_utf8_lossy(&send.stdout).into_owned() + &String::from_utf8_lossy(&send.stderr);
    assert!(
        send.status.success(),
        "a could not send:\n{}",
        diagnostics(&send_out)
    );
    let received = receiver
        .wait(DELIVERY.saturating_sub(sent.elapsed()) + Duration::from_secs(5))
        .is_some_and(|s| s.success());
    let waited = sent.elapsed();
    let recv_out = receiver.log_text();
    assert!(
        received,
        "b did not get {body:?} within {DELIVERY:?}:\nsender:\n{send_out}\nreceiver:\n{}",
        diagnostics(&recv_out)
    );
    // Python's repr of the body, as the receiver printed it.
    assert!(recv_out.contains(&format!("body='{body}'")), "{recv_out}");
    // From the clients' own clocks (one host): sent to received.
    let at = |text: &str, prefix: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|t| t.parse().ok())
    };
    let took = match (at(&send_out, "sent at"), at(&recv_out, "message ")) {
        (Some(s), Some(r)) if r >= s => Duration::from_secs_f64(r - s),
        _ => waited,
    };
    eprintln!(
        "a@{} -> b@{}: delivered in {:.2} s (the test waited {:.2} s from starting the sender)",
        names[0],
        names[1],
        took.as_secs_f64(),
        waited.as_secs_f64()
    );
    // It went server to server, each found through its node's responder:
    // the sender's by the SRV and AAAA records of the receiver's domain, the
    // receiver's by those of the sender's for dialback (with certificates,
    // the receiver looks nothing up). Without the SRV record Prosody would
    // fall back to the domain's AAAA on port 5269 and deliver all the same,
    // so the SRV answer is checked in Prosody's own debug log (its 0.12
    // wording), and no lookup may have missed.
    let link = format!("{}->{}", names[0], names[1]);
    let says = |server: &Prosody, what: &str| {
        assert!(
            server.proc.log_text().contains(what),
            "prosody did not log {what:?}:\n{}",
            diagnostics("")
        );
    };
    says(
        &servers[0],
        &format!("Outgoing s2s connection {link} complete"),
    );
    says(
        &servers[1],
        &format!("Incoming s2s connection {link} complete"),
    );
    let resolving = if setup.tls { 1 } else { 2 };
    for (server, other) in servers.iter().zip(names.iter().rev()).take(resolving) {
        says(
            server,
            &format!("Results for _xmpp-server._tcp.{other} IN SRV: 1 items"),
        );
    }
    // With TLS, Prosody first asks for direct-TLS s2s (XEP-0368), which the
    // responder was not told to answer: that one NXDOMAIN, no other.
    let missed = if setup.tls {
        says(
            &servers[0],
            &format!(
                "Results for _xmpps-server._tcp.{} IN SRV: NXDomain",
                names[1]
            ),
        );
        says(
            &servers[0],
            &format!("SASL EXTERNAL with {} succeeded", names[1]),
        );
        says(
            &servers[1],
            &format!("Accepting SASL EXTERNAL identity from {}", names[0]),
        );
        1
    } else {
        0
    };
    for &i in ends.iter().take(resolving) {
        let dns = &o.status(i)["dns"];
        assert!(
            dns["answered"].as_u64().unwrap_or(0) >= 2,
            "node {i}: {dns}"
        );
        assert_eq!(
            dns["nxdomain"],
            missed,
            "node {i}: {dns}\n{}",
            diagnostics("")
        );
    }
    // A receiver without a TUN took the stream on its exposed port.
    let receiver = o.status(ends[1]);
    if receiver["tun"].is_null() {
        let stack = &receiver["stack"];
        assert!(stack["accepted"].as_u64() >= Some(1), "{stack}");
    }
    // The message crossed the chain: the sending end's circuit to the other
    // end runs over every relay between them.
    let (hops, path) = o.path(ends[0], ends[1]);
    assert_eq!(hops, (1..n).collect::<Vec<_>>(), "{path}");
    took
}

#[test]
fn prosody_servers_federate_by_umbra_name_across_three_relays() {
    require_root();
    federate(&Setup {
        tag: "xm",
        nodes: 5,
        umbra_config: with_tun,
        s2s_addr: |o, i| o.addrs[i].clone(),
        tls: false,
    });
}

/// The receiving end without a TUN: its umbra exposes overlay port 5269 to
/// Prosody on loopback.
fn receiver_without_tun(i: usize, end: bool) -> String {
    if i == 0 {
        with_tun(i, end)
    } else if end {
        "anonymity = \"fast\"\n[tun]\nenabled = false\n\
         [[expose]]\nport = 5269\nto = \"127.0.0.1:5269\"\n"
            .to_string()
    } else {
        with_tun(i, end)
    }
}

#[test]
fn a_server_without_tun_receives_through_an_exposed_port() {
    require_root();
    federate(&Setup {
        tag: "xn",
        nodes: 5,
        umbra_config: receiver_without_tun,
        s2s_addr: |o, i| {
            if i == 0 {
                o.addrs[i].clone()
            } else {
                "127.0.0.1".to_string()
            }
        },
        tls: true,
    });
}
