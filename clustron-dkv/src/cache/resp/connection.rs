//! One client connection: read, decode every complete command, run them
//! (commands on distinct single keys together), write their replies
//! together, in order.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::backend::CacheBackend;
use super::codec::{Args, Decoder, Limits, Reply};
use super::command::spec_of;
use super::execute::{execute, join_all, Session};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Replies buffered before they are written even if more commands wait:
/// bounds the memory a long pipeline takes.
const WRITE_AT: usize = 64 * 1024;

/// Commands of one connection's pipeline that run at the same time, at
/// most.
const PIPELINE_CONCURRENCY: usize = 256;

/// Bytes that have already arrived taken in before a batch runs, at most:
/// a long pipeline runs in large groups rather than one TLS record's worth
/// (16 KiB, ~50 commands) per round trip to the owners.
const READ_AHEAD: usize = 256 * 1024;

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The client closed it.
    ClientClosed,
    /// The client sent `QUIT`.
    Quit,
    /// The bytes were not RESP; the error was replied.
    ProtocolError,
    /// The listener is shutting down.
    Shutdown,
}

/// Serves one connection until the client closes it, sends `QUIT`, breaks
/// the protocol (the error is replied, then the connection closes, as
/// Redis does) or `shutdown` turns true (checked between reads).
///
/// Pipelining: every complete command in what was read is decoded; runs of
/// consecutive commands on one key each, no two on the same key, run at
/// the same time (each is a round trip to its partition's owner, which may
/// be another node); any other command (no key, several keys, connection
/// state) runs alone, after those before it and before those after it. So
/// the commands on any one key take effect in the order sent, and the
/// replies go out in that order, in one write; as in Redis Cluster, writes
/// to different keys of one pipeline may become visible to other clients in
/// another order. What has already arrived (up to 256 KiB) is taken in
/// before a batch runs, so a long pipeline runs in large groups. The
/// buffers are bounded: 256 KiB read ahead, one command within `limits`,
/// and 64 KiB of replies (plus the last group's).
pub async fn serve_connection<S, B>(
    mut stream: S,
    backend: &B,
    mut session: Session,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: CacheBackend,
{
    let mut decoder = Decoder::new(limits);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut out = Vec::new();
    let mut group: Vec<Args> = Vec::new();
    let mut eof = false;
    loop {
        let failed = loop {
            let args = match decoder.next_command() {
                Ok(Some(args)) => args,
                Ok(None) => break None,
                Err(error) => break Some(error),
            };
            match single_key(&args) {
                Some(key)
                    if group.len() < PIPELINE_CONCURRENCY && !group.iter().any(|g| g[1] == key) =>
                {
                    group.push(args);
                    continue;
                }
                Some(_) => {
                    run_together(backend, &session, &mut group, &mut out).await;
                    group.push(args);
                }
                None => {
                    run_together(backend, &session, &mut group, &mut out).await;
                    execute(backend, &mut session, args, unix_ms())
                        .await
                        .encode(&mut out);
                }
            }
            if session.quit {
                return close(stream, &out, Ended::Quit).await;
            }
            if out.len() >= WRITE_AT {
                stream.write_all(&out).await?;
                out.clear();
            }
        };
        run_together(backend, &session, &mut group, &mut out).await;
        if let Some(error) = failed {
            Reply::err(error).encode(&mut out);
            return close(stream, &out, Ended::ProtocolError).await;
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            stream.flush().await?;
            out.clear();
        }
        if *shutdown.borrow() {
            return close(stream, &out, Ended::Shutdown).await;
        }
        let read = tokio::select! {
            read = stream.read(&mut chunk) => read?,
            _ = shutdown.changed() => return close(stream, &out, Ended::Shutdown).await,
        };
        if read == 0 || eof {
            return Ok(Ended::ClientClosed);
        }
        decoder.feed(&chunk[..read]);
        let mut taken = read;
        while taken < READ_AHEAD {
            // A zero timeout polls the read once: only what has arrived.
            match tokio::time::timeout(Duration::ZERO, stream.read(&mut chunk)).await {
                Ok(Ok(0)) => {
                    // Closed after sending: answer what came, then end.
                    eof = true;
                    break;
                }
                Ok(Ok(n)) => {
                    decoder.feed(&chunk[..n]);
                    taken += n;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
        }
    }
}

/// The key of a command that takes exactly one key and leaves the
/// connection's state alone (GET, SET, INCR, EXPIRE, ...), if it is one.
fn single_key(args: &Args) -> Option<&[u8]> {
    let spec = spec_of(args.first()?)?;
    (spec.keys == (1, 1, 1)).then(|| args.get(1).map(Vec::as_slice))?
}

/// Runs the commands of `group` at the same time and appends their replies
/// in order; empties it.
async fn run_together<B: CacheBackend>(
    backend: &B,
    session: &Session,
    group: &mut Vec<Args>,
    out: &mut Vec<u8>,
) {
    let now = unix_ms();
    let runs = group.drain(..).map(|args| {
        // These commands never change the session: each runs on a copy.
        let mut session = session.clone();
        async move { execute(backend, &mut session, args, now).await }
    });
    for reply in join_all(runs.collect()).await {
        reply.encode(out);
    }
}

/// Writes the last replies and closes the write side (a TLS stream sends
/// its close notification).
async fn close<S: AsyncWrite + Unpin>(
    mut stream: S,
    out: &[u8],
    ended: Ended,
) -> std::io::Result<Ended> {
    stream.write_all(out).await?;
    stream.shutdown().await?;
    Ok(ended)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
