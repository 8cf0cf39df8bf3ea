//! Allocations per cell through a live link (docs/architecture.md,
//! "Performance"): TLS, HTTP/2, the link framing and the link's tasks, on
//! loopback, while a counting global allocator watches. The routing core
//! allocates nothing per cell (`routing/tests/alloc.rs`); the link around it
//! does, and this bounds it, so that a change that allocates once more per
//! cell (+1.0) fails here.
//!
//! Measured: 0.86 per cell (debug build, batches of 32). About half is the
//! link's own (a batch's `Vec` per read, a new decoder or encoder buffer
//! per 64 KiB), half is HTTP/2's read buffer and rustls's records. Only
//! allocations through Rust's global allocator are seen: OpenSSL (the
//! listener's TLS) and aws-lc allocate through libc.

// A counting global allocator needs `unsafe impl GlobalAlloc`.
#![allow(unsafe_code, clippy::unwrap_used)]

mod io_support;
// The counting allocator the routing core's allocation test uses.
#[path = "../../routing/tests/support/counting_alloc.rs"]
mod counting_alloc;

use std::collections::VecDeque;

use bytes::Bytes;
use counting_alloc::CountingAllocator;
use io_support::*;
use umbra_transport::io::{LINK_BATCH_MAX_FRAMES, LinkReceiver, LinkSender, LinkSettings};
use umbra_transport::proto::frame::{CELL_LEN, Frame};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Cells sent through the link while counting.
const CELLS: usize = 20_000;

/// The most allocations per cell the link may make: the 0.86 measured, with
/// room for noise, and less than one more per cell.
const MAX_ALLOCATIONS_PER_CELL: f64 = 1.25;

/// Sends `batches` on `sender` while `receiver` takes them, as a relay's
/// link reader does (in batches of up to 128 frames).
async fn transfer(sender: &LinkSender, receiver: &mut LinkReceiver, batches: Vec<Vec<Frame>>) {
    let n: usize = batches.iter().map(Vec::len).sum();
    let sender = sender.clone();
    let send = tokio::spawn(async move {
        for b in batches {
            sender.send_batch(b).await.unwrap();
        }
    });
    let mut got = VecDeque::with_capacity(4 * LINK_BATCH_MAX_FRAMES);
    let mut left = n;
    while left > 0 {
        got.clear();
        tokio::time::timeout(
            STEP,
            receiver.recv_many(&mut got, 4 * LINK_BATCH_MAX_FRAMES),
        )
        .await
        .expect("cells in time")
        .unwrap();
        left -= got.len();
    }
    send.await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_link_allocates_under_one_and_a_quarter_per_cell() {
    let mut l = start_listener(built_in_cover(), accept_all(b""), LinkSettings::default()).await;
    let (out, mut inb) = link_pair(&mut l).await;
    // The cells and their batches exist before counting starts, as the
    // datapath's do (it writes a turn's cells into one buffer).
    let cell = Bytes::from(vec![7u8; CELL_LEN]);
    let mut batches: Vec<Vec<Frame>> = (0..CELLS / LINK_BATCH_MAX_FRAMES)
        .map(|_| vec![Frame::Cell(cell.clone()); LINK_BATCH_MAX_FRAMES])
        .collect();
    let warm_up: Vec<Vec<Frame>> = batches.drain(..50).collect();
    // Warm up: buffers reach their working size.
    transfer(&out.sender, &mut inb.receiver, warm_up).await;
    let n = batches.len() * LINK_BATCH_MAX_FRAMES;
    counting_alloc::start();
    transfer(&out.sender, &mut inb.receiver, batches).await;
    let per_cell = counting_alloc::stop() as f64 / n as f64;
    eprintln!("{n} cells through a link: {per_cell:.3} allocations per cell");
    assert!(
        per_cell <= MAX_ALLOCATIONS_PER_CELL,
        "{per_cell:.3} allocations per cell (at most {MAX_ALLOCATIONS_PER_CELL})"
    );
}
