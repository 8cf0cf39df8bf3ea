//! Names over the overlay (docs/architecture.md, "Names"): a node's
//! programs reach another node by its `.umbra` name through the system's
//! own resolver (glibc, `/etc/resolv.conf` naming the node's responder),
//! and `ping` by name crosses a circuit; with the usual resolver after it in
//! resolv.conf, other names fall through to that one; `dig` gets each kind
//! of answer from the responder over UDP and TCP, and a malformed packet is
//! counted.

use std::time::Duration;

use umbra_tests::netns::overlay::Overlay;
use umbra_tests::netns::{
    Daemon, Netns, NetnsResolvConf, Proc, netns, prepare, require_root, temp_dir, wait_for,
};

#[test]
fn a_program_reaches_another_node_by_its_umbra_name() {
    require_root();
    let o = Overlay::build("nm", 3, &[(0, 1), (1, 2)], |i, _| {
        let dns = if i == 0 {
            "\n[dns]\nlisten = \"127.0.0.1:53\"\n"
        } else {
            ""
        };
        format!("anonymity = \"fast\"{dns}")
    });
    let name = o.status(2)["name"]
        .as_str()
        .expect("status names the node")
        .to_string();
    let _conf = NetnsResolvConf::new(o.ns[0].name(), "nameserver 127.0.0.1\n");
    let out = o.ns[0].run(&["getent", "ahostsv6", &name]).expect("getent");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with(&o.addrs[2])),
        "getent ahostsv6 {name}: {text}"
    );
    let ping = o.ns[0]
        .run(&["ping", "-6", "-c", "3", "-W", "5", &name])
        .expect("ping");
    let said = String::from_utf8_lossy(&ping.stdout);
    eprintln!("{said}");
    assert!(
        ping.status.success(),
        "ping {name}: {said}\nlogs:\n{}",
        o.logs()
    );
    // A name outside .umbra gets nothing from the node's responder.
    let out = o.ns[0]
        .run(&["getent", "ahostsv6", "example.com"])
        .expect("getent");
    assert!(!out.status.success(), "example.com resolved through umbra");
}

/// `dig @127.0.0.1 ARGS` in `ns`: its whole output, which must come.
fn dig(ns: &Netns, args: &[&str]) -> String {
    let mut full = vec!["dig", "@127.0.0.1", "-p", "53", "+time=3", "+tries=2"];
    full.extend_from_slice(args);
    let out = ns
        .run(&full)
        .expect("run dig (apt-get install bind9-dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "dig {args:?} failed: {text}");
    text
}

/// The answer lines of `dig +short`, sorted.
fn short(ns: &Netns, args: &[&str]) -> Vec<String> {
    let mut full = vec!["+short"];
    full.extend_from_slice(args);
    let mut lines: Vec<String> = dig(ns, &full).lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// `umbra status --json`'s `dns` counter `key`.
fn counter(d: &Daemon, key: &str) -> u64 {
    let s = d.cli_json(&["status", "--json"]).expect("umbra cli");
    s["dns"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no dns.{key}: {s}"))
}

#[test]
fn dig_gets_every_kind_of_answer_over_udp_and_tcp() {
    require_root();
    let ns = netns("dig");
    let dir = temp_dir("dig");
    let pet = "07".repeat(32);
    // 6 strings of 200 bytes: over 1232 bytes in all, too large for UDP.
    let big = vec![format!("\"{}\"", "b".repeat(200)); 6].join(", ");
    let mut d = prepare(
        dir.path(),
        &format!(
            "[listen]\nhttps = []\n\
             [dns]\nlisten = \"127.0.0.1:53\"\nsrv = {{ \"_xmpp-server._tcp\" = 5269 }}\n\
             [dns.txt]\n_xmppconnect = \"_xmpp-client-websocket=wss://x.umbra/ws\"\n_big = [{big}]\n\
             [names]\nchat = \"{pet}\"\n"
        ),
    );
    d.start(&ns).expect("umbra run starts");
    let status = d.cli_json(&["status", "--json"]).expect("umbra cli");
    let name = status["name"].as_str().expect("name").to_string();
    let addr = status["address"].as_str().expect("address").to_string();
    let pet_addr = umbra_routing::address::address_for_key(&[7; 32], 0x06).to_string();

    for tcp in [&[][..], &["+tcp"][..]] {
        let ask = |rest: &[&str]| {
            let mut a = tcp.to_vec();
            a.extend_from_slice(rest);
            short(&ns, &a)
        };
        assert_eq!(ask(&["AAAA", &name]), vec![addr.clone()], "{tcp:?}");
        assert_eq!(ask(&["AAAA", "chat.umbra"]), vec![pet_addr.clone()]);
        assert_eq!(
            ask(&["SRV", &format!("_xmpp-server._tcp.{name}")]),
            vec![format!("0 0 5269 {name}.")]
        );
        assert_eq!(
            ask(&["TXT", &format!("_xmppconnect.{name}")]),
            vec!["\"_xmpp-client-websocket=wss://x.umbra/ws\"".to_string()]
        );
        let mut a = tcp.to_vec();
        a.extend_from_slice(&["AAAA", "nobody.umbra"]);
        let text = dig(&ns, &a);
        assert!(text.contains("status: NXDOMAIN"), "{text}");
        assert!(text.contains(" aa"), "not authoritative: {text}");
        let mut a = tcp.to_vec();
        a.extend_from_slice(&["AAAA", "example.com"]);
        let text = dig(&ns, &a);
        assert!(text.contains("status: REFUSED"), "{text}");
        assert!(!text.contains("ANSWER SECTION"), "{text}");
    }
    let over_tcp = counter(&d, "tcp_connections");
    assert!(over_tcp >= 6, "{over_tcp} TCP connections for 6 dig +tcp");

    // Too large for UDP: truncated there, whole over TCP, and dig falls back
    // to TCP by itself.
    let owner = format!("_big.{name}");
    let text = dig(&ns, &["+ignore", "TXT", &owner]);
    assert!(text.contains(" tc"), "not truncated over UDP: {text}");
    assert!(!text.contains("ANSWER SECTION"), "{text}");
    let whole = vec![format!("\"{}\"", "b".repeat(200)); 6];
    assert_eq!(short(&ns, &["TXT", &owner]), whole);
    assert_eq!(
        counter(&d, "tcp_connections"),
        over_tcp + 1,
        "dig retried over TCP"
    );

    // A packet that is not DNS gets no answer and is counted.
    assert_eq!(counter(&d, "dropped"), 0);
    ns.exec(&["bash", "-c", "printf 'not dns' > /dev/udp/127.0.0.1/53"])
        .expect("send a datagram");
    wait_for(
        Duration::from_secs(10),
        "the dropped datagram to be counted",
        &[&d],
        || (counter(&d, "dropped") == 1).then_some(()),
    );
    // The responder still answers.
    assert_eq!(short(&ns, &["AAAA", &name]), vec![addr]);
    let s = d.cli_json(&["status", "--json"]).expect("umbra cli");
    eprintln!("dns counters: {}", s["dns"]);
    assert_eq!(s["dns"]["refused"], 2);
    assert_eq!(s["dns"]["nxdomain"], 2);
}

/// A stand-in for the host's usual resolver, on 127.0.0.2:53 UDP: every
/// AAAA question gets `2001:db8::53`, every other type no records. Python's
/// standard library only, so it needs nothing installed.
const USUAL_RESOLVER: &str = r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.2", 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(512)
    i = 12
    while i < len(q) and q[i] != 0:
        i += q[i] + 1
    if len(q) < 12 or i + 5 > len(q):
        continue
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
    an = 1 if qtype == 28 else 0
    reply = q[:2] + struct.pack(">HHHHH", 0x8180, 1, an, 0, 0) + q[12:i + 5]
    if an:
        reply += struct.pack(">HHHIH", 0xC00C, 28, 1, 60, 16)
        reply += socket.inet_pton(socket.AF_INET6, "2001:db8::53")
    s.sendto(reply, peer)
"#;

#[test]
fn other_names_fall_through_to_the_usual_resolver() {
    require_root();
    let ns = netns("fall");
    let dir = temp_dir("fall");
    let mut d = prepare(
        dir.path(),
        "[listen]\nhttps = []\n[dns]\nlisten = \"127.0.0.1:53\"\n",
    );
    d.start(&ns).expect("umbra run starts");
    let status = d.cli_json(&["status", "--json"]).expect("umbra cli");
    let name = status["name"].as_str().expect("name").to_string();
    let addr = status["address"].as_str().expect("address").to_string();
    let mut cmd = ns.command("/usr/bin/python3");
    cmd.args(["-c", USUAL_RESOLVER]);
    let usual = Proc::spawn(cmd, &dir.path().join("usual.log")).expect("start python3");
    wait_for(
        Duration::from_secs(10),
        "the stand-in resolver",
        &[&d],
        || usual.log_text().contains("ready").then_some(()),
    );
    // The README's lines: the responder first, the usual resolver after it.
    let _conf = NetnsResolvConf::new(ns.name(), "nameserver 127.0.0.1\nnameserver 127.0.0.2\n");
    let getent = |host: &str| {
        let out = ns.run(&["getent", "ahostsv6", host]).expect("getent");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect::<std::collections::BTreeSet<_>>()
    };
    // A .umbra name from the responder, which the stand-in never answers so.
    assert_eq!(getent(&name), [addr].into());
    assert_eq!(counter(&d, "refused"), 0);
    // Another name: refused by the responder, so glibc asks the next server.
    assert_eq!(
        getent("example.com"),
        ["2001:db8::53".to_string()].into(),
        "{}",
        usual.log_text()
    );
    assert!(
        counter(&d, "refused") >= 1,
        "the responder was not asked first"
    );
}
