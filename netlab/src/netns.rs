//! [`Netns`]: a network namespace, deleted with everything in it on drop.

use std::ffi::OsStr;
use std::process::{Command, Output};

use crate::registry::{self, delete_namespace};
use crate::{Result, cmd};

/// A network namespace with its loopback up. Dropping it kills every
/// process inside and deletes it (its veth ends go with it).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes the namespace `name` (recorded first, so a signal's cleanup
    /// removes it even half made).
    pub fn create(name: &str) -> Result<Netns> {
        registry::making(|r| {
            r.namespaces.push(name.to_string());
            cmd::sh(&["ip", "netns", "add", name])?;
            Ok(())
        })?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside; its stdout, or an error if it fails.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        cmd::sh(&full)
    }

    /// Runs a command inside; its output whatever its exit status.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        cmd::run(&full)
    }

    /// Limits what leaves interface `dev` inside to `mbit` Mbit/s (a token
    /// bucket filter: the lab's slow link, as this kernel has no `netem`).
    pub fn limit_egress(&self, dev: &str, mbit: u32) -> Result<()> {
        let rate = format!("{mbit}mbit");
        self.exec(&[
            "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate, "burst", "64kb",
            "latency", "50ms",
        ])
        .map(drop)
    }

    /// A `Command` for `program` inside. `ip netns exec` execs the program
    /// in place, so the child's pid is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// The name of the interface inside that holds the IPv4 address `ip`.
    pub fn iface_with_addr(&self, ip: &str) -> Result<String> {
        let out = self.exec(&["ip", "-o", "-4", "addr", "show", "to", ip])?;
        out.split_whitespace()
            .nth(1)
            .map(str::to_string)
            .ok_or_else(|| {
                crate::Error::Output(format!("no interface holds {ip} in {}: {out:?}", self.name))
            })
    }

    /// Whether a TCP socket inside listens on `port`.
    pub fn listens_tcp(&self, port: u16) -> bool {
        self.exec(&["ss", "-Hltn", &format!("sport = :{port}")])
            .is_ok_and(|o| !o.trim().is_empty())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut r = registry::lock();
        let Some(i) = r.namespaces.iter().position(|n| *n == self.name) else {
            return; // a cleanup already removed it
        };
        r.namespaces.remove(i);
        if delete_namespace(&self.name) {
            r.done.namespaces_deleted += 1;
        } else {
            r.done.left.push(self.name.clone());
        }
    }
}
