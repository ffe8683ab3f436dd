//! Write-ahead log tests: round trips across segments, truncation and
//! compaction surviving reopen, torn tails cut, corruption refused, garbage
//! never panicking, and a crash model checked by proptest.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;

use proptest::prelude::*;

use super::*;

fn entry(epoch: u64, index: u64, len: usize) -> Entry {
    Entry {
        epoch,
        index,
        kind: if len == 0 {
            EntryKind::Noop
        } else {
            EntryKind::Data
        },
        payload: (0..len).map(|i| (i as u64 * 31 + index) as u8).collect(),
    }
}

fn small() -> WalOptions {
    WalOptions {
        segment_bytes: 300,
        ..WalOptions::default()
    }
}

fn reopen(dir: &Path, options: WalOptions) -> (Wal, Recovered) {
    Wal::open(dir, options).unwrap()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

/// Writes `entries` to a new log in `dir`, syncs and closes it.
fn write_synced(dir: &Path, options: WalOptions, entries: &[Entry]) {
    let (mut wal, _) = reopen(dir, options);
    wal.append(entries).unwrap();
    wal.sync().unwrap();
}

/// Size of one record on disk.
fn record_len(e: &Entry) -> u64 {
    (FRAME_LEN + BODY_FIXED + e.payload.len()) as u64
}

#[test]
fn entries_survive_reopen_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path(), small());
    let entries: Vec<Entry> = (1..=40).map(|i| entry(1 + i / 10, i, 20)).collect();
    for batch in entries.chunks(7) {
        wal.append(batch).unwrap();
        wal.sync().unwrap();
    }
    assert!(wal.segment_count() > 3, "{} segments", wal.segment_count());
    assert_eq!(wal.last_index(), 40);
    drop(wal);
    let (wal, recovered) = reopen(dir.path(), small());
    assert_eq!(recovered.entries, entries);
    assert_eq!(recovered.torn_tail_bytes, 0);
    assert_eq!((wal.first_index(), wal.last_index()), (1, 40));
}

#[test]
fn appends_must_continue_the_log_and_respect_the_payload_limit() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        max_payload: 100,
        ..WalOptions::default()
    };
    let (mut wal, _) = reopen(dir.path(), options);
    wal.append(&[entry(1, 1, 1)]).unwrap();
    let gap = wal.append(&[entry(1, 3, 1)]).unwrap_err();
    assert!(gap.to_string().contains("expected 2"), "{gap}");
    let big = wal.append(&[entry(1, 2, 101)]).unwrap_err();
    assert!(big.to_string().contains("over the limit"), "{big}");
    assert_eq!(wal.last_index(), 1);
}

#[test]
fn truncation_within_and_across_segments_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path(), small());
    let mut model: Vec<Entry> = (1..=30).map(|i| entry(1, i, 20)).collect();
    wal.append(&model).unwrap();
    wal.sync().unwrap();
    let before = wal.segment_count();

    // Within the active segment.
    wal.truncate_from(29).unwrap();
    model.truncate(28);
    // Across segments: several files go.
    wal.truncate_from(9).unwrap();
    model.truncate(8);
    assert!(wal.segment_count() < before);
    assert_eq!(wal.last_index(), 8);
    // A new leader's entries replace the old suffix.
    let replacement: Vec<Entry> = (9..=12).map(|i| entry(2, i, 5)).collect();
    wal.append(&replacement).unwrap();
    wal.sync().unwrap();
    model.extend(replacement);
    // Truncating past the end is nothing.
    wal.truncate_from(100).unwrap();
    drop(wal);

    let (wal, recovered) = reopen(dir.path(), small());
    assert_eq!(recovered.entries, model);
    assert_eq!(wal.last_index(), 12);
}

#[test]
fn truncating_everything_keeps_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path(), small());
    wal.append(&[entry(1, 1, 1), entry(1, 2, 1)]).unwrap();
    wal.truncate_from(1).unwrap();
    assert_eq!(wal.last_index(), 0);
    wal.append(&[entry(2, 1, 3)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovered) = reopen(dir.path(), small());
    assert_eq!(recovered.entries, vec![entry(2, 1, 3)]);
}

#[test]
fn compaction_deletes_covered_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path(), small());
    let entries: Vec<Entry> = (1..=30).map(|i| entry(1, i, 20)).collect();
    wal.append(&entries).unwrap();
    wal.sync().unwrap();
    let files = segments(dir.path()).len();
    wal.compact_to(15).unwrap();
    let first = wal.first_index();
    assert!(first > 1 && first <= 16, "first index {first}");
    assert!(segments(dir.path()).len() < files);
    let cut = wal.truncate_from(first - 1).unwrap_err();
    assert!(cut.to_string().contains("compacted"), "{cut}");
    // Compacting everything keeps the active segment and the position.
    wal.compact_to(1000).unwrap();
    assert_eq!(wal.last_index(), 30);
    wal.append(&[entry(1, 31, 1)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (wal, recovered) = reopen(dir.path(), small());
    assert_eq!(recovered.entries.first().unwrap().index, wal.first_index());
    assert_eq!(recovered.entries.last().unwrap(), &entry(1, 31, 1));
}

/// Compaction inside the active segment drops the covered entries'
/// offsets (the segment is 64 MiB: they grew with every entry it ever
/// held), and only those: the uncovered tail still truncates exactly, and
/// the log continues and reopens whole.
#[test]
fn compaction_forgets_the_covered_offsets_of_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path(), WalOptions::default());
    let mut model: Vec<Entry> = (1..=1000).map(|i| entry(1, i, 20)).collect();
    wal.append(&model).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.active_segment().offsets.len(), 1000);
    wal.compact_to(900).unwrap();
    assert_eq!(wal.segment_count(), 1);
    assert_eq!(wal.active_segment().offsets.len(), 100);
    assert_eq!(wal.last_index(), 1000);
    let cut = wal.truncate_from(900).unwrap_err();
    assert!(cut.to_string().contains("compacted"), "{cut}");
    assert_eq!(
        wal.last_index(),
        1000,
        "a refused truncation changed the log"
    );
    wal.truncate_from(950).unwrap();
    model.truncate(949);
    let replacement: Vec<Entry> = (950..=960).map(|i| entry(2, i, 7)).collect();
    wal.append(&replacement).unwrap();
    wal.sync().unwrap();
    model.extend(replacement);
    wal.compact_to(955).unwrap();
    assert_eq!(wal.active_segment().offsets.len(), 5);
    wal.truncate_from(958).unwrap();
    model.truncate(957);
    wal.sync().unwrap();
    drop(wal);
    let (wal, recovered) = reopen(dir.path(), WalOptions::default());
    assert_eq!(recovered.entries, model);
    assert_eq!(wal.last_index(), 957);
}

/// A restart after a snapshot recovers only the entries after it: the
/// covered ones are read and checked but neither kept nor indexed, and the
/// log goes on from its true end.
#[test]
fn opening_after_a_snapshot_keeps_only_the_entries_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries: Vec<Entry> = (1..=600).map(|i| entry(1, i, 20)).collect();
    entries.extend((601..=1000).map(|i| entry(2, i, 20)));
    write_synced(dir.path(), WalOptions::default(), &entries);
    let (mut wal, recovered) = Wal::open_after(dir.path(), WalOptions::default(), 900).unwrap();
    assert_eq!(recovered.entries, entries[900..].to_vec());
    assert_eq!(wal.last_index(), 1000);
    assert_eq!(wal.active_segment().offsets.len(), 100);
    let cut = wal.truncate_from(900).unwrap_err();
    assert!(cut.to_string().contains("compacted"), "{cut}");
    wal.truncate_from(951).unwrap();
    wal.append(&[entry(3, 951, 4)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovered) = reopen(dir.path(), WalOptions::default());
    let mut model = entries[..950].to_vec();
    model.push(entry(3, 951, 4));
    assert_eq!(recovered.entries, model);
    // Everything covered: nothing kept, the position holds.
    let (wal, recovered) = Wal::open_after(dir.path(), WalOptions::default(), 5000).unwrap();
    assert!(recovered.entries.is_empty());
    assert_eq!(wal.last_index(), 951);
}

#[test]
fn zeros_are_written_ahead_of_the_records_and_read_back_as_their_end() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        prefill_bytes: 4096,
        ..WalOptions::default()
    };
    let first: Vec<Entry> = (1..=5).map(|i| entry(1, i, 100)).collect();
    write_synced(dir.path(), options.clone(), &first);
    let path = segments(dir.path()).pop().unwrap();
    let end = HEADER_LEN + first.iter().map(record_len).sum::<u64>();
    // The file is a whole number of fills, zeros after the records: an
    // fsync of later appends does not change its size.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes[end as usize..].iter().all(|b| *b == 0));

    let (mut wal, recovered) = reopen(dir.path(), options.clone());
    assert_eq!(recovered.entries, first);
    assert_eq!(recovered.torn_tail_bytes, 0);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        4096,
        "the zeros were cut"
    );
    // Appends go on where the records end, over the zeros and past them.
    let more: Vec<Entry> = (6..=60).map(|i| entry(2, i, 100)).collect();
    wal.append(&more).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(len % 4096, 0);
    assert!(len >= HEADER_LEN + 60 * record_len(&more[0]));
    let (_, recovered) = reopen(dir.path(), options);
    assert_eq!(recovered.entries, [first, more].concat());
}

#[test]
fn a_truncation_leaves_no_removed_record_behind_the_new_end() {
    // Records of one size: a removed record would start exactly where the
    // new ones end, a valid record with the next index, were it kept.
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path(), WalOptions::default());
    let old: Vec<Entry> = (1..=10).map(|i| entry(1, i, 30)).collect();
    wal.append(&old).unwrap();
    wal.sync().unwrap();
    wal.truncate_from(4).unwrap();
    let new: Vec<Entry> = (4..=6).map(|i| entry(2, i, 30)).collect();
    wal.append(&new).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (wal, recovered) = reopen(dir.path(), WalOptions::default());
    assert_eq!(recovered.entries, [&old[..3], &new[..]].concat());
    assert_eq!(wal.last_index(), 6);
}

#[test]
fn a_torn_tail_is_cut_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let synced: Vec<Entry> = (1..=5).map(|i| entry(1, i, 50)).collect();
    write_synced(dir.path(), WalOptions::default(), &synced);
    // The crash left the first 30 bytes of a sixth record.
    let path = segments(dir.path()).pop().unwrap();
    let mut partial = Vec::new();
    {
        let scratch = tempfile::tempdir().unwrap();
        let (mut w, _) = reopen(scratch.path(), WalOptions::default());
        w.append(&[entry(1, 1, 50)]).unwrap();
        w.sync().unwrap();
        let bytes = std::fs::read(segments(scratch.path()).pop().unwrap()).unwrap();
        partial.extend_from_slice(&bytes[HEADER_LEN as usize..HEADER_LEN as usize + 30]);
    }
    // Where the records end: zeros written ahead follow.
    let end = HEADER_LEN + synced.iter().map(record_len).sum::<u64>();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&partial, end).unwrap();
    drop(file);

    let (mut wal, recovered) = reopen(dir.path(), WalOptions::default());
    assert_eq!(recovered.entries, synced);
    assert_eq!(recovered.torn_tail_bytes, 30);
    wal.append(&[entry(1, 6, 1)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovered) = reopen(dir.path(), WalOptions::default());
    assert_eq!(recovered.entries.len(), 6);
    assert_eq!(recovered.torn_tail_bytes, 0);
}

#[test]
fn an_unwritten_sector_inside_an_unsynced_batch_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path(), WalOptions::default());
    let synced: Vec<Entry> = (1..=2).map(|i| entry(1, i, 10)).collect();
    wal.append(&synced).unwrap();
    wal.sync().unwrap();
    // An unsynced batch of big records; the crash kept one page in the
    // middle of it from the disk, while later pages made it.
    let batch: Vec<Entry> = (3..=8).map(|i| entry(1, i, 700)).collect();
    wal.append(&batch).unwrap();
    drop(wal);
    let path = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let hole = 1024;
    bytes[hole..hole + 512].fill(0);
    std::fs::write(&path, &bytes).unwrap();

    let (wal, recovered) = reopen(dir.path(), WalOptions::default());
    let kept = recovered.entries.len();
    assert!(kept >= 2, "lost synced entries");
    assert!(kept < 8, "kept a record that lost a sector");
    assert_eq!(recovered.entries[..], [synced, batch].concat()[..kept]);
    assert_eq!(wal.last_index(), kept as u64);
}

#[test]
fn corruption_in_the_middle_is_refused_and_nothing_is_changed() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> = (1..=10).map(|i| entry(1, i, 40)).collect();
    write_synced(dir.path(), WalOptions::default(), &entries);
    let path = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    // A bit flip in the payload of the fourth record.
    let fourth = HEADER_LEN + 3 * record_len(&entries[0]);
    bytes[fourth as usize + 30] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();

    let error = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
    match &error {
        WalError::Corrupt { offset, reason, .. } => {
            assert_eq!(*offset, fourth);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    assert!(error.to_string().contains("restore"), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file was changed");
}

#[test]
fn damage_in_a_closed_segment_is_corruption_even_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> = (1..=30).map(|i| entry(1, i, 20)).collect();
    write_synced(dir.path(), small(), &entries);
    let first = segments(dir.path()).remove(0);
    let mut bytes = std::fs::read(&first).unwrap();
    // The last byte of its last record (zeros written ahead follow it).
    let last = bytes.iter().rposition(|b| *b != 0).unwrap();
    bytes[last] ^= 0xff;
    std::fs::write(&first, &bytes).unwrap();
    let error = Wal::open(dir.path(), small()).unwrap_err();
    assert!(matches!(error, WalError::Corrupt { .. }), "{error}");
}

#[test]
fn a_missing_segment_or_a_foreign_file_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> = (1..=30).map(|i| entry(1, i, 20)).collect();
    write_synced(dir.path(), small(), &entries);
    let mut files = segments(dir.path());
    std::fs::remove_file(files.remove(1)).unwrap();
    let error = Wal::open(dir.path(), small()).unwrap_err();
    assert!(error.to_string().contains("expected"), "{error}");

    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join(format!("{:020}.wal", 1)), b"hello world").unwrap();
    let error = Wal::open(other.path(), small()).unwrap_err();
    assert!(error.to_string().contains("not a clustron"), "{error}");

    let future = tempfile::tempdir().unwrap();
    std::fs::write(future.path().join(format!("{:020}.wal", 1)), b"CLWAL\x09").unwrap();
    let error = Wal::open(future.path(), small()).unwrap_err();
    assert!(error.to_string().contains("format version 9"), "{error}");
}

#[test]
fn a_crash_while_creating_a_segment_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> = (1..=12).map(|i| entry(1, i, 20)).collect();
    write_synced(dir.path(), small(), &entries);
    // The next segment's file exists with half a header.
    std::fs::write(dir.path().join(format!("{:020}.wal", 13)), b"CLW").unwrap();
    let (mut wal, recovered) = reopen(dir.path(), small());
    assert_eq!(recovered.entries, entries);
    wal.append(&[entry(1, 13, 1)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    assert_eq!(reopen(dir.path(), small()).1.entries.len(), 13);
}

// ----- the high-water mark ---------------------------------------------------

use crate::core::Summary;

fn end_of(entries: &[Entry]) -> Summary {
    entries.last().map_or(Summary::default(), |e| Summary {
        last_epoch: e.epoch,
        last_index: e.index,
    })
}

/// A node's layout: the log in `dir/wal`, its mark in `dir/wal-mark`.
fn mark_path(dir: &Path) -> PathBuf {
    dir.join("wal-mark")
}

/// Writes `entries` in batches of 5 as a node does: append, sync, then
/// raise the mark.
fn write_marked(dir: &Path, options: WalOptions, entries: &[Entry]) {
    let (mut wal, recovered) = reopen(&dir.join("wal"), options);
    let mut mark = HighWaterMark::open(&mark_path(dir), end_of(&recovered.entries)).unwrap();
    for batch in entries.chunks(5) {
        wal.append(batch).unwrap();
        wal.sync().unwrap();
        mark.advance(end_of(batch)).unwrap();
    }
}

/// Reopens a node's log and mark: (entries, whether the log lost any).
fn reopen_marked(dir: &Path, options: WalOptions) -> (Recovered, bool) {
    let (_, recovered) = reopen(&dir.join("wal"), options);
    let end = end_of(&recovered.entries);
    let mark = HighWaterMark::open(&mark_path(dir), end).unwrap();
    let lost = mark.lost(end);
    (recovered, lost)
}

#[test]
fn a_log_that_reopens_whole_is_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> = (1..=30).map(|i| entry(1 + i / 10, i, 20)).collect();
    write_marked(dir.path(), small(), &entries);
    let (recovered, lost) = reopen_marked(dir.path(), small());
    assert_eq!(recovered.entries, entries);
    assert!(!lost);
}

#[test]
fn a_deleted_last_segment_is_noticed_against_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> = (1..=30).map(|i| entry(1, i, 20)).collect();
    write_marked(dir.path(), small(), &entries);
    let mut files = segments(&dir.path().join("wal"));
    assert!(files.len() > 2);
    std::fs::remove_file(files.pop().unwrap()).unwrap();
    // The segments alone look whole: no error, no torn tail.
    let (recovered, lost) = reopen_marked(dir.path(), small());
    assert!(recovered.entries.len() < 30);
    assert_eq!(recovered.torn_tail_bytes, 0);
    assert!(lost, "a log missing its last segment was taken as whole");

    // The whole log gone (every segment, or the folder): noticed too.
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    let (recovered, lost) = reopen_marked(dir.path(), small());
    assert!(recovered.entries.is_empty());
    assert!(lost);
}

#[test]
fn a_damaged_last_record_cut_as_a_torn_tail_is_noticed_against_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> = (1..=10).map(|i| entry(1, i, 40)).collect();
    write_marked(dir.path(), WalOptions::default(), &entries);
    let path = segments(&dir.path().join("wal")).pop().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let last = (HEADER_LEN + entries.iter().map(record_len).sum::<u64>()) as usize - 5;
    bytes[last] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    // The log cannot tell it from a torn write...
    let (recovered, lost) = reopen_marked(dir.path(), WalOptions::default());
    assert_eq!(recovered.entries, entries[..9]);
    assert!(recovered.torn_tail_bytes > 0);
    // ...the mark can: that record had been synced.
    assert!(lost, "a synced record cut as a torn tail went unnoticed");
}

#[test]
fn a_torn_tail_that_was_never_synced_is_not_a_loss() {
    let dir = tempfile::tempdir().unwrap();
    let synced: Vec<Entry> = (1..=5).map(|i| entry(1, i, 50)).collect();
    write_marked(dir.path(), WalOptions::default(), &synced);
    // More appended, not synced, so the mark never heard of them; the
    // crash kept half of it.
    let (mut wal, _) = reopen(&dir.path().join("wal"), WalOptions::default());
    wal.append(&[entry(1, 6, 50), entry(1, 7, 50)]).unwrap();
    drop(wal);
    let path = segments(&dir.path().join("wal")).pop().unwrap();
    let len = HEADER_LEN + 7 * record_len(&entry(1, 7, 50));
    let cut = len - record_len(&entry(1, 7, 50)) / 2;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let (recovered, lost) = reopen_marked(dir.path(), WalOptions::default());
    assert_eq!(recovered.entries.len(), 6);
    assert!(!lost);
}

#[test]
fn the_mark_only_rises_through_advance_and_comes_down_only_through_lower() {
    let dir = tempfile::tempdir().unwrap();
    let path = mark_path(dir.path());
    let at = |last_epoch, last_index| Summary {
        last_epoch,
        last_index,
    };
    let mut mark = HighWaterMark::open(&path, at(1, 3)).unwrap();
    assert_eq!(mark.mark(), at(1, 3));
    mark.advance(at(1, 9)).unwrap();
    mark.advance(at(1, 4)).unwrap();
    assert_eq!(mark.mark(), at(1, 9));
    // A newer epoch is ahead whatever its index.
    mark.advance(at(2, 7)).unwrap();
    assert_eq!(mark.mark(), at(2, 7));
    assert!(mark.lost(at(1, 100)));
    assert!(!mark.lost(at(3, 1)));
    mark.sync().unwrap();
    drop(mark);
    assert_eq!(
        HighWaterMark::open(&path, at(0, 0)).unwrap().mark(),
        at(2, 7)
    );
    // A truncation lowers it, durably.
    let mut mark = HighWaterMark::open(&path, at(0, 0)).unwrap();
    mark.lower(at(2, 5)).unwrap();
    drop(mark);
    assert_eq!(
        HighWaterMark::open(&path, at(0, 0)).unwrap().mark(),
        at(2, 5)
    );
}

#[test]
fn a_torn_mark_write_leaves_the_previous_mark_and_a_ruined_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = mark_path(dir.path());
    let at = |last_index| Summary {
        last_epoch: 1,
        last_index,
    };
    let mut mark = HighWaterMark::open(&path, at(0)).unwrap();
    for index in 1..=5 {
        mark.advance(at(index)).unwrap();
    }
    drop(mark);
    // The last write (sequence 5: odd, the second slot) was torn.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[512 + 10] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(HighWaterMark::open(&path, at(0)).unwrap().mark(), at(4));
    // Both slots damaged: refused, naming the file.
    bytes[10] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let error = HighWaterMark::open(&path, at(0)).unwrap_err();
    assert!(matches!(error, WalError::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("wal-mark"), "{error}");
    // A missing mark is created at the log's end.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(HighWaterMark::open(&path, at(7)).unwrap().mark(), at(7));
    assert!(!path.with_extension("tmp").exists());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any bytes as a mark file: a mark or an error, never a panic.
    #[test]
    fn any_mark_file_opens_or_fails_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        let dir = tempfile::tempdir().unwrap();
        let path = mark_path(dir.path());
        std::fs::write(&path, &bytes).unwrap();
        let _ = HighWaterMark::open(&path, Summary::default());
    }

    /// A crash cuts the file anywhere after the last sync, or leaves
    /// zeros (pages that never reached the disk) from there to where the
    /// records ended: every synced entry comes back, and exactly the whole
    /// records before the cut.
    #[test]
    fn a_crash_anywhere_after_the_last_sync_keeps_every_synced_entry(
        batches in proptest::collection::vec(
            (proptest::collection::vec(0usize..300, 1..6), any::<bool>()), 1..8),
        cut in any::<prop::sample::Index>(),
        zeroed in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), WalOptions::default());
        let mut all = Vec::new();
        let mut synced_len = HEADER_LEN;
        let mut len = HEADER_LEN;
        for (sizes, sync) in &batches {
            let start = all.len() as u64 + 1;
            let batch: Vec<Entry> = sizes
                .iter()
                .enumerate()
                .map(|(k, n)| entry(1, start + k as u64, *n))
                .collect();
            wal.append(&batch).unwrap();
            len += batch.iter().map(record_len).sum::<u64>();
            all.extend(batch);
            if *sync {
                wal.sync().unwrap();
                synced_len = len;
            }
        }
        drop(wal);
        let path = segments(dir.path()).pop().unwrap();
        let at = synced_len + cut.index((len - synced_len + 1) as usize) as u64;
        let before = std::fs::read(&path).unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        if zeroed {
            file.write_all_at(&vec![0; (len - at) as usize], at).unwrap();
        } else {
            file.set_len(at).unwrap();
        }
        drop(file);
        let after = std::fs::read(&path).unwrap();

        let (_, recovered) = reopen(dir.path(), WalOptions::default());
        // Whole: every byte of the record still as written (zeros over
        // bytes that were zeros, the end of a no-op, change nothing).
        let mut end = HEADER_LEN as usize;
        let whole = all
            .iter()
            .take_while(|e| {
                let start = end;
                end += record_len(e) as usize;
                after.get(start..end) == Some(&before[start..end])
            })
            .count();
        prop_assert_eq!(&recovered.entries[..], &all[..whole]);
    }

    /// Appends, truncations, compactions and restarts after the snapshot
    /// point, in any order, against a model: the log always ends where the
    /// model does, a truncation at or below the compacted point is refused
    /// and changes nothing, and a restart recovers exactly the model's
    /// entries after that point.
    #[test]
    fn compaction_truncation_and_restarts_agree_with_a_model(
        ops in proptest::collection::vec((0u8..4, any::<prop::sample::Index>(), 1usize..6), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), small());
        let mut model: Vec<Entry> = Vec::new();
        let (mut epoch, mut compacted) = (1u64, 0u64);
        for (op, at, n) in ops {
            let last = model.len() as u64;
            match op {
                0 => {
                    let batch: Vec<Entry> =
                        (last + 1..=last + n as u64).map(|i| entry(epoch, i, 10)).collect();
                    wal.append(&batch).unwrap();
                    model.extend(batch);
                }
                1 if last > 0 => {
                    let k = 1 + at.index(last as usize) as u64;
                    if k <= compacted {
                        prop_assert!(wal.truncate_from(k).is_err());
                    } else {
                        wal.truncate_from(k).unwrap();
                        model.truncate(k as usize - 1);
                        epoch += 1;
                    }
                }
                2 if last > 0 => {
                    let k = 1 + at.index(last as usize) as u64;
                    wal.sync().unwrap();
                    wal.compact_to(k).unwrap();
                    compacted = compacted.max(k);
                }
                _ => {
                    wal.sync().unwrap();
                    drop(wal);
                    let (reopened, recovered) =
                        Wal::open_after(dir.path(), small(), compacted).unwrap();
                    wal = reopened;
                    prop_assert_eq!(&recovered.entries[..], &model[compacted as usize..]);
                }
            }
            prop_assert_eq!(wal.last_index(), model.len() as u64);
        }
    }

    /// Garbage after the synced records is a torn tail: cut, nothing lost.
    #[test]
    fn garbage_after_the_last_record_is_cut(garbage in proptest::collection::vec(1u8..=255, 1..2000)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = reopen(dir.path(), WalOptions::default());
        let entries: Vec<Entry> = (1..=3).map(|i| entry(1, i, 10)).collect();
        wal.append(&entries).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let path = segments(dir.path()).pop().unwrap();
        let end = HEADER_LEN + entries.iter().map(record_len).sum::<u64>();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&garbage, end).unwrap();
        drop(file);
        let (_, recovered) = reopen(dir.path(), WalOptions::default());
        prop_assert_eq!(recovered.entries, entries);
    }

    /// Any bytes at all as a segment: an error or a log, never a panic.
    #[test]
    fn any_file_opens_or_fails_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..600), header in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let mut content = Vec::new();
        if header {
            content.extend_from_slice(MAGIC);
            content.push(VERSION);
        }
        content.extend_from_slice(&bytes);
        std::fs::write(dir.path().join(format!("{:020}.wal", 1)), &content).unwrap();
        let _ = Wal::open(dir.path(), WalOptions::default());
    }
}

#[test]
fn a_reset_log_continues_after_the_snapshot_index_and_reopens_there() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path(), small());
    let entries: Vec<Entry> = (1..=30).map(|i| entry(1, i, 20)).collect();
    wal.append(&entries).unwrap();
    wal.sync().unwrap();
    wal.reset_after(100).unwrap();
    assert_eq!(wal.first_index(), 101);
    assert_eq!(wal.last_index(), 100);
    assert_eq!(segments(dir.path()).len(), 1);
    wal.append(&[entry(2, 101, 5), entry(2, 102, 5)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (wal, recovered) = reopen(dir.path(), small());
    assert_eq!(recovered.entries, vec![entry(2, 101, 5), entry(2, 102, 5)]);
    assert_eq!(wal.first_index(), 101);
}

/// One record as `Wal::append` writes it.
fn record(epoch: u64, index: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&epoch.to_le_bytes());
    body.extend_from_slice(&index.to_le_bytes());
    body.push(1);
    body.extend_from_slice(payload);
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn segment_bytes(records: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    bytes.push(VERSION);
    for r in records {
        bytes.extend_from_slice(r);
    }
    bytes
}

/// Found by `fuzz_decoders`: a segment named for index 0 opened, and the
/// log's last index then underflowed (a panic in debug builds, `u64::MAX`
/// in release).
#[test]
fn a_segment_named_for_index_zero_is_refused_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(segment_path(dir.path(), 0), segment_bytes(&[])).unwrap();
    let err = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { reason, .. } if reason.contains("index 0")),
        "{err}"
    );
}

/// Found by `fuzz_decoders`: indices at the end of the `u64` range
/// overflowed while opening and appending.
#[test]
fn a_log_at_the_last_u64_index_opens_and_refuses_more_entries() {
    let dir = tempfile::tempdir().unwrap();
    let last = u64::MAX;
    std::fs::write(
        segment_path(dir.path(), last),
        segment_bytes(&[record(1, last, b"x")]),
    )
    .unwrap();
    let (mut wal, recovered) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(recovered.entries.len(), 1);
    assert_eq!((wal.first_index(), wal.last_index()), (last, last));
    let next = Entry {
        epoch: 1,
        index: 0,
        kind: EntryKind::Data,
        payload: Vec::new(),
    };
    assert!(matches!(
        wal.append(&[next]),
        Err(WalError::InvalidAppend(_))
    ));
    // A snapshot covering it forgets its offset without overflowing, and
    // it can no longer be truncated.
    wal.compact_to(last).unwrap();
    assert_eq!(wal.last_index(), last);
    assert!(wal.truncate_from(last).is_err());
    drop(wal);
    let (wal, recovered) = Wal::open_after(dir.path(), WalOptions::default(), last).unwrap();
    assert!(recovered.entries.is_empty());
    assert_eq!(wal.last_index(), last);
    drop(wal);

    // A second entry after it, or a segment after it, is corrupt.
    std::fs::write(
        segment_path(dir.path(), last),
        segment_bytes(&[record(1, last, b"x"), record(1, 0, b"y")]),
    )
    .unwrap();
    std::fs::write(segment_path(dir.path(), 1), segment_bytes(&[])).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), WalOptions::default()),
        Err(WalError::Corrupt { .. })
    ));
}

/// Found by `fuzz/` (libFuzzer): an empty segment followed by one named
/// further on opened as a log whose first index claimed entries it did not
/// have. Only the last segment may be empty; the next segment must start
/// where the previous one ended.
#[test]
fn an_empty_segment_followed_by_a_later_one_is_a_gap_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(segment_path(dir.path(), 1), segment_bytes(&[])).unwrap();
    std::fs::write(
        segment_path(dir.path(), 5),
        segment_bytes(&[record(1, 5, b"x")]),
    )
    .unwrap();
    let err = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { reason, .. } if reason.contains("expected 1")),
        "{err}"
    );
}
