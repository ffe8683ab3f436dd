//! Snapshot transfer between nodes, on a stream of the `LOG` channel: a
//! replica told to pull a snapshot ([`Output::PullSnapshot`]) asks the
//! source for its newest one and receives the file in chunks; QUIC's
//! stream flow control paces the sender to the receiver.
//!
//! ```text
//! puller                              source
//!   Pull { index } ──────────────────►  newest snapshot file ≥ index?
//!                  ◄──────────────────  Size(n), Chunk(≤ 1 MiB)…, Done
//!                  ◄──────────────────  or Refused(why)
//! ```
//!
//! The file travels as it is on disk, compressed (see [`crate::snapshot`]).
//! The puller checks the whole file (magic, version, length, CRC-32, the
//! blocks) before it saves it durably and hands it over: a damaged or
//! truncated transfer is refused and asked for again later.
//!
//! [`Output::PullSnapshot`]: crate::core::Output::PullSnapshot

use std::net::SocketAddr;

use clustron_transport::{Channel, FramedStream};
use serde::{Deserialize, Serialize};

use crate::core::SnapshotMeta;
use crate::io::Replication;
use crate::snapshot::{self, Snapshots};

/// Bytes per chunk: well below the transport's 4 MiB frame limit.
const CHUNK: usize = 1 << 20;

/// Largest snapshot file a puller accepts (a bound on what a peer can make
/// it allocate).
const MAX_SNAPSHOT: u64 = 16 << 30;

/// A frame of a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Puller → source: send your newest snapshot, covering at least
    /// `index`.
    Pull {
        /// The least index it must cover.
        index: u64,
    },
    /// Source → puller: the file's length in bytes.
    Size(u64),
    /// Source → puller: the next bytes of the file.
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Source → puller: that was all.
    Done,
    /// Source → puller: it cannot serve it.
    Refused(String),
}

/// Serves one pull on `stream` from the snapshots in `snapshots`.
pub async fn serve(snapshots: Snapshots, mut stream: FramedStream) {
    let index = match stream.recv::<Frame>().await {
        Ok(Some(Frame::Pull { index })) => index,
        _ => return,
    };
    let newest = snapshots.newest();
    let (meta, path) = match newest {
        Ok(Some((meta, path))) if meta.index >= index => (meta, path),
        Ok(_) => {
            let why = format!("no snapshot covering index {index} here");
            let _ = stream.send(&Frame::Refused(why)).await;
            stream.finish();
            return;
        }
        Err(e) => {
            let _ = stream.send(&Frame::Refused(e.to_string())).await;
            stream.finish();
            return;
        }
    };
    // Read on a blocking thread: a snapshot can be large.
    let read = tokio::task::spawn_blocking(move || std::fs::read(&path)).await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        _ => {
            let why = format!("cannot read the snapshot at {}", meta.index);
            let _ = stream.send(&Frame::Refused(why)).await;
            stream.finish();
            return;
        }
    };
    if stream.send(&Frame::Size(bytes.len() as u64)).await.is_err() {
        return;
    }
    for chunk in bytes.chunks(CHUNK) {
        if stream.send(&Frame::Chunk(chunk.to_vec())).await.is_err() {
            return;
        }
    }
    let _ = stream.send(&Frame::Done).await;
    stream.finish();
}

/// Pulls the newest snapshot covering at least `index` from `from`,
/// checks it and saves it durably in `snapshots`. Returns what it covers,
/// the state's bytes and the file's size.
pub async fn pull(
    channel: &Channel<Replication>,
    snapshots: &Snapshots,
    from: SocketAddr,
    index: u64,
) -> Result<(SnapshotMeta, Vec<u8>, u64), String> {
    let mut stream = channel
        .open_stream(from)
        .await
        .map_err(|e| format!("cannot reach {from}: {e}"))?;
    stream
        .send(&Frame::Pull { index })
        .await
        .map_err(|e| e.to_string())?;
    let size = match stream.recv::<Frame>().await {
        Ok(Some(Frame::Size(size))) if size <= MAX_SNAPSHOT => size,
        Ok(Some(Frame::Size(size))) => return Err(format!("a snapshot of {size} bytes")),
        Ok(Some(Frame::Refused(why))) => return Err(why),
        other => return Err(format!("unexpected answer {other:?}")),
    };
    let mut bytes = Vec::new();
    loop {
        match stream.recv::<Frame>().await {
            Ok(Some(Frame::Chunk(chunk))) => {
                if bytes.len() as u64 + chunk.len() as u64 > size {
                    return Err("more bytes than announced".into());
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(Some(Frame::Done)) => break,
            other => return Err(format!("transfer broken: {other:?}")),
        }
    }
    if bytes.len() as u64 != size {
        return Err(format!("{} bytes of {size}", bytes.len()));
    }
    let snapshots = snapshots.clone();
    tokio::task::spawn_blocking(move || {
        let (meta, state) = snapshot::decode(&bytes)?;
        if meta.index < index {
            return Err(format!(
                "the snapshot covers {} but {index} was needed",
                meta.index
            ));
        }
        // Saved as received: checked, and compressed already.
        snapshots
            .save_encoded(meta, &bytes)
            .map_err(|e| e.to_string())?;
        Ok((meta, state, size))
    })
    .await
    .map_err(|e| e.to_string())?
}
