//! The detector: torchvision's MobileNetV2 `features`, global max pooling, and two dense
//! heads (face score and box), named exactly as `models/README.md` says so that a
//! checkpoint is also what `host export` reads.
//!
//! The backbone can run in two parts, `features[0..k)` and `features[k..19)`, so that
//! training with a frozen prefix can cache the prefix's output once and train only the
//! rest (see `train`).

use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Number of modules in `features` (stem, 17 inverted residual blocks, last conv).
pub const FEATURE_COUNT: usize = 19;
/// Width of the pooled backbone output.
pub const FEATURE_WIDTH: i64 = 1280;
/// BatchNorm epsilon of torchvision's MobileNetV2 and of the heads.
const BN_EPS: f64 = 1e-5;

/// Inverted residual settings of MobileNetV2 (width 1.0): expansion, output channels,
/// repeats, first stride. The ONNX export builds its graph from the same table.
pub(crate) const BLOCKS: [(i64, i64, usize, i64); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// Loads the checkpoint at `path` into `vs`, as safetensors whatever the file is called
/// (libtorch's own loader picks a format by extension and answers a wrong guess with a C++
/// stack). The error names the file and what was wrong with it.
pub fn load_checkpoint(vs: &nn::VarStore, path: &std::path::Path) -> anyhow::Result<()> {
    if !path.is_file() {
        anyhow::bail!("checkpoint {}: no such file", path.display());
    }
    // Reading copies into the trainable variables in place, which autograd refuses
    // outside no_grad.
    tch::no_grad(|| vs.read_safetensors(path)).map_err(|e| {
        anyhow::anyhow!(
            "checkpoint {}: not a checkpoint of this detector (expected the safetensors file \
             `host train` or `host average` writes): {e}",
            path.display()
        )
    })
}

/// Head settings: the dropout probability used in training.
#[derive(Debug, Clone, Copy)]
pub struct HeadConfig {
    /// Dropout after each hidden layer.
    pub dropout: f64,
}

/// A convolution (no bias) followed by BatchNorm and optionally ReLU6.
#[derive(Debug)]
struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    relu6: bool,
}

impl ConvBn {
    fn new(p: &nn::Path, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> Self {
        let cfg = nn::ConvConfig {
            stride,
            padding: (k - 1) / 2,
            groups,
            bias: false,
            ..Default::default()
        };
        let conv = nn::conv2d(p / "0", cin, cout, k, cfg);
        let bn = nn::batch_norm2d(p / "1", cout, bn_config());
        ConvBn { conv, bn, relu6: true }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.bn.forward_t(&x.apply(&self.conv), train);
        if self.relu6 {
            y.clamp(0.0, 6.0)
        } else {
            y
        }
    }
}

fn bn_config() -> nn::BatchNormConfig {
    nn::BatchNormConfig { eps: BN_EPS, momentum: 0.1, ..Default::default() }
}

/// One module of `features`.
#[derive(Debug)]
enum Feature {
    /// Stem (`features.0`) and last conv (`features.18`).
    Conv(ConvBn),
    /// An inverted residual block (`features.1` .. `features.17`).
    Residual { layers: Vec<ConvBn>, project: nn::Conv2D, bn: nn::BatchNorm, skip: bool },
}

impl Feature {
    fn residual(p: &nn::Path, cin: i64, cout: i64, stride: i64, expand: i64) -> Self {
        let p = p / "conv";
        let hidden = cin * expand;
        let mut layers = Vec::new();
        if expand != 1 {
            layers.push(ConvBn::new(&(&p / "0"), cin, hidden, 1, 1, 1));
        }
        let i = layers.len();
        layers.push(ConvBn::new(&(&p / i), hidden, hidden, 3, stride, hidden));
        let cfg = nn::ConvConfig { bias: false, ..Default::default() };
        let project = nn::conv2d(&p / (i + 1), hidden, cout, 1, cfg);
        let bn = nn::batch_norm2d(&p / (i + 2), cout, bn_config());
        Feature::Residual { layers, project, bn, skip: stride == 1 && cin == cout }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Feature::Conv(c) => c.forward(x, train),
            Feature::Residual { layers, project, bn, skip } => {
                let mut y = x.shallow_clone();
                for l in layers {
                    y = l.forward(&y, train);
                }
                let y = bn.forward_t(&y.apply(project), train);
                if *skip {
                    y + x
                } else {
                    y
                }
            }
        }
    }
}

/// A dense head: fc1 -> bn1 -> ReLU -> dropout -> fc2 -> bn2 -> ReLU -> dropout -> out ->
/// sigmoid.
#[derive(Debug)]
struct Head {
    fc1: nn::Linear,
    bn1: nn::BatchNorm,
    fc2: nn::Linear,
    bn2: nn::BatchNorm,
    out: nn::Linear,
    dropout: f64,
}

impl Head {
    fn new(p: &nn::Path, outputs: i64, cfg: HeadConfig) -> Self {
        Head {
            fc1: nn::linear(p / "fc1", FEATURE_WIDTH, 1024, Default::default()),
            bn1: nn::batch_norm1d(p / "bn1", 1024, bn_config()),
            fc2: nn::linear(p / "fc2", 1024, 512, Default::default()),
            bn2: nn::batch_norm1d(p / "bn2", 512, bn_config()),
            out: nn::linear(p / "out", 512, outputs, Default::default()),
            dropout: cfg.dropout,
        }
    }

    /// Returns the logits (before the sigmoid): training uses them for a stable loss.
    fn logits(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.bn1.forward_t(&x.apply(&self.fc1), train).relu().dropout(self.dropout, train);
        let h = self.bn2.forward_t(&h.apply(&self.fc2), train).relu().dropout(self.dropout, train);
        h.apply(&self.out)
    }

    /// The dense kernels, which get the L2 penalty.
    fn kernels(&self) -> [&Tensor; 3] {
        [&self.fc1.ws, &self.fc2.ws, &self.out.ws]
    }
}

/// The two-head MobileNetV2 face detector.
#[derive(Debug)]
pub struct Detector {
    features: Vec<Feature>,
    cls: Head,
    bbox: Head,
}

/// The model's outputs as logits; apply a sigmoid for the contract's outputs.
#[derive(Debug)]
pub struct Logits {
    /// `[N, 1]` face score logit.
    pub score: Tensor,
    /// `[N, 4]` box logits (`[x1, y1, x2, y2]` after the sigmoid).
    pub bbox: Tensor,
}

impl Detector {
    /// Creates the variables under `root` (the var store's root for the contract's names).
    pub fn new(root: &nn::Path, cfg: HeadConfig) -> Self {
        let f = root / "features";
        let mut features = vec![Feature::Conv(ConvBn::new(&(&f / 0), 3, 32, 3, 2, 1))];
        let mut cin = 32;
        for (t, c, n, s) in BLOCKS {
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                features.push(Feature::residual(&(&f / features.len()), cin, c, stride, t));
                cin = c;
            }
        }
        features.push(Feature::Conv(ConvBn::new(&(&f / 18), cin, FEATURE_WIDTH, 1, 1, 1)));
        Detector {
            features,
            cls: Head::new(&(root / "cls"), 1, cfg),
            bbox: Head::new(&(root / "box"), 4, cfg),
        }
    }

    /// Runs `features[range]` on a tensor (NCHW). `train` puts BatchNorm in training mode.
    pub fn features_range(&self, x: &Tensor, range: std::ops::Range<usize>, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for f in &self.features[range] {
            y = f.forward(&y, train);
        }
        y
    }

    /// The pooled backbone features `[N, 1280]` from the output of `features[0..start)`.
    pub fn pooled_from(&self, x: &Tensor, start: usize, train: bool) -> Tensor {
        self.features_range(x, start..FEATURE_COUNT, train).amax([2, 3], false)
    }

    /// Both heads' logits on pooled features.
    pub fn heads(&self, pooled: &Tensor, train: bool) -> Logits {
        Logits { score: self.cls.logits(pooled, train), bbox: self.bbox.logits(pooled, train) }
    }

    /// The whole model on normalised `[N, 3, 224, 224]` frames.
    pub fn forward(&self, x: &Tensor, train: bool) -> Logits {
        self.heads(&self.pooled_from(x, 0, train), train)
    }

    /// Sum of squares of all dense kernels, for the L2 penalty.
    pub fn dense_l2(&self) -> Tensor {
        let mut ks = self.cls.kernels().into_iter().chain(self.bbox.kernels());
        let first = ks.next().map(|k| k.square().sum(tch::Kind::Float));
        let mut total = first.unwrap_or_else(|| Tensor::from(0.0f32));
        for k in ks {
            total += k.square().sum(tch::Kind::Float);
        }
        total
    }
}

/// The same tensor (NCHW shape) with channels-last strides. libtorch's CPU convolutions
/// run MobileNetV2 about 1.6x faster in this layout (measured on the 2-core build machine),
/// and tch has no memory-format API, so the layout is made by permuting.
pub fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Switches every 4-D variable (the convolution kernels) to channels-last strides, or back
/// to contiguous ones. Switch back before saving: checkpoints are written as plain NCHW.
pub fn set_channels_last(vs: &nn::VarStore, on: bool) {
    for (_, mut var) in vs.variables() {
        if var.dim() == 4 {
            let data = if on { channels_last(&var) } else { var.contiguous() };
            tch::no_grad(|| var.set_data(&data));
        }
    }
}

/// Marks the variables of `features[0..k)` as frozen (no gradient), all others trainable.
pub fn freeze_prefix(vs: &nn::VarStore, k: usize) {
    for (name, var) in vs.variables() {
        let frozen = feature_index(&name).is_some_and(|i| i < k);
        let trainable = !frozen && !name.contains("running_");
        let _ = var.set_requires_grad(trainable);
    }
}

/// The `i` of a `features.i.` variable name.
fn feature_index(name: &str) -> Option<usize> {
    name.strip_prefix("features.")?.split('.').next()?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.
mod tests {
    use super::*;

    #[test]
    fn checkpoints_load_by_content_not_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (vs, _m) = model();
        let saved = dir.path().join("weights.pt");
        vs.save(dir.path().join("w.safetensors")).unwrap();
        std::fs::rename(dir.path().join("w.safetensors"), &saved).unwrap();
        let (other, _m) = model();

        load_checkpoint(&other, &saved).unwrap();
        let (mine, theirs) = (vs.variables(), other.variables());
        for (name, v) in &mine {
            assert!(v.equal(&theirs[name]), "{name} differs after loading");
        }

        let garbage = dir.path().join("garbage.onnx");
        std::fs::write(&garbage, b"not weights").unwrap();
        let err = load_checkpoint(&other, &garbage).unwrap_err().to_string();
        assert!(err.contains("garbage.onnx") && err.contains("not a checkpoint"), "{err}");
        let err = load_checkpoint(&other, &dir.path().join("gone")).unwrap_err().to_string();
        assert!(err.contains("no such file"), "{err}");
    }

    fn model() -> (nn::VarStore, Detector) {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let m = Detector::new(&vs.root(), HeadConfig { dropout: 0.5 });
        (vs, m)
    }

    #[test]
    fn names_and_count_follow_the_contract() {
        let (vs, _) = model();
        let vars = vs.variables();
        // 314 ImageNet tensors minus 52 num_batches_tracked and the 2 classifier tensors,
        // plus 2 heads x (3 linear x 2 + 2 BN x 4).
        assert_eq!(vars.len(), 314 - 52 - 2 + 2 * 14);
        for name in [
            "features.0.0.weight",
            "features.1.conv.0.0.weight",
            "features.1.conv.1.weight",
            "features.1.conv.2.running_var",
            "features.2.conv.1.0.weight",
            "features.17.conv.3.bias",
            "features.18.1.running_mean",
            "cls.fc1.weight",
            "box.out.bias",
        ] {
            assert!(vars.contains_key(name), "{name} missing");
        }
        assert_eq!(vars["cls.fc1.weight"].size(), vec![1024, 1280]);
        assert_eq!(vars["box.out.weight"].size(), vec![4, 512]);
        assert_eq!(vars["features.2.conv.1.0.weight"].size(), vec![96, 1, 3, 3]);
    }

    #[test]
    fn split_forward_equals_whole_forward() {
        let (_, m) = model();
        let x = Tensor::randn([2, 3, 96, 96], (tch::Kind::Float, tch::Device::Cpu));
        let whole = m.pooled_from(&x, 0, false);
        let mid = m.features_range(&x, 0..14, false);
        assert_eq!(mid.size(), vec![2, 96, 6, 6]);
        let split = m.pooled_from(&mid, 14, false);
        assert_eq!(whole.size(), vec![2, 1280]);
        let diff = (whole - split).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
    }

    /// Compares with PyTorch: the fixture was made by
    /// host/tests/fixtures/make_backbone_reference.py (torch 2.11.0) from the same weights
    /// and the same analytic input.
    #[test]
    fn imagenet_backbone_matches_pytorch() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let pth = dir.join("../.weights/mobilenet_v2-b0353104.pth");
        if !pth.exists() {
            eprintln!("skipped: run scripts/setup.sh to fetch the ImageNet weights");
            return;
        }
        let (vs, m) = model();
        let tensors = crate::weights::read_legacy_pth(&pth).unwrap();
        let report = crate::weights::load_into(&vs, &tensors, "features.").unwrap();
        // 314 tensors: 52 num_batches_tracked counters and the ImageNet classifier's 2 are
        // not part of the detector.
        assert_eq!(
            (report.total, report.skipped, report.ignored, report.copied),
            (314, 52, 2, 260)
        );

        let input: Vec<f32> =
            (0..3 * 64 * 64).map(|i| 2.0 * (0.01 * i as f64).sin() as f32).collect();
        let x = Tensor::from_slice(&input).reshape([1, 3, 64, 64]);
        let ours = m.pooled_from(&x, 0, false).reshape([-1]);
        let bytes = std::fs::read(dir.join("tests/fixtures/backbone_reference.f32")).unwrap();
        let reference: Vec<f32> =
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(reference.len(), 1280);
        let diff = (ours - Tensor::from_slice(&reference)).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "max abs diff {diff}");
    }

    #[test]
    fn channels_last_changes_layout_not_values() {
        let (vs, m) = model();
        let x = Tensor::randn([2, 3, 64, 64], (tch::Kind::Float, tch::Device::Cpu));
        let plain = m.features_range(&x, 0..17, false);
        set_channels_last(&vs, true);
        assert_eq!(vs.variables()["features.0.0.weight"].stride(), vec![27, 1, 9, 3]);
        let fast = m.features_range(&channels_last(&x), 0..17, false);
        set_channels_last(&vs, false);
        assert_eq!(vs.variables()["features.0.0.weight"].stride(), vec![27, 9, 3, 1]);
        let diff = (plain - fast).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{diff}");
    }

    #[test]
    fn freezing_stops_gradients_at_the_prefix() {
        let (vs, _) = model();
        freeze_prefix(&vs, 14);
        let vars = vs.variables();
        assert!(!vars["features.13.conv.0.0.weight"].requires_grad());
        assert!(vars["features.14.conv.0.0.weight"].requires_grad());
        assert!(vars["cls.fc1.weight"].requires_grad());
        assert!(!vars["cls.bn1.running_mean"].requires_grad());
    }
}
