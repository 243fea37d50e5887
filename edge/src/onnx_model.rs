//! The tract implementation of [`Detector`]: an ONNX file written by `host export`, with
//! its manifest beside it.
//!
//! The input shape is pinned to `[1, 3, H, W]` before tract optimises the graph: left
//! symbolic, the batch dimension kept tract from choosing its fixed-size kernels and the
//! model ran about 8x slower. The int8 form (DequantizeLinear on the weights) folds into
//! the same optimised graph as fp32 at load, so both run at the same speed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use shared::manifest::{ManifestError, ModelManifest};
use shared::{BBox, Detection, InputSpec};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use crate::detector::{DetectError, Detector};

/// Threshold used when a model comes without a manifest.
const DEFAULT_THRESHOLD: f32 = 0.5;

/// Environment variable naming the model `edge detect` and `edge bench` use by default.
pub const MODEL_ENV: &str = "FDET_MODEL";

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model or manifest file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The manifest is malformed, or the model's hash differs from the manifest's.
    #[error("{path}: {source}; re-export the model or copy the matching manifest")]
    Manifest {
        /// The manifest file.
        path: String,
        /// What was wrong.
        source: ManifestError,
    },
    /// tract could not parse, type or optimise the ONNX graph.
    #[error("{path}: not a usable ONNX model (truncated or corrupt?): {reason}")]
    Onnx {
        /// The ONNX file.
        path: String,
        /// tract's complaint, with its causes.
        reason: String,
    },
    /// No model was given and none was found in the usual places.
    #[error("no model found (looked in {searched}); pass --model FILE or set {MODEL_ENV}")]
    NotFound {
        /// The folders searched.
        searched: String,
    },
}

/// How a model is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelOptions {
    /// Threads for tract's matrix kernels; 1 runs everything on the calling thread.
    pub threads: usize,
}

/// Parser of a `--threads` flag: a count of at least 1 (0 threads would run nothing).
pub fn thread_count() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self { threads: 1 }
    }
}

/// A loaded, optimised ONNX detector.
pub struct TractDetector {
    plan: Arc<TypedRunnableModel>,
    executor: Executor,
    spec: InputSpec,
    version: String,
    threshold: f32,
    path: PathBuf,
}

impl std::fmt::Debug for TractDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractDetector")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

impl TractDetector {
    /// Loads a model from an ONNX file (its manifest, `x.json` beside `x.onnx`, is read and
    /// its sha256 checked when present) or from a manifest file (`.json`).
    pub fn load(path: &Path, options: ModelOptions) -> Result<Self, ModelError> {
        let (onnx_path, manifest) = if path.extension().is_some_and(|e| e == "json") {
            let manifest = read_manifest(path)?;
            (path.with_file_name(&manifest.file), Some(manifest))
        } else {
            let beside = path.with_extension("json");
            let manifest = if beside.is_file() { Some(read_manifest(&beside)?) } else { None };
            (path.to_path_buf(), manifest)
        };
        let bytes = std::fs::read(&onnx_path)
            .map_err(|source| ModelError::Io { path: onnx_path.display().to_string(), source })?;
        if let Some(m) = &manifest {
            m.verify_model(&bytes).map_err(|source| ModelError::Manifest {
                path: onnx_path.with_extension("json").display().to_string(),
                source,
            })?;
        } else {
            tracing::warn!(
                model = %onnx_path.display(),
                "no manifest beside the model: hash unchecked, threshold {DEFAULT_THRESHOLD}"
            );
        }
        let spec = manifest.as_ref().map(|m| m.input.clone()).unwrap_or_default();
        let plan = optimise(&bytes, &spec, &onnx_path.display().to_string())?;
        let version = match &manifest {
            Some(m) => m.version.clone(),
            None => onnx_path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into()),
        };
        let threshold = manifest.as_ref().map_or(DEFAULT_THRESHOLD, |m| m.threshold);
        tracing::info!(
            model = %onnx_path.display(),
            %version,
            threads = options.threads,
            "model loaded"
        );
        Ok(Self {
            plan,
            executor: executor(options.threads),
            spec,
            version,
            threshold,
            path: onnx_path,
        })
    }

    /// Loads ONNX bytes with no manifest; `what` names them in errors.
    #[cfg(test)]
    pub fn from_bytes(bytes: &[u8], what: &str, options: ModelOptions) -> Result<Self, ModelError> {
        let spec = InputSpec::default();
        Ok(Self {
            plan: optimise(bytes, &spec, what)?,
            executor: executor(options.threads),
            spec,
            version: what.to_string(),
            threshold: DEFAULT_THRESHOLD,
            path: PathBuf::from(what),
        })
    }

    /// The ONNX file this detector runs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The input size and normalisation the model expects.
    pub fn input_spec(&self) -> &InputSpec {
        &self.spec
    }

    /// Runs the model on an already prepared input (`shared::frame::prepare_input`), for
    /// callers that time or reuse the preparation.
    pub fn infer(&self, input: &[f32]) -> Result<Detection, DetectError> {
        let (w, h) = (self.spec.width as usize, self.spec.height as usize);
        let fail = |reason: String| DetectError::Inference { model: self.version.clone(), reason };
        let tensor = tract_ndarray::Array4::from_shape_vec((1, 3, h, w), input.to_vec())
            .map_err(|e| fail(format!("input of {} values: {e}", input.len())))?;
        let inputs = tvec!(Tensor::from(tensor).into());
        let outputs = multithread_tract_scope(self.executor.clone(), || self.plan.run(inputs))
            .map_err(|e| fail(format!("{e:#}")))?;
        self.read_outputs(&outputs)
    }

    /// Picks the score (one value) and the box (four values) out of the outputs and checks
    /// that they are probabilities.
    fn read_outputs(&self, outputs: &[TValue]) -> Result<Detection, DetectError> {
        let bad = |reason: String| DetectError::BadOutput { model: self.version.clone(), reason };
        let mut score = None;
        let mut bbox = None;
        for out in outputs {
            let view = out.to_plain_array_view::<f32>().map_err(|e| bad(format!("{e}")))?;
            let values: Vec<f32> = view.iter().copied().collect();
            match values.len() {
                1 => score = Some(values[0]),
                4 => bbox = Some([values[0], values[1], values[2], values[3]]),
                n => return Err(bad(format!("an output of {n} values; expected 1 and 4"))),
            }
        }
        let (Some(score), Some(bbox)) = (score, bbox) else {
            return Err(bad(format!("{} outputs; expected a score and a box", outputs.len())));
        };
        let all = std::iter::once(score).chain(bbox);
        if let Some(v) = all.into_iter().find(|v| !v.is_finite() || !(0.0..=1.0).contains(v)) {
            return Err(bad(format!(
                "value {v} is not a probability (score {score}, box {bbox:?})"
            )));
        }
        Ok(Detection { score, bbox: BBox::from(bbox) })
    }
}

impl Detector for TractDetector {
    fn detect(&mut self, frame: &image::RgbImage) -> Result<Detection, DetectError> {
        let input = shared::frame::prepare_input(frame, &self.spec);
        self.infer(&input)
    }

    fn model_version(&self) -> &str {
        &self.version
    }

    fn threshold(&self) -> f32 {
        self.threshold
    }
}

fn executor(threads: usize) -> Executor {
    if threads > 1 {
        Executor::multithread(threads)
    } else {
        Executor::SingleThread
    }
}

fn read_manifest(path: &Path) -> Result<ModelManifest, ModelError> {
    let bytes = std::fs::read(path)
        .map_err(|source| ModelError::Io { path: path.display().to_string(), source })?;
    ModelManifest::from_json(&bytes)
        .map_err(|source| ModelError::Manifest { path: path.display().to_string(), source })
}

/// Parses, pins the input shape, optimises and plans a model.
fn optimise(
    bytes: &[u8],
    spec: &InputSpec,
    what: &str,
) -> Result<Arc<TypedRunnableModel>, ModelError> {
    let shape = [1, 3, spec.height as usize, spec.width as usize];
    tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| ModelError::Onnx { path: what.to_string(), reason: format!("{e:#}") })
}

/// The model to use when none is named: `$FDET_MODEL`, else the newest manifest in
/// `./models`, else in the repository's `models/` (where this binary was built from).
/// Among manifests of the same version number the fp32 one wins.
pub fn default_model() -> Result<PathBuf, ModelError> {
    if let Some(p) = std::env::var_os(MODEL_ENV) {
        return Ok(PathBuf::from(p));
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("models");
    let dirs = [PathBuf::from("models"), repo];
    for dir in &dirs {
        if let Some(found) = newest_manifest(dir) {
            tracing::debug!(model = %found.display(), "default model");
            return Ok(found);
        }
    }
    let searched = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
    Err(ModelError::NotFound { searched })
}

/// The manifest in `dir` with the highest version number, fp32 before int8.
pub fn newest_manifest(dir: &Path) -> Option<PathBuf> {
    let mut best: Option<((u64, bool), PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        // Other JSON files may sit there (READMEs' data, notes): only manifests count.
        let Some(m) = std::fs::read(&path).ok().and_then(|b| ModelManifest::from_json(&b).ok())
        else {
            continue;
        };
        let key = (m.version_number, m.precision == shared::manifest::Precision::Fp32);
        if best.as_ref().is_none_or(|(k, _)| key > *k) {
            best = Some((key, path));
        }
    }
    best.map(|(_, p)| p)
}

#[cfg(test)]
mod tests;
