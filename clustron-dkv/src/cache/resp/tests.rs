//! Every command against [`MemoryBackend`], the role checks, the error
//! mapping, and the connection loop over an in-memory stream.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use clustron_transport::{ClientRole, PeerKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{watch, Barrier};

use super::codec::{encode_command, split_inline};
use super::*;
use crate::cache::{CacheError, CacheOp, CacheReply};

/// A fixed wall clock for `EXAT`/`PXAT` (2023-11-14).
const NOW_UNIX_MS: u64 = 1_700_000_000_000;

struct Harness<B = MemoryBackend> {
    backend: B,
    session: Session,
}

impl Harness {
    fn new() -> Self {
        Harness::with(MemoryBackend::with_manual_clock(), ClientRole::ReadWrite)
    }
}

impl<B: CacheBackend> Harness<B> {
    fn with(backend: B, role: ClientRole) -> Self {
        Harness {
            backend,
            session: Session::new(7, PeerKind::Client(role)),
        }
    }

    /// Runs one inline command line (quotes allowed).
    async fn run(&mut self, line: &str) -> Reply {
        let args = split_inline(line.as_bytes()).expect("a valid test line");
        execute(&self.backend, &mut self.session, args, NOW_UNIX_MS).await
    }
}

fn ok() -> Reply {
    Reply::ok()
}

fn int(n: i64) -> Reply {
    Reply::Integer(n)
}

fn bulk(s: &str) -> Reply {
    Reply::bulk(s)
}

fn err(s: &str) -> Reply {
    Reply::Error(s.to_owned())
}

/// Runs `(line, expected reply)` steps in order.
async fn script<B: CacheBackend>(h: &mut Harness<B>, steps: &[(&str, Reply)]) {
    for (line, expected) in steps {
        assert_eq!(&h.run(line).await, expected, "{line}");
    }
}

#[tokio::test]
async fn string_commands_answer_as_redis() {
    let mut h = Harness::new();
    script(
        &mut h,
        &[
            ("GET k", Reply::NullBulk),
            ("SET k v", ok()),
            ("GET k", bulk("v")),
            ("SET k \"with space\"", ok()),
            ("GET k", bulk("with space")),
            ("GETSET k new", bulk("with space")),
            ("GETSET fresh x", Reply::NullBulk),
            ("SETNX k other", int(0)),
            ("SETNX n1 one", int(1)),
            ("GET n1", bulk("one")),
            ("APPEND k er", int(5)),
            ("GET k", bulk("newer")),
            ("APPEND missing abc", int(3)),
            ("STRLEN k", int(5)),
            ("STRLEN nothing", int(0)),
            ("EXISTS k n1 k nothing", int(3)),
            ("DEL k nothing k", int(1)),
            ("EXISTS k", int(0)),
            ("DEL n1 missing fresh", int(3)),
            ("ECHO hello", bulk("hello")),
            ("PING", Reply::Simple("PONG".into())),
            ("PING there", bulk("there")),
        ],
    )
    .await;
}

#[tokio::test]
async fn set_conditions_and_get_answer_as_redis() {
    let mut h = Harness::new();
    script(
        &mut h,
        &[
            ("SET k v XX", Reply::NullBulk),
            ("SET k v XX GET", Reply::NullBulk),
            ("GET k", Reply::NullBulk),
            ("SET k v NX", ok()),
            ("SET k w NX", Reply::NullBulk),
            ("SET k w NX GET", bulk("v")),
            ("GET k", bulk("v")),
            ("SET k w XX GET", bulk("v")),
            ("SET k x GET", bulk("w")),
            ("SET k y XX", ok()),
            ("GET k", bulk("y")),
            ("SET k v NX XX", err("ERR syntax error")),
            (
                "SET k v EX 0",
                err("ERR invalid expire time in 'set' command"),
            ),
            (
                "SET k v PX -5",
                err("ERR invalid expire time in 'set' command"),
            ),
            (
                "SET k v PX 9223372036854775000",
                err("ERR invalid expire time in 'set' command"),
            ),
            (
                "SETEX k 0 v",
                err("ERR invalid expire time in 'setex' command"),
            ),
            (
                "PSETEX k x v",
                err("ERR value is not an integer or out of range"),
            ),
            ("GET k", bulk("y")),
        ],
    )
    .await;
}

#[tokio::test]
async fn expiry_commands_count_time_and_answer_redis_codes() {
    let mut h = Harness::new();
    script(
        &mut h,
        &[
            ("TTL nothing", int(-2)),
            ("PTTL nothing", int(-2)),
            ("SET k v", ok()),
            ("TTL k", int(-1)),
            ("EXPIRE k 100", int(1)),
            ("TTL k", int(100)),
            ("PERSIST k", int(1)),
            ("PERSIST k", int(0)),
            ("TTL k", int(-1)),
            ("EXPIRE nothing 10", int(0)),
            ("PEXPIRE k 1500", int(1)),
            ("TTL k", int(2)),
            ("SET k v2 KEEPTTL", ok()),
            ("TTL k", int(2)),
            ("SET k v3", ok()),
            ("TTL k", int(-1)),
            ("SETEX s 10 v", ok()),
            ("TTL s", int(10)),
            ("PSETEX p 2500 v", ok()),
            ("TTL p", int(3)),
            ("SET e v EX 5", ok()),
            ("TTL e", int(5)),
            ("SET x v EXAT 1700000060", ok()),
            ("TTL x", int(60)),
            ("SET y v PXAT 1700000000500", ok()),
            ("TTL y", int(1)),
            ("EXPIRE k 0", int(1)),
            ("EXISTS k", int(0)),
            ("SET k v", ok()),
            ("PEXPIRE k -1", int(1)),
            ("GET k", Reply::NullBulk),
            ("EXPIRE k 10 NX", err("ERR Unsupported option NX")),
            (
                "EXPIRE k 9223372036854775",
                err("ERR invalid expire time in 'expire' command"),
            ),
        ],
    )
    .await;
    h.backend.advance(Duration::from_millis(1234));
    script(&mut h, &[("PTTL s", int(8766)), ("TTL s", int(9))]).await;
    h.backend.advance(Duration::from_millis(4766));
    script(
        &mut h,
        &[
            ("GET e", Reply::NullBulk),
            ("TTL e", int(-2)),
            ("GET p", Reply::NullBulk),
            ("GET s", bulk("v")),
            ("EXISTS x s p e", int(2)),
        ],
    )
    .await;
    h.backend.advance(Duration::from_secs(60));
    script(&mut h, &[("DBSIZE", int(0))]).await;
}

#[tokio::test]
async fn counters_answer_as_redis_and_refuse_non_integers_and_overflow() {
    let mut h = Harness::new();
    script(
        &mut h,
        &[
            ("INCR c", int(1)),
            ("INCRBY c 41", int(42)),
            ("DECR c", int(41)),
            ("DECRBY c 50", int(-9)),
            ("GET c", bulk("-9")),
            (
                "INCRBY c x",
                err("ERR value is not an integer or out of range"),
            ),
            ("SET s abc", ok()),
            ("INCR s", err("ERR value is not an integer or out of range")),
            ("SET s \" 1\"", ok()),
            ("INCR s", err("ERR value is not an integer or out of range")),
            ("SET m 9223372036854775807", ok()),
            ("INCR m", err("ERR increment or decrement would overflow")),
            (
                "DECRBY m -9223372036854775808",
                err("ERR decrement would overflow"),
            ),
            ("GET m", bulk("9223372036854775807")),
        ],
    )
    .await;
}

#[tokio::test]
async fn multi_key_commands_answer_in_key_order() {
    let mut h = Harness::new();
    script(
        &mut h,
        &[
            ("MSET a 1 b 2 a 3", ok()),
            (
                "MGET a b nothing a",
                Reply::Array(vec![bulk("3"), bulk("2"), Reply::NullBulk, bulk("3")]),
            ),
            (
                "MSET a 1 b",
                err("ERR wrong number of arguments for 'mset' command"),
            ),
            ("DBSIZE", int(2)),
            ("FLUSHDB", ok()),
            ("DBSIZE", int(0)),
            ("FLUSHDB ASYNC", ok()),
        ],
    )
    .await;
}

#[tokio::test]
async fn connection_commands_answer_what_redis_cli_and_benchmarks_expect() {
    let mut h = Harness::new();
    script(
        &mut h,
        &[
            ("SELECT 0", ok()),
            ("SELECT 1", err("ERR DB index is out of range")),
            ("CLIENT GETNAME", Reply::NullBulk),
            ("CLIENT SETNAME app", ok()),
            ("CLIENT GETNAME", bulk("app")),
            ("CLIENT ID", int(7)),
            ("CLIENT SETINFO lib-name redis-py", ok()),
            (
                "CLIENT KILL x",
                err("ERR unknown subcommand 'KILL'. Try CLIENT HELP."),
            ),
            ("COMMAND COUNT", int(command::SPECS.len() as i64)),
            ("COMMAND DOCS", Reply::Array(vec![])),
            (
                "COMMAND INFO get nope",
                Reply::Array(vec![
                    Reply::Array(vec![
                        bulk("get"),
                        int(2),
                        Reply::Array(vec![Reply::Simple("readonly".into())]),
                        int(1),
                        int(1),
                        int(1),
                    ]),
                    Reply::NullBulk,
                ]),
            ),
            (
                "CONFIG GET save",
                Reply::Array(vec![bulk("save"), bulk("")]),
            ),
            (
                "CONFIG GET appendonly",
                Reply::Array(vec![bulk("appendonly"), bulk("no")]),
            ),
            ("CONFIG GET maxmemory", Reply::Array(vec![])),
            ("HELLO 3", err("NOPROTO unsupported protocol version")),
            (
                "FOO a b",
                err("ERR unknown command 'FOO', with args beginning with: 'a' 'b' "),
            ),
            (
                "GET",
                err("ERR wrong number of arguments for 'get' command"),
            ),
        ],
    )
    .await;
    let Reply::Array(hello) = h.run("HELLO 2 SETNAME bench").await else {
        panic!("HELLO answers an array");
    };
    assert_eq!(
        hello[..6],
        [
            bulk("server"),
            bulk("redis"),
            bulk("version"),
            bulk(REDIS_VERSION),
            bulk("proto"),
            int(2)
        ]
    );
    assert_eq!(h.run("CLIENT GETNAME").await, bulk("bench"));
    let Reply::Bulk(info) = h.run("INFO").await else {
        panic!("INFO answers a bulk string");
    };
    let info = String::from_utf8_lossy(&info);
    assert!(
        info.starts_with("# Server\r\nredis_version:7.0.0\r\n"),
        "{info}"
    );
    assert!(info.contains("# Keyspace\r\ndb0:keys=0"), "{info}");
    let Reply::Error(auth) = h.run("AUTH secret").await else {
        panic!("AUTH is refused");
    };
    assert!(auth.starts_with("ERR AUTH <password> called without any password"));
    assert!(!h.session.quit);
    assert_eq!(h.run("QUIT").await, ok());
    assert!(h.session.quit);
}

/// Records every operation that reaches it, then runs it on a
/// [`MemoryBackend`].
struct Recording {
    inner: MemoryBackend,
    ops: Mutex<Vec<CacheOp>>,
    flushes: AtomicUsize,
}

impl CacheBackend for Recording {
    async fn execute(&self, op: CacheOp) -> Result<CacheReply, CacheError> {
        self.ops.lock().expect("not poisoned").push(op.clone());
        self.inner.execute(op).await
    }

    async fn size(&self) -> Result<u64, CacheError> {
        self.inner.size().await
    }

    async fn flush(&self) -> Result<(), CacheError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.inner.flush().await
    }

    fn info(&self) -> String {
        self.inner.info()
    }
}

#[tokio::test]
async fn a_readonly_role_is_refused_every_write_and_no_write_reaches_the_backend() {
    let backend = Recording {
        inner: MemoryBackend::with_manual_clock(),
        ops: Mutex::default(),
        flushes: AtomicUsize::new(0),
    };
    backend
        .inner
        .apply(CacheOp::Put {
            key: b"k".to_vec(),
            value: b"1".to_vec(),
            ttl_ms: None,
            condition: crate::cache::PutCondition::Always,
            keep_ttl: false,
            return_old: false,
        })
        .expect("seeded");
    let mut h = Harness::with(backend, ClientRole::ReadOnly);
    let writes = [
        ("SET k v", "set"),
        ("SET k v GET", "set"),
        ("SETEX k 10 v", "setex"),
        ("PSETEX k 10 v", "psetex"),
        ("SETNX k v", "setnx"),
        ("GETSET k v", "getset"),
        ("DEL k", "del"),
        ("EXPIRE k 10", "expire"),
        ("PEXPIRE k 10", "pexpire"),
        ("PERSIST k", "persist"),
        ("INCR k", "incr"),
        ("INCRBY k 2", "incrby"),
        ("DECR k", "decr"),
        ("DECRBY k 2", "decrby"),
        ("MSET k v", "mset"),
        ("APPEND k v", "append"),
        ("FLUSHDB", "flushdb"),
    ];
    for (line, name) in writes {
        assert_eq!(
            h.run(line).await,
            err(&format!(
                "NOPERM this certificate's role (readonly) may not run the '{name}' command"
            )),
            "{line}"
        );
    }
    script(
        &mut h,
        &[
            ("GET k", bulk("1")),
            ("MGET k k", Reply::Array(vec![bulk("1"), bulk("1")])),
            ("EXISTS k", int(1)),
            ("TTL k", int(-1)),
            ("STRLEN k", int(1)),
            ("DBSIZE", int(1)),
        ],
    )
    .await;
    let ops = h.backend.ops.lock().expect("not poisoned").clone();
    assert!(ops.iter().all(|op| !op.is_write()), "{ops:?}");
    assert_eq!(ops.len(), 6);
    assert_eq!(h.backend.flushes.load(Ordering::SeqCst), 0);
    // An admin certificate and a node may write.
    for kind in [PeerKind::Client(ClientRole::Admin), PeerKind::Node] {
        h.session = Session::new(1, kind);
        assert_eq!(h.run("SET k 2").await, ok());
    }
}

/// Answers every operation with one error.
struct Failing(CacheError);

impl CacheBackend for Failing {
    async fn execute(&self, _: CacheOp) -> Result<CacheReply, CacheError> {
        Err(self.0.clone())
    }

    async fn size(&self) -> Result<u64, CacheError> {
        Err(self.0.clone())
    }

    async fn flush(&self) -> Result<(), CacheError> {
        Err(self.0.clone())
    }

    fn info(&self) -> String {
        String::new()
    }
}

#[tokio::test]
async fn cache_errors_become_redis_errors_that_say_whether_to_retry() {
    let cases = [
        (
            CacheError::WrongOwner {
                partition: 3,
                owner: Some("n2".into()),
                table_version: 9,
            },
            "TRYAGAIN partition 3 is owned by n2 at table version 9",
        ),
        (
            CacheError::Unavailable(4),
            "TRYAGAIN partition 4 has no live owner yet; retry",
        ),
        (
            CacheError::ReadOnly,
            "NOPERM the caller's role may not change the cache",
        ),
        (
            CacheError::NotInteger,
            "ERR value is not an integer or out of range",
        ),
        (
            CacheError::TooLarge {
                what: "value".into(),
                len: 10,
                limit: 5,
            },
            "ERR value of 10 bytes exceeds the limit of 5",
        ),
    ];
    for (error, text) in cases {
        let mut h = Harness::with(Failing(error), ClientRole::ReadWrite);
        for line in ["GET k", "SET k v", "MGET a b", "DBSIZE", "FLUSHDB"] {
            assert_eq!(h.run(line).await, err(text), "{line}");
        }
    }
}

/// Holds every operation until `expected` of them are in flight together.
struct AllAtOnce {
    inner: MemoryBackend,
    barrier: Barrier,
}

impl CacheBackend for AllAtOnce {
    async fn execute(&self, op: CacheOp) -> Result<CacheReply, CacheError> {
        self.barrier.wait().await;
        self.inner.execute(op).await
    }

    async fn size(&self) -> Result<u64, CacheError> {
        self.inner.size().await
    }

    async fn flush(&self) -> Result<(), CacheError> {
        self.inner.flush().await
    }

    fn info(&self) -> String {
        String::new()
    }
}

#[tokio::test]
async fn the_keys_of_one_multi_key_command_are_in_flight_together() {
    let backend = AllAtOnce {
        inner: MemoryBackend::with_manual_clock(),
        barrier: Barrier::new(3),
    };
    let mut h = Harness::with(backend, ClientRole::ReadWrite);
    // Run one after another, these would wait at the barrier forever.
    let deadline = Duration::from_secs(10);
    let steps = [
        ("MSET a 1 b 2 c 3", ok()),
        (
            "MGET c b a",
            Reply::Array(vec![bulk("3"), bulk("2"), bulk("1")]),
        ),
        ("EXISTS a b c", int(3)),
        ("DEL a b c", int(3)),
    ];
    for (line, expected) in steps {
        let reply = tokio::time::timeout(deadline, h.run(line))
            .await
            .unwrap_or_else(|_| panic!("{line}: keys were not run concurrently"));
        assert_eq!(reply, expected, "{line}");
    }
}

// ---- connection loop ----

/// An in-memory stream that counts the writes made to it.
struct Counting<S> {
    inner: S,
    writes: Arc<AtomicUsize>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection served over an in-memory pipe: the client's end, the
/// server task, the write counter and the shutdown switch.
struct Pipe {
    client: tokio::io::DuplexStream,
    server: tokio::task::JoinHandle<std::io::Result<Ended>>,
    writes: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
}

fn connect<B: CacheBackend + Send + Sync + 'static>(backend: Arc<B>, limits: Limits) -> Pipe {
    let (client, server) = tokio::io::duplex(1 << 20);
    let writes = Arc::new(AtomicUsize::new(0));
    let stream = Counting {
        inner: server,
        writes: writes.clone(),
    };
    let (stop, stopped) = watch::channel(false);
    let session = Session::new(1, PeerKind::Client(ClientRole::ReadWrite));
    let server =
        tokio::spawn(
            async move { serve_connection(stream, &*backend, session, limits, stopped).await },
        );
    Pipe {
        client,
        server,
        writes,
        stop,
    }
}

/// Reads until `expected` bytes arrived (or the server closed).
async fn read_exactly(client: &mut tokio::io::DuplexStream, expected: usize) -> Vec<u8> {
    let mut got = vec![0u8; expected];
    tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got))
        .await
        .expect("replies within the deadline")
        .expect("the replies arrive");
    got
}

async fn read_to_end(client: &mut tokio::io::DuplexStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got))
        .await
        .expect("closes within the deadline")
        .expect("reads");
    got
}

#[tokio::test]
async fn a_pipeline_is_answered_in_order_in_one_write() {
    let mut pipe = connect(Arc::new(MemoryBackend::new()), Limits::default());
    let mut request = Vec::new();
    encode_command(&["SET", "k", "1"], &mut request);
    encode_command(&["INCR", "k"], &mut request);
    request.extend_from_slice(b"GET k\r\n");
    encode_command(&["GET", "nothing"], &mut request);
    encode_command(&["NOPE"], &mut request);
    encode_command(&["MGET", "k", "nothing"], &mut request);
    pipe.client.write_all(&request).await.expect("writes");
    let expected: &[u8] = b"+OK\r\n:2\r\n$1\r\n2\r\n$-1\r\n\
        -ERR unknown command 'NOPE', with args beginning with: \r\n*2\r\n$1\r\n2\r\n$-1\r\n";
    assert_eq!(
        read_exactly(&mut pipe.client, expected.len()).await,
        expected
    );
    assert_eq!(pipe.writes.load(Ordering::SeqCst), 1);
    drop(pipe.client);
    let ended = pipe.server.await.expect("joins").expect("serves");
    assert_eq!(ended, Ended::ClientClosed);
}

/// Commands on distinct keys of one pipeline are in flight together (each
/// is a round trip to its partition's owner), and the commands on one key
/// still take effect in the order sent: were they run one after another,
/// every operation would wait at the barrier of three forever.
#[tokio::test]
async fn a_pipeline_runs_commands_on_distinct_keys_together_and_one_keys_in_order() {
    let backend = Arc::new(AllAtOnce {
        inner: MemoryBackend::new(),
        barrier: Barrier::new(3),
    });
    let mut pipe = connect(backend, Limits::default());
    let mut request = Vec::new();
    for (key, value) in [("a", "1"), ("b", "2"), ("c", "3")] {
        encode_command(&["SET", key, value], &mut request);
    }
    for key in ["a", "b", "c"] {
        encode_command(&["INCR", key], &mut request);
    }
    for key in ["a", "b", "c"] {
        encode_command(&["GET", key], &mut request);
    }
    pipe.client.write_all(&request).await.expect("writes");
    let expected: &[u8] =
        b"+OK\r\n+OK\r\n+OK\r\n:2\r\n:3\r\n:4\r\n$1\r\n2\r\n$1\r\n3\r\n$1\r\n4\r\n";
    assert_eq!(
        read_exactly(&mut pipe.client, expected.len()).await,
        expected
    );
    drop(pipe.client);
    let ended = pipe.server.await.expect("joins").expect("serves");
    assert_eq!(ended, Ended::ClientClosed);
}

#[tokio::test]
async fn a_command_split_across_reads_is_answered_once_complete() {
    let mut pipe = connect(Arc::new(MemoryBackend::new()), Limits::default());
    let mut request = Vec::new();
    encode_command(&["SET", "key", "value"], &mut request);
    let (a, b) = request.split_at(11);
    pipe.client.write_all(a).await.expect("writes");
    pipe.client.flush().await.expect("flushes");
    // Nothing is answered for half a command; the second half completes it.
    pipe.client.write_all(b).await.expect("writes");
    assert_eq!(read_exactly(&mut pipe.client, 5).await, b"+OK\r\n");
    pipe.stop.send(true).expect("the server listens");
    assert_eq!(read_to_end(&mut pipe.client).await, b"");
    let ended = pipe.server.await.expect("joins").expect("serves");
    assert_eq!(ended, Ended::Shutdown);
}

#[tokio::test]
async fn a_protocol_error_is_answered_after_the_commands_before_it_then_the_connection_closes() {
    let limits = Limits {
        max_bulk_len: 8,
        ..Limits::default()
    };
    let mut pipe = connect(Arc::new(MemoryBackend::new()), limits);
    pipe.client
        .write_all(b"PING\r\n*2\r\n$3\r\nGET\r\n$9\r\n123456789\r\nPING\r\n")
        .await
        .expect("writes");
    assert_eq!(
        read_to_end(&mut pipe.client).await,
        b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
    );
    let ended = pipe.server.await.expect("joins").expect("serves");
    assert_eq!(ended, Ended::ProtocolError);
}

#[tokio::test]
async fn quit_is_answered_and_closes_before_later_commands_run() {
    let backend = Arc::new(MemoryBackend::new());
    let mut pipe = connect(backend.clone(), Limits::default());
    pipe.client
        .write_all(b"SET a 1\r\nQUIT\r\nSET b 2\r\n")
        .await
        .expect("writes");
    assert_eq!(read_to_end(&mut pipe.client).await, b"+OK\r\n+OK\r\n");
    let ended = pipe.server.await.expect("joins").expect("serves");
    assert_eq!(ended, Ended::Quit);
    assert_eq!(backend.size().await, Ok(1));
}
