//! One client connection: read, decode every complete command, run them
//! in order, write their replies together.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::backend::CacheBackend;
use super::codec::{Decoder, Limits, Reply};
use super::execute::{execute, Session};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Replies buffered before they are written even if more commands wait:
/// bounds the memory a long pipeline takes.
const WRITE_AT: usize = 64 * 1024;

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
/// Pipelining: every complete command in what was read is decoded and run
/// in order, and their replies go out in one write. The buffers are
/// bounded: one read, one command within `limits`, and 64 KiB
/// of replies (plus the last reply).
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
    loop {
        loop {
            match decoder.next_command() {
                Ok(Some(args)) => {
                    let reply = execute(backend, &mut session, args, unix_ms()).await;
                    reply.encode(&mut out);
                    if session.quit {
                        return close(stream, &out, Ended::Quit).await;
                    }
                    if out.len() >= WRITE_AT {
                        stream.write_all(&out).await?;
                        out.clear();
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    Reply::err(error).encode(&mut out);
                    return close(stream, &out, Ended::ProtocolError).await;
                }
            }
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
        if read == 0 {
            return Ok(Ended::ClientClosed);
        }
        decoder.feed(&chunk[..read]);
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
