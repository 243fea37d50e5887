//! The exported graph against the training model itself: a tch `Detector` with random
//! weights and perturbed BatchNorm statistics (so that folding is exercised) is saved as
//! a checkpoint, exported, and run by tract on the same input.

use std::time::UNIX_EPOCH;

use super::*;
use crate::model::{Detector, HeadConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const S: i64 = graph::INPUT_SIZE as i64;

/// A detector whose BatchNorm layers are not the identity, and whose output layers are
/// scaled so that the sigmoids sit in their sensitive range rather than at 0 or 1.
fn random_detector() -> (VarStore, Detector) {
    tch::manual_seed(7);
    let vs = VarStore::new(Device::Cpu);
    let model = Detector::new(&vs.root(), HeadConfig { dropout: 0.5 });
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            let shape = var.size();
            let u = || Tensor::rand(shape.as_slice(), (Kind::Float, Device::Cpu));
            if name.ends_with("running_var") {
                var.copy_(&(u() + 0.5));
            } else if name.ends_with("running_mean") {
                var.copy_(&((u() - 0.5) * 0.2));
            } else if var.dim() == 1 && name.ends_with(".weight") {
                // A BatchNorm scale (conv and dense weights have more dimensions).
                var.copy_(&(u() * 0.5 + 0.75));
            } else if name.ends_with(".bias") {
                var.copy_(&((u() - 0.5) * 0.2));
            }
            if name.ends_with("out.weight") {
                var.copy_(&(&var * 0.05));
            }
        }
    });
    (vs, model)
}

fn tch_outputs(model: &Detector, input: &Tensor) -> Vec<f32> {
    let logits = tch::no_grad(|| model.forward(input, false));
    let both = Tensor::cat(&[logits.score.sigmoid(), logits.bbox.sigmoid()], 1).view(-1);
    Vec::<f32>::try_from(&both).expect("float outputs")
}

fn input_tensor(seed: i64) -> (Tensor, Vec<f32>) {
    tch::manual_seed(seed);
    let t = Tensor::randn([1, 3, S, S], (Kind::Float, Device::Cpu));
    let v = Vec::<f32>::try_from(&t.view(-1)).expect("float input");
    (t, v)
}

fn export_to(dir: &Path, vs: &VarStore) -> (PathBuf, PathBuf) {
    let ck_path = dir.join("ck.safetensors");
    vs.save(&ck_path).expect("save checkpoint");
    let checkpoint = Checkpoint::load(&ck_path).expect("load checkpoint");
    let fp32 = dir.join("m.onnx");
    let int8 = dir.join("m.int8.onnx");
    std::fs::write(&fp32, onnx_bytes(&checkpoint, WeightForm::Fp32, &[]).expect("fp32"))
        .expect("write");
    let q = onnx_bytes(&checkpoint, WeightForm::Int8PerChannel, &[]).expect("int8");
    std::fs::write(&int8, q).expect("write");
    (fp32, int8)
}

#[test]
fn tract_on_the_exported_graph_equals_tch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vs, model) = random_detector();
    let (fp32, int8) = export_to(dir.path(), &vs);

    for seed in [1, 2] {
        let (t, v) = input_tensor(seed);
        let want = tch_outputs(&model, &t);
        // Outputs pinned at 0 or 1 would hide a wrong graph behind the sigmoid.
        assert!(want.iter().all(|p| (0.02..0.98).contains(p)), "saturated: {want:?}");
        let got = run_tract(&fp32, &v).expect("tract fp32");
        assert_eq!(got.len(), 5);
        let diff = got.iter().zip(&want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 1e-4, "fp32 tract {got:?} vs tch {want:?}: max diff {diff}");

        // Random weights spread each channel's range far wider than trained ones do, so
        // 8-bit rounding moves these outputs by about 0.02 (measured: 0.022 on seed 1).
        // A wrong scale or axis moves them by tenths; the shipped model's int8 accuracy
        // is checked on real images in edge/tests/shipped_models.rs.
        let got = run_tract(&int8, &v).expect("tract int8");
        let diff = got.iter().zip(&want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 0.05, "int8 tract {got:?} vs tch {want:?}: max diff {diff}");
    }
    let (a, b) = (std::fs::metadata(&fp32).expect("fp32"), std::fs::metadata(&int8).expect("i8"));
    assert!(a.len() > 3 * b.len(), "int8 file {} vs fp32 {}", b.len(), a.len());
}

#[test]
fn a_missing_or_misshapen_tensor_is_named() {
    let params: BTreeMap<String, Param> = graph::expected_parameters()
        .into_iter()
        .map(|(name, shape)| {
            let n = shape.iter().product();
            (name, Param { shape, data: vec![0.5; n] })
        })
        .collect();
    assert!(
        onnx_bytes(&Checkpoint::from_params("full", params.clone()), WeightForm::Fp32, &[]).is_ok()
    );

    let mut missing = params.clone();
    missing.remove("features.7.conv.1.1.running_var");
    let err = onnx_bytes(&Checkpoint::from_params("ck", missing), WeightForm::Fp32, &[])
        .expect_err("missing tensor");
    assert!(err.to_string().contains("features.7.conv.1.1.running_var"), "{err}");

    let mut wrong = params;
    wrong.insert("box.out.weight".into(), Param { shape: vec![2, 512], data: vec![0.0; 1024] });
    let err = onnx_bytes(&Checkpoint::from_params("ck", wrong), WeightForm::Fp32, &[])
        .expect_err("wrong shape");
    assert!(err.to_string().contains("box.out.weight") && err.to_string().contains("[4, 512]"));
}

#[test]
fn a_file_that_is_not_safetensors_names_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.safetensors");
    std::fs::write(&path, b"not a checkpoint").expect("write");
    let err = Checkpoint::load(&path).expect_err("garbage");
    assert!(err.to_string().contains("broken.safetensors"), "{err}");
}

#[test]
fn export_command_writes_models_and_manifests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vs, _) = random_detector();
    let ck = dir.path().join("best.safetensors");
    vs.save(&ck).expect("save");
    let metrics = dir.path().join("metrics.json");
    std::fs::write(&metrics, br#"{"val": {"accuracy": 0.99, "mean_iou": 0.81}, "n": 120}"#)
        .expect("write");
    let out = dir.path().join("models");
    let args = |n: Option<u64>| ExportArgs {
        checkpoint: ck.clone(),
        out: out.clone(),
        name: "face".into(),
        version_number: n,
        version_name: None,
        threshold: 0.5,
        metrics: Some(metrics.clone()),
        training_data: "seed".into(),
        epochs: 3,
        notes: String::new(),
    };
    run(args(Some(4))).expect("export");
    for (file, precision) in [("face.onnx", Precision::Fp32), ("face.int8.onnx", Precision::Int8)] {
        let bytes = std::fs::read(out.join(file)).expect("model");
        let json = std::fs::read(manifest_path(&out.join(file))).expect("manifest file");
        let m = ModelManifest::from_json(&json).expect("manifest");
        m.verify_model(&bytes).expect("hash matches");
        assert_eq!((m.file.as_str(), m.precision, m.version_number), (file, precision, 4));
        assert_eq!(m.metrics["val.mean_iou"], 0.81);
        assert_eq!(m.metrics["n"], 120.0);
    }
    // Without a number, the next export is newer than anything already there.
    run(args(None)).expect("second export");
    let json = std::fs::read(out.join("face.json")).expect("manifest file");
    let m = ModelManifest::from_json(&json).expect("manifest");
    assert_eq!(m.version_number, 5);
}

#[test]
fn dates_are_rfc3339() {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(1_796_325_600);
    assert_eq!(rfc3339(t), "2026-12-03T19:20:00Z");
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
}
