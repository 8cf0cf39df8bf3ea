//! Root-only test of the real TUN, inside a network namespace of its own.
//!
//! The test process checks for root, creates a namespace
//! `umbra-tun-test-<pid>`, and runs this same test binary again inside it
//! (`ip netns exec NS <this exe> --exact <test>`), with [`CHILD_ENV`] set so
//! that the second run does the real work. No `unsafe` (`setns`) is needed.
//! A drop guard deletes the namespace even when the test fails.
//!
//! Only addresses in 600::/7 are used, and only inside the namespace.

use std::net::Ipv6Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use umbra_tun::{Tun, TunError, TunSettings};

/// Set in the re-executed child, to the namespace name.
const CHILD_ENV: &str = "UMBRA_TUN_TEST_NETNS";
const TUN_NAME: &str = "umbratest0";
/// A veth pair, to show that a name held by a non-TUN is refused.
const VETH: &str = "umbratestv0";
const VETH_PEER: &str = "umbratestv1";
/// A second TUN standing in for a node's container bridge.
const SUBNET_TUN: &str = "umbratest1";
const TUN_ADDR: &str = "600:1234::1";
const PING_DST: &str = "600:abcd::1";
const NEXT_HEADER_ICMPV6: u8 = 58;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// How long the test listens for packets the kernel sends on its own after
/// the link comes up (DAD and router solicitation start within about a second).
const QUIET: Duration = Duration::from_millis(2500);

#[test]
fn tun_in_netns() {
    if let Ok(ns) = std::env::var(CHILD_ENV) {
        child(&ns);
        return;
    }
    run_in_fresh_netns("tun_in_netns");
}

/// Parent side: needs root, makes the namespace, re-runs the test in it.
fn run_in_fresh_netns(test: &str) {
    assert!(
        is_root(),
        "this test needs root (it creates a network namespace and a TUN): run `sudo -E cargo test -p umbra-tun` or run it in CI as root"
    );
    let ns = format!("umbra-tun-test-{}", std::process::id());
    let _guard = Netns::create(&ns);
    let exe = std::env::current_exe().expect("path of the test binary");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &ns)
        .output()
        .expect("run `ip netns exec`");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "test inside netns {ns} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // Show the child's measurements in the parent's --nocapture output.
    eprintln!("{stderr}");
}

/// Child side: runs inside the namespace.
fn child(ns: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(child_async(ns));
}

async fn child_async(ns: &str) {
    // Forwarding on, as on a node that routes its /64 to containers: the
    // kernel then also joins ff02::2 on every interface.
    std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").expect("enable forwarding");
    let settings = TunSettings {
        name: TUN_NAME.to_owned(),
        mtu: 65535,
        address: ip(TUN_ADDR),
        route: (ip("600::"), 7),
    };
    let t0 = Instant::now();
    let tun = Tun::create(&settings).await.expect("create the TUN");
    eprintln!("netns {ns}: Tun::create took {:?}", t0.elapsed());
    assert_eq!(tun.name(), TUN_NAME);
    assert_eq!(tun.mtu(), 65535);

    // Address: exactly ours, /128, and no link-local.
    let addrs = cmd("ip", &["-6", "addr", "show", "dev", TUN_NAME]);
    assert!(
        addrs.contains(&format!("inet6 {TUN_ADDR}/128")),
        "address missing:\n{addrs}"
    );
    assert!(
        !addrs.contains("fe80"),
        "link-local address present:\n{addrs}"
    );
    assert!(
        !addrs.contains("tentative"),
        "address is tentative:\n{addrs}"
    );
    assert_eq!(
        addrs.matches("inet6 ").count(),
        1,
        "unexpected extra addresses:\n{addrs}"
    );

    // Route.
    let routes = cmd("ip", &["-6", "route", "show"]);
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with("600::/7 dev ") && l.contains(TUN_NAME)),
        "route 600::/7 missing:\n{routes}"
    );

    // MTU and state.
    let link = cmd("ip", &["link", "show", TUN_NAME]);
    assert!(link.contains("mtu 65535"), "wrong MTU:\n{link}");
    assert!(
        link.contains("state UP") || link.contains("state UNKNOWN"),
        "link not up:\n{link}"
    );
    assert!(link.contains(",UP"), "link flags lack UP:\n{link}");

    // Sysctls set before the link came up.
    for (key, want) in [
        ("addr_gen_mode", "1"),
        ("accept_ra", "0"),
        ("router_solicitations", "0"),
    ] {
        let path = format!("/proc/sys/net/ipv6/conf/{TUN_NAME}/{key}");
        let got = std::fs::read_to_string(&path).expect("read sysctl");
        assert_eq!(got.trim(), want, "{path}");
    }

    // The name is taken while we hold it: a second create fails clearly and
    // leaves the first TUN alone.
    let err = Tun::create(&settings).await.expect_err("second create");
    assert!(
        matches!(err, TunError::NameInUse { .. }),
        "second create: {err}"
    );
    assert!(err.to_string().contains("already in use"), "{err}");
    // So is a name that belongs to an interface that is not a TUN.
    cmd(
        "ip",
        &[
            "link", "add", VETH, "type", "veth", "peer", "name", VETH_PEER,
        ],
    );
    let err = Tun::create(&TunSettings {
        name: VETH.to_owned(),
        ..settings.clone()
    })
    .await
    .expect_err("create over a veth");
    assert!(
        matches!(err, TunError::NameInUse { .. }),
        "create over a veth: {err}"
    );
    cmd("ip", &["link", "del", VETH]);
    assert!(
        cmd("ip", &["-6", "addr", "show", "dev", TUN_NAME]).contains(TUN_ADDR),
        "the failed creates disturbed the first TUN"
    );

    // Quiet period: the kernel itself must send nothing into the TUN (no
    // router solicitation, DAD or MLD). The namespace forwards IPv6, as a
    // node that routes its /64 to containers would.
    let (mut bufs, mut sizes) = tun.batch_buffers(8);
    let quiet = tokio::time::timeout(QUIET, tun.recv_batch(&mut bufs, &mut sizes)).await;
    if let Ok(got) = quiet {
        let n = got.expect("recv_batch");
        let pkts: Vec<String> = bufs
            .iter()
            .zip(&sizes)
            .take(n)
            .map(|(b, &len)| describe(&b[..len]))
            .collect();
        panic!("the kernel sent packets into the TUN on its own: {pkts:?}");
    }

    // A ping into the overlay arrives as an ICMPv6 echo request from our
    // address. Anything else the kernel sends on its own (RS, MLD, DAD)
    // would show up here too, and must not come from fe80::.
    let mut ping = Command::new("ping")
        .args(["-6", "-c1", "-W1", PING_DST])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ping (install iputils-ping)");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut echo_id = None;
    let mut seen = Vec::new();
    while echo_id.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, tun.recv_batch(&mut bufs, &mut sizes)).await {
            Ok(r) => r.expect("recv_batch"),
            Err(_) => panic!("no echo request within 3 s; packets seen: {seen:?}"),
        };
        assert!((1..=bufs.len()).contains(&n), "recv_batch returned {n}");
        for (buf, &len) in bufs.iter().zip(&sizes).take(n) {
            let p = &buf[..len];
            let (src, dst, next, icmp) = parse_ipv6(p).expect("an IPv6 packet");
            seen.push(describe(p));
            assert!(
                src.segments()[0] & 0xffc0 != 0xfe80,
                "packet from link-local {src} -> {dst}"
            );
            let is_echo =
                next == NEXT_HEADER_ICMPV6 && icmp.len() >= 8 && icmp[0] == ICMPV6_ECHO_REQUEST;
            if dst == ip(PING_DST) && is_echo {
                assert_eq!(src, ip(TUN_ADDR), "echo request source");
                echo_id = Some((u16::from_be_bytes([icmp[4], icmp[5]]), p.to_vec()));
            }
        }
    }
    eprintln!("netns {ns}: packets read from the TUN: {seen:?}");
    let status = ping.wait().expect("wait for ping");
    assert!(!status.success(), "ping got an answer from nowhere");

    // Write an ICMPv6 echo reply back; the kernel must accept it.
    let (id, request) = echo_id.expect("echo seen");
    let reply = echo_reply(&request);
    assert_eq!(u16::from_be_bytes([reply[44], reply[45]]), id);
    tun.send_batch(&[&reply, &reply[..]])
        .await
        .expect("send_batch");
    assert_eq!(tun.stats().tx_dropped, 0, "{:?}", tun.stats());
    // A non-IPv6 packet is dropped and counted, and does not fail the batch.
    tun.send_batch(&[&[0x45u8; 40][..], &reply])
        .await
        .expect("send_batch with one IPv4 packet");
    assert_eq!(tun.stats().tx_dropped, 1);
    let icmp6_in = snmp6("Icmp6InEchoReplies");
    assert!(
        icmp6_in >= 3,
        "kernel counted {icmp6_in} echo replies, want 3"
    );

    // Packets from the overlay to a node's subnet are forwarded
    // (`docs/architecture.md, "Tasks and data flow"`): the TUN's own
    // `forwarding` sysctl, which create() turns off to leave ff02::2, must not
    // stop that. A second TUN stands in for the containers' bridge.
    let subnet = Tun::create(&TunSettings {
        name: SUBNET_TUN.to_owned(),
        mtu: 1500,
        address: ip("700:1234::1"),
        route: (ip("700:1234::"), 64),
    })
    .await
    .expect("create the subnet TUN");
    let to_subnet = ipv6_no_next_header(ip(PING_DST), ip("700:1234::5"));
    tun.send_batch(&[&to_subnet]).await.expect("send_batch");
    let (mut sbufs, mut ssizes) = subnet.batch_buffers(4);
    let n = tokio::time::timeout(
        Duration::from_secs(1),
        subnet.recv_batch(&mut sbufs, &mut ssizes),
    )
    .await
    .expect("the packet to 700:1234::5 was not forwarded within 1 s")
    .expect("recv_batch on the subnet TUN");
    assert_eq!(n, 1);
    let got = &sbufs[0][..ssizes[0]];
    assert_eq!(got.len(), to_subnet.len());
    assert_eq!(got[7], 63, "hop limit after one forwarding hop");
    assert_eq!(got[8..40], to_subnet[8..40]);
    subnet.remove().await.expect("remove the subnet TUN");

    // Remove: the interface and its route are gone at once.
    let t0 = Instant::now();
    tun.remove().await.expect("remove");
    eprintln!("netns {ns}: Tun::remove took {:?}", t0.elapsed());
    let out = Command::new("ip")
        .args(["link", "show", TUN_NAME])
        .output()
        .expect("ip link show");
    assert!(!out.status.success(), "interface still exists after remove");
    let routes = cmd("ip", &["-6", "route", "show"]);
    assert!(!routes.contains("600::/7"), "route survived:\n{routes}");

    // The name is free again: creating it a second time works.
    let tun = Tun::create(&settings).await.expect("create again");
    tun.remove().await.expect("remove again");
}

/// One line about a packet, for failure messages.
fn describe(p: &[u8]) -> String {
    match parse_ipv6(p) {
        Some((src, dst, next, payload)) => {
            format!(
                "{src} -> {dst} next header {next} first byte {:?}",
                payload.first()
            )
        }
        None => format!("{} bytes, not IPv6", p.len()),
    }
}

/// A counter from /proc/net/snmp6 (this namespace's).
fn snmp6(counter: &str) -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp6").expect("read /proc/net/snmp6");
    snmp.lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(counter))
                .then(|| words.next())
                .flatten()
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no counter {counter} in /proc/net/snmp6"))
}

/// An IPv6 packet with no payload (next header 59, "no next header").
fn ipv6_no_next_header(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[6] = 59;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p
}

/// Source, destination, next header and payload of an IPv6 packet.
fn parse_ipv6(p: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr, u8, &[u8])> {
    if p.len() < 40 || p[0] >> 4 != 6 {
        return None;
    }
    let payload_len = usize::from(u16::from_be_bytes([p[4], p[5]]));
    let src: [u8; 16] = p[8..24].try_into().ok()?;
    let dst: [u8; 16] = p[24..40].try_into().ok()?;
    let payload = p.get(40..40 + payload_len)?;
    Some((src.into(), dst.into(), p[6], payload))
}

/// Turns an echo request into the reply the destination would send.
fn echo_reply(request: &[u8]) -> Vec<u8> {
    let mut r = request.to_vec();
    let (src, dst) = (request[8..24].to_vec(), request[24..40].to_vec());
    r[8..24].copy_from_slice(&dst);
    r[24..40].copy_from_slice(&src);
    r[7] = 64; // hop limit
    r[40] = ICMPV6_ECHO_REPLY;
    r[42] = 0;
    r[43] = 0;
    let sum = icmpv6_checksum(&r);
    r[42..44].copy_from_slice(&sum.to_be_bytes());
    r
}

/// The ICMPv6 checksum over the pseudo-header and the ICMPv6 message.
fn icmpv6_checksum(p: &[u8]) -> u16 {
    let body = &p[40..];
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for chunk in bytes.chunks(2) {
            let hi = u32::from(chunk[0]) << 8;
            let lo = chunk.get(1).map_or(0, |b| u32::from(*b));
            sum += hi | lo;
        }
    };
    add(&p[8..40]);
    let len = u32::try_from(body.len()).expect("short packet");
    add(&len.to_be_bytes());
    add(&[0, 0, 0, NEXT_HEADER_ICMPV6]);
    add(body);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("valid test address")
}

fn cmd(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {prog} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Effective uid 0, read from /proc (no unsafe `geteuid`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// A network namespace, deleted on drop (also when the test panics).
struct Netns(String);

impl Netns {
    fn create(name: &str) -> Self {
        // A namespace left over from a killed run with the same pid.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        cmd("ip", &["netns", "add", name]);
        Netns(name.to_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn checksum_matches_a_known_packet() {
    // Echo reply computed by hand: ::1 -> ::1, id 1, seq 1, no data.
    let mut p = vec![0u8; 48];
    p[0] = 0x60;
    p[5] = 8;
    p[6] = NEXT_HEADER_ICMPV6;
    p[23] = 1;
    p[39] = 1;
    p[40] = ICMPV6_ECHO_REQUEST;
    p[45] = 1;
    p[47] = 1;
    let reply = echo_reply(&p);
    // Verifying: the checksum over a packet with its checksum in place is 0.
    assert_eq!(icmpv6_checksum(&reply), 0);
    assert_eq!(reply[40], ICMPV6_ECHO_REPLY);
}
