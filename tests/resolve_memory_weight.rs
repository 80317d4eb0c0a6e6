//! The resolver's memory measures track real memory: `memory::heap_bytes` against what
//! a counting allocator sees for many parsed records, and the record cache's weight
//! against what filling the cache really allocates.
//!
//! Its own test binary, one test at a time (a lock), because the allocator counts
//! every allocation of the process.

#[path = "support/oip_records.rs"]
mod oip_records;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use oip_media::resolve::bounded_parse::parse_within;
use oip_media::resolve::memory::{ALLOCATION_OVERHEAD, Sizing, heap_bytes, value_bytes};
use oip_media::resolve::{FoundRecord, RecordCache};
use serde_json::Value;

/// Counts live bytes and live allocations, forwarding to the system allocator.
struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_ALLOCATIONS: AtomicI64 = AtomicI64::new(0);

// SAFETY: every method forwards to `System` with the caller's own arguments, so
// `System`'s guarantees are passed on unchanged; the counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours (non-zero size layout, checked by the caller).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
            LIVE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (through `alloc`).
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        LIVE_ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr`/`layout` come from `alloc` above; `new_size` as the caller gave.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Live (bytes, allocations) now.
fn live() -> (i64, i64) {
    (
        LIVE_BYTES.load(Ordering::SeqCst),
        LIVE_ALLOCATIONS.load(Ordering::SeqCst),
    )
}

/// Bytes `f`'s result holds on the heap, allocator overhead included as the memory
/// model counts it (per allocation), measured by the counting allocator.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, i64) {
    let (bytes0, allocs0) = live();
    let value = f();
    let (bytes1, allocs1) = live();
    let overhead = ALLOCATION_OVERHEAD as i64 * (allocs1 - allocs0);
    (value, bytes1 - bytes0 + overhead)
}

fn assert_close(what: &str, estimate: u64, real: i64, tolerance: f64) {
    let ratio = estimate as f64 / real as f64;
    println!("{what}: estimate {estimate} B, allocated {real} B, ratio {ratio:.3}");
    assert!(
        (1.0 - tolerance..=1.0 + tolerance).contains(&ratio),
        "{what}: estimate {estimate} vs allocated {real} (ratio {ratio:.3})"
    );
}

fn page_records() -> Vec<String> {
    let (records, _) = oip_records::workout_page(1, 4);
    let (graph, _) = oip_records::hostile_graph(500, 40);
    records
        .iter()
        .chain(graph.iter())
        .map(Value::to_string)
        .collect()
}

#[test]
fn heap_estimates_track_what_parsed_and_cloned_records_allocate() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let texts = page_records();

    // Parsed by serde_json (as the Elasticsearch source does).
    let (parsed, real) = allocated_by(|| {
        texts
            .iter()
            .map(|t| serde_json::from_str::<Value>(t).unwrap())
            .collect::<Vec<Value>>()
    });
    let estimate: u64 = parsed
        .iter()
        .map(|v| heap_bytes(v, Sizing::AsHeld))
        .sum::<u64>()
        + (parsed.capacity() * std::mem::size_of::<Value>()) as u64
        + ALLOCATION_OVERHEAD;
    assert_close("parsed", estimate, real, 0.02);

    // Cloned (as resolution copies records into an answer).
    let (copies, real) = allocated_by(|| parsed.to_vec());
    let estimate: u64 = parsed
        .iter()
        .map(|v| heap_bytes(v, Sizing::AsCloned))
        .sum::<u64>()
        + (copies.capacity() * std::mem::size_of::<Value>()) as u64
        + ALLOCATION_OVERHEAD;
    assert_close("cloned", estimate, real, 0.02);

    // Parsed within a budget (as the route parses bodies): the charge is the heap.
    let body = format!("[{}]", texts.join(","));
    let ((value, charged), real) =
        allocated_by(|| parse_within(body.as_bytes(), u64::MAX).unwrap());
    assert_eq!(charged, heap_bytes(&value, Sizing::AsHeld));
    assert_close("bounded parse", charged, real, 0.02);
    drop((parsed, copies, value));
}

#[test]
fn the_record_cache_weight_tracks_what_its_entries_allocate() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let texts = page_records();
    // An entry bound high enough that its floor (bytes / entries) is below every entry.
    let cache = RecordCache::new(
        10_000_000,
        1 << 30,
        Duration::from_secs(3600),
        Duration::from_secs(60),
    );
    // Everything the cache ends up holding, from the JSON text on: the records
    // parsed and wrapped, their keys, moka's entries and bookkeeping.
    let copies = 8;
    let (count, real) = allocated_by(|| {
        runtime.block_on(async {
            let mut count = 0;
            for round in 0..copies {
                for (i, text) in texts.iter().enumerate() {
                    let record = FoundRecord::new(serde_json::from_str::<Value>(text).unwrap());
                    assert_eq!(
                        record.held_bytes,
                        value_bytes(&record.record, Sizing::AsHeld)
                    );
                    cache
                        .insert_found(format!("did:weight:{round}:{i:06}"), record, cache.epoch())
                        .await;
                    count += 1;
                }
            }
            cache.run_pending_tasks().await;
            count
        })
    });
    let (entries, weight) = cache.measure();
    assert_eq!(entries as usize, count);
    assert_eq!(cache.weighted_size(), weight, "every entry above the floor");
    let records: u64 = texts
        .iter()
        .map(|t| value_bytes(&serde_json::from_str::<Value>(t).unwrap(), Sizing::AsHeld))
        .sum::<u64>()
        * copies;
    println!(
        "{count} entries: {} B per entry beyond the records' heap",
        (real - records as i64) / count as i64
    );
    assert_close("cache weight", weight, real, 0.05);
}

/// Why bodies are parsed within a memory budget: issue 10's 6.5 MB body of 200,000
/// tiny records is over 250 MiB once parsed into `Value`s, 40 times its size.
#[test]
fn a_body_of_tiny_records_is_many_times_its_size_once_parsed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let body = oip_records::tiny_records_body(200_000);
    let ((value, charged), real) =
        allocated_by(|| parse_within(body.as_bytes(), u64::MAX).unwrap());
    println!(
        "{} bytes of JSON → {:.0} MiB parsed ({:.0}×)",
        body.len(),
        charged as f64 / (1 << 20) as f64,
        charged as f64 / body.len() as f64
    );
    assert_close("tiny records", charged, real, 0.02);
    assert!(charged > 250 << 20, "{charged}");
    drop(value);
}
