//! Still posters: `?still=1[&w=]` on `/media/…` and `/api/media/<id>` returns the
//! first frame as a PNG of the right size, matching what the `image` crate's own GIF
//! decoder shows for that frame, rendered once into a bounded derived folder.

mod support;

use std::io::Cursor;

use image::AnimationDecoder;
use serde_json::json;
use support::TestServer as Fixture;
use support::media::{PALETTE, TestFrame, header, make_gif, media_id, pattern_gif};

/// The first frame as the `image` crate composes it (an independent decoder).
fn first_frame_by_image(gif_bytes: &[u8]) -> image::RgbaImage {
    let decoder = image::codecs::gif::GifDecoder::new(Cursor::new(gif_bytes)).unwrap();
    let frame = decoder.into_frames().next().unwrap().unwrap();
    frame.into_buffer()
}

fn decode_png(bytes: &[u8]) -> image::RgbaImage {
    image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .unwrap()
        .to_rgba8()
}

fn rendered(fx: &Fixture) -> u64 {
    fx.server
        .app()
        .state()
        .gifs
        .counters()
        .stills_rendered
        .get()
}

#[tokio::test]
async fn stills_decode_to_the_first_frame_at_each_allowed_width() {
    let fx = Fixture::start(|_| {}).await;
    let bytes = pattern_gif(40, 30);
    fx.put_web("Push-up-(wall)_Chest_360.gif", &bytes);
    let path = "/media/fitnessally/Push-up-(wall)_Chest_360.gif";
    let gif_etag = header(&fx.get(path).await, "etag").unwrap().to_owned();
    let opaque = gif_etag
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_owned();

    // Own size: pixel for pixel the frame the image crate decodes.
    let r = fx.get(&format!("{path}?still=1")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some("image/png"));
    assert_eq!(
        header(&r, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(
        header(&r, "etag"),
        Some(format!("W/\"{opaque}-still\"").as_str())
    );
    assert_eq!(header(&r, "accept-ranges"), Some("bytes"));
    let png = decode_png(&r.bytes().await.unwrap());
    let expected = first_frame_by_image(&bytes);
    assert_eq!(png.dimensions(), (40, 30));
    assert_eq!(png, expected, "the still is the GIF's first frame");
    assert!(
        png.pixels().any(|p| p.0 != [255, 255, 255, 255]),
        "the first frame, not the second (solid white)"
    );

    // Each allowed width, height in proportion; percent-encoded names work too.
    for (w, h) in [(90, 68), (180, 135), (360, 270)] {
        let r = fx
            .get(&format!(
                "/media/fitnessally/Push-up-%28wall%29_Chest_360.gif?still=1&w={w}"
            ))
            .await;
        assert_eq!(r.status(), 200, "w={w}");
        assert_eq!(
            header(&r, "etag"),
            Some(format!("W/\"{opaque}-still-w{w}\"").as_str())
        );
        let png = decode_png(&r.bytes().await.unwrap());
        assert_eq!(png.dimensions(), (w, h), "w={w}");
    }
    fx.shutdown().await;
}

#[tokio::test]
async fn composited_frames_and_resized_colours_match() {
    let fx = Fixture::start(|_| {}).await;
    // First frame covers only part of the screen, with transparent pixels in it.
    let partial = TestFrame {
        left: 5,
        top: 3,
        width: 10,
        height: 6,
        indices: (0..60)
            .map(|i| if i % 7 == 0 { 3 } else { (i % 3) as u8 })
            .collect(),
        delay: 10,
        transparent: Some(3),
    };
    let bytes = make_gif(
        20,
        12,
        &[partial, TestFrame::full(20, 12, 10, |_, _| 1)],
        None,
    );
    fx.put_web("partial.gif", &bytes);
    let png = decode_png(
        &fx.get("/media/fitnessally/partial.gif?still=1")
            .await
            .bytes()
            .await
            .unwrap(),
    );
    assert_eq!(png, first_frame_by_image(&bytes));
    assert_eq!(
        png.get_pixel(0, 0).0,
        [0, 0, 0, 0],
        "uncovered screen is transparent"
    );

    // A solid frame keeps its colour at every size.
    let blue = make_gif(50, 50, &[TestFrame::full(50, 50, 10, |_, _| 2)], None);
    fx.put_web("blue.gif", &blue);
    let expected = [PALETTE[6], PALETTE[7], PALETTE[8], 255];
    for w in [90, 180, 360] {
        let r = fx
            .get(&format!("/media/fitnessally/blue.gif?still=1&w={w}"))
            .await;
        let png = decode_png(&r.bytes().await.unwrap());
        assert_eq!(png.dimensions(), (w, w));
        assert!(png.pixels().all(|p| p.0 == expected), "w={w}");
    }
    fx.shutdown().await;
}

#[tokio::test]
async fn bad_requests_for_stills() {
    let fx = Fixture::start(|_| {}).await;
    fx.put_web("a.gif", &pattern_gif(8, 8));
    fx.put_web("a.png", b"\x89PNG");
    fx.put_web("broken.gif", b"GIF89a\x08\x00\x08\x00 broken");
    for (path, status) in [
        ("/media/fitnessally/a.gif?still=1&w=91", 400),
        ("/media/fitnessally/a.gif?still=1&w=abc", 400),
        ("/media/fitnessally/a.gif?still=1&w=", 400),
        ("/media/fitnessally/a.png?still=1", 400),
        ("/media/fitnessally/broken.gif?still=1", 422),
        ("/media/fitnessally/missing.gif?still=1", 404),
        // Without still=1 the query string is ignored, as before.
        ("/media/fitnessally/a.gif?w=91", 200),
        ("/media/fitnessally/a.gif?still=0", 200),
    ] {
        let r = fx.get(path).await;
        assert_eq!(r.status(), status, "{path}");
        if status == 200 {
            assert_eq!(header(&r, "content-type"), Some("image/gif"), "{path}");
        }
    }
    let r = fx.get("/media/fitnessally/a.gif?still=1&w=91").await;
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, json!({"error": "w must be one of: 90, 180, 360"}));
    fx.shutdown().await;
}

#[tokio::test]
async fn a_still_is_rendered_once_then_served_from_the_derived_folder() {
    // Window 0: the replaced GIF at the end must be seen at once.
    let fx = Fixture::start(|c| c.store.revalidate_window = std::time::Duration::ZERO).await;
    fx.put_web("once.gif", &pattern_gif(32, 32));
    let path = "/media/fitnessally/once.gif?still=1&w=90";

    // Concurrent first requests share one render.
    let requests = (0..8).map(|_| fx.get(path));
    let responses = futures_util::future::join_all(requests).await;
    let mut etags = Vec::new();
    let mut bodies = Vec::new();
    for r in responses {
        assert_eq!(r.status(), 200);
        etags.push(header(&r, "etag").unwrap().to_owned());
        bodies.push(r.bytes().await.unwrap());
    }
    assert!(etags.windows(2).all(|w| w[0] == w[1]));
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(rendered(&fx), 1, "one render for eight concurrent requests");

    let r = fx.get(path).await;
    assert_eq!(header(&r, "etag"), Some(etags[0].as_str()));
    assert_eq!(r.bytes().await.unwrap(), bodies[0]);
    assert_eq!(rendered(&fx), 1, "served from the derived folder");
    let (files, _) = fx.derived_files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with("-w90.png"), "{files:?}");

    // Revalidation and ranges work on the still like on any file.
    let r = fx.get_with(path, &[("if-none-match", &etags[0])]).await;
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, "etag"), Some(etags[0].as_str()));
    let r = fx.get_with(path, &[("range", "bytes=0-7")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().await.unwrap()[..], b"\x89PNG\r\n\x1a\n");
    let r = fx.client.head(fx.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-length"),
        Some(bodies[0].len().to_string().as_str())
    );

    // A replaced GIF gets a new still and a new ETag.
    let solid = make_gif(32, 32, &[TestFrame::full(32, 32, 10, |_, _| 0)], None);
    let replaced = fx.put_web("once.gif", &solid);
    // A later mtime set, not waited for: the replacement differs whatever the clock does.
    std::fs::File::options()
        .write(true)
        .open(&replaced)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(2))
        .unwrap();
    let r = fx.get(path).await;
    assert_eq!(r.status(), 200);
    assert_ne!(header(&r, "etag"), Some(etags[0].as_str()));
    let png = decode_png(&r.bytes().await.unwrap());
    assert!(
        png.pixels().all(|p| p.0 == [255, 0, 0, 255]),
        "the new GIF's frame"
    );
    assert_eq!(rendered(&fx), 2);
    fx.shutdown().await;
}

#[tokio::test]
async fn the_derived_folder_stays_within_its_byte_bound() {
    // Measure one still, then allow room for about three.
    let probe = Fixture::start(|_| {}).await;
    probe.put_web("p.gif", &pattern_gif(60, 60));
    let one = probe
        .get("/media/fitnessally/p.gif?still=1&w=180")
        .await
        .bytes()
        .await
        .unwrap()
        .len() as u64;
    probe.shutdown().await;
    let bound = one * 3 + one / 2;

    let fx = Fixture::start(|c| c.derived.derived_max_bytes = bound).await;
    for i in 0..6 {
        fx.put_web(&format!("g{i}.gif"), &pattern_gif(60, 60));
    }
    for round in 0..2 {
        for i in 0..6 {
            for w in [90, 180] {
                let r = fx
                    .get(&format!("/media/fitnessally/g{i}.gif?still=1&w={w}"))
                    .await;
                assert_eq!(r.status(), 200, "round {round} g{i} w{w}");
                let png = decode_png(&r.bytes().await.unwrap());
                assert_eq!(png.width(), w);
                let (files, total) = fx.derived_files();
                assert!(total <= bound, "{total} > {bound}: {files:?}");
            }
        }
    }
    fx.shutdown().await;

    // A bound smaller than one still: every still is still answered (from memory).
    let tiny = Fixture::start(|c| c.derived.derived_max_bytes = 10).await;
    tiny.put_web("t.gif", &pattern_gif(20, 20));
    let r = tiny.get("/media/fitnessally/t.gif?still=1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(decode_png(&r.bytes().await.unwrap()).dimensions(), (20, 20));
    assert_eq!(tiny.derived_files().1, 0);
    tiny.shutdown().await;
}

#[tokio::test]
async fn stills_of_content_addressed_gifs_follow_their_access_rules() {
    let secret = "still-secret";
    let fx = Fixture::start(|c| {
        c.auth.jwt_secret = Some(oip_media::config::Secret::new(secret));
    })
    .await;
    let bytes = pattern_gif(24, 16);
    let public = media_id(0x60);
    fx.put_media(
        &public,
        &bytes,
        Some(json!({"mimeType": "image/gif", "accessLevel": "public"})),
    );
    let r = fx.get(&format!("/api/media/{public}?still=1&w=90")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "etag"),
        Some(format!("\"{public}-still-w90\"").as_str()),
        "strong, like the source's"
    );
    assert_eq!(
        header(&r, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(decode_png(&r.bytes().await.unwrap()).dimensions(), (90, 60));
    let r = fx.get(&format!("/api/media/{public}?still=1")).await;
    assert_eq!(
        decode_png(&r.bytes().await.unwrap()),
        first_frame_by_image(&bytes)
    );
    assert_eq!(
        fx.get(&format!("/api/media/{public}?still=1&w=91"))
            .await
            .status(),
        400
    );

    let private = media_id(0x61);
    fx.put_media(
        &private,
        &bytes,
        Some(json!({"mimeType": "image/gif", "accessLevel": "private", "userPublicKey": "me"})),
    );
    let path = format!("/api/media/{private}?still=1");
    assert_eq!(fx.get(&path).await.status(), 401);
    let t = support::media::token(secret, json!({"publicKey": "me"}));
    let r = fx
        .get_with(&path, &[("authorization", &format!("Bearer {t}"))])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "cache-control"), Some("private, no-store"));
    assert_eq!(header(&r, "vary"), Some("Authorization"));

    let video = media_id(0x62);
    fx.put_media(
        &video,
        b"not a gif",
        Some(json!({"mimeType": "video/mp4", "accessLevel": "public"})),
    );
    assert_eq!(
        fx.get(&format!("/api/media/{video}?still=1"))
            .await
            .status(),
        400
    );
    let unknown = media_id(0x63);
    fx.put_media(&unknown, b"not a gif", None);
    assert_eq!(
        fx.get(&format!("/api/media/{unknown}?still=1"))
            .await
            .status(),
        422
    );
    fx.shutdown().await;
}

#[tokio::test]
async fn unusable_still_settings_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("web")).unwrap();
    let mut config = oip_media::Config::for_media_dir(dir.path());
    config.gif.still_widths = vec![90, 0];
    let error = oip_media::server::start(config).await.err().unwrap();
    assert!(error.to_string().contains("--still-widths"), "{error}");

    let mut config = oip_media::Config::for_media_dir(dir.path());
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    config.derived.derived_dir = file.join("sub");
    let error = oip_media::server::start(config).await.err().unwrap();
    assert!(error.to_string().contains("--derived-dir"), "{error}");
}
