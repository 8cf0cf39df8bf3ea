//! A counting global allocator for the allocation tests: it counts the
//! allocations made on one thread between [`start`] and [`stop`]. Shared by
//! `routing/tests/alloc.rs` (the routing core) and
//! `transport/tests/io_link_alloc.rs` (a live link, on a current-thread
//! runtime, so that every task of the link runs on the counting thread).
//!
//! Only allocations through Rust's global allocator are seen; C libraries
//! (aws-lc, OpenSSL) allocate through libc.

// Included as a module by test binaries of two crates; its items are their
// interface, whichever visibility the lint would like.
#![allow(unreachable_pub)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Passes every call to the system allocator, counting allocations on a
/// thread that [`start`]ed counting.
pub struct CountingAllocator;

fn count() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every call is passed straight to the system allocator; counting
// touches only const-initialised thread-locals, which never allocate.
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

/// Starts counting this thread's allocations from 0.
pub fn start() {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
}

/// Stops counting; the allocations since [`start`].
pub fn stop() -> u64 {
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}
