//! What the daemon's tasks tell the datapath, and the channel it comes
//! over. The links (readers, agreement changes) and `umbra run` (the
//! control socket, shutdown) send; the datapath receives.

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use umbra_routing::graph::Edge;
use umbra_routing::ledger::Charge;
use umbra_transport::io::LinkSender;

/// A link's id: given out once per link the daemon adopts, never reused
/// while it runs, and how the routing core names the link (its `link`).
pub(crate) type LinkId = u64;

/// What the link readers and the control socket tell the datapath.
#[derive(Debug)]
pub(crate) enum Input {
    /// A link is up; `sender` writes to it. `carried`: it rides circuits to
    /// `peer` itself (a relayed link over a circuit), so no circuit to `peer`
    /// may start on it.
    LinkUp {
        link: LinkId,
        peer: [u8; 32],
        sender: LinkSender,
        carried: bool,
        /// The connection's handshake hash: ledger reports on the link are
        /// bound to it.
        session: [u8; 32],
    },
    /// The link moved to a new connection (docs/protocol.md, "Link moves"):
    /// everything queued for it goes out on the old connection, then a
    /// `moved` marker naming the new one (`hash`), then the rest on `sender`.
    LinkMoved {
        link: LinkId,
        sender: LinkSender,
        hash: [u8; 32],
    },
    /// The link ended.
    LinkDown { link: LinkId },
    /// Cell frames arrived, in order ([`CELL_BATCH`] at most).
    Cells { link: LinkId, cells: Vec<Bytes> },
    /// A graph frame arrived.
    Graph { link: LinkId, bytes: Bytes },
    /// A ledger report arrived.
    Ledger { link: LinkId, bytes: Bytes },
    /// Bytes that are not cells to charge to ledgers: relayed links,
    /// padding (docs/architecture.md, "Ledgers").
    Charges(Vec<([u8; 32], Charge)>),
    /// `umbra agreements`: every ledger.
    Ledgers(oneshot::Sender<Value>),
    /// The node's agreements changed; these are its edges now.
    Edges(Vec<Edge>),
    /// `umbra status`: circuits and counters.
    Status(oneshot::Sender<Value>),
    /// `umbra path ADDRESS`.
    Path(std::net::Ipv6Addr, oneshot::Sender<Result<Value, String>>),
    /// Save the graph now and answer (shutdown).
    Flush(oneshot::Sender<()>),
    /// A metrics scrape: the routing core's circuits and drops.
    Metrics(oneshot::Sender<crate::metrics::CoreFigures>),
    /// Send a message to a node inside the end-to-end session; the reply
    /// says whether it could go (not whether it arrived).
    Message {
        to: [u8; 32],
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<(), MessageRefused>>,
    },
    /// A node's agreement edges in the graph (both ends listing them).
    Neighbours([u8; 32], oneshot::Sender<Vec<[u8; 32]>>),
    /// The node an overlay address belongs to, if the graph has it
    /// (`umbra propose ADDRESS`).
    NodeFor(std::net::Ipv6Addr, oneshot::Sender<Option<[u8; 32]>>),
    /// Whether the graph has a node with this key.
    Knows([u8; 32], oneshot::Sender<bool>),
    /// IPv6 packets from the userspace stack, in order, sent as the TUN's
    /// are (docs/architecture.md, "Apps without the TUN"): what one turn of
    /// the stack produced, so one input carries many.
    Packets(Vec<Vec<u8>>),
}

/// Why the routing core did not take a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MessageRefused {
    /// The circuit's send queue is full: try again once it drains.
    Full,
    /// It cannot go (no path, unknown node, too long …), and why.
    Cannot(String),
}

impl std::fmt::Display for MessageRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageRefused::Full => f.write_str("the circuit's send queue is full"),
            MessageRefused::Cannot(why) => f.write_str(why),
        }
    }
}

/// The handle the rest of the daemon sends to the datapath with.
pub(crate) type DatapathTx = mpsc::Sender<Input>;

/// Cells a link reader hands the datapath in one [`Input::Cells`]: what
/// the link had decoded when the reader woke, up to this.
pub(crate) const CELL_BATCH: usize = 32;

/// Inputs the datapath's channel holds: with [`CELL_BATCH`], at most 4,096
/// cells (4.9 MB) wait for the datapath.
const INPUTS_QUEUED: usize = 128;

/// The channel that feeds the datapath. Link readers wait when it is full,
/// which is back-pressure on the links.
pub(crate) fn channel() -> (DatapathTx, mpsc::Receiver<Input>) {
    mpsc::channel(INPUTS_QUEUED)
}
