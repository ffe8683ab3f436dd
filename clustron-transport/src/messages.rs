//! Many one-way messages on one stream: what [`crate::Channel::send`] uses
//! between two endpoints of this build.
//!
//! A unidirectional stream per message costs both ends a QUIC stream's
//! opening, accepting and closing, a task on the receiving side and a
//! stream-credit update, for a message of a few hundred bytes (a log
//! append, its acknowledgement). Instead, each (peer, channel) gets one
//! long-lived unidirectional stream on which messages travel as frames,
//! several per write when they queue up:
//!
//! ```text
//! stream header : version | kind 5 (messages) | channel
//! message       : length u32 BE | postcard message    (the frame a stream of its own carries)
//! ```
//!
//! Messages to one (peer, channel) arrive in the order sent. The receiver
//! delivers each to the channel's inbox before reading the next, so a full
//! inbox pushes back on the sender through QUIC flow control, then through
//! this stream's bounded queue ([`QUEUE`]): [`crate::Channel::send`] then
//! waits (up to the request timeout) instead of piling messages up.
//!
//! What a one-way message always risked is unchanged: one handed over is
//! delivered unless the connection fails first. A malformed message makes
//! the receiver stop the whole stream (messages after it are lost, the
//! next send opens a new stream). A receiver of an older build stops the
//! stream at its header (unknown kind): the sender then sends a stream per
//! message to that peer, and what it queued on the refused stream is lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use quinn::SendStream;
use tokio::sync::mpsc;

use crate::calls;
use crate::codes;
use crate::endpoint::{Delivery, Inner, Peer};
use crate::frame::{self, StreamKind, LENGTH_PREFIX};
use crate::stream::{ReadFailure, Reader};
use crate::ChannelId;

/// Messages queued for one stream's writer before senders wait.
pub(crate) const QUEUE: usize = 1024;

/// The sending side of one messages stream.
pub(crate) struct Messages {
    /// Message frames, written in order by the writer task.
    tx: mpsc::Sender<Vec<u8>>,
    /// The writer failed: new messages go to a new stream.
    closed: AtomicBool,
    /// The connection the stream is on: once it is closed, so is this.
    conn: quinn::Connection,
}

impl Messages {
    /// Whether new messages may go on this stream.
    pub(crate) fn is_open(&self) -> bool {
        !self.closed.load(Relaxed) && !self.tx.is_closed() && self.conn.close_reason().is_none()
    }

    /// The QUIC connection the stream is on.
    pub(crate) fn conn_id(&self) -> usize {
        self.conn.stable_id()
    }

    /// Hands a message frame over to the writer if the queue has room;
    /// false (nothing sent) if it has none or the stream closed.
    pub(crate) fn try_send(&self, frame: Vec<u8>) -> bool {
        self.is_open() && self.tx.try_send(frame).is_ok()
    }

    /// Hands a message frame over to the writer, waiting while the queue is
    /// full. `Err` gives the frame back when the stream closed before
    /// taking it (it was never sent).
    pub(crate) async fn send(&self, frame: Vec<u8>) -> Result<(), Vec<u8>> {
        if !self.is_open() {
            return Err(frame);
        }
        self.tx.send(frame).await.map_err(|e| e.0)
    }
}

/// Where a messages stream goes.
struct Link {
    to: SocketAddr,
    channel: ChannelId,
    conn: quinn::Connection,
}

/// Starts the messages stream to `to` for `channel` on a freshly opened
/// unidirectional stream of `conn`: the writer task writes the header, then
/// the messages.
pub(crate) fn start(
    inner: &Arc<Inner>,
    to: SocketAddr,
    channel: ChannelId,
    conn: quinn::Connection,
    send: SendStream,
) -> Arc<Messages> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let messages = Arc::new(Messages {
        tx,
        closed: AtomicBool::new(false),
        conn: conn.clone(),
    });
    tokio::spawn(write_messages(
        inner.clone(),
        Arc::downgrade(&messages),
        Link { to, channel, conn },
        send,
        rx,
    ));
    messages
}

/// Writes the header, then message frames as they come, several per write
/// when they queue up. It holds its `Messages` weakly: once the stream is
/// dropped from the open ones and its last sender is done, the queue's
/// sender goes and this task finishes the stream and ends.
async fn write_messages(
    inner: Arc<Inner>,
    messages: Weak<Messages>,
    link: Link,
    mut send: SendStream,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    let Link { to, channel, conn } = link;
    let mut buf = frame::header(StreamKind::Messages, channel).to_vec();
    loop {
        calls::gather(&mut buf, || rx.try_recv().ok());
        if buf.is_empty() {
            tokio::select! {
                first = rx.recv() => match first {
                    Some(first) => buf = first,
                    None => break,
                },
                // Nothing more can go on it: drop it from the open ones
                // (releasing its queue, and with it this task).
                _ = conn.closed() => {
                    if let Some(messages) = messages.upgrade() {
                        messages.closed.store(true, Relaxed);
                        inner.forget_messages(to, &messages);
                    }
                    return;
                }
            }
            continue;
        }
        if let Err(e) = send.write_all(&buf).await {
            if matches!(&e, quinn::WriteError::Stopped(code) if *code == quinn::VarInt::from_u32(codes::BAD_KIND))
            {
                // An older build: a stream per message for this peer.
                inner.no_messages.insert(to, ());
            }
            tracing::debug!(%to, error = %e, "messages stream closed");
            if let Some(messages) = messages.upgrade() {
                messages.closed.store(true, Relaxed);
                inner.forget_messages(to, &messages);
            }
            return;
        }
        inner.stats.sent(buf.len());
        buf.clear();
    }
    let _ = send.finish();
}

/// The receiving side: delivers each message to the channel's inbox (the
/// route looked up per message, as for calls), in order, waiting while the
/// inbox is full. A message for a channel nobody serves is dropped; a
/// malformed one stops the stream.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    peer: Peer,
    is_client: bool,
    channel: ChannelId,
    mut reader: Reader,
) {
    let max = inner.config.max_frame_size;
    loop {
        let body = match reader.frame(max).await {
            Ok(Some(body)) => body,
            Ok(None) => return,
            Err(failure) => return inner.bad_stream(&peer, None, reader.stream(), failure),
        };
        inner.stats.received(LENGTH_PREFIX + body.len());
        let Ok(route) = inner.route(channel, is_client) else {
            inner.stats.stream_errors.fetch_add(1, Relaxed);
            continue;
        };
        match route.message(peer.clone(), &body, Delivery::Reliable) {
            Ok(Some(wait)) => wait.await,
            Ok(None) => {}
            Err(e) => {
                let failure = ReadFailure::from(e);
                return inner.bad_stream(&peer, None, reader.stream(), failure);
            }
        }
    }
}
