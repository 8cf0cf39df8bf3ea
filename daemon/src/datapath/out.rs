//! What the datapath writes to one link: a fair queue
//! ([`umbra_routing::ledger::fair`]) and the task that empties it into
//! the link's own bounded queue, so the datapath never waits on a slow link
//! and relays never drop a cell.
//!
//! When the link is slow, cells wait here, and the fair queue decides
//! whose go next by the payers' standing in their ledgers
//! (docs/architecture.md, "Ledgers"). What can wait is bounded by the
//! end-to-end windows of the circuits over the link (1,000 cells each).
//!
//! The writer counts the cells it hands to the link, by who created their
//! circuit, and finishes each ledger report with those counts as it writes
//! it: the report then says exactly what went before it on the wire.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use umbra_routing::Identity;
use umbra_routing::ledger::fair::{FairQueue, Flow};
use umbra_routing::ledger::report::Counts;
use umbra_routing::ledger::{Classifier, Draft, circ_id_of};
use umbra_transport::io::LinkSender;
use umbra_transport::proto::frame::Frame;

/// One thing to write.
enum Item {
    Cell(Bytes),
    Report(Box<Draft>),
    Frame(Frame),
}

#[derive(Default)]
struct Queue {
    fair: FairQueue<Item>,
    /// No more will be pushed: the writer ends once the queue is empty.
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
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
    ) -> LinkOut {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
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

    /// Queues a cell paid for by `flow`, whose weight is `weight`.
    pub(super) fn cell(&self, flow: Flow, weight: u32, cell: Bytes) {
        self.push(|q| q.push(flow, weight, Item::Cell(cell)));
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

/// The writer: takes items in the fair queue's order and writes them to the
/// link, until the queue is closed and empty or the link ends. Returns the
/// cells it wrote, by who created their circuit.
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
    loop {
        let item = {
            let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            match q.fair.pop() {
                Some(item) => Some(item),
                None if q.closed => return sent,
                None => None,
            }
        };
        let Some(item) = item else {
            shared.wake.notified().await;
            continue;
        };
        let frame = match item {
            Item::Cell(cell) => {
                classifier.count(&mut sent, circ_id_of(&cell));
                Frame::Cell(cell)
            }
            Item::Report(draft) => Frame::Ledger(draft.finish(sent, &identity).into()),
            Item::Frame(f) => f,
        };
        if sender.send(frame).await.is_err() {
            return sent;
        }
    }
}
