//! How `/metrics` answers: which format a scraper asked for ([`negotiate`]) and the
//! Prometheus text format 0.0.4 made from prometheus-client's OpenMetrics text
//! ([`openmetrics_to_text`]).
//!
//! prometheus-client 0.25 encodes OpenMetrics text and protobuf only, no text format
//! 0.0.4; yet `promtool check metrics` and many scrapers (older Prometheus, Telegraf,
//! Datadog agents) read 0.0.4, and read an OpenMetrics counter (`# TYPE x counter` over
//! `x_total` samples) as a metric without help. So the 0.0.4 text is derived from the
//! OpenMetrics text, line by line: a small pure function, unit-tested below, rather than
//! a second encoder over every metric type.

/// The two formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: what a request without `Accept`, or one asking for
    /// `text/plain`, gets.
    Text,
    /// OpenMetrics 1.0.0 text, for a scraper that asks for `application/openmetrics-text`.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The format for a request's `Accept` header (`None`: no header, or not UTF-8).
///
/// OpenMetrics when `application/openmetrics-text` is acceptable (q > 0) and weighs at
/// least as much as any acceptable `text/plain` or wildcard; the text format otherwise.
/// Prometheus itself sends
/// `application/openmetrics-text;version=1.0.0,…;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1`,
/// so it gets OpenMetrics; `curl` (`*/*`) and a bare request get the text format.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let (mut openmetrics, mut text) = (None::<f32>, None::<f32>);
    for range in accept.split(',') {
        let mut params = range.split(';').map(str::trim);
        let media = params.next().unwrap_or_default().to_ascii_lowercase();
        let q = params
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(0.0));
        let slot = match media.as_str() {
            "application/openmetrics-text" => &mut openmetrics,
            "text/plain" | "text/*" | "*/*" => &mut text,
            _ => continue,
        };
        *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
    }
    match openmetrics {
        Some(om) if om > 0.0 && om >= text.unwrap_or(0.0) => Format::OpenMetrics,
        _ => Format::Text,
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics text (as prometheus-client
/// encodes it: `# HELP`, `# TYPE`, optional `# UNIT`, then samples, family by family,
/// ending `# EOF`). The differences handled:
/// - a counter's family is named after its samples: `# TYPE x_total counter`, with its
///   `# HELP` renamed to match;
/// - `_created` samples of counters, histograms and summaries are dropped (0.0.4 has
///   none), and so are exemplars (` # {…} v` after a sample);
/// - an `info` family becomes a gauge named `x_info`; `unknown` becomes `untyped`;
///   `stateset` a gauge, `gaugehistogram` untyped (neither is used here);
/// - `# UNIT` and `# EOF` lines are dropped.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The HELP line waits for its TYPE line, which decides the family's 0.0.4 name.
    let mut help: Option<(&str, &str)> = None;
    // The current family's OpenMetrics name and type.
    let mut family: (&str, &str) = ("", "");
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), None);
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (renamed, text_kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" | "gaugehistogram" => (name.to_owned(), "untyped"),
                "stateset" => (name.to_owned(), "gauge"),
                other => (name.to_owned(), other),
            };
            let help = help.take();
            match help {
                Some((help_name, _)) if help_name == name => {
                    flush_help(&mut out, help, Some(&renamed));
                }
                other => flush_help(&mut out, other, None),
            }
            out.push_str("# TYPE ");
            out.push_str(&renamed);
            out.push(' ');
            out.push_str(text_kind);
            out.push('\n');
            family = (name, kind);
        } else if line.starts_with('#') {
            // `# UNIT`, `# EOF`: OpenMetrics only.
            continue;
        } else if !line.is_empty() {
            flush_help(&mut out, help.take(), None);
            let sample_name = line.split(['{', ' ']).next().unwrap_or_default();
            let created = matches!(family.1, "counter" | "histogram" | "summary")
                && sample_name.strip_suffix("_created") == Some(family.0);
            if created {
                continue;
            }
            out.push_str(without_exemplar(line));
            out.push('\n');
        }
    }
    flush_help(&mut out, help, None);
    out
}

/// Writes a pending `# HELP`, under `rename` if given.
fn flush_help(out: &mut String, help: Option<(&str, &str)>, rename: Option<&str>) {
    if let Some((name, text)) = help {
        out.push_str("# HELP ");
        out.push_str(rename.unwrap_or(name));
        out.push(' ');
        out.push_str(text);
        out.push('\n');
    }
}

/// A sample line without its exemplar (` # {labels} value [timestamp]`), which only
/// OpenMetrics has. A `#` inside a quoted label value is not an exemplar.
fn without_exemplar(line: &str) -> &str {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '#' if !quoted => return line[..i].trim_end(),
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_accept_and_plain_text_get_the_text_format() {
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("")), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(negotiate(Some("text/plain;version=0.0.4")), Format::Text);
        assert_eq!(negotiate(Some("text/plain")), Format::Text);
        assert_eq!(negotiate(Some("application/json")), Format::Text);
    }

    #[test]
    fn openmetrics_when_asked_for_and_preferred() {
        assert_eq!(
            negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        assert_eq!(
            negotiate(Some("Application/OpenMetrics-Text; version=1.0.0")),
            Format::OpenMetrics
        );
        // What Prometheus 2.x sends.
        assert_eq!(
            negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        // Text preferred, or OpenMetrics refused.
        assert_eq!(
            negotiate(Some(
                "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"
            )),
            Format::Text
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0")),
            Format::Text
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=bogus")),
            Format::Text
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Format::Text.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert!(
            Format::OpenMetrics
                .content_type()
                .starts_with("application/openmetrics-text; version=1.0.0")
        );
    }

    #[test]
    fn counters_are_named_with_total_and_keep_their_help() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{k=\"v\"} 2\na_requests_created{k=\"v\"} 1700000000.5\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{k=\"v\"} 2\n"
        );
    }

    #[test]
    fn gauges_histograms_units_and_info() {
        let om = "\
# HELP g_bytes Memory.
# TYPE g_bytes gauge
# UNIT g_bytes bytes
g_bytes 3
# HELP d_seconds Duration.
# TYPE d_seconds histogram
d_seconds_sum{route=\"media\"} 0.5
d_seconds_count{route=\"media\"} 2
d_seconds_bucket{le=\"0.1\",route=\"media\"} 1 # {trace=\"x\"} 0.05
d_seconds_bucket{le=\"+Inf\",route=\"media\"} 2
d_seconds_created{route=\"media\"} 17
# HELP build Build.
# TYPE build info
build_info{version=\"1\"} 1
# TYPE nohelp gauge
nohelp 1
# EOF
";
        assert_eq!(
            openmetrics_to_text(om),
            "\
# HELP g_bytes Memory.
# TYPE g_bytes gauge
g_bytes 3
# HELP d_seconds Duration.
# TYPE d_seconds histogram
d_seconds_sum{route=\"media\"} 0.5
d_seconds_count{route=\"media\"} 2
d_seconds_bucket{le=\"0.1\",route=\"media\"} 1
d_seconds_bucket{le=\"+Inf\",route=\"media\"} 2
# HELP build_info Build.
# TYPE build_info gauge
build_info{version=\"1\"} 1
# TYPE nohelp gauge
nohelp 1
"
        );
    }

    #[test]
    fn a_hash_inside_a_label_value_is_kept() {
        assert_eq!(
            without_exemplar("x{p=\"a # b\\\" #\"} 1 # {t=\"1\"} 2"),
            "x{p=\"a # b\\\" #\"} 1"
        );
        assert_eq!(without_exemplar("x 1"), "x 1");
    }
}
