//! The links' side of the ledgers (docs/architecture.md, "Ledgers"):
//! the terms each agreement's ledger keeps, the stored records, the
//! per-neighbour ceiling on cells, and what is charged besides cells
//! (relayed-link bytes, padding), with the padding the remaining quota pays
//! for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use bytes::Bytes;
use serde_json::Value;
use umbra_config::Terms;
use umbra_routing::ledger::bucket::TokenBucket;
use umbra_routing::ledger::{
    CELL_BYTES, Charge, Classifier, LedgerRecord, LedgerTerms, Owner, circ_id_of,
};

use super::Links;
use crate::db::AgreementState;
use crate::events::Input;
use crate::vital::Vital;

/// How often relayed-link bytes and padding are charged, and padding caps
/// recomputed.
const CHARGE_EVERY: Duration = Duration::from_secs(1);
/// A neighbour's cell ceiling lets this long a burst at its rate through.
const CEILING_BURST: Duration = Duration::from_millis(250);

/// An agreement's terms as its ledger keeps them.
pub(crate) fn ledger_terms(t: &Terms) -> LedgerTerms {
    LedgerTerms {
        amount: t.bytes_per_period,
        period_secs: t.period_secs.max(1),
        debt: t.debt_bytes(),
        cutoff: t.cutoff_bytes(),
        carry: t.carry_bytes(),
        circuits_per_sec: t.circuits_per_sec(),
    }
}

/// The ceiling on the cells one neighbour pushes through this node: its
/// terms' `rate`, on cells of circuits it created. Its reader waits when
/// the neighbour goes faster, which slows only that link.
pub(super) struct CellCeiling {
    classifier: Classifier,
    bucket: TokenBucket,
}

impl CellCeiling {
    /// Waits until `cell` may go on, if it is on a circuit the neighbour
    /// created.
    pub(super) async fn pace(&mut self, cell: &Bytes) {
        if self.classifier.owner(circ_id_of(cell)) != Some(Owner::Other) {
            return;
        }
        let wait = self.bucket.take(CELL_BYTES, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// What is charged besides cells, gathered between charges.
#[derive(Debug, Default)]
pub(super) struct PendingCharges {
    /// Bytes this node relayed for each partner that opened a stream.
    for_peer: HashMap<[u8; 32], u64>,
    /// Bytes each relay carried for streams this node opened.
    by_peer: HashMap<[u8; 32], u64>,
    /// Cover frames counted so far on each peer's link, (out, in).
    cover_seen: HashMap<[u8; 32], (u64, u64)>,
}

impl PendingCharges {
    pub(super) fn relayed_for(&mut self, peer: &[u8; 32], bytes: usize) {
        *self.for_peer.entry(*peer).or_default() += bytes as u64;
    }

    pub(super) fn relayed_by(&mut self, peer: &[u8; 32], bytes: usize) {
        *self.by_peer.entry(*peer).or_default() += bytes as u64;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Links {
    /// Each agreement's peer and its terms, for its ledger: `[[peer]]`
    /// entries and stored active agreements (as [`Links::edges`]).
    pub(crate) fn ledger_terms(&self) -> Vec<([u8; 32], LedgerTerms)> {
        let mut peers: Vec<[u8; 32]> = self.config().peers.iter().map(|p| p.key.0).collect();
        match self.store().agreements() {
            Ok(list) => peers.extend(
                list.iter()
                    .filter(|a| a.state == AgreementState::Active)
                    .map(|a| a.peer_key),
            ),
            Err(e) => tracing::error!("reading agreements: {e:#}"),
        }
        peers.sort_unstable();
        peers.dedup();
        peers
            .into_iter()
            .map(|p| (p, ledger_terms(&self.terms_for(&p))))
            .collect()
    }

    /// Each stored agreement's local id, by its peer's key (metrics label
    /// ledgers by it, never by a key).
    pub(crate) fn agreement_ids(&self) -> HashMap<[u8; 32], i64> {
        match self.store().agreements() {
            Ok(list) => list.iter().map(|a| (a.peer_key, a.id)).collect(),
            Err(_) => HashMap::new(),
        }
    }

    /// The stored ledgers.
    pub(crate) fn load_ledgers(&self) -> Vec<([u8; 32], LedgerRecord)> {
        self.store().ledgers().unwrap_or_else(|e| {
            tracing::error!("reading the ledgers: {e:#}; they start even");
            Vec::new()
        })
    }

    /// Stores ledger records.
    pub(crate) fn save_ledgers(&self, rows: &[([u8; 32], LedgerRecord)]) -> Result<()> {
        self.store().save_ledgers(rows)
    }

    /// `peer`'s cell ceiling, if its terms set a `rate`.
    pub(super) fn cell_ceiling(&self, peer: &[u8; 32]) -> Option<CellCeiling> {
        let rate = u64::from(self.terms_for(peer).rate?.bytes_per_sec);
        let burst = ((rate as f64 * CEILING_BURST.as_secs_f64()) as u64).max(64 * CELL_BYTES);
        Some(CellCeiling {
            classifier: Classifier::new(&self.identity.public(), peer),
            bucket: TokenBucket::new(rate, burst, Instant::now()),
        })
    }

    /// Every ledger as the datapath has it (`umbra agreements`), or `Null`
    /// while the datapath does not run.
    pub(crate) async fn ledger_views(&self) -> Value {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.datapath.send(Input::Ledgers(tx)).await.is_err() {
            return Value::Null;
        }
        rx.await.unwrap_or(Value::Null)
    }

    /// Charges what is not cells every [`CHARGE_EVERY`]: relayed-link bytes
    /// (to the node that opened the stream) and padding (to the node that
    /// asked for it, or that sent it unasked); and caps padding at what the
    /// quota has left this period.
    pub(crate) fn spawn_charges(self: &Arc<Self>, vital: &Vital) {
        let me = Arc::clone(self);
        vital.spawn("ledger charges", async move {
            let mut tick = tokio::time::interval(CHARGE_EVERY);
            let mut caps_at = Instant::now();
            loop {
                tick.tick().await;
                let charges = me.take_charges();
                if !charges.is_empty() && me.datapath.send(Input::Charges(charges)).await.is_err() {
                    return Ok(());
                }
                if caps_at.elapsed() >= 10 * CHARGE_EVERY {
                    caps_at = Instant::now();
                    me.update_padding_caps().await;
                }
            }
        });
    }

    fn take_charges(&self) -> Vec<([u8; 32], Charge)> {
        // Padding on each live link since the last charge.
        // Per live link: its peer, its cover frames (out, in) so far, and the
        // padding rates the peer asked of us and we of it.
        type Cover = ([u8; 32], (u64, u64), u32, u32);
        let live: Vec<Cover> = {
            let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers
                .iter()
                .filter_map(|(k, e)| {
                    let s = e.stats.as_ref()?.get();
                    Some((
                        *k,
                        (s.cover_frames_out, s.cover_frames_in),
                        e.padding_asked,
                        e.padding_requested,
                    ))
                })
                .collect()
        };
        let mut pending = std::mem::take(&mut *self.charges());
        let mut out = Vec::new();
        for (peer, (sent, got), asked, requested) in live {
            let (seen_out, seen_in) = pending.cover_seen.get(&peer).copied().unwrap_or_default();
            // A new connection counts from zero again.
            let new_out = sent.checked_sub(seen_out).unwrap_or(sent);
            let new_in = got.checked_sub(seen_in).unwrap_or(got);
            let mut charge = |bytes: u64, for_peer: bool| {
                if bytes > 0 {
                    out.push((
                        peer,
                        if for_peer {
                            Charge::ForPeer(bytes)
                        } else {
                            Charge::ByPeer(bytes)
                        },
                    ));
                }
            };
            // What we sent is the peer's if it asked for it, ours if not;
            // what we got is ours if we asked, the peer's if not.
            charge(new_out * CELL_BYTES, asked > 0);
            charge(new_in * CELL_BYTES, requested == 0);
            pending.cover_seen.insert(peer, (sent, got));
        }
        for (peer, bytes) in pending.for_peer.drain() {
            out.push((peer, Charge::ForPeer(bytes)));
        }
        for (peer, bytes) in pending.by_peer.drain() {
            out.push((peer, Charge::ByPeer(bytes)));
        }
        // Only the cover counts carry over.
        self.charges().cover_seen = pending.cover_seen;
        out
    }

    /// What gathers charges between two [`Links::spawn_charges`] ticks.
    pub(super) fn charges(&self) -> std::sync::MutexGuard<'_, PendingCharges> {
        self.charges.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Recomputes each agreement's padding cap from its ledger: what the
    /// period's quota has left (the larger of the two directions' use
    /// taken off), spread over the rest of the period; and applies it.
    async fn update_padding_caps(&self) {
        let views = self.ledger_views().await;
        let Some(peers) = views["peers"].as_object() else {
            return;
        };
        let now = unix_now();
        let mut caps = HashMap::new();
        for (key, v) in peers {
            let Ok(Ok(peer)) = hex::decode(key).map(<[u8; 32]>::try_from) else {
                continue;
            };
            let amount = self.terms_for(&peer).bytes_per_period;
            let used = v["relayed_for_peer"]
                .as_u64()
                .unwrap_or(0)
                .max(v["relayed_by_peer"].as_u64().unwrap_or(0));
            let end = v["period_end_unix"].as_u64().unwrap_or(now);
            caps.insert(peer, padding_cap(amount, used, end.saturating_sub(now)));
        }
        let changed = {
            let mut current = self.padding_caps.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *current != caps;
            *current = caps;
            changed
        };
        if changed {
            self.refresh_padding();
        }
    }
}

/// The padding the rest of a period's quota pays for, in bytes/s: what is
/// left of `amount` after `used`, over `secs_left`.
pub(super) fn padding_cap(amount: u64, used: u64, secs_left: u64) -> u32 {
    let left = amount.saturating_sub(used);
    u32::try_from(left / secs_left.max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_paid_from_what_the_quota_has_left() {
        let day = 86_400;
        // 50GiB/30d at the start of a period with nothing used: its average.
        assert_eq!(padding_cap(50 << 30, 0, 30 * day), 20_712);
        // Half used halfway: the same rate for the rest.
        assert_eq!(padding_cap(50 << 30, 25 << 30, 15 * day), 20_712);
        // Traffic used it all: no padding until the next period.
        assert_eq!(padding_cap(50 << 30, 50 << 30, 15 * day), 0);
        assert_eq!(padding_cap(50 << 30, 60 << 30, 15 * day), 0);
        // Little used near the end: more padding.
        assert_eq!(padding_cap(50 << 30, 0, day), 621_378);
    }

    #[test]
    fn defaults_fill_in_unset_limits() {
        let t: Terms = "10GiB/1d, circuits 3/s".parse().expect("terms");
        let l = ledger_terms(&t);
        assert_eq!(
            (
                l.amount,
                l.period_secs,
                l.debt,
                l.cutoff,
                l.carry,
                l.circuits_per_sec
            ),
            (10 << 30, 86_400, 1 << 30, 5 << 30, 10 << 30, 3)
        );
    }
}
