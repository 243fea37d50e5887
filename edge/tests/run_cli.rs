//! `edge run` and `edge captures` end to end, through the built binary, with the
//! stand-in ONNX detector (score = sigmoid of 4 x the mean normalised brightness, so
//! mid-grey frames are uncertain and bright ones confident).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use image::{Rgb, RgbImage};

fn edge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edge"));
    c.env("RUST_LOG", "info");
    c
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "edge failed: {}\n{stderr}", out.status);
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A frame with a pattern of its own (so no two are near duplicates) around `level`.
fn frame(seed: u32, level: u8) -> RgbImage {
    RgbImage::from_fn(160, 120, |x, y| {
        let wave = ((x * (seed + 2) / 7 + y * (seed * 3 + 1) / 5) % 40) as u8;
        let v = level.saturating_add(wave).saturating_sub(20);
        Rgb([v, v, v])
    })
}

struct Setup {
    _dir: tempfile::TempDir,
    frames: PathBuf,
    data: PathBuf,
    model: PathBuf,
    config: PathBuf,
}

/// Six mid-grey (uncertain) and six bright (confident) frames, interleaved.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for i in 0..12u32 {
        let level = if i % 2 == 0 { 116 } else { 250 };
        frame(i, level).save(frames.join(format!("{i:02}.png"))).unwrap();
    }
    let model = dir.path().join("stand-in.onnx");
    std::fs::write(&model, common::stand_in_detector(true)).unwrap();
    let config = dir.path().join("edge.toml");
    let text = "[capture]\nmax_per_minute = 100\nconfident_sample_rate = 0.0\n\
                [storage]\nmin_free_bytes = 0\nfsync_interval_ms = 0\n[source]\nrepeat = false\n";
    std::fs::write(&config, text).unwrap();
    let data = dir.path().join("data");
    Setup { frames, data, model, config, _dir: dir }
}

fn run_once(s: &Setup) -> Output {
    edge()
        .arg("run")
        .args(["--config".as_ref(), s.config.as_os_str()])
        .args(["--source".as_ref(), s.frames.as_os_str()])
        .args(["--data".as_ref(), s.data.as_os_str()])
        .args(["--model".as_ref(), s.model.as_os_str()])
        .args(["--fps", "0"])
        .output()
        .unwrap()
}

fn captures(data: &Path, extra: &[&str]) -> Output {
    edge().arg("captures").arg("--data").arg(data).args(extra).output().unwrap()
}

#[test]
fn run_keeps_uncertain_frames_and_captures_lists_and_verifies_them() {
    let s = setup();
    let out = run_once(&s);
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("edge run starting") && log.contains("edge run stopped"), "{log}");

    let listing = ok(&captures(&s.data, &["--json"]));
    let items: Vec<serde_json::Value> =
        listing.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(items.len(), 6, "{listing}");
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["seq"], i as u64 + 1);
        assert_eq!(item["reason"], "uncertain");
        let score = item["score"].as_f64().unwrap();
        assert!((0.3..=0.7).contains(&score), "{item}");
        assert_eq!(item["bbox"].as_array().unwrap().len(), 4);
        assert!(Path::new(item["image"].as_str().unwrap()).is_file());
        assert!(item["time"].as_str().unwrap().ends_with('Z'));
        assert!(item["model_version"].is_string());
    }
    let after = ok(&captures(&s.data, &["--json", "--after", "4"]));
    assert_eq!(after.lines().count(), 2);
    assert!(ok(&captures(&s.data, &[])).lines().count() == 7, "header plus six rows");
    assert!(ok(&captures(&s.data, &["verify"])).contains("ok, 6 captures"));

    // A second run continues the sequence.
    ok(&run_once(&s));
    let listing = ok(&captures(&s.data, &["--json", "--after", "6"]));
    let first: serde_json::Value = serde_json::from_str(listing.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 7);
}

#[test]
fn verify_fails_naming_a_damaged_image() {
    let s = setup();
    ok(&run_once(&s));
    let image = s.data.join("images").join(format!("{:012}.jpg", 3));
    std::fs::write(&image, b"not the stored frame").unwrap();
    let out = captures(&s.data, &["verify"]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("seq 3") && stdout.contains("sha256"), "{stdout}");
}

#[test]
fn captures_of_a_missing_folder_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let out = captures(&missing, &["verify"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing-here"));
}

#[test]
fn sigterm_stops_a_looping_run_cleanly() {
    let s = setup();
    let child = edge()
        .arg("run")
        .args(["--config".as_ref(), s.config.as_os_str()])
        .args(["--source".as_ref(), s.frames.join("00.png").as_os_str()])
        .args(["--data".as_ref(), s.data.as_os_str()])
        .args(["--model".as_ref(), s.model.as_os_str()])
        .args(["--fps", "20"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {log}", out.status);
    assert!(log.contains("edge run stopped"), "{log}");
    // The looped frame is uncertain: it was kept once, then skipped as a duplicate.
    assert!(ok(&captures(&s.data, &["verify"])).contains("ok, 1 captures"));
}
