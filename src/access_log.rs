//! The access log: one `info` line per response, written when the response's last byte
//! has been handed to the socket (or the body was abandoned), so that its duration and
//! byte count are what the client got, not what the handler promised.
//!
//! The record ([`AccessRecord`]) is made by [`crate::app`] once the handler answered,
//! rides in the response [`Body`](crate::body::Body) (which fills in the bytes it yielded)
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

use std::net::IpAddr;
use std::time::Instant;

use http::HeaderValue;
use http::uri::PathAndQuery;

use crate::settings::{Invalid, not_zero, parse_duration, parse_rate};
use std::time::Duration;

/// Whether, and how often, responses are logged.
#[derive(Debug, Clone, Copy)]
pub struct AccessLog {
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

    #[test]
    fn off_means_no_line_whatever_the_rate() {
        let mut config = Config::for_media_dir(std::path::Path::new("/nonexistent"));
        config.log.access_log = "off".to_owned();
        config.log.access_log_sample = 1.0;
        assert!(!AccessLog::new(&config.log).sampled());
    }
}
