//! What a `serde_json::Value` costs in memory: the heap its tree holds, counted
//! allocation by allocation.
//!
//! Why not its JSON length: the resolver's bounds used to count JSON bytes, and the
//! heap is several times larger — every value takes a `Value` slot (72 bytes here,
//! with `preserve_order`), every object an index table beside its entries, every
//! string and container an allocation with its allocator overhead. A 33 MB answer
//! cost ~590 MB of RssAnon. The per-request output budget and the record cache's
//! weight count this instead, so their bounds are bounds on memory.
//!
//! The model follows the containers' own growth rules (`Vec` capacities are read,
//! `serde_json::Map` — an `IndexMap` — is modelled from its length, as it exposes no
//! capacity), and adds [`ALLOCATION_OVERHEAD`] per allocation. A test with a counting
//! allocator (`tests/resolve_memory_weight.rs`) checks it against what is really
//! allocated.

use serde_json::Value;

/// Bytes an allocator spends beyond the bytes asked for, per allocation: glibc's
/// 8-byte header rounded to 16, or the size-class rounding of jemalloc/mimalloc (on
/// average about this much for the small sizes a JSON tree is made of).
pub const ALLOCATION_OVERHEAD: u64 = 16;

/// Size of one `Value` slot (in an array, or a map entry's value).
const VALUE: u64 = std::mem::size_of::<Value>() as u64;

/// Size of one `IndexMap` entry: the cached hash, the key `String`, the `Value`.
const MAP_ENTRY: u64 = (std::mem::size_of::<usize>()
    + std::mem::size_of::<String>()
    + std::mem::size_of::<Value>()) as u64;

/// How a tree's containers are sized: as they are (a parsed or built value), or as a
/// clone of it would be (`Value::clone` gives `Vec`s and `String`s an exact capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizing {
    /// Capacities as they are now.
    AsHeld,
    /// Capacities a `clone()` of the value would get.
    AsCloned,
}

/// Heap bytes held by `value`'s tree (not counting its own slot), as [`Sizing`] says.
pub fn heap_bytes(value: &Value, sizing: Sizing) -> u64 {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => string_bytes(s, sizing),
        Value::Array(items) => {
            let capacity = match sizing {
                Sizing::AsHeld => items.capacity(),
                Sizing::AsCloned => items.len(),
            };
            array_bytes(capacity)
                + items
                    .iter()
                    .map(|item| heap_bytes(item, sizing))
                    .sum::<u64>()
        }
        Value::Object(map) => {
            map_bytes(map.len())
                + map
                    .iter()
                    .map(|(key, item)| string_bytes(key, sizing) + heap_bytes(item, sizing))
                    .sum::<u64>()
        }
    }
}

/// What one `Value` costs where it stands on its own (boxed in an `Arc`, say): its
/// slot and its tree.
pub fn value_bytes(value: &Value, sizing: Sizing) -> u64 {
    VALUE + heap_bytes(value, sizing)
}

/// Heap bytes of a string's buffer.
pub(crate) fn string_bytes(s: &String, sizing: Sizing) -> u64 {
    let capacity = match sizing {
        Sizing::AsHeld => s.capacity(),
        Sizing::AsCloned => s.len(),
    };
    allocation(capacity as u64)
}

/// Heap bytes of a string of `len` bytes allocated exactly.
pub(crate) fn str_bytes(len: usize) -> u64 {
    allocation(len as u64)
}

/// Heap bytes of an array's buffer of `capacity` slots (its items not included).
pub(crate) fn array_bytes(capacity: usize) -> u64 {
    allocation(capacity as u64 * VALUE)
}

/// Heap bytes of a `serde_json::Map` of `len` entries (keys and values' own trees not
/// included): its entries buffer and its index table. Whether built by inserting one
/// entry at a time, with `with_capacity(len)` or by `clone()`, an `IndexMap` of `len`
/// entries has the same table, the smallest one whose capacity holds `len`, and
/// entries reserved to that capacity.
pub(crate) fn map_bytes(len: usize) -> u64 {
    if len == 0 {
        return 0;
    }
    let buckets = table_buckets(len);
    let capacity = table_capacity(buckets) as u64;
    // hashbrown's table of `usize` indices: the slots, padded to the 16-byte control
    // alignment, then one control byte per bucket plus one group of 16.
    let table = (buckets as u64 * 8).next_multiple_of(16) + buckets as u64 + 16;
    allocation(capacity * MAP_ENTRY) + allocation(table)
}

/// The bucket count of a hashbrown table holding `len` items: the smallest power of
/// two (4 at least) whose capacity holds them.
fn table_buckets(len: usize) -> usize {
    let mut buckets = 4;
    while table_capacity(buckets) < len {
        buckets *= 2;
    }
    buckets
}

/// Items a hashbrown table of `buckets` holds before it grows: one slot is kept free
/// in small tables, an eighth in larger ones.
fn table_capacity(buckets: usize) -> usize {
    if buckets <= 8 {
        buckets - 1
    } else {
        buckets / 8 * 7
    }
}

/// One allocation of `bytes` (none for zero bytes).
fn allocation(bytes: u64) -> u64 {
    if bytes == 0 {
        0
    } else {
        bytes + ALLOCATION_OVERHEAD
    }
}

/// The cost of a map of `len` entries in [`map_bytes`] terms, for code that builds one
/// and wants to charge each insert: `map_bytes(len + 1) - map_bytes(len)`.
pub(crate) fn map_growth(len: usize) -> u64 {
    map_bytes(len + 1) - map_bytes(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_grow_like_hashbrown() {
        let buckets: Vec<usize> = [1, 3, 4, 7, 8, 14, 15, 28, 29].map(table_buckets).into();
        assert_eq!(buckets, [4, 4, 8, 8, 16, 16, 32, 32, 64]);
    }

    #[test]
    fn a_clone_is_charged_with_exact_capacities() {
        let mut items = Vec::with_capacity(100);
        items.push(json!("abc"));
        let value = Value::Array(items);
        let held = heap_bytes(&value, Sizing::AsHeld);
        let cloned = heap_bytes(&value, Sizing::AsCloned);
        assert_eq!(held - cloned, 99 * VALUE);
        assert_eq!(cloned, array_bytes(1) + str_bytes(3));
        assert_eq!(heap_bytes(&json!(null), Sizing::AsHeld), 0);
        assert_eq!(
            heap_bytes(&json!({"k": 1}), Sizing::AsCloned),
            map_bytes(1) + str_bytes(1)
        );
        assert_eq!(
            (1..40).map(map_growth).sum::<u64>() + map_bytes(1),
            map_bytes(40)
        );
    }
}
