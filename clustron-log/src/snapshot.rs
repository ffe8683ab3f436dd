//! Snapshot files: the state machine at a log index, written atomically and
//! checked when read.
//!
//! A snapshot lets the log forget what it covers: the node restarts from
//! the newest valid snapshot plus the log after it, and a replica too far
//! behind pulls a snapshot instead of entries that are gone.
//!
//! # Format
//!
//! `snapshot-<index as 20 digits>.snap`, in the snapshot folder:
//!
//! ```text
//! magic "CLSNAP\0\0" | version u8 = 2 | index u64 | epoch u64 | length u64 | CRC-32 u32 | body (length bytes)
//! body = state length u64 | (block length u32 | LZ4 block)…
//! ```
//!
//! (integers little-endian; the CRC covers the header fields before it and
//! the body.) The state is compressed in independent LZ4 blocks of
//! [`BLOCK`] bytes each (the last one shorter): a state machine's history
//! repeats itself (successive values of one key), and a snapshot is what a
//! replica that fell behind must receive before it can count again, so
//! fewer bytes to move, write and sync is a shorter wait. Version 1 files
//! (the state stored as it is) are still read.
//!
//! # Rules
//!
//! - **Atomic**: written to a temporary file, fsynced, renamed into place,
//!   and the folder fsynced; a crash leaves the old snapshot or the new one,
//!   never a mix. Temporary files left by a crash are removed at open.
//! - **Checked**: a snapshot whose header or CRC does not match is never
//!   used silently. The newest valid one is used and the damaged one is
//!   named in the result (the caller logs it); if none is valid but some
//!   exist, opening fails with the file and what to do.
//! - **Kept**: the newest [`KEEP`] snapshots stay, so a damaged newest one
//!   leaves an older one to start from.

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::core::SnapshotMeta;

/// File magic.
const MAGIC: &[u8; 8] = b"CLSNAP\0\0";
/// Format version written: the state in LZ4 blocks.
const VERSION: u8 = 2;
/// The version before: the state stored as it is (still read).
const VERSION_PLAIN: u8 = 1;
/// State bytes per compressed block.
pub const BLOCK: usize = 1 << 20;
/// Header length: magic, version, index, epoch, length, CRC.
pub const HEADER_LEN: usize = 8 + 1 + 8 + 8 + 8 + 4;
/// How many snapshots are kept.
pub const KEEP: usize = 2;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The file system failed.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A snapshot file is damaged or not one of ours.
    #[error("snapshot {path} is damaged: {why}; restore this node's data from its peers (remove its data folder and let it rejoin)")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// A snapshot read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// What it covers.
    pub meta: SnapshotMeta,
    /// The state machine's bytes.
    pub state: Vec<u8>,
    /// Newer snapshot files that were damaged and skipped, with why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// The snapshot folder of one node.
#[derive(Debug, Clone)]
pub struct Snapshots {
    dir: PathBuf,
}

impl Snapshots {
    /// The folder `dir`, created if missing; leftover temporary files of an
    /// interrupted write are removed.
    pub fn open(dir: &Path) -> Result<Self, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        for entry in fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The snapshot folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Snapshot files, newest (highest index) first.
    fn files(&self) -> Result<Vec<(u64, PathBuf)>, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let index = name
                .strip_prefix("snapshot-")
                .and_then(|rest| rest.strip_suffix(".snap"))
                .and_then(|digits| digits.parse::<u64>().ok());
            if let Some(index) = index {
                files.push((index, path));
            }
        }
        files.sort_by_key(|f| std::cmp::Reverse(f.0));
        Ok(files)
    }

    /// Writes a snapshot of `state` covering `meta` durably, then removes
    /// all but the newest [`KEEP`].
    pub fn save(&self, meta: SnapshotMeta, state: &[u8]) -> Result<PathBuf, SnapshotError> {
        self.save_with(meta, |out| out.extend(state))
            .map(|saved| saved.path)
    }

    /// Writes a snapshot covering `meta` whose state `fill` writes into the
    /// [`StateWriter`] as it produces it, durably, then removes all but the
    /// newest [`KEEP`]. The state is compressed and written a [`BLOCK`] at
    /// a time: neither the whole state nor the whole file is ever held in
    /// memory, and the file is the one [`encode`] makes of the same state.
    pub fn save_with(
        &self,
        meta: SnapshotMeta,
        fill: impl FnOnce(&mut StateWriter),
    ) -> Result<Saved, SnapshotError> {
        let (path, tmp) = self.paths(meta);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SnapshotError::Io { path, source }
        };
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let mut out = StateWriter::new(file).map_err(io(&tmp))?;
        fill(&mut out);
        let (file, file_len, state_len) = out.finish(meta).map_err(io(&tmp))?;
        self.install(file, &tmp, &path)?;
        Ok(Saved {
            path,
            file_len,
            state_len,
        })
    }

    /// Writes a snapshot file already encoded (by [`encode`]; one received
    /// from a peer and checked with [`decode`]) covering `meta` durably,
    /// then removes all but the newest [`KEEP`].
    pub fn save_encoded(&self, meta: SnapshotMeta, file: &[u8]) -> Result<PathBuf, SnapshotError> {
        let (path, tmp) = self.paths(meta);
        let mut out = File::create(&tmp).map_err(|source| SnapshotError::Io {
            path: tmp.clone(),
            source,
        })?;
        out.write_all(file).map_err(|source| SnapshotError::Io {
            path: tmp.clone(),
            source,
        })?;
        self.install(out, &tmp, &path)?;
        Ok(path)
    }

    /// The file of a snapshot covering `meta`, and a temporary file of its
    /// own to write it in first: two saves of one index may overlap (a pull
    /// abandoned for another source still finishing its save).
    fn paths(&self, meta: SnapshotMeta) -> (PathBuf, PathBuf) {
        static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = self.dir.join(format!("snapshot-{:020}.snap", meta.index));
        let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("{}-{n}.tmp", std::process::id()));
        (path, tmp)
    }

    /// Makes the written temporary file `tmp` the snapshot `path`,
    /// atomically and durably, then removes all but the newest [`KEEP`].
    fn install(&self, written: File, tmp: &Path, path: &Path) -> Result<(), SnapshotError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SnapshotError::Io { path, source }
        };
        written.sync_all().map_err(io(tmp))?;
        drop(written);
        fs::rename(tmp, path).map_err(io(path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        for (_, old) in self.files()?.into_iter().skip(KEEP) {
            let _ = fs::remove_file(old);
        }
        Ok(())
    }

    /// The newest valid snapshot, if any. Damaged newer ones are skipped
    /// and reported in [`Loaded::skipped`]; if snapshots exist and none is
    /// valid, fails with the newest one's damage.
    pub fn load(&self) -> Result<Option<Loaded>, SnapshotError> {
        let mut skipped = Vec::new();
        let mut first_error = None;
        for (_, path) in self.files()? {
            match read_file(&path) {
                Ok((meta, state)) => {
                    return Ok(Some(Loaded {
                        meta,
                        state,
                        skipped,
                    }))
                }
                Err(SnapshotError::Damaged { path, why }) => {
                    skipped.push((path.clone(), why.clone()));
                    first_error.get_or_insert(SnapshotError::Damaged { path, why });
                }
                Err(other) => return Err(other),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// The path of the newest snapshot file and what it covers, without
    /// reading its state (for sending it to a peer).
    pub fn newest(&self) -> Result<Option<(SnapshotMeta, PathBuf)>, SnapshotError> {
        for (_, path) in self.files()? {
            let mut head = [0u8; HEADER_LEN];
            let read = File::open(&path).and_then(|mut f| f.read_exact(&mut head));
            if read.is_ok() {
                if let Ok((meta, ..)) = parse_header(&head) {
                    return Ok(Some((meta, path)));
                }
            }
        }
        Ok(None)
    }

    /// The length of the state in the newest snapshot, uncompressed (0
    /// when there is none or it cannot be read): what the snapshot
    /// schedule compares the log with. Reads its header only.
    pub fn newest_state_len(&self) -> u64 {
        let Ok(Some((_, path))) = self.newest() else {
            return 0;
        };
        let mut head = [0u8; HEADER_LEN + 8];
        let read = File::open(&path).and_then(|mut f| f.read_exact(&mut head));
        match (read, parse_header(&head)) {
            (Ok(()), Ok((_, _, _, VERSION))) => {
                u64::from_le_bytes(head[HEADER_LEN..].try_into().expect("8 bytes"))
            }
            (Ok(()), Ok((_, body_len, _, _))) => body_len,
            _ => 0,
        }
    }
}

/// A snapshot written by [`Snapshots::save_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Its file.
    pub path: PathBuf,
    /// The file's length.
    pub file_len: u64,
    /// The state's length, uncompressed.
    pub state_len: u64,
}

/// Where [`Snapshots::save_with`] takes a state as it is produced: bytes
/// go in with [`StateWriter::push`] and [`StateWriter::extend`] (or as an
/// [`io::Write`]), are compressed a [`BLOCK`] at a time and written to the
/// file at once. The header, whose length and CRC need the whole body, is
/// written last, over the room left for it.
///
/// Writing cannot fail from the producer's side: the first error of the
/// file is kept, later bytes are dropped, and the save fails with it.
pub struct StateWriter {
    file: File,
    /// State bytes not compressed yet (less than a block).
    block: Vec<u8>,
    /// One compressed block, after room for its length.
    packed: Vec<u8>,
    /// CRC of the blocks written (the body after the state's length).
    crc: crc32fast::Hasher,
    state_len: u64,
    blocks_len: u64,
    failed: Option<io::Error>,
}

impl StateWriter {
    fn new(mut file: File) -> io::Result<Self> {
        file.write_all(&[0; HEADER_LEN + 8])?;
        Ok(Self {
            file,
            block: Vec::with_capacity(BLOCK),
            packed: vec![0; 4 + lz4_flex::block::get_maximum_output_size(BLOCK)],
            crc: crc32fast::Hasher::new(),
            state_len: 0,
            blocks_len: 0,
            failed: None,
        })
    }

    /// Appends one byte of the state.
    #[inline]
    pub fn push(&mut self, byte: u8) {
        self.block.push(byte);
        if self.block.len() == BLOCK {
            self.seal();
        }
    }

    /// Appends bytes of the state.
    #[inline]
    pub fn extend(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = BLOCK - self.block.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.block.extend_from_slice(now);
            if self.block.len() == BLOCK {
                self.seal();
            }
            bytes = rest;
        }
    }

    /// Compresses the pending block and writes it.
    fn seal(&mut self) {
        if self.block.is_empty() {
            return;
        }
        let packed = match lz4_flex::block::compress_into(&self.block, &mut self.packed[4..]) {
            Ok(packed) => packed,
            // Invariant: `packed` has the maximum output size of a block.
            Err(e) => {
                self.failed.get_or_insert(io::Error::other(e.to_string()));
                0
            }
        };
        self.packed[..4].copy_from_slice(&(packed as u32).to_le_bytes());
        let framed = &self.packed[..4 + packed];
        self.crc.update(framed);
        if self.failed.is_none() {
            if let Err(e) = self.file.write_all(framed) {
                self.failed = Some(e);
            }
        }
        self.state_len += self.block.len() as u64;
        self.blocks_len += framed.len() as u64;
        self.block.clear();
    }

    /// Writes the last block and the header: the file, its length and the
    /// state's length.
    fn finish(mut self, meta: SnapshotMeta) -> io::Result<(File, u64, u64)> {
        self.seal();
        if let Some(e) = self.failed {
            return Err(e);
        }
        let body_len = 8 + self.blocks_len;
        let mut head = [0u8; HEADER_LEN + 8];
        head[..8].copy_from_slice(MAGIC);
        head[8] = VERSION;
        head[9..17].copy_from_slice(&meta.index.to_le_bytes());
        head[17..25].copy_from_slice(&meta.epoch.to_le_bytes());
        head[25..33].copy_from_slice(&body_len.to_le_bytes());
        head[HEADER_LEN..].copy_from_slice(&self.state_len.to_le_bytes());
        // CRC(header fields | state length | blocks), the blocks' part
        // already summed as they went.
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[..33]);
        crc.update(&head[HEADER_LEN..]);
        crc.combine(&self.crc);
        head[33..37].copy_from_slice(&crc.finalize().to_le_bytes());
        self.file.seek(io::SeekFrom::Start(0))?;
        self.file.write_all(&head)?;
        Ok((self.file, HEADER_LEN as u64 + body_len, self.state_len))
    }
}

impl Write for StateWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.extend(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The file bytes of a snapshot of `state` covering `meta`: header and
/// compressed body.
pub fn encode(meta: SnapshotMeta, state: &[u8]) -> Vec<u8> {
    // One buffer: the body is compressed in place after a header left
    // blank, then the header is written over it. A separate body copied
    // into the file doubled a snapshot's transient memory (issue 11: at
    // 10,000 keys, 6 MB of state made ~18 MB of buffers).
    let mut file = Vec::with_capacity(HEADER_LEN + 8 + state.len() / 2);
    file.resize(HEADER_LEN, 0);
    compress_into(state, &mut file);
    let head = header(meta, &file[HEADER_LEN..]);
    file[..HEADER_LEN].copy_from_slice(&head);
    file
}

/// Appends the body of a version 2 file to `out`: the state's length, then
/// its blocks.
fn compress_into(state: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(state.len() as u64).to_le_bytes());
    for block in state.chunks(BLOCK) {
        let packed = lz4_flex::block::compress(block);
        out.extend_from_slice(&(packed.len() as u32).to_le_bytes());
        out.extend_from_slice(&packed);
    }
}

/// The state in a version 2 body. Allocates no more than the blocks
/// present decompress to, whatever length the body claims.
fn decompress(body: &[u8]) -> Result<Vec<u8>, String> {
    let (len, mut rest) = body
        .split_first_chunk::<8>()
        .ok_or("a compressed body shorter than its length")?;
    let len = u64::from_le_bytes(*len);
    let mut state = Vec::new();
    while (state.len() as u64) < len {
        let (packed_len, after) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| format!("the state stops at {} of {len} bytes", state.len()))?;
        let packed_len = u32::from_le_bytes(*packed_len) as usize;
        if after.len() < packed_len {
            return Err(format!("a block of {packed_len} bytes past the end"));
        }
        let (packed, after) = after.split_at(packed_len);
        let want = (len - state.len() as u64).min(BLOCK as u64) as usize;
        let at = state.len();
        state.resize(at + want, 0);
        match lz4_flex::block::decompress_into(packed, &mut state[at..]) {
            Ok(n) if n == want => {}
            Ok(n) => return Err(format!("a block of {n} bytes where {want} were due")),
            Err(e) => return Err(format!("a damaged block: {e}")),
        }
        rest = after;
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the last block", rest.len()));
    }
    Ok(state)
}

/// The header of a file of format `version` whose body is `body`.
fn header_of(version: u8, meta: SnapshotMeta, body: &[u8]) -> [u8; HEADER_LEN] {
    let mut head = [0u8; HEADER_LEN];
    head[..8].copy_from_slice(MAGIC);
    head[8] = version;
    head[9..17].copy_from_slice(&meta.index.to_le_bytes());
    head[17..25].copy_from_slice(&meta.epoch.to_le_bytes());
    head[25..33].copy_from_slice(&(body.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[..33]);
    crc.update(body);
    head[33..37].copy_from_slice(&crc.finalize().to_le_bytes());
    head
}

/// The header of a file (of the version written) whose body is `body`:
/// the state's length and its blocks. Checks nothing; tests and fuzzers
/// frame hostile bodies with it.
pub fn header(meta: SnapshotMeta, body: &[u8]) -> [u8; HEADER_LEN] {
    header_of(VERSION, meta, body)
}

/// The header of a version 1 file holding `state` as it is (files of
/// earlier releases; tests make them with it).
pub fn plain_header(meta: SnapshotMeta, state: &[u8]) -> [u8; HEADER_LEN] {
    header_of(VERSION_PLAIN, meta, state)
}

/// Reads a header: (meta, body length, CRC, version). Checks magic and
/// version.
pub fn parse_header(head: &[u8]) -> Result<(SnapshotMeta, u64, u32, u8), String> {
    if head.len() < HEADER_LEN {
        return Err(format!("{} bytes, shorter than a header", head.len()));
    }
    if &head[..8] != MAGIC {
        return Err("not a snapshot file (bad magic)".into());
    }
    let version = head[8];
    if version != VERSION && version != VERSION_PLAIN {
        return Err(format!("unknown snapshot format version {version}"));
    }
    let u64_at = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&head[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&head[33..37]);
    Ok((
        SnapshotMeta {
            index: u64_at(9),
            epoch: u64_at(17),
        },
        u64_at(25),
        u32::from_le_bytes(crc),
        version,
    ))
}

/// Checks a whole snapshot file (header then body) in memory, as received
/// from a peer or read from disk, and returns what it covers and the
/// state machine's bytes.
pub fn decode(bytes: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), String> {
    let (meta, len, crc, version) = parse_header(bytes)?;
    let body = &bytes[HEADER_LEN..];
    if body.len() as u64 != len {
        return Err(format!(
            "a body of {} bytes where the header says {len}",
            body.len()
        ));
    }
    let mut check = crc32fast::Hasher::new();
    check.update(&bytes[..33]);
    check.update(body);
    if check.finalize() != crc {
        return Err("checksum mismatch".into());
    }
    let state = match version {
        VERSION_PLAIN => body.to_vec(),
        _ => decompress(body)?,
    };
    Ok((meta, state))
}

fn read_file(path: &Path) -> Result<(SnapshotMeta, Vec<u8>), SnapshotError> {
    let bytes = fs::read(path).map_err(|source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    })?;
    let damaged = |why: String| SnapshotError::Damaged {
        path: path.to_owned(),
        why,
    };
    let (meta, state) = decode(&bytes).map_err(damaged)?;
    let expected = format!("snapshot-{:020}.snap", meta.index);
    if path.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
        return Err(damaged(format!(
            "covers index {} but is named otherwise",
            meta.index
        )));
    }
    Ok((meta, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta { index, epoch: 3 }
    }

    #[test]
    fn a_saved_snapshot_loads_back_and_only_the_newest_two_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path()).unwrap();
        assert_eq!(snaps.load().unwrap(), None);
        for i in 1..=4u64 {
            snaps.save(meta(i * 10), &[i as u8; 100]).unwrap();
        }
        let loaded = snaps.load().unwrap().unwrap();
        assert_eq!(loaded.meta, meta(40));
        assert_eq!(loaded.state, vec![4u8; 100]);
        assert_eq!(snaps.files().unwrap().len(), KEEP);
        assert_eq!(snaps.newest().unwrap().unwrap().0, meta(40));
    }

    #[test]
    fn the_newest_state_length_is_read_from_the_header_uncompressed() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path()).unwrap();
        assert_eq!(snaps.newest_state_len(), 0);
        // 100,000 equal bytes compress to a few hundred; the state's length counts.
        snaps.save(meta(10), &[7u8; 100_000]).unwrap();
        assert!(
            std::fs::metadata(snaps.newest().unwrap().unwrap().1)
                .unwrap()
                .len()
                < 10_000
        );
        assert_eq!(snaps.newest_state_len(), 100_000);
        // A version 1 (uncompressed) file: its body is the state.
        let state = [1u8; 500];
        let mut file = plain_header(meta(20), &state).to_vec();
        file.extend_from_slice(&state);
        snaps.save_encoded(meta(20), &file).unwrap();
        assert_eq!(snaps.newest_state_len(), 500);
    }

    #[test]
    fn a_damaged_newest_snapshot_is_skipped_and_named_and_all_damaged_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path()).unwrap();
        snaps.save(meta(10), b"older state").unwrap();
        let newest = snaps.save(meta(20), b"newer state").unwrap();
        let mut bytes = fs::read(&newest).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&newest, &bytes).unwrap();
        let loaded = snaps.load().unwrap().unwrap();
        assert_eq!(loaded.meta, meta(10));
        assert_eq!(loaded.skipped.len(), 1);
        assert!(loaded.skipped[0].1.contains("checksum"));
        // Every snapshot damaged: refuse, naming the file, never start
        // from nothing.
        let older = dir.path().join(format!("snapshot-{:020}.snap", 10));
        fs::write(&older, b"CLSNAP\0\0garbage").unwrap();
        match snaps.load() {
            Err(SnapshotError::Damaged { path, .. }) => assert_eq!(path, newest),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_temporary_file_of_an_interrupted_write_is_removed_and_never_loaded() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("snapshot-00000000000000000050.tmp"),
            b"half",
        )
        .unwrap();
        let snaps = Snapshots::open(dir.path()).unwrap();
        assert_eq!(snaps.load().unwrap(), None);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn any_bytes_decode_to_a_snapshot_or_an_error_never_a_panic() {
        let good = encode(meta(7), b"abcabcabcabcabcabc");
        assert_eq!(decode(&good), Ok((meta(7), b"abcabcabcabcabcabc".to_vec())));
        let mut state = 0x9e37_79b9_u64;
        for len in 0..200usize {
            let mut bytes = good.clone();
            bytes.truncate(len.min(good.len()));
            for _ in 0..len % 7 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if !bytes.is_empty() {
                    let at = (state as usize) % bytes.len();
                    bytes[at] ^= (state >> 32) as u8 | 1;
                }
            }
            let _ = decode(&bytes);
        }
    }

    /// A history-like state: successive versions of a growing value.
    #[test]
    fn a_state_written_as_it_is_produced_is_the_file_encode_makes() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path()).unwrap();
        for (n, len) in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5]
            .into_iter()
            .enumerate()
        {
            let state = history(len);
            // In pieces of changing sizes, some a byte at a time, some
            // across a block's end.
            let saved = snaps
                .save_with(meta(10 + n as u64), |out| {
                    let (mut at, mut piece) = (0, 1);
                    while at < state.len() {
                        let end = (at + piece).min(state.len());
                        if piece % 3 == 0 {
                            state[at..end].iter().for_each(|&b| out.push(b));
                        } else {
                            out.extend(&state[at..end]);
                        }
                        at = end;
                        piece = piece * 7 % 700_001 + 1;
                    }
                })
                .unwrap();
            let file = fs::read(&saved.path).unwrap();
            assert_eq!(file, encode(meta(10 + n as u64), &state), "{len} bytes");
            assert_eq!(
                (saved.file_len, saved.state_len),
                (file.len() as u64, len as u64)
            );
            assert_eq!(snaps.load().unwrap().unwrap().state, state);
            assert_eq!(snaps.newest_state_len(), len as u64);
        }
    }

    #[test]
    fn a_file_that_fails_mid_state_fails_the_save_and_leaves_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read-only");
        fs::write(&path, b"").unwrap();
        let mut out = StateWriter {
            file: File::open(&path).unwrap(),
            block: Vec::new(),
            packed: vec![0; 4 + lz4_flex::block::get_maximum_output_size(BLOCK)],
            crc: crc32fast::Hasher::new(),
            state_len: 0,
            blocks_len: 0,
            failed: None,
        };
        out.extend(&history(BLOCK + 1));
        assert!(out.failed.is_some(), "a write to a read-only file failed");
        assert!(out.finish(meta(5)).is_err());
        let snaps = Snapshots::open(dir.path()).unwrap();
        assert_eq!(snaps.load().unwrap(), None);
    }

    fn history(len: usize) -> Vec<u8> {
        let mut state = Vec::with_capacity(len);
        let mut n = 0u64;
        while state.len() < len {
            n += 1;
            for i in 0..n % 500 {
                state.extend_from_slice(format!("{},", i * 7919 % 100_003).as_bytes());
            }
            state.push(b';');
        }
        state.truncate(len);
        state
    }

    #[test]
    fn states_of_every_block_boundary_round_trip_and_history_shrinks() {
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5] {
            let state = history(len);
            let file = encode(meta(9), &state);
            assert_eq!(file[8], VERSION);
            assert_eq!(decode(&file), Ok((meta(9), state)), "{len} bytes");
        }
        let state = history(4 * BLOCK);
        let file = encode(meta(9), &state);
        assert!(
            file.len() * 4 < state.len(),
            "{} bytes of history took {}",
            state.len(),
            file.len()
        );
    }

    #[test]
    fn a_version_1_file_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path()).unwrap();
        let file = [
            plain_header(meta(30), b"plain state").as_slice(),
            b"plain state",
        ]
        .concat();
        snaps.save_encoded(meta(30), &file).unwrap();
        let loaded = snaps.load().unwrap().unwrap();
        assert_eq!(
            (loaded.meta, loaded.state),
            (meta(30), b"plain state".to_vec())
        );
    }

    /// A file framed with a valid header and checksum around `body`.
    fn framed(body: &[u8]) -> Vec<u8> {
        [header(meta(5), body).as_slice(), body].concat()
    }

    #[test]
    fn a_body_claiming_more_than_its_blocks_hold_is_refused_without_allocating_it() {
        // Claims 1 TiB, holds one block of 3 bytes.
        let mut body = (1u64 << 40).to_le_bytes().to_vec();
        let packed = lz4_flex::block::compress(b"abc");
        body.extend_from_slice(&(packed.len() as u32).to_le_bytes());
        body.extend_from_slice(&packed);
        let why = decode(&framed(&body)).unwrap_err();
        assert!(why.contains("block"), "{why}");
        // A block that is not LZ4, bytes after the last block, a block
        // past the end: each refused with the reason.
        let mut garbage = 10u64.to_le_bytes().to_vec();
        garbage.extend_from_slice(&4u32.to_le_bytes());
        garbage.extend_from_slice(&[0xff; 4]);
        assert!(decode(&framed(&garbage)).unwrap_err().contains("block"));
        let mut trailing = Vec::new();
        compress_into(b"state", &mut trailing);
        trailing.push(0);
        assert!(decode(&framed(&trailing))
            .unwrap_err()
            .contains("after the last block"));
        let mut past = 5u64.to_le_bytes().to_vec();
        past.extend_from_slice(&100u32.to_le_bytes());
        assert!(decode(&framed(&past)).unwrap_err().contains("past the end"));
        assert!(decode(&framed(&[1, 2])).unwrap_err().contains("shorter"));
    }
}
