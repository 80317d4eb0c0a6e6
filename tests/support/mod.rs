//! Helpers shared by the integration tests: stand-ins of the services oip-media talks
//! to, and record fixtures. Each test crate uses a different subset.
#![allow(dead_code)]

pub mod elastic;
pub mod relay_stub;

use serde_json::{Value, json};

/// A record known as `did`, named `name`, whose `data.links` is `links`.
pub fn rec(did: &str, name: &str, links: Value) -> Value {
    json!({"oip": {"did": did, "didTx": did}, "data": {"basic": {"name": name}, "links": links}})
}

/// The indexer's stub for a record met again on its own path.
pub fn stub(did: &str, name: &str) -> Value {
    json!({"oip": {"did": did, "didTx": did}, "data": {"basic": {"name": name}}, "_circular": true})
}

/// `record` with `data.links.<key>` replaced by `value`.
pub fn with(mut record: Value, key: &str, value: Value) -> Value {
    record["data"]["links"][key] = value;
    record
}
