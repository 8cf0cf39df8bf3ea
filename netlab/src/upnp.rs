//! [`UpnpGateway`]: a NAT router that grants port mappings over UPnP-IGD, NAT-PMP
//! and PCP (Debian's `miniupnpd-nftables`), and the [`StunServer`] it needs to learn
//! that its outside address may be forwarded to.
//!
//! miniupnpd 2.3.1 refuses to forward to an outside address in a reserved range such
//! as 198.18.0.0/15 unless a classic STUN test (RFC 3489: answers from a second
//! address and port) says it is not behind another NAT; so the lab runs `stund` with
//! two addresses on the "internet" side and lets its answers into the router. The
//! package's own nftables scripts do not run (they source a helper it does not ship),
//! so the tables miniupnpd writes into are made here.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use crate::{Error, Netns, Proc, Result, poll};

/// The STUN ports `stund` answers on (the second for the "change port" test).
pub const STUN_PORTS: [u16; 2] = [3478, 3479];
/// The port of miniupnpd's UPnP HTTP server on the inside.
pub const UPNP_HTTP_PORT: u16 = 5000;

/// `stund` in a namespace, answering on two of its addresses.
#[derive(Debug)]
pub struct StunServer {
    /// The address miniupnpd asks.
    pub primary: Ipv4Addr,
    /// The second address it answers the "change address" test from.
    pub alternate: Ipv4Addr,
    /// The running `stund`.
    pub proc: Proc,
}

impl StunServer {
    /// Adds `alternate` (as a /24) to the interface of `ns` that holds `primary` and
    /// starts `stund -h primary -a alternate`, logging to `log`. Needs `stund`
    /// (Debian's `stun-server`).
    pub fn start(
        ns: &Netns,
        primary: Ipv4Addr,
        alternate: Ipv4Addr,
        log: &Path,
    ) -> Result<StunServer> {
        let iface = ns.iface_with_addr(&primary.to_string())?;
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{alternate}/24"),
            "dev",
            &iface,
        ])?;
        let mut cmd = ns.command("stund");
        cmd.args(["-h", &primary.to_string(), "-a", &alternate.to_string()]);
        let proc = Proc::spawn(cmd, log)?;
        poll(
            Duration::from_secs(5),
            Duration::from_millis(50),
            "stund listening",
            |_| {
                let out = ns.exec(&["ss", "-Hlun", &format!("sport = :{}", STUN_PORTS[1])])?;
                Ok((out.lines().count() >= 2).then_some(()))
            },
        )?;
        Ok(StunServer {
            primary,
            alternate,
            proc,
        })
    }
}

/// What the gateway offers.
#[derive(Debug, Clone, Copy)]
pub struct UpnpOptions {
    /// UPnP-IGD (SSDP discovery and the HTTP control server).
    pub upnp: bool,
    /// NAT-PMP and PCP (miniupnpd turns both on or off together).
    pub natpmp: bool,
    /// The longest PCP lifetime granted, in seconds (miniupnpd's `max_lifetime`; its
    /// `min_lifetime` is half of it, at most 120 s): a short one makes clients renew
    /// soon. At least 2.
    pub max_lifetime: u32,
    /// The router's own NAT maps endpoint dependently (`masquerade random`): the
    /// "mapped" kind of the NAT matrix, where only the port mapping lets peers in.
    pub endpoint_dependent: bool,
}

impl Default for UpnpOptions {
    fn default() -> Self {
        UpnpOptions {
            upnp: true,
            natpmp: true,
            max_lifetime: 86_400,
            endpoint_dependent: false,
        }
    }
}

/// A router namespace running miniupnpd, with the nftables tables it needs: NAT for
/// the inside, an input chain that drops the outside except STUN answers, and the
/// chains miniupnpd adds its forwarding rules to.
#[derive(Debug)]
pub struct UpnpGateway {
    /// The running miniupnpd (`-d`: in the foreground, logging to its log).
    pub proc: Proc,
    /// The router's outside interface.
    pub outside: String,
    /// The router's inside interface.
    pub inside: String,
}

/// The nftables ruleset of a gateway (table `inet filter`, miniupnpd 2.3.1's default
/// names: chains `miniupnpd`, `prerouting_miniupnpd`, `postrouting_miniupnpd`). Only
/// what comes from the inside is translated: the router's own STUN test must leave
/// from the port it listens on, or the answers from the STUN server's second address
/// (new flows, with no translation to undo) miss it under `masquerade random`.
fn ruleset(outside: &str, inside: &str, stun: &StunServer, o: UpnpOptions) -> String {
    let masquerade = if o.endpoint_dependent {
        "masquerade random"
    } else {
        "masquerade"
    };
    let stun_ports = format!("{{ {}, {} }}", STUN_PORTS[0], STUN_PORTS[1]);
    let mut r = String::new();
    let _ = write!(
        r,
        r#"table inet filter {{
  chain input {{ type filter hook input priority filter; policy drop;
    iifname "lo" accept
    ct state established,related accept
    ct state invalid drop
    meta l4proto icmp accept
    iifname "{outside}" ip saddr {{ {p}, {a} }} udp sport {stun_ports} accept
    iifname "{inside}" udp dport {{ 1900, 5351 }} accept
    iifname "{inside}" tcp dport {UPNP_HTTP_PORT} accept
  }}
  chain forward {{ type filter hook forward priority filter; policy accept;
    ct state established,related accept
    ct state invalid drop
    jump miniupnpd
    iifname "{outside}" drop
  }}
  chain miniupnpd {{ }}
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;
    jump prerouting_miniupnpd
  }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
    jump postrouting_miniupnpd
    iifname "{inside}" oifname "{outside}" {masquerade}
  }}
  chain prerouting_miniupnpd {{ }}
  chain postrouting_miniupnpd {{ }}
}}
"#,
        p = stun.primary,
        a = stun.alternate,
    );
    r
}

/// miniupnpd's config.
fn miniupnpd_conf(outside: &str, inside: &str, stun: &StunServer, o: UpnpOptions) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    format!(
        "ext_ifname={outside}\nlistening_ip={inside}\nhttp_port={UPNP_HTTP_PORT}\n\
         enable_natpmp={}\nenable_upnp={}\nsecure_mode=yes\nsystem_uptime=yes\n\
         min_lifetime={}\nmax_lifetime={}\nuuid=3d1c5f0e-1111-4a4a-9e9e-0123456789ab\n\
         allow 1-65535 100.64.0.0/10 1-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n\
         ext_perform_stun=yes\next_stun_host={}\next_stun_port={}\n",
        yes(o.natpmp),
        yes(o.upnp),
        (o.max_lifetime / 2).clamp(1, 120),
        o.max_lifetime,
        stun.primary,
        STUN_PORTS[0],
    )
}

impl UpnpGateway {
    /// Turns `router` (forwarding between `inside` and `outside`, which must reach
    /// `stun`) into a miniupnpd gateway, with its config, ruleset and log in `dir`.
    /// Returns once miniupnpd says port forwarding is enabled (its STUN test passed).
    /// Needs `nft` and `miniupnpd` (Debian's `miniupnpd-nftables`).
    pub fn start(
        router: &Netns,
        outside: &str,
        inside: &str,
        stun: &StunServer,
        dir: &Path,
        options: UpnpOptions,
    ) -> Result<UpnpGateway> {
        router.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        let rules = dir.join("gateway.nft");
        std::fs::write(&rules, ruleset(outside, inside, stun, options))
            .map_err(Error::io(&rules))?;
        router.exec(&["nft", "-f", &rules.to_string_lossy()])?;
        let conf = dir.join("miniupnpd.conf");
        std::fs::write(&conf, miniupnpd_conf(outside, inside, stun, options))
            .map_err(Error::io(&conf))?;
        let mut cmd = router.command("miniupnpd");
        cmd.arg("-d")
            .arg("-f")
            .arg(&conf)
            .arg("-P")
            .arg(dir.join("miniupnpd.pid"));
        let proc = Proc::spawn(cmd, &dir.join("miniupnpd.log"))?;
        let gateway = UpnpGateway {
            proc,
            outside: outside.to_string(),
            inside: inside.to_string(),
        };
        poll(
            Duration::from_secs(15),
            Duration::from_millis(100),
            "miniupnpd: port forwarding enabled after its STUN test",
            |_| {
                if gateway.proc.exited() {
                    return Err(Error::Output(format!(
                        "miniupnpd exited: {}",
                        gateway.proc.log_text()
                    )));
                }
                Ok(gateway
                    .proc
                    .log_text()
                    .contains("Port forwarding is now enabled")
                    .then_some(()))
            },
        )
        .map_err(|e| Error::Output(format!("{e}; miniupnpd said: {}", gateway.proc.log_text())))?;
        Ok(gateway)
    }

    /// The forwarding rules miniupnpd holds now (`nft list chain inet filter
    /// prerouting_miniupnpd` in `router`): one `dnat` line per mapping.
    pub fn redirects(&self, router: &Netns) -> Result<Vec<String>> {
        let out = router.exec(&[
            "nft",
            "list",
            "chain",
            "inet",
            "filter",
            "prerouting_miniupnpd",
        ])?;
        Ok(out
            .lines()
            .filter(|l| l.contains("dnat"))
            .map(|l| l.trim().to_string())
            .collect())
    }
}
