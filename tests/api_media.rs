//! `/api/media/<mediaId>` and `/info` against a real server: ids, caching headers,
//! ranges and preconditions, access to private media, served types, GIF metadata.

mod support;

use serde_json::{Value, json};
use support::TestServer as Fixture;
use support::media::{TestFrame, header, in_an_hour, make_gif, media_id, token};

const SECRET: &str = "integration-secret";
const OWNER: &str = "02owner-public-key";

fn with_secret(config: &mut oip_media::Config) {
    config.auth.jwt_secret = Some(oip_media::config::Secret::new(SECRET));
}

fn public_manifest(id: &str, mime: &str) -> Value {
    json!({"mediaId": id, "mimeType": mime, "accessLevel": "public",
           "userPublicKey": OWNER, "originalName": "file.bin"})
}

fn private_manifest(id: &str) -> Value {
    json!({"mediaId": id, "mimeType": "image/gif", "accessLevel": "private",
           "userPublicKey": OWNER, "originalName": "secret.gif"})
}

fn body_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn ids_that_are_not_64_lowercase_hex_are_404() {
    let fx = Fixture::start(|_| {}).await;
    let id = media_id(0xab);
    fx.put_media(&id, b"bytes", None);
    assert_eq!(fx.get(&format!("/api/media/{id}")).await.status(), 200);
    let bad = [
        id.to_uppercase(),
        id[1..].to_owned(),
        format!("{id}0"),
        id.replacen('a', "g", 1),
        format!("{id}/original"),
        format!("{id}/"),
        format!("{id}/info/x"),
        "web".to_owned(),
        String::new(),
    ];
    for path in bad {
        let response = fx.get(&format!("/api/media/{path}")).await;
        assert_eq!(response.status(), 404, "{path}");
    }
    for raw in [
        format!("/api/media/%2e%2e/{id}"),
        "/api/media/../web/fitnessally/x.gif".to_owned(),
        "/api/media/..%2fweb".to_owned(),
    ] {
        assert_eq!(fx.raw_get(&raw).await.0, 404, "{raw}");
    }
    fx.shutdown().await;
}

#[tokio::test]
async fn public_media_is_cached_for_a_year_with_a_strong_etag() {
    let fx = Fixture::start(|_| {}).await;
    let id = media_id(1);
    let bytes = body_of(1000);
    fx.put_media(&id, &bytes, Some(public_manifest(&id, "image/gif")));
    let path = format!("/api/media/{id}");

    let r = fx.get(&path).await;
    assert_eq!(r.status(), 200);
    let etag = format!("\"{id}\"");
    assert_eq!(header(&r, "etag"), Some(etag.as_str()));
    assert_eq!(
        header(&r, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(header(&r, "content-type"), Some("image/gif"));
    assert_eq!(header(&r, "accept-ranges"), Some("bytes"));
    assert_eq!(header(&r, "content-length"), Some("1000"));
    assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"));
    assert!(
        r.headers()
            .get_all("vary")
            .iter()
            .all(|v| !v.to_str().unwrap().contains("Authorization")),
        "public media does not vary by Authorization"
    );
    assert!(header(&r, "content-disposition").is_none());
    let last_modified = header(&r, "last-modified").unwrap().to_owned();
    assert_eq!(r.bytes().await.unwrap(), bytes);

    // 304s keep the caching headers.
    let r = fx.get_with(&path, &[("if-none-match", &etag)]).await;
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, "etag"), Some(etag.as_str()));
    assert_eq!(
        header(&r, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let r = fx
        .get_with(&path, &[("if-modified-since", &last_modified)])
        .await;
    assert_eq!(r.status(), 304);

    // Ranges, including suffix ranges and If-Range with the strong tag.
    let r = fx.get_with(&path, &[("range", "bytes=10-19")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), Some("bytes 10-19/1000"));
    assert_eq!(r.bytes().await.unwrap(), bytes[10..20]);
    let r = fx.get_with(&path, &[("range", "bytes=-5")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), bytes[995..]);
    let r = fx
        .get_with(&path, &[("range", "bytes=0-0"), ("if-range", &etag)])
        .await;
    assert_eq!(r.status(), 206, "a strong ETag makes If-Range usable");
    let r = fx
        .get_with(&path, &[("range", "bytes=0-0"), ("if-range", "\"old\"")])
        .await;
    assert_eq!(r.status(), 200);

    // 416 and 412 instead of the indexer's 500s.
    let r = fx.get_with(&path, &[("range", "bytes=1000-")]).await;
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "content-range"), Some("bytes */1000"));
    let r = fx.get_with(&path, &[("if-match", "\"other\"")]).await;
    assert_eq!(r.status(), 412);
    let r = fx.get_with(&path, &[("if-match", &etag)]).await;
    assert_eq!(r.status(), 200, "strong If-Match matches");

    // HEAD: the same headers, no body.
    let r = fx.client.head(fx.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), Some("1000"));
    assert!(r.bytes().await.unwrap().is_empty());

    let r = fx.client.post(fx.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    fx.shutdown().await;
}

#[tokio::test]
async fn organization_and_manifestless_media_are_public() {
    let fx = Fixture::start(|_| {}).await;
    let org = media_id(2);
    fx.put_media(
        &org,
        b"org",
        Some(json!({"mimeType": "video/mp4", "accessLevel": "organization"})),
    );
    let r = fx.get(&format!("/api/media/{org}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some("video/mp4"));
    assert_eq!(
        header(&r, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );

    let bare = media_id(3);
    fx.put_media(&bare, b"no manifest", None);
    let r = fx.get(&format!("/api/media/{bare}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some("application/octet-stream"));
    assert!(header(&r, "content-disposition").is_none());
    assert_eq!(
        header(&r, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );

    let missing = media_id(4);
    let r = fx.get(&format!("/api/media/{missing}")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "Media not found"})
    );
    fx.shutdown().await;
}

#[tokio::test]
async fn active_types_are_downloads_never_inline() {
    let fx = Fixture::start(|_| {}).await;
    let cases = [
        ("text/html", true),
        ("text/html; charset=utf-8", true),
        ("image/svg+xml", true),
        ("application/xml", true),
        ("text/xml", true),
        ("application/javascript", true),
        ("text/javascript", true),
        ("application/xhtml+xml", true),
        ("image/png", false),
        ("audio/mpeg", false),
    ];
    for (n, (mime, download)) in cases.into_iter().enumerate() {
        let id = media_id(0x10 + n as u8);
        fx.put_media(
            &id,
            b"<script>alert(1)</script>",
            Some(public_manifest(&id, mime)),
        );
        let r = fx.get(&format!("/api/media/{id}")).await;
        assert_eq!(r.status(), 200, "{mime}");
        if download {
            assert_eq!(
                header(&r, "content-type"),
                Some("application/octet-stream"),
                "{mime}"
            );
            assert_eq!(
                header(&r, "content-disposition"),
                Some("attachment; filename=\"file.bin\"; filename*=UTF-8''file.bin"),
                "{mime}"
            );
        } else {
            assert_eq!(header(&r, "content-type"), Some(mime));
            assert!(header(&r, "content-disposition").is_none(), "{mime}");
        }
        assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"));
    }
    fx.shutdown().await;
}

#[tokio::test]
async fn private_media_needs_the_owners_token() {
    let fx = Fixture::start(with_secret).await;
    let id = media_id(0x20);
    fx.put_media(&id, b"private bytes", Some(private_manifest(&id)));
    let path = format!("/api/media/{id}");
    let bearer = |t: &str| format!("Bearer {t}");

    // No token.
    let r = fx.get(&path).await;
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    assert_eq!(header(&r, "www-authenticate"), Some("Bearer"));
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "Authentication required for private media"})
    );

    // Tokens that must count as no token.
    let claims = json!({"publicKey": OWNER, "exp": in_an_hour()});
    let forged = token("not-the-secret", claims.clone());
    let tampered = {
        // Correctly signed for someone else, with the payload swapped for the owner's.
        let other = token(SECRET, json!({"publicKey": "mallory", "exp": in_an_hour()}));
        let owner = token(SECRET, claims.clone());
        let o: Vec<&str> = other.split('.').collect();
        let w: Vec<&str> = owner.split('.').collect();
        format!("{}.{}.{}", o[0], w[1], o[2])
    };
    let expired = token(SECRET, json!({"publicKey": OWNER, "exp": 1_600_000_000}));
    // HS384/HS512 with the secret verify, as with the indexer's jsonwebtoken; the
    // algorithm table is in tests/private_media.rs and src/auth.rs.
    let alg_none = {
        // Hand-built: header {"alg":"none","typ":"JWT"}, payload {"publicKey":OWNER}, no signature.
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let payload = base64_url(format!(r#"{{"publicKey":"{OWNER}"}}"#).as_bytes());
        format!("{header}.{payload}.")
    };
    for (what, t) in [
        ("forged", forged),
        ("tampered", tampered),
        ("expired", expired),
        ("alg none", alg_none),
        ("garbage", "not.a.jwt".to_owned()),
    ] {
        let r = fx.get_with(&path, &[("authorization", &bearer(&t))]).await;
        assert_eq!(r.status(), 401, "{what}");
    }

    // A valid token for someone else.
    let other = token(
        SECRET,
        json!({"publicKey": "someone-else", "exp": in_an_hour()}),
    );
    let r = fx
        .get_with(&path, &[("authorization", &bearer(&other))])
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "Access denied: not the owner"})
    );

    // The owner, by either claim name.
    for claims in [
        json!({"userId": "u1", "email": "a@b.c", "publicKey": OWNER, "isAdmin": false, "exp": in_an_hour()}),
        json!({"publisherPubKey": OWNER, "exp": in_an_hour()}),
        json!({"publicKey": OWNER}),
    ] {
        let t = token(SECRET, claims.clone());
        let r = fx.get_with(&path, &[("authorization", &bearer(&t))]).await;
        assert_eq!(r.status(), 200, "{claims}");
        assert_eq!(header(&r, "cache-control"), Some("private, no-store"));
        assert_eq!(header(&r, "vary"), Some("Authorization"));
        assert_eq!(header(&r, "etag"), Some(format!("\"{id}\"").as_str()));
        assert_eq!(&r.bytes().await.unwrap()[..], b"private bytes");
    }

    // /info is gated the same way.
    assert_eq!(fx.get(&format!("{path}/info")).await.status(), 401);
    let t = token(SECRET, claims);
    let r = fx
        .get_with(&format!("{path}/info"), &[("authorization", &bearer(&t))])
        .await;
    assert_eq!(
        r.status(),
        422,
        "private, owner's token; the bytes are no GIF"
    );
    fx.shutdown().await;
}

#[tokio::test]
async fn without_a_secret_private_media_is_never_served() {
    let fx = Fixture::start(|_| {}).await;
    let id = media_id(0x21);
    fx.put_media(&id, b"private bytes", Some(private_manifest(&id)));
    for secret in ["", SECRET, "anything"] {
        let t = token(secret, json!({"publicKey": OWNER, "exp": in_an_hour()}));
        let r = fx
            .get_with(
                &format!("/api/media/{id}"),
                &[("authorization", &format!("Bearer {t}"))],
            )
            .await;
        assert_eq!(r.status(), 401, "secret {secret:?}");
    }
    // A manifest without accessLevel is private too (the SPEC's default).
    let unlabelled = media_id(0x22);
    fx.put_media(&unlabelled, b"x", Some(json!({"mimeType": "image/gif"})));
    assert_eq!(
        fx.get(&format!("/api/media/{unlabelled}")).await.status(),
        401
    );
    fx.shutdown().await;
}

#[tokio::test]
async fn manifest_changes_are_noticed_and_an_unreadable_manifest_serves_nothing() {
    // Window 0: every request checks the manifest (the default window is covered in
    // tests/nonblocking_fs.rs).
    let fx = Fixture::start(|c| {
        with_secret(c);
        c.store.revalidate_window = std::time::Duration::ZERO;
    })
    .await;
    let id = media_id(0x30);
    fx.put_media(&id, b"bytes", Some(public_manifest(&id, "image/gif")));
    let path = format!("/api/media/{id}");
    assert_eq!(fx.get(&path).await.status(), 200);
    fx.put_media(&id, b"bytes", Some(private_manifest(&id)));
    assert_eq!(fx.get(&path).await.status(), 401, "re-read after a change");
    support::media::write_atomically(
        &fx.media_dir().join(&id).join("manifest.json"),
        b"{ not json",
    );
    let r = fx.get(&path).await;
    assert_eq!(
        r.status(),
        500,
        "fails closed (tests/private_media.rs has every case)"
    );
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    assert_ne!(r.bytes().await.unwrap(), &b"bytes"[..]);
    fx.shutdown().await;
}

#[tokio::test]
async fn info_returns_the_manifest_without_paths_and_gif_metadata() {
    let fx = Fixture::start(|_| {}).await;
    let id = media_id(0x40);
    let frames = [
        TestFrame::full(30, 20, 10, |x, _| (x % 4) as u8),
        TestFrame::full(30, 20, 25, |_, y| (y % 4) as u8),
        TestFrame::full(30, 20, 5, |_, _| 1),
    ];
    let bytes = make_gif(30, 20, &frames, Some(gif::Repeat::Finite(2)));
    let absolute = fx.media_dir().join(&id).join("original");
    let mut manifest = public_manifest(&id, "image/gif");
    manifest["filePath"] = json!(absolute.to_string_lossy());
    manifest["httpUrl"] = json!(format!("/api/media/{id}"));
    manifest["fileSize"] = json!(bytes.len());
    fx.put_media(&id, &bytes, Some(manifest));

    let r = fx.get(&format!("/api/media/{id}/info")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "cache-control"), Some("no-cache"));
    let text = r.text().await.unwrap();
    assert!(
        !text.contains(&*fx.media_dir().to_string_lossy()),
        "no host paths: {text}"
    );
    let info: Value = serde_json::from_str(&text).unwrap();
    assert!(info.get("filePath").is_none());
    assert_eq!(info["mediaId"], json!(id));
    assert_eq!(info["httpUrl"], json!(format!("/api/media/{id}")));
    assert_eq!(
        info["gif"],
        json!({"width": 30, "height": 20, "frameCount": 3, "durationMs": 400, "loopCount": 3})
    );
    // Computed once: a second /info (or a HEAD) does not parse again.
    let before = parsed(&fx);
    assert_eq!(before, 1);
    assert_eq!(fx.get(&format!("/api/media/{id}/info")).await.status(), 200);
    let r = fx
        .client
        .head(fx.url(&format!("/api/media/{id}/info")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(parsed(&fx), before);

    // Not a GIF: the manifest alone.
    let png = media_id(0x41);
    fx.put_media(
        &png,
        b"\x89PNG\r\n",
        Some(public_manifest(&png, "image/png")),
    );
    let info: Value = fx
        .get(&format!("/api/media/{png}/info"))
        .await
        .json()
        .await
        .unwrap();
    assert!(info.get("gif").is_none());
    assert_eq!(info["mimeType"], json!("image/png"));

    // GIF bytes under a manifest that names another type: the manifest decides, as it
    // does for `?still=` and `?format=` (both 400 for such an item), so no GIF metadata.
    for (n, mime) in [(0x42, "image/png"), (0x44, "application/octet-stream")] {
        let other = media_id(n);
        fx.put_media(&other, &bytes, Some(public_manifest(&other, mime)));
        let info: Value = fx
            .get(&format!("/api/media/{other}/info"))
            .await
            .json()
            .await
            .unwrap();
        assert!(info.get("gif").is_none(), "{mime}: {info}");
        assert!(info.get("variants").is_none(), "{mime}: {info}");
        assert_eq!(info["mimeType"], json!(mime));
        let still = fx.get(&format!("/api/media/{other}?still=1")).await;
        assert_eq!(still.status(), 400, "{mime}");
    }
    assert_eq!(parsed(&fx), 1, "no GIF parsed for them");

    // No manifest: what GET serves, /info describes (tests/private_media.rs has the
    // other directions).
    let bare = media_id(0x43);
    fx.put_media(&bare, &bytes, None);
    let info: Value = fx
        .get(&format!("/api/media/{bare}/info"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(info["mediaId"], json!(bare));
    assert_eq!(info["gif"]["frameCount"], json!(3));
    fx.shutdown().await;
}

fn parsed(fx: &Fixture) -> u64 {
    fx.server.app().state().gifs.counters().infos_parsed.get()
}

#[tokio::test]
async fn invalid_and_oversized_gifs_are_422() {
    let fx = Fixture::start(|c| c.gif.gif_max_frames = 4).await;
    let cases = [
        (
            "garbage",
            b"GIF89a\x10\x00\x10\x00 then nothing useful".to_vec(),
        ),
        ("truncated", {
            let mut b = support::media::pattern_gif(16, 16);
            b.truncate(b.len() / 2);
            b
        }),
        (
            "too wide",
            make_gif(5000, 1, &[TestFrame::full(5000, 1, 1, |_, _| 0)], None),
        ),
        (
            "too many frames",
            make_gif(
                2,
                2,
                &(0..5)
                    .map(|_| TestFrame::full(2, 2, 1, |_, _| 0))
                    .collect::<Vec<_>>(),
                None,
            ),
        ),
    ];
    for (n, (what, bytes)) in cases.into_iter().enumerate() {
        let id = media_id(0x50 + n as u8);
        fx.put_media(&id, &bytes, Some(public_manifest(&id, "image/gif")));
        let r = fx.get(&format!("/api/media/{id}/info")).await;
        assert_eq!(r.status(), 422, "{what}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("GIF"),
            "{what}: {body}"
        );
        // The bytes themselves are still served.
        assert_eq!(fx.get(&format!("/api/media/{id}")).await.status(), 200);
    }
    fx.shutdown().await;
}

fn base64_url(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
