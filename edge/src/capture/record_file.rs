//! The append-only file of capture records: framing, checksums, recovery and compaction.
//!
//! Layout: an 8-byte magic, then frames of `[len: u32 LE][crc32: u32 LE][postcard bytes]`.
//! A frame is written with one `write` call and only counts as durable after
//! [`RecordFile::sync`]. On open the file is scanned and everything from the first frame
//! that is short, fails its checksum, does not decode or breaks the sequence order is
//! cut off; the cut bytes are kept beside the log (`<log>.tail-<offset>`) for inspection,
//! never silently dropped.
//!
//! Known limit: a corrupt frame in the middle (a bad disk sector, not a crash) also cuts
//! the good frames behind it; they survive only in the saved tail file. Crashes tear the
//! end of the file, never the middle, so a crash alone never loses a complete frame.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use shared::CaptureRecord;

/// First bytes of every record file; a version bump changes the last byte.
pub const MAGIC: &[u8; 8] = b"FDCAPLG1";
/// Length prefix plus checksum.
const FRAME_HEADER: usize = 8;
/// A record is a few hundred bytes; anything this long is garbage, not a record.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// A failure of the record file.
#[derive(Debug, thiserror::Error)]
pub enum RecordFileError {
    /// A read, write, sync or rename failed.
    #[error("capture log {path}: {action} failed: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What was being done, e.g. "append".
        action: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file does not start with the record-file magic.
    #[error(
        "{path} is not a capture log (bad magic); move it away or point --data at another folder"
    )]
    NotALog {
        /// The file.
        path: PathBuf,
    },
    /// A record could not be encoded (should not happen for well-formed records).
    #[error("capture record {seq} could not be encoded: {reason}")]
    Encode {
        /// Its sequence number.
        seq: u64,
        /// What postcard said.
        reason: String,
    },
}

impl RecordFileError {
    /// Whether the failure was the disk running out of space.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, RecordFileError::Io { source, .. } if is_disk_full(source))
    }
}

/// Whether an I/O error means "no space left on device" (or over a quota).
pub fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded
}

/// Why the scan stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailProblem {
    /// Fewer bytes than a frame header or than the frame's length: a torn write.
    Torn,
    /// The length prefix is zero or beyond [`MAX_RECORD_BYTES`].
    BadLength(u32),
    /// The checksum does not match the payload.
    BadChecksum,
    /// The payload is not a capture record.
    Undecodable(String),
    /// The sequence number does not increase.
    OutOfOrder {
        /// The previous record's sequence number.
        previous: u64,
        /// This record's.
        found: u64,
    },
}

impl std::fmt::Display for TailProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TailProblem::Torn => write!(f, "torn write (frame shorter than its header says)"),
            TailProblem::BadLength(n) => write!(f, "impossible frame length {n}"),
            TailProblem::BadChecksum => write!(f, "checksum mismatch"),
            TailProblem::Undecodable(e) => write!(f, "record does not decode: {e}"),
            TailProblem::OutOfOrder { previous, found } => {
                write!(f, "sequence {found} after {previous}")
            }
        }
    }
}

/// The outcome of reading a record file from the start.
#[derive(Debug, Clone)]
pub struct Scan {
    /// Every complete record, in file order.
    pub records: Vec<CaptureRecord>,
    /// Byte offset just past the last complete record.
    pub good_len: u64,
    /// Total file length.
    pub file_len: u64,
    /// Why the scan stopped early, if it did.
    pub problem: Option<TailProblem>,
}

/// What recovery cut off the end of the file on open.
#[derive(Debug, Clone)]
pub struct TailCut {
    /// Where the cut was made.
    pub offset: u64,
    /// How many bytes were removed.
    pub bytes: u64,
    /// Why.
    pub problem: TailProblem,
    /// Where the removed bytes were saved, if saving worked.
    pub saved_to: Option<PathBuf>,
}

/// An open record file, positioned at its end.
#[derive(Debug)]
pub struct RecordFile {
    file: File,
    path: PathBuf,
    end: u64,
    dirty: bool,
    /// Test hook: the next append writes this many bytes, then fails as if the disk
    /// were full.
    #[cfg(test)]
    pub(crate) fail_after_bytes: Option<usize>,
    /// Test hook: write header and payload with separate calls, so that a kill can land
    /// between them and tear the frame.
    #[cfg(test)]
    pub(crate) split_writes: bool,
}

impl RecordFile {
    /// Opens (or creates) the file, cuts a damaged tail, and returns the complete records.
    pub fn open(
        path: &Path,
    ) -> Result<(RecordFile, Vec<CaptureRecord>, Option<TailCut>), RecordFileError> {
        let io_err =
            |action| move |source| RecordFileError::Io { path: path.into(), action, source };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err("open"))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err("read"))?;

        if bytes.len() < MAGIC.len() {
            // Empty, or torn while the header itself was written: start the file afresh.
            if !MAGIC.starts_with(&bytes) {
                return Err(RecordFileError::NotALog { path: path.into() });
            }
            file.set_len(0).map_err(io_err("truncate"))?;
            file.seek(SeekFrom::Start(0)).map_err(io_err("seek"))?;
            file.write_all(MAGIC).map_err(io_err("write header"))?;
            file.sync_all().map_err(io_err("fsync"))?;
            if let Some(dir) = path.parent() {
                sync_dir(dir).map_err(io_err("fsync folder"))?;
            }
            let rf = RecordFile::from_parts(file, path, MAGIC.len() as u64);
            return Ok((rf, Vec::new(), None));
        }

        let scan =
            scan_bytes(&bytes).ok_or_else(|| RecordFileError::NotALog { path: path.into() })?;
        let cut = match &scan.problem {
            None => None,
            Some(problem) => {
                let saved_to = save_tail(path, scan.good_len, &bytes[scan.good_len as usize..]);
                file.set_len(scan.good_len).map_err(io_err("truncate torn tail"))?;
                file.sync_all().map_err(io_err("fsync"))?;
                Some(TailCut {
                    offset: scan.good_len,
                    bytes: scan.file_len - scan.good_len,
                    problem: problem.clone(),
                    saved_to,
                })
            }
        };
        file.seek(SeekFrom::Start(scan.good_len)).map_err(io_err("seek"))?;
        Ok((RecordFile::from_parts(file, path, scan.good_len), scan.records, cut))
    }

    fn from_parts(file: File, path: &Path, end: u64) -> RecordFile {
        RecordFile {
            file,
            path: path.into(),
            end,
            // What was read back may sit only in the page cache (the writer died before
            // its fsync): the first sync must reach the disk before any of it is served.
            dirty: true,
            #[cfg(test)]
            fail_after_bytes: None,
            #[cfg(test)]
            split_writes: false,
        }
    }

    /// Appends one record (not yet durable: see [`RecordFile::sync`]).
    ///
    /// On failure the file is cut back to where it was, so a half-written frame never
    /// sits in front of later ones.
    pub fn append(&mut self, record: &CaptureRecord) -> Result<(), RecordFileError> {
        let frame = encode_frame(record)?;
        let result = self.write_frame(&frame);
        if let Err(source) = result {
            // Best effort: if even the truncate fails, the next open cuts the torn frame.
            let _ = self.file.set_len(self.end);
            let _ = self.file.seek(SeekFrom::Start(self.end));
            return Err(RecordFileError::Io { path: self.path.clone(), action: "append", source });
        }
        self.end += frame.len() as u64;
        self.dirty = true;
        Ok(())
    }

    #[cfg(not(test))]
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.file.write_all(frame)
    }

    #[cfg(test)]
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        match self.fail_after_bytes.take() {
            Some(n) => {
                self.file.write_all(&frame[..n.min(frame.len())])?;
                Err(io::Error::from(io::ErrorKind::StorageFull))
            }
            None if self.split_writes => {
                self.file.write_all(&frame[..FRAME_HEADER])?;
                self.file.write_all(&frame[FRAME_HEADER..])
            }
            None => self.file.write_all(frame),
        }
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<(), RecordFileError> {
        if self.dirty {
            self.file.sync_data().map_err(|source| RecordFileError::Io {
                path: self.path.clone(),
                action: "fsync",
                source,
            })?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Whether records were appended since the last sync.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Current length of the file in bytes.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.end
    }

    /// Replaces the file with one holding exactly `records`, crash-safely: the new file is
    /// written and synced under a temporary name, then renamed over the old one.
    pub fn rewrite(path: &Path, records: &[CaptureRecord]) -> Result<RecordFile, RecordFileError> {
        let tmp = path.with_extension("log.compact");
        let tmp_err = |action| {
            let path = tmp.clone();
            move |source| RecordFileError::Io { path, action, source }
        };
        let mut bytes = MAGIC.to_vec();
        for r in records {
            bytes.extend_from_slice(&encode_frame(r)?);
        }
        let mut f = File::create(&tmp).map_err(tmp_err("create"))?;
        f.write_all(&bytes).map_err(tmp_err("write"))?;
        f.sync_all().map_err(tmp_err("fsync"))?;
        drop(f);
        fs::rename(&tmp, path).map_err(tmp_err("rename"))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir).map_err(tmp_err("fsync folder"))?;
        }
        let mut file =
            OpenOptions::new().read(true).write(true).open(path).map_err(|source| {
                RecordFileError::Io { path: path.into(), action: "open", source }
            })?;
        file.seek(SeekFrom::End(0)).map_err(|source| RecordFileError::Io {
            path: path.into(),
            action: "seek",
            source,
        })?;
        Ok(RecordFile::from_parts(file, path, bytes.len() as u64))
    }
}

/// Reads a record file without changing it (for `edge captures verify` and benchmarks).
pub fn scan_file(path: &Path) -> Result<Scan, RecordFileError> {
    let bytes = fs::read(path).map_err(|source| RecordFileError::Io {
        path: path.into(),
        action: "read",
        source,
    })?;
    scan_bytes(&bytes).ok_or_else(|| RecordFileError::NotALog { path: path.into() })
}

/// Scans a whole record file held in memory; `None` when the magic is wrong.
pub fn scan_bytes(bytes: &[u8]) -> Option<Scan> {
    if bytes.len() < MAGIC.len() {
        let torn = MAGIC.starts_with(bytes);
        return torn.then(|| Scan {
            records: Vec::new(),
            good_len: 0,
            file_len: bytes.len() as u64,
            problem: (!bytes.is_empty()).then_some(TailProblem::Torn),
        });
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return None;
    }
    let mut records: Vec<CaptureRecord> = Vec::new();
    let mut pos = MAGIC.len();
    let problem = loop {
        if pos == bytes.len() {
            break None;
        }
        match decode_frame(&bytes[pos..]) {
            Ok((record, used)) => {
                if let Some(prev) = records.last() {
                    if record.seq <= prev.seq {
                        let found = record.seq;
                        break Some(TailProblem::OutOfOrder { previous: prev.seq, found });
                    }
                }
                records.push(record);
                pos += used;
            }
            Err(problem) => break Some(problem),
        }
    };
    Some(Scan { records, good_len: pos as u64, file_len: bytes.len() as u64, problem })
}

fn encode_frame(record: &CaptureRecord) -> Result<Vec<u8>, RecordFileError> {
    let payload = postcard::to_stdvec(record)
        .map_err(|e| RecordFileError::Encode { seq: record.seq, reason: e.to_string() })?;
    let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Decodes the frame at the start of `bytes`; returns the record and the bytes it used.
fn decode_frame(bytes: &[u8]) -> Result<(CaptureRecord, usize), TailProblem> {
    if bytes.len() < FRAME_HEADER {
        return Err(TailProblem::Torn);
    }
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let (len, crc) = (word(0), word(4));
    if len == 0 || len as usize > MAX_RECORD_BYTES {
        return Err(TailProblem::BadLength(len));
    }
    let end = FRAME_HEADER + len as usize;
    if bytes.len() < end {
        return Err(TailProblem::Torn);
    }
    let payload = &bytes[FRAME_HEADER..end];
    if crc32fast::hash(payload) != crc {
        return Err(TailProblem::BadChecksum);
    }
    let record =
        postcard::from_bytes(payload).map_err(|e| TailProblem::Undecodable(e.to_string()))?;
    Ok((record, end))
}

/// Keeps the bytes recovery removes, so a damaged log can still be examined by hand.
fn save_tail(path: &Path, offset: u64, tail: &[u8]) -> Option<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tail-{offset}"));
    let target = PathBuf::from(name);
    match fs::write(&target, tail) {
        Ok(()) => Some(target),
        Err(e) => {
            tracing::warn!(path = %target.display(), error = %e, "could not save the cut log tail");
            None
        }
    }
}

/// Makes a rename or file creation in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shared::{BBox, CaptureReason, Detection};

    /// A record whose every field is a function of `seq`, so a reader can check it.
    pub(crate) fn record(seq: u64) -> CaptureRecord {
        CaptureRecord {
            seq,
            time_ms: 1_764_700_000_000 + seq as i64,
            reason: CaptureReason::Uncertain,
            detection: Detection {
                score: (seq % 100) as f32 / 100.0,
                bbox: BBox::new(0.1, 0.2, 0.3, 0.4),
            },
            model_version: format!("test-{}", seq % 7),
            image: format!("{seq:012}.jpg"),
            image_sha256: format!("{:064x}", seq),
            width: 640,
            height: 480,
        }
    }

    fn write_records(path: &Path, seqs: std::ops::RangeInclusive<u64>) -> u64 {
        let (mut f, _, _) = RecordFile::open(path).unwrap();
        for s in seqs {
            f.append(&record(s)).unwrap();
        }
        f.sync().unwrap();
        f.len()
    }

    #[test]
    fn records_round_trip_through_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("captures.log");
        write_records(&path, 1..=20);
        let (_, records, cut) = RecordFile::open(&path).unwrap();
        assert!(cut.is_none());
        assert_eq!(records, (1..=20).map(record).collect::<Vec<_>>());
    }

    #[test]
    fn every_truncation_point_keeps_all_complete_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("captures.log");
        write_records(&path, 1..=3);
        let full = fs::read(&path).unwrap();
        let frame2_end = MAGIC.len() + 2 * encode_frame(&record(1)).unwrap().len();
        // Cut inside the third frame at every byte: exactly two records survive.
        for cut_at in frame2_end + 1..full.len() {
            fs::write(&path, &full[..cut_at]).unwrap();
            let (f, records, cut) = RecordFile::open(&path).unwrap();
            assert_eq!(records.len(), 2, "cut at {cut_at}");
            let cut = cut.expect("a torn tail is reported");
            assert_eq!(cut.offset as usize, frame2_end);
            assert_eq!(f.len() as usize, frame2_end);
            assert_eq!(fs::metadata(&path).unwrap().len() as usize, frame2_end);
        }
    }

    #[test]
    fn a_flipped_bit_cuts_from_that_frame_and_saves_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("captures.log");
        write_records(&path, 1..=5);
        let mut bytes = fs::read(&path).unwrap();
        let frame_len = encode_frame(&record(1)).unwrap().len();
        let inside_4th = MAGIC.len() + 3 * frame_len + FRAME_HEADER + 3;
        bytes[inside_4th] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let (_, records, cut) = RecordFile::open(&path).unwrap();
        assert_eq!(records.len(), 3);
        let cut = cut.unwrap();
        assert_eq!(cut.problem, TailProblem::BadChecksum);
        let saved = fs::read(cut.saved_to.unwrap()).unwrap();
        assert_eq!(saved.len(), 2 * frame_len);
    }

    #[test]
    fn a_foreign_file_is_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("captures.log");
        fs::write(&path, b"hello, this is not a log").unwrap();
        let err = RecordFile::open(&path).unwrap_err();
        assert!(matches!(err, RecordFileError::NotALog { .. }), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"hello, this is not a log");
    }

    #[test]
    fn a_failed_append_leaves_no_half_frame_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("captures.log");
        let (mut f, _, _) = RecordFile::open(&path).unwrap();
        f.append(&record(1)).unwrap();
        f.fail_after_bytes = Some(11);
        let err = f.append(&record(2)).unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        f.append(&record(3)).unwrap();
        f.sync().unwrap();
        let (_, records, cut) = RecordFile::open(&path).unwrap();
        assert!(cut.is_none());
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn rewrite_replaces_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("captures.log");
        write_records(&path, 1..=10);
        let keep: Vec<_> = (7..=10).map(record).collect();
        let mut f = RecordFile::rewrite(&path, &keep).unwrap();
        f.append(&record(11)).unwrap();
        f.sync().unwrap();
        let (_, records, _) = RecordFile::open(&path).unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![7, 8, 9, 10, 11]);
    }

    #[test]
    fn out_of_order_sequence_is_a_corrupt_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("captures.log");
        let (mut f, _, _) = RecordFile::open(&path).unwrap();
        for s in [1, 2, 2, 3] {
            f.append(&record(s)).unwrap();
        }
        f.sync().unwrap();
        let (_, records, cut) = RecordFile::open(&path).unwrap();
        assert_eq!(records.len(), 2);
        assert!(matches!(cut.unwrap().problem, TailProblem::OutOfOrder { .. }));
    }
}
