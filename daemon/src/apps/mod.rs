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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use umbra_config::SOCKS_PORTS;

/// IPv6's next-header value for TCP.
const TCP: u8 = 6;

/// The datapath's side of the stack: where the packets go and which are its.
#[derive(Debug)]
pub(crate) struct StackPort {
    packets: mpsc::Sender<Vec<u8>>,
    /// Every packet is the stack's: there is no TUN.
    all: bool,
    exposed: Vec<u16>,
    /// Packets the stack had no room for (TCP sends them again).
    pub(crate) dropped: Arc<AtomicU64>,
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
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
