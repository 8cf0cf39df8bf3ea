//! What the datapath writes to one link: a fair queue
//! ([`umbra_routing::ledger::fair`]) and the task that empties it into
//! the link's own bounded queue, so the datapath never waits on a slow link
//! and relays never drop a cell.
//!
//! When the link is slow, cells wait here, and the fair queue decides
//! whose go next by the payers' standing in their ledgers
//! (docs/architecture.md, "Ledgers"). What can wait is bounded by the
//! end-to-end windows of the circuits over the link (1,000 cells each) when
//! their ends are honest; an end that ignores its window meets
//! [`MAX_QUEUED_PER_CIRCUIT`] (its circuit is closed and its waiting cells
//! dropped), and all links together meet [`MAX_QUEUED_CELLS`], past which
//! the circuits holding the most are closed first (docs/architecture.md,
//! "Faults").
//!
//! The writer counts the cells it hands to the link, by who created their
//! circuit, and finishes each ledger report with those counts as it writes
//! it: the report then says exactly what went before it on the wire.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use umbra_routing::Identity;
use umbra_routing::ledger::fair::{FairQueue, Flow};
use umbra_routing::ledger::report::Counts;
use umbra_routing::ledger::{Classifier, Draft, circ_id_of};
use umbra_transport::io::{LINK_BATCH_MAX_FRAMES, LinkSender};
use umbra_transport::proto::frame::Frame;

/// Cells one circuit may have waiting on one link: twice the end-to-end
/// window, which no honest end exceeds.
pub(super) const MAX_QUEUED_PER_CIRCUIT: u32 = 2 * umbra_routing::circuit::CIRCUIT_WINDOW_CELLS;

/// Cells all links together may have waiting (about 78 MB of cells).
pub(super) const MAX_QUEUED_CELLS: usize = 64 * 1024;

/// One thing to write.
enum Item {
    Cell(Bytes),
    Report(Box<Draft>),
    Frame(Frame),
}

#[derive(Default)]
struct Queue {
    fair: FairQueue<Item>,
    /// Cells waiting, by circuit id on this link.
    per_circuit: HashMap<u32, u32>,
    /// No more will be pushed: the writer ends once the queue is empty.
    closed: bool,
}

impl Queue {
    /// One cell of `circ` left the queue to be written.
    fn release(&mut self, circ: u32, total: &AtomicUsize) {
        if let Some(n) = self.per_circuit.get_mut(&circ) {
            *n -= 1;
            if *n == 0 {
                self.per_circuit.remove(&circ);
            }
        }
        total.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    /// Cells waiting on every link of the node.
    total: Arc<AtomicUsize>,
}

impl Drop for Shared {
    /// Cells still waiting when the link's queue goes (its link went down)
    /// no longer count toward the node's total.
    fn drop(&mut self) {
        let q = self.queue.get_mut().unwrap_or_else(|p| p.into_inner());
        let left: u32 = q.per_circuit.values().sum();
        self.total.fetch_sub(left as usize, Ordering::Relaxed);
    }
}

/// What became of a cell handed to [`LinkOut::cell`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queued {
    /// It waits its turn.
    Yes,
    /// Its circuit already had [`MAX_QUEUED_PER_CIRCUIT`] waiting: the
    /// cell was dropped, and the circuit should be closed.
    Overrun(u32),
}

/// The datapath's handle on one link's queue and writer.
pub(super) struct LinkOut {
    shared: Arc<Shared>,
    writer: JoinHandle<Counts>,
}

impl LinkOut {
    /// A queue for `sender`, whose writer starts once `after` (the writer of
    /// the connection this one replaces) has written everything, and counts
    /// on from its counts.
    pub(super) fn new(
        sender: LinkSender,
        identity: Identity,
        classifier: Classifier,
        after: Option<JoinHandle<Counts>>,
        total: Arc<AtomicUsize>,
    ) -> LinkOut {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            total,
        });
        let writer = tokio::spawn(write(
            Arc::clone(&shared),
            sender,
            identity,
            classifier,
            after,
        ));
        LinkOut { shared, writer }
    }

    fn push(&self, f: impl FnOnce(&mut FairQueue<Item>)) {
        let was_empty = {
            let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            let was_empty = q.fair.is_empty();
            f(&mut q.fair);
            was_empty
        };
        // The writer waits only on an empty queue.
        if was_empty {
            self.shared.wake.notify_one();
        }
    }

    /// Queues a cell paid for by `flow`, whose weight is `weight`, unless
    /// its circuit has too many waiting already.
    pub(super) fn cell(&self, flow: Flow, weight: u32, cell: Bytes) -> Queued {
        let circ = circ_id_of(&cell);
        let was_empty = {
            let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            let n = q.per_circuit.entry(circ).or_insert(0);
            if *n >= MAX_QUEUED_PER_CIRCUIT {
                return Queued::Overrun(circ);
            }
            *n += 1;
            self.shared.total.fetch_add(1, Ordering::Relaxed);
            let was_empty = q.fair.is_empty();
            q.fair.push(flow, weight, Item::Cell(cell));
            was_empty
        };
        if was_empty {
            self.shared.wake.notify_one();
        }
        Queued::Yes
    }

    /// Drops the waiting cells of circuit `circ` (closed); how many.
    pub(super) fn drop_circuit(&self, circ: u32) -> usize {
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        let removed = q
            .fair
            .remove_cells(|item| matches!(item, Item::Cell(c) if circ_id_of(c) == circ));
        q.per_circuit.remove(&circ);
        self.shared.total.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// The circuit with the most cells waiting here, and how many.
    pub(super) fn largest(&self) -> Option<(u32, u32)> {
        let q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.per_circuit
            .iter()
            .max_by_key(|&(&c, &n)| (n, c))
            .map(|(&c, &n)| (c, n))
    }

    /// Queues a ledger report, to finish as it is written.
    pub(super) fn report(&self, draft: Draft) {
        self.push(|q| q.push_control(Item::Report(Box::new(draft))));
    }

    /// Queues a frame that is not a cell (a graph record): it goes before
    /// waiting cells.
    pub(super) fn control(&self, frame: Frame) {
        self.push(|q| q.push_control(Item::Frame(frame)));
    }

    /// Writes `last` after everything queued, then ends the writer; returns
    /// it, for the next connection's writer to wait on.
    pub(super) fn finish(self, last: Option<Frame>) -> JoinHandle<Counts> {
        {
            let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = last {
                q.fair.push_last(Item::Frame(f));
            }
            q.closed = true;
        }
        self.shared.wake.notify_one();
        self.writer
    }
}

/// The writer: takes items in the fair queue's order, up to
/// [`LINK_BATCH_MAX_FRAMES`] under one lock, and hands them to the link as
/// one batch, until the queue is closed and empty or the link ends. The
/// link's own queue holds two batches, so what waits for a slow link waits
/// here, in the fair queue's order. Returns the cells it wrote, by who
/// created their circuit.
async fn write(
    shared: Arc<Shared>,
    sender: LinkSender,
    identity: Identity,
    classifier: Classifier,
    after: Option<JoinHandle<Counts>>,
) -> Counts {
    let mut sent = match after {
        Some(previous) => previous.await.unwrap_or_default(),
        None => Counts::default(),
    };
    let mut items = Vec::with_capacity(LINK_BATCH_MAX_FRAMES);
    loop {
        let closed = {
            let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            while items.len() < LINK_BATCH_MAX_FRAMES {
                let Some(item) = q.fair.pop() else { break };
                if let Item::Cell(c) = &item {
                    q.release(circ_id_of(c), &shared.total);
                }
                items.push(item);
            }
            q.closed
        };
        if items.is_empty() {
            if closed {
                return sent;
            }
            shared.wake.notified().await;
            continue;
        }
        // A report counts exactly the cells before it in the batch.
        let frames = items
            .drain(..)
            .map(|item| match item {
                Item::Cell(cell) => {
                    classifier.count(&mut sent, circ_id_of(&cell));
                    Frame::Cell(cell)
                }
                Item::Report(draft) => Frame::Ledger(draft.finish(sent, &identity).into()),
                Item::Frame(f) => f,
            })
            .collect();
        if sender.send_batch(frames).await.is_err() {
            return sent;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use umbra_transport::io::{
        AdmissionLimits, CertSource, CoverSite, DialTarget, Dialer, Link, LinkListener,
        LinkSettings, ListenerConfig, TlsSettings, serve, server_tls_config,
    };

    use super::*;

    /// A real link over loopback: the dialer's end and the listener's.
    async fn link_pair(dir: &std::path::Path) -> (Link, Link) {
        let tls = server_tls_config(&TlsSettings {
            cert: CertSource::SelfSigned {
                dir: dir.to_path_buf(),
            },
            server_name: String::new(),
        })
        .expect("TLS");
        let identity = Identity::generate();
        let listener = Arc::new(LinkListener::new(ListenerConfig {
            identity: identity.clone(),
            tls,
            cover: CoverSite::built_in("notes.example.org", SystemTime::UNIX_EPOCH),
            authorizer: Arc::new(|_| Some(Vec::new())),
            link: LinkSettings::default(),
            admission: AdmissionLimits::default(),
        }));
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let (tx, mut links) = tokio::sync::mpsc::channel(1);
        tokio::spawn(serve(tcp, listener, tx));
        let dialer = Dialer::new(Identity::generate(), LinkSettings::default()).expect("dialer");
        let target = DialTarget {
            peer: identity.public(),
            endpoint: addr.to_string(),
            server_name: None,
        };
        let out = dialer.dial(&target, b"").await.expect("dial");
        let inb = links.recv().await.expect("the listener's end");
        (out, inb)
    }

    fn cell(circ: u32) -> Bytes {
        let mut c = vec![0u8; umbra_routing::cell::CELL_LEN];
        c[..4].copy_from_slice(&circ.to_be_bytes());
        Bytes::from(c)
    }

    /// A circuit whose cells keep coming while its link does not drain (its
    /// peer never reads) is stopped at twice the window; dropping it gives
    /// its cells back, and the node's total follows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_circuit_past_its_queue_is_overrun_and_its_cells_can_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The listener's end is kept but never read.
        let (out, unread) = link_pair(dir.path()).await;
        let total = Arc::new(AtomicUsize::new(0));
        let peer = [9u8; 32];
        let q = LinkOut::new(
            out.sender.clone(),
            Identity::generate(),
            Classifier::new(&[1u8; 32], &peer),
            None,
            Arc::clone(&total),
        );
        // Another circuit's few cells share the link.
        for _ in 0..10 {
            assert_eq!(q.cell(peer, 1, cell(8)), Queued::Yes);
        }
        let mut overrun_at = None;
        for i in 0..20_000u32 {
            if let Queued::Overrun(c) = q.cell(peer, 1, cell(7)) {
                assert_eq!(c, 7);
                overrun_at = Some(i);
                break;
            }
            if i % 256 == 0 {
                // Let the writer fill what the link can take.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let at = overrun_at.expect("the circuit was never stopped");
        eprintln!("circuit 7 was stopped after {at} cells ({MAX_QUEUED_PER_CIRCUIT} waiting)");
        assert_eq!(q.largest(), Some((7, MAX_QUEUED_PER_CIRCUIT)));
        let waiting = total.load(Ordering::Relaxed);
        assert!(waiting >= MAX_QUEUED_PER_CIRCUIT as usize, "{waiting}");
        let dropped = q.drop_circuit(7);
        assert_eq!(dropped, MAX_QUEUED_PER_CIRCUIT as usize);
        assert_eq!(total.load(Ordering::Relaxed), waiting - dropped);
        assert_ne!(q.largest().map(|l| l.0), Some(7));
        // The queue goes with its link: nothing is left counted.
        drop(q);
        drop(out);
        drop(unread);
        tokio::time::timeout(Duration::from_secs(10), async {
            while total.load(Ordering::Relaxed) != 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the writer ended with its link and gave its count back");
    }
}
