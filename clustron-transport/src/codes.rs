//! QUIC error codes the transport uses on streams and connections.
//!
//! Stream codes travel in `RESET_STREAM` / `STOP_SENDING`; connection codes
//! in `CONNECTION_CLOSE`. Both sides map them to the same typed errors.

use crate::error::FrameError;

/// Stream: the frame announced more bytes than the maximum.
pub const FRAME_TOO_LARGE: u32 = 0x1;
/// Stream: the frame did not decode.
pub const MALFORMED: u32 = 0x2;
/// Stream: no handler for the channel.
pub const UNKNOWN_CHANNEL: u32 = 0x3;
/// Stream: the header named a wire version we do not speak.
pub const UNSUPPORTED_VERSION: u32 = 0x4;
/// Stream: the header named an unknown or misplaced stream kind.
pub const BAD_KIND: u32 = 0x5;
/// Stream: the stream ended inside a frame.
pub const TRUNCATED: u32 = 0x6;
/// Stream: the receiver is going away (shutdown, dropped handle).
pub const CANCELLED: u32 = 0x7;

/// Connection: closed on shutdown.
pub const CLOSE_SHUTDOWN: u32 = 0x0;
/// Connection: the peer's certificate is not allowed here (e.g. a client
/// certificate on the node ALPN).
pub const CLOSE_REFUSED: u32 = 0x10;

/// The stream code for a codec error.
pub fn for_frame_error(error: &FrameError) -> u32 {
    match error {
        FrameError::TooLarge { .. } => FRAME_TOO_LARGE,
        FrameError::Malformed(_) => MALFORMED,
        FrameError::Truncated => TRUNCATED,
        FrameError::UnsupportedVersion(_) => UNSUPPORTED_VERSION,
        FrameError::UnknownKind(_) => BAD_KIND,
        FrameError::RemoteReset(_) | FrameError::Stream(_) => CANCELLED,
    }
}

/// A stream code in words.
pub fn describe(code: u64) -> &'static str {
    match code {
        0x1 => "frame too large",
        0x2 => "malformed frame",
        0x3 => "unknown channel",
        0x4 => "unsupported wire version",
        0x5 => "bad stream kind",
        0x6 => "stream ended inside a frame",
        0x7 => "cancelled",
        _ => "unknown error code",
    }
}
