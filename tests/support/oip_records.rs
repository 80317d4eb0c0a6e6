//! OIP records for resolver memory tests and benchmarks: a realistic workout page
//! (the workload the resolver's default output budget is sized from) and the hostile
//! inputs of issue 10. Deterministic: the same call gives the same records.
//!
//! The page follows the indexer's record types as the FitnessAlly pages use them: a
//! `workout` lists exercises; an `exercise` has a demo-GIF collection
//! (`multiResolutionGif`, whose `gif_media_refs` are four `image` records) as its
//! avatar and `fitnessEquipment` records, each with an `image` icon. Every record
//! carries the `oip` block the indexer stores (creator with its public key,
//! signature), which is a good part of a real record's size.
#![allow(dead_code)]

use serde_json::{Value, json};

/// A did of the page's records.
fn did(kind: &str, i: usize) -> String {
    format!("did:arweave:{kind}{i:06}-{}", "x".repeat(30))
}

/// The `oip` block of a record, as the indexer indexes it.
fn oip(did: &str, record_type: &str) -> Value {
    json!({
        "did": did,
        "didTx": did,
        "recordType": record_type,
        "indexedAt": "2025-01-15T09:00:00.000Z",
        "ver": "0.8.0",
        "signature": "s".repeat(342),
        "creator": {
            "creatorHandle": "FitnessAlly",
            "didAddress": "did:arweave:u7Jd2WJQqZCC2gx1ViBrL3yCjF2gXl3xGFSnd7oJ9ok",
            "didTx": "did:arweave:Ldq1qNS1YvWg7ysJjS_N1VbNHmtYmWYLdXvZ4wJqZ0M",
            "publicKey": "k".repeat(683)
        }
    })
}

fn basic(name: &str, description_len: usize, avatar: Option<&str>) -> Value {
    let mut basic = json!({
        "name": name,
        "description": "d".repeat(description_len),
        "date": 1_736_931_600,
        "language": "en",
        "nsfw": false,
        "tagItems": ["fitness", "exercise", "strength"]
    });
    if let Some(avatar) = avatar {
        basic["avatar"] = json!(avatar);
    }
    basic
}

fn image(i: usize) -> Value {
    let did = did("img", i);
    json!({
        "oip": oip(&did, "image"),
        "data": {
            "basic": basic(&format!("Exercise demo {i}"), 60, None),
            "image": {
                "webUrl": format!("https://api.fitnessally.io/media/fitnessally/{i:08}-Exercise_Demo_360.gif"),
                "bittorrentAddress": format!("magnet:?xt=urn:btih:{}&dn={i:08}-Exercise_Demo_360.gif", "f".repeat(40)),
                "filename": format!("{i:08}-Exercise_Demo_360.gif"),
                "width": 360, "height": 360, "size": 381_004, "contentType": "image/gif"
            }
        }
    })
}

/// The records of a page of `workouts` workouts (what Elasticsearch holds), and the
/// request body asking for them at `depth`.
pub fn workout_page(workouts: usize, depth: u32) -> (Vec<Value>, String) {
    const EXERCISES_PER_WORKOUT: usize = 12;
    const EXERCISES: usize = 60;
    const EQUIPMENT: usize = 15;
    let mut records = Vec::new();
    for e in 0..EQUIPMENT {
        let icon = image(10_000 + e);
        let equipment_did = did("eqp", e);
        records.push(json!({
            "oip": oip(&equipment_did, "fitnessEquipment"),
            "data": {
                "basic": basic(&format!("Equipment {e}"), 120, icon["oip"]["did"].as_str()),
                "fitnessEquipment": {"category": "free weights", "muscleGroups": ["chest", "back"]}
            }
        }));
        records.push(icon);
    }
    for x in 0..EXERCISES {
        let images: Vec<Value> = (0..4).map(|r| image(x * 4 + r)).collect();
        let gif_did = did("gif", x);
        records.push(json!({
            "oip": oip(&gif_did, "multiResolutionGif"),
            "data": {
                "basic": basic(&format!("Exercise {x} demo"), 40, None),
                "multiResolutionGif": {
                    "gif_media_refs": images.iter().map(|i| i["oip"]["did"].clone()).collect::<Vec<_>>(),
                    "resolutions": [180, 360, 720, 1080]
                }
            }
        }));
        records.extend(images);
        let exercise_did = did("exr", x);
        records.push(json!({
            "oip": oip(&exercise_did, "exercise"),
            "data": {
                "basic": basic(&format!("Exercise {x}"), 250, Some(&gif_did)),
                "exercise": {
                    "instructions": (0..5).map(|s| format!("Step {s}: {}", "i".repeat(80))).collect::<Vec<_>>(),
                    "muscleGroups": ["chest", "triceps", "shoulders"],
                    "difficulty": "intermediate",
                    "category": "strength",
                    "equipmentRequired": [did("eqp", x % EQUIPMENT), did("eqp", (x + 7) % EQUIPMENT)],
                    "isBodyweight": false,
                    "exercise_type": "main",
                    "measurement_type": "reps",
                    "est_duration_minutes": 5,
                    "recommended_sets": 3,
                    "recommended_reps": 10
                }
            }
        }));
    }
    let page: Vec<Value> = (0..workouts)
        .map(|w| {
            let exercises: Vec<String> = (0..EXERCISES_PER_WORKOUT)
                .map(|k| did("exr", (w * 5 + k) % EXERCISES))
                .collect();
            json!({
                "oip": oip(&did("wko", w), "workout"),
                "data": {
                    "basic": basic(&format!("Workout {w}"), 300, None),
                    "workout": {
                        "total_duration_minutes": 45,
                        "estimated_calories_burned": 400,
                        "includesWarmup": true,
                        "exercise": exercises,
                        "exercise_amount": vec![3; EXERCISES_PER_WORKOUT],
                        "exercise_unit": vec!["sets"; EXERCISES_PER_WORKOUT],
                        "exercise_comment": vec!["slow and controlled"; EXERCISES_PER_WORKOUT]
                    }
                }
            })
        })
        .collect();
    let body = json!({"records": page, "resolveDepth": depth}).to_string();
    (records, body)
}

/// Issue 10's first hostile input: `n` records each referencing `fanout` others, and
/// a ~516-byte request asking for one record referencing `fanout` of them at depth 4.
pub fn hostile_graph(n: usize, fanout: usize) -> (Vec<Value>, String) {
    let name = |i: usize| format!("did:h:{i}");
    let records = (0..n)
        .map(|i| {
            let refs: Vec<String> = (1..=fanout).map(|k| name((i * 7 + k * 13) % n)).collect();
            json!({"oip": {"did": name(i)}, "data": {"basic": {"name": format!("node {i}")}, "links": {"refs": refs}}})
        })
        .collect();
    let refs: Vec<String> = (0..fanout).map(name).collect();
    let body =
        json!({"record": {"data": {"links": {"refs": refs}}}, "resolveDepth": 4}).to_string();
    (records, body)
}

/// Issue 10's second hostile input: `n` tiny records in one body (200,000 make
/// ~6.5 MB), each with one reference.
pub fn tiny_records_body(n: usize) -> String {
    let mut body = String::with_capacity(n * 34 + 32);
    body.push_str("{\"records\":[");
    for i in 0..n {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!("{{\"data\":{{\"l\":{{\"r\":\"did:{i}\"}}}}}}"));
    }
    body.push_str("],\"resolveDepth\":4}");
    body
}
