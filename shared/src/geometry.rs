//! Box geometry in normalised image coordinates.

use serde::{Deserialize, Serialize};

/// An axis-aligned box as fractions of the image, `[x1, y1, x2, y2]`: left, top, right,
/// bottom, each in `[0, 1]` for a box inside the image.
///
/// Serialised as a plain four-number array, the form the old project's JSON used.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "[f32; 4]", into = "[f32; 4]")]
pub struct BBox {
    /// Left edge.
    pub x1: f32,
    /// Top edge.
    pub y1: f32,
    /// Right edge.
    pub x2: f32,
    /// Bottom edge.
    pub y2: f32,
}

/// Why a box was rejected by [`BBox::validate`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BBoxError {
    /// A coordinate is NaN or infinite.
    #[error("box {0:?} has a coordinate that is not a finite number")]
    NotFinite([f32; 4]),
    /// A coordinate lies outside `[0, 1]`.
    #[error("box {0:?} leaves the image: every coordinate must lie in [0, 1]")]
    OutOfRange([f32; 4]),
    /// `x2 <= x1` or `y2 <= y1`.
    #[error("box {0:?} is empty or inverted: need x2 > x1 and y2 > y1")]
    Empty([f32; 4]),
}

impl BBox {
    /// A box from its four edges, unchecked.
    pub const fn new(x1: f32, y1: f32, x2: f32, y2: f32) -> Self {
        Self { x1, y1, x2, y2 }
    }

    /// The four edges as `[x1, y1, x2, y2]`.
    pub const fn to_array(self) -> [f32; 4] {
        [self.x1, self.y1, self.x2, self.y2]
    }

    /// Width as a fraction of the image width; zero for an inverted box.
    pub fn width(self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }

    /// Height as a fraction of the image height; zero for an inverted box.
    pub fn height(self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }

    /// Area as a fraction of the image area.
    pub fn area(self) -> f32 {
        self.width() * self.height()
    }

    /// Centre point `(x, y)`.
    pub fn centre(self) -> (f32, f32) {
        ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)
    }

    /// The overlap of two boxes, if they overlap at all.
    pub fn intersection(self, other: BBox) -> Option<BBox> {
        let b = BBox::new(
            self.x1.max(other.x1),
            self.y1.max(other.y1),
            self.x2.min(other.x2),
            self.y2.min(other.y2),
        );
        (b.x2 > b.x1 && b.y2 > b.y1).then_some(b)
    }

    /// Intersection over union, in `[0, 1]`; zero when either box is empty.
    pub fn iou(self, other: BBox) -> f32 {
        let inter = self.intersection(other).map_or(0.0, BBox::area);
        let union = self.area() + other.area() - inter;
        if union <= 0.0 {
            0.0
        } else {
            inter / union
        }
    }

    /// The box clipped to the image, `[0, 1]` on both axes.
    pub fn clamp(self) -> BBox {
        let c = |v: f32| v.clamp(0.0, 1.0);
        BBox::new(c(self.x1), c(self.y1), c(self.x2), c(self.y2))
    }

    /// Checks that the box is finite, inside the image and not empty.
    pub fn validate(self) -> Result<BBox, BBoxError> {
        let a = self.to_array();
        if a.iter().any(|v| !v.is_finite()) {
            return Err(BBoxError::NotFinite(a));
        }
        if a.iter().any(|v| !(0.0..=1.0).contains(v)) {
            return Err(BBoxError::OutOfRange(a));
        }
        if self.x2 <= self.x1 || self.y2 <= self.y1 {
            return Err(BBoxError::Empty(a));
        }
        Ok(self)
    }

    /// The box in pixels of an image of `width` x `height`, as `[x1, y1, x2, y2]`.
    pub fn to_pixels(self, width: u32, height: u32) -> [f32; 4] {
        let (w, h) = (width as f32, height as f32);
        [self.x1 * w, self.y1 * h, self.x2 * w, self.y2 * h]
    }

    /// A box from pixel edges on an image of `width` x `height`.
    pub fn from_pixels(px: [f32; 4], width: u32, height: u32) -> BBox {
        let (w, h) = (width as f32, height as f32);
        BBox::new(px[0] / w, px[1] / h, px[2] / w, px[3] / h)
    }
}

impl From<[f32; 4]> for BBox {
    fn from(a: [f32; 4]) -> Self {
        BBox::new(a[0], a[1], a[2], a[3])
    }
}

impl From<BBox> for [f32; 4] {
    fn from(b: BBox) -> Self {
        b.to_array()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_identical_boxes_is_one() {
        let b = BBox::new(0.1, 0.2, 0.5, 0.6);
        assert!((b.iou(b) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn iou_of_half_overlap() {
        // Two unit-height boxes of width 0.4 sharing 0.2: 0.2 / (0.4 + 0.4 - 0.2) = 1/3.
        let a = BBox::new(0.0, 0.0, 0.4, 1.0);
        let b = BBox::new(0.2, 0.0, 0.6, 1.0);
        assert!((a.iou(b) - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn iou_of_disjoint_or_empty_boxes_is_zero() {
        let a = BBox::new(0.0, 0.0, 0.2, 0.2);
        assert_eq!(a.iou(BBox::new(0.5, 0.5, 0.9, 0.9)), 0.0);
        assert_eq!(a.iou(BBox::new(0.3, 0.3, 0.3, 0.3)), 0.0);
    }

    #[test]
    fn validate_names_the_problem() {
        assert!(matches!(BBox::new(0.5, 0.1, 0.4, 0.9).validate(), Err(BBoxError::Empty(_))));
        assert!(matches!(BBox::new(-0.1, 0.1, 0.4, 0.9).validate(), Err(BBoxError::OutOfRange(_))));
        let nan = BBox::new(f32::NAN, 0.1, 0.4, 0.9);
        assert!(matches!(nan.validate(), Err(BBoxError::NotFinite(_))));
        assert!(BBox::new(0.1, 0.1, 0.4, 0.9).validate().is_ok());
    }

    #[test]
    fn serialises_as_an_array() {
        let b = BBox::new(0.25, 0.5, 0.75, 1.0);
        assert_eq!(serde_json::to_string(&b).unwrap(), "[0.25,0.5,0.75,1.0]");
        let back: BBox = serde_json::from_str("[0.25,0.5,0.75,1.0]").unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn pixel_round_trip() {
        let b = BBox::new(0.1, 0.2, 0.3, 0.4);
        let px = b.to_pixels(5184, 3456);
        let back = BBox::from_pixels(px, 5184, 3456);
        assert!(b.iou(back) > 0.9999);
    }
}
