//! The `.umbra` DNS responder (docs/architecture.md, "Names"): UDP on
//! `[dns] listen`, a loopback address, answered by
//! [`umbra_routing::dns::Zone`]. What is not a DNS query is dropped and
//! counted; everything outside `.umbra` is refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use umbra_config::Config;
use umbra_routing::dns::{Outcome, Zone};

// A petname may never look like a key's name: the config's rule and the
// names' encoding must agree on the length of a key label.
const _: () = assert!(umbra_config::NAME_KEY_LABEL_LEN == umbra_routing::name::KEY_LABEL_LEN);

/// The largest DNS message over UDP read (EDNS allows up to 4096 bytes).
const MAX_QUERY_LEN: usize = 4096;

/// What the responder did, for `umbra status`.
#[derive(Debug, Default)]
pub(crate) struct DnsCounters {
    answered: AtomicU64,
    nxdomain: AtomicU64,
    refused: AtomicU64,
    malformed: AtomicU64,
    dropped: AtomicU64,
}

impl DnsCounters {
    /// `status`'s `dns`.
    pub(crate) fn json(&self, listen: SocketAddr) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "listen": listen.to_string(),
            "answered": get(&self.answered),
            "nxdomain": get(&self.nxdomain),
            "refused": get(&self.refused),
            "malformed": get(&self.malformed),
            "dropped": get(&self.dropped),
        })
    }
}

/// The zone the config describes.
pub(crate) fn zone(config: &Config) -> Zone {
    Zone {
        prefix: config.address_prefix,
        petnames: config
            .names
            .iter()
            .map(|(label, key)| (label.clone(), key.0))
            .collect(),
        srv: config.dns.srv.clone(),
    }
}

/// Binds the responder's socket.
pub(crate) async fn bind(addr: SocketAddr) -> Result<UdpSocket> {
    UdpSocket::bind(addr)
        .await
        .with_context(|| format!("[dns] listen = \"{addr}\": cannot listen"))
}

/// Answers queries on `socket` until a receive fails for good.
pub(crate) async fn serve(socket: UdpSocket, zone: Zone, counters: Arc<DnsCounters>) -> Result<()> {
    let mut buf = vec![0u8; MAX_QUERY_LEN];
    loop {
        let (n, from) = socket.recv_from(&mut buf).await.context("receiving DNS")?;
        let Some((reply, outcome)) = buf.get(..n).and_then(|q| zone.answer(q)) else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, len = n, "dropped a packet that is not a DNS query");
            continue;
        };
        let counter = match outcome {
            Outcome::Answered => &counters.answered,
            Outcome::NxDomain => &counters.nxdomain,
            Outcome::Refused => &counters.refused,
            Outcome::Malformed => &counters.malformed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = socket.send_to(&reply, from).await {
            tracing::debug!(%from, error = %e, "could not send a DNS answer");
        }
    }
}
