use std::collections::BTreeMap;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use shared::manifest::{sha256_hex, InputSpec, Precision, TrainingInfo};
use shared::{BBox, Detection};

use super::*;
use crate::detector::DetectError;

/// A stand-in model: its "ONNX file" is the text `score=<f>`, and it answers that score
/// on every frame. `fail` as the text makes it unloadable.
struct Fixed {
    version: String,
    score: f32,
}

impl Detector for Fixed {
    fn detect(&mut self, _frame: &RgbImage) -> Result<Detection, DetectError> {
        Ok(Detection { score: self.score, bbox: BBox::new(0.1, 0.1, 0.5, 0.5) })
    }
    fn model_version(&self) -> &str {
        &self.version
    }
    fn threshold(&self) -> f32 {
        0.5
    }
}

fn fake_loader() -> ModelLoader {
    Arc::new(|manifest_path: &Path| {
        let m = ModelManifest::from_json(&fs::read(manifest_path).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let bytes = fs::read(manifest_path.with_file_name(&m.file)).map_err(|e| e.to_string())?;
        m.verify_model(&bytes).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&bytes);
        let score = text
            .strip_prefix("score=")
            .and_then(|s| s.trim().parse::<f32>().ok())
            .ok_or_else(|| format!("not a stand-in model: {text:?}"))?;
        Ok(Box::new(Fixed { version: m.version, score }) as Box<dyn Detector>)
    })
}

fn manifest(onnx: &[u8], n: u64) -> ModelManifest {
    ModelManifest {
        version: format!("v{n}"),
        version_number: n,
        file: format!("face-{n}.onnx"),
        sha256: sha256_hex(onnx),
        precision: Precision::Fp32,
        input: InputSpec::default(),
        threshold: 0.5,
        training: TrainingInfo::default(),
        metrics: BTreeMap::new(),
        created: "2026-12-03T00:00:00Z".into(),
    }
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

fn bundle_with(model: &str, n: u64, key: &SigningKey) -> Vec<u8> {
    let onnx = model.as_bytes().to_vec();
    Bundle::sign(manifest(&onnx, n).to_json(), onnx, key).unwrap().to_bytes()
}

fn bundle(model: &str, n: u64) -> Vec<u8> {
    bundle_with(model, n, &key())
}

fn open(dir: &Path) -> ModelStore {
    ModelStore::open(dir, fake_loader(), vec![key().verifying_key()], SelfTestConfig::default())
        .unwrap()
}

/// A store whose active model is version 1 answering `score`, adopted from outside.
fn store_with_v1(dir: &Path, score: &str) -> ModelStore {
    let outside = dir.join("outside");
    fs::create_dir_all(&outside).unwrap();
    let onnx = format!("score={score}");
    let m = manifest(onnx.as_bytes(), 1);
    fs::write(outside.join(&m.file), &onnx).unwrap();
    fs::write(outside.join("face-1.json"), m.to_json()).unwrap();
    let mut store = open(&dir.join("models"));
    store.adopt(&outside.join("face-1.json")).unwrap();
    store
}

/// Every file under `dir`, with its bytes: "nothing changed on disk" is checked with it.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn frames() -> Vec<RgbImage> {
    vec![RgbImage::new(8, 8); 5]
}

#[test]
fn install_then_rollback() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = store_with_v1(tmp.path(), "0.8");
    let swap = store.install(&bundle("score=0.9", 2), &frames()).unwrap();
    assert_eq!(swap.active.manifest.version_number, 2);
    assert_eq!(swap.replaced.unwrap().manifest.version_number, 1);
    assert_eq!(swap.detector.model_version(), "v2");

    // Reopening finds the same state: version 2 active, 1 kept for rollback.
    let mut store = open(&tmp.path().join("models"));
    assert_eq!(store.active().unwrap().unwrap().manifest.version_number, 2);
    assert_eq!(store.previous().unwrap().unwrap().manifest.version_number, 1);

    let back = store.rollback().unwrap();
    assert_eq!(back.active.manifest.version_number, 1);
    assert_eq!(back.detector.model_version(), "v1");
    assert!(store.previous().unwrap().is_none());
    assert!(matches!(store.rollback(), Err(ModelStoreError::NoPrevious)));
    // The rolled-back slot is gone; only version 1 remains.
    assert_eq!(fs::read_dir(tmp.path().join("models/slots")).unwrap().count(), 1);
}

#[test]
fn refusals_leave_the_disk_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = store_with_v1(tmp.path(), "0.8");
    store.install(&bundle("score=0.9", 5), &frames()).unwrap();
    let before = snapshot(&tmp.path().join("models"));

    let stranger = SigningKey::from_bytes(&[3; 32]);
    let mut corrupt = bundle("score=0.9", 6);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let mut bad_name = manifest(b"score=0.9", 7);
    bad_name.file = "../escape.onnx".into();
    let bad_name =
        Bundle::sign(bad_name.to_json(), b"score=0.9".to_vec(), &key()).unwrap().to_bytes();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (bundle_with("score=0.9", 6, &stranger), "does not trust"),
        (corrupt, "sha256"),
        (bundle("score=0.9", 5), "not newer"),
        (bundle("score=0.9", 4), "not newer"),
        (bundle("garbage", 6), "does not load"),
        (bundle("score=NaN", 6), "self-test"),
        (bundle("score=1.5", 6), "self-test"),
        (bundle("score=0.1", 6), "agrees with the active model on 0 of 5"),
        (bad_name, "plain `.onnx` file name"),
        (b"not a bundle".to_vec(), "not a model bundle"),
    ];
    for (bytes, reason) in cases {
        let err = store.install(&bytes, &frames()).unwrap_err();
        assert!(err.is_refusal(), "{err}");
        assert!(err.to_string().contains(reason), "wanted {reason:?} in: {err}");
        assert_eq!(snapshot(&tmp.path().join("models")), before, "after refusing: {err}");
    }
    assert_eq!(store.active().unwrap().unwrap().manifest.version_number, 5);
}

#[test]
fn self_test_needs_most_frames_to_agree() {
    let mut new = Fixed { version: "new".into(), score: 0.9 };
    let mut old = Fixed { version: "old".into(), score: 0.2 };
    let config = SelfTestConfig::default();
    let err = self_test(&mut new, Some(&mut old), &frames(), config).unwrap_err();
    assert!(err.contains("0 of 5"), "{err}");
    let mut same = Fixed { version: "old".into(), score: 0.7 };
    assert!(self_test(&mut new, Some(&mut same), &frames(), config).is_ok());
    // Without an active model only the outputs are checked.
    assert!(self_test(&mut new, None, &frames(), config).is_ok());
}

#[test]
fn reference_frames_are_kept_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(RgbImage::new(16, 16))
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    let kept = store.keep_reference_frames(&[jpeg.clone(), b"junk".to_vec(), jpeg]).unwrap();
    assert_eq!(kept, 2);
    assert_eq!(store.reference_frames().len(), 2);
    // A second call keeps the first set.
    assert_eq!(store.keep_reference_frames(&[Vec::new()]).unwrap(), 2);
}

#[test]
fn leftovers_of_an_interrupted_swap_are_removed_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("models");
    store_with_v1(tmp.path(), "0.8");
    fs::create_dir_all(dir.join("staging-1-2")).unwrap();
    fs::create_dir_all(dir.join("slots/v9-orphan")).unwrap();
    let store = open(&dir);
    assert!(!dir.join("staging-1-2").exists() && !dir.join("slots/v9-orphan").exists());
    assert_eq!(store.active().unwrap().unwrap().manifest.version_number, 1);
}

const CHILD_ENV: &str = "FDET_MODEL_STORE_SWAP_CHILD";

/// Not a test on its own: the child process of `kill_9_mid_swap_never_leaves_no_model`,
/// installing and rolling back models in the store named by the environment until killed.
#[test]
#[ignore = "child process of kill_9_mid_swap_never_leaves_no_model"]
fn swap_loop_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let mut store = open(Path::new(&dir));
    for round in 0.. {
        let active = store.active().unwrap().unwrap().manifest.version_number;
        if round % 3 == 2 && store.previous().unwrap().is_some() {
            store.rollback().unwrap();
        } else {
            store.install(&bundle("score=0.9", active + 1), &frames()).unwrap();
        }
    }
}

#[test]
fn kill_9_mid_swap_never_leaves_no_model() {
    let tmp = tempfile::tempdir().unwrap();
    store_with_v1(tmp.path(), "0.9");
    let dir = tmp.path().join("models");
    let exe = std::env::current_exe().unwrap();
    let mut versions = std::collections::BTreeSet::new();
    for i in 0..40u64 {
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "model_store::tests::swap_loop_child", "--ignored", "--nocapture"])
            .env(CHILD_ENV, &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Spread the kills over the first few hundred milliseconds of swapping.
        std::thread::sleep(Duration::from_millis(20 + (i * 37) % 300));
        child.kill().unwrap();
        child.wait().unwrap();

        let store = open(&dir);
        let active = store.active().unwrap().expect("an active model after a kill");
        let mut detector = (fake_loader())(&active.manifest_path()).expect("active model loads");
        assert!(detector.detect(&RgbImage::new(2, 2)).is_ok());
        if let Some(previous) = store.previous().unwrap() {
            (fake_loader())(&previous.manifest_path()).expect("previous model loads");
        }
        versions.insert(active.manifest.version_number);
    }
    // The kills landed at different points: several versions were seen active.
    assert!(versions.len() > 3, "{versions:?}");
}
