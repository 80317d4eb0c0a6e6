//! The benches' SVG chart writer (`benches/support/svg.rs`), checked without running a
//! bench: round axis steps, escaped text, and well-formed documents whose bars and
//! points sit where the numbers say.

#[path = "../benches/support/svg.rs"]
mod svg;

use svg::{BarChart, LineChart, Series, Style, escape, nice_range, nice_step, tick_label};

#[test]
fn axis_steps_are_round() {
    assert_eq!(nice_step(10.0, 5), 2.0);
    assert_eq!(nice_step(340.0, 6), 100.0);
    assert_eq!(nice_range(3.2, 341.0, 6), (0.0, 400.0, 100.0));
    assert_eq!(
        nice_range(5.0, 5.0, 4).0,
        4.0,
        "a flat series still gets an axis"
    );
    assert_eq!(tick_label(0.1 + 0.2, 0.1), "0.3");
    assert_eq!(tick_label(-0.0, 1.0), "0");
}

#[test]
fn text_is_escaped() {
    assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    let chart = BarChart {
        title: "t <x>".into(),
        subtitle: "cmd & co".into(),
        value_label: "MiB".into(),
        categories: vec!["`/media` — a & b".into()],
        series: vec![("peak".into(), vec![2.0])],
    };
    let svg = chart.to_svg();
    assert!(
        svg.contains("t &lt;x&gt;") && svg.contains("a &amp; b") && svg.contains("cmd &amp; co")
    );
    assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
}

/// Bars are as long as their values, relative to each other (the axis is 0-based).
#[test]
fn bars_are_proportional() {
    let chart = BarChart {
        title: "t".into(),
        subtitle: String::new(),
        value_label: "MiB".into(),
        categories: vec!["a".into(), "b".into()],
        series: vec![
            ("peak".into(), vec![100.0, 50.0]),
            ("kept".into(), vec![0.0, 25.0]),
        ],
    };
    let svg = chart.to_svg();
    let widths: Vec<f64> = svg
        .lines()
        .filter(|l| l.starts_with("<rect x=\"330\""))
        .map(|l| {
            let w = l.split("width=\"").nth(1).unwrap();
            w[..w.find('"').unwrap()].parse().unwrap()
        })
        .collect();
    assert_eq!(widths.len(), 4, "{svg}");
    let (a_peak, a_kept, b_peak, b_kept) = (widths[0], widths[1], widths[2], widths[3]);
    assert!((a_peak / b_peak - 2.0).abs() < 0.01);
    assert!((b_peak / b_kept - 2.0).abs() < 0.01);
    assert!(a_kept <= 0.5, "a zero is a hairline, not a bar");
    assert!(
        svg.contains(">100.0<") && svg.contains(">25.0<"),
        "values are written beside the bars"
    );
}

/// A line chart draws every finite point of every series, with named ticks when given.
#[test]
fn line_chart_draws_each_point() {
    let chart = LineChart {
        title: "CPU".into(),
        subtitle: String::new(),
        x_label: "connections".into(),
        y_label: "µs".into(),
        x_ticks: Some(vec![
            (6.0, "64".into()),
            (8.0, "256".into()),
            (10.0, "1024".into()),
        ]),
        y_from_zero: true,
        series: vec![
            Series::new(
                "oip-media",
                vec![(6.0, 100.0), (8.0, 80.0), (10.0, 75.0)],
                Style::Line,
            ),
            Series::new(
                "nginx",
                vec![(6.0, 98.0), (8.0, f64::NAN), (10.0, 50.0)],
                Style::Line,
            ),
            Series::new("trace", vec![(6.0, 1.0), (7.0, 2.0)], Style::Trace),
        ],
    };
    let svg = chart.to_svg();
    assert_eq!(
        svg.matches("<circle").count(),
        5,
        "NaN skipped, traces unmarked"
    );
    assert_eq!(svg.matches("<polyline").count(), 3);
    for tick in [">64<", ">256<", ">1024<", ">oip-media<", ">nginx<"] {
        assert!(svg.contains(tick), "{tick} missing");
    }
}
