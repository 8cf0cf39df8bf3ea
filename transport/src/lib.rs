#![doc = include_str!("../README.md")]

mod crypto;
pub mod io;
pub mod proto;
