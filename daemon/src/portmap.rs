//! Port mapping: asks the NAT gateway to forward the link port to this node, keeps the
//! mapping alive and removes it at shutdown (docs/architecture.md, "Port mapping").
//!
//! One small task, started by `run.rs` when `[nat] port_mapping` is on and the node
//! listens. It asks the default route's gateway over PCP, then NAT-PMP (`crab_nat`),
//! then UPnP-IGD (`igd-next`), for the same external port as the link port; renews at
//! half the lifetime; and on failure tries again after 1, 2, 4 … up to 30 minutes. The
//! mapped address is only shown in `umbra status --json`: it is not given to partners.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crab_nat::{InternetProtocol, PortMapping, PortMappingOptions, PortMappingType, TimeoutConfig};
use igd_next::aio::Gateway;
use igd_next::aio::tokio::Tokio;
use igd_next::{PortMappingProtocol, SearchOptions};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The lifetime asked for; the gateway may grant less (PCP and NAT-PMP say how much).
const LIFETIME: Duration = Duration::from_secs(3600);
/// The first wait after a failed attempt; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(60);
/// The longest wait between attempts.
const MAX_RETRY: Duration = Duration::from_secs(30 * 60);
/// How long shutdown waits for the gateway to remove the mapping.
const STOP_WAIT: Duration = Duration::from_secs(3);
/// How long each UPnP search waits for a gateway's answer.
const SEARCH_WAIT: Duration = Duration::from_secs(2);
/// The soonest a renewal is due, whatever short lifetime a gateway grants.
const MIN_RENEW: Duration = Duration::from_secs(5);
/// The UPnP mapping's description, shown in the gateway's list to anyone on the LAN:
/// what the port serves, not which program (`docs/threat-model.md`).
const DESCRIPTION: &str = "https";
/// The SSDP port: the unicast search goes to the gateway on it.
const SSDP_PORT: u16 = 1900;
/// PCP and NAT-PMP: a quarter second, doubled twice (under 2 s per protocol).
const UDP_TIMEOUTS: TimeoutConfig = TimeoutConfig {
    initial_timeout: Duration::from_millis(250),
    max_retries: 2,
    max_retry_timeout: Some(Duration::from_secs(1)),
};

/// Which protocol made the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Upnp,
    NatPmp,
    Pcp,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Upnp => "upnp",
            Protocol::NatPmp => "nat-pmp",
            Protocol::Pcp => "pcp",
        }
    }
}

/// A mapping the gateway granted, as `umbra status` shows it.
#[derive(Debug, Clone, Copy)]
struct Mapped {
    protocol: Protocol,
    external: SocketAddrV4,
    lifetime: Duration,
    renew_at: Instant,
}

/// What the task knows, read by `umbra status`.
#[derive(Debug, Clone, Default)]
pub(crate) struct PortMapStatus(Arc<Mutex<Option<Mapped>>>);

impl PortMapStatus {
    /// `{protocol, external, lifetime_secs, renews_in_secs}`, or `null` while no
    /// mapping is held (mapping off, no listener, or no gateway granted one).
    pub(crate) fn json(&self) -> Value {
        match *self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(m) => json!({
                "protocol": m.protocol.name(),
                "external": m.external.to_string(),
                "lifetime_secs": m.lifetime.as_secs(),
                "renews_in_secs": m.renew_at.saturating_duration_since(Instant::now()).as_secs(),
            }),
            None => Value::Null,
        }
    }

    /// The external endpoint the gateway forwards to the listener, while a
    /// mapping is held.
    pub(crate) fn external(&self) -> Option<std::net::SocketAddr> {
        let held = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        held.map(|m| std::net::SocketAddr::V4(m.external))
    }

    fn set(&self, mapped: Option<Mapped>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = mapped;
    }
}

/// The running port-mapping task.
#[derive(Debug)]
pub(crate) struct PortMap {
    status: PortMapStatus,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl PortMap {
    /// Starts mapping `port` (TCP). `bind` is the listener's own IPv4 address, if it is
    /// bound to one; otherwise the address the route to the gateway leaves from is used.
    pub(crate) fn start(port: NonZeroU16, bind: Option<Ipv4Addr>) -> PortMap {
        let status = PortMapStatus::default();
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(keep(port, bind, status.clone(), stop_rx));
        PortMap { status, stop, task }
    }

    /// The handle `umbra status` reads.
    pub(crate) fn status(&self) -> PortMapStatus {
        self.status.clone()
    }

    /// Removes the mapping (waiting at most [`STOP_WAIT`] for the gateway, and as long
    /// again for an attempt in flight) and ends the task.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        // An attempt in flight may take STOP_WAIT, and the removal STOP_WAIT more.
        if tokio::time::timeout(2 * STOP_WAIT + Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// What renews and removes a mapping.
enum Lease {
    Upnp {
        gateway: Gateway<Tokio>,
        local: SocketAddrV4,
        external_port: u16,
        /// The lease in seconds: [`LIFETIME`], or 0 (permanent) for a gateway that
        /// takes nothing else.
        lease_secs: u32,
    },
    /// PCP or NAT-PMP: the crate keeps the nonce and the gateway.
    Udp(Box<PortMapping>),
}

/// The task: map, renew, retry with backoff, remove on stop.
async fn keep(
    port: NonZeroU16,
    bind: Option<Ipv4Addr>,
    status: PortMapStatus,
    mut stop: oneshot::Receiver<()>,
) {
    if let Some(public) = public_source(bind).await {
        tracing::info!(
            address = %public,
            "no port mapping: the link address is not a private or shared one, so no NAT is in the way"
        );
        return;
    }
    let mut retry = FIRST_RETRY;
    loop {
        let attempt = map(port, bind);
        tokio::pin!(attempt);
        let attempt = tokio::select! {
            r = &mut attempt => r,
            _ = &mut stop => {
                // Stopping mid-attempt: let it finish for a while, so a mapping the
                // gateway is just granting is removed rather than left behind.
                if let Ok(Ok((lease, mapped))) = tokio::time::timeout(STOP_WAIT, attempt).await {
                    remove(lease, mapped).await;
                }
                return;
            }
        };
        match attempt {
            Ok((mut lease, mut mapped)) => {
                tracing::info!(
                    protocol = mapped.protocol.name(),
                    external = %mapped.external,
                    lifetime_secs = mapped.lifetime.as_secs(),
                    "port mapping made at the gateway"
                );
                status.set(Some(mapped));
                retry = FIRST_RETRY;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(mapped.renew_at) => {}
                        _ = &mut stop => {
                            status.set(None);
                            remove(lease, mapped).await;
                            return;
                        }
                    }
                    match renew(&mut lease, mapped.protocol).await {
                        Ok(m) => {
                            tracing::debug!(external = %m.external, lifetime_secs = m.lifetime.as_secs(), "port mapping renewed");
                            if m.external != mapped.external {
                                tracing::info!(old = %mapped.external, new = %m.external, "the gateway moved the port mapping");
                            }
                            mapped = m;
                            status.set(Some(mapped));
                        }
                        Err(why) => {
                            tracing::warn!(
                                protocol = mapped.protocol.name(),
                                "renewing the port mapping failed: {why}; mapping again"
                            );
                            status.set(None);
                            break;
                        }
                    }
                }
                // Right after a lost renewal, try at once (the gateway may have restarted).
                continue;
            }
            // No default route (an IPv6-only host, or the network is not up yet) is
            // no failure of the gateway: say it quietly, and look again later.
            Err(Failure::NoGateway(why)) => tracing::debug!(
                "no port mapping: {why}; looking again in {} min",
                retry.as_secs() / 60
            ),
            Err(Failure::Refused(why)) => tracing::warn!(
                "port mapping failed: {why}; trying again in {} min",
                retry.as_secs() / 60
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = &mut stop => return,
        }
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// Why an attempt made no mapping.
enum Failure {
    /// There is no gateway to ask.
    NoGateway(String),
    /// Every protocol failed; the text names why each did.
    Refused(String),
}

/// One attempt over every protocol.
async fn map(port: NonZeroU16, bind: Option<Ipv4Addr>) -> Result<(Lease, Mapped), Failure> {
    let route = std::fs::read_to_string("/proc/net/route")
        .map_err(|e| Failure::NoGateway(format!("cannot read /proc/net/route: {e}")))?;
    let gateway = default_gateway(&route)
        .ok_or_else(|| Failure::NoGateway("no IPv4 default route via a gateway".to_string()))?;
    let local = match bind {
        Some(ip) => ip,
        None => source_toward(gateway)
            .await
            .map_err(|e| Failure::NoGateway(format!("no route to the gateway {gateway}: {e}")))?,
    };
    tracing::debug!(%gateway, %local, port, "asking the gateway for a port mapping");
    let mut reasons = Vec::new();

    let options = PortMappingOptions {
        external_port: Some(port),
        lifetime_seconds: Some(LIFETIME.as_secs() as u32),
        timeout_config: Some(UDP_TIMEOUTS),
    };
    let base = crab_nat::pcp::BaseMapRequest::new(
        gateway.into(),
        IpAddr::V4(local),
        InternetProtocol::Tcp,
        port,
    );
    match crab_nat::pcp::port_mapping(base, None, None, options).await {
        Ok(m) => match udp_mapped(&m, None) {
            Some(mapped) => return Ok((Lease::Udp(Box::new(m)), mapped)),
            None => reasons.push("PCP: the gateway gave no IPv4 external address".to_string()),
        },
        Err(e) => reasons.push(format!("PCP: {}", crab_reason(&e.to_string()))),
    }

    match crab_nat::natpmp::port_mapping(gateway.into(), InternetProtocol::Tcp, port, options).await
    {
        Ok(m) => match crab_nat::natpmp::external_address(gateway.into(), Some(UDP_TIMEOUTS)).await
        {
            Ok(ip) => match udp_mapped(&m, Some(ip)) {
                Some(mapped) => return Ok((Lease::Udp(Box::new(m)), mapped)),
                None => reasons.push("NAT-PMP: no external address".to_string()),
            },
            Err(e) => {
                // Without the address the mapping is of no use: give it back.
                let _ = m.try_drop().await;
                reasons.push(format!(
                    "NAT-PMP external address: {}",
                    crab_reason(&e.to_string())
                ));
            }
        },
        Err(e) => reasons.push(format!("NAT-PMP: {}", crab_reason(&e.to_string()))),
    }

    match upnp(gateway, SocketAddrV4::new(local, port.get())).await {
        Ok(found) => return Ok(found),
        Err(e) => reasons.push(format!("UPnP: {e}")),
    }
    Err(Failure::Refused(format!(
        "gateway {gateway}: {}",
        reasons.join("; ")
    )))
}

/// The crate's error, with its timeout said as an operator reads it.
fn crab_reason(e: &str) -> String {
    if e.contains("did not respond within the timeout") {
        "no answer".to_string()
    } else if e.contains("Connection refused") {
        format!(
            "nothing listens on the gateway's port {}",
            crab_nat::GATEWAY_PORT
        )
    } else {
        e.to_string()
    }
}

/// A PCP or NAT-PMP mapping as status shows it; `ip` for NAT-PMP, whose mapping does
/// not carry the external address.
fn udp_mapped(m: &PortMapping, ip: Option<Ipv4Addr>) -> Option<Mapped> {
    let (protocol, ip) = match (m.mapping_type(), ip) {
        (PortMappingType::Pcp { external_ip, .. }, _) => {
            let ip = match external_ip {
                IpAddr::V4(v4) => v4,
                IpAddr::V6(v6) => v6.to_ipv4_mapped()?,
            };
            (Protocol::Pcp, ip)
        }
        (PortMappingType::NatPmp, Some(ip)) => (Protocol::NatPmp, ip),
        (PortMappingType::NatPmp, None) => return None,
    };
    let lifetime = Duration::from_secs(u64::from(m.lifetime()));
    Some(Mapped {
        protocol,
        external: SocketAddrV4::new(ip, m.external_port().get()),
        lifetime,
        renew_at: renew_at(lifetime),
    })
}

/// UPnP-IGD: find the gateway (a unicast search to the default gateway first, then the
/// SSDP multicast group on the LAN), read its external address, add the mapping.
async fn upnp(gateway_ip: Ipv4Addr, local: SocketAddrV4) -> Result<(Lease, Mapped), String> {
    let search = |to: SocketAddr| {
        let mut options = SearchOptions::default();
        options.broadcast_address = to;
        options.timeout = Some(SEARCH_WAIT);
        options.single_search_timeout = Some(SEARCH_WAIT);
        igd_next::aio::tokio::search_gateway(options)
    };
    let gateway = match search(SocketAddr::from((gateway_ip, SSDP_PORT))).await {
        Ok(g) => g,
        Err(_) => search(SearchOptions::default().broadcast_address)
            .await
            .map_err(|e| format!("no gateway answered the search ({e})"))?,
    };
    let ip = match gateway.get_external_ip().await {
        Ok(IpAddr::V4(ip)) => ip,
        Ok(other) => {
            return Err(format!(
                "the gateway's external address {other} is not IPv4"
            ));
        }
        Err(e) => return Err(format!("the gateway gave no external address ({e})")),
    };
    let lifetime = LIFETIME.as_secs() as u32;
    let local_addr = SocketAddr::V4(local);
    let (external_port, lease_secs) = match upnp_add(&gateway, local.port(), local, lifetime).await
    {
        Ok(lease) => (local.port(), lease),
        Err(igd_next::AddPortError::PortInUse) => gateway
            .add_any_port(PortMappingProtocol::TCP, local_addr, lifetime, DESCRIPTION)
            .await
            .map(|port| (port, lifetime))
            .map_err(|e| {
                format!(
                    "port {} is taken and another was refused ({e})",
                    local.port()
                )
            })?,
        Err(e) => return Err(format!("refused ({e})")),
    };
    let granted = Duration::from_secs(u64::from(lease_secs));
    let mapped = Mapped {
        protocol: Protocol::Upnp,
        external: SocketAddrV4::new(ip, external_port),
        lifetime: granted,
        renew_at: renew_at(granted),
    };
    Ok((
        Lease::Upnp {
            gateway,
            local,
            external_port,
            lease_secs,
        },
        mapped,
    ))
}

/// `AddPortMapping` for `external` → `local` with a lease of `lease_secs`, or a
/// permanent one (0) if the gateway takes only those; the lease it took.
async fn upnp_add(
    gateway: &Gateway<Tokio>,
    external: u16,
    local: SocketAddrV4,
    lease_secs: u32,
) -> Result<u32, igd_next::AddPortError> {
    let add = |lease| {
        gateway.add_port(
            PortMappingProtocol::TCP,
            external,
            SocketAddr::V4(local),
            lease,
            DESCRIPTION,
        )
    };
    match add(lease_secs).await {
        Err(igd_next::AddPortError::OnlyPermanentLeasesSupported) if lease_secs != 0 => {
            add(0).await.map(|()| 0)
        }
        other => other.map(|()| lease_secs),
    }
}

/// When a mapping granted for `lifetime` is renewed: at half of it, not sooner than
/// [`MIN_RENEW`]. A permanent UPnP lease (lifetime 0) is re-added after half of
/// [`LIFETIME`], in case the gateway lost it.
fn renew_at(lifetime: Duration) -> Instant {
    let half = if lifetime.is_zero() {
        LIFETIME / 2
    } else {
        lifetime / 2
    };
    Instant::now() + half.max(MIN_RENEW)
}

/// Renews a mapping with the protocol that made it.
async fn renew(lease: &mut Lease, protocol: Protocol) -> Result<Mapped, String> {
    match lease {
        Lease::Udp(m) => {
            let external_ip = match protocol {
                Protocol::NatPmp => Some(
                    crab_nat::natpmp::external_address(m.gateway(), Some(UDP_TIMEOUTS))
                        .await
                        .map_err(|e| crab_reason(&e.to_string()))?,
                ),
                _ => None,
            };
            m.renew().await.map_err(|e| crab_reason(&e.to_string()))?;
            udp_mapped(m, external_ip).ok_or_else(|| "no external address".to_string())
        }
        Lease::Upnp {
            gateway,
            local,
            external_port,
            lease_secs,
        } => {
            let ip = match gateway.get_external_ip().await {
                Ok(IpAddr::V4(ip)) => ip,
                Ok(other) => return Err(format!("external address {other} is not IPv4")),
                Err(e) => return Err(e.to_string()),
            };
            *lease_secs = upnp_add(gateway, *external_port, *local, *lease_secs)
                .await
                .map_err(|e| e.to_string())?;
            let granted = Duration::from_secs(u64::from(*lease_secs));
            Ok(Mapped {
                protocol: Protocol::Upnp,
                external: SocketAddrV4::new(ip, *external_port),
                lifetime: granted,
                renew_at: renew_at(granted),
            })
        }
    }
}

/// Asks the gateway to delete the mapping, waiting at most [`STOP_WAIT`].
async fn remove(lease: Lease, mapped: Mapped) {
    let removal = async {
        match lease {
            Lease::Udp(m) => m
                .try_drop()
                .await
                .map_err(|(e, _)| crab_reason(&e.to_string())),
            Lease::Upnp {
                gateway,
                external_port,
                ..
            } => gateway
                .remove_port(PortMappingProtocol::TCP, external_port)
                .await
                .map_err(|e| e.to_string()),
        }
    };
    match tokio::time::timeout(STOP_WAIT, removal).await {
        Ok(Ok(())) => {
            tracing::info!(protocol = mapped.protocol.name(), external = %mapped.external, "port mapping removed")
        }
        Ok(Err(e)) => {
            tracing::warn!(protocol = mapped.protocol.name(), external = %mapped.external, "removing the port mapping failed: {e}; it lapses by itself")
        }
        Err(_) => {
            tracing::warn!(protocol = mapped.protocol.name(), external = %mapped.external, "the gateway did not confirm the removal within {} s; the mapping lapses by itself", STOP_WAIT.as_secs())
        }
    }
}

/// The node's address toward its gateway if it is public (not RFC 1918, not the
/// shared 100.64.0.0/10, not link-local): then no NAT stands in the way and the
/// gateway is not asked. `None` when it is private or not known yet.
async fn public_source(bind: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    let ip = match bind {
        Some(ip) => ip,
        None => {
            let route = std::fs::read_to_string("/proc/net/route").ok()?;
            source_toward(default_gateway(&route)?).await.ok()?
        }
    };
    (!behind_nat(ip)).then_some(ip)
}

/// Whether `ip` is an address a NAT's inside uses: RFC 1918, the shared address
/// space 100.64.0.0/10 (RFC 6598: carrier-grade NAT) or link-local.
pub(crate) fn behind_nat(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private() || ip.is_link_local() || (a == 100 && (64..128).contains(&b))
}

/// The local address the kernel would send from toward `gateway` (a connected UDP
/// socket; nothing is sent).
async fn source_toward(gateway: Ipv4Addr) -> std::io::Result<Ipv4Addr> {
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    socket.connect((gateway, crab_nat::GATEWAY_PORT)).await?;
    match socket.local_addr()? {
        SocketAddr::V4(a) => Ok(*a.ip()),
        SocketAddr::V6(_) => Err(std::io::Error::other("not an IPv4 route")),
    }
}

/// The gateway of the IPv4 default route in `/proc/net/route`'s text (the first one,
/// with the lowest metric); `None` without one. Total: odd lines are skipped.
fn default_gateway(route: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    route
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| f.get(i).and_then(|s| u32::from_str_radix(s, 16).ok());
            let (dest, gw, flags, metric, mask) = (hex(1)?, hex(2)?, hex(3)?, hex(6)?, hex(7)?);
            let up_gateway = flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY;
            // The kernel prints the address's bytes as a native-endian number.
            (dest == 0 && mask == 0 && up_gateway && gw != 0)
                .then(|| (metric, Ipv4Addr::from(gw.to_ne_bytes())))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, gw)| gw)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT";

    #[test]
    fn default_gateway_reads_the_default_route() {
        let text = format!(
            "{HEADER}\neth0\t00000000\tnot-hex\t0003\t0\t0\t0\t00000000\t0\t0\t0\neth0\t00404064\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        );
        // An odd line is skipped; a route to a subnet is no default route.
        assert_eq!(default_gateway(&text), None);
        let text = format!(
            "{HEADER}\neth0\t00000000\t01014064\t0003\t0\t0\t0\t00000000\t0\t0\t0\neth0\t00014064\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        );
        assert_eq!(default_gateway(&text), Some(Ipv4Addr::new(100, 64, 1, 1)));
    }

    #[test]
    fn default_gateway_prefers_the_lowest_metric_and_needs_the_gateway_flag() {
        let text = format!(
            "{HEADER}\na\t00000000\t02014064\t0003\t0\t0\t200\t00000000\t0\t0\t0\nb\t00000000\t01014064\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        );
        assert_eq!(default_gateway(&text), Some(Ipv4Addr::new(100, 64, 1, 1)));
        let text = format!("{HEADER}\na\t00000000\t01014064\t0001\t0\t0\t0\t00000000\t0\t0\t0\n");
        assert_eq!(default_gateway(&text), None, "no RTF_GATEWAY");
        assert_eq!(default_gateway(""), None);
        assert_eq!(default_gateway("garbage\n\u{0}\t\t\n"), None);
    }

    #[test]
    fn only_inside_addresses_are_behind_a_nat() {
        for inside in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.2",
            "100.64.21.2",
            "100.127.255.254",
            "169.254.1.1",
        ] {
            assert!(behind_nat(inside.parse().expect("ip")), "{inside}");
        }
        for public in [
            "198.18.21.2",
            "100.128.0.1",
            "100.63.255.255",
            "8.8.8.8",
            "172.32.0.1",
        ] {
            assert!(!behind_nat(public.parse().expect("ip")), "{public}");
        }
    }

    #[test]
    fn renewal_is_at_half_the_lifetime_but_never_a_busy_loop() {
        let in_secs = |lifetime| {
            renew_at(Duration::from_secs(lifetime))
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
                .round() as u64
        };
        assert_eq!(in_secs(7200), 3600);
        assert_eq!(in_secs(20), 10);
        assert_eq!(in_secs(1), MIN_RENEW.as_secs());
        assert_eq!(in_secs(0), LIFETIME.as_secs() / 2, "a permanent lease");
    }

    #[test]
    fn status_is_null_until_a_mapping_is_held() {
        let status = PortMapStatus::default();
        assert_eq!(status.json(), Value::Null);
        status.set(Some(Mapped {
            protocol: Protocol::NatPmp,
            external: "198.18.11.2:443".parse().expect("addr"),
            lifetime: Duration::from_secs(120),
            renew_at: Instant::now() + Duration::from_secs(60),
        }));
        let v = status.json();
        assert_eq!(v["protocol"], "nat-pmp");
        assert_eq!(v["external"], "198.18.11.2:443");
        assert_eq!(v["lifetime_secs"], 120);
        assert!(
            v["renews_in_secs"]
                .as_u64()
                .is_some_and(|s| (58..=60).contains(&s)),
            "{v}"
        );
    }
}
