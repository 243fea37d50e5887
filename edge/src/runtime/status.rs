//! Live state of `edge run`, shared with the HTTP API and the status LED.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::capture::SharedLog;
use crate::detector::Detector;

/// Whether frames are arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CameraState {
    /// The source has not delivered its first frame yet.
    Starting,
    /// Frames are arriving.
    Running,
    /// The source is gone (unplugged, no frames); retrying with backoff.
    Lost,
    /// A folder or file source has no more frames.
    Finished,
}

/// Whether new captures can be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureState {
    /// Captures are stored.
    Active,
    /// Free disk space is below the floor; detection goes on.
    PausedLowSpace,
    /// The disk is full; detection goes on, nothing stored was lost.
    DiskFull,
    /// Storing failed for another reason (see the log); retried later.
    Failing,
}

/// A snapshot of the runtime, cheap to clone and serialisable for `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuntimeStatus {
    /// Version of the model running now.
    pub model_version: String,
    /// The frame source, in words (device path and format, or folder).
    pub source: String,
    /// Camera state.
    pub camera: CameraState,
    /// Capture state.
    pub capture: CaptureState,
    /// Frames read since start.
    pub frames: u64,
    /// Frames per second over the last status period.
    pub fps: f32,
    /// Mean inference time over the last status period, ms.
    pub inference_ms: f32,
    /// Captures stored since start.
    pub captures_kept: u64,
    /// Captures now in the log.
    pub captures_stored: usize,
    /// Bytes the capture folder uses (images plus records).
    pub capture_bytes: u64,
    /// Highest durable sequence number, if any.
    pub last_seq: Option<u64>,
    /// Highest sequence number the host acknowledged.
    pub acked_seq: u64,
    /// Seconds since `edge run` started.
    pub uptime_s: u64,
}

impl RuntimeStatus {
    /// The state before the first frame.
    pub fn starting(model_version: &str, source: &str) -> Self {
        Self {
            model_version: model_version.into(),
            source: source.into(),
            camera: CameraState::Starting,
            capture: CaptureState::Active,
            frames: 0,
            fps: 0.0,
            inference_ms: 0.0,
            captures_kept: 0,
            captures_stored: 0,
            capture_bytes: 0,
            last_seq: None,
            acked_seq: 0,
            uptime_s: 0,
        }
    }
}

/// The runtime's status behind a lock; clones share it.
#[derive(Debug, Clone)]
pub struct StatusBoard(Arc<Mutex<RuntimeStatus>>);

impl StatusBoard {
    /// A board showing `initial`.
    pub fn new(initial: RuntimeStatus) -> Self {
        Self(Arc::new(Mutex::new(initial)))
    }

    /// A copy of the current status.
    pub fn snapshot(&self) -> RuntimeStatus {
        self.lock().clone()
    }

    /// Changes the status in place.
    pub fn update(&self, f: impl FnOnce(&mut RuntimeStatus)) {
        f(&mut self.lock());
    }

    fn lock(&self) -> MutexGuard<'_, RuntimeStatus> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A model waiting to replace the running one at the next frame.
pub type DetectorSlot = Arc<Mutex<Option<Box<dyn Detector>>>>;

/// Everything another part of `edge run` (the HTTP API) may use while frames run.
#[derive(Clone)]
pub struct RuntimeHandles {
    /// The capture log (read records and images, acknowledge).
    pub log: SharedLog,
    /// Live status.
    pub status: StatusBoard,
    /// Set to ask for a manual capture of the next frame.
    pub force_capture: Arc<AtomicBool>,
    /// Put a detector here to swap models between frames.
    pub next_detector: DetectorSlot,
    /// Set to stop the frame loop (SIGINT/SIGTERM set it too).
    pub shutdown: Arc<AtomicBool>,
}

impl RuntimeHandles {
    /// Asks for the next frame to be stored as a manual capture.
    #[cfg(test)]
    pub fn request_capture(&self) {
        self.force_capture.store(true, Ordering::SeqCst);
    }

    /// Queues a model to run from the next frame on.
    pub fn swap_detector(&self, detector: Box<dyn Detector>) {
        let mut slot = self.next_detector.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(detector);
    }

    /// Whether shutdown was asked for.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for RuntimeHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHandles").field("status", &self.status).finish_non_exhaustive()
    }
}
