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

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use io_support::*;
use umbra_routing::crypto::Identity;
use umbra_transport::io::{
    DialTarget, Dialer, LINK_BATCH_MAX_FRAMES, LinkReceiver, LinkSender, LinkSettings,
};
use umbra_transport::proto::frame::{CELL_LEN, Frame};

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

struct CountingAllocator;

fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed straight to the system allocator; counting
// touches only atomics, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

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
    let dialer = Dialer::new(Identity::generate(), LinkSettings::default()).unwrap();
    let target = DialTarget {
        peer: l.identity.public(),
        endpoint: l.addr.to_string(),
        server_name: None,
    };
    let out = dialer.dial(&target, b"").await.unwrap();
    let mut inb = tokio::time::timeout(STEP, l.links.recv())
        .await
        .unwrap()
        .unwrap();
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
    COUNTING.store(true, Ordering::Relaxed);
    transfer(&out.sender, &mut inb.receiver, batches).await;
    COUNTING.store(false, Ordering::Relaxed);
    let per_cell = ALLOCATIONS.load(Ordering::Relaxed) as f64 / n as f64;
    eprintln!("{n} cells through a link: {per_cell:.3} allocations per cell");
    assert!(
        per_cell <= MAX_ALLOCATIONS_PER_CELL,
        "{per_cell:.3} allocations per cell (at most {MAX_ALLOCATIONS_PER_CELL})"
    );
}
