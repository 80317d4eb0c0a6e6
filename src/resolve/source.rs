//! Where referenced records come from. The resolver's core only sees the
//! [`RecordSource`] trait: one call per resolution level and source with the DIDs of
//! that level it asks there, so a source can batch (Elasticsearch: one search) or fan
//! out with a bound (GUN: one get per soul). Elasticsearch is asked for every DID the
//! cache could not answer, GUN for the `did:gun:` ones Elasticsearch did not have.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::time::Instant;

/// A source's answer for one DID.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// The record (`{data, oip, …}`).
    Found(Value),
    /// The source answered and has no such record (remembered for the negative TTL).
    Missing,
    /// The source could not answer (error status, bad body, its own timeout). Not
    /// remembered: the next request asks again.
    Failed(String),
    /// The request's deadline came first. Not remembered either.
    TimedOut,
}

/// A source's answers for one batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// One answer per DID asked, in the order asked.
    pub answers: Vec<Fetched>,
    /// Requests the source sent upstream for this batch (reported in the stats).
    pub requests: u64,
}

/// A place records can be looked up by DID.
pub trait RecordSource: Send + Sync {
    /// Looks up `dids` (distinct, all of the kind this source serves). The answer has
    /// exactly one entry per DID, in the same order, and comes by `deadline`: what is
    /// not known by then is answered [`Fetched::TimedOut`].
    fn fetch<'a>(&'a self, dids: &'a [String], deadline: Instant) -> BoxFuture<'a, Batch>;
}

/// The prefix of DIDs served by GUN; the rest of the DID is the soul, colons kept.
pub const GUN_PREFIX: &str = "did:gun:";

/// The GUN soul a `did:gun:` reference names (everything after the prefix).
pub fn gun_soul(did: &str) -> Option<&str> {
    did.strip_prefix(GUN_PREFIX)
}

/// Which sources may serve a DID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// `did:gun:<soul>`: Elasticsearch (where the indexer's GUN sync puts GUN
    /// records), then the GUN relay for what Elasticsearch does not have.
    Gun,
    /// Everything else (`did:arweave:…` and friends): Elasticsearch only.
    Indexed,
}

impl SourceKind {
    /// The kind of `did`.
    pub fn of(did: &str) -> SourceKind {
        if did.starts_with(GUN_PREFIX) {
            SourceKind::Gun
        } else {
            SourceKind::Indexed
        }
    }
}

/// The sources a resolver uses; a reference no configured source serves stays
/// unresolved (and is counted as such).
#[derive(Clone, Default)]
pub struct Sources {
    /// Serves the `did:gun:` references `indexed` does not have (all of them when
    /// there is no `indexed`). Only ever asked for `did:gun:` DIDs.
    pub gun: Option<Arc<dyn RecordSource>>,
    /// Serves every reference, `did:gun:` ones included, asked first.
    pub indexed: Option<Arc<dyn RecordSource>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::memory_source::MemorySource;
    use serde_json::json;

    #[test]
    fn kinds_and_souls() {
        assert_eq!(SourceKind::of("did:gun:abc:rec-1"), SourceKind::Gun);
        assert_eq!(SourceKind::of("did:arweave:xyz"), SourceKind::Indexed);
        assert_eq!(
            gun_soul("did:gun:647f79c2a338:workout_1"),
            Some("647f79c2a338:workout_1")
        );
        assert_eq!(
            gun_soul("did:gun:oip:registry:index"),
            Some("oip:registry:index")
        );
        assert_eq!(gun_soul("did:arweave:x"), None);
    }

    #[tokio::test]
    async fn memory_source_answers_in_order_and_counts() {
        let source =
            MemorySource::new([json!({"oip": {"did": "did:a", "didTx": "did:t"}, "data": {}})]);
        let dids = vec![
            "did:t".to_owned(),
            "did:none".to_owned(),
            "did:a".to_owned(),
        ];
        let batch = source.fetch(&dids, Instant::now()).await;
        assert!(matches!(batch.answers[0], Fetched::Found(_)));
        assert_eq!(batch.answers[1], Fetched::Missing);
        assert!(matches!(batch.answers[2], Fetched::Found(_)));
        assert_eq!(source.asked("did:a"), 1);
        assert_eq!(source.asked_total(), 3);
    }
}
