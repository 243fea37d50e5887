//! Frames: decoding an image file and turning a frame into the model's input tensor.
//!
//! Training (host, `tch`) and inference (edge, `tract`) both go through
//! [`prepare_input`], so the model sees the same pixels on both sides.

use std::io::Cursor;
use std::path::Path;

use image::{imageops, DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::manifest::InputSpec;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read the file: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not a decodable JPEG or PNG (corrupt, truncated, other format).
    #[error("{what}: not a decodable JPEG or PNG image: {source}")]
    Decode {
        /// The file or buffer that was being decoded.
        what: String,
        /// The decoder's complaint.
        source: image::ImageError,
    },
    /// The image decoded but has no pixels.
    #[error("{0}: image has zero width or height")]
    Empty(String),
}

/// Reads a JPEG or PNG file and applies its EXIF orientation, so that boxes are measured
/// on the image as a person sees it.
pub fn load_image(path: &Path) -> Result<RgbImage, FrameError> {
    let bytes = std::fs::read(path)
        .map_err(|source| FrameError::Io { path: path.display().to_string(), source })?;
    decode_image(&bytes, &path.display().to_string())
}

/// Decodes an in-memory JPEG or PNG (applying EXIF orientation); `what` names it in errors.
pub fn decode_image(bytes: &[u8], what: &str) -> Result<RgbImage, FrameError> {
    let err = |source| FrameError::Decode { what: what.to_string(), source };
    let mut decoder = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(image::ImageError::IoError(e)))?
        .into_decoder()
        .map_err(err)?;
    let orientation = decoder.orientation().map_err(err)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(err)?;
    image.apply_orientation(orientation);
    if image.width() == 0 || image.height() == 0 {
        return Err(FrameError::Empty(what.to_string()));
    }
    Ok(image.into_rgb8())
}

/// Resizes a frame to the model's input size, stretching it to the square (the box the
/// model predicts is then normalised to the original frame as it is), and lays it out
/// as normalised `f32` in NCHW order: `[1, 3, height, width]` flattened.
pub fn prepare_input(frame: &RgbImage, spec: &InputSpec) -> Vec<f32> {
    let resized = resize(frame, spec.width, spec.height);
    to_chw(&resized, spec)
}

/// Resizes to exactly `width` x `height`. Downscaling averages areas (fast and free of
/// aliasing on 20-megapixel photos); upscaling is bilinear.
pub fn resize(frame: &RgbImage, width: u32, height: u32) -> RgbImage {
    if frame.width() == width && frame.height() == height {
        return frame.clone();
    }
    if frame.width() >= width && frame.height() >= height {
        imageops::thumbnail(frame, width, height)
    } else {
        imageops::resize(frame, width, height, imageops::FilterType::Triangle)
    }
}

/// Lays out an already resized frame as normalised planar `f32` (`(v / 255 - mean) / std`).
pub fn to_chw(frame: &RgbImage, spec: &InputSpec) -> Vec<f32> {
    let plane = (frame.width() * frame.height()) as usize;
    let mut out = vec![0.0f32; 3 * plane];
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * spec.std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| spec.mean[c] / spec.std[c]);
    for (i, px) in frame.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = px.0[c] as f32 * scale[c] - shift[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chw_layout_and_normalisation() {
        let spec = InputSpec::default();
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        img.put_pixel(1, 0, image::Rgb([0, 0, 255]));
        let v = to_chw(&img, &spec);
        assert_eq!(v.len(), 6);
        // Red plane: first pixel full, second empty.
        assert!((v[0] - (1.0 - spec.mean[0]) / spec.std[0]).abs() < 1e-5);
        assert!((v[1] - (0.0 - spec.mean[0]) / spec.std[0]).abs() < 1e-5);
        // Blue plane: second pixel full.
        assert!((v[5] - (1.0 - spec.mean[2]) / spec.std[2]).abs() < 1e-5);
    }

    #[test]
    fn prepare_gives_model_sized_input_from_any_size() {
        let spec = InputSpec::default();
        for (w, h) in [(5184, 3456), (100, 60), (224, 224)] {
            let img = RgbImage::new(w, h);
            assert_eq!(prepare_input(&img, &spec).len(), 3 * 224 * 224, "{w}x{h}");
        }
    }

    #[test]
    fn corrupt_bytes_name_the_source() {
        let err = decode_image(b"\xff\xd8\xff\xe0 not really a jpeg", "frame 7").unwrap_err();
        assert!(err.to_string().starts_with("frame 7: not a decodable"), "{err}");
    }

    #[test]
    fn truncated_jpeg_is_an_error_not_a_panic() {
        let mut img = RgbImage::new(64, 64);
        img.put_pixel(3, 3, image::Rgb([200, 10, 10]));
        let mut buf = Vec::new();
        DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Jpeg)
            .unwrap();
        buf.truncate(buf.len() / 3);
        assert!(decode_image(&buf, "cut.jpg").is_err());
    }
}
