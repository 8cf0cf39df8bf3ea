//! The TUN device: creation, batch I/O, removal.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{debug, info};
use tun_rs::{AsyncDevice, DeviceBuilder};

use crate::netlink::{self, Netlink};
use crate::{TunError, TunSettings};

/// The TUN clone device.
pub const DEV_NET_TUN: &str = "/dev/net/tun";

/// Length of the fixed IPv6 header; nothing shorter is an IPv6 packet.
const IPV6_HEADER_LEN: usize = 40;

/// Packet counters of a [`Tun`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunStats {
    /// Packets read from the kernel that were not IPv6 and were dropped.
    pub rx_dropped: u64,
    /// Packets given to [`Tun::send_batch`] that were not IPv6 or that the
    /// kernel rejected, and were dropped.
    pub tx_dropped: u64,
}

/// The overlay's TUN interface. It owns the device: dropping it closes the
/// device, and the kernel then removes the interface with its address and
/// route. [`Tun::remove`] does the same and waits until the interface is gone.
///
/// All methods take `&self`, so one task can read while another writes
/// (share it in an `Arc`).
pub struct Tun {
    dev: AsyncDevice,
    name: String,
    mtu: u32,
    index: u32,
    rx_dropped: AtomicU64,
    tx_dropped: AtomicU64,
}

impl fmt::Debug for Tun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("index", &self.index)
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

impl Tun {
    /// Creates the TUN and configures it, in this order:
    ///
    /// 1. checks the settings, that `/dev/net/tun` exists and that the kernel
    ///    has IPv6;
    /// 2. creates the device, link down;
    /// 3. while the link is still down: turns off IPv6 address generation
    ///    (`IFLA_INET6_ADDR_GEN_MODE` = none over netlink, falling back to the
    ///    `addr_gen_mode` sysctl), leaves the all-routers group that
    ///    forwarding hosts join (`force_mld_version = 1`, then the device's
    ///    `forwarding = 0`), turns multicast off, and sets `accept_ra = 0` and
    ///    `router_solicitations = 0`. The kernel then never sends router
    ///    solicitations, DAD or MLD into the overlay, from `fe80::` or `::`;
    /// 4. sets the MTU;
    /// 5. adds the address as a /128 with `IFA_F_NODAD`, so it is usable at
    ///    once;
    /// 6. brings the link up;
    /// 7. adds the route (after the link is up, else the kernel answers
    ///    `ENETDOWN`).
    ///
    /// An address or route that already exists counts as success. If a step
    /// fails, the device is closed again and the kernel removes it.
    ///
    /// Needs a tokio runtime, root or `CAP_NET_ADMIN`, and runs in the
    /// caller's network namespace.
    pub async fn create(settings: &TunSettings) -> Result<Tun, TunError> {
        settings.validate()?;
        let name = settings.name.as_str();
        if !Path::new(DEV_NET_TUN).exists() {
            return Err(TunError::DeviceMissing { path: DEV_NET_TUN });
        }
        if !netlink::ipv6_available() {
            return Err(TunError::Ipv6Unavailable);
        }

        let nl =
            Netlink::open().map_err(|e| TunError::setup(name, "opening a netlink socket", e))?;
        let dev = open_device(name, &nl).await?;
        let index = nl
            .index_of(name)
            .await
            .map_err(|e| TunError::setup(name, "looking up the interface index", e))?
            .ok_or_else(|| {
                TunError::setup(
                    name,
                    "looking up the interface index",
                    io::Error::from_raw_os_error(libc::ENODEV),
                )
            })?;

        // The link is still down here (DeviceBuilder::enable(false)), so no
        // address has been generated and nothing has been sent yet.
        disable_autoconf(name, index, &nl).await?;

        nl.set_mtu(index, settings.mtu)
            .await
            .map_err(|e| TunError::setup(name, "setting the MTU", e))?;
        nl.add_address(index, settings.address)
            .await
            .map_err(|e| TunError::setup(name, "adding the address", e))?;
        nl.set_up(index)
            .await
            .map_err(|e| TunError::setup(name, "bringing the link up", e))?;
        let (prefix, len) = settings.route_network();
        nl.add_route(index, prefix, len)
            .await
            .map_err(|e| TunError::setup(name, "adding the route", e))?;

        info!(
            tun = name,
            index,
            mtu = settings.mtu,
            address = %settings.address,
            route = %format_args!("{prefix}/{len}"),
            "TUN is up"
        );
        Ok(Tun {
            dev,
            name: name.to_owned(),
            mtu: settings.mtu,
            index,
            rx_dropped: AtomicU64::new(0),
            tx_dropped: AtomicU64::new(0),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The MTU the interface was created with, in bytes.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The kernel's interface index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Packet counters.
    pub fn stats(&self) -> TunStats {
        TunStats {
            rx_dropped: self.rx_dropped.load(Ordering::Relaxed),
            tx_dropped: self.tx_dropped.load(Ordering::Relaxed),
        }
    }

    /// Buffers for [`Tun::recv_batch`]: `count` buffers of [`Tun::mtu`] bytes
    /// and `count` size slots.
    pub fn batch_buffers(&self, count: usize) -> (Vec<Vec<u8>>, Vec<usize>) {
        (vec![vec![0; self.mtu as usize]; count], vec![0; count])
    }

    /// Reads one batch of IPv6 packets (no header in front of them) into
    /// `bufs`, and writes the length of packet `i` to `sizes[i]`. Returns how
    /// many buffers were filled, at least one.
    ///
    /// It waits for the first packet, then takes whatever else the kernel
    /// already has queued, up to `bufs.len()` packets, without waiting again.
    /// A buffer shorter than [`Tun::mtu`] is grown to it (once; after that
    /// this allocates nothing). Packets that are not IPv6 are dropped and
    /// counted in [`TunStats::rx_dropped`].
    ///
    /// Cancel safe: a packet is never lost when the future is dropped.
    pub async fn recv_batch(
        &self,
        bufs: &mut [Vec<u8>],
        sizes: &mut [usize],
    ) -> Result<usize, TunError> {
        if bufs.is_empty() || sizes.len() < bufs.len() {
            return Err(TunError::BatchShape {
                bufs: bufs.len(),
                sizes: sizes.len(),
            });
        }
        let want = self.mtu as usize;
        let mut filled = 0;
        while let Some(buf) = bufs.get_mut(filled) {
            if buf.len() < want {
                buf.resize(want, 0);
            }
            let res = if filled == 0 {
                self.dev.recv(buf).await
            } else {
                self.dev.try_recv(buf)
            };
            let len = match res {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && filled > 0 => break,
                // Deliver what we have; a lasting error shows on the next call.
                Err(_) if filled > 0 => break,
                Err(cause) => {
                    return Err(TunError::Read {
                        name: self.name.clone(),
                        cause,
                    });
                }
            };
            if len > buf.len() || !is_ipv6(&buf[..len]) {
                self.rx_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            sizes[filled] = len;
            filled += 1;
        }
        Ok(filled)
    }

    /// Writes a batch of IPv6 packets (no header in front of them), in order.
    ///
    /// A packet that is not IPv6, or that the kernel rejects as malformed
    /// (`EINVAL`), is dropped and counted in [`TunStats::tx_dropped`], and the
    /// rest of the batch is still written. Any other error stops the batch and
    /// is returned.
    pub async fn send_batch(&self, packets: &[&[u8]]) -> Result<(), TunError> {
        for packet in packets {
            if !is_ipv6(packet) {
                self.tx_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self.dev.send(packet).await {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.tx_dropped.fetch_add(1, Ordering::Relaxed);
                    debug!(tun = %self.name, len = packet.len(), "kernel rejected a packet");
                }
                Err(cause) => {
                    return Err(TunError::Write {
                        name: self.name.clone(),
                        cause,
                    });
                }
            }
        }
        Ok(())
    }

    /// Removes the interface, with its address and route, and returns once
    /// the kernel no longer lists it.
    ///
    /// Closing the device removes a TUN that is not persistent. If the
    /// interface is still there afterwards (it was a persistent TUN that
    /// [`Tun::create`] attached to), it is deleted over netlink.
    pub async fn remove(self) -> Result<(), TunError> {
        let Tun {
            dev, name, index, ..
        } = self;
        drop(dev);
        let remove_err = |cause| TunError::Remove {
            name: name.clone(),
            cause,
        };
        let nl = Netlink::open().map_err(remove_err)?;
        if nl.index_of(&name).await.map_err(remove_err)? == Some(index) {
            debug!(tun = %name, "interface outlived its device; deleting it");
            nl.delete(index).await.map_err(remove_err)?;
        }
        nl.wait_gone(&name, index).await.map_err(remove_err)?;
        info!(tun = %name, "TUN removed");
        Ok(())
    }
}

/// Opens `/dev/net/tun` and creates (or attaches to a free persistent)
/// interface `name`, link down, without packet-information header and
/// without offload.
async fn open_device(name: &str, nl: &Netlink) -> Result<AsyncDevice, TunError> {
    let err = match DeviceBuilder::new().name(name).enable(false).build_async() {
        Ok(dev) => return Ok(dev),
        Err(e) => e,
    };
    match err.raw_os_error() {
        // TUNSETIFF: a TUN of that name is attached to another process.
        Some(libc::EBUSY) => Err(TunError::NameInUse {
            name: name.to_owned(),
        }),
        // TUNSETIFF: the name exists but is not a TUN (or has other flags).
        Some(libc::EINVAL) if matches!(nl.index_of(name).await, Ok(Some(_))) => {
            Err(TunError::NameInUse {
                name: name.to_owned(),
            })
        }
        Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => {
            Err(TunError::DeviceMissing { path: DEV_NET_TUN })
        }
        _ => Err(TunError::setup(name, "creating the device", err)),
    }
}

/// Keeps the kernel from generating addresses on the TUN and from sending
/// router solicitations, DAD or MLD into it. Must run while the link is down.
async fn disable_autoconf(name: &str, index: u32, nl: &Netlink) -> Result<(), TunError> {
    let sysctl = |key: &'static str, value: &str, step: &'static str| {
        netlink::write_ipv6_sysctl(name, key, value).map_err(|e| TunError::setup(name, step, e))
    };
    // Hosts (and container runtimes) often default new devices to
    // disable_ipv6 = 1; the overlay needs IPv6 on its own device.
    if netlink::read_ipv6_sysctl(name, "disable_ipv6").as_deref() == Some("1") {
        sysctl("disable_ipv6", "0", "enabling IPv6 on the device")?;
    }
    if let Err(e) = nl.disable_addr_gen(index).await {
        debug!(tun = name, error = %e, "IFLA_INET6_ADDR_GEN_MODE refused; using the sysctl");
        sysctl(
            "addr_gen_mode",
            "1",
            "turning off link-local address generation",
        )?;
    }
    // With forwarding on, the kernel joins ff02::2 on every new interface
    // and, once the link is up, announces it with MLD from `::`. Per-device
    // forwarding only sets host or router behaviour (the global
    // `all.forwarding` decides whether packets are forwarded), so turning it
    // off here leaves the group. MLDv1 first: an MLDv2 leave would queue a
    // state-change report that goes out when the link comes up, while MLDv1
    // sends nothing for a group it never reported. Turning multicast off
    // then keeps a later write to `all.forwarding` from joining it again.
    let forwarding = netlink::read_ipv6_sysctl(name, "forwarding");
    sysctl("force_mld_version", "1", "setting MLD version 1")?;
    if forwarding.is_some_and(|v| v != "0") {
        sysctl("forwarding", "0", "leaving the all-routers multicast group")?;
    }
    nl.disable_multicast(index)
        .await
        .map_err(|e| TunError::setup(name, "turning off multicast", e))?;
    sysctl("accept_ra", "0", "turning off router advertisements")?;
    sysctl(
        "router_solicitations",
        "0",
        "turning off router solicitations",
    )?;
    Ok(())
}

/// Whether `packet` can be an IPv6 packet: version 6 and a full header.
fn is_ipv6(packet: &[u8]) -> bool {
    packet.len() >= IPV6_HEADER_LEN && packet[0] >> 4 == 6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_check() {
        let mut p = [0u8; 40];
        assert!(!is_ipv6(&p));
        p[0] = 0x60;
        assert!(is_ipv6(&p));
        assert!(!is_ipv6(&p[..39]));
        p[0] = 0x45;
        assert!(!is_ipv6(&p));
        assert!(!is_ipv6(&[]));
    }
}
