//! The write-ahead log: the replicated log's entries on disk, checksummed,
//! in segment files, made durable by [`Wal::sync`] before anything is
//! acknowledged.
//!
//! # Layout
//!
//! A directory of segments named `{first_index:020}.wal`, each a header
//! (magic `CLWAL`, format version) followed by records:
//!
//! ```text
//! u32 LE  body length
//! u32 LE  CRC-32 of the body
//! body:   u64 LE epoch, u64 LE index, u8 kind (0 no-op, 1 data), payload
//! ```
//!
//! Entries are contiguous (each index one above the last) across segments,
//! and a segment is closed once it reaches [`WalOptions::segment_bytes`].
//! Ahead of its last record a segment holds zeros, written
//! [`WalOptions::prefill_bytes`] at a time before the records that need
//! them, so that an fsync writes the records only, not the file's new size
//! and block allocation too; a segment's records end where only zeros
//! follow.
//!
//! # Recovery
//!
//! [`Wal::open`] reads every segment and tells a torn tail from corruption
//! ([`Wal::open_after`] does the same but keeps only the entries after a
//! snapshot's index; [`Wal::compact_to`] makes the entries a snapshot
//! covers impossible to truncate and drops what indexed them):
//!
//! - Nothing but zeros to the end of a segment is the end of its records
//!   (the zeros written ahead, [`WalOptions::prefill_bytes`]).
//! - A record that is cut short, or fails its checksum, **in the last
//!   segment**, with nothing valid after it or with an all-zero 512-byte
//!   sector between it and the next valid record (a page that never reached
//!   the disk), is a write the crash interrupted: the tail from that record
//!   on is truncated (and reported in [`Recovered`]). It was never synced,
//!   so never acknowledged. (etcd's WAL draws the same line.)
//! - Any other bad record (followed by valid data with no unwritten sector
//!   between, or in any segment but the last, which were synced before the
//!   next was started), or an index that does not follow its predecessor, is
//!   corruption of data that was once durable: opening fails with
//!   [`WalError::Corrupt`], naming the file and offset, and nothing is
//!   changed on disk. An operator decides (restore the node from its peers);
//!   the log never silently drops acknowledged entries.
//!
//! What the segments cannot tell (a deleted last segment, a damaged last
//! record that passes for a torn write) the [`mark`] can: a durable
//! high-water mark of what this node made durable, kept beside the
//! segments, which a log that comes back shorter falls below.
//!
//! # Example
//!
//! ```
//! use clustron_log::wal::{Entry, EntryKind, Wal, WalOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let (mut wal, recovered) = Wal::open(dir.path(), WalOptions::default()).unwrap();
//! assert!(recovered.entries.is_empty());
//! wal.append(&[Entry { epoch: 1, index: 1, kind: EntryKind::Data, payload: b"put a=1".to_vec() }]).unwrap();
//! wal.sync().unwrap();
//! drop(wal);
//!
//! let (wal, recovered) = Wal::open(dir.path(), WalOptions::default()).unwrap();
//! assert_eq!(recovered.entries[0].payload, b"put a=1");
//! assert_eq!(wal.last_index(), 1);
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use crate::core::replication::{Entry, EntryKind};
pub use mark::HighWaterMark;

pub mod mark;

/// File magic and format version at the start of every segment.
const MAGIC: &[u8; 5] = b"CLWAL";
const VERSION: u8 = 1;
const HEADER_LEN: u64 = 6;
/// Record framing: body length and checksum.
const FRAME_LEN: usize = 8;
/// Epoch, index and kind at the start of a body.
const BODY_FIXED: usize = 17;

/// Tuning of a [`Wal`].
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// A segment is closed and a new one started once it is this large.
    pub segment_bytes: u64,
    /// Largest payload accepted by [`Wal::append`] and read back by
    /// [`Wal::open`]; a longer length on disk is a torn or corrupt record.
    pub max_payload: usize,
    /// Zeros written ahead of the last record, this many bytes at a time,
    /// before an append needs them (0: none; the file grows with each
    /// record). An fdatasync after an append that grew the file must also
    /// write the file's size and block allocation; over blocks already
    /// written it writes the data only. On the 2-core VM (ext4), appends
    /// of 0.3–30 KB each followed by fdatasync took 0.15–0.20 ms and
    /// 60–86 µs of CPU growing the file, 0.10–0.11 ms and 43–48 µs over
    /// zeros written 1 MiB at a time (PostgreSQL zero-fills its WAL
    /// segments for the same reason). The fsync after each fill carries the
    /// zeros too (~1 ms once per MiB).
    pub prefill_bytes: u64,
}

impl Default for WalOptions {
    /// 64 MiB segments (few files, cheap deletion after compaction),
    /// 16 MiB payloads (a batch of the largest values the store accepts)
    /// and zeros written 1 MiB ahead.
    fn default() -> Self {
        Self {
            segment_bytes: 64 * 1024 * 1024,
            max_payload: 16 * 1024 * 1024,
            prefill_bytes: 1024 * 1024,
        }
    }
}

/// What [`Wal::open`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every entry, in index order.
    pub entries: Vec<Entry>,
    /// Bytes of a torn tail that were cut off the last segment, if any.
    pub torn_tail_bytes: u64,
}

/// Why the log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A read, write or sync failed.
    #[error("write-ahead log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Data that was once durable is damaged; the log refuses to open.
    #[error("write-ahead log {path} is corrupt at byte {offset}: {reason}; restore this node's data from its peers")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Offset of the bad record or header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An append that would break the log's contiguity, or too large.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Index of its first entry (the name), even when it holds none yet.
    first_index: u64,
    /// Leading entries whose offsets were dropped: a snapshot covers them,
    /// so they are never truncated (only uncommitted entries are), and the
    /// active 64 MiB segment's offsets no longer grow with every entry it
    /// ever held (2.1 MB of a node's heap after 300,000 puts, issue 11).
    forgotten: u64,
    /// Byte offset of each entry's record after the forgotten ones, in
    /// order.
    offsets: Vec<u64>,
    /// Bytes of header and records: where the next record goes.
    len: u64,
    /// Bytes in the file: `len` plus the zeros written ahead.
    file_len: u64,
}

impl Segment {
    fn last_index(&self) -> u64 {
        // Invariant: first_index >= 1 (Wal::open refuses 0), and the
        // entries' indices fit in a u64 (read_segment checks).
        self.first_index - 1 + self.forgotten + self.offsets.len() as u64
    }

    /// Drops the offsets of the entries at or below `index`.
    fn forget_to(&mut self, index: u64) {
        // Saturating: the entry at the last u64 index may be forgotten too.
        let first_kept = self.first_index.saturating_add(self.forgotten);
        let Some(count) = index.checked_sub(first_kept).map(|c| c.saturating_add(1)) else {
            return;
        };
        let count =
            usize::try_from(count).map_or(self.offsets.len(), |c| c.min(self.offsets.len()));
        self.offsets.drain(..count);
        self.forgotten += count as u64;
        // A burst (a long outage without snapshots) may have grown it.
        if self.offsets.capacity() > 4 * self.offsets.len() + 1024 {
            self.offsets.shrink_to(2 * self.offsets.len());
        }
    }
}

/// An fsync of the log's active segment, to run off the caller's thread
/// (see [`Wal::begin_sync`]).
#[derive(Debug)]
pub struct PendingSync {
    file: File,
    path: PathBuf,
}

impl PendingSync {
    /// Performs the fsync (blocking).
    pub fn run(self) -> Result<(), WalError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }
}

/// The write-ahead log of one node. Not thread-safe: one owner appends,
/// truncates and syncs.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    /// Closed segments then the active one (always at least one).
    segments: Vec<Segment>,
    active: BufWriter<File>,
    /// Entries appended or truncated since the last sync.
    dirty: bool,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, recovering what is on disk.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovered), WalError> {
        Self::open_after(dir, options, 0)
    }

    /// [`Wal::open`], recovering only the entries after `after` (a
    /// snapshot covers the others): they are checked as every entry is,
    /// but neither kept nor indexed, so a restart does not hold the whole
    /// active segment's entries in memory at once (55 MB of RSS after a
    /// restart where the steady node held 31, issue 11).
    pub fn open_after(
        dir: &Path,
        options: WalOptions,
        after: u64,
    ) -> Result<(Wal, Recovered), WalError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let item = item.map_err(io_err(dir))?;
            let name = item.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
                continue;
            };
            if let Ok(first) = stem.parse::<u64>() {
                names.push((first, item.path()));
            }
        }
        names.sort();
        let mut recovered = Recovered::default();
        let mut segments = Vec::new();
        let count = names.len();
        // The segment before: its first index and how many entries it held.
        // The next one must start right after, also when it held none.
        let mut previous: Option<(u64, u64)> = None;
        let mut last_epoch = 0;
        for (k, (first_index, path)) in names.into_iter().enumerate() {
            let last = k + 1 == count;
            if first_index == 0 {
                return Err(WalError::Corrupt {
                    path,
                    offset: 0,
                    reason: "segment named for index 0 (indices start at 1)".into(),
                });
            }
            let expected = match previous {
                Some((first, held)) => first.checked_add(held),
                None => Some(first_index),
            };
            if expected != Some(first_index) {
                let expected = expected.map_or("none (the log is at the last index)".into(), |e| {
                    e.to_string()
                });
                return Err(WalError::Corrupt {
                    path,
                    offset: 0,
                    reason: format!("segment starts at index {first_index}, expected {expected}"),
                });
            }
            let (segment, torn) = read_segment(
                &path,
                first_index,
                last,
                &options,
                (after, &mut last_epoch),
                &mut recovered,
            )?;
            recovered.torn_tail_bytes += torn;
            previous = Some((
                first_index,
                segment.forgotten + segment.offsets.len() as u64,
            ));
            segments.push(segment);
        }
        if segments.is_empty() {
            segments.push(create_segment(dir, 1)?);
        }
        let active = open_active(segments.last_mut())?;
        let wal = Wal {
            dir: dir.to_owned(),
            options,
            segments,
            active,
            dirty: false,
        };
        Ok((wal, recovered))
    }

    /// Index of the first entry kept (1 unless compacted).
    pub fn first_index(&self) -> u64 {
        self.segments[0].first_index
    }

    /// Index of the last entry, or `first_index() - 1` when empty.
    pub fn last_index(&self) -> u64 {
        self.active_segment().last_index()
    }

    /// Appends `entries` (buffered, not yet durable: call [`Wal::sync`]).
    /// They must continue the log: the first one's index is
    /// `last_index() + 1` and each next one follows.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), WalError> {
        for entry in entries {
            let Some(expected) = self.last_index().checked_add(1) else {
                return Err(WalError::InvalidAppend(
                    "the log is at the last index a u64 holds".into(),
                ));
            };
            if entry.index != expected {
                return Err(WalError::InvalidAppend(format!(
                    "entry index {} does not follow the log (expected {expected})",
                    entry.index
                )));
            }
            if entry.payload.len() > self.options.max_payload {
                return Err(WalError::InvalidAppend(format!(
                    "payload of {} bytes is over the limit of {}",
                    entry.payload.len(),
                    self.options.max_payload
                )));
            }
            if self.active_segment().len >= self.options.segment_bytes
                && !self.active_segment().offsets.is_empty()
            {
                self.rotate()?;
            }
            let body_len = BODY_FIXED + entry.payload.len();
            self.prefill(self.active_segment().len + (FRAME_LEN + body_len) as u64)?;
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&entry.epoch.to_le_bytes());
            hasher.update(&entry.index.to_le_bytes());
            hasher.update(&[kind_byte(entry.kind)]);
            hasher.update(&entry.payload);
            let crc = hasher.finalize();
            let path = self.active_segment().path.clone();
            let w = &mut self.active;
            (|| {
                w.write_all(&(body_len as u32).to_le_bytes())?;
                w.write_all(&crc.to_le_bytes())?;
                w.write_all(&entry.epoch.to_le_bytes())?;
                w.write_all(&entry.index.to_le_bytes())?;
                w.write_all(&[kind_byte(entry.kind)])?;
                w.write_all(&entry.payload)
            })()
            .map_err(io_err(&path))?;
            let segment = self.active_segment_mut();
            segment.offsets.push(segment.len);
            segment.len += (FRAME_LEN + body_len) as u64;
            self.dirty = true;
        }
        Ok(())
    }

    /// Makes every append and truncation so far durable (fsync).
    pub fn sync(&mut self) -> Result<(), WalError> {
        if !self.dirty {
            return Ok(());
        }
        let path = self.active_segment().path.clone();
        self.active.flush().map_err(io_err(&path))?;
        self.active.get_ref().sync_data().map_err(io_err(&path))?;
        self.dirty = false;
        Ok(())
    }

    /// [`Wal::sync`] in two halves, so the fsync can run on another thread
    /// while the caller goes on: flushes what is buffered and returns the
    /// sync to perform ([`PendingSync::run`]), or `None` if nothing was
    /// written since the last sync. Everything appended or truncated before
    /// this call is durable once that `run` returns `Ok`; appends made
    /// meanwhile are not covered (they need a sync of their own). An `Err`
    /// from `run` is the log failing: the caller must stop using it.
    pub fn begin_sync(&mut self) -> Result<Option<PendingSync>, WalError> {
        if !self.dirty {
            return Ok(None);
        }
        let path = self.active_segment().path.clone();
        self.active.flush().map_err(io_err(&path))?;
        let file = self.active.get_ref().try_clone().map_err(io_err(&path))?;
        self.dirty = false;
        Ok(Some(PendingSync { file, path }))
    }

    /// Removes every entry from `index` on (a leader's log replaced a
    /// conflicting suffix). Durable once [`Wal::sync`] returns; segments
    /// that held only removed entries are deleted at once.
    pub fn truncate_from(&mut self, index: u64) -> Result<(), WalError> {
        if index > self.last_index() {
            return Ok(());
        }
        if index < self.first_index() || self.last_forgotten().is_some_and(|f| index <= f) {
            let upto = self
                .last_forgotten()
                .unwrap_or(self.first_index().saturating_sub(1));
            return Err(WalError::InvalidAppend(format!(
                "cannot truncate from {index}: the entries up to {upto} are compacted"
            )));
        }
        let path = self.active_segment().path.clone();
        self.active.flush().map_err(io_err(&path))?;
        // Whole segments past the cut go first, newest first, so a crash in
        // between leaves a contiguous log.
        while self.segments.len() > 1 && self.active_segment().first_index >= index {
            let segment = self
                .segments
                .pop()
                .ok_or_else(|| WalError::InvalidAppend("no segment left to truncate".into()))?;
            std::fs::remove_file(&segment.path).map_err(io_err(&segment.path))?;
        }
        let segment = self.active_segment_mut();
        // Invariant: first_index <= index here (checked above, and the
        // segments after the one holding `index` are gone), and the
        // forgotten entries are all below `index`.
        let keep = (index - segment.first_index).saturating_sub(segment.forgotten);
        let keep = usize::try_from(keep).unwrap_or(usize::MAX);
        if keep < segment.offsets.len() {
            segment.len = segment.offsets[keep];
            segment.offsets.truncate(keep);
        }
        // The zeros ahead go too: cut at the end of the records kept, so
        // no removed record stays in the file to be read back.
        segment.file_len = segment.len;
        let len = segment.len;
        let path = segment.path.clone();
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(len).map_err(io_err(&path))?;
        file.sync_data().map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        self.active = open_active(self.segments.last_mut())?;
        Ok(())
    }

    /// Deletes the segments whose entries are all at or below `index` (a
    /// snapshot covers them). The active segment is kept, so the log's
    /// position survives even when everything is compacted.
    /// The entries left at or below `index` can no longer be truncated.
    pub fn compact_to(&mut self, index: u64) -> Result<(), WalError> {
        while self.segments.len() > 1 && self.segments[0].last_index() <= index {
            let segment = self.segments.remove(0);
            std::fs::remove_file(&segment.path).map_err(io_err(&segment.path))?;
        }
        for segment in &mut self.segments {
            segment.forget_to(index);
        }
        sync_dir(&self.dir)
    }

    /// Discards every entry and continues the log after `index` (a
    /// snapshot covering `index` was installed and made durable first).
    /// The old segments go first: a crash in between leaves an empty log,
    /// which the caller resets again from its snapshot at the next start.
    pub fn reset_after(&mut self, index: u64) -> Result<(), WalError> {
        let path = self.active_segment().path.clone();
        self.active.flush().map_err(io_err(&path))?;
        let old = std::mem::take(&mut self.segments);
        for segment in old.iter().rev() {
            std::fs::remove_file(&segment.path).map_err(io_err(&segment.path))?;
        }
        sync_dir(&self.dir)?;
        self.segments.push(create_segment(&self.dir, index + 1)?);
        self.active = open_active(self.segments.last_mut())?;
        self.dirty = false;
        Ok(())
    }

    /// The last entry a snapshot covers ([`Wal::compact_to`]), if any is
    /// still in the log: [`Wal::truncate_from`] refuses it and those before.
    fn last_forgotten(&self) -> Option<u64> {
        self.segments
            .iter()
            .rev()
            .find(|s| s.forgotten > 0)
            .map(|s| s.first_index + (s.forgotten - 1))
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn active_segment(&self) -> &Segment {
        // Invariant: there is always an active segment.
        &self.segments[self.segments.len() - 1]
    }

    fn active_segment_mut(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    /// Writes zeros ahead of the active segment's records so that it holds
    /// at least `end` bytes ([`WalOptions::prefill_bytes`]). Records are
    /// written only below `file_len`, the zeros only at and above it, so
    /// the two never overlap, whatever is still buffered.
    fn prefill(&mut self, end: u64) -> Result<(), WalError> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let chunk = self.options.prefill_bytes;
        let from = self.active_segment().file_len;
        if chunk == 0 || end <= from {
            return Ok(());
        }
        let to = end.div_ceil(chunk).saturating_mul(chunk);
        let path = self.active_segment().path.clone();
        let file = self.active.get_ref();
        let mut at = from;
        while at < to {
            let n = (to - at).min(ZEROS.len() as u64);
            // Invariant: n <= ZEROS.len().
            file.write_all_at(&ZEROS[..n as usize], at)
                .map_err(io_err(&path))?;
            at += n;
        }
        self.active_segment_mut().file_len = to;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        self.sync_forced()?;
        // A closed segment keeps its records only (as before zeros were
        // written ahead: a build without them reads it too).
        let segment = self.active_segment();
        if segment.file_len > segment.len {
            let path = segment.path.clone();
            self.active
                .get_ref()
                .set_len(segment.len)
                .map_err(io_err(&path))?;
            self.active_segment_mut().file_len = self.active_segment().len;
        }
        let next = self.last_index() + 1;
        self.segments.push(create_segment(&self.dir, next)?);
        self.active = open_active(self.segments.last_mut())?;
        Ok(())
    }

    fn sync_forced(&mut self) -> Result<(), WalError> {
        self.dirty = true;
        self.sync()
    }
}

fn kind_byte(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::Noop => 0,
        EntryKind::Data => 1,
    }
}

fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}.wal"))
}

/// Creates an empty segment durably: header written and synced, then the
/// directory entry synced.
fn create_segment(dir: &Path, first_index: u64) -> Result<Segment, WalError> {
    let path = segment_path(dir, first_index);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(io_err(&path))?;
    file.write_all(MAGIC).map_err(io_err(&path))?;
    file.write_all(&[VERSION]).map_err(io_err(&path))?;
    file.sync_data().map_err(io_err(&path))?;
    sync_dir(dir)?;
    Ok(Segment {
        path,
        first_index,
        forgotten: 0,
        offsets: Vec::new(),
        len: HEADER_LEN,
        file_len: HEADER_LEN,
    })
}

fn open_active(segment: Option<&mut Segment>) -> Result<BufWriter<File>, WalError> {
    let segment = segment.ok_or_else(|| WalError::InvalidAppend("no active segment".into()))?;
    let mut file = OpenOptions::new()
        .write(true)
        .open(&segment.path)
        .map_err(io_err(&segment.path))?;
    file.seek(SeekFrom::Start(segment.len))
        .map_err(io_err(&segment.path))?;
    Ok(BufWriter::with_capacity(256 * 1024, file))
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// One record parsed from `bytes` at `offset`.
enum Parsed {
    Entry(Entry, usize),
    /// Cut short: the file ends inside it.
    Short,
    /// Length out of bounds or checksum mismatch.
    Bad(String),
}

fn parse(bytes: &[u8], offset: usize, max_payload: usize) -> Parsed {
    let rest = &bytes[offset..];
    if rest.len() < FRAME_LEN {
        return Parsed::Short;
    }
    let word = |at: usize| u32::from_le_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
    let body_len = word(0) as usize;
    let crc = word(4);
    if body_len < BODY_FIXED || body_len > BODY_FIXED + max_payload {
        return Parsed::Bad(format!("record length {body_len} out of bounds"));
    }
    if rest.len() < FRAME_LEN + body_len {
        return Parsed::Short;
    }
    let body = &rest[FRAME_LEN..FRAME_LEN + body_len];
    if crc32fast::hash(body) != crc {
        return Parsed::Bad("checksum mismatch".into());
    }
    let mut epoch = [0u8; 8];
    let mut index = [0u8; 8];
    epoch.copy_from_slice(&body[..8]);
    index.copy_from_slice(&body[8..16]);
    let kind = match body[16] {
        0 => EntryKind::Noop,
        1 => EntryKind::Data,
        other => return Parsed::Bad(format!("unknown entry kind {other}")),
    };
    Parsed::Entry(
        Entry {
            epoch: u64::from_le_bytes(epoch),
            index: u64::from_le_bytes(index),
            kind,
            payload: body[BODY_FIXED..].to_vec(),
        },
        FRAME_LEN + body_len,
    )
}

/// Where the next valid record with an index above `after` starts in
/// `bytes[from..]`, if anywhere. The index is checked before the checksum so
/// that scanning garbage stays cheap.
fn next_valid_record(bytes: &[u8], from: usize, after: u64, max_payload: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(FRAME_LEN + BODY_FIXED)).find(|&at| {
        let mut index = [0u8; 8];
        index.copy_from_slice(&bytes[at + FRAME_LEN + 8..at + FRAME_LEN + 16]);
        let index = u64::from_le_bytes(index);
        index > after
            && index - after < (1 << 32)
            && matches!(parse(bytes, at, max_payload), Parsed::Entry(..))
    })
}

/// Whether `bytes[from..to]` contains a whole 512-byte sector (aligned in
/// the file) of zeros: a page the crash kept from reaching the disk.
fn has_unwritten_sector(bytes: &[u8], from: usize, to: usize) -> bool {
    const SECTOR: usize = 512;
    let mut start = from.div_ceil(SECTOR) * SECTOR;
    while start + SECTOR <= to {
        if bytes[start..start + SECTOR].iter().all(|b| *b == 0) {
            return true;
        }
        start += SECTOR;
    }
    false
}

/// Reads one segment into `recovered`; truncates a torn tail of the last
/// segment and returns how many bytes it cut.
/// Reads one segment: entries after `keep.0` into `recovered`, the
/// epoch of the last entry read kept in `keep.1` (epochs never go down).
fn read_segment(
    path: &Path,
    first_index: u64,
    last: bool,
    options: &WalOptions,
    keep: (u64, &mut u64),
    recovered: &mut Recovered,
) -> Result<(Segment, u64), WalError> {
    let (after, last_epoch) = keep;
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let corrupt = |offset: u64, reason: String| WalError::Corrupt {
        path: path.to_owned(),
        offset,
        reason,
    };
    let header_ok = bytes.len() >= HEADER_LEN as usize && &bytes[..5] == MAGIC;
    if !header_ok {
        // A segment is created with its header synced before any record is
        // written to it, so a short header is a crash during creation of the
        // last segment (nothing in it was ever acknowledged).
        if last
            && bytes.len() < HEADER_LEN as usize
            && MAGIC.starts_with(&bytes[..bytes.len().min(5)])
        {
            let torn = bytes.len() as u64;
            rewrite_header(path)?;
            return Ok((
                Segment {
                    path: path.to_owned(),
                    first_index,
                    forgotten: 0,
                    offsets: Vec::new(),
                    len: HEADER_LEN,
                    file_len: HEADER_LEN,
                },
                torn,
            ));
        }
        return Err(corrupt(0, "not a clustron write-ahead log segment".into()));
    }
    if bytes[5] != VERSION {
        return Err(corrupt(
            5,
            format!("format version {} (this build reads {VERSION})", bytes[5]),
        ));
    }
    let mut offsets = Vec::new();
    let mut forgotten = 0u64;
    let mut at = HEADER_LEN as usize;
    while at < bytes.len() {
        if bytes[at..].iter().all(|b| *b == 0) {
            // The zeros written ahead (WalOptions::prefill_bytes): the end
            // of the records, in any segment (a closed one may keep some;
            // the next one's first index tells if records are missing).
            break;
        }
        match parse(&bytes, at, options.max_payload) {
            Parsed::Entry(entry, len) => {
                let read = forgotten + offsets.len() as u64;
                let Some(expected) = first_index.checked_add(read) else {
                    return Err(corrupt(at as u64, "entry index past the last u64".into()));
                };
                if entry.index != expected {
                    return Err(corrupt(
                        at as u64,
                        format!("entry index {} where {expected} was expected", entry.index),
                    ));
                }
                if entry.epoch < *last_epoch {
                    return Err(corrupt(
                        at as u64,
                        format!("epoch {} after epoch {}", entry.epoch, *last_epoch),
                    ));
                }
                *last_epoch = entry.epoch;
                if entry.index <= after {
                    forgotten += 1;
                } else {
                    offsets.push(at as u64);
                    recovered.entries.push(entry);
                }
                at += len;
            }
            Parsed::Short if last => break,
            Parsed::Short => {
                return Err(corrupt(at as u64, "record cut short".into()));
            }
            Parsed::Bad(reason) => {
                // Torn: the last segment's tail, with nothing valid after
                // the bad record, or with an unwritten (zero) sector before
                // the next valid one: a crash before the sync that would
                // have made all of it durable. Anything else was durable.
                let expected = first_index.saturating_add(forgotten + offsets.len() as u64);
                let torn = last
                    && match next_valid_record(&bytes, at + 1, expected, options.max_payload) {
                        None => true,
                        Some(next) => has_unwritten_sector(&bytes, at, next),
                    };
                if torn {
                    break;
                }
                return Err(corrupt(at as u64, reason));
            }
        }
    }
    // The torn bytes are those up to the last nonzero one (zeros written
    // ahead may follow them); the cut removes the zeros too.
    let data_end = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    let torn = data_end.saturating_sub(at) as u64;
    let mut file_len = bytes.len() as u64;
    if torn > 0 {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        file.set_len(at as u64).map_err(io_err(path))?;
        file.sync_data().map_err(io_err(path))?;
        file_len = at as u64;
    }
    Ok((
        Segment {
            path: path.to_owned(),
            first_index,
            forgotten,
            offsets,
            len: at as u64,
            file_len,
        },
        torn,
    ))
}

fn rewrite_header(path: &Path) -> Result<(), WalError> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(MAGIC).map_err(io_err(path))?;
    file.write_all(&[VERSION]).map_err(io_err(path))?;
    file.sync_data().map_err(io_err(path))
}

#[cfg(test)]
mod tests;
