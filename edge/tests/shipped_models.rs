//! The models committed under `models/`: both load with their manifests, the int8 form
//! answers like the fp32 one on the seed validation images (within 0.01 of mean IoU
//! against the labelled boxes, and the same face/no-face decisions nearly everywhere),
//! and the fp32 model, run by `edge detect`, meets the project's targets and scores what
//! its manifest says on the held-out seed images and on the 80 real photos.
//!
//! The seed data lives outside the repository (`../shared/data/seed`, or `$FDET_SEED`);
//! CI has it. Without it these tests fail with a message saying where they looked.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn seed_dir() -> PathBuf {
    let dir = std::env::var_os("FDET_SEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data/seed"));
    assert!(dir.join("Data").is_dir(), "seed data not found at {} (set FDET_SEED)", dir.display());
    dir
}

/// The shipped fp32 model, its int8 twin, and the fp32 manifest (the newest one).
fn shipped() -> (PathBuf, PathBuf, shared::ModelManifest) {
    let models = repo().join("models");
    let mut newest: Option<shared::ModelManifest> = None;
    for entry in std::fs::read_dir(&models).expect("models/ exists").flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "json") {
            let Ok(bytes) = std::fs::read(&p) else { continue };
            if let Ok(m) = shared::ModelManifest::from_json(&bytes) {
                let is_fp32 = m.precision == shared::manifest::Precision::Fp32;
                if is_fp32 && newest.as_ref().is_none_or(|n| m.version_number > n.version_number) {
                    newest = Some(m);
                }
            }
        }
    }
    let manifest = newest.expect("a fp32 manifest in models/");
    let fp32 = models.join(&manifest.file);
    let stem = fp32.file_stem().and_then(|s| s.to_str()).expect("name").to_string();
    let int8 = fp32.with_file_name(format!("{stem}.int8.onnx"));
    (fp32, int8, manifest)
}

#[derive(Debug, Deserialize)]
struct Label {
    image: String,
    bbox: [f32; 4],
    class: u8,
}

/// Runs `edge detect` on the validation images and returns (image file name, score, box).
fn detect_all(model: &Path, images: &Path) -> Vec<(String, f32, [f32; 4])> {
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        // Threshold 0 so that every line carries the box.
        .args(["detect", "--threads", "2", "--threshold", "0", "--model"])
        .arg(model)
        .arg(images)
        .env("RUST_LOG", "warn")
        .output()
        .expect("edge runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            let name = Path::new(v["image"].as_str().expect("image"))
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let score = v["score"].as_f64().expect("score") as f32;
            let b = &v["faces"][0]["bbox"];
            let bbox = std::array::from_fn(|i| b[i].as_f64().expect("box value") as f32);
            (name, score, bbox)
        })
        .collect()
}

/// The half of `Validation` that `host` holds out for the final figures: FNV-1a of the
/// file name is odd (`host/src/dataset.rs`, whose unit test pins the hash values).
fn in_seed_test(name: &str) -> bool {
    let hash = name
        .bytes()
        .fold(0xcbf29ce484222325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    hash % 2 == 1
}

/// The manifest's figure `key` agrees with the one measured here. tract and tch differ
/// by about 1e-5 per box value, hence the small tolerance.
fn assert_manifest_says(manifest: &shared::ModelManifest, key: &str, measured: f64) {
    let said = manifest.metrics.get(key).copied().unwrap_or(f64::NAN);
    assert!((said - measured).abs() < 0.002, "{key}: manifest says {said}, measured {measured}");
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    shared::BBox::from(a).iou(shared::BBox::from(b))
}

#[test]
fn int8_stays_within_a_hundredth_of_fp32_mean_iou_on_validation() {
    let (fp32, int8, manifest) = shipped();
    let seed = seed_dir();
    let images = seed.join("Data/Validation/Images");
    let labels_dir = seed.join("Data/Validation/Labels");
    let mut labels = std::collections::HashMap::new();
    for entry in std::fs::read_dir(&labels_dir).expect("labels").flatten() {
        let l: Label = serde_json::from_slice(&std::fs::read(entry.path()).expect("read"))
            .expect("label JSON");
        labels.insert(l.image.clone(), l);
    }

    let a = detect_all(&fp32, &images);
    let b = detect_all(&int8, &images);
    assert_eq!(a.len(), labels.len(), "one line per validation image");
    assert_eq!(a.len(), b.len());

    let (mut iou_a, mut iou_b, mut faces, mut agree, mut agreement_iou) = (0.0, 0.0, 0, 0, 0.0);
    for ((name, sa, ba), (name_b, sb, bb)) in a.iter().zip(&b) {
        assert_eq!(name, name_b);
        let label = &labels[name];
        agree += usize::from((*sa >= 0.5) == (*sb >= 0.5));
        if label.class == 1 {
            faces += 1;
            iou_a += iou(*ba, label.bbox);
            iou_b += iou(*bb, label.bbox);
            agreement_iou += iou(*ba, *bb);
        }
    }
    let n = faces as f32;
    let (iou_a, iou_b) = (iou_a / n, iou_b / n);
    eprintln!(
        "validation: {} images, {faces} faces; mean IoU fp32 {iou_a:.4}, int8 {iou_b:.4}; \
         int8 vs fp32 boxes {:.4}; decisions agree {agree}/{}",
        a.len(),
        agreement_iou / n,
        a.len()
    );
    assert!((iou_a - iou_b).abs() < 0.01, "fp32 {iou_a} vs int8 {iou_b}");
    assert!(agree as f32 >= 0.99 * a.len() as f32, "decisions agree on {agree} of {}", a.len());

    // The held-out half, fp32: the targets, and the manifest's figures.
    let (mut images, mut correct, mut faces, mut iou_sum) = (0, 0, 0, 0.0);
    for (name, score, bbox) in a.iter().filter(|(name, ..)| in_seed_test(name)) {
        let label = &labels[name];
        images += 1;
        correct += usize::from((*score >= 0.5) == (label.class == 1));
        if label.class == 1 {
            faces += 1;
            iou_sum += f64::from(iou(*bbox, label.bbox));
        }
    }
    let accuracy = correct as f64 / images as f64;
    let mean_iou = iou_sum / faces as f64;
    eprintln!("seed test: {images} images; accuracy {accuracy:.4}, mean IoU {mean_iou:.4}");
    assert!(accuracy >= 0.99 && mean_iou >= 0.80, "seed test {accuracy} / {mean_iou}");
    assert_manifest_says(&manifest, "seed_test.images", images as f64);
    assert_manifest_says(&manifest, "seed_test.accuracy", accuracy);
    assert_manifest_says(&manifest, "seed_test.mean_iou", mean_iou);
}

#[test]
fn fp32_finds_the_reviewers_faces_in_the_real_photos() {
    let (fp32, _, manifest) = shipped();
    let seed = seed_dir();
    let feedback = std::fs::read(seed.join("feedback/feedback_data.json")).expect("feedback");
    let records: Vec<serde_json::Value> = serde_json::from_slice(&feedback).expect("JSON");
    let found = detect_all(&fp32, &seed.join("rlhf/data"));
    let by_name: std::collections::HashMap<_, _> =
        found.iter().map(|(name, score, bbox)| (name.as_str(), (*score, *bbox))).collect();

    let (mut iou_sum, mut as_face) = (0.0, 0);
    for record in &records {
        // The records hold the reviewer's Windows path: the file name is what resolves.
        let path = record["image_path"].as_str().expect("image_path").replace('\\', "/");
        let name = path.rsplit('/').next().expect("file name");
        let human = &record["human_correction"];
        let human: [f32; 4] = std::array::from_fn(|i| human[i].as_f64().expect("box") as f32);
        let (score, bbox) = by_name[name];
        iou_sum += f64::from(iou(bbox, human));
        as_face += usize::from(score >= 0.5);
    }
    let n = records.len() as f64;
    let (mean_iou, accuracy) = (iou_sum / n, as_face as f64 / n);
    eprintln!("real photos: {n} images; mean IoU {mean_iou:.4}, scored a face {accuracy:.3}");
    assert_eq!(records.len(), 80);
    assert!(mean_iou >= 0.55, "mean IoU on the real photos {mean_iou} (target 0.55)");
    assert_manifest_says(&manifest, "real_photos.mean_iou", mean_iou);
    assert_manifest_says(&manifest, "real_photos.accuracy", accuracy);
}
