//! Wire format: stream headers and length-prefixed postcard frames.
//!
//! ```text
//! stream header  : version u8 (=1) | kind u8 | channel u16 BE
//! frame          : length u32 BE   | postcard bytes (length of them)
//! response       : status u8       | frame (the response, or a reason string)
//! datagram       : version u8 (=1) | channel u16 BE | postcard bytes
//! ```
//!
//! The length is checked against the configured maximum before any buffer is
//! allocated for the body.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::FrameError;
use crate::ChannelId;

/// The wire version this build speaks.
pub const WIRE_VERSION: u8 = 1;
/// Bytes in a stream header.
pub const HEADER_LEN: usize = 4;
/// Bytes in a datagram header.
pub const DATAGRAM_HEADER_LEN: usize = 3;
/// Bytes in a frame's length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// What a stream carries; the second byte of its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    /// Bidirectional: one request frame, one response.
    Request = 1,
    /// Unidirectional: one message frame.
    Message = 2,
    /// Bidirectional: frames both ways until either side finishes.
    Stream = 3,
    /// Bidirectional: many requests, each tagged with an id, and their
    /// responses in any order (see the `calls` module).
    Calls = 4,
    /// Unidirectional: message frames, in order, until the sender finishes
    /// (see the `messages` module).
    Messages = 5,
}

/// First byte of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// A response frame follows.
    Ok = 0,
    /// No handler for the channel; a reason frame follows.
    UnknownChannel = 1,
    /// The handler refused; a reason frame follows.
    Rejected = 2,
}

impl Status {
    /// Reads a response's first byte; `None` for a status this build does
    /// not know.
    pub fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Status::Ok),
            1 => Some(Status::UnknownChannel),
            2 => Some(Status::Rejected),
            _ => None,
        }
    }
}

/// Encodes a stream header.
pub fn header(kind: StreamKind, channel: ChannelId) -> [u8; HEADER_LEN] {
    let [hi, lo] = channel.0.to_be_bytes();
    [WIRE_VERSION, kind as u8, hi, lo]
}

/// Decodes a stream header.
pub fn parse_header(bytes: [u8; HEADER_LEN]) -> Result<(StreamKind, ChannelId), FrameError> {
    if bytes[0] != WIRE_VERSION {
        return Err(FrameError::UnsupportedVersion(bytes[0]));
    }
    let kind = match bytes[1] {
        1 => StreamKind::Request,
        2 => StreamKind::Message,
        3 => StreamKind::Stream,
        4 => StreamKind::Calls,
        5 => StreamKind::Messages,
        other => return Err(FrameError::UnknownKind(other)),
    };
    Ok((kind, ChannelId(u16::from_be_bytes([bytes[2], bytes[3]]))))
}

/// Encodes a datagram header.
pub fn datagram_header(channel: ChannelId) -> [u8; DATAGRAM_HEADER_LEN] {
    let [hi, lo] = channel.0.to_be_bytes();
    [WIRE_VERSION, hi, lo]
}

/// Splits a datagram into its channel and its postcard body.
pub fn parse_datagram(bytes: &[u8]) -> Result<(ChannelId, &[u8]), FrameError> {
    let Some((head, body)) = bytes.split_at_checked(DATAGRAM_HEADER_LEN) else {
        return Err(FrameError::Truncated);
    };
    if head[0] != WIRE_VERSION {
        return Err(FrameError::UnsupportedVersion(head[0]));
    }
    Ok((ChannelId(u16::from_be_bytes([head[1], head[2]])), body))
}

/// Appends one frame holding `value` to `buf`.
///
/// Fails, leaving `buf` as it was, if the encoding is larger than `max`.
pub fn encode_frame<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    value: &T,
    max: usize,
) -> Result<(), FrameError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; LENGTH_PREFIX]);
    let encoded = postcard::to_extend(value, std::mem::take(buf));
    *buf = match encoded {
        Ok(buf) => buf,
        Err(e) => return Err(FrameError::Malformed(format!("cannot encode: {e}"))),
    };
    let len = buf.len() - start - LENGTH_PREFIX;
    if len > max {
        buf.truncate(start);
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    // Invariant: len <= max <= 1 GiB (TransportConfig::validate), fits in u32.
    buf[start..start + LENGTH_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Bytes `value` takes as a frame (length prefix included), to size buffers
/// once instead of growing them.
pub fn framed_len<T: Serialize + ?Sized>(value: &T) -> usize {
    LENGTH_PREFIX + postcard::experimental::serialized_size(value).unwrap_or(0)
}

/// Checks a length prefix against `max`; returns the body length.
pub fn check_length(prefix: [u8; LENGTH_PREFIX], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    Ok(len)
}

/// Decodes a frame body (the bytes after the length prefix).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(FrameError::Malformed(format!(
            "{} trailing bytes after the value",
            rest.len()
        ))),
        Err(e) => Err(FrameError::Malformed(e.to_string())),
    }
}

/// The body of the first complete frame in `buf` and the bytes the frame
/// takes, or `Ok(None)` if more bytes are needed.
pub fn split_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(prefix) = buf.get(..LENGTH_PREFIX) else {
        return Ok(None);
    };
    let mut len_bytes = [0; LENGTH_PREFIX];
    len_bytes.copy_from_slice(prefix);
    let len = check_length(len_bytes, max)?;
    Ok(buf
        .get(LENGTH_PREFIX..LENGTH_PREFIX + len)
        .map(|body| (body, LENGTH_PREFIX + len)))
}

/// Decodes the first complete frame in `buf`: `Ok(None)` if more bytes are
/// needed, otherwise the value and the number of bytes it used.
///
/// This is the synchronous twin of the stream reader, for tests and for
/// callers that buffer bytes themselves.
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    match split_frame(buf, max)? {
        None => Ok(None),
        Some((body, used)) => Ok(Some((decode_body(body)?, used))),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Ping { seq: u64, from: String },
        Data(Vec<u8>),
        Nested(Vec<(u32, Option<i64>)>),
    }

    fn msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            (any::<u64>(), ".{0,40}").prop_map(|(seq, from)| Msg::Ping { seq, from }),
            proptest::collection::vec(any::<u8>(), 0..2000).prop_map(Msg::Data),
            proptest::collection::vec((any::<u32>(), any::<Option<i64>>()), 0..50)
                .prop_map(Msg::Nested),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip_one_after_another(msgs in proptest::collection::vec(msg(), 0..20)) {
            let mut buf = Vec::new();
            for m in &msgs {
                encode_frame(&mut buf, m, 1 << 20).unwrap();
            }
            let mut at = 0;
            let mut out = Vec::new();
            while let Some((m, used)) = decode_frame::<Msg>(&buf[at..], 1 << 20).unwrap() {
                out.push(m);
                at += used;
            }
            prop_assert_eq!(at, buf.len());
            prop_assert_eq!(out, msgs);
        }

        #[test]
        fn a_truncated_frame_asks_for_more_bytes(m in msg(), cut in 0usize..100) {
            let mut buf = Vec::new();
            encode_frame(&mut buf, &m, 1 << 20).unwrap();
            let cut = cut.min(buf.len() - 1);
            prop_assert_eq!(decode_frame::<Msg>(&buf[..cut], 1 << 20).unwrap(), None);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_frame::<Msg>(&bytes, 1 << 20);
            let _ = decode_frame::<String>(&bytes, 64);
        }

        #[test]
        fn headers_round_trip(kind in 1u8..=5, channel in any::<u16>()) {
            let kind = match kind {
                1 => StreamKind::Request,
                2 => StreamKind::Message,
                3 => StreamKind::Stream,
                4 => StreamKind::Calls,
                _ => StreamKind::Messages,
            };
            prop_assert_eq!(parse_header(header(kind, ChannelId(channel))).unwrap(), (kind, ChannelId(channel)));
        }
    }

    #[test]
    fn an_oversized_length_prefix_is_refused_before_allocating() {
        let buf = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        assert_eq!(
            decode_frame::<Vec<u8>>(&buf, 1024),
            Err(FrameError::TooLarge {
                len: u32::MAX as u64,
                max: 1024
            })
        );
    }

    #[test]
    fn encoding_more_than_the_maximum_fails_and_leaves_the_buffer_alone() {
        let mut buf = vec![7];
        let err = encode_frame(&mut buf, &vec![0u8; 100], 64).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { max: 64, .. }));
        assert_eq!(buf, vec![7]);
    }

    #[test]
    fn trailing_bytes_inside_a_frame_are_malformed() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, &(1u8, 2u8), 64).unwrap();
        assert!(matches!(
            decode_frame::<u8>(&buf, 64),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_versions_and_kinds_are_refused() {
        assert_eq!(
            parse_header([2, 1, 0, 0]),
            Err(FrameError::UnsupportedVersion(2))
        );
        assert_eq!(parse_header([1, 9, 0, 0]), Err(FrameError::UnknownKind(9)));
    }
}
