use std::fs;

use super::*;

/// The old project's 80 real feedback records (read-only, outside the repository).
pub(crate) const SEED_FEEDBACK: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/seed/feedback/feedback_data.json");

#[test]
fn the_seed_file_imports_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let first = import_file(&mut store, Path::new(SEED_FEEDBACK), None).unwrap();
    assert_eq!(first.rejected, vec![]);
    assert_eq!(first.counts, ImportCounts { added: 80, skipped: 0 });

    let again = import_file(&mut store, Path::new(SEED_FEEDBACK), None).unwrap();
    assert_eq!(again.counts, ImportCounts { added: 0, skipped: 80 });
    let rows = store.training_feedback().unwrap();
    assert_eq!(rows.len(), 80);
    assert_eq!(store.export_rows().unwrap().len(), 80);

    // 97.jpg is stored 2096x1725 with EXIF orientation 6; the record says [2096, 1725] as
    // [height, width], which is the rotated size.
    assert!(rows.iter().all(|r| r.image_path.is_file()));
    let rotated = store
        .queue(&Default::default())
        .unwrap()
        .into_iter()
        .find(|q| q.capture.source.ends_with("/97.jpg"))
        .unwrap();
    assert_eq!((rotated.capture.width, rotated.capture.height), (1725, 2096));
    assert_eq!(rotated.capture.device, crate::store::IMPORT_DEVICE);
}

#[test]
fn unusable_records_are_listed_and_the_rest_go_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let text = fs::read_to_string(SEED_FEEDBACK).unwrap();
    let mut values: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    values.truncate(6);
    values[1]["rating"] = 7.0.into();
    values[2]["image_path"] = "C:\\photos\\missing.jpg".into();
    values[3]["human_correction"] = serde_json::json!([0.6, 0.1, 0.5, 0.9]);
    values[4]["image_size"] = serde_json::json!([10, 20]);
    values[5]["model_prediction"] = serde_json::json!({"has_face": true});
    let file = dir.path().join("feedback").join("feedback_data.json");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, serde_json::to_vec(&values).unwrap()).unwrap();

    let images = Path::new(SEED_FEEDBACK).parent().unwrap().join("../rlhf/data");
    let out = import_file(&mut store, &file, Some(&images)).unwrap();
    assert_eq!(out.counts.added, 1);
    let reasons: Vec<(usize, &str)> =
        out.rejected.iter().map(|r| (r.index, r.reason.as_str())).collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert!(reasons[0].1.contains("rating 7"), "{reasons:?}");
    assert!(reasons[1].1.contains("missing.jpg not found"), "{reasons:?}");
    assert!(reasons[2].1.contains("human_correction"), "{reasons:?}");
    assert!(reasons[3].1.contains("image_size [10, 20]"), "{reasons:?}");
    assert!(reasons[4].1.contains("bad record"), "{reasons:?}");

    // Without --images the default folders beside the file do not hold the photos.
    let out = import_file(&mut store, &file, None).unwrap();
    assert!(out.rejected.iter().any(|r| r.reason.contains("pass --images DIR")));
}
