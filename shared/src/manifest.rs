//! Model manifests: the JSON file that travels beside every ONNX model.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// How a frame becomes the model's input: size, channel order and normalisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Input width in pixels.
    pub width: u32,
    /// Input height in pixels.
    pub height: u32,
    /// Per-channel mean subtracted after scaling to `[0, 1]`, RGB order.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by, RGB order.
    pub std: [f32; 3],
}

impl Default for InputSpec {
    /// 224x224 RGB with the ImageNet statistics the pretrained backbone was trained with.
    fn default() -> Self {
        Self { width: 224, height: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
    }
}

/// Numeric form of the weights in an ONNX file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// 32-bit float weights and activations.
    Fp32,
    /// 8-bit integer weights with per-channel scales (DequantizeLinear), float activations.
    Int8,
}

/// Everything a device needs to know about a model file before it runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// Human-readable version, e.g. `2026.12.03-1`.
    pub version: String,
    /// Strictly increasing number; a device refuses a model not newer than its own.
    pub version_number: u64,
    /// ONNX file name, relative to the manifest.
    pub file: String,
    /// SHA-256 of the ONNX file, lowercase hex.
    pub sha256: String,
    /// Weight precision of the file.
    pub precision: Precision,
    /// Input size and normalisation.
    pub input: InputSpec,
    /// Face score at or above which a frame counts as showing a face.
    pub threshold: f32,
    /// Where the training data came from and how much of it was used.
    pub training: TrainingInfo,
    /// Evaluation figures measured on data training never saw, by name.
    pub metrics: BTreeMap<String, f64>,
    /// Creation time, RFC 3339.
    pub created: String,
}

/// Provenance of a model's training.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    /// The data sets, in words (e.g. `seed Train split, 7,913 images`).
    pub data: String,
    /// Epochs run, summed over phases.
    pub epochs: u32,
    /// Free-form notes: phases, augmentation, parent model.
    #[serde(default)]
    pub notes: String,
}

/// Why a manifest was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The JSON did not parse as a manifest.
    #[error("manifest is not valid JSON of the expected shape: {0}")]
    Parse(#[from] serde_json::Error),
    /// The model file's hash differs from the one the manifest promises.
    #[error("model file {file} has sha256 {actual}, but the manifest says {expected}")]
    HashMismatch {
        /// The ONNX file name.
        file: String,
        /// The hash in the manifest.
        expected: String,
        /// The hash of the bytes at hand.
        actual: String,
    },
    /// The threshold is not a probability.
    #[error("manifest threshold {0} is not in (0, 1)")]
    Threshold(f32),
    /// The input spec cannot describe a usable model input.
    #[error("manifest input {0}")]
    Input(String),
}

/// The largest input side a manifest may ask for. The shipped models take 224; far larger
/// sides would make every frame's tensor gigabytes, so they are refused as corrupt.
pub const MAX_INPUT_SIDE: u32 = 4096;

impl InputSpec {
    /// Checks the size and the normalisation: a zero or huge side, or a standard
    /// deviation that is not above zero, would give garbage or exhaust memory. (JSON
    /// cannot carry NaN or infinity, so a parsed mean is always finite.)
    pub fn check(&self) -> Result<(), ManifestError> {
        for (name, side) in [("width", self.width), ("height", self.height)] {
            if side == 0 || side > MAX_INPUT_SIDE {
                return Err(ManifestError::Input(format!(
                    "{name} {side} is not in 1..={MAX_INPUT_SIDE}"
                )));
            }
        }
        if !self.std.iter().all(|s| *s > 0.0) {
            return Err(ManifestError::Input(format!("std {:?} must be above 0", self.std)));
        }
        Ok(())
    }
}

impl ModelManifest {
    /// Parses a manifest and checks the fields that do not need the model file.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: ModelManifest = serde_json::from_slice(bytes)?;
        if !(m.threshold > 0.0 && m.threshold < 1.0) {
            return Err(ManifestError::Threshold(m.threshold));
        }
        m.input.check()?;
        Ok(m)
    }

    /// Pretty JSON, the form written to disk.
    pub fn to_json(&self) -> Vec<u8> {
        // A manifest holds only strings, numbers and maps with string keys.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Checks that `model` is the file this manifest describes.
    pub fn verify_model(&self, model: &[u8]) -> Result<(), ManifestError> {
        let actual = sha256_hex(model);
        if actual != self.sha256 {
            return Err(ManifestError::HashMismatch {
                file: self.file.clone(),
                expected: self.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(model: &[u8]) -> ModelManifest {
        ModelManifest {
            version: "test-1".into(),
            version_number: 1,
            file: "model.onnx".into(),
            sha256: sha256_hex(model),
            precision: Precision::Int8,
            input: InputSpec::default(),
            threshold: 0.5,
            training: TrainingInfo::default(),
            metrics: BTreeMap::from([("val_mean_iou".into(), 0.8)]),
            created: "2026-12-03T00:00:00Z".into(),
        }
    }

    #[test]
    fn json_round_trip_and_hash_check() {
        let m = manifest(b"onnx bytes");
        let back = ModelManifest::from_json(&m.to_json()).unwrap();
        assert_eq!(back, m);
        assert!(back.verify_model(b"onnx bytes").is_ok());
        let err = back.verify_model(b"other bytes").unwrap_err();
        assert!(err.to_string().contains("model.onnx"), "{err}");
    }

    #[test]
    fn rejects_a_threshold_outside_zero_one() {
        let mut m = manifest(b"x");
        m.threshold = 1.5;
        assert!(matches!(ModelManifest::from_json(&m.to_json()), Err(ManifestError::Threshold(_))));
    }

    #[test]
    fn rejects_an_input_of_no_size_huge_size_or_zero_std() {
        let good = manifest(b"x").input;
        let cases = [
            (InputSpec { width: 0, ..good.clone() }, "width 0"),
            (InputSpec { height: 100_000, ..good.clone() }, "height 100000"),
            (InputSpec { std: [0.2, 0.0, 0.2], ..good.clone() }, "std"),
            (InputSpec { std: [0.2, 0.2, -0.2], ..good }, "std"),
        ];
        for (input, named) in cases {
            let mut m = manifest(b"x");
            m.input = input;
            let err = ModelManifest::from_json(&m.to_json()).unwrap_err();
            assert!(matches!(err, ManifestError::Input(_)), "{err}");
            assert!(err.to_string().contains(named), "{err}");
        }
        assert!(ModelManifest::from_json(&manifest(b"x").to_json()).is_ok());
    }
}
