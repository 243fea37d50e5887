//! Capture log figures: appends per second (fsync per record and per batch), recovery
//! scan time of a 100,000-record log, and the capture-write stage of the frame pipeline
//! (JPEG encode + image file + record) on real photos.
//!
//! `cargo bench -p edge --bench capture_log` prints a table. Set `FDET_BENCH_PHOTOS` to
//! a folder of JPEGs (default: the seed data's rlhf photos) and `FDET_BENCH_DIR` to put
//! the logs on another disk (default: the system temp folder).

// The capture modules are compiled into this bench from the edge sources (edge is a
// binary crate, so there is no library to link); parts the bench does not call are
// expected to be unused here.
#![allow(dead_code, unused_imports, missing_docs, clippy::print_stdout, clippy::unwrap_used)]

#[path = "../src/capture/mod.rs"]
mod capture;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capture::budget::Budget;
use capture::record_file::RecordFile;
use capture::{CaptureDraft, CaptureLog, LogConfig};
use shared::{BBox, CaptureReason, CaptureRecord, Detection};

fn record(seq: u64) -> CaptureRecord {
    CaptureRecord {
        seq,
        time_ms: 1_764_700_000_000 + seq as i64 * 250,
        reason: CaptureReason::Uncertain,
        detection: Detection { score: 0.5, bbox: BBox::new(0.21, 0.18, 0.64, 0.77) },
        model_version: "2026.12.03-1".into(),
        image: format!("{seq:012}.jpg"),
        image_sha256: format!("{seq:064x}"),
        width: 1280,
        height: 853,
    }
}

struct Row {
    what: String,
    n: u64,
    total: Duration,
    unit: &'static str,
}

impl Row {
    fn print(&self) {
        let per = self.total.as_secs_f64() / self.n as f64;
        println!(
            "| {:<52} | {:>7} | {:>9.3} s | {:>10.3} ms | {:>10.0} {}/s |",
            self.what,
            self.n,
            self.total.as_secs_f64(),
            per * 1e3,
            1.0 / per,
            self.unit
        );
    }
}

fn appends(dir: &Path, n: u64, batch: u64) -> Duration {
    let path = dir.join(format!("append-{batch}.log"));
    let _ = std::fs::remove_file(&path);
    let (mut f, _, _) = RecordFile::open(&path).unwrap();
    let t = Instant::now();
    for seq in 1..=n {
        f.append(&record(seq)).unwrap();
        if seq % batch == 0 {
            f.sync().unwrap();
        }
    }
    f.sync().unwrap();
    t.elapsed()
}

fn photos() -> Vec<PathBuf> {
    let dir = std::env::var_os("FDET_BENCH_PHOTOS")
        .map_or_else(|| PathBuf::from("/work/shared/data/seed/rlhf/data"), PathBuf::from);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")));
    files.sort();
    files.truncate(20);
    files
}

fn capture_write(dir: &Path, fsync_interval: Duration, rows: &mut Vec<Row>) {
    let frames: Vec<_> =
        photos().iter().filter_map(|p| shared::frame::load_image(p).ok()).collect();
    if frames.is_empty() {
        println!("(no photos found: skipping the capture-write stage; set FDET_BENCH_PHOTOS)");
        return;
    }
    let data = dir.join(format!("captures-{}", fsync_interval.as_millis()));
    let _ = std::fs::remove_dir_all(&data);
    let config = LogConfig {
        dir: data.clone(),
        fsync_interval,
        budget: Budget { max_bytes: 1 << 40, max_count: 1 << 20 },
        min_free_bytes: 0,
    };
    let (mut log, _) = CaptureLog::open(config).unwrap();
    let (mut encode, mut store) = (Duration::ZERO, Duration::ZERO);
    for frame in &frames {
        let t = Instant::now();
        let enc = capture::encode_jpeg(frame, 85, 1280).unwrap();
        encode += t.elapsed();
        let draft = CaptureDraft {
            time_ms: 0,
            reason: CaptureReason::Uncertain,
            detection: Detection { score: 0.5, bbox: BBox::new(0.2, 0.2, 0.6, 0.7) },
            model_version: "bench".into(),
            width: enc.width,
            height: enc.height,
        };
        let t = Instant::now();
        log.append(draft, &enc.jpeg).unwrap();
        store += t.elapsed();
    }
    let n = frames.len() as u64;
    let ms = fsync_interval.as_millis();
    if ms == 0 {
        rows.push(Row {
            what: "capture: JPEG encode q85, longer side 1280".into(),
            n,
            total: encode,
            unit: "frames",
        });
    }
    let what = format!("capture: image file + record (fsync_interval_ms {ms})");
    rows.push(Row { what, n, total: store, unit: "frames" });
    drop(log);
    let _ = std::fs::remove_dir_all(&data);
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` passes nothing and
    // gets a quick pass to prove the code runs.
    let quick = !std::env::args().any(|a| a == "--bench");
    let base = std::env::var_os("FDET_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = tempfile::tempdir_in(base).unwrap();
    let scale = if quick { 100 } else { 1 };
    let mut rows = Vec::new();

    let n = 2_000 / scale;
    rows.push(Row {
        what: "append, fsync every record".into(),
        n,
        total: appends(dir.path(), n, 1),
        unit: "records",
    });
    let n = 100_000 / scale;
    rows.push(Row {
        what: "append, fsync every 100 records".into(),
        n,
        total: appends(dir.path(), n, 100),
        unit: "records",
    });
    rows.push(Row {
        what: "append, one fsync at the end".into(),
        n,
        total: appends(dir.path(), n, u64::MAX),
        unit: "records",
    });

    // Recovery: open (scan + checksum + decode every frame) the 100,000-record file.
    let path = dir.path().join(format!("append-{}.log", u64::MAX));
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let t = Instant::now();
    let (_, records, cut) = RecordFile::open(&path).unwrap();
    let scan = t.elapsed();
    assert_eq!(records.len() as u64, n);
    assert!(cut.is_none());
    let what = format!("recovery scan on open ({:.1} MB log)", size as f64 / 1e6);
    rows.push(Row { what, n, total: scan, unit: "records" });

    if !quick {
        capture_write(dir.path(), Duration::ZERO, &mut rows);
        capture_write(dir.path(), Duration::from_millis(1000), &mut rows);
    }

    println!("\ncapture log on {} (1 thread)\n", dir.path().display());
    println!(
        "| {:<52} | {:>7} | {:>11} | {:>13} | {:>17} |",
        "what", "n", "total", "per item", "rate"
    );
    println!("|{:-<54}|{:-<9}|{:-<13}|{:-<15}|{:-<19}|", "", "", "", "", "");
    for row in &rows {
        row.print();
    }
}
