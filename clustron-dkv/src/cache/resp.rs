//! The Redis protocol (RESP2) front end of a cache namespace: `redis-cli`,
//! `redis-benchmark` and Redis client libraries talk to Clustron's cache.
//!
//! ```text
//!  TCP ─► TLS (client cert from the cluster CA ─► role)
//!          │
//!          ▼
//!   codec::Decoder ─► command::Command::parse ─► execute (role check) ─► CacheBackend
//!          ▲                                                                │ CacheOp per key
//!   codec::Reply  ◄───────────────── replies in request order ◄─────────────┘
//! ```
//!
//! The front end knows nothing of partitions, stores or nodes: it talks to
//! a [`CacheBackend`], which the node implements by routing each
//! [`CacheOp`](crate::cache::CacheOp) to its key's owner.
//! [`MemoryBackend`] is a single-process one for tests and examples.
//!
//! # Supported
//!
//! - RESP2 requests as arrays of bulk strings and as inline commands
//!   (`telnet`, `redis-cli` in some modes), pipelined.
//! - `PING`, `ECHO`, `GET`, `SET` (`EX`, `PX`, `EXAT`, `PXAT`, `NX`, `XX`,
//!   `GET`, `KEEPTTL`), `SETEX`, `PSETEX`, `SETNX`, `GETSET`, `DEL`,
//!   `EXISTS`, `EXPIRE`, `PEXPIRE`, `TTL`, `PTTL`, `PERSIST`, `INCR`,
//!   `INCRBY`, `DECR`, `DECRBY`, `MGET`, `MSET`, `APPEND`, `STRLEN`,
//!   `DBSIZE`, `FLUSHDB`, `INFO`, `COMMAND` (`COUNT`, `LIST`, `INFO`,
//!   `DOCS` answered empty), `CLIENT SETNAME`/`GETNAME`/`ID`/`SETINFO`,
//!   `SELECT 0`, `HELLO 2`, `AUTH` (refused: the certificate
//!   authenticates), `QUIT`, `CONFIG GET` (`save`, `appendonly`,
//!   `databases` only).
//! - Replies, error texts and integer codes as Redis 7.0 gives them.
//! - Authorisation by the client certificate's role: a `readonly`
//!   certificate gets `-NOPERM` for every command that writes, and the
//!   write never reaches the backend.
//! - Cache errors: a key whose partition is moving or has no owner yet
//!   gets `-TRYAGAIN ...` (retry), a refused write `-NOPERM ...`.
//!
//! # Not supported
//!
//! - RESP3 (`HELLO 3` answers `-NOPROTO`), other data types (hashes,
//!   lists, sets...), `MULTI`/`EXEC`, `WATCH`, scripts, pub/sub, `KEYS`
//!   and `SCAN`, `EXPIRE`'s `NX`/`XX`/`GT`/`LT` options, databases other
//!   than 0, `AUTH` passwords and ACL users, `CONFIG SET`, `OBJECT`,
//!   cluster mode (`CLUSTER SLOTS`): any node serves any key.
//! - Multi-key commands are not atomic: `MSET a 1 b 2` is one write per
//!   key, run concurrently (the keys live on different nodes); a failure
//!   of one key fails the command, and the keys written before it stay
//!   written. `DEL` and `EXISTS` of several keys likewise.
//! - A pipeline's commands on distinct single keys run at the same time
//!   (see [`serve_connection`]); those on one key, and every other
//!   command, in the order sent. Replies always come back in order.
//!
//! # Example
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use clustron_dkv::cache::resp::{execute, MemoryBackend, Reply, Session};
//! use clustron_transport::{ClientRole, PeerKind};
//!
//! let cache = MemoryBackend::new();
//! let mut session = Session::new(1, PeerKind::Client(ClientRole::ReadWrite));
//! let args = |words: &[&str]| words.iter().map(|w| w.as_bytes().to_vec()).collect();
//! let reply = execute(&cache, &mut session, args(&["SET", "greeting", "hello", "EX", "60"]), 0).await;
//! assert_eq!(reply, Reply::ok());
//! let reply = execute(&cache, &mut session, args(&["GET", "greeting"]), 0).await;
//! assert_eq!(reply, Reply::bulk("hello"));
//!
//! let mut reader = Session::new(2, PeerKind::Client(ClientRole::ReadOnly));
//! let reply = execute(&cache, &mut reader, args(&["DEL", "greeting"]), 0).await;
//! assert_eq!(
//!     reply,
//!     Reply::Error("NOPERM this certificate's role (readonly) may not run the 'del' command".into())
//! );
//! # });
//! ```

mod backend;
pub mod codec;
pub mod command;
mod connection;
mod execute;
mod listener;

pub use backend::{CacheBackend, MemoryBackend};
pub use codec::{Decoder, Limits, ProtocolError, Reply};
pub use connection::{serve_connection, Ended};
pub use execute::{cache_error_reply, execute, Session, REDIS_VERSION};
pub use listener::{serve, RespConfig, RespError, RespListener, Security};

#[cfg(test)]
mod tests;
