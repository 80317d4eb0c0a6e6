//! The GUN source: `did:gun:<soul>` references through the process's one
//! [`GunClient`], which caches relay misses, shares concurrent gets of a soul, retries
//! within a deadline and fails fast behind its breaker. This source adds the bound on
//! how many gets of one level run at once, and turns the relay's stored form into a
//! record.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};
use serde_json::Value;
use tokio::time::Instant;

use super::source::{Batch, Fetched, RecordSource, gun_soul};
use crate::gun::{GunClient, GunRecord};

/// Looks `did:gun:` references up through the GUN relay client.
pub struct GunSource {
    client: Arc<GunClient>,
    concurrency: usize,
}

impl GunSource {
    /// A source over `client` running at most `concurrency` gets at once.
    pub fn new(client: Arc<GunClient>, concurrency: usize) -> GunSource {
        GunSource {
            client,
            concurrency: concurrency.max(1),
        }
    }

    /// One soul's answer, and whether a get was made for it.
    async fn fetch_one(&self, did: &str, deadline: Instant) -> (Fetched, bool) {
        // Everything after `did:gun:`, colons kept (`<hash>:<localId>`, `oip:registry:…`).
        let soul = gun_soul(did).unwrap_or_default();
        if soul.is_empty() {
            // No relay request can name an empty soul.
            return (Fetched::Missing, false);
        }
        if Instant::now() >= deadline {
            return (Fetched::TimedOut, false);
        }
        let answer = match tokio::time::timeout_at(deadline, self.client.get(soul)).await {
            Ok(Ok(GunRecord::Found(stored))) => Fetched::Found(record_from_stored(stored)),
            Ok(Ok(GunRecord::Missing)) => Fetched::Missing,
            Ok(Err(error)) => Fetched::Failed(error.to_string()),
            Err(_) => Fetched::TimedOut,
        };
        (answer, true)
    }
}

impl RecordSource for GunSource {
    fn fetch<'a>(&'a self, dids: &'a [String], deadline: Instant) -> BoxFuture<'a, Batch> {
        Box::pin(async move {
            // The futures are only created here; `buffered` polls at most
            // `concurrency` of them at a time and keeps the answers in the order asked.
            let gets: Vec<_> = dids
                .iter()
                .map(|did| self.fetch_one(did, deadline))
                .collect();
            let outcomes: Vec<(Fetched, bool)> = stream::iter(gets)
                .buffered(self.concurrency)
                .collect()
                .await;
            let requests = outcomes.iter().filter(|(_, sent)| *sent).count() as u64;
            let answers = outcomes.into_iter().map(|(answer, _)| answer).collect();
            Batch { answers, requests }
        })
    }
}

/// A GUN-stored OIP record is `{data, oip, meta}` where `data` and `oip` may be JSON
/// *strings* (that is how the indexer writes them). The relay parses them before
/// answering, but a relay that does not, or a record written by another client, still
/// resolves: string `data`/`oip` holding JSON are parsed here. Anything else is kept as
/// stored.
pub fn record_from_stored(stored: Value) -> Value {
    let Value::Object(mut record) = stored else {
        return stored;
    };
    for field in ["data", "oip"] {
        if let Some(Value::String(text)) = record.get(field)
            && let Ok(parsed @ Value::Object(_)) = text.parse::<Value>()
        {
            record.insert(field.to_owned(), parsed);
        }
    }
    Value::Object(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn string_data_and_oip_are_parsed_and_the_rest_kept() {
        let stored = json!({
            "data": "{\"basic\":{\"name\":\"Squat\"}}",
            "oip": "{\"did\":\"did:gun:abc:1\"}",
            "meta": {"created": 1, "localId": "1", "encrypted": false}
        });
        assert_eq!(
            record_from_stored(stored),
            json!({
                "data": {"basic": {"name": "Squat"}},
                "oip": {"did": "did:gun:abc:1"},
                "meta": {"created": 1, "localId": "1", "encrypted": false}
            })
        );
        let parsed = json!({"data": {"basic": {}}, "oip": {"did": "did:gun:x"}});
        assert_eq!(record_from_stored(parsed.clone()), parsed);
        let odd = json!({"data": "not json", "oip": "[1]"});
        assert_eq!(record_from_stored(odd.clone()), odd);
        assert_eq!(record_from_stored(json!("x")), json!("x"));
    }
}
