//! Interface configuration over rtnetlink and `/proc/sys`.

use std::io;
use std::net::Ipv6Addr;
use std::path::Path;
use std::time::Duration;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkMessage,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::error::netlink_to_io;

/// Where the kernel keeps per-interface IPv6 settings.
const IPV6_CONF: &str = "/proc/sys/net/ipv6/conf";

/// How long [`Netlink::wait_gone`] waits for the kernel to unregister an
/// interface after its last file descriptor is closed.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(3);

/// One rtnetlink connection. Its driver task ends when this is dropped.
pub(crate) struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a route-netlink socket in the current network namespace and
    /// spawns its driver on the current tokio runtime.
    pub(crate) fn open() -> io::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Sets `IFLA_INET6_ADDR_GEN_MODE` to none, so the kernel generates no
    /// link-local address when the link comes up.
    pub(crate) async fn disable_addr_gen(&self, index: u32) -> io::Result<()> {
        let spec =
            LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
                In6AddrGenMode::None,
            )])]);
        self.set_link(
            LinkUnspec::new_with_index(index)
                .append_extra_attribute(spec)
                .build(),
        )
        .await
    }

    /// `ip link set dev X multicast off`. Without `IFF_MULTICAST` the kernel
    /// joins no multicast group that it would announce with MLD (with
    /// forwarding on it otherwise joins ff02::2 and reports it from `::`).
    pub(crate) async fn disable_multicast(&self, index: u32) -> io::Result<()> {
        self.set_link(LinkUnspec::new_with_index(index).multicast(false).build())
            .await
    }

    /// `ip link set dev X mtu M`.
    pub(crate) async fn set_mtu(&self, index: u32, mtu: u32) -> io::Result<()> {
        self.set_link(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .await
    }

    /// `ip link set dev X up`.
    pub(crate) async fn set_up(&self, index: u32) -> io::Result<()> {
        self.set_link(LinkUnspec::new_with_index(index).up().build())
            .await
    }

    /// Sends one `RTM_SETLINK` request built with [`LinkUnspec`].
    async fn set_link(&self, msg: LinkMessage) -> io::Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(netlink_to_io)
    }

    /// `ip -6 addr add A/128 dev X nodad`. An address that is already there
    /// counts as success.
    pub(crate) async fn add_address(&self, index: u32, address: Ipv6Addr) -> io::Result<()> {
        let mut req = self.handle.address().add(index, address.into(), 128);
        let msg = req.message_mut();
        // IFA_F_NODAD: skip duplicate address detection, so the address is
        // usable at once and no neighbour solicitation leaves the node.
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        ignore_exists(req.execute().await.map_err(netlink_to_io))
    }

    /// `ip -6 route add P/L dev X`. A route that is already there counts as
    /// success. The link must be up, or the kernel answers `ENETDOWN`.
    pub(crate) async fn add_route(&self, index: u32, prefix: Ipv6Addr, len: u8) -> io::Result<()> {
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(prefix, len)
            .output_interface(index)
            .build();
        ignore_exists(
            self.handle
                .route()
                .add(route)
                .execute()
                .await
                .map_err(netlink_to_io),
        )
    }

    /// The index of the link named `name`, or `None` if there is none.
    pub(crate) async fn index_of(&self, name: &str) -> io::Result<Option<u32>> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            Err(e) => {
                let e = netlink_to_io(e);
                if e.raw_os_error() == Some(libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// `ip link del` by index. A link that is already gone counts as success.
    pub(crate) async fn delete(&self, index: u32) -> io::Result<()> {
        match self
            .handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(netlink_to_io)
        {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            other => other,
        }
    }

    /// Waits until no link named `name` with index `index` exists.
    pub(crate) async fn wait_gone(&self, name: &str, index: u32) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + REMOVE_TIMEOUT;
        loop {
            match self.index_of(name).await? {
                Some(i) if i == index => {}
                // Gone, or the name now belongs to someone else's interface.
                _ => return Ok(()),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("interface still exists {REMOVE_TIMEOUT:?} after removal"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Maps `EEXIST` to success.
fn ignore_exists(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Whether the kernel has IPv6 at all.
pub(crate) fn ipv6_available() -> bool {
    Path::new(IPV6_CONF).is_dir()
}

/// Reads `/proc/sys/net/ipv6/conf/<name>/<key>`, trimmed; `None` if it
/// cannot be read.
pub(crate) fn read_ipv6_sysctl(name: &str, key: &str) -> Option<String> {
    let path = Path::new(IPV6_CONF).join(name).join(key);
    std::fs::read_to_string(path)
        .ok()
        .map(|v| v.trim().to_owned())
}

/// Writes `/proc/sys/net/ipv6/conf/<name>/<key>`.
pub(crate) fn write_ipv6_sysctl(name: &str, key: &str, value: &str) -> io::Result<()> {
    let path = Path::new(IPV6_CONF).join(name).join(key);
    std::fs::write(&path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value} to {}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eexist_is_success() {
        assert!(ignore_exists(Err(io::Error::from_raw_os_error(libc::EEXIST))).is_ok());
        assert!(ignore_exists(Err(io::Error::from_raw_os_error(libc::ENETDOWN))).is_err());
        assert!(ignore_exists(Ok(())).is_ok());
    }
}
