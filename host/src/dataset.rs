//! The training data: the seed layout (`Data/Data.csv`, `Data/<Split>/Images`,
//! `Data/<Split>/Labels`, see `Data/README.md`) and the real photos with human boxes
//! (`feedback/feedback_data.json` + `rlhf/data/`), which are only ever used to evaluate.
//!
//! Splits are deterministic: `train` is the `Train` split; the `Validation` split is cut
//! in two by a stable hash of the file name into `val` (early stopping) and `test` (held
//! out for the final figures), so every run and every machine agrees on them.

use std::path::{Path, PathBuf};

use shared::geometry::BBox;

/// Why the dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line of `Data.csv` is malformed.
    #[error("{path}:{line}: {what} (expected Image_Path,x1,y1,x2,y2,class,split)")]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// A JSON label or feedback file is malformed.
    #[error("{path}: malformed JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// An image named by the index does not exist.
    #[error("{path}: image listed in the index is missing; is the dataset complete?")]
    MissingImage {
        /// The image that was expected.
        path: PathBuf,
    },
    /// Neither `Data.csv` nor label files were found.
    #[error("{root}: no Data/Data.csv and no Data/<Split>/Labels/*.json; see Data/README.md")]
    NoIndex {
        /// The dataset root.
        root: PathBuf,
    },
}

/// Which part of the data a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// Used for gradient steps.
    Train,
    /// Used for early stopping and model selection.
    Val,
    /// Held out: only for the final figures.
    Test,
}

/// One labelled image of the seed layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The image file.
    pub path: PathBuf,
    /// Whether the image shows a face.
    pub face: bool,
    /// The face box, normalised `[x1, y1, x2, y2]`; meaningless when `face` is false.
    pub bbox: BBox,
    /// The part the sample belongs to.
    pub part: Part,
}

/// One real photo with the reviewer's box.
#[derive(Debug, Clone, PartialEq)]
pub struct RealPhoto {
    /// The photo file.
    pub path: PathBuf,
    /// The human box, normalised to the photo.
    pub bbox: BBox,
    /// `[width, height]` as recorded in the feedback (the JSON stores height first).
    pub size: [u32; 2],
}

/// The seed layout's label file (`Labels/<id>.json`).
#[derive(Debug, serde::Deserialize)]
struct LabelFile {
    image: String,
    bbox: [f32; 4],
    class: u8,
}

/// One feedback record; fields the evaluation does not need are ignored.
#[derive(Debug, serde::Deserialize)]
struct FeedbackRecord {
    image_path: String,
    human_correction: [f32; 4],
    image_size: [u32; 2],
}

/// Reads the seed layout under `root` (the folder that holds `Data/`). `Data/Data.csv` is
/// the index when present; otherwise every `Data/<Split>/Labels/*.json` is read.
pub fn load_seed(root: &Path) -> Result<Vec<Sample>, DatasetError> {
    let csv = root.join("Data").join("Data.csv");
    let samples = if csv.exists() { read_csv(root, &csv)? } else { read_label_dirs(root)? };
    if samples.is_empty() {
        return Err(DatasetError::NoIndex { root: root.to_path_buf() });
    }
    if let Some(s) = samples.iter().find(|s| !s.path.exists()) {
        return Err(DatasetError::MissingImage { path: s.path.clone() });
    }
    Ok(samples)
}

fn read_csv(root: &Path, csv: &Path) -> Result<Vec<Sample>, DatasetError> {
    let text = std::fs::read_to_string(csv)
        .map_err(|source| DatasetError::Io { path: csv.to_path_buf(), source })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let err = |what: String| DatasetError::Csv { path: csv.to_path_buf(), line: i + 1, what };
        let cols: Vec<&str> = line.trim_end().split(',').collect();
        let [image, x1, y1, x2, y2, class, split] = cols.as_slice() else {
            return Err(err(format!("{} columns", cols.len())));
        };
        let num =
            |s: &str| s.trim().parse::<f32>().map_err(|_| err(format!("{s:?} is not a number")));
        let bbox = BBox::new(num(x1)?, num(y1)?, num(x2)?, num(y2)?);
        let face = match class.trim() {
            "1" => true,
            "0" => false,
            other => return Err(err(format!("class {other:?} is not 0 or 1"))),
        };
        let path = root.join(image.trim());
        let part = part_for(split.trim(), &path).ok_or_else(|| err(format!("split {split:?}")))?;
        out.push(Sample { path, face, bbox, part });
    }
    Ok(out)
}

fn read_label_dirs(root: &Path) -> Result<Vec<Sample>, DatasetError> {
    let mut out = Vec::new();
    for split in ["Train", "Validation"] {
        let dir = root.join("Data").join(split);
        let Ok(entries) = std::fs::read_dir(dir.join("Labels")) else { continue };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for file in files {
            let bytes = std::fs::read(&file)
                .map_err(|source| DatasetError::Io { path: file.clone(), source })?;
            let label: LabelFile = serde_json::from_slice(&bytes)
                .map_err(|source| DatasetError::Json { path: file.clone(), source })?;
            let path = dir.join("Images").join(&label.image);
            let part = part_for(split, &path).unwrap_or(Part::Train);
            let [x1, y1, x2, y2] = label.bbox;
            out.push(Sample {
                path,
                face: label.class == 1,
                bbox: BBox::new(x1, y1, x2, y2),
                part,
            });
        }
    }
    Ok(out)
}

/// Maps the seed's split name to a part; validation images are halved by file-name hash.
fn part_for(split: &str, path: &Path) -> Option<Part> {
    match split.to_ascii_lowercase().as_str() {
        "train" => Some(Part::Train),
        "validation" | "val" => {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            Some(if fnv1a(name.unwrap_or_default().as_bytes()) % 2 == 0 {
                Part::Val
            } else {
                Part::Test
            })
        }
        _ => None,
    }
}

/// FNV-1a: a tiny hash whose value never changes between Rust versions (unlike
/// `DefaultHasher`), which the splits rely on.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Reads the feedback records and resolves each photo by file name against `photos`
/// (the records hold absolute Windows paths from the reviewers' machines).
pub fn load_real_photos(feedback: &Path, photos: &Path) -> Result<Vec<RealPhoto>, DatasetError> {
    let bytes = std::fs::read(feedback)
        .map_err(|source| DatasetError::Io { path: feedback.to_path_buf(), source })?;
    let records: Vec<FeedbackRecord> = serde_json::from_slice(&bytes)
        .map_err(|source| DatasetError::Json { path: feedback.to_path_buf(), source })?;
    records
        .into_iter()
        .map(|r| {
            let name = r.image_path.rsplit(['/', '\\']).next().unwrap_or(&r.image_path);
            let path = photos.join(name);
            if !path.exists() {
                return Err(DatasetError::MissingImage { path });
            }
            let [x1, y1, x2, y2] = r.human_correction;
            let [h, w] = r.image_size;
            Ok(RealPhoto { path, bbox: BBox::new(x1, y1, x2, y2), size: [w, h] })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.
pub(crate) mod tests {
    use super::*;

    /// The seed data shipped beside the workspace; tests that need it skip without it.
    pub(crate) fn seed_root() -> Option<PathBuf> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/seed");
        p.join("Data").exists().then_some(p)
    }

    fn write(dir: &Path, rel: &str, body: &[u8]) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }

    #[test]
    fn real_seed_has_the_documented_counts() {
        let Some(root) = seed_root() else { return };
        let s = load_seed(&root).unwrap();
        assert_eq!(s.len(), 8792 + 1200);
        let count = |p| s.iter().filter(|x| x.part == p).count();
        assert_eq!(count(Part::Train), 8792);
        assert_eq!(count(Part::Val) + count(Part::Test), 1200);
        assert!(count(Part::Val) > 500 && count(Part::Test) > 500, "halves are roughly even");
    }

    #[test]
    fn real_feedback_resolves_windows_paths() {
        let Some(root) = seed_root() else { return };
        let photos =
            load_real_photos(&root.join("feedback/feedback_data.json"), &root.join("rlhf/data"))
                .unwrap();
        assert_eq!(photos.len(), 80);
        let first = &photos[0];
        assert!(first.path.ends_with("rlhf/data/1.jpg"), "{:?}", first.path);
        assert_eq!(first.size, [5184, 3456], "width first after the swap");
    }

    #[test]
    fn csv_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "Data/Data.csv",
            b"Image_Path,x1,y1,x2,y2,class,split\na.jpg,0.1,x,0.5,0.5,1,train\n",
        );
        let err = load_seed(dir.path()).unwrap_err();
        assert!(err.to_string().contains("Data.csv:2"), "{err}");
        assert!(err.to_string().contains("\"x\" is not a number"), "{err}");
    }

    #[test]
    fn missing_image_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let csv =
            "Image_Path,x1,y1,x2,y2,class,split\nData/Train/Images/a.jpg,0.1,0.1,0.5,0.5,1,train\n";
        write(dir.path(), "Data/Data.csv", csv.as_bytes());
        let err = load_seed(dir.path()).unwrap_err();
        assert!(matches!(err, DatasetError::MissingImage { .. }), "{err}");
    }

    #[test]
    fn labels_without_csv_are_read_and_bad_json_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "Data/Train/Images/a_1.jpg", b"");
        write(
            dir.path(),
            "Data/Train/Labels/a_1.json",
            br#"{"image":"a_1.jpg","bbox":[0.1,0.2,0.6,0.7],"class":1}"#,
        );
        let s = load_seed(dir.path()).unwrap();
        assert_eq!(s.len(), 1);
        assert!(s[0].face && (s[0].bbox.y2 - 0.7).abs() < 1e-6);
        write(dir.path(), "Data/Validation/Labels/b_0.json", b"{\"image\": 3");
        let err = load_seed(dir.path()).unwrap_err();
        assert!(err.to_string().contains("b_0.json: malformed JSON"), "{err}");
    }

    #[test]
    fn empty_root_says_what_is_expected() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_seed(dir.path()).unwrap_err();
        assert!(err.to_string().contains("Data/README.md"), "{err}");
    }

    #[test]
    fn split_hash_is_stable() {
        // Fixed values: changing the hash would silently move images between val and test.
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    }
}
