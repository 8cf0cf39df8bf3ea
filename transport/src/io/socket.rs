//! Socket options every link connection gets, whichever way it was made
//! (dialed, accepted, punched).
//!
//! - `TCP_NODELAY`: cells are written in batches already; waiting for
//!   Nagle only adds latency.
//! - `TCP_NOTSENT_LOWAT` at [`NOTSENT_LOWAT`]: the kernel keeps at most
//!   that much *unsent* data in the socket, however large the send buffer
//!   grows for bytes in flight. What waits beyond it waits in the
//!   daemon's own per-link fair queue, which decides whose cells go first
//!   when the link is the bottleneck (docs/architecture.md, "Ledgers");
//!   in a multi-megabyte kernel buffer every cell would wait in one FIFO.
//!   Throughput is not limited: bytes sent and not yet acknowledged do not
//!   count toward it.
//!
//! Once a connection is a link ([`tune_link`]), `TCP_USER_TIMEOUT` at
//! [`LINK_USER_TIMEOUT`]: data the kernel sent that stays unacknowledged
//! that long ends the connection, so a peer whose network silently drops
//! everything is found even while the link's writer waits on a full pipe,
//! where its own probe (`proto::liveness`) cannot go out. Cover
//! connections keep the kernel's default, as nginx's do.

use std::time::Duration;

use tokio::net::TcpStream;

/// How long a link's sent data may stay unacknowledged.
pub const LINK_USER_TIMEOUT: Duration = Duration::from_secs(4);

/// The most unsent bytes a link socket holds.
pub const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Sets the options; a failure (an old kernel) is not worth failing the
/// connection for.
pub(crate) fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(NOTSENT_LOWAT);
}

/// What a link connection gets on top of [`tune`].
pub(crate) fn tune_link(socket: socket2::SockRef<'_>) {
    let _ = socket.set_tcp_user_timeout(Some(LINK_USER_TIMEOUT));
}
