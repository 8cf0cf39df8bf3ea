//! umbra's network-namespace lab, shared by the end-to-end tests, the
//! network benchmark and `umbra demo` (docs/architecture.md, "Testing").
//!
//! It makes namespaces ([`Netns`]) joined by veth pairs ([`Veth`],
//! [`Links`]) on 198.18.0.0/15 ("internet" hosts; hosts behind a NAT
//! [`Router`] use 100.64.0.0/10, and [`NatSite`] builds one of each
//! [`NatKind`]), writes daemon configs ([`UmbraConfig`],
//! [`Peer`]), runs `umbra run` in them ([`Daemon`]) and measures with
//! [`ping`] and [`iperf3`], and writes a reference nginx's config
//! ([`NginxConfig`]), and makes a router a port-mapping gateway
//! ([`UpnpGateway`], with its [`StunServer`]). Everything it makes is recorded first and
//! removed on drop, by [`Lab::cleanup`], and on a signal or a panic
//! ([`cleanup_on_signals`], [`cleanup_on_panic`]). It needs root.

mod cmd;
mod config;
mod daemon;
mod error;
mod iperf;
mod lab;
mod links;
mod matrix;
mod netns;
mod nginx;
mod ping;
mod process;
mod registry;
mod router;
mod upnp;
mod veth;
mod wait;

pub use cmd::{
    exited, has_tool, has_tun, is_root, parse_rss_kib, require_tools, rss_kib, run, sh, signal,
    tail,
};
pub use config::{Peer, UmbraConfig};
pub use daemon::{Daemon, Identity, START_TIMEOUT};
pub use error::{Error, Result};
pub use iperf::{IPERF_PORT, IperfOptions, IperfResult, IperfServer, iperf3};
pub use lab::Lab;
pub use links::{Links, named_after_peer, numbered};
pub use matrix::{
    Cell, MATRIX_PORT, MATRIX_TERMS, MatrixNode, MatrixOptions, NatMatrix, Site, expected_kind,
    full_matrix,
};
pub use netns::Netns;
pub use nginx::NginxConfig;
pub use ping::{PingOptions, PingReply, PingStats, ping};
pub use process::Proc;
pub use registry::{Cleanup, cleanup_on_panic, cleanup_on_signals};
pub use router::{Filtering, NatKind, NatMapping, NatRules, NatSite, Router};
pub use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};
pub use upnp::{STUN_PORTS, StunServer, UPNP_HTTP_PORT, UpnpGateway, UpnpOptions};
pub use veth::{End, Veth, internet_ip, nat_ip};
pub use wait::poll;
