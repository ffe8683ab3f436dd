//! The DKV node's sans-IO protocol logic: deterministic, no clock reads, no
//! I/O, no randomness; time comes in as arguments, and a run replays
//! exactly.
//!
//! - [`mvcc`]: the replicated state machine, a multi-version key-value store.
//! - [`watch`]: which watchers get which changes, from which revision.
//! - [`server`]: the log's replica (`clustron_log::core::Replica`) and all
//!   of the above as one node's key-value server.
//! - [`leases`]: the leader's lease clock: expiry becomes a proposed revoke.
//! - [`session`]: client sessions, so a retried write applies exactly once.
//!
//! The replicated log itself, with its diagram of how the replica sits
//! between the election and the driver, is `clustron_log::core`.

pub mod leases;
pub mod mvcc;
mod persistent;
pub mod server;
pub mod session;
pub mod watch;

/// `value`'s postcard bytes in a buffer of exactly their size: a size pass
/// first, then one allocation. Grown by doubling instead, a snapshot of a
/// 6 MB store peaked at 12 MB of buffer (issue 11, heaptrack of a node
/// after 300,000 puts).
pub(crate) fn encode_exact<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Invariant: plain data; postcard cannot fail on it.
    let size = postcard::serialize_with_flavor::<T, postcard::ser_flavors::Size, usize>(
        value,
        postcard::ser_flavors::Size::default(),
    )
    .unwrap_or_default();
    postcard::to_extend(value, Vec::with_capacity(size)).unwrap_or_default()
}

/// Encodes `value` straight into a snapshot file as postcard bytes (see
/// `SnapshotData::write_into`): no buffer of the whole encoding.
pub(crate) fn encode_into<T: serde::Serialize>(
    value: &T,
    out: &mut clustron_log::snapshot::StateWriter,
) {
    // Invariant: plain data, and this flavor never fails.
    let _ = postcard::serialize_with_flavor(value, IntoSnapshot(out));
}

/// A postcard flavor writing into a snapshot file.
struct IntoSnapshot<'a>(&'a mut clustron_log::snapshot::StateWriter);

impl postcard::ser_flavors::Flavor for IntoSnapshot<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}
