use shared::Detection;

use super::*;

fn record(seq: u64, score: f32, image: &[u8]) -> CaptureRecord {
    CaptureRecord {
        seq,
        time_ms: 1_764_700_000_000 + seq as i64,
        reason: CaptureReason::Uncertain,
        detection: Detection { score, bbox: BBox::new(0.1, 0.2, 0.5, 0.6) },
        model_version: "2026.12.03-1".into(),
        image: format!("{seq:09}.jpg"),
        image_sha256: shared::manifest::sha256_hex(image),
        width: 640,
        height: 480,
    }
}

fn correction(rating: u8) -> Correction {
    Correction {
        face: Some(BBox::new(0.2, 0.2, 0.6, 0.7)),
        rating,
        comment: "forehead cut off".into(),
        reviewer: "tech".into(),
    }
}

#[test]
fn add_capture_is_idempotent_and_stores_the_image_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    assert_eq!(store.last_seq("cam-1").unwrap(), None);

    let a = store.add_capture("cam-1", &record(1, 0.4, b"frame-a"), b"frame-a").unwrap();
    let again = store.add_capture("cam-1", &record(1, 0.4, b"frame-a"), b"frame-a").unwrap();
    assert_eq!(a, again);
    // The same frame under another seq is a second capture but one image file.
    let b = store.add_capture("cam-1", &record(7, 0.6, b"frame-a"), b"frame-a").unwrap();
    assert_ne!(a, b);
    assert_eq!(store.last_seq("cam-1").unwrap(), Some(7));
    assert_eq!(store.last_seq("cam-2").unwrap(), None);

    let files: Vec<_> = walk(&dir.path().join(IMAGES_DIR));
    assert_eq!(files.len(), 1, "{files:?}");
    let c = store.capture(a).unwrap();
    assert_eq!(fs::read(&c.image_path).unwrap(), b"frame-a");
    assert_eq!(c.reason, Some(CaptureReason::Uncertain));
    assert!(!c.model_face);
    assert_eq!(c.source, "cam-1/000000001.jpg");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_wrong_image_hash_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let err = store.add_capture("cam-1", &record(1, 0.4, b"one"), b"other").unwrap_err();
    assert!(matches!(err, StoreError::ImageHash { .. }), "{err}");
    assert_eq!(store.last_seq("cam-1").unwrap(), None);
}

#[test]
fn feedback_is_validated_and_the_latest_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let id = store.add_capture("cam-1", &record(1, 0.4, b"f"), b"f").unwrap();

    let mut bad = correction(3);
    bad.face = Some(BBox::new(0.6, 0.2, 0.5, 0.7));
    assert!(matches!(store.save_feedback(id, &bad), Err(StoreError::Box(_))));
    assert!(matches!(store.save_feedback(id, &correction(6)), Err(StoreError::Rating(6))));
    let unknown = store.save_feedback(CaptureId(99), &correction(3));
    assert!(matches!(unknown, Err(StoreError::UnknownCapture(CaptureId(99)))));

    store.save_feedback(id, &correction(2)).unwrap();
    let no_face = Correction { face: None, ..correction(0) };
    store.save_feedback(id, &no_face).unwrap();
    let rows = store.training_feedback().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].rating, 0);
    assert_eq!(rows[0].correction, None);
    assert_eq!(rows[0].model_box, Some(BBox::new(0.1, 0.2, 0.5, 0.6)));
    assert!(rows[0].image_path.is_file());
    assert_eq!(store.export_rows().unwrap().len(), 2);
}

#[test]
fn queue_orders_by_score_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let hi = store.add_capture("cam-1", &record(1, 0.9, b"1"), b"1").unwrap();
    let lo = store.add_capture("cam-2", &record(2, 0.1, b"2"), b"2").unwrap();
    let mid = store.add_capture("cam-1", &record(3, 0.5, b"3"), b"3").unwrap();
    store.save_feedback(mid, &correction(4)).unwrap();

    let ids = |f: QueueFilter| -> Vec<CaptureId> {
        store.queue(&f).unwrap().into_iter().map(|q| q.capture.id).collect()
    };
    assert_eq!(ids(QueueFilter::default()), vec![lo, mid, hi]);
    assert_eq!(ids(QueueFilter { reviewed: Some(false), ..Default::default() }), vec![lo, hi]);
    assert_eq!(ids(QueueFilter { reviewed: Some(true), ..Default::default() }), vec![mid]);
    assert_eq!(ids(QueueFilter { rating: Some(4), ..Default::default() }), vec![mid]);
    assert_eq!(ids(QueueFilter { rating: Some(3), ..Default::default() }), vec![]);
    let cam1 = QueueFilter { device: Some("cam-1".into()), limit: Some(1), ..Default::default() };
    assert_eq!(ids(cam1), vec![mid]);
    let (devices, versions) = store.facets().unwrap();
    assert_eq!(devices, ["cam-1", "cam-2"]);
    assert_eq!(versions, ["2026.12.03-1"]);
}

#[test]
fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let mut store = Store::open(dir.path()).unwrap();
        let id = store.add_capture("cam-1", &record(5, 0.3, b"x"), b"x").unwrap();
        store.save_feedback(id, &correction(5)).unwrap();
        id
    };
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.last_seq("cam-1").unwrap(), Some(5));
    assert_eq!(store.training_feedback().unwrap()[0].capture_id, id);
}

#[test]
fn exported_pulled_captures_name_their_stored_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let id = store.add_capture("cam-1", &record(3, 0.4, b"pixels"), b"pixels").unwrap();
    store.save_feedback(id, &correction(1)).unwrap();

    let rows = store.export_rows().unwrap();
    let path = Path::new(&rows[0].source);
    assert!(path.starts_with(dir.path()), "{}", rows[0].source);
    assert_eq!(std::fs::read(path).unwrap(), b"pixels", "the path opens the stored frame");
}
