//! The log's durable high-water mark: the position of the newest entry this
//! node has ever made durable, and so may have acknowledged, kept in a small
//! file of its own beside the segments.
//!
//! The segments alone cannot tell "the tail was never written" from "the
//! tail was lost": a deleted last segment leaves a log that looks complete,
//! and a damaged last record looks like a torn write. The mark can: a log
//! that opens ending below it lost entries this node acknowledged, and the
//! node must not vote or lead with less than it promised (the caller
//! withdraws it from the election until it has caught up from the others).
//!
//! # Cost and guarantee
//!
//! After every log sync the mark is overwritten in place with `pwrite`,
//! without `fsync`: one small write into the page cache per group commit.
//! The file is fsynced at most once a second ([`HighWaterMark::sync`], the
//! caller's timer) and at once when the mark goes down (a truncation, rare).
//! So:
//!
//! - after a process crash (`kill -9`) or a clean stop, the page cache keeps
//!   the last write: the mark covers everything ever acknowledged;
//! - after an OS crash or power loss, it covers everything acknowledged up
//!   to about a second before. The segments' own fsyncs still hold (a power
//!   loss does not lose synced data on a disk that honours fsync); what the
//!   mark catches is damage and deletion, and a loss that coincides with a
//!   power cut in that last second may go unnoticed.
//!
//! The mark is never ahead of the durable log: it is written only after the
//! sync that made its position durable. A mark below the log (e.g. after a
//! crash between a sync and the mark's write) only means less protection.
//!
//! # Layout
//!
//! Two 32-byte slots, at offsets 0 and 512 (different sectors), each
//! `u64 LE sequence | u64 LE epoch | u64 LE index | u32 LE CRC-32 of those
//! 24 bytes | "MARK"`. Writes alternate between the slots by sequence, so a
//! torn write damages one slot and the other still holds the previous mark;
//! the valid slot with the highest sequence wins.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{io_err, sync_dir, WalError};
use crate::core::Summary;

const SLOT_LEN: usize = 32;
const SLOT_STRIDE: u64 = 512;
const SLOT_MAGIC: &[u8; 4] = b"MARK";
const FILE_LEN: usize = SLOT_STRIDE as usize + SLOT_LEN;

/// The high-water mark file of one log. Not thread-safe: one owner.
#[derive(Debug)]
pub struct HighWaterMark {
    path: PathBuf,
    file: File,
    sequence: u64,
    mark: Summary,
    unsynced: bool,
}

impl HighWaterMark {
    /// Opens the mark at `path`. A missing file is created (durably) at
    /// `log_end`, the position of the log as it opened: a node that never
    /// had a mark, or whose mark was deleted, is trusted this once.
    ///
    /// Fails with [`WalError::Corrupt`] when neither slot is valid (it is
    /// replaced atomically on creation and written a slot at a time after,
    /// so that is damage): the operator decides, as for the log.
    pub fn open(path: &Path, log_end: Summary) -> Result<HighWaterMark, WalError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let (sequence, mark) = [0, SLOT_STRIDE as usize]
                    .iter()
                    .filter_map(|&at| decode(bytes.get(at..at + SLOT_LEN)?))
                    .max_by_key(|(sequence, _)| *sequence)
                    .ok_or_else(|| WalError::Corrupt {
                        path: path.to_owned(),
                        offset: 0,
                        reason: "no valid high-water mark; if this node's log is known to be \
                                 complete, delete the file"
                            .into(),
                    })?;
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                Ok(HighWaterMark {
                    path: path.to_owned(),
                    file,
                    sequence,
                    mark,
                    unsynced: false,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path, log_end),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    /// The newest position recorded as durable.
    pub fn mark(&self) -> Summary {
        self.mark
    }

    /// Whether a log ending at `log_end` has lost entries this node had
    /// made durable: it ends below the mark, ordered by epoch then index (a
    /// log ending in a newer epoch holds every entry committed before that
    /// epoch's leader, so it is not behind).
    pub fn lost(&self, log_end: Summary) -> bool {
        log_end < self.mark
    }

    /// The log is durable up to `position` (call after each sync): raises
    /// the mark if `position` is above it, with one write and no fsync.
    pub fn advance(&mut self, position: Summary) -> Result<(), WalError> {
        if position <= self.mark {
            return Ok(());
        }
        self.write(position)?;
        self.unsynced = true;
        Ok(())
    }

    /// The log was cut back to `position` (a leader replaced a suffix that
    /// was never committed): lowers the mark durably. Call before cutting,
    /// so a crash in between leaves a log at or above the mark.
    pub fn lower(&mut self, position: Summary) -> Result<(), WalError> {
        if position >= self.mark {
            return Ok(());
        }
        self.write(position)?;
        self.unsynced = true;
        self.sync()
    }

    /// Makes the last write durable (fsync), if any is pending.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.unsynced {
            self.file.sync_data().map_err(io_err(&self.path))?;
            self.unsynced = false;
        }
        Ok(())
    }

    fn write(&mut self, position: Summary) -> Result<(), WalError> {
        let sequence = self.sequence + 1;
        let offset = (sequence % 2) * SLOT_STRIDE;
        self.file
            .write_all_at(&encode(sequence, position), offset)
            .map_err(io_err(&self.path))?;
        self.sequence = sequence;
        self.mark = position;
        Ok(())
    }

    /// Writes both slots to a temporary file, syncs it and renames it into
    /// place, then syncs the folder: the file exists whole or not at all.
    fn create(path: &Path, log_end: Summary) -> Result<HighWaterMark, WalError> {
        let tmp = path.with_extension("tmp");
        let mut bytes = vec![0u8; FILE_LEN];
        bytes[..SLOT_LEN].copy_from_slice(&encode(0, log_end));
        bytes[SLOT_STRIDE as usize..].copy_from_slice(&encode(0, log_end));
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        Ok(HighWaterMark {
            path: path.to_owned(),
            file,
            sequence: 0,
            mark: log_end,
            unsynced: false,
        })
    }
}

fn encode(sequence: u64, position: Summary) -> [u8; SLOT_LEN] {
    let mut slot = [0u8; SLOT_LEN];
    slot[..8].copy_from_slice(&sequence.to_le_bytes());
    slot[8..16].copy_from_slice(&position.last_epoch.to_le_bytes());
    slot[16..24].copy_from_slice(&position.last_index.to_le_bytes());
    let crc = crc32fast::hash(&slot[..24]);
    slot[24..28].copy_from_slice(&crc.to_le_bytes());
    slot[28..].copy_from_slice(SLOT_MAGIC);
    slot
}

fn decode(slot: &[u8]) -> Option<(u64, Summary)> {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(slot.get(at..at + 8)?.try_into().ok()?))
    };
    let crc = u32::from_le_bytes(slot.get(24..28)?.try_into().ok()?);
    if slot.get(28..32)? != SLOT_MAGIC || crc32fast::hash(slot.get(..24)?) != crc {
        return None;
    }
    Some((
        word(0)?,
        Summary {
            last_epoch: word(8)?,
            last_index: word(16)?,
        },
    ))
}
