//! Keeping frames: the [`policy`] decides, [`encode_jpeg`] shrinks, the [`log`] stores
//! them crash-safely within the [`budget`].

pub mod budget;
pub mod log;
pub mod policy;
pub mod record_file;

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;

pub use log::{CaptureDraft, CaptureLog, CaptureLogError, LogConfig, LogView, SharedLog};
pub use policy::{CapturePolicy, Decision, PolicyConfig};

/// A frame encoded for storage.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// The JPEG bytes.
    pub jpeg: Vec<u8>,
    /// Stored width.
    pub width: u32,
    /// Stored height.
    pub height: u32,
}

/// Encodes a frame as JPEG at `quality` (1-100), first shrinking it so that its longer
/// side is at most `max_side` pixels (aspect ratio kept; 0 means no limit).
pub fn encode_jpeg(
    frame: &RgbImage,
    quality: u8,
    max_side: u32,
) -> Result<EncodedFrame, image::ImageError> {
    let longer = frame.width().max(frame.height());
    let shrunk;
    let frame = if max_side > 0 && longer > max_side {
        let scale = f64::from(max_side) / f64::from(longer);
        let w = ((f64::from(frame.width()) * scale).round() as u32).max(1);
        let h = ((f64::from(frame.height()) * scale).round() as u32).max(1);
        shrunk = image::imageops::thumbnail(frame, w, h);
        &shrunk
    } else {
        frame
    };
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(Cursor::new(&mut jpeg), quality.clamp(1, 100))
        .encode_image(frame)?;
    Ok(EncodedFrame { jpeg, width: frame.width(), height: frame.height() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_is_shrunk_to_the_longer_side_and_decodes() {
        let frame = RgbImage::from_fn(1600, 900, |x, y| image::Rgb([x as u8, y as u8, 90]));
        let enc = encode_jpeg(&frame, 80, 640).unwrap();
        assert_eq!((enc.width, enc.height), (640, 360));
        let back = shared::frame::decode_image(&enc.jpeg, "capture").unwrap();
        assert_eq!(back.dimensions(), (640, 360));
    }

    #[test]
    fn quality_changes_the_size_and_small_frames_keep_theirs() {
        let frame = RgbImage::from_fn(300, 200, |x, y| image::Rgb([(x * y) as u8, x as u8, 7]));
        let low = encode_jpeg(&frame, 20, 1280).unwrap();
        let high = encode_jpeg(&frame, 95, 1280).unwrap();
        assert_eq!((high.width, high.height), (300, 200));
        assert!(low.jpeg.len() < high.jpeg.len());
    }
}
