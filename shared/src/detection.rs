//! What the model says about one frame.

use serde::{Deserialize, Serialize};

use crate::BBox;

/// The detector's output for one frame: a face score and the box of the most likely face.
///
/// The model has one box head, so a frame yields at most one face. The box is always
/// present (the head always answers); whether it means anything depends on the score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Probability that the frame holds a face, in `[0, 1]`.
    pub score: f32,
    /// The predicted face box, normalised to the original frame.
    pub bbox: BBox,
}

impl Detection {
    /// Whether the score reaches `threshold`, i.e. the frame counts as showing a face.
    pub fn is_face(&self, threshold: f32) -> bool {
        self.score >= threshold
    }

    /// Distance of the score from the decision: 0 at the threshold, 1 at certainty.
    pub fn confidence(&self, threshold: f32) -> f32 {
        if self.score >= threshold {
            (self.score - threshold) / (1.0 - threshold).max(f32::EPSILON)
        } else {
            (threshold - self.score) / threshold.max(f32::EPSILON)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_is_zero_at_the_threshold_and_one_at_the_ends() {
        let d = |score| Detection { score, bbox: BBox::new(0.0, 0.0, 1.0, 1.0) };
        assert!(d(0.5).confidence(0.5).abs() < 1e-6);
        assert!((d(1.0).confidence(0.5) - 1.0).abs() < 1e-6);
        assert!((d(0.0).confidence(0.5) - 1.0).abs() < 1e-6);
        assert!(d(0.7).is_face(0.5) && !d(0.3).is_face(0.5));
    }
}
