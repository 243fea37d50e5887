//! Frames: decoding an image file and turning a frame into the model's input tensor.
//!
//! Training (host, `tch`) and inference (edge, `tract`) both go through
//! [`prepare_input`], so the model sees the same pixels on both sides.

use std::io::Cursor;
use std::path::Path;

use image::{imageops, DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::manifest::InputSpec;

/// Frames above this many pixels are refused before decoding: a small file can declare a
/// huge image (30000x30000 from a 109 KB PNG took 3.5 GB), which a Pi cannot hold. 64
/// megapixels leaves room for any camera or phone photo this product meets.
pub const MAX_PIXELS: u64 = 64_000_000;

/// Why a frame could not be read.
///
/// The causes are part of each message (and not also exposed as `source`), so that a log
/// line or an `{:#}` chain says them once.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read the file: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        reason: std::io::Error,
    },
    /// The bytes are not a decodable JPEG or PNG (corrupt, other format).
    #[error("{what}: not a decodable JPEG or PNG image: {reason}")]
    Decode {
        /// The file or buffer that was being decoded.
        what: String,
        /// The decoder's complaint.
        reason: image::ImageError,
    },
    /// A JPEG cut short: its image data never reaches the end-of-image marker.
    #[error("{0}: truncated JPEG (the image data stops before its end marker)")]
    Truncated(String),
    /// The image declares more pixels than [`MAX_PIXELS`].
    #[error("{what}: {width}x{height} pixels is more than the {MAX_PIXELS} this reads")]
    TooLarge {
        /// The file or buffer.
        what: String,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
    /// The image decoded but has no pixels.
    #[error("{0}: image has zero width or height")]
    Empty(String),
}

/// Reads a JPEG or PNG file and applies its EXIF orientation, so that boxes are measured
/// on the image as a person sees it.
pub fn load_image(path: &Path) -> Result<RgbImage, FrameError> {
    let bytes = std::fs::read(path)
        .map_err(|reason| FrameError::Io { path: path.display().to_string(), reason })?;
    decode_image(&bytes, &path.display().to_string())
}

/// Decodes an in-memory JPEG or PNG (applying EXIF orientation); `what` names it in errors.
pub fn decode_image(bytes: &[u8], what: &str) -> Result<RgbImage, FrameError> {
    let err = |reason| FrameError::Decode { what: what.to_string(), reason };
    // Decoders fill a cut-short JPEG with grey without a word; the model would then
    // score half a frame.
    if bytes.starts_with(&[0xFF, 0xD8]) && !jpeg_reaches_its_end(bytes) {
        return Err(FrameError::Truncated(what.to_string()));
    }

    let mut decoder = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(image::ImageError::IoError(e)))?
        .into_decoder()
        .map_err(err)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(FrameError::TooLarge { what: what.to_string(), width, height });
    }

    let orientation = decoder.orientation().map_err(err)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(err)?;
    image.apply_orientation(orientation);
    if image.width() == 0 || image.height() == 0 {
        return Err(FrameError::Empty(what.to_string()));
    }
    Ok(image.into_rgb8())
}

/// Whether a JPEG's main image reaches its end-of-image marker (`FF D9`). The header
/// segments are skipped by their lengths (an EXIF thumbnail inside them has markers of its
/// own); after the first scan begins, entropy-coded data cannot hold `FF D9`, so finding it
/// anywhere after means the image is whole. Bytes after it (a phone's appended video) are
/// allowed; headers cut short are left to the decoder, which reports them.
fn jpeg_reaches_its_end(bytes: &[u8]) -> bool {
    let mut i = 2;
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            // Not a marker where one belongs: malformed, and the decoder will say how.
            return true;
        }
        let marker = bytes[i + 1];
        match marker {
            0xFF => i += 1,
            0xDA => return bytes[i..].windows(2).any(|w| w == [0xFF, 0xD9]),
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                // A header cut short: the decoder says so itself.
                let Some(len) = bytes.get(i + 2..i + 4) else { return true };
                i += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
            }
        }
    }
    true
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
        assert!(decode_image(&buf, "whole.jpg").is_ok());
        let mut trailed = buf.clone();
        trailed.extend_from_slice(b"appended video bytes");
        assert!(decode_image(&trailed, "trailed.jpg").is_ok(), "bytes after the end marker");

        let scan = buf.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        for cut in [buf.len() - 2, (scan + buf.len()) / 2, scan + 4] {
            let err = decode_image(&buf[..cut], "cut.jpg").unwrap_err();
            assert!(matches!(err, FrameError::Truncated(_)), "cut at {cut}: {err}");
            assert!(err.to_string().contains("cut.jpg: truncated JPEG"), "{err}");
        }
        // Cut inside the headers: the decoder's own error.
        assert!(decode_image(&buf[..40], "cut.jpg").is_err());
    }

    #[test]
    fn the_samples_and_a_jpeg_with_an_exif_thumbnail_are_whole() {
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples");
        for entry in std::fs::read_dir(samples).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "jpg") {
                assert!(load_image(&path).is_ok(), "{}", path.display());
            }
        }
        // An APP1 segment holding a thumbnail's own SOI ... EOI before the main image.
        let mut img = Vec::new();
        DynamicImage::ImageRgb8(RgbImage::new(32, 32))
            .write_to(&mut Cursor::new(&mut img), image::ImageFormat::Jpeg)
            .unwrap();
        let thumb = [0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0xFF, 0xD9];
        let mut app1 = vec![0xFF, 0xE1, 0x00, (thumb.len() + 2) as u8];
        app1.extend_from_slice(&thumb);
        let mut with_thumb = img[..2].to_vec();
        with_thumb.extend_from_slice(&app1);
        with_thumb.extend_from_slice(&img[2..]);
        assert!(decode_image(&with_thumb, "thumb.jpg").is_ok());
        let cut = &with_thumb[..with_thumb.len() - 2];
        assert!(matches!(decode_image(cut, "thumb.jpg"), Err(FrameError::Truncated(_))));
    }

    #[test]
    fn an_image_declaring_too_many_pixels_is_refused_before_decoding() {
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(RgbImage::new(16, 16))
            .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        // Rewrite the frame header's height and width (SOF0: FF C0, length, precision).
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0x75, 0x30, 0x75, 0x30]); // 30000 x 30000

        let err = decode_image(&jpeg, "bomb.jpg").unwrap_err();

        assert!(matches!(err, FrameError::TooLarge { width: 30_000, height: 30_000, .. }), "{err}");
    }
}
