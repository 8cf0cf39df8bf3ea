//! Link padding for `anonymity = "strong"`, paid from the agreement.
//!
//! A strong node pads its side of every link at `[padding] rate`, capped by
//! what that link's agreement has left this period, and asks the peer with
//! [`LinkControl::Padding`] to pad toward it at the same rate. The peer
//! pads at the asked rate, capped the same way, whatever its own
//! `anonymity`.
//!
//! Padding is paid from unused quota (docs/architecture.md, "Ledgers"): it
//! is charged to the ledger of the node that asked for it (or that sent it
//! unasked), and its cap is what the period's quota has left after traffic,
//! spread over the rest of the period. Before the first ledger figures the
//! cap is the terms' average rate.

use umbra_transport::io::{self as tio, Link};
use umbra_transport::proto::control::LinkControl;

use super::{Links, short_key};
use crate::events::LinkId;

impl Links {
    /// The padding rate this node wants on every link: `[padding] rate`
    /// with `anonymity = "strong"`, else 0.
    fn padding_wanted(&self) -> u32 {
        let config = self.config();
        if config.anonymity == umbra_config::Anonymity::Strong {
            config.padding.rate.bytes_per_sec
        } else {
            0
        }
    }

    /// The most padding the agreement with `peer` pays for, in bytes/s each
    /// way: what its quota has left this period over the rest of the period
    /// (before the first ledger figures, its terms' average rate).
    fn padding_cap(&self, peer: &[u8; 32]) -> u32 {
        if let Some(&cap) = self
            .padding_caps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
        {
            return cap;
        }
        let rate = self.terms_for(peer).average_bytes_per_sec();
        u32::try_from(rate).unwrap_or(u32::MAX)
    }

    /// What to pad at toward `peer`, and what to ask it for: this node's
    /// own rate and the rate the peer asked for, each capped by the
    /// agreement.
    pub(super) fn padding_rates(&self, peer: &[u8; 32], asked: u32) -> (u32, u32) {
        padding_rates(self.padding_wanted(), asked, self.padding_cap(peer))
    }

    /// The padding rate `peer` asked for on its live link.
    pub(super) fn padding_asked(&self, peer: &[u8; 32]) -> u32 {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(peer).map_or(0, |e| e.padding_asked)
    }

    /// Applies the current config's padding to every live link (SIGHUP).
    pub(super) fn refresh_padding(&self) {
        let live: Vec<([u8; 32], tio::LinkSender, u32, u32)> = {
            let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers
                .iter()
                .filter_map(|(k, e)| {
                    let s = e.sender.as_ref().filter(|s| !s.is_closed())?;
                    Some((*k, s.clone(), e.padding_asked, e.padding_requested))
                })
                .collect()
        };
        for (peer, sender, asked, requested) in live {
            let (out, request) = self.padding_rates(&peer, asked);
            sender.set_padding(out);
            if request != requested {
                let ask = LinkControl::Padding {
                    bytes_per_sec: request,
                };
                match sender.try_send(ask.frame()) {
                    Ok(true) => {
                        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(e) = peers.get_mut(&peer) {
                            e.padding_requested = request;
                        }
                    }
                    _ => {
                        tracing::warn!(peer = %short_key(&peer), "could not send the new padding request; it goes out when the link next comes up")
                    }
                }
            }
        }
    }

    /// On link up: pads this side at this node's own rate and, if that is
    /// not zero, asks the peer to pad toward it at the same rate.
    pub(super) async fn start_padding(&self, link: &Link, link_id: LinkId) {
        let (out, request) = self.padding_rates(&link.peer, 0);
        link.sender.set_padding(out);
        if request == 0 {
            return;
        }
        tracing::info!(peer = %short_key(&link.peer), rate = request, "padding the link, and asking the peer to pad back (bytes/s)");
        let ask = LinkControl::Padding {
            bytes_per_sec: request,
        };
        if link.sender.send(ask.frame()).await.is_ok() {
            self.with_entry(&link.peer, link_id, |e| e.padding_requested = request);
        }
    }

    /// The peer asked for padding toward it at `rate` bytes/s.
    pub(super) fn on_padding_request(&self, link: &Link, link_id: LinkId, rate: u32) {
        let peer = link.peer;
        self.with_entry(&peer, link_id, |e| e.padding_asked = rate);
        let (out, _) = self.padding_rates(&peer, rate);
        link.sender.set_padding(out);
        tracing::info!(peer = %short_key(&peer), asked = rate, rate = out, "the peer asked for padding (bytes/s)");
    }

    /// The peer sent a padding request with `len` bytes after the tag,
    /// not four: it is ignored, counted and logged.
    pub(super) fn on_malformed_padding_request(
        &self,
        peer: &[u8; 32],
        link_id: LinkId,
        len: usize,
    ) {
        let count = self
            .with_entry(peer, link_id, |e| {
                e.padding_malformed += 1;
                e.padding_malformed
            })
            .unwrap_or(1);
        // The first from this peer is worth a warning; the rest are counted.
        if count == 1 {
            tracing::warn!(peer = %short_key(peer), len, "ignoring a malformed padding request");
        } else {
            tracing::debug!(peer = %short_key(peer), len, count, "ignoring a malformed padding request");
        }
    }
}

/// `(pad at, ask the peer for)` on one link, in bytes/s: this node's own
/// rate (`wanted`, 0 unless strong) and the rate the peer `asked` for, each
/// capped by what the agreement pays for (`cap`). Both sides pad at the
/// higher of the two, so a strong node's link is padded both ways.
fn padding_rates(wanted: u32, asked: u32, cap: u32) -> (u32, u32) {
    let own = wanted.min(cap);
    (own.max(asked.min(cap)), own)
}

#[cfg(test)]
mod tests {
    use umbra_config::Terms;

    use super::*;

    #[test]
    fn padding_is_the_higher_wish_capped_by_the_agreement() {
        const K64: u32 = 64 * 1024;
        let cap = |terms: &str| {
            let t: Terms = terms.parse().expect("terms");
            u32::try_from(t.average_bytes_per_sec()).unwrap_or(u32::MAX)
        };
        let (big, small) = (cap("1TB/30d"), cap("50GiB/30d"));
        assert_eq!((big, small), (385_802, 20_712));
        // A strong node with room in the agreement pads and asks at its rate.
        assert_eq!(padding_rates(K64, 0, big), (K64, K64));
        // The default terms pay for about 20 KiB/s: both are capped there.
        assert_eq!(padding_rates(K64, 0, small), (small, small));
        // A balanced node pads only as asked, capped by the agreement.
        assert_eq!(padding_rates(0, K64, big), (K64, 0));
        assert_eq!(padding_rates(0, u32::MAX, small), (small, 0));
        // Two strong nodes pad at the higher rate; 0 asks for nothing.
        assert_eq!(padding_rates(K64, 2 * K64, big), (2 * K64, K64));
        assert_eq!(padding_rates(0, 0, big), (0, 0));
    }
}
