//! Symmetric per-channel int8 quantization of weight tensors.
//!
//! Each output channel (axis 0) gets its own scale, `max |w| / 127`, and zero point 0,
//! which is what ONNX's DequantizeLinear with `axis = 0` undoes. Per-channel scales matter
//! here: the depthwise convolutions' channels differ in range by orders of magnitude, and
//! one scale per tensor would flatten the small ones to zero.

use super::Param;

/// A weight tensor as int8 values plus one scale per output channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    /// The values, in the layout of the float tensor.
    pub values: Vec<i8>,
    /// One scale per output channel: `w ~= values * scale`.
    pub scales: Vec<f32>,
}

/// Quantizes `param` with one symmetric scale per slice along axis 0.
pub fn quantize_per_channel(param: &Param) -> Quantized {
    let channels = param.shape.first().copied().unwrap_or(1).max(1);
    let per_channel = param.data.len() / channels;
    let mut values = Vec::with_capacity(param.data.len());
    let mut scales = Vec::with_capacity(channels);
    for chunk in param.data.chunks(per_channel.max(1)) {
        let max = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        // An all-zero channel would give a zero scale, which DequantizeLinear accepts but
        // some runtimes divide by when re-quantizing; any positive scale encodes zeros.
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        scales.push(scale);
        values.extend(chunk.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8));
    }
    Quantized { values, scales }
}

/// The float tensor the quantized form stands for (what DequantizeLinear computes).
#[cfg(test)]
pub fn dequantize(q: &Quantized) -> Vec<f32> {
    let per_channel = q.values.len() / q.scales.len().max(1);
    q.values
        .chunks(per_channel.max(1))
        .zip(&q.scales)
        .flat_map(|(chunk, &s)| chunk.iter().map(move |&v| v as f32 * s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_channel_gets_its_own_scale() {
        // Two channels whose ranges differ by 1000x: both must survive the round trip.
        let p = Param { shape: vec![2, 3], data: vec![0.5, -1.0, 0.25, 0.001, -0.0005, 0.0] };
        let q = quantize_per_channel(&p);
        assert_eq!(q.scales.len(), 2);
        assert!((q.scales[0] - 1.0 / 127.0).abs() < 1e-9);
        assert!((q.scales[1] - 0.001 / 127.0).abs() < 1e-12);
        assert_eq!(q.values[1], -127);
        assert_eq!(q.values[3], 127);
        for (a, b) in dequantize(&q).iter().zip(&p.data) {
            assert!((a - b).abs() <= b.abs() / 127.0 + 1e-9, "{a} vs {b}");
        }
    }

    #[test]
    fn an_all_zero_channel_stays_zero_with_a_positive_scale() {
        let p = Param { shape: vec![2, 2], data: vec![0.0, 0.0, 1.0, -1.0] };
        let q = quantize_per_channel(&p);
        assert!(q.scales[0] > 0.0);
        assert_eq!(&q.values[..2], &[0, 0]);
        assert_eq!(&q.values[2..], &[127, -127]);
    }
}
