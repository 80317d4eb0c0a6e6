//! The admission points' settings group (media bodies, stills, `/info`) and the budget of
//! buffered request bodies. Kept apart from the limiter itself (`limit.rs`) so the
//! admission module can take it over whole.

use std::time::Duration;

use crate::settings::{Invalid, at_least_one, flag, not_zero, parse_bytes, parse_duration};

/// The unit the body budget counts in: its slots are KiB, so a budget of gigabytes fits
/// the limiter's `u32` permits.
pub const BUDGET_UNIT: u64 = 1024;

/// Bounds of the admission points routes are declared behind (media bodies, stills,
/// `/info`) and of the process-wide budget of buffered request bodies: how many at once,
/// how many may wait, and how long. The GUN relay's and the resolver's own admissions
/// live in their groups.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Admission (bounded work, queues and waits)")]
pub struct AdmissionSettings {
    /// Media response bodies in flight at once.
    ///
    /// A body in flight costs a few hundred KB of kernel socket buffer and a couple of chunk
    /// references here (never a copy of the file), so the bound is about fairness and kernel
    /// memory: 512 GIFs in flight is several times the indexer's peak, and still far from the
    /// connection cap.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,

    /// Media requests allowed to wait for a slot; past it 503 + `Retry-After` at once.
    ///
    /// Media requests allowed to wait for a slot when all are taken; past it requests are shed
    /// at once with 503 and `Retry-After`.
    #[arg(long, env = "MAX_QUEUE", default_value_t = 512)]
    pub max_queue: usize,

    /// Longest a media request waits for a slot before it is shed with 503.
    ///
    /// Short on purpose: a browser retrying in a second does better than one waiting in a line.
    #[arg(long, env = "QUEUE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub queue_timeout: Duration,

    /// Media bodies whose clients stopped reading that may wait outside `--max-in-flight`.
    ///
    /// Media bodies whose clients stopped reading (`--stalled-after`) that may wait out of the
    /// in-flight bound; when the pool is full, the one stalled longest is dropped (its
    /// connection closed).
    ///
    /// A stalled body costs its connection's kernel send buffer and at most one descriptor, no
    /// CPU, so the pool is several times `--max-in-flight`; 0 keeps stalled bodies in the
    /// in-flight bound until `--write-stall-timeout`.
    #[arg(long, env = "MAX_STALLED", default_value_t = 2048)]
    pub max_stalled: usize,

    /// `?still=1` requests admitted at once.
    ///
    /// `?still=1` requests admitted at once, rendered or served from the derived folder (the
    /// admission slot is held until the still's bytes are sent).
    ///
    /// Stills have their own admission, never a GIF-serving slot (`--max-in-flight`), so
    /// waiting for a render never keeps a GIF from being served.
    #[arg(long, env = "STILL_MAX_IN_FLIGHT", default_value_t = 64)]
    pub still_max_in_flight: usize,

    /// `?still=1` requests allowed to wait for a slot; past it 503 + `Retry-After` at once.
    #[arg(long, env = "STILL_MAX_QUEUE", default_value_t = 128)]
    pub still_max_queue: usize,

    /// Longest a `?still=1` request waits for a slot; then 503 + `Retry-After`.
    #[arg(long, env = "STILL_QUEUE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub still_queue_timeout: Duration,

    /// `/api/media/<id>/info` requests admitted at once.
    ///
    /// `/info` parses GIFs (on the `--still-workers`) and answers small JSON; its own admission
    /// keeps a flood of it off the GIF-serving slots.
    #[arg(long, env = "INFO_MAX_IN_FLIGHT", default_value_t = 32)]
    pub info_max_in_flight: usize,

    /// `/info` requests allowed to wait for a slot; past it 503 + `Retry-After` at once.
    #[arg(long, env = "INFO_MAX_QUEUE", default_value_t = 64)]
    pub info_max_queue: usize,

    /// Longest an `/info` request waits for a slot; then 503 + `Retry-After`.
    #[arg(long, env = "INFO_QUEUE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub info_queue_timeout: Duration,

    /// Bytes of request bodies buffered at once, across every connection.
    ///
    /// Bytes of request bodies (`POST /gun-relay/put`, `POST /api/resolve`) buffered at once,
    /// across every connection.
    ///
    /// Each route bounds one body (`--gun-put-body-limit`, `--resolve-body-limit`); this bounds
    /// all of them together, which the connection cap alone would let reach gigabytes. A body
    /// takes its share before its first byte is read: its `Content-Length`, or twice its
    /// route's limit when chunked (pieces, then one joined copy), so the budget must hold twice
    /// the largest limit: 256 MiB is one chunked put at the 128 MiB put limit, or two declared
    /// ones (the indexer's axios declares its length). Resolve bodies take at most
    /// `--resolve-body-budget` (64 MiB) of it. Memory is only taken by bodies actually sent.
    #[arg(long, env = "REQUEST_BODY_BUDGET", default_value = "256MiB", value_parser = parse_bytes)]
    pub request_body_budget: u64,

    /// Bodies allowed to wait for room in the budget; past it 503 + `Retry-After` at once.
    #[arg(long, env = "REQUEST_BODY_QUEUE", default_value_t = 256)]
    pub request_body_queue: usize,

    /// Longest a body waits for room in the budget; then 503 + `Retry-After`.
    #[arg(long, env = "REQUEST_BODY_QUEUE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub request_body_queue_timeout: Duration,
}

impl AdmissionSettings {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        at_least_one("max_in_flight", self.max_in_flight)?;
        at_least_one("still_max_in_flight", self.still_max_in_flight)?;
        at_least_one("info_max_in_flight", self.info_max_in_flight)?;
        not_zero("queue_timeout", self.queue_timeout)?;
        not_zero("still_queue_timeout", self.still_queue_timeout)?;
        not_zero("info_queue_timeout", self.info_queue_timeout)?;
        not_zero(
            "request_body_queue_timeout",
            self.request_body_queue_timeout,
        )?;
        if self.request_body_budget / BUDGET_UNIT > u64::from(u32::MAX) {
            return Err(Invalid::new("request_body_budget", "must be under 4 TiB"));
        }
        Ok(())
    }

    /// Advisories: valid settings that work against each other. A normal request waits up
    /// to 1.25 × `--stalled-after` for non-readers' slots to be given back; past
    /// `--queue-timeout` it would get `503` behind them instead. `stalled_after` is the
    /// server group's setting, named in the note as `stalled_after_flag` (that group sits
    /// above this one, which cannot import it).
    pub fn advisories(&self, stalled_after: Duration, stalled_after_flag: &str) -> Vec<String> {
        let mut notes = Vec::new();
        if self.max_stalled > 0 && stalled_after.mul_f64(1.25) >= self.queue_timeout {
            notes.push(format!(
                "{} ({:?}) × 1.25 is not below {} ({:?}): requests \
                 waiting behind clients that stopped reading may get 503 before their slots \
                 move to the stalled pool",
                stalled_after_flag,
                stalled_after,
                flag::<Self>("queue_timeout"),
                self.queue_timeout
            ));
        }
        notes
    }
}
