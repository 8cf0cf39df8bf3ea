//! Sans-IO protocol parts of links: handshake, framing, padding, invite tokens.
//!
//! Nothing here does I/O, reads the clock or spawns tasks: callers pass bytes,
//! `now_unix` and random sources in, and get bytes and typed results out
//! (STYLE.md, "Protocol cores that do no I/O"). `io` drives these types over
//! TLS and HTTP/2.
//!
//! Every multi-byte integer on the wire is big-endian.

mod codec;
pub mod frame;
pub mod handshake;
pub mod invite;
pub mod padding;
