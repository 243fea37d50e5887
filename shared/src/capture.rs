//! Capture records: the frames an edge device kept for a technician to review.

use serde::{Deserialize, Serialize};

use crate::Detection;

/// Why the edge kept a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureReason {
    /// The face score fell inside the uncertainty band.
    Uncertain,
    /// A random sample of confident frames, so the host sees what the model gets right.
    ConfidentSample,
    /// A technician pressed the capture button (GPIO) or asked through the API.
    Manual,
}

impl CaptureReason {
    /// The name used in JSON, logs and the review UI.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureReason::Uncertain => "uncertain",
            CaptureReason::ConfidentSample => "confident_sample",
            CaptureReason::Manual => "manual",
        }
    }
}

/// One kept frame, as written to the edge's capture log and sent to the host.
///
/// The image itself is a JPEG file beside the log; `image` is its file name, relative to
/// the capture folder, and `image_sha256` lets the host check what it pulled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureRecord {
    /// Monotonically increasing per device; the host syncs "everything after N".
    pub seq: u64,
    /// Capture time, milliseconds since the Unix epoch (UTC).
    pub time_ms: i64,
    /// Why the frame was kept.
    pub reason: CaptureReason,
    /// What the model said about the frame.
    pub detection: Detection,
    /// Version string of the model that produced `detection`.
    pub model_version: String,
    /// JPEG file name relative to the capture folder.
    pub image: String,
    /// SHA-256 of the JPEG file, lowercase hex.
    pub image_sha256: String,
    /// Width of the stored JPEG in pixels.
    pub width: u32,
    /// Height of the stored JPEG in pixels.
    pub height: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BBox;

    fn record() -> CaptureRecord {
        CaptureRecord {
            seq: 42,
            time_ms: 1_764_700_000_000,
            reason: CaptureReason::Uncertain,
            detection: Detection { score: 0.52, bbox: BBox::new(0.1, 0.2, 0.3, 0.4) },
            model_version: "2026.12.03-1".into(),
            image: "000000042.jpg".into(),
            image_sha256: "ab".repeat(32),
            width: 640,
            height: 480,
        }
    }

    #[test]
    fn postcard_round_trip() {
        let r = record();
        let bytes = postcard::to_stdvec(&r).unwrap();
        assert_eq!(postcard::from_bytes::<CaptureRecord>(&bytes).unwrap(), r);
    }

    #[test]
    fn json_uses_field_words() {
        let v = serde_json::to_value(record()).unwrap();
        assert_eq!(v["reason"], "uncertain");
        assert_eq!(v["detection"]["bbox"].as_array().unwrap().len(), 4);
    }
}
