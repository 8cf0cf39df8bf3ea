#![doc = include_str!("../README.md")]

pub mod address;
pub mod crypto;

pub use address::{address_for_key, subnet_for_key};
pub use crypto::Identity;
