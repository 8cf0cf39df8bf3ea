//! The graph (`docs/protocol.md, "Node records"`): every node's view of all nodes and agreement
//! edges, without IP addresses.
//!
//! - [`NodeRecord`] is what a node signs about itself: its key, a sequence
//!   number, an expiry, its agreement edges with a capacity class, and its
//!   features. It never holds an IP address.
//! - [`Graph`] holds the newest valid record of every node. **An edge counts
//!   only when both ends list it**, so a Sybil attaches only through
//!   agreements that honest operators made.
//! - [`GraphCore`] is the sans-IO state machine of one node that floods
//!   records over its links, OSPF-LSA style, and synchronises a link's two
//!   sides when it comes up.
//!
//! # Time
//!
//! Time is a parameter: [`Time`] is wall-clock time in milliseconds since the
//! Unix epoch, passed in by the caller. It is not a monotonic `Instant`,
//! because a record's expiry is an absolute point in time that every node
//! checks against its own clock: a monotonic clock has no meaning outside
//! one process. The daemon passes `Time::from(SystemTime::now())`; the
//! simulation passes a virtual clock. Nothing here reads a clock.

mod codec;
mod flood;
mod index;
mod message;
mod record;
mod store;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use flood::{GraphCore, GraphCounters};
pub use message::{
    GraphMessage, MAX_MESSAGE_LEN, MessageError, REQUEST_MAX_KEYS, SUMMARY_MAX_ENTRIES, Summary,
};
pub use record::{
    Ed25519Verifier, Edge, MAX_EDGES, MAX_RECORD_LEN, MIN_RECORD_LEN, NodeRecord, RECORD_VERSION,
    RecordError, RecordVerifier,
};
pub use store::{DropReason, Graph, GraphMemory, ImportError, Inserted};

/// How often a node re-signs its own record even when nothing changed
/// (every 30 minutes: `docs/protocol.md, "Node records"`).
pub const RECORD_REFRESH: Duration = Duration::from_secs(30 * 60);

/// How long a record stays valid after it is signed. A node that stops
/// re-signing (it failed, or left) disappears from every graph this long
/// after its last record. Six refresh periods, so a few lost refreshes do not
/// make a live node vanish.
pub const RECORD_LIFETIME: Duration = Duration::from_secs(3 * 60 * 60);

/// How far a record's expiry may lie beyond `now + RECORD_LIFETIME` and still
/// be accepted: the clock difference between two nodes that we tolerate.
/// Without this bound, a record signed with a far-future expiry would never
/// leave the graph.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

/// How long new records wait before they are flooded on a link, so that
/// records arriving close together share one message and a record that the
/// peer sends us meanwhile is not sent back (OSPF's LSA pacing does the same).
pub const FLOOD_BATCH_DELAY: Duration = Duration::from_millis(50);

/// How long a record requested after a link-up summary may take to arrive
/// before the request is given up (and the key may be requested again).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Most nodes a graph holds. Past 100,000 nodes the graph would have to be
/// split into regions (not designed here yet); until then this bounds the memory that a flood of
/// records from fresh keys can take. Records of new nodes beyond it are
/// dropped and counted.
pub const MAX_GRAPH_NODES: usize = 100_000;

/// Wall-clock time, in milliseconds since the Unix epoch, passed in by the
/// caller (see the module documentation for why it is not an `Instant`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    /// The time `ms` milliseconds after the Unix epoch.
    pub const fn from_unix_millis(ms: u64) -> Time {
        Time(ms)
    }

    /// The time `secs` seconds after the Unix epoch.
    pub const fn from_unix_secs(secs: u64) -> Time {
        Time(secs.saturating_mul(1000))
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the Unix epoch (records carry seconds).
    pub const fn unix_secs(self) -> u64 {
        self.0 / 1000
    }

    /// `self + d`, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> Time {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(ms))
    }

    /// How long after `earlier` this is, or zero if it is not after it.
    pub fn saturating_duration_since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl From<SystemTime> for Time {
    /// The wall-clock time `t`; a time before the epoch becomes the epoch.
    fn from(t: SystemTime) -> Time {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Time(ms)
    }
}

impl std::ops::Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        self.saturating_add(d)
    }
}

impl std::ops::Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Time(self.0.saturating_sub(ms))
    }
}

/// A live link, as the caller names it. The graph core only uses it to tell
/// links apart; the daemon picks the numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_conversions() {
        let t = Time::from_unix_secs(1_700_000_000);
        assert_eq!(t.unix_millis(), 1_700_000_000_000);
        assert_eq!((t + Duration::from_millis(1500)).unix_secs(), 1_700_000_001);
        assert_eq!(
            (t + Duration::from_secs(5)).saturating_duration_since(t),
            Duration::from_secs(5)
        );
        assert_eq!(
            t.saturating_duration_since(t + Duration::from_secs(5)),
            Duration::ZERO
        );
        assert_eq!(
            Time::from(UNIX_EPOCH + Duration::from_secs(3)).unix_secs(),
            3
        );
        assert_eq!(
            Time::from_unix_millis(u64::MAX) + Duration::MAX,
            Time(u64::MAX)
        );
    }
}
