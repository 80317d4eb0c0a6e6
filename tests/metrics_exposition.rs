//! `/metrics` as Prometheus tooling reads it: both exposition formats from a real server,
//! after requests through every route family, checked by `promtool check metrics` (the
//! text format) and by prometheus_client's strict OpenMetrics parser (OpenMetrics;
//! promtool 2.42 lints only the text format); the new metrics; and every metric named by
//! the alert rules and the Grafana dashboard in `deploy/` is one the service exports.
//!
//! Without promtool or python3's prometheus_client these checks print `skipped: …`,
//! unless `OIP_REQUIRE_PROMTOOL` is set (as `.ci/run` does after installing both).

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use support::*;

/// Starts a server (with a GUN relay stand-in, so the relay's metrics are registered)
/// and sends requests through every route family, so every series that appears on first
/// use exists. The stand-in lives as long as the test: it is leaked.
async fn exercised_server() -> TestServer {
    let media = media_root();
    write_file(&media.path().join("web/p/a.gif"), &pattern(10_000, 1));
    let relay = Box::leak(Box::new(support::relay_stub::RelayStub::start().await));
    let base = relay.base_url();
    let server = start_with(media, |c| c.gun.gun_peers = Some(base.clone())).await;
    for path in [
        "/media/p/a.gif",
        "/media/p/missing.gif",
        "/api/media/nothing",
        "/api/generate/media/nothing",
        "/gun-relay/get?soul=x",
        "/healthz",
        "/readyz",
        "/metrics",
        "/nowhere",
        // `405`, still counted under the resolve family.
        "/api/resolve",
    ] {
        get(server.addr, path).await;
    }
    server
}

async fn scrape(server: &TestServer, accept: Option<&str>) -> (String, String) {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    let r = request(server.addr, "GET", "/metrics", &headers).await;
    assert_eq!(r.status, 200);
    let content_type = r.header("content-type").unwrap().to_owned();
    (content_type, String::from_utf8(r.body).unwrap())
}

/// Runs `program args` with `input` on stdin: `None` when it cannot start, else its
/// exit status and output.
fn pipe(program: &str, args: &[&str], input: &str) -> Option<(bool, String)> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), text))
}

fn required() -> bool {
    std::env::var_os("OIP_REQUIRE_PROMTOOL").is_some()
}

#[tokio::test]
async fn text_format_by_default_openmetrics_when_asked() {
    let server = exercised_server().await;
    for accept in [None, Some("text/plain;version=0.0.4"), Some("*/*")] {
        let (content_type, text) = scrape(&server, accept).await;
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("# UNIT"), "{text}");
        assert!(
            text.contains("# TYPE oip_media_http_responses_total counter\n"),
            "{text}"
        );
    }
    let prometheus =
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (content_type, text) = scrape(&server, Some(prometheus)).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(text.ends_with("# EOF\n"));
    assert!(
        text.contains("# TYPE oip_media_http_responses counter\n"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn both_formats_pass_promtool_and_the_openmetrics_parser() {
    let server = exercised_server().await;
    let (_, text) = scrape(&server, None).await;
    let (_, openmetrics) = scrape(&server, Some("application/openmetrics-text")).await;
    server.stop().await;

    match pipe("promtool", &["check", "metrics"], &text) {
        None if !required() => println!("skipped: promtool is not installed"),
        None => panic!("OIP_REQUIRE_PROMTOOL is set but promtool cannot run"),
        Some((ok, report)) => {
            assert!(ok && report.trim().is_empty(), "promtool: {report}\n{text}");
        }
    }
    let parse = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
        print(len(list(p(sys.stdin.read()))))";
    // Debian's python3 first: `.ci/run` installs python3-prometheus-client for it, and a
    // python3 earlier on PATH (a virtualenv, /usr/local) may lack the module.
    let outcome = ["/usr/bin/python3", "python3"]
        .into_iter()
        .filter_map(|python| pipe(python, &["-c", parse], &openmetrics))
        .min_by_key(|(ok, _)| !ok);
    match outcome {
        Some((true, families)) => {
            assert!(families.trim().parse::<u32>().unwrap() > 40, "{families}");
        }
        Some((false, report)) if report.contains("ModuleNotFoundError") && !required() => {
            println!("skipped: python3's prometheus_client is not installed");
        }
        None if !required() => println!("skipped: python3 is not installed"),
        other => panic!("OpenMetrics parser: {other:?}\n{openmetrics}"),
    }
}

#[tokio::test]
async fn build_info_process_latency_elastic_and_roots_are_exported() {
    let server = exercised_server().await;
    let (_, text) = scrape(&server, None).await;
    let build = text
        .lines()
        .find(|l| l.starts_with("oip_media_build_info{"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.ends_with(" 1"),
        "{build}"
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(metric(&text, name).unwrap() > 0.0, "{name}: {text}");
    }
    // The media route's requests: two (a hit and a miss), both in the histogram.
    assert_eq!(
        metric(
            &text,
            "oip_media_http_request_duration_seconds_count{route=\"media\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "oip_media_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"resolve\"}"
        ),
        Some(1.0)
    );
    // No Elasticsearch configured: nothing answered.
    assert_eq!(metric(&text, "oip_media_elastic_up"), Some(0.0));
    assert_eq!(
        metric(&text, "oip_media_media_root_readable{role=\"web\"}"),
        Some(1.0)
    );
    // Base units: the body budget in bytes, no KiB left anywhere.
    assert!(
        metric(&text, "oip_media_request_body_in_flight_limit_bytes").unwrap() >= 1024.0 * 1024.0
    );
    assert!(!text.contains("_kib"), "{text}");

    // A root that becomes unreadable shows at the next scrape.
    std::fs::rename(server.web(""), server.media.path().join("web-moved")).unwrap();
    let (_, text) = scrape(&server, None).await;
    assert_eq!(
        metric(&text, "oip_media_media_root_readable{role=\"web\"}"),
        Some(0.0)
    );
    std::fs::rename(server.media.path().join("web-moved"), server.web("")).unwrap();
    server.stop().await;
}

/// The metric names a scrape exports, with the sample suffixes a query may use.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            names.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// Metric names in a PromQL expression: identifiers of our prefixes (`oip_media_`,
/// `process_`), not label names (followed by `=`/`!`/`~`) nor inside strings.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_string = false;
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == '"' {
            in_string = !in_string;
            i += 1;
            continue;
        }
        if !in_string && (c.is_ascii_alphabetic() || c == '_') {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_') {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            if word.starts_with("oip_media_") || word.starts_with("process_") {
                names.push(word);
            }
            continue;
        }
        i += 1;
    }
    names
}

/// Every PromQL expression of the alert rules (`expr:` lines) and of the dashboard
/// (`"expr"` fields of its targets).
fn deployed_expressions() -> Vec<(String, String)> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut exprs = Vec::new();
    let alerts = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    let mut lines = alerts.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(expr) = trimmed.strip_prefix("expr:") {
            let expr = expr.trim();
            if expr == "|" || expr == ">" || expr == "|-" || expr == ">-" {
                // A block: the following, more indented lines.
                let indent = line.len() - trimmed.len();
                let mut block = String::new();
                while let Some(next) = lines.peek() {
                    let next_indent = next.len() - next.trim_start().len();
                    if next.trim().is_empty() || next_indent <= indent {
                        break;
                    }
                    block.push_str(next.trim());
                    block.push(' ');
                    lines.next();
                }
                exprs.push(("alerts.yml".to_owned(), block));
            } else {
                exprs.push(("alerts.yml".to_owned(), expr.to_owned()));
            }
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/oip-media.json")).unwrap(),
    )
    .unwrap();
    fn walk(value: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => {
                            out.push(("oip-media.json".to_owned(), expr.clone()));
                        }
                        _ => walk(value, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    exprs
}

/// Names registered only under conditions the test server does not meet: none. (The
/// stalled pool's gauges exist with `--max-stalled` above 0, the default; the GUN relay's
/// with a relay configured, as here.)
const CONDITIONAL: &[&str] = &[];

#[tokio::test]
async fn every_metric_in_alerts_and_dashboard_is_exported() {
    let server = exercised_server().await;
    let (_, text) = scrape(&server, None).await;
    server.stop().await;
    let names = exported(&text);
    let exprs = deployed_expressions();
    assert!(exprs.len() >= 15, "{exprs:?}");
    let mut missing = Vec::new();
    for (file, expr) in &exprs {
        let found = metric_names(expr);
        assert!(!found.is_empty(), "{file}: no metric in {expr}");
        for name in found {
            if !names.contains(&name) && !CONDITIONAL.contains(&name.as_str()) {
                missing.push(format!("{file}: {name} in {expr}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not exported:\n{}\n\nexported: {names:?}",
        missing.join("\n")
    );
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            "sum by (route) (rate(oip_media_http_responses_total{class=\"5xx\",route=~\"oip_media_x\"}[5m])) / process_max_fds"
        ),
        ["oip_media_http_responses_total", "process_max_fds"]
    );
}
