//! A small SVG chart writer for the benches: line charts (series of points against a
//! numeric x axis, with optional named ticks) and horizontal grouped bar charts (one row
//! per category, one bar per series). Enough to put a bench's own table in a picture for
//! BENCHMARKS.md; nothing is measured here, and every number drawn is one the bench also
//! printed.
//!
//! Plain text out, no dependencies: the charts are diffable and render on GitHub.

#![allow(dead_code)] // each bench uses the kind of chart it draws

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Colours of successive series (colour-blind safe: Okabe–Ito).
const PALETTE: [&str; 6] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
];

/// How a series is drawn on a line chart.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Points joined by a line, each point marked.
    Line,
    /// Points joined by a line, no markers (dense samples).
    Trace,
    /// Markers only.
    Points,
}

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, style: Style) -> Series {
        Series {
            name: name.into(),
            points,
            style,
        }
    }
}

/// A line chart. `x_ticks`, when given, replaces the numeric x ticks with named ones at
/// those positions (connection counts on a log axis, say).
pub struct LineChart {
    pub title: String,
    /// A second line under the title: the command, machine and commit.
    pub subtitle: String,
    pub x_label: String,
    pub y_label: String,
    pub x_ticks: Option<Vec<(f64, String)>>,
    /// Start the y axis at 0 (otherwise at the data's low end, rounded).
    pub y_from_zero: bool,
    pub series: Vec<Series>,
}

/// A horizontal grouped bar chart: a row per category, a bar per series.
pub struct BarChart {
    pub title: String,
    pub subtitle: String,
    pub value_label: String,
    pub categories: Vec<String>,
    /// (name, one value per category).
    pub series: Vec<(String, Vec<f64>)>,
}

const WIDTH: f64 = 860.0;
const FONT: &str = "font-family=\"DejaVu Sans, Arial, sans-serif\"";

/// Text made safe inside an SVG element or attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// A round step for about `target` ticks over `span`: 1, 2 or 5 × 10^k.
pub fn nice_step(span: f64, target: usize) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let unit = raw / magnitude;
    let nice = if unit <= 1.0 {
        1.0
    } else if unit <= 2.0 {
        2.0
    } else if unit <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Axis bounds covering `lo..hi` on whole steps, and the step.
pub fn nice_range(lo: f64, hi: f64, target: usize) -> (f64, f64, f64) {
    let (lo, hi) = if (hi - lo).abs() < f64::EPSILON {
        (lo - 1.0, hi + 1.0)
    } else {
        (lo, hi)
    };
    let step = nice_step(hi - lo, target);
    ((lo / step).floor() * step, (hi / step).ceil() * step, step)
}

/// A tick label without float noise (`0.30000000000000004` → `0.3`).
pub fn tick_label(value: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    let text = format!("{value:.decimals$}");
    if text == "-0" { "0".to_owned() } else { text }
}

fn header(out: &mut String, height: f64, title: &str, subtitle: &str) {
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" {FONT} font-size=\"12\">"
    );
    let _ = writeln!(
        out,
        "<rect width=\"{WIDTH}\" height=\"{height}\" fill=\"#ffffff\"/>"
    );
    let _ = writeln!(
        out,
        "<text x=\"16\" y=\"24\" font-size=\"16\" font-weight=\"bold\">{}</text>",
        escape(title)
    );
    let _ = writeln!(
        out,
        "<text x=\"16\" y=\"42\" font-size=\"11\" fill=\"#555555\">{}</text>",
        escape(subtitle)
    );
}

impl LineChart {
    pub fn to_svg(&self) -> String {
        let height = 440.0;
        let (left, right, top, bottom) = (72.0, WIDTH - 40.0, 84.0, height - 52.0);
        let points = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        );
        for &(x, y) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
            (x_lo, x_hi) = (x_lo.min(x), x_hi.max(x));
            (y_lo, y_hi) = (y_lo.min(y), y_hi.max(y));
        }
        if !x_lo.is_finite() {
            (x_lo, x_hi, y_lo, y_hi) = (0.0, 1.0, 0.0, 1.0);
        }
        if self.y_from_zero {
            y_lo = y_lo.min(0.0);
        }
        let (y_lo, y_hi, y_step) = nice_range(y_lo, y_hi, 6);
        let (x_lo, x_hi, x_step) = match &self.x_ticks {
            // Named ticks: a margin of half a tick's spacing on each side.
            Some(ticks) if ticks.len() > 1 => {
                let pad = (x_hi - x_lo) / (ticks.len() - 1) as f64 / 2.0;
                (x_lo - pad, x_hi + pad, 0.0)
            }
            Some(_) => (x_lo - 1.0, x_hi + 1.0, 0.0),
            None => nice_range(x_lo, x_hi, 8),
        };
        let sx = |x: f64| left + (x - x_lo) / (x_hi - x_lo) * (right - left);
        let sy = |y: f64| bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top);

        let mut out = String::new();
        header(&mut out, height, &self.title, &self.subtitle);
        // Grid and y ticks.
        let mut y = y_lo;
        while y <= y_hi + y_step / 2.0 {
            let py = sy(y);
            let _ = writeln!(
                out,
                "<line x1=\"{left}\" y1=\"{py:.1}\" x2=\"{right}\" y2=\"{py:.1}\" stroke=\"#e5e5e5\"/>\n<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                left - 6.0,
                py + 4.0,
                tick_label(y, y_step)
            );
            y += y_step;
        }
        // x ticks.
        let ticks: Vec<(f64, String)> = match &self.x_ticks {
            Some(ticks) => ticks.clone(),
            None => {
                let mut ticks = Vec::new();
                let mut x = x_lo;
                while x <= x_hi + x_step / 2.0 {
                    ticks.push((x, tick_label(x, x_step)));
                    x += x_step;
                }
                ticks
            }
        };
        for (x, label) in ticks {
            let px = sx(x);
            let _ = writeln!(
                out,
                "<line x1=\"{px:.1}\" y1=\"{bottom}\" x2=\"{px:.1}\" y2=\"{}\" stroke=\"#333333\"/>\n<text x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                bottom + 4.0,
                bottom + 18.0,
                escape(&label)
            );
        }
        // Axes and their labels.
        let _ = writeln!(
            out,
            "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{bottom}\" stroke=\"#333333\"/>\n<line x1=\"{left}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"#333333\"/>"
        );
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            (left + right) / 2.0,
            height - 14.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            out,
            "<text transform=\"translate(18 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
            (top + bottom) / 2.0,
            escape(&self.y_label)
        );
        // Series and legend (one row under the subtitle, each entry as wide as its name).
        let mut lx = 16.0;
        for (i, series) in self.series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let pts: Vec<(f64, f64)> = series
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| (sx(x), sy(y)))
                .collect();
            if series.style != Style::Points && pts.len() > 1 {
                let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = writeln!(
                    out,
                    "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
                    path.join(" ")
                );
            }
            if series.style != Style::Trace {
                for (x, y) in &pts {
                    let _ = writeln!(
                        out,
                        "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{colour}\"/>"
                    );
                }
            }
            let _ = writeln!(
                out,
                "<rect x=\"{lx:.1}\" y=\"56\" width=\"14\" height=\"4\" fill=\"{colour}\"/>\n<text x=\"{:.1}\" y=\"62\">{}</text>",
                lx + 20.0,
                escape(&series.name)
            );
            lx += 20.0 + series.name.chars().count() as f64 * 7.0 + 24.0;
        }
        out.push_str("</svg>\n");
        out
    }
}

impl BarChart {
    pub fn to_svg(&self) -> String {
        let groups = self.series.len().max(1) as f64;
        let bar = 9.0;
        let row = bar * groups + 8.0;
        let (left, right, top) = (330.0, WIDTH - 70.0, 78.0);
        let bottom = top + row * self.categories.len() as f64;
        let height = bottom + 46.0;
        let max = self
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let (_, x_hi, step) = nice_range(0.0, max.max(1e-9), 6);
        let sx = |v: f64| left + v.max(0.0) / x_hi * (right - left);

        let mut out = String::new();
        header(&mut out, height, &self.title, &self.subtitle);
        // Legend.
        for (i, (name, _)) in self.series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let lx = 16.0 + i as f64 * 220.0;
            let _ = writeln!(
                out,
                "<rect x=\"{lx}\" y=\"52\" width=\"12\" height=\"12\" fill=\"{colour}\"/>\n<text x=\"{}\" y=\"62\">{}</text>",
                lx + 18.0,
                escape(name)
            );
        }
        // Grid and value ticks.
        let mut v = 0.0;
        while v <= x_hi + step / 2.0 {
            let px = sx(v);
            let _ = writeln!(
                out,
                "<line x1=\"{px:.1}\" y1=\"{top}\" x2=\"{px:.1}\" y2=\"{bottom}\" stroke=\"#e5e5e5\"/>\n<text x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                bottom + 16.0,
                tick_label(v, step)
            );
            v += step;
        }
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            (left + right) / 2.0,
            height - 10.0,
            escape(&self.value_label)
        );
        for (c, category) in self.categories.iter().enumerate() {
            let y0 = top + c as f64 * row + 4.0;
            // About 6.2 px per character at this size: cut to fit left of the bars (the
            // whole label stays in the element's <title>).
            let fits = ((left - 24.0) / 6.2) as usize;
            let label: String = if category.chars().count() > fits {
                category.chars().take(fits - 1).collect::<String>() + "…"
            } else {
                category.clone()
            };
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\"><title>{}</title>{}</text>",
                left - 8.0,
                y0 + row / 2.0,
                escape(category),
                escape(&label)
            );
            for (i, (_, values)) in self.series.iter().enumerate() {
                let value = values.get(c).copied().unwrap_or(f64::NAN);
                if !value.is_finite() {
                    continue;
                }
                let colour = PALETTE[i % PALETTE.len()];
                let y = y0 + i as f64 * bar;
                let w = (sx(value) - left).max(0.5);
                let _ = writeln!(
                    out,
                    "<rect x=\"{left}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{}\" fill=\"{colour}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>",
                    bar - 1.0,
                    left + w + 4.0,
                    y + bar - 1.5,
                    tick_label(value, 0.1)
                );
            }
        }
        let _ = writeln!(
            out,
            "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{bottom}\" stroke=\"#333333\"/>"
        );
        out.push_str("</svg>\n");
        out
    }
}

/// Where the benches write their charts: `BENCH_CHARTS` when set (e.g. `docs/charts`,
/// relative to the repository), else `target/charts`.
pub fn chart_dir() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("BENCH_CHARTS").filter(|v| !v.is_empty()) {
        Some(dir) => repo.join(dir),
        None => repo.join("target/charts"),
    }
}

/// Writes `svg` as `name` in [`chart_dir`] and says where, beside the text table; a
/// chart that cannot be written is reported, never fatal to the bench.
pub fn write_chart(name: &str, svg: &str) {
    let dir = chart_dir();
    let path = dir.join(name);
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, svg)) {
        Ok(()) => println!("chart: {}", path.display()),
        Err(error) => println!("chart {name} NOT written ({}): {error}", path.display()),
    }
}

/// The short commit this bench was built from (`build.rs`), for a chart's subtitle.
pub fn commit() -> &'static str {
    env!("OIP_MEDIA_COMMIT")
}
