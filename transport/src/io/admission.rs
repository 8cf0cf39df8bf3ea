//! How many connections that are not links the listener holds at once
//! (docs/threat-model.md, "Denial of service"). Every TCP connection the
//! listener accepts holds a slot until it becomes a link or closes: at
//! [`AdmissionLimits::total`] the listener stops accepting, and new
//! connections wait in the kernel's backlog, as nginx's do once its
//! `worker_connections` are used up; a source (an IPv4 address, or an IPv6
//! /64) past [`AdmissionLimits::per_source`] has its new connections closed
//! at once, with nothing sent. Either way a prober sees a busy web server,
//! slow or closing, and a flood from one source leaves room for everyone
//! else. Links hold no slot: they are bounded by the node's agreements.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections that are not links, at most, by default.
pub const MAX_UNAUTHENTICATED: usize = 1024;

/// Connections that are not links from one source, at most, by default.
pub const MAX_PER_SOURCE: usize = 64;

/// The listener's limits on connections that are not links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// All sources together.
    pub total: usize,
    /// One IPv4 address, or one IPv6 /64.
    pub per_source: usize,
}

impl Default for AdmissionLimits {
    fn default() -> AdmissionLimits {
        AdmissionLimits {
            total: MAX_UNAUTHENTICATED,
            per_source: MAX_PER_SOURCE,
        }
    }
}

/// The slots and who holds them.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: AdmissionLimits,
    slots: Arc<Semaphore>,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Ticket {
    _slot: OwnedSemaphorePermit,
    source: IpAddr,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = sources.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                sources.remove(&self.source);
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(limits: AdmissionLimits) -> Admission {
        Admission {
            limits,
            slots: Arc::new(Semaphore::new(limits.total.max(1))),
            sources: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A free slot, waiting while there is none; whether it had to wait.
    pub(crate) async fn slot(&self) -> (OwnedSemaphorePermit, bool) {
        if let Ok(p) = Arc::clone(&self.slots).try_acquire_owned() {
            return (p, false);
        }
        match Arc::clone(&self.slots).acquire_owned().await {
            Ok(p) => (p, true),
            // Only a closed semaphore fails, and this one is never closed.
            Err(_) => std::future::pending().await,
        }
    }

    /// Admits a connection from `remote` on `slot`, or `None` if its source
    /// holds its limit already.
    pub(crate) fn admit(&self, slot: OwnedSemaphorePermit, remote: IpAddr) -> Option<Ticket> {
        let source = source_of(remote);
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let n = sources.entry(source).or_insert(0);
        if *n >= self.limits.per_source {
            return None;
        }
        *n += 1;
        Some(Ticket {
            _slot: slot,
            source,
            sources: Arc::clone(&self.sources),
        })
    }

    /// Connections admitted and holding their slot now.
    pub(crate) fn held(&self) -> usize {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}

/// What the per-source limit counts by: an IPv4 address (IPv4-mapped ones
/// too), or the /64 of an IPv6 address, which one host usually holds whole.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let o = v6.octets();
                let mut p = [0u8; 16];
                p[..8].copy_from_slice(&o[..8]);
                IpAddr::V6(Ipv6Addr::from(p))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[tokio::test]
    async fn a_source_past_its_limit_is_refused_and_freed_slots_return() {
        let a = Admission::new(AdmissionLimits {
            total: 4,
            per_source: 2,
        });
        let mut held = Vec::new();
        for _ in 0..2 {
            let (slot, waited) = a.slot().await;
            assert!(!waited);
            held.push(a.admit(slot, ip("198.18.0.1")).expect("under the limit"));
        }
        let (slot, _) = a.slot().await;
        assert!(a.admit(slot, ip("198.18.0.1")).is_none(), "past its limit");
        // The refused connection's slot came back.
        assert_eq!(a.held(), 2);
        assert_eq!(a.slots.available_permits(), 2);
        let (slot, _) = a.slot().await;
        held.push(a.admit(slot, ip("198.18.0.2")).expect("another source"));
        drop(held.remove(0));
        let (slot, _) = a.slot().await;
        held.push(a.admit(slot, ip("198.18.0.1")).expect("a slot was freed"));
        assert_eq!(a.held(), 3);
    }

    #[tokio::test]
    async fn at_the_total_the_listener_waits_for_a_free_slot() {
        let a = Arc::new(Admission::new(AdmissionLimits {
            total: 2,
            per_source: 2,
        }));
        let t1 = a.admit(a.slot().await.0, ip("198.18.0.1"));
        let _t2 = a.admit(a.slot().await.0, ip("198.18.0.2"));
        let waiter = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.slot().await.1 })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "no slot is free");
        drop(t1);
        assert!(
            waiter.await.expect("waiter"),
            "it waited, then got the slot"
        );
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(source_of(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(source_of(ip("::ffff:198.18.0.1")), ip("198.18.0.1"));
        assert_eq!(source_of(ip("198.18.0.1")), ip("198.18.0.1"));
    }
}
