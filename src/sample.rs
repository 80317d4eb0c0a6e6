//! Sample media: real, deterministic animated GIFs standing in for the exercise GIFs.
//!
//! The service is tested and benchmarked against files that look like production media to
//! the byte-serving path: GIF89a files with a global palette, a NETSCAPE loop extension,
//! several full-canvas frames with delays, square, and in the three widths the real
//! exercise GIFs come in (180, 360 and 720 px) with sizes in the same bands
//! (about 100 KB, 250–500 KB and 0.7–2 MB). The picture is a crude figure pressing a
//! bar and bending its knees, drawn with shaded, grainy limbs over a grainy background;
//! the grain is what brings the LZW-compressed frames up to the target sizes.
//!
//! Everything is a pure function of `(width, seed)`, so the bundled files in `media/` can
//! be regenerated bit for bit with `gen-media bundled`.

use std::borrow::Cow;
use std::fs;
use std::io::{self, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use gif::{DisposalMethod, Encoder, EncodingError, Frame, Repeat};

/// Width classes of the real exercise GIFs.
///
/// Production media only comes in these three square sizes; tests, the bundled set and the
/// benchmark corpus are all built from them so that size-dependent behaviour (chunking,
/// caching thresholds, range requests) is exercised at realistic sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SizeClass {
    /// 180 × 180 px, about 100 KB.
    Small180,
    /// 360 × 360 px, about 250–500 KB.
    Medium360,
    /// 720 × 720 px, about 0.7–2 MB.
    Large720,
}

impl SizeClass {
    /// All classes, smallest first, so callers can iterate them without listing variants.
    pub const ALL: [SizeClass; 3] = [
        SizeClass::Small180,
        SizeClass::Medium360,
        SizeClass::Large720,
    ];

    /// Width (and height) in pixels; the class's number in real file names (`..._360.gif`).
    pub fn width(&self) -> u16 {
        match self {
            SizeClass::Small180 => 180,
            SizeClass::Medium360 => 360,
            SizeClass::Large720 => 720,
        }
    }

    /// Byte sizes a generated file of this class is tuned to land in, so tests and the
    /// `gen-media` summary can check the samples still mirror the real GIF sizes.
    pub fn size_band(&self) -> RangeInclusive<u64> {
        match self {
            SizeClass::Small180 => 80_000..=130_000,
            SizeClass::Medium360 => 250_000..=500_000,
            SizeClass::Large720 => 700_000..=2_000_000,
        }
    }

    /// Class whose tuning is used for an arbitrary width (the nearest one).
    fn nearest(width: u16) -> SizeClass {
        if width <= 270 {
            SizeClass::Small180
        } else if width <= 540 {
            SizeClass::Medium360
        } else {
            SizeClass::Large720
        }
    }

    /// Encoder tuning: frame count and mean background grain (probability that a
    /// background pixel takes a random grey), calibrated so the output lands mid-band
    /// even when [`encode_parts`] scales the grain by 0.75..1.25 per seed.
    fn tuning(&self) -> (u16, f64) {
        match self {
            SizeClass::Small180 => (10, 0.18),
            SizeClass::Medium360 => (10, 0.20),
            SizeClass::Large720 => (12, 0.12),
        }
    }
}

/// Encodes one animated GIF in memory.
///
/// Square `width` × `width`, looping forever, deterministic in `(width, seed)`. Any width
/// from 16 to 4096 works; sizes are only tuned for the three [`SizeClass`] widths.
pub fn encode_gif(width: u16, seed: u64) -> io::Result<Vec<u8>> {
    Ok(encode_parts(width, seed)?.bytes)
}

/// An encoded GIF plus the offset just after the header, global palette and loop
/// extension, where extra extension blocks can be spliced in without re-encoding.
struct Encoded {
    bytes: Vec<u8>,
    splice_at: usize,
}

/// Maps the encoder's error onto `io::Error`, keeping I/O errors as they are.
fn gif_err(err: EncodingError) -> io::Error {
    match err {
        EncodingError::Io(err) => err,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

/// Number of palette entries (64 colours: a 6-bit LZW minimum code size).
const PALETTE_LEN: usize = 64;
// Palette layout: eight shades per material, darkest first, after 16 background greys.
const BG: u8 = 0; // 16 greys, lightest first
const SKIN: u8 = 16;
const SHIRT: u8 = 24;
const SHORTS: u8 = 32;
const METAL: u8 = 40;
const PLATE: u8 = 48;
const FLOOR: u8 = 56;

fn encode_parts(width: u16, seed: u64) -> io::Result<Encoded> {
    if !(16..=4096).contains(&width) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("sample GIF width {width} is outside 16..=4096"),
        ));
    }
    let class = SizeClass::nearest(width);
    let (frames, grain) = class.tuning();
    let mut rng = fastrand::Rng::with_seed(seed ^ (u64::from(width) << 48));
    // Vary the grain per file so sizes spread over the band like real ones do; stored
    // as a threshold on a uniform u32.
    let grain = (grain * (0.75 + 0.5 * rng.f64()) * f64::from(u32::MAX)) as u32;
    let look = Look::new(&mut rng);
    let palette = palette(&mut rng);
    let delay = rng.u16(6..=10);

    let side = usize::from(width);
    let band = class.size_band();
    let mut out = Vec::with_capacity(usize::try_from(*band.end()).unwrap_or(0));
    let mut encoder = Encoder::new(&mut out, width, width, &palette).map_err(gif_err)?;
    encoder.set_repeat(Repeat::Infinite).map_err(gif_err)?;
    let splice_at = encoder.get_ref().len();

    let mut canvas = Canvas {
        side,
        px: vec![0; side * side],
        rng,
    };
    for f in 0..frames {
        let phase = f32::from(f) / f32::from(frames);
        canvas.background(grain);
        canvas.figure(&look, phase);
        let frame = Frame {
            width,
            height: width,
            delay,
            dispose: DisposalMethod::Keep,
            buffer: Cow::Borrowed(&canvas.px),
            ..Frame::default()
        };
        encoder.write_frame(&frame).map_err(gif_err)?;
    }
    encoder.into_inner().map_err(gif_err)?;
    Ok(Encoded {
        bytes: out,
        splice_at,
    })
}

/// Builds the 64-colour global palette: background greys, then 8-shade ramps per material.
fn palette(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut pal = Vec::with_capacity(PALETTE_LEN * 3);
    for i in 0..16u8 {
        let v = 255 - i * 3;
        pal.extend_from_slice(&[v, v, v.saturating_sub(i / 2)]);
    }
    let shirt = [rng.u8(40..220), rng.u8(40..220), rng.u8(40..220)];
    let shorts = [rng.u8(20..120), rng.u8(20..120), rng.u8(40..160)];
    let plate = [rng.u8(30..200), rng.u8(20..60), rng.u8(20..60)];
    let ramps: [[u8; 3]; 6] = [
        [236, 180, 140],
        shirt,
        shorts,
        [170, 170, 180],
        plate,
        [190, 175, 150],
    ];
    for base in ramps {
        for shade in 0..8u16 {
            // 45 % .. 100 % brightness.
            let scale = 45 + shade * 55 / 7;
            for c in base {
                pal.push(u8::try_from(u16::from(c) * scale / 100).unwrap_or(255));
            }
        }
    }
    pal
}

/// Per-file variation of the figure, drawn once from the seed.
struct Look {
    /// Horizontal position of the figure's centre line.
    center: f32,
    /// How deep the knees bend at the bottom of the movement.
    squat: f32,
    /// How far the hands travel upwards.
    press: f32,
    /// Phase offset of the arm movement relative to the legs.
    arm_lag: f32,
    /// Whether the figure holds a barbell.
    barbell: bool,
}

impl Look {
    fn new(rng: &mut fastrand::Rng) -> Look {
        Look {
            center: 0.45 + rng.f32() * 0.1,
            squat: 0.04 + rng.f32() * 0.14,
            press: 0.10 + rng.f32() * 0.14,
            arm_lag: rng.f32() * 0.25,
            barbell: rng.u8(0..4) != 0,
        }
    }
}

/// One frame of indexed pixels plus the grain generator.
struct Canvas {
    side: usize,
    px: Vec<u8>,
    rng: fastrand::Rng,
}

impl Canvas {
    /// Vertical grey gradient with random grain, and a grainy floor strip at the bottom.
    fn background(&mut self, grain: u32) {
        let side = self.side;
        let floor_top = side * 7 / 8;
        for (y, row) in self.px.chunks_exact_mut(side).enumerate() {
            let (base, first) = if y >= floor_top {
                (FLOOR + 3 + u8::from(y > floor_top + 2), FLOOR)
            } else {
                (BG + u8::try_from(y * 4 / side).unwrap_or(3), BG)
            };
            for p in row.iter_mut() {
                let r = self.rng.u64(..);
                *p = if (r as u32) < grain {
                    // Any of the 16 greys, or any of the 8 floor shades.
                    let pick = (r >> 60) as u8;
                    if first == FLOOR {
                        FLOOR + pick / 2
                    } else {
                        pick
                    }
                } else {
                    base
                };
            }
        }
    }

    /// Draws the exercising figure at `phase` (0..1 through one repetition).
    fn figure(&mut self, look: &Look, phase: f32) {
        let tau = std::f32::consts::TAU;
        let legs = (1.0 - (tau * phase).cos()) / 2.0;
        let arms = (1.0 - (tau * (phase + look.arm_lag)).cos()) / 2.0;
        let cx = look.center;
        let floor = 0.875;
        let dip = legs * look.squat;

        let hip_y = 0.52 + dip;
        let shoulder_y = hip_y - 0.24;
        let hand_y = shoulder_y + 0.02 - arms * look.press;
        let limb = 0.028;

        for side in [-1.0f32, 1.0] {
            let ankle = (cx + side * 0.07, floor - 0.02);
            let hip = (cx + side * 0.045, hip_y);
            let knee = (cx + side * (0.06 + dip * 0.9), (hip_y + ankle.1) / 2.0);
            self.capsule(hip, knee, limb * 1.25, SHORTS);
            self.capsule(knee, ankle, limb, SKIN);
            self.capsule(
                ankle,
                (ankle.0 + side * 0.035, floor - 0.012),
                limb * 0.6,
                METAL,
            );
        }
        self.capsule((cx, hip_y), (cx, shoulder_y), 0.065, SHIRT);
        let mut hands = [(0.0, 0.0); 2];
        for (i, side) in [-1.0f32, 1.0].into_iter().enumerate() {
            let shoulder = (cx + side * 0.075, shoulder_y + 0.01);
            let hand = (cx + side * 0.16, hand_y);
            let elbow = (
                cx + side * (0.14 + (1.0 - arms) * 0.05),
                (shoulder.1 + hand.1) / 2.0 + 0.03,
            );
            self.capsule(shoulder, elbow, limb, SHIRT);
            self.capsule(elbow, hand, limb * 0.9, SKIN);
            hands[i] = hand;
        }
        if look.barbell {
            let (l, r) = (hands[0].0 - 0.17, hands[1].0 + 0.17);
            self.capsule((l, hand_y), (r, hand_y), 0.011, METAL);
            for x in [l + 0.03, r - 0.03] {
                self.capsule((x, hand_y - 0.07), (x, hand_y + 0.07), 0.025, PLATE);
            }
        } else {
            for hand in hands {
                self.capsule(
                    (hand.0, hand.1 - 0.04),
                    (hand.0, hand.1 + 0.04),
                    0.02,
                    PLATE,
                );
            }
        }
        // Head last, in front of the bar.
        let head = (cx, shoulder_y - 0.075);
        self.capsule(head, head, 0.05, SKIN);
    }

    /// Fills a round-capped segment (coordinates and radius relative to the side) with an
    /// 8-shade ramp starting at `ramp`: brighter towards the axis, with random jitter.
    fn capsule(&mut self, a: (f32, f32), b: (f32, f32), radius: f32, ramp: u8) {
        let s = self.side as f32;
        let (ax, ay, bx, by, r) = (a.0 * s, a.1 * s, b.0 * s, b.1 * s, radius * s);
        let clamp = |v: f32| (v.max(0.0) as usize).min(self.side - 1);
        let (x0, x1) = (clamp(ax.min(bx) - r), clamp(ax.max(bx) + r));
        let (y0, y1) = (clamp(ay.min(by) - r), clamp(ay.max(by) + r));
        let (dx, dy) = (bx - ax, by - ay);
        let len2 = (dx * dx + dy * dy).max(1e-6);
        let r2 = r * r;
        for y in y0..=y1 {
            let row = &mut self.px[y * self.side..(y + 1) * self.side];
            let py = y as f32 + 0.5;
            for (x, p) in row.iter_mut().enumerate().take(x1 + 1).skip(x0) {
                let px = x as f32 + 0.5;
                let t = (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0);
                let (ex, ey) = (px - ax - t * dx, py - ay - t * dy);
                let d2 = ex * ex + ey * ey;
                if d2 <= r2 {
                    let light = ((1.0 - d2 / r2) * 5.0) as u8;
                    let jitter = (self.rng.u32(..) >> 30) as u8;
                    *p = ramp + (light + jitter).min(7);
                }
            }
        }
    }
}

/// Media project the bundled set belongs to, as in the indexer's `web/<project>/` layout.
const BUNDLED_PROJECT: &str = "fitnessally";

/// The committed sample set: file name, class and seed.
const BUNDLED: [(&str, SizeClass, u64); 6] = [
    (
        "02891301-Dumbbell-Bench-Press_Chest_360.gif",
        SizeClass::Medium360,
        0x0289_1301,
    ),
    (
        "02891301-Dumbbell-Bench-Press_Chest_180.gif",
        SizeClass::Small180,
        0x0289_1301,
    ),
    (
        "00251301-Barbell-Bent-Over-Row_Back_720.gif",
        SizeClass::Large720,
        0x0025_1301,
    ),
    (
        "03141301-Push-up-(wall)-(female)_Chest_360.gif",
        SizeClass::Medium360,
        0x0314_1301,
    ),
    (
        "05611301-Squat-(on-knees)_Thighs_180.gif",
        SizeClass::Small180,
        0x0561_1301,
    ),
    (
        "13261301-Jump-Rope_Cardio_720.gif",
        SizeClass::Large720,
        0x1326_1301,
    ),
];

/// Writes the bundled sample set (the committed `media/` folder) into `media_root`, in the
/// indexer layout `media_root/web/fitnessally/<name>.gif`. Returns the paths written.
///
/// The set is small (six files, a few MB) but covers every width class and the awkward
/// names (parentheses) that URL handling has to cope with.
pub fn write_bundled(media_root: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = media_root.join("web").join(BUNDLED_PROJECT);
    fs::create_dir_all(&dir)?;
    let mut written = Vec::with_capacity(BUNDLED.len());
    for (name, class, seed) in BUNDLED {
        let path = dir.join(name);
        fs::write(&path, encode_gif(class.width(), seed)?)?;
        written.push(path);
    }
    Ok(written)
}

/// One file written by [`write_corpus`], with what a benchmark or test needs to request
/// it and check the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusFile {
    /// Request path, `/media/<project>/<file name>` (file name not percent-encoded).
    pub url_path: String,
    /// Where the file was written.
    pub fs_path: PathBuf,
    /// File size in bytes.
    pub len: u64,
    /// Width class of the file, in pixels.
    pub width: u16,
}

/// Distinct encodings per size class that [`write_corpus`] reuses across files.
const POOL_PER_CLASS: usize = 16;

/// Exercise names and body parts the corpus draws file names from; several contain
/// parentheses, as real ones do.
const EXERCISES: [(&str, &str); 16] = [
    ("Dumbbell-Bench-Press", "Chest"),
    ("Barbell-Bent-Over-Row", "Back"),
    ("Push-up-(wall)-(female)", "Chest"),
    ("Squat-(on-knees)", "Thighs"),
    ("Jump-Rope", "Cardio"),
    ("Barbell-Curl", "Upper-Arms"),
    ("Dumbbell-Lateral-Raise", "Shoulders"),
    ("Lever-Seated-Fly-(plate-loaded)", "Chest"),
    ("Dumbbell-Lunge-(female)", "Hips"),
    ("Crunch-(hands-overhead)", "Waist"),
    ("Cable-Pushdown-(with-rope-attachment)", "Upper-Arms"),
    ("Barbell-Standing-Calf-Raise", "Calves"),
    ("Pull-up", "Back"),
    ("Wrist-Curl-(barbell)", "Forearms"),
    ("Burpee", "Plyometrics"),
    ("Seated-Hamstring-Stretch", "Stretching"),
];

/// Largest corpus whose generated ids stay unique (see [`write_corpus`]).
const MAX_CORPUS: usize = 870_000;

/// Writes a large corpus of `count` files into `media_root/web/<project>/` with a realistic
/// size mix and names like the real ones, deterministic from `seed`.
///
/// The benchmark needs thousands of distinct files of realistic sizes. The mix is exact
/// up to rounding: `count * 15 / 100` files of 720 px, `count * 35 / 100` of 360 px and
/// the rest (≈ 50 %) of 180 px, in a seeded random order. Names look like
/// `00421301-Pull-up_Back_180.gif`: an 8-digit id unique within the corpus (hence
/// `count` ≤ 870 000), an exercise name (some with parentheses), body part and width.
///
/// Encoding thousands of 720 px GIFs would dominate, so up to 16 distinct GIFs per class
/// are encoded (on all available cores) and reused; each file still gets distinct bytes
/// from a GIF comment extension naming it, spliced in after the loop extension, so no
/// cache or filesystem can dedupe them. Returns the files in write order.
pub fn write_corpus(
    media_root: &Path,
    project: &str,
    count: usize,
    seed: u64,
) -> io::Result<Vec<CorpusFile>> {
    if project.is_empty() || project == "." || project == ".." || project.contains(['/', '\\']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid corpus project name {project:?}"),
        ));
    }
    if count > MAX_CORPUS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("corpus of {count} files exceeds the {MAX_CORPUS} unique ids"),
        ));
    }
    let dir = media_root.join("web").join(project);
    fs::create_dir_all(&dir)?;

    let large = count * 15 / 100;
    let medium = count * 35 / 100;
    let mut order = Vec::with_capacity(count);
    order.resize(count - large - medium, SizeClass::Small180);
    order.resize(count - large, SizeClass::Medium360);
    order.resize(count, SizeClass::Large720);
    let mut rng = fastrand::Rng::with_seed(seed);
    rng.shuffle(&mut order);

    let pools = encode_pools(seed, [count - large - medium, medium, large])?;
    let mut used = [0usize; 3];
    let mut files = Vec::with_capacity(count);
    let mut head = Vec::new();
    for (i, class) in order.into_iter().enumerate() {
        let c = class_index(class);
        let pool = &pools[c];
        let gif = pool
            .get(used[c] % pool.len().max(1))
            .ok_or_else(|| io::Error::other("empty sample pool"))?;
        used[c] += 1;

        let (exercise, part) = EXERCISES[rng.usize(..EXERCISES.len())];
        let id = format!("{:04}{:02}01", i % 10_000, 13 + i / 10_000);
        let name = format!("{id}-{exercise}_{part}_{}.gif", class.width());
        let comment = format!("oip-media corpus seed={seed} file={i} {name}");

        head.clear();
        head.extend_from_slice(&gif.bytes[..gif.splice_at]);
        push_comment(&mut head, comment.as_bytes());
        let body = &gif.bytes[gif.splice_at..];
        let path = dir.join(&name);
        let mut file = fs::File::create(&path)?;
        file.write_all(&head)?;
        file.write_all(body)?;
        files.push(CorpusFile {
            url_path: format!("/media/{project}/{name}"),
            fs_path: path,
            len: (head.len() + body.len()) as u64,
            width: class.width(),
        });
    }
    Ok(files)
}

fn class_index(class: SizeClass) -> usize {
    match class {
        SizeClass::Small180 => 0,
        SizeClass::Medium360 => 1,
        SizeClass::Large720 => 2,
    }
}

/// Encodes `min(needed, 16)` distinct GIFs per class, spread over the available cores.
fn encode_pools(seed: u64, needed: [usize; 3]) -> io::Result<[Vec<Encoded>; 3]> {
    let jobs: Vec<(usize, u64)> = SizeClass::ALL
        .iter()
        .enumerate()
        .flat_map(|(c, _)| (0..needed[c].min(POOL_PER_CLASS)).map(move |k| (c, k as u64)))
        // Largest first so the threads finish at about the same time.
        .rev()
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 8)
        .min(jobs.len().max(1));

    let results: Vec<io::Result<Vec<(usize, Encoded)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let jobs = &jobs;
                scope.spawn(move || {
                    jobs.iter()
                        .skip(t)
                        .step_by(threads)
                        .map(|&(c, k)| {
                            let width = SizeClass::ALL[c].width();
                            let job_seed = seed
                                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                                .wrapping_add((c as u64) << 32 | k);
                            Ok((c, encode_parts(width, job_seed)?))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("sample encoder thread panicked")))
            })
            .collect()
    });

    let mut pools: [Vec<Encoded>; 3] = Default::default();
    for batch in results {
        for (c, encoded) in batch? {
            pools[c].push(encoded);
        }
    }
    Ok(pools)
}

/// Appends a GIF comment extension block holding `text` (split into 255-byte sub-blocks).
fn push_comment(out: &mut Vec<u8>, text: &[u8]) {
    out.extend_from_slice(&[0x21, 0xFE]);
    for chunk in text.chunks(255) {
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Decodes `bytes`, checks it is a square looping animation and returns (side, frames).
    fn decode(bytes: &[u8]) -> (u16, usize) {
        let mut opts = gif::DecodeOptions::new();
        opts.set_color_output(gif::ColorOutput::Indexed);
        let mut dec = opts.read_info(bytes).expect("valid GIF header");
        assert_eq!(dec.width(), dec.height(), "square");
        let mut frames = 0;
        while let Some(frame) = dec.read_next_frame().expect("valid frame") {
            assert!(frame.delay > 0, "frames have a delay");
            assert_eq!((frame.width, frame.height), (dec.width(), dec.height()));
            frames += 1;
        }
        assert_eq!(dec.repeat(), Repeat::Infinite, "loops forever");
        (dec.width(), frames)
    }

    fn check_class(class: SizeClass, seeds: &[u64]) {
        for &seed in seeds {
            let bytes = encode_gif(class.width(), seed).expect("encode");
            let (side, frames) = decode(&bytes);
            assert_eq!(side, class.width());
            assert!(frames > 1, "{class:?}: {frames} frames");
            assert!(
                class.size_band().contains(&(bytes.len() as u64)),
                "{class:?} seed {seed}: {} bytes outside {:?}",
                bytes.len(),
                class.size_band()
            );
        }
    }

    #[test]
    fn small_gifs_decode_and_are_in_band() {
        check_class(SizeClass::Small180, &[0, 1, 42, u64::MAX]);
    }

    #[test]
    fn medium_gifs_decode_and_are_in_band() {
        check_class(SizeClass::Medium360, &[0, 7]);
    }

    /// The slowest test (a 720 px encode plus decode in a debug build); kept because the
    /// large band is what the benchmark's big-file path depends on.
    #[test]
    fn large_gifs_decode_and_are_in_band() {
        check_class(SizeClass::Large720, &[3]);
    }

    #[test]
    fn encoding_is_deterministic_and_seed_dependent() {
        let a = encode_gif(180, 9).expect("encode");
        assert_eq!(a, encode_gif(180, 9).expect("encode"));
        assert_ne!(a, encode_gif(180, 10).expect("encode"));
    }

    #[test]
    fn odd_widths_work_and_silly_ones_are_rejected() {
        let (side, _) = decode(&encode_gif(33, 1).expect("encode"));
        assert_eq!(side, 33);
        assert_eq!(
            encode_gif(0, 1).map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::InvalidInput)
        );
    }

    #[test]
    fn bundled_names_match_their_class() {
        for (name, class, _) in BUNDLED {
            assert!(name.ends_with(&format!("_{}.gif", class.width())), "{name}");
        }
    }

    /// Also guards the committed `media/` folder against generator drift: if this fails
    /// after a deliberate change, regenerate it with `cargo run --features sample --bin gen-media bundled`.
    #[test]
    fn bundled_set_is_complete_in_band_and_matches_the_committed_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = write_bundled(dir.path()).expect("bundled");
        let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("media/web/fitnessally");
        let mut total = 0;
        for ((name, class, _), path) in BUNDLED.iter().zip(&paths) {
            assert_eq!(path, &dir.path().join("web/fitnessally").join(name));
            let bytes = fs::read(path).expect("read");
            total += bytes.len();
            assert!(class.size_band().contains(&(bytes.len() as u64)), "{name}");
            assert_eq!(decode(&bytes).0, class.width(), "{name}");
            if committed.is_dir() {
                let on_disk = fs::read(committed.join(name)).expect("committed sample");
                assert!(on_disk == bytes, "media/ is stale for {name}");
            }
        }
        assert_eq!(paths.len(), 6);
        assert!(total <= 8 << 20, "bundled set is {total} bytes");
    }

    #[test]
    fn corpus_has_distinct_files_and_the_mix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = write_corpus(dir.path(), "bench", 30, 5).expect("corpus");
        assert_eq!(files.len(), 30);

        let mut per_width = [0usize; 3];
        let mut contents = HashSet::new();
        let mut urls = HashSet::new();
        for f in &files {
            let bytes = fs::read(&f.fs_path).expect("read");
            assert_eq!(bytes.len() as u64, f.len);
            let name = f
                .fs_path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("name");
            assert_eq!(f.url_path, format!("/media/bench/{name}"));
            assert!(name.ends_with(&format!("_{}.gif", f.width)), "{name}");
            assert_eq!(
                f.fs_path.parent(),
                Some(dir.path().join("web/bench").as_path())
            );
            let class = SizeClass::nearest(f.width);
            assert!(
                class.size_band().contains(&f.len),
                "{name}: {} bytes",
                f.len
            );
            per_width[class_index(class)] += 1;
            assert!(contents.insert(bytes), "duplicate content: {name}");
            assert!(urls.insert(f.url_path.clone()), "duplicate name: {name}");
        }
        assert_eq!(per_width, [16, 10, 4]);

        // Spliced comments keep the files valid GIFs.
        for f in files.iter().filter(|f| f.width == 180).take(3) {
            let (side, frames) = decode(&fs::read(&f.fs_path).expect("read"));
            assert_eq!((side, frames > 1), (180, true));
        }
        // Deterministic from the seed.
        let again = tempfile::tempdir().expect("tempdir");
        let files2 = write_corpus(again.path(), "bench", 30, 5).expect("corpus");
        let strip = |fs: &[CorpusFile]| -> Vec<(String, u64)> {
            fs.iter().map(|f| (f.url_path.clone(), f.len)).collect()
        };
        assert_eq!(strip(&files), strip(&files2));
    }

    #[test]
    fn corpus_rejects_path_like_projects() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in ["", "..", "a/b"] {
            assert!(write_corpus(dir.path(), bad, 1, 0).is_err(), "{bad:?}");
        }
    }
}
