//! Shared support for umbra's end-to-end tests: the deterministic simulation
//! harness (`sim`) and helpers for network-namespace tests (`netns`).

pub mod netns;
pub mod sim;
