#![doc = include_str!("../README.md")]

pub mod address;
pub mod cell;
#[doc(hidden)]
pub mod chain;
pub mod circuit;
pub mod crypto;
pub mod dns;
pub mod graph;
pub mod icmp;
pub mod ledger;
pub mod name;
pub mod path;
pub mod router;
pub mod session;

pub use address::{address_for_key, subnet_for_key};
pub use crypto::Identity;
