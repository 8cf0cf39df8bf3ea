#![doc = include_str!("README.md")]

pub mod chain;
pub mod procfs;
pub mod stats;
pub mod svg;
