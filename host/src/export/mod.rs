//! `host export`: turns a training checkpoint into the ONNX files the edge runs.
//!
//! tch cannot write ONNX, so the graph is written here from the checkpoint's named
//! tensors ([`graph`]), in two forms: fp32, and int8 weights with per-channel scales
//! ([`quantize`]). Each file gets a [`ModelManifest`] beside it, and both are run once
//! through tract before the command reports success, so a file that the edge could not
//! load never leaves the host.

pub mod graph;
pub mod onnx;
pub mod quantize;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};
use prost::Message;
use shared::manifest::{sha256_hex, ModelManifest, Precision, TrainingInfo};
use shared::InputSpec;
use tract_onnx::prelude::*;

use onnx::WeightForm;

/// A float tensor from a checkpoint: row-major data and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// Why a checkpoint could not be turned into a graph.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The checkpoint file could not be read as safetensors.
    #[error("{path}: cannot read the checkpoint as safetensors: {reason}")]
    Read {
        /// The checkpoint file.
        path: String,
        /// What the reader said.
        reason: String,
    },
    /// A tensor the graph needs is not in the checkpoint.
    #[error(
        "{checkpoint}: no tensor named `{name}` (is this a detector checkpoint? \
             names follow models/README.md)"
    )]
    Missing {
        /// Where the tensors came from.
        checkpoint: String,
        /// The missing name.
        name: String,
    },
    /// A tensor has the wrong shape for the architecture.
    #[error("{checkpoint}: tensor `{name}` has shape {actual:?}, the graph needs {expected:?}")]
    Shape {
        /// Where the tensors came from.
        checkpoint: String,
        /// The tensor.
        name: String,
        /// The shape the graph needs.
        expected: Vec<usize>,
        /// The shape found.
        actual: Vec<usize>,
    },
}

/// Named float tensors, as saved by the trainer's `VarStore`.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    origin: String,
    params: BTreeMap<String, Param>,
}

impl Checkpoint {
    /// Tensors from any source; `origin` names it in errors.
    #[cfg(test)]
    pub fn from_params(origin: &str, params: BTreeMap<String, Param>) -> Self {
        Self { origin: origin.to_string(), params }
    }

    /// Reads a safetensors checkpoint, converting every tensor to f32.
    pub fn load(path: &Path) -> Result<Self, ExportError> {
        let origin = path.display().to_string();
        let err = |reason: String| ExportError::Read { path: origin.clone(), reason };
        let tensors = tch::Tensor::read_safetensors(path).map_err(|e| err(e.to_string()))?;
        let mut params = BTreeMap::new();
        for (name, t) in tensors {
            // The step counter BatchNorm keeps is not a weight.
            if name.ends_with("num_batches_tracked") {
                continue;
            }
            let shape = t.size().iter().map(|&d| d as usize).collect();
            let flat = t.to_kind(tch::Kind::Float).contiguous().view(-1);
            let data = Vec::<f32>::try_from(&flat).map_err(|e| err(format!("{name}: {e}")))?;
            params.insert(name, Param { shape, data });
        }
        Ok(Self { origin, params })
    }

    /// The tensor `name`, checked against the shape the graph needs.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&Param, ExportError> {
        let p = self.params.get(name).ok_or_else(|| ExportError::Missing {
            checkpoint: self.origin.clone(),
            name: name.to_string(),
        })?;
        if p.shape != shape {
            return Err(ExportError::Shape {
                checkpoint: self.origin.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: p.shape.clone(),
            });
        }
        Ok(p)
    }
}

/// Encodes the detector graph for `checkpoint` as ONNX bytes.
pub fn onnx_bytes(
    checkpoint: &Checkpoint,
    form: WeightForm,
    metadata: &[(&str, String)],
) -> Result<Vec<u8>, ExportError> {
    Ok(graph::build(checkpoint, form, metadata)?.encode_to_vec())
}

/// Arguments of `host export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Training checkpoint (safetensors, names per the model contract).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Folder the ONNX files and manifests go to.
    #[arg(long, default_value = "models")]
    pub out: PathBuf,
    /// Base file name: writes NAME.onnx, NAME.int8.onnx and a .json manifest for each.
    #[arg(long)]
    pub name: String,
    /// Version number for the manifests; defaults to one more than the newest in --out.
    #[arg(long)]
    pub version_number: Option<u64>,
    /// Human-readable version; defaults to today's date and the version number.
    #[arg(long)]
    pub version_name: Option<String>,
    /// Face score at or above which a frame counts as a face.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// JSON file of evaluation figures (e.g. `host evaluate --json` output); every number
    /// in it goes into the manifest's metrics, nested keys joined with '.'.
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// The training data, in words, for the manifest.
    #[arg(long, default_value = "")]
    pub training_data: String,
    /// Epochs the checkpoint was trained for, for the manifest.
    #[arg(long, default_value_t = 0)]
    pub epochs: u32,
    /// Free-form training notes for the manifest (phases, augmentation, parent model).
    #[arg(long, default_value = "")]
    pub notes: String,
}

/// Runs `host export`.
pub fn run(args: ExportArgs) -> Result<()> {
    let started = Instant::now();
    let checkpoint = Checkpoint::load(&args.checkpoint)?;
    let metrics = match &args.metrics {
        Some(path) => read_metrics(path)?,
        None => BTreeMap::new(),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create the output folder", args.out.display()))?;
    let version_number = match args.version_number {
        Some(n) => n,
        None => newest_version(&args.out)? + 1,
    };
    let created = rfc3339(SystemTime::now());
    let version =
        args.version_name.clone().unwrap_or_else(|| format!("{}-{version_number}", &created[..10]));
    let metadata =
        [("fdet.version", version.clone()), ("fdet.checkpoint", checkpoint.origin.clone())];

    let forms = [
        (WeightForm::Fp32, Precision::Fp32, ""),
        (WeightForm::Int8PerChannel, Precision::Int8, ".int8"),
    ];
    let mut written = Vec::new();
    for (form, precision, suffix) in forms {
        let bytes = onnx_bytes(&checkpoint, form, &metadata)?;
        let file = format!("{}{suffix}.onnx", args.name);
        let path = args.out.join(&file);
        std::fs::write(&path, &bytes)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        let manifest = ModelManifest {
            version: version.clone(),
            version_number,
            file: file.clone(),
            sha256: sha256_hex(&bytes),
            precision,
            input: InputSpec::default(),
            threshold: args.threshold,
            training: TrainingInfo {
                data: args.training_data.clone(),
                epochs: args.epochs,
                notes: args.notes.clone(),
            },
            metrics: metrics.clone(),
            created: created.clone(),
        };
        let manifest_path = manifest_path(&path);
        std::fs::write(&manifest_path, manifest.to_json())
            .with_context(|| format!("{}: cannot write", manifest_path.display()))?;
        tracing::info!(file = %path.display(), bytes = bytes.len(), ?precision, "wrote model");
        written.push(path);
    }

    let probe = probe_input();
    let fp32 = run_tract(&written[0], &probe)?;
    let int8 = run_tract(&written[1], &probe)?;
    let diff = fp32.iter().zip(&int8).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    tracing::info!(
        version = %version,
        version_number,
        fp32_vs_int8_max_abs_diff = diff,
        seconds = started.elapsed().as_secs_f32(),
        "exported; both files load and run in tract"
    );
    Ok(())
}

/// The manifest path for a model file: `x.onnx` -> `x.json`, `x.int8.onnx` -> `x.int8.json`.
pub fn manifest_path(model: &Path) -> PathBuf {
    model.with_extension("json")
}

/// The highest `version_number` among the manifests in `dir` (0 when there are none).
fn newest_version(dir: &Path) -> Result<u64> {
    let mut newest = 0;
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let Ok(bytes) = std::fs::read(&path) else { continue };
            // Other JSON files (a README's data, a pointer) are not manifests: skip them.
            if let Ok(m) = ModelManifest::from_json(&bytes) {
                newest = newest.max(m.version_number);
            }
        }
    }
    Ok(newest)
}

/// Every number in a JSON document, keyed by its path (`a.b.c`, arrays by index).
fn read_metrics(path: &Path) -> Result<BTreeMap<String, f64>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: metrics file is not JSON", path.display()))?;
    let mut out = BTreeMap::new();
    flatten_numbers(&value, String::new(), &mut out);
    if out.is_empty() {
        bail!("{}: metrics file holds no numbers", path.display());
    }
    Ok(out)
}

fn flatten_numbers(value: &serde_json::Value, key: String, out: &mut BTreeMap<String, f64>) {
    let join = |k: &str| if key.is_empty() { k.to_string() } else { format!("{key}.{k}") };
    match value {
        serde_json::Value::Number(n) => {
            if let Some(v) = n.as_f64() {
                out.insert(key, v);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                flatten_numbers(v, join(k), out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten_numbers(v, join(&i.to_string()), out);
            }
        }
        _ => {}
    }
}

/// A fixed, varied input in the model's range, for checking that files run.
fn probe_input() -> Vec<f32> {
    let n = 3 * graph::INPUT_SIZE * graph::INPUT_SIZE;
    (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect()
}

/// Runs an exported file through tract (input shape pinned, optimised) and returns the
/// score followed by the four box values.
pub fn run_tract(path: &Path, input: &[f32]) -> Result<Vec<f32>> {
    let s = graph::INPUT_SIZE;
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .and_then(|m| m.with_input_fact(0, f32::fact([1, 3, s, s]).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .with_context(|| format!("{}: tract cannot load the exported model", path.display()))?;
    let tensor = tract_ndarray::Array4::from_shape_vec((1, 3, s, s), input.to_vec())
        .context("probe input has the wrong length")?;
    let outputs = model
        .run(tvec!(Tensor::from(tensor).into()))
        .with_context(|| format!("{}: tract cannot run the exported model", path.display()))?;
    let mut values = Vec::with_capacity(5);
    for out in outputs.iter() {
        let view = out.to_plain_array_view::<f32>().context("model output is not f32")?;
        values.extend(view.iter().copied());
    }
    Ok(values)
}

/// `t` as RFC 3339 UTC with seconds, e.g. `2026-12-03T19:20:00Z`.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests;
