#![doc = include_str!("README.md")]

pub mod netns;
pub mod sim;
