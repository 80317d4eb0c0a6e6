//! `GET|HEAD /media/<project>/<file>` against the real server on loopback: headers,
//! conditional requests, ranges, paths, methods (SPEC §1A).

mod support;

use std::time::{Duration, UNIX_EPOCH};

use support::*;

const NAME: &str = "02891301-Dumbbell-Bench-Press_Chest_360.gif";
const PAREN: &str = "03141301-Push-up-(wall)-(female)_Chest_360.gif";

async fn server_with_gifs() -> (TestServer, Vec<u8>) {
    let media = media_root();
    let bytes = pattern(300_000, 7);
    write_file(&media.path().join("web/fitnessally").join(NAME), &bytes);
    write_file(
        &media.path().join("web/fitnessally").join(PAREN),
        &bytes[..1000],
    );
    let server = start_with(media, |_| {}).await;
    (server, bytes)
}

fn expected_etag(path: &std::path::Path) -> String {
    let meta = std::fs::metadata(path).unwrap();
    let ms = meta
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!("W/\"{:x}-{:x}\"", meta.len(), ms)
}

#[tokio::test]
async fn full_get_has_indexer_headers_and_exact_bytes() {
    let (server, bytes) = server_with_gifs().await;
    let r = get(
        server.addr,
        &format!("/media/fitnessally/{NAME}?v=123&still=0"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, bytes);
    assert_eq!(r.header("content-type"), Some("image/gif"));
    assert_eq!(r.header("content-length"), Some("300000"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        r.header("etag"),
        Some(expected_etag(&server.web(&format!("fitnessally/{NAME}"))).as_str())
    );
    let lm = httpdate::parse_http_date(r.header("last-modified").unwrap()).unwrap();
    let mtime = std::fs::metadata(server.web(&format!("fitnessally/{NAME}")))
        .unwrap()
        .modified()
        .unwrap();
    assert!(mtime.duration_since(lm).unwrap() < Duration::from_secs(1));
    server.stop().await;
}

#[tokio::test]
async fn names_with_parentheses_raw_or_encoded() {
    let (server, bytes) = server_with_gifs().await;
    let raw = get(server.addr, &format!("/media/fitnessally/{PAREN}")).await;
    let encoded = get(
        server.addr,
        "/media/fitnessally/03141301-Push-up-%28wall%29-%28female%29_Chest_360.gif",
    )
    .await;
    assert_eq!((raw.status, encoded.status), (200, 200));
    assert_eq!(raw.body, &bytes[..1000]);
    assert_eq!(encoded.body, raw.body);
    server.stop().await;
}

#[tokio::test]
async fn content_type_by_extension_case_insensitive() {
    let media = media_root();
    for name in ["A.GIF", "b.Gif", "c.png", "d.mp3", "e.unknownext", "noext"] {
        write_file(&media.path().join("web/p").join(name), b"x");
    }
    let server = start_with(media, |_| {}).await;
    for (name, ty) in [
        ("A.GIF", "image/gif"),
        ("b.Gif", "image/gif"),
        ("c.png", "image/png"),
        ("d.mp3", "audio/mpeg"),
        ("e.unknownext", "application/octet-stream"),
        ("noext", "application/octet-stream"),
    ] {
        let r = get(server.addr, &format!("/media/p/{name}")).await;
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.header("content-type"), Some(ty), "{name}");
    }
    server.stop().await;
}

#[tokio::test]
async fn head_sends_get_headers_and_no_body() {
    let (server, _) = server_with_gifs().await;
    let path = format!("/media/fitnessally/{NAME}");
    let g = get(server.addr, &path).await;
    let h = request(server.addr, "HEAD", &path, &[]).await;
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    for name in [
        "content-type",
        "content-length",
        "etag",
        "last-modified",
        "cache-control",
        "accept-ranges",
    ] {
        assert_eq!(h.header(name), g.header(name), "{name}");
    }
    let hr = request(server.addr, "HEAD", &path, &[("Range", "bytes=0-9")]).await;
    assert_eq!(hr.status, 206);
    assert_eq!(hr.header("content-length"), Some("10"));
    assert_eq!(hr.header("content-range"), Some("bytes 0-9/300000"));
    server.stop().await;
}

#[tokio::test]
async fn conditional_requests() {
    let (server, _) = server_with_gifs().await;
    let path = format!("/media/fitnessally/{NAME}");
    let first = get(server.addr, &path).await;
    let etag = first.header("etag").unwrap().to_owned();
    let lm = first.header("last-modified").unwrap().to_owned();

    let r = request(server.addr, "GET", &path, &[("If-None-Match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("last-modified"), Some(lm.as_str()));
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );

    let strong = etag.trim_start_matches("W/");
    let list = format!("\"nope\", {strong}");
    assert_eq!(
        request(server.addr, "GET", &path, &[("If-None-Match", &list)])
            .await
            .status,
        304,
        "weak comparison, lists"
    );
    assert_eq!(
        request(server.addr, "GET", &path, &[("If-None-Match", "*")])
            .await
            .status,
        304
    );
    assert_eq!(
        request(server.addr, "GET", &path, &[("If-None-Match", "\"other\"")])
            .await
            .status,
        200
    );
    assert_eq!(
        request(server.addr, "GET", &path, &[("If-Modified-Since", &lm)])
            .await
            .status,
        304
    );
    let past = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(1_000));
    assert_eq!(
        request(server.addr, "GET", &path, &[("If-Modified-Since", &past)])
            .await
            .status,
        200
    );
    // If-Modified-Since is ignored when If-None-Match is present.
    assert_eq!(
        request(
            server.addr,
            "GET",
            &path,
            &[("If-None-Match", "\"other\""), ("If-Modified-Since", &lm)]
        )
        .await
        .status,
        200
    );
    // If-Match is strong: the weak ETag never matches.
    let r = request(server.addr, "GET", &path, &[("If-Match", &etag)]).await;
    assert_eq!(r.status, 412);
    assert_eq!(r.json()["error"], "Precondition failed");
    assert_eq!(
        request(server.addr, "GET", &path, &[("If-Match", "*")])
            .await
            .status,
        200
    );
    assert_eq!(
        request(server.addr, "GET", &path, &[("If-Unmodified-Since", &past)])
            .await
            .status,
        412
    );
    assert_eq!(
        request(server.addr, "GET", &path, &[("If-Unmodified-Since", &lm)])
            .await
            .status,
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn single_ranges() {
    let (server, bytes) = server_with_gifs().await;
    let path = format!("/media/fitnessally/{NAME}");
    for (range, start, end) in [
        ("bytes=0-99", 0usize, 99usize),
        ("bytes=299500-", 299_500, 299_999),
        ("bytes=-500", 299_500, 299_999),
        ("bytes=299990-400000", 299_990, 299_999),
    ] {
        let r = request(server.addr, "GET", &path, &[("Range", range)]).await;
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {start}-{end}/300000").as_str())
        );
        assert_eq!(r.body, &bytes[start..=end], "{range}");
        assert_eq!(r.header("content-type"), Some("image/gif"));
    }
    server.stop().await;
}

#[tokio::test]
async fn unsatisfiable_malformed_and_if_range() {
    let (server, bytes) = server_with_gifs().await;
    let path = format!("/media/fitnessally/{NAME}");
    let r = request(server.addr, "GET", &path, &[("Range", "bytes=300000-")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */300000"));
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        r.header("cache-control"),
        None,
        "an error is never cached for a year"
    );

    for malformed in ["bytes=abc", "bytes=5-1", "pages=1-2", "bytes=1-2-3"] {
        let r = request(server.addr, "GET", &path, &[("Range", malformed)]).await;
        assert_eq!(r.status, 200, "{malformed}");
        assert_eq!(r.body.len(), bytes.len());
    }
    let etag = get(server.addr, &path)
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    let lm = get(server.addr, &path)
        .await
        .header("last-modified")
        .unwrap()
        .to_owned();
    let stale = request(
        server.addr,
        "GET",
        &path,
        &[("Range", "bytes=0-9"), ("If-Range", "\"stale\"")],
    )
    .await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, bytes);
    let weak = request(
        server.addr,
        "GET",
        &path,
        &[("Range", "bytes=0-9"), ("If-Range", &etag)],
    )
    .await;
    assert_eq!(
        weak.status, 200,
        "a weak validator never satisfies If-Range"
    );
    let date = request(
        server.addr,
        "GET",
        &path,
        &[("Range", "bytes=0-9"), ("If-Range", &lm)],
    )
    .await;
    assert_eq!(date.status, 206);
    assert_eq!(date.body, &bytes[..10]);
    server.stop().await;
}

#[tokio::test]
async fn multiple_ranges_are_multipart_and_merged() {
    let (server, bytes) = server_with_gifs().await;
    let path = format!("/media/fitnessally/{NAME}");
    let r = request(
        server.addr,
        "GET",
        &path,
        &[("Range", "bytes=100-199, 0-9, 5-19, -10")],
    )
    .await;
    assert_eq!(r.status, 206);
    let ct = r.header("content-type").unwrap();
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .expect("multipart type");
    let parts = parse_multipart(&r.body, boundary);
    let expected = [(0usize, 19usize), (100, 199), (299_990, 299_999)];
    assert_eq!(
        parts.len(),
        expected.len(),
        "overlapping 0-9 and 5-19 merged"
    );
    for ((range, data), (start, end)) in parts.iter().zip(expected) {
        assert_eq!(range, &format!("bytes {start}-{end}/300000"));
        assert_eq!(data, &bytes[start..=end]);
    }

    let seventeen: Vec<String> = (0..17)
        .map(|i| format!("{}-{}", i * 100, i * 100 + 9))
        .collect();
    let many = format!("bytes={}", seventeen.join(","));
    let r = request(server.addr, "GET", &path, &[("Range", &many)]).await;
    assert_eq!(r.status, 200, "more than 16 ranges: whole file");
    assert_eq!(r.body, bytes);
    let r = request(server.addr, "GET", &path, &[("Range", "bytes=0-, 0-, 0-")]).await;
    assert_eq!(r.status, 200, "ranges adding up past the file: whole file");
    assert_eq!(r.body.len(), bytes.len());
    server.stop().await;
}

#[tokio::test]
async fn hostile_paths_get_json_404_and_nothing_outside_the_root() {
    let media = media_root();
    write_file(&media.path().join("web/fitnessally/ok.gif"), b"gif");
    write_file(&media.path().join("web/fitnessally/.hidden.gif"), b"hidden");
    write_file(&media.path().join("web/.git/config"), b"git");
    write_file(&media.path().join("secret.txt"), b"outside web");
    std::fs::create_dir_all(media.path().join("web/fitnessally/dir")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    write_file(&outside.path().join("passwd"), b"root:x:0:0");
    std::os::unix::fs::symlink(
        outside.path().join("passwd"),
        media.path().join("web/fitnessally/link.gif"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), media.path().join("web/escape")).unwrap();
    let server = start_with(media, |_| {}).await;

    assert_eq!(
        get(server.addr, "/media/fitnessally/ok.gif").await.status,
        200
    );
    let hostile = [
        "/media/../secret.txt",
        "/media/fitnessally/../../secret.txt",
        "/media/fitnessally/%2e%2e/%2e%2e/secret.txt",
        "/media/fitnessally/..%2F..%2Fsecret.txt",
        "/media/fitnessally/..%5C..%5Csecret.txt",
        "/media/fitnessally/..\\..\\secret.txt",
        "/media/fitnessally/ok.gif%00.png",
        "/media/fitnessally//ok.gif",
        "/media//fitnessally/ok.gif",
        "/media/fitnessally/.hidden.gif",
        "/media/.git/config",
        "/media/%2egit/config",
        "/media/fitnessally/dir",
        "/media/fitnessally/dir/",
        "/media/fitnessally/",
        "/media/fitnessally",
        "/media/",
        "/media/fitnessally/link.gif",
        "/media/escape/passwd",
        "/media/fitnessally/missing.gif",
        "/media/fitnessally/%ff.gif",
        "/nope",
        "/",
    ];
    for path in hostile {
        let r = get(server.addr, path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(
            r.json(),
            serde_json::json!({"error": "Not found"}),
            "{path}"
        );
        assert!(
            !String::from_utf8_lossy(&r.body).contains("root:x"),
            "{path}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn other_methods_get_405_with_allow() {
    let (server, _) = server_with_gifs().await;
    let path = format!("/media/fitnessally/{NAME}");
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = request(server.addr, method, &path, &[("Content-Length", "0")]).await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));
    }
    server.stop().await;
}

#[tokio::test]
async fn empty_files_are_200_empty() {
    let media = media_root();
    write_file(&media.path().join("web/p/empty.gif"), b"");
    let server = start_with(media, |_| {}).await;
    let r = get(server.addr, "/media/p/empty.gif").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("0"));
    assert!(r.body.is_empty());
    let r = request(
        server.addr,
        "GET",
        "/media/p/empty.gif",
        &[("Range", "bytes=0-5")],
    )
    .await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */0"));
    server.stop().await;
}

#[tokio::test]
async fn files_over_the_size_limit_are_404() {
    let media = media_root();
    write_file(&media.path().join("web/p/big.gif"), &[0u8; 4096]);
    write_file(&media.path().join("web/p/small.gif"), &[0u8; 100]);
    let server = start_with(media, |c| c.store.max_file_size = 1024).await;
    assert_eq!(get(server.addr, "/media/p/big.gif").await.status, 404);
    assert_eq!(get(server.addr, "/media/p/small.gif").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn vanished_and_replaced_files() {
    let media = media_root();
    let path = media.path().join("web/p/a.gif");
    write_file(&path, b"version one");
    // Window 0: every request checks the file (the default window is covered in
    // tests/nonblocking_fs.rs).
    let server = start_with(media, |c| {
        c.store.revalidate_window = std::time::Duration::ZERO
    })
    .await;
    assert_eq!(
        get(server.addr, "/media/p/a.gif").await.body,
        b"version one"
    );
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        get(server.addr, "/media/p/a.gif").await.status,
        404,
        "vanished after being cached"
    );
    let tmp = server.web("p/a.tmp");
    write_file(&tmp, b"version two, longer");
    std::fs::rename(&tmp, &path).unwrap();
    let r = get(server.addr, "/media/p/a.gif").await;
    assert_eq!(r.body, b"version two, longer", "replaced file is re-mapped");
    server.stop().await;
}
