//! The capture log: kept frames (JPEG files) plus their records, crash-safe, within a
//! disk budget, readable by sequence number for the sync API.
//!
//! Folder layout under the data directory:
//!
//! - `captures.log`: the append-only [`record_file`](super::record_file);
//! - `captures.state`: `{"acked": N, "first_live": M, "acked_at_ms": T}`, replaced
//!   atomically (temp file, fsync, rename, fsync folder): the host's acknowledgement, when
//!   it last came (the device's "last sync", kept across restarts) and the eviction point;
//! - `images/<seq>.jpg`: one JPEG per record, written as `images/.<seq>.jpg.tmp`, synced,
//!   renamed and the folder synced *before* its record is appended, so a record never
//!   points at a missing image;
//! - `lock`: held (flock) by the one process that writes the folder.
//!
//! Eviction writes the new `first_live` first and deletes images after, so a crash in
//! between leaves only orphan images, which the next open removes. Compaction rewrites
//! the record file under a temporary name and renames it. Sequence numbers never repeat:
//! the next one is above both the last record and `first_live`.
//!
//! Records reach readers ([`CaptureLog::after`]) only once they are fsynced, so a host
//! never sees a capture that a power cut could still take back.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::{CaptureReason, CaptureRecord, Detection};

use super::budget::{self, Budget, Entry, Eviction, Incoming};
use super::record_file::{self, is_disk_full, RecordFile, RecordFileError, TailCut};

/// Name of the record file inside the data directory.
pub const LOG_FILE: &str = "captures.log";
/// Name of the acknowledgement/eviction state file.
pub const STATE_FILE: &str = "captures.state";
/// Folder of JPEG files inside the data directory.
pub const IMAGES_DIR: &str = "images";
const LOCK_FILE: &str = "lock";
/// Dead records tolerated in the file before it is compacted (and never fewer than the
/// live ones, so compaction costs stay proportional to what it saves).
const COMPACT_MIN_DEAD: usize = 1024;

/// Why the capture log refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum CaptureLogError {
    /// The record file failed.
    #[error(transparent)]
    Records(#[from] RecordFileError),
    /// A file in the data folder could not be read or written.
    #[error("{path}: {action} failed: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// The disk is full: the capture was not stored, nothing stored before was lost.
    #[error("disk full under {dir}: capture not stored (earlier captures are safe)")]
    DiskFull {
        /// The data folder.
        dir: PathBuf,
    },
    /// Free space is below the configured floor: capturing pauses.
    #[error("only {free} bytes free under {dir}, below the floor of {floor}: capture paused")]
    LowSpace {
        /// The data folder.
        dir: PathBuf,
        /// Bytes available.
        free: u64,
        /// The configured floor.
        floor: u64,
    },
    /// One capture is larger than the whole byte budget.
    #[error("a {bytes}-byte capture exceeds the whole budget of {budget} bytes; raise max_bytes")]
    TooLarge {
        /// Size of the capture.
        bytes: u64,
        /// The budget.
        budget: u64,
    },
    /// The state file is damaged.
    #[error("{path} is damaged ({reason}); restore it or delete it to forget acknowledgements")]
    BadState {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
    /// Another process writes this data folder.
    #[error("{dir} is in use by another edge process (lock held); stop it or use another --data")]
    Locked {
        /// The data folder.
        dir: PathBuf,
    },
}

impl CaptureLogError {
    /// Whether this is a disk-space condition (full or below the floor) rather than a
    /// fault: the runtime pauses capture and keeps detecting.
    pub fn is_space(&self) -> bool {
        match self {
            CaptureLogError::DiskFull { .. } | CaptureLogError::LowSpace { .. } => true,
            CaptureLogError::Records(e) => e.is_disk_full(),
            _ => false,
        }
    }
}

/// How the log is set up.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The data folder.
    pub dir: PathBuf,
    /// Longest time an appended record may wait for fsync; zero syncs every record.
    pub fsync_interval: Duration,
    /// Byte and count limits.
    pub budget: Budget,
    /// Below this many free bytes on the file system, capture pauses.
    pub min_free_bytes: u64,
}

/// The part of a record the caller decides; the log fills in seq, image name and hash.
#[derive(Debug, Clone)]
pub struct CaptureDraft {
    /// Capture time, ms since the Unix epoch.
    pub time_ms: i64,
    /// Why the frame is kept.
    pub reason: CaptureReason,
    /// What the model said.
    pub detection: Detection,
    /// Version of the model.
    pub model_version: String,
    /// JPEG width in pixels.
    pub width: u32,
    /// JPEG height in pixels.
    pub height: u32,
}

/// What opening the log found and repaired.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Live records after recovery.
    pub records: usize,
    /// The damaged tail that was cut, if any.
    pub cut: Option<TailCut>,
    /// Image files without a live record (interrupted writes or evictions), removed.
    pub orphans_removed: usize,
    /// Records whose image was missing (deleted by hand?); dropped from the log.
    pub missing_images: Vec<u64>,
    /// Captures evicted because the budget shrank since the last run.
    pub evicted: usize,
}

/// Counts and sizes for status lines and the API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LogUsage {
    /// Live captures.
    pub count: usize,
    /// Bytes of images plus records.
    pub bytes: u64,
    /// Lowest live sequence number, if any.
    pub first_seq: Option<u64>,
    /// Highest durable sequence number, if any.
    pub last_seq: Option<u64>,
    /// Highest sequence number the host acknowledged.
    pub acked_seq: u64,
    /// When the host last acknowledged (ms since the Unix epoch), even if nothing was new.
    pub last_ack_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    acked: u64,
    first_live: u64,
    // Absent in state files written before it existed.
    #[serde(default)]
    acked_at_ms: Option<i64>,
}

#[derive(Debug, Clone)]
struct Stored {
    record: CaptureRecord,
    bytes: u64,
}

/// The capture log of one data folder. Share it as [`SharedLog`].
#[derive(Debug)]
pub struct CaptureLog {
    config: LogConfig,
    images: PathBuf,
    file: RecordFile,
    file_records: usize,
    live: VecDeque<Stored>,
    state: State,
    next_seq: u64,
    synced_seq: u64,
    last_sync: Instant,
    used_bytes: u64,
    _lock: File,
}

/// The log shared between the frame loop and the HTTP API.
pub type SharedLog = std::sync::Arc<std::sync::Mutex<CaptureLog>>;

impl CaptureLog {
    /// Opens the data folder (creating it), recovers from any crash, and applies the
    /// budget. Fails if another process holds the folder.
    pub fn open(config: LogConfig) -> Result<(CaptureLog, Recovery), CaptureLogError> {
        let dir = config.dir.clone();
        let images = dir.join(IMAGES_DIR);
        fs::create_dir_all(&images).map_err(io_err(&images, "create folder"))?;
        let lock = take_lock(&dir)?;
        let state = read_state(&dir)?;
        let (mut file, records, cut) = RecordFile::open(&dir.join(LOG_FILE))?;
        file.sync()?;
        let file_records = records.len();
        let last_in_file = records.last().map_or(0, |r| r.seq);

        let mut recovery = Recovery { cut, ..Recovery::default() };
        let mut live = VecDeque::new();
        for record in records.into_iter().filter(|r| r.seq >= state.first_live) {
            match fs::metadata(images.join(&record.image)) {
                Ok(m) => live.push_back(Stored { bytes: m.len() + frame_bytes(&record), record }),
                Err(_) => recovery.missing_images.push(record.seq),
            }
        }
        recovery.orphans_removed = remove_orphans(&images, &live)?;

        // A host may have acknowledged records that a power cut then took from the file:
        // their numbers are spent, or the host would skip the new records that reuse them.
        let next_seq = last_in_file.max(state.first_live.saturating_sub(1)).max(state.acked) + 1;
        let used_bytes =
            live.iter().map(|s| s.bytes).sum::<u64>() + record_file::MAGIC.len() as u64;
        let synced_seq = live.back().map_or(0, |s| s.record.seq);
        let mut log = CaptureLog {
            config,
            images,
            file,
            file_records,
            live,
            state,
            next_seq,
            synced_seq,
            last_sync: Instant::now(),
            used_bytes,
            _lock: lock,
        };
        recovery.evicted = log.enforce_budget(Incoming::default())?.count;
        if !recovery.missing_images.is_empty() {
            log.compact()?;
        }
        recovery.records = log.live.len();
        Ok((log, recovery))
    }

    /// Stores one capture: the JPEG first (durably), then its record. The record is
    /// durable after the next sync (at most `fsync_interval` later, see [`Self::tick`]).
    pub fn append(
        &mut self,
        draft: CaptureDraft,
        jpeg: &[u8],
    ) -> Result<CaptureRecord, CaptureLogError> {
        self.check_free_space()?;
        let seq = self.next_seq;
        let record = CaptureRecord {
            seq,
            time_ms: draft.time_ms,
            reason: draft.reason,
            detection: draft.detection,
            model_version: draft.model_version,
            image: format!("{seq:012}.jpg"),
            image_sha256: hex::encode(Sha256::digest(jpeg)),
            width: draft.width,
            height: draft.height,
        };
        let bytes = jpeg.len() as u64 + frame_bytes(&record);
        if bytes > self.config.budget.max_bytes {
            let budget = self.config.budget.max_bytes;
            return Err(CaptureLogError::TooLarge { bytes, budget });
        }
        self.enforce_budget(Incoming { bytes, count: 1 })?;

        // The sequence number is used up even if the writes below fail, so a half-done
        // capture can never share its number with a later one.
        self.next_seq += 1;
        self.write_image(&record.image, jpeg)?;
        if let Err(e) = self.file.append(&record) {
            let _ = fs::remove_file(self.images.join(&record.image));
            return Err(self.space_or(e.into()));
        }
        self.file_records += 1;
        self.used_bytes += bytes;
        self.live.push_back(Stored { record: record.clone(), bytes });
        if self.config.fsync_interval.is_zero() {
            self.sync()?;
        }
        Ok(record)
    }

    /// Syncs the record file if records are waiting and the interval has passed. Call it
    /// once per frame.
    pub fn tick(&mut self) -> Result<(), CaptureLogError> {
        if self.file.is_dirty() && self.last_sync.elapsed() >= self.config.fsync_interval {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes every appended record durable (and visible to [`Self::after`]) now.
    pub fn sync(&mut self) -> Result<(), CaptureLogError> {
        self.file.sync().map_err(|e| self.space_or(e.into()))?;
        self.synced_seq = self.live.back().map_or(self.synced_seq, |s| s.record.seq);
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Durable records with `seq > after`, oldest first, at most `limit` of them.
    pub fn after(&self, after: u64, limit: usize) -> Vec<CaptureRecord> {
        let start = self.live.partition_point(|s| s.record.seq <= after);
        self.live
            .range(start..)
            .take_while(|s| s.record.seq <= self.synced_seq)
            .take(limit)
            .map(|s| s.record.clone())
            .collect()
    }

    /// The durable record with this sequence number, if it is still live.
    pub fn get(&self, seq: u64) -> Option<&CaptureRecord> {
        let i = self.live.binary_search_by_key(&seq, |s| s.record.seq).ok()?;
        let record = &self.live[i].record;
        (record.seq <= self.synced_seq).then_some(record)
    }

    /// Full path of a live capture's JPEG.
    pub fn image_path(&self, seq: u64) -> Option<PathBuf> {
        self.get(seq).map(|r| self.images.join(&r.image))
    }

    /// The JPEG bytes of a live capture (tests; the API reads [`Self::image_path`] outside
    /// the lock).
    #[cfg(test)]
    pub fn read_image(&self, seq: u64) -> Option<Vec<u8>> {
        fs::read(self.image_path(seq)?).ok()
    }

    /// Records that the host holds every capture up to `seq`, at `now_ms`; returns the
    /// acknowledged sequence number now in force (clamped to the last durable record, never
    /// lowered). The time is written even when nothing new is acknowledged: a sync that
    /// found nothing is still a sync.
    pub fn ack(&mut self, seq: u64, now_ms: i64) -> Result<u64, CaptureLogError> {
        let acked = seq.min(self.synced_seq).max(self.state.acked);
        let state = State { acked, acked_at_ms: Some(now_ms), ..self.state };
        write_state(&self.config.dir, state)?;
        self.state = state;
        Ok(acked)
    }

    /// Counts and sizes.
    pub fn usage(&self) -> LogUsage {
        let durable = self.live.iter().rev().find(|s| s.record.seq <= self.synced_seq);
        LogUsage {
            count: self.live.len(),
            bytes: self.used_bytes,
            first_seq: self.live.front().map(|s| s.record.seq),
            last_seq: durable.map(|s| s.record.seq),
            acked_seq: self.state.acked,
            last_ack_ms: self.state.acked_at_ms,
        }
    }

    fn check_free_space(&mut self) -> Result<(), CaptureLogError> {
        let floor = self.config.min_free_bytes;
        let free = free_bytes(&self.config.dir)?;
        if free >= floor {
            return Ok(());
        }
        // Captures the host already holds are the only ones worth giving up for space.
        let ev = budget::plan_acked(&self.entries(), floor - free, self.state.acked);
        if ev.count > 0 {
            tracing::info!(count = ev.count, bytes = ev.bytes, "low disk: evicting acknowledged");
            self.evict(ev)?;
        }
        let free = free_bytes(&self.config.dir)?;
        if free >= floor {
            return Ok(());
        }
        Err(CaptureLogError::LowSpace { dir: self.config.dir.clone(), free, floor })
    }

    fn entries(&self) -> Vec<Entry> {
        self.live.iter().map(|s| Entry { seq: s.record.seq, bytes: s.bytes }).collect()
    }

    fn enforce_budget(&mut self, incoming: Incoming) -> Result<Eviction, CaptureLogError> {
        let ev = budget::plan(
            &self.entries(),
            self.used_bytes,
            incoming,
            self.state.acked,
            self.config.budget,
        );
        if ev.count > 0 {
            if ev.unacked > 0 {
                tracing::warn!(
                    unacked = ev.unacked,
                    "disk budget reached: evicting captures the host has not acknowledged"
                );
            } else {
                tracing::debug!(count = ev.count, "disk budget: evicting acknowledged captures");
            }
            self.evict(ev)?;
        }
        Ok(ev)
    }

    /// Removes the `ev.count` oldest captures: state first, files after.
    fn evict(&mut self, ev: Eviction) -> Result<(), CaptureLogError> {
        let Some(last) = self.live.get(ev.count.saturating_sub(1)) else {
            return Ok(());
        };
        let first_live = last.record.seq + 1;
        let state = State { first_live, ..self.state };
        write_state(&self.config.dir, state)?;
        self.state = state;
        for s in self.live.drain(..ev.count) {
            self.used_bytes = self.used_bytes.saturating_sub(s.bytes);
            let path = self.images.join(&s.record.image);
            if let Err(e) = fs::remove_file(&path) {
                // The next open removes it as an orphan.
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "could not delete evicted image"
                );
            }
        }
        let dead = self.file_records - self.live.len();
        if dead >= COMPACT_MIN_DEAD.max(self.live.len()) {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the record file with only the live records.
    fn compact(&mut self) -> Result<(), CaptureLogError> {
        let records: Vec<_> = self.live.iter().map(|s| s.record.clone()).collect();
        self.file = RecordFile::rewrite(&self.config.dir.join(LOG_FILE), &records)
            .map_err(|e| self.space_or(e.into()))?;
        self.file_records = records.len();
        self.synced_seq = records.last().map_or(self.synced_seq, |r| r.seq);
        tracing::debug!(records = records.len(), "capture log compacted");
        Ok(())
    }

    fn write_image(&self, name: &str, jpeg: &[u8]) -> Result<(), CaptureLogError> {
        let tmp = self.images.join(format!(".{name}.tmp"));
        let path = self.images.join(name);
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(jpeg)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            record_file::sync_dir(&self.images)
        })();
        result.map_err(|source| {
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_file(&path);
            if is_disk_full(&source) {
                CaptureLogError::DiskFull { dir: self.config.dir.clone() }
            } else {
                CaptureLogError::Io { path, action: "write image", source }
            }
        })
    }

    fn space_or(&self, e: CaptureLogError) -> CaptureLogError {
        if e.is_space() {
            CaptureLogError::DiskFull { dir: self.config.dir.clone() }
        } else {
            e
        }
    }
}

/// Approximate bytes a record takes in the log (frame header plus payload).
fn frame_bytes(record: &CaptureRecord) -> u64 {
    8 + postcard::to_stdvec(record).map_or(256, |v| v.len()) as u64
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> CaptureLogError {
    let path = path.to_path_buf();
    move |source| CaptureLogError::Io { path, action, source }
}

/// Bytes available to this process on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64, CaptureLogError> {
    let st = rustix::fs::statvfs(dir).map_err(|e| CaptureLogError::Io {
        path: dir.into(),
        action: "statvfs",
        source: e.into(),
    })?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

fn take_lock(dir: &Path) -> Result<File, CaptureLogError> {
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path, "open lock"))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| CaptureLogError::Locked { dir: dir.into() })?;
    Ok(file)
}

fn read_state(dir: &Path) -> Result<State, CaptureLogError> {
    let path = dir.join(STATE_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| CaptureLogError::BadState { path, reason: e.to_string() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
        Err(source) => Err(CaptureLogError::Io { path, action: "read", source }),
    }
}

fn write_state(dir: &Path, state: State) -> Result<(), CaptureLogError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let bytes = serde_json::to_vec(&state).unwrap_or_default();
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        record_file::sync_dir(dir)
    })();
    result.map_err(|source| {
        if is_disk_full(&source) {
            CaptureLogError::DiskFull { dir: dir.into() }
        } else {
            CaptureLogError::Io { path, action: "replace", source }
        }
    })
}

/// Removes image files no live record points at: temporaries of interrupted writes,
/// images of interrupted evictions, images whose record never made it to the log.
fn remove_orphans(images: &Path, live: &VecDeque<Stored>) -> Result<usize, CaptureLogError> {
    let wanted: std::collections::HashSet<&str> =
        live.iter().map(|s| s.record.image.as_str()).collect();
    let mut removed = 0;
    for entry in fs::read_dir(images).map_err(io_err(images, "list"))? {
        let entry = entry.map_err(io_err(images, "list"))?;
        let name = entry.file_name();
        if wanted.contains(name.to_string_lossy().as_ref()) {
            continue;
        }
        if fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// A read-only look at a data folder, for `edge captures` while `edge run` may be
/// writing it: nothing is repaired or locked.
#[derive(Debug, Clone)]
pub struct LogView {
    /// The data folder.
    pub dir: PathBuf,
    /// Live records (at or after `first_live`), in order.
    pub records: Vec<CaptureRecord>,
    /// Highest acknowledged sequence number.
    pub acked: u64,
    /// The scan's complaint about the end of the record file, if any.
    pub tail: Option<(u64, record_file::TailProblem)>,
}

impl LogView {
    /// Reads the folder.
    pub fn read(dir: &Path) -> Result<LogView, CaptureLogError> {
        let state = read_state(dir)?;
        let log = dir.join(LOG_FILE);
        let scan = match record_file::scan_file(&log) {
            Err(RecordFileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(CaptureLogError::Io { path: log, action: "open", source });
            }
            other => other?,
        };
        let tail = scan.problem.map(|p| (scan.good_len, p));
        let records = scan.records.into_iter().filter(|r| r.seq >= state.first_live).collect();
        Ok(LogView { dir: dir.into(), records, acked: state.acked, tail })
    }

    /// Full path of a record's image.
    pub fn image_path(&self, record: &CaptureRecord) -> PathBuf {
        self.dir.join(IMAGES_DIR).join(&record.image)
    }

    /// Checks every record and image; returns one line per problem (empty when sound).
    pub fn verify(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some((offset, p)) = &self.tail {
            problems.push(format!("{}: bad data at byte {offset}: {p}", LOG_FILE));
        }
        for r in &self.records {
            let path = self.image_path(r);
            match fs::read(&path) {
                Err(e) => problems.push(format!("seq {}: image {}: {e}", r.seq, path.display())),
                Ok(bytes) => {
                    let sha = hex::encode(Sha256::digest(&bytes));
                    if sha != r.image_sha256 {
                        problems.push(format!(
                            "seq {}: image {} has sha256 {sha}, the record says {}",
                            r.seq,
                            path.display(),
                            r.image_sha256
                        ));
                    }
                }
            }
            let d = r.detection;
            if !(0.0..=1.0).contains(&d.score) {
                problems.push(format!("seq {}: score {} is not in [0, 1]", r.seq, d.score));
            }
        }
        if let Some(last) = self.records.last() {
            if self.acked > last.seq {
                problems
                    .push(format!("acked {} is beyond the last record {}", self.acked, last.seq));
            }
        }
        problems.extend(self.stray_images());
        problems
    }

    fn stray_images(&self) -> Vec<String> {
        let names: std::collections::HashSet<&str> =
            self.records.iter().map(|r| r.image.as_str()).collect();
        let Ok(dir) = fs::read_dir(self.dir.join(IMAGES_DIR)) else {
            return vec![format!("{}: images folder missing", self.dir.display())];
        };
        dir.filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !names.contains(n.as_str()))
            .map(|n| format!("{IMAGES_DIR}/{n}: no record points at it (removed on next start)"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::BBox;

    pub(crate) fn config(dir: &Path) -> LogConfig {
        LogConfig {
            dir: dir.into(),
            fsync_interval: Duration::ZERO,
            budget: Budget { max_bytes: 1 << 30, max_count: 1000 },
            min_free_bytes: 0,
        }
    }

    /// The kill test's config: a budget no run reaches, so that eviction never makes
    /// the sequence look like it has gaps.
    fn kill_config(dir: &Path) -> LogConfig {
        LogConfig { budget: Budget { max_bytes: u64::MAX, max_count: usize::MAX }, ..config(dir) }
    }

    pub(crate) fn draft(score: f32) -> CaptureDraft {
        CaptureDraft {
            time_ms: 1_764_700_000_000,
            reason: CaptureReason::Uncertain,
            detection: Detection { score, bbox: BBox::new(0.1, 0.1, 0.5, 0.5) },
            model_version: "m1".into(),
            width: 64,
            height: 48,
        }
    }

    fn jpeg(seed: u8) -> Vec<u8> {
        // Not a real JPEG: the log stores bytes, it does not decode them.
        vec![seed; 1000]
    }

    #[test]
    fn append_read_ack_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, rec) = CaptureLog::open(config(dir.path())).unwrap();
        assert_eq!(rec.records, 0);
        for i in 0..5 {
            log.append(draft(0.5), &jpeg(i)).unwrap();
        }
        let all = log.after(0, 100);
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert_eq!(log.after(3, 1).len(), 1);
        assert_eq!(log.read_image(2).unwrap(), jpeg(1));
        assert_eq!(log.usage().last_ack_ms, None);
        assert_eq!(log.ack(3, 1_000).unwrap(), 3);
        assert_eq!(log.ack(99, 2_000).unwrap(), 5, "ack clamps to the last record");
        drop(log);

        let (mut log, rec) = CaptureLog::open(config(dir.path())).unwrap();
        assert_eq!(rec.records, 5);
        assert_eq!(log.usage().acked_seq, 5);
        assert_eq!(log.usage().last_ack_ms, Some(2_000), "last sync survives a restart");
        let r = log.append(draft(0.4), &jpeg(9)).unwrap();
        assert_eq!(r.seq, 6, "sequence continues across restarts");
        assert!(LogView::read(dir.path()).unwrap().verify().is_empty());
    }

    #[test]
    fn a_state_file_from_before_the_ack_time_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE_FILE), br#"{"acked":2,"first_live":0}"#).unwrap();
        let (mut log, _) = CaptureLog::open(config(dir.path())).unwrap();
        assert_eq!(log.usage().acked_seq, 2);
        assert_eq!(log.usage().last_ack_ms, None);
        assert_eq!(log.append(draft(0.5), &jpeg(1)).unwrap().seq, 3);
    }

    #[test]
    fn unsynced_records_are_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.fsync_interval = Duration::from_secs(3600);
        let (mut log, _) = CaptureLog::open(cfg).unwrap();
        log.append(draft(0.5), &jpeg(1)).unwrap();
        assert!(log.after(0, 10).is_empty());
        assert_eq!(log.ack(1, 1_000).unwrap(), 0);
        log.sync().unwrap();
        assert_eq!(log.after(0, 10).len(), 1);
    }

    #[test]
    fn budget_evicts_oldest_and_sequence_survives_full_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.budget.max_count = 3;
        let (mut log, _) = CaptureLog::open(cfg.clone()).unwrap();
        for i in 0..5 {
            log.append(draft(0.5), &jpeg(i)).unwrap();
        }
        let seqs: Vec<_> = log.after(0, 10).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert!(log.image_path(1).is_none());
        assert!(!dir.path().join(IMAGES_DIR).join(format!("{:012}.jpg", 1)).exists());
        drop(log);

        // Shrink the budget to one capture: on open the two oldest go.
        cfg.budget.max_count = 1;
        let (mut log, rec) = CaptureLog::open(cfg).unwrap();
        assert_eq!(rec.evicted, 2);
        assert_eq!(log.append(draft(0.5), &jpeg(7)).unwrap().seq, 6);
        assert!(LogView::read(dir.path()).unwrap().verify().is_empty());
    }

    #[test]
    fn byte_budget_counts_images() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.budget.max_bytes = 3500;
        let (mut log, _) = CaptureLog::open(cfg).unwrap();
        for i in 0..6 {
            log.append(draft(0.5), &jpeg(i)).unwrap();
        }
        assert!(log.usage().bytes <= 3500, "{:?}", log.usage());
        assert_eq!(log.usage().count, 3);
        let too_big = log.append(draft(0.5), &vec![0u8; 5000]).unwrap_err();
        assert!(matches!(too_big, CaptureLogError::TooLarge { .. }), "{too_big}");
    }

    #[test]
    fn low_free_space_pauses_capture_without_touching_records() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = CaptureLog::open(config(dir.path())).unwrap();
        log.append(draft(0.5), &jpeg(1)).unwrap();
        log.config.min_free_bytes = u64::MAX;
        let err = log.append(draft(0.5), &jpeg(2)).unwrap_err();
        assert!(err.is_space() && matches!(err, CaptureLogError::LowSpace { .. }), "{err}");
        assert_eq!(log.usage().count, 1, "unacknowledged captures are not evicted for space");
        log.ack(1, 1_000).unwrap();
        assert!(log.append(draft(0.5), &jpeg(2)).is_err());
        assert_eq!(log.usage().count, 0, "acknowledged ones are");
    }

    #[test]
    fn disk_full_on_the_record_loses_nothing_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = CaptureLog::open(config(dir.path())).unwrap();
        log.append(draft(0.5), &jpeg(1)).unwrap();
        log.file.fail_after_bytes = Some(5);
        let err = log.append(draft(0.5), &jpeg(2)).unwrap_err();
        assert!(matches!(err, CaptureLogError::DiskFull { .. }), "{err}");
        assert!(!dir.path().join(IMAGES_DIR).join(format!("{:012}.jpg", 2)).exists());
        let r = log.append(draft(0.5), &jpeg(3)).unwrap();
        assert_eq!(r.seq, 3, "the failed capture's number is not reused");
        drop(log);
        let (log, rec) = CaptureLog::open(config(dir.path())).unwrap();
        assert!(rec.cut.is_none());
        assert_eq!(log.after(0, 10).iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn open_removes_orphans_and_drops_records_without_images() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = CaptureLog::open(config(dir.path())).unwrap();
        for i in 0..3 {
            log.append(draft(0.5), &jpeg(i)).unwrap();
        }
        drop(log);
        let images = dir.path().join(IMAGES_DIR);
        fs::write(images.join(".000000000004.jpg.tmp"), b"half").unwrap();
        fs::write(images.join("000000000009.jpg"), b"no record").unwrap();
        fs::remove_file(images.join(format!("{:012}.jpg", 2))).unwrap();
        let problems = LogView::read(dir.path()).unwrap().verify();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems.iter().any(|p| p.starts_with("seq 2: image")), "{problems:#?}");

        let (log, rec) = CaptureLog::open(config(dir.path())).unwrap();
        assert_eq!(rec.orphans_removed, 2);
        assert_eq!(rec.missing_images, vec![2]);
        assert_eq!(log.after(0, 10).iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 3]);
        drop(log);
        assert!(LogView::read(dir.path()).unwrap().verify().is_empty());
    }

    #[test]
    fn verify_names_a_tampered_image() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = CaptureLog::open(config(dir.path())).unwrap();
        log.append(draft(0.5), &jpeg(1)).unwrap();
        let path = log.image_path(1).unwrap();
        drop(log);
        fs::write(&path, b"changed").unwrap();
        let problems = LogView::read(dir.path()).unwrap().verify();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("sha256"), "{}", problems[0]);
    }

    #[test]
    fn a_second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = CaptureLog::open(config(dir.path())).unwrap();
        let err = CaptureLog::open(config(dir.path())).unwrap_err();
        assert!(matches!(err, CaptureLogError::Locked { .. }), "{err}");
    }

    #[test]
    fn compaction_keeps_live_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.budget.max_count = 10;
        let (mut log, _) = CaptureLog::open(cfg.clone()).unwrap();
        for _ in 0..(COMPACT_MIN_DEAD + 50) {
            log.append(draft(0.5), b"x").unwrap();
        }
        assert!(log.file_records < COMPACT_MIN_DEAD + 50, "the file was compacted");
        drop(log);
        let (log, _) = CaptureLog::open(cfg).unwrap();
        let seqs: Vec<_> = log.after(0, 100).iter().map(|r| r.seq).collect();
        let n = (COMPACT_MIN_DEAD + 50) as u64;
        assert_eq!(seqs, (n - 9..=n).collect::<Vec<_>>());
    }

    /// Environment variable that turns [`crash_child`] into a writer for the kill test.
    const CHILD_ENV: &str = "EDGE_CAPTURE_CRASH_CHILD_DIR";

    /// In a normal test run this returns at once. Re-invoked by
    /// [`records_survive_sigkill_at_random_points`] with [`CHILD_ENV`] set, it appends
    /// captures forever and prints `durable N` after every fsync, until it is killed.
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let mut cfg = kill_config(Path::new(&dir));
        cfg.fsync_interval = Duration::from_millis(2);
        let (mut log, _) = CaptureLog::open(cfg).unwrap();
        log.file.split_writes = true;
        let mut reported = 0;
        let mut out = io::stdout().lock();
        loop {
            let seq = log.next_seq;
            log.append(draft((seq % 100) as f32 / 100.0), &jpeg(seq as u8)).unwrap();
            log.tick().unwrap();
            if let Some(last) = log.usage().last_seq.filter(|&l| l > reported) {
                writeln!(out, "durable {last}").unwrap();
                out.flush().unwrap();
                reported = last;
            }
        }
    }

    #[test]
    fn records_survive_sigkill_at_random_points() {
        use rand::Rng;
        use std::io::Read;
        use std::process::{Command, Stdio};

        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut rng = rand::thread_rng();
        let (mut highest_durable, mut cuts, mut kills) = (0u64, 0, 0);
        for _ in 0..40 {
            let mut child = Command::new(&exe)
                .args(["capture::log::tests::crash_child", "--exact", "--nocapture"])
                .args(["--test-threads=1"])
                .env(CHILD_ENV, dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(rng.gen_range(20..120)));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
            let mut text = String::new();
            child.stdout.take().unwrap().read_to_string(&mut text).unwrap();
            let durable =
                text.lines().filter_map(|l| l.strip_prefix("durable ")?.parse::<u64>().ok()).max();
            if let Some(d) = durable {
                assert!(d > highest_durable || highest_durable == 0, "sequence went back");
                highest_durable = highest_durable.max(d);
            }

            let (log, recovery) = CaptureLog::open(kill_config(dir.path())).unwrap();
            cuts += usize::from(recovery.cut.is_some());
            let seqs: Vec<u64> = log.after(0, usize::MAX).iter().map(|r| r.seq).collect();
            let n = seqs.len() as u64;
            assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "records are contiguous from 1");
            assert!(
                n >= highest_durable,
                "lost durable records: have {n}, {highest_durable} synced"
            );
            for r in log.after(0, usize::MAX) {
                assert_eq!(r.model_version, "m1");
                assert_eq!(r.detection.score, (r.seq % 100) as f32 / 100.0, "seq {}", r.seq);
            }
            drop(log);
            let problems = LogView::read(dir.path()).unwrap().verify();
            assert!(problems.is_empty(), "{problems:#?}");
        }
        assert!(highest_durable > 0, "the child never got to sync; the test proved nothing");
        eprintln!("{kills} kills, {cuts} torn tails cut, {highest_durable} records durable");
    }
}
