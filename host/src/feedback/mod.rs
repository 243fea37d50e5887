//! `host feedback`: move the old project's feedback file in and out of the store, and
//! report what the feedback says about the model.

pub mod chart;
pub mod export;
pub mod import;
pub mod report;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::store::Store;

/// One record of the old project's `feedback_data.json`, field for field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OldRecord {
    /// Absolute path on the reviewer's machine (often Windows); only the file name counts.
    pub image_path: String,
    /// The model that made the prediction.
    pub model_name: String,
    /// What the model said.
    pub model_prediction: OldPrediction,
    /// The reviewer's box, normalised `[x1, y1, x2, y2]`; `null` means no face.
    pub human_correction: Option<[f64; 4]>,
    /// 0-5, written as a float.
    pub rating: f64,
    /// Free text.
    pub comments: String,
    /// Local time of the review, ISO 8601 without zone.
    pub timestamp: String,
    /// `[height, width]` in pixels (array-shape order), EXIF orientation applied.
    pub image_size: [u32; 2],
}

/// The model's prediction in an [`OldRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OldPrediction {
    /// Whether the score reached the old threshold.
    pub has_face: bool,
    /// The face probability.
    pub confidence: f64,
    /// The box; `null` when `has_face` is false.
    pub bbox: Option<[f64; 4]>,
}

/// `host feedback` and its subcommands.
#[derive(Debug, clap::Args)]
pub struct FeedbackArgs {
    #[command(subcommand)]
    command: FeedbackCommand,
}

#[derive(Debug, clap::Subcommand)]
enum FeedbackCommand {
    /// Import the old project's feedback_data.json into the store.
    Import(import::ImportArgs),
    /// Write every stored feedback row in the old project's JSON format.
    Export(export::ExportArgs),
    /// Summarise the feedback: ratings, IoU, detection errors, failure patterns.
    Report(report::ReportArgs),
}

/// Runs `host feedback ...` against the store in `data_dir`.
pub fn run(args: FeedbackArgs, data_dir: &Path) -> Result<()> {
    // Only an import may create the store: reading from a mistyped --data would
    // otherwise make an empty one there and report zeros.
    let reads_only = !matches!(args.command, FeedbackCommand::Import(_));
    if reads_only && !data_dir.join(crate::store::DB_FILE).is_file() {
        anyhow::bail!(
            "{}: no feedback store here (wrong --data? `host feedback import` or `host sync` \
             creates one)",
            data_dir.display()
        );
    }
    let mut store = open_store(data_dir)?;
    match args.command {
        FeedbackCommand::Import(a) => {
            import::run(&a, &mut store)?;
            keep_criteria(&a.file, data_dir)
        }
        FeedbackCommand::Export(a) => export::run(&a, &store),
        FeedbackCommand::Report(a) => report::run(&a, &store),
    }
}

/// The rating scale file the review page shows, inside the data folder.
pub fn criteria_path(data_dir: &Path) -> PathBuf {
    data_dir.join("criteria.txt")
}

/// Copies the `criteria.txt` that reviewers used (beside the imported file, as in the old
/// project's layout) into the data folder, so the review page shows the same scale.
fn keep_criteria(imported: &Path, data_dir: &Path) -> Result<()> {
    let beside = imported.with_file_name("criteria.txt");
    let Ok(bytes) = std::fs::read(&beside) else {
        return Ok(());
    };
    let kept = criteria_path(data_dir);
    if std::fs::read(&kept).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    write_file(&kept, &bytes)?;
    tracing::info!(from = %beside.display(), to = %kept.display(), "rating scale kept for review");
    Ok(())
}

/// Opens the store, naming the folder when that fails.
pub fn open_store(data_dir: &Path) -> Result<Store> {
    Store::open(data_dir)
        .with_context(|| format!("opening the feedback store in {}", data_dir.display()))
}

/// Where the temporary file for an atomic write of `path` goes.
fn temp_beside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_beside(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
