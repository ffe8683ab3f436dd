//! Framed QUIC streams: reading and writing length-prefixed postcard frames.

use quinn::{ReadError, ReadExactError, RecvStream, SendStream, WriteError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codes;
use crate::endpoint::Peer;
use crate::error::FrameError;
use crate::frame::{self, LENGTH_PREFIX};

/// Initial buffer for a frame body: bodies grow as bytes actually arrive, so
/// a hostile length prefix just under the maximum costs nothing up front.
const INITIAL_BODY_CAPACITY: usize = 16 * 1024;

pub(crate) fn read_error(e: ReadError) -> FrameError {
    match e {
        ReadError::Reset(code) => FrameError::RemoteReset(code.into_inner()),
        other => FrameError::Stream(other.to_string()),
    }
}

pub(crate) fn read_exact_error(e: ReadExactError) -> FrameError {
    match e {
        ReadExactError::FinishedEarly(_) => FrameError::Truncated,
        ReadExactError::ReadError(e) => read_error(e),
    }
}

pub(crate) fn write_error(e: WriteError) -> FrameError {
    match e {
        WriteError::Stopped(code) => FrameError::RemoteReset(code.into_inner()),
        other => FrameError::Stream(other.to_string()),
    }
}

/// Reads one frame body; `Ok(None)` if the stream finished cleanly before it.
pub(crate) async fn read_frame(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(read_exact_error(e)),
    }
    let len = frame::check_length(prefix, max)?;
    let mut body = Vec::with_capacity(len.min(INITIAL_BODY_CAPACITY));
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(FrameError::Truncated),
            Err(e) => return Err(read_error(e)),
        }
    }
    Ok(Some(body))
}

/// Ends both directions of a stream with the code for `error`.
pub(crate) fn abort(send: Option<&mut SendStream>, recv: Option<&mut RecvStream>, error: &FrameError) {
    let code = quinn::VarInt::from_u32(codes::for_frame_error(error));
    if let Some(send) = send {
        let _ = send.reset(code);
    }
    if let Some(recv) = recv {
        let _ = recv.stop(code);
    }
}

/// The sending half of a [`FramedStream`].
#[derive(Debug)]
pub struct FrameSender {
    send: SendStream,
    max: usize,
    buf: Vec<u8>,
}

impl FrameSender {
    /// Encodes and writes one frame. A value larger than the maximum frame
    /// size fails with [`FrameError::TooLarge`] and leaves the stream usable.
    pub async fn send<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), FrameError> {
        self.buf.clear();
        frame::encode_frame(&mut self.buf, value, self.max)?;
        self.send.write_all(&self.buf).await.map_err(write_error)
    }

    /// Finishes the stream: the remote's `recv` returns `None` after the
    /// frames already sent.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

/// The receiving half of a [`FramedStream`].
#[derive(Debug)]
pub struct FrameReceiver {
    recv: RecvStream,
    max: usize,
}

impl FrameReceiver {
    /// Reads the next frame; `Ok(None)` once the remote finished.
    ///
    /// A frame that is too large or does not decode as `T` stops the stream
    /// with the matching error code (the remote learns why) and returns the
    /// error; no further frames can be read.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let result = match read_frame(&mut self.recv, self.max).await {
            Ok(Some(body)) => frame::decode_body(&body).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            abort(None, Some(&mut self.recv), e);
        }
        result
    }
}

/// A long-lived bidirectional stream of frames with a peer.
///
/// Frames may be of any serde type; both sides agree on the types per
/// protocol. Dropping it resets both directions.
#[derive(Debug)]
pub struct FramedStream {
    peer: Peer,
    sender: FrameSender,
    receiver: FrameReceiver,
}

impl FramedStream {
    pub(crate) fn new(peer: Peer, send: SendStream, recv: RecvStream, max: usize) -> Self {
        Self {
            peer,
            sender: FrameSender {
                send,
                max,
                buf: Vec::new(),
            },
            receiver: FrameReceiver { recv, max },
        }
    }

    /// Who is on the other end (from its certificate).
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// See [`FrameSender::send`].
    pub async fn send<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), FrameError> {
        self.sender.send(value).await
    }

    /// See [`FrameReceiver::recv`]; a refused frame also resets our sending
    /// half, ending the whole stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let result = self.receiver.recv().await;
        if let Err(e) = &result {
            abort(Some(&mut self.sender.send), None, e);
        }
        result
    }

    /// See [`FrameSender::finish`].
    pub fn finish(&mut self) {
        self.sender.finish();
    }

    /// Splits into halves that can move to different tasks.
    pub fn split(self) -> (FrameSender, FrameReceiver) {
        (self.sender, self.receiver)
    }
}
