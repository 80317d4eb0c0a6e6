//! `POST /api/resolve` through a real server on a loopback port, with an Elasticsearch
//! stand-in behind it.

mod support;

use std::time::Duration;

use oip_media::Config;
use serde_json::{Value, json};
use support::elastic::ElasticStandIn;
use support::relay_stub::RelayStub;
use support::{TestServer, rec, with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixture {
    server: TestServer,
    es: ElasticStandIn,
    client: reqwest::Client,
}

impl Fixture {
    async fn start(records: Vec<Value>, adjust: impl FnOnce(&mut Config)) -> Fixture {
        let es = ElasticStandIn::start(records, vec![]).await;
        let url = es.url();
        let server = TestServer::start(|config| {
            config.resolver.elasticsearch_host = Some(url.into());
            adjust(config);
        })
        .await;
        let client = server.client.clone();
        Fixture { server, es, client }
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.server.local_addr())
    }

    async fn post(&self, path_and_query: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path_and_query))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert_eq!(
            response.headers()["content-type"],
            "application/json; charset=utf-8"
        );
        (status, response.json().await.unwrap())
    }

    async fn post_json(&self, path_and_query: &str, body: Value) -> (u16, Value) {
        self.post(path_and_query, body.to_string()).await
    }
}

fn graph() -> (Value, Value, Value) {
    let a = rec(
        "did:arweave:a",
        "A",
        json!({"b": "did:arweave:b", "gone": "did:arweave:gone"}),
    );
    let b = rec("did:arweave:b", "B", json!({"c": "did:arweave:c"}));
    let c = rec("did:arweave:c", "C", json!({}));
    (a, b, c)
}

#[tokio::test]
async fn resolves_records_and_reports_stats() {
    let (a, b, c) = graph();
    let fx = Fixture::start(vec![b.clone(), c.clone()], |_| {}).await;
    let (status, body) = fx
        .post_json(
            "/api/resolve",
            json!({"records": [a.clone()], "resolveDepth": 2}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["records"],
        json!([with(a.clone(), "b", with(b.clone(), "c", c.clone()))])
    );
    let stats = &body["stats"];
    assert_eq!(stats["lookups"], 3);
    assert_eq!(stats["cacheHits"], 0);
    assert_eq!(stats["misses"], 3);
    assert_eq!(stats["notFound"], 1);
    assert_eq!(stats["capped"], false);
    assert_eq!(stats["budgetExhausted"], false);
    assert_eq!(stats["unresolvedNoSource"], 0);
    assert!(stats["elapsedMs"].is_u64());

    // The same again: answered from the cache, same result.
    let (_, again) = fx
        .post_json(
            "/api/resolve",
            json!({"records": [a.clone()], "resolveDepth": 2}),
        )
        .await;
    assert_eq!(again["records"], body["records"]);
    assert_eq!(again["stats"]["cacheHits"], 3);
    assert_eq!(
        fx.es.searches().len(),
        3,
        "records ×2 levels + organizations for the miss"
    );
    assert!(fx.es.violations().is_empty());
    assert_eq!(
        fx.server
            .app()
            .state()
            .resolver
            .counters()
            .resolutions
            .get(),
        2
    );
    fx.server.shutdown().await;
}

#[tokio::test]
async fn one_record_in_one_record_out() {
    let (a, b, _) = graph();
    let fx = Fixture::start(vec![b.clone()], |_| {}).await;
    let (status, body) = fx
        .post_json(
            "/api/resolve",
            json!({"record": a.clone(), "resolveDepth": "1"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["record"], with(a, "b", b));
    assert!(body.get("records").is_none());
    assert!(body["stats"].is_object());
    // One record, one element of `recordStats`: `b` resolved, `gone` not found.
    let record_stats = body["recordStats"].as_array().unwrap();
    assert_eq!(record_stats.len(), 1);
    let mut only = record_stats[0].clone();
    assert!(only["outputBytes"].as_u64().unwrap() > 0);
    only["outputBytes"] = json!(0);
    assert_eq!(
        only,
        json!({"resolved": 1, "unresolved": 1, "notFound": 1, "sourceErrors": 0,
               "unresolvedNoSource": 0, "outputBytes": 0, "boundsHit": []})
    );
    fx.server.shutdown().await;
}

#[tokio::test]
async fn options_come_from_the_query_string_and_json_fields_win() {
    let (a, b, c) = graph();
    let fx = Fixture::start(vec![b.clone(), c.clone()], |_| {}).await;
    let (_, body) = fx
        .post_json(
            "/api/resolve?resolveDepth=1&resolveNamesOnly=true",
            json!({"records": [a.clone()]}),
        )
        .await;
    assert_eq!(body["records"][0], with(a.clone(), "b", json!("B")));

    let (_, body) = fx
        .post_json(
            "/api/resolve?resolveDepth=0&resolveNamesOnly=true&resolveFieldName=links.gone",
            json!({"records": [a.clone()], "resolveDepth": 2, "resolveNamesOnly": "false",
                   "resolveFieldName": "links.b,links.c"}),
        )
        .await;
    assert_eq!(body["records"][0], with(a.clone(), "b", with(b, "c", c)));
    assert_eq!(body["stats"]["lookups"], 2, "links.gone was not selected");
    fx.server.shutdown().await;
}

#[tokio::test]
async fn depths_over_the_cap_are_capped_and_said_to_be() {
    let chain: Vec<Value> = (0..8)
        .map(|i| {
            rec(
                &format!("did:arweave:{i}"),
                &format!("N{i}"),
                json!({"next": format!("did:arweave:{}", i + 1)}),
            )
        })
        .collect();
    let fx = Fixture::start(chain.clone(), |c| c.resolver.resolve_max_depth = 2).await;
    let (_, body) = fx
        .post_json(
            "/api/resolve",
            json!({"records": [chain[0].clone()], "resolveDepth": 6}),
        )
        .await;
    assert_eq!(
        body["records"][0],
        with(
            chain[0].clone(),
            "next",
            with(chain[1].clone(), "next", chain[2].clone())
        )
    );
    assert_eq!(body["stats"]["capped"], true);
    assert_eq!(body["stats"]["depth"], 2);
    assert_eq!(body["stats"]["requestedDepth"], 6);
    fx.server.shutdown().await;
}

#[tokio::test]
async fn the_budget_is_reported_when_spent() {
    let dids: Vec<String> = (0..50).map(|i| format!("did:arweave:{i}")).collect();
    let targets = dids.iter().map(|d| rec(d, "t", json!({}))).collect();
    let fx = Fixture::start(targets, |c| c.resolver.resolve_budget = 10).await;
    let root = rec("did:arweave:root", "R", json!({"all": dids}));
    let (_, body) = fx
        .post_json(
            "/api/resolve",
            json!({"records": [root], "resolveDepth": 1}),
        )
        .await;
    let all = body["records"][0]["data"]["links"]["all"]
        .as_array()
        .unwrap();
    assert!(all[..10].iter().all(Value::is_object));
    assert!(all[10..].iter().all(Value::is_string));
    assert_eq!(body["stats"]["budgetExhausted"], true);
    assert_eq!(body["stats"]["lookups"], 10);
    fx.server.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_get_400_with_the_reason() {
    let fx = Fixture::start(vec![], |_| {}).await;
    let cases: [(&str, &str, &str); 6] = [
        ("/api/resolve", "{not json", "not valid JSON"),
        ("/api/resolve", "[]", "must be a JSON object"),
        (
            "/api/resolve",
            r#"{"records": "did:arweave:x"}"#,
            "`records` must be an array",
        ),
        (
            "/api/resolve",
            r#"{"records": [{}, 5]}"#,
            "`records[1]` is not a JSON object",
        ),
        (
            "/api/resolve",
            r#"{"records": [], "resolveNamesOnly": "maybe"}"#,
            "resolveNamesOnly",
        ),
        (
            "/api/resolve?resolveDepth=-2",
            r#"{"records": []}"#,
            "resolveDepth",
        ),
    ];
    for (path, body, reason) in cases {
        let (status, answer) = fx.post(path, body.to_owned()).await;
        assert_eq!(status, 400, "{body}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(reason), "{body}: {error}");
    }
    fx.server.shutdown().await;
}

/// A `413` answered before the body is read says `Connection: close` and closes: a
/// keep-alive client (Node's agent, the indexer's companion) that reused the socket would
/// otherwise write its next request into a closed connection and get `EPIPE`.
#[tokio::test]
async fn an_early_413_closes_the_connection_and_says_so() {
    let fx = Fixture::start(vec![], |c| c.resolver.resolve_body_limit = 1024).await;
    let mut stream = tokio::net::TcpStream::connect(fx.server.local_addr())
        .await
        .unwrap();
    // A keep-alive request whose head declares 200 KB: the body's first bytes only.
    let head = "POST /api/resolve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 200000\r\n\r\n{\"records\": [";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the server kept the connection open after its 413"
    );
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    fx.server.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_declared_or_not() {
    let fx = Fixture::start(vec![], |c| c.resolver.resolve_body_limit = 1024).await;
    let big = json!({"records": [{"data": {"basic": {"name": "x".repeat(2000)}}}]}).to_string();
    let (status, answer) = fx.post("/api/resolve", big.clone()).await;
    assert_eq!(status, 413);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("1024-byte limit")
    );

    // Chunked, so no Content-Length to refuse early: the read limit catches it.
    let mut stream = tokio::net::TcpStream::connect(fx.server.local_addr())
        .await
        .unwrap();
    let mut request = b"POST /api/resolve HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for piece in big.as_bytes().chunks(500) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Just under the limit is fine.
    let (status, _) = fx
        .post("/api/resolve", r#"{"records": []}"#.to_owned())
        .await;
    assert_eq!(status, 200);
    fx.server.shutdown().await;
}

#[tokio::test]
async fn other_methods_get_405_with_allow() {
    let fx = Fixture::start(vec![], |_| {}).await;
    let response = fx.client.get(fx.url("/api/resolve")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    fx.server.shutdown().await;
}

#[tokio::test]
async fn without_elasticsearch_the_response_says_references_had_no_source() {
    let (a, _, _) = graph();
    let fx = Fixture::start(vec![], |c| c.resolver.elasticsearch_host = None).await;
    let (status, body) = fx
        .post_json(
            "/api/resolve",
            json!({"records": [a.clone()], "resolveDepth": 2}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["records"][0], a);
    assert_eq!(body["stats"]["unresolvedNoSource"], 2);
    assert!(fx.es.searches().is_empty());
    fx.server.shutdown().await;
}

#[tokio::test]
async fn an_unusable_elasticsearch_url_stops_the_start() {
    let media = tempfile::tempdir().unwrap();
    std::fs::create_dir(media.path().join("web")).unwrap();
    let mut config = Config::for_media_dir(media.path());
    config.resolver.elasticsearch_host = Some("ftp://es:21".into());
    let error = oip_media::server::start(config).await.err().unwrap();
    assert!(error.to_string().contains("ELASTICSEARCHHOST"), "{error}");
}

#[tokio::test]
async fn gun_references_resolve_through_the_relay_and_a_put_refreshes_them() {
    let relay = RelayStub::start().await;
    let soul = "647f79c2a338:exercise-1";
    let v1 = json!({"data": {"basic": {"name": "Squat"}}, "oip": {"did": format!("did:gun:{soul}")}, "meta": {}});
    relay.store(
        soul,
        json!({"data": v1["data"].to_string(), "oip": v1["oip"].to_string(), "meta": {}}),
    );
    let relay_url = relay.base_url();
    let fx = Fixture::start(vec![], move |c| c.gun.gun_peers = Some(relay_url)).await;
    let workout = rec(
        "did:arweave:w",
        "W",
        json!({"ex": [format!("did:gun:{soul}"), "did:gun:647f79c2a338:gone"]}),
    );
    let request = json!({"record": workout.clone(), "resolveDepth": 1});
    let (status, body) = fx.post_json("/api/resolve", request.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["record"],
        with(
            workout.clone(),
            "ex",
            json!([v1, "did:gun:647f79c2a338:gone"])
        )
    );
    assert_eq!(relay.gets_of(soul), 1);

    // Cached: no new relay request.
    let (_, body) = fx.post_json("/api/resolve", request.clone()).await;
    assert_eq!(body["stats"]["cacheHits"], 2);
    assert_eq!(relay.gets_of(soul), 1);

    // A write through /gun-relay/put makes the next resolution read the new version.
    let v2 = json!({"data": {"basic": {"name": "Back Squat"}}, "oip": {"did": format!("did:gun:{soul}")}, "meta": {}});
    let put = fx
        .client
        .post(fx.url("/gun-relay/put"))
        .json(&json!({"soul": soul, "data": v2}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let (_, body) = fx.post_json("/api/resolve", request).await;
    assert_eq!(body["record"]["data"]["links"]["ex"][0], v2);
    assert_eq!(relay.gets_of(soul), 2);
    fx.server.shutdown().await;
}

#[tokio::test]
async fn recipe_pages_get_merged_ingredient_names() {
    // What the recipe pages ask for: one level, names only, as query parameters.
    let ingredient = |did: &str, name: &str| rec(did, name, json!({}));
    let fx = Fixture::start(
        vec![
            ingredient("did:arweave:garlic", "garlic"),
            ingredient("did:arweave:oil", "olive oil"),
            ingredient("did:arweave:pepper", "black pepper"),
            ingredient("did:arweave:thighs", "chicken thighs"),
            ingredient("did:arweave:salt", "salt"),
        ],
        |_| {},
    )
    .await;
    let dish = json!({"oip": {"did": "did:arweave:dish"}, "data": {
        "basic": {"name": "Chicken"},
        "recipe": {
            "ingredient": ["did:arweave:garlic", "did:arweave:oil", "did:arweave:pepper",
                           "did:arweave:thighs", "did:arweave:salt"],
            "ingredient_comment": ["minced", "extra virgin divided", "ground", "boneless", " "]
        }
    }});
    let (status, body) = fx
        .post_json(
            "/api/resolve?resolveDepth=1&resolveNamesOnly=true",
            json!({"records": [dish]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["records"],
        json!([{"oip": {"did": "did:arweave:dish"}, "data": {
            "basic": {"name": "Chicken"},
            "recipe": {
                "ingredient": ["garlic, minced", "extra virgin olive oil, divided",
                               "ground black pepper", "boneless chicken thighs", "salt"],
                "ingredient_comment": ["minced", "extra virgin divided", "ground", "boneless", " "]
            }
        }}])
    );
    assert_eq!(fx.es.searches().len(), 1);
    fx.server.shutdown().await;
}

#[tokio::test]
async fn a_did_gun_record_the_sync_indexed_comes_from_elasticsearch_not_the_relay() {
    let relay = RelayStub::start().await;
    let soul = "647f79c2a338:meal-1";
    let did = format!("did:gun:{soul}");
    // As the indexer's GUN sync writes it into `records`.
    let indexed = json!({"data": {"basic": {"name": "Meal"}},
                         "oip": {"did": did, "didTx": did, "storage": "gun"}});
    let relay_url = relay.base_url();
    let fx = Fixture::start(vec![indexed.clone()], move |c| {
        c.gun.gun_peers = Some(relay_url)
    })
    .await;
    let plan = rec("did:arweave:plan", "Plan", json!({"meal": did}));
    let (status, body) = fx
        .post_json("/api/resolve", json!({"record": plan, "resolveDepth": 1}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["record"], with(plan, "meal", indexed));
    assert_eq!(fx.es.searches().len(), 1);
    assert_eq!(relay.requests(), 0);
    assert_eq!(body["stats"]["sourceRequests"], 1);
    fx.server.shutdown().await;
}

/// `recordStats[i]` without its `outputBytes` (which depends on record sizes).
fn outcome(body: &Value, i: usize) -> Value {
    let mut stats = body["recordStats"][i].clone();
    stats.as_object_mut().unwrap().remove("outputBytes");
    stats
}

#[tokio::test]
async fn each_record_of_a_batch_says_which_bound_it_hit() {
    let b = rec("did:arweave:b", "B", json!({"c": "did:arweave:c"}));
    let c = rec("did:arweave:c", "C", json!({}));
    let x1 = rec("did:arweave:x1", "X1", json!({}));
    let x2 = rec("did:arweave:x2", "X2", json!({}));
    let fx = Fixture::start(vec![b.clone(), c, x1.clone(), x2], |c| {
        c.resolver.resolve_max_depth = 1;
        c.resolver.resolve_budget = 3;
    })
    .await;
    let r0 = rec("did:arweave:r0", "R0", json!({"b": "did:arweave:b"}));
    let r1 = rec("did:arweave:r1", "R1", json!({"g": "did:arweave:gone"}));
    let r2 = rec(
        "did:arweave:r2",
        "R2",
        json!({"x": ["did:arweave:x1", "did:arweave:x2"]}),
    );
    let (status, body) = fx
        .post_json(
            "/api/resolve",
            json!({"records": [r0.clone(), r1.clone(), r2.clone()], "resolveDepth": 2}),
        )
        .await;
    assert_eq!(status, 200);
    // Lookups in document order: b, gone, x1 spend the budget of 3; x2 is left.
    assert_eq!(body["records"][0], with(r0, "b", b));
    assert_eq!(body["records"][1], r1);
    assert_eq!(
        body["records"][2],
        with(r2, "x", json!([x1, "did:arweave:x2"]))
    );
    assert_eq!(body["stats"]["budgetExhausted"], true);
    assert_eq!(body["stats"]["capped"], true);
    assert_eq!(body["recordStats"].as_array().unwrap().len(), 3);
    let counts = |resolved: u64, unresolved: u64, not_found: u64, bounds: Value| {
        json!({"resolved": resolved, "unresolved": unresolved, "notFound": not_found,
               "sourceErrors": 0, "unresolvedNoSource": 0, "boundsHit": bounds})
    };
    // r0: `b` was inserted at the capped depth with a reference of its own.
    assert_eq!(outcome(&body, 0), counts(1, 0, 0, json!(["depth"])));
    // r1: a plain miss is no bound.
    assert_eq!(outcome(&body, 1), counts(0, 1, 1, json!([])));
    // r2: one resolved, one left by the lookup budget.
    assert_eq!(outcome(&body, 2), counts(1, 1, 0, json!(["budget"])));
    fx.server.shutdown().await;
}

#[tokio::test]
async fn the_output_bound_is_reported_on_the_records_it_cut() {
    let filler = "f".repeat(40_000);
    let big = rec("did:arweave:big", &filler, json!({}));
    let fx = Fixture::start(vec![big.clone()], |c| {
        c.resolver.resolve_max_output_bytes = 150_000;
    })
    .await;
    let records: Vec<Value> = (0..6)
        .map(|i| {
            rec(
                &format!("did:arweave:r{i}"),
                "R",
                json!({"big": "did:arweave:big"}),
            )
        })
        .collect();
    let (status, body) = fx
        .post_json(
            "/api/resolve",
            json!({"records": records, "resolveDepth": 1}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["stats"]["outputLimitReached"], true);
    let cut: Vec<bool> = (0..6)
        .map(|i| body["recordStats"][i]["boundsHit"] == json!(["output"]))
        .collect();
    let resolved: Vec<bool> = (0..6)
        .map(|i| body["records"][i]["data"]["links"]["big"].is_object())
        .collect();
    assert!(resolved[0] && !resolved[5], "{resolved:?}");
    for i in 0..6 {
        // A record is said to be cut exactly when its reference stayed a DID.
        assert_eq!(cut[i], !resolved[i], "record {i}");
        assert_eq!(body["recordStats"][i]["resolved"], u64::from(resolved[i]));
    }
    fx.server.shutdown().await;
}

#[tokio::test]
async fn a_bare_field_name_selects_a_category_not_a_key_of_another_category() {
    let ex = rec("did:arweave:ex", "Squat", json!({}));
    let eq = rec("did:arweave:eq", "Bar", json!({}));
    let fx = Fixture::start(vec![ex, eq.clone()], |_| {}).await;
    let workout = json!({"oip": {"did": "did:arweave:w"}, "data": {
        "basic": {"name": "W"},
        "workout": {"exercise": ["did:arweave:ex"]},
        "exercise": {"equipment": "did:arweave:eq"}
    }});
    let (status, body) = fx
        .post_json(
            "/api/resolve",
            json!({"records": [workout.clone()], "resolveDepth": 1, "resolveFieldName": "exercise"}),
        )
        .await;
    assert_eq!(status, 200);
    let mut expected = workout;
    expected["data"]["exercise"]["equipment"] = eq;
    assert_eq!(body["records"][0], expected, "workout.exercise stays a DID");
    assert_eq!(body["stats"]["lookups"], 1);
    assert_eq!(fx.es.searches()[0].dids, ["did:arweave:eq"]);
    fx.server.shutdown().await;
}
