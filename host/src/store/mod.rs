//! The feedback store: captures, the images they show, and what reviewers said about them.
//!
//! One SQLite file under the host's data folder plus an `images/` folder beside it. Images
//! are named by the sha256 of their bytes, so a frame pulled or imported twice is kept
//! once; they are written to a temporary name and renamed, so a crash never leaves half
//! a file under a real name. Feedback rows are only ever appended: a capture reviewed
//! twice keeps both rows and the newest one counts.
//!
//! Boxes are [`BBox`]es normalised to the image as displayed (EXIF orientation applied).
//! The database keeps them as `f64` so that numbers imported from the old project's
//! JSON come back out unchanged.

mod schema;
pub mod time;

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use shared::geometry::BBoxError;
use shared::{BBox, CaptureReason, CaptureRecord};

/// The database file's name inside the data folder.
pub const DB_FILE: &str = "feedback.sqlite";
/// The image folder's name inside the data folder.
pub const IMAGES_DIR: &str = "images";
/// The device name under which records imported from the old project's file are kept.
pub const IMPORT_DEVICE: &str = "import";
/// The face threshold assumed for edge captures when deciding what the model said:
/// capture records carry the score but not the threshold the device used.
#[allow(dead_code)] // Used by `add_capture`, which fleet sync (issue 5) calls.
pub const FACE_THRESHOLD: f32 = 0.5;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or folder of the store could not be read or written.
    #[error("{}: {source}; check the --data folder and its permissions", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// SQLite refused a query.
    #[error("feedback store database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The database was written by a newer build.
    #[error(
        "{}: schema version {found} is newer than this build understands ({supported}); \
         use a newer host binary",
        path.display()
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: usize,
        /// The newest version this build knows.
        supported: usize,
    },
    /// No capture has this id.
    #[error("capture {0} does not exist")]
    UnknownCapture(CaptureId),
    /// The image bytes do not hash to what the record says.
    #[allow(dead_code)] // Raised by `add_capture`, which fleet sync (issue 5) calls.
    #[error("image of {what}: sha256 is {actual} but the record says {expected}; pull it again")]
    ImageHash {
        /// Which capture.
        what: String,
        /// The hash in the record.
        expected: String,
        /// The hash of the bytes received.
        actual: String,
    },
    /// A corrected box is not usable.
    #[error("corrected box: {0}")]
    Box(#[from] BBoxError),
    /// A rating is off the 0-5 scale.
    #[error("rating {0} is outside the 0-5 scale")]
    Rating(u8),
}

/// The store's row id of a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CaptureId(pub i64);

impl fmt::Display for CaptureId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One stored capture: a frame and what the model said about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capture {
    /// Row id.
    pub id: CaptureId,
    /// The device that kept the frame ([`IMPORT_DEVICE`] for imported records).
    pub device: String,
    /// The device's sequence number; `None` for imported records.
    pub seq: Option<u64>,
    /// sha256 of the image bytes, lowercase hex.
    pub image_sha256: String,
    /// Where the image file is.
    #[serde(skip)]
    pub image_path: PathBuf,
    /// Displayed width in pixels.
    pub width: u32,
    /// Displayed height in pixels.
    pub height: u32,
    /// The model version that made the detection.
    pub model_version: String,
    /// The model's face probability.
    pub model_score: f32,
    /// Whether the model said "face".
    pub model_face: bool,
    /// The model's box; `None` when it gave none.
    pub model_box: Option<BBox>,
    /// Capture time, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Why the device kept it; `None` for imported records.
    pub reason: Option<CaptureReason>,
    /// Where it came from: the old `image_path`, or `device/image` for pulled captures.
    pub source: String,
}

/// A reviewer's verdict on one capture, as it is saved.
#[derive(Debug, Clone, PartialEq)]
pub struct Correction {
    /// The corrected face box; `None` means "no face in this frame".
    pub face: Option<BBox>,
    /// 0-5, the scale of `criteria.txt`.
    pub rating: u8,
    /// Free text.
    pub comment: String,
    /// Who reviewed.
    pub reviewer: String,
}

/// The latest feedback on one capture, joined with the capture: what training reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackRow {
    /// The capture reviewed.
    pub capture_id: CaptureId,
    /// The stored image (load it with `shared::frame::load_image`).
    pub image_path: PathBuf,
    /// Displayed width in pixels.
    pub width: u32,
    /// Displayed height in pixels.
    pub height: u32,
    /// The device that kept the frame.
    pub device: String,
    /// The model version that made the detection.
    pub model_version: String,
    /// The model's face probability.
    pub model_score: f32,
    /// Whether the model said "face".
    pub model_face: bool,
    /// The model's box, if it gave one.
    pub model_box: Option<BBox>,
    /// The human box; `None` means the reviewer said there is no face.
    pub correction: Option<BBox>,
    /// 0-5.
    pub rating: u8,
    /// Free text.
    pub comment: String,
    /// Who reviewed.
    pub reviewer: String,
    /// When, ISO 8601 without zone (UTC for feedback given here).
    pub time: String,
}

/// Which captures the review queue shows.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct QueueFilter {
    /// Only this device.
    pub device: Option<String>,
    /// Only this model version.
    pub model_version: Option<String>,
    /// Only reviewed (`true`) or only unreviewed (`false`) captures.
    pub reviewed: Option<bool>,
    /// Only captures whose latest rating is this.
    pub rating: Option<u8>,
    /// At most this many (all when `None`).
    pub limit: Option<u32>,
}

/// A capture in the review queue with its latest feedback, if any.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueItem {
    /// The capture.
    pub capture: Capture,
    /// Its latest feedback.
    pub feedback: Option<Feedback>,
}

/// One stored feedback row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Feedback {
    /// Row id.
    pub id: i64,
    /// The corrected box; `None` = no face.
    pub face: Option<BBox>,
    /// 0-5.
    pub rating: u8,
    /// Free text.
    pub comment: String,
    /// Who reviewed.
    pub reviewer: String,
    /// When.
    pub time: String,
}

/// One imported record, ready to store (see `feedback::import`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedRecord {
    /// The image file's bytes.
    pub image: Vec<u8>,
    /// Its extension, lowercase (`jpg`, `png`).
    pub extension: String,
    /// Displayed width.
    pub width: u32,
    /// Displayed height.
    pub height: u32,
    /// The old `model_name`.
    pub model_version: String,
    /// The old `confidence`.
    pub model_score: f64,
    /// The old `has_face`.
    pub model_face: bool,
    /// The old `bbox`.
    pub model_box: Option<[f64; 4]>,
    /// The old `human_correction`; `None` = no face.
    pub correction: Option<[f64; 4]>,
    /// The old `rating`.
    pub rating: u8,
    /// The old `comments`.
    pub comment: String,
    /// The old `timestamp`.
    pub time: String,
    /// The old `image_path`.
    pub source: String,
    /// Identifies the record across imports, so re-importing skips it.
    pub key: String,
}

/// What one import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    /// Records stored.
    pub added: usize,
    /// Records already in the store.
    pub skipped: usize,
}

/// One feedback row in the old project's terms, with full precision (see `feedback::export`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRow {
    /// `image_path`.
    pub source: String,
    /// `model_name`.
    pub model_version: String,
    /// `model_prediction.has_face`.
    pub model_face: bool,
    /// `model_prediction.confidence`.
    pub model_score: f64,
    /// `model_prediction.bbox`.
    pub model_box: Option<[f64; 4]>,
    /// `human_correction`.
    pub correction: Option<[f64; 4]>,
    /// `rating`.
    pub rating: u8,
    /// `comments`.
    pub comment: String,
    /// `timestamp`.
    pub time: String,
    /// Displayed width.
    pub width: u32,
    /// Displayed height.
    pub height: u32,
}

/// An open feedback store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    dir: PathBuf,
}

const CAPTURE_COLUMNS: &str = "c.id, c.device, c.seq, c.image_sha256, i.file, c.width, \
     c.height, c.model_version, c.model_score, c.model_face, c.model_x1, c.model_y1, \
     c.model_x2, c.model_y2, c.time_ms, c.reason, c.source";
const FEEDBACK_COLUMNS: &str =
    "f.id, f.no_face, f.x1, f.y1, f.x2, f.y2, f.rating, f.comment, f.reviewer, f.time";
const LATEST_FEEDBACK: &str =
    "LEFT JOIN feedback f ON f.id = (SELECT max(id) FROM feedback WHERE capture_id = c.id)";

impl Store {
    /// Opens the store in `data_dir`, creating the folder, database and image folder when
    /// missing and migrating the schema.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let images = data_dir.join(IMAGES_DIR);
        fs::create_dir_all(&images).map_err(|source| StoreError::Io { path: images, source })?;
        let path = data_dir.join(DB_FILE);
        let mut conn = Connection::open(&path)?;
        // WAL lets the review server read while a sync writes; the timeout makes a writer
        // wait for the other instead of failing at once.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        if let Err(found) = schema::migrate(&mut conn)? {
            return Err(StoreError::TooNew { path, found, supported: schema::VERSION });
        }
        tracing::debug!(path = %path.display(), "feedback store open");
        Ok(Store { conn, dir: data_dir.to_path_buf() })
    }

    /// The data folder.
    #[allow(dead_code)] // For fleet sync (issue 5), which keeps its pull state beside it.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Stores a capture pulled from `device`. Idempotent on `(device, record.seq)`: a
    /// capture already there keeps its id and nothing is written.
    #[allow(dead_code)] // Called by fleet sync (issue 5), which is built alongside.
    pub fn add_capture(
        &mut self,
        device: &str,
        record: &CaptureRecord,
        image: &[u8],
    ) -> Result<CaptureId, StoreError> {
        if let Some(id) = self.capture_by_seq(device, record.seq)? {
            return Ok(id);
        }
        let actual = shared::manifest::sha256_hex(image);
        if !actual.eq_ignore_ascii_case(&record.image_sha256) {
            return Err(StoreError::ImageHash {
                what: format!("{device} seq {}", record.seq),
                expected: record.image_sha256.clone(),
                actual,
            });
        }
        let ext = extension_of(&record.image);
        let sha = self.put_image(image, &ext)?;
        let d = record.detection;
        self.conn.execute(
            "INSERT INTO captures (device, seq, image_sha256, width, height, model_version,
                 model_score, model_face, model_x1, model_y1, model_x2, model_y2, time_ms,
                 reason, source)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                device,
                to_i64(record.seq),
                sha,
                record.width,
                record.height,
                record.model_version,
                f64::from(d.score),
                d.is_face(FACE_THRESHOLD),
                f64::from(d.bbox.x1),
                f64::from(d.bbox.y1),
                f64::from(d.bbox.x2),
                f64::from(d.bbox.y2),
                record.time_ms,
                record.reason.as_str(),
                format!("{device}/{}", record.image),
            ],
        )?;
        let id = CaptureId(self.conn.last_insert_rowid());
        tracing::debug!(device, seq = record.seq, %id, "capture stored");
        Ok(id)
    }

    /// Runs `f` in one SQLite transaction: one commit (one fsync of the journal) for a
    /// whole page of captures instead of one per capture. When `f` fails nothing of it
    /// stays in the database (its error comes back inside `Ok`); image files already
    /// written stay as unreferenced files, which a later store of the same image reuses.
    /// The outer error is the transaction's own (begin or commit).
    pub fn in_transaction<T, E>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<Result<T, E>, StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(self) {
            Ok(value) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(Ok(value))
            }
            Err(e) => {
                self.conn.execute_batch("ROLLBACK")?;
                Ok(Err(e))
            }
        }
    }

    #[allow(dead_code)] // Part of `add_capture`.
    fn capture_by_seq(&self, device: &str, seq: u64) -> Result<Option<CaptureId>, StoreError> {
        let sql = "SELECT id FROM captures WHERE device = ?1 AND seq = ?2";
        let id = self.conn.query_row(sql, params![device, to_i64(seq)], |r| r.get(0));
        Ok(id.optional()?.map(CaptureId))
    }

    /// The highest sequence number stored for `device`, `None` when it has none yet.
    #[allow(dead_code)] // Called by fleet sync (issue 5), which is built alongside.
    pub fn last_seq(&self, device: &str) -> Result<Option<u64>, StoreError> {
        let sql = "SELECT max(seq) FROM captures WHERE device = ?1";
        let seq: Option<i64> = self.conn.query_row(sql, [device], |r| r.get(0))?;
        Ok(seq.map(|s| u64::try_from(s).unwrap_or(0)))
    }

    /// One capture.
    pub fn capture(&self, id: CaptureId) -> Result<Capture, StoreError> {
        let sql = format!(
            "SELECT {CAPTURE_COLUMNS} FROM captures c JOIN images i ON i.sha256 = c.image_sha256
             WHERE c.id = ?1"
        );
        let images = self.dir.join(IMAGES_DIR);
        let found = self.conn.query_row(&sql, [id.0], |r| capture_from_row(r, &images));
        found.optional()?.ok_or(StoreError::UnknownCapture(id))
    }

    /// Saves a reviewer's verdict on capture `id`, returning the feedback row id.
    pub fn save_feedback(&mut self, id: CaptureId, c: &Correction) -> Result<i64, StoreError> {
        let face = c.face.map(BBox::validate).transpose()?;
        if c.rating > 5 {
            return Err(StoreError::Rating(c.rating));
        }
        self.capture(id)?;
        let face64 = face.map(|b| b.to_array().map(f64::from));
        let fid = insert_feedback(
            &self.conn,
            id,
            face64,
            c.rating,
            &c.comment,
            &c.reviewer,
            &time::iso_now(),
            None,
        )?;
        tracing::debug!(%id, feedback = fid, rating = c.rating, "feedback saved");
        Ok(fid)
    }

    /// The newest feedback on capture `id`, if it has any.
    pub fn latest_feedback(&self, id: CaptureId) -> Result<Option<Feedback>, StoreError> {
        let sql = format!(
            "SELECT {FEEDBACK_COLUMNS} FROM feedback f WHERE f.capture_id = ?1
             ORDER BY f.id DESC LIMIT 1"
        );
        let found = self.conn.query_row(&sql, [id.0], |r| feedback_from_row(r, 0));
        Ok(found.optional()?.flatten())
    }

    /// The review queue: captures with their latest feedback, lowest model score first.
    pub fn queue(&self, filter: &QueueFilter) -> Result<Vec<QueueItem>, StoreError> {
        let sql = format!(
            "SELECT {CAPTURE_COLUMNS}, {FEEDBACK_COLUMNS}
             FROM captures c JOIN images i ON i.sha256 = c.image_sha256 {LATEST_FEEDBACK}
             WHERE (?1 IS NULL OR c.device = ?1) AND (?2 IS NULL OR c.model_version = ?2)
               AND (?3 IS NULL OR (f.id IS NOT NULL) = ?3) AND (?4 IS NULL OR f.rating = ?4)
             ORDER BY c.model_score, c.id LIMIT ?5"
        );
        let limit = filter.limit.map_or(-1, i64::from);
        let images = self.dir.join(IMAGES_DIR);
        let mut stmt = self.conn.prepare(&sql)?;
        let f = filter;
        let args = params![f.device, f.model_version, f.reviewed, f.rating, limit];
        let rows = stmt.query_map(args, |r| {
            let capture = capture_from_row(r, &images)?;
            Ok(QueueItem { capture, feedback: feedback_from_row(r, 17)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The distinct devices and model versions, for the queue's filter menus.
    pub fn facets(&self) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let list = |sql: &str| -> Result<Vec<String>, StoreError> {
            let mut stmt = self.conn.prepare(sql)?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        };
        Ok((
            list("SELECT DISTINCT device FROM captures ORDER BY 1")?,
            list("SELECT DISTINCT model_version FROM captures ORDER BY 1")?,
        ))
    }

    /// The latest feedback on every reviewed capture, oldest review first: what the
    /// two-phase fine-tuning and the report read.
    pub fn training_feedback(&self) -> Result<Vec<FeedbackRow>, StoreError> {
        let sql = format!(
            "SELECT {CAPTURE_COLUMNS}, {FEEDBACK_COLUMNS}
             FROM captures c JOIN images i ON i.sha256 = c.image_sha256 {LATEST_FEEDBACK}
             WHERE f.id IS NOT NULL ORDER BY f.time, f.id"
        );
        let images = self.dir.join(IMAGES_DIR);
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], |r| {
            let c = capture_from_row(r, &images)?;
            Ok((c, feedback_from_row(r, 17)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            if let (c, Some(f)) = row? {
                out.push(feedback_row(c, f));
            }
        }
        Ok(out)
    }

    /// Every feedback row (not only the latest per capture) in the order given, with the
    /// numbers as stored.
    pub fn export_rows(&self) -> Result<Vec<ExportRow>, StoreError> {
        let sql = "SELECT c.source, c.model_version, c.model_face, c.model_score,
                c.model_x1, c.model_y1, c.model_x2, c.model_y2,
                f.no_face, f.x1, f.y1, f.x2, f.y2, f.rating, f.comment, f.time,
                c.width, c.height, c.reason, i.file
             FROM feedback f JOIN captures c ON c.id = f.capture_id
             JOIN images i ON i.sha256 = c.image_sha256 ORDER BY f.id";
        let images = self.dir.join(IMAGES_DIR);
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| {
            let no_face: bool = r.get(8)?;
            // Imports keep the path their file named; a pulled capture's `device/image`
            // names nothing on this disk, so it gets the stored image's own path.
            let pulled = r.get::<_, Option<String>>(18)?.is_some();
            let source = if pulled {
                images.join(r.get::<_, String>(19)?).to_string_lossy().into_owned()
            } else {
                r.get(0)?
            };
            Ok(ExportRow {
                source,
                model_version: r.get(1)?,
                model_face: r.get(2)?,
                model_score: r.get(3)?,
                model_box: box_at(r, 4)?,
                correction: if no_face { None } else { box_at(r, 9)? },
                rating: r.get(13)?,
                comment: r.get(14)?,
                time: r.get(15)?,
                width: r.get(16)?,
                height: r.get(17)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores imported records in one transaction, skipping those already imported, and
    /// notes the import in the history. Images are written first: if the transaction
    /// fails they stay as unreferenced files, which a later import reuses.
    pub fn import_records(
        &mut self,
        file: &str,
        file_sha256: &str,
        records: &[ImportedRecord],
        rejected: usize,
    ) -> Result<ImportCounts, StoreError> {
        let mut fresh = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for r in records {
            // A record repeated within the file counts once, like one imported before.
            if seen.insert(r.key.as_str()) && !self.import_key_known(&r.key)? {
                let sha = self.put_image(&r.image, &r.extension)?;
                fresh.push((r, sha));
            }
        }
        let counts = ImportCounts { added: fresh.len(), skipped: records.len() - fresh.len() };
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO imports (file, file_sha256, time, added, skipped, rejected)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![file, file_sha256, time::iso_now(), counts.added, counts.skipped, rejected],
        )?;
        let import_id = tx.last_insert_rowid();
        for (r, sha) in fresh {
            let capture = imported_capture(&tx, r, &sha)?;
            let key = Some((import_id, r.key.as_str()));
            insert_feedback(&tx, capture, r.correction, r.rating, &r.comment, "", &r.time, key)?;
        }
        tx.commit()?;
        Ok(counts)
    }

    fn import_key_known(&self, key: &str) -> Result<bool, StoreError> {
        let sql = "SELECT 1 FROM feedback WHERE import_key = ?1";
        Ok(self.conn.query_row(sql, [key], |_| Ok(())).optional()?.is_some())
    }

    /// Writes `bytes` under its sha256 unless already there; returns the hash.
    fn put_image(&self, bytes: &[u8], ext: &str) -> Result<String, StoreError> {
        let sha = shared::manifest::sha256_hex(bytes);
        let known = self
            .conn
            .query_row("SELECT 1 FROM images WHERE sha256 = ?1", [&sha], |_| Ok(()))
            .optional()?
            .is_some();
        if known {
            return Ok(sha);
        }
        let rel = format!("{}/{sha}.{ext}", &sha[..2]);
        let path = self.dir.join(IMAGES_DIR).join(&rel);
        write_atomically(&path, bytes)?;
        self.conn.execute(
            "INSERT OR IGNORE INTO images (sha256, file, bytes) VALUES (?1, ?2, ?3)",
            params![sha, rel, bytes.len()],
        )?;
        Ok(sha)
    }
}

/// An imported capture: the same image, model and prediction is one capture.
fn imported_capture(
    conn: &Connection,
    r: &ImportedRecord,
    sha: &str,
) -> Result<CaptureId, StoreError> {
    let existing = conn
        .query_row(
            "SELECT id FROM captures WHERE device = ?1 AND image_sha256 = ?2
                 AND model_version = ?3 AND model_score = ?4",
            params![IMPORT_DEVICE, sha, r.model_version, r.model_score],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(id) = existing {
        return Ok(CaptureId(id));
    }
    let b = r.model_box;
    let time_ms = time::parse_iso(&r.time).map_or(0, |s| (s * 1000.0).round() as i64);
    conn.execute(
        "INSERT INTO captures (device, seq, image_sha256, width, height, model_version,
             model_score, model_face, model_x1, model_y1, model_x2, model_y2, time_ms,
             reason, source)
         VALUES (?1, NULL, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, NULL, ?13)",
        params![
            IMPORT_DEVICE,
            sha,
            r.width,
            r.height,
            r.model_version,
            r.model_score,
            r.model_face,
            b.map(|b| b[0]),
            b.map(|b| b[1]),
            b.map(|b| b[2]),
            b.map(|b| b[3]),
            time_ms,
            r.source,
        ],
    )?;
    Ok(CaptureId(conn.last_insert_rowid()))
}

#[allow(clippy::too_many_arguments)] // One column each; a struct would only rename them.
fn insert_feedback(
    conn: &Connection,
    capture: CaptureId,
    face: Option<[f64; 4]>,
    rating: u8,
    comment: &str,
    reviewer: &str,
    time: &str,
    import: Option<(i64, &str)>,
) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO feedback (capture_id, no_face, x1, y1, x2, y2, rating, comment, reviewer,
             time, import_id, import_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            capture.0,
            face.is_none(),
            face.map(|b| b[0]),
            face.map(|b| b[1]),
            face.map(|b| b[2]),
            face.map(|b| b[3]),
            rating,
            comment,
            reviewer,
            time,
            import.map(|i| i.0),
            import.map(|i| i.1),
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

fn capture_from_row(r: &Row<'_>, images: &Path) -> rusqlite::Result<Capture> {
    let seq: Option<i64> = r.get(2)?;
    let reason: Option<String> = r.get(15)?;
    let file: String = r.get(4)?;
    Ok(Capture {
        id: CaptureId(r.get(0)?),
        device: r.get(1)?,
        seq: seq.and_then(|s| u64::try_from(s).ok()),
        image_sha256: r.get(3)?,
        image_path: images.join(file),
        width: r.get(5)?,
        height: r.get(6)?,
        model_version: r.get(7)?,
        model_score: r.get::<_, f64>(8)? as f32,
        model_face: r.get(9)?,
        model_box: box_at(r, 10)?.map(to_bbox),
        time_ms: r.get(14)?,
        reason: reason.as_deref().and_then(reason_from_str),
        source: r.get(16)?,
    })
}

/// The feedback columns starting at `at`, `None` when the join found no feedback.
fn feedback_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Option<Feedback>> {
    let Some(id) = r.get::<_, Option<i64>>(at)? else {
        return Ok(None);
    };
    let no_face: bool = r.get(at + 1)?;
    Ok(Some(Feedback {
        id,
        face: if no_face { None } else { box_at(r, at + 2)?.map(to_bbox) },
        rating: r.get(at + 6)?,
        comment: r.get(at + 7)?,
        reviewer: r.get(at + 8)?,
        time: r.get(at + 9)?,
    }))
}

fn feedback_row(c: Capture, f: Feedback) -> FeedbackRow {
    FeedbackRow {
        capture_id: c.id,
        image_path: c.image_path,
        width: c.width,
        height: c.height,
        device: c.device,
        model_version: c.model_version,
        model_score: c.model_score,
        model_face: c.model_face,
        model_box: c.model_box,
        correction: f.face,
        rating: f.rating,
        comment: f.comment,
        reviewer: f.reviewer,
        time: f.time,
    }
}

fn box_at(r: &Row<'_>, at: usize) -> rusqlite::Result<Option<[f64; 4]>> {
    let v: [Option<f64>; 4] = [r.get(at)?, r.get(at + 1)?, r.get(at + 2)?, r.get(at + 3)?];
    Ok(match v {
        [Some(a), Some(b), Some(c), Some(d)] => Some([a, b, c, d]),
        _ => None,
    })
}

fn to_bbox(b: [f64; 4]) -> BBox {
    BBox::new(b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32)
}

fn reason_from_str(s: &str) -> Option<CaptureReason> {
    [CaptureReason::Uncertain, CaptureReason::ConfidentSample, CaptureReason::Manual]
        .into_iter()
        .find(|r| r.as_str() == s)
}

/// SQLite integers are signed; sequence numbers past `i64::MAX` do not occur in practice
/// (one capture a millisecond for 290 million years) and are clamped.
#[allow(dead_code)] // Part of `add_capture`.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[allow(dead_code)] // Part of `add_capture`.
fn extension_of(name: &str) -> String {
    let ext = Path::new(name).extension().and_then(|e| e.to_str()).unwrap_or("jpg");
    let ext = ext.to_ascii_lowercase();
    if ext.chars().all(|c| c.is_ascii_alphanumeric()) && ext.len() <= 5 {
        ext
    } else {
        "jpg".into()
    }
}

/// Writes to a temporary file in the same folder, syncs, then renames over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io { path: path.to_path_buf(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.
mod tests;
