//! Framed QUIC streams: reading and writing length-prefixed postcard frames.

use bytes::Bytes;
use quinn::{ReadError, RecvStream, SendStream, WriteError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codes;
use crate::endpoint::Peer;
use crate::error::FrameError;
use crate::frame::{self, LENGTH_PREFIX};

/// Why a read failed: the stream (codec or reset) or the whole connection.
#[derive(Debug, Clone)]
pub(crate) enum ReadFailure {
    Frame(FrameError),
    Lost(quinn::ConnectionError),
}

impl From<FrameError> for ReadFailure {
    fn from(e: FrameError) -> Self {
        ReadFailure::Frame(e)
    }
}

impl From<ReadFailure> for FrameError {
    fn from(f: ReadFailure) -> Self {
        match f {
            ReadFailure::Frame(e) => e,
            ReadFailure::Lost(e) => FrameError::Stream(e.to_string()),
        }
    }
}

fn read_error(e: ReadError) -> ReadFailure {
    match e {
        ReadError::Reset(code) => FrameError::RemoteReset(code.into_inner()).into(),
        ReadError::ConnectionLost(e) => ReadFailure::Lost(e),
        other => FrameError::Stream(other.to_string()).into(),
    }
}

pub(crate) fn write_error(e: WriteError) -> FrameError {
    match e {
        WriteError::Stopped(code) => FrameError::RemoteReset(code.into_inner()),
        other => FrameError::Stream(other.to_string()),
    }
}

/// Bytes asked for per read beyond what the next item needs: small requests
/// and bursts of stream frames then take one read, while a hostile length
/// prefix never makes us hold more than this beyond the checked maximum.
const READ_AHEAD: usize = 16 * 1024;

/// A buffered reader of fixed prefixes and frames on one receive stream.
///
/// Reads whole chunks (usually a request arrives in one) and hands out
/// frames as slices of the chunk without copying; only an item that spans
/// chunks is gathered in a spill buffer.
#[derive(Debug)]
pub(crate) struct Reader {
    recv: RecvStream,
    /// Unread bytes of the current chunk, while `spilling` is false.
    chunk: Bytes,
    /// Gathered bytes, from `pos`, while `spilling` is true.
    spill: Vec<u8>,
    pos: usize,
    spilling: bool,
}

impl Reader {
    pub(crate) fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            chunk: Bytes::new(),
            spill: Vec::new(),
            pos: 0,
            spilling: false,
        }
    }

    pub(crate) fn stream(&mut self) -> &mut RecvStream {
        &mut self.recv
    }

    fn unread(&self) -> &[u8] {
        if self.spilling {
            &self.spill[self.pos..]
        } else {
            &self.chunk
        }
    }

    /// Takes `n` buffered bytes (the caller checked they are there).
    fn take(&mut self, n: usize) -> Bytes {
        if !self.spilling {
            return self.chunk.split_to(n);
        }
        let out = Bytes::copy_from_slice(&self.spill[self.pos..self.pos + n]);
        self.pos += n;
        if self.pos == self.spill.len() {
            self.spill.clear();
            self.pos = 0;
            self.spilling = false;
        }
        out
    }

    /// Buffers at least `want` unread bytes; `Ok(false)` if the stream
    /// finished first.
    async fn fill(&mut self, want: usize) -> Result<bool, ReadFailure> {
        while self.unread().len() < want {
            let limit = (want - self.unread().len()).max(READ_AHEAD);
            let chunk = match self.recv.read_chunk(limit, true).await {
                Ok(Some(chunk)) => chunk.bytes,
                Ok(None) => return Ok(false),
                Err(e) => return Err(read_error(e)),
            };
            if !self.spilling && self.chunk.is_empty() {
                self.chunk = chunk;
                continue;
            }
            if !self.spilling {
                self.spill.clear();
                self.pos = 0;
                self.spill.extend_from_slice(&self.chunk);
                self.chunk = Bytes::new();
                self.spilling = true;
            } else if self.pos > 0 && self.pos >= self.spill.len() / 2 {
                self.spill.drain(..self.pos);
                self.pos = 0;
            }
            self.spill.extend_from_slice(&chunk);
        }
        Ok(true)
    }

    /// Reads `N` bytes; `Ok(None)` if the stream finished cleanly before any.
    pub(crate) async fn fixed<const N: usize>(&mut self) -> Result<Option<[u8; N]>, ReadFailure> {
        if !self.fill(N).await? {
            return if self.unread().is_empty() {
                Ok(None)
            } else {
                Err(FrameError::Truncated.into())
            };
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.take(N));
        Ok(Some(out))
    }

    /// Reads the end of the stream after the last expected item. Trailing
    /// bytes are malformed. Reading the FIN also matters for speed: a
    /// receive stream dropped before its end makes quinn send STOP_SENDING,
    /// one more frame per request.
    pub(crate) async fn expect_end(&mut self) -> Result<(), ReadFailure> {
        if !self.unread().is_empty() {
            let n = self.unread().len();
            return Err(FrameError::Malformed(format!("{n} trailing bytes")).into());
        }
        match self.recv.read_chunk(READ_AHEAD, true).await {
            Ok(None) => Ok(()),
            Ok(Some(chunk)) => {
                Err(FrameError::Malformed(format!("{} trailing bytes", chunk.bytes.len())).into())
            }
            Err(e) => Err(read_error(e)),
        }
    }

    /// Reads one frame and returns its body; `Ok(None)` if the stream
    /// finished cleanly before it. The length is checked against `max`
    /// before anything is buffered for the body.
    pub(crate) async fn frame(&mut self, max: usize) -> Result<Option<Bytes>, ReadFailure> {
        let Some(prefix) = self.fixed::<LENGTH_PREFIX>().await? else {
            return Ok(None);
        };
        let len = frame::check_length(prefix, max)?;
        if !self.fill(len).await? {
            return Err(FrameError::Truncated.into());
        }
        Ok(Some(self.take(len)))
    }
}

/// Ends both directions of a stream with the code for `error`.
pub(crate) fn abort(
    send: Option<&mut SendStream>,
    recv: Option<&mut RecvStream>,
    error: &FrameError,
) {
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
    reader: Reader,
    max: usize,
}

impl FrameReceiver {
    /// Reads the next frame; `Ok(None)` once the remote finished.
    ///
    /// A frame that is too large or does not decode as `T` stops the stream
    /// with the matching error code (the remote learns why) and returns the
    /// error; no further frames can be read.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let result = match self.reader.frame(self.max).await {
            Ok(Some(body)) => frame::decode_body(&body).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(FrameError::from(e)),
        };
        if let Err(e) = &result {
            abort(None, Some(self.reader.stream()), e);
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
    pub(crate) fn new(peer: Peer, send: SendStream, reader: Reader, max: usize) -> Self {
        Self {
            peer,
            sender: FrameSender {
                send,
                max,
                buf: Vec::new(),
            },
            receiver: FrameReceiver { reader, max },
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
