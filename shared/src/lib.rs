//! The types both sides of the loop agree on.
//!
//! The edge device turns a [`frame`] into a [`detection`], keeps the uncertain ones as
//! [`capture`] records, and runs models described by a [`manifest`]. The host pulls those
//! captures over the [`protocol`], trains, and pushes models back. Boxes are
//! [`geometry::BBox`] everywhere: normalised `[x1, y1, x2, y2]` on the original image.

pub mod bundle;
pub mod capture;
pub mod detection;
pub mod frame;
pub mod geometry;
pub mod manifest;
pub mod protocol;

pub use capture::{CaptureReason, CaptureRecord};
pub use detection::Detection;
pub use geometry::BBox;
pub use manifest::{InputSpec, ModelManifest};
