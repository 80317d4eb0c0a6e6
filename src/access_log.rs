//! The access log: one `info` line per response, written when the response's last byte
//! has been handed to the socket (or the body was abandoned), so that its duration and
//! byte count are what the client got, not what the handler promised.
//!
//! The record ([`AccessRecord`]) is made by [`crate::app`] once the handler answered,
//! rides in the response `Body` (which fills in the bytes it yielded)
//! and is released with the body's other guards: after the flush that wrote the last
//! chunk when the body went through a connection's outbox, else when the body ends or is
//! dropped. Its `Drop` writes the line, under the target `oip_media::access` (so
//! `RUST_LOG=info,oip_media::access=off` also turns it off).
//!
//! Fields, the same in both formats: `method`, `path` (path and query as received),
//! `route` (the route family, as in the metrics), `status`, `bytes` (body bytes handed to
//! the socket: an aborted download counts its part), `duration_ms` (from the request's
//! head being handed to us to the last byte written), `request_id`, `client` (the peer's
//! address, absent when not served from a socket) and `user_agent` (when sent).
//!
//! Written by hand, not through `tracing`'s formatter, once `main` has installed the
//! log ([`write_directly`]): `tracing-subscriber` formatting ten fields cost about
//! 15,000 instructions per response under callgrind (`docs/benchmarks/access-log.md`),
//! more than the rest of a cached GIF response. [`line()`] writes the same bytes the
//! subscriber wrote for this event (same timestamp, level, target, field order, quoting
//! and JSON escaping; `tests/logs.rs` reads both formats) into a per-thread buffer,
//! with integers by `itoa` and the timestamp's date and time formatted once a second,
//! and hands it to stdout in one `write`. Where `main` did not install it (tests and
//! benches building the app in-process, a colour terminal), or with `RUST_LOG` set so
//! the line is off, the line goes through `tracing` as before.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use http::uri::PathAndQuery;

use crate::settings::{Invalid, not_zero, parse_duration, parse_rate};
use std::time::Duration;

/// Whether, and how often, responses are logged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AccessLog {
    /// Share of responses logged, 0 to 1; 0 when the log is off.
    rate: f64,
}

impl AccessLog {
    /// From `--access-log` and `--access-log-sample`.
    pub fn new(config: &LogSettings) -> AccessLog {
        let rate = if config.access_log == "off" {
            0.0
        } else {
            config.access_log_sample
        };
        AccessLog { rate }
    }

    /// Whether this response is logged: always at rate 1, never at 0, else at random
    /// (a thread-local generator: no shared counter bounced between cores).
    pub fn sampled(&self) -> bool {
        self.rate >= 1.0 || (self.rate > 0.0 && fastrand::f64() < self.rate)
    }
}

/// What the access line of one response says; written when dropped.
#[derive(Debug)]
pub struct AccessRecord {
    pub started: Instant,
    pub method: http::Method,
    pub path: Option<PathAndQuery>,
    pub route: &'static str,
    pub status: u16,
    pub request_id: HeaderValue,
    pub user_agent: Option<HeaderValue>,
    pub client: Option<IpAddr>,
    /// Body bytes handed to the socket; set by the body when it ends.
    pub bytes: u64,
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        if let Some(direct) = DIRECT.get() {
            if direct.enabled {
                direct.write(self);
            }
            return;
        }
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        // Microsecond precision: a cached GIF hit takes tens of them.
        let duration_ms = (duration_ms * 1000.0).round() / 1000.0;
        let path = self.path.as_ref().map_or("/", PathAndQuery::as_str);
        tracing::info!(
            target: "oip_media::access",
            // Display (`%`): unquoted in the human format; strings in JSON either way.
            method = %self.method,
            path = %path,
            route = %self.route,
            status = self.status,
            bytes = self.bytes,
            duration_ms,
            request_id = %self.request_id.to_str().unwrap_or_default(),
            client = self.client.map(tracing::field::display),
            user_agent = self.user_agent.as_ref().and_then(|ua| ua.to_str().ok()),
            "access"
        );
    }
}

/// The log's format, the access log and the periodic summary line.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Logging")]
pub struct LogSettings {
    /// Log format: `human` (for a terminal) or `json` (one object per line, for log
    /// shippers).
    ///
    /// The level comes from `RUST_LOG`.
    #[arg(long, env = "LOG_FORMAT", default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,

    /// The access log: one `info` line per response.
    ///
    /// The access log: one `info` line per response (target `oip_media::access`), with method,
    /// path and query, route family, status, bytes sent, duration to the last byte, request id,
    /// client address and user agent.
    ///
    /// `off` for hosts that log requests elsewhere (a front proxy).
    #[arg(long, env = "ACCESS_LOG", default_value = "on", value_parser = ["on", "off"])]
    pub access_log: String,

    /// Share of responses the access log writes, from 0 to 1 (`0.01`: about 1 in 100, chosen at
    /// random per response).
    ///
    /// Ignored with `--access-log off`.
    #[arg(long, env = "ACCESS_LOG_SAMPLE", default_value = "1", value_parser = parse_rate)]
    pub access_log_sample: f64,

    /// Interval of the one-line traffic summary in the log (instead of a line per GIF).
    #[arg(long, env = "SUMMARY_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub summary_interval: Duration,
}

impl LogSettings {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        not_zero("summary_interval", self.summary_interval)
    }
}

/// The log format the direct writer writes, as `--log-format` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// `tracing-subscriber`'s full format, without colour.
    Human,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// The direct writer, once installed.
#[derive(Debug)]
struct Direct {
    format: LineFormat,
    /// Whether the filter (`RUST_LOG`) lets `oip_media::access` at `info` through; read
    /// once: the filter does not change while the process runs.
    enabled: bool,
}

static DIRECT: OnceLock<Direct> = OnceLock::new();

/// From now on, access lines are written to stdout in `format` by [`line()`], not
/// through `tracing`. Call after the global subscriber is installed (its filter decides
/// whether the line is on) and only where that subscriber writes plain lines to stdout
/// in the same format (no colour codes).
pub fn write_directly(format: LineFormat) {
    let enabled = tracing::enabled!(target: "oip_media::access", tracing::Level::INFO);
    let _ = DIRECT.set(Direct { format, enabled });
}

impl Direct {
    fn write(&self, record: &AccessRecord) {
        LINE.with(|cell| {
            let Ok(mut cell) = cell.try_borrow_mut() else {
                return;
            };
            let (buffer, clock) = &mut *cell;
            buffer.clear();
            line(buffer, clock, self.format, record, SystemTime::now());
            // One `write` of a whole line: stdout's line buffer passes it straight on
            // when empty (every writer to stdout here writes whole lines). A closed
            // stdout loses the line, as it would through `tracing`.
            let _ = std::io::stdout().lock().write_all(buffer);
        });
    }
}

thread_local! {
    /// Each thread's line buffer and timestamp cache, reused for every line.
    static LINE: RefCell<(Vec<u8>, Clock)> = RefCell::new((Vec::with_capacity(512), Clock::default()));
}

/// `YYYY-MM-DDTHH:MM:SS` of the last second a line was written in.
#[derive(Debug, Default)]
pub struct Clock {
    second: u64,
    text: [u8; 19],
}

impl Clock {
    /// RFC 3339 UTC with microseconds (`2026-12-07T05:09:05.924705Z`), as
    /// `tracing-subscriber`'s default timer writes it.
    fn write(&mut self, out: &mut Vec<u8>, now: SystemTime) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if second != self.second || self.text[0] == 0 {
            self.second = second;
            self.text = date_time(second);
        }
        out.extend_from_slice(&self.text);
        out.push(b'.');
        let micros = since.subsec_micros();
        let mut digits = [b'0'; 6];
        let mut rest = micros;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out.extend_from_slice(&digits);
        out.push(b'Z');
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time (Howard Hinnant's `civil_from_days`).
fn date_time(unix: u64) -> [u8; 19] {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut text = [0u8; 19];
    let mut put = |at: usize, value: u64, width: usize| {
        let mut value = value;
        for i in (at..at + width).rev() {
            text[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year.clamp(0, 9999) as u64, 4);
    put(5, month as u64, 2);
    put(8, day as u64, 2);
    put(11, secs / 3600, 2);
    put(14, secs / 60 % 60, 2);
    put(17, secs % 60, 2);
    text[4] = b'-';
    text[7] = b'-';
    text[10] = b'T';
    text[13] = b':';
    text[16] = b':';
    text
}

/// The access line of `record` in `format`, newline included, as `tracing-subscriber`
/// formats the event of the `tracing` path (human: its full format without colour;
/// JSON: flattened, `message` first and `target` last).
pub fn line(
    out: &mut Vec<u8>,
    clock: &mut Clock,
    format: LineFormat,
    record: &AccessRecord,
    now: SystemTime,
) {
    let mut int = itoa::Buffer::new();
    let path = record.path.as_ref().map_or("/", PathAndQuery::as_str);
    let request_id = record.request_id.to_str().unwrap_or_default();
    let user_agent = record.user_agent.as_ref().and_then(|ua| ua.to_str().ok());
    match format {
        LineFormat::Human => {
            clock.write(out, now);
            out.extend_from_slice(b"  INFO oip_media::access: access method=");
            out.extend_from_slice(record.method.as_str().as_bytes());
            out.extend_from_slice(b" path=");
            out.extend_from_slice(path.as_bytes());
            out.extend_from_slice(b" route=");
            out.extend_from_slice(record.route.as_bytes());
            out.extend_from_slice(b" status=");
            out.extend_from_slice(int.format(record.status).as_bytes());
            out.extend_from_slice(b" bytes=");
            out.extend_from_slice(int.format(record.bytes).as_bytes());
            out.extend_from_slice(b" duration_ms=");
            duration_ms(out, record.started.elapsed());
            out.extend_from_slice(b" request_id=");
            out.extend_from_slice(request_id.as_bytes());
            if let Some(client) = record.client {
                out.extend_from_slice(b" client=");
                ip(out, client);
            }
            if let Some(user_agent) = user_agent {
                out.extend_from_slice(b" user_agent=");
                debug_str(out, user_agent);
            }
        }
        LineFormat::Json => {
            out.extend_from_slice(b"{\"timestamp\":\"");
            clock.write(out, now);
            out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"access\",\"method\":");
            json_str(out, record.method.as_str());
            out.extend_from_slice(b",\"path\":");
            json_str(out, path);
            out.extend_from_slice(b",\"route\":");
            json_str(out, record.route);
            out.extend_from_slice(b",\"status\":");
            out.extend_from_slice(int.format(record.status).as_bytes());
            out.extend_from_slice(b",\"bytes\":");
            out.extend_from_slice(int.format(record.bytes).as_bytes());
            out.extend_from_slice(b",\"duration_ms\":");
            duration_ms(out, record.started.elapsed());
            out.extend_from_slice(b",\"request_id\":");
            json_str(out, request_id);
            if let Some(client) = record.client {
                out.extend_from_slice(b",\"client\":\"");
                ip(out, client);
                out.push(b'"');
            }
            if let Some(user_agent) = user_agent {
                out.extend_from_slice(b",\"user_agent\":");
                json_str(out, user_agent);
            }
            out.extend_from_slice(b",\"target\":\"oip_media::access\"}");
        }
    }
    out.push(b'\n');
}

/// Milliseconds with microsecond precision, as `f64`'s `Debug` and `serde_json` write a
/// value rounded to three decimals: `4.652`, `1.5`, `2.0`.
fn duration_ms(out: &mut Vec<u8>, elapsed: std::time::Duration) {
    let micros = (elapsed.as_nanos() + 500) / 1000;
    let (whole, fraction) = ((micros / 1000) as u64, (micros % 1000) as u32);
    out.extend_from_slice(itoa::Buffer::new().format(whole).as_bytes());
    out.push(b'.');
    let digits = [
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ];
    let keep = digits.iter().rposition(|&d| d != b'0').map_or(1, |i| i + 1);
    out.extend_from_slice(&digits[..keep]);
}

/// An address as its `Display` writes it; IPv4 (every loopback and most clients)
/// without the formatting machinery.
fn ip(out: &mut Vec<u8>, address: IpAddr) {
    match address {
        IpAddr::V4(v4) => {
            let mut int = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(int.format(octet).as_bytes());
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{address}");
        }
    }
}

/// `text` quoted as `str`'s `Debug` writes it (what the human format does with a string
/// field): plain printable ASCII as it is, anything else through `Debug` itself.
fn debug_str(out: &mut Vec<u8>, text: &str) {
    let plain = text
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{text:?}");
    }
}

/// `text` as a JSON string, escaped as `serde_json` escapes it.
fn json_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn rates_zero_and_one_are_exact_and_a_half_is_about_half() {
        assert!((0..1000).all(|_| AccessLog { rate: 1.0 }.sampled()));
        assert!(!(0..1000).any(|_| AccessLog { rate: 0.0 }.sampled()));
        let half = (0..10_000)
            .filter(|_| AccessLog { rate: 0.5 }.sampled())
            .count();
        assert!((4_000..6_000).contains(&half), "{half}");
    }

    /// A record as the app makes it, with every field that needs quoting or escaping.
    fn record(client: Option<IpAddr>, user_agent: Option<&'static str>) -> AccessRecord {
        AccessRecord {
            started: Instant::now(),
            method: http::Method::GET,
            path: Some(PathAndQuery::from_static(
                "/media/p/a.gif?v=2&x=%22y\\z&u={q}",
            )),
            route: "media",
            status: 206,
            request_id: HeaderValue::from_static("r\"id\\"),
            user_agent: user_agent.map(|ua| HeaderValue::from_str(ua).unwrap()),
            client,
            bytes: 1_234_567,
        }
    }

    /// What the `tracing` path writes for `record`, through a subscriber set up as
    /// `main` sets it up (no colour).
    fn through_tracing(json: bool, record: AccessRecord) -> String {
        let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = std::sync::Arc::clone(&captured);
        let writer = move || Captured(std::sync::Arc::clone(&sink));
        if json {
            let subscriber = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_ansi(false)
                .with_writer(writer)
                .finish();
            tracing::subscriber::with_default(subscriber, || drop(record));
        } else {
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(writer)
                .finish();
            tracing::subscriber::with_default(subscriber, || drop(record));
        }
        let bytes = captured.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// `line` with its timestamp and duration replaced, which differ between two writes.
    fn masked(line: &str) -> String {
        let mut out = line.to_owned();
        // The timestamp: `2026-…Z`, 27 characters, wherever it starts.
        if let Some(at) = out.find("20") {
            out.replace_range(at..at + 27, "<time>");
        }
        for key in ["duration_ms=", "\"duration_ms\":"] {
            if let Some(at) = out.find(key) {
                let start = at + key.len();
                let end = out[start..]
                    .find([' ', ','])
                    .map_or(out.len(), |e| start + e);
                out.replace_range(start..end, "<ms>");
            }
        }
        out
    }

    #[test]
    fn the_hand_written_line_is_the_one_tracing_wrote() {
        let v4 = Some(IpAddr::from([127, 0, 0, 1]));
        let v6 = Some("2001:db8::1".parse().unwrap());
        for json in [false, true] {
            for (client, user_agent) in [
                (v4, Some("curl/8.0 (\"x\" \\ y)\tz")),
                (v4, Some("probe/1.0")),
                (v6, None),
                (None, Some("plain")),
            ] {
                let expected = through_tracing(json, record(client, user_agent));
                let format = if json {
                    LineFormat::Json
                } else {
                    LineFormat::Human
                };
                let mut out = Vec::new();
                let rec = record(client, user_agent);
                line(
                    &mut out,
                    &mut Clock::default(),
                    format,
                    &rec,
                    SystemTime::now(),
                );
                std::mem::forget(rec);
                let written = String::from_utf8(out).unwrap();
                assert_eq!(masked(&written), masked(&expected), "json: {json}");
                if json {
                    let value: serde_json::Value = serde_json::from_str(&written).unwrap();
                    assert_eq!(value["path"], "/media/p/a.gif?v=2&x=%22y\\z&u={q}");
                    assert!(value["duration_ms"].is_f64(), "{written}");
                }
            }
        }
    }

    #[test]
    fn timestamps_and_durations_read_as_tracing_writes_them() {
        let at = UNIX_EPOCH + std::time::Duration::from_micros(1_796_620_145_924_705);
        let mut out = Vec::new();
        let mut clock = Clock::default();
        clock.write(&mut out, at);
        assert_eq!(String::from_utf8_lossy(&out), "2026-12-07T05:09:05.924705Z");
        out.clear();
        clock.write(
            &mut out,
            UNIX_EPOCH + std::time::Duration::from_secs(951_782_400),
        );
        assert_eq!(String::from_utf8_lossy(&out), "2000-02-29T00:00:00.000000Z");
        for (micros, text) in [
            (4_652, "4.652"),
            (1_500, "1.5"),
            (2_000, "2.0"),
            (7, "0.007"),
            (0, "0.0"),
            (12_345_678, "12345.678"),
        ] {
            let mut out = Vec::new();
            duration_ms(&mut out, std::time::Duration::from_micros(micros));
            assert_eq!(String::from_utf8_lossy(&out), text);
            let float = ((micros as f64 / 1000.0) * 1000.0).round() / 1000.0;
            assert_eq!(format!("{float:?}"), text, "as f64's Debug");
        }
    }

    #[test]
    fn json_strings_are_escaped_as_serde_json_escapes_them() {
        for text in [
            "plain",
            "q\"b\\s",
            "\u{1}\u{8}\u{c}\n\r\t\u{1f}\u{7f}",
            "é/ü",
        ] {
            let mut out = Vec::new();
            json_str(&mut out, text);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(text).unwrap()
            );
        }
    }

    #[test]
    fn off_means_no_line_whatever_the_rate() {
        let mut config = Config::for_media_dir(std::path::Path::new("/nonexistent"));
        config.log.access_log = "off".to_owned();
        config.log.access_log_sample = 1.0;
        assert!(!AccessLog::new(&config.log).sampled());
    }
}
