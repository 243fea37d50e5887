//! `edge detect`: runs the detector on image files and folders and prints one JSON line
//! per image.
//!
//! A file that cannot be read or decoded gets an error line on stderr and the run goes on
//! to the next one; the exit status is non-zero at the end if any image failed, so a
//! script notices without losing the other results.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use shared::BBox;

use crate::detector::Detector;
use crate::onnx_model::{default_model, ModelOptions, TractDetector};

/// Arguments of `edge detect`.
#[derive(Debug, clap::Args)]
pub struct DetectArgs {
    /// ONNX model or its manifest; defaults to $FDET_MODEL, else the newest in models/.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Face score at or above which a face is reported; defaults to the manifest's.
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Threads for the model's matrix kernels.
    #[arg(long, default_value_t = 1, value_parser = crate::onnx_model::thread_count())]
    pub threads: usize,
    /// Image files (JPEG, PNG) or folders to search for them, recursively.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// One line of output.
#[derive(Debug, Serialize)]
struct Line<'a> {
    image: &'a str,
    width: u32,
    height: u32,
    score: f32,
    faces: Vec<Face>,
}

#[derive(Debug, Serialize)]
struct Face {
    score: f32,
    bbox: BBox,
}

/// Runs `edge detect`.
pub fn run(args: DetectArgs) -> Result<()> {
    let model_path = match args.model {
        Some(p) => p,
        None => default_model()?,
    };
    if let Some(t) = args.threshold.filter(|t| !(0.0..=1.0).contains(t)) {
        bail!("--threshold {t}: must lie in [0, 1]");
    }
    let mut detector = TractDetector::load(&model_path, ModelOptions { threads: args.threads })?;
    let threshold = args.threshold.unwrap_or(detector.threshold());

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let stderr = std::io::stderr();
    let (mut total, mut failed) = (0usize, 0usize);
    for image in collect_images(&args.paths, &mut failed) {
        total += 1;
        match detect_one(&mut detector, &image, threshold) {
            Ok(line) => writeln!(out, "{line}").context("cannot write to stdout")?,
            Err(err) => {
                failed += 1;
                // ripgrep style: path first, then why; the run goes on.
                let _ = writeln!(stderr.lock(), "edge detect: {err:#}");
            }
        }
    }
    out.flush().context("cannot write to stdout")?;
    if failed > 0 {
        bail!(
            "{failed} of {} inputs could not be processed (see the lines above)",
            total.max(failed)
        );
    }
    tracing::debug!(total, "detect finished");
    Ok(())
}

fn detect_one(detector: &mut TractDetector, path: &Path, threshold: f32) -> Result<String> {
    let frame = shared::frame::load_image(path)?;
    let detection = detector.detect(&frame).with_context(|| format!("{}", path.display()))?;
    tracing::trace!(image = %path.display(), score = detection.score, "detected");
    let faces = if detection.is_face(threshold) {
        vec![Face { score: detection.score, bbox: detection.bbox }]
    } else {
        Vec::new()
    };
    let image = path.display().to_string();
    let line = Line {
        image: &image,
        width: frame.width(),
        height: frame.height(),
        score: detection.score,
        faces,
    };
    Ok(serde_json::to_string(&line)?)
}

/// Whether a file name looks like an image this command reads.
pub fn is_image(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png"))
}

/// Files named directly are taken as they are; folders are searched recursively for
/// JPEG and PNG files, in name order. Paths that do not exist are reported and counted.
fn collect_images(paths: &[PathBuf], failed: &mut usize) -> Vec<PathBuf> {
    let mut images = Vec::new();
    for path in paths {
        if path.is_dir() {
            match images_in(path) {
                Ok(found) if found.is_empty() => {
                    *failed += 1;
                    let _ = writeln!(
                        std::io::stderr(),
                        "edge detect: {}: no JPEG or PNG files in this folder",
                        path.display()
                    );
                }
                Ok(found) => images.extend(found),
                Err(err) => {
                    *failed += 1;
                    let _ = writeln!(std::io::stderr(), "edge detect: {err:#}");
                }
            }
        } else {
            // A missing file fails at decode time with its own error line.
            images.push(path.clone());
        }
    }
    images
}

/// The JPEG and PNG files under `dir`, recursively, sorted.
pub fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).with_context(|| format!("{}: cannot list", d.display()))?;
        for entry in entries {
            let path = entry.with_context(|| format!("{}: cannot list", d.display()))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if is_image(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_searched_recursively_for_images_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("b");
        std::fs::create_dir(&sub).expect("mkdir");
        for f in ["a.JPG", "notes.txt", "b/c.png", "b/d.jpeg", "b/e.gif"] {
            std::fs::write(dir.path().join(f), b"x").expect("write");
        }
        let names: Vec<String> = images_in(dir.path())
            .expect("list")
            .iter()
            .map(|p| p.strip_prefix(dir.path()).expect("prefix").display().to_string())
            .collect();
        assert_eq!(names, ["a.JPG", "b/c.png", "b/d.jpeg"]);
    }

    #[test]
    fn a_missing_folder_entry_is_kept_for_its_own_error() {
        let mut failed = 0;
        let got = collect_images(&[PathBuf::from("/nonexistent/x.jpg")], &mut failed);
        assert_eq!(got.len(), 1);
        assert_eq!(failed, 0);
    }
}
