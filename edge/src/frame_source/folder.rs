//! Frames from files: a folder of images in name order, or one image again and again.

use std::path::{Path, PathBuf};

use super::{Frame, FrameSource, SourceError};
use shared::frame::{load_image, FrameError};

/// Why a file source could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    /// The folder could not be listed.
    #[error("{path}: cannot list the folder: {source}")]
    List {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The folder holds no `.jpg`, `.jpeg` or `.png` files.
    #[error("{0}: no .jpg, .jpeg or .png images in the folder")]
    Empty(PathBuf),
    /// The single image could not be read.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// The images of a folder in name order, decoded one at a time as they are asked for.
#[derive(Debug)]
pub struct FolderSource {
    dir: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
    repeat: bool,
}

impl FolderSource {
    /// Lists the folder once; images added later are not seen.
    pub fn open(dir: &Path, repeat: bool) -> Result<Self, FileSourceError> {
        let list_err = |source| FileSourceError::List { path: dir.into(), source };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(list_err)? {
            let path = entry.map_err(list_err)?.path();
            if path.is_file() && is_image(&path) {
                files.push(path);
            }
        }
        if files.is_empty() {
            return Err(FileSourceError::Empty(dir.into()));
        }
        files.sort();
        Ok(Self { dir: dir.into(), files, next: 0, repeat })
    }

    /// Number of images in the folder.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.files.len()
    }
}

fn is_image(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png"))
}

impl FrameSource for FolderSource {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        if self.next == self.files.len() {
            if !self.repeat {
                return Err(SourceError::Exhausted);
            }
            self.next = 0;
        }
        let path = &self.files[self.next];
        self.next += 1;
        let origin = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into());
        match load_image(path) {
            Ok(image) => Ok(Frame { image, origin }),
            Err(e) => Err(SourceError::BadFrame { what: origin, reason: e.to_string() }),
        }
    }

    fn describe(&self) -> String {
        let mode = if self.repeat { ", looped" } else { "" };
        format!("folder {} ({} images{mode})", self.dir.display(), self.files.len())
    }
}

/// One image decoded once and returned for every frame (demos, soak tests).
#[derive(Debug)]
pub struct LoopedFile {
    path: PathBuf,
    frame: Frame,
}

impl LoopedFile {
    /// Decodes the image now, so a bad file fails at start rather than every frame.
    pub fn open(path: &Path) -> Result<Self, FileSourceError> {
        let image = load_image(path)?;
        let origin = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into());
        Ok(Self { path: path.into(), frame: Frame { image, origin } })
    }
}

impl FrameSource for LoopedFile {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        Ok(self.frame.clone())
    }

    fn describe(&self) -> String {
        let (w, h) = self.frame.image.dimensions();
        format!("file {} ({w}x{h}, looped)", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    fn write_png(path: &Path, shade: u8) {
        RgbImage::from_pixel(8, 6, image::Rgb([shade, 0, 0])).save(path).unwrap();
    }

    #[test]
    fn folder_frames_come_in_name_order_and_loop() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("b.png"), 2);
        write_png(&dir.path().join("a.png"), 1);
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        let mut src = FolderSource::open(dir.path(), true).unwrap();
        assert_eq!(src.len(), 2);
        let shades: Vec<u8> =
            (0..3).map(|_| src.next_frame().unwrap().image.get_pixel(0, 0).0[0]).collect();
        assert_eq!(shades, vec![1, 2, 1]);
    }

    #[test]
    fn folder_without_repeat_ends_and_bad_files_are_skippable() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("1.png"), 1);
        std::fs::write(dir.path().join("2.jpg"), b"\xff\xd8 broken").unwrap();
        let mut src = FolderSource::open(dir.path(), false).unwrap();
        assert!(src.next_frame().is_ok());
        let err = src.next_frame().unwrap_err();
        assert!(matches!(&err, SourceError::BadFrame { what, .. } if what == "2.jpg"), "{err}");
        assert!(matches!(src.next_frame(), Err(SourceError::Exhausted)));
    }

    #[test]
    fn an_empty_folder_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let err = FolderSource::open(dir.path(), true).unwrap_err();
        assert!(err.to_string().contains("no .jpg"), "{err}");
    }

    #[test]
    fn looped_file_repeats_the_same_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.png");
        write_png(&path, 9);
        let mut src = LoopedFile::open(&path).unwrap();
        for _ in 0..3 {
            assert_eq!(src.next_frame().unwrap().image.dimensions(), (8, 6));
        }
        assert!(LoopedFile::open(&dir.path().join("missing.png")).is_err());
    }
}
