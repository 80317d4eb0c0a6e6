//! The first frame of a GIF as a PNG, WebP or JPEG: a still poster for lists of
//! exercises and for users who prefer reduced motion.
//!
//! The frame is drawn onto the GIF's logical screen (transparent where the frame does
//! not cover it, or where its pixels are transparent), which is what a browser shows
//! before the second frame. Limits are checked before each buffer is allocated.
//!
//! PNG and WebP keep transparency; both are lossless (the `image` crate's WebP encoder
//! is lossless only, and a poster is small enough that exact pixels are affordable).
//! JPEG has no alpha channel, so the frame is flattened onto white first — what a
//! white page behind a transparent GIF shows.

use std::io::BufReader;
use std::path::Path;

use image::imageops::FilterType;
use image::{ExtendedColorType, ImageEncoder, RgbImage, RgbaImage};

use super::{GifError, GifLimits, open_checked};
use crate::store::FileIdentity;

/// Quality of JPEG stills: 85 is where JPEG artefacts stop being visible on
/// illustrations at poster sizes, at about a quarter of the PNG's bytes.
const JPEG_QUALITY: u8 = 85;

/// The encodings a still can be asked for with `&format=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StillFormat {
    /// PNG (the default): lossless, with transparency.
    Png,
    /// Lossless WebP, with transparency: smaller than PNG.
    Webp,
    /// JPEG at quality 85, flattened onto white: the smallest.
    Jpeg,
}

impl StillFormat {
    /// Every format, in the order error messages list them.
    pub const ALL: [StillFormat; 3] = [StillFormat::Png, StillFormat::Webp, StillFormat::Jpeg];

    /// The format named `name` (as in `&format=`; `jpg` is accepted for `jpeg`).
    pub fn parse(name: &str) -> Option<StillFormat> {
        match name {
            "png" => Some(StillFormat::Png),
            "webp" => Some(StillFormat::Webp),
            "jpeg" | "jpg" => Some(StillFormat::Jpeg),
            _ => None,
        }
    }

    /// Its name in URLs.
    pub fn name(self) -> &'static str {
        match self {
            StillFormat::Png => "png",
            StillFormat::Webp => "webp",
            StillFormat::Jpeg => "jpeg",
        }
    }

    /// The extension of its files in the derived folder.
    pub fn extension(self) -> &'static str {
        match self {
            StillFormat::Png => "png",
            StillFormat::Webp => "webp",
            StillFormat::Jpeg => "jpg",
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            StillFormat::Png => "image/png",
            StillFormat::Webp => "image/webp",
            StillFormat::Jpeg => "image/jpeg",
        }
    }
}

/// Renders the first frame of the GIF at `path` (which must still be the file
/// `expected`) as a `format` image, `width` pixels wide (height kept in proportion) or
/// at the GIF's own size for `None`. Blocking: run it on the blocking pool.
pub fn render(
    path: &Path,
    expected: FileIdentity,
    width: Option<u32>,
    format: StillFormat,
    limits: &GifLimits,
) -> Result<Vec<u8>, GifError> {
    let canvas = first_frame(path, expected, limits)?;
    let canvas = match width {
        Some(w) if w != canvas.width() => {
            let h = scaled_height(canvas.width(), canvas.height(), w);
            limits.check_area("still", w, h)?;
            // Triangle (bilinear with a support scaled to the reduction) is smooth at
            // the 2–8× reductions posters use, at a fraction of Lanczos's cost.
            image::imageops::resize(&canvas, w, h, FilterType::Triangle)
        }
        _ => canvas,
    };
    encode(&canvas, format)
}

/// Encodes `canvas` as `format`.
fn encode(canvas: &RgbaImage, format: StillFormat) -> Result<Vec<u8>, GifError> {
    let (w, h) = canvas.dimensions();
    let mut out = Vec::new();
    let encoded =
        match format {
            StillFormat::Png => image::codecs::png::PngEncoder::new(&mut out).write_image(
                canvas.as_raw(),
                w,
                h,
                ExtendedColorType::Rgba8,
            ),
            StillFormat::Webp => image::codecs::webp::WebPEncoder::new_lossless(&mut out)
                .write_image(canvas.as_raw(), w, h, ExtendedColorType::Rgba8),
            StillFormat::Jpeg => {
                let flat = on_white(canvas);
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
                    .write_image(flat.as_raw(), w, h, ExtendedColorType::Rgb8)
            }
        };
    encoded.map_err(|e| GifError::Io(format!("cannot encode {}: {e}", format.name())))?;
    Ok(out)
}

/// `canvas` composited over white (alpha blended, straight alpha).
pub fn on_white(canvas: &RgbaImage) -> RgbImage {
    RgbImage::from_fn(canvas.width(), canvas.height(), |x, y| {
        let [r, g, b, a] = canvas.get_pixel(x, y).0;
        let a = u16::from(a);
        let blend = |c: u8| ((u16::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([blend(r), blend(g), blend(b)])
    })
}

/// Height of a `width`-wide image with the proportions of `src_w`×`src_h`, rounded,
/// at least 1.
pub fn scaled_height(src_w: u32, src_h: u32, width: u32) -> u32 {
    let src_w = u64::from(src_w.max(1));
    let h = (u64::from(src_h) * u64::from(width) + src_w / 2) / src_w;
    u32::try_from(h.max(1)).unwrap_or(u32::MAX)
}

/// The first frame composited onto a transparent screen, as RGBA.
fn first_frame(
    path: &Path,
    expected: FileIdentity,
    limits: &GifLimits,
) -> Result<RgbaImage, GifError> {
    let file = open_checked(path, expected)?;
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::RGBA);
    let mut decoder = options
        .read_info(BufReader::new(file))
        .map_err(GifError::from_decoding)?;
    let (screen_w, screen_h) = (u32::from(decoder.width()), u32::from(decoder.height()));
    if screen_w == 0 || screen_h == 0 {
        return Err(GifError::Invalid(format!(
            "empty screen {screen_w}x{screen_h}"
        )));
    }
    limits.check_area("screen", screen_w, screen_h)?;

    let frame = decoder
        .next_frame_info()
        .map_err(GifError::from_decoding)?
        .ok_or_else(|| GifError::Invalid("no frames".to_owned()))?;
    let (left, top) = (u32::from(frame.left), u32::from(frame.top));
    let (frame_w, frame_h) = (u32::from(frame.width), u32::from(frame.height));
    limits.check_area("frame", frame_w, frame_h)?;
    let mut pixels = vec![0u8; decoder.buffer_size()];
    decoder
        .read_into_buffer(&mut pixels)
        .map_err(GifError::from_decoding)?;

    let mut canvas = RgbaImage::new(screen_w, screen_h);
    if frame_w == 0 || frame_h == 0 {
        return Ok(canvas);
    }
    let row_len = frame_w as usize * 4;
    for (y, row) in pixels.chunks_exact(row_len).enumerate() {
        let cy = top + y as u32;
        if cy >= screen_h {
            break;
        }
        for (x, px) in row.chunks_exact(4).enumerate() {
            let cx = left + x as u32;
            if cx >= screen_w {
                break;
            }
            // Transparent pixels leave the (transparent) screen showing.
            if px[3] != 0 {
                canvas.put_pixel(cx, cy, image::Rgba([px[0], px[1], px[2], px[3]]));
            }
        }
    }
    Ok(canvas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_encode() {
        assert_eq!(StillFormat::parse("jpg"), Some(StillFormat::Jpeg));
        assert_eq!(StillFormat::parse("webp"), Some(StillFormat::Webp));
        assert_eq!(StillFormat::parse("PNG"), None, "names are lowercase");
        assert_eq!(StillFormat::parse("gif"), None);
        // Half transparent, half red.
        let canvas = RgbaImage::from_fn(4, 2, |x, _| {
            if x < 2 {
                image::Rgba([0, 0, 0, 0])
            } else {
                image::Rgba([255, 0, 0, 255])
            }
        });
        let webp = encode(&canvas, StillFormat::Webp).unwrap();
        let back = image::load_from_memory_with_format(&webp, image::ImageFormat::WebP)
            .unwrap()
            .to_rgba8();
        assert_eq!(
            back, canvas,
            "lossless WebP keeps every pixel, alpha included"
        );
        let jpeg = encode(&canvas, StillFormat::Jpeg).unwrap();
        let back = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)
            .unwrap()
            .to_rgb8();
        let white = back.get_pixel(0, 0).0;
        assert!(
            white.iter().all(|c| *c > 240),
            "transparent became white: {white:?}"
        );
        let red = back.get_pixel(3, 1).0;
        assert!(red[0] > 200 && red[1] < 60, "red stayed red: {red:?}");
    }

    #[test]
    fn heights_keep_proportions() {
        assert_eq!(scaled_height(360, 360, 90), 90);
        assert_eq!(scaled_height(720, 405, 180), 101);
        assert_eq!(scaled_height(1000, 1, 90), 1);
        assert_eq!(scaled_height(100, 50, 360), 180);
    }

    #[test]
    fn renders_the_first_frame_at_the_asked_width() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.gif");
        let mut out = Vec::new();
        {
            let palette = [255, 0, 0, 0, 0, 255];
            let mut enc = gif::Encoder::new(&mut out, 8, 4, &palette).unwrap();
            for index in [0u8, 1] {
                let frame = gif::Frame {
                    width: 8,
                    height: 4,
                    buffer: vec![index; 32].into(),
                    ..gif::Frame::default()
                };
                enc.write_frame(&frame).unwrap();
            }
        }
        std::fs::write(&p, out).unwrap();
        let identity = FileIdentity::of(&std::fs::metadata(&p).unwrap());
        let limits = GifLimits {
            max_frames: 10,
            max_dimension: 64,
            max_pixels: 4096,
        };
        for (width, expected) in [(None, (8, 4)), (Some(4), (4, 2)), (Some(16), (16, 8))] {
            let png = render(&p, identity, width, StillFormat::Png, &limits).unwrap();
            let img = image::load_from_memory(&png).unwrap().to_rgba8();
            assert_eq!(img.dimensions(), expected);
            assert!(img.pixels().all(|px| px.0 == [255, 0, 0, 255]), "red frame");
        }
        let tight = GifLimits {
            max_dimension: 10,
            ..limits
        };
        assert!(matches!(
            render(&p, identity, Some(16), StillFormat::Png, &tight),
            Err(GifError::TooLarge(_))
        ));
    }
}
