//! Apps without the TUN (docs/architecture.md, "Apps without the TUN"): a
//! userspace TCP/IPv6 stack ([`stack`], smoltcp) that holds this node's
//! overlay address, a SOCKS5 proxy on loopback ([`socks`]) whose `CONNECT`s
//! it dials, and `[[expose]]` ports it accepts and forwards to local
//! sockets. The far side sees ordinary TCP from this node's address.
//!
//! The datapath hands the stack the packets that are its own
//! ([`StackPort::takes`]): with no TUN, every packet delivered to this node;
//! with a TUN, TCP to an exposed port or to one of the SOCKS ports
//! ([`umbra_config::SOCKS_PORTS`]), and the rest goes to the kernel.

pub(crate) mod socks;
mod splice;
pub(crate) mod stack;

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use serde_json::Value;
use tokio::sync::mpsc;
use umbra_config::{Config, SOCKS_PORTS};
use umbra_routing::address::OVERLAY_PREFIX_LEN;

use crate::events::DatapathTx;
use crate::vital::Vital;

/// IPv6's next-header value for TCP.
const TCP: u8 = 6;

/// The datapath's side of the stack: where the packets go and which are its.
#[derive(Debug)]
pub(crate) struct StackPort {
    packets: mpsc::Sender<Vec<u8>>,
    /// Every packet is the stack's: there is no TUN.
    all: bool,
    exposed: Vec<u16>,
    counters: Arc<stack::StackCounters>,
}

impl StackPort {
    /// Whether `packet`, delivered to this node, is the stack's.
    pub(crate) fn takes(&self, packet: &[u8]) -> bool {
        if self.all {
            return true;
        }
        // IPv6 with TCP right after the fixed header (the stack never sends
        // extension headers, so its peers' answers have none either).
        let (Some(&version), Some(&next), Some(port)) =
            (packet.first(), packet.get(6), packet.get(42..44))
        else {
            return false;
        };
        let port = u16::from_be_bytes([port[0], port[1]]);
        version >> 4 == 6
            && next == TCP
            && (SOCKS_PORTS.contains(&port) || self.exposed.contains(&port))
    }

    /// Hands `packet` to the stack, or drops and counts it when the stack
    /// is behind: the datapath never waits for it.
    pub(crate) fn give(&self, packet: &[u8]) {
        if self.packets.try_send(packet.to_vec()).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What `umbra status` shows of the apps: the proxy's counters (with its
/// address) and the stack's.
#[derive(Debug)]
pub(crate) struct Status {
    socks: Option<(SocketAddr, Arc<socks::SocksCounters>)>,
    stack: Arc<stack::StackCounters>,
}

impl Status {
    /// `status`'s `socks`: null without `[socks] listen`.
    pub(crate) fn socks_json(&self) -> Value {
        self.socks
            .as_ref()
            .map_or(Value::Null, |(listen, c)| c.json(*listen))
    }

    /// `status`'s `stack`.
    pub(crate) fn stack_json(&self) -> Value {
        self.stack.json()
    }
}

/// Starts the stack when something needs it (`[socks] listen`,
/// `[[expose]]`), and the proxy in front of it; `None` when nothing does.
/// `address` is this node's; `no_tun`: every packet to the node is the
/// stack's.
pub(crate) async fn start(
    config: &Config,
    address: Ipv6Addr,
    no_tun: bool,
    datapath: &DatapathTx,
    vital: &Vital,
) -> Result<Option<(StackPort, Status)>> {
    if config.socks.listen.is_none() && config.expose.is_empty() {
        return Ok(None);
    }
    let exposed: Vec<(u16, SocketAddr)> = config.expose.iter().map(|e| (e.port, e.to)).collect();
    let (stack, port, connector, counters) = stack::new(
        address,
        OVERLAY_PREFIX_LEN,
        config.tun.mtu,
        &exposed,
        no_tun,
        datapath.clone(),
    );
    vital.spawn("userspace stack", stack.run());
    let (lo, hi) = umbra_transport::io::ephemeral_range();
    let (start, end) = (SOCKS_PORTS.start(), SOCKS_PORTS.end());
    if !no_tun && hi >= *start {
        tracing::warn!(
            "the kernel's ephemeral ports ({lo} to {hi}) overlap the ports the userspace stack \
             takes from the TUN ({start} to {end}): answers to the kernel's own overlay \
             connections from those ports would reach the stack; set \
             net.ipv4.ip_local_port_range to end below {start}"
        );
    }
    for e in &config.expose {
        tracing::info!(port = e.port, to = %e.to, "exposed port ready");
    }
    let socks = match config.socks.listen {
        Some(listen) => {
            let listener = socks::bind(listen).await?;
            let socks_counters = Arc::new(socks::SocksCounters::default());
            let proxy = socks::Proxy {
                zone: crate::dns::zone(config),
                connector,
                counters: Arc::clone(&socks_counters),
            };
            vital.spawn("SOCKS proxy", socks::serve(listener, proxy));
            tracing::info!(%listen, "SOCKS5 proxy ready");
            Some((listen, socks_counters))
        }
        None => None,
    };
    Ok(Some((
        port,
        Status {
            socks,
            stack: counters,
        },
    )))
}
