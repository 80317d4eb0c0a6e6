//! Shared set-up for the `/api/media`, generated-audio and still tests: a media folder
//! in a temp dir, a real server on an ephemeral port, small GIFs made with the `gif`
//! crate, hand-signed tokens, and a raw-socket GET for paths an HTTP client would
//! normalise away (`..`, `%2e%2e`).
#![allow(dead_code)] // each test file uses a different part of it

use std::path::{Path, PathBuf};

use oip_media::Config;
use oip_media::server::RunningServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running server over a temp media folder (with `web/` and `generated/`).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub server: RunningServer,
    pub base: String,
    pub client: reqwest::Client,
}

impl Fixture {
    /// Starts a server; `configure` may change the config first.
    pub async fn start(configure: impl FnOnce(&mut Config)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("web/fitnessally")).unwrap();
        std::fs::create_dir_all(dir.path().join("generated")).unwrap();
        let mut config = Config::for_media_dir(dir.path());
        configure(&mut config);
        let server = oip_media::server::start(config).await.unwrap();
        let base = format!("http://{}", server.local_addr());
        Fixture {
            dir,
            server,
            base,
            client: reqwest::Client::new(),
        }
    }

    pub fn media_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.client.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    /// Writes `MEDIA_DIR/<id>/original` (and the manifest, if any) the way the
    /// indexer does: temp file, then rename.
    pub fn put_media(&self, id: &str, bytes: &[u8], manifest: Option<serde_json::Value>) {
        let dir = self.media_dir().join(id);
        std::fs::create_dir_all(&dir).unwrap();
        write_atomically(&dir.join("original"), bytes);
        if let Some(manifest) = manifest {
            write_atomically(
                &dir.join("manifest.json"),
                &serde_json::to_vec(&manifest).unwrap(),
            );
        }
    }

    /// Writes `MEDIA_DIR/web/fitnessally/<name>`.
    pub fn put_web(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.media_dir().join("web/fitnessally").join(name);
        write_atomically(&path, bytes);
        path
    }

    /// The derived folder of this server.
    pub fn derived_dir(&self) -> PathBuf {
        self.server.app().state().config.derived_dir.clone()
    }

    /// Files (not temp files) in the derived folder and their total size.
    pub fn derived_files(&self) -> (Vec<String>, u64) {
        let mut names = Vec::new();
        let mut total = 0;
        for entry in std::fs::read_dir(self.derived_dir()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            total += entry.metadata().unwrap().len();
            names.push(name);
        }
        names.sort();
        (names, total)
    }

    /// Status line and headers+body of a raw `GET <target>`, sent byte for byte.
    pub async fn raw_get(&self, target: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(self.server.local_addr())
            .await
            .unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

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
