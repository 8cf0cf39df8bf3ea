//! Sans-IO protocol parts of links: handshake, framing, padding, round-trip
//! times, liveness under load, invite tokens, link control messages, the agreement asked for
//! in the handshake, the NAT classification from observed addresses, NAT
//! traversal messages, relayed streams, and agreement proposals over the
//! overlay.
//!
//! Nothing here does I/O, reads the clock or spawns tasks: callers pass bytes,
//! `now_unix` and random sources in, and get bytes and typed results out
//! (docs/architecture.md, "Crates"). `io` drives these types over
//! TLS and HTTP/2.
//!
//! Every multi-byte integer on the wire is big-endian.

pub mod addr;
pub mod agreement;
mod codec;
pub mod control;
pub mod frame;
pub mod handshake;
pub mod invite;
pub mod liveness;
pub mod nat;
pub mod padding;
pub mod proposal;
pub mod relay;
pub mod rtt;
pub mod traversal;
