//! `edge run`: read frames, detect, keep the uncertain ones, all day, unattended.
//!
//! The loop never stops for a bad frame, a failed inference, a lost camera or a full
//! disk: each is a logged state that the loop leaves again on its own. It stops on
//! SIGINT/SIGTERM (after flushing the capture log), at `--max-frames`/`--duration`, or
//! when a folder source without `repeat` runs out.

pub mod status;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rand::Rng;

use crate::capture::{self, CaptureDraft, CaptureLog, CapturePolicy, Decision, SharedLog};
use crate::config::EdgeConfig;
use crate::detector::Detector;
use crate::frame_source::{self, FrameSource, SourceError};
use crate::gpio::{Gpio, LedMode};
use status::{CameraState, CaptureState, RuntimeHandles, RuntimeStatus, StatusBoard};

/// Flags of `edge run`; each overrides the config file.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// TOML config file (see deploy/edge.example.toml); flags override its values.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Frame source: a V4L2 device (/dev/video0), a folder of images, or one image.
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Folder for the capture log and images.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// ONNX model or manifest; default: $FDET_MODEL, then the newest in ./models.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Frames per second: asked of the camera, the pace of folder and file sources
    /// (0 = as fast as the model goes).
    #[arg(long)]
    pub fps: Option<u32>,
    /// Stop after this many frames (tests, benchmarks).
    #[arg(long)]
    pub max_frames: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds between periodic status lines.
    #[arg(long)]
    pub status_interval: Option<u64>,
    /// The HTTP API's address and token (override the config's `[api]` table).
    #[command(flatten)]
    pub api: crate::api::ApiArgs,
}

impl RunArgs {
    /// The config file (or defaults) with the flags applied.
    pub fn resolve(&self) -> Result<EdgeConfig> {
        let mut config = match &self.config {
            Some(path) => EdgeConfig::load(path)?,
            None => EdgeConfig::default(),
        };
        if let Some(source) = &self.source {
            config.source.path = source.clone();
            config.source.kind = frame_source::SourceKind::Auto;
        }
        if let Some(data) = &self.data {
            config.storage.data_dir = data.clone();
        }
        if let Some(model) = &self.model {
            config.model.path = Some(model.clone());
        }
        if let Some(fps) = self.fps {
            config.source.fps = fps;
        }
        if let Some(s) = self.status_interval {
            config.status.interval_s = s;
        }
        self.api.apply(&mut config.api);
        config.validate()?;
        Ok(config)
    }

    fn limits(&self) -> Limits {
        Limits { max_frames: self.max_frames, duration: self.duration.map(Duration::from_secs_f64) }
    }
}

/// When the loop stops on its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// After this many frames read.
    pub max_frames: Option<u64>,
    /// After this long.
    pub duration: Option<Duration>,
}

/// What one run did, for the last log line and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Frames read and detected.
    pub frames: u64,
    /// Captures stored.
    pub captures: u64,
    /// Frames that did not decode.
    pub bad_frames: u64,
    /// Frames the model failed on.
    pub detect_errors: u64,
    /// Times the camera was lost.
    pub outages: u64,
    /// The source has no more frames (a folder played once).
    pub source_ended: bool,
}

/// `edge run`.
pub fn run(args: RunArgs) -> Result<()> {
    let config = args.resolve()?;
    let detector = load_detector(&config)?;
    let source = frame_source::open(&config.source)?;
    let mut runtime = Runtime::new(config.clone(), detector, source)?;
    let handles = runtime.handles();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while shutting down exits at once.
        signal_hook::flag::register_conditional_shutdown(signal, 130, handles.shutdown.clone())
            .context("installing the signal handler")?;
        signal_hook::flag::register(signal, handles.shutdown.clone())
            .context("installing the signal handler")?;
    }
    let services = start_services(&config, handles.clone())?;
    let summary = runtime.run(args.limits())?;
    if summary.source_ended && !services.is_empty() {
        // A folder played once has nothing more to detect, but its captures still wait
        // for the host: keep the API up until told to stop.
        tracing::info!(
            captures = summary.captures,
            "source ended; the API keeps serving until SIGTERM"
        );
        while !handles.is_shutting_down() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    handles.shutdown.store(true, Ordering::SeqCst);
    for service in services {
        if service.join().is_err() {
            tracing::error!("a service thread panicked during shutdown");
        }
    }
    tracing::info!(
        frames = summary.frames,
        captures = summary.captures,
        bad_frames = summary.bad_frames,
        detect_errors = summary.detect_errors,
        "edge run stopped"
    );
    Ok(())
}

/// Starts what runs beside the frame loop (the HTTP API). Each returned thread must end
/// once `handles.shutdown` is set; `run` joins them after the loop has flushed the log.
fn start_services(config: &EdgeConfig, handles: RuntimeHandles) -> Result<Vec<JoinHandle<()>>> {
    Ok(crate::api::start(config, handles)?.into_iter().collect())
}

fn load_detector(config: &EdgeConfig) -> Result<Box<dyn Detector>> {
    use crate::onnx_model::{default_model, ModelOptions, TractDetector};
    let path = match &config.model.path {
        Some(p) => p.clone(),
        None => default_model().context("no model given (--model or [model] path)")?,
    };
    let options = ModelOptions { threads: config.model.threads };
    let detector = TractDetector::load(&path, options)
        .with_context(|| format!("loading the model {}", path.display()))?;
    Ok(Box::new(detector))
}

/// Doubling waits between attempts to reach a lost camera.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Waits from `min`, doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, next: min }
    }

    /// The wait before the next attempt; each call doubles the following one.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// Back to the shortest wait (the camera is back).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// How long a failing store is left alone before the next attempt.
const STORE_RETRY: Duration = Duration::from_secs(10);

/// The frame loop with everything it owns.
pub struct Runtime {
    config: EdgeConfig,
    detector: Box<dyn Detector>,
    source: Box<dyn FrameSource>,
    log: SharedLog,
    policy: CapturePolicy,
    gpio: Gpio,
    handles: RuntimeHandles,
    backoff: Backoff,
    start: Instant,
    /// The `--duration` deadline: a camera retry wait never outlasts it.
    stop_at: Option<Instant>,
    camera: CameraState,
    capture_state: CaptureState,
    next_store_try: Option<Instant>,
    summary: RunSummary,
    period: Period,
}

/// Counters of the current status period.
#[derive(Debug)]
struct Period {
    start: Instant,
    frames: u64,
    infer_total: Duration,
}

impl Runtime {
    /// Opens the capture log and GPIO and logs the start-up summary.
    pub fn new(
        config: EdgeConfig,
        detector: Box<dyn Detector>,
        source: Box<dyn FrameSource>,
    ) -> Result<Self> {
        let log_config = config.storage.log_config();
        let (log, recovery) = CaptureLog::open(log_config).with_context(|| {
            format!("opening the capture log in {}", config.storage.data_dir.display())
        })?;
        if let Some(cut) = &recovery.cut {
            tracing::warn!(
                offset = cut.offset,
                bytes = cut.bytes,
                problem = %cut.problem,
                saved_to = ?cut.saved_to,
                "capture log had a damaged tail; cut it off (complete records kept)"
            );
        }
        if !recovery.missing_images.is_empty() {
            tracing::warn!(seqs = ?recovery.missing_images, "records without images dropped");
        }
        let usage = log.usage();
        let board =
            StatusBoard::new(RuntimeStatus::starting(detector.model_version(), &source.describe()));
        let handles = RuntimeHandles {
            log: Arc::new(Mutex::new(log)),
            status: board,
            force_capture: Arc::new(AtomicBool::new(false)),
            next_detector: Arc::new(Mutex::new(None)),
            shutdown: Arc::new(AtomicBool::new(false)),
        };
        tracing::info!(
            model = detector.model_version(),
            threshold = detector.threshold(),
            source = %source.describe(),
            fps_target = config.source.fps,
            data = %config.storage.data_dir.display(),
            captures = usage.count,
            last_seq = ?usage.last_seq,
            orphans_removed = recovery.orphans_removed,
            "edge run starting"
        );
        let mut gpio = Gpio::open(&config.gpio);
        gpio.led.set_mode(LedMode::Running);
        let policy = CapturePolicy::new(config.capture.clone());
        let now = Instant::now();
        Ok(Self {
            log: handles.log.clone(),
            handles,
            policy,
            gpio,
            detector,
            source,
            config,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            start: now,
            stop_at: None,
            camera: CameraState::Starting,
            capture_state: CaptureState::Active,
            next_store_try: None,
            summary: RunSummary::default(),
            period: Period { start: now, frames: 0, infer_total: Duration::ZERO },
        })
    }

    /// Handles for the API and signal handlers.
    pub fn handles(&self) -> RuntimeHandles {
        self.handles.clone()
    }

    /// Runs frames until shutdown, a limit, or the end of a folder; then flushes the log.
    pub fn run(&mut self, limits: Limits) -> Result<RunSummary> {
        let pace = (!self.source.is_live() && self.config.source.fps > 0)
            .then(|| Duration::from_secs_f64(1.0 / f64::from(self.config.source.fps)));
        let mut next_due = Instant::now();
        self.stop_at = limits.duration.map(|d| self.start + d);
        while !self.handles.is_shutting_down() {
            if limits.max_frames.is_some_and(|m| self.summary.frames >= m)
                || self.stop_at.is_some_and(|stop| Instant::now() >= stop)
            {
                break;
            }
            if let Some(pace) = pace {
                self.sleep_until(next_due);
                let behind = Instant::now().checked_sub(pace).unwrap_or(next_due);
                next_due = next_due.max(behind) + pace;
            }
            if !self.step() {
                break;
            }
        }
        self.finish()
    }

    /// One frame; false when the source has ended.
    fn step(&mut self) -> bool {
        self.swap_detector_if_asked();
        let frame = match self.source.next_frame() {
            Ok(frame) => frame,
            Err(SourceError::Exhausted) => {
                tracing::info!(source = %self.source.describe(), "source has no more frames");
                self.set_camera(CameraState::Finished, None);
                self.summary.source_ended = true;
                return false;
            }
            // Known shortcoming: a source that yields only bad frames (a folder of corrupt
            // files, a camera sending garbage) leaves the camera state at "starting" and
            // the status figures still, with one warning. Counting a run of bad frames as
            // a lost camera would show it; not done yet.
            Err(SourceError::BadFrame { what, reason }) => {
                self.summary.bad_frames += 1;
                if self.summary.bad_frames == 1 {
                    tracing::warn!(%what, %reason, "bad frame skipped (further ones: debug)");
                } else {
                    tracing::debug!(%what, %reason, "bad frame skipped");
                }
                return true;
            }
            Err(e @ SourceError::Unavailable { .. }) => {
                self.camera_lost(&e.to_string());
                return true;
            }
        };
        self.set_camera(CameraState::Running, None);
        self.process(&frame);
        true
    }

    fn process(&mut self, frame: &frame_source::Frame) {
        let t0 = Instant::now();
        let result = self.detector.detect(&frame.image);
        let infer = t0.elapsed();
        self.summary.frames += 1;
        self.period.frames += 1;
        self.period.infer_total += infer;
        let now_ms = self.now_ms();
        match result {
            Ok(detection) => {
                tracing::trace!(
                    origin = %frame.origin,
                    score = detection.score,
                    ms = infer.as_secs_f32() * 1e3,
                    "frame"
                );
                let manual = self.handles.force_capture.swap(false, Ordering::SeqCst)
                    | self.gpio.button_pressed(now_ms);
                self.consider(frame, detection, manual, now_ms);
            }
            Err(e) => {
                self.summary.detect_errors += 1;
                if self.summary.detect_errors == 1 {
                    tracing::warn!(
                        origin = %frame.origin,
                        error = %e,
                        "inference failed; frame skipped (further ones: debug)"
                    );
                } else {
                    tracing::debug!(origin = %frame.origin, error = %e, "inference failed");
                }
            }
        }
        let ticked = self.lock_log().tick();
        if let Err(e) = ticked {
            self.store_failed(&e);
        }
        self.gpio.led.update(now_ms);
        self.handles.status.update(|s| s.frames = self.summary.frames);
        self.maybe_report();
    }

    fn consider(
        &mut self,
        frame: &frame_source::Frame,
        detection: shared::Detection,
        manual: bool,
        now_ms: u64,
    ) {
        let roll = rand::thread_rng().gen::<f64>();
        let decision = self
            .policy
            .decide(detection.score, manual, now_ms, roll, || capture::policy::dhash(&frame.image));
        let Decision::Keep { reason, hash } = decision else {
            tracing::trace!(?decision, "not kept");
            return;
        };
        if self.next_store_try.is_some_and(|t| Instant::now() < t) && !manual {
            return;
        }
        let storage = &self.config.storage;
        let encoded =
            match capture::encode_jpeg(&frame.image, storage.jpeg_quality, storage.max_side) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(
                        origin = %frame.origin,
                        error = %e,
                        "frame could not be encoded; not kept"
                    );
                    return;
                }
            };
        let draft = CaptureDraft {
            time_ms: wall_ms(),
            reason,
            detection,
            model_version: self.detector.model_version().to_string(),
            width: encoded.width,
            height: encoded.height,
        };
        let stored = self.lock_log().append(draft, &encoded.jpeg);
        match stored {
            Ok(record) => {
                self.policy.kept(hash, now_ms);
                self.summary.captures += 1;
                self.gpio.led.flash(now_ms);
                self.set_capture_state(CaptureState::Active, None);
                tracing::debug!(
                    seq = record.seq,
                    reason = reason.as_str(),
                    score = detection.score,
                    "capture kept"
                );
                self.refresh_usage();
            }
            Err(e) => self.store_failed(&e),
        }
    }

    fn store_failed(&mut self, e: &capture::CaptureLogError) {
        let state = match e {
            capture::CaptureLogError::LowSpace { .. } => CaptureState::PausedLowSpace,
            e if e.is_space() => CaptureState::DiskFull,
            _ => CaptureState::Failing,
        };
        self.next_store_try = Some(Instant::now() + STORE_RETRY);
        self.set_capture_state(state, Some(&e.to_string()));
    }

    fn set_capture_state(&mut self, state: CaptureState, reason: Option<&str>) {
        if state == self.capture_state {
            return;
        }
        let was = self.capture_state;
        self.capture_state = state;
        if state == CaptureState::Active {
            self.next_store_try = None;
            tracing::info!(was = ?was, "capture resumed");
        } else {
            tracing::warn!(
                state = ?state,
                reason = reason.unwrap_or(""),
                "capture paused; detection goes on"
            );
        }
        self.handles.status.update(|s| s.capture = state);
    }

    fn camera_lost(&mut self, reason: &str) {
        if self.camera != CameraState::Lost {
            self.summary.outages += 1;
        }
        self.set_camera(CameraState::Lost, Some(reason));
        self.gpio.led.set_mode(LedMode::CameraLost);
        let wait = self.backoff.next_wait();
        tracing::debug!(wait_ms = wait.as_millis() as u64, %reason, "camera retry");
        self.sleep_until(Instant::now() + wait);
    }

    fn set_camera(&mut self, state: CameraState, reason: Option<&str>) {
        if state == self.camera {
            return;
        }
        match (self.camera, state) {
            (_, CameraState::Lost) => {
                tracing::warn!(
                    source = %self.source.describe(),
                    reason = reason.unwrap_or(""),
                    "camera lost; retrying with backoff"
                );
            }
            (CameraState::Lost, CameraState::Running) => {
                tracing::info!(source = %self.source.describe(), "camera back");
                self.backoff.reset();
                self.gpio.led.set_mode(LedMode::Running);
            }
            (CameraState::Starting, CameraState::Running) => {
                tracing::info!(source = %self.source.describe(), "first frame received");
            }
            _ => {}
        }
        self.camera = state;
        self.handles.status.update(|s| s.camera = state);
    }

    fn swap_detector_if_asked(&mut self) {
        let next = match self.handles.next_detector.try_lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        if let Some(detector) = next {
            tracing::info!(
                from = self.detector.model_version(),
                to = detector.model_version(),
                "model swapped"
            );
            self.detector = detector;
            let version = self.detector.model_version().to_string();
            self.handles.status.update(|s| s.model_version = version);
        }
    }

    /// Sleeps in short slices so the LED keeps blinking and shutdown is not delayed.
    fn sleep_until(&mut self, deadline: Instant) {
        let deadline = self.stop_at.map_or(deadline, |stop| deadline.min(stop));
        loop {
            let now = Instant::now();
            if now >= deadline || self.handles.is_shutting_down() {
                return;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
            let now_ms = self.now_ms();
            self.gpio.led.update(now_ms);
        }
    }

    fn maybe_report(&mut self) {
        let interval = Duration::from_secs(self.config.status.interval_s.max(1));
        let elapsed = self.period.start.elapsed();
        if elapsed < interval {
            return;
        }
        let fps = self.period.frames as f32 / elapsed.as_secs_f32();
        let infer_ms = if self.period.frames == 0 {
            0.0
        } else {
            self.period.infer_total.as_secs_f32() * 1e3 / self.period.frames as f32
        };
        let usage = self.lock_log().usage();
        tracing::info!(
            fps = format!("{fps:.1}"),
            inference_ms = format!("{infer_ms:.1}"),
            captures_kept = self.summary.captures,
            stored = usage.count,
            disk_mb = format!("{:.1}", usage.bytes as f64 / 1e6),
            acked = usage.acked_seq,
            camera = ?self.camera,
            capture = ?self.capture_state,
            "status"
        );
        self.handles.status.update(|s| {
            s.fps = fps;
            s.inference_ms = infer_ms;
        });
        self.refresh_usage();
        self.period = Period { start: Instant::now(), frames: 0, infer_total: Duration::ZERO };
    }

    fn refresh_usage(&mut self) {
        let usage = self.lock_log().usage();
        let kept = self.summary.captures;
        let uptime = self.start.elapsed().as_secs();
        self.handles.status.update(|s| {
            s.captures_kept = kept;
            s.captures_stored = usage.count;
            s.capture_bytes = usage.bytes;
            s.last_seq = usage.last_seq;
            s.acked_seq = usage.acked_seq;
            s.uptime_s = uptime;
        });
    }

    fn finish(&mut self) -> Result<RunSummary> {
        let synced = self.lock_log().sync();
        self.gpio.led.set_mode(LedMode::Off);
        self.gpio.led.update(self.now_ms());
        self.refresh_usage();
        synced.context("flushing the capture log at shutdown")?;
        Ok(self.summary)
    }

    fn lock_log(&self) -> std::sync::MutexGuard<'_, CaptureLog> {
        // The log's own state stays consistent across a panic elsewhere (every change
        // is written to disk before memory), so a poisoned lock is still usable.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests;
