//! Generated audio: `/api/generate/media?id=`, `/api/generate/media/<path>` and
//! `/api/media?id=`, served from the generated folder with `/media`'s semantics, and
//! every way of walking out of that folder answered 404.

mod support;

use support::TestServer as Fixture;
use support::media::header;

const AUDIO: &[u8] = b"ID3\x04\x00fake mp3 bytes for the test, long enough to range over";

fn put_audio(fx: &Fixture) {
    let generated = fx.media_dir().join("generated");
    std::fs::create_dir_all(generated.join("jfk")).unwrap();
    std::fs::write(generated.join("abc123.mp3"), AUDIO).unwrap();
    std::fs::write(generated.join("jfk/speech.wav"), b"RIFFwav").unwrap();
    std::fs::write(generated.join(".hidden.mp3"), b"hidden").unwrap();
    // Things that must never be reachable from these routes.
    std::fs::write(fx.media_dir().join("secret.txt"), b"SECRET").unwrap();
    std::fs::write(fx.media_dir().join("web/fitnessally/x.gif"), b"GIF89a").unwrap();
}

#[tokio::test]
async fn every_form_serves_the_generated_folder() {
    let fx = Fixture::start(|_| {}).await;
    put_audio(&fx);
    for path in [
        "/api/generate/media?id=abc123.mp3",
        "/api/generate/media/abc123.mp3",
        "/api/media?id=abc123.mp3",
        "/api/generate/media?other=1&id=abc123.mp3",
    ] {
        let r = fx.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            header(&r, "cache-control"),
            Some("public, max-age=0"),
            "{path}"
        );
        assert_eq!(header(&r, "content-type"), Some("audio/mpeg"), "{path}");
        assert_eq!(header(&r, "accept-ranges"), Some("bytes"));
        assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"));
        let etag = header(&r, "etag").unwrap().to_owned();
        assert!(etag.starts_with("W/\""), "{etag}");
        assert_eq!(r.bytes().await.unwrap(), AUDIO);

        let r = fx.get_with(path, &[("if-none-match", &etag)]).await;
        assert_eq!(r.status(), 304, "{path}");
        assert_eq!(header(&r, "cache-control"), Some("public, max-age=0"));
        let r = fx.get_with(path, &[("range", "bytes=0-2")]).await;
        assert_eq!(r.status(), 206);
        assert_eq!(&r.bytes().await.unwrap()[..], b"ID3");
        let r = fx.get_with(path, &[("range", "bytes=9999-")]).await;
        assert_eq!(r.status(), 416);
    }
    for path in [
        "/api/generate/media/jfk/speech.wav",
        "/api/generate/media?id=jfk/speech.wav",
        "/api/generate/media?id=jfk%2Fspeech.wav",
        "/api/media?id=jfk%2Fspeech.wav",
    ] {
        let r = fx.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, "content-type"), Some("audio/wav"), "{path}");
    }
    let r = fx
        .client
        .head(fx.url("/api/generate/media/abc123.mp3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-length"),
        Some(AUDIO.len().to_string().as_str())
    );
    let r = fx
        .client
        .delete(fx.url("/api/generate/media/abc123.mp3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    fx.shutdown().await;
}

#[tokio::test]
async fn traversal_in_any_form_is_404() {
    let fx = Fixture::start(|_| {}).await;
    put_audio(&fx);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("loot.mp3"), b"LOOT").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("loot.mp3"),
        fx.media_dir().join("generated/link.mp3"),
    )
    .unwrap();
    let hostile = [
        "/api/generate/media?id=../secret.txt",
        "/api/generate/media?id=%2e%2e/secret.txt",
        "/api/generate/media?id=%2E%2E%2Fsecret.txt",
        "/api/generate/media?id=..%2fsecret.txt",
        "/api/generate/media?id=..%5csecret.txt",
        "/api/generate/media?id=jfk/../../secret.txt",
        "/api/generate/media?id=/etc/passwd",
        "/api/generate/media?id=%2Fetc%2Fpasswd",
        "/api/generate/media?id=../web/fitnessally/x.gif",
        "/api/generate/media?id=.hidden.mp3",
        "/api/generate/media?id=",
        "/api/generate/media?id=link.mp3",
        "/api/generate/media",
        "/api/generate/media/",
        "/api/generate/media/../secret.txt",
        "/api/generate/media/%2e%2e/secret.txt",
        "/api/generate/media/%2e%2e%2fsecret.txt",
        "/api/generate/media/jfk%2F..%2F..%2Fsecret.txt",
        "/api/generate/media/..%5Csecret.txt",
        "/api/generate/media//etc/passwd",
        "/api/generate/media/.hidden.mp3",
        "/api/generate/media/link.mp3",
        "/api/generate/media/jfk",
        "/api/generate/mediaabc123.mp3",
        "/api/media?id=../secret.txt",
        "/api/media?id=%2e%2e%2fsecret.txt",
        "/api/media?id=/etc/passwd",
        "/api/media",
    ];
    for target in hostile {
        // Raw bytes on the socket: an HTTP client would normalise `..` and `%2e%2e`.
        let (status, text) = fx.raw_get(target).await;
        assert_eq!(status, 404, "{target}");
        assert!(!text.contains("SECRET") && !text.contains("LOOT") && !text.contains("root:"));
    }
    fx.shutdown().await;
}

#[tokio::test]
async fn a_missing_folder_answers_404_until_it_appears() {
    let fx = Fixture::start(|c| {
        c.store.generated_media_dir = Some(c.store.media_dir.join("not-yet"));
    })
    .await;
    assert_eq!(fx.get("/api/generate/media/a.mp3").await.status(), 404);
    assert_eq!(fx.get("/api/media?id=a.mp3").await.status(), 404);
    std::fs::create_dir(fx.media_dir().join("not-yet")).unwrap();
    std::fs::write(fx.media_dir().join("not-yet/a.mp3"), b"late").unwrap();
    let r = fx.get("/api/generate/media/a.mp3").await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], b"late");
    fx.shutdown().await;
}
