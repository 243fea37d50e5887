//! The detector's ONNX graph, written layer by layer from a checkpoint's named tensors
//! (names and layout per `models/README.md`: torchvision's MobileNetV2 `features`,
//! global max pooling, two dense heads).
//!
//! BatchNorm is folded into the convolution or dense layer before it and dropout is
//! dropped, so the graph is what inference computes and nothing else.

use tract_onnx::pb::ModelProto;

use super::onnx::{attr_int, attr_ints, GraphBuilder, WeightForm};
use super::{Checkpoint, ExportError, Param};

/// BatchNorm epsilon of torchvision's MobileNetV2 and of the heads (PyTorch's default).
pub const BN_EPS: f32 = 1e-5;

/// Input side length in pixels.
pub const INPUT_SIZE: usize = 224;

/// The backbone's inverted-residual settings (expansion t, output channels c, repeats n,
/// first stride s): the training model's own table, in sizes.
fn settings() -> [(usize, usize, usize, usize); 7] {
    crate::model::BLOCKS.map(|(t, c, n, s)| (t as usize, c as usize, n, s as usize))
}

/// Width of the stem and of the last backbone layer.
const STEM: usize = 32;
const LAST: usize = 1280;

/// Dense head widths: 1280 -> 1024 -> 512 -> k.
const HEAD_HIDDEN: [usize; 2] = [1024, 512];

/// One convolution or dense layer with BatchNorm folded in.
#[derive(Debug, Clone)]
struct Folded {
    weight: Param,
    bias: Vec<f32>,
}

/// Builds the detector graph from `checkpoint` with weights stored as `form`.
pub fn build(
    checkpoint: &Checkpoint,
    form: WeightForm,
    metadata: &[(&str, String)],
) -> Result<ModelProto, ExportError> {
    let mut g = GraphBuilder::new(form);
    g.constant("relu6.min", &[], &[0.0]);
    g.constant("relu6.max", &[], &[6.0]);

    let mut x = conv_bn(&mut g, checkpoint, "input", "features.0", [STEM, 3, 3, 3], 2, 1)?;
    x = relu6(&mut g, &x, "features.0");
    let mut channels = STEM;
    let mut index = 1;
    for (t, c, n, s) in settings() {
        for repeat in 0..n {
            let stride = if repeat == 0 { s } else { 1 };
            x = inverted_residual(&mut g, checkpoint, &x, index, channels, c, t, stride)?;
            channels = c;
            index += 1;
        }
    }
    let last = format!("features.{index}");
    x = conv_bn(&mut g, checkpoint, &x, &last, [LAST, channels, 1, 1], 1, 1)?;
    x = relu6(&mut g, &x, &last);

    let pooled = g.node("GlobalMaxPool", "pool", &[&x], "pool", vec![]);
    let flat = g.node("Flatten", "flatten", &[&pooled], "embedding", vec![attr_int("axis", 1)]);
    head(&mut g, checkpoint, &flat, "cls", 1, "score")?;
    head(&mut g, checkpoint, &flat, "box", 4, "bbox")?;

    let input = [1, 3, INPUT_SIZE, INPUT_SIZE];
    Ok(g.into_model(("input", &input), &[("score", &[1, 1]), ("bbox", &[1, 4])], metadata))
}

/// One inverted-residual block; `index` is its position in `features`.
#[allow(clippy::too_many_arguments)]
fn inverted_residual(
    g: &mut GraphBuilder,
    ck: &Checkpoint,
    x: &str,
    index: usize,
    input: usize,
    output: usize,
    expansion: usize,
    stride: usize,
) -> Result<String, ExportError> {
    let p = format!("features.{index}.conv");
    let hidden = input * expansion;
    let mut h = x.to_string();
    // Block 1 has no expansion layer, so its sub-layers sit one index lower.
    let mut sub = 0;
    if expansion != 1 {
        let name = format!("{p}.0");
        h = conv_bn(g, ck, &h, &name, [hidden, input, 1, 1], 1, 1)?;
        h = relu6(g, &h, &name);
        sub = 1;
    }
    let dw = format!("{p}.{sub}");
    h = conv_bn(g, ck, &h, &dw, [hidden, 1, 3, 3], stride, hidden)?;
    h = relu6(g, &h, &dw);
    let pw = fold_conv(
        ck,
        &format!("{p}.{}", sub + 1),
        &format!("{p}.{}", sub + 2),
        [output, hidden, 1, 1],
    )?;
    h = conv(g, &h, &format!("{p}.{}", sub + 1), &pw, 1, 1);
    if stride == 1 && input == output {
        let name = format!("features.{index}.add");
        h = g.node("Add", &name, &[x, &h], &name, vec![]);
    }
    Ok(h)
}

/// A convolution named `prefix.0` followed by BatchNorm `prefix.1`, folded.
fn conv_bn(
    g: &mut GraphBuilder,
    ck: &Checkpoint,
    x: &str,
    prefix: &str,
    shape: [usize; 4],
    stride: usize,
    group: usize,
) -> Result<String, ExportError> {
    let folded = fold_conv(ck, &format!("{prefix}.0"), &format!("{prefix}.1"), shape)?;
    Ok(conv(g, x, prefix, &folded, stride, group))
}

fn conv(
    g: &mut GraphBuilder,
    x: &str,
    name: &str,
    layer: &Folded,
    stride: usize,
    group: usize,
) -> String {
    let k = layer.weight.shape[2];
    let pad = (k / 2) as i64;
    let w = g.weight(&format!("{name}.weight"), &layer.weight);
    let b = g.constant(&format!("{name}.bias"), &[layer.bias.len()], &layer.bias);
    let attrs = vec![
        attr_ints("kernel_shape", &[k as i64, k as i64]),
        attr_ints("strides", &[stride as i64, stride as i64]),
        attr_ints("pads", &[pad, pad, pad, pad]),
        attr_ints("dilations", &[1, 1]),
        attr_int("group", group as i64),
    ];
    g.node("Conv", name, &[x, &w, &b], &format!("{name}.out"), attrs)
}

fn relu6(g: &mut GraphBuilder, x: &str, name: &str) -> String {
    let name = format!("{name}.relu6");
    g.node("Clip", &name, &[x, "relu6.min", "relu6.max"], &name, vec![])
}

/// One dense head: fc1+bn1, ReLU, fc2+bn2, ReLU, out, Sigmoid (dropout is identity at
/// inference and is left out).
fn head(
    g: &mut GraphBuilder,
    ck: &Checkpoint,
    x: &str,
    prefix: &str,
    k: usize,
    output: &str,
) -> Result<(), ExportError> {
    let fc1 = fold_linear(ck, prefix, "fc1", "bn1", [HEAD_HIDDEN[0], LAST])?;
    let fc2 = fold_linear(ck, prefix, "fc2", "bn2", [HEAD_HIDDEN[1], HEAD_HIDDEN[0]])?;
    let out = linear(ck, &format!("{prefix}.out"), [k, HEAD_HIDDEN[1]])?;
    let mut h = gemm(g, x, &format!("{prefix}.fc1"), &fc1);
    h = g.node("Relu", &format!("{prefix}.relu1"), &[&h], &format!("{prefix}.relu1"), vec![]);
    h = gemm(g, &h, &format!("{prefix}.fc2"), &fc2);
    h = g.node("Relu", &format!("{prefix}.relu2"), &[&h], &format!("{prefix}.relu2"), vec![]);
    h = gemm(g, &h, &format!("{prefix}.out"), &out);
    g.node("Sigmoid", &format!("{prefix}.sigmoid"), &[&h], output, vec![]);
    Ok(())
}

fn gemm(g: &mut GraphBuilder, x: &str, name: &str, layer: &Folded) -> String {
    let w = g.weight(&format!("{name}.weight"), &layer.weight);
    let b = g.constant(&format!("{name}.bias"), &[layer.bias.len()], &layer.bias);
    let out = format!("{name}.out");
    g.node("Gemm", name, &[x, &w, &b], &out, vec![attr_int("transB", 1)])
}

/// Per-channel BatchNorm as `y = x * scale + shift`.
fn bn_affine(
    ck: &Checkpoint,
    bn: &str,
    channels: usize,
) -> Result<(Vec<f32>, Vec<f32>), ExportError> {
    let get = |field: &str| ck.get(&format!("{bn}.{field}"), &[channels]);
    let (gamma, beta) = (get("weight")?, get("bias")?);
    let (mean, var) = (get("running_mean")?, get("running_var")?);
    let scale: Vec<f32> =
        gamma.data.iter().zip(&var.data).map(|(g, v)| g / (v + BN_EPS).sqrt()).collect();
    let shift = beta.data.iter().zip(&mean.data).zip(&scale).map(|((b, m), s)| b - m * s);
    let shift = shift.collect();
    Ok((scale, shift))
}

/// Scales each output channel (slice along axis 0) of `weight` by `scale`.
fn scale_rows(weight: &Param, scale: &[f32]) -> Param {
    let per_row = weight.data.len() / scale.len();
    let data = weight
        .data
        .chunks(per_row)
        .zip(scale)
        .flat_map(|(row, &s)| row.iter().map(move |w| w * s))
        .collect();
    Param { shape: weight.shape.clone(), data }
}

fn fold_conv(
    ck: &Checkpoint,
    conv: &str,
    bn: &str,
    shape: [usize; 4],
) -> Result<Folded, ExportError> {
    let weight = ck.get(&format!("{conv}.weight"), &shape)?;
    let (scale, shift) = bn_affine(ck, bn, shape[0])?;
    Ok(Folded { weight: scale_rows(weight, &scale), bias: shift })
}

fn fold_linear(
    ck: &Checkpoint,
    prefix: &str,
    fc: &str,
    bn: &str,
    shape: [usize; 2],
) -> Result<Folded, ExportError> {
    let dense = linear(ck, &format!("{prefix}.{fc}"), shape)?;
    let (scale, shift) = bn_affine(ck, &format!("{prefix}.{bn}"), shape[0])?;
    // bn(W x + b) = s * (W x) + (s * b + shift)
    let bias = dense.bias.iter().zip(&scale).zip(&shift).map(|((b, s), t)| b * s + t).collect();
    Ok(Folded { weight: scale_rows(&dense.weight, &scale), bias })
}

fn linear(ck: &Checkpoint, name: &str, shape: [usize; 2]) -> Result<Folded, ExportError> {
    let weight = ck.get(&format!("{name}.weight"), &shape)?.clone();
    let bias = ck.get(&format!("{name}.bias"), &[shape[0]])?.data.clone();
    Ok(Folded { weight, bias })
}

/// Every tensor name the graph reads, with its shape: what a checkpoint must hold.
/// Used by tests to make checkpoints and by the exporter to report what is missing.
#[cfg(test)]
pub fn expected_parameters() -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let mut conv_bn = |prefix: &str, conv: &str, bn: &str, shape: [usize; 4]| {
        out.push((format!("{prefix}{conv}.weight"), shape.to_vec()));
        for f in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{prefix}{bn}.{f}"), vec![shape[0]]));
        }
    };
    conv_bn("features.0", ".0", ".1", [STEM, 3, 3, 3]);
    let (mut channels, mut index) = (STEM, 1);
    for (t, c, n, _) in settings() {
        for _ in 0..n {
            let p = format!("features.{index}.conv");
            let hidden = channels * t;
            let sub = usize::from(t != 1);
            if t != 1 {
                conv_bn(&p, ".0.0", ".0.1", [hidden, channels, 1, 1]);
            }
            conv_bn(&p, &format!(".{sub}.0"), &format!(".{sub}.1"), [hidden, 1, 3, 3]);
            conv_bn(&p, &format!(".{}", sub + 1), &format!(".{}", sub + 2), [c, hidden, 1, 1]);
            channels = c;
            index += 1;
        }
    }
    conv_bn(&format!("features.{index}"), ".0", ".1", [LAST, channels, 1, 1]);
    for (head, k) in [("cls", 1), ("box", 4)] {
        let dims = [(LAST, HEAD_HIDDEN[0]), (HEAD_HIDDEN[0], HEAD_HIDDEN[1])];
        for (i, (inp, outp)) in dims.into_iter().enumerate() {
            out.push((format!("{head}.fc{}.weight", i + 1), vec![outp, inp]));
            out.push((format!("{head}.fc{}.bias", i + 1), vec![outp]));
            for f in ["weight", "bias", "running_mean", "running_var"] {
                out.push((format!("{head}.bn{}.{f}", i + 1), vec![outp]));
            }
        }
        out.push((format!("{head}.out.weight"), vec![k, HEAD_HIDDEN[1]]));
        out.push((format!("{head}.out.bias"), vec![k]));
    }
    out
}
