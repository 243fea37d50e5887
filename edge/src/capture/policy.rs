//! Which frames to keep: uncertain ones, a few confident ones, never too many, never
//! the same scene twice in a row.
//!
//! The policy is pure logic: the caller passes the time, a random draw and a way to
//! hash the frame, so every decision can be tested without a clock or a camera.

use std::collections::VecDeque;

use image::{imageops, RgbImage};
use serde::{Deserialize, Serialize};
use shared::CaptureReason;

/// Settings of the capture policy (the `[capture]` table of the config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Scores in `[low, high]` count as uncertain and are kept.
    pub band: [f32; 2],
    /// Fraction of confident frames kept anyway, e.g. 0.01 for one in a hundred.
    pub confident_sample_rate: f64,
    /// Most captures per rolling minute (manual ones excepted).
    pub max_per_minute: u32,
    /// Frames whose perceptual hash differs from a recent capture's by at most this many
    /// bits (of 64) are near duplicates and skipped.
    pub duplicate_distance: u32,
    /// How many recent captures a frame is compared against.
    pub duplicate_history: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            band: [0.3, 0.7],
            confident_sample_rate: 0.01,
            max_per_minute: 6,
            duplicate_distance: 6,
            duplicate_history: 8,
        }
    }
}

/// Why the policy let a frame go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Outside the band and not drawn for the sample.
    Confident,
    /// The per-minute limit is used up.
    RateLimited,
    /// Too close to a recent capture.
    NearDuplicate {
        /// Hamming distance to the closest recent capture.
        distance: u32,
    },
}

/// The policy's answer for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Store the frame, for this reason; `hash` is to be passed to
    /// [`CapturePolicy::kept`] once it is stored.
    Keep {
        /// Why.
        reason: CaptureReason,
        /// The frame's perceptual hash.
        hash: u64,
    },
    /// Let it go.
    Skip(Skip),
}

/// The capture policy with its memory of recent captures.
#[derive(Debug, Clone)]
pub struct CapturePolicy {
    config: PolicyConfig,
    recent_times_ms: VecDeque<u64>,
    recent_hashes: VecDeque<u64>,
}

impl CapturePolicy {
    /// A policy with no captures behind it.
    pub fn new(config: PolicyConfig) -> Self {
        Self { config, recent_times_ms: VecDeque::new(), recent_hashes: VecDeque::new() }
    }

    /// Decides on one frame.
    ///
    /// `now_ms` is a monotonic time in ms, `roll` a uniform draw in `[0, 1)` for the
    /// confident sample, `manual` a technician's request (kept whatever the score, the
    /// rate or the resemblance), and `hash` computes the frame's perceptual hash (only
    /// called for frames that pass the score test).
    pub fn decide(
        &mut self,
        score: f32,
        manual: bool,
        now_ms: u64,
        roll: f64,
        hash: impl FnOnce() -> u64,
    ) -> Decision {
        let [low, high] = self.config.band;
        let reason = if manual {
            CaptureReason::Manual
        } else if (low..=high).contains(&score) {
            CaptureReason::Uncertain
        } else if roll < self.config.confident_sample_rate {
            CaptureReason::ConfidentSample
        } else {
            return Decision::Skip(Skip::Confident);
        };
        let hash = hash();
        if reason != CaptureReason::Manual {
            self.forget_before(now_ms.saturating_sub(60_000));
            if self.recent_times_ms.len() >= self.config.max_per_minute as usize {
                return Decision::Skip(Skip::RateLimited);
            }
            let closest = self.recent_hashes.iter().map(|h| (h ^ hash).count_ones()).min();
            if let Some(distance) = closest.filter(|&d| d <= self.config.duplicate_distance) {
                return Decision::Skip(Skip::NearDuplicate { distance });
            }
        }
        Decision::Keep { reason, hash }
    }

    /// Notes a capture that was actually stored (a refused store does not use up the
    /// rate limit or block similar frames).
    pub fn kept(&mut self, hash: u64, now_ms: u64) {
        self.recent_times_ms.push_back(now_ms);
        self.recent_hashes.push_back(hash);
        while self.recent_hashes.len() > self.config.duplicate_history {
            self.recent_hashes.pop_front();
        }
    }

    fn forget_before(&mut self, cutoff_ms: u64) {
        while self.recent_times_ms.front().is_some_and(|&t| t < cutoff_ms) {
            self.recent_times_ms.pop_front();
        }
    }
}

/// A 64-bit difference hash: the frame shrunk to 9x8 grey pixels, one bit per
/// horizontal neighbour pair (is the left one brighter?). Small changes of light or
/// noise flip few bits; a different scene flips about half.
pub fn dhash(frame: &RgbImage) -> u64 {
    let small = imageops::thumbnail(frame, 9, 8);
    let grey = |x, y| {
        let p = small.get_pixel(x, y).0;
        u32::from(p[0]) * 299 + u32::from(p[1]) * 587 + u32::from(p[2]) * 114
    };
    let mut bits = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            bits = (bits << 1) | u64::from(grey(x, y) > grey(x + 1, y));
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CapturePolicy {
        CapturePolicy::new(PolicyConfig::default())
    }

    /// A distinct hash per call: far apart (Hamming distance ~32) so no duplicates.
    fn unique(i: u64) -> u64 {
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    #[test]
    fn uncertain_scores_are_kept_confident_ones_skipped() {
        let mut p = policy();
        assert!(matches!(
            p.decide(0.5, false, 0, 0.99, || 1),
            Decision::Keep { reason: CaptureReason::Uncertain, .. }
        ));
        assert_eq!(p.decide(0.95, false, 0, 0.99, || 1), Decision::Skip(Skip::Confident));
        assert_eq!(p.decide(0.05, false, 0, 0.99, || 1), Decision::Skip(Skip::Confident));
        assert!(matches!(
            p.decide(0.3, false, 0, 0.99, || 1),
            Decision::Keep { reason: CaptureReason::Uncertain, .. }
        ));
    }

    #[test]
    fn a_low_roll_samples_a_confident_frame() {
        let mut p = policy();
        assert!(matches!(
            p.decide(0.99, false, 0, 0.001, || 1),
            Decision::Keep { reason: CaptureReason::ConfidentSample, .. }
        ));
    }

    #[test]
    fn the_hash_is_not_computed_for_skipped_confident_frames() {
        let mut p = policy();
        let d = p.decide(0.99, false, 0, 0.5, || panic!("hashed a frame it did not need"));
        assert_eq!(d, Decision::Skip(Skip::Confident));
    }

    #[test]
    fn rate_limit_is_a_rolling_minute() {
        let mut p = policy();
        for i in 0..6 {
            let Decision::Keep { hash, .. } = p.decide(0.5, false, i * 1000, 0.9, || unique(i))
            else {
                panic!("capture {i} refused");
            };
            p.kept(hash, i * 1000);
        }
        assert_eq!(
            p.decide(0.5, false, 30_000, 0.9, || unique(50)),
            Decision::Skip(Skip::RateLimited)
        );
        // The first capture (t = 0) leaves the window after 60 s.
        assert!(matches!(p.decide(0.5, false, 60_001, 0.9, || unique(51)), Decision::Keep { .. }));
    }

    #[test]
    fn refused_stores_do_not_use_up_the_rate() {
        let mut p = policy();
        for i in 0..20 {
            assert!(matches!(p.decide(0.5, false, i, 0.9, || unique(i)), Decision::Keep { .. }));
        }
    }

    #[test]
    fn near_duplicates_of_recent_captures_are_skipped() {
        let mut p = policy();
        p.kept(0b1111_0000, 0);
        let close = 0b1111_0011; // 2 bits away
        assert_eq!(
            p.decide(0.5, false, 1000, 0.9, || close),
            Decision::Skip(Skip::NearDuplicate { distance: 2 })
        );
        assert!(matches!(p.decide(0.5, false, 1000, 0.9, || !close), Decision::Keep { .. }));
    }

    #[test]
    fn the_duplicate_memory_is_bounded() {
        let mut p = policy();
        p.kept(42, 0);
        for i in 1..=8 {
            p.kept(unique(i), 0);
        }
        // 42 has fallen out of the last eight.
        assert!(matches!(p.decide(0.5, false, 61_000, 0.9, || 42), Decision::Keep { .. }));
    }

    #[test]
    fn manual_captures_ignore_score_rate_and_duplicates() {
        let mut p = policy();
        for i in 0..10 {
            p.kept(7, i);
        }
        assert!(matches!(
            p.decide(0.99, true, 10, 0.9, || 7),
            Decision::Keep { reason: CaptureReason::Manual, .. }
        ));
    }

    #[test]
    fn dhash_tolerates_brightness_and_separates_scenes() {
        let gradient = RgbImage::from_fn(160, 120, |x, y| {
            let v = ((x * 255 / 160) ^ (y * 3)) as u8;
            image::Rgb([v, v / 2, 255 - v])
        });
        let brighter = RgbImage::from_fn(160, 120, |x, y| {
            let p = gradient.get_pixel(x, y).0;
            image::Rgb(p.map(|c| c.saturating_add(12)))
        });
        let mirrored = imageops::flip_horizontal(&gradient);
        let (a, b, c) = (dhash(&gradient), dhash(&brighter), dhash(&mirrored));
        assert!((a ^ b).count_ones() <= 6, "brightness moved {} bits", (a ^ b).count_ones());
        assert!((a ^ c).count_ones() > 20, "mirror moved only {} bits", (a ^ c).count_ones());
    }
}
