//! The frame loop with a stand-in detector and scripted sources.

use std::collections::VecDeque;

use image::RgbImage;
use shared::{BBox, CaptureReason, Detection};

use super::*;
use crate::capture::LogView;
use crate::detector::DetectError;
use crate::frame_source::Frame;

/// Answers a fixed list of scores in turn (repeating the last), or fails on NaN.
struct ScriptedDetector {
    scores: VecDeque<f32>,
    version: &'static str,
}

impl Detector for ScriptedDetector {
    fn detect(&mut self, _frame: &RgbImage) -> Result<Detection, DetectError> {
        let score = if self.scores.len() > 1 {
            self.scores.pop_front().unwrap_or(0.5)
        } else {
            self.scores.front().copied().unwrap_or(0.5)
        };
        if score.is_nan() {
            return Err(DetectError::BadOutput {
                model: self.version.into(),
                reason: "NaN".into(),
            });
        }
        Ok(Detection { score, bbox: BBox::new(0.2, 0.2, 0.6, 0.7) })
    }

    fn model_version(&self) -> &str {
        self.version
    }

    fn threshold(&self) -> f32 {
        0.5
    }
}

fn detector(scores: &[f32], version: &'static str) -> Box<dyn Detector> {
    Box::new(ScriptedDetector { scores: scores.iter().copied().collect(), version })
}

/// What a scripted source does for one call.
#[derive(Clone)]
enum Event {
    Frame(u8),
    Lost,
    Bad,
}

/// Plays events in order, then ends.
struct ScriptedSource(VecDeque<Event>);

impl FrameSource for ScriptedSource {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        match self.0.pop_front() {
            None => Err(SourceError::Exhausted),
            Some(Event::Lost) => Err(SourceError::Unavailable {
                source_name: "/dev/video9".into(),
                reason: "unplugged".into(),
            }),
            Some(Event::Bad) => {
                Err(SourceError::BadFrame { what: "frame".into(), reason: "torn".into() })
            }
            Some(Event::Frame(seed)) => {
                Ok(Frame { image: scene(seed), origin: format!("s{seed}") })
            }
        }
    }

    fn describe(&self) -> String {
        "scripted".into()
    }

    fn is_live(&self) -> bool {
        true
    }
}

/// Frames that differ a lot from one seed to the next (so none is a near duplicate).
fn scene(seed: u8) -> RgbImage {
    RgbImage::from_fn(96, 64, |x, y| {
        let v = ((x * (u32::from(seed) + 3) + y * 7 * u32::from(seed)) % 256) as u8;
        image::Rgb([v, 255 - v, v / 2])
    })
}

fn config(dir: &std::path::Path) -> EdgeConfig {
    let mut c = EdgeConfig::default();
    c.storage.data_dir = dir.into();
    c.storage.fsync_interval_ms = 0;
    c.storage.min_free_bytes = 0;
    c.capture.max_per_minute = 1000;
    c.capture.confident_sample_rate = 0.0;
    c
}

fn runtime(dir: &std::path::Path, scores: &[f32], events: Vec<Event>) -> Runtime {
    let source = Box::new(ScriptedSource(events.into()));
    let mut rt = Runtime::new(config(dir), detector(scores, "m1"), source).unwrap();
    rt.backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(4));
    rt
}

fn frames(n: u8) -> Vec<Event> {
    (1..=n).map(Event::Frame).collect()
}

#[test]
fn uncertain_frames_are_stored_with_their_detection() {
    let dir = tempfile::tempdir().unwrap();
    let mut rt = runtime(dir.path(), &[0.5, 0.95, 0.4, 0.05, 0.69], frames(5));
    let summary = rt.run(Limits::default()).unwrap();
    assert_eq!((summary.frames, summary.captures), (5, 3));
    drop(rt);
    let view = LogView::read(dir.path()).unwrap();
    let scores: Vec<f32> = view.records.iter().map(|r| r.detection.score).collect();
    assert_eq!(scores, vec![0.5, 0.4, 0.69]);
    assert!(view
        .records
        .iter()
        .all(|r| r.reason == CaptureReason::Uncertain && r.model_version == "m1"));
    assert_eq!((view.records[0].width, view.records[0].height), (96, 64));
    assert!(view.verify().is_empty());
}

#[test]
fn lost_camera_bad_frames_and_failed_inference_do_not_stop_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    let events = vec![
        Event::Frame(1),
        Event::Lost,
        Event::Lost,
        Event::Lost,
        Event::Frame(2),
        Event::Bad,
        Event::Frame(3),
        Event::Lost,
        Event::Frame(4),
    ];
    let mut rt = runtime(dir.path(), &[0.9, f32::NAN, 0.9, 0.9], events);
    let summary = rt.run(Limits::default()).unwrap();
    assert_eq!(summary.frames, 4);
    assert_eq!(summary.outages, 2, "three failed retries are one outage");
    assert_eq!(summary.bad_frames, 1);
    assert_eq!(summary.detect_errors, 1);
    assert_eq!(rt.handles().status.snapshot().camera, CameraState::Finished);
}

#[test]
fn max_frames_and_shutdown_stop_the_loop_and_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut rt = runtime(dir.path(), &[0.5], frames(50));
    let summary = rt.run(Limits { max_frames: Some(7), duration: None }).unwrap();
    assert_eq!(summary.frames, 7);
    rt.handles().shutdown.store(true, Ordering::SeqCst);
    assert_eq!(rt.run(Limits::default()).unwrap().frames, 7, "shut down before any frame");
    let status = rt.handles().status.snapshot();
    assert_eq!(status.captures_kept, 7);
    assert_eq!(status.last_seq, Some(7));
}

#[test]
fn a_camera_retry_wait_ends_at_the_duration_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut rt = runtime(dir.path(), &[0.5], vec![Event::Lost; 4]);
    // A device whose camera has been gone a while waits 10 s and more between retries;
    // `--duration 0.2` must still end the run at 0.2 s, not after the next retry.
    rt.backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(30));
    let started = Instant::now();
    let limits = Limits { max_frames: None, duration: Some(Duration::from_millis(200)) };
    let summary = rt.run(limits).unwrap();
    assert_eq!((summary.frames, summary.outages), (0, 1));
    assert!(started.elapsed() < Duration::from_secs(5), "waited {:?}", started.elapsed());
}

#[test]
fn a_manual_request_keeps_a_confident_frame() {
    let dir = tempfile::tempdir().unwrap();
    let mut rt = runtime(dir.path(), &[0.99], frames(3));
    rt.handles().request_capture();
    let summary = rt.run(Limits::default()).unwrap();
    assert_eq!(summary.captures, 1);
    let log = rt.handles().log;
    let records = log.lock().unwrap().after(0, 10);
    assert_eq!(records[0].reason, CaptureReason::Manual);
}

#[test]
fn a_swapped_detector_runs_from_the_next_frame() {
    let dir = tempfile::tempdir().unwrap();
    let mut rt = runtime(dir.path(), &[0.99], frames(4));
    rt.run(Limits { max_frames: Some(2), duration: None }).unwrap();
    rt.handles().swap_detector(detector(&[0.5], "m2"));
    let summary = rt.run(Limits { max_frames: Some(4), duration: None }).unwrap();
    assert_eq!(summary.captures, 2, "the new model is unsure of both remaining frames");
    assert_eq!(rt.handles().status.snapshot().model_version, "m2");
    let records = rt.handles().log.lock().unwrap().after(0, 10);
    assert!(records.iter().all(|r| r.model_version == "m2"));
}

#[test]
fn low_disk_pauses_capture_but_not_detection() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.storage.min_free_bytes = u64::MAX;
    let source = Box::new(ScriptedSource(frames(5).into()));
    let mut rt = Runtime::new(c, detector(&[0.5], "m1"), source).unwrap();
    let summary = rt.run(Limits::default()).unwrap();
    assert_eq!((summary.frames, summary.captures), (5, 0));
    assert_eq!(rt.handles().status.snapshot().capture, CaptureState::PausedLowSpace);
}

#[test]
fn near_duplicate_frames_are_kept_once() {
    let dir = tempfile::tempdir().unwrap();
    let same = vec![Event::Frame(5); 6];
    let mut rt = runtime(dir.path(), &[0.5], same);
    assert_eq!(rt.run(Limits::default()).unwrap().captures, 1);
}

#[test]
fn backoff_doubles_to_its_cap_and_resets() {
    let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(2));
    let waits: Vec<u128> = (0..5).map(|_| b.next_wait().as_millis()).collect();
    assert_eq!(waits, vec![500, 1000, 2000, 2000, 2000]);
    b.reset();
    assert_eq!(b.next_wait().as_millis(), 500);
}

#[test]
fn flags_override_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(
        &file,
        "[source]\npath = \"/dev/video1\"\nfps = 10\n[storage]\ndata_dir = \"/x\"\n",
    )
    .unwrap();
    let args = RunArgs {
        config: Some(file),
        source: None,
        data: Some("/y".into()),
        model: None,
        fps: None,
        max_frames: None,
        duration: None,
        status_interval: None,
        api: Default::default(),
    };
    let c = args.resolve().unwrap();
    assert_eq!(c.source.path, PathBuf::from("/dev/video1"));
    assert_eq!(c.source.fps, 10);
    assert_eq!(c.storage.data_dir, PathBuf::from("/y"));
}
