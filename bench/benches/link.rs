//! A whole link on loopback (docs/protocol.md, "Link setup"): the listener's
//! TLS handshake, the time to set up a link (TCP, TLS, HTTP/2, the Noise IK
//! handshake bound to the TLS exporter), and cells through an established
//! link. These are the figures the listener's TLS stack moves.
//!
//! `cargo bench -p umbra-bench --bench link`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use divan::Bencher;
use divan::counter::BytesCount;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use umbra_routing::Identity;
use umbra_transport::io::{
    AdmissionLimits, CertSource, CoverSite, DialTarget, Dialer, Link, LinkListener, LinkSettings,
    ListenerConfig, TlsSettings, probe, serve, server_tls_config,
};
use umbra_transport::proto::frame::{CELL_LEN, Frame};

fn main() {
    divan::main();
}

/// Cells sent one way per iteration of `link_cells`: 12 MB of cells.
const CELLS_PER_ITERATION: usize = 10_000;

/// How long any one step may take before the benchmark gives up.
const STEP: Duration = Duration::from_secs(20);

/// A listener on 127.0.0.1 that accepts every link, and a dialer for it.
struct Bed {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    target: DialTarget,
    dialer: Dialer,
    links: mpsc::Receiver<Link>,
    _dir: tempfile::TempDir,
}

impl Bed {
    fn new() -> Bed {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let identity = Identity::generate();
        let (addr, links) = rt.block_on(async {
            let tls = server_tls_config(&TlsSettings {
                cert: CertSource::SelfSigned {
                    dir: dir.path().to_path_buf(),
                },
                server_name: String::new(),
            })
            .expect("TLS");
            let listener = Arc::new(LinkListener::new(ListenerConfig {
                identity: identity.clone(),
                tls,
                cover: CoverSite::built_in("bench.example.org", SystemTime::UNIX_EPOCH),
                authorizer: Arc::new(|_| Some(Vec::new())),
                link: LinkSettings::default(),
                admission: AdmissionLimits::default(),
            }));
            let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = tcp.local_addr().expect("addr");
            let (tx, links) = mpsc::channel(64);
            tokio::spawn(serve(tcp, listener, tx));
            (addr, links)
        });
        let dialer = Dialer::new(Identity::generate(), LinkSettings::default()).expect("dialer");
        Bed {
            rt,
            addr,
            target: DialTarget {
                peer: identity.public(),
                endpoint: addr.to_string(),
                server_name: None,
            },
            dialer,
            links,
            _dir: dir,
        }
    }

    /// Dials one link and waits until the listener has it too.
    async fn link(&mut self) -> (Link, Link) {
        let out = tokio::time::timeout(STEP, self.dialer.dial(&self.target, b""))
            .await
            .expect("dial in time")
            .expect("dial");
        let inbound = tokio::time::timeout(STEP, self.links.recv())
            .await
            .expect("accepted in time")
            .expect("link channel");
        (out, inbound)
    }
}

/// TCP connect and the TLS handshake alone (what `umbra doctor`'s probe
/// does), then close: the listener's share of a visitor's handshake.
#[divan::bench(sample_count = 200)]
fn tls_handshake(b: Bencher<'_, '_>) {
    let bed = Bed::new();
    let endpoint = bed.addr.to_string();
    b.bench_local(|| {
        bed.rt
            .block_on(probe(&endpoint, None, STEP, STEP))
            .expect("probe")
    });
}

/// A whole link set up: TCP, TLS, HTTP/2, message 1 and message 2, until
/// both ends hold the link.
#[divan::bench(sample_count = 200)]
fn link_setup(b: Bencher<'_, '_>) {
    let mut bed = Bed::new();
    b.bench_local(|| {
        let rt = bed.rt.handle().clone();
        rt.block_on(bed.link())
    });
}

/// Cells one way through an established link, dialer to listener, counted
/// in bytes of cells: TLS records, HTTP/2 DATA frames and link framing.
#[divan::bench(sample_count = 20)]
fn link_cells(b: Bencher<'_, '_>) {
    let mut bed = Bed::new();
    let rt = bed.rt.handle().clone();
    let (out, mut inbound) = rt.block_on(bed.link());
    let cell = Bytes::from(vec![0x5a; CELL_LEN]);
    b.counter(BytesCount::new(CELLS_PER_ITERATION * CELL_LEN))
        .bench_local(|| {
            rt.block_on(async {
                let sender = out.sender.clone();
                let cell = cell.clone();
                let send = tokio::spawn(async move {
                    for _ in 0..CELLS_PER_ITERATION {
                        sender.send(Frame::Cell(cell.clone())).await.expect("send");
                    }
                });
                let mut got = 0;
                while got < CELLS_PER_ITERATION {
                    match tokio::time::timeout(STEP, inbound.receiver.recv()).await {
                        Ok(Ok(Frame::Cell(_))) => got += 1,
                        Ok(Ok(_)) => {}
                        other => panic!("link ended or stalled: {other:?}"),
                    }
                }
                send.await.expect("sender task");
            })
        });
}
