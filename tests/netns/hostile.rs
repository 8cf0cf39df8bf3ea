//! A hostile neighbour, in-process: it holds an agreement with a real
//! daemon, links to it with the link protocol and drives a circuit core of
//! its own, so a test can make it do what no honest node does (flood
//! CREATEs, ignore its window, never read). Run it as a test helper in a
//! namespace of its own ([`super::spawn_test_helper`]).

use std::time::{Duration, Instant};

use umbra_netlab::Peer;

use umbra_routing::cell::CELL_LEN;
use umbra_routing::circuit::{CircuitConfig, CircuitCore, LinkId};
use umbra_routing::crypto::Identity;
use umbra_transport::io::{DialTarget, Dialer, Link, LinkSettings};
use umbra_transport::proto::agreement::{Ask, LinkAsk, statement};
use umbra_transport::proto::frame::Frame;

use super::{Daemon, Netns, Veth, netns, prepare, temp_dir, veth, wait_for};

/// Runs a hostile neighbour's `body` in a runtime of its own (a test
/// helper's process has none).
pub fn block_on<F: std::future::Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(body)
}

/// The 32-byte key in hex in the environment variable `name`, which the
/// test set for its helper.
pub fn key_from_env(name: &str) -> [u8; 32] {
    let hex = std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    hex::decode(hex).expect("hex").try_into().expect("32 bytes")
}

/// The link id the neighbour's core knows the victim's link by.
const VICTIM_LINK: LinkId = 1;

/// The terms the neighbour asks for: 1 TB per 30 days (what the tests'
/// victims list for it).
const ASK_BYTES: u64 = 1_000_000_000_000;
const ASK_SECS: u64 = 30 * 86_400;

/// A neighbour linked to its victim.
pub struct Hostile {
    /// Its identity.
    pub me: Identity,
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
        Hostile { me, link, core }
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
            self.core.handle_cell(Instant::now(), VICTIM_LINK, &cell);
        }
        Some(())
    }
}

/// A relay R under attack, with an honest neighbour G (linked, on the
/// veth `onward`) and a namespace `nh` for a hostile neighbour whose
/// agreement R lists. The daemons and namespaces go when it drops.
pub struct Victim {
    /// The relay under attack.
    pub r: Daemon,
    /// The honest neighbour.
    pub g: Daemon,
    /// R's namespace.
    pub nr: Netns,
    /// G's namespace.
    pub ng: Netns,
    /// The hostile neighbour's namespace.
    pub nh: Netns,
    /// R's key, hex.
    pub r_key: String,
    /// G's key, hex.
    pub g_key: String,
    /// R's overlay address.
    pub r_addr: String,
    /// Where the hostile neighbour dials R, `IP:443`.
    pub endpoint: String,
    /// The veth between R (end `a`) and G.
    pub onward: Veth,
    /// The daemons' state and the test's logs.
    pub dir: tempfile::TempDir,
}

impl Victim {
    /// Starts R and G (namespaces `<tag>r`, `<tag>g`, `<tag>h`), R listing
    /// the neighbour of `hostile_seed` under `hostile_terms`, and waits for
    /// G's link.
    pub fn start(tag: &str, hostile_seed: &[u8; 32], hostile_terms: &str) -> Victim {
        let dir = temp_dir(tag);
        let (nr, ng, nh) = (
            netns(&format!("{tag}r")),
            netns(&format!("{tag}g")),
            netns(&format!("{tag}h")),
        );
        let onward = Veth::internet(&nr, &ng, 1).expect("veth R – G");
        let (r_ip, g_ip) = (onward.a.ip.to_string(), onward.b.ip.to_string());
        let (r_ip2, _) = veth(&nr, &nh, 2);
        let (r_dir, g_dir) = (dir.path().join("r"), dir.path().join("g"));
        let r_key = prepare(&r_dir, "").init().expect("init").key;
        let g_key = prepare(&g_dir, "").init().expect("init").key;
        let hostile = hex::encode(Identity::from_seed(hostile_seed).public());
        let listen = |ips: &[&str]| {
            let list: Vec<String> = ips.iter().map(|ip| format!("\"{ip}:443\"")).collect();
            format!(
                "anonymity = \"fast\"\n[listen]\nhttps = [{}]\n",
                list.join(", ")
            )
        };
        let r_conf = format!(
            "{}{}{}",
            listen(&[&r_ip, &r_ip2]),
            Peer::new(&g_key, format!("{g_ip}:443"), Some("1TB/30d")).toml(),
            Peer::unreachable(&hostile, Some(hostile_terms)).toml(),
        );
        let g_conf = format!(
            "{}{}",
            listen(&[&g_ip]),
            Peer::new(&r_key, format!("{r_ip}:443"), Some("1TB/30d")).toml()
        );
        let mut r = prepare(&r_dir, &r_conf);
        r.start(&nr).expect("R starts");
        let mut g = prepare(&g_dir, &g_conf);
        g.start(&ng).expect("G starts");
        wait_for(Duration::from_secs(20), "G linked to R", &[&r, &g], || {
            r.link_up_to(&g_key).then_some(())
        });
        let r_addr = r.status().expect("status")["address"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Victim {
            r,
            g,
            nr,
            ng,
            nh,
            r_key,
            g_key,
            r_addr,
            endpoint: format!("{r_ip2}:443"),
            onward,
            dir,
        }
    }
}
