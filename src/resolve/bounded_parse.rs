//! Parsing JSON into a `Value` while charging every allocation it makes against a
//! byte budget, and stopping as soon as the budget is spent.
//!
//! Why not `serde_json::from_slice` and a check afterwards: the heap of a parsed tree
//! is many times its JSON — 8 MiB of `[0,0,0,…]` is 4 million 72-byte slots, over
//! 300 MiB, before any check could run. Here the tree is built by a `DeserializeSeed`
//! that charges each string, each array growth and each map entry, in the terms of
//! [`memory`](super::memory), *before* it allocates, so a hostile body is refused
//! having cost at most the budget. serde_json's own parser still does the parsing
//! (and its recursion limit still applies); only the building of the tree is ours.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::memory::{array_bytes, map_growth, str_bytes};

/// Why a body could not be parsed within its budget.
#[derive(Debug, thiserror::Error)]
pub enum BoundedParseError {
    /// Building the tree would take more than `limit` bytes of memory.
    #[error("parsing would take more than {limit} bytes of memory")]
    OverBudget {
        /// The budget.
        limit: u64,
    },
    /// The body is not JSON.
    #[error(transparent)]
    Json(serde_json::Error),
}

/// Parses `bytes` as one JSON value, allocating at most `limit` bytes (as
/// [`memory`](super::memory) counts them) for its tree. Returns the value and the
/// bytes charged, which equal `heap_bytes(&value, Sizing::AsHeld)`.
pub fn parse_within(bytes: &[u8], limit: u64) -> Result<(Value, u64), BoundedParseError> {
    let meter = Meter {
        used: Cell::new(0),
        limit,
        over: Cell::new(false),
    };
    let mut parser = serde_json::Deserializer::from_slice(bytes);
    let parsed = Node(&meter)
        .deserialize(&mut parser)
        .and_then(|value| parser.end().map(|()| value));
    match parsed {
        Ok(value) => Ok((value, meter.used.get())),
        Err(_) if meter.over.get() => Err(BoundedParseError::OverBudget { limit }),
        Err(error) => Err(BoundedParseError::Json(error)),
    }
}

/// What has been charged so far, and whether the budget ran out.
struct Meter {
    used: Cell<u64>,
    limit: u64,
    over: Cell<bool>,
}

impl Meter {
    fn charge<E: de::Error>(&self, bytes: u64) -> Result<(), E> {
        let used = self.used.get().saturating_add(bytes);
        if used > self.limit {
            self.over.set(true);
            return Err(E::custom("memory budget spent"));
        }
        self.used.set(used);
        Ok(())
    }
}

/// Builds one value (and its subtree) under the meter.
#[derive(Clone, Copy)]
struct Node<'m>(&'m Meter);

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        self.0.charge(str_bytes(value.len()))?;
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Value, E> {
        // Already allocated by the parser; charged at its length, and shrunk to it
        // so the charge is what it holds.
        self.0.charge(str_bytes(value.len()))?;
        let mut value = value;
        value.shrink_to_fit();
        Ok(Value::String(value))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items: Vec<Value> = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            if items.len() == items.capacity() {
                // Grow as `Vec` would (doubling, 4 at least), but charge first.
                let capacity = (items.capacity() * 2).max(4);
                self.0
                    .charge(array_bytes(capacity) - array_bytes(items.capacity()))?;
                items.reserve_exact(capacity - items.len());
            }
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            self.0.charge(str_bytes(key.len()))?;
            let value = access.next_value_seed(self)?;
            if !map.contains_key(&key) {
                self.0.charge(map_growth(map.len()))?;
            }
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::memory::{Sizing, heap_bytes};

    #[test]
    fn parses_like_serde_json_and_charges_what_it_holds() {
        let text = r#"{"records":[{"data":{"basic":{"name":"Squat \u2713","n":[1,2.5,-3,true,null]}},
                       "oip":{"did":"did:arweave:x","k":"a\"b"}}],"x":{},"y":[],"dup":1,"dup":2}"#;
        let (value, used) = parse_within(text.as_bytes(), u64::MAX).unwrap();
        assert_eq!(value, serde_json::from_str::<Value>(text).unwrap());
        assert_eq!(
            used,
            heap_bytes(&value, Sizing::AsHeld) + str_bytes(3),
            "dup key charged twice"
        );
    }

    #[test]
    fn stops_at_the_budget_and_tells_it_from_bad_json() {
        let zeros = format!("[{}0]", "0,".repeat(100_000));
        let (_, used) = parse_within(zeros.as_bytes(), u64::MAX).unwrap();
        assert!(used > 100_000 * 72, "{used}");
        assert!(matches!(
            parse_within(zeros.as_bytes(), 1 << 20),
            Err(BoundedParseError::OverBudget { limit }) if limit == 1 << 20
        ));
        assert!(matches!(
            parse_within(b"{\"a\":", u64::MAX),
            Err(BoundedParseError::Json(_))
        ));
        assert!(matches!(
            parse_within(b"{} x", u64::MAX),
            Err(BoundedParseError::Json(_))
        ));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(
            parse_within(deep.as_bytes(), u64::MAX),
            Err(BoundedParseError::Json(_))
        ));
    }
}
