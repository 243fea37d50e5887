//! `host train`: fine-tunes the detector on the seed data.
//!
//! The CPU plan. On 2 cores the whole network trains at about 15 images/s at 224x224,
//! too slow for the 8,792 training images times several augmented copies. The first
//! `--freeze` modules of the backbone (default 14: up to the 96-channel 14x14 stage) are
//! frozen, their output is computed once for a fixed set of `--copies` augmented copies of
//! every training image and kept in memory as f16, and only `features[14..]` plus the two
//! heads train on that cache, several times faster per image.
//!
//! Known limitation: the augmentation is fixed per cache (each image has exactly
//! `--copies` augmented versions, drawn once with a seeded generator) instead of being
//! redrawn every epoch. That is the price of the cache; more copies buy more variety at
//! the cost of memory (about 37 KB per copy) and start-up time. On a GPU the same code
//! runs with larger caches.
//!
//! Outputs in `runs/<run>/`: `last.safetensors` (every epoch, written to a temporary file
//! then renamed, so an interrupted run never leaves a broken file), `best.safetensors`
//! (lowest validation loss; the restored weights at the end), with `--keep-epochs` each
//! epoch's `epoch-N.safetensors` (to average with `host average`), `metrics.csv`,
//! `params.json` (all parameters, training time, best epoch). `--resume` continues a run
//! from `last.safetensors` with the parameters saved in `params.json`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use shared::frame::prepare_input;
use shared::manifest::InputSpec;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Reduction, Tensor};

use crate::augment::{self, Labelled, Strength};
use crate::dataset::{self, Part, Sample};
use crate::model::{self, Detector, HeadConfig};
use crate::weights;

/// Command-line arguments of `host train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Dataset root holding `Data/` (see Data/README.md).
    #[arg(long = "dataset", default_value = "../shared/data/seed")]
    pub data: PathBuf,
    /// Run name; outputs go to `<runs>/<run>/`.
    #[arg(long, default_value = "main")]
    pub run: String,
    /// Folder of all runs.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// ImageNet MobileNetV2 weights (torchvision's legacy .pth).
    #[arg(long, default_value = ".weights/mobilenet_v2-b0353104.pth")]
    pub imagenet: PathBuf,
    /// Continue the run from its last.safetensors, with the parameters in its params.json.
    #[arg(long)]
    pub resume: bool,
    /// Start from this checkpoint instead of ImageNet weights and fresh heads.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Run the seed's hyper-parameter grid instead of one training run.
    #[arg(long)]
    pub grid: bool,
    /// Use at most this many images of each part (train, val); 0 means all.
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Also write this many augmented training images, box drawn, to `<run>/samples/`.
    #[arg(long, default_value_t = 0)]
    pub dump_samples: usize,
    /// Keep every epoch's weights as `epoch-N.safetensors` (for `host average`).
    #[arg(long)]
    pub keep_epochs: bool,
    /// Training hyper-parameters.
    #[command(flatten)]
    pub params: TrainParams,
}

/// Hyper-parameters of a run, saved in `params.json`.
#[derive(Debug, Clone, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct TrainParams {
    /// Maximum number of epochs.
    #[arg(long = "max-epochs", default_value_t = 30)]
    pub epochs: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(i64).range(1..))]
    pub batch: i64,
    /// Adam learning rate of the first epoch.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Per-epoch learning-rate factor (lr *= decay after each epoch).
    #[arg(long, default_value_t = 0.9)]
    pub decay: f64,
    /// Weight of the face-score loss.
    #[arg(long, default_value_t = 0.2)]
    pub class_weight: f64,
    /// Weight of the box loss.
    #[arg(long, default_value_t = 1.8)]
    pub reg_weight: f64,
    /// Dropout in the heads.
    #[arg(long, default_value_t = 0.6)]
    pub dropout: f64,
    /// L2 factor on the dense kernels (Keras style: factor times the sum of squares).
    #[arg(long, default_value_t = 0.02)]
    pub l2: f64,
    /// Label smoothing of the face score's targets.
    #[arg(long, default_value_t = 0.1)]
    pub smoothing: f64,
    /// Epochs without validation improvement before stopping.
    #[arg(long, default_value_t = 4)]
    pub patience: usize,
    /// Frozen backbone prefix: `features[0..freeze)` is cached, the rest trains.
    #[arg(long, default_value_t = 17)]
    pub freeze: usize,
    /// Augmented copies of each training image in the cache (the first is mild).
    #[arg(long, default_value_t = 1)]
    pub copies: usize,
    /// With one copy: the share of images re-framed by strong augmentation.
    #[arg(long, default_value_t = 0.7)]
    pub strong_share: f64,
    /// Seed of augmentation, shuffling and initialisation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// libtorch threads.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i32).range(1..))]
    pub threads: i32,
}

/// The prefix outputs and targets of a set of (augmented) images, on the CPU.
struct Cache {
    /// `[N, C, H, W]` f16 output of `features[0..freeze)`.
    feats: Tensor,
    /// `[N]` 1.0 for a face, 0.0 otherwise.
    face: Tensor,
    /// `[N, 4]` normalised boxes (zeros where there is no face).
    bbox: Tensor,
}

impl Cache {
    fn len(&self) -> i64 {
        self.face.size()[0]
    }
}

/// One image to put into a cache: which sample, which copy, how strong.
#[derive(Debug, Clone, Copy)]
struct Job {
    sample: usize,
    copy: usize,
    strength: Strength,
}

/// Entry point of `host train`.
pub fn run(args: TrainArgs) -> Result<()> {
    let device = crate::accel::select_device();
    tch::set_num_threads(args.params.threads);
    let mut params = args.params.clone();
    let dir = args.runs.join(&args.run);
    if args.resume {
        params = read_params(&dir)?;
        params.epochs = params.epochs.max(args.params.epochs);
    }
    let samples = dataset::load_seed(&args.data)
        .with_context(|| format!("reading the dataset at {}", args.data.display()))?;
    let train = pick(&samples, Part::Train, args.limit);
    let val = pick(&samples, Part::Val, args.limit);
    tracing::info!(train = train.len(), val = val.len(), "dataset loaded");
    let imagenet = weights::read_legacy_pth(&args.imagenet)
        .with_context(|| format!("reading ImageNet weights {}", args.imagenet.display()))?;

    let vs = nn::VarStore::new(device);
    let net = Detector::new(&vs.root(), HeadConfig { dropout: params.dropout });
    weights::load_into(&vs, &imagenet, "features.")?;
    let mut vs = vs;
    // Load before caching: the cached prefix must be the prefix that is trained on.
    if let Some(init) = &args.init {
        crate::model::load_checkpoint(&vs, init)?;
    }
    if args.resume {
        let last = dir.join("last.safetensors");
        crate::model::load_checkpoint(&vs, &last).context("resuming the run")?;
    }
    if args.dump_samples > 0 {
        dump_samples(&train, &params, &dir.join("samples"), args.dump_samples)?;
    }
    let caches = build_caches(&net, &vs, &train, &val, &params, &dir)?;
    if args.grid {
        return grid(&args, &caches, &imagenet, device);
    }
    let run = Run {
        dir,
        params,
        resume: args.resume,
        quiet: false,
        keep_epochs: args.keep_epochs,
        device,
    };
    let summary = run.train(&mut vs, &net, &caches)?;
    tracing::info!(
        epochs = summary.epochs,
        best_epoch = summary.best_epoch,
        val_loss = format_args!("{:.4}", summary.best.loss),
        val_acc = format_args!("{:.4}", summary.best.accuracy),
        val_iou = format_args!("{:.4}", summary.best.iou),
        minutes = format_args!("{:.1}", summary.seconds / 60.0),
        interrupted = summary.interrupted,
        best = %run.dir.join("best.safetensors").display(),
        "training finished"
    );
    Ok(())
}

/// Training and validation caches.
struct Caches {
    train: Cache,
    val: Cache,
}

fn build_caches(
    net: &Detector,
    vs: &nn::VarStore,
    train: &[Sample],
    val: &[Sample],
    p: &TrainParams,
    dir: &Path,
) -> Result<Caches> {
    let scenes: Vec<usize> = (0..train.len()).filter(|&i| !train[i].face).collect();
    if scenes.is_empty() {
        bail!("the training part has no no-face images to use as scenes");
    }
    let jobs =
        (0..train.len()).flat_map(|s| (0..p.copies).map(move |c| job(s, c, p))).collect::<Vec<_>>();
    let t0 = Instant::now();
    model::set_channels_last(vs, true);
    let train_cache = cached(dir, "train", train.len(), p, || {
        cache(net, train, train, &scenes, jobs, p, vs.device(), "train")
    });
    let train_cache = train_cache?;
    tracing::info!(
        images = train_cache.len(),
        secs = t0.elapsed().as_secs(),
        "training cache ready"
    );
    // Validation: one copy of each image, mild or strong like training's (scenes from the
    // training part, which is fine: they are backgrounds, not what is measured).
    let jobs = (0..val.len()).map(|s| job(s, 0, &TrainParams { copies: 1, ..p.clone() }));
    let jobs = jobs.collect();
    let val_cache = cached(dir, "val", val.len(), p, || {
        cache(net, val, train, &scenes, jobs, p, vs.device(), "val")
    });
    model::set_channels_last(vs, false);
    Ok(Caches { train: train_cache, val: val_cache? })
}

/// Copy `copy` of sample `sample`. With several copies the first keeps the framing and the
/// others re-frame; with one copy, `strong_share` of the images (by a hash) re-frame.
fn job(sample: usize, copy: usize, p: &TrainParams) -> Job {
    let strong = if p.copies > 1 {
        copy > 0
    } else {
        let h = (sample as u64 ^ p.seed).wrapping_mul(0x9e3779b97f4a7c15) >> 11;
        (h as f64 / (1u64 << 53) as f64) < p.strong_share
    };
    Job { sample, copy, strength: if strong { Strength::Strong } else { Strength::Mild } }
}

/// Loads a cache from `<runs>/cache/` when one with the same key exists, else builds and
/// stores it. The key holds everything that changes the cache's content.
fn cached(
    run_dir: &Path,
    what: &str,
    count: usize,
    p: &TrainParams,
    build: impl FnOnce() -> Result<Cache>,
) -> Result<Cache> {
    let dir = run_dir.parent().unwrap_or(run_dir).join("cache");
    let key = format!(
        "{what}-n{count}-f{}-c{}-s{}-seed{}.safetensors",
        p.freeze, p.copies, p.strong_share, p.seed
    );
    let path = dir.join(key);
    if let Ok(tensors) = Tensor::read_safetensors(&path) {
        let get =
            |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone());
        if let (Some(feats), Some(face), Some(bbox)) = (get("feats"), get("face"), get("bbox")) {
            tracing::info!(path = %path.display(), "cache loaded");
            return Ok(Cache { feats, face, bbox });
        }
    }
    let c = build()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp.safetensors");
    let named = [("feats", &c.feats), ("face", &c.face), ("bbox", &c.bbox)];
    Tensor::write_safetensors(&named, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(c)
}

/// Augments, prepares and runs `features[0..freeze)` over `jobs`. Two threads decode and
/// augment while libtorch runs the prefix.
#[allow(clippy::too_many_arguments)]
fn cache(
    net: &Detector,
    samples: &[Sample],
    scene_pool: &[Sample],
    scenes: &[usize],
    jobs: Vec<Job>,
    p: &TrainParams,
    device: Device,
    what: &str,
) -> Result<Cache> {
    let total = jobs.len();
    let bar = progress(total as u64, what);
    let spec = InputSpec::default();
    let (tx, rx) = mpsc::sync_channel::<Result<(Vec<f32>, Labelled)>>(64);
    let jobs = Arc::new(jobs);
    let mut feats = Vec::new();
    let mut faces = Vec::new();
    let mut boxes = Vec::new();
    std::thread::scope(|scope| -> Result<()> {
        for worker in 0..2usize {
            let tx = tx.clone();
            let jobs = Arc::clone(&jobs);
            let spec = spec.clone();
            scope.spawn(move || {
                for job in jobs.iter().skip(worker).step_by(2) {
                    let item = make_item(samples, scene_pool, scenes, *job, p.seed)
                        .map(|l| (prepare_input(&l.image, &spec), l));
                    if tx.send(item).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut batch: Vec<f32> = Vec::new();
        let mut n = 0;
        for item in rx {
            let (input, l) = item?;
            batch.extend_from_slice(&input);
            faces.push(if l.face { 1.0f32 } else { 0.0 });
            let b = if l.face { l.bbox.to_array() } else { [0.0; 4] };
            boxes.extend_from_slice(&b);
            n += 1;
            if n == 32 {
                feats.push(prefix(net, &batch, n, p.freeze, device));
                batch.clear();
                n = 0;
            }
            bar.inc(1);
        }
        if n > 0 {
            feats.push(prefix(net, &batch, n, p.freeze, device));
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let count = faces.len() as i64;
    Ok(Cache {
        feats: Tensor::cat(&feats, 0),
        face: Tensor::from_slice(&faces),
        bbox: Tensor::from_slice(&boxes).reshape([count, 4]),
    })
}

fn prefix(net: &Detector, batch: &[f32], n: i64, freeze: usize, device: Device) -> Tensor {
    let x = Tensor::from_slice(batch).reshape([n, 3, 224, 224]).to_device(device);
    let x = model::channels_last(&x);
    // Kept on the CPU, contiguous (NCHW): batches are gathered from it and moved.
    let y = tch::no_grad(|| net.features_range(&x, 0..freeze, false));
    y.to_kind(Kind::Half).contiguous().to_device(Device::Cpu)
}

/// Loads and augments one job with a generator seeded by (seed, sample, copy).
fn make_item(
    samples: &[Sample],
    scene_pool: &[Sample],
    scenes: &[usize],
    job: Job,
    seed: u64,
) -> Result<Labelled> {
    let s = &samples[job.sample];
    let mix = seed ^ (job.sample as u64).wrapping_mul(0x9e3779b97f4a7c15) ^ (job.copy as u64) << 48;
    let mut rng = rand::rngs::StdRng::seed_from_u64(mix);
    let image = shared::frame::load_image(&s.path)?;
    let scene_path = &scene_pool[scenes[rng.gen_range(0..scenes.len())]].path;
    let scene = shared::frame::load_image(scene_path)?;
    let l = if s.face {
        let face = Labelled { image, face: true, bbox: s.bbox };
        augment::augment_face(&face, &scene, job.strength, &mut rng)
    } else {
        augment::augment_scene(&image, &scene, job.strength, &mut rng)
    };
    Ok(l)
}

/// Writes augmented training images with their box drawn in red, to check by eye what the
/// model is taught.
fn dump_samples(train: &[Sample], p: &TrainParams, dir: &Path, n: usize) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let scenes: Vec<usize> = (0..train.len()).filter(|&i| !train[i].face).collect();
    for (k, sample) in (0..train.len()).step_by((train.len() / n.max(1)).max(1)).take(n).enumerate()
    {
        let job = Job { sample, copy: 1 + k % p.copies.max(1), strength: Strength::Strong };
        let mut l = make_item(train, train, &scenes, job, p.seed)?;
        if l.face {
            draw_box(&mut l.image, l.bbox);
        }
        let path = dir.join(format!("{k:03}_{}.jpg", if l.face { "face" } else { "none" }));
        l.image.save(&path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn draw_box(img: &mut image::RgbImage, b: shared::geometry::BBox) {
    let [x1, y1, x2, y2] = b.to_pixels(img.width(), img.height());
    let (w, h) = (img.width() as f32, img.height() as f32);
    let red = image::Rgb([255, 0, 0]);
    for x in x1.max(0.0) as u32..(x2.min(w - 1.0) as u32) {
        img.put_pixel(x, y1.clamp(0.0, h - 1.0) as u32, red);
        img.put_pixel(x, y2.clamp(0.0, h - 1.0) as u32, red);
    }
    for y in y1.max(0.0) as u32..(y2.min(h - 1.0) as u32) {
        img.put_pixel(x1.clamp(0.0, w - 1.0) as u32, y, red);
        img.put_pixel(x2.clamp(0.0, w - 1.0) as u32, y, red);
    }
}

fn pick(samples: &[Sample], part: Part, limit: usize) -> Vec<Sample> {
    let all = samples.iter().filter(|s| s.part == part).cloned();
    if limit == 0 {
        all.collect()
    } else {
        // Interleave faces and scenes so a small limit still has both classes.
        let (f, n): (Vec<_>, Vec<_>) = all.partition(|s| s.face);
        f.into_iter().zip(n).flat_map(|(a, b)| [a, b]).take(limit).collect()
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_prefix(what.to_string());
    bar
}

/// The losses of one batch.
struct Losses {
    total: Tensor,
    cls: Tensor,
    bbox: Tensor,
}

/// The seed's loss: label-smoothed BCE on the face score; on face images only, squared
/// corner error plus squared width and height error.
fn losses(out: &model::Logits, face: &Tensor, bbox: &Tensor, p: &TrainParams) -> Losses {
    let target = face * (1.0 - p.smoothing) + p.smoothing / 2.0;
    let cls = out.score.squeeze_dim(1).binary_cross_entropy_with_logits::<Tensor>(
        &target,
        None,
        None,
        Reduction::Mean,
    );
    let pred = out.bbox.sigmoid();
    let corner = (&pred - bbox).square().sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let wh = |t: &Tensor| {
        let w = t.select(1, 2) - t.select(1, 0);
        let h = t.select(1, 3) - t.select(1, 1);
        (w, h)
    };
    let ((pw, ph), (tw, th)) = (wh(&pred), wh(bbox));
    let size = (pw - tw).square() + (ph - th).square();
    let per = (corner + size) * face;
    let bbox_loss = per.sum(Kind::Float) / face.sum(Kind::Float).clamp_min(1.0);
    let total = &cls * p.class_weight + &bbox_loss * p.reg_weight;
    Losses { total, cls, bbox: bbox_loss }
}

/// Figures of one pass over a cache.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Figures {
    /// Weighted data loss (without the L2 term).
    pub loss: f64,
    /// Face-score BCE.
    pub cls: f64,
    /// Box loss.
    pub bbox: f64,
    /// Face / no-face accuracy at 0.5.
    pub accuracy: f64,
    /// Mean IoU over face images.
    pub iou: f64,
}

/// Evaluates the tail and heads on a cache, in inference mode.
fn evaluate_cache(net: &Detector, c: &Cache, p: &TrainParams, dev: Device) -> Figures {
    tch::no_grad(|| {
        let n = c.len();
        let (mut loss, mut cls, mut bbox, mut correct, mut iou, mut faces) =
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let mut start = 0;
        while start < n {
            let len = (n - start).min(256);
            let x = c.feats.narrow(0, start, len).to_device(dev).to_kind(Kind::Float);
            let face = c.face.narrow(0, start, len).to_device(dev);
            let target = c.bbox.narrow(0, start, len).to_device(dev);
            let out = net.heads(&net.pooled_from(&x, p.freeze, false), false);
            let l = losses(&out, &face, &target, p);
            let w = len as f64;
            loss += l.total.double_value(&[]) * w;
            cls += l.cls.double_value(&[]) * w;
            bbox += l.bbox.double_value(&[]) * w;
            let predicted = out.score.squeeze_dim(1).gt(0.0).to_kind(Kind::Float);
            correct +=
                predicted.eq_tensor(&face).to_kind(Kind::Float).sum(Kind::Float).double_value(&[]);
            iou +=
                (box_iou(&out.bbox.sigmoid(), &target) * &face).sum(Kind::Float).double_value(&[]);
            faces += face.sum(Kind::Float).double_value(&[]);
            start += len;
        }
        let n = n.max(1) as f64;
        Figures {
            loss: loss / n,
            cls: cls / n,
            bbox: bbox / n,
            accuracy: correct / n,
            iou: iou / faces.max(1.0),
        }
    })
}

/// Row-wise IoU of two `[N, 4]` box tensors.
pub fn box_iou(a: &Tensor, b: &Tensor) -> Tensor {
    let ix1 = a.select(1, 0).maximum(&b.select(1, 0));
    let iy1 = a.select(1, 1).maximum(&b.select(1, 1));
    let ix2 = a.select(1, 2).minimum(&b.select(1, 2));
    let iy2 = a.select(1, 3).minimum(&b.select(1, 3));
    let inter = (ix2 - ix1).clamp_min(0.0) * (iy2 - iy1).clamp_min(0.0);
    let area = |t: &Tensor| {
        ((t.select(1, 2) - t.select(1, 0)).clamp_min(0.0))
            * ((t.select(1, 3) - t.select(1, 1)).clamp_min(0.0))
    };
    let union = area(a) + area(b) - &inter;
    inter / union.clamp_min(1e-9)
}

/// One training run's settings.
struct Run {
    dir: PathBuf,
    params: TrainParams,
    resume: bool,
    /// No progress bars (grid search).
    quiet: bool,
    /// Keep `epoch-N.safetensors` beside `last.safetensors`.
    keep_epochs: bool,
    /// Where the tail and heads run.
    device: Device,
}

/// The outcome of a run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Summary {
    /// Epoch (1-based) with the lowest validation loss.
    pub best_epoch: usize,
    /// Validation figures at that epoch.
    pub best: Figures,
    /// Epochs run in total.
    pub epochs: usize,
    /// Whether Ctrl-C ended the run early.
    pub interrupted: bool,
    /// Wall time of the training loop in seconds.
    pub seconds: f64,
}

impl Run {
    fn train(&self, vs: &mut nn::VarStore, net: &Detector, caches: &Caches) -> Result<Summary> {
        let p = &self.params;
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let (start_epoch, mut best_loss, mut best_epoch) = if self.resume {
            resume_state(&self.dir)?
        } else {
            std::fs::write(self.dir.join("metrics.csv"), METRICS_HEADER)?;
            (0, f64::INFINITY, 0)
        };
        model::freeze_prefix(vs, p.freeze);
        tch::manual_seed(p.seed as i64 + start_epoch as i64);
        let mut opt = nn::Adam::default().build(vs, p.lr)?;
        let stop = interrupt_flag();
        let before = if self.resume { previous_seconds(&self.dir) } else { 0.0 };
        let t0 = Instant::now();
        let mut best = Figures::default();
        let mut epochs = start_epoch;
        let mut interrupted = false;
        for epoch in start_epoch..p.epochs {
            let lr = p.lr * p.decay.powi(epoch as i32);
            opt.set_lr(lr);
            let e0 = Instant::now();
            let (train_loss, seen) = self.epoch(net, &mut opt, &caches.train, epoch, &stop);
            interrupted = stop.load(Ordering::SeqCst);
            let val = evaluate_cache(net, &caches.val, p, self.device);
            let secs = e0.elapsed().as_secs_f64();
            epochs = epoch + 1;
            let last = self.dir.join("last.safetensors");
            save_atomic(vs, &last)?;
            if self.keep_epochs && !interrupted {
                // A second name for the file just written: the next epoch's save replaces
                // `last` by rename, so this one keeps its weights without a copy.
                let kept = self.dir.join(format!("epoch-{epochs}.safetensors"));
                let _ = std::fs::remove_file(&kept);
                std::fs::hard_link(&last, &kept)
                    .with_context(|| format!("keeping {}", kept.display()))?;
            }
            if val.loss < best_loss && !interrupted {
                best_loss = val.loss;
                best_epoch = epochs;
                best = val;
                save_atomic(vs, &self.dir.join("best.safetensors"))?;
            }
            let row =
                format!(
                "{epochs},{lr:.3e},{train_loss:.5},{:.5},{:.5},{:.5},{:.4},{:.4},{secs:.1},{:.1}\n",
                val.loss, val.cls, val.bbox, val.accuracy, val.iou, seen as f64 / secs
            );
            append(&self.dir.join("metrics.csv"), &row)?;
            tracing::info!(
                epoch = epochs,
                lr,
                train_loss,
                val_loss = val.loss,
                val_acc = val.accuracy,
                val_iou = val.iou,
                secs = secs as u64,
                "epoch done"
            );
            self.write_params(t0, before, best_epoch, epochs, interrupted)?;
            if interrupted || epochs - best_epoch >= p.patience {
                break;
            }
        }
        if best_epoch > 0 {
            crate::model::load_checkpoint(vs, &self.dir.join("best.safetensors"))
                .context("restoring the best weights")?;
        }
        let seconds = t0.elapsed().as_secs_f64();
        Ok(Summary { best_epoch, best, epochs, interrupted, seconds })
    }

    /// One pass over the shuffled training cache; returns the mean loss and images seen.
    fn epoch(
        &self,
        net: &Detector,
        opt: &mut nn::Optimizer,
        c: &Cache,
        epoch: usize,
        stop: &AtomicBool,
    ) -> (f64, i64) {
        let p = &self.params;
        let n = c.len();
        let dev = self.device;
        let perm = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
        let bar = if self.quiet {
            ProgressBar::hidden()
        } else {
            progress(n as u64, &format!("epoch {}", epoch + 1))
        };
        let (mut sum, mut seen) = (0.0, 0i64);
        let mut start = 0;
        // A last batch of one would break BatchNorm's batch statistics: drop remainders
        // smaller than 2.
        while start + 1 < n {
            let len = (n - start).min(p.batch);
            let idx = perm.narrow(0, start, len);
            let x = c.feats.index_select(0, &idx).to_device(dev).to_kind(Kind::Float);
            let face = c.face.index_select(0, &idx).to_device(dev);
            let bbox = c.bbox.index_select(0, &idx).to_device(dev);
            let out = net.heads(&net.pooled_from(&x, p.freeze, true), true);
            let l = losses(&out, &face, &bbox, p);
            let total = &l.total + net.dense_l2() * p.l2;
            opt.backward_step(&total);
            let v = l.total.double_value(&[]);
            sum += v * len as f64;
            seen += len;
            start += len;
            bar.inc(len as u64);
            bar.set_message(format!("loss {:.4}", sum / seen as f64));
            if stop.load(Ordering::SeqCst) {
                break;
            }
        }
        bar.finish_and_clear();
        (sum / seen.max(1) as f64, seen)
    }

    /// Writes params.json; `before` is the training time of earlier sessions of this run.
    fn write_params(
        &self,
        t0: Instant,
        before: f64,
        best_epoch: usize,
        epochs: usize,
        interrupted: bool,
    ) -> Result<()> {
        let json = serde_json::json!({
            "params": self.params,
            "best_epoch": best_epoch,
            "epochs": epochs,
            "interrupted": interrupted,
            "training_seconds": before + t0.elapsed().as_secs_f64(),
        });
        let path = self.dir.join("params.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Training time recorded by earlier sessions of a resumed run (0 when unknown).
fn previous_seconds(dir: &Path) -> f64 {
    let json = std::fs::read(dir.join("params.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    json.and_then(|v| v["training_seconds"].as_f64()).unwrap_or(0.0)
}

const METRICS_HEADER: &str =
    "epoch,lr,train_loss,val_loss,val_cls,val_box,val_accuracy,val_iou,seconds,images_per_s\n";

fn append(path: &Path, row: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(row.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// Writes to `<name>.tmp.safetensors` and renames, so readers never see half a file.
pub(crate) fn save_atomic(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let tmp = path.with_extension("tmp.safetensors");
    vs.save(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

fn read_params(dir: &Path) -> Result<TrainParams> {
    let path = dir.join("params.json");
    let bytes = std::fs::read(&path)
        .with_context(|| format!("{}: cannot resume without it", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)?;
    serde_json::from_value(v["params"].clone())
        .with_context(|| format!("{}: no params", path.display()))
}

/// Epochs done, best validation loss and its epoch, from a run's metrics.csv.
fn resume_state(dir: &Path) -> Result<(usize, f64, usize)> {
    let path = dir.join("metrics.csv");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (mut last, mut best, mut best_epoch) = (0, f64::INFINITY, 0);
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let (Some(e), Some(v)) = (cols.first(), cols.get(3)) else { continue };
        let (e, v): (usize, f64) = (e.parse()?, v.parse()?);
        last = e;
        if v < best {
            (best, best_epoch) = (v, e);
        }
    }
    Ok((last, best, best_epoch))
}

/// A flag set by Ctrl-C: the current batch finishes, the epoch's checkpoint is written.
/// One flag for the whole process: `ctrlc` takes a single handler, and every run of a grid
/// must see the same interruption.
fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    let flag = FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&flag);
        let installed = ctrlc::set_handler(move || {
            tracing::warn!("interrupted: finishing the batch and saving last.safetensors");
            f.store(true, Ordering::SeqCst);
        });
        if let Err(e) = installed {
            tracing::warn!(error = %e, "cannot install the Ctrl-C handler");
        }
        flag
    });
    Arc::clone(flag)
}

/// The seed's grid. Resumable: combinations already in `grid.csv` are not run again, so
/// an interrupted grid picks up where it stopped.
fn grid(
    args: &TrainArgs,
    caches: &Caches,
    imagenet: &[weights::NamedTensor],
    device: Device,
) -> Result<()> {
    let dir = args.runs.join(&args.run);
    std::fs::create_dir_all(&dir)?;
    let csv = dir.join("grid.csv");
    let mut done = grid_rows(&csv)?;
    if done.is_empty() {
        std::fs::write(&csv, GRID_HEADER)?;
    } else {
        tracing::info!(done = done.len(), results = %csv.display(), "resuming the grid");
    }
    for cw in [0.1, 0.2] {
        for rw in [1.7, 1.8, 1.9] {
            for batch in [96, 128] {
                for dropout in [0.6, 0.7] {
                    let name = format!("cw{cw}-rw{rw}-b{batch}-d{dropout}");
                    if done.iter().any(|(n, _)| *n == name) {
                        continue;
                    }
                    let params = TrainParams {
                        class_weight: cw,
                        reg_weight: rw,
                        batch,
                        dropout,
                        lr: 1e-4,
                        decay: 0.9,
                        ..args.params.clone()
                    };
                    let mut vs = nn::VarStore::new(device);
                    let net = Detector::new(&vs.root(), HeadConfig { dropout });
                    weights::load_into(&vs, imagenet, "features.")?;
                    let run = Run {
                        dir: dir.join(&name),
                        params,
                        resume: false,
                        quiet: true,
                        keep_epochs: false,
                        device,
                    };
                    let s = run.train(&mut vs, &net, caches)?;
                    if s.interrupted {
                        bail!("grid interrupted; results so far in {}", csv.display());
                    }
                    let b = s.best;
                    append(
                        &csv,
                        &format!(
                            "{cw},{rw},{batch},{dropout},{},{:.5},{:.4},{:.4},{:.0}\n",
                            s.best_epoch, b.loss, b.accuracy, b.iou, s.seconds
                        ),
                    )?;
                    tracing::info!(
                        combination = %name,
                        val_acc = b.accuracy,
                        val_iou = b.iou,
                        "grid point done"
                    );
                    // Losses with different weights are not comparable: rank by accuracy
                    // and IoU together.
                    done.push((name, b.accuracy + b.iou));
                }
            }
        }
    }
    let best = done.iter().max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((name, score)) = best {
        tracing::info!(best = %name, score, results = %csv.display(), "grid done");
        std::fs::write(dir.join("grid_best.txt"), format!("{name}\n"))?;
    }
    Ok(())
}

const GRID_HEADER: &str =
    "class_weight,reg_weight,batch,dropout,best_epoch,val_loss,val_accuracy,val_iou,seconds\n";

/// The combinations already in a grid's CSV, by name, with their score (accuracy + IoU).
fn grid_rows(csv: &Path) -> Result<Vec<(String, f64)>> {
    let text = match std::fs::read_to_string(csv) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", csv.display())),
    };
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let [cw, rw, batch, dropout, _, _, acc, iou, ..] = cols[..] else {
            bail!("{}:{}: expected 9 columns, found {}", csv.display(), n + 1, cols.len());
        };
        let score = acc.parse::<f64>().unwrap_or(0.0) + iou.parse::<f64>().unwrap_or(0.0);
        rows.push((format!("cw{cw}-rw{rw}-b{batch}-d{dropout}"), score));
    }
    Ok(rows)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.
mod tests {
    use super::*;

    fn params() -> TrainParams {
        TrainParams {
            epochs: 1,
            batch: 4,
            lr: 1e-4,
            decay: 0.9,
            class_weight: 0.2,
            reg_weight: 1.8,
            dropout: 0.5,
            l2: 0.02,
            smoothing: 0.1,
            patience: 2,
            freeze: 14,
            copies: 1,
            strong_share: 0.5,
            seed: 1,
            threads: 1,
        }
    }

    #[test]
    fn box_loss_ignores_no_face_rows() {
        let out = model::Logits {
            score: Tensor::from_slice(&[0.0f32, 0.0]).reshape([2, 1]),
            // sigmoid(0) = 0.5 everywhere.
            bbox: Tensor::zeros([2, 4], (Kind::Float, Device::Cpu)),
        };
        let face = Tensor::from_slice(&[1.0f32, 0.0]);
        let bbox = Tensor::from_slice(&[0.5f32, 0.5, 0.5, 0.5, 0.0, 0.0, 1.0, 1.0]).reshape([2, 4]);
        let l = losses(&out, &face, &bbox, &params());
        // Row 0: corners all 0.5 = target, size 0 = target; row 1 ignored.
        assert!(l.bbox.double_value(&[]).abs() < 1e-7);
        // BCE of logit 0 is ln 2 whatever the (smoothed) target.
        assert!((l.cls.double_value(&[]) - 2f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn box_loss_counts_corners_and_size() {
        let out = model::Logits {
            score: Tensor::zeros([1, 1], (Kind::Float, Device::Cpu)),
            bbox: Tensor::zeros([1, 4], (Kind::Float, Device::Cpu)),
        };
        let bbox = Tensor::from_slice(&[0.25f32, 0.5, 0.75, 0.5]).reshape([1, 4]);
        let l = losses(&out, &Tensor::from_slice(&[1.0f32]), &bbox, &params());
        // Corners: 0.0625 * 2; width 0 vs 0.5 -> 0.25; height 0 vs 0 -> 0.
        assert!((l.bbox.double_value(&[]) - 0.375).abs() < 1e-6);
    }

    #[test]
    fn one_copy_reframes_the_given_share() {
        let p = TrainParams { strong_share: 0.7, ..params() };
        let strong = (0..10_000).filter(|&i| job(i, 0, &p).strength == Strength::Strong).count();
        assert!((6_700..7_300).contains(&strong), "{strong}");
        let p = TrainParams { copies: 3, ..params() };
        assert_eq!(job(5, 0, &p).strength, Strength::Mild);
        assert_eq!(job(5, 2, &p).strength, Strength::Strong);
    }

    #[test]
    fn iou_of_tensors() {
        let a = Tensor::from_slice(&[0.0f32, 0.0, 0.5, 0.5, 0.0, 0.0, 1.0, 1.0]).reshape([2, 4]);
        let b = Tensor::from_slice(&[0.0f32, 0.0, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0]).reshape([2, 4]);
        let iou = box_iou(&a, &b);
        assert!((iou.double_value(&[0]) - 1.0).abs() < 1e-6);
        assert!((iou.double_value(&[1]) - 0.25).abs() < 1e-6);
    }

    #[test]
    fn resume_state_finds_best() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("metrics.csv"),
            format!(
                "{METRICS_HEADER}{}{}{}",
                "1,1e-4,0.9,0.50,0,0,0,0,1,1\n",
                "2,9e-5,0.8,0.40,0,0,0,0,1,1\n",
                "3,8e-5,0.7,0.45,0,0,0,0,1,1\n"
            ),
        )
        .unwrap();
        assert_eq!(resume_state(dir.path()).unwrap(), (3, 0.40, 2));
    }
}
