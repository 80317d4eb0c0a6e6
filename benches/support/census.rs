//! A counting global allocator for the heap censuses of `benches/conn_memory.rs` and
//! `benches/heap_profile.rs`: live blocks and bytes by power-of-two size class, and
//! blocks of 2–16 KiB by exact size (rounded up to 16 B), so per-connection buffers and
//! task cells can be told apart. Counting touches only atomics and never allocates.
//!
//! A bench includes it with `#[path = "support/census.rs"] mod census;` and installs
//! `census::Counting(System)` (or the binary's allocator) as its `#[global_allocator]`.

#![allow(dead_code)] // each bench reads a different part of the census
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicI64, Ordering};

/// Classes: block sizes up to 2^0 .. 2^31 bytes.
pub const CLASSES: usize = 32;
pub static BYTES: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];
pub static BLOCKS: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];

fn class(size: usize) -> usize {
    (usize::BITS - size.max(1).saturating_sub(1).leading_zeros()).min(CLASSES as u32 - 1) as usize
}

/// Live blocks of 2 KiB and more, by exact size rounded up to 16 B (up to 16 KiB):
/// the per-connection buffers and task cells, told apart.
pub const EXACT_FROM: usize = 2048;
pub const EXACT_TO: usize = 16384;
pub static EXACT: [AtomicI64; EXACT_TO / 16 + 1] = [const { AtomicI64::new(0) }; EXACT_TO / 16 + 1];

/// Wraps the allocator `A` (the system's, or the binary's jemalloc): every call is
/// forwarded to it unchanged, and live blocks and bytes are counted on the way.
pub struct Counting<A>(pub A);

fn count(size: usize, sign: i64) {
    let c = class(size);
    BYTES[c].fetch_add(sign * size as i64, Ordering::Relaxed);
    BLOCKS[c].fetch_add(sign, Ordering::Relaxed);
    if (EXACT_FROM..=EXACT_TO).contains(&size) {
        EXACT[size.div_ceil(16)].fetch_add(sign, Ordering::Relaxed);
    }
}

/// Live blocks per exact size (rounded up to 16 B) from 2 KiB to 16 KiB.
pub fn exact() -> Vec<i64> {
    EXACT.iter().map(|n| n.load(Ordering::Relaxed)).collect()
}

// SAFETY: every call is forwarded to the wrapped allocator with the same arguments; the counting
// only touches atomics and never allocates.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            count(layout.size(), 1);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        // SAFETY: forwarded as is.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(layout.size(), -1);
            count(new_size, 1);
        }
        p
    }
}

/// (bytes, blocks) live now, per class.
pub fn snapshot() -> [(i64, i64); CLASSES] {
    std::array::from_fn(|c| {
        (
            BYTES[c].load(Ordering::Relaxed),
            BLOCKS[c].load(Ordering::Relaxed),
        )
    })
}

/// Live bytes now, all classes.
pub fn live() -> i64 {
    BYTES.iter().map(|b| b.load(Ordering::Relaxed)).sum()
}

/// The largest size of class `c`.
pub fn class_limit(c: usize) -> u64 {
    1u64 << c
}
