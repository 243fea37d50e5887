use super::*;
use image::{Rgb, RgbImage};
use shared::manifest::{sha256_hex, Precision, TrainingInfo};

#[path = "../../tests/common/mod.rs"]
mod common;
use common::{f32_init, i8_init, model, node, stand_in_detector, value};

fn optimised_run(proto: &tract_onnx::pb::ModelProto, shape: &[usize], x: Vec<f32>) -> Vec<f32> {
    let plan = tract_onnx::onnx()
        .model_for_proto_model(proto)
        .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .expect("graph loads");
    let input = tract_ndarray::ArrayD::from_shape_vec(shape, x).expect("shape");
    let out = plan.run(tvec!(Tensor::from(input).into())).expect("runs");
    out[0].to_plain_array_view::<f32>().expect("f32").iter().copied().collect()
}

/// The exported int8 models depend on tract folding per-axis DequantizeLinear on weight
/// initializers correctly, through the optimiser. These two graphs pin it down with
/// numbers worked out by hand.
#[test]
fn per_axis_dequantize_linear_on_dense_weights() {
    // W = q * scale per row: [[1, -2, 3] * 0.5, [100, 0, -50] * 0.01]
    //   = [[0.5, -1, 1.5], [1, 0, -0.5]];  y = x W^T + b with x = [1, 2, 3], b = [0.25, 0].
    let proto = model(
        vec![
            node("DequantizeLinear", &["wq", "ws", "wz"], "w", &[("axis", 0)]),
            node("Gemm", &["x", "w", "b"], "y", &[("transB", 1)]),
        ],
        vec![
            i8_init("wq", &[2, 3], &[1, -2, 3, 100, 0, -50]),
            f32_init("ws", &[2], &[0.5, 0.01]),
            i8_init("wz", &[2], &[0, 0]),
            f32_init("b", &[2], &[0.25, 0.0]),
        ],
        vec![value("x", &[1, 3])],
        vec![value("y", &[1, 2])],
    );
    let y = optimised_run(&proto, &[1, 3], vec![1.0, 2.0, 3.0]);
    assert_eq!(y.len(), 2);
    assert!((y[0] - 3.25).abs() < 1e-6, "{y:?}");
    assert!((y[1] + 0.5).abs() < 1e-6, "{y:?}");
}

#[test]
fn per_axis_dequantize_linear_on_conv_weights() {
    // Two 1x1 filters on one channel: q = [3, -4], scales [0.25, 2] -> weights 0.75 and -8.
    let proto = model(
        vec![
            node("DequantizeLinear", &["wq", "ws", "wz"], "w", &[("axis", 0)]),
            node("Conv", &["x", "w"], "y", &[]),
        ],
        vec![
            i8_init("wq", &[2, 1, 1, 1], &[3, -4]),
            f32_init("ws", &[2], &[0.25, 2.0]),
            i8_init("wz", &[2], &[0, 0]),
        ],
        vec![value("x", &[1, 1, 2, 2])],
        vec![value("y", &[1, 2, 2, 2])],
    );
    let y = optimised_run(&proto, &[1, 1, 2, 2], vec![1.0, -2.0, 0.5, 4.0]);
    let want = [0.75, -1.5, 0.375, 3.0, -8.0, 16.0, -4.0, -32.0];
    for (a, b) in y.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{y:?} vs {want:?}");
    }
}

fn frame(v: u8) -> RgbImage {
    RgbImage::from_pixel(320, 240, Rgb([v, v, v]))
}

#[test]
fn detects_with_the_stand_in_model() {
    let mut d =
        TractDetector::from_bytes(&stand_in_detector(true), "stand-in", ModelOptions::default())
            .expect("loads");
    let bright = d.detect(&frame(250)).expect("bright");
    let dark = d.detect(&frame(5)).expect("dark");
    assert!(bright.score > 0.9 && dark.score < 0.1, "{bright:?} {dark:?}");
    // bbox = sigmoid([-1, -1, 1, 1]) whatever the frame.
    let s = |v: f32| 1.0 / (1.0 + (-v).exp());
    assert!((bright.bbox.x1 - s(-1.0)).abs() < 1e-6 && (bright.bbox.y2 - s(1.0)).abs() < 1e-6);
}

#[test]
fn threads_do_not_change_the_answer() {
    let bytes = stand_in_detector(true);
    let mut one = TractDetector::from_bytes(&bytes, "m", ModelOptions { threads: 1 }).expect("1");
    let mut two = TractDetector::from_bytes(&bytes, "m", ModelOptions { threads: 2 }).expect("2");
    let f = frame(120);
    assert_eq!(one.detect(&f).expect("1 thread"), two.detect(&f).expect("2 threads"));
}

#[test]
fn out_of_range_outputs_are_rejected() {
    let mut d =
        TractDetector::from_bytes(&stand_in_detector(false), "raw", ModelOptions::default())
            .expect("loads");
    let err = d.detect(&frame(100)).expect_err("box values above 1");
    assert!(matches!(err, DetectError::BadOutput { .. }), "{err}");
    assert!(err.to_string().contains("not a probability"), "{err}");
}

#[test]
fn truncated_or_corrupt_files_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = stand_in_detector(true);
    let cut = dir.path().join("cut.onnx");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let err = TractDetector::load(&cut, ModelOptions::default()).expect_err("truncated");
    assert!(err.to_string().contains("cut.onnx"), "{err}");

    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"\x08\x07this is not protobuf at all \xff\xff\xff").expect("write");
    let err = TractDetector::load(&junk, ModelOptions::default()).expect_err("junk");
    assert!(err.to_string().contains("junk.onnx"), "{err}");

    let missing = dir.path().join("absent.onnx");
    let err = TractDetector::load(&missing, ModelOptions::default()).expect_err("missing");
    assert!(err.to_string().contains("absent.onnx"), "{err}");
}

fn manifest_for(bytes: &[u8], file: &str, number: u64, precision: Precision) -> ModelManifest {
    ModelManifest {
        version: format!("test-{number}"),
        version_number: number,
        file: file.into(),
        sha256: sha256_hex(bytes),
        precision,
        input: InputSpec::default(),
        threshold: 0.7,
        training: TrainingInfo::default(),
        metrics: Default::default(),
        created: "2026-12-03T00:00:00Z".into(),
    }
}

#[test]
fn the_manifest_beside_a_model_is_checked_and_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = stand_in_detector(true);
    let onnx = dir.path().join("face.onnx");
    std::fs::write(&onnx, &bytes).expect("write");
    let m = manifest_for(&bytes, "face.onnx", 3, Precision::Fp32);
    std::fs::write(dir.path().join("face.json"), m.to_json()).expect("write");

    // By the ONNX file or by the manifest: same model, the manifest's version and threshold.
    for path in [onnx.clone(), dir.path().join("face.json")] {
        let d = TractDetector::load(&path, ModelOptions::default()).expect("loads");
        assert_eq!((d.model_version(), d.threshold()), ("test-3", 0.7));
        assert_eq!(d.path(), onnx.as_path());
    }

    // One flipped byte in the model: the hash check refuses it and names the file.
    let mut changed = bytes.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(&onnx, &changed).expect("write");
    let err = TractDetector::load(&onnx, ModelOptions::default()).expect_err("hash mismatch");
    assert!(err.to_string().contains("face.onnx") && err.to_string().contains("sha256"), "{err}");
}

#[test]
fn the_newest_manifest_wins_and_fp32_breaks_ties() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(newest_manifest(dir.path()), None);
    let put = |name: &str, n, p| {
        let m = manifest_for(b"x", &format!("{name}.onnx"), n, p);
        std::fs::write(dir.path().join(format!("{name}.json")), m.to_json()).expect("write");
    };
    put("old", 1, Precision::Fp32);
    put("new.int8", 2, Precision::Int8);
    put("new", 2, Precision::Fp32);
    std::fs::write(dir.path().join("other.json"), b"{\"not\": \"a manifest\"}").expect("write");
    assert_eq!(newest_manifest(dir.path()), Some(dir.path().join("new.json")));
}
