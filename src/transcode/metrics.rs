//! The transcoder's own metrics: prometheus-client values that live in the transcoder
//! and are updated where things happen; `/metrics` registers them as they are.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::VariantFormat;

/// How a transcode job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values as Prometheus shows them
pub enum Outcome {
    /// The variant was made.
    ok,
    /// The GIF's fault (invalid, over a limit, ffmpeg cannot encode it): remembered,
    /// answered 422.
    failed,
    /// ffmpeg ran past the job timeout and was killed (remembered briefly, 503).
    timeout,
    /// Not the GIF's fault: disk full, no permission, a missing folder, a killed
    /// encoder, ffmpeg that cannot start (not remembered, 503).
    host_error,
    /// Not started: the queue was full (503).
    rejected,
    /// Not started: already made by someone else (another process, a previous job).
    already_there,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct JobLabels {
    format: &'static str,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FormatLabels {
    format: &'static str,
}

fn encode_histogram() -> Histogram {
    // 50 ms .. ~100 s: a small GIF's WebP to a large GIF's WebM on a slow core.
    Histogram::new(exponential_buckets(0.05, 2.0, 12))
}

/// Jobs by outcome, queue depth, encode seconds, and bytes of variants vs their GIFs.
#[derive(Debug)]
pub struct TranscodeMetrics {
    jobs: Family<JobLabels, Counter>,
    queued: Gauge,
    running: Gauge,
    waiting: Gauge,
    encode_seconds: Family<FormatLabels, Histogram, fn() -> Histogram>,
    source_bytes: Family<FormatLabels, Counter>,
    variant_bytes: Family<FormatLabels, Counter>,
}

impl Default for TranscodeMetrics {
    fn default() -> Self {
        TranscodeMetrics {
            jobs: Family::default(),
            queued: Gauge::default(),
            running: Gauge::default(),
            waiting: Gauge::default(),
            encode_seconds: Family::new_with_constructor(encode_histogram),
            source_bytes: Family::default(),
            variant_bytes: Family::default(),
        }
    }
}

impl TranscodeMetrics {
    /// Adds every value to `registry` (names get the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "transcode_jobs",
            "Transcode jobs by format and outcome",
            self.jobs.clone(),
        );
        registry.register(
            "transcode_queue_depth",
            "Transcode jobs waiting for a worker",
            self.queued.clone(),
        );
        registry.register(
            "transcode_running",
            "ffmpeg processes running",
            self.running.clone(),
        );
        registry.register(
            "transcode_waiting_requests",
            "Variant requests waiting for their transcode",
            self.waiting.clone(),
        );
        registry.register(
            "transcode_encode_seconds",
            "Wall-clock seconds of successful ffmpeg runs, by format",
            self.encode_seconds.clone(),
        );
        registry.register(
            "transcode_source_bytes",
            "Bytes of the GIFs variants were made from, by format",
            self.source_bytes.clone(),
        );
        registry.register(
            "transcode_variant_bytes",
            "Bytes of the variants made, by format (compare with transcode_source_bytes)",
            self.variant_bytes.clone(),
        );
    }

    /// Counts one job of `format` that ended in `outcome`.
    pub fn job(&self, format: VariantFormat, outcome: Outcome) {
        self.jobs
            .get_or_create(&JobLabels {
                format: format.name(),
                outcome,
            })
            .inc();
    }

    /// Jobs of `format` that ended in `outcome` so far.
    pub fn jobs(&self, format: VariantFormat, outcome: Outcome) -> u64 {
        self.jobs
            .get_or_create(&JobLabels {
                format: format.name(),
                outcome,
            })
            .get()
    }

    /// Records a variant made: its encode time and bytes vs its source's.
    pub fn made(&self, format: VariantFormat, seconds: f64, source: u64, variant: u64) {
        let labels = FormatLabels {
            format: format.name(),
        };
        self.encode_seconds.get_or_create(&labels).observe(seconds);
        self.source_bytes.get_or_create(&labels).inc_by(source);
        self.variant_bytes.get_or_create(&labels).inc_by(variant);
    }

    /// Jobs waiting for a worker now.
    pub fn queued(&self) -> &Gauge {
        &self.queued
    }

    /// ffmpeg processes running now.
    pub fn running(&self) -> &Gauge {
        &self.running
    }

    /// Requests waiting for a transcode now.
    pub fn waiting(&self) -> &Gauge {
        &self.waiting
    }
}
