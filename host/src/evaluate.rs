//! `host evaluate`: the figures of a checkpoint on data training never saw.
//!
//! - the held-out `test` half of the seed's Validation split: face/no-face accuracy at
//!   0.5 and mean IoU over its face images;
//! - the 80 real photos with the reviewers' boxes: mean IoU (the old model: 0.32) and the
//!   share scored as a face.
//!
//! Images go through `shared::frame::load_image` and `prepare_input`, the edge's own
//! preprocessing, so these figures are what a device would see.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use shared::geometry::BBox;
use shared::manifest::InputSpec;
use tch::{nn, Device, Tensor};

use crate::dataset::{self, Part};
use crate::model::{Detector, HeadConfig};

/// Command-line arguments of `host evaluate`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvaluateArgs {
    /// The checkpoint (`runs/<run>/best.safetensors`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Dataset root holding `Data/`, `feedback/` and `rlhf/data/`.
    #[arg(long = "dataset", default_value = "../shared/data/seed")]
    pub data: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Use at most this many held-out seed images; 0 means all.
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// libtorch threads.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i32).range(1..))]
    pub threads: i32,
    /// Also write one CSV row per real photo (score, predicted and human box, IoU) here.
    #[arg(long)]
    pub details: Option<PathBuf>,
}

/// Figures on one evaluation set.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SetFigures {
    /// Images evaluated.
    pub images: usize,
    /// Face/no-face accuracy at a 0.5 score (1.0 on the real photos means all found).
    pub accuracy: f64,
    /// Mean IoU over the images that show a face.
    pub mean_iou: f64,
}

/// All figures of a checkpoint.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// The checkpoint evaluated.
    pub checkpoint: String,
    /// The held-out half of the seed's Validation split.
    pub seed_test: SetFigures,
    /// The real photos against the reviewers' boxes.
    pub real_photos: SetFigures,
}

/// Entry point of `host evaluate`.
#[allow(clippy::print_stdout)] // The report is the command's output.
pub fn run(args: EvaluateArgs) -> Result<()> {
    tch::set_num_threads(args.threads);
    let report = evaluate(&args.checkpoint, &args.data, args.limit, args.details.as_deref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("checkpoint {}", report.checkpoint);
        println!("{:<28} {:>7} {:>9} {:>9}", "set", "images", "accuracy", "mean IoU");
        for (name, f) in [
            ("seed test (held out)", report.seed_test),
            ("real photos (human boxes)", report.real_photos),
        ] {
            println!("{name:<28} {:>7} {:>9.4} {:>9.4}", f.images, f.accuracy, f.mean_iou);
        }
    }
    Ok(())
}

/// Computes the figures of `checkpoint` on the data under `data`; with `details`, writes
/// the per-photo predictions there as CSV.
pub fn evaluate(
    checkpoint: &Path,
    data: &Path,
    limit: usize,
    details: Option<&Path>,
) -> Result<Report> {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Detector::new(&vs.root(), HeadConfig { dropout: 0.0 });
    crate::model::load_checkpoint(&vs, checkpoint)?;
    let samples =
        dataset::load_seed(data).with_context(|| format!("reading {}", data.display()))?;
    let mut test: Vec<_> = samples.into_iter().filter(|s| s.part == Part::Test).collect();
    if limit > 0 {
        test.truncate(limit);
    }
    let paths: Vec<PathBuf> = test.iter().map(|s| s.path.clone()).collect();
    let out = predict(&net, &paths)?;
    let labels: Vec<(bool, BBox)> = test.iter().map(|s| (s.face, s.bbox)).collect();
    let seed_test = figures(&out, &labels);

    let photos = dataset::load_real_photos(
        &data.join("feedback").join("feedback_data.json"),
        &data.join("rlhf").join("data"),
    )?;
    let paths: Vec<PathBuf> = photos.iter().map(|p| p.path.clone()).collect();
    let out = predict(&net, &paths)?;
    let labels: Vec<(bool, BBox)> = photos.iter().map(|p| (true, p.bbox)).collect();
    let real_photos = figures(&out, &labels);
    if let Some(path) = details {
        let mut csv =
            String::from("image,score,x1,y1,x2,y2,human_x1,human_y1,human_x2,human_y2,iou\n");
        for ((score, b), p) in out.iter().zip(&photos) {
            let h = p.bbox;
            let name = p.path.file_name().unwrap_or_default().to_string_lossy();
            csv += &format!(
                "{name},{score:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4}\n",
                b.x1,
                b.y1,
                b.x2,
                b.y2,
                h.x1,
                h.y1,
                h.x2,
                h.y2,
                b.iou(h)
            );
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Report { checkpoint: checkpoint.display().to_string(), seed_test, real_photos })
}

/// Score and box of each image.
pub fn predict(net: &Detector, paths: &[PathBuf]) -> Result<Vec<(f32, BBox)>> {
    let spec = InputSpec::default();
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(16) {
        let inputs = prepare_parallel(chunk, &spec)?;
        let n = chunk.len() as i64;
        let flat: Vec<f32> = inputs.concat();
        let x = Tensor::from_slice(&flat).reshape([
            n,
            3,
            i64::from(spec.height),
            i64::from(spec.width),
        ]);
        let logits = tch::no_grad(|| net.forward(&x, false));
        let score = Vec::<f32>::try_from(logits.score.sigmoid().reshape([-1]))?;
        let boxes = Vec::<f32>::try_from(logits.bbox.sigmoid().reshape([-1]))?;
        for (i, s) in score.into_iter().enumerate() {
            let b = &boxes[4 * i..4 * i + 4];
            out.push((s, BBox::new(b[0], b[1], b[2], b[3])));
        }
    }
    Ok(out)
}

/// Decodes and prepares images on two threads (large photos take most of the time).
fn prepare_parallel(paths: &[PathBuf], spec: &InputSpec) -> Result<Vec<Vec<f32>>> {
    let half = paths.len().div_ceil(2);
    let work = |part: &[PathBuf]| -> Result<Vec<Vec<f32>>> {
        part.iter()
            .map(|p| {
                let frame = shared::frame::load_image(p)?;
                Ok(shared::frame::prepare_input(&frame, spec))
            })
            .collect()
    };
    let (a, b) = paths.split_at(half);
    let (ra, rb) = std::thread::scope(|s| {
        let h = s.spawn(|| work(b));
        let ra = work(a);
        (ra, h.join())
    });
    let mut out = ra?;
    out.extend(rb.map_err(|_| anyhow::anyhow!("image decoding thread panicked"))??);
    Ok(out)
}

/// Accuracy at 0.5 and mean IoU over face images.
pub fn figures(predictions: &[(f32, BBox)], labels: &[(bool, BBox)]) -> SetFigures {
    let mut correct = 0usize;
    let (mut iou, mut faces) = (0.0f64, 0usize);
    for ((score, pred), (face, truth)) in predictions.iter().zip(labels) {
        if (*score >= 0.5) == *face {
            correct += 1;
        }
        if *face {
            iou += f64::from(pred.iou(*truth));
            faces += 1;
        }
    }
    SetFigures {
        images: labels.len(),
        accuracy: correct as f64 / labels.len().max(1) as f64,
        mean_iou: iou / faces.max(1) as f64,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.
mod tests {
    use super::*;

    #[test]
    fn figures_count_faces_only_for_iou() {
        let b = BBox::new(0.0, 0.0, 0.5, 0.5);
        let preds = [(0.9, b), (0.2, b), (0.7, BBox::new(0.5, 0.5, 1.0, 1.0))];
        let labels = [(true, b), (false, b), (true, b)];
        let f = figures(&preds, &labels);
        assert_eq!(f.images, 3);
        assert!((f.accuracy - 1.0).abs() < 1e-9);
        assert!((f.mean_iou - 0.5).abs() < 1e-6, "{f:?}");
    }
}
