//! Where frames come from: a V4L2 camera, a folder of images, or one image looped.
//!
//! Every source answers [`FrameSource::next_frame`] with a frame or a [`SourceError`]
//! that says what the runtime should do: wait and retry ([`SourceError::Unavailable`]),
//! skip one frame ([`SourceError::BadFrame`]), or stop ([`SourceError::Exhausted`]).

pub mod folder;
pub mod v4l2;

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::{Deserialize, Serialize};

pub use folder::{FolderSource, LoopedFile};
pub use v4l2::{PixelFormat, V4l2Source};

/// One frame, with where it came from (for logs).
#[derive(Debug, Clone)]
pub struct Frame {
    /// The pixels, RGB.
    pub image: RgbImage,
    /// File name or camera frame number, for log lines.
    pub origin: String,
}

/// Why a source gave no frame.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The device is gone or not delivering (unplugged, no frames within the timeout,
    /// permission denied). Retry later; the source reopens itself.
    #[error("{source_name}: unavailable: {reason}")]
    Unavailable {
        /// Device path or folder.
        source_name: String,
        /// What failed.
        reason: String,
    },
    /// This one frame could not be decoded; the next one may be fine.
    #[error("{what}: bad frame: {reason}")]
    BadFrame {
        /// File name or frame number.
        what: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// A folder source without looping has shown every image.
    #[error("no more frames")]
    Exhausted,
}

/// A supplier of frames.
pub trait FrameSource: Send {
    /// Blocks until the next frame (a camera paces this itself; files return at once).
    fn next_frame(&mut self) -> Result<Frame, SourceError>;

    /// The source in words for the start-up line, e.g. `/dev/video0 MJPEG 640x480@15`.
    fn describe(&self) -> String;

    /// Whether frames arrive at their own pace (a camera) rather than as fast as asked.
    fn is_live(&self) -> bool {
        false
    }
}

/// Which kind of source a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Decide from the path: `/dev/...` is a camera, a folder a folder, a file a file.
    #[default]
    Auto,
    /// A V4L2 capture device.
    V4l2,
    /// A folder of JPEG/PNG images, in name order.
    Folder,
    /// One image file, returned again and again.
    File,
}

/// Settings of the frame source (the `[source]` table of the config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Device path, folder or image file.
    pub path: PathBuf,
    /// What `path` is; `auto` guesses from it.
    pub kind: SourceKind,
    /// Camera pixel format.
    pub format: PixelFormat,
    /// Camera frame width.
    pub width: u32,
    /// Camera frame height.
    pub height: u32,
    /// Frames per second asked of the camera, and the pace for folder and file sources
    /// (0 = as fast as the model goes).
    pub fps: u32,
    /// Start the folder again after its last image.
    pub repeat: bool,
    /// Seconds without a frame before the camera counts as lost.
    pub timeout_s: f32,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/dev/video0"),
            kind: SourceKind::Auto,
            format: PixelFormat::Mjpeg,
            width: 640,
            height: 480,
            fps: 15,
            repeat: true,
            timeout_s: 5.0,
        }
    }
}

impl SourceConfig {
    /// The kind `auto` resolves to for this path.
    pub fn resolved_kind(&self) -> SourceKind {
        match self.kind {
            SourceKind::Auto if self.path.starts_with("/dev") => SourceKind::V4l2,
            SourceKind::Auto if self.path.is_dir() => SourceKind::Folder,
            SourceKind::Auto => SourceKind::File,
            other => other,
        }
    }
}

/// Opens the configured source. A camera that is not there yet is not an error: it is
/// opened on the first frame and retried like any lost camera.
pub fn open(config: &SourceConfig) -> anyhow::Result<Box<dyn FrameSource>> {
    use anyhow::Context;
    let path: &Path = &config.path;
    Ok(match config.resolved_kind() {
        SourceKind::V4l2 => Box::new(V4l2Source::new(config)),
        SourceKind::Folder => Box::new(
            FolderSource::open(path, config.repeat)
                .with_context(|| format!("opening the frame folder {}", path.display()))?,
        ),
        SourceKind::File | SourceKind::Auto => Box::new(
            LoopedFile::open(path)
                .with_context(|| format!("opening the frame file {}", path.display()))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_kind_follows_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = SourceConfig { path: "/dev/video2".into(), ..SourceConfig::default() };
        assert_eq!(c.resolved_kind(), SourceKind::V4l2);
        c.path = dir.path().into();
        assert_eq!(c.resolved_kind(), SourceKind::Folder);
        c.path = dir.path().join("a.jpg");
        assert_eq!(c.resolved_kind(), SourceKind::File);
        c.kind = SourceKind::Folder;
        assert_eq!(c.resolved_kind(), SourceKind::Folder);
    }
}
