use std::path::Path;

use shared::BBox;

use super::*;
use crate::feedback::import::import_file;

const SEED_FEEDBACK: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/seed/feedback/feedback_data.json");

fn close(a: Option<f64>, b: f64, tol: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < tol)
}

/// Reference figures computed straight from feedback_data.json with python3 (f64 IoU, the
/// plain formula), not through this code:
///   python3 -c "import json; d=json.load(open('feedback_data.json')); ..."
/// count 80, mean rating 1.95, mean confidence 0.6028343459125608, 52 IoUs (has_face)
/// with mean 0.3312259593703785, bins 12/19/15/6 (none within 1e-4 of an edge),
/// has_face 52 of 80 (every photo shows a face, so 52 TP and 28 FN), 17 scores within
/// 0.2 of 0.5, 24 confident (>= 0.8 or <= 0.2) with rating <= 2, reviews per day
/// 2025-02-03: 57 (ratings sum 115), 2025-02-04: 23 (sum 41).
#[test]
fn the_seed_feedback_reproduces_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    import_file(&mut store, Path::new(SEED_FEEDBACK), None).unwrap();
    let r = compute(&store.training_feedback().unwrap());

    assert_eq!(r.count, 80);
    assert!(close(r.average_rating, 1.95, 1e-9), "{:?}", r.average_rating);
    assert!(close(r.average_confidence, 0.602_834_345_912_560_8, 1e-6));
    // The store's boxes are f32 for the IoU, hence the looser tolerance.
    assert!(close(r.average_iou, 0.331_225_959_370_378_5, 1e-5), "{:?}", r.average_iou);
    assert_eq!(r.iou_bins, IouBins { excellent: 12, good: 19, fair: 15, poor: 6 });
    assert_eq!((r.true_positives, r.false_positives), (52, 0));
    assert_eq!((r.true_negatives, r.false_negatives), (0, 28));
    assert_eq!(r.precision, Some(1.0));
    assert!(close(r.recall, 0.65, 1e-12));
    assert!(close(r.f1, 2.0 * 0.65 / 1.65, 1e-12));
    let p = &r.failure_patterns;
    assert_eq!(p.false_negative.count, 28);
    assert_eq!(p.poor_box.count, 6);
    assert_eq!(p.low_confidence.count, 17);
    assert_eq!(p.confident_but_wrong.count, 24);
    let days: Vec<(&str, usize)> =
        r.rating_trend.iter().map(|t| (t.day.as_str(), t.count)).collect();
    assert_eq!(days, [("2025-02-03", 57), ("2025-02-04", 23)]);
    assert!((r.rating_trend[0].average_rating - 115.0 / 57.0).abs() < 1e-12);

    let json = serde_json::to_value(&r).unwrap();
    for key in [
        "count",
        "average_rating",
        "average_confidence",
        "average_iou",
        "iou_bins",
        "precision",
        "recall",
        "f1",
        "failure_patterns",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    assert!(text(&r).contains("TP 52  FP 0  TN 0  FN 28"), "{}", text(&r));
}

#[test]
fn no_face_verdicts_count_as_negatives() {
    let row = |id, model_face, correction: Option<BBox>| FeedbackRow {
        capture_id: CaptureId(id),
        image_path: "x.jpg".into(),
        width: 10,
        height: 10,
        device: "cam".into(),
        model_version: "v".into(),
        model_score: if model_face { 0.9 } else { 0.1 },
        model_face,
        model_box: Some(BBox::new(0.1, 0.1, 0.5, 0.5)),
        correction,
        rating: 3,
        comment: String::new(),
        reviewer: String::new(),
        time: "2026-12-03T10:00:00.000000".into(),
    };
    let face = Some(BBox::new(0.1, 0.1, 0.5, 0.5));
    let r = compute(&[row(1, true, None), row(2, false, None), row(3, true, face)]);
    assert_eq!((r.true_positives, r.false_positives, r.true_negatives), (1, 1, 1));
    assert_eq!(r.precision, Some(0.5));
    assert_eq!(r.recall, Some(1.0));
    assert_eq!(r.failure_patterns.false_positive.captures, vec![CaptureId(1)]);
    assert!(close(r.average_iou, 1.0, 1e-6));
    assert_eq!(compute(&[]).average_rating, None);
}
