//! Many requests on one stream ("calls"): what [`crate::Channel::request`]
//! uses between two endpoints of this build.
//!
//! A stream per request costs both ends a QUIC stream's opening, accepting
//! and closing, a task on each side and a flow-control update, for a
//! request of a few hundred bytes. Instead, each (peer, channel) gets one
//! long-lived bidirectional stream on which requests and their answers
//! travel as frames tagged with a request id, as gRPC multiplexes calls on
//! one HTTP/2 connection:
//!
//! ```text
//! stream header : version | kind 4 (calls) | channel
//! call          : length u32 BE | id u64 BE | postcard request
//! result        : length u32 BE | id u64 BE | status u8 | length u32 BE | body
//! ```
//!
//! The server answers each call as soon as its handler does, in any order,
//! and handles at most `max_concurrent_streams` calls of one stream at once
//! (then stops reading it: QUIC flow control pushes back on the caller). A
//! malformed call resets the whole stream; every call on it then fails as
//! "connection lost" (it may have been processed), as on a lost connection.
//! A server of an older build resets the stream at its header (unknown
//! kind), having processed nothing: the caller then falls back to a stream
//! per request for that peer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::codes;
use crate::endpoint::{Answer, Inner, Peer};
use crate::error::{Error, FrameError};
use crate::frame::{self, StreamKind, LENGTH_PREFIX};
use crate::stream::{self, ReadFailure, Reader};
use crate::ChannelId;

/// Bytes of a call's or result's id.
const ID_LEN: usize = 8;
/// Bytes before a call's request: its length and id ([`Calls::call`]).
pub(crate) const CALL_HEAD: usize = LENGTH_PREFIX + ID_LEN;
/// Most bytes gathered into one write of the writer tasks.
const WRITE_BATCH: usize = 64 * 1024;

/// Appends frames already queued (`next`) to `buf`, up to [`WRITE_BATCH`]
/// bytes: one write for all of them (the writer tasks of calls and
/// messages streams).
pub(crate) fn gather(buf: &mut Vec<u8>, mut next: impl FnMut() -> Option<Vec<u8>>) {
    while buf.len() < WRITE_BATCH {
        match next() {
            Some(more) if buf.is_empty() => *buf = more,
            Some(more) => buf.extend_from_slice(&more),
            None => break,
        }
    }
}

/// Why a call got no answer.
#[derive(Debug)]
pub(crate) enum CallFailure {
    /// The server does not know calls (an older build): it refused the
    /// stream at its header, before reading any call.
    Refused,
    /// The stream or its connection failed after the call was handed over.
    Failed(Error),
}

/// Where a call's answer (status byte and frame) or failure arrives.
pub(crate) type Answered = oneshot::Receiver<Result<Bytes, CallFailure>>;

/// The calls waiting for their answers, and whether the stream is closed,
/// under one lock: a call is either taken in before the stream closes (and
/// then answered or failed with the others) or refused as never sent.
#[derive(Default)]
struct Pending {
    closed: bool,
    waiting: HashMap<u64, oneshot::Sender<Result<Bytes, CallFailure>>>,
}

/// The caller's side of one calls stream.
pub(crate) struct Calls {
    /// Call frames, written in order by the writer task.
    tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
}

impl Calls {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether new calls may go on this stream (it has not failed or ended).
    pub(crate) fn is_open(&self) -> bool {
        !self.pending().closed
    }

    /// Hands a call over: `frame` is [`CALL_HEAD`] bytes of room, then the
    /// postcard request; its length and a new id are written in. The
    /// receiver yields the answer (status byte and frame); the guard
    /// forgets the call if the caller stops waiting. `Err` gives the frame
    /// back when this stream closed before taking it (it was never sent).
    pub(crate) fn call(
        self: &Arc<Self>,
        mut frame: Vec<u8>,
    ) -> Result<(Answered, Forget), Vec<u8>> {
        let id = self.next_id.fetch_add(1, Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending();
            if pending.closed {
                return Err(frame);
            }
            pending.waiting.insert(id, tx);
        }
        let forget = Forget {
            calls: self.clone(),
            id,
        };
        // Invariant: the caller checked the request against
        // max_frame_size (<= 1 GiB), so the length fits a u32.
        let len = (frame.len() - LENGTH_PREFIX) as u32;
        frame[..LENGTH_PREFIX].copy_from_slice(&len.to_be_bytes());
        frame[LENGTH_PREFIX..CALL_HEAD].copy_from_slice(&id.to_be_bytes());
        // A closed writer never wrote it: the caller may go elsewhere (the
        // guard forgets the call).
        self.tx.send(frame).map_err(|e| e.0)?;
        Ok((rx, forget))
    }

    /// Ends every call still waiting with `failure` (the same for all).
    fn fail_all(&self, failure: impl Fn() -> CallFailure) {
        let waiting = {
            let mut pending = self.pending();
            pending.closed = true;
            std::mem::take(&mut pending.waiting)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(failure()));
        }
    }
}

/// Forgets a call its caller no longer waits for (a timeout, a dropped
/// future), so an answer that never comes does not keep it.
pub(crate) struct Forget {
    calls: Arc<Calls>,
    id: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.calls.pending().waiting.remove(&self.id);
    }
}

/// Starts the calls stream to `to` for `channel` on a freshly opened
/// bidirectional stream: header written, writer and reader tasks running.
pub(crate) fn start(
    inner: &Arc<Inner>,
    to: SocketAddr,
    channel: ChannelId,
    send: SendStream,
    recv: RecvStream,
) -> Arc<Calls> {
    let (tx, rx) = mpsc::unbounded_channel();
    let calls = Arc::new(Calls {
        tx,
        pending: Mutex::new(Pending::default()),
        next_id: AtomicU64::new(0),
    });
    tokio::spawn(write_calls(
        inner.clone(),
        Arc::downgrade(&calls),
        channel,
        send,
        rx,
    ));
    tokio::spawn(read_results(inner.clone(), calls.clone(), to, recv));
    calls
}

/// Writes the header, then call frames as they come, several per write
/// when they queue up. It holds its `Calls` weakly: once the stream is
/// dropped from the open ones and its last caller is done, the sender goes
/// and this task finishes the stream and ends (holding it strongly, every
/// failed stream's writer waited forever).
async fn write_calls(
    inner: Arc<Inner>,
    calls: std::sync::Weak<Calls>,
    channel: ChannelId,
    mut send: SendStream,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut buf = frame::header(StreamKind::Calls, channel).to_vec();
    loop {
        gather(&mut buf, || rx.try_recv().ok());
        if buf.is_empty() {
            match rx.recv().await {
                Some(first) => buf = first,
                None => break,
            }
            continue;
        }
        if send.write_all(&buf).await.is_err() {
            // The reader learns why (a reset, a lost connection) and fails
            // the calls; new ones go to a new stream.
            if let Some(calls) = calls.upgrade() {
                calls.pending().closed = true;
            }
            return;
        }
        inner.stats.sent(buf.len());
        buf.clear();
    }
    let _ = send.finish();
}

/// Reads results and hands each to its caller; when the stream ends or
/// fails, fails every call still waiting.
async fn read_results(inner: Arc<Inner>, calls: Arc<Calls>, to: SocketAddr, recv: RecvStream) {
    let max = inner.config.max_frame_size;
    let mut reader = Reader::new(recv);
    let mut answered = false;
    let failure = loop {
        match reader.frame(ID_LEN + 1 + LENGTH_PREFIX + max).await {
            Ok(Some(body)) if body.len() > ID_LEN => {
                inner.stats.received(LENGTH_PREFIX + body.len());
                let mut id = [0; ID_LEN];
                id.copy_from_slice(&body[..ID_LEN]);
                let id = u64::from_be_bytes(id);
                answered = true;
                let waiting = calls.pending().waiting.remove(&id);
                if let Some(tx) = waiting {
                    let _ = tx.send(Ok(body.slice(ID_LEN..)));
                }
            }
            Ok(Some(_)) => {
                let e = FrameError::Malformed("a result without its answer".into());
                stream::abort(None, Some(reader.stream()), &e);
                break Some(ReadFailure::Frame(e));
            }
            Ok(None) => break None,
            Err(ReadFailure::Frame(FrameError::RemoteReset(code)))
                if !answered && code == u64::from(codes::BAD_KIND) =>
            {
                inner.no_calls.insert(to, ());
                calls.fail_all(|| CallFailure::Refused);
                inner.forget_calls(to, &calls);
                return;
            }
            Err(failure) => break Some(failure),
        }
    };
    tracing::debug!(%to, ?failure, "calls stream closed");
    // Each waiting call gets the error a stream of its own would have
    // given (a refused handshake, a lost connection, a reset), as seen
    // after its request left.
    calls.fail_all(|| {
        CallFailure::Failed(match &failure {
            Some(failure) => crate::endpoint::read_failed(to, failure.clone()).after_sending(),
            None => Error::ConnectionLost {
                addr: to,
                reason: "the calls stream ended, after the request was sent".into(),
            },
        })
    });
    inner.forget_calls(to, &calls);
}

/// The server's side of a calls stream: reads calls, runs each through
/// the channel's route (looked up per call: a channel registered after the
/// stream opened, as on a node still starting, serves the calls after it),
/// at most `limit` at once, and writes each result when ready.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    peer: Peer,
    is_client: bool,
    channel: ChannelId,
    mut reader: Reader,
    send: SendStream,
    limit: usize,
) {
    let max = inner.config.max_frame_size;
    let (done_tx, done_rx) = mpsc::channel::<Result<Vec<u8>, FrameError>>(limit.max(1));
    let writer = tokio::spawn(write_results(inner.clone(), send, done_rx));
    let permits = Arc::new(Semaphore::new(limit.max(1)));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let body = match reader.frame(ID_LEN + max).await {
            Ok(Some(body)) if body.len() >= ID_LEN => body,
            Ok(Some(_)) => {
                let e = FrameError::Malformed("a call without its id".into());
                refuse(&peer, &mut reader, &done_tx, e).await;
                break;
            }
            Ok(None) => break,
            Err(ReadFailure::Frame(e)) => {
                refuse(&peer, &mut reader, &done_tx, e).await;
                break;
            }
            Err(ReadFailure::Lost(_)) => break,
        };
        inner.stats.received(LENGTH_PREFIX + body.len());
        let id: [u8; ID_LEN] = body[..ID_LEN].try_into().unwrap_or([0; ID_LEN]);
        let answer = match inner.route(channel, is_client) {
            Err(status) => Ok(Box::pin(std::future::ready(crate::endpoint::status_frame(
                status,
                &crate::endpoint::refusal(status, channel),
            ))) as Answer),
            Ok(route) => route.request(peer.clone(), &body[ID_LEN..], max),
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                refuse(&peer, &mut reader, &done_tx, e).await;
                break;
            }
        };
        let done = done_tx.clone();
        tokio::spawn(async move {
            let answer = answer.await;
            let mut out = Vec::with_capacity(LENGTH_PREFIX + ID_LEN + answer.len());
            // Invariant: an answer is at most a frame (<= 1 GiB) plus 5 bytes.
            out.extend_from_slice(&((ID_LEN + answer.len()) as u32).to_be_bytes());
            out.extend_from_slice(&id);
            out.extend_from_slice(&answer);
            let _ = done.send(Ok(out)).await;
            drop(permit);
        });
    }
    drop(done_tx);
    let _ = writer.await;
}

/// A malformed call: the whole stream is reset with its reason.
async fn refuse(
    peer: &Peer,
    reader: &mut Reader,
    done: &mpsc::Sender<Result<Vec<u8>, FrameError>>,
    error: FrameError,
) {
    tracing::debug!(peer = %peer.identity, %error, "calls stream refused");
    stream::abort(None, Some(reader.stream()), &error);
    let _ = done.send(Err(error)).await;
}

/// Writes results as calls finish, several per write when they queue up;
/// finishes the stream once every call is answered and no more can come.
async fn write_results(
    inner: Arc<Inner>,
    mut send: SendStream,
    mut done: mpsc::Receiver<Result<Vec<u8>, FrameError>>,
) {
    let mut buf = Vec::new();
    while let Some(first) = done.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Ok(result) => buf.extend_from_slice(&result),
                Err(e) => {
                    inner.stats.stream_errors.fetch_add(1, Relaxed);
                    let _ = send.reset(VarInt::from_u32(codes::for_frame_error(&e)));
                    return;
                }
            }
            if buf.len() < WRITE_BATCH {
                next = done.try_recv().ok();
            }
        }
        if send.write_all(&buf).await.is_err() {
            return;
        }
        inner.stats.sent(buf.len());
        buf.clear();
    }
    let _ = send.finish();
}
