//! `host feedback import`: the old project's `feedback_data.json` into the store.
//!
//! Each record is checked on its own; one the store cannot use is listed with the reason
//! and the rest go in. A record already imported (same content) is skipped, so importing
//! the same file twice changes nothing.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::metadata::Orientation;
use image::{ImageDecoder, ImageReader};
use shared::BBox;

use super::OldRecord;
use crate::store::{ImportCounts, ImportedRecord, Store};

/// Arguments of `host feedback import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The old project's feedback_data.json.
    pub file: PathBuf,
    /// Folder holding the images, matched by file name. Default: `rlhf/data` next to the
    /// file's folder, then the file's own folder.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
}

/// A record that could not be imported.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Position in the file, from 0.
    pub index: usize,
    /// Its `image_path`, or `?` when unreadable.
    pub image_path: String,
    /// Why.
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportOutcome {
    /// Added and skipped counts.
    pub counts: ImportCounts,
    /// Records left out, with the reason.
    pub rejected: Vec<Rejected>,
}

/// Runs the command, printing one line per rejected record and a summary.
#[allow(clippy::print_stdout)] // The listing and summary are the command's output.
pub fn run(args: &ImportArgs, store: &mut Store) -> Result<()> {
    let outcome = import_file(store, &args.file, args.images.as_deref())?;
    for r in &outcome.rejected {
        println!("rejected record {} ({}): {}", r.index, r.image_path, r.reason);
    }
    let c = outcome.counts;
    println!(
        "{}: {} added, {} already in the store, {} rejected",
        args.file.display(),
        c.added,
        c.skipped,
        outcome.rejected.len()
    );
    if !outcome.rejected.is_empty() {
        bail!(
            "{} records were not imported (listed above); fix them and import again, the \
               others will be skipped",
            outcome.rejected.len()
        );
    }
    Ok(())
}

/// Imports `file`, resolving images against `images` or the default folders.
pub fn import_file(store: &mut Store, file: &Path, images: Option<&Path>) -> Result<ImportOutcome> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let values: Vec<serde_json::Value> = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a JSON array of feedback records", file.display()))?;
    let folders = image_folders(file, images);
    tracing::debug!(?folders, records = values.len(), "importing feedback");

    // Every accepted record holds its image bytes until the store writes them: fine for the
    // old project's files (80 photos, 17 MB), not for an import of many thousands.
    let mut records = Vec::new();
    let mut rejected = Vec::new();
    for (index, value) in values.into_iter().enumerate() {
        let image_path = value["image_path"].as_str().unwrap_or("?").to_owned();
        match prepare(value, &folders) {
            Ok(r) => records.push(r),
            Err(reason) => rejected.push(Rejected { index, image_path, reason }),
        }
    }
    let name = file.display().to_string();
    let sha = shared::manifest::sha256_hex(&bytes);
    let counts = store
        .import_records(&name, &sha, &records, rejected.len())
        .with_context(|| format!("storing the records of {name}"))?;
    tracing::info!(file = %name, added = counts.added, skipped = counts.skipped,
        rejected = rejected.len(), "feedback imported");
    Ok(ImportOutcome { counts, rejected })
}

fn image_folders(file: &Path, images: Option<&Path>) -> Vec<PathBuf> {
    if let Some(dir) = images {
        return vec![dir.to_path_buf()];
    }
    let here = file.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    if let Some(up) = here.parent() {
        out.push(up.join("rlhf").join("data"));
    }
    out.push(here.join("rlhf").join("data"));
    out.push(here.to_path_buf());
    out
}

/// Checks one record and reads its image; the error is the reason to list.
fn prepare(value: serde_json::Value, folders: &[PathBuf]) -> Result<ImportedRecord, String> {
    // The key is the record's content with keys sorted (serde_json's map is ordered).
    let key = shared::manifest::sha256_hex(value.to_string().as_bytes());
    let old: OldRecord = serde_json::from_value(value).map_err(|e| format!("bad record: {e}"))?;
    let rating = rating(old.rating)?;
    let p = &old.model_prediction;
    if !(0.0..=1.0).contains(&p.confidence) {
        return Err(format!("confidence {} is not a probability", p.confidence));
    }
    check_box("model_prediction.bbox", p.bbox)?;
    check_box("human_correction", old.human_correction)?;
    if crate::store::time::parse_iso(&old.timestamp).is_none() {
        return Err(format!("timestamp {:?} is not ISO 8601", old.timestamp));
    }
    let (path, image) = find_image(&old.image_path, folders)?;
    let (width, height) = displayed_size(&image).map_err(|e| format!("{}: {e}", path.display()))?;
    let [h, w] = old.image_size;
    if (w, h) != (width, height) {
        return Err(format!(
            "image_size [{h}, {w}] (height, width) does not match {} ({width}x{height})",
            path.display()
        ));
    }
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("jpg");
    Ok(ImportedRecord {
        image,
        extension: extension.to_ascii_lowercase(),
        width,
        height,
        model_version: old.model_name,
        model_score: p.confidence,
        model_face: p.has_face,
        model_box: p.bbox,
        correction: old.human_correction,
        rating,
        comment: old.comments,
        time: old.timestamp,
        source: old.image_path,
        key,
    })
}

fn rating(r: f64) -> Result<u8, String> {
    if r.fract() == 0.0 && (0.0..=5.0).contains(&r) {
        Ok(r as u8)
    } else {
        Err(format!("rating {r} is not a whole number from 0 to 5"))
    }
}

fn check_box(field: &str, b: Option<[f64; 4]>) -> Result<(), String> {
    let Some(b) = b else { return Ok(()) };
    let f = BBox::new(b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32);
    f.validate().map(|_| ()).map_err(|e| format!("{field}: {e}"))
}

/// The file named by the last component of `image_path` (`/` or `\` separated).
fn find_image(image_path: &str, folders: &[PathBuf]) -> Result<(PathBuf, Vec<u8>), String> {
    let name = image_path.rsplit(['/', '\\']).next().unwrap_or(image_path);
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("image_path {image_path:?} does not end in a file name"));
    }
    for dir in folders {
        let path = dir.join(name);
        if path.is_file() {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            return Ok((path, bytes));
        }
    }
    let tried: Vec<String> = folders.iter().map(|d| d.display().to_string()).collect();
    Err(format!("image {name} not found in {}; pass --images DIR", tried.join(", ")))
}

/// Width and height as shown, i.e. after the EXIF orientation: the old project measured
/// boxes on the rotated image (one of the 80 photos is stored sideways with orientation 6).
fn displayed_size(bytes: &[u8]) -> image::ImageResult<(u32, u32)> {
    let mut decoder = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?.into_decoder()?;
    let (w, h) = decoder.dimensions();
    Ok(match decoder.orientation()? {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => (h, w),
        _ => (w, h),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.
mod tests;
