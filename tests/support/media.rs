//! Media for the `/api/media`, generated-audio and still tests: small GIFs made with the
//! `gif` crate, hand-signed tokens, ids, and writes the way the indexer makes them.

use std::path::Path;

pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let temp = path.with_extension(format!("tmp{}", fastrand::u32(..)));
    std::fs::write(&temp, bytes).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// A fixed, valid media id (the service does not re-hash the bytes).
pub fn media_id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

pub fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or("<binary>"))
}

/// One frame of a test GIF: palette indices for its rectangle, its place and delay.
pub struct TestFrame {
    pub left: u16,
    pub top: u16,
    pub width: u16,
    pub height: u16,
    pub indices: Vec<u8>,
    pub delay: u16,
    pub transparent: Option<u8>,
}

impl TestFrame {
    /// A full-screen frame made by `pixel(x, y)`.
    pub fn full(width: u16, height: u16, delay: u16, pixel: impl Fn(u16, u16) -> u8) -> Self {
        let mut indices = Vec::with_capacity(usize::from(width) * usize::from(height));
        for y in 0..height {
            for x in 0..width {
                indices.push(pixel(x, y));
            }
        }
        TestFrame {
            left: 0,
            top: 0,
            width,
            height,
            indices,
            delay,
            transparent: None,
        }
    }
}

/// Four colours: red, green, blue, white.
pub const PALETTE: [u8; 12] = [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255];

/// Encodes a GIF with a `width`×`height` screen and the given frames.
pub fn make_gif(
    width: u16,
    height: u16,
    frames: &[TestFrame],
    repeat: Option<gif::Repeat>,
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = gif::Encoder::new(&mut out, width, height, &PALETTE).unwrap();
        if let Some(repeat) = repeat {
            encoder.set_repeat(repeat).unwrap();
        }
        for f in frames {
            let frame = gif::Frame {
                left: f.left,
                top: f.top,
                width: f.width,
                height: f.height,
                delay: f.delay,
                transparent: f.transparent,
                buffer: f.indices.clone().into(),
                ..gif::Frame::default()
            };
            encoder.write_frame(&frame).unwrap();
        }
    }
    out
}

/// A small animated GIF: a pattern, then a solid frame.
pub fn pattern_gif(width: u16, height: u16) -> Vec<u8> {
    make_gif(
        width,
        height,
        &[
            TestFrame::full(width, height, 10, |x, y| ((x / 3 + y / 2) % 4) as u8),
            TestFrame::full(width, height, 20, |_, _| 3),
        ],
        Some(gif::Repeat::Infinite),
    )
}

/// An HS256 token signed with `secret`.
pub fn token(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// An expiry an hour from now.
pub fn in_an_hour() -> u64 {
    jsonwebtoken::get_current_timestamp() + 3600
}
