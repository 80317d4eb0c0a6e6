//! A [`RecordSource`] over records held in memory: what the resolver's unit tests resolve
//! against, counting what was asked. Built for tests only; the service's sources are
//! Elasticsearch and GUN.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::time::Instant;

use super::source::{Batch, Fetched, RecordSource};

/// Records held in memory, keyed by DID. Counts how often each DID was asked for.
#[derive(Debug, Default)]
pub struct MemorySource {
    records: HashMap<String, Value>,
    asked: Mutex<HashMap<String, u64>>,
}

impl MemorySource {
    /// A source answering with `records`, each under its `oip.did` and `oip.didTx`
    /// (how the indexer's lookups match).
    pub fn new(records: impl IntoIterator<Item = Value>) -> MemorySource {
        let mut by_did = HashMap::new();
        for record in records {
            for field in ["did", "didTx"] {
                if let Some(did) = record
                    .pointer(&format!("/oip/{field}"))
                    .and_then(Value::as_str)
                {
                    by_did
                        .entry(did.to_owned())
                        .or_insert_with(|| record.clone());
                }
            }
        }
        MemorySource {
            records: by_did,
            asked: Mutex::default(),
        }
    }

    /// How many times `did` was asked for.
    pub fn asked(&self, did: &str) -> u64 {
        self.asked_log().get(did).copied().unwrap_or(0)
    }

    /// How many DIDs were asked for in all.
    pub fn asked_total(&self) -> u64 {
        self.asked_log().values().sum()
    }

    fn asked_log(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.asked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RecordSource for MemorySource {
    fn fetch<'a>(&'a self, dids: &'a [String], _deadline: Instant) -> BoxFuture<'a, Batch> {
        let answers = {
            let mut asked = self.asked_log();
            dids.iter()
                .map(|did| {
                    *asked.entry(did.clone()).or_default() += 1;
                    self.records
                        .get(did)
                        .map_or(Fetched::Missing, |r| Fetched::Found(r.clone()))
                })
                .collect()
        };
        Box::pin(std::future::ready(Batch {
            answers,
            requests: 1,
        }))
    }
}
