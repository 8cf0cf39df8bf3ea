//! The datapath's side of the ledgers (docs/architecture.md, "Ledgers"):
//! storing them off the datapath's task, logging their checks, and what
//! `umbra agreements` shows of them.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use umbra_routing::ledger::{LedgerEvent, LedgerRecord};
use umbra_routing::router::{Now, RouterCore};

use crate::links::{Links, short_key};

type Rows = Vec<([u8; 32], LedgerRecord)>;

enum Msg {
    Save(Rows),
    Flush(Rows, oneshot::Sender<()>),
}

/// Writes ledger records to the state database on a blocking thread, the
/// newest of each peer's at a time, so the datapath never waits on a disk.
pub(super) struct Saver {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Saver {
    pub(super) fn spawn(links: Arc<Links>) -> Saver {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(links, rx));
        Saver { tx }
    }

    /// Stores these records soon; an error if the saver is gone (it
    /// panicked), which leaves the ledgers unstored: the datapath ends on
    /// it, and so does the daemon.
    pub(super) fn save(&self, rows: Rows) -> anyhow::Result<()> {
        self.tx
            .send(Msg::Save(rows))
            .map_err(|_| anyhow::anyhow!("the ledger saver has stopped"))
    }

    /// Stores these records after everything queued before, and returns
    /// once they are on disk.
    pub(super) async fn flush(&self, rows: Rows) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(rows, done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run(links: Arc<Links>, mut rx: mpsc::UnboundedReceiver<Msg>) {
    while let Some(first) = rx.recv().await {
        let mut batch: HashMap<[u8; 32], LedgerRecord> = HashMap::new();
        let mut acks = Vec::new();
        let mut take = |msg: Msg| {
            let rows = match msg {
                Msg::Save(rows) => rows,
                Msg::Flush(rows, ack) => {
                    acks.push(ack);
                    rows
                }
            };
            batch.extend(rows);
        };
        take(first);
        while let Ok(more) = rx.try_recv() {
            take(more);
        }
        let rows: Rows = batch.into_iter().collect();
        let l = Arc::clone(&links);
        match tokio::task::spawn_blocking(move || l.save_ledgers(&rows)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("storing the ledgers: {e:#}"),
            Err(e) => tracing::error!("storing the ledgers: {e}"),
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

/// Logs a ledger check (a mismatch loudly) or a dropped report.
pub(super) fn log_event(ev: &LedgerEvent) {
    match ev {
        LedgerEvent::Checked {
            peer,
            agreed: true,
            theirs,
            ..
        } => tracing::debug!(peer = %short_key(peer), seq = theirs.seq, "ledger report agrees"),
        LedgerEvent::Checked {
            peer,
            agreed: false,
            theirs,
            ours: (sent, recv),
        } => tracing::warn!(
            peer = %short_key(peer),
            seq = theirs.seq,
            their_sent_own = theirs.sent.own,
            their_sent_ours = theirs.sent.other,
            our_received_theirs = recv.other,
            our_received_own = recv.own,
            their_received_own = theirs.recv.own,
            their_received_ours = theirs.recv.other,
            our_sent_theirs = sent.other,
            our_sent_own = sent.own,
            "ledger mismatch: the peer's report of cells on this link does not match ours \
             (cells lost or a dishonest count); our ledger keeps our own counts"
        ),
        LedgerEvent::Dropped { peer, why } => {
            tracing::debug!(peer = %short_key(peer), ?why, "dropped a ledger report")
        }
    }
}

/// Every ledger as `umbra agreements` shows it, by peer key (hex), and
/// the reports dropped.
pub(super) fn views(core: &mut RouterCore, now: Now) -> Value {
    let peers: Vec<[u8; 32]> = core
        .ledgers()
        .records()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut out = serde_json::Map::new();
    for peer in peers {
        let Some(v) = core.ledger_view(now, &peer) else {
            continue;
        };
        let mut j = record_json(&v.record);
        j["state"] = json!(v.standing.name());
        j["period_end_unix"] = json!(v.period_end_unix);
        j["debt_limit"] = json!(v.terms.debt);
        j["cutoff"] = json!(v.terms.cutoff);
        j["refused"] = json!({
            "cut_off": v.refusals.cut_off,
            "too_many_circuits": v.refusals.too_many_circuits,
        });
        out.insert(hex::encode(peer), j);
    }
    let d = core.ledgers().drops();
    json!({
        "peers": out,
        "dropped_reports": {
            "malformed": d.malformed,
            "forged": d.forged,
            "replayed": d.replayed,
            "too_often": d.too_often,
        },
    })
}

/// A ledger's stored fields as `umbra agreements` shows them; `state` is
/// null until a live standing fills it in.
pub(crate) fn record_json(r: &LedgerRecord) -> Value {
    json!({
        "relayed_for_peer": r.relayed_for_peer,
        "relayed_by_peer": r.relayed_by_peer,
        "balance": r.balance,
        "state": Value::Null,
        "agreed": r.agreed,
        "peer_agreed": r.peer_agreed,
        "last_check_unix": (r.last_check_unix > 0).then_some(r.last_check_unix),
        "mismatches": r.mismatches,
        "total_for_peer": r.total_for_peer,
        "total_by_peer": r.total_by_peer,
    })
}
