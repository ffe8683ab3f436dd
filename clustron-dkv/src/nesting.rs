//! Bounded nesting for the recursive wire types (a write inside a session:
//! `KvRequest::InSession`, `Command::InSession`).
//!
//! serde's derived decoders recurse once per level, so without a bound a
//! request of a few dozen kilobytes that nests thousands of session
//! wrappers (4 bytes each) overflows the decoding thread's stack and aborts
//! the whole node, before any check of who sent it. Only one level is ever
//! valid (the server refuses nested sessions), so decoding stops at
//! [`MAX_NESTING`] with an ordinary error.

use std::cell::Cell;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// Deepest nesting of boxed values one decode accepts.
pub const MAX_NESTING: u32 = 16;

thread_local! {
    /// Boxed values being decoded on this thread, outermost first.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Leaves one level when dropped, also when decoding fails or unwinds.
struct Level;

impl Drop for Level {
    fn drop(&mut self) {
        DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

/// `deserialize_with` for a `Box<T>` field that may hold the type it is
/// in: refuses more than [`MAX_NESTING`] levels. The encoding is the plain
/// `Box<T>` one.
pub(crate) fn boxed<'de, D, T>(deserializer: D) -> Result<Box<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let depth = DEPTH.with(|depth| {
        depth.set(depth.get() + 1);
        depth.get()
    });
    let _level = Level;
    if depth > MAX_NESTING {
        return Err(D::Error::custom(format!(
            "values nested more than {MAX_NESTING} deep"
        )));
    }
    T::deserialize(deserializer).map(Box::new)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use clustron_transport::frame::decode_body;

    use crate::kv::{KvRequest, PutRequest, SessionId};
    use crate::proto::Request;

    use super::MAX_NESTING;

    /// `levels` session wrappers around a put.
    fn nested(levels: u32) -> KvRequest {
        let mut request = KvRequest::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: None,
            prev_kv: false,
        });
        for _ in 0..levels {
            request = KvRequest::InSession {
                session: SessionId(1),
                seq: 1,
                acked: 1,
                request: Box::new(request),
            };
        }
        request
    }

    /// Decodes on a thread with a tokio worker's 2 MiB stack.
    fn decode_on_small_stack<T: serde::de::DeserializeOwned + Send + 'static>(
        bytes: Vec<u8>,
    ) -> Result<(), String> {
        std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                decode_body::<T>(&bytes)
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn nesting_up_to_the_limit_round_trips() {
        let request = Request::Kv(nested(MAX_NESTING));
        let bytes = postcard::to_allocvec(&request).unwrap();
        assert_eq!(decode_body::<Request>(&bytes).unwrap(), request);
    }

    #[test]
    fn one_level_past_the_limit_is_refused() {
        let bytes = postcard::to_allocvec(&Request::Kv(nested(MAX_NESTING + 1))).unwrap();
        assert!(decode_body::<Request>(&bytes).is_err());
    }

    /// Found by `fuzz_decoders`: a 68 KB request from any client (decoded
    /// before its role is checked) overflowed the stack and aborted the node.
    #[test]
    fn a_request_nesting_sessions_ten_thousands_deep_is_refused_not_a_stack_overflow() {
        // Request::Kv, then `levels` × (InSession, session 0, seq 0,
        // acked 12), then a put: the shape of the fuzzer's input.
        let bytes = |levels: u32| {
            let mut bytes = vec![2];
            for _ in 0..levels {
                bytes.extend_from_slice(&[10, 0, 0, 12]);
            }
            bytes.extend_from_slice(&postcard::to_allocvec(&nested(0)).unwrap());
            bytes
        };
        assert_eq!(decode_on_small_stack::<Request>(bytes(MAX_NESTING)), Ok(()));
        assert!(decode_on_small_stack::<Request>(bytes(20_000)).is_err());
    }

    /// Found by `fuzz_decoders`: a log entry of nested session commands
    /// overflowed every replica's stack when applied.
    #[test]
    fn a_command_nesting_sessions_ten_thousands_deep_is_refused_not_a_stack_overflow() {
        use crate::core::mvcc::Command;
        // 9 is `InSession`, and also a valid session, seq and acked.
        assert!(decode_on_small_stack::<Command>(vec![9; 44_244]).is_err());
    }
}
