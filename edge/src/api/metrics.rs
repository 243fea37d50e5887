//! `GET /metrics`: Prometheus text format, and the inference-latency histogram behind it.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use shared::protocol::DeviceStatus;
use shared::Detection;

use crate::detector::{DetectError, Detector};

/// Upper bounds of the latency buckets, seconds.
const BUCKETS_S: [f64; 11] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0];

/// Inference latencies, lock-free: the frame loop records, `/metrics` reads.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS_S.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// Counts one inference.
    pub fn observe(&self, took: Duration) {
        let s = took.as_secs_f64();
        if let Some(i) = BUCKETS_S.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str) {
        let _ = writeln!(out, "# HELP {name} Time the model took per frame.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS_S.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Counters the API keeps itself.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    /// Inference latency of the models the API put in place.
    pub inference: Arc<LatencyHistogram>,
    /// Requests refused for a missing or wrong token.
    pub auth_failures: AtomicU64,
    /// Models accepted by `PUT /v1/model`.
    pub models_accepted: AtomicU64,
    /// Models refused by `PUT /v1/model`.
    pub models_refused: AtomicU64,
}

/// A detector that times every inference into a histogram; the API wraps every model it
/// puts in place with it.
pub struct Timed {
    inner: Box<dyn Detector>,
    histogram: Arc<LatencyHistogram>,
}

impl Timed {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn Detector>, histogram: Arc<LatencyHistogram>) -> Self {
        Self { inner, histogram }
    }
}

impl Detector for Timed {
    fn detect(&mut self, frame: &RgbImage) -> Result<Detection, DetectError> {
        let t0 = Instant::now();
        let result = self.inner.detect(frame);
        self.histogram.observe(t0.elapsed());
        result
    }

    fn model_version(&self) -> &str {
        self.inner.model_version()
    }

    fn threshold(&self) -> f32 {
        self.inner.threshold()
    }
}

/// The whole `/metrics` page.
pub fn render(status: &DeviceStatus, frames: u64, captures_kept: u64, m: &ApiMetrics) -> String {
    let mut out = String::with_capacity(2048);
    let gauge = |out: &mut String, name: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
    let counter = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    };
    let _ = writeln!(out, "# HELP fdet_model_info The active model (value always 1).");
    let _ = writeln!(out, "# TYPE fdet_model_info gauge");
    let _ = writeln!(
        out,
        "fdet_model_info{{version=\"{}\",sha256=\"{}\",device=\"{}\"}} 1",
        escape(&status.model_version),
        escape(status.model_sha256.as_deref().unwrap_or("")),
        escape(&status.device_id),
    );
    let number = status.model_version_number as f64;
    gauge(&mut out, "fdet_model_version_number", "Version number of the active model.", number);
    gauge(
        &mut out,
        "fdet_fps",
        "Frames per second over the last status period.",
        status.fps.into(),
    );
    let ms = status.inference_ms;
    gauge(&mut out, "fdet_inference_ms", "Mean inference time over the last period.", ms.into());
    m.inference.render(&mut out, "fdet_inference_seconds");
    counter(&mut out, "fdet_frames_total", "Frames read since start.", frames);
    counter(&mut out, "fdet_captures_kept_total", "Captures stored since start.", captures_kept);
    let stored = status.captures_stored as f64;
    gauge(&mut out, "fdet_captures_stored", "Captures on the device now.", stored);
    let bytes = status.capture_bytes as f64;
    gauge(&mut out, "fdet_capture_bytes", "Bytes the captures use.", bytes);
    let waiting = status.last_seq.unwrap_or(0).saturating_sub(status.acked_seq) as f64;
    gauge(&mut out, "fdet_captures_unacked", "Captures the host has not acknowledged.", waiting);
    if let Some(free) = status.free_disk_bytes {
        gauge(&mut out, "fdet_disk_free_bytes", "Free bytes on the capture disk.", free as f64);
    }
    gauge(
        &mut out,
        "fdet_uptime_seconds",
        "Seconds since edge run started.",
        status.uptime_s as f64,
    );
    let failures = m.auth_failures.load(Ordering::Relaxed);
    counter(&mut out, "fdet_auth_failures_total", "Requests without a valid token.", failures);
    let accepted = m.models_accepted.load(Ordering::Relaxed);
    counter(&mut out, "fdet_models_accepted_total", "Pushed models adopted.", accepted);
    let refused = m.models_refused.load(Ordering::Relaxed);
    counter(&mut out, "fdet_models_refused_total", "Pushed models refused.", refused);
    out
}

/// Escapes a label value as the text format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(5));
        let mut out = String::new();
        h.render(&mut out, "x");
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
