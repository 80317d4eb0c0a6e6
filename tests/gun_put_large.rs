//! `POST /gun-relay/put` with the records the indexer can publish: the default body
//! limit takes an encrypted record of several MiB (its `data` base64, as `putRecord`
//! sends it) through to the relay, and many large puts at once stay within the
//! process-wide request-body budget — past it, `503` + `Retry-After`, not memory.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::TestServer;
use support::relay_stub::{RelayStub, Reply};

/// A put body as the indexer's `putRecord` sends an encrypted record: `data` replaced
/// by `{encrypted, iv, tag}` (base64), `oip` a JSON string, `meta` with the
/// encryption fields; about `len` bytes.
fn encrypted_put(soul: &str, len: usize) -> Value {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let encrypted: String = (0..len)
        .map(|i| B64[(i * 7 + i / 64) % 64] as char)
        .collect();
    json!({
        "soul": soul,
        "data": {
            "data": {"encrypted": encrypted, "iv": "q83vEjRWeJq83vEj", "tag": "EjRWeJq83vEjRWeJq83vEg=="},
            "oip": json!({"did": format!("did:gun:{soul}"), "recordType": "conversationSession"}).to_string(),
            "meta": {"created": 1_765_000_000_000u64, "localId": null, "encrypted": true,
                     "encryptionMethod": "aes-256-gcm", "encryptionType": "per-user"}
        }
    })
}

#[tokio::test]
async fn an_encrypted_record_of_several_mib_goes_through_at_the_default_limit() {
    let relay = RelayStub::start().await;
    let peers = relay.base_url();
    let server = TestServer::start(move |c| c.gun.gun_peers = Some(peers)).await;
    let config = &server.app().state().config;
    assert_eq!(config.gun.gun_put_body_limit, 128 << 20);
    assert!(config.admission.request_body_budget >= 2 * config.gun.gun_put_body_limit);

    let body = encrypted_put("647f79c2a338:session-1", 6 << 20);
    let text = body.to_string();
    assert!(text.len() > 6 << 20);
    let response = server
        .client
        .post(server.url("/gun-relay/put"))
        .header("content-type", "application/json")
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["success"], true);
    let puts = relay.put_bodies();
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0], body, "the record reaches the relay as sent");
    server.stop().await;
}

#[tokio::test]
async fn many_large_puts_at_once_stay_within_the_body_budget() {
    const BUDGET: u64 = 24 << 20;
    const PUT: usize = 6 << 20;
    let relay = RelayStub::start().await;
    // The relay takes its time, so admitted puts hold their bodies.
    relay.set_put_reply(Some(Reply::after_ms(
        600,
        Reply::Status(200, json!({"success": true, "soul": "x"}).to_string()),
    )));
    let peers = relay.base_url();
    let server = TestServer::start(move |c| {
        c.gun.gun_peers = Some(peers);
        c.gun.gun_put_body_limit = 8 << 20;
        c.admission.request_body_budget = BUDGET;
        c.admission.request_body_queue = 2;
        c.admission.request_body_queue_timeout = Duration::from_millis(200);
    })
    .await;
    let budget = Arc::clone(&server.app().state().gates.request_body);
    let peak = Arc::new(AtomicUsize::new(0));
    let sampling = {
        let (budget, peak) = (Arc::clone(&budget), Arc::clone(&peak));
        tokio::spawn(async move {
            loop {
                peak.fetch_max(budget.in_flight(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let puts = (0..12).map(|i| {
        let request = server
            .client
            .post(server.url("/gun-relay/put"))
            .header("content-type", "application/json")
            .body(encrypted_put(&format!("647f79c2a338:big-{i}"), PUT).to_string());
        tokio::spawn(async move { request.send().await.unwrap() })
    });
    let mut stored = 0;
    let mut shed = 0;
    for response in futures_util::future::join_all(puts).await {
        let response = response.unwrap();
        match response.status().as_u16() {
            200 => stored += 1,
            503 => {
                assert_eq!(response.headers()["retry-after"], "1");
                shed += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    sampling.abort();
    assert_eq!(stored + shed, 12);
    // 24 MiB holds three bodies of just over 6 MiB at once.
    assert!(stored >= 3, "{stored} stored");
    assert!(shed >= 1, "past the budget, puts are shed");
    let peak_kib = peak.load(Ordering::SeqCst) as u64;
    assert!(peak_kib > 0);
    assert!(
        peak_kib * 1024 <= BUDGET,
        "bodies held at once: {peak_kib} KiB, budget {BUDGET}"
    );
    assert_eq!(relay.put_bodies().len(), stored);
    assert_eq!(budget.in_flight(), 0, "every share given back");
    server.stop().await;
}
