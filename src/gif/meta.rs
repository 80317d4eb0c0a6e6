//! GIF metadata for `/info`: read with `read()` (never the mapping), frame data
//! skipped rather than decoded, and stopped as soon as a limit is passed.

use std::io::{BufReader, Read};
use std::path::Path;

use serde::Serialize;

use super::{GifError, GifLimits, open_checked};
use crate::store::FileIdentity;

/// What `/info` reports about a GIF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GifInfo {
    /// Logical screen width in pixels.
    pub width: u32,
    /// Logical screen height in pixels.
    pub height: u32,
    /// Number of frames.
    pub frame_count: u32,
    /// Sum of the frame delays as encoded (GIF delays are in 10 ms units; browsers
    /// stretch very short delays, which this does not model).
    pub duration_ms: u64,
    /// How many times the animation plays; 0 means forever. The convention of sharp
    /// and libvips, which the indexer's Node code already speaks: a NETSCAPE loop
    /// count of n (n > 0) repeats n times after the first play, so it plays n + 1 times;
    /// without the extension a GIF plays once.
    pub loop_count: u32,
    /// The duration as browsers (and ffmpeg's GIF reader) play it: a delay under
    /// 20 ms counts as 100 ms. Not in `/info` (which reports the delays as encoded);
    /// the transcoder times the end of its variants with it.
    #[serde(skip)]
    pub played_ms: u64,
    /// True when the GIF may show transparent pixels: a frame declares a transparent
    /// colour, or the first frame does not cover the screen. Not in `/info`; the
    /// transcoder picks a WebP encoding that keeps alpha for these.
    #[serde(skip)]
    pub transparent: bool,
    /// How long the last frame shows, as played (see [`played_delay_ms`]). Not in
    /// `/info`; the transcoder gives the last frame of a WebP its full delay with it.
    #[serde(skip)]
    pub last_delay_ms: u64,
}

/// The delay of one frame as browsers play it, in ms: `delay` (hundredths of a
/// second) under 2 plays as 10 (Chrome, Firefox and ffmpeg's GIF reader agree).
pub fn played_delay_ms(delay: u16) -> u64 {
    if delay < 2 {
        100
    } else {
        u64::from(delay) * 10
    }
}

/// True when the file at `path` starts with a GIF signature. Reads six bytes; anything
/// but a regular file is not a GIF (and is never waited on). Blocking: call it on the
/// filesystem pool.
pub(crate) fn looks_like_gif(path: &Path) -> std::io::Result<bool> {
    let mut magic = [0u8; 6];
    let mut file = match crate::store::open_regular(path) {
        Ok((file, _)) => file,
        Err(crate::store::OpenError::NotRegular) => return Ok(false),
        Err(crate::store::OpenError::Io(error)) => return Err(error),
    };
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"GIF87a" || &magic == b"GIF89a"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads the metadata of the GIF at `path`, which must still be the file `expected`.
/// Blocking: run it on the blocking pool.
pub fn read_info(
    path: &Path,
    expected: FileIdentity,
    limits: &GifLimits,
) -> Result<GifInfo, GifError> {
    let file = open_checked(path, expected)?;
    let mut options = gif::DecodeOptions::new();
    // Frame data is walked over, not decompressed: counting frames costs one pass over
    // the bytes and no pixel buffers.
    options.skip_frame_decoding(true);
    let mut decoder = options
        .read_info(BufReader::new(file))
        .map_err(GifError::from_decoding)?;
    let (width, height) = (u32::from(decoder.width()), u32::from(decoder.height()));
    if width == 0 || height == 0 {
        return Err(GifError::Invalid(format!("empty screen {width}x{height}")));
    }
    limits.check_area("screen", width, height)?;

    let mut frames: usize = 0;
    let mut duration_ms: u64 = 0;
    let mut played_ms: u64 = 0;
    let mut transparent = false;
    let mut last_delay_ms = 0;
    while let Some(frame) = decoder.next_frame_info().map_err(GifError::from_decoding)? {
        frames += 1;
        if frames > limits.max_frames {
            return Err(GifError::TooLarge(format!(
                "more than {} frames",
                limits.max_frames
            )));
        }
        limits.check_area("frame", u32::from(frame.width), u32::from(frame.height))?;
        duration_ms += u64::from(frame.delay) * 10;
        played_ms += played_delay_ms(frame.delay);
        last_delay_ms = played_delay_ms(frame.delay);
        let covers_screen = frame.left == 0
            && frame.top == 0
            && u32::from(frame.width) >= width
            && u32::from(frame.height) >= height;
        transparent |= frame.transparent.is_some() || (frames == 1 && !covers_screen);
    }
    if frames == 0 {
        return Err(GifError::Invalid("no frames".to_owned()));
    }
    let loop_count = match decoder.repeat() {
        gif::Repeat::Infinite => 0,
        gif::Repeat::Finite(n) => u32::from(n) + 1,
    };
    Ok(GifInfo {
        width,
        height,
        frame_count: u32::try_from(frames).unwrap_or(u32::MAX),
        duration_ms,
        loop_count,
        played_ms,
        transparent,
        last_delay_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> GifLimits {
        GifLimits {
            max_frames: 10,
            max_dimension: 64,
            max_pixels: 64 * 64,
        }
    }

    fn write_gif(path: &Path, w: u16, h: u16, delays: &[u16], repeat: Option<gif::Repeat>) {
        let mut out = Vec::new();
        {
            let mut enc = gif::Encoder::new(&mut out, w, h, &[0, 0, 0, 255, 255, 255]).unwrap();
            if let Some(repeat) = repeat {
                enc.set_repeat(repeat).unwrap();
            }
            for (i, delay) in delays.iter().enumerate() {
                let mut frame = gif::Frame {
                    width: w,
                    height: h,
                    buffer: vec![(i % 2) as u8; usize::from(w) * usize::from(h)].into(),
                    ..gif::Frame::default()
                };
                frame.delay = *delay;
                enc.write_frame(&frame).unwrap();
            }
        }
        std::fs::write(path, out).unwrap();
    }

    fn identity(path: &Path) -> FileIdentity {
        FileIdentity::of(&std::fs::metadata(path).unwrap())
    }

    #[test]
    fn reads_dimensions_frames_duration_and_loops() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.gif");
        write_gif(&p, 20, 10, &[5, 10, 15], Some(gif::Repeat::Infinite));
        let info = read_info(&p, identity(&p), &limits()).unwrap();
        assert_eq!(
            info,
            GifInfo {
                width: 20,
                height: 10,
                frame_count: 3,
                duration_ms: 300,
                loop_count: 0,
                played_ms: 300,
                transparent: false,
                last_delay_ms: 150,
            }
        );
        write_gif(&p, 4, 4, &[1, 0, 2], Some(gif::Repeat::Finite(2)));
        let info = read_info(&p, identity(&p), &limits()).unwrap();
        assert_eq!(info.loop_count, 3);
        assert_eq!(info.duration_ms, 30, "as encoded");
        assert_eq!(info.played_ms, 220, "as played: 1 and 0 count as 10");
        write_gif(&p, 4, 4, &[1], None);
        assert_eq!(
            read_info(&p, identity(&p), &limits()).unwrap().loop_count,
            1
        );
        assert!(looks_like_gif(&p).unwrap());
    }

    #[test]
    fn limits_and_garbage_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.gif");
        write_gif(&p, 65, 1, &[1], None);
        assert!(matches!(
            read_info(&p, identity(&p), &limits()),
            Err(GifError::TooLarge(_))
        ));
        write_gif(&p, 4, 4, &[1; 11], None);
        assert!(matches!(
            read_info(&p, identity(&p), &limits()),
            Err(GifError::TooLarge(_))
        ));
        // Truncated inside the screen descriptor.
        std::fs::write(&p, b"GIF89a\x04\x00\x04").unwrap();
        let garbage = read_info(&p, identity(&p), &limits());
        assert!(matches!(garbage, Err(GifError::Invalid(_))), "{garbage:?}");
        std::fs::write(&p, b"\x89PNG....").unwrap();
        assert!(!looks_like_gif(&p).unwrap());
        assert!(matches!(
            read_info(&p, identity(&p), &limits()),
            Err(GifError::Invalid(_))
        ));
    }

    #[test]
    fn a_changed_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.gif");
        write_gif(&p, 4, 4, &[1], None);
        let before = identity(&p);
        write_gif(&p, 8, 8, &[1, 2], None);
        assert_eq!(
            read_info(&p, before, &limits()),
            Err(GifError::SourceChanged)
        );
    }
}
