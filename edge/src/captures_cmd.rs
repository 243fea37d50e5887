//! `edge captures`: list the capture log, or check it (`edge captures verify`).
//!
//! Both only read the data folder, so they are safe while `edge run` writes it.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use shared::CaptureRecord;

use crate::capture::LogView;

/// Flags of `edge captures`.
#[derive(Debug, Clone, clap::Args)]
pub struct CapturesArgs {
    /// What to do; without one, the captures are listed.
    #[command(subcommand)]
    pub action: Option<CapturesAction>,
    /// The data folder of `edge run` (its --data or [storage] data_dir).
    #[arg(long, global = true, default_value = "edge-data")]
    pub data: PathBuf,
    /// List only captures with a sequence number above N.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Sub-actions of `edge captures`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CapturesAction {
    /// Check every record and image; exits non-zero naming each problem.
    Verify,
}

/// One capture as `edge captures --json` prints it.
#[derive(Debug, Serialize)]
struct Listed<'a> {
    seq: u64,
    time: String,
    time_ms: i64,
    reason: &'static str,
    score: f32,
    bbox: [f32; 4],
    model_version: &'a str,
    image: String,
    acked: bool,
}

/// `edge captures`.
pub fn run(args: CapturesArgs) -> Result<()> {
    let view = LogView::read(&args.data)
        .with_context(|| format!("reading the capture log in {}", args.data.display()))?;
    match args.action {
        Some(CapturesAction::Verify) => verify(&view),
        None => list(&view, args.after, args.json),
    }
}

// The listing is the command's output, so it goes to stdout.
#[allow(clippy::print_stdout)]
fn list(view: &LogView, after: u64, json: bool) -> Result<()> {
    if let Some((good_len, problem)) = &view.tail {
        // The listing still shows every record before the damage; the warning goes to
        // stderr so that `--json` output stays parseable.
        eprintln!(
            "edge captures: warning: {}: the record file is damaged after byte {good_len} \
             ({problem}); records after it are not listed. `edge run` cuts the damage off \
             when it next opens the folder; `edge captures verify` reports everything.",
            view.dir.display()
        );
    }
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(
            out,
            "{:>8}  {:<24} {:<16} {:>5}  {:<27} {:<14} image",
            "seq", "time", "reason", "score", "bbox", "model"
        )?;
    }
    for r in view.records.iter().filter(|r| r.seq > after) {
        let item = listed(view, r);
        if json {
            writeln!(out, "{}", serde_json::to_string(&item)?)?;
        } else {
            let b = item.bbox;
            let bbox = format!("[{:.2},{:.2},{:.2},{:.2}]", b[0], b[1], b[2], b[3]);
            let ack = if item.acked { " (acked)" } else { "" };
            writeln!(
                out,
                "{:>8}  {:<24} {:<16} {:>5.3}  {:<27} {:<14} {}{ack}",
                item.seq, item.time, item.reason, item.score, bbox, item.model_version, item.image
            )?;
        }
    }
    Ok(())
}

fn listed<'a>(view: &LogView, r: &'a CaptureRecord) -> Listed<'a> {
    Listed {
        seq: r.seq,
        time: rfc3339_utc(r.time_ms),
        time_ms: r.time_ms,
        reason: r.reason.as_str(),
        score: r.detection.score,
        bbox: r.detection.bbox.to_array(),
        model_version: &r.model_version,
        image: view.image_path(r).display().to_string(),
        acked: r.seq <= view.acked,
    }
}

// The verdict is the command's output.
#[allow(clippy::print_stdout)]
fn verify(view: &LogView) -> Result<()> {
    let problems = view.verify();
    for p in &problems {
        println!("{}: {p}", view.dir.display());
    }
    if !problems.is_empty() {
        bail!("{} problem(s) in {}", problems.len(), view.dir.display());
    }
    let last = view.records.last().map_or(0, |r| r.seq);
    println!(
        "{}: ok, {} captures (last seq {last}, acked {}), every image present with its sha256",
        view.dir.display(),
        view.records.len(),
        view.acked
    );
    Ok(())
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_utc(ms: i64) -> String {
    // Capture times come from the device clock and are never before 1970.
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        // 2024-02-29 12:34:56.789 UTC (a leap day) = 1709210096789 ms.
        assert_eq!(rfc3339_utc(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
