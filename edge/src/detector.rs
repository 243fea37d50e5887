//! The detector: one frame in, one [`Detection`] out.
//!
//! The runtime (`edge run`), `edge detect` and the model self-test all go through the
//! [`Detector`] trait, so they can be tested with a stand-in and the ONNX model can be
//! swapped between frames.

use image::RgbImage;
use shared::Detection;

/// Why a frame could not be run through the model.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The model failed on this input (shape mismatch, internal error).
    #[error("model {model} failed on the frame: {reason}")]
    Inference {
        /// Version of the model that failed.
        model: String,
        /// What the runtime said.
        reason: String,
    },
    /// The model answered, but with NaN or out-of-range values.
    #[error("model {model} gave an unusable output: {reason}")]
    BadOutput {
        /// Version of the model.
        model: String,
        /// What was wrong with the output.
        reason: String,
    },
}

/// Something that finds the face in a frame.
pub trait Detector: Send {
    /// Runs the model on one frame of any size; the box comes back normalised to it.
    fn detect(&mut self, frame: &RgbImage) -> Result<Detection, DetectError>;

    /// Version string of the loaded model, as written in its manifest.
    fn model_version(&self) -> &str;

    /// The score at or above which a frame counts as showing a face.
    fn threshold(&self) -> f32;
}
