//! `edge bench`: how fast the detector runs here, in one table.
//!
//! Two parts. First the model alone: tract fp32, tract int8 and onnxruntime (through
//! `scripts/ort_bench.py`, on the same ONNX files and the same prepared inputs) with the
//! same thread count, so the gap between runtimes is visible in one run; the outputs of
//! the runtimes are compared too. Then the whole pipeline on a folder of photos: decode,
//! resize, normalise, infer and capture write (JPEG encode and append to a scratch capture
//! log, as if every frame were kept: the worst case) timed per image, and frames per
//! second end to end.
//!
//! Build with `--release`: the figures of a debug build mean nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use shared::frame::{load_image, resize, to_chw};

use shared::{CaptureReason, Detection};

use crate::capture::budget::Budget;
use crate::capture::{encode_jpeg, CaptureDraft, CaptureLog, LogConfig};
use crate::config::StorageConfig;
use crate::detect::images_in;
use crate::onnx_model::{default_model, ModelOptions, TractDetector};

/// Arguments of `edge bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The fp32 ONNX model (or its manifest); the int8 one is looked for beside it as
    /// NAME.int8.onnx. Defaults to $FDET_MODEL, else the newest in models/.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Folder of photos for the pipeline timings (and the model inputs).
    #[arg(long, default_value = "samples")]
    pub images: PathBuf,
    /// Threads for tract and onnxruntime alike.
    #[arg(long, default_value_t = 1, value_parser = crate::onnx_model::thread_count())]
    pub threads: usize,
    /// Passes over the prepared inputs when timing the models alone.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// How many photos' inputs to time the models on.
    #[arg(long, default_value_t = 20)]
    pub inputs: usize,
    /// Python interpreter with onnxruntime and numpy; "none" skips onnxruntime.
    #[arg(long, default_value = "python3")]
    pub python: String,
}

/// What one runtime measured on one model.
#[derive(Debug)]
struct ModelTiming {
    runtime: String,
    model: String,
    latencies: Vec<Duration>,
    outputs: Vec<Vec<f32>>,
}

/// Per-image timings of the pipeline stages.
#[derive(Debug, Default)]
struct Stages {
    decode: Vec<Duration>,
    resize: Vec<Duration>,
    normalise: Vec<Duration>,
    infer: Vec<Duration>,
    capture: Vec<Duration>,
    total: Vec<Duration>,
}

/// Runs `edge bench` and prints its table.
pub fn run(args: BenchArgs) -> Result<()> {
    if cfg!(debug_assertions) {
        tracing::warn!("debug build: timings are not representative, use --release");
    }
    let fp32_path = match &args.model {
        Some(p) => p.clone(),
        None => default_model()?,
    };
    let options = ModelOptions { threads: args.threads };
    let fp32 = TractDetector::load(&fp32_path, options)?;
    let int8_path = int8_beside(fp32.path());
    let int8 = match &int8_path {
        Some(p) => Some(TractDetector::load(p, options)?),
        None => None,
    };

    let photos = images_in(&args.images)?;
    if photos.is_empty() {
        bail!("{}: no JPEG or PNG files to benchmark on", args.images.display());
    }
    let (stages, prepared) = pipeline(&fp32, &photos, args.inputs)?;

    let mut timings = vec![time_tract(&fp32, "fp32", &prepared, args.rounds)?];
    if let Some(m) = &int8 {
        timings.push(time_tract(m, "int8", &prepared, args.rounds)?);
    }
    if args.python != "none" {
        let models: Vec<&Path> =
            std::iter::once(fp32.path()).chain(int8.as_ref().map(|m| m.path())).collect();
        timings.extend(time_onnxruntime(&args, &models, &prepared)?);
    }
    print_report(&args, &timings, &stages, photos.len(), prepared.len())
}

/// `x.onnx` -> `x.int8.onnx` when that file exists.
fn int8_beside(fp32: &Path) -> Option<PathBuf> {
    let stem = fp32.file_stem()?.to_str()?;
    let p = fp32.with_file_name(format!("{stem}.int8.onnx"));
    p.is_file().then_some(p)
}

/// Times every stage on every photo (fp32 model); returns the first `keep` prepared
/// inputs for the model timings.
fn pipeline(
    model: &TractDetector,
    photos: &[PathBuf],
    keep: usize,
) -> Result<(Stages, Vec<Vec<f32>>)> {
    let spec = model.input_spec().clone();
    let mut stages = Stages::default();
    let mut prepared = Vec::new();
    let scratch = tempfile::tempdir().context("cannot create a scratch capture log")?;
    let storage = StorageConfig::default();
    let mut log = scratch_log(scratch.path(), &storage)?;
    for path in photos {
        let t0 = Instant::now();
        let frame = load_image(path)?;
        let t1 = Instant::now();
        let small = resize(&frame, spec.width, spec.height);
        let t2 = Instant::now();
        let input = to_chw(&small, &spec);
        let t3 = Instant::now();
        let detection = model.infer(&input).with_context(|| format!("{}", path.display()))?;
        let t4 = Instant::now();
        store_capture(&mut log, &storage, &frame, detection)?;
        let t5 = Instant::now();
        stages.decode.push(t1 - t0);
        stages.resize.push(t2 - t1);
        stages.normalise.push(t3 - t2);
        stages.infer.push(t4 - t3);
        stages.capture.push(t5 - t4);
        stages.total.push(t5 - t0);
        if prepared.len() < keep {
            prepared.push(input);
        }
    }
    Ok((stages, prepared))
}

/// A capture log in `dir` with `edge run`'s default storage settings, without the budget
/// (the bench must not evict) or the free-space floor.
fn scratch_log(dir: &Path, storage: &StorageConfig) -> Result<CaptureLog> {
    let config = LogConfig {
        dir: dir.to_path_buf(),
        budget: Budget { max_bytes: u64::MAX, max_count: usize::MAX },
        min_free_bytes: 0,
        ..storage.log_config()
    };
    Ok(CaptureLog::open(config).context("cannot open the scratch capture log")?.0)
}

/// What `edge run` does with a frame it keeps, with the same JPEG settings.
fn store_capture(
    log: &mut CaptureLog,
    storage: &StorageConfig,
    frame: &image::RgbImage,
    detection: Detection,
) -> Result<()> {
    let encoded = encode_jpeg(frame, storage.jpeg_quality, storage.max_side)
        .context("encoding the capture")?;
    let draft = CaptureDraft {
        time_ms: 0,
        reason: CaptureReason::Uncertain,
        detection,
        model_version: "bench".into(),
        width: encoded.width,
        height: encoded.height,
    };
    log.append(draft, &encoded.jpeg).context("appending to the scratch capture log")?;
    log.tick().context("syncing the scratch capture log")?;
    Ok(())
}

fn time_tract(
    model: &TractDetector,
    precision: &str,
    inputs: &[Vec<f32>],
    rounds: usize,
) -> Result<ModelTiming> {
    for x in inputs.iter().take(2) {
        model.infer(x)?;
    }
    let mut latencies = Vec::new();
    let mut outputs = Vec::new();
    for round in 0..rounds.max(1) {
        for x in inputs {
            let t0 = Instant::now();
            let d = model.infer(x)?;
            latencies.push(t0.elapsed());
            if round == 0 {
                outputs.push(std::iter::once(d.score).chain(d.bbox.to_array()).collect());
            }
        }
    }
    Ok(ModelTiming {
        runtime: "tract".into(),
        model: format!("{} ({precision})", file_name(model.path())),
        latencies,
        outputs,
    })
}

#[derive(Debug, Deserialize)]
struct OrtReport {
    onnxruntime: String,
    results: Vec<OrtResult>,
}

#[derive(Debug, Deserialize)]
struct OrtResult {
    model: String,
    latencies_ms: Vec<f64>,
    outputs: Vec<Vec<f32>>,
}

fn time_onnxruntime(
    args: &BenchArgs,
    models: &[&Path],
    inputs: &[Vec<f32>],
) -> Result<Vec<ModelTiming>> {
    let script = ort_script()?;
    let mut file = tempfile_in_target()?;
    for x in inputs {
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        file.1.write_all(&bytes).context("cannot write the benchmark inputs")?;
    }
    file.1.flush().context("cannot write the benchmark inputs")?;
    let shape = [3, 224, 224].map(|v: usize| v.to_string()).join(",");
    let output = Command::new(&args.python)
        .arg(&script)
        .args(["--inputs", &file.0.display().to_string(), "--shape", &shape])
        .args(["--rounds", &args.rounds.max(1).to_string(), "--threads", &args.threads.to_string()])
        .args(models)
        .output()
        .with_context(|| format!("cannot run {} {}", args.python, script.display()))?;
    let _ = std::fs::remove_file(&file.0);
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}; install onnxruntime and numpy or pass --python none",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let report: OrtReport = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{}: unexpected output", script.display()))?;
    let precisions = ["fp32", "int8"];
    Ok(report
        .results
        .into_iter()
        .zip(precisions)
        .map(|(r, p)| ModelTiming {
            runtime: format!("onnxruntime {}", report.onnxruntime),
            model: format!("{} ({p})", file_name(Path::new(&r.model))),
            latencies: r.latencies_ms.iter().map(|ms| Duration::from_secs_f64(ms / 1e3)).collect(),
            outputs: r.outputs,
        })
        .collect())
}

fn ort_script() -> Result<PathBuf> {
    let here = PathBuf::from("scripts/ort_bench.py");
    if here.is_file() {
        return Ok(here);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ort_bench.py");
    if repo.is_file() {
        return Ok(repo);
    }
    bail!("scripts/ort_bench.py not found; run from the repository root or pass --python none")
}

/// A scratch file for the inputs handed to Python, removed after use.
fn tempfile_in_target() -> Result<(PathBuf, std::fs::File)> {
    let path = std::env::temp_dir().join(format!("edge-bench-{}.f32", std::process::id()));
    let file = std::fs::File::create(&path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    Ok((path, file))
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
}

/// The `q`-quantile (0..=1) of `values`, nearest rank.
fn quantile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut v = values.to_vec();
    v.sort();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().flatten().zip(b.iter().flatten()).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

// The table is the command's output, so it goes to stdout.
#[allow(clippy::print_stdout)]
fn print_report(
    args: &BenchArgs,
    timings: &[ModelTiming],
    stages: &Stages,
    photos: usize,
    inputs: usize,
) -> Result<()> {
    println!(
        "model alone: {inputs} prepared inputs x {} rounds, {} thread(s)",
        args.rounds.max(1),
        args.threads
    );
    println!("{:<22} {:<28} {:>10} {:>10}", "runtime", "model", "median ms", "p90 ms");
    for t in timings {
        let (med, p90) = (quantile(&t.latencies, 0.5), quantile(&t.latencies, 0.9));
        println!("{:<22} {:<28} {:>10.2} {:>10.2}", t.runtime, t.model, ms(med), ms(p90));
    }
    let reference = &timings[0];
    for t in &timings[1..] {
        let diff = max_abs_diff(&reference.outputs, &t.outputs);
        println!(
            "max |output - {} {}| = {diff:.2e} for {} {}",
            reference.runtime, reference.model, t.runtime, t.model
        );
    }
    println!();
    println!("pipeline on {} ({photos} photos, {}):", args.images.display(), reference.model);
    println!("{:<12} {:>10} {:>10}", "stage", "median ms", "p90 ms");
    let rows = [
        ("decode", &stages.decode),
        ("resize", &stages.resize),
        ("normalise", &stages.normalise),
        ("infer", &stages.infer),
        ("capture", &stages.capture),
        ("total", &stages.total),
    ];
    for (name, values) in rows {
        println!(
            "{name:<12} {:>10.2} {:>10.2}",
            ms(quantile(values, 0.5)),
            ms(quantile(values, 0.9))
        );
    }
    // `edge run` keeps a few frames a minute, so the loop's pace is the total without the
    // capture stage; the second figure is the worst case, every frame kept.
    let seconds: f64 = stages.total.iter().map(Duration::as_secs_f64).sum();
    let kept: f64 = stages.capture.iter().map(Duration::as_secs_f64).sum();
    let fps = |s: f64| photos as f64 / s.max(f64::EPSILON);
    println!(
        "end to end: {:.1} frames/s detecting, {:.1} frames/s keeping every frame",
        fps(seconds - kept),
        fps(seconds)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let v: Vec<Duration> = (1..=10).rev().map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Duration::from_millis(5));
        assert_eq!(quantile(&v, 0.9), Duration::from_millis(9));
        assert_eq!(quantile(&v, 1.0), Duration::from_millis(10));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn int8_file_is_found_beside_the_fp32_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fp32 = dir.path().join("face.onnx");
        assert_eq!(int8_beside(&fp32), None);
        std::fs::write(dir.path().join("face.int8.onnx"), b"x").expect("write");
        assert_eq!(int8_beside(&fp32), Some(dir.path().join("face.int8.onnx")));
    }
}
