#![doc = include_str!("../README.md")]

mod device;
mod error;
mod netlink;
mod settings;

pub use device::{DEV_NET_TUN, Tun, TunStats};
pub use error::TunError;
pub use settings::{MAX_MTU, MAX_NAME_LEN, MIN_MTU, TunSettings};
