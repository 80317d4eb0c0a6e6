//! The Elasticsearch source: every non-GUN reference of one resolution level in one
//! `terms` search of the indexer's `records` index, then one of `organizations` for
//! what is still missing — where the indexer sent two `term` searches per reference.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::source::{Batch, Fetched, RecordSource};

/// The indices searched, in order; the second only for what the first did not have
/// (the indexer's order).
pub const INDICES: [&str; 2] = ["records", "organizations"];

/// Most DIDs in one search. Each DID can match by `did` and by `didTx`, so a search
/// asks for twice as many hits; 1024 keeps that well under Elasticsearch's default
/// 10,000-hit window and covers a whole level at the default lookup budget.
pub const MAX_DIDS_PER_SEARCH: usize = 1024;

/// Largest search response read. A search returns at most
/// 2 × [`MAX_DIDS_PER_SEARCH`] records; this refuses a pathological answer (a
/// misconfigured host, an index of huge documents) instead of buffering it.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Why the source could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum ElasticSetupError {
    /// The URL does not parse, or is not `http`.
    #[error("`{url}` is not a usable Elasticsearch URL: {reason}")]
    Url {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the Elasticsearch client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Why one search failed.
#[derive(Debug, thiserror::Error)]
pub enum ElasticError {
    /// Connecting, sending or reading failed (including the timeout).
    #[error("Elasticsearch request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// Elasticsearch answered with an error status.
    #[error("Elasticsearch answered {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the body, for the log.
        body: String,
    },
    /// The index name does not make a URL below the host.
    #[error("cannot build the search URL: {0}")]
    Url(String),
    /// The answer was larger than this source reads.
    #[error("Elasticsearch answer over {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// The answer was not JSON.
    #[error("Elasticsearch answer is not JSON: {0}")]
    Body(#[from] serde_json::Error),
    /// The answer was JSON but not a search response.
    #[error("Elasticsearch answer is not a search response: {0}")]
    Shape(String),
}

/// Looks records up in the indexer's Elasticsearch.
pub struct ElasticSource {
    client: reqwest::Client,
    /// The host URL, ending with `/` so index paths join below any path prefix.
    base: reqwest::Url,
}

impl ElasticSource {
    /// A source for the Elasticsearch at `host` (`http://host:9200`, as in the
    /// indexer's `ELASTICSEARCHHOST`), each search limited to `timeout`.
    pub fn new(host: &str, timeout: Duration) -> Result<ElasticSource, ElasticSetupError> {
        let bad = |reason: String| ElasticSetupError::Url {
            url: host.to_owned(),
            reason,
        };
        let mut base = reqwest::Url::parse(host.trim()).map_err(|e| bad(e.to_string()))?;
        if base.scheme() != "http" {
            return Err(bad(format!(
                "scheme `{}` is not supported (this build speaks plain http)",
                base.scheme()
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(ElasticSetupError::Client)?;
        Ok(ElasticSource { client, base })
    }

    /// The `_source` of every hit of one `terms` search of `index` for `dids`.
    pub async fn search(&self, index: &str, dids: &[String]) -> Result<Vec<Value>, ElasticError> {
        let url =
            self.base
                .join(&format!("{index}/_search"))
                .map_err(|e| ElasticError::Status {
                    status: 0,
                    body: e.to_string(),
                })?;
        let query = search_body(dids);
        let mut response = self.client.post(url).json(&query).send().await?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(ElasticError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        if status == reqwest::StatusCode::NOT_FOUND
            && String::from_utf8_lossy(&body).contains("index_not_found_exception")
        {
            // A fresh node may have no `organizations` index: nothing to find there.
            return Ok(Vec::new());
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(ElasticError::Status {
                status: status.as_u16(),
                body: text.chars().take(200).collect(),
            });
        }
        hit_sources(&body)
    }

    /// Looks up one chunk: `records` first, `organizations` for the rest.
    async fn fetch_chunk(&self, dids: &[String], deadline: Instant) -> Batch {
        let mut found: HashMap<String, Value> = HashMap::new();
        let mut requests = 0;
        let mut failure: Option<Fetched> = None;
        for index in INDICES {
            let wanted: Vec<String> = dids
                .iter()
                .filter(|d| !found.contains_key(d.as_str()))
                .cloned()
                .collect();
            if wanted.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                failure = Some(Fetched::TimedOut);
                break;
            }
            requests += 1;
            match tokio::time::timeout_at(deadline, self.search(index, &wanted)).await {
                Ok(Ok(hits)) => match_hits(&wanted, hits, &mut found),
                Ok(Err(error)) => {
                    tracing::warn!(index, %error, dids = wanted.len(), "Elasticsearch search failed");
                    failure = Some(Fetched::Failed(error.to_string()));
                    break;
                }
                Err(_) => {
                    failure = Some(Fetched::TimedOut);
                    break;
                }
            }
        }
        let answers = dids
            .iter()
            .map(|did| match (found.remove(did.as_str()), &failure) {
                (Some(record), _) => Fetched::Found(record),
                (None, Some(failure)) => failure.clone(),
                (None, None) => Fetched::Missing,
            })
            .collect();
        Batch { answers, requests }
    }
}

impl RecordSource for ElasticSource {
    fn fetch<'a>(&'a self, dids: &'a [String], deadline: Instant) -> BoxFuture<'a, Batch> {
        Box::pin(async move {
            let mut batch = Batch::default();
            for chunk in dids.chunks(MAX_DIDS_PER_SEARCH) {
                let part = self.fetch_chunk(chunk, deadline).await;
                batch.answers.extend(part.answers);
                batch.requests += part.requests;
            }
            batch
        })
    }
}

/// The search the indexer's two `term` queries per reference become: one `terms`
/// query per field, either matching.
pub fn search_body(dids: &[String]) -> Value {
    json!({
        "size": dids.len() * 2,
        "query": {"bool": {"should": [
            {"terms": {"oip.did.keyword": dids}},
            {"terms": {"oip.didTx.keyword": dids}},
        ]}}
    })
}

/// Files each hit under the wanted DIDs it carries as `oip.did` or `oip.didTx`; the
/// first hit for a DID wins (Elasticsearch's order).
fn match_hits(wanted: &[String], hits: Vec<Value>, found: &mut HashMap<String, Value>) {
    let wanted: HashSet<&str> = wanted.iter().map(String::as_str).collect();
    for hit in hits {
        for field in ["did", "didTx"] {
            let Some(did) = hit
                .get("oip")
                .and_then(|o| o.get(field))
                .and_then(Value::as_str)
            else {
                continue;
            };
            if wanted.contains(did) && !found.contains_key(did) {
                found.insert(did.to_owned(), hit.clone());
            }
        }
    }
}

/// The `_source` of every hit in a search response (`hits.hits[]._source`).
///
/// Parsed as a `Value` through `str::parse`, which is compiled inside serde_json,
/// rather than into typed structs, whose deserialiser would be instantiated here
/// (unoptimised in debug builds, where a level of 1,000 records is tens of MiB).
fn hit_sources(body: &[u8]) -> Result<Vec<Value>, ElasticError> {
    let text = std::str::from_utf8(body).map_err(|e| ElasticError::Shape(e.to_string()))?;
    let mut response: Value = text.parse()?;
    let hits = match response.pointer_mut("/hits/hits").map(Value::take) {
        Some(Value::Array(hits)) => hits,
        _ => return Err(ElasticError::Shape("no hits.hits array".into())),
    };
    Ok(hits
        .into_iter()
        .filter_map(|mut hit| match hit.get_mut("_source").map(Value::take) {
            Some(source @ Value::Object(_)) => Some(source),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_joined_below_a_prefix() {
        let es = ElasticSource::new("http://es:9200", Duration::from_secs(1)).unwrap();
        assert_eq!(
            es.base.join("records/_search").unwrap().as_str(),
            "http://es:9200/records/_search"
        );
        let es = ElasticSource::new("http://h/prefix", Duration::from_secs(1)).unwrap();
        assert_eq!(
            es.base.join("records/_search").unwrap().as_str(),
            "http://h/prefix/records/_search"
        );
        assert!(ElasticSource::new("https://es:9200", Duration::from_secs(1)).is_err());
        assert!(ElasticSource::new("es:9200 nope", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn hit_sources_are_taken_from_a_search_response() {
        let body = br#"{"took":1,"hits":{"total":{"value":2},"hits":[
            {"_id":"1","_source":{"oip":{"did":"did:a"}}},{"_id":"2"},{"_source":{"oip":{"did":"did:b"}}}]}}"#;
        let sources = hit_sources(body).unwrap();
        assert_eq!(
            sources,
            vec![
                json!({"oip": {"did": "did:a"}}),
                json!({"oip": {"did": "did:b"}})
            ]
        );
        assert!(matches!(
            hit_sources(b"{\"error\":{}}"),
            Err(ElasticError::Shape(_))
        ));
        assert!(matches!(hit_sources(b"<html>"), Err(ElasticError::Body(_))));
    }

    #[test]
    fn hits_match_by_did_or_did_tx_first_one_winning() {
        let all = vec!["did:a".to_owned(), "did:b".to_owned(), "did:c".to_owned()];
        let mut found = HashMap::new();
        match_hits(
            &all,
            vec![
                json!({"oip": {"did": "did:a"}, "n": 1}),
                json!({"oip": {"didTx": "did:b"}, "n": 2}),
                json!({"oip": {"did": "did:a"}, "n": 3}),
                json!({"oip": {"did": "did:zzz"}}),
            ],
            &mut found,
        );
        assert_eq!(found["did:a"]["n"], 1);
        assert_eq!(found["did:b"]["n"], 2);
        assert!(!found.contains_key("did:c"));
    }
}
