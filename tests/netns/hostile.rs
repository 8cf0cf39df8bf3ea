//! A hostile neighbour, in-process: it holds an agreement with a real
//! daemon, links to it with the link protocol and drives a circuit core of
//! its own, so a test can make it do what no honest node does (flood
//! CREATEs, ignore its window, never read). Run it as a test helper in a
//! namespace of its own ([`super::spawn_test_helper`]).

use std::time::Instant;

use umbra_routing::cell::CELL_LEN;
use umbra_routing::circuit::{CircuitConfig, CircuitCore, LinkId};
use umbra_routing::crypto::Identity;
use umbra_transport::io::{DialTarget, Dialer, Link, LinkSettings};
use umbra_transport::proto::agreement::{Ask, LinkAsk, statement};
use umbra_transport::proto::frame::Frame;

/// The link id the neighbour's core knows the victim's link by.
pub const VICTIM_LINK: LinkId = 1;

/// The terms the neighbour asks for: 1 TB per 30 days (what the tests'
/// victims list for it).
const ASK_BYTES: u64 = 1_000_000_000_000;
const ASK_SECS: u64 = 30 * 86_400;

/// A neighbour linked to its victim.
pub struct Hostile {
    /// Its identity.
    pub me: Identity,
    /// The victim's key.
    pub victim: [u8; 32],
    /// The link to the victim.
    pub link: Link,
    /// Its own circuit core, with the victim's link up as [`VICTIM_LINK`].
    pub core: CircuitCore,
}

impl Hostile {
    /// Links to the victim `victim` at `endpoint` as the node of `seed`,
    /// asking for the agreement the victim lists for it.
    pub async fn link(seed: &[u8; 32], victim: [u8; 32], endpoint: &str) -> Hostile {
        let me = Identity::from_seed(seed);
        let ask = LinkAsk {
            ask: Ask::Agreement,
            bytes_per_period: ASK_BYTES,
            period_secs: ASK_SECS,
            signature: me.sign(&statement(&me.public(), &victim, ASK_BYTES, ASK_SECS)),
        };
        let dialer = Dialer::new(me.clone(), LinkSettings::default()).expect("dialer");
        let target = DialTarget {
            peer: victim,
            endpoint: endpoint.to_string(),
            server_name: None,
        };
        let link = dialer
            .dial(&target, &ask.encode())
            .await
            .expect("the victim takes the link");
        let rng: umbra_routing::crypto::CoreRng = Box::new(rand_core::OsRng);
        let mut core = CircuitCore::new(me.clone(), 0x02, CircuitConfig::default(), rng);
        core.link_up(Instant::now(), VICTIM_LINK, victim);
        Hostile {
            me,
            victim,
            link,
            core,
        }
    }

    /// Sends every cell the core has to send; returns the last one sent,
    /// and how many.
    pub async fn flush(&mut self) -> (Option<[u8; CELL_LEN]>, u64) {
        let mut out = [0u8; CELL_LEN];
        let (mut last, mut n) = (None, 0);
        while self.core.poll_transmit(&mut out).is_some() {
            self.send_cell(&out).await;
            last = Some(out);
            n += 1;
        }
        (last, n)
    }

    /// Sends one cell as it is.
    pub async fn send_cell(&self, cell: &[u8; CELL_LEN]) {
        self.link
            .sender
            .send(Frame::Cell(cell.to_vec().into()))
            .await
            .expect("send a cell");
    }

    /// Reads one frame from the victim and hands a cell to the core;
    /// `None` once `deadline` passes or the link ends.
    pub async fn read_until(&mut self, deadline: tokio::time::Instant) -> Option<()> {
        let frame = tokio::time::timeout_at(deadline, self.link.receiver.recv()).await;
        let Ok(Ok(frame)) = frame else { return None };
        if let Frame::Cell(c) = frame
            && let Ok(cell) = <[u8; CELL_LEN]>::try_from(&c[..])
        {
            self.core
                .handle_cell(Instant::now(), VICTIM_LINK, &cell);
        }
        Some(())
    }
}
